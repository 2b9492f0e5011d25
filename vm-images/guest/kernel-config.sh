#!/usr/bin/env bash
# Make airlock's guest kernel .config: `make tinyconfig`, merged with the
# fragment vm-images/guest/kernel.config, completed by `make olddefconfig`.
# Fails, naming them, if options of the fragment did not end up as asked
# (renamed, dropped, or with a dependency the fragment lacks).
#   kernel-config.sh SRC FRAGMENT OUT [MAKE ARGS...]
# SRC is an unpacked kernel source tree (written to: the config is made in
# place); OUT receives the .config. Used by vm-images/nix/kernel.nix and by
# tests/tests/platform/guest_kernel.rs (Debian's linux-source), so both build the same
# configuration.
set -euo pipefail
src=$1 frag=$2 out=$3
shift 3
cd "$src"
make -s "$@" tinyconfig
KCONFIG_CONFIG=.config scripts/kconfig/merge_config.sh -m -O . .config "$frag" >/dev/null
make -s "$@" olddefconfig
missing=0
while IFS= read -r line; do
  case $line in
    CONFIG_*=*)
      if ! grep -qxF "$line" .config; then
        echo "kernel-config: $line asked, got: $(grep -E "^(# )?${line%%=*}[= ]" .config || echo 'absent')" >&2
        missing=1
      fi
      ;;
    "# CONFIG_"*" is not set")
      opt=${line#\# }
      opt=${opt%% *}
      if grep -qE "^$opt=" .config; then
        echo "kernel-config: $opt asked off, got: $(grep -E "^$opt=" .config)" >&2
        missing=1
      fi
      ;;
  esac
done < "$frag"
[ "$missing" = 0 ] || { echo "kernel-config: the fragment does not fit this kernel" >&2; exit 1; }
cp .config "$out"
