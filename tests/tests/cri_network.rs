//! Pod networking (the tcfilter model): a kata pod's IP answers from the host and from another
//! pod, its two containers reach each other over the pod IP and localhost, a CNI portmap
//! hostPort reaches it, CRI's resolv.conf, hosts and hostname reach every container, and
//! nothing (tap, qdisc, VM) is left after Stop/RemovePodSandbox. On containerd 1.6 and 2.x.
//! Plus, through `ctr` with a netns this test makes: the shim's taps and qdiscs are gone with
//! the container, and a netns it cannot plumb fails the start and is left as it was.

use kata_e2e::cri::{self, api, Cri, KATA_HANDLER};
use kata_e2e::*;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

const EXEC_TIMEOUT_SECS: i64 = 30;
const STOP_GRACE_SECS: i64 = 1;
const CLEAN_TIMEOUT: Duration = Duration::from_secs(15);
/// Bound on one host command (ip, tc, nsenter).
const CMD_LIMIT: Duration = Duration::from_secs(10);
const PORT: u16 = 8080;
/// The static neighbour put into the test's netns (the gateway's MAC).
const NEIGH_MAC: &str = "ee:00:00:00:00:01";

/// `args` bounded by CMD_LIMIT: every external command is bounded.
fn run(args: &[&str]) -> Output {
    bounded(args[0], CMD_LIMIT)
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("running {args:?}: {e}"))
}

fn run_ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "{args:?}: {:?} {}",
        out.status,
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// `ip -d link` and `tc qdisc` inside the netns at `ns` (a path nsenter accepts).
fn netns_state(ns: &str) -> (String, String) {
    let net = format!("--net={ns}");
    (
        run_ok(&["nsenter", &net, "ip", "-d", "link", "show"]),
        run_ok(&["nsenter", &net, "tc", "qdisc", "show"]),
    )
}

fn exec(cri: &Cri, id: &str, cmd: &[&str]) -> (i32, String, String) {
    let out = cri.exec_sync(id, cmd, EXEC_TIMEOUT_SECS).expect("ExecSync");
    (out.exit_code, text(&out.stdout), text(&out.stderr))
}

/// An HTTP GET from inside a container, bounded (busybox `nc`: busybox-static's `wget`
/// segfaults, on the host too).
fn get_cmd(host: &str) -> Vec<String> {
    vec![
        "sh".into(),
        "-c".into(),
        format!("printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | nc -w 5 {host} {PORT}"),
    ]
}

/// A busybox httpd on PORT serving `body`.
fn web(name: &str, body: &str) -> api::ContainerConfig {
    let script = format!(
        "mkdir -p /tmp/www && echo {body} > /tmp/www/index.html && exec httpd -f -p {PORT} -h /tmp/www"
    );
    cri::container_config(name, &["sh", "-c", &script])
}

struct Pod<'a> {
    config: api::PodSandboxConfig,
    id: String,
    ip: String,
    netns: String,
    log_dir: PathBuf,
    _guard: cri::PodGuard<'a>,
}

fn run_pod<'a>(
    ctrd: &Containerd,
    cri: &'a Cri,
    name: &str,
    handler: &str,
    edit: impl FnOnce(&mut api::PodSandboxConfig),
) -> Pod<'a> {
    let log_dir = ctrd.dir().join("pods").join(unique_id(name));
    std::fs::create_dir_all(&log_dir).expect("pod log dir");
    let mut config = cri::pod_config(name, &log_dir, &[]);
    edit(&mut config);
    let id = cri
        .run_pod(&config, handler)
        .unwrap_or_else(|e| panic!("{name}: {e:#}\ncontainerd log:\n{}", ctrd.log_tail(40)));
    let guard = cri.guard(&id);
    let status = cri.pod_status(&id).expect("PodSandboxStatus");
    let ip = status
        .status
        .as_ref()
        .and_then(|s| s.network.as_ref())
        .map(|n| n.ip.clone())
        .unwrap_or_default();
    assert!(!ip.is_empty(), "{name}: no pod IP");
    let netns = cri
        .pod_netns(&id)
        .unwrap_or_else(|e| panic!("{name}: {e:#}"));
    println!("{name}: pod {id}, IP {ip}, netns {netns}");
    Pod {
        config,
        id,
        ip,
        netns,
        log_dir,
        _guard: guard,
    }
}

fn start(ctrd: &Containerd, cri: &Cri, pod: &Pod, c: &api::ContainerConfig) -> String {
    cri.create_container(&pod.id, c, &pod.config)
        .and_then(|id| cri.start_container(&id).map(|()| id))
        .unwrap_or_else(|e| panic!("{e:#}\ncontainerd log:\n{}", ctrd.log_tail(40)))
}

/// The bridge's address (the pods' gateway): `.1` of CRI_SUBNET.
fn gateway() -> String {
    let subnet = shell_var("CRI_SUBNET").expect("CRI_SUBNET in lib.sh");
    let net = subnet.split('/').next().unwrap_or_default();
    let prefix = net.rsplit_once('.').map_or(net, |(p, _)| p);
    format!("{prefix}.1")
}

/// The file containerd wrote for the pod (`hosts`, `resolv.conf`, `hostname`), found under
/// this containerd's directory.
fn sandbox_file(ctrd: &Containerd, pod: &str, name: &str) -> String {
    let out = run_ok(&[
        "find",
        &ctrd.dir().to_string_lossy(),
        "-path",
        &format!("*/sandboxes/{pod}/{name}"),
    ]);
    let path = out
        .lines()
        .next()
        .unwrap_or_else(|| panic!("no {name} of pod {pod} under {}", ctrd.dir().display()));
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn host_has_no_kata_tap() {
    let links = run_ok(&["ip", "link", "show"]);
    assert!(
        !links.contains("_kata"),
        "a kata tap in the host's namespace:\n{links}"
    );
}

fn kata_pod_network(ctrd: &Containerd, host_port: u16) {
    let cri = ctrd.cri();
    let dns = api::DnsConfig {
        servers: vec!["10.213.57.53".into()],
        searches: vec!["kata-e2e.example".into()],
        options: vec!["ndots:2".into()],
    };
    let pod = run_pod(ctrd, &cri, "net-pod", KATA_HANDLER, |c| {
        c.dns_config = Some(dns.clone());
        c.port_mappings = vec![api::PortMapping {
            protocol: api::Protocol::Tcp as i32,
            container_port: i32::from(PORT),
            host_port: i32::from(host_port),
            host_ip: String::new(),
        }];
    });
    assert_eq!(sandbox_vms(&pod.id).len(), 1, "one VM for the kata pod");

    // The plumbing in the pod's netns: a tap, ingress qdiscs on it and on the veth.
    let (links, qdiscs) = netns_state(&pod.netns);
    assert!(
        links.contains("tap0_kata"),
        "no tap in the pod netns:\n{links}"
    );
    let ingress = qdiscs.lines().filter(|l| l.contains("ingress")).count();
    assert_eq!(
        ingress, 2,
        "ingress qdiscs on eth0 and tap0_kata:\n{qdiscs}"
    );
    host_has_no_kata_tap();

    let web_id = start(ctrd, &cri, &pod, &web("web", "hello-from-kata"));
    let client_id = start(
        ctrd,
        &cri,
        &pod,
        &cri::container_config("client", &["sleep", "1000"]),
    );

    // From the host, to the pod IP.
    wait_serves(&format!("{}:{PORT}", pod.ip), "hello-from-kata");
    // Through CNI portmap's hostPort (DNAT on the host), at the bridge's address.
    wait_serves(&format!("{}:{host_port}", gateway()), "hello-from-kata");

    // The pod's two containers: over localhost and over the pod IP.
    for target in ["127.0.0.1", &pod.ip] {
        let cmd = get_cmd(target);
        let cmd: Vec<&str> = cmd.iter().map(String::as_str).collect();
        cri.exec_until(
            &client_id,
            &cmd,
            "hello-from-kata",
            EXEC_TIMEOUT_SECS,
            SERVE_TIMEOUT,
        );
    }

    // From another pod (runc) to the kata pod, and back.
    let other = run_pod(ctrd, &cri, "runc-peer", "", |_| {});
    let other_web = start(ctrd, &cri, &other, &web("web", "hello-from-runc"));
    let other_client = start(
        ctrd,
        &cri,
        &other,
        &cri::container_config("client", &["sleep", "1000"]),
    );
    for (from, to, want) in [
        (&other_client, &pod.ip, "hello-from-kata"),
        (&client_id, &other.ip, "hello-from-runc"),
    ] {
        let cmd = get_cmd(to);
        let cmd: Vec<&str> = cmd.iter().map(String::as_str).collect();
        cri.exec_until(from, &cmd, want, EXEC_TIMEOUT_SECS, SERVE_TIMEOUT);
    }

    // CRI's resolv.conf, hosts and hostname reach every container.
    let want_hosts = sandbox_file(ctrd, &pod.id, "hosts");
    let want_resolv = sandbox_file(ctrd, &pod.id, "resolv.conf");
    assert!(
        want_resolv.contains("nameserver 10.213.57.53") && want_resolv.contains("kata-e2e.example"),
        "{want_resolv}"
    );
    for c in [&web_id, &client_id] {
        assert_eq!(exec(&cri, c, &["cat", "/etc/resolv.conf"]).1, want_resolv);
        assert_eq!(exec(&cri, c, &["cat", "/etc/hosts"]).1, want_hosts);
        assert_eq!(exec(&cri, c, &["hostname"]).1.trim(), "net-pod");
    }

    // CRI port-forward (a documented limit): containerd hands out a URL, then serves it by
    // dialling localhost:PORT inside the pod's netns on the host, which nothing answers.
    let url = cri
        .port_forward(&pod.id, i32::from(PORT))
        .expect("PortForward");
    assert!(url.starts_with("http"), "{url}");
    let net = format!("--net={}", pod.netns);
    let dial = run(&[
        "nsenter",
        &net,
        "busybox",
        "nc",
        "-w",
        "3",
        "127.0.0.1",
        &PORT.to_string(),
    ]);
    assert!(
        !dial.status.success() && text(&dial.stderr).contains("refused"),
        "port-forward's dial in the pod netns: {:?} {}",
        dial.status,
        text(&dial.stderr)
    );

    // Teardown: hold the pod's netns open so it can be inspected after CRI deleted it.
    let held = std::fs::File::open(&pod.netns).expect("opening the pod netns");
    let held_path = format!(
        "/proc/{}/fd/{}",
        std::process::id(),
        std::os::fd::AsRawFd::as_raw_fd(&held)
    );
    for c in [&other_web, &other_client] {
        let _ = cri.stop_container(c, STOP_GRACE_SECS);
        let _ = cri.remove_container(c);
    }
    cri.stop_pod(&other.id).expect("StopPodSandbox runc");
    cri.remove_pod(&other.id).expect("RemovePodSandbox runc");
    for c in [&web_id, &client_id] {
        cri.stop_container(c, STOP_GRACE_SECS)
            .expect("StopContainer");
        cri.remove_container(c).expect("RemoveContainer");
    }
    cri.stop_pod(&pod.id).expect("StopPodSandbox");
    cri.remove_pod(&pod.id).expect("RemovePodSandbox");
    let left = wait_clean(&pod.id, CLEAN_TIMEOUT);
    assert!(left.is_empty(), "{} left {left:#?}", pod.id);
    let (links, qdiscs) = netns_state(&held_path);
    assert!(
        !links.contains("_kata"),
        "a tap left in the deleted netns:\n{links}"
    );
    assert!(
        !qdiscs.contains("ingress"),
        "a qdisc left in the deleted netns:\n{qdiscs}"
    );
    host_has_no_kata_tap();
    drop(held);
    let _ = std::fs::remove_dir_all(&pod.log_dir);
    let _ = std::fs::remove_dir_all(&other.log_dir);
}

#[test]
fn containerd1_kata_pod_network() {
    kata_pod_network(&Containerd::start_cri("cri-net"), 30181);
}

#[test]
fn containerd2_kata_pod_network() {
    kata_pod_network(&Containerd::start_cri_v2("cri2-net"), 30182);
}

/// A network namespace made by the test, with a veth pair (eth0 inside), removed on drop.
struct Netns {
    name: String,
    host_end: String,
}

impl Netns {
    fn new(tag: &str) -> Netns {
        let name = unique_id(&format!("kata-{tag}"));
        let host_end = format!("vk{}", std::process::id() % 100000);
        let _ = run(&["ip", "link", "del", &host_end]);
        run_ok(&["ip", "netns", "add", &name]);
        let n = Netns { name, host_end };
        run_ok(&[
            "ip",
            "link",
            "add",
            &n.host_end,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &n.name,
        ]);
        run_ok(&[
            "ip",
            "-n",
            &n.name,
            "addr",
            "add",
            "192.168.250.2/24",
            "dev",
            "eth0",
        ]);
        run_ok(&["ip", "-n", &n.name, "link", "set", "eth0", "up"]);
        run_ok(&[
            "ip",
            "-n",
            &n.name,
            "route",
            "add",
            "default",
            "via",
            "192.168.250.1",
        ]);
        run_ok(&[
            "ip",
            "-n",
            &n.name,
            "neigh",
            "add",
            "192.168.250.1",
            "lladdr",
            NEIGH_MAC,
            "dev",
            "eth0",
            "nud",
            "permanent",
        ]);
        n
    }
    fn path(&self) -> String {
        format!("/var/run/netns/{}", self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run(&["ip", "link", "del", &self.host_end]);
        let _ = run(&["ip", "netns", "del", &self.name]);
    }
}

/// `ctr run --with-ns network:<path>`: the shim plumbs the netns; deleting the container
/// removes the tap and both qdiscs (checked before anything else deletes the netns); a
/// netns whose veth already has an ingress qdisc is refused with the reason, and left as it
/// was (its qdisc is not ours to remove, and no tap stays).
#[test]
fn ctr_container_in_a_netns_gets_a_nic_and_leaves_the_netns_as_it_found_it() {
    let ctrd = Containerd::start("net");
    let ns = Netns::new("ctr");
    let with_ns = format!("network:{}", ns.path());
    let id = unique_id("net");
    {
        let _g = ctrd.guard(&id);
        ctrd.run_detached_with_flags(
            &id,
            &["--with-ns", &with_ns],
            &["sleep", "1000"],
            Duration::from_secs(60),
        );
        let (links, qdiscs) = netns_state(&ns.path());
        assert!(links.contains("tap0_kata"), "{links}");
        assert_eq!(
            qdiscs.lines().filter(|l| l.contains("ingress")).count(),
            2,
            "{qdiscs}"
        );
        // The guest's eth0 has the veth's MAC and address, the netns' default route and its
        // static neighbour.
        let veth = run_ok(&["ip", "-n", &ns.name, "link", "show", "eth0"]);
        let mac = veth
            .split_whitespace()
            .skip_while(|w| *w != "link/ether")
            .nth(1)
            .unwrap_or_else(|| panic!("no MAC in {veth}"))
            .to_string();
        let guest = |n: &str, cmd: &[&str]| {
            let mut args = vec!["task", "exec", "--exec-id", n, &id];
            args.extend_from_slice(cmd);
            let out = ctrd.ctr_bounded(&args, Duration::from_secs(30));
            format!("{}{}", text(&out.stdout), text(&out.stderr))
        };
        let addr = guest("addr", &["ip", "addr", "show", "eth0"]);
        assert!(
            addr.contains("192.168.250.2/24") && addr.contains(&mac),
            "guest eth0 (veth MAC {mac}): {addr}"
        );
        let routes = guest("route", &["ip", "route"]);
        assert!(
            routes.contains("default via 192.168.250.1 dev eth0"),
            "guest routes: {routes}"
        );
        let neigh = guest("neigh", &["ip", "neigh"]);
        assert!(
            neigh.contains("192.168.250.1") && neigh.contains(NEIGH_MAC),
            "guest neighbours: {neigh}"
        );
        ctrd.force_remove(&id);
    }
    let left = wait_clean(&id, CLEAN_TIMEOUT);
    assert!(left.is_empty(), "{left:#?}");
    let (links, qdiscs) = netns_state(&ns.path());
    assert!(!links.contains("_kata"), "tap left behind:\n{links}");
    assert!(!qdiscs.contains("ingress"), "qdisc left behind:\n{qdiscs}");

    // Someone else's ingress qdisc on eth0: refused, and left in place.
    run_ok(&[
        "ip", "netns", "exec", &ns.name, "tc", "qdisc", "add", "dev", "eth0", "ingress",
    ]);
    let id2 = unique_id("net-busy");
    let image = test_image();
    let out = ctrd.ctr_bounded(
        &[
            "run",
            "-d",
            "--runtime",
            RUNTIME,
            "--with-ns",
            &with_ns,
            &image,
            &id2,
            "sleep",
            "1000",
        ],
        Duration::from_secs(60),
    );
    ctrd.force_remove(&id2);
    let err = text(&out.stderr);
    assert!(!out.status.success(), "a busy netns was accepted");
    assert!(
        err.contains("adding an ingress qdisc to eth0") && err.contains("File exists"),
        "{err}"
    );
    let left = wait_clean(&id2, CLEAN_TIMEOUT);
    assert!(left.is_empty(), "{left:#?}");
    let (links, qdiscs) = netns_state(&ns.path());
    assert!(
        !links.contains("_kata"),
        "tap left after a refusal:\n{links}"
    );
    assert!(
        qdiscs.contains("ingress"),
        "the netns' own qdisc was removed:\n{qdiscs}"
    );
    assert!(Path::new(&ns.path()).exists());
}
