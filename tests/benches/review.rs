//! Review mode's evaluation and diff (issue 16): inside the VM (a review
//! job with `--eval-only`: the fetch boot evaluates the base and the merged
//! tree with `review-eval.nix`, diffs them and evaluates the changed attrs'
//! tests) against plain `nix-env -qaP --out-path` of both trees on the
//! host, which is what a reviewer running nixpkgs-review does outside any
//! VM. Two inputs: the fixture set (a PR changing `graph.libleaf`), and,
//! with `AIRLOCK_NIXPKGS`, the nixpkgs snapshot over the fixed list of
//! tests/fixtures/review/nixpkgs-attrs.json (a PR changing `hello`). For
//! the snapshot the host side is `review-eval.nix` over the same list with
//! the host's Nix: `nix-env -qa` of the whole snapshot stops at its first
//! stubbed package (`attribute 'Agda' missing`: the slim snapshot has no
//! Haskell set), and `nix-env -qa -A` takes one selector per run.
//!
//! `cargo bench -p airlock-e2e --bench review` (as root, with the guest
//! image and `cargo build --release --workspace`, or `AIRLOCK_BIN_DIR=
//! target/debug` after `cargo build --workspace`: the time is Nix's, in the
//! VM; `AIRLOCK_NIXPKGS=/path/to/nixpkgs` for the second).

use airlock_e2e as common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use common::*;

fn secs(t: Instant) -> f64 {
    t.elapsed().as_secs_f64()
}

/// `nix-env -qaP --out-path` of `file` (all attrs, or `attrs`), on the host
/// into a private store; returns the seconds it took and the line count.
fn host_nix_env(store: &Path, file: &Path, attrs: &[String]) -> (f64, usize) {
    let t = Instant::now();
    let mut c = Command::new("nix-env");
    c.arg("--store")
        .arg(store)
        .arg("-f")
        .arg(file)
        .args(["-qaP", "--out-path"])
        .args(["--argstr", "system", "x86_64-linux"])
        .env("XDG_CACHE_HOME", store.join("xdg-cache"))
        .env("NIX_PATH", "");
    if !attrs.is_empty() {
        c.arg("-A").args(attrs);
    }
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "nix-env: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        secs(t),
        String::from_utf8_lossy(&out.stdout).lines().count(),
    )
}

/// `review-eval.nix` over `list` with the host's Nix (through impure.nix,
/// which skips nixpkgs' Nix version gate); seconds.
fn host_review_eval(store: &Path, tree: &Path, list: &Path) -> f64 {
    let t = Instant::now();
    let out = Command::new("nix-instantiate")
        .arg("--store")
        .arg(store)
        .args(["--eval", "--strict", "--json"])
        .arg(
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../vm-images/agent/src/review-eval.nix"),
        )
        .arg("--arg")
        .arg("src")
        .arg(tree)
        .args(["--argstr", "entry", "pkgs/top-level/impure.nix"])
        .args(["--argstr", "system", "x86_64-linux"])
        .arg("--arg")
        .arg("attrsFile")
        .arg(list)
        .env("XDG_CACHE_HOME", store.join("xdg-cache"))
        .env("NIX_PATH", "")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    secs(t)
}

/// An eval-only review in the VM; (job seconds, base ms, merged ms).
fn vm_review(d: &Daemon, repo: &Path, head: &str, attrs_file: Option<&Path>) -> (f64, u64, u64) {
    let t = Instant::now();
    let list = attrs_file.map(|f| f.display().to_string());
    let mut args = vec!["--eval-only"];
    if let Some(f) = &list {
        args.extend(["--attrs-file", f.as_str()]);
    }
    let id = d.review(repo, head, &args);
    let rec = d.wait(&id, 3600);
    assert_eq!(status(&rec), "Skipped", "{rec:#}");
    let r: serde_json::Value = serde_json::from_slice(
        &std::fs::read(d.state().join("jobs").join(&id).join("report.json")).unwrap(),
    )
    .unwrap();
    (
        secs(t),
        r["eval_ms"]["base"].as_u64().unwrap(),
        r["eval_ms"]["merged"].as_u64().unwrap(),
    )
}

fn report(what: &str, how: &str, host: f64, vm: (f64, u64, u64)) {
    let eval = (vm.1 + vm.2) as f64 / 1000.0;
    println!("{what}:");
    println!("  host: {how}, base + merged: {host:.1} s");
    println!(
        "  VM: review-eval.nix, base {:.1} s + merged {:.1} s = {eval:.1} s ({:.1}x the host)",
        vm.1 as f64 / 1000.0,
        vm.2 as f64 / 1000.0,
        eval / host
    );
    println!(
        "  VM: whole eval-only review job, submit to report: {:.1} s",
        vm.0
    );
}

fn main() {
    if !prerequisites("bench review") {
        return;
    }
    // 1. The fixture set.
    let d = Daemon::builder().start();
    let text = std::fs::read_to_string(fixture_dir().join("default.nix")).unwrap();
    let changed = text.replace("echo leaf-v1 > $out", "echo leaf-v2 > $out");
    let (repo, head) = fixture_repo(d.dir.path(), &[("default.nix", changed.into_bytes())]);
    let store = d.dir.path().join("host-store");
    let base = d.dir.path().join("base.nix");
    let merged = d.dir.path().join("merged.nix");
    std::fs::write(&base, &text).unwrap();
    git(&repo, &["checkout", "-q", &head]);
    std::fs::copy(repo.join("default.nix"), &merged).unwrap();
    let host = host_nix_env(&store, &base, &[]).0 + host_nix_env(&store, &merged, &[]).0;
    let vm = vm_review(&d, &repo, &head, None);
    report(
        "fixture set (every attr, 9 changed)",
        "nix-env -qaP --out-path",
        host,
        vm,
    );
    drop(d);

    // 2. The nixpkgs snapshot, over the fixed list.
    let Some(np) = std::env::var_os("AIRLOCK_NIXPKGS").map(PathBuf::from) else {
        println!("nixpkgs snapshot: skipped (set AIRLOCK_NIXPKGS)");
        return;
    };
    let d = Daemon::builder()
        .with(|c| {
            c.vm.memory_mib = 3072;
            c.vm.nix_disk_mib = 4096;
        })
        .start();
    let repo = d.dir.path().join("repo");
    assert!(Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", np.display()))
        .arg(&repo)
        .status()
        .unwrap()
        .success());
    git(&repo, &["init", "-q", "-b", "master"]);
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "nixpkgs snapshot"]);
    let list_file =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/review/nixpkgs-attrs.json");
    let list: Vec<String> = serde_json::from_slice(&std::fs::read(&list_file).unwrap()).unwrap();
    let store = d.dir.path().join("host-store");
    let host_base = host_review_eval(&store, &repo, &list_file);
    git(&repo, &["checkout", "-q", "-b", "pr"]);
    let pkg = repo.join("pkgs/by-name/he/hello/package.nix");
    let t = std::fs::read_to_string(&pkg).unwrap();
    std::fs::write(
        &pkg,
        t.replacen(
            "doCheck = true;",
            "doCheck = true;\n  enableParallelBuilding = true;",
            1,
        ),
    )
    .unwrap();
    git(&repo, &["commit", "-q", "-am", "hello: build in parallel"]);
    let head = git(&repo, &["rev-parse", "HEAD"]);
    let host_merged = host_review_eval(&store, &repo, &list_file);
    let vm = vm_review(&d, &repo, &head, Some(&list_file));
    let n = list.len();
    report(
        &format!("nixpkgs snapshot ({n} attrs listed, 66 changed)"),
        "review-eval.nix over the list (not nix-env: see the header)",
        host_base + host_merged,
        vm,
    );
}
