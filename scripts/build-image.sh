#!/usr/bin/env bash
# build-image.sh [--pause] OUT.tar: a multi-arch (amd64 + arm64) busybox OCI image archive,
# built locally from Debian's busybox-static (no registry is needed), for `ctr images import`.
# Deterministic: the same busybox binaries give the same digests.
# By default the test image ($TEST_IMAGE, command `sh`); with --pause the CRI sandbox image
# ($PAUSE_IMAGE): the same layer, whose command sleeps until the sandbox is killed; with
# --netfilter ($NETFILTER_IMAGE, host arch only) busybox plus the host's Debian iptables
# (legacy and nft back ends) with the libraries it loads, for in-guest netfilter tests.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
name=$TEST_IMAGE cmd='["sh"]' arches=(amd64 arm64) packages=()
case "${1:-}" in
  --pause) name=$PAUSE_IMAGE cmd='["sleep","2147483647"]'; shift ;;
  --netfilter)
    name=$NETFILTER_IMAGE
    arches=("$(dpkg --print-architecture)")
    packages=($NETFILTER_IMAGE_PACKAGES)
    shift ;;
esac
out=${1:?usage: build-image.sh [--pause|--netfilter] OUT.tar}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
blobs="$work/layout/blobs/sha256"
mkdir -p "$blobs"

# put_blob FILE -> prints "sha256:<hex> <size>" and stores FILE in the layout
put_blob() {
  local hex size
  hex=$(sha256sum "$1" | cut -d' ' -f1)
  size=$(stat -c %s "$1")
  cp "$1" "$blobs/$hex"
  echo "sha256:$hex $size"
}

# Applet names come from the host busybox; both arches are the same Debian version.
applets=$(/bin/busybox --list)

manifests=()
# add_packages ROOT: copies the installed files of $packages (no docs) into ROOT, as tar
# stores them: symlinks stay symlinks, and directories the host merged (/lib -> usr/lib)
# become plain directories.
add_packages() {
  local p files=()
  for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" \
      || die "package $p is not installed (run scripts/setup-host.sh)"
    while IFS= read -r f; do
      case $f in /usr/share/*) continue ;; esac
      if [ ! -d "$f" ] && { [ -L "$f" ] || [ -f "$f" ]; }; then files+=("${f#/}"); fi
    done < <(dpkg -L "$p")
  done
  tar -C / --no-recursion -cf - "${files[@]}" | tar -C "$1" -xf -
}

for arch in "${arches[@]}"; do
  case $arch in
    amd64) bb=$(guest_busybox x86_64) ;;
    arm64) bb=$(guest_busybox aarch64) ;;
  esac
  [ -x "$bb" ] || die "busybox for $arch not found at $bb (run scripts/setup-host.sh)"
  root="$work/rootfs-$arch"
  mkdir -p "$root"/{bin,etc,proc,sys,dev,tmp,root,var,run}
  chmod 1777 "$root/tmp"
  install -m 0755 "$bb" "$root/bin/busybox"
  for a in $applets; do [ "$a" = busybox ] || ln -s busybox "$root/bin/$a"; done
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$root/etc/passwd"
  printf 'root:x:0:\nnobody:x:65534:\n' >"$root/etc/group"
  [ ${#packages[@]} -eq 0 ] || add_packages "$root"
  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$root" -cf "$work/layer-$arch.tar" .
  diff_id="sha256:$(sha256sum "$work/layer-$arch.tar" | cut -d' ' -f1)"
  gzip -n -9 "$work/layer-$arch.tar"
  read -r layer_digest layer_size < <(put_blob "$work/layer-$arch.tar.gz")

  cat >"$work/config-$arch.json" <<JSON
{"architecture":"$arch","os":"linux","config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Cmd":$cmd},"rootfs":{"type":"layers","diff_ids":["$diff_id"]},"history":[{"created_by":"kata-rs scripts/build-image.sh (Debian busybox-static)"}]}
JSON
  read -r config_digest config_size < <(put_blob "$work/config-$arch.json")

  cat >"$work/manifest-$arch.json" <<JSON
{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"$config_digest","size":$config_size},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"$layer_digest","size":$layer_size}]}
JSON
  read -r m_digest m_size < <(put_blob "$work/manifest-$arch.json")
  manifests+=("{\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"digest\":\"$m_digest\",\"size\":$m_size,\"platform\":{\"architecture\":\"$arch\",\"os\":\"linux\"}}")
done

# The image index (the multi-arch "list") is a blob; index.json names it.
list=$(IFS=,; echo "${manifests[*]}")
echo "{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.index.v1+json\",\"manifests\":[$list]}" >"$work/image-index.json"
read -r idx_digest idx_size < <(put_blob "$work/image-index.json")
cat >"$work/layout/index.json" <<JSON
{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.index.v1+json","digest":"$idx_digest","size":$idx_size,"annotations":{"io.containerd.image.name":"$name","org.opencontainers.image.ref.name":"${name##*:}"}}]}
JSON
echo '{"imageLayoutVersion":"1.0.0"}' >"$work/layout/oci-layout"
mkdir -p "$(dirname "$out")"
# A unique temp name, then rename: builders racing for the same OUT each publish a whole file.
tmp_out=$(mktemp "$out.XXXXXX")
tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$work/layout" -cf "$tmp_out" .
chmod 0644 "$tmp_out"
mv "$tmp_out" "$out"
echo "$out"
