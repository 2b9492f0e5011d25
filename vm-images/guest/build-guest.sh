#!/bin/bash
# Build airlock's guest image for non-NixOS hosts from Debian packages:
#   vmlinux     uncompressed kernel for direct (PVH) boot, from Debian's linux-image .deb
#   initrd.gz   busybox initramfs (init.sh) with the virtio/ext4 modules it needs
#   rootfs.img  ext4 image of a debootstrap minbase root with nix-bin and busybox;
#               the VM gets it read-only. The host's own root is never shared.
# The result is cached under OUTDIR/<hash of inputs>/ and OUTDIR/current points to it,
# so a re-run with unchanged inputs takes about a second.
# usage: build-guest.sh [OUTDIR]   (default /var/cache/airlock/guest)
# env:   DEBIAN_MIRROR (default http://deb.debian.org/debian), SUITE (default trixie)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=kernel.sh
. "$here/kernel.sh"
# shellcheck source=../cache.sh
. "$here/../cache.sh"
outdir=${1:-/var/cache/airlock/guest}
SUITE=${SUITE:-trixie}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
PACKAGES=nix-bin,busybox-static,libdbi-perl
MODULES="virtio_pci virtio_blk virtio_console virtio_net ext4 overlay"

for tool in debootstrap mkfs.ext4 cpio busybox apt-get dpkg-deb depmod modprobe python3 findmnt; do
  command -v "$tool" >/dev/null || { echo "build-guest: missing $tool (run scripts/setup.sh)" >&2; exit 1; }
done

kpkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-/{print $2; exit}')
[ -n "$kpkg" ] || { echo "build-guest: cannot resolve linux-image-amd64 (apt-get update?)" >&2; exit 1; }
kver_pkg=$(apt-cache policy "$kpkg" | awk '/Candidate:/{print $2}')
hash=$( { cat "$here/build-guest.sh" "$here/init.sh" "$here/extract-vmlinux.py" "$here/kernel.sh" "$here/../cache.sh";
          echo "$kpkg $kver_pkg $SUITE $PACKAGES $MODULES"; } | sha256sum | cut -c1-16)
cache_hit "$outdir" "$hash" "guest image" && exit 0
work=$(cache_work "$outdir")
trap cache_cleanup EXIT
t0=$(date +%s)

# 1. kernel: unpack the .deb (no initramfs-tools run, /boot untouched)
guest_kernel "$work" "$kpkg" "$here/extract-vmlinux.py"

# 2. initramfs: busybox + modules (with their dependencies, in load order) + init.sh
guest_initramfs "$work" "$here/init.sh" "$MODULES"

# 3. guest root: debootstrap minbase + Nix, configured for sandboxed single-user builds
root=$work/root
debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$root" "$DEBIAN_MIRROR" > "$work/debootstrap.log" 2>&1 \
  || { tail -20 "$work/debootstrap.log" >&2; exit 1; }
# (A failure half-way may leave /proc, /sys mounted in the root: the exit
# trap unmounts them before removing anything.)
if findmnt -rn -o TARGET | grep -qF "$root/"; then
  echo "build-guest: debootstrap left mounts in $root" >&2; exit 1
fi
mkdir -p "$root/nix" "$root/etc/nix"
cat > "$root/etc/nix/nix.conf" <<'NIXCONF'
build-users-group =
sandbox = true
sandbox-fallback = false
sandbox-paths = /bin/sh=/bin/busybox
substituters =
experimental-features = nix-command
NIXCONF
# The agent writes the fetch phase's resolvers to /run/resolv.conf (the root is
# read-only) and bind-mounts it here: a regular file, because Nix 2.19 and later
# copy a symlinked resolv.conf into the sandbox as a dangling link.
rm -f "$root/etc/resolv.conf"
: > "$root/etc/resolv.conf"
[ -s "$root/etc/hosts" ] || printf '127.0.0.1 localhost\n::1 localhost\n' > "$root/etc/hosts"
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/usr/share/doc "$root"/usr/share/man
size_mb=$(( $(du -sm "$root" | cut -f1) * 5 / 4 + 64 ))
mkfs.ext4 -q -F -L airlock-root -d "$root" "$work/rootfs.img" "${size_mb}M"

# 4. publish atomically
mkdir "$work/out"
mv "$work/vmlinux" "$work/initrd.gz" "$work/rootfs.img" "$work/out/"
echo "kernel=$kpkg $kver_pkg suite=$SUITE packages=$PACKAGES built=$(date -u +%FT%TZ)" > "$work/out/INFO"
cache_publish "$outdir" "$hash"
echo "guest image built in $(( $(date +%s) - t0 ))s: $outdir/$hash"
