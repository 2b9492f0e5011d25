#!/bin/bash
# Walking-skeleton benchmark: the `chain` fixture attr built N times (default 5)
# through airlockd (one fresh VM per job) and N times with plain nix-build on
# the host; prints medians and where a job's time goes.
# usage: bench/skeleton.sh [N]     env: ACCEL (tcg|kvm|auto, default auto)
#        NETWORK=1 (default): two boots per job (fetch with a NIC, build without);
#        NETWORK=0: one boot, no NIC. airlockd runs in a network namespace of
#        its own, so the machine's network is not touched.
#        TEMPLATE=1 (default): VMs restored from guest templates (vm.template);
#        TEMPLATE=0: every VM boots cold. KERNEL=…: vm.kernel (default
#        "auto": the trimmed kernel where built; "" the image's own). The first job builds the templates:
#        it is run once before the measured ones and not counted.
#        Memory: every 0.2 s each running QEMU's /proc/<pid>/smaps is read;
#        a VM's own memory is its resident set minus the template pages it
#        maps but never wrote (those are the memfd's, shared by every VM of
#        the template: counted once, as "template pages").
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
N=${1:-5}
bin=$repo/target/release
cargo build --release --workspace --quiet --manifest-path "$repo/Cargo.toml"
work=$(mktemp -d /tmp/airlock-bench.XXXXXX)
pid=
ns=airlock-bench-$$
ip netns add "$ns"; ip -n "$ns" link set lo up
sampler=
trap '[ -n "$pid" ] && kill $pid 2>/dev/null; [ -n "$sampler" ] && kill $sampler 2>/dev/null; sleep 0.5; ip netns del "$ns"; rm -rf "$work"' EXIT

g() { git -C "$work/repo" -c user.name=b -c user.email=b@localhost "$@"; }
mkdir "$work/repo"; cp "$repo/tests/fixtures/pkgs/default.nix" "$work/repo/"
g init -q -b master; g add .; g commit -q -m base
g checkout -q -b pr; echo x > "$work/repo/X"; g add .; g commit -q -m pr
head=$(g rev-parse HEAD)

cat > "$work/airlock.toml" <<TOML
[network]
enabled = $([ "${NETWORK:-1}" = 1 ] && echo true || echo false)
[vm]
template = $([ "${TEMPLATE:-1}" = 1 ] && echo true || echo false)
kernel = "${KERNEL-auto}"
accel = "${ACCEL:-auto}"
image_dir = "${AIRLOCK_IMAGE_DIR:-/var/cache/airlock/guest/current}"
TOML
ip netns exec "$ns" "$bin/airlockd" --config "$work/airlock.toml" --state-dir "$work/state" --socket "$work/sock" > "$work/d.log" 2>&1 &
pid=$!
for _ in $(seq 600); do [ -S "$work/sock" ] && break; sleep 0.1; done
ctl() { "$bin/airlockctl" --socket "$work/sock" "$@"; }

# Peak memory per QEMU process: "pid rss_kib template_kib" (template_kib:
# resident in the template memfd's mapping and not copied on write).
python3 - "$work/mem.txt" <<'PY' &
import os, sys, time
out, peak = sys.argv[1], {}
while True:
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            if b"qemu-system" not in open(f"/proc/{p}/cmdline", "rb").read().split(b"\0")[0]:
                continue
            rss = tmpl = 0
            in_memfd = False
            for line in open(f"/proc/{p}/smaps"):
                f = line.split()
                if not f[0].endswith(":"):
                    in_memfd = "memfd:airlock-template" in line
                elif f[0] == "Rss:":
                    rss += int(f[1])
                    if in_memfd:
                        tmpl += int(f[1])
                elif f[0] == "Anonymous:" and in_memfd:
                    tmpl -= int(f[1])
        except (OSError, IndexError, ValueError):
            continue
        if rss > peak.get(p, (0, 0))[0]:
            peak[p] = (rss, tmpl)
    with open(out + ".tmp", "w") as f:
        for p, (rss, tmpl) in peak.items():
            f.write(f"{p} {rss} {tmpl}\n")
    os.replace(out + ".tmp", out)
    time.sleep(0.2)
PY
sampler=$!

for i in $(seq 0 "$N"); do
  id=$(ctl submit --repo "$work/repo" --head "$head" --attr chain)
  ctl --json wait "$id" > "$work/job-$i.json" || { cat "$work/d.log"; exit 1; }
done

kill "$sampler" 2>/dev/null || true; sampler=

nixopts=(--option sandbox true --option sandbox-paths /bin/sh=/bin/busybox --option substituters "")
for i in $(seq "$N"); do
  paths=$(cd "$work/repo" && nix-build --no-out-link "${nixopts[@]}" -A chain 2>/dev/null | xargs nix-store -qR)
  nix-store --delete $paths >/dev/null 2>&1 || true
  s=$(date +%s.%N)
  (cd "$work/repo" && nix-build --no-out-link "${nixopts[@]}" -A chain >/dev/null 2>&1)
  e=$(date +%s.%N)
  echo "$s $e" >> "$work/host.txt"
done

python3 - "$work" "$N" <<'PY'
import json, sys, statistics as st
work, n = sys.argv[1], int(sys.argv[2])
jobs = [json.load(open(f"{work}/job-{i}.json")) for i in range(1, n + 1)]
host = [float(e) - float(s) for s, e in (l.split() for l in open(f"{work}/host.txt"))]
def med(xs): return st.median(xs)
total = [dict(j["timings"])["verified"] for j in jobs]
steps = [name for name, _ in jobs[0]["timings"]]
print(f"accel: {jobs[0]['accel']}, runs: {n}, two-phase: {any(s.startswith('fetch:') for s in steps)}, status: {[j['result']['status'] for j in jobs]}")
print(f"| metric | median | min | max |\n|---|---|---|---|")
print(f"| job via airlockd (s) | {med(total):.2f} | {min(total):.2f} | {max(total):.2f} |")
print(f"| plain nix-build on host (s) | {med(host):.3f} | {min(host):.3f} | {max(host):.3f} |")
print(f"| ratio airlockd / host | {med(total)/med(host):.0f}x | | |")
boot = [j["boot_secs"] for j in jobs]
print(f"| VM start -> agent running, first VM (s) | {med(boot):.2f} | {min(boot):.2f} | {max(boot):.2f} |")
def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]
print("\nVM start -> agent running, per VM (s):\n")
print("| phase | p50 | p95 | max | VMs |\n|---|---|---|---|---|")
for prefix in ["fetch:", "build:", ""]:
    ready = []
    for j in jobs:
        t = dict(j["timings"])
        if f"{prefix}vm_start" in t and f"{prefix}agent_started" in t:
            ready.append(t[f"{prefix}agent_started"] - t[f"{prefix}vm_start"])
    if ready:
        print(f"| {prefix.rstrip(':') or 'all'} | {pct(ready, 50):.2f} | {pct(ready, 95):.2f} | {max(ready):.2f} | {len(ready)} |")
mem = [tuple(int(x) for x in l.split()[1:]) for l in open(f"{work}/mem.txt")] if __import__("os").path.exists(f"{work}/mem.txt") else []
if mem:
    own = [(r - t) / 1024 for r, t in mem]
    tmpl = [t / 1024 for _, t in mem]
    print(f"\nmemory per VM (peak, MiB; {len(mem)} QEMU processes, the template builds included):\n")
    print("| | p50 | max |\n|---|---|---|")
    print(f"| resident set | {pct([r / 1024 for r, _ in mem], 50):.0f} | {max(r / 1024 for r, _ in mem):.0f} |")
    print(f"| own (resident minus unwritten template pages) | {pct(own, 50):.0f} | {max(own):.0f} |")
    print(f"| template pages mapped, shared by all VMs of a template (count once) | {pct(tmpl, 50):.0f} | {max(tmpl):.0f} |")
import glob, re
guest = [tuple(int(x) for x in m) for f in glob.glob(f"{work}/state/jobs/*/console.log")
         for m in re.findall(r"restored: disks bound in (\d+) ms, mounted in (\d+) ms", open(f, errors="replace").read())]
if guest:
    print(f"\nin the restored guest (ms, {len(guest)} VMs' consoles): disks bound p50 {pct([b for b, _ in guest], 50)}, mounted p50 {pct([m for _, m in guest], 50)}")
# The agent prints how long each child process took ("airlock-agent: CMD
# took N ms"): which Nix processes a job starts and what each costs.
took = {}
for f in glob.glob(f"{work}/state/jobs/*/console.log"):
    for cmd, ms in re.findall(r"airlock-agent: (.+?) took (\d+) ms", open(f, errors="replace").read()):
        took.setdefault(cmd, []).append(int(ms))
if took:
    consoles = len(glob.glob(f"{work}/state/jobs/*/console.log"))
    print(f"\nchild processes in the guest ({consoles} jobs' consoles; ms):\n")
    print("| command | runs per job | p50 | max |\n|---|---|---|---|")
    for cmd, ms in sorted(took.items(), key=lambda kv: -sum(kv[1])):
        print(f"| `{cmd}` | {len(ms) / consoles:.1f} | {pct(ms, 50)} | {max(ms)} |")
print("\nwhere the time goes (median seconds per step, from the job's timings):\n")
print("| step | ends at | takes |\n|---|---|---|")
prev = 0.0
for s in steps:
    at = med([dict(j["timings"])[s] for j in jobs])
    print(f"| {s} | {at:.2f} | {at - prev:.2f} |")
    prev = at
PY
