//! Fuzz target: the shim's handling of an OCI spec (semi-trusted: the pod author writes it):
//! parsing, the host binds it names, the mount plan and the rewrite for the guest.
#![no_main]

use std::path::Path;

use kata_shim::config::SharedFs;
use kata_shim::resources::rootfs::MountPlan;
use kata_shim::resources::share::Share;
use kata_shim::resources::spec;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = spec::parse(data, "fuzzed spec") else {
        return;
    };
    let _ = spec::sandbox_id(&s, "c1");
    let _ = spec::hostname(&s);
    let _ = spec::annotations(&s);
    let share = Share::in_vm_dir(Path::new("/run/kata-containers/sb"), SharedFs::VirtioFs);
    let Ok(plan) = MountPlan::new(&share, "c1", Vec::new(), Path::new("/bundle"), &s) else {
        return;
    };
    for b in &plan.binds {
        assert!(b.host_target.starts_with("/run/kata-containers/sb/mounts/c1-mounts/"));
    }
    let _ = spec::rewrite_for_guest(&s, "c1", &plan.guest_sources());
});
