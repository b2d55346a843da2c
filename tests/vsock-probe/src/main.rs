//! kata-vsock-probe [--uid N] CID:PORT...: run inside a container by the isolation suite. It
//! drops to uid/gid N (an unprivileged container process), then tries each vsock address the
//! way a hostile workload would: connect, send a ttrpc `grpc.AgentService/Check` request, and
//! wait briefly for any answer. One line per address:
//! `CID:PORT refused: <error>`, `CID:PORT connected: no answer` or `CID:PORT ANSWERED <n> bytes`.
//!
//! `make bench` runs it too, for the raw vsock throughput stdio is compared with:
//! `--to-host PORT BYTES` writes BYTES to the host's PORT in 64 KiB chunks;
//! `--from-host PORT BYTES` reads BYTES from it, then answers one byte; and the same streams
//! through its stdio, which is what is compared: `--to-stdout BYTES`, `--from-stdin BYTES`.

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

/// The host's vsock address (VMADDR_CID_HOST).
const HOST_CID: u32 = 2;
/// The chunk the raw throughput runs write and read, as stdio copiers do.
const CHUNK: usize = 64 * 1024;

/// `--to-host`/`--from-host`: one stream of `bytes` bytes between this guest and the host.
fn stream(direction: &str, port: &str, bytes: &str) -> std::io::Result<()> {
    let port: u32 = port
        .parse()
        .map_err(|_| std::io::Error::other("bad port"))?;
    let mut conn = connect(HOST_CID, port)?;
    if direction == "--to-host" {
        write_zeros(&mut conn, count(bytes)?)
    } else {
        read_all(&mut conn, count(bytes)?)?;
        conn.write_all(b"k")
    }
    // The host reads to the byte count; a full close (not shutdown) ends the stream here.
}

fn count(bytes: &str) -> std::io::Result<u64> {
    bytes
        .parse()
        .map_err(|_| std::io::Error::other("bad byte count"))
}

fn write_zeros(w: &mut impl Write, mut left: u64) -> std::io::Result<()> {
    let buf = vec![0u8; CHUNK];
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        w.write_all(&buf[..n])?;
        left -= n as u64;
    }
    w.flush()
}

fn read_all(r: &mut impl Read, mut left: u64) -> std::io::Result<()> {
    let mut buf = vec![0u8; CHUNK];
    while left > 0 {
        let n = r.read(&mut buf)?;
        if n == 0 {
            return Err(std::io::Error::other(format!(
                "EOF with {left} bytes to go"
            )));
        }
        left = left.saturating_sub(n as u64);
    }
    Ok(())
}

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if let [dir, bytes] = args.as_slice() {
        let done = match dir.as_str() {
            "--to-stdout" => {
                Some(count(bytes).and_then(|n| write_zeros(&mut std::io::stdout().lock(), n)))
            }
            "--from-stdin" => {
                Some(count(bytes).and_then(|n| read_all(&mut std::io::stdin().lock(), n)))
            }
            _ => None,
        };
        if let Some(r) = done {
            if let Err(e) = r {
                eprintln!("{dir}: {e}");
                std::process::exit(1);
            }
            return;
        }
    }
    if let [dir, port, bytes] = args.as_slice() {
        if dir == "--to-host" || dir == "--from-host" {
            if let Err(e) = stream(dir, port, bytes) {
                println!("{dir} {port}: {e}");
                std::process::exit(1);
            }
            return;
        }
    }
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
