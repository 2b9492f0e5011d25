#!/bin/bash
# One real job, end to end, on airlockd's embedded defaults (local intake,
# QEMU backend, state in /var/lib/airlock): builds the fixture package set's
# `chain` attr from a PR commit inside a throwaway VM, then prints the result
# and the quarantine listing.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
t0=$(date +%s)
"$repo/scripts/setup.sh" demo
bin=$repo/target/debug
work=$(mktemp -d /tmp/airlock-demo.XXXXXX)
daemon_pid=
cleanup() { [ -n "$daemon_pid" ] && kill "$daemon_pid" 2>/dev/null; wait 2>/dev/null || true; }
trap cleanup EXIT

# A PR: the fixture package set on master, one commit on a PR branch.
g() { git -C "$work/repo" -c user.name=demo -c user.email=demo@localhost "$@"; }
mkdir "$work/repo"; cp "$repo/tests/fixtures/pkgs/default.nix" "$work/repo/"
g init -q -b master; g add .; g commit -q -m "package set"
g checkout -q -b pr; echo "demo change" > "$work/repo/CHANGE"; g add .; g commit -q -m "a PR"
head=$(g rev-parse HEAD)

echo "== starting airlockd (defaults; log: $work/airlockd.log)"
rm -f /run/airlock/airlockd.sock   # a stale socket of an earlier, killed run
"$bin/airlockd" > "$work/airlockd.log" 2>&1 &
daemon_pid=$!
for _ in $(seq 600); do
  "$bin/airlockctl" jobs >/dev/null 2>&1 && break
  kill -0 "$daemon_pid" 2>/dev/null || break
  sleep 0.1
done
"$bin/airlockctl" jobs >/dev/null 2>&1 || { echo "airlockd did not start:"; cat "$work/airlockd.log"; exit 1; }
grep -h "accelerator" "$work/airlockd.log" | sed 's/^/   /' || true

echo "== airlockctl submit --repo $work/repo --head $head --pr 1 --attr chain"
id=$("$bin/airlockctl" submit --repo "$work/repo" --head "$head" --pr 1 --attr chain)
echo "   job $id; following its log:"
"$bin/airlockctl" log "$id" | sed 's/^/   | /'
echo "== result"
rc=0
"$bin/airlockctl" wait "$id" || rc=$?
q=$("$bin/airlockctl" --json show "$id" | python3 -c 'import json,sys; print(json.load(sys.stdin)["result"]["quarantine"] or "")')
if [ -n "$q" ]; then
  echo "== quarantine listing: $q"
  (cd "$q" && find . -type f | sort | xargs ls -l)
  echo "== one narinfo (unsigned until release)"
  cat "$(ls "$q"/*.narinfo | head -1)"
fi
echo "== demo done in $(( $(date +%s) - t0 )) s (set-up included)"
exit $rc
