//! Chaos run: jobs through the real broker while airlockd is killed with
//! SIGKILL at random (seeded) moments and the broker restarts once. Every
//! request must get exactly one BuildResult, no job may be lost, and after
//! the last restart nothing of any job may be left: no VM, no TAP, no
//! nftables chain, no per-job disk or scratch directory.
//!
//! The seed is printed; replay a run with `AIRLOCK_CHAOS_SEED=<seed>`.
//! `AIRLOCK_CHAOS_JOBS` (default 20) and `AIRLOCK_CHAOS_KILLS` (default 5)
//! change its size.
//!
//! Everything (broker, airlockd, its job networks and nftables table) lives
//! in a network namespace of its own, entered by the test's own thread.

use airlock_e2e as common;

use std::collections::BTreeMap;
use std::process::Command;

use common::broker::{job_json, rt, settle, Broker, Probe};
use common::*;

const QUEUE: &str = "build-inputs-x86_64-linux";

/// splitmix64: a tiny, seedable generator (no dependency, same sequence
/// everywhere for a seed).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What a job asks for, by kind of outcome.
const MIXES: &[&[&str]] = &[
    &["leaf"],           // succeeds
    &["chain"],          // succeeds, three derivations
    &["failing"],        // fails to build
    &["broken"],         // does not evaluate
    &["leaf", "broken"], // one built, one skipped
    &["forever"],        // never ends: killed at the job timeout
];

fn enter_netns(name: &str) {
    let f = std::fs::File::open(format!("/var/run/netns/{name}")).expect("netns file");
    nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
}

#[test]
fn chaos_kill9_and_broker_restart_lose_nothing_and_report_once() {
    let test = "chaos_kill9_and_broker_restart_lose_nothing_and_report_once";
    if !prerequisites(test) {
        return;
    }
    if !Broker::available() && !ready_or_skip(test, &["rabbitmq-server".into()]) {
        return;
    }
    // A thread of its own: the network namespace is per thread, and the
    // test harness may run other tests on this one afterwards.
    let ns = new_netns("c");
    let ns2 = ns.clone();
    let r = std::thread::spawn(move || {
        enter_netns(&ns2);
        chaos(&ns2)
    })
    .join();
    del_netns(&ns);
    if let Err(e) = r {
        std::panic::resume_unwind(e);
    }
}

fn chaos(ns: &str) {
    let seed = std::env::var("AIRLOCK_CHAOS_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    let n_jobs = env_num("AIRLOCK_CHAOS_JOBS", 20) as usize;
    let n_kills = env_num("AIRLOCK_CHAOS_KILLS", 5) as usize;
    eprintln!(
        "chaos: seed {seed} (replay: AIRLOCK_CHAOS_SEED={seed}), {n_jobs} jobs, {n_kills} kills"
    );
    let mut rng = Rng(seed);

    let broker = Broker::start();
    let mut d = Daemon::builder()
        .netns(ns)
        .amqp(&broker.url(), "airlock-chaos")
        .with(|c| {
            c.max_jobs = 2;
            c.limits.job_timeout_secs = 30;
            c.amqp.reconnect_max_secs = 1;
        })
        .start();
    let (repo, head) = fixture_repo(d.dir.path(), &[]);
    let reqs: Vec<(String, &[&str])> = (0..n_jobs)
        .map(|i| {
            // The first jobs cover every kind; the rest are drawn, with few
            // never-ending ones (each costs a full job timeout).
            let mix = if i < MIXES.len() {
                MIXES[i]
            } else {
                MIXES[rng.below(MIXES.len() as u64 - 1) as usize]
            };
            (uuid::Uuid::new_v4().to_string(), mix)
        })
        .collect();
    // When, counted in kills, the broker restarts.
    let broker_restart_at = rng.below(n_kills as u64) as usize;

    rt().block_on(async {
        let mut p = Probe::setup(&broker.url()).await;
        assert!(
            p.wait_for_queue(QUEUE, 60).await,
            "airlockd never declared {QUEUE}:\n{}",
            d.log()
        );
        for (req, attrs) in &reqs {
            p.publish("", QUEUE, &job_json(&repo, &head, attrs, req))
                .await;
        }
        let all_reported = |p: &Probe| reqs.iter().all(|(r, _)| !p.results_for(r).is_empty());
        for kill in 0..n_kills {
            // A random moment: 2 to 20 s into this life of airlockd.
            let wait = 2 + rng.below(19);
            p.until(wait, |_| false).await;
            if kill == broker_restart_at {
                eprintln!("chaos: broker restart");
                broker.stop();
                broker.boot();
                p.until(1 + rng.below(5), |_| false).await;
            }
            eprintln!(
                "chaos: kill -9 #{} after {wait} s ({} of {} reported)",
                kill + 1,
                reqs.iter()
                    .filter(|(r, _)| !p.results_for(r).is_empty())
                    .count(),
                reqs.len()
            );
            d.kill9();
            d.spawn();
        }
        assert!(
            p.until(2400, all_reported).await,
            "not every job was reported (seed {seed}):\n{}",
            d.log()
        );
        settle(&mut p, &broker, &d, 300, &format!("chaos (seed {seed})")).await;
        let mut counts = BTreeMap::new();
        for (req, attrs) in &reqs {
            let rs = p.results_for(req);
            assert_eq!(
                rs.len(),
                1,
                "request {req} ({attrs:?}) got {} results (seed {seed}): {rs:#?}",
                rs.len()
            );
            *counts
                .entry(format!("{}", rs[0]["status"]))
                .or_insert(0usize) += 1;
            // Its attempt's log has exactly one start.
            let attempt = rs[0]["attempt_id"].as_str().unwrap();
            let starts = p.starts_for_attempt(attempt);
            assert!(
                starts <= 1,
                "request {req}: {starts} BuildLogStart messages (seed {seed})"
            );
        }
        eprintln!("chaos: results by status: {counts:?}");
    });

    // Nothing of any job is left after the last restart.
    let state = d.state();
    let ps = Command::new("ps").args(["-eo", "args"]).output().unwrap();
    let ps = String::from_utf8_lossy(&ps.stdout);
    assert!(
        !ps.lines()
            .any(|l| l.contains("qemu") && l.contains(&*state.to_string_lossy())),
        "a VM of this daemon is still running (seed {seed})"
    );
    let links = Command::new("ip").args(["-o", "link"]).output().unwrap();
    let links = String::from_utf8_lossy(&links.stdout);
    assert!(
        !links.lines().any(|l| l.contains(": alk")),
        "a job TAP is left (seed {seed}):\n{links}"
    );
    let nft = Command::new("nft")
        .args(["list", "table", "inet", "airlock"])
        .output()
        .unwrap();
    let nft = String::from_utf8_lossy(&nft.stdout);
    assert!(
        !nft.contains("chain fwd-") && !nft.contains("chain in-"),
        "a job's nftables chain is left (seed {seed}):\n{nft}"
    );
    for e in std::fs::read_dir(state.join("jobs")).unwrap().flatten() {
        let paths = airlock::job::JobPaths { dir: e.path() };
        for p in paths.scratch() {
            assert!(!p.exists(), "{} left behind (seed {seed})", p.display());
        }
    }
    if let Ok(rd) = std::fs::read_dir(state.join("quarantine")) {
        for c in rd.flatten() {
            for e in std::fs::read_dir(c.path()).unwrap().flatten() {
                assert!(
                    !e.file_name().to_string_lossy().starts_with(".tmp-"),
                    "half-written quarantine {} (seed {seed})",
                    e.path().display()
                );
            }
        }
    }
    let log = d.log();
    assert!(log.contains("broker connection lost"), "{log}");
    drop(d);
    drop(broker);
}
