//! The systemd test guest (vm-images/systemd-guest/build.sh, booted by
//! common::systemd_guest) really runs systemd as PID 1, with the system
//! D-Bus, journald and cgroup v2 controllers that airlockd's own tests in
//! that guest rely on.

use airlock_e2e as common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::systemd_guest;

const RUN: &str = r#"#!/bin/sh
echo "pid1=$(cat /proc/1/comm)"
echo "state=$(systemctl is-system-running --wait)"
systemctl --failed --no-legend --no-pager
busctl --system list --no-pager | head
echo "controllers=$(cat /sys/fs/cgroup/cgroup.controllers)"
journalctl --version | head -1
echo "scratch=$(findmnt -n -o FSTYPE /var/lib/airlock)"
"#;

#[test]
fn systemd_guest_boots_with_systemd_as_pid1() {
    let test = "systemd_guest_boots_with_systemd_as_pid1";
    let missing = systemd_guest::missing();
    if !common::ready_or_skip(test, &missing) {
        return;
    }
    let share = tempfile::tempdir().unwrap();
    let run = share.path().join("run");
    std::fs::write(&run, RUN).unwrap();
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o755)).unwrap();

    let r = systemd_guest::run(share.path(), Duration::from_secs(300));
    eprintln!(
        "systemd guest: boot -> poweroff in {:.1} s (timed out: {})\n--- out.log:\n{}",
        r.secs, r.timed_out, r.out
    );
    let ctx = || format!("\n--- console:\n{}\n--- host:\n{}", r.console, r.host_log);
    assert!(!r.timed_out, "the guest did not power off{}", ctx());
    assert_eq!(r.exit_code, Some(0), "run script exit code{}", ctx());
    let line = |key: &str| {
        r.out
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} line in out.log{}", ctx()))
            .to_string()
    };
    assert_eq!(line("pid1="), "systemd", "PID 1{}", ctx());
    let controllers = line("controllers=");
    for c in ["memory", "pids", "cpu"] {
        assert!(
            controllers.split_whitespace().any(|x| x == c),
            "cgroup controller {c} missing: {controllers}{}",
            ctx()
        );
    }
    assert!(
        r.out.contains("org.freedesktop.systemd1"),
        "busctl{}",
        ctx()
    );
    assert!(r.out.contains("systemd "), "journalctl --version{}", ctx());
    assert_eq!(line("scratch="), "ext4", "scratch disk{}", ctx());
    // The unit echoes the script's output to the console too.
    assert!(r.console.contains("pid1=systemd"), "console{}", ctx());
}
