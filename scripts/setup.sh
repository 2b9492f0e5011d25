#!/bin/bash
# Install what airlock needs on a fresh Debian 12 machine (root), in two
# tiers, everything from Debian's packages and crates.io. Idempotent: a
# re-run with nothing to do takes seconds.
#
#   scripts/setup.sh demo   what one job needs (scripts/demo.sh): QEMU,
#                           e2fsprogs, nftables, the guest image build tools;
#                           airlockd, airlockctl and the guest agent; the
#                           guest image. The cargo build runs while apt and
#                           debootstrap download.
#   scripts/setup.sh [test] the demo tier plus what the whole suite needs
#                           (scripts/test.sh): Nix on the host, RabbitMQ,
#                           D-Bus, systemd, Chromium, the kernel source and
#                           its build tools, pyflakes3; the whole workspace;
#                           virtiofsd (crates.io), the tiny PVH guest
#                           (../shared/tiny-guest), the systemd test guest
#                           and the trimmed guest kernel.
#   SKIP_IMAGE=1            no guest images or kernel (either tier)
#
# Everything slow is cached by input hash under /var/cache/airlock (guest
# image ~1 min, systemd guest ~1 min, trimmed kernel ~7-11 min on 2 cores;
# docs/testing.md), so only the first run pays for it.
#
# Not installed, because no package registry has them: the cloud-hypervisor
# binary and a nixpkgs checkout. The tests that need them are an optional
# group (AIRLOCK_CLOUD_HYPERVISOR, AIRLOCK_NIXPKGS; docs/testing.md).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
tier=${1:-test}
case $tier in demo | test) ;; *) echo "usage: setup.sh [demo|test]" >&2; exit 2 ;; esac
export DEBIAN_FRONTEND=noninteractive
[ "$(id -u)" = 0 ] || { echo "setup.sh: run as root (VM disks, Nix sandbox, netns)" >&2; exit 1; }
command -v cargo >/dev/null || { echo "setup.sh: needs cargo (Rust >= 1.80, e.g. from rustup)" >&2; exit 1; }
t_start=$(date +%s)
log() { echo "setup.sh [$(( $(date +%s) - t_start ))s]: $*"; }

# The build (target/, ~3 GB for the test tier), the image caches (~2 GB) and
# the kernel build tree (~2 GB while it builds) need room; say so before a
# compiler dies of a full disk halfway.
need_gb=6; [ "$tier" = demo ] && need_gb=3
mkdir -p /var/cache/airlock
for dir in "$repo" /var/cache/airlock "${TMPDIR:-/tmp}"; do
  avail_gb=$(( $(df --output=avail -k "$dir" | tail -1) / 1024 / 1024 ))
  if [ "$avail_gb" -lt "$need_gb" ]; then
    echo "setup.sh: WARNING: only ${avail_gb} GB free on the file system of $dir; the $tier tier wants about ${need_gb} GB" >&2
    du -sh "$repo/target" /var/cache/airlock/* 2>/dev/null | sed 's/^/setup.sh:   /' >&2 || true
  fi
done

# One job: QEMU and its image tool, the job disks (mkfs.ext4, debugfs), the
# fetch network (nft, ip), git for the checkout, and the guest image build
# (debootstrap, busybox, cpio, depmod/modprobe, python3 for the kernel).
demo_pkgs=(qemu-system-x86 e2fsprogs nftables iproute2 git ca-certificates
           debootstrap busybox-static cpio kmod python3 procps tar gcc libc6-dev)
# The suite: host Nix (private stores to compare builds), RabbitMQ, D-Bus and
# systemd (the admin interfaces), chromium and curl (the review page),
# the kernel source and build tools (the trimmed guest kernel), pyflakes3
# (the NixOS test scripts' lint; python3-pyflakes alone is only the module),
# libseccomp/libcap-ng (virtiofsd from crates.io), binutils (the tiny guest),
# the shell linter shellcheck (every script, tests/tests/packaging/scripts.rs),
# and openssl (a GitHub App's RSA key for the check-run tests).
test_pkgs=(nix-bin nix-setup-systemd rabbitmq-server dbus-daemon dbus-bin systemd curl
           chromium linux-source-6.12 make flex bison bc libelf-dev xz-utils pyflakes3
           libseccomp-dev libcap-ng-dev binutils shellcheck openssl)
pkgs=("${demo_pkgs[@]}")
[ "$tier" = test ] && pkgs+=("${test_pkgs[@]}")

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

cargo_args=(-p airlock --bins -p airlock-agent)
[ "$tier" = test ] && cargo_args=(--workspace)
cargo_log=$(mktemp "${TMPDIR:-/tmp}/airlock-setup-cargo.XXXXXX")
cargo_pid=
# cargo needs a C linker; only when there is none does it wait for apt.
if command -v cc >/dev/null; then
  log "cargo build ${cargo_args[*]} (in the background)"
  cargo build --quiet --manifest-path "$repo/Cargo.toml" "${cargo_args[@]}" >"$cargo_log" 2>&1 &
  cargo_pid=$!
fi
finish_cargo() {
  if [ -z "$cargo_pid" ]; then
    log "cargo build ${cargo_args[*]}"
    cargo build --quiet --manifest-path "$repo/Cargo.toml" "${cargo_args[@]}"
  elif ! wait "$cargo_pid"; then
    cat "$cargo_log" >&2; rm -f "$cargo_log"
    echo "setup.sh: cargo build failed" >&2; exit 1
  fi
  cat "$cargo_log"; rm -f "$cargo_log"
  cargo_pid=
  log "cargo build done"
}
trap '[ -n "$cargo_pid" ] && kill "$cargo_pid" 2>/dev/null; rm -f "$cargo_log"' EXIT

# apt-cache needs package lists (the guest kernel lookup), apt-get install too.
have_lists() { for f in /var/lib/apt/lists/*; do case "$f" in *lock|*partial|*'*') ;; *) return 0 ;; esac; done; return 1; }
if [ ${#missing[@]} -gt 0 ] || ! have_lists; then
  log "apt-get update"
  apt-get update -q >/dev/null
fi
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ "$tier" = test ]; then
  # Only for the binary cache benchmark (cargo bench --bench cache), which
  # runs its own nginx: installed without starting Debian's nginx service,
  # and a failure here does not stop the setup.
  if ! command -v nginx >/dev/null || ! command -v wrk >/dev/null; then
    policy=/usr/sbin/policy-rc.d
    own_policy=0
    if [ ! -e "$policy" ]; then printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod +x "$policy"; own_policy=1; fi
    apt-get install -y -q --no-install-recommends nginx-light wrk >/dev/null \
      || echo "setup.sh: WARNING: nginx-light/wrk not installed; only the cache benchmark needs them" >&2
    [ "$own_policy" = 1 ] && rm -f "$policy"
    command -v systemctl >/dev/null && systemctl disable nginx 2>/dev/null || true
  fi
fi

# The guest image downloads while cargo compiles.
if [ "${SKIP_IMAGE:-0}" != 1 ]; then
  log "guest image"
  "$repo/vm-images/guest/build-guest.sh" "${AIRLOCK_IMAGE_CACHE:-/var/cache/airlock/guest}"
fi
finish_cargo

if [ "$tier" = test ]; then
  # The tiny PVH guest (ours, in the workplace's shared folder) for the
  # optional cloud-hypervisor tests, and virtiofsd from crates.io.
  shared=${AIRLOCK_SHARED:-$repo/../shared}
  tiny=/var/cache/airlock/cloud-hypervisor/tiny
  if [ ! -f "$tiny/tiny-wait.elf" ]; then
    if [ -x "$shared/tiny-guest/build.sh" ]; then
      "$shared/tiny-guest/build.sh" "$tiny" >/dev/null
    else
      echo "setup.sh: WARNING: $shared/tiny-guest not found: the cloud_hypervisor_* tests need AIRLOCK_CH_TINY" >&2
    fi
  fi
  if [ ! -x /var/cache/airlock/virtiofsd/bin/virtiofsd ]; then
    log "virtiofsd (cargo install)"
    cargo install --quiet --locked --root /var/cache/airlock/virtiofsd virtiofsd
  fi
  if [ "${SKIP_IMAGE:-0}" != 1 ]; then
    log "systemd test guest"
    "$repo/vm-images/systemd-guest/build.sh" "${AIRLOCK_SYSTEMD_GUEST_CACHE:-/var/cache/airlock/systemd-guest}"
    log "trimmed guest kernel"
    "$repo/vm-images/guest/build-kernel.sh" "${AIRLOCK_GUEST_KERNEL_CACHE:-/var/cache/airlock/guest-kernel}"
  fi
fi
log "ready ($tier)"
