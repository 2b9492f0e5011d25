# shellcheck shell=bash
# The cached-build routine of the three image builders (guest/build-guest.sh,
# guest/build-kernel.sh, systemd-guest/build.sh), sourced. A build lives in
# OUTDIR/<hash of its inputs>/, complete once it has a .complete file, and
# OUTDIR/current points to the newest; a re-run with unchanged inputs takes
# about a second.
#
#   cache_hit OUTDIR HASH WHAT   OUTDIR/HASH is complete: point current at it,
#                                say "WHAT up to date", succeed
#   work=$(cache_work OUTDIR)    a fresh build directory under OUTDIR (0755:
#   trap cache_cleanup EXIT      apt-get download drops to _apt), removed on
#                                exit after unmounting anything below it
#                                (debootstrap mounts /proc, /sys, maybe /dev
#                                in its root), never crossing into another
#                                file system
#   cache_publish OUTDIR HASH    $work/out becomes OUTDIR/HASH (marked
#                                complete), current points to it

cache_hit() {
  local outdir=$1 hash=$2 what=$3
  [ -f "$outdir/$hash/.complete" ] || return 1
  ln -sfn "$hash" "$outdir/current"
  echo "$what up to date: $outdir/$hash"
}

cache_cleanup() {
  [ -n "${work:-}" ] && [ -d "$work" ] || return 0
  findmnt -rn -o TARGET | grep -F "$work/" | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
  rm -rf --one-file-system "$work"
}

cache_work() {
  local w
  mkdir -p "$1"
  w=$(mktemp -d "$1/.build.XXXXXX")
  chmod 0755 "$w"
  echo "$w"
}

cache_publish() {
  local outdir=$1 hash=$2
  touch "$work/out/.complete"
  rm -rf --one-file-system "${outdir:?}/$hash"
  mv "$work/out" "$outdir/$hash"
  ln -sfn "$hash" "$outdir/current"
}
