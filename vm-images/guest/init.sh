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
# airlock.template=1: a template boot (daemon/src/vm/template.rs). Nothing
# job-specific is read before the host saves the VM: the disk driver is
# held back (unbound where it is built in), the kernel's RNG made ready,
# then init says AIRLOCK-TEMPLATE-READY on the virtio port airlock.ctl and
# waits there. Each VM restored from the saved state gets one line on that
# port, "AIRLOCK-GO 1 <unix secs> <seed hex> <boot words>": init sets the
# clock, binds the disks (now the job's), and passes the boot words (which a
# cold boot has on its command line) and the seed to the agent in
# /run/airlock-boot and /run/airlock-seed.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
say() { echo "airlock-init: $*"; }
fail() { say "FATAL: $*"; poweroff -f; }
template=
grep -q 'airlock.template=1' /proc/cmdline && template=1
blk_modules=
while read -r m; do
  case "$m" in
    */virtio_blk.ko) [ -n "$template" ] && { blk_modules="$blk_modules $m"; continue; } ;;
  esac
  insmod "$m" 2>/dev/null
done < /etc/modules.order
if grep -q 'airlock.probe=1' /proc/cmdline; then
  echo "AIRLOCK-PROBE-OK"; poweroff -f
fi
words=$(cat /proc/cmdline)
seed=
if [ -n "$template" ]; then
  blk=/sys/bus/virtio/drivers/virtio_blk
  # Built into the kernel: the placeholder disks were probed; let them go.
  held=
  for d in "$blk"/virtio*; do
    [ -e "$d" ] || continue
    held="$held ${d##*/}"; echo "${d##*/}" > "$blk/unbind"
  done
  port=
  for _ in $(seq 200); do
    for p in /sys/class/virtio-ports/vport*; do
      [ "$(cat "$p/name" 2>/dev/null)" = airlock.ctl ] && port=/dev/${p##*/}
    done
    [ -n "$port" ] && break; sleep 0.05
  done
  [ -n "$port" ] || fail "no airlock.ctl port"
  # The RNG's slow start happens once, here, not in every job; each
  # restored VM is reseeded (its VM generation ID, the host's seed).
  head -c 1 /dev/random > /dev/null
  exec 3<> "$port"
  echo "AIRLOCK-TEMPLATE-READY" >&3
  read -r go <&3 || fail "no go record"
  set -- $go
  [ "$1" = AIRLOCK-GO ] && [ "$2" = 1 ] || fail "not a go record"
  date -u -s "@$3" > /dev/null 2>&1
  seed=$4
  shift 4
  words="$*"
  exec 3>&-
  for m in $blk_modules; do insmod "$m" 2>/dev/null; done
  for d in $held; do echo "$d" > "$blk/bind"; done
  say "restored uptime=$(cut -d' ' -f1 /proc/uptime)"
fi
dev_for() {
  for d in /sys/block/vd*; do
    [ "$(cat "$d/serial" 2>/dev/null)" = "$1" ] && { echo "/dev/${d##*/}"; return 0; }
  done
  return 1
}
for _ in $(seq 500); do dev_for airlock-export >/dev/null && break; sleep 0.01; done
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
case " $words " in *" airlock.base=1 "*) base_disk=1 ;; *) base_disk= ;; esac
if [ -n "$base_disk" ]; then
  for _ in $(seq 50); do dev_for airlock-base >/dev/null && break; sleep 0.1; done
  base=$(dev_for airlock-base) || fail "no base disk"
  mkdir -p /newroot/run/base
  mount -t ext4 -o ro,noload,nosuid,nodev "$base" /newroot/run/base || fail "cannot mount the base disk"
fi
if [ -n "$template" ]; then
  echo "$words" > /newroot/run/airlock-boot
  (umask 077; echo "$seed" > /newroot/run/airlock-seed)
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
