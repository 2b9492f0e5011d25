#!/bin/bash
# Build airlock's trimmed guest kernel on Debian, from Debian's kernel source
# (the linux-source-6.12 package), with the same configuration the Nix-built
# guest uses (vm-images/guest/kernel-config.sh + kernel.config). Only for
# tests/tests/platform/guest_kernel.rs, which boots it with the Debian guest's
# initramfs and root and runs real jobs on it: the proof, on a machine that
# cannot build nixpkgs' kernel, that the fragment is enough for the guest.
#   vm-images/guest/build-kernel.sh [OUTDIR]   (default /var/cache/airlock/guest-kernel)
# Output: OUTDIR/<hash>/{vmlinux,config,INFO}, OUTDIR/current -> <hash>. The
# hash covers the scripts, the fragment and the source package's version:
# a re-run with nothing changed takes a second.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../cache.sh
. "$here/../cache.sh"
outdir=${1:-/var/cache/airlock/guest-kernel}
pkg=${KERNEL_SOURCE_PKG:-linux-source-6.12}
tarball=/usr/src/$pkg.tar.xz

for tool in make gcc flex bison bc xz strip; do
  command -v "$tool" >/dev/null || { echo "build-kernel: missing $tool (run scripts/setup.sh)" >&2; exit 1; }
done
[ -f "$tarball" ] || { echo "build-kernel: missing $tarball (apt-get install $pkg; scripts/setup.sh does)" >&2; exit 1; }
ver=$(dpkg-query -W -f='${Version}' "$pkg")
hash=$( { cat "$here/build-kernel.sh" "$here/kernel-config.sh" "$here/kernel.config" "$here/../cache.sh"; echo "$pkg $ver"; } \
  | sha256sum | cut -c1-16)
cache_hit "$outdir" "$hash" "guest kernel" && exit 0
work=$(cache_work "$outdir")
trap cache_cleanup EXIT
t0=$(date +%s)
tar -C "$work" -xf "$tarball"
src=$(echo "$work"/linux-source-*)
bash "$here/kernel-config.sh" "$src" "$here/kernel.config" "$work/config"
make -s -C "$src" -j"$(nproc)" vmlinux \
  KBUILD_BUILD_TIMESTAMP=@1 KBUILD_BUILD_USER=airlock KBUILD_BUILD_HOST=airlock
mkdir "$work/out"
# Without debug sections; the ELF notes (PVH's entry among them) stay.
strip --strip-debug -o "$work/out/vmlinux" "$src/vmlinux"
cp "$work/config" "$work/out/config"
echo "kernel=$pkg $ver $(make -s -C "$src" kernelrelease) fragment=vm-images/guest/kernel.config built=$(date -u +%FT%TZ)" > "$work/out/INFO"
cache_publish "$outdir" "$hash"
echo "guest kernel built in $(( $(date +%s) - t0 ))s: $outdir/$hash"
