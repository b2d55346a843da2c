//! The typed guest-spec rewrite against real specs containerd 1.6 and 2.x wrote for `ctr` and
//! CRI containers (`shim/tests/data/oci-specs/`, captured by `scripts/capture-oci-specs.sh`):
//! none is refused but the host-network pod's sandbox, and every field survives except the
//! ones the rewrite exists to change.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kata_shim::resources::spec;
use serde_json::Value;

/// Every leaf of a JSON document by its pointer (`/linux/resources/memory/limit`).
fn leaves(v: &Value, at: String, out: &mut BTreeMap<String, Value>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, v) in m {
                let k = k.replace('~', "~0").replace('/', "~1");
                leaves(v, format!("{at}/{k}"), out);
            }
        }
        Value::Array(a) if !a.is_empty() => {
            for (i, v) in a.iter().enumerate() {
                leaves(v, format!("{at}/{i}"), out);
            }
        }
        leaf => {
            out.insert(at, leaf.clone());
        }
    }
}

/// Capability lists are sets (order carries no meaning, and the typed spec keeps them in a
/// hash set, as the agent does): sorted before comparing.
fn normalised(mut v: Value) -> Value {
    if let Some(caps) = v
        .pointer_mut("/process/capabilities")
        .and_then(Value::as_object_mut)
    {
        for list in caps.values_mut().filter_map(Value::as_array_mut) {
            list.sort_by(|a, b| a.as_str().cmp(&b.as_str()));
        }
    }
    v
}

fn fixtures() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/oci-specs");
    let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("fixture dir")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    found.sort();
    found
}

/// What the rewrite changes on purpose: the rootfs and bind sources point into the share,
/// host-only fields go, namespace paths (host /proc paths) go.
fn rewritten_on_purpose(pointer: &str, bind_sources: &[String]) -> bool {
    const HOST_ONLY: &[&str] = &[
        "/root/path",
        "/hooks",
        "/process/apparmorProfile",
        "/process/selinuxLabel",
        "/linux/cgroupsPath",
        "/linux/devices",
        "/linux/mountLabel",
        "/linux/intelRdt",
    ];
    HOST_ONLY
        .iter()
        .any(|p| pointer == *p || pointer.starts_with(&format!("{p}/")))
        || bind_sources.iter().any(|s| s == pointer)
        || (pointer.starts_with("/linux/namespaces/") && pointer.ends_with("/path"))
}

#[test]
fn real_specs_round_trip_through_the_typed_spec() {
    let files = fixtures();
    let names: Vec<String> = files
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    // Both containerd versions, ctr and CRI (sandbox and container).
    for want in [
        "containerd1.6-ctr",
        "containerd2-ctr",
        "-cri-sandbox",
        "-cri-container",
    ] {
        assert!(
            names.iter().any(|n| n.contains(want)),
            "no fixture {want} in {names:?}"
        );
    }
    for file in &files {
        let bytes = std::fs::read(file).expect("read fixture");
        let name = file.display().to_string();
        let input = normalised(serde_json::from_slice(&bytes).expect("fixture is JSON"));
        let typed = spec::parse(&bytes, &name).unwrap_or_else(|e| panic!("refused: {e}"));

        // Unchanged, the typed spec writes back every field it read, with the same value.
        let mut before = BTreeMap::new();
        leaves(&input, String::new(), &mut before);
        let mut after = BTreeMap::new();
        leaves(
            &normalised(serde_json::to_value(&typed).expect("encode")),
            String::new(),
            &mut after,
        );
        let lost: Vec<_> = before
            .iter()
            .filter(|(k, v)| after.get(*k) != Some(v))
            .collect();
        assert!(lost.is_empty(), "{name}: lost or changed {lost:#?}");

        // Rewritten for the guest: only what the rewrite is for changes.
        let binds = spec::host_binds(&typed);
        let guest: Vec<(usize, String)> = binds
            .iter()
            .map(|b| (b.index, format!("/guest/{}", b.index)))
            .collect();
        let bind_sources: Vec<String> = binds
            .iter()
            .map(|b| format!("/mounts/{}/source", b.index))
            .collect();
        // The CRI fixtures are of a host-network pod (scripts/cri-client.py): its sandbox is
        // refused, naming the field; its container (which joins the pause's namespaces by
        // path) is not.
        if name.contains("-cri-sandbox") {
            let err = spec::rewrite_for_guest(&typed, "c1", &guest)
                .expect_err("a host-network pod sandbox is refused");
            assert!(err.message.contains("hostNetwork"), "{name}: {err}");
            continue;
        }
        let out = spec::rewrite_for_guest(&typed, "c1", &guest)
            .unwrap_or_else(|e| panic!("{name}: rewrite refused: {e}"));
        let mut rewritten = BTreeMap::new();
        leaves(
            &normalised(serde_json::to_value(&out).expect("encode")),
            String::new(),
            &mut rewritten,
        );
        let dropped: Vec<_> = before
            .iter()
            .filter(|(k, _)| !rewritten_on_purpose(k, &bind_sources))
            .filter(|(k, v)| rewritten.get(*k) != Some(v))
            .collect();
        assert!(dropped.is_empty(), "{name}: the rewrite lost {dropped:#?}");
        assert_eq!(
            rewritten.get("/root/path"),
            Some(&Value::String(kata_shim::resources::share::guest_rootfs(
                "c1"
            )))
        );
        for (index, path) in &guest {
            assert_eq!(
                rewritten.get(&format!("/mounts/{index}/source")),
                Some(&Value::String(path.clone())),
                "{name}"
            );
        }
    }
}
