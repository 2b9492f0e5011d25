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
#
# Both cache_hit and cache_publish prune OUTDIR: a build is kept while it is
# among the CACHE_KEEP (default 3) most recently used (its .complete is
# touched on every hit), so two or three checkouts with different inputs
# share a machine without rebuilding, and the cache does not grow with every
# change to an image's inputs (it did: a CI machine's disk filled). Build
# directories left by a killed run (.build.*, untouched for two hours) go too.

cache_hit() {
  local outdir=$1 hash=$2 what=$3
  [ -f "$outdir/$hash/.complete" ] || return 1
  touch "$outdir/$hash/.complete"
  ln -sfn "$hash" "$outdir/current"
  cache_prune "$outdir"
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
  cache_prune "$outdir"
}

cache_prune() {
  local outdir=$1 keep=${CACHE_KEEP:-3} current old
  current=$(readlink "$outdir/current" 2>/dev/null || true)
  # Complete builds (real directories: current is a symlink), newest use
  # first; the current one is never removed.
  find "$outdir" -mindepth 2 -maxdepth 2 -name .complete -printf '%T@ %h\n' 2>/dev/null \
    | sort -rn | tail -n +"$((keep + 1))" | while read -r _ old; do
    [ "${old##*/}" = "$current" ] && continue
    echo "cache: removing $old (not among the $keep most recently used)"
    rm -rf --one-file-system "$old"
  done
  find "$outdir" -mindepth 1 -maxdepth 1 -name '.build.*' -type d -mmin +120 -print0 2>/dev/null \
    | xargs -0 -r rm -rf --one-file-system
}
