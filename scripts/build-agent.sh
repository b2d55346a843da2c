#!/usr/bin/env bash
# build-agent.sh <arch>: the static kata-agent for one guest arch (x86_64 | aarch64).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
arch=${1:?usage: build-agent.sh x86_64|aarch64}
target=$(agent_target "$arch")
if [ "$arch" = aarch64 ]; then
  # Cross-link with Debian's gcc-aarch64-linux-gnu; musl's own crt makes it static.
  export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER=aarch64-linux-gnu-gcc
fi
cargo build --release -p kata-agent --target "$target"
