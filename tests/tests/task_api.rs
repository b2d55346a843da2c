//! The shim's Task API driven directly (ttrpc on the socket containerd got from it), where
//! `ctr` would hide what is tested: ctr 1.6 itself drops the output of an exec that exits
//! within a few ms (with runc too). An exec that exits at once has all its output in its
//! stdout FIFO by the time Wait answers, every time.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::time::Duration;

use containerd_shim_protos::api::{DeleteRequest, ExecProcessRequest, StartRequest, WaitRequest};
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::MessageField;
use containerd_shim_protos::shim_async::{Client, TaskClient};
use kata_e2e::*;

const STATUS_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound of each Task API call, in nanoseconds (ttrpc's unit).
const CALL_TIMEOUT_NS: i64 = 30_000_000_000;
const EXECS: usize = 20;

/// The shim's Task API socket, as it told containerd (the bundle's `address` file).
fn shim_address(ctrd: &Containerd, id: &str) -> String {
    let file = ctrd
        .dir()
        .join("state/io.containerd.runtime.v2.task/default")
        .join(id)
        .join("address");
    std::fs::read_to_string(&file)
        .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
        .trim()
        .to_string()
}

fn ctx() -> containerd_shim_protos::ttrpc::context::Context {
    containerd_shim_protos::ttrpc::context::with_timeout(CALL_TIMEOUT_NS)
}

#[test]
fn an_exec_that_exits_at_once_has_its_output_in_the_fifo_when_wait_answers() {
    let ctrd = Containerd::start("ctr");
    let id = unique_id("taskapi");
    let _guard = ctrd.guard(&id);
    ctrd.run_detached_with_flags(&id, &[], &["sleep", "1000"], STATUS_TIMEOUT);
    let address = shim_address(&ctrd, &id);
    let fifos = tempfile::tempdir().expect("tempdir");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let task = TaskClient::new(Client::connect(&address).await.expect("connect"));
        for n in 0..EXECS {
            let exec_id = format!("quick{n}");
            let fifo = fifos.path().join(&exec_id);
            nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600))
                .expect("mkfifo");
            // containerd's side: the reader is open before the exec starts.
            let mut reader = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&fifo)
                .expect("open the FIFO");
            let process = serde_json::json!({
                "args": ["echo", format!("at-once-{n}")],
                "cwd": "/",
                "env": ["PATH=/bin:/usr/bin"],
                "user": {"uid": 0, "gid": 0},
            });
            let exec = ExecProcessRequest {
                id: id.clone(),
                exec_id: exec_id.clone(),
                stdout: fifo.to_string_lossy().into_owned(),
                spec: MessageField::some(Any {
                    type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process".into(),
                    value: serde_json::to_vec(&process).expect("json"),
                    ..Default::default()
                }),
                ..Default::default()
            };
            task.exec(ctx(), &exec).await.expect("Exec");
            let start = StartRequest {
                id: id.clone(),
                exec_id: exec_id.clone(),
                ..Default::default()
            };
            task.start(ctx(), &start).await.expect("Start");
            let wait = WaitRequest {
                id: id.clone(),
                exec_id: exec_id.clone(),
                ..Default::default()
            };
            assert_eq!(task.wait(ctx(), &wait).await.expect("Wait").exit_status, 0);
            // All of it is there now: read without waiting for more.
            let mut got = Vec::new();
            let mut buf = [0u8; 256];
            loop {
                match reader.read(&mut buf) {
                    Ok(0) => break,
                    Ok(k) => got.extend_from_slice(&buf[..k]),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("reading {}: {e}", fifo.display()),
                }
            }
            assert_eq!(
                String::from_utf8_lossy(&got),
                format!("at-once-{n}\n"),
                "exec {exec_id}: its stdout FIFO when Wait answered"
            );
            let delete = DeleteRequest {
                id: id.clone(),
                exec_id,
                ..Default::default()
            };
            task.delete(ctx(), &delete).await.expect("Delete");
        }
    });
}
