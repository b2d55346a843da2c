#!/usr/bin/env bash
# capture-oci-specs.sh [OUT_DIR]: captures real OCI runtime specs (the bundle config.json
# containerd writes) from containerd 1.6 (host) and 2.x ($CONTAINERD2_DIR), for ctr-run
# containers and a CRI pod, as test fixtures (default shim/tests/data/oci-specs).
# A maintainer's tool, not run by CI: needs root, runc, python3 and the package registries.
# Each containerd is private (root/state/socket in a temp dir) and runs in its own mount
# namespace with a tmpfs on /run, so shim sockets and runc state never reach the host's /run.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
top=$(cd "$here/.." && pwd)
out=${1:-$top/shim/tests/data/oci-specs}
need_root
CGROUP_PARENTS=(default kata-rs-capture)   # runc cgroups this tool creates (ctr's, CRI's)
work=$(mktemp -d /tmp/capture-oci-specs.XXXXXX)
cg_before=$(for p in "${CGROUP_PARENTS[@]}"; do ls -d /sys/fs/cgroup/*/"$p" 2>/dev/null; done || true)

stop_instance() { # DIR BINDIR: remove every task and container, stop containerd and its shims
  local d=$1 c=(timeout 30 "$2/ctr" -a "$1/containerd.sock") pid ns id
  [ -f "$d/pid" ] || return 0
  pid=$(cat "$d/pid")
  if kill -0 "$pid" 2>/dev/null; then
    for ns in default k8s.io; do
      for id in $("${c[@]}" -n "$ns" tasks ls -q 2>/dev/null); do "${c[@]}" -n "$ns" tasks delete -f "$id" || true; done
      for id in $("${c[@]}" -n "$ns" containers ls -q 2>/dev/null); do "${c[@]}" -n "$ns" containers delete "$id" || true; done
    done
    kill "$pid"
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  for id in $(pgrep -f -- "-address $d/containerd.sock" || true); do  # shims left (only on failure)
    pkill -KILL -P "$id" || true; kill -9 "$id" || true
  done
  rm -f "$d/pid"
}
cleanup() {
  stop_instance "$work/containerd1.6" /usr/bin
  stop_instance "$work/containerd2" "$CONTAINERD2_DIR/usr/bin"
  grep -o " $work/[^ ]*" /proc/mounts | sort -r | xargs -r -n1 umount -l || true
  for p in "${CGROUP_PARENTS[@]}"; do
    for g in /sys/fs/cgroup/*/"$p"; do
      [ -d "$g" ] && ! grep -qx "$g" <<<"$cg_before" && find "$g" -depth -type d -exec rmdir {} + 2>/dev/null || true
    done
  done
  rm -rf "$work"
}
trap cleanup EXIT

step "CRI client: grpcio in a venv, CRI api.proto from Debian sid's golang-github-kubernetes-cri-api-dev"
timeout 120 python3 -m venv "$work/venv"
timeout 600 "$work/venv/bin/pip" install -q grpcio grpcio-tools
a="$work/apt"
mkdir -p "$a/lists/partial" "$a/cache/archives/partial" "$a/prefs" "$work/proto"
echo "deb http://deb.debian.org/debian sid main" >"$a/sources.list"
sid=(-o "Dir::Etc::SourceList=$a/sources.list" -o Dir::Etc::SourceParts=/dev/null
     -o "Dir::State::Lists=$a/lists" -o "Dir::Cache=$a/cache"
     -o Dir::Etc::Preferences=/dev/null -o "Dir::Etc::PreferencesParts=$a/prefs"
     -o "APT::Architectures=$(dpkg --print-architecture)")
timeout 300 apt-get "${sid[@]}" -q update >/dev/null
chmod 0755 "$work" "$a"
(cd "$a" && timeout 300 apt-get "${sid[@]}" -q download golang-github-kubernetes-cri-api-dev >/dev/null)
dpkg -x "$a"/golang-github-kubernetes-cri-api-dev_*.deb "$a/x"
cri_api_version=$(dpkg-deb -f "$a"/golang-github-kubernetes-cri-api-dev_*.deb Version)
# gogoproto options only matter to Go code generation.
sed '/gogo/d' "$a/x/usr/share/gocode/src/k8s.io/cri-api/pkg/apis/runtime/v1/api.proto" >"$work/proto/api.proto"
(cd "$work/proto" && timeout 120 "$work/venv/bin/python" -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. api.proto)

step "test image ($TEST_IMAGE) and the CRI sandbox image ($PAUSE_IMAGE)"
timeout 300 bash "$here/build-image.sh" "$work/busybox.tar" >/dev/null
timeout 300 bash "$here/build-image.sh" --pause "$work/pause.tar" >/dev/null
mkdir -p "$work/bind" "$out"
echo hello >"$work/bind/file"

capture() { # NAME BINDIR TOML-KEYS TOML-TABLES: a private containerd, two ctr containers, a CRI pod
  local name=$1 bin=$2 d="$work/$1"
  local c=(timeout 60 "$bin/ctr" -a "$d/containerd.sock")
  step "$name: $("$bin/containerd" --version)"
  mkdir -p "$d/cni/bin" "$d/cni/net.d" "$d/fifo"
  cat >"$d/config.toml" <<TOML
$3
root = "$d/root"
state = "$d/state"
[grpc]
  address = "$d/containerd.sock"
[ttrpc]
  address = "$d/containerd.sock.ttrpc"
$4
TOML
  PATH="$bin:$PATH" setsid unshare --mount --propagation private sh -c \
    'mount -t tmpfs -o mode=0755 tmpfs /run && exec "$0" --config "$1"' "$bin/containerd" "$d/config.toml" \
    >"$d/containerd.log" 2>&1 </dev/null &
  echo $! >"$d/pid"
  for _ in $(seq 1 100); do "${c[@]}" version >/dev/null 2>&1 && break; sleep 0.1; done
  "${c[@]}" version >/dev/null || { tail -20 "$d/containerd.log" >&2; die "$name did not start"; }
  "${c[@]}" images import --all-platforms "$work/busybox.tar" >/dev/null
  "${c[@]}" -n k8s.io images import --all-platforms "$work/busybox.tar" >/dev/null
  "${c[@]}" -n k8s.io images import --all-platforms "$work/pause.tar" >/dev/null

  local tasks="$d/state/io.containerd.runtime.v2.task/default"
  "${c[@]}" run -d --fifo-dir "$d/fifo" --runtime io.containerd.runc.v2 "$TEST_IMAGE" plain sleep 1000 </dev/null
  python3 -m json.tool --indent 2 "$tasks/plain/config.json" >"$out/$name-ctr.json"
  # -t needs a terminal: script(1) gives ctr one.
  timeout 60 script -qec "$(printf '%q ' "$bin/ctr" -a "$d/containerd.sock" run -d -t --fifo-dir "$d/fifo" \
    --runtime io.containerd.runc.v2 --mount "type=bind,src=$work/bind,dst=/data,options=rbind:ro" \
    --env A=B "$TEST_IMAGE" tty-bind sleep 1000)" /dev/null </dev/null >/dev/null
  python3 -m json.tool --indent 2 "$tasks/tty-bind/config.json" >"$out/$name-ctr-tty-bind.json"
  for id in plain tty-bind; do "${c[@]}" tasks delete -f "$id"; "${c[@]}" containers delete "$id"; done

  PYTHONPATH="$work/proto" timeout 300 "$work/venv/bin/python" "$here/cri-client.py" capture \
    "$d/containerd.sock" "$d/state" "$d" "$out/$name" "$TEST_IMAGE"
  stop_instance "$d" "$bin"
  versions+=("$("$bin/containerd" --version)")
}

versions=()
restrict_oom=$(cri_restrict_oom)
# disabled: /opt/containerd (opt) and 2.x's NRI socket in /var/run/nri are outside the temp dir.
# restrict_oom_score_adj: see cri_restrict_oom in lib.sh.
capture containerd1.6 /usr/bin "version = 2
disabled_plugins = [\"io.containerd.internal.v1.opt\"]" "\
[plugins.\"io.containerd.grpc.v1.cri\"]
  sandbox_image = \"$PAUSE_IMAGE\"
  restrict_oom_score_adj = $restrict_oom
[plugins.\"io.containerd.grpc.v1.cri\".cni]
  bin_dir = \"$work/containerd1.6/cni/bin\"
  conf_dir = \"$work/containerd1.6/cni/net.d\""
capture containerd2 "$CONTAINERD2_DIR/usr/bin" "version = 3
disabled_plugins = [\"io.containerd.internal.v1.opt\", \"io.containerd.nri.v1.nri\"]" "\
[plugins.\"io.containerd.cri.v1.runtime\"]
  restrict_oom_score_adj = $restrict_oom
[plugins.\"io.containerd.cri.v1.images\".pinned_images]
  sandbox = \"$PAUSE_IMAGE\"
[plugins.\"io.containerd.cri.v1.runtime\".cni]
  bin_dirs = [\"$work/containerd2/cni/bin\"]
  conf_dir = \"$work/containerd2/cni/net.d\""

cat >"$out/README.md" <<EOF
# OCI runtime specs captured from containerd

Real bundle \`config.json\` files (pretty-printed, otherwise as written), captured on $(date -u +%Y-%m-%d)
by \`scripts/capture-oci-specs.sh\` on $(. /etc/os-release && echo "$PRETTY_NAME") ($(uname -m)), runtime runc (io.containerd.runc.v2):
$(printf -- '- %s\n' "${versions[@]}")
- \`*-ctr.json\`: \`ctr run -d IMAGE plain sleep 1000\`; \`*-ctr-tty-bind.json\`: plus \`-t\`, an \`rbind:ro\` bind mount on /data and \`--env A=B\`.
- \`*-cri-sandbox.json\`, \`*-cri-container.json\`: a host-network pod and its container through CRI
  (\`scripts/cri-client.py\`, CRI api from cri-api $cri_api_version): sysctl, cgroup parent, DNS, labels,
  annotations, resources, run-as user/group, capabilities, RuntimeDefault seccomp, a read-only host mount.
$($restrict_oom && echo "- CRI had restrict_oom_score_adj (no CAP_SYS_RESOURCE): the sandbox's oomScoreAdj is 0, not the usual -998.")
EOF
ls -l "$out"
