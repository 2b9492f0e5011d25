#!/bin/sh
# airlock guest, stage 1 (busybox initramfs). Finds the job's disks by their
# virtio serial, mounts the read-only guest root, the per-job /nix disk and the
# read-only job input, then switches root and runs the agent.
#   airlock-root    guest root (ext4, read-only)
#   airlock-nix     per-job /nix (ext4, read-write; survives between phases)
#   airlock-input   job input: job.json, the agent, the checkout (ext4, read-only)
#   airlock-export  raw export area the agent writes its result stream to
#   airlock-base    (with airlock.base=1) a base tree the input's delta/ is
#                   stacked on (ext4, read-only; shared by jobs of one base)
# Kernel cmdline: airlock.probe=1 only prints AIRLOCK-PROBE-OK and powers off.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
while read -r m; do insmod "$m" 2>/dev/null; done < /etc/modules.order
say() { echo "airlock-init: $*"; }
fail() { say "FATAL: $*"; poweroff -f; }
if grep -q 'airlock.probe=1' /proc/cmdline; then
  echo "AIRLOCK-PROBE-OK"; poweroff -f
fi
dev_for() {
  for d in /sys/block/vd*; do
    [ "$(cat "$d/serial" 2>/dev/null)" = "$1" ] && { echo "/dev/${d##*/}"; return 0; }
  done
  return 1
}
for _ in $(seq 50); do dev_for airlock-export >/dev/null && break; sleep 0.1; done
root=$(dev_for airlock-root) || fail "no root disk"
nixd=$(dev_for airlock-nix) || fail "no /nix disk"
input=$(dev_for airlock-input) || fail "no input disk"
export_dev=$(dev_for airlock-export) || fail "no export disk"
mkdir -p /newroot
mount -t ext4 -o ro,noload "$root" /newroot || fail "cannot mount root"
mount -t tmpfs -o mode=0755,size=64m tmpfs /newroot/run
mount -t tmpfs -o mode=1777,size=256m tmpfs /newroot/tmp
mount -t ext4 -o nosuid,nodev "$nixd" /newroot/nix || fail "cannot mount /nix"
mkdir -p /newroot/run/input
mount -t ext4 -o ro,noload,nosuid,nodev "$input" /newroot/run/input || fail "cannot mount input"
if grep -q 'airlock.base=1' /proc/cmdline; then
  for _ in $(seq 50); do dev_for airlock-base >/dev/null && break; sleep 0.1; done
  base=$(dev_for airlock-base) || fail "no base disk"
  mkdir -p /newroot/run/base
  mount -t ext4 -o ro,noload,nosuid,nodev "$base" /newroot/run/base || fail "cannot mount the base disk"
fi
say "stage1 done uptime=$(cut -d' ' -f1 /proc/uptime)"
cat > /newroot/run/stage2 <<STAGE2
#!/bin/sh
export PATH=/usr/bin:/usr/sbin:/bin:/sbin HOME=/tmp
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
mkdir -p /dev/pts /dev/shm; mount -t devpts devpts /dev/pts; mount -t tmpfs tmpfs /dev/shm
/run/input/airlock-agent --input /run/input --export $export_dev --channel /dev/hvc0
echo "airlock-init: agent exited rc=\$? uptime=\$(cut -d' ' -f1 /proc/uptime)"
sync
/bin/busybox poweroff -f
STAGE2
chmod +x /newroot/run/stage2
exec switch_root /newroot /run/stage2
