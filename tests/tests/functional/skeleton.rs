//! Walking-skeleton end-to-end tests: a job goes in, a real Nix build runs in
//! a real VM, verified outputs land in quarantine, a result comes out.

use airlock_e2e as common;

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use common::*;

const JOB_LIMIT: u64 = 900;

fn narinfos(dir: &Path) -> Vec<airlock::store::narinfo::NarInfo> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".narinfo"))
        .map(|e| {
            airlock::store::narinfo::NarInfo::parse(&std::fs::read_to_string(e.path()).unwrap())
                .unwrap()
        })
        .collect();
    v.sort_by_key(|n| n.signed.store_path.to_string());
    v
}

fn nix_hash(path: &str) -> String {
    let out = Command::new("nix-hash")
        .args(["--type", "sha256", "--base32", path])
        .output()
        .unwrap();
    format!("sha256:{}", String::from_utf8_lossy(&out.stdout).trim())
}

#[test]
fn chain_builds_in_vm_and_matches_host_build() {
    if !prerequisites("chain_builds_in_vm_and_matches_host_build") {
        return;
    }
    let d = Daemon::builder().start();
    let (repo, head) = fixture_repo(d.dir.path(), &[]);
    let id = d.submit(&repo, &head, &["chain"]);
    let rec = d.wait(&id, JOB_LIMIT);
    assert_eq!(status(&rec), "Success", "{rec:#}\n{}", d.log());
    assert_ne!(
        rec["merged_commit"].as_str().unwrap(),
        head,
        "head was merged onto master"
    );
    assert_eq!(
        rec["result"]["attempted_attrs"],
        serde_json::json!(["chain"])
    );
    // The agent reports the guest's Nix, and `airlockctl show` prints it.
    let nix = rec["guest_nix"].as_str().unwrap_or_default();
    assert!(nix.starts_with("nix (Nix) 2."), "guest nix {nix:?}");
    let show = d.ctl(&["show", &id]);
    assert!(
        String::from_utf8_lossy(&show.stdout).contains(&format!("guest nix: {nix}")),
        "{}",
        String::from_utf8_lossy(&show.stdout)
    );

    // Quarantine: one NAR per built path, each hashing like the host's build.
    let q = Path::new(rec["result"]["quarantine"].as_str().unwrap());
    assert!(q.starts_with(d.state().join("quarantine").join(&head)));
    // The manifest records what was fetched and merged (release checks
    // the base branch against the PR's).
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(q.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(m["origin"]["base_branch"], "master", "{m}");
    assert_eq!(m["origin"]["clone_url"], repo.to_str().unwrap(), "{m}");
    assert_eq!(m["origin"]["merged_commit"], rec["merged_commit"]);
    assert_eq!(m["origin"]["base_commit"], rec["base_commit"]);
    assert_eq!(m["origin"]["base_commit"].as_str().unwrap().len(), 40);
    let host_store = d.dir.path().join("host-store");
    let hs = host_store.to_str().unwrap();
    let host_paths = host_build(&host_store, &repo, "chain");
    assert_eq!(host_paths.len(), 3);
    let infos = narinfos(q);
    let mut got: Vec<String> = infos
        .iter()
        .map(|n| n.signed.store_path.to_string())
        .collect();
    got.sort();
    let mut want = host_paths.clone();
    want.sort();
    assert_eq!(got, want, "quarantine holds exactly the built paths");
    for ni in &infos {
        let p = ni.signed.store_path.to_string();
        let on_disk = in_store(&host_store, &p);
        assert_eq!(
            ni.signed.nar_hash,
            nix_hash(on_disk.to_str().unwrap()),
            "NarHash of {p}"
        );
        assert!(ni.sigs.is_empty(), "quarantine is unsigned");
        let nar = std::fs::read(q.join(&ni.url)).unwrap();
        let dump = Command::new("nix-store")
            .args(["--store", hs, "--dump"])
            .arg(&on_disk)
            .output()
            .unwrap()
            .stdout;
        assert_eq!(nar, dump, "NAR of {p} equals nix-store --dump");
        let refs = Command::new("nix-store")
            .args(["--store", hs, "-q", "--references", &p])
            .output()
            .unwrap();
        let mut host_refs: Vec<String> = String::from_utf8_lossy(&refs.stdout)
            .lines()
            .map(str::to_owned)
            .collect();
        host_refs.sort();
        let mut our_refs: Vec<String> =
            ni.signed.references.iter().map(|r| r.to_string()).collect();
        our_refs.sort();
        assert_eq!(our_refs, host_refs, "References of {p}");
    }

    // The quarantine directory is a valid (unsigned) binary cache: a real Nix
    // substitutes from it into a fresh store.
    let store = d.dir.path().join("fresh-store");
    let top = host_paths
        .iter()
        .find(|p| p.ends_with("-airlock-chain-3"))
        .unwrap();
    let out = Command::new("nix-store")
        .args(["--store", store.to_str().unwrap(), "-r", top])
        .args([
            "--option",
            "substituters",
            &format!("file://{}", q.display()),
        ])
        .args(["--option", "require-sigs", "false"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "substitute from quarantine: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Nothing of the job's scratch is left; the logs are.
    let jobdir = d.state().join("jobs").join(&id);
    for f in ["nix.img", "export.img", "input.img", "checkout", "input"] {
        assert!(!jobdir.join(f).exists(), "{f} left behind");
    }
    assert!(jobdir.join("console.log").exists());
    assert!(d.build_log(&id).contains("building '/nix/store/"));

    // Each built output attested, signed with the builder's identity key
    // (issue 30), and the builder's log verifies with its signed head.
    let public = std::fs::read_to_string(d.state().join("attestations/public")).unwrap();
    let atts: Vec<airlock::attest::Attestation> =
        std::fs::read_to_string(jobdir.join("attestations.jsonl"))
            .unwrap()
            .lines()
            .map(|l| airlock::attest::Attestation::parse(l.as_bytes()).unwrap())
            .collect();
    assert_eq!(atts.len(), 3, "{atts:#?}");
    for a in &atts {
        a.verify(public.trim()).unwrap();
        assert!(host_paths.contains(&a.statement.out_path), "{a:?}");
        assert_eq!(a.statement.output, "out");
        assert_eq!(a.statement.job_id, id);
    }
    let head: airlock::attest::Head =
        serde_json::from_slice(&std::fs::read(d.state().join("attestations/head.json")).unwrap())
            .unwrap();
    let log = std::fs::read(d.state().join("attestations/log.jsonl")).unwrap();
    assert_eq!(
        airlock::attest::verify_log(&log, public.trim(), &head).unwrap(),
        atts
    );

    // airlockctl's human views work too.
    let jobs = String::from_utf8_lossy(&d.ctl(&["jobs"]).stdout).into_owned();
    assert!(jobs.contains(&id) && jobs.contains("Success"), "{jobs}");
    let show = String::from_utf8_lossy(&d.ctl(&["show", &id]).stdout).into_owned();
    assert!(show.contains("status:    Success"), "{show}");
}

#[test]
fn failing_and_unevaluable_attrs() {
    if !prerequisites("failing_and_unevaluable_attrs") {
        return;
    }
    let d = Daemon::builder().start();
    let (repo, head) = fixture_repo(d.dir.path(), &[]);
    let id = d.submit(&repo, &head, &["failing", "broken", "leaf"]);
    let rec = d.wait(&id, JOB_LIMIT);
    assert_eq!(status(&rec), "Failure", "{rec:#}");
    let res = &rec["result"];
    assert_eq!(
        res["attempted_attrs"],
        serde_json::json!(["failing", "leaf"])
    );
    assert_eq!(res["skipped_attrs"], serde_json::json!(["broken"]));
    let output: Vec<String> = serde_json::from_value(res["output"].clone()).unwrap();
    assert!(output.len() <= 10);
    assert!(
        output
            .iter()
            .any(|l| l.contains("step 3 broke: simulated compiler error")),
        "builder's last lines in the result: {output:#?}"
    );
    let log = d.build_log(&id);
    assert!(
        log.contains("Cannot nix-instantiate `broken` because:"),
        "{log}"
    );
    assert!(log.contains("this attribute does not evaluate"), "{log}");
    // --keep-going: the leaf was still built and quarantined.
    let paths: Vec<String> = serde_json::from_value(res["store_paths"].clone()).unwrap();
    assert!(
        paths.iter().any(|p| p.ends_with("-airlock-leaf")),
        "{paths:?}"
    );
}

#[test]
fn only_unevaluable_attrs_are_skipped() {
    if !prerequisites("only_unevaluable_attrs_are_skipped") {
        return;
    }
    let d = Daemon::builder().start();
    let (repo, head) = fixture_repo(d.dir.path(), &[]);
    let id = d.submit(&repo, &head, &["broken", "does-not-exist"]);
    let rec = d.wait(&id, JOB_LIMIT);
    assert_eq!(status(&rec), "Skipped", "{rec:#}");
    assert_eq!(
        rec["result"]["skipped_attrs"],
        serde_json::json!(["broken", "does-not-exist"])
    );
    assert!(rec["result"]["quarantine"].is_null());
}

#[test]
fn never_ending_attr_times_out_and_leaves_nothing() {
    if !prerequisites("never_ending_attr_times_out_and_leaves_nothing") {
        return;
    }
    let limit = 45;
    let d = Daemon::builder()
        .with(|c| c.limits.job_timeout_secs = limit)
        .start();
    let (repo, head) = fixture_repo(d.dir.path(), &[]);
    let id = d.submit(&repo, &head, &["forever"]);
    let t0 = Instant::now();
    let rec = d.wait(&id, JOB_LIMIT);
    let took = t0.elapsed().as_secs();
    assert_eq!(status(&rec), "TimedOut", "{rec:#}");
    assert!(took <= limit + 30, "took {took}s for a {limit}s limit");
    assert!(no_vm_for(&id), "a VM process of the job survived");
    let jobdir = d.state().join("jobs").join(&id);
    for f in ["nix.img", "export.img", "input.img", "checkout", "input"] {
        assert!(!jobdir.join(f).exists(), "{f} left behind");
    }
    assert!(
        d.build_log(&id).contains("started"),
        "the build's output up to the kill is kept"
    );
}

#[test]
fn merge_conflict_is_a_failure() {
    if !prerequisites("merge_conflict_is_a_failure") {
        return;
    }
    let d = Daemon::builder().start();
    let (repo, _) = fixture_repo(d.dir.path(), &[]);
    // Both branches change the same line of PR.md differently.
    git(&repo, &["checkout", "-q", "master"]);
    std::fs::write(repo.join("CONFLICT.md"), "master's version\n").unwrap();
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-q", "-m", "master side"]);
    git(&repo, &["checkout", "-q", "pr"]);
    std::fs::write(repo.join("CONFLICT.md"), "the PR's version\n").unwrap();
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-q", "-m", "pr side"]);
    let head = git(&repo, &["rev-parse", "HEAD"]);
    let id = d.submit(&repo, &head, &["leaf"]);
    let rec = d.wait(&id, 120);
    assert_eq!(status(&rec), "Failure", "{rec:#}");
    assert_eq!(rec["result"]["output"], serde_json::json!(["Merge failed"]));
    assert!(rec["result"]["attempted_attrs"].is_null());
    assert!(rec["accel"].is_null(), "no VM was started");
}
