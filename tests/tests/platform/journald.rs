//! airlockd's log in a real journald: `systemd-journald` runs in a private
//! mount namespace of this test (a tmpfs over /run and /var/log/journal, so
//! the host's journal is never touched), airlockd logs to it natively, and
//! `journalctl -o json JOB_ID=…` reads one job's story back with its
//! fields.

use airlock_e2e as common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn journald() -> Option<&'static str> {
    [
        "/lib/systemd/systemd-journald",
        "/usr/lib/systemd/systemd-journald",
    ]
    .into_iter()
    .find(|p| std::path::Path::new(p).exists())
}

/// The entry's message starts with `m` (fields may follow it).
fn msg_is(e: &serde_json::Value, m: &str) -> bool {
    e["MESSAGE"].as_str().is_some_and(|x| x.starts_with(m))
}

#[test]
fn journald_entries_carry_the_jobs_fields() {
    let name = "journald_entries_carry_the_jobs_fields";
    if !common::prerequisites(name) {
        return;
    }
    let Some(jd) = journald() else {
        common::ready_or_skip(name, &["systemd-journald (package systemd)".into()]);
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().to_owned();
    let (id, entries) = std::thread::spawn(move || {
        use nix::mount::{mount, MsFlags};
        // This thread (and what it starts) gets its own /run and journal.
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).unwrap();
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .unwrap();
        for m in ["/run", "/var/log/journal"] {
            if std::path::Path::new(m).is_dir() {
                mount(
                    Some("tmpfs"),
                    m,
                    Some("tmpfs"),
                    MsFlags::empty(),
                    Some("mode=0755"),
                )
                .unwrap();
            }
        }
        std::fs::create_dir_all("/run/systemd/journal").unwrap();
        let mut jd = Command::new(jd)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let t0 = Instant::now();
        while !std::path::Path::new("/run/systemd/journal/socket").exists() {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "journald did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let config = common::standalone_config(&dir, "");
        let api = dir.join("api.sock");
        let mut d = Command::new(common::bin("airlockd"))
            .arg("--config")
            .arg(&config)
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--socket")
            .arg(&api)
            .env("AIRLOCK_JOURNALD", "1")
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let ctl = |args: &[&str]| {
            Command::new(common::bin("airlockctl"))
                .arg("--socket")
                .arg(&api)
                .args(args)
                .output()
                .unwrap()
        };
        let t0 = Instant::now();
        while !api.exists() {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "airlockd did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // Jobs whose repository does not exist: they end at the checkout,
        // logging inside their span (no VM needed).
        let submit = |pr: &str, attr: &str| {
            let out = ctl(&[
                "--json",
                "submit",
                "--repo",
                "/nonexistent/repo",
                "--head",
                "e9872fa30caac57c69bfac8667e6c21254603df1",
                "--pr",
                pr,
                "--attr",
                attr,
            ]);
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            v["id"].as_str().unwrap().to_owned()
        };
        let id = submit("4242", "leaf");
        ctl(&["wait", &id, "--timeout", "60"]);
        // A second job, held by a drain and cancelled while queued: its
        // "job queued", "cancel requested" and "cancelled before it
        // started" entries.
        assert!(ctl(&["drain"]).status.success());
        let held = submit("4243", "chain");
        assert!(ctl(&["cancel", &held]).status.success());
        ctl(&["wait", &held, "--timeout", "60"]);
        let read = |job: &str| {
            let out = Command::new("journalctl")
                .args(["-o", "json", "--no-pager", &format!("JOB_ID={job}")])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect::<Vec<serde_json::Value>>()
        };
        // journald writes asynchronously: wait (bounded) for the last entry.
        let t0 = Instant::now();
        let (mut entries, mut held_entries) = (read(&id), read(&held));
        while !(entries.iter().any(|e| {
            e["MESSAGE"]
                .as_str()
                .is_some_and(|m| m.starts_with("job finished"))
        }) && held_entries
            .iter()
            .any(|e| msg_is(e, "job cancelled before it started")))
        {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "{entries:#?}\n{held_entries:#?}"
            );
            std::thread::sleep(Duration::from_millis(100));
            (entries, held_entries) = (read(&id), read(&held));
        }
        let _ = d.kill();
        let _ = d.wait();
        let _ = jd.kill();
        let _ = jd.wait();
        (id, (entries, held_entries))
    })
    .join()
    .unwrap();
    let (entries, held_entries) = entries;
    // Every entry of a job carries all of its fields (issue 27, item 16:
    // "cancel requested" had only JOB_ID, "job queued" no REPO).
    for (e, pr, attr) in entries
        .iter()
        .map(|e| (e, "4242", "leaf"))
        .chain(held_entries.iter().map(|e| (e, "4243", "chain")))
    {
        assert_eq!(e["PR"], pr, "{e:#}");
        assert_eq!(e["ATTR"], attr, "{e:#}");
        assert_eq!(
            e["COMMIT"], "e9872fa30caac57c69bfac8667e6c21254603df1",
            "{e:#}"
        );
        assert_eq!(e["REPO"], entries[0]["REPO"], "{e:#}");
    }
    for m in [
        "job queued",
        "cancel requested",
        "job cancelled before it started",
    ] {
        assert!(
            held_entries.iter().any(|e| msg_is(e, m)),
            "no {m:?} among {held_entries:#?}"
        );
    }
    assert!(
        entries.iter().any(|e| msg_is(e, "job queued")),
        "{entries:#?}"
    );
    assert!(!entries.is_empty(), "no journal entry has JOB_ID={id}");
    let finished = entries
        .iter()
        .find(|e| {
            e["MESSAGE"]
                .as_str()
                .is_some_and(|m| m.starts_with("job finished"))
        })
        .unwrap_or_else(|| panic!("no 'job finished' entry: {entries:#?}"));
    assert_eq!(finished["JOB_ID"], id.as_str());
    assert_eq!(finished["PR"], "4242");
    assert_eq!(
        finished["COMMIT"],
        "e9872fa30caac57c69bfac8667e6c21254603df1"
    );
    assert_eq!(finished["ATTR"], "leaf");
    assert!(finished["REPO"].is_string(), "{finished:#}");
    assert_eq!(finished["SYSLOG_IDENTIFIER"], "airlockd");
    assert_eq!(finished["PRIORITY"], "6");
    // The checkout's warning is in the same story, as a warning.
    assert!(
        entries.iter().any(|e| e["PRIORITY"] == "4"),
        "no warning among {entries:#?}"
    );
}
