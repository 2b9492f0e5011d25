//! airlockd under a real systemd (PID 1 of a Debian guest booted with QEMU
//! TCG, `common::systemd_guest`), as a `Type=notify` service with its
//! journal on stderr and `supervision.mode = "systemd"`.
//!
//! What runs for real: systemd, its D-Bus system bus, journald, cgroup v2,
//! airlockd and airlockctl, git and mkfs for the job's checkout and disks.
//! What does not: the job's VM. A VM nested in this TCG guest would take
//! many minutes to boot, so `vm.qemu` is `fake-qemu`, a script that takes
//! QEMU's arguments, writes console lines and the agent's first event to
//! the files QEMU would, then idles like a VM that builds. Everything
//! airlockd does around it is the production path: the transient unit
//! `airlock-job-<id>.service` with its limits, the VMM moved into it,
//! console lines to the journal under that unit, `systemctl stop` as a
//! cancel, and start-up recovery after `kill -9`; then, with
//! `supervision.mode = "direct"` in a delegated cgroup, a cgroup per job
//! with the same limits.

use airlock_e2e as common;

use std::path::Path;
use std::time::Duration;

use common::*;

const FAKE_QEMU: &str = r#"#!/bin/bash
# Stands in for qemu-system-x86_64: writes what a booting guest would to
# the console file and the agent channel file QEMU was given, then idles.
console= channel=
while [ $# -gt 0 ]; do
  case "$1" in
    -serial) console=${2#file:}; shift ;;
    -chardev) case "$2" in *id=agentch*) channel=${2##*path=} ;; esac; shift ;;
  esac
  shift
done
# Once in the job's unit (or cgroup): which devices may it open?
for _ in $(seq 1 100); do grep -q airlock-job- /proc/self/cgroup && break; sleep 0.1; done
{ if : < /dev/kmsg 2>/dev/null; then echo "fake-qemu device kmsg: opened"; else echo "fake-qemu device kmsg: denied"; fi
  if : < /dev/null 2>/dev/null; then echo "fake-qemu device null: opened"; else echo "fake-qemu device null: denied"; fi
} >> "$console"
for i in $(seq 1 300); do echo "fake guest console line $i"; done >> "$console"
echo 'E {"agent_started":{"version":1}}' >> "$channel"
echo 'L fake build log line' >> "$channel"
while :; do sleep 1; done
"#;

/// Runs inside the guest. Leaves what it saw in /airlock-test/out/ for the
/// host to check; fails fast (and says where) when something never happens.
const RUN: &str = r#"#!/bin/bash
set -u
T=/airlock-test
O=$T/out
mkdir -p $O /etc/airlock /run/airlock
export PATH=$T/bin:$PATH
say() { echo "RUN: $*"; }
fail() { echo "RUN FAILED: $*"; journalctl -u airlockd -u airlockd-direct --no-pager | tail -50; exit 1; }
until_() { # until_ SECS DESC CMD...
  local secs=$1 desc=$2; shift 2
  for _ in $(seq 1 $((secs * 2))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.5; done
  fail "$desc within ${secs}s"
}
cat > /etc/airlock/airlock.toml <<EOF
state_dir = "/var/lib/airlock"
socket = "/run/airlock/airlockd.sock"
max_jobs = 2
[vm]
qemu = "$T/fake-qemu"
# The stand-in VMM cannot be saved or restored: every VM boots (cold).
template = false
accel = "tcg"
image_dir = "$T/image"
agent = "$T/image/airlock-agent"
memory_mib = 256
nix_disk_mib = 64
export_disk_mib = 16
[network]
enabled = false
[limits]
boot_timeout_secs = 120
[supervision]
mode = "systemd"
memory_overhead_mib = 256
tasks_max = 64
journal_lines_per_sec = 5
EOF
cat > /etc/systemd/system/airlockd.service <<EOF
[Unit]
Description=airlock test daemon
[Service]
Type=notify
ExecStart=$T/bin/airlockd --config /etc/airlock/airlock.toml
EOF
systemctl daemon-reload
say "starting airlockd"
systemctl start airlockd || fail "airlockd did not start"
systemctl is-active airlockd > $O/airlockd-active.txt
ctl() { airlockctl --socket /run/airlock/airlockd.sock "$@"; }
submit() { ctl submit --repo $T/repo --head "$(cat $T/head)" --pr 42 --attr hello; }
unit_running() { # the job's unit is active and holds the fake VMM
  [ "$(systemctl is-active airlock-job-$1.service)" = active ] &&
    systemctl show -p ControlGroup --value airlock-job-$1.service | grep -q . &&
    pgrep -f "fake-qemu.*$1" >/dev/null
}
unit_gone() { ! systemctl is-active --quiet airlock-job-$1.service; }

# 1. one job: its unit, its limits, its journal, systemctl stop
A=$(submit) || fail "submit"
echo "$A" > $O/a.txt
say "job A $A"
until_ 300 "job A's unit with its VM" unit_running "$A"
sleep 3
systemctl status --no-pager --lines=0 airlock-job-$A > $O/status-a.txt 2>&1
systemctl show -p Description -p MemoryMax -p CPUQuotaPerSecUSec -p TasksMax -p Slice -p ControlGroup -p DevicePolicy -p DeviceAllow airlock-job-$A > $O/show-a.txt
cg=/sys/fs/cgroup$(systemctl show -p ControlGroup --value airlock-job-$A)
{ echo "memory.max $(cat $cg/memory.max)"; echo "pids.max $(cat $cg/pids.max)"; echo "cpu.max $(cat $cg/cpu.max)";
  echo "procs $(cat $cg/cgroup.procs | xargs)"; } > $O/cgroup-a.txt
for p in $(cat $cg/cgroup.procs); do tr '\0' ' ' < /proc/$p/cmdline; echo; done > $O/procs-a.txt
say "stopping job A's unit"
systemctl stop airlock-job-$A
ctl --json wait $A --timeout 120 > $O/job-a.json
until_ 30 "job A's unit to go" unit_gone "$A"
sleep 1
journalctl --no-pager -u airlock-job-$A -o json > $O/journal-unit-a.json
journalctl --no-pager JOB_ID=$A -o json > $O/journal-job-a.json
journalctl --no-pager -u airlockd -o cat > $O/airlockd-log-1.txt

# 2. kill -9 with two jobs running, then start again
B=$(submit) || fail "submit B"
C=$(submit) || fail "submit C"
echo "$B $C" > $O/bc.txt
until_ 300 "job B's unit with its VM" unit_running "$B"
until_ 300 "job C's unit with its VM" unit_running "$C"
say "kill -9 airlockd with B and C running"
kill -9 "$(systemctl show -p MainPID --value airlockd)"
sleep 2
systemctl list-units --all --no-legend 'airlock-job-*' > $O/units-after-kill.txt
systemctl reset-failed airlockd 2>/dev/null
systemctl start airlockd || fail "airlockd did not start again"
ctl jobs > $O/jobs-after-restart.txt
systemctl list-units --all --no-legend "airlock-job-$B.service" "airlock-job-$C.service" > $O/units-after-restart.txt
ps -eo args > $O/ps-after-restart.txt
ls /var/lib/airlock/jobs/$B /var/lib/airlock/jobs/$C > $O/files-after-restart.txt 2>&1
journalctl --no-pager -u airlockd -o cat > $O/airlockd-log-2.txt

# 3. direct supervision (no job units): a delegated cgroup, a child group
#    per job with the same limits
systemctl stop airlockd
sed -e 's|^state_dir = .*|state_dir = "/var/lib/airlock/direct"|' \
    -e 's|^socket = .*|socket = "/run/airlock/direct.sock"|' \
    -e 's|^mode = "systemd"|mode = "direct"|' /etc/airlock/airlock.toml > /etc/airlock/direct.toml
systemd-run --unit=airlockd-direct -p Delegate=yes -p Type=notify \
  $T/bin/airlockd --config /etc/airlock/direct.toml || fail "direct airlockd did not start"
base=/sys/fs/cgroup/system.slice/airlockd-direct.service
D=$(airlockctl --socket /run/airlock/direct.sock submit --repo $T/repo --head "$(cat $T/head)" --pr 43 --attr hello) || fail "submit D"
echo "$D" > $O/d.txt
in_group() { grep -q . $base/airlock-job-$1/cgroup.procs && pgrep -f "fake-qemu.*$1" >/dev/null; }
until_ 300 "job D's cgroup with its VM" in_group "$D"
g=$base/airlock-job-$D
{ echo "memory.max $(cat $g/memory.max)"; echo "pids.max $(cat $g/pids.max)"; echo "cpu.max $(cat $g/cpu.max)"; } > $O/cgroup-d.txt
for p in $(cat $g/cgroup.procs); do tr '\0' ' ' < /proc/$p/cmdline; echo; done > $O/procs-d.txt
airlockctl --socket /run/airlock/direct.sock cancel "$D" > $O/cancel-d.txt
airlockctl --socket /run/airlock/direct.sock --json wait "$D" --timeout 120 > $O/job-d.json
until_ 30 "job D's cgroup to go" test ! -d $g
journalctl --no-pager -u airlockd-direct -o cat > $O/airlockd-direct-log.txt
say "done"
"#;

fn read(dir: &Path, f: &str) -> String {
    std::fs::read_to_string(dir.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"))
}

fn journal(dir: &Path, f: &str) -> Vec<serde_json::Value> {
    read(dir, f)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[test]
fn job_units_limits_journal_stop_and_kill9_recovery_under_real_systemd() {
    let test = "job_units_limits_journal_stop_and_kill9_recovery_under_real_systemd";
    let mut missing = systemd_guest::missing();
    for b in ["airlockd", "airlockctl"] {
        if !bin(b).exists() {
            missing.push(format!("{} (cargo build --workspace)", bin(b).display()));
        }
    }
    if !have("git") {
        missing.push("git".into());
    }
    if !ready_or_skip(test, &missing) {
        return;
    }
    let share = tempfile::tempdir().unwrap();
    let s = share.path();
    std::fs::create_dir_all(s.join("bin")).unwrap();
    std::fs::create_dir_all(s.join("image")).unwrap();
    for b in ["airlockd", "airlockctl"] {
        std::fs::copy(bin(b), s.join("bin").join(b)).unwrap();
    }
    for f in ["vmlinux", "initrd.gz", "rootfs.img", "airlock-agent"] {
        std::fs::write(s.join("image").join(f), b"not a real guest\n").unwrap();
    }
    let exe = |p: &Path, text: &str| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(p, text).unwrap();
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    };
    exe(&s.join("fake-qemu"), FAKE_QEMU);
    exe(&s.join("run"), RUN);
    let (_repo, head) = fixture_repo(s, &[]);
    std::fs::write(s.join("head"), &head).unwrap();

    let run = systemd_guest::run(s, Duration::from_secs(1500));
    eprintln!(
        "systemd guest ran {:.0}s, exit {:?}\n--- out.log ---\n{}",
        run.secs, run.exit_code, run.out
    );
    assert_eq!(
        run.exit_code,
        Some(0),
        "console:\n{}",
        run.console
            .lines()
            .rev()
            .take(60)
            .collect::<Vec<_>>()
            .join("\n")
    );
    let o = s.join("out");
    let a = read(&o, "a.txt").trim().to_owned();
    let unit = format!("airlock-job-{a}.service");

    // airlockd said which mode it runs in, and runs as a notify service.
    assert_eq!(read(&o, "airlockd-active.txt").trim(), "active");
    let log1 = read(&o, "airlockd-log-1.txt");
    assert!(
        log1.contains("each job runs in its own transient unit"),
        "{log1}"
    );

    // The job's unit: its description, limits (as systemd and the kernel
    // see them) and the VMM process inside it.
    let show = read(&o, "show-a.txt");
    assert!(
        show.contains(&format!(
            "Description=airlock job {a}: local/repo PR #42 at {}",
            &head[..12]
        )),
        "{show}"
    );
    assert!(
        show.contains("MemoryMax=536870912"),
        "256 + 256 MiB:\n{show}"
    );
    assert!(show.contains("TasksMax=64"), "{show}");
    assert!(show.contains("CPUQuotaPerSecUSec=2s"), "{show}");
    assert!(show.contains("Slice=airlock.slice"), "{show}");
    // Its devices: the VMM's three, nothing else (issue 27, item 11).
    assert!(show.contains("DevicePolicy=closed"), "{show}");
    assert!(
        show.contains("DeviceAllow=/dev/kvm rw")
            && show.contains("/dev/net/tun rw")
            && show.contains("/dev/vhost-net rw"),
        "{show}"
    );
    let cg = read(&o, "cgroup-a.txt");
    assert!(cg.contains("memory.max 536870912"), "{cg}");
    assert!(cg.contains("pids.max 64"), "{cg}");
    assert!(cg.contains("cpu.max 200000 100000"), "{cg}");
    let procs = read(&o, "procs-a.txt");
    assert!(
        procs
            .lines()
            .any(|l| l.contains("fake-qemu") && l.contains(&format!("airlock-{a}-all"))),
        "the VMM is not in the job's unit:\n{procs}"
    );
    let status = read(&o, "status-a.txt");
    assert!(
        status.contains(&unit) && status.contains("fake-qemu"),
        "{status}"
    );

    // systemctl stop cancelled the job.
    let job: serde_json::Value = serde_json::from_str(&read(&o, "job-a.json")).unwrap();
    assert_eq!(
        job["result"]["status"]["UnexpectedError"]["err"], "cancelled by an administrator",
        "{job:#}"
    );
    assert!(log1.contains("the job's unit was stopped (systemctl stop): job cancelled"));

    // journald: airlockd's entries about the job carry its fields, and the
    // guest's console and build log lines are under the job's unit,
    // rate-limited (5 lines/s, bursts of 50) with the rest counted.
    let by_job = journal(&o, "journal-job-a.json");
    let started = by_job
        .iter()
        .find(|e| {
            e["MESSAGE"]
                .as_str()
                .is_some_and(|m| m.starts_with("starting VM"))
        })
        .unwrap_or_else(|| panic!("no 'starting VM' entry: {by_job:#?}"));
    assert_eq!(started["PR"], "42");
    assert_eq!(started["COMMIT"], head.as_str());
    assert_eq!(started["REPO"], "local/repo");
    assert_eq!(started["_SYSTEMD_UNIT"], "airlockd.service");
    assert_eq!(started["OBJECT_SYSTEMD_UNIT"], unit.as_str());
    let by_unit = journal(&o, "journal-unit-a.json");
    let console: Vec<_> = by_unit
        .iter()
        .filter(|e| e["AIRLOCK_SOURCE"] == "console")
        .collect();
    assert!(
        console
            .iter()
            .any(|e| e["MESSAGE"] == "fake guest console line 1"),
        "{by_unit:#?}"
    );
    for (dev, want) in [("kmsg", "denied"), ("null", "opened")] {
        let line = format!("fake-qemu device {dev}: {want}");
        assert!(
            console.iter().any(|e| e["MESSAGE"] == line.as_str()),
            "no {line:?} in the job unit's journal: {by_unit:#?}"
        );
    }
    assert!(
        (30..=62).contains(&console.len()),
        "the rate limit let {} of 300 console lines through",
        console.len()
    );
    assert!(
        by_unit.iter().any(|e| e["MESSAGE"]
            .as_str()
            .is_some_and(|m| m.contains("guest console lines not sent to the journal"))),
        "the held-back lines are not counted"
    );
    assert!(
        by_unit
            .iter()
            .any(|e| e["AIRLOCK_SOURCE"] == "build" && e["MESSAGE"] == "fake build log line"),
        "{by_unit:#?}"
    );
    assert!(
        by_unit.iter().any(|e| e["_SYSTEMD_UNIT"] == unit.as_str()),
        "the unit's own ExecStart line"
    );

    // kill -9 with two jobs running, then start: the stale units were
    // stopped, no VMM is left, the jobs' disks are gone, and both jobs are
    // shown interrupted.
    let bc = read(&o, "bc.txt");
    let ids: Vec<&str> = bc.split_whitespace().collect();
    let units = read(&o, "units-after-restart.txt");
    assert!(units.trim().is_empty(), "stale job units: {units}");
    let log2 = read(&o, "airlockd-log-2.txt");
    assert!(
        log2.contains("stopping job unit left by a previous run"),
        "{log2}"
    );
    let ps = read(&o, "ps-after-restart.txt");
    let table = read(&o, "jobs-after-restart.txt");
    let files = read(&o, "files-after-restart.txt");
    for id in ids {
        assert!(
            !ps.lines()
                .any(|l| l.contains("fake-qemu") && l.contains(&format!("airlock-{id}-"))),
            "the VMM of {id} survived:\n{ps}"
        );
        assert!(
            table
                .lines()
                .any(|l| l.starts_with(id) && l.contains("interrupted")),
            "{id} not interrupted:\n{table}"
        );
        for f in ["nix.img", "export.img", "input.img"] {
            assert!(!files.contains(f), "{f} of {id} left:\n{files}");
        }
    }

    // Direct supervision in a delegated cgroup: the job's group has the
    // same limits and holds the VMM; a cancel removes it.
    let d = read(&o, "d.txt").trim().to_owned();
    let dlog = read(&o, "airlockd-direct-log.txt");
    assert!(
        dlog.contains("each job in cgroup v2 group airlock-job-<id> with its limits"),
        "{dlog}"
    );
    let cg = read(&o, "cgroup-d.txt");
    assert!(cg.contains("memory.max 536870912"), "{cg}");
    assert!(cg.contains("pids.max 64"), "{cg}");
    assert!(cg.contains("cpu.max 2000000 1000000"), "{cg}");
    let procs = read(&o, "procs-d.txt");
    assert!(
        procs
            .lines()
            .any(|l| l.contains("fake-qemu") && l.contains(&format!("airlock-{d}-all"))),
        "{procs}"
    );
    let job: serde_json::Value = serde_json::from_str(&read(&o, "job-d.json")).unwrap();
    assert_eq!(
        job["result"]["status"]["UnexpectedError"]["err"], "cancelled by an administrator",
        "{job:#}"
    );
}
