# Shared by the project's shell scripts: one place for paths, versions and messages.
# shellcheck shell=bash
KATA_RS_CACHE=${KATA_RS_CACHE:-/var/cache/kata-rs}
VHOST_DEVICE_VSOCK_VERSION=0.3.0
VIRTIOFSD_VERSION=1.14.0
VHOST_DEVICE_VSOCK_BIN="$KATA_RS_CACHE/tools/vhost-device-vsock-$VHOST_DEVICE_VSOCK_VERSION/bin/vhost-device-vsock"
VIRTIOFSD_BIN="$KATA_RS_CACHE/tools/virtiofsd-$VIRTIOFSD_VERSION/bin/virtiofsd"
export KATA_RS_CACHE

step() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }
need_root() { [ "$(id -u)" = 0 ] || die "this step needs root (it installs packages / runs containerd)"; }

# Rust target of the static agent for a guest arch.
agent_target() {
  case "$1" in
    x86_64) echo x86_64-unknown-linux-musl ;;
    aarch64) echo aarch64-unknown-linux-musl ;;
    *) die "unsupported guest arch '$1' (x86_64 or aarch64)" ;;
  esac
}
# Path of the built static agent for a guest arch, relative to the checkout.
agent_binary() { echo "target/$(agent_target "$1")/release/kata-agent"; }
