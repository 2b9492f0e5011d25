#!/bin/bash
# Install everything airlock needs on a fresh Debian 12 machine (root), build
# the workspace and the guest image. Idempotent: a re-run takes seconds.
#   scripts/setup.sh            packages + cargo build + guest image
#   SKIP_IMAGE=1 scripts/setup.sh   without the guest image
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
export DEBIAN_FRONTEND=noninteractive
[ "$(id -u)" = 0 ] || { echo "setup.sh: run as root (VM disks, Nix sandbox, netns)" >&2; exit 1; }

# chromium and curl: the review page test (tests/tests/review.rs) looks at
# the page in a real headless browser. linux-source-6.12 and the kernel
# build tools: the trimmed guest kernel (vm-images/guest/build-kernel.sh,
# tests/tests/guest_kernel.rs). pyflakes3 (the package with the command;
# python3-pyflakes alone is only the module): the NixOS test scripts' lint
# (tests/tests/nixos.rs).
pkgs=(nix-bin nix-setup-systemd busybox-static cpio kmod qemu-system-x86 e2fsprogs
      debootstrap git tar python3 ca-certificates procps rabbitmq-server
      nftables iproute2 libseccomp-dev libcap-ng-dev binutils gcc
      dbus-daemon dbus-bin systemd curl chromium
      linux-source-6.12 make flex bison bc libelf-dev xz-utils pyflakes3)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup.sh: installing ${missing[*]}"
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
# bookworm's qemu-system-x86 can take the preinstalled qemu-img with it.
command -v qemu-img >/dev/null || apt-get install -y -q --no-install-recommends qemu-utils
# apt-cache needs package lists for the guest kernel lookup.
[ -n "$(ls /var/lib/apt/lists/ 2>/dev/null | grep -v lock)" ] || apt-get update -q
# Only for the binary cache benchmark (cargo bench --bench cache), which runs
# its own nginx: installed without starting Debian's nginx service, and a
# failure here does not stop the setup.
if ! command -v nginx >/dev/null || ! command -v wrk >/dev/null; then
  policy=/usr/sbin/policy-rc.d
  own_policy=0
  if [ ! -e "$policy" ]; then printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod +x "$policy"; own_policy=1; fi
  apt-get install -y -q --no-install-recommends nginx-light wrk \
    || echo "setup.sh: WARNING: nginx-light/wrk not installed; only the cache benchmark needs them" >&2
  [ "$own_policy" = 1 ] && rm -f "$policy"
  command -v systemctl >/dev/null && systemctl disable nginx 2>/dev/null || true
fi

cargo build --workspace --quiet --manifest-path "$repo/Cargo.toml"

# cloud-hypervisor v53.0 and its tiny PVH test guests, from the workplace's
# vendored source (no Debian package, no crates.io release), and virtiofsd
# from crates.io: for the cloud_hypervisor_* tests. Cached under
# /var/cache/airlock; each step is skipped when its result is there.
shared=${AIRLOCK_SHARED:-$repo/../shared}
chdir=$shared/vendor/cloud-hypervisor
if [ -x "$chdir/build.sh" ]; then
  "$chdir/build.sh" /var/cache/airlock/cloud-hypervisor/v53.0 >/dev/null
  tiny=/var/cache/airlock/cloud-hypervisor/tiny
  [ -f "$tiny/tiny-wait.elf" ] || "$chdir/tiny-guest/build.sh" "$tiny" >/dev/null
else
  echo "setup.sh: WARNING: $chdir not found: the cloud_hypervisor_* tests will be SKIPPED" >&2
fi
if [ ! -x /var/cache/airlock/virtiofsd/bin/virtiofsd ]; then
  cargo install --quiet --locked --root /var/cache/airlock/virtiofsd virtiofsd
fi
if [ "${SKIP_IMAGE:-0}" != 1 ]; then
  "$repo/vm-images/guest/build-guest.sh" "${AIRLOCK_IMAGE_CACHE:-/var/cache/airlock/guest}"
  "$repo/vm-images/systemd-guest/build.sh" "${AIRLOCK_SYSTEMD_GUEST_CACHE:-/var/cache/airlock/systemd-guest}"
  "$repo/vm-images/guest/build-kernel.sh" "${AIRLOCK_GUEST_KERNEL_CACHE:-/var/cache/airlock/guest-kernel}"
fi
echo "setup.sh: ready"
