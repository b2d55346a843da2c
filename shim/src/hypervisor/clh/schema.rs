//! Our request bodies checked against cloud-hypervisor's published API description.
//!
//! Source read: cloud-hypervisor/cloud-hypervisor, vmm/src/api/openapi/cloud-hypervisor.yaml
//! at commit 00f68228812d8dfeb50369c597b18e06cea42b10 (OpenAPI 3.0.1, `info.version` 0.3.0).
//! The tables below are our own summary of what that file documents for the objects we send
//! or read: for each object, its required fields and the JSON type of every documented
//! property. Objects we never send are named (so a documented property is not "unknown") but
//! not described; a body of ours that contains one fails the check.

use serde_json::Value;

/// JSON type of a property.
#[derive(Debug, Clone, Copy)]
pub enum Ty {
    Str,
    Bool,
    /// Integer, with the documented minimum if any.
    Int(Option<i64>),
    /// Another object of the description, by name.
    Obj(&'static str),
    ArrayOf(&'static Ty),
    /// String limited to these values.
    Enum(&'static [&'static str]),
}

pub struct Object {
    pub name: &'static str,
    pub required: &'static [&'static str],
    pub properties: &'static [(&'static str, Ty)],
}

const STR: Ty = Ty::Str;
const BOOL: Ty = Ty::Bool;
const INT: Ty = Ty::Int(None);
const CONSOLE_MODE: Ty = Ty::Enum(&["Off", "Pty", "Tty", "File", "Socket", "Null"]);
const VM_STATE: Ty = Ty::Enum(&["Created", "Running", "Shutdown", "Paused", "BreakPoint"]);

pub const OBJECTS: &[Object] = &[
    Object {
        name: "VmConfig",
        required: &["payload"],
        properties: &[
            ("cpus", Ty::Obj("CpusConfig")),
            ("memory", Ty::Obj("MemoryConfig")),
            ("payload", Ty::Obj("PayloadConfig")),
            (
                "rate_limit_groups",
                Ty::ArrayOf(&Ty::Obj("RateLimitGroupConfig")),
            ),
            ("disks", Ty::ArrayOf(&Ty::Obj("DiskConfig"))),
            ("net", Ty::ArrayOf(&Ty::Obj("NetConfig"))),
            ("rng", Ty::Obj("RngConfig")),
            ("balloon", Ty::Obj("BalloonConfig")),
            ("fs", Ty::ArrayOf(&Ty::Obj("FsConfig"))),
            (
                "generic_vhost_user",
                Ty::ArrayOf(&Ty::Obj("GenericVhostUserConfig")),
            ),
            ("pmem", Ty::ArrayOf(&Ty::Obj("PmemConfig"))),
            ("serial", Ty::Obj("SerialConfig")),
            ("console", Ty::Obj("ConsoleConfig")),
            ("debug_console", Ty::Obj("DebugConsoleConfig")),
            ("devices", Ty::ArrayOf(&Ty::Obj("DeviceConfig"))),
            ("user_devices", Ty::ArrayOf(&Ty::Obj("UserDeviceConfig"))),
            ("vdpa", Ty::ArrayOf(&Ty::Obj("VdpaConfig"))),
            ("vsock", Ty::Obj("VsockConfig")),
            ("numa", Ty::ArrayOf(&Ty::Obj("NumaConfig"))),
            ("iommu", BOOL),
            ("watchdog", BOOL),
            ("rtc", Ty::Obj("RtcConfig")),
            ("pvpanic", BOOL),
            ("pci_segments", Ty::ArrayOf(&Ty::Obj("PciSegmentConfig"))),
            ("platform", Ty::Obj("PlatformConfig")),
            ("tpm", Ty::Obj("TpmConfig")),
            ("landlock_enable", BOOL),
            ("landlock_rules", Ty::ArrayOf(&Ty::Obj("LandlockConfig"))),
        ],
    },
    Object {
        name: "PayloadConfig",
        required: &[],
        properties: &[
            ("firmware", STR),
            ("kernel", STR),
            ("cmdline", STR),
            ("initramfs", STR),
            ("igvm", STR),
            ("host_data", STR),
        ],
    },
    Object {
        name: "CpusConfig",
        required: &["boot_vcpus", "max_vcpus"],
        properties: &[
            ("boot_vcpus", Ty::Int(Some(1))),
            ("max_vcpus", Ty::Int(Some(1))),
            ("topology", Ty::Obj("CpuTopology")),
            ("kvm_hyperv", BOOL),
            ("max_phys_bits", INT),
            ("nested", BOOL),
            ("affinity", Ty::ArrayOf(&Ty::Obj("CpuAffinity"))),
            ("features", Ty::Obj("CpuFeatures")),
            ("core_scheduling", Ty::Enum(&["Vm", "Vcpu", "Off"])),
        ],
    },
    Object {
        name: "MemoryConfig",
        required: &["size"],
        properties: &[
            ("size", INT),
            ("hotplug_size", INT),
            ("hotplugged_size", INT),
            ("mergeable", BOOL),
            ("hotplug_method", STR),
            ("shared", BOOL),
            ("hugepages", BOOL),
            ("hugepage_size", INT),
            ("prefault", BOOL),
            ("reserve", BOOL),
            ("thp", BOOL),
            ("zones", Ty::ArrayOf(&Ty::Obj("MemoryZoneConfig"))),
        ],
    },
    Object {
        name: "SerialConfig",
        required: &["mode"],
        properties: &[("file", STR), ("socket", STR), ("mode", CONSOLE_MODE)],
    },
    Object {
        name: "ConsoleConfig",
        required: &["mode"],
        properties: &[
            ("file", STR),
            ("socket", STR),
            ("mode", CONSOLE_MODE),
            ("iommu", BOOL),
            ("id", STR),
            ("pci_segment", INT),
            ("pci_device_id", INT),
        ],
    },
    Object {
        name: "VsockConfig",
        required: &["cid", "socket"],
        properties: &[
            ("cid", Ty::Int(Some(3))),
            ("socket", STR),
            ("iommu", BOOL),
            ("pci_segment", INT),
            ("pci_device_id", INT),
            ("id", STR),
        ],
    },
    Object {
        name: "FsConfig",
        required: &["num_queues", "queue_size", "socket", "tag"],
        properties: &[
            ("tag", STR),
            ("socket", STR),
            ("num_queues", INT),
            ("queue_size", INT),
            ("pci_segment", INT),
            ("pci_device_id", INT),
            ("id", STR),
        ],
    },
    Object {
        name: "NetConfig",
        required: &[],
        properties: &[
            ("tap", STR),
            ("ip", STR),
            ("mask", STR),
            ("mac", STR),
            ("host_mac", STR),
            ("mtu", INT),
            ("iommu", BOOL),
            ("num_queues", INT),
            ("queue_size", INT),
            ("vhost_user", BOOL),
            ("vhost_socket", STR),
            ("vhost_mode", STR),
            ("id", STR),
            ("pci_segment", INT),
            ("pci_device_id", INT),
            ("rate_limiter_config", Ty::Obj("RateLimiterConfig")),
            ("offload_tso", BOOL),
            ("offload_ufo", BOOL),
            ("offload_csum", BOOL),
        ],
    },
    Object {
        name: "RngConfig",
        required: &["src"],
        properties: &[
            ("id", STR),
            ("pci_segment", INT),
            ("pci_device_id", INT),
            ("iommu", BOOL),
            ("src", STR),
        ],
    },
    // Answers we read.
    Object {
        name: "VmmPingResponse",
        required: &["version"],
        properties: &[
            ("build_version", STR),
            ("version", STR),
            ("pid", INT),
            ("features", Ty::ArrayOf(&STR)),
        ],
    },
    Object {
        name: "VmInfo",
        required: &["config", "state"],
        properties: &[
            ("config", Ty::Obj("VmConfig")),
            ("state", VM_STATE),
            ("memory_actual_size", INT),
            ("device_tree", Ty::Obj("DeviceTree")),
        ],
    },
    Object {
        name: "PciDeviceInfo",
        required: &["id", "bdf"],
        properties: &[("id", STR), ("bdf", STR)],
    },
];

fn object(name: &str) -> Option<&'static Object> {
    OBJECTS.iter().find(|o| o.name == name)
}

/// Checks `value` as an instance of object `name`; returns every problem found, each with its
/// JSON path.
pub fn check(name: &str, value: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    check_object(name, value, name, &mut problems);
    problems
}

fn check_object(name: &str, value: &Value, at: &str, problems: &mut Vec<String>) {
    let Some(schema) = object(name) else {
        problems.push(format!(
            "{at}: {name} is not described by our table (not expected in our bodies)"
        ));
        return;
    };
    let Some(map) = value.as_object() else {
        problems.push(format!("{at}: expected an object {name}, got {value}"));
        return;
    };
    for r in schema.required {
        if !map.contains_key(*r) {
            problems.push(format!("{at}: required field {r:?} missing"));
        }
    }
    for (key, v) in map {
        let path = format!("{at}.{key}");
        match schema.properties.iter().find(|(p, _)| p == key) {
            None => problems.push(format!("{path}: not a documented property of {name}")),
            Some((_, ty)) => check_value(ty, v, &path, problems),
        }
    }
}

fn check_value(ty: &Ty, v: &Value, at: &str, problems: &mut Vec<String>) {
    match ty {
        Ty::Str if !v.is_string() => problems.push(format!("{at}: expected a string, got {v}")),
        Ty::Bool if !v.is_boolean() => problems.push(format!("{at}: expected a boolean, got {v}")),
        Ty::Int(min) => match v.as_i64() {
            // int64 in the description: a u64 above i64::MAX does not fit either.
            None => problems.push(format!("{at}: expected a 64-bit integer, got {v}")),
            Some(n) => {
                if let Some(m) = min {
                    if n < *m {
                        problems.push(format!("{at}: {n} is below the minimum {m}"));
                    }
                }
            }
        },
        Ty::Enum(allowed) => match v.as_str() {
            Some(s) if allowed.contains(&s) => {}
            _ => problems.push(format!("{at}: {v} is not one of {allowed:?}")),
        },
        Ty::Obj(name) => check_object(name, v, at, problems),
        Ty::ArrayOf(item) => match v.as_array() {
            None => problems.push(format!("{at}: expected an array, got {v}")),
            Some(items) => {
                for (i, x) in items.iter().enumerate() {
                    check_value(item, x, &format!("{at}[{i}]"), problems);
                }
            }
        },
        Ty::Str | Ty::Bool => {}
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use serde_json::json;

    use super::super::api::*;
    use super::super::{vm_config, ClhConfig};
    use super::*;
    use crate::config::SharedFs;
    use crate::hypervisor::VmPaths;

    fn assert_valid(name: &str, v: &Value) {
        let p = check(name, v);
        assert!(p.is_empty(), "{name} {v}:\n{}", p.join("\n"));
    }

    fn body(shared_fs: SharedFs) -> Value {
        let mut c = ClhConfig::default();
        c.guest.shared_fs = shared_fs;
        c.guest.default_vcpus = 2;
        c.guest.default_maxvcpus = 0;
        let paths = VmPaths::new("/run/kata-containers/s1");
        serde_json::to_value(vm_config(&c, "console=ttyS0".into(), &paths, 8)).expect("json")
    }

    #[test]
    fn vm_create_body_matches_the_description() {
        let v = body(SharedFs::VirtioFs);
        assert_valid("VmConfig", &v);
        // The fields that matter, with the values cloud-hypervisor expects.
        assert_eq!(v["cpus"], json!({"boot_vcpus": 2, "max_vcpus": 8}));
        assert_eq!(v["memory"], json!({"size": 512u64 << 20, "shared": true}));
        assert_eq!(
            v["serial"],
            json!({"mode": "Socket", "socket": "/run/kata-containers/s1/console.sock"})
        );
        assert_eq!(v["console"], json!({"mode": "Off"}));
        assert_eq!(
            v["vsock"],
            json!({"cid": 3, "socket": "/run/kata-containers/s1/vsock.sock"})
        );
        assert_eq!(
            v["fs"],
            json!([{
                "tag": protocol::SHARED_FS_TAG,
                "socket": "/run/kata-containers/s1/virtiofsd.sock",
                "num_queues": 1,
                "queue_size": 1024
            }])
        );
        assert_eq!(v["payload"]["cmdline"], "console=ttyS0");
        assert_eq!(v["rng"], json!({"src": "/dev/urandom"}));

        let v = body(SharedFs::None);
        assert_valid("VmConfig", &v);
        assert!(v.get("fs").is_none(), "{v}");
        assert!(v.get("net").is_none(), "{v}");
    }

    #[test]
    fn hotplug_bodies_match_the_description() {
        let net = NetConfig {
            tap: Some("tap0_kata".into()),
            mac: Some("02:00:00:00:00:01".into()),
            mtu: Some(1500),
            num_queues: Some(2),
            queue_size: Some(256),
            id: Some("net0".into()),
            ..NetConfig::default()
        };
        let v = serde_json::to_value(&net).expect("json");
        assert_valid("NetConfig", &v);
        assert_valid(
            "NetConfig",
            &serde_json::to_value(NetConfig::default()).expect("json"),
        );
        let fs = FsConfig {
            tag: "extra".into(),
            socket: PathBuf::from("/run/x/fs2.sock"),
            num_queues: 1,
            queue_size: 1024,
            id: Some("fs1".into()),
        };
        assert_valid("FsConfig", &serde_json::to_value(&fs).expect("json"));
        let vs = VsockConfig {
            cid: 3,
            socket: "/s".into(),
            id: Some("vsock0".into()),
        };
        assert_valid("VsockConfig", &serde_json::to_value(&vs).expect("json"));
    }

    /// Documented answers with only their required fields parse into our types.
    #[test]
    fn documented_answers_parse() {
        let ping = json!({"version": "v41.0"});
        assert_valid("VmmPingResponse", &ping);
        let p: VmmPingResponse = serde_json::from_value(ping).expect("ping");
        assert_eq!(p.version, "v41.0");

        for state in ["Created", "Running", "Shutdown", "Paused", "BreakPoint"] {
            let info = json!({"config": {"payload": {}}, "state": state});
            assert_valid("VmInfo", &info);
            let i: VmInfo = serde_json::from_value(info).expect("info");
            assert_eq!(serde_json::to_value(i.state).expect("state"), state);
        }
        let dev = json!({"id": "_net2", "bdf": "0000:00:05.0"});
        assert_valid("PciDeviceInfo", &dev);
        let d: PciDeviceInfo = serde_json::from_value(dev).expect("dev");
        assert_eq!(d.bdf, "0000:00:05.0");
    }

    /// Every enum value we can send is one the description allows.
    #[test]
    fn console_modes() {
        for m in [
            ConsoleMode::Off,
            ConsoleMode::Pty,
            ConsoleMode::Tty,
            ConsoleMode::File,
            ConsoleMode::Socket,
            ConsoleMode::Null,
        ] {
            let s = SerialConfig {
                mode: m,
                file: None,
                socket: None,
            };
            assert_valid("SerialConfig", &serde_json::to_value(&s).expect("json"));
        }
    }

    /// The checker itself catches each kind of mistake (so the checks above can fail).
    #[test]
    fn checker_rejects_bad_bodies() {
        let good = body(SharedFs::VirtioFs);
        let with = |f: &dyn Fn(&mut Value)| {
            let mut v = good.clone();
            f(&mut v);
            check("VmConfig", &v)
        };
        let expect = |problems: Vec<String>, needle: &str| {
            assert!(
                problems.iter().any(|p| p.contains(needle)),
                "expected {needle:?} in {problems:?}"
            );
        };
        expect(
            with(&|v| {
                v.as_object_mut().map(|m| m.remove("payload"));
            }),
            "VmConfig: required field \"payload\" missing",
        );
        expect(
            with(&|v| v["payload"]["kernel_path"] = json!("/k")),
            "VmConfig.payload.kernel_path: not a documented property of PayloadConfig",
        );
        expect(
            with(&|v| v["vsock"]["cid"] = json!("3")),
            "VmConfig.vsock.cid: expected a 64-bit integer",
        );
        expect(
            with(&|v| v["vsock"]["cid"] = json!(2)),
            "VmConfig.vsock.cid: 2 is below the minimum 3",
        );
        expect(
            with(&|v| v["cpus"]["boot_vcpus"] = json!(0)),
            "below the minimum 1",
        );
        expect(
            with(&|v| v["memory"]["size"] = json!(u64::MAX)),
            "VmConfig.memory.size: expected a 64-bit integer",
        );
        expect(
            with(&|v| v["serial"]["mode"] = json!("file")),
            "VmConfig.serial.mode: \"file\" is not one of",
        );
        expect(
            with(&|v| v["memory"]["shared"] = json!("on")),
            "VmConfig.memory.shared: expected a boolean",
        );
        expect(
            with(&|v| {
                v["fs"][0].as_object_mut().map(|m| m.remove("tag"));
            }),
            "VmConfig.fs[0]: required field \"tag\" missing",
        );
        expect(
            with(&|v| v["fs"] = json!({"tag": "x"})),
            "VmConfig.fs: expected an array",
        );
        expect(
            with(&|v| v["disks"] = json!([{"path": "/d"}])),
            "VmConfig.disks[0]: DiskConfig is not described",
        );
        expect(
            with(&|v| v["payload"] = json!("vmlinux")),
            "VmConfig.payload: expected an object PayloadConfig",
        );
    }
}
