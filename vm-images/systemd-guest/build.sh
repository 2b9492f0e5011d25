#!/bin/bash
# Build the systemd test guest: Debian with systemd as PID 1, booted under QEMU
# by tests/tests/common/systemd_guest.rs so that a test can run the real
# airlockd against a real systemd, system D-Bus, journald and cgroup v2.
#   vmlinux     uncompressed kernel for direct (PVH) boot, from Debian's linux-image .deb
#   initrd.gz   busybox initramfs (init.sh): virtiofs root + tmpfs overlay, the test
#               share at /airlock-test, an optional scratch disk at /var/lib/airlock
#   root/       debootstrap minbase root with systemd-sysv, dbus, git, ... and the
#               kernel's modules; shared read-only over virtiofs (a directory, not an
#               image: nothing to copy per boot). airlock-test.service runs
#               /airlock-test/run once the system is up, then powers off.
# The result is cached under OUTDIR/<hash of inputs>/ and OUTDIR/current points to it,
# so a re-run with unchanged inputs takes about a second.
# usage: build.sh [OUTDIR]   (default /var/cache/airlock/systemd-guest)
# env:   DEBIAN_MIRROR (default http://deb.debian.org/debian), SUITE (default trixie;
#        its glibc must be at least the build host's, for airlockd built there)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
extract=$here/../guest/extract-vmlinux.py
# shellcheck source=../guest/kernel.sh
. "$here/../guest/kernel.sh"
# shellcheck source=../cache.sh
. "$here/../cache.sh"
outdir=${1:-/var/cache/airlock/systemd-guest}
SUITE=${SUITE:-trixie}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
# systemd as PID 1 and the tools the tests use; kmod for modprobe inside; airlockd
# itself needs only libc, libm and libgcc_s (ldd), and ca-certificates for TLS.
PACKAGES=systemd-sysv,dbus,git,e2fsprogs,procps,util-linux,kmod,ca-certificates
# In the initramfs: the virtiofs root, its overlay and the ext4 scratch disk.
MODULES="virtio_pci virtiofs overlay virtio_blk ext4"

[ "$(id -u)" = 0 ] || { echo "systemd-guest: run as root (debootstrap)" >&2; exit 1; }
for tool in debootstrap cpio busybox apt-get apt-cache dpkg-deb depmod modprobe python3 chroot findmnt; do
  command -v "$tool" >/dev/null || { echo "systemd-guest: missing $tool (run scripts/setup.sh)" >&2; exit 1; }
done

kpkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-/{print $2; exit}')
[ -n "$kpkg" ] || { echo "systemd-guest: cannot resolve linux-image-amd64 (apt-get update?)" >&2; exit 1; }
kver_pkg=$(apt-cache policy "$kpkg" | awk '/Candidate:/{print $2}')
hash=$( { cat "$here/build.sh" "$here/init.sh" "$extract" "$here/../guest/kernel.sh" "$here/../cache.sh";
          echo "$kpkg $kver_pkg $SUITE $PACKAGES $MODULES"; } | sha256sum | cut -c1-16)
cache_hit "$outdir" "$hash" "systemd guest" && exit 0
work=$(cache_work "$outdir")
trap cache_cleanup EXIT
t0=$(date +%s)

# 1. kernel: unpack the .deb (no initramfs-tools run, /boot untouched)
guest_kernel "$work" "$kpkg" "$extract"
# shellcheck disable=SC2154 # kver: set by guest_kernel (kernel.sh)
echo "systemd-guest: kernel $kver ($(( $(date +%s) - t0 ))s)"

# 2. initramfs: busybox + modules (with their dependencies, in load order) + init.sh
guest_initramfs "$work" "$here/init.sh" "$MODULES"

# 3. root: debootstrap in two stages, so that policy-rc.d (no service starts
#    in the build chroot) is in place before any package is configured
root=$work/root
debootstrap --variant=minbase --foreign --include="$PACKAGES" "$SUITE" "$root" "$DEBIAN_MIRROR" \
  > "$work/debootstrap.log" 2>&1 || { tail -20 "$work/debootstrap.log" >&2; exit 1; }
echo "systemd-guest: debootstrap stage 1 ($(( $(date +%s) - t0 ))s)"
printf '#!/bin/sh\nexit 101\n' > "$root/usr/sbin/policy-rc.d"
chmod 0755 "$root/usr/sbin/policy-rc.d"
chroot "$root" /debootstrap/debootstrap --second-stage >> "$work/debootstrap.log" 2>&1 \
  || { tail -20 "$work/debootstrap.log" >&2; exit 1; }
rm -f "$root/usr/sbin/policy-rc.d"
if findmnt -rn -o TARGET | grep -qF "$root/"; then
  echo "systemd-guest: debootstrap left mounts in $root" >&2; exit 1
fi
echo "systemd-guest: debootstrap stage 2 ($(( $(date +%s) - t0 ))s)"

# the kernel's modules, so that modprobe works inside (usr-merged: /lib -> usr/lib)
moddir=$root/lib/modules
[ -L "$root/lib" ] && moddir=$root/usr/lib/modules
mkdir -p "$moddir"
cp -a "$work/kernel/lib/modules/$kver" "$moddir/"

echo airlock-systemd-guest > "$root/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 airlock-systemd-guest\n::1 localhost\n' > "$root/etc/hosts"
rm -f "$root/etc/resolv.conf"
: > "$root/etc/resolv.conf"
mkdir -p "$root/airlock-test" "$root/var/lib/airlock"

sd=$root/etc/systemd/system
mkdir -p "$sd/multi-user.target.wants" "$root/etc/systemd/system-generators"
ln -sfn /lib/systemd/system/multi-user.target "$sd/default.target"
# Nothing may wait on the console: no gettys (also none generated for
# console=ttyS0), no first-boot prompts; and nothing periodic that would
# run in the middle of a test.
ln -sfn /dev/null "$root/etc/systemd/system-generators/systemd-getty-generator"
for u in getty.target getty@.service serial-getty@.service console-getty.service \
         container-getty@.service systemd-firstboot.service e2scrub_reap.service \
         apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer e2scrub_all.timer fstrim.timer; do
  ln -sfn /dev/null "$sd/$u"
done
# A boot that falls into emergency or rescue mode would wait for a root
# password on the console: say so and power off instead.
for m in emergency rescue; do
  cat > "$sd/$m.service" <<UNIT
[Unit]
Description=airlock test guest: $m mode means a broken boot, power off
DefaultDependencies=no
Conflicts=shutdown.target
Before=shutdown.target

[Service]
Type=oneshot
ExecStart=/bin/sh -c 'echo "airlock-test: boot failed ($m mode), powering off" > /dev/ttyS0; systemctl --no-block poweroff'
UNIT
done

# The test hook. Type=exec, not oneshot: a oneshot's start job would keep
# the boot unfinished while the script runs, so `systemctl is-system-running
# --wait` (or systemd-analyze) inside it would wait for itself forever.
mkdir -p "$root/usr/local/lib/airlock-test"
cat > "$root/usr/local/lib/airlock-test/runner" <<'RUNNER'
#!/bin/bash
# Runs /airlock-test/run (the test's script, on the host's share) with
# stdout+stderr to the serial console and appended to /airlock-test/out.log,
# writes its exit code to /airlock-test/exit-code and powers off. Only the
# script itself is waited for: a daemon it leaves in the background (and the
# tee, as long as that daemon holds the output open) ends with the poweroff.
run=/airlock-test/run
if [ ! -e "$run" ]; then
  echo "airlock-test: no $run, powering off" > /dev/ttyS0
  systemctl --no-block poweroff
  exit 0
fi
echo "airlock-test: starting $run uptime=$(cut -d' ' -f1 /proc/uptime)" > /dev/ttyS0
"$run" > >(tee -a /airlock-test/out.log > /dev/ttyS0) 2>&1 &
wait $!
rc=$?
echo "$rc" > /airlock-test/exit-code
sync
echo "airlock-test: $run exited rc=$rc uptime=$(cut -d' ' -f1 /proc/uptime)" > /dev/ttyS0
systemctl --no-block poweroff
RUNNER
chmod 0755 "$root/usr/local/lib/airlock-test/runner"
cat > "$sd/airlock-test.service" <<'UNIT'
[Unit]
Description=airlock test script (/airlock-test/run), then power off
After=multi-user.target dbus.service systemd-journald.service

[Service]
Type=exec
ExecStart=/usr/local/lib/airlock-test/runner
WorkingDirectory=/airlock-test
Environment=HOME=/root
StandardInput=null
StandardOutput=journal+console
StandardError=journal+console
TimeoutStartSec=infinity

[Install]
WantedBy=multi-user.target
UNIT
ln -sfn ../airlock-test.service "$sd/multi-user.target.wants/airlock-test.service"

rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/usr/share/doc "$root"/usr/share/man
# Mark the root up to date (/etc/.updated, /var/.updated), so that every boot
# skips the ConditionNeedsUpdate= units (ldconfig, systemd-sysusers, journal
# catalog): the package scripts did that work already, and under TCG it cost
# about 13 s per boot.
chroot "$root" /usr/lib/systemd/systemd-update-done

# 4. publish atomically
mkdir "$work/out"
mv "$work/vmlinux" "$work/initrd.gz" "$root" "$work/out/"
echo "kernel=$kpkg $kver_pkg ($kver) suite=$SUITE packages=$PACKAGES built=$(date -u +%FT%TZ)" > "$work/out/INFO"
cache_publish "$outdir" "$hash"
echo "systemd guest built in $(( $(date +%s) - t0 ))s: $outdir/$hash ($(du -sh "$outdir/$hash" | cut -f1))"
