#!/usr/bin/env bash
# build-guest.sh <arch>...: per guest arch (x86_64 | aarch64) the cached kernel, an initrd whose
# /init is the static kata-agent, both under build/guest/<arch>/ with the kernel's .config; then
# build/configuration-qemu.toml (host arch) and build/configuration-qemu-<arch>.toml (other
# arches) from configs/configuration-qemu.toml with this tree's paths.
# Files whose content did not change are left alone, so a second run only takes seconds.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
top=$(cd "$here/.." && pwd)

[ $# -gt 0 ] || die "usage: build-guest.sh x86_64|aarch64..."
for arch in "$@"; do guest_kernel_arch "$arch" >/dev/null; done

# The initrd is left uncompressed and holds a stripped copy of the agent: measured under TCG,
# that reaches /init fastest (guest-kernel/README.md has the numbers).
INITRD_MAX_BYTES=$((8 * 1024 * 1024))
config_template=${KATA_RS_CONFIG_TEMPLATE:-$top/configs/configuration-qemu.toml}

# ELF machine name (readelf -h) of a guest arch, to catch an agent built for the wrong one.
elf_machine() {
  case "$1" in
    x86_64) echo "Advanced Micro Devices X86-64" ;;
    aarch64) echo "AArch64" ;;
  esac
}

# check_agent ARCH PATH: the agent must exist, be an ELF for ARCH and be static (it is PID 1 of
# an initrd with no libc).
check_agent() {
  local arch=$1 agent=$2 header
  [ -f "$agent" ] || die "kata-agent for $arch not found at $agent: build it first (make agent, or scripts/build-agent.sh $arch)"
  header=$(readelf -h "$agent" 2>/dev/null) || die "$agent is not an ELF executable"
  grep -q "Machine:[[:space:]]*$(elf_machine "$arch")\$" <<<"$header" \
    || die "$agent is not built for $arch ($(grep Machine: <<<"$header" | sed 's/^ *//'))"
  if grep -q 'Requesting program interpreter' <<<"$(readelf -l "$agent")"; then
    die "$agent is dynamically linked; the guest has no libc, build it static (musl)"
  fi
}

# install_if_changed SRC DST: moves SRC over DST unless both hold the same bytes.
install_if_changed() {
  if cmp -s "$1" "$2"; then rm -f "$1"; else mv -f "$1" "$2"; fi
}

# strip_tool ARCH: the strip that understands ARCH's ELF files.
strip_tool() {
  if [ "$1" = "$(uname -m)" ]; then echo strip; else echo "$1-linux-gnu-strip"; fi
}

# make_initrd GEN_INIT_CPIO AGENT BUSYBOX OUT: a cpio with the directories the agent expects,
# the console node (so PID 1 has stdin/stdout/stderr before devtmpfs is mounted), /init, and a
# static busybox under /bin: the shell of the debug console (agent.debug_console). Containers
# never see it: they pivot_root into their own rootfs.
make_initrd() {
  local gen=$1 agent=$2 busybox=$3 out=$4 spec a
  [ -x "$busybox" ] || die "busybox $busybox not found (run scripts/setup-host.sh)"
  spec=$(mktemp)
  cleanup+=("$spec")
  cat >"$spec" <<SPEC
dir /dev 0755 0 0
nod /dev/console 0600 0 0 c 5 1
dir /proc 0555 0 0
dir /sys 0555 0 0
dir /run 0755 0 0
dir /tmp 1777 0 0
dir /etc 0755 0 0
dir /sbin 0755 0 0
dir /mnt 0755 0 0
dir /root 0700 0 0
file /init $agent 0755 0 0
dir /bin 0755 0 0
file /bin/busybox $busybox 0755 0 0
SPEC
  # Applet names from the host busybox (same Debian version for every arch).
  for a in $(/bin/busybox --list); do
    [ "$a" = busybox ] || echo "slink /bin/$a busybox 0777 0 0" >>"$spec"
  done
  # Timestamps from the agent, so the same agent gives a byte-identical initrd.
  "$gen" -t "$(stat -c %Y "$agent")" "$spec" >"$out" || { rm -f "$spec"; die "gen_init_cpio failed"; }
  rm -f "$spec"
  local size
  size=$(stat -c %s "$out")
  [ "$size" -lt "$INITRD_MAX_BYTES" ] || die "initrd for $agent is $size bytes, over the 8 MiB budget: shrink the agent (strip, opt-level)"
}

# build_arch ARCH: build/guest/ARCH/{vmlinux|Image, initrd.img, kernel.config}.
build_arch() {
  local arch=$1 entry agent out image tmp strip
  agent="$top/$(agent_binary "$arch")"
  entry=$("$here/build-kernel.sh" "$arch")
  image=$(guest_kernel_image "$arch")
  out="$top/$(guest_dir "$arch")"
  mkdir -p "$out"
  step "guest $arch: initrd with /init = $(realpath --relative-to="$top" "$agent") (stripped)"
  tmp=$(mktemp -d "$out/.new.XXXXXX")
  cleanup+=("$tmp")
  strip=$(strip_tool "$arch")
  command -v "$strip" >/dev/null || die "$strip not found (run scripts/setup-host.sh)"
  "$strip" --strip-all -o "$tmp/init" "$agent"
  touch -r "$agent" "$tmp/init"
  make_initrd "$entry/gen_init_cpio" "$tmp/init" "$(guest_busybox "$arch")" "$tmp/initrd.img"
  rm -f "$tmp/init"
  cp "$entry/$image" "$tmp/$image"
  cp "$entry/kernel.config" "$tmp/kernel.config"
  for f in "$image" initrd.img kernel.config; do install_if_changed "$tmp/$f" "$out/$f"; done
  rmdir "$tmp"
  step "guest $arch: $out: $image $(stat -c %s "$out/$image") bytes, initrd.img $(stat -c %s "$out/initrd.img") bytes"
}

# toml_string VALUE: VALUE as a TOML basic string (paths with quotes or backslashes refused).
toml_string() {
  case "$1" in *'"'* | *\\*) die "cannot write path '$1' into TOML: it contains a quote or backslash" ;; esac
  printf '"%s"' "$1"
}

# check_template: the template exists and holds each key this script replaces exactly once, at
# the start of a line (checked before any long build).
check_template() {
  local key count
  [ -f "$config_template" ] || die "runtime config template $config_template not found"
  for key in kernel initrd path virtio_fs_daemon vhost_user_vsock_daemon machine_type; do
    count=$(grep -c "^$key = " "$config_template" || true)
    [ "$count" = 1 ] || die "$config_template: key '$key' must appear exactly once as '$key = ...' at the start of a line (found $count)"
  done
}

# write_config ARCH OUT: the template with this tree's paths for ARCH. Every key named in
# INTERFACES.md must appear exactly once, at the start of a line.
write_config() {
  local arch=$1 out=$2 qemu key tmp
  qemu=$(command -v "qemu-system-$arch") || die "qemu-system-$arch not found (run scripts/setup-host.sh)"
  [ -x "$VIRTIOFSD_BIN" ] || die "virtiofsd not found at $VIRTIOFSD_BIN (run scripts/setup-host.sh)"
  [ -x "$VHOST_DEVICE_VSOCK_BIN" ] || die "vhost-device-vsock not found at $VHOST_DEVICE_VSOCK_BIN (run scripts/setup-host.sh)"
  local -A values=(
    [kernel]="$top/$(guest_dir "$arch")/$(guest_kernel_image "$arch")"
    [initrd]="$top/$(guest_dir "$arch")/initrd.img"
    [path]="$qemu"
    [virtio_fs_daemon]="$VIRTIOFSD_BIN"
    [vhost_user_vsock_daemon]="$VHOST_DEVICE_VSOCK_BIN"
  )
  # x86_64 keeps the template's machine type; arm64 has one: virt.
  if [ "$arch" = aarch64 ]; then values[machine_type]=virt; fi
  tmp=$(mktemp "$out.XXXXXX")
  cleanup+=("$tmp" "$tmp.next")
  cp "$config_template" "$tmp"
  for key in "${!values[@]}"; do
    local line
    line="$key = $(toml_string "${values[$key]}")"
    # awk, not sed: paths may hold characters sed would treat as special.
    awk -v key="$key" -v line="$line" 'index($0, key " = ") == 1 { print line; next } { print }' "$tmp" >"$tmp.next"
    mv "$tmp.next" "$tmp"
  done
  # The build tree's configuration is the test suites': each test boots the VM it asserts
  # about, and the pool's own suite turns the pool on in a copy.
  awk 'index($0, "vm_cache_number = ") == 1 { print "vm_cache_number = 0"; next } { print }' "$tmp" >"$tmp.next"
  mv "$tmp.next" "$tmp"
  chmod 644 "$tmp"
  install_if_changed "$tmp" "$out"
  step "config $arch: $(realpath --relative-to="$top" "$out")"
}

# Temporary files and directories of this run, removed however it ends.
cleanup=()
trap 'rm -rf "${cleanup[@]}"' EXIT

host_arch=$(uname -m)
# Inputs first: a missing agent or a bad template should fail now, not after a kernel build.
check_template
for arch in "$@"; do check_agent "$arch" "$top/$(agent_binary "$arch")"; done
for arch in "$@"; do build_arch "$arch"; done
for arch in "$@"; do
  if [ "$arch" = "$host_arch" ]; then
    write_config "$arch" "$top/build/configuration-qemu.toml"
  else
    write_config "$arch" "$top/build/configuration-qemu-$arch.toml"
  fi
done
