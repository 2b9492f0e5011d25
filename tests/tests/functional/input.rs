//! The job's input tree in the VM is exactly the merged tree, whether it
//! comes whole or as a delta stacked on a shared base image: two PRs
//! against one base, the second reusing the image the first made, each
//! evaluating (in the VM) to the same derivation as the host's evaluation of
//! a real `git merge` of the same PR. The derivation lists the whole tree
//! (names, types, contents), so any file too many or too few — a deleted
//! directory left behind empty, a `lost+found` — changes its path.

use airlock_e2e as common;

use std::path::Path;
use std::process::Command;

use common::*;

const JOB_LIMIT: u64 = 900;

/// A package set of one derivation whose attribute `listing` is the whole
/// source tree as JSON.
const DEFAULT_NIX: &str = r#"{ system ? builtins.currentSystem, ... }:
let
  walk = dir: prefix:
    let entries = builtins.readDir dir; in
    builtins.concatLists (map (n:
      let t = entries.${n}; p = "${prefix}${n}"; in
      if t == "directory" then [ "${p}/" ] ++ walk (dir + "/${n}") "${p}/"
      else if t == "symlink" then [ "${p}@" ]
      else [ "${p}=${builtins.readFile (dir + "/${n}")}" ])
    (builtins.attrNames entries));
in {
  tree = derivation {
    name = "airlock-tree";
    inherit system;
    builder = "/bin/sh";
    listing = builtins.toJSON (walk ./. "");
    args = [ "-c" "printf '%s' \"$listing\" > $out" ];
  };
}
"#;

fn write(repo: &Path, name: &str, data: &str) {
    let p = repo.join(name);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, data).unwrap();
}

/// The host's evaluation of `head` merged into master (a real `git merge`
/// in a worktree, exported without `.git`): the `.drv` path and the listing.
fn host_eval(t: &Path, repo: &Path, head: &str, n: &str) -> (String, String) {
    let wt = t.join(format!("host-merge-{n}"));
    git(
        repo,
        &[
            "worktree",
            "add",
            "-q",
            "--detach",
            wt.to_str().unwrap(),
            "master",
        ],
    );
    git(
        &wt,
        &[
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "merge",
            "-q",
            "--no-edit",
            head,
        ],
    );
    // The merged tree without `.git`.
    let tree = t.join(format!("host-tree-{n}"));
    std::fs::create_dir_all(&tree).unwrap();
    let st = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "git -C {} archive HEAD | tar -x -C {}",
            wt.display(),
            tree.display()
        ))
        .status()
        .unwrap();
    assert!(st.success());
    let store = t.join("host-store");
    let eval = |args: &[&str]| {
        let out = Command::new("nix-instantiate")
            .current_dir(&tree)
            .args(["--store", store.to_str().unwrap()])
            .env("XDG_CACHE_HOME", store.join("xdg-cache"))
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let drv = eval(&["-A", "tree", "./default.nix"]);
    let listing = eval(&[
        "--eval",
        "--strict",
        "--json",
        "-A",
        "tree.listing",
        "./default.nix",
    ]);
    let listing: String = serde_json::from_str(&listing).unwrap();
    (drv, listing)
}

#[test]
fn a_second_pr_against_one_base_reuses_its_image_and_sees_its_exact_tree() {
    if !prerequisites("a_second_pr_against_one_base_reuses_its_image_and_sees_its_exact_tree") {
        return;
    }
    let d = Daemon::builder().start();
    let t = d.dir.path();
    let repo = t.join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    write(&repo, "default.nix", DEFAULT_NIX);
    write(&repo, "tree/keep/a", "a\n");
    write(&repo, "tree/gone/deep/b", "b\n");
    write(&repo, "tree/flip/x", "x\n");
    write(&repo, "tree/becomes-dir", "file\n");
    std::os::unix::fs::symlink("keep/a", repo.join("tree/link")).unwrap();
    git(&repo, &["init", "-q", "-b", "master"]);
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-q", "-m", "base"]);
    // PR 1 changes a file.
    git(&repo, &["checkout", "-q", "-b", "pr1"]);
    write(&repo, "tree/keep/a", "changed by pr1\n");
    git(&repo, &["commit", "-q", "-a", "-m", "pr1"]);
    let pr1 = git(&repo, &["rev-parse", "HEAD"]);
    // PR 2 removes a directory tree, turns a directory into a file and a
    // file into a directory.
    git(&repo, &["checkout", "-q", "master"]);
    git(&repo, &["checkout", "-q", "-b", "pr2"]);
    git(
        &repo,
        &[
            "rm",
            "-q",
            "-r",
            "tree/gone",
            "tree/flip",
            "tree/becomes-dir",
        ],
    );
    write(&repo, "tree/flip", "now a file\n");
    write(&repo, "tree/becomes-dir/inside", "now a directory\n");
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-q", "-m", "pr2"]);
    let pr2 = git(&repo, &["rev-parse", "HEAD"]);
    // Master moves on, so both PRs are really merged.
    git(&repo, &["checkout", "-q", "master"]);
    write(&repo, "MASTER.md", "moved on\n");
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-q", "-m", "master moves on"]);

    let mut bases = Vec::new();
    for (n, head) in [("1", &pr1), ("2", &pr2)] {
        let id = d.submit(&repo, head, &["tree"]);
        let rec = d.wait(&id, JOB_LIMIT);
        assert_eq!(status(&rec), "Success", "{rec:#}\n{}", d.log());
        let input = &rec["input"];
        assert!(input["base_tree"].is_string(), "job {n}: {rec:#}");
        bases.push(input.clone());
        let (drv, listing) = host_eval(t, &repo, head, n);
        let log = d.build_log(&id);
        assert!(
            log.contains(&format!("airlock: tree evaluates to {drv}")),
            "job {n}: the VM's tree differs from the merged tree {listing}\n{log}"
        );
        let show = String::from_utf8_lossy(&d.ctl(&["show", &id]).stdout).into_owned();
        assert!(show.contains("input:     base image"), "{show}");
        if n == "2" {
            assert!(show.contains("(reused)"), "{show}");
            assert!(!listing.contains("gone") && listing.contains("tree/flip=now a file"));
            assert!(!d.state().join("jobs").join(&id).join("base.img").exists());
        }
    }
    assert_eq!(bases[0]["base_made"], true, "{bases:?}");
    assert_eq!(
        bases[1]["base_made"], false,
        "the second PR reuses the image: {bases:?}"
    );
    assert_eq!(bases[0]["base_tree"], bases[1]["base_tree"]);
    assert_eq!(bases[0]["files"], 1, "{bases:?}");
    // pr2: tree/flip, tree/becomes-dir/inside; tree/gone, tree/flip/…,
    // tree/becomes-dir hidden.
    assert_eq!(bases[1]["files"], 2, "{bases:?}");
    assert_eq!(bases[1]["removed"], 3, "{bases:?}");
    let images: Vec<_> = std::fs::read_dir(d.state().join("inputs"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".img"))
        .collect();
    assert_eq!(images.len(), 1, "one base image for both jobs");
}
