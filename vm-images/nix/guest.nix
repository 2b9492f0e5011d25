# airlock's guest image, built by Nix: the same contract with the host as the
# Debian-built guest of vm-images/guest/build-guest.sh, so the runner cannot
# tell which one it boots (either VM backend):
#
#   $out/vmlinux    uncompressed kernel with its PVH entry note (direct boot by
#                   QEMU and cloud-hypervisor); the console is ttyS0 (airlockd
#                   passes console=ttyS0)
#   $out/initrd.gz  busybox initramfs whose /init is vm-images/guest/init.sh
#                   itself (used by path, not copied into this file): it finds
#                   the disks by virtio serial (airlock-root, airlock-nix,
#                   airlock-input, airlock-export, and airlock-base when
#                   airlock.base=1 is on the command line), mounts them and
#                   switches to the root, whose stage 2 runs the agent from
#                   the input disk with its channel on /dev/hvc0
#   $out/rootfs.img ext4 root (mounted read-only): busybox, Nix, /etc/nix/nix.conf
#
# The kernel is vm-images/nix/kernel.nix: nixpkgs' default kernel source
# configured with only what the guest needs (tinyconfig plus
# vm-images/guest/kernel.config: virtio, PVH, ext4, overlayfs, ...), all
# built in, so the initramfs loads no modules (its /etc/modules.order is
# empty; init.sh reads it for the Debian-built guest's modules).
# The root cannot keep Nix in /nix/store: init.sh mounts the job's own empty
# disk on /nix. So Nix and busybox are the statically linked builds
# (pkgsStatic) and live in /usr/bin and /bin, as Debian's nix-bin does.
#
# Reproducible: fixed file times, owners and order in the cpio archive, gzip
# without name or time, and an ext4 image with a fixed UUID and hash seed whose
# owners and times are set after mkfs (checked with Debian's e2fsprogs: two
# runs at different times give identical bytes). Nothing here reads the
# host's nix.settings or its kernel: the image depends only on the nixpkgs
# it is built from.
{
  lib,
  runCommand,
  callPackage,
  pkgsStatic,
  cacert,
  cpio,
  e2fsprogs,
  kernel ? callPackage ./kernel.nix { },
  nix ? pkgsStatic.nix,
  busybox ? pkgsStatic.busybox,
}:
let
  # The guest's Nix configuration, as build-guest.sh writes it: single-user
  # (no build users: the VM is the isolation), sandboxed builds with busybox
  # as /bin/sh, no substituters of its own (the agent passes airlockd's
  # caching proxy per job).
  nixConf = builtins.toFile "nix.conf" ''
    build-users-group =
    sandbox = true
    sandbox-fallback = false
    sandbox-paths = /bin/sh=/bin/busybox
    substituters =
    experimental-features = nix-command
  '';

  initScript = ../guest/init.sh;

  uuid = "a1f10c4b-0000-4000-8000-000000000001";
in
runCommand "airlock-guest-image"
  {
    nativeBuildInputs = [
      cpio
      e2fsprogs
    ];
    passthru = {
      inherit
        kernel
        nix
        busybox
        ;
    };
    meta = {
      description = "airlock's guest image (kernel, initramfs, root with Nix ${nix.version})";
      platforms = [ "x86_64-linux" ];
    };
  }
  ''
    mkdir -p $out
    bb=${busybox}/bin/busybox

    # busybox and a link for each applet, into the tree $1
    busybox_tree() {
      mkdir -p "$1"/bin "$1"/sbin "$1"/usr/bin "$1"/usr/sbin
      cp $bb "$1"/bin/busybox
      chmod 0755 "$1"/bin/busybox
      for a in $($bb --list-full); do
        [ -e "$1/$a" ] || ln -s /bin/busybox "$1/$a"
      done
    }

    # 1. kernel: the trimmed kernel's vmlinux (already without debug
    #    sections; the notes, PVH's among them, stay)
    cp ${kernel}/vmlinux $out/vmlinux
    chmod 0644 $out/vmlinux

    # 2. initramfs: busybox and init.sh as /init; no modules (all built in)
    ird=$PWD/initramfs
    busybox_tree $ird
    mkdir -p $ird/proc $ird/sys $ird/dev $ird/tmp $ird/run $ird/mnt $ird/etc $ird/newroot
    : > $ird/etc/modules.order
    install -m 0755 ${initScript} $ird/init
    find $ird -exec touch -h -d @1 {} +
    (cd $ird && find . -print0 | sort -z \
      | cpio --null -o -H newc --reproducible -R +0:+0 --quiet) \
      | gzip -9 -n > $out/initrd.gz

    # 3. root: busybox, static Nix in /usr/bin, its configuration
    root=$PWD/root
    busybox_tree $root
    mkdir -p $root/etc/nix $root/etc/ssl/certs $root/nix $root/proc $root/sys \
      $root/dev $root/run $root/tmp $root/root $root/var/tmp
    for f in ${nix}/bin/*; do
      n=$(basename "$f")
      if [ -L "$f" ]; then ln -s nix $root/usr/bin/$n; else install -m 0755 "$f" $root/usr/bin/$n; fi
    done
    install -m 0644 ${nixConf} $root/etc/nix/nix.conf
    install -m 0644 ${cacert}/etc/ssl/certs/ca-bundle.crt $root/etc/ssl/certs/ca-certificates.crt
    # The agent bind-mounts the fetch phase's resolvers over this file: a
    # regular file, not a symlink (build-guest.sh says why).
    : > $root/etc/resolv.conf
    printf '127.0.0.1 localhost\n::1 localhost\n' > $root/etc/hosts
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/var/empty:/bin/false\n' > $root/etc/passwd
    printf 'root:x:0:\nnogroup:x:65534:\n' > $root/etc/group
    chmod 1777 $root/tmp $root/var/tmp
    find $root -exec touch -h -d @1 {} +
    bytes=$(find $root -type f -printf '%s\n' | awk '{ s += $1 } END { print s }')
    size_mb=$(( bytes / 1048576 * 5 / 4 + 64 ))
    # mkfs.ext4 -d copies each file's owner and ctime from the build tree
    # (the build user, the build's clock), so both are set afterwards with
    # debugfs: root-owned, ctime 1. E2FSPROGS_FAKE_TIME fixes the
    # filesystem's own times (superblock, lost+found).
    E2FSPROGS_FAKE_TIME=1 mkfs.ext4 -q -F -L airlock-root -U ${uuid} -E hash_seed=${uuid} \
      -d $root $out/rootfs.img ''${size_mb}M
    (cd $root && find . | LC_ALL=C sort | sed 's|^\.||; s|^$|/|') | while read -r p; do
      printf 'sif "%s" uid 0\nsif "%s" gid 0\nsif "%s" ctime @1\n' "$p" "$p" "$p"
    done > debugfs.cmds
    E2FSPROGS_FAKE_TIME=1 debugfs -w -f debugfs.cmds $out/rootfs.img > debugfs.log 2>&1
    if grep -q -i 'error\|not found\|invalid' debugfs.log; then cat debugfs.log; exit 1; fi

    echo "kernel=${kernel.version} nix=${nix.version} busybox=${busybox.version} built-by=nix" > $out/INFO
  ''
