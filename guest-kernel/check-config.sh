#!/usr/bin/env bash
# check-config.sh CONFIG FRAGMENT...: fails, listing them, when an option a fragment asks for is
# not in the final .config with the requested value (merge_config.sh drops such options
# silently when a dependency is missing).
set -euo pipefail
config=${1:?usage: check-config.sh .config fragment...}; shift
[ $# -gt 0 ] || { echo "usage: check-config.sh .config fragment..." >&2; exit 2; }
awk '
  # Value of an option in a config file: "n" for "is not set" or absent.
  function parse(line) {
    if (match(line, /^CONFIG_[A-Za-z0-9_]+=/)) { name = substr(line, 1, RLENGTH - 1); value = substr(line, RLENGTH + 1); return 1 }
    if (match(line, /^# CONFIG_[A-Za-z0-9_]+ is not set$/)) { name = substr(line, 3, RLENGTH - 13); value = "n"; return 1 }
    return 0
  }
  FNR == 1 { file++ }
  file == 1 { if (parse($0)) have[name] = value; next }
  parse($0) {
    got = (name in have) ? have[name] : "n"
    if (got != value) { printf "  %s=%s (asked in %s), final .config has %s\n", name, value, FILENAME, (name in have) ? name "=" got : "it unset" ; bad++ }
    asked++
  }
  END {
    if (bad) { printf "%d of %d requested options did not make it into the kernel config (missing dependency?)\n", bad, asked; exit 1 }
    printf "all %d requested options are in the kernel config\n", asked
  }
' "$config" "$@" >&2
