//! What a container needs from the host, placed where its guest finds it: the share layout,
//! rootfs and volume mounts, the spec rewritten for the guest, the host mount table, the
//! file operations that never follow what the guest can write (`beneath`), the pod's network
//! and its host cgroup (`pod_cgroup`, in the cgroupfs or systemd driver).

pub mod beneath;
pub mod host_cgroup;
pub mod mount_table;
pub mod network;
pub mod pod_cgroup;
pub mod rootfs;
pub mod share;
pub mod spec;
pub mod systemd;
