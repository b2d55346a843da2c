#!/usr/bin/env bash
# install.sh install|uninstall PREFIX: puts the runtime where containerd and Kata users expect it.
#   PREFIX/bin                         containerd-shim-kata-v2, kata-ctl
#   /etc/kata-containers/              configuration.toml (kept if it already exists)
#   /usr/share/defaults/kata-containers/configuration.toml   the shipped defaults
#   /usr/share/kata-containers/        guest kernel + initrd (host arch under Kata's names,
#                                      every built arch under <name>-<arch>)
#   /usr/share/kata-containers/containerd/  CRI runtime handlers kata and untrusted to add to
#                                      containerd's config (configs/containerd/)
#   /usr/share/kata-containers/crio/   CRI-O drop-in naming the installed shim (configs/crio/)
#   /usr/share/kata-containers/kubernetes/  RuntimeClass kata and example pods
#   /etc/systemd/system/kata-vm-pool.service  the VM pool daemon's unit (not enabled)
# containerd's and CRI-O's own configuration is the admin's: docs/kubernetes.md says how to
# add the handlers to it.
# The helper daemons go to the paths the shipped configuration names, so config and files agree.
# DESTDIR (default empty) stages everything under another root, as packagers expect.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
top=$(cd "$here/.." && pwd)
action=${1:?usage: install.sh install|uninstall PREFIX}
prefix=${2:-/usr/local}
need_root

config_src="$top/configs/configuration-qemu.toml"
dest=${DESTDIR:-}
etc_dir=$dest/etc/kata-containers
defaults_dir=$dest/usr/share/defaults/kata-containers
share=/usr/share/kata-containers
assets_dir=$dest$share
containerd_snippets=$share/containerd
crio_dropins=$share/crio
kube_manifests=$share/kubernetes
host_arch=$(uname -m)

# Value of a `key = "value"` line in the shipped configuration.
config_value() { sed -n "s/^$1 = \"\(.*\)\"/\1/p" "$config_src" | head -1; }
kernel_dst=$(config_value kernel)
initrd_dst=$(config_value initrd)
virtiofsd_dst=$(config_value virtio_fs_daemon)
vsockd_dst=$(config_value vhost_user_vsock_daemon)
for v in kernel_dst initrd_dst virtiofsd_dst vsockd_dst; do
  [ -n "${!v}" ] || die "$config_src does not name ${v%_dst} (expected a quoted path)"
  printf -v "$v" '%s%s' "$dest" "${!v}"
done
bin_dir=$dest$prefix/bin

manifest="$assets_dir/.installed-files"

# put MODE SRC DST: installs one file and records it, so uninstall removes exactly these.
put() {
  install -D -m "$1" "$2" "$3"
  mkdir -p "$assets_dir"
  grep -qxF "$3" "$manifest" 2>/dev/null || echo "$3" >>"$manifest"
}

case $action in
install)
  for b in containerd-shim-kata-v2 kata-ctl; do
    put 0755 "$top/target/release/$b" "$bin_dir/$b"
  done
  put 0644 "$config_src" "$defaults_dir/configuration.toml"
  # An existing /etc configuration is the admin's: never overwritten.
  [ -f "$etc_dir/configuration.toml" ] || put 0644 "$config_src" "$etc_dir/configuration.toml"
  for arch_dir in "$top"/build/guest/*/; do
    arch=$(basename "$arch_dir")
    img=$(guest_kernel_image "$arch")
    put 0644 "$arch_dir/$img" "$assets_dir/$img-$arch"
    put 0644 "$arch_dir/initrd.img" "$assets_dir/initrd-$arch.img"
  done
  put 0644 "$top/build/guest/$host_arch/$(guest_kernel_image "$host_arch")" "$kernel_dst"
  put 0644 "$top/build/guest/$host_arch/initrd.img" "$initrd_dst"
  # Helper daemons already present (e.g. a distribution's virtiofsd) are left alone.
  [ -x "$virtiofsd_dst" ] || put 0755 "$VIRTIOFSD_BIN" "$virtiofsd_dst"
  [ -x "$vsockd_dst" ] || put 0755 "$VHOST_DEVICE_VSOCK_BIN" "$vsockd_dst"
  for f in "$top"/configs/containerd/*.toml; do
    put 0644 "$f" "$dest$containerd_snippets/$(basename "$f")"
  done
  for f in "$top"/configs/kubernetes/*.yaml; do
    put 0644 "$f" "$dest$kube_manifests/$(basename "$f")"
  done
  # The VM pool daemon's unit, naming the binaries installed here; enabled by the admin.
  unit_tmp=$(mktemp)
  sed "s|@BINDIR@|$prefix/bin|g" "$top/configs/systemd/kata-vm-pool.service" >"$unit_tmp"
  put 0644 "$unit_tmp" "$dest/etc/systemd/system/kata-vm-pool.service"
  rm -f "$unit_tmp"
  # CRI-O starts the shim by path: the one installed here.
  for f in "$top"/configs/crio/*.conf; do
    crio_tmp=$(mktemp)
    sed "s|^runtime_path = .*|runtime_path = \"$prefix/bin/containerd-shim-kata-v2\"|" "$f" >"$crio_tmp"
    put 0644 "$crio_tmp" "$dest$crio_dropins/$(basename "$f")"
    rm -f "$crio_tmp"
  done
  cat <<TXT
Installed. To run Kubernetes pods in VMs, give containerd the runtime handlers kata and
untrusted (docs/kubernetes.md), then restart it. If /etc/containerd/config.toml says
  version = 2 (containerd 1.6/1.7; 2.x reads it too): append to it
      $containerd_snippets/containerd-1.x.toml
  version = 3 (containerd 2.x): list in its top-level imports (above the first table)
      "$containerd_snippets/containerd-2.x.toml"
CRI-O (untested): cp $crio_dropins/50-kata.conf /etc/crio/crio.conf.d/
Kubernetes: kubectl apply -f $kube_manifests/runtimeclass-kata.yaml

Without Kubernetes: ctr run --runtime io.containerd.kata.v2 docker.io/library/busybox:latest t1 echo hi
Check the host and containerd's configuration with: kata-ctl check
VM pool: the first pod starts its daemon; to keep VMs booted from boot on:
  systemctl daemon-reload && systemctl enable --now kata-vm-pool
TXT
  ;;
uninstall)
  [ -f "$manifest" ] || { echo "nothing installed by this project (no $manifest)"; exit 0; }
  while read -r f; do rm -f "$f"; done <"$manifest"
  rm -f "$manifest"
  rmdir "$dest$containerd_snippets" "$dest$crio_dropins" "$dest$kube_manifests" \
    "$assets_dir" "$defaults_dir" "$etc_dir" "$(dirname "$virtiofsd_dst")" 2>/dev/null || true
  echo "Removed every file make install had put in place."
  ;;
*) die "unknown action '$action' (install|uninstall)" ;;
esac
