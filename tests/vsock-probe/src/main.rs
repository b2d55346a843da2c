//! kata-vsock-probe [--uid N] CID:PORT...: run inside a container by the isolation suite. It
//! drops to uid/gid N (an unprivileged container process), then tries each vsock address the
//! way a hostile workload would: connect, send a ttrpc `grpc.AgentService/Check` request, and
//! wait briefly for any answer. One line per address:
//! `CID:PORT refused: <error>`, `CID:PORT connected: no answer` or `CID:PORT ANSWERED <n> bytes`.

use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::time::Duration;

/// A ttrpc request frame: 10-byte header (length, stream id 1, type 1 = request, flags 0),
/// then a protobuf `Request { service, method, payload: empty }`.
fn check_request() -> Vec<u8> {
    let mut body = Vec::new();
    for (tag, text) in [(0x0a_u8, "grpc.AgentService"), (0x12, "Check")] {
        body.push(tag);
        body.push(text.len() as u8);
        body.extend_from_slice(text.as_bytes());
    }
    body.extend_from_slice(&[0x1a, 0x00]);
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&1u32.to_be_bytes());
    frame.extend_from_slice(&[1, 0]);
    frame.extend_from_slice(&body);
    frame
}

fn connect(cid: u32, port: u32) -> std::io::Result<std::fs::File> {
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh socket we own.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_vm is plain data; zeroed is a valid start.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_cid = cid;
    addr.svm_port = port;
    // SAFETY: addr lives across the call and its size is passed.
    let rc = unsafe {
        libc::connect(
            fd,
            (&addr as *const libc::sockaddr_vm).cast(),
            std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(std::fs::File::from(sock))
}

fn probe(target: &str) -> String {
    let Some((cid, port)) = target
        .split_once(':')
        .and_then(|(c, p)| Some((c.parse::<u32>().ok()?, p.parse::<u32>().ok()?)))
    else {
        return format!("{target} bad address (want CID:PORT)");
    };
    let mut conn = match connect(cid, port) {
        Ok(c) => c,
        Err(e) => return format!("{target} refused: {e}"),
    };
    let tv = libc::timeval {
        tv_sec: 2,
        tv_usec: 0,
    };
    // SAFETY: setsockopt with a timeval that outlives the call.
    unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&conn),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        );
    }
    let _ = conn.write_all(&check_request());
    let mut buf = [0u8; 4096];
    match conn.read(&mut buf) {
        Ok(0) | Err(_) => format!("{target} connected: no answer"),
        Ok(n) => format!("{target} ANSWERED {n} bytes"),
    }
}

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--uid") && args.len() > 1 {
        let id: u32 = args[1].parse().unwrap_or(65534);
        args.drain(..2);
        // SAFETY: setgroups/setgid/setuid with plain values; checked below.
        let dropped = unsafe {
            libc::setgroups(0, std::ptr::null()) == 0
                && libc::setgid(id) == 0
                && libc::setuid(id) == 0
        };
        if !dropped {
            println!(
                "cannot drop to uid {id}: {}",
                std::io::Error::last_os_error()
            );
            std::process::exit(2);
        }
    }
    // SAFETY: getuid cannot fail.
    println!("uid {}", unsafe { libc::getuid() });
    for target in &args {
        println!("{}", probe(target));
    }
    let _ = std::io::stdout().flush();
    // ctr 1.6 drops the output of a process that exits within ms of starting.
    std::thread::sleep(Duration::from_millis(100));
}
