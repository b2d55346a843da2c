#!/usr/bin/env bash
# make fuzz: every target in fuzz/ under libFuzzer with AddressSanitizer, FUZZ_SECONDS each
# (default 60; FUZZ_TARGETS="a b" runs only those), on the machine's stable toolchain
# (cargo-fuzz's nightly flags through RUSTC_BOOTSTRAP=1). Fails on the first target that
# crashes, leaks or times out; the input that did it is under fuzz/artifacts/<target>/.
# Corpora grow in fuzz/corpus/ between runs.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
seconds=${FUZZ_SECONDS:-60}
cargo_fuzz=$(cargo_tool cargo-fuzz "$CARGO_FUZZ_VERSION")
export RUSTC_BOOTSTRAP=1
targets=${FUZZ_TARGETS:-$("$cargo_fuzz" list --fuzz-dir fuzz)}
step "build the fuzz targets"
"$cargo_fuzz" build --fuzz-dir fuzz --sanitizer address
for t in $targets; do
  step "fuzz $t for ${seconds}s"
  mkdir -p "fuzz/corpus/$t"
  # Seeds: the real OCI specs the shim is tested with (for the agent, behind the selector
  # byte of its spec-only case, 4).
  for spec in shim/tests/data/oci-specs/*.json; do
    case $t in
      shim_spec) cp -n "$spec" "fuzz/corpus/$t/" ;;
      agent_requests) { printf '\x04'; cat "$spec"; } > "fuzz/corpus/$t/$(basename "$spec")" ;;
    esac
  done
  "$cargo_fuzz" run --fuzz-dir fuzz --sanitizer address "$t" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1
done
step "fuzz: ${seconds}s per target, no crash in: $(echo $targets)"
