#!/usr/bin/env bash
# demo.sh: run one container inside its own VM through a private containerd and `ctr run`,
# and show that it really ran in a VM (the guest kernel is not the host's).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
top=$(cd "$here/.." && pwd)
ctrd() { bash "$here/containerd.sh" "$@"; }

need_root
ctrd start
trap 'ctrd stop' EXIT
ctrd import-image

id="kata-demo-$$"
step "ctr run --runtime io.containerd.kata.v2 $TEST_IMAGE $id"
start=$(date +%s.%N)
set +e
out=$(ctrd ctr run --rm --runtime io.containerd.kata.v2 "$TEST_IMAGE" "$id" \
  sh -c 'echo "Hello from a container inside a VM"; echo "guest kernel: $(uname -r)"')
rc=$?
set -e
end=$(date +%s.%N)
printf '%s\n' "$out"
echo "host kernel:  $(uname -r)"
printf 'ctr run took %.2f s (exit status %d)\n' "$(echo "$end - $start" | bc)" "$rc"
if [ "$rc" -ne 0 ]; then
  echo "The run failed. containerd's log (the shim and guest logs are in it): $top/build/containerd/containerd.log" >&2
  tail -30 "$top/build/containerd/containerd.log" >&2
  exit "$rc"
fi
