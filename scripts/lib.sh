# Shared by the project's shell scripts: one place for paths, versions and messages.
# shellcheck shell=bash
KATA_RS_CACHE=${KATA_RS_CACHE:-/var/cache/kata-rs}
VHOST_DEVICE_VSOCK_VERSION=0.3.0
VIRTIOFSD_VERSION=1.14.0
CARGO_FUZZ_VERSION=0.13.1   # `make fuzz` only
VHOST_DEVICE_VSOCK_BIN="$KATA_RS_CACHE/tools/vhost-device-vsock-$VHOST_DEVICE_VSOCK_VERSION/bin/vhost-device-vsock"
VIRTIOFSD_BIN="$KATA_RS_CACHE/tools/virtiofsd-$VIRTIOFSD_VERSION/bin/virtiofsd"
export KATA_RS_CACHE

step() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }
# A cargo-installed tool at a pinned version, in the cache (keyed by version); prints its path.
cargo_tool() { # name version
  local root="$KATA_RS_CACHE/tools/$1-$2"
  if [ ! -x "$root/bin/$1" ]; then
    step "cargo install $1 $2 (a few minutes, once per machine)"
    cargo install --locked --quiet --root "$root" "$1" --version "$2" >&2
  fi
  echo "$root/bin/$1"
}
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

# The locally built busybox image every demo and test runs.
TEST_IMAGE=docker.io/library/busybox:latest
BUSYBOX_ARM64="$KATA_RS_CACHE/busybox-arm64/bin/busybox"

# Guest kernel (scripts/build-kernel.sh, scripts/build-guest.sh).
GUEST_KERNEL_TARBALL=${GUEST_KERNEL_TARBALL:-/usr/src/linux-source-6.1.tar.xz}
GUEST_KERNEL_TREE=linux-source-6.1   # top directory inside the tarball
# Kernel ARCH= for a guest arch (x86_64 rather than x86, so tinyconfig stays 64-bit).
guest_kernel_arch() {
  case "$1" in
    x86_64) echo x86_64 ;;
    aarch64) echo arm64 ;;
    *) die "unsupported guest arch '$1' (x86_64 or aarch64)" ;;
  esac
}
# File name of the bootable kernel for a guest arch: a PVH ELF on x86_64, the raw Image on arm64.
guest_kernel_image() {
  case "$1" in
    x86_64) echo vmlinux ;;
    aarch64) echo Image ;;
    *) die "unsupported guest arch '$1' (x86_64 or aarch64)" ;;
  esac
}
# Where scripts/build-guest.sh puts one arch's kernel, initrd and kernel.config.
guest_dir() { echo "build/guest/$1"; }

# Static busybox for a guest arch (x86_64|aarch64): the test image's userland and the guest's
# debug-console shell. Debian's busybox-static for the host arch, the cached :arm64 one otherwise.
guest_busybox() {
  if [ "$1" = "$(uname -m)" ]; then echo /bin/busybox
  elif [ "$1" = aarch64 ]; then echo "$BUSYBOX_ARM64"
  else die "no busybox for guest arch '$1' on a $(uname -m) host"
  fi
}

# containerd 2.x (Debian sid), unpacked into the cache for the second end-to-end containerd;
# the host keeps its own containerd. $CONTAINERD2_DIR/usr/bin/{containerd,ctr}.
CONTAINERD2_DIR="$KATA_RS_CACHE/containerd2"

# The CRI suite's private containerd (scripts/containerd.sh with CONTAINERD_CRI=1): its sandbox
# ("pause") image, built by scripts/build-image.sh --pause, and the CNI network its pods join.
# The bridge and subnet are host-wide (one bridge for every CRI containerd of the tests);
# host-local keeps its leases in /var/lib/cni/networks/$CRI_NETWORK, under a lock.
PAUSE_IMAGE=localhost/kata-rs-pause:1
# The in-guest netfilter test image (scripts/build-image.sh --netfilter): busybox plus Debian's
# iptables, both back ends, with every library it loads.
NETFILTER_IMAGE=localhost/kata-rs-netfilter:1
NETFILTER_IMAGE_PACKAGES="iptables libxtables12 libip4tc2 libip6tc2 libnftnl11 libmnl0 libnetfilter-conntrack3 libnfnetlink0 libc6"
CRI_NETWORK=kata-rs-e2e
CRI_BRIDGE=kata-rs-cri0
CRI_SUBNET=10.213.57.0/24
# CRI runtime handlers mapped to the shim: `kata` (RuntimeClass) and `untrusted` (the
# io.kubernetes.cri.untrusted-workload annotation, on containerd 1.x and 2.x).
CRI_KATA_HANDLERS="kata untrusted"
# containerd's restrict_oom_score_adj for CRI: true when this process lacks CAP_SYS_RESOURCE
# (capability 24), which some sandboxes drop; then runc could not give a pod sandbox its
# negative oom_score_adj, and containerd clamps it to its own instead.
cri_restrict_oom() {
  if (( 0x$(awk '/^CapEff/ {print $2}' /proc/self/status) >> 24 & 1 )); then echo false; else echo true; fi
}
