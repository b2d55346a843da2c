//! The agent API shared by the shim (client) and kata-agent (server).
//!
//! Messages and stubs are generated at build time from `protos/agent.proto`.

/// Generated code: lints are the generator's business, so they are silenced once for both files.
#[allow(
    clippy::all,
    unused_mut,
    unused_imports,
    unused_attributes,
    unused_qualifications,
    missing_docs,
    non_camel_case_types,
    non_snake_case,
    non_upper_case_globals,
    dead_code
)]
mod generated {
    pub mod agent {
        include!(concat!(env!("OUT_DIR"), "/agent.rs"));
    }
    // The stubs name the messages as `super::agent::...`.
    pub mod agent_ttrpc {
        include!(concat!(env!("OUT_DIR"), "/agent_ttrpc.rs"));
    }
}

pub use generated::{agent, agent_ttrpc};

pub mod rules;
pub mod stdio_stream;

/// vsock port of the agent's ttrpc server.
pub const AGENT_TTRPC_PORT: u32 = 1024;
/// vsock port on which the agent streams its log lines to the host.
pub const AGENT_LOG_PORT: u32 = 1025;
/// vsock port of the guest debug console (only when enabled).
pub const DEBUG_CONSOLE_PORT: u32 = 1026;
/// vsock port of the processes' stdio connections (`stdio_stream`).
pub const STDIO_PORT: u32 = 1027;

/// The most stdio bytes one ReadStdout/ReadStderr returns and one WriteStdin carries (the shim
/// asks for this much; the agent's pipes hold this much, so a writer runs ahead while a read
/// crosses the vsock). Far below ttrpc's 4 MiB message limit.
pub const STDIO_CHUNK: usize = 1024 * 1024;

/// Guest directory under which every path the host names (storages, CopyFile) must lie.
pub const GUEST_RUN_DIR: &str = "/run/kata-containers";
/// Guest mount point of the sandbox's shared filesystem (virtio-fs or 9p).
pub const GUEST_SHARED_DIR: &str = "/run/kata-containers/shared/containers";
/// How long after StartContainer the agent holds a SIGTERM, SIGINT or SIGHUP sent to the
/// container's init before the init handles it, to send it once it does (a PID 1 of a pid
/// namespace drops the signals it does not handle): `agent/src/runtime/early_signal.rs`.
pub const EARLY_SIGNAL_WINDOW: std::time::Duration = std::time::Duration::from_secs(10);
/// Mount tag of the sandbox's shared filesystem.
pub const SHARED_FS_TAG: &str = "kataShared";
/// Guest directory naming other containers' namespaces in a guest spec: a `linux.namespaces`
/// entry whose path is `<GUEST_CONTAINER_NS_DIR>/<container id>` joins that namespace type
/// of the init of that container in the same sandbox (a pod's containers joining the pod
/// sandbox container's IPC, UTS and PID namespaces). Nothing exists at these paths: the agent
/// joins through the init's pidfd, and refuses every other namespace path.
pub const GUEST_CONTAINER_NS_DIR: &str = "/run/kata-containers/container-ns";

/// The guest namespace path naming container `container_id`'s namespaces.
pub fn container_ns_path(container_id: &str) -> String {
    format!("{GUEST_CONTAINER_NS_DIR}/{container_id}")
}

/// The container a [`container_ns_path`] names; `None` for any other path (the id itself is
/// checked by the caller, with the other ids).
pub fn container_of_ns_path(path: &str) -> Option<&str> {
    path.strip_prefix(GUEST_CONTAINER_NS_DIR)?
        .strip_prefix('/')
        .filter(|id| !id.is_empty() && !id.contains('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_ns_paths_round_trip() {
        assert_eq!(
            container_of_ns_path(&container_ns_path("sb-1")),
            Some("sb-1")
        );
        for other in [
            "/proc/42/ns/ipc",
            GUEST_CONTAINER_NS_DIR,
            "/run/kata-containers/container-ns/",
            "/run/kata-containers/container-nsx/a",
            "/run/kata-containers/container-ns/a/b",
        ] {
            assert_eq!(container_of_ns_path(other), None, "{other}");
        }
    }
}
