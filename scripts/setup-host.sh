#!/usr/bin/env bash
# Installs what building and testing this project needs on a Debian/Ubuntu host.
# Idempotent: every step checks first, so a second run costs seconds.
# Costly, input-keyed results (cargo-installed helpers) live in the cache outside the
# checkout: $KATA_RS_CACHE (default /var/cache/kata-rs).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=scripts/lib.sh
. "$here/lib.sh"

APT_OPTS=(-y -q -o DPkg::Lock::Timeout=300 --no-install-recommends)
need_root

apt_missing=()
want_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed" || apt_missing+=("$1"); }

# QEMU, containerd, kernel build, cross toolchain, virtiofsd build deps, image building;
# for the CRI suite: CNI plugins (bridge, host-local, portmap, loopback) and protoc, which the
# k8s-cri crate's build script needs to generate its client; dbus-daemon, the private bus
# the systemd cgroup driver's tests run a mock systemd on.
for p in qemu-system-x86 qemu-system-arm containerd runc busybox-static iptables \
         linux-source-6.1 bc bison flex libelf-dev libssl-dev cpio xz-utils lz4 \
         gcc-aarch64-linux-gnu libc6-dev-arm64-cross musl-tools \
         libseccomp-dev libcap-ng-dev pkg-config iproute2 jq \
         containernetworking-plugins protobuf-compiler dbus-daemon; do
  want_pkg "$p"
done
# `make bench` draws its start timeline with gnuplot.
if [ "${KATA_RS_BENCH:-0}" = 1 ]; then
  want_pkg gnuplot-nox
fi

if [ ${#apt_missing[@]} -gt 0 ]; then
  step "apt-get install ${apt_missing[*]}"
  apt-get -q -o DPkg::Lock::Timeout=300 update
  extra=()
  # Bookworm's QEMU 7.2 (faster under TCG than 10.x) conflicts with a qemu-utils from
  # backports; pin qemu-utils to bookworm's when that is the installed one.
  if dpkg-query -W -f='${Version}' qemu-utils 2>/dev/null | grep -q bpo; then
    extra=(qemu-utils/bookworm --allow-downgrades)
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install "${APT_OPTS[@]}" "${apt_missing[@]}" "${extra[@]}"
fi

# arm64 busybox for arm64 guest images: fetched as a .deb and unpacked into the cache.
arm_bb="$BUSYBOX_ARM64"
if [ ! -x "$arm_bb" ]; then
  step "fetch busybox-static:arm64"
  if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    dpkg --add-architecture arm64
    apt-get -q -o DPkg::Lock::Timeout=300 update
  fi
  tmp=$(mktemp -d)
  chmod 0755 "$tmp"; (cd "$tmp" && apt-get -q download busybox-static:arm64)
  mkdir -p "$KATA_RS_CACHE/busybox-arm64"
  dpkg -x "$tmp"/busybox-static_*_arm64.deb "$tmp/x"
  install -D -m 0755 "$tmp/x/bin/busybox" "$arm_bb"
  rm -rf "$tmp"
fi

# containerd 2.x from Debian sid through a private apt state (the host's sources are untouched),
# unpacked into the cache: the suites run against it as well as the host's 1.6.
if [ ! -x "$CONTAINERD2_DIR/usr/bin/containerd" ]; then
  step "fetch containerd 2.x (Debian sid) into $CONTAINERD2_DIR"
  apt_dir=$(mktemp -d)
  mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$apt_dir/prefs"
  echo "deb http://deb.debian.org/debian sid main" >"$apt_dir/sources.list"
  sid=(-o "Dir::Etc::SourceList=$apt_dir/sources.list" -o Dir::Etc::SourceParts=/dev/null
       -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache"
       -o Dir::Etc::Preferences=/dev/null -o "Dir::Etc::PreferencesParts=$apt_dir/prefs"
       -o "APT::Architectures=$(dpkg --print-architecture)")
  apt-get "${sid[@]}" -q update >/dev/null
  chmod 0755 "$apt_dir"
  (cd "$apt_dir" && apt-get "${sid[@]}" -q download containerd >/dev/null)
  rm -rf "$CONTAINERD2_DIR.tmp"
  dpkg -x "$apt_dir"/containerd_*.deb "$CONTAINERD2_DIR.tmp"
  "$CONTAINERD2_DIR.tmp/usr/bin/containerd" --version >"$CONTAINERD2_DIR.tmp/VERSION"
  rm -rf "$CONTAINERD2_DIR" "$apt_dir"
  mv "$CONTAINERD2_DIR.tmp" "$CONTAINERD2_DIR"
fi

# Rust targets for the static guest agent.
for t in x86_64-unknown-linux-musl aarch64-unknown-linux-musl; do
  if ! rustup target list --installed | grep -qx "$t"; then
    step "rustup target add $t"
    rustup target add "$t"
  fi
done

# Helper daemons, cargo-installed at pinned versions into the cache (keyed by version).
cargo_tool vhost-device-vsock "$VHOST_DEVICE_VSOCK_VERSION" >/dev/null
cargo_tool virtiofsd "$VIRTIOFSD_VERSION" >/dev/null
step "host set-up complete"
