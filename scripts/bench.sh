#!/usr/bin/env bash
# bench.sh [RUNS]: `make bench`. Measures, in one run on this machine,
#   - kata-bench (tests/src/bin/kata-bench): the floor (the shim's VM booted to its agent
#     answering), cold `ctr run` vs the floor and runc, CRI pod start, exec, stdout/stdin
#     throughput vs the raw vsock and runc, host memory per idle sandbox, 10 concurrent
#     starts; build/bench/results.json and cold-start.png;
#   - the VM's cost in its pod cgroup and the RuntimeClass overhead it calls for.
# Numbers are printed, never asserted: timing belongs here, not in tests.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
top=$(cd "$here/.." && pwd)
runs=${1:-7}
export CONTAINERD_DIR="$top/build/bench/containerd"
ctrd() { bash "$here/containerd.sh" "$@"; }

need_root
step "kata-bench: $runs runs per figure"
cargo build -q --release -p kata-e2e --bin kata-bench
"$top/target/release/kata-bench" "$runs"

ctrd start
trap 'ctrd stop' EXIT
ctrd import-image

# The VM's cost in its pod cgroup, which the RuntimeClass overhead must cover: the pod cgroup
# holds the pod's limit plus the overhead, while the VM gets the base guest RAM plus the pod's
# limit. ctr places the sandbox in cgroup /default/<id>; the sandbox-memory annotation is what
# containerd's CRI passes for a pod limited to pod_mib (a tmpfs in the container is filled:
# its pages are guest RAM).
pod_mib=256 fill_mib=200
base_mib=$(awk -F' = ' '/^default_memory = / {print $2; exit}' "$top/build/configuration-qemu.toml")
step "pod cgroup of one sandbox: base ${base_mib} MiB guest + ${pod_mib} MiB pod limit, container fills ${fill_mib} MiB"
id="bench-cg-$$"
ctrd ctr run -d --runtime io.containerd.kata.v2 \
  --annotation "io.kubernetes.cri.sandbox-memory=$((pod_mib * 1024 * 1024))" \
  --mount "type=tmpfs,src=tmpfs,dst=/fill,options=rw:size=$((fill_mib + 16))m" \
  "$TEST_IMAGE" "$id" sh -c "sleep 2; dd if=/dev/zero of=/fill/zero bs=1M count=$fill_mib 2>/dev/null; sleep 1000" >/dev/null
dir="/run/kata-containers/$id"
if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
  cg="/sys/fs/cgroup/default/$id" cur=memory.current peak=memory.peak
else
  cg="/sys/fs/cgroup/memory/default/$id" cur=memory.usage_in_bytes peak=memory.max_usage_in_bytes
fi
mib() { echo $(( $(cat "$1") / 1024 / 1024 )); }
idle=$(mib "$cg/$cur")
# Wait for the fill (the guest's tmpfs pages reach QEMU's RAM), bounded.
for _ in $(seq 1 300); do
  [ "$(mib "$cg/$cur")" -ge $((idle + fill_mib * 9 / 10)) ] && break
  sleep 0.2
done
used=$(mib "$cg/$cur") top_mib=$(mib "$cg/$peak")
qemu=$(cat "$dir/qemu.pid")
# QEMU's own memory: its resident set less the guest RAM it maps (the memfd backend).
read -r qemu_rss guest_rss < <(awk '
  /^[0-9a-f]+-[0-9a-f]+ / { memfd = ($0 ~ /memfd:/) }
  /^Rss:/ { rss += $2; if (memfd) guest += $2 }
  END { print int(rss / 1024), int(guest / 1024) }' "/proc/$qemu/smaps")
helpers=0
for name in virtiofsd vhost-device-vsock; do
  [ -f "$dir/$name.pid" ] || continue
  helpers=$(( helpers + $(awk '/^Rss:/ {s += $2} END {print int(s / 1024)}' "/proc/$(cat "$dir/$name.pid")/smaps") ))
done
own=$((qemu_rss - guest_rss))
printf '  cgroup usage idle %d MiB; after the fill %d MiB (peak %d MiB)\n' "$idle" "$used" "$top_mib"
printf '  QEMU RSS %d MiB = guest RAM touched %d MiB + QEMU itself %d MiB; helpers %d MiB\n' \
  "$qemu_rss" "$guest_rss" "$own" "$helpers"
worst=$((base_mib + own + helpers))
printf '  overhead the pod cgroup needs beyond the pod limit, worst case (base RAM all touched): %d + %d + %d = %d MiB\n' \
  "$base_mib" "$own" "$helpers" "$worst"
printf '  with a 25%% margin on the host part: %d MiB (configs/kubernetes/runtimeclass-kata.yaml)\n' \
  "$((base_mib + (own + helpers) * 5 / 4))"
ctrd ctr task kill -s SIGKILL "$id" >/dev/null
for _ in $(seq 1 100); do ctrd ctr task delete "$id" >/dev/null 2>&1 && break; sleep 0.1; done
ctrd ctr container rm "$id" >/dev/null
