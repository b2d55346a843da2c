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
# The agent is PID 1 of every guest and lives in the initrd, which the guest kernel unpacks at
# every boot and every QEMU keeps mapped: link it whole-program (LTO, one codegen unit), ~24%
# smaller. Set for this build only, so the host binaries keep the workspace's faster build.
export CARGO_PROFILE_RELEASE_LTO=fat CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1
cargo build --release -p kata-agent --target "$target"
