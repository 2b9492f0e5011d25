#!/bin/bash
# Boot time of the trimmed guest kernel (vm-images/guest/build-kernel.sh: the
# Nix-built guest's configuration on Debian's 6.12 source) against Debian's
# stock kernel (the Debian-built guest's), both with the Debian guest's
# initramfs: a probe boot (airlock.probe=1: stage 1 runs, prints
# AIRLOCK-PROBE-OK, powers off; timed to QEMU's exit), N times each; prints
# the kernel sizes and the median wall time.
# usage: bench/guest-kernel-boot.sh [N]    env: ACCEL (tcg|kvm, default tcg)
set -euo pipefail
N=${1:-9}
accel=${ACCEL:-tcg}
guest=${AIRLOCK_IMAGE_DIR:-/var/cache/airlock/guest/current}
trimmed=${AIRLOCK_GUEST_KERNEL_DIR:-/var/cache/airlock/guest-kernel/current}/vmlinux
for f in "$trimmed" "$guest/vmlinux" "$guest/initrd.gz"; do
  [ -f "$f" ] || { echo "missing $f (scripts/setup.sh)" >&2; exit 1; }
done
median() { sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
boot() {
  local t0 t1
  t0=$(date +%s.%N)
  qemu-system-x86_64 -machine q35 -accel "$accel" -m 1024 -smp 2 -kernel "$1" \
    -initrd "$guest/initrd.gz" -append "console=ttyS0 quiet panic=-1 airlock.probe=1" \
    -nographic -no-reboot | grep AIRLOCK-PROBE-OK >/dev/null
  t1=$(date +%s.%N)
  echo "$t1 - $t0" | bc
}
for k in trimmed:"$trimmed" stock:"$guest/vmlinux"; do
  name=${k%%:*} path=${k#*:}
  times=$(for _ in $(seq "$N"); do boot "$path"; done)
  printf '%-8s vmlinux %5.1f MB  probe boot median %.2f s  (%s runs, %s)\n' "$name" \
    "$(echo "$(stat -c %s "$path") / 1000000" | bc -l)" "$(echo "$times" | median)" "$N" "$accel"
done
