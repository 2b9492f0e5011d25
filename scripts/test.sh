#!/bin/bash
# The whole test suite: formatting, lints, unit tests, and the end-to-end
# tests in real VMs (QEMU; TCG where KVM cannot boot the guest).
# End-to-end tests skip loudly when something is missing; with
# AIRLOCK_REQUIRE_E2E=1 (set by .ci/run) a missing piece fails instead.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
"$repo/scripts/setup.sh"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
# Binaries first: the end-to-end tests run the real airlockd/airlockctl/agent.
cargo build --workspace --quiet
# The real nixpkgs snapshot (tests/tests/nixpkgs.rs): from the workplace's
# shared parts when they are there; elsewhere that test skips loudly.
shared=${AIRLOCK_SHARED:-$repo/../shared}
if [ -z "${AIRLOCK_NIXPKGS:-}" ] && [ -x "$shared/nixpkgs/unpack.sh" ]; then
  AIRLOCK_NIXPKGS=$("$shared/nixpkgs/unpack.sh")
  export AIRLOCK_NIXPKGS
fi
out=$(mktemp "${TMPDIR:-/tmp}/airlock-test-output.XXXXXX")
trap 'rm -f "$out"' EXIT
# --no-fail-fast: one failing test binary must not hide the rest of the suite.
cargo test --workspace --no-fail-fast -- --test-threads="${AIRLOCK_TEST_THREADS:-2}" --show-output 2>&1 | tee "$out"
if grep -q "SKIPPED" "$out"; then
  echo "test.sh: some end-to-end tests were SKIPPED (see above)" >&2
  [ "${AIRLOCK_REQUIRE_E2E:-0}" = 1 ] && exit 1
fi
