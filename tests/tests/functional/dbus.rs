//! The D-Bus admin API against a real `dbus-daemon` (started here, with a
//! system-bus-like default policy and airlock's own shipped policy file
//! included unchanged), called with the real `busctl`: introspection,
//! listing, showing, cancelling a running and a queued job, drain and
//! resume, the JobChanged signal (read with `dbus-monitor`), and a caller
//! the policy does not allow (`nobody`) refused.

use airlock_e2e as common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const DEST: &str = "org.airlock.Airlock1";
const PATH: &str = "/org/airlock/Airlock1";

struct Bus {
    child: Child,
    address: String,
}

impl Drop for Bus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn policy_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../daemon/dbus/org.airlock.Airlock1.conf")
}

/// A private bus with the defaults of a system bus: anyone may connect and
/// receive replies; nobody owns names or calls methods unless a policy says so.
fn start_bus(dir: &Path) -> Bus {
    start_bus_with(dir, &policy_file())
}

/// The same bus with another policy file included.
fn start_bus_with(dir: &Path, policy_path: &Path) -> Bus {
    let sock = dir.join("bus");
    let conf = dir.join("bus.conf");
    std::fs::write(
        &conf,
        format!(
            r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <listen>unix:path={sock}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Monitoring"/>
  </policy>
  <include>{policy}</include>
</busconfig>
"#,
            sock = sock.display(),
            policy = policy_path.display()
        ),
    )
    .unwrap();
    let child = Command::new("dbus-daemon")
        .arg(format!("--config-file={}", conf.display()))
        .arg("--nofork")
        .arg("--nopidfile")
        .stdout(Stdio::null())
        .spawn()
        .expect("dbus-daemon");
    let t0 = Instant::now();
    while !sock.exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "dbus-daemon did not listen"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Bus {
        child,
        address: format!("unix:path={}", sock.display()),
    }
}

/// `busctl` on the bus, as root or (with `as_nobody`) as uid 65534.
fn busctl(bus: &Bus, as_nobody: bool, args: &[&str]) -> std::process::Output {
    let mut c = if as_nobody {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "busctl"]);
        c
    } else {
        Command::new("busctl")
    };
    c.arg(format!("--address={}", bus.address))
        .args(args)
        .output()
        .expect("busctl")
}

fn call(bus: &Bus, method: &str, args: &[&str]) -> String {
    let mut a = vec!["--json=short", "call", DEST, PATH, DEST, method];
    a.extend_from_slice(args);
    let out = busctl(bus, false, &a);
    assert!(
        out.status.success(),
        "busctl call {method}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // {"type":"s","data":["…"]}; nothing for a method without a reply value.
    if out.stdout.is_empty() {
        return String::new();
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "busctl call {method}: {e}: {:?} {:?}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    v["data"][0]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| v["data"].to_string())
}

fn state_of(bus: &Bus, id: &str) -> serde_json::Value {
    serde_json::from_str(&call(bus, "ShowJob", &["s", id])).unwrap()
}

#[test]
fn dbus_admin_api_lists_shows_cancels_and_refuses_strangers() {
    if !prerequisites("dbus_admin_api_lists_shows_cancels_and_refuses_strangers") {
        return;
    }
    let missing: Vec<String> = [
        "dbus-daemon",
        "busctl",
        "setpriv",
        "dbus-monitor",
        "dbus-send",
    ]
    .into_iter()
    .filter(|c| !have(c))
    .map(String::from)
    .collect();
    if !ready_or_skip(
        "dbus_admin_api_lists_shows_cancels_and_refuses_strangers",
        &missing,
    ) {
        return;
    }
    let bd = tempfile::tempdir().unwrap();
    std::fs::set_permissions(bd.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bus = start_bus(bd.path());
    let mut monitor = Command::new("dbus-monitor")
        .arg("--address")
        .arg(&bus.address)
        .arg(format!("type='signal',interface='{DEST}'"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let d = Daemon::builder()
        .with(|c| c.dbus.address = bus.address.clone())
        .start();
    // Introspection shows the interface, also to a stranger.
    let intro = busctl(&bus, true, &["introspect", DEST, PATH]);
    let text = String::from_utf8_lossy(&intro.stdout);
    for m in [
        "ListJobs",
        "ShowJob",
        "CancelJob",
        "Drain",
        "Resume",
        "ReleaseStatus",
        "JobChanged",
        "Draining",
        "RunningJobs",
    ] {
        assert!(
            text.contains(m),
            "{m} missing from:\n{text}\n{}",
            String::from_utf8_lossy(&intro.stderr)
        );
    }
    // A stranger cannot call it.
    let denied = busctl(&bus, true, &["call", DEST, PATH, DEST, "ListJobs"]);
    assert!(!denied.status.success());
    let why = String::from_utf8_lossy(&denied.stderr);
    assert!(
        why.to_lowercase().contains("access denied") || why.contains("AccessDenied"),
        "{why}"
    );

    let (repo, head) = fixture_repo(d.dir.path(), &[]);
    let running = d.submit(&repo, &head, &["forever"]);
    let queued = d.submit(&repo, &head, &["leaf"]);
    let jobs: serde_json::Value = serde_json::from_str(&call(&bus, "ListJobs", &[])).unwrap();
    let ids: Vec<&str> = jobs
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&running.as_str()) && ids.contains(&queued.as_str()),
        "{jobs}"
    );
    // Wait for the first job's VM (max_jobs = 1: the second stays queued).
    let t0 = Instant::now();
    while state_of(&bus, &running)["state"] != "running" {
        assert!(t0.elapsed() < Duration::from_secs(300), "{}", d.log());
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(state_of(&bus, &queued)["state"], "queued");
    // The queued one is cancelled at once, without running anything.
    assert_eq!(call(&bus, "CancelJob", &["s", &queued]), "cancelled");
    let q = state_of(&bus, &queued);
    assert_eq!(q["state"], "done", "{q}");
    assert_eq!(
        q["result"]["status"]["UnexpectedError"]["err"],
        "cancelled by an administrator"
    );
    assert!(q["started_at"].is_null(), "it never started: {q}");
    // The running one has its VM stopped.
    assert!(call(&bus, "CancelJob", &["s", &running]).starts_with("cancelling"));
    let rec = d.wait(&running, 120);
    assert_eq!(
        rec["result"]["status"]["UnexpectedError"]["err"], "cancelled by an administrator",
        "{rec:#}"
    );
    assert!(!d
        .state()
        .join("jobs")
        .join(&running)
        .join("nix.img")
        .exists());
    assert!(no_vm_for(&running), "the VM outlived the cancel");
    let err = busctl(
        &bus,
        false,
        &["call", DEST, PATH, DEST, "CancelJob", "s", &running],
    );
    assert!(!err.status.success(), "a done job cannot be cancelled");
    // A refusal and the caller's mistake are told apart by the error name.
    let error_name = |id: &str| {
        let out = std::process::Command::new("dbus-send")
            .args([
                &format!("--bus={}", bus.address),
                "--print-reply",
                &format!("--dest={DEST}"),
                PATH,
                &format!("{DEST}.CancelJob"),
                &format!("string:{id}"),
            ])
            .output()
            .expect("dbus-send");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    assert!(
        error_name(&running).contains("org.freedesktop.DBus.Error.Failed"),
        "{}",
        error_name(&running)
    );
    let unknown = "0b6f6a1e-6f1d-4d0c-9a55-2f1f5f8f2a10";
    assert!(
        error_name(unknown).contains("org.freedesktop.DBus.Error.InvalidArgs"),
        "{}",
        error_name(unknown)
    );
    // Drain and resume, seen through the property.
    let draining = |b: &Bus| {
        let out = busctl(b, false, &["get-property", DEST, PATH, DEST, "Draining"]);
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert_eq!(draining(&bus), "b false");
    call(&bus, "Drain", &[]);
    assert_eq!(draining(&bus), "b true");
    call(&bus, "Resume", &[]);
    assert_eq!(draining(&bus), "b false");
    // airlockctl over the bus: the same methods, the same answers.
    let out = d.ctl(&["--bus", &bus.address, "--json", "show", &running]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let via_bus: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(via_bus["id"], running.as_str());
    let table = d.ctl(&["--bus", &bus.address, "jobs"]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains(&queued) && table.contains(&running),
        "{table}"
    );
    let bad = d.ctl(&["--bus", &bus.address, "cancel", &running]);
    assert!(!bad.status.success(), "a done job cannot be cancelled");
    assert!(
        String::from_utf8_lossy(&bad.stderr).starts_with("Error: airlockd:"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    // Job changes were signalled.
    std::thread::sleep(Duration::from_millis(500));
    let _ = monitor.kill();
    let out = monitor.wait_with_output().unwrap();
    let signals = String::from_utf8_lossy(&out.stdout);
    assert!(signals.contains("member=JobChanged"), "{signals}");
    // A job entering the queue is a change too (issue 27, item 17): a job
    // a drain holds is visible to signal watchers.
    let lines: Vec<&str> = signals.lines().map(str::trim).collect();
    assert!(
        lines
            .windows(2)
            .any(|w| w[0] == format!("string \"{queued}\"") && w[1] == "string \"queued\""),
        "no JobChanged({queued}, queued) in:\n{signals}"
    );
    assert!(
        signals.contains(&format!("string \"{running}\"")) && signals.contains("string \"done\""),
        "{signals}"
    );
}

/// Group airlock-admin reads and operates but neither signs (`Release`) nor
/// deletes (`Gc`) (issue 27, item 13): on the bus through the shipped
/// policy, and on the peer-to-peer socket, which has no bus policy, through
/// airlockd's own check of the peer's uid. The policy's airlock-admin rules
/// are tried as they are, given to user `nobody` (uid 65534) instead of the
/// group, which this machine does not have.
#[test]
fn the_admin_group_may_operate_but_not_release_or_gc() {
    let name = "the_admin_group_may_operate_but_not_release_or_gc";
    if !prerequisites(name) {
        return;
    }
    let missing: Vec<String> = ["dbus-daemon", "busctl", "setpriv"]
        .into_iter()
        .filter(|c| !have(c))
        .map(String::from)
        .collect();
    if !ready_or_skip(name, &missing) {
        return;
    }
    let policy = std::fs::read_to_string(policy_file()).unwrap();
    assert_eq!(
        policy.matches("<policy group=\"airlock-admin\">").count(),
        1
    );
    let bd = tempfile::tempdir().unwrap();
    std::fs::set_permissions(bd.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let as_user = bd.path().join("policy-as-nobody.conf");
    std::fs::write(
        &as_user,
        policy.replace(
            "<policy group=\"airlock-admin\">",
            "<policy user=\"nobody\">",
        ),
    )
    .unwrap();
    let bus = start_bus_with(bd.path(), &as_user);
    let d = Daemon::builder()
        .with(|c| c.dbus.address = bus.address.clone())
        .start();
    let admin = |args: &[&str]| {
        let mut a = vec!["call", DEST, PATH, DEST];
        a.extend_from_slice(args);
        busctl(&bus, true, &a)
    };
    for ok in [
        &["ListJobs"][..],
        &["ShowJob", "s", "none"][..],
        &["Drain"],
        &["Resume"],
    ] {
        let out = admin(ok);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !err.to_lowercase().contains("access denied") && !err.contains("AccessDenied"),
            "{ok:?} refused to the admin: {err}"
        );
    }
    for refused in [&["Release", "ss", "abc", "why"][..], &["Gc"][..]] {
        let out = admin(refused);
        assert!(!out.status.success(), "{refused:?} allowed to the admin");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.to_lowercase().contains("access denied") || err.contains("AccessDenied"),
            "{refused:?}: {err}"
        );
    }
    // The socket: root and its group only; a non-root peer that reaches it
    // (here: the test opens it up) may operate, not release or gc.
    let sock = d.socket();
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660, "{mode:o}");
    std::fs::set_permissions(d.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    let nobody = |args: &[&str]| {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(bin("airlockctl"))
            .arg("--socket")
            .arg(&sock)
            .args(args)
            .output()
            .unwrap()
    };
    let out = nobody(&["jobs"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for refused in [
        &["gc"][..],
        &[
            "release",
            "0123456789abcdef0123456789abcdef01234567",
            "--reason",
            "x",
        ][..],
    ] {
        let out = nobody(refused);
        assert!(
            !out.status.success(),
            "{refused:?} allowed to a non-root peer"
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("root's only"), "{refused:?}: {err}");
    }
    // Root is not refused by that check (this builder has no release
    // service, which is what it says instead).
    let out = d.ctl(&["gc"]);
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("root's only"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
