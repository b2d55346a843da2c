#!/usr/bin/env bash
# containerd.sh start|stop|status|import-image|import-netfilter-image|ctr [ctr args...]
# A private containerd (root, state, sockets, log under DIR, default build/containerd) that
# finds this checkout's shim on its PATH and the build's runtime configuration, so demos and
# tests never touch the host's own containerd.
# CONTAINERD_CRI=1: with the CRI plugin (see cri_config below), the sandbox image, and a CNI
# network from Debian's plugins; the images are imported into CRI's k8s.io namespace too.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
top=$(cd "$here/.." && pwd)
cmd=${1:?usage: containerd.sh start|stop|status|import-image|import-netfilter-image|ctr [args]}
shift
dir=${CONTAINERD_DIR:-$top/build/containerd}
# Another containerd build (e.g. $CONTAINERD2_DIR/usr/bin) may be chosen per instance.
containerd_bin=${CONTAINERD_BIN:-containerd}
ctr_bin=${CTR_BIN:-ctr}
sock="$dir/containerd.sock"
pidfile="$dir/containerd.pid"
cri=${CONTAINERD_CRI:-0}
runtime_config=${KATA_CONF_FILE:-$top/build/configuration-qemu.toml}
cni_bin_dir=/usr/lib/cni   # Debian's containernetworking-plugins

running() { [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }

# The CRI plugin's part of config.toml for containerd major version $1 (1: config version 2,
# 2: version 3): runc by default; the handlers in $CRI_KATA_HANDLERS, from the shipped
# configs/containerd/containerd-$1.x.toml, run the shim with the build's configuration;
# netns mounts stay under the private state dir.
cri_config() {
  local cri runtime images cni_bins h
  if [ "$1" -ge 2 ]; then
    runtime='"io.containerd.cri.v1.runtime"' images='"io.containerd.cri.v1.images"'
    cni_bins="bin_dirs = [\"$cni_bin_dir\"]"
    cat <<TOML
[plugins.$images.pinned_images]
  sandbox = "$PAUSE_IMAGE"
[plugins.$runtime]
TOML
  else
    runtime='"io.containerd.grpc.v1.cri"' images=$runtime
    cni_bins="bin_dir = \"$cni_bin_dir\""
    cat <<TOML
[plugins.$runtime]
  sandbox_image = "$PAUSE_IMAGE"
TOML
  fi
  cat <<TOML
  restrict_oom_score_adj = $(cri_restrict_oom)
  netns_mounts_under_state_dir = true
[plugins.$runtime.cni]
  $cni_bins
  conf_dir = "$dir/cni/net.d"
[plugins.$runtime.containerd]
  default_runtime_name = "runc"
[plugins.$runtime.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
TOML
  # The handlers are the shipped snippet's (what docs/kubernetes.md has operators add), each
  # pointed at the build's configuration.
  local snippet="$top/configs/containerd/containerd-$1.x.toml"
  grep -v '^version' "$snippet"
  for h in $CRI_KATA_HANDLERS; do
    grep -qF "[plugins.$runtime.containerd.runtimes.$h]" "$snippet" ||
      die "$snippet has no runtime handler $h (CRI_KATA_HANDLERS in scripts/lib.sh)"
    cat <<TOML
[plugins.$runtime.containerd.runtimes.$h.options]
  ConfigPath = "$runtime_config"
TOML
  done
}

# The pods' network: bridge + host-local on $CRI_SUBNET, portmap; containerd adds loopback.
# No IP masquerading: nothing leaves the host. $CRI_CNI_EXTRA_PLUGIN (a JSON object), when set,
# ends the chain (the tests' failing plugin).
cni_conflist() {
  cat <<JSON
{
  "cniVersion": "1.0.0",
  "name": "$CRI_NETWORK",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$CRI_BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{ "subnet": "$CRI_SUBNET" }]],
        "routes": [{ "dst": "0.0.0.0/0" }]
      }
    },
    { "type": "portmap", "capabilities": { "portMappings": true } }${CRI_CNI_EXTRA_PLUGIN:+,
    $CRI_CNI_EXTRA_PLUGIN}
  ]
}
JSON
}

# import_once NAMESPACE IMAGE TAR: imports TAR unless IMAGE is there already.
import_once() {
  "$ctr_bin" -a "$sock" -n "$1" images ls -q | grep -qx "$2" ||
    "$ctr_bin" -a "$sock" -n "$1" images import --all-platforms "$3" >/dev/null
}

case $cmd in
start)
  need_root
  if running; then exit 0; fi
  command -v "$containerd_bin" >/dev/null || die "$containerd_bin not found (run scripts/setup-host.sh)"
  mkdir -p "$dir/root" "$dir/state"
  if [ "$cri" = 1 ]; then
    major=$("$containerd_bin" --version | awk '{print $3}')
    major=${major%%.*}
    [ -d "$cni_bin_dir" ] || die "no CNI plugins in $cni_bin_dir (run scripts/setup-host.sh)"
    mkdir -p "$dir/cni/net.d"
    cni_conflist >"$dir/cni/net.d/10-$CRI_NETWORK.conflist"
    # 2.x: NRI's socket would be host-wide.
    if [ "$major" -ge 2 ]; then version=3 disabled='["io.containerd.nri.v1.nri"]'; else version=2 disabled='[]'; fi
    plugins=$(cri_config "$major")
  else
    # The CRI plugin is not used by the ctr-driven suites.
    version=2 disabled='["io.containerd.grpc.v1.cri"]' plugins=
  fi
  cat >"$dir/config.toml" <<TOML
version = $version
root = "$dir/root"
state = "$dir/state"
disabled_plugins = $disabled
[grpc]
  address = "$sock"
[ttrpc]
  address = "$sock.ttrpc"
[debug]
  level = "${CONTAINERD_LOG_LEVEL:-info}"
$plugins
TOML
  # The shim inherits this environment: our binaries first on PATH, the built config.
  PATH="$top/target/release:$PATH" KATA_CONF_FILE="$runtime_config" \
    setsid "$containerd_bin" --config "$dir/config.toml" >"$dir/containerd.log" 2>&1 </dev/null &
  echo $! >"$pidfile"
  # Wait for the API to answer, not for a fixed time.
  for _ in $(seq 1 200); do
    "$ctr_bin" -a "$sock" version >/dev/null 2>&1 && exit 0
    running || { tail -20 "$dir/containerd.log" >&2; die "containerd exited during start-up (log: $dir/containerd.log)"; }
    sleep 0.05
  done
  die "containerd did not answer on $sock within 10 s (log: $dir/containerd.log)"
  ;;
stop)
  if running; then
    pid=$(cat "$pidfile")
    kill "$pid"
    for _ in $(seq 1 200); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
  ;;
status)
  running && echo "running (pid $(cat "$pidfile"), socket $sock)" || { echo "not running"; exit 1; }
  ;;
import-image)
  # The locally built busybox image, built and imported once.
  image_tar="$top/build/images/busybox.tar"
  [ -f "$image_tar" ] || bash "$here/build-image.sh" "$image_tar" >/dev/null
  import_once default "$TEST_IMAGE" "$image_tar"
  if [ "$cri" = 1 ]; then
    pause_tar="$top/build/images/pause.tar"
    [ -f "$pause_tar" ] || bash "$here/build-image.sh" --pause "$pause_tar" >/dev/null
    import_once k8s.io "$TEST_IMAGE" "$image_tar"
    import_once k8s.io "$PAUSE_IMAGE" "$pause_tar"
  fi
  ;;
import-netfilter-image)
  # The in-guest netfilter image (busybox + Debian's iptables), for the suites that use it.
  nf_tar="$top/build/images/netfilter.tar"
  [ -f "$nf_tar" ] || bash "$here/build-image.sh" --netfilter "$nf_tar" >/dev/null
  import_once "$([ "$cri" = 1 ] && echo k8s.io || echo default)" "$NETFILTER_IMAGE" "$nf_tar"
  ;;
ctr)
  exec "$ctr_bin" -a "$sock" "$@"
  ;;
*) die "unknown command '$cmd' (start|stop|status|import-image|import-netfilter-image|ctr)" ;;
esac
