//! Spec fields the guest must honour, each observed from inside the container (containerd 1.6
//! with CRI, and ctr): user, group and supplemental groups, the capability bounding set,
//! no_new_privs, a read-only rootfs, masked and read-only paths, the pod's hostname, env, the
//! working directory, a CPU quota changed by UpdateContainerResources, an rlimit, and a root
//! container's effective capabilities.

use std::time::Duration;

use kata_e2e::cri::{self, api};
use kata_e2e::*;

const EXEC_TIMEOUT_SECS: i64 = 30;
const CLEAN_TIMEOUT: Duration = Duration::from_secs(15);

/// The container's view, one `name=value` line per field.
const PROBE: &str = "\
echo uid=$(id -u); echo gid=$(id -g); echo groups=$(id -G); \
grep -E '^(CapBnd|NoNewPrivs):' /proc/self/status | tr -d '\\t' | tr : =; \
echo rootfs=$(awk '$5 == \"/\" {split($6, o, \",\"); print o[1]}' /proc/self/mountinfo); \
echo passwd_bytes=$(wc -c < /etc/passwd); \
touch /dev/shm/probe 2>/dev/null && echo shm=writable || echo shm=refused; \
echo hostname=$(hostname); echo foo=$FOO; echo cwd=$(pwd)";

fn field<'a>(seen: &'a str, name: &str) -> &'a str {
    seen.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name} in the container's answer:\n{seen}"))
}

#[test]
fn containerd1_cri_spec_fields_hold_inside_the_container() {
    let ctrd = Containerd::start_cri("cri");
    let cri = ctrd.cri();
    let log_dir = ctrd.dir().join("pods").join(unique_id("fields"));
    std::fs::create_dir_all(&log_dir).expect("log dir");
    let config = cri::pod_config("fields", &log_dir, &[]);
    let pod = cri
        .run_pod(&config, "kata")
        .unwrap_or_else(|e| panic!("{e:#}\ncontainerd log:\n{}", ctrd.log_tail(40)));
    let guard = cri.guard(&pod);
    let mut c = cri::container_config("fields", &["sleep", "1000"]);
    c.envs = vec![api::KeyValue {
        key: "FOO".into(),
        value: "bar".into(),
    }];
    c.working_dir = "/etc".into();
    let sc = c
        .linux
        .as_mut()
        .and_then(|l| l.security_context.as_mut())
        .expect("security context");
    sc.run_as_user = Some(api::Int64Value { value: 1000 });
    sc.run_as_group = Some(api::Int64Value { value: 1001 });
    sc.supplemental_groups = vec![2000, 3000];
    sc.capabilities = Some(api::Capability {
        add_capabilities: vec!["NET_BIND_SERVICE".into()],
        drop_capabilities: vec!["ALL".into()],
        ..Default::default()
    });
    sc.no_new_privs = true;
    sc.readonly_rootfs = true;
    sc.masked_paths = vec!["/etc/passwd".into()];
    sc.readonly_paths = vec!["/dev/shm".into()];
    let id = cri
        .create_container(&pod, &c, &config)
        .and_then(|id| cri.start_container(&id).map(|()| id))
        .unwrap_or_else(|e| panic!("{e:#}\ncontainerd log:\n{}", ctrd.log_tail(40)));
    let seen = cri.sh(&id, PROBE, EXEC_TIMEOUT_SECS);
    println!("{seen}");
    assert_eq!(field(&seen, "uid"), "1000");
    assert_eq!(field(&seen, "gid"), "1001");
    let groups: Vec<&str> = field(&seen, "groups").split_whitespace().collect();
    assert!(
        groups.contains(&"2000") && groups.contains(&"3000"),
        "supplemental groups: {groups:?}"
    );
    // CAP_NET_BIND_SERVICE (bit 10) alone.
    assert_eq!(field(&seen, "CapBnd"), "0000000000000400");
    assert_eq!(field(&seen, "NoNewPrivs"), "1");
    assert_eq!(field(&seen, "rootfs"), "ro");
    assert_eq!(field(&seen, "passwd_bytes"), "0", "/etc/passwd masked");
    assert_eq!(field(&seen, "shm"), "refused", "/dev/shm read-only");
    assert_eq!(field(&seen, "hostname"), config.hostname);
    assert_eq!(field(&seen, "foo"), "bar");
    assert_eq!(field(&seen, "cwd"), "/etc");

    // A new CPU limit reaches the container's cgroup in the guest.
    cri.update_container_resources(
        &id,
        api::LinuxContainerResources {
            cpu_quota: 50_000,
            cpu_period: 100_000,
            ..Default::default()
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}\ncontainerd log:\n{}", ctrd.log_tail(40)));
    let cpu_max = cri.sh(&id, "cat /sys/fs/cgroup/cpu.max", EXEC_TIMEOUT_SECS);
    assert_eq!(
        cpu_max, "50000 100000",
        "cpu.max after UpdateContainerResources"
    );

    cri.stop_container(&id, 1).expect("StopContainer");
    cri.remove_container(&id).expect("RemoveContainer");
    guard.remove_leaving_nothing(CLEAN_TIMEOUT);
    let _ = std::fs::remove_dir_all(&log_dir);
}

/// ctr's spec carries RLIMIT_NOFILE 1024:1024 (the guest's own default hard limit is
/// higher), and a root container's effective capabilities are the spec's: containerd's
/// default set less the one dropped.
#[test]
fn ctr_rlimits_and_capabilities_hold_inside_the_container() {
    let ctrd = Containerd::start("ctr");
    let id = unique_id("rlimit");
    let out = ctrd.run(
        &["--cap-drop", "CAP_CHOWN"],
        &id,
        &[
            "sh",
            "-c",
            "echo $(ulimit -Sn):$(ulimit -Hn); grep CapEff /proc/self/status | tr -d '\\t'",
        ],
    );
    assert!(out.status.success(), "ctr run: {}", text(&out.stderr));
    let seen = text(&out.stdout);
    let mut lines = seen.lines();
    assert_eq!(lines.next(), Some("1024:1024"), "{seen}");
    let eff = lines
        .next()
        .and_then(|l| l.strip_prefix("CapEff:"))
        .and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
        .unwrap_or_else(|| panic!("no CapEff in {seen:?}"));
    assert_eq!(eff & 1, 0, "CAP_CHOWN dropped: {eff:#x}");
    assert_ne!(eff & (1 << 10), 0, "CAP_NET_BIND_SERVICE kept: {eff:#x}");
    let left = wait_clean(&id, CLEAN_TIMEOUT);
    assert!(left.is_empty(), "{id} left things behind: {left:#?}");
}
