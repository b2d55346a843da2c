//! Fuzz target: the agent's decoding of the requests it serves (the host's, but the agent
//! must never panic on any) and its translation of what they carry: the OCI spec of
//! CreateContainer (checks, mount options, cgroup and seccomp translation), an exec's process,
//! UpdateContainer's resources, CopyFile's and storages' paths.
#![no_main]

use kata_agent::runtime::{cgroup, container, mount, seccomp};
use kata_agent::validate;
use libfuzzer_sys::fuzz_target;
use oci_spec::runtime::{LinuxResources, Process, Spec};
use protobuf::Message;
use protocol::agent as pb;

fn translate_resources(r: &LinuxResources) {
    let _ = cgroup::translate(r);
}

fn translate_spec(json: &[u8]) {
    let Ok(spec) = serde_json::from_slice::<Spec>(json) else {
        return;
    };
    let _ = container::check_spec(&spec);
    for m in spec.mounts().iter().flatten() {
        let options = m.options().clone().unwrap_or_default();
        let _ = mount::parse_options(&options);
        let _ = validate::absolute_path(&m.destination().to_string_lossy());
    }
    if let Some(linux) = spec.linux() {
        if let Some(r) = linux.resources() {
            translate_resources(r);
        }
        if let Some(sc) = linux.seccomp() {
            let _ = seccomp::translate(sc);
            let _ = seccomp::compile(sc);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, bytes)) = data.split_first() else {
        return;
    };
    match which % 5 {
        0 => {
            if let Ok(r) = pb::CreateContainerRequest::parse_from_bytes(bytes) {
                let _ = validate::container_id(&r.container_id);
                for s in &r.storages {
                    let _ = validate::path_under(&s.mount_point, protocol::GUEST_RUN_DIR);
                }
                translate_spec(&r.oci_spec_json);
            }
        }
        1 => {
            if let Ok(r) = pb::ExecProcessRequest::parse_from_bytes(bytes) {
                let _ = validate::exec_id(&r.exec_id);
                if let Ok(p) = serde_json::from_slice::<Process>(&r.process_json) {
                    let _ = container::check_process(&p);
                }
            }
        }
        2 => {
            if let Ok(r) = pb::UpdateContainerRequest::parse_from_bytes(bytes) {
                if let Ok(res) = serde_json::from_slice::<LinuxResources>(&r.resources_json) {
                    translate_resources(&res);
                }
            }
        }
        3 => {
            if let Ok(r) = pb::CopyFileRequest::parse_from_bytes(bytes) {
                let _ = validate::path_under(&r.path, protocol::GUEST_RUN_DIR);
            }
        }
        // The spec alone, so the fuzzer need not learn the protobuf framing to reach it.
        _ => translate_spec(bytes),
    }
});
