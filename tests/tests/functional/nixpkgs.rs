//! A job on real nixpkgs: the checkout in `$AIRLOCK_NIXPKGS` (an optional
//! group: no package registry provides nixpkgs, so without it each test
//! prints `OPTIONAL NOT RUN`) becomes the target
//! branch of a git repository, a PR changes `hello`'s description, and a job
//! for `hello` evaluates it inside the VM with the guest's current Nix. Its
//! build cannot finish here (the bootstrap sources are on hosts this machine
//! cannot reach): the job must end with `Failure` naming what could not be
//! fetched, well before any timeout.

use airlock_e2e as common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use common::*;

fn snapshot() -> Option<PathBuf> {
    let p = PathBuf::from(std::env::var_os("AIRLOCK_NIXPKGS")?);
    p.join("pkgs/top-level/impure.nix").exists().then_some(p)
}

/// The checkout, or None after one loud `OPTIONAL NOT RUN` line.
fn snapshot_or_skip(name: &str) -> Option<PathBuf> {
    let np = snapshot();
    if np.is_none() {
        optional_or_not_run(name, &[NEEDS_NIXPKGS.into()]);
    }
    np
}

/// A git repository at `repo` whose `master` is the snapshot.
fn snapshot_repo(np: &std::path::Path, repo: &std::path::Path) {
    let st = Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", np.display()))
        .arg(repo)
        .status()
        .unwrap();
    assert!(st.success());
    git(repo, &["init", "-q", "-b", "master"]);
    git(repo, &["add", "-A"]);
    git(repo, &["commit", "-q", "-m", "nixpkgs snapshot"]);
}

#[test]
fn a_real_nixpkgs_pr_evaluates_in_the_vm_and_fails_on_the_unreachable_bootstrap() {
    let name = "a_real_nixpkgs_pr_evaluates_in_the_vm_and_fails_on_the_unreachable_bootstrap";
    let Some(np) = snapshot_or_skip(name) else {
        return;
    };
    if !prerequisites(name) {
        return;
    }
    // The fetch VM reaches an "internet" where no name resolves (as the
    // bootstrap sources' hosts do not, from here), so downloads fail fast.
    let www = tempfile::tempdir().unwrap();
    let net = common::internet::Internet::up(www.path());
    let d = Daemon::builder()
        .netns(&net.host)
        .toml("[network]\ndns = [\"203.0.113.10\"]\n")
        .start();
    let repo = d.dir.path().join("repo");
    let t0 = Instant::now();
    snapshot_repo(&np, &repo);
    git(&repo, &["checkout", "-q", "-b", "pr"]);
    let pkg = repo.join("pkgs/by-name/he/hello/package.nix");
    let text = std::fs::read_to_string(&pkg).unwrap();
    let changed = text.replace(
        "description = \"Program that produces a familiar, friendly greeting\";",
        "description = \"Program that produces a familiar, friendly greeting (airlock test)\";",
    );
    assert_ne!(text, changed, "hello's description moved");
    std::fs::write(&pkg, changed).unwrap();
    git(
        &repo,
        &["commit", "-q", "-am", "hello: airlock test description"],
    );
    let head = git(&repo, &["rev-parse", "HEAD"]);
    eprintln!("repository made in {:.1}s", t0.elapsed().as_secs_f64());

    // The host's evaluation of the same tree (Nix 2.8: through impure.nix,
    // which skips the version gate), into a private store.
    let store = d.dir.path().join("host-store");
    let th = Instant::now();
    let out = Command::new("nix-instantiate")
        .arg("--store")
        .arg(&store)
        .arg(repo.join("pkgs/top-level/impure.nix"))
        .args(["-A", "hello", "--argstr", "system", "x86_64-linux"])
        .env("XDG_CACHE_HOME", store.join("xdg-cache"))
        .env("NIX_PATH", "")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "host nix-instantiate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let host_drv = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    eprintln!(
        "host evaluation of hello (Nix 2.8, native): {:.1}s",
        th.elapsed().as_secs_f64()
    );
    assert!(host_drv.ends_with("-hello-2.12.3.drv"), "{host_drv}");

    let t1 = Instant::now();
    let id = d.submit(&repo, &head, &["hello"]);
    let rec = d.wait(&id, 3000);
    let secs = t1.elapsed().as_secs();
    let log = d.build_log(&id);
    let show = String::from_utf8_lossy(&d.ctl(&["show", &id]).stdout).into_owned();
    eprintln!("job took {secs}s\n{show}");
    for l in log.lines().filter(|l| l.starts_with("airlock: ")) {
        eprintln!("  {l}");
    }
    for (step, at) in rec["timings"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t.as_array().map(|a| (a[0].clone(), a[1].clone())))
    {
        eprintln!("  at {at}s: {step}");
    }
    assert!(
        log.contains(&format!("airlock: hello evaluates to {host_drv}")),
        "the VM's drv differs from the host's {host_drv}:\n{log}\n{}",
        d.log()
    );
    assert!(show.contains("guest nix: nix (Nix) 2."), "{show}");
    assert_eq!(status(&rec), "Failure", "{rec:#}\n{log}");
    // What could not be fetched is named: hello's own source among them.
    assert!(
        log.lines()
            .any(|l| l.contains("-hello-2.12.3.tar.gz.drv'") && l.contains("failed")),
        "no line names hello's source as failed:\n{log}"
    );
    assert!(
        log.lines().any(|l| l.contains("unable to download")),
        "no line says what could not be downloaded:\n{log}"
    );
    assert!(
        !matches!(status(&rec).as_str(), "TimedOut"),
        "the job ran into its timeout"
    );
}

/// The fixed attr list of the review test (tests/fixtures/review/README.md).
fn review_list() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/review/nixpkgs-attrs.json")
}

/// `review-eval.nix` on the host (Nix 2.8, through impure.nix) over the list.
fn host_review_eval(store: &std::path::Path, tree: &std::path::Path) -> serde_json::Value {
    let eval_nix =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../vm-images/agent/src/review-eval.nix");
    let out = Command::new("nix-instantiate")
        .arg("--store")
        .arg(store)
        .args(["--eval", "--strict", "--json"])
        .arg(eval_nix)
        .arg("--arg")
        .arg("src")
        .arg(tree)
        .args(["--argstr", "entry", "pkgs/top-level/impure.nix"])
        .args(["--argstr", "system", "x86_64-linux"])
        .arg("--arg")
        .arg("attrsFile")
        .arg(review_list())
        .env("XDG_CACHE_HOME", store.join("xdg-cache"))
        .env("NIX_PATH", "")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "host review evaluation: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn a_real_nixpkgs_review_of_a_hello_change_finds_exactly_its_dependents() {
    let name = "a_real_nixpkgs_review_of_a_hello_change_finds_exactly_its_dependents";
    let Some(np) = snapshot_or_skip(name) else {
        return;
    };
    if !prerequisites(name) {
        return;
    }
    // Evaluating a few hundred nixpkgs attrs takes about 1.5 GB, and
    // instantiating the changed ones copies the whole tree into the store
    // once (`tests.problems.no-problems` is `cleanSource` of nixpkgs).
    let d = Daemon::builder()
        .with(|c| {
            c.vm.memory_mib = 3072;
            c.vm.nix_disk_mib = 4096;
        })
        .start();
    let repo = d.dir.path().join("repo");
    snapshot_repo(&np, &repo);
    git(&repo, &["checkout", "-q", "-b", "pr"]);
    let pkg = repo.join("pkgs/by-name/he/hello/package.nix");
    let text = std::fs::read_to_string(&pkg).unwrap();
    let changed = text.replacen(
        "doCheck = true;",
        "doCheck = true;\n  enableParallelBuilding = true;",
        1,
    );
    assert_ne!(text, changed, "hello's doCheck moved");
    std::fs::write(&pkg, changed).unwrap();
    git(&repo, &["commit", "-q", "-am", "hello: build in parallel"]);
    let head = git(&repo, &["rev-parse", "HEAD"]);

    let t0 = Instant::now();
    let id = d.review(
        &repo,
        &head,
        &[
            "--pr",
            "1",
            "--attrs-file",
            review_list().to_str().unwrap(),
            "--eval-only",
        ],
    );

    // Meanwhile the host's own diff of the same two trees.
    let store = d.dir.path().join("host-store");
    let th = Instant::now();
    let merged = host_review_eval(&store, &repo);
    git(&repo, &["checkout", "-q", "master"]);
    let base = host_review_eval(&store, &repo);
    eprintln!(
        "host: both evaluations of {} attrs in {:.1}s",
        merged.as_object().unwrap().len(),
        th.elapsed().as_secs_f64()
    );
    let host_changed: Vec<String> = merged
        .as_object()
        .unwrap()
        .iter()
        .filter(|(a, m)| base[a.as_str()]["outputs"] != m["outputs"])
        .map(|(a, _)| a.clone())
        .collect();
    let golden: Vec<String> = serde_json::from_slice(
        &std::fs::read(
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("fixtures/review/nixpkgs-hello-rebuild.json"),
        )
        .unwrap(),
    )
    .unwrap();
    // The recorded diff is the 26.11pre snapshot's (tests/fixtures/review/
    // README.md); another checkout may differ, and then the host's own diff
    // is what the VM is checked against.
    if host_changed != golden {
        eprintln!(
            "note: this nixpkgs is not the recorded snapshot: the host's diff has {} attrs, \
             the recorded one {}",
            host_changed.len(),
            golden.len()
        );
    }
    assert!(
        host_changed.iter().any(|a| a == "hello"),
        "the host's diff lacks hello: {host_changed:?}"
    );

    let rec = d.wait(&id, 3000);
    let log = d.build_log(&id);
    eprintln!("review took {}s", t0.elapsed().as_secs());
    for l in log
        .lines()
        .filter(|l| l.starts_with("airlock: review: evaluated"))
    {
        eprintln!("  {l}");
    }
    assert_eq!(status(&rec), "Skipped", "{rec:#}\n{log}\n{}", d.log());
    let report: serde_json::Value = serde_json::from_slice(
        &std::fs::read(d.state().join("jobs").join(&id).join("report.json")).unwrap(),
    )
    .unwrap();
    let vm_changed: Vec<String> = report["rebuild"]["changed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(vm_changed, host_changed, "the VM's rebuild set");
    assert!(vm_changed.contains(&"hello".to_string()));
    // hello's passthru.tests are listed (not built: evaluation only).
    let tests: Vec<&str> = report["skipped_tests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["attr"].as_str().unwrap())
        .collect();
    for t in ["hello.passthru.tests.run", "hello.passthru.tests.version"] {
        assert!(tests.contains(&t), "{t} not listed: {tests:?}");
    }
    eprintln!(
        "VM evaluation: base {} ms, merged {} ms",
        report["eval_ms"]["base"], report["eval_ms"]["merged"]
    );
}
