#!/bin/sh
# airlock systemd test guest, stage 1 (busybox initramfs). Lays a tmpfs overlay
# on the read-only Debian root (virtiofs tag "rootfs"), mounts the test's share
# (virtiofs tag "airlocktest", read-write) at /airlock-test and, with
# airlock.scratch=1 on the kernel cmdline, the ext4 scratch disk (virtio-blk
# serial "scratch") at /var/lib/airlock; then hands PID 1 to systemd.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
while read -r m; do insmod "$m" 2>/dev/null; done < /etc/modules.order
say() { echo "systemd-guest-init: $*"; }
fail() { say "FATAL: $*"; poweroff -f; }
dev_for() {
  for d in /sys/block/vd*; do
    [ "$(cat "$d/serial" 2>/dev/null)" = "$1" ] && { echo "/dev/${d##*/}"; return 0; }
  done
  return 1
}
mkdir -p /lower /rw /newroot
mount -t virtiofs -o ro rootfs /lower || fail "cannot mount the root (virtiofs tag rootfs)"
# Only what the guest writes outside /airlock-test and /var/lib/airlock lands
# here (journal, /etc changes, /tmp); a size limit, not a reservation.
mount -t tmpfs -o mode=0755,size=1g tmpfs /rw
mkdir -p /rw/upper /rw/work
mount -t overlay overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work /newroot \
  || fail "cannot mount the overlay root"
mkdir -p /newroot/airlock-test /newroot/var/lib/airlock
mount -t virtiofs airlocktest /newroot/airlock-test \
  || say "no test share (virtiofs tag airlocktest): the guest only powers off"
if grep -q 'airlock.scratch=1' /proc/cmdline; then
  for _ in $(seq 50); do dev_for scratch >/dev/null && break; sleep 0.1; done
  scratch=$(dev_for scratch) || fail "airlock.scratch=1 but no virtio disk with serial scratch"
  # noinit_itable: the host formatted it with lazy inode tables; zeroing them
  # in the background would cost the emulated CPU for nothing.
  mount -t ext4 -o noinit_itable "$scratch" /newroot/var/lib/airlock \
    || fail "cannot mount the scratch disk $scratch"
fi
say "stage1 done uptime=$(cut -d' ' -f1 /proc/uptime)"
umount /proc /sys
mount --move /dev /newroot/dev
exec switch_root /newroot /lib/systemd/systemd
