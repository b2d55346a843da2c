#!/usr/bin/env bash
# bench.sh [RUNS]: measures, in one run on this machine,
#   - `ctr run --rm` wall time of a trivial container with kata vs runc (median, ratio);
#   - host memory (PSS) of one idle VM sandbox: QEMU, helper daemons, shim.
# Numbers are printed, never asserted: timing belongs here, not in tests.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
top=$(cd "$here/.." && pwd)
runs=${1:-7}
export CONTAINERD_DIR="$top/build/bench/containerd"
ctrd() { bash "$here/containerd.sh" "$@"; }

need_root
ctrd start
trap 'ctrd stop' EXIT
ctrd import-image

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

time_runs() { # runtime label
  local rt=$1 i s e
  for i in $(seq 1 "$runs"); do
    s=$(date +%s%N)
    ctrd ctr run --rm --runtime "$rt" "$TEST_IMAGE" "bench-$2-$$-$i" true >/dev/null
    e=$(date +%s%N)
    echo $(( (e - s) / 1000000 ))
  done
}

step "ctr run --rm ... true, $runs runs each"
runc_ms=$(time_runs io.containerd.runc.v2 runc | median)
kata_ms=$(time_runs io.containerd.kata.v2 kata | median)
printf 'start+exit, median of %d:  runc %s ms   kata %s ms   ratio kata/runc %.1f\n' \
  "$runs" "$runc_ms" "$kata_ms" "$(echo "$kata_ms / $runc_ms" | bc -l)"

step "host memory of one idle sandbox"
id="bench-mem-$$"
ctrd ctr run -d --runtime io.containerd.kata.v2 "$TEST_IMAGE" "$id" sleep 1000 >/dev/null
dir="/run/kata-containers/$id"
total=0
for name in qemu virtiofsd vhost-device-vsock; do
  pidfile="$dir/$name.pid"
  [ -f "$pidfile" ] || continue
  pss=$(awk '/^Pss:/ {print $2}' "/proc/$(cat "$pidfile")/smaps_rollup")
  printf '  %-20s PSS %6d KiB\n' "$name" "$pss"
  total=$((total + pss))
done
shim=$(pgrep -f "containerd-shim-kata-v2 .*-id $id" | head -1 || true)
if [ -n "$shim" ]; then
  pss=$(awk '/^Pss:/ {print $2}' "/proc/$shim/smaps_rollup")
  printf '  %-20s PSS %6d KiB\n' "shim" "$pss"
  total=$((total + pss))
fi
printf '  %-20s PSS %6d KiB\n' "total" "$total"
ctrd ctr task kill -s SIGKILL "$id" >/dev/null
for _ in $(seq 1 100); do ctrd ctr task delete "$id" >/dev/null 2>&1 && break; sleep 0.1; done
ctrd ctr container rm "$id" >/dev/null
