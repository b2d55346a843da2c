//! What a container needs from the host, placed where its guest finds it: the share layout,
//! rootfs and volume mounts, the spec rewritten for the guest, and the host mount table.

pub mod mount_table;
pub mod rootfs;
pub mod share;
pub mod spec;
