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
# job-specific is read before the host saves the VM: the disk driver lets
# go of every disk but the guest root (the job slots hold placeholders
# then), the kernel's RNG is made ready, the root is mounted and switched
# to, and the agent the host appended to the initramfs (/airlock-agent)
# starts with --template: it says AIRLOCK-TEMPLATE-READY on the virtio
# port airlock.ctl (cloud-hypervisor: the virtio console) and waits there. Each VM restored from the saved state
# gets one line on that port, "AIRLOCK-GO 1 <unix secs> <seed hex> <boot
# words>", and the agent reseeds the RNG, sets the clock, binds and mounts
# the job's disks (vm-images/agent/src/restore.rs).
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
say() { echo "airlock-init: $*"; }
fail() { say "FATAL: $*"; poweroff -f; }
template=
grep -q 'airlock.template=1' /proc/cmdline && template=1
while read -r m; do insmod "$m" 2>/dev/null; done < /etc/modules.order
if grep -q 'airlock.probe=1' /proc/cmdline; then
  echo "AIRLOCK-PROBE-OK"; poweroff -f
fi
words=$(cat /proc/cmdline)
dev_for() {
  for d in /sys/block/vd*; do
    [ "$(cat "$d/serial" 2>/dev/null)" = "$1" ] && { echo "/dev/${d##*/}"; return 0; }
  done
  return 1
}
# The read-only guest root on /newroot with its tmpfs.
mount_root() {
  mkdir -p /newroot
  mount -t ext4 -o ro,noload "$1" /newroot || fail "cannot mount root"
  mount -t tmpfs -o mode=0755,size=64m tmpfs /newroot/run
  mount -t tmpfs -o mode=1777,size=256m tmpfs /newroot/tmp
}
# Switch to the root and run the agent (its command line in the arguments)
# as stage 2; the VM powers off when it exits.
run_agent() {
  cat > /newroot/run/stage2 <<STAGE2
#!/bin/sh
export PATH=/usr/bin:/usr/sbin:/bin:/sbin HOME=/tmp
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
mkdir -p /dev/pts /dev/shm; mount -t devpts devpts /dev/pts; mount -t tmpfs tmpfs /dev/shm
$* --channel /dev/hvc0
echo "airlock-init: agent exited rc=\$? uptime=\$(cut -d' ' -f1 /proc/uptime)"
sync
/bin/busybox poweroff -f
STAGE2
  chmod +x /newroot/run/stage2
  exec switch_root /newroot /run/stage2
}
if [ -n "$template" ]; then
  for _ in $(seq 500); do dev_for airlock-root >/dev/null && break; sleep 0.01; done
  root=$(dev_for airlock-root) || fail "no root disk"
  # Every other disk is a placeholder now: let it go (its page cache with
  # it); the agent binds those the job uses once they are the job's
  # (/run/airlock-held: "<virtio device>:<serial>" words).
  blk=/sys/bus/virtio/drivers/virtio_blk
  held=
  for d in "$blk"/virtio*; do
    [ -e "$d" ] || continue
    serial=$(cat "$d"/block/*/serial 2>/dev/null)
    [ "$serial" = airlock-root ] && continue
    held="$held ${d##*/}:$serial"; echo "${d##*/}" > "$blk/unbind"
  done
  # cloud-hypervisor has no virtio-serial port: there the control port is
  # the virtio console (airlock.ctl=hvc0 on the template's command line).
  port=
  case " $words " in *" airlock.ctl=hvc0 "*) port=/dev/hvc0 ;; esac
  [ -n "$port" ] || for _ in $(seq 200); do
    for p in /sys/class/virtio-ports/vport*; do
      [ "$(cat "$p/name" 2>/dev/null)" = airlock.ctl ] && port=/dev/${p##*/}
    done
    [ -n "$port" ] && break; sleep 0.05
  done
  [ -n "$port" ] || fail "no airlock.ctl port"
  [ -x /airlock-agent ] || fail "no agent in the template's initramfs"
  # The RNG's slow start happens once, here, not in every job; each
  # restored VM is reseeded (its VM generation ID, the host's seed).
  head -c 1 /dev/random > /dev/null
  mount_root "$root"
  cp /airlock-agent /newroot/run/airlock-agent || fail "cannot copy the agent"
  echo "$held" > /newroot/run/airlock-held
  say "template ready to save uptime=$(cut -d' ' -f1 /proc/uptime)"
  run_agent /run/airlock-agent --template "$port"
fi
for _ in $(seq 500); do dev_for airlock-export >/dev/null && break; sleep 0.01; done
root=$(dev_for airlock-root) || fail "no root disk"
nixd=$(dev_for airlock-nix) || fail "no /nix disk"
input=$(dev_for airlock-input) || fail "no input disk"
export_dev=$(dev_for airlock-export) || fail "no export disk"
mount_root "$root"
mount -t ext4 -o nosuid,nodev,noinit_itable "$nixd" /newroot/nix || fail "cannot mount /nix"
mkdir -p /newroot/run/input
mount -t ext4 -o ro,noload,nosuid,nodev "$input" /newroot/run/input || fail "cannot mount input"
case " $words " in *" airlock.base=1 "*) base_disk=1 ;; *) base_disk= ;; esac
if [ -n "$base_disk" ]; then
  for _ in $(seq 50); do dev_for airlock-base >/dev/null && break; sleep 0.1; done
  base=$(dev_for airlock-base) || fail "no base disk"
  mkdir -p /newroot/run/base
  mount -t ext4 -o ro,noload,nosuid,nodev "$base" /newroot/run/base || fail "cannot mount the base disk"
fi
say "stage1 done uptime=$(cut -d' ' -f1 /proc/uptime)"
run_agent /run/input/airlock-agent --input /run/input --export "$export_dev"
