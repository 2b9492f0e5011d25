# shellcheck shell=bash
# Shared by build-guest.sh and ../systemd-guest/build.sh (sourced, bash):
# a Debian kernel for direct (PVH) boot and a busybox initramfs around an init.
#   guest_kernel WORK KPKG EXTRACT      unpack the .deb into WORK/kernel (no
#       initramfs-tools run, /boot untouched), depmod, extract WORK/vmlinux;
#       sets $kver
#   guest_initramfs WORK INIT MODULES   busybox + MODULES (with their
#       dependencies, in load order, listed in /etc/modules.order) + INIT as
#       /init, packed as WORK/initrd.gz
guest_kernel() {
  local work=$1 kpkg=$2 extract=$3
  (cd "$work" && apt-get download -q "$kpkg" >/dev/null)
  mkdir "$work/kernel"
  dpkg-deb -x "$work"/"$kpkg"_*.deb "$work/kernel"
  kver=$(ls "$work/kernel/lib/modules")
  depmod -b "$work/kernel" "$kver"
  python3 "$extract" "$work/kernel/boot/vmlinuz-$kver" "$work/vmlinux" >/dev/null
}

guest_initramfs() {
  local work=$1 init=$2 modules=$3
  local ird=$work/initramfs p m
  mkdir -p "$ird"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,run,mnt,etc,newroot}
  cp /bin/busybox "$ird/bin/busybox"
  for p in $(/bin/busybox --list-full); do [ -e "$ird/$p" ] || ln -s /bin/busybox "$ird/$p"; done
  : > "$ird/etc/modules.order"
  for m in $modules; do
    modprobe -d "$work/kernel" -S "$kver" --show-depends "$m" | while read -r cmd path _; do
      [ "$cmd" = insmod ] || continue
      rel=${path#*/lib/modules/$kver/}
      if [ ! -e "$ird/lib/modules/$kver/$rel" ]; then
        mkdir -p "$(dirname "$ird/lib/modules/$kver/$rel")"
        cp "$path" "$ird/lib/modules/$kver/$rel"
        echo "/lib/modules/$kver/$rel" >> "$ird/etc/modules.order"
      fi
    done
  done
  install -m 0755 "$init" "$ird/init"
  (cd "$ird" && find . -print0 | cpio --null -o -H newc --quiet) | gzip -1 > "$work/initrd.gz"
}
