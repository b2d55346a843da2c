//! The guest kernel serves what pods program into their own network (issue 14, item 5), through
//! CRI on containerd 1.6 and 2.x: a container granted NET_ADMIN, running Debian's iptables
//! from the netfilter image, makes a bridge and a veth pair, and programs nat REDIRECT (which
//! then carries its traffic), mangle TPROXY with socket/mark, conntrack, owner and MASQUERADE
//! rules, through both iptables back ends (legacy `ip_tables` and `nf_tables` with
//! NFT_COMPAT), plus TPROXY's policy routing. A container of the same pod without NET_ADMIN
//! can do none of it.

use kata_e2e::cri::{self, api, Cri, KATA_HANDLER};
use kata_e2e::*;
use std::time::Duration;

const EXEC_TIMEOUT_SECS: i64 = 30;
const CLEAN_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the container's server may take to listen (TCG guest).
const SERVE_TIMEOUT: Duration = Duration::from_secs(30);
/// The server's port, and the ports each back end redirects to it.
const SERVER_PORT: u16 = 8080;
const BACKENDS: [(&str, u16); 2] = [("legacy", 81), ("nft", 82)];
const BODY: &str = "redirected-by-netfilter";

/// A container of the netfilter image running `cmd`, with `caps` added.
fn netfilter_container(name: &str, cmd: &[&str], caps: &[&str]) -> api::ContainerConfig {
    let mut c = cri::container_config(name, cmd);
    c.image = Some(api::ImageSpec {
        image: netfilter_image(),
        ..Default::default()
    });
    if let Some(sc) = c.linux.as_mut().and_then(|l| l.security_context.as_mut()) {
        sc.capabilities = Some(api::Capability {
            add_capabilities: caps.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        });
    }
    c
}

/// `sh -c script` through ExecSync: (exit code, stdout + stderr).
fn sh(cri: &Cri, id: &str, script: &str) -> (i32, String) {
    let out = cri
        .exec_sync(id, &["sh", "-c", script], EXEC_TIMEOUT_SECS)
        .expect("ExecSync");
    (
        out.exit_code,
        format!("{}{}", text(&out.stdout), text(&out.stderr)),
    )
}

fn sh_ok(cri: &Cri, id: &str, script: &str) -> String {
    cri.sh(id, script, EXEC_TIMEOUT_SECS)
}

/// A bounded HTTP GET of 127.0.0.1:`port` from inside the container (busybox `nc`).
fn get(port: u16) -> String {
    format!("printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | nc -w 5 127.0.0.1 {port}")
}

/// The rules a service-mesh init container (TPROXY mode) and an in-pod CNI program, for one
/// back end (`iptables-legacy`, `iptables-nft`); each must be accepted by the guest kernel.
fn mesh_rules(iptables: &str) -> String {
    [
        "-t mangle -N KRS_DIVERT",
        "-t mangle -A PREROUTING -p tcp -m socket -j KRS_DIVERT",
        "-t mangle -A KRS_DIVERT -j MARK --set-mark 1",
        "-t mangle -A KRS_DIVERT -j ACCEPT",
        "-t mangle -A PREROUTING -p tcp --dport 15006 -j TPROXY --tproxy-mark 0x1/0x1 --on-port 15001",
        "-t mangle -A OUTPUT -p tcp -j CONNMARK --save-mark",
        "-t filter -A INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
        "-t filter -A INPUT -p tcp -m multiport --dports 15001,15006 -m comment --comment mesh -j ACCEPT",
        "-t filter -A FORWARD -m physdev --physdev-is-bridged -j ACCEPT",
        "-t nat -A OUTPUT -m owner --uid-owner 1337 -j RETURN",
        "-t nat -A OUTPUT -m addrtype --dst-type LOCAL -p tcp --dport 9 -j REDIRECT --to-ports 15001",
        "-t nat -A POSTROUTING -s 10.99.0.0/16 ! -d 10.99.0.0/16 -j MASQUERADE",
        "-t raw -A PREROUTING -p udp --dport 9 -m statistic --mode random --probability 0.5 -j ACCEPT",
    ]
    .iter()
    .map(|r| format!("{iptables} {r}"))
    .collect::<Vec<_>>()
    .join(" && ")
}

fn guest_netfilter(ctrd: &Containerd) {
    ctrd.import_netfilter_image();
    let cri = ctrd.cri();
    let log_dir = ctrd.dir().join("pods").join(unique_id("netfilter"));
    std::fs::create_dir_all(&log_dir).expect("pod log dir");
    let config = cri::pod_config("netfilter", &log_dir, &[]);
    let pod = cri
        .run_pod(&config, KATA_HANDLER)
        .unwrap_or_else(|e| panic!("{e:#}\ncontainerd log:\n{}", ctrd.log_tail(40)));
    let guard = cri.guard(&pod);
    assert_eq!(sandbox_vms(&pod).len(), 1, "the pod {pod} has one VM");

    let serve = format!(
        "mkdir -p /tmp/www && echo {BODY} > /tmp/www/index.html && exec httpd -f -p {SERVER_PORT} -h /tmp/www"
    );
    let start = |c: api::ContainerConfig| {
        cri.create_container(&pod, &c, &config)
            .and_then(|id| cri.start_container(&id).map(|()| id))
            .unwrap_or_else(|e| panic!("{e:#}\ncontainerd log:\n{}", ctrd.log_tail(40)))
    };
    let admin = start(netfilter_container(
        "admin",
        &["sh", "-c", &serve],
        &["NET_ADMIN"],
    ));
    let plain = start(netfilter_container("plain", &["sleep", "1000"], &[]));

    // Bridge and veth (what a CNI plugin inside the pod makes).
    let bridge = sh_ok(
        &cri,
        &admin,
        "brctl addbr krs-br0 && ip link add krs-v0 type veth peer name krs-v1 \
         && brctl addif krs-br0 krs-v0 && ip link set krs-br0 up && ls /sys/class/net/krs-br0/brif \
         && cat /proc/sys/net/bridge/bridge-nf-call-iptables",
    );
    assert!(
        bridge.contains("krs-v0"),
        "veth not in the bridge: {bridge}"
    );

    // The server answers on its own port before any rule exists.
    let get_server = get(SERVER_PORT);
    cri.exec_until(
        &admin,
        &["sh", "-c", &get_server],
        BODY,
        EXEC_TIMEOUT_SECS,
        SERVE_TIMEOUT,
    );

    for (backend, port) in BACKENDS {
        let iptables = format!("iptables-{backend}");
        let ip6tables = format!("ip6tables-{backend}");
        // Nothing listens on `port` until the rule redirects it.
        let (_, before) = sh(&cri, &admin, &get(port));
        assert!(
            !before.contains(BODY),
            "port {port} answered before any rule: {before}"
        );
        sh_ok(
            &cri,
            &admin,
            &format!(
                "{iptables} -t nat -A OUTPUT -p tcp -d 127.0.0.1 --dport {port} -j REDIRECT --to-ports {SERVER_PORT}"
            ),
        );
        let after = sh_ok(&cri, &admin, &get(port));
        assert!(
            after.contains(BODY),
            "{iptables}: REDIRECT of port {port} to {SERVER_PORT} did not carry the request: {after}"
        );
        sh_ok(&cri, &admin, &mesh_rules(&iptables));
        sh_ok(
            &cri,
            &admin,
            &format!(
                "{ip6tables} -t nat -A OUTPUT -p tcp --dport {port} -j REDIRECT --to-ports {SERVER_PORT} \
                 && {ip6tables} -t mangle -A PREROUTING -p tcp --dport 15006 -j TPROXY --tproxy-mark 0x1/0x1 --on-port 15001"
            ),
        );
        let saved = sh_ok(&cri, &admin, &format!("{iptables}-save"));
        for want in ["TPROXY", "KRS_DIVERT", "MASQUERADE", "--uid-owner 1337"] {
            assert!(
                saved.contains(want),
                "{iptables}-save lacks {want}: {saved}"
            );
        }
    }
    // TPROXY's policy routing: marked packets to a local route table.
    sh_ok(
        &cri,
        &admin,
        "ip rule add fwmark 1 table 133 && ip route add local 0.0.0.0/0 dev lo table 133 \
         && ip route show table 133",
    );

    // Without NET_ADMIN: no bridge, no rules.
    for (what, script) in [
        ("brctl addbr", "brctl addbr krs-br1"),
        (
            "iptables-legacy",
            "iptables-legacy -t nat -A OUTPUT -j RETURN",
        ),
        ("iptables-nft", "iptables-nft -t nat -A OUTPUT -j RETURN"),
    ] {
        let (code, out) = sh(&cri, &plain, script);
        assert_ne!(code, 0, "{what} worked without NET_ADMIN: {out}");
    }

    guard.remove_leaving_nothing(CLEAN_TIMEOUT);
}

#[test]
fn containerd1_pod_programs_bridge_and_netfilter_in_its_guest() {
    guest_netfilter(&Containerd::start_cri("cri"));
}

#[test]
fn containerd2_pod_programs_bridge_and_netfilter_in_its_guest() {
    guest_netfilter(&Containerd::start_cri_v2("cri2"));
}
