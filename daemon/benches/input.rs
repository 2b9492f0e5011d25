//! Checkout and input-disk preparation for one-line PRs on real nixpkgs:
//! the first job against a base, a second job against the same base, a
//! third after the branch moved on by one commit, and, for comparison, a
//! job with base images off (`inputs.max_bytes = 0`, the whole tree on the
//! job's disk).
//!
//! `AIRLOCK_NIXPKGS=/path/to/nixpkgs cargo bench -p airlock --bench input`
//! (the directory of an unpacked nixpkgs tree; nothing runs without it).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use airlock::checkout::{self, Limits, Outcome};
use airlock::input::{self, Bases, Settings};

fn sh(dir: &Path, script: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "bench")
        .env("GIT_AUTHOR_EMAIL", "bench@example.org")
        .env("GIT_COMMITTER_NAME", "bench")
        .env("GIT_COMMITTER_EMAIL", "bench@example.org")
        .output()
        .expect("sh");
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A one-line PR on a branch off master: `file`'s first `from` becomes `to`.
fn pr(repo: &Path, name: &str, file: &str, from: &str, to: &str) -> String {
    sh(repo, &format!("git checkout -q -b {name} master"));
    let p = repo.join(file);
    let text = std::fs::read_to_string(&p).unwrap();
    assert!(text.contains(from), "{file} has no {from:?}");
    std::fs::write(&p, text.replacen(from, to, 1)).unwrap();
    let head = sh(
        repo,
        &format!("git commit -q -am {name} && git rev-parse HEAD"),
    );
    sh(repo, "git checkout -q master");
    head
}

struct Run {
    checkout: f64,
    stage: f64,
    disk: f64,
    what: String,
}

async fn job(t: &Path, url: &str, head: &str, n: &str, bases: Option<&Bases>) -> Run {
    let limits = Limits::default();
    let dir = t.join(format!("job-{n}"));
    std::fs::create_dir_all(&dir).unwrap();
    let work = dir.join("checkout");
    let t0 = Instant::now();
    let out = checkout::prepare(&t.join("git"), url, "master", head, 1, &work, &limits)
        .await
        .unwrap();
    let Outcome::Merged { commit, base } = out else {
        panic!("{out:?}")
    };
    let checkout = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let stage = dir.join("input");
    let base_img = dir.join("base.img");
    let used = input::stage(
        &work,
        &base,
        &commit,
        &stage,
        bases.map(|b| (b, base_img.as_path())),
        &limits,
        false,
    )
    .await
    .unwrap();
    let staged = t1.elapsed().as_secs_f64();
    let t2 = Instant::now();
    input::tree_disk(&dir.join("input.img"), &stage, "airlock-in")
        .await
        .unwrap();
    let disk = t2.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(&dir);
    Run {
        checkout,
        stage: staged,
        disk,
        what: used.to_string(),
    }
}

fn main() {
    let Some(np) = std::env::var_os("AIRLOCK_NIXPKGS").map(PathBuf::from) else {
        eprintln!("input bench: set AIRLOCK_NIXPKGS to a nixpkgs checkout");
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let repo = t.path().join("repo");
    let t0 = Instant::now();
    let st = Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", np.display()))
        .arg(&repo)
        .status()
        .unwrap();
    assert!(st.success());
    sh(
        &repo,
        "git init -q -b master && git add -A && git commit -q -m snapshot",
    );
    let hello = pr(
        &repo,
        "pr1",
        "pkgs/by-name/he/hello/package.nix",
        "friendly greeting",
        "friendly greeting (pr1)",
    );
    let cowsay = pr(
        &repo,
        "pr2",
        "pkgs/by-name/co/cowsay/package.nix",
        "description = \"",
        "description = \"(pr2) ",
    );
    let jq = pr(
        &repo,
        "pr3",
        "pkgs/by-name/jq/jq/package.nix",
        "description = \"",
        "description = \"(pr3) ",
    );
    let files = sh(&repo, "git ls-files | wc -l");
    eprintln!(
        "repository of {files} files made in {:.1}s",
        t0.elapsed().as_secs_f64()
    );
    let url = repo.to_string_lossy().into_owned();
    let bases = Bases::new(Settings {
        dir: t.path().join("inputs"),
        max_bytes: 8 << 30,
        max_delta_files: 4096,
    });
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut rows = Vec::new();
    rows.push((
        "first job against the base",
        rt.block_on(job(t.path(), &url, &hello, "1", Some(&bases))),
    ));
    rows.push((
        "second job against the same base",
        rt.block_on(job(t.path(), &url, &cowsay, "2", Some(&bases))),
    ));
    sh(
        &repo,
        "echo '# moved on' >> pkgs/by-name/he/hello/package.nix && git commit -q -am moved",
    );
    rows.push((
        "third job, master moved on by one commit",
        rt.block_on(job(t.path(), &url, &jq, "3", Some(&bases))),
    ));
    rows.push((
        "a job with base images off",
        rt.block_on(job(t.path(), &url, &hello, "4", None)),
    ));
    println!("| job | checkout | input staged | input disk | total | input |");
    println!("|---|---|---|---|---|---|");
    for (name, r) in rows {
        println!(
            "| {name} | {:.1} s | {:.1} s | {:.1} s | {:.1} s | {} |",
            r.checkout,
            r.stage,
            r.disk,
            r.checkout + r.stage + r.disk,
            r.what
        );
    }
}
