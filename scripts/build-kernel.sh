#!/usr/bin/env bash
# build-kernel.sh <x86_64|aarch64> [--src DIR]: the minimal guest kernel for one arch, cached.
#
# Cache layout under $KATA_RS_CACHE/kernel/:
#   src-<srckey>/          the extracted source tarball (once per tarball)
#   obj-<arch>-<srckey>/   the O= build tree (kept, so a fragment change rebuilds incrementally)
#   <arch>-<key>/          finished entry: vmlinux (x86_64, PVH ELF) | Image (arm64),
#                          kernel.config, gen_init_cpio, kernelrelease
# key = hash(fragments of the arch + this script + the config check + source identity).
# Prints the entry's path on stdout (everything else goes to stderr).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"

usage() { die "usage: build-kernel.sh x86_64|aarch64 [--src DIR]"; }
[ $# -gt 0 ] || usage
arch=$1; shift
src_dir=
while [ $# -gt 0 ]; do
  case "$1" in
    --src) [ $# -ge 2 ] || usage; [ -d "$2" ] || die "--src $2: no such directory"; src_dir=$(cd "$2" && pwd); shift 2 ;;
    *) usage ;;
  esac
done
kernel_arch=$(guest_kernel_arch "$arch")
image_name=$(guest_kernel_image "$arch")
frag_dir="$here/../guest-kernel/fragments"
frag_dir=$(cd "$frag_dir" && pwd)
check="$here/../guest-kernel/check-config.sh"
case "$arch" in x86_64) arch_fragment=x86_64.config ;; aarch64) arch_fragment=arm64.config ;; esac
fragments=("$frag_dir/common.config" "$frag_dir/$arch_fragment")
for f in "${fragments[@]}" "$check"; do [ -f "$f" ] || die "missing $f"; done

make_args=(ARCH="$kernel_arch")
if [ "$arch" = aarch64 ] && [ "$(uname -m)" != aarch64 ]; then
  command -v aarch64-linux-gnu-gcc >/dev/null || die "aarch64-linux-gnu-gcc not found (run scripts/setup-host.sh)"
  make_args+=(CROSS_COMPILE=aarch64-linux-gnu-)
fi

cache="$KATA_RS_CACHE/kernel"
mkdir -p "$cache"

# Identity of the source: the tarball's path, size and mtime (hashing 130 MB on every run would
# cost seconds), or an explicit --src tree's path and kernel version.
if [ -n "$src_dir" ]; then
  [ -f "$src_dir/Makefile" ] && [ -f "$src_dir/Kconfig" ] || die "--src $src_dir is not a kernel tree"
  src_id="dir $src_dir $(make -s -C "$src_dir" kernelversion)"
else
  [ -f "$GUEST_KERNEL_TARBALL" ] || die "kernel source $GUEST_KERNEL_TARBALL not found (run scripts/setup-host.sh)"
  src_id="tar $GUEST_KERNEL_TARBALL $(stat -c '%s %Y' "$GUEST_KERNEL_TARBALL")"
fi
src_key=$(printf '%s' "$src_id" | sha256sum | cut -c1-12)
key=$( { printf '%s\n' "$src_id" "${make_args[*]}"; cat "${fragments[@]}" "$0" "$check"; } | sha256sum | cut -c1-16)
entry="$cache/$arch-$key"

if [ -f "$entry/$image_name" ]; then
  step "kernel $arch: using cached $entry"
  echo "$entry"
  exit 0
fi

# One kernel build at a time on this machine (2 cores): wait for any other one.
exec 9>"$cache/.build.lock"
if ! flock -n 9; then
  step "kernel $arch: waiting for another kernel build to finish"
  flock 9
fi
if [ -f "$entry/$image_name" ]; then   # built by whoever held the lock
  step "kernel $arch: using cached $entry"
  echo "$entry"
  exit 0
fi

if [ -z "$src_dir" ]; then
  src_dir="$cache/src-$src_key/$GUEST_KERNEL_TREE"
  if [ ! -f "$src_dir/Makefile" ]; then
    step "kernel: extracting $GUEST_KERNEL_TARBALL (once, ~1 min)"
    tmp_src=$(mktemp -d "$cache/.src-$src_key.XXXXXX")
    tar -C "$tmp_src" -xf "$GUEST_KERNEL_TARBALL"
    [ -f "$tmp_src/$GUEST_KERNEL_TREE/Makefile" ] || { rm -rf "$tmp_src"; die "$GUEST_KERNEL_TARBALL has no $GUEST_KERNEL_TREE/"; }
    chmod 755 "$tmp_src"
    rm -rf "$cache/src-$src_key"
    mv "$tmp_src" "$cache/src-$src_key"
  fi
fi

obj="$cache/obj-$arch-$src_key"
mkdir -p "$obj"
kmake() { make -s -C "$src_dir" O="$obj" "${make_args[@]}" "$@"; }

step "kernel $arch: configuring (tinyconfig + $(basename "${fragments[0]}") + $(basename "${fragments[1]}"))"
kmake tinyconfig >/dev/null
# merge_config.sh -m writes the merged .config without resolving it; olddefconfig resolves it.
(cd "$obj" && "$src_dir/scripts/kconfig/merge_config.sh" -m -O "$obj" "$obj/.config" "${fragments[@]}" >/dev/null)
kmake olddefconfig
step "kernel $arch: checking that every requested option made it into .config"
"$check" "$obj/.config" "${fragments[@]}"

step "kernel $arch: building $image_name with $(nproc) jobs (a cold build takes ~5-6 min on 2 cores)"
if [ "$arch" = x86_64 ]; then
  kmake -j"$(nproc)" vmlinux
  built="$obj/vmlinux"
else
  kmake -j"$(nproc)" Image
  built="$obj/arch/arm64/boot/Image"
fi
# gen_init_cpio is a host tool; the initramfs step of the build normally makes it already.
[ -x "$obj/usr/gen_init_cpio" ] || kmake usr/gen_init_cpio

tmp_entry=$(mktemp -d "$cache/.$arch-$key.XXXXXX")
trap 'rm -rf "$tmp_entry"' EXIT
if [ "$arch" = x86_64 ]; then
  # QEMU boots the ELF through its PVH note; symbols and debug info are dead weight.
  strip --strip-all -o "$tmp_entry/$image_name" "$built"
else
  cp "$built" "$tmp_entry/$image_name"
fi
cp "$obj/.config" "$tmp_entry/kernel.config"
cp "$obj/usr/gen_init_cpio" "$tmp_entry/gen_init_cpio"
kmake kernelrelease >"$tmp_entry/kernelrelease"
rm -rf "$entry"
chmod 755 "$tmp_entry"
mv "$tmp_entry" "$entry"
trap - EXIT
# Keep the three newest entries of this arch (other checkouts may use other fragments).
ls -dt "$cache/$arch"-*/ | tail -n +4 | xargs -r rm -rf
step "kernel $arch: cached $entry ($(du -h --apparent-size "$entry/$image_name" | cut -f1) $image_name)"
echo "$entry"
