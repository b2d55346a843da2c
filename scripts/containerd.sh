#!/usr/bin/env bash
# containerd.sh start|stop|status|import-image|ctr [ctr args...]
# A private containerd (root, state, sockets, log under DIR, default build/containerd) that
# finds this checkout's shim on its PATH and the build's runtime configuration, so demos and
# tests never touch the host's own containerd.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
top=$(cd "$here/.." && pwd)
cmd=${1:?usage: containerd.sh start|stop|status|import-image|ctr [args]}
shift
dir=${CONTAINERD_DIR:-$top/build/containerd}
# Another containerd build (e.g. $CONTAINERD2_DIR/usr/bin) may be chosen per instance.
containerd_bin=${CONTAINERD_BIN:-containerd}
ctr_bin=${CTR_BIN:-ctr}
sock="$dir/containerd.sock"
pidfile="$dir/containerd.pid"

running() { [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }

case $cmd in
start)
  need_root
  if running; then exit 0; fi
  command -v "$containerd_bin" >/dev/null || die "$containerd_bin not found (run scripts/setup-host.sh)"
  mkdir -p "$dir/root" "$dir/state"
  cat >"$dir/config.toml" <<TOML
version = 2
root = "$dir/root"
state = "$dir/state"
# The CRI plugin is not used by the ctr-driven suites.
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$sock"
[ttrpc]
  address = "$sock.ttrpc"
[debug]
  level = "${CONTAINERD_LOG_LEVEL:-info}"
TOML
  # The shim inherits this environment: our binaries first on PATH, the built config.
  PATH="$top/target/release:$PATH" KATA_CONF_FILE="${KATA_CONF_FILE:-$top/build/configuration-qemu.toml}" \
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
  "$ctr_bin" -a "$sock" images ls -q | grep -qx "$TEST_IMAGE" ||
    "$ctr_bin" -a "$sock" images import --all-platforms "$image_tar" >/dev/null
  ;;
ctr)
  exec "$ctr_bin" -a "$sock" "$@"
  ;;
*) die "unknown command '$cmd' (start|stop|status|import-image|ctr)" ;;
esac
