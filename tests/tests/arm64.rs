//! An arm64 guest end to end on whatever host this is: the arm64 kernel and initrd from
//! `make guest`, QEMU's `virt` machine (TCG on an x86 host), the arm64 busybox image, through
//! containerd with `ctr run --platform linux/arm64`.

use kata_e2e::*;
use std::time::Duration;

#[test]
fn arm64_guest_runs_an_arm64_container() {
    let config = top_dir().join("build/configuration-qemu-aarch64.toml");
    require_built(&[
        config.clone(),
        top_dir().join("build/guest/aarch64/initrd.img"),
    ]);
    let ctrd = Containerd::start("arm64");
    let id = unique_id("arm64");
    let cfg = config.to_string_lossy().to_string();
    let out = ctrd.run(
        &["--platform", "linux/arm64", "--runtime-config-path", &cfg],
        &id,
        &["uname", "-m"],
    );
    assert!(
        out.status.success(),
        "arm64 ctr run failed ({:?}): {}\ncontainerd log:\n{}",
        out.status,
        text(&out.stderr),
        ctrd.log_tail(40)
    );
    assert_eq!(text(&out.stdout).trim(), "aarch64");
    let left = wait_clean(&id, Duration::from_secs(15));
    assert!(
        left.is_empty(),
        "arm64 sandbox left things behind: {left:#?}"
    );
}
