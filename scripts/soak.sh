#!/bin/bash
# Flake detector: run the whole test suite (unit and end-to-end) N times on
# this machine and print, per test, how often it passed and failed.
#   scripts/soak.sh N            (default 3)
#   AIRLOCK_TEST_THREADS="1 2 4" scripts/soak.sh 3
# AIRLOCK_TEST_THREADS is a list of --test-threads values (default 2); run i
# uses the i-th (cycling), so one soak also proves order and thread-count
# independence.
# Logs of every run stay in the printed directory. Exit status 1 if any
# test failed in any run (or skipped: the end-to-end tests must all run).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
n=${1:-3}
read -r -a threads_list <<< "${AIRLOCK_TEST_THREADS:-2}"
logs=$(mktemp -d "${TMPDIR:-/tmp}/airlock-soak.XXXXXX")
"$repo/scripts/setup.sh" >/dev/null
cargo build --workspace --quiet
cargo test --workspace --no-run --quiet 2>/dev/null
export AIRLOCK_REQUIRE_E2E=1
for i in $(seq 1 "$n"); do
  threads=${threads_list[$(( (i - 1) % ${#threads_list[@]} ))]}
  t0=$(date +%s)
  set +e
  cargo test --workspace -- --test-threads="$threads" >"$logs/run-$i.log" 2>&1
  rc=$?
  set -e
  echo "soak: run $i/$n (--test-threads=$threads): exit $rc in $(( $(date +%s) - t0 )) s (log: $logs/run-$i.log)"
done
# libtest prints "test NAME ... ok|FAILED" per test; count per test.
table=$(cat "$logs"/run-*.log | awk '
  /^test .* \.\.\. (ok|FAILED)$/ { seen[$2]=1; if ($NF=="ok") pass[$2]++; else fail[$2]++ }
  END { for (t in seen) printf "%-76s %6d %6d\n", t, pass[t], fail[t] }' | sort)
printf "%-76s %6s %6s\n" test passed failed
echo "$table"
bad=$(echo "$table" | awk '$3 > 0' | wc -l)
echo "soak: $n runs, $(echo "$table" | grep -c .) tests, $bad with failures"
if grep -q "SKIPPED" "$logs"/run-*.log; then
  echo "soak: some tests were SKIPPED" >&2
  exit 1
fi
[ "$bad" = 0 ]
