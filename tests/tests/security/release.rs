//! Release from quarantine, for real: airlockd with a signing key serves its
//! binary cache on 127.0.0.1, a real Nix substitutes from it and checks the
//! signatures. GitHub is the one stand-in (`common::github::FakeGitHub`,
//! serving GitHub's documented shapes from `tests/fixtures/github/`).

use airlock_e2e as common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::github::*;
use common::*;
use serde_json::Value;

const JOB_LIMIT: u64 = 900;
const REPO: &str = "NixOS/nixpkgs";
const LABEL: &str = "nonmalicious-checked";

fn setup(gh: &FakeGitHub, trust: &str, extra: &str) -> ReleaseDaemon {
    ReleaseDaemon::start(gh, trust, 1, extra)
}

fn get(addr: &str, path: &str) -> (u16, Vec<u8>) {
    let (s, _, b) = http(addr, "GET", path, &[], b"");
    (s, b)
}

fn narinfo_url(path: &str) -> String {
    let base = path.trim_start_matches("/nix/store/");
    format!("/{}.narinfo", &base[..32])
}

fn status_json(d: &Daemon, commit: &str) -> Value {
    let out = d.ctl(&["--json", "release", "status", commit]);
    assert!(
        out.status.success(),
        "release status: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The decision text for the commit's PR (`"release"` when the rule holds).
fn decision(d: &Daemon, commit: &str) -> String {
    let v = status_json(d, commit);
    let dec = &v["prs"][0]["decision"];
    if dec.get("release").is_some() {
        "release".into()
    } else {
        dec["hold"].as_str().unwrap_or("?").to_owned()
    }
}

fn wait_until(what: &str, secs: u64, d: &Daemon, f: impl FnMut() -> bool) {
    d.wait_until(what, secs, f);
}

/// The watcher has looked at PR `pr` `n` more times (the stand-in counts
/// its GETs): what a "nothing else moves" check waits for.
fn looks(gh: &FakeGitHub, d: &Daemon, pr: u64, n: u64) {
    let gets = || gh.with(|g| g.pull_gets.get(&pr).copied().unwrap_or(0));
    let from = gets();
    wait_until(&format!("{n} more looks at PR {pr}"), 60, d, || {
        gets() >= from + n
    });
}

#[test]
fn label_unlocks_signed_cache_for_real_nix() {
    if !prerequisites("label_unlocks_signed_cache_for_real_nix") {
        return;
    }
    let gh = FakeGitHub::start();
    gh.set_permission("alice", "write");
    let s = setup(&gh, "trusted", "[retention]\nunreleased_hours = 0\n");
    let d = &s.d;
    let (repo, head) = fixture_repo(d.dir.path(), &[]);
    gh.set_pull(1234, &head, &[]);
    for (i, who) in ["alice", "bob", "carol"].iter().enumerate() {
        gh.event(1234, "referenced", who, now() - 900 + i as i64, "");
    }

    let id = d.submit_pr(&repo, &head, 1234, Some(REPO), &["chain", "fod-local"]);
    // The VMM runs as vm.user, with no capabilities, and cannot open the
    // signing key (issue 27, item 11).
    let vmm = d.vmm_status(&id, 300);
    let field = |k: &str| {
        vmm.lines()
            .find_map(|l| l.strip_prefix(k))
            .unwrap_or_else(|| panic!("{k} in {vmm}"))
            .split_whitespace()
            .collect::<Vec<_>>()
    };
    let (uid, gid) = VM_USER.split_once(':').unwrap();
    assert_eq!(field("Uid:"), [uid; 4], "{vmm}");
    assert_eq!(field("Gid:"), [gid; 4], "{vmm}");
    assert_eq!(field("Groups:"), [gid], "{vmm}");
    assert_eq!(field("CapEff:"), ["0000000000000000"], "{vmm}");
    assert_eq!(field("CapPrm:"), ["0000000000000000"], "{vmm}");
    let open = {
        use std::os::unix::process::CommandExt;
        std::process::Command::new("cat")
            .arg(&s.sk)
            .uid(uid.parse().unwrap())
            .gid(gid.parse().unwrap())
            .output()
            .unwrap()
    };
    assert!(!open.status.success(), "vm.user read the signing key");
    assert!(
        String::from_utf8_lossy(&open.stderr).contains("Permission denied"),
        "{}",
        String::from_utf8_lossy(&open.stderr)
    );
    let rec = d.wait(&id, JOB_LIMIT);
    assert_eq!(status(&rec), "Success", "{rec:#}");
    let paths: Vec<String> = serde_json::from_value(rec["result"]["store_paths"].clone()).unwrap();
    assert_eq!(paths.len(), 4, "{paths:?}");
    let fod = paths
        .iter()
        .find(|p| p.ends_with("-airlock-fod-local"))
        .unwrap()
        .clone();
    let top = paths
        .iter()
        .find(|p| p.ends_with("-airlock-chain-3"))
        .unwrap()
        .clone();
    let qdir = d.state().join("quarantine").join(&head).join(&id);
    let nars: Vec<String> = std::fs::read_dir(qdir.join("nar"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(nars.len(), 4);

    // The watcher has seen C as the head; nothing is served yet, not even
    // the content-addressed FOD output (Nix would take it unsigned).
    wait_until("first look at the PR", 30, d, || {
        decision(d, &head).contains("has not been added")
    });
    let (st, info) = get(&s.cache, "/nix-cache-info");
    assert_eq!(st, 200);
    assert!(String::from_utf8_lossy(&info).contains("StoreDir: /nix/store"));
    for p in &paths {
        assert_eq!(
            get(&s.cache, &narinfo_url(p)).0,
            404,
            "{p} served before release"
        );
    }
    for n in &nars {
        assert_eq!(
            get(&s.cache, &format!("/nar/{n}")).0,
            404,
            "{n} served before release"
        );
    }
    let out = nix_substitute(d.dir.path(), &s.cache, &s.pk, &fod);
    assert!(!out.status.success(), "FOD substituted before release");

    // A label added before airlock knew when C became the head does not count.
    let heads: Value = serde_json::from_slice(
        &std::fs::read(d.state().join("github").join(REPO).join("1234.json")).unwrap(),
    )
    .unwrap();
    let seen = heads[0]["at"].as_i64().unwrap();
    assert_eq!(heads[0]["source"], "observed");
    // Observed when the job arrived, not when its build was done.
    assert!(
        seen <= rec["finished_at"].as_i64().unwrap() - 2,
        "head first seen at {seen}, job finished {}",
        rec["finished_at"]
    );
    gh.event(1234, "labeled", "alice", seen - 30, LABEL);
    gh.set_pull(1234, &head, &[LABEL]);
    wait_until("the label to be seen", 30, d, || {
        decision(d, &head).contains("must be added again")
    });

    // A forged webhook claiming an earlier push: rejected, logged, nothing released.
    let push = webhook_body("synchronize", REPO, 1234, &head, seen - 60, "");
    assert_eq!(deliver(&s.hook, None, "pull_request", &push), 401);
    wait_until("the rejection in the log", 30, d, || {
        d.log().contains("webhook rejected")
    });
    // The watcher looks again (polling): the forged push moved nothing.
    looks(&gh, d, 1234, 2);
    assert!(decision(d, &head).contains("must be added again"));
    assert_eq!(get(&s.cache, &narinfo_url(&top)).0, 404);

    // The genuine delivery: the push was before the label, so it is released.
    let t0 = Instant::now();
    assert_eq!(
        deliver(&s.hook, Some(&s.secret), "pull_request", &push),
        202
    );
    wait_until("release", 30, d, || {
        get(&s.cache, &narinfo_url(&top)).0 == 200
    });
    let out = nix_substitute(d.dir.path(), &s.cache, &s.pk, &top);
    assert!(
        out.status.success(),
        "nix-store -r from the cache: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("released {}s after the webhook", t0.elapsed().as_secs_f64());
    // Only after its fixed-output path was fetched again in a VM of its
    // own and came back the same (issue 30).
    let st = status_json(d, &head);
    let refetch = st["jobs"][0]["refetch"].as_str().unwrap_or_default();
    assert!(refetch.contains("fetched again: the same bytes"), "{st:#}");
    assert!(nix_substitute(d.dir.path(), &s.cache, &s.pk, &fod)
        .status
        .success());
    // The signatures are really checked: another key is refused.
    let other = gen_key(d.dir.path(), "someone-else").1;
    let out = nix_substitute(d.dir.path(), &s.cache, &other, &top);
    assert!(!out.status.success(), "substituted with an untrusted key");

    // narinfos carry our signature; NARs serve ranges.
    let (_, ni) = get(&s.cache, &narinfo_url(&top));
    let ni = String::from_utf8(ni).unwrap();
    assert!(ni.contains("Sig: airlock-test-1:"), "{ni}");
    let url = ni
        .lines()
        .find_map(|l| l.strip_prefix("URL: "))
        .unwrap()
        .to_owned();
    let (st, hs, body) = http(
        &s.cache,
        "GET",
        &format!("/{url}"),
        &[("Range", "bytes=0-15")],
        b"",
    );
    assert_eq!(st, 206);
    assert_eq!(body.len(), 16);
    assert!(hs["content-range"].starts_with("bytes 0-15/"), "{hs:?}");
    assert_eq!(&body[8..], b"nix-arch", "NAR magic");
    assert_eq!(get(&s.cache, "/../quarantine").0, 404);

    let st = status_json(d, &head);
    assert_eq!(st["jobs"][0]["released"]["how"]["by"], "label");
    assert_eq!(st["jobs"][0]["released"]["how"]["actor"], "alice");
    let human = String::from_utf8_lossy(&d.ctl(&["release", "status", &head]).stdout).into_owned();
    assert!(human.contains("RELEASED"), "{human}");

    // GitHub was asked politely: conditional requests, pages followed.
    let (nm, later, auth) = gh.with(|g| (g.not_modified, g.later_pages_served, g.auth.clone()));
    assert!(nm > 0, "no 304s: ETags not used");
    assert!(later > 0, "pagination not followed");
    assert!(
        auth.iter().all(Option::is_none),
        "no token configured, none sent"
    );

    // Removing the label after release: logged; the outputs stay released.
    gh.event(1234, "unlabeled", "bob", now(), LABEL);
    gh.set_pull(1234, &head, &[]);
    let un = webhook_body("unlabeled", REPO, 1234, &head, now(), LABEL);
    assert_eq!(s.deliver("pull_request", &un), 202);
    wait_until("unlabel logged", 30, d, || {
        d.log().contains("label removed after release")
    });
    assert_eq!(get(&s.cache, &narinfo_url(&top)).0, 200);

    // Retention: an unreleased job of another commit expires; the released stay.
    let other_commit = "0123456789abcdef0123456789abcdef01234567";
    let other_job = craft_job(d, other_commit, 1235, "leftover");
    let out = d.ctl(&["--json", "gc"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let g: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(g["expired_unreleased"], serde_json::json!([other_job]));
    assert_eq!(g["expired_released"], serde_json::json!([]));
    assert!(!d.state().join("quarantine").join(other_commit).exists());
    assert!(qdir.exists());
    assert!(nix_substitute(d.dir.path(), &s.cache, &s.pk, &top)
        .status
        .success());
}

fn craft_job(d: &Daemon, commit: &str, pr: u64, name: &str) -> String {
    common::github::craft_job(&d.state(), commit, REPO, pr, name).0
}

fn job_path(d: &Daemon, commit: &str, job: &str) -> String {
    let m: Value = serde_json::from_slice(
        &std::fs::read(
            d.state()
                .join("quarantine")
                .join(commit)
                .join(job)
                .join("manifest.json"),
        )
        .unwrap(),
    )
    .unwrap();
    m["paths"][0].as_str().unwrap().to_owned()
}

fn sha(tag: &str) -> String {
    use sha2::Digest;
    let h = sha2::Sha256::digest(tag.as_bytes());
    h[..20].iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn release_rule_cases() {
    if !prerequisites("release_rule_cases") {
        return;
    }
    let gh = FakeGitHub::start();
    gh.set_permission("alice", "write");
    gh.set_permission("mallory", "read");
    let s = setup(&gh, "trusted", "[retention]\nunreleased_hours = 0\n");
    let d = &s.d;
    let t0 = now() - 3600;
    let hook = |pr: u64, head: &str, at: i64| {
        let b = webhook_body("synchronize", REPO, pr, head, at, "");
        assert_eq!(s.deliver("pull_request", &b), 202);
    };

    // 101: labelled on A, then force-pushed to B.
    let (a, b) = (sha("a"), sha("b"));
    hook(101, &a, t0);
    gh.event(101, "labeled", "alice", t0 + 10, LABEL);
    gh.event(101, "head_ref_force_pushed", "mallory", t0 + 20, &b);
    gh.set_pull(101, &b, &[LABEL]);
    // 102: labelled, then an ordinary push made C the head.
    let c = sha("c");
    gh.event(102, "labeled", "alice", t0 + 10, LABEL);
    hook(102, &c, t0 + 20);
    gh.set_pull(102, &c, &[LABEL]);
    // 103: labelled and unlabelled again before the watcher looked.
    let dd = sha("d");
    hook(103, &dd, t0);
    gh.event(103, "labeled", "alice", t0 + 10, LABEL);
    gh.event(103, "unlabeled", "bob", t0 + 15, LABEL);
    gh.set_pull(103, &dd, &[]);
    // 104: labelled by someone without write access.
    let e = sha("e");
    hook(104, &e, t0);
    gh.event(104, "labeled", "mallory", t0 + 10, LABEL);
    gh.set_pull(104, &e, &[LABEL]);
    // 105: the rule holds.
    let f = sha("f");
    hook(105, &f, t0);
    gh.event(105, "referenced", "alice", t0 + 5, "");
    gh.event(105, "labeled", "alice", t0 + 10, LABEL);
    gh.set_pull(105, &f, &[LABEL]);

    // 106: properly labelled, but the history is longer than the watcher
    // reads (51 pages here): it does not decide on part of it.
    let g6 = sha("g");
    hook(106, &g6, t0);
    for i in 0..101 {
        gh.event(106, "referenced", "bob", t0 + 1 + i, "");
    }
    gh.event(106, "labeled", "alice", t0 + 200, LABEL);
    gh.set_pull(106, &g6, &[LABEL]);

    // 107: no webhook; the ordinary push is dated by the fork's repository
    // activity, so a label added before airlock first looked still counts.
    let h7 = sha("h");
    gh.push_activity(107, &h7, t0);
    gh.event(107, "labeled", "alice", t0 + 10, LABEL);
    gh.set_pull(107, &h7, &[LABEL]);

    // 108: the author pushed while the PR was closed, a committer labelled
    // the closed PR, then it was reopened with the pushed head: the push
    // does not date the headship, the reopening ends what came before.
    let i8 = sha("i");
    gh.push_activity(108, &i8, t0);
    gh.event(108, "labeled", "alice", t0 + 10, LABEL);
    gh.event(108, "reopened", "mallory", t0 + 20, "");
    gh.set_pull(108, &i8, &[LABEL]);

    // 109: the rule holds, but one job of the head was merged onto a branch
    // the PR does not target (a forged `target_branch`, or a retargeted
    // PR): only the job merged onto the PR's base (`master`) is released.
    let j9 = sha("j");
    hook(109, &j9, t0);
    gh.event(109, "labeled", "alice", t0 + 10, LABEL);
    gh.set_pull(109, &j9, &[LABEL]);
    // 110: the rule holds, but the manifest predates the recorded origin.
    let k10 = sha("k");
    hook(110, &k10, t0);
    gh.event(110, "labeled", "alice", t0 + 10, LABEL);
    gh.set_pull(110, &k10, &[LABEL]);

    let ja = craft_job(d, &a, 101, "a");
    let jb = craft_job(d, &b, 101, "b");
    let jc = craft_job(d, &c, 102, "c");
    let jd = craft_job(d, &dd, 103, "d");
    let je = craft_job(d, &e, 104, "e");
    let jf = craft_job(d, &f, 105, "f");
    let jg = craft_job(d, &g6, 106, "g");
    let jh = craft_job(d, &h7, 107, "h");
    let ji = craft_job(d, &i8, 108, "i");
    let on = |commit: &str, pr: u64, name: &str, base: Option<&str>| {
        common::github::craft_job_on(&d.state(), commit, REPO, pr, name, base).0
    };
    let j9_evil = on(&j9, 109, "j-evil", Some("evil-base"));
    let j9_ok = craft_job(d, &j9, 109, "j");
    let jk = on(&k10, 110, "k", None);
    let served =
        |commit: &str, job: &str| get(&s.cache, &narinfo_url(&job_path(d, commit, job))).0 == 200;

    wait_until("105 released", 30, d, || served(&f, &jf));
    wait_until("107 released", 30, d, || served(&h7, &jh));
    wait_until("109 (onto master) released", 30, d, || served(&j9, &j9_ok));
    assert_eq!(
        status_json(d, &h7)["jobs"][0]["released"]["how"]["head_source"],
        "activity"
    );
    looks(&gh, d, 101, 3); // more polls: nothing else moves
    let expected = [
        (&a, &ja, "no longer the PR's head"),
        (&b, &jb, "must be added again"),
        (&c, &jc, "must be added again"),
        (&dd, &jd, "removed by bob"),
        (&e, &je, "may not release"),
        (&g6, &jg, "longer than 50 pages"),
        (&i8, &ji, "must be added again"),
        (&k10, &jk, "does not record the branch"),
    ];
    for (commit, job, why) in expected {
        let dec = decision(d, commit);
        assert!(dec.contains(why), "{commit}: {dec}");
        assert!(!served(commit, job), "{commit} released");
    }

    assert!(
        !served(&j9, &j9_evil),
        "a job merged onto evil-base was released"
    );
    let st = status_json(d, &j9);
    let evil = st["prs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["base_branch"] == "evil-base")
        .unwrap_or_else(|| panic!("no evil-base entry: {st}"));
    let why = evil["decision"]["hold"].as_str().unwrap_or_default();
    assert!(
        why.contains("`evil-base`") && why.contains("built again"),
        "{why}"
    );

    // Removing the label after release (no webhook: polling sees it) is
    // logged; the outputs stay released.
    gh.event(105, "unlabeled", "bob", now() + 1, LABEL);
    gh.set_pull(105, &f, &[]);
    wait_until("unlabel seen by polling", 30, d, || {
        d.log().contains("label removed after release") && d.log().contains(&jf)
    });
    assert!(served(&f, &jf));

    // The new head gets its own label: B is released, A never.
    gh.event(101, "labeled", "alice", now(), LABEL);
    wait_until("B released", 30, d, || served(&b, &jb));
    assert!(!served(&a, &ja));

    // An operator may release by hand, with a reason, and it is logged.
    let out = d.ctl(&["release", &e]);
    assert!(!out.status.success(), "released without --reason");
    let out = d.ctl(&["release", &e, "--reason", "checked the diff by hand"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(served(&e, &je));
    assert_eq!(
        status_json(d, &e)["jobs"][0]["released"]["how"]["by"],
        "operator"
    );
    assert!(d.log().contains("operator release by hand"));

    // Retention: unreleased outputs expire, released ones stay served.
    let out = d.ctl(&["--json", "gc"]);
    let g: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut expired: Vec<String> = serde_json::from_value(g["expired_unreleased"].clone()).unwrap();
    expired.sort();
    let mut want = vec![
        ja.clone(),
        jc.clone(),
        jd.clone(),
        jg.clone(),
        ji.clone(),
        j9_evil.clone(),
        jk.clone(),
    ];
    want.sort();
    assert_eq!(expired, want);
    for (commit, job) in [(&b, &jb), (&e, &je), (&f, &jf), (&j9, &j9_ok)] {
        assert!(served(commit, job), "{commit} no longer served after gc");
    }

    // A community builder with the same, properly labelled PR never releases.
    let s2 = setup(&gh, "community", "");
    let jf2 = craft_job(&s2.d, &f, 105, "f");
    wait_until("the community builder's decision", 30, &s2.d, || {
        decision(&s2.d, &f).contains("community")
    });
    assert!(
        std::net::TcpStream::connect(&s2.cache).is_err(),
        "community builder serves a cache"
    );
    let out = s2.d.ctl(&["release", &f, "--reason", "x"]);
    assert!(!out.status.success());
    let cache_dir: Vec<PathBuf> = std::fs::read_dir(s2.d.state().join("cache"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "narinfo"))
        .collect();
    assert!(cache_dir.is_empty(), "{cache_dir:?}");
    let _ = jf2;
}

#[test]
fn github_token_and_rate_limit() {
    if !prerequisites("github_token_and_rate_limit") {
        return;
    }
    let gh = FakeGitHub::start();
    let tok = tempfile::tempdir().unwrap();
    let tok_file = tok.path().join("token");
    std::fs::write(&tok_file, "ghp_airlocktest\n").unwrap();
    gh.with(|g| g.remaining = 2);
    let s = setup(
        &gh,
        "trusted",
        &format!("token_file = \"{}\"\n", tok_file.display()),
    );
    let x = sha("x");
    gh.set_pull(201, &x, &[]);
    craft_job(&s.d, &x, 201, "x");
    // Two requests left: the watcher spends them, then pauses until the
    // reset GitHub announced, and says so.
    wait_until("rate limit reached", 30, &s.d, || {
        decision(&s.d, &x).contains("rate limit exhausted")
    });
    let n = gh.with(|g| g.requests);
    // A negative check needs time to pass: three poll intervals (1 s
    // each) in which a watcher that ignored the limit would have asked.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(gh.with(|g| g.requests), n, "requests while rate limited");
    assert!(s.d.log().contains("GitHub rate limit reached"));
    // The token from the file went with every request.
    let auth = gh.with(|g| g.auth.clone());
    assert!(!auth.is_empty());
    for a in auth {
        let a = a.expect("Authorization header");
        assert!(a.ends_with(" ghp_airlocktest"), "{a}");
    }
}

/// The NixOS builder test (nixos-tests/builder.nix) releases through
/// nixos-tests/github.py: its REST stand-in and its signed webhook. The
/// NixOS test cannot run here (no nested KVM), so this runs the same script,
/// with the same state and delivery, against a real airlockd: the release
/// follows from the webhook alone (the poll interval is an hour).
#[test]
fn the_nixos_tests_github_stand_in_releases_a_labelled_commit() {
    const TEST: &str = "the_nixos_tests_github_stand_in_releases_a_labelled_commit";
    if !prerequisites(TEST) {
        return;
    }
    let repo_root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let script = repo_root.join("nixos-tests/github.py");
    let fixtures = repo_root.join("tests/fixtures/github");
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("github-state.json");
    let port = free_port();
    let mut server = std::process::Command::new("python3")
        .arg(&script)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--fixtures")
        .arg(&fixtures)
        .arg("--state")
        .arg(&state)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("python3 nixos-tests/github.py");
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let t0 = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "github.py did not listen"
        );
        if let Some(st) = server.try_wait().unwrap() {
            panic!("github.py exited: {st}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _server = Kill(server);

    let s = ReleaseDaemon::start_at(
        &format!("http://127.0.0.1:{port}"),
        "trusted",
        3600,
        // As the NixOS test's settings: its repository is not nixpkgs.
        "repositories = [\"airlock/fixture\"]",
        "[retention]\nunreleased_hours = 0\n",
    );
    let d = &s.d;
    let fixture_repo = "airlock/fixture";
    let head = sha("nixos-test-head");
    let (job, path) = common::github::craft_job(&d.state(), &head, fixture_repo, 42, "n");
    // The state the NixOS test writes: PR 42's head pushed ten minutes ago,
    // labelled by a committer five minutes later.
    let t = now();
    let st = serde_json::json!({
        "pulls": {"42": {
            "head": head,
            "labels": [LABEL],
            "events": [{"event": "labeled", "actor": "alice", "label": LABEL, "at": t - 300}],
            "pushes": [{"sha": head, "at": t - 600}],
        }},
        "permissions": {"alice": "write"},
    });
    std::fs::write(&state, serde_json::to_vec(&st).unwrap()).unwrap();
    assert_eq!(get(&s.cache, &narinfo_url(&path)).0, 404);

    let secret = tmp.path().join("webhook-secret");
    std::fs::write(&secret, &s.secret).unwrap();
    let deliver = |secret: &std::path::Path| {
        std::process::Command::new("python3")
            .arg(&script)
            .args([
                "deliver",
                "--url",
                &format!("http://{}/github-webhook", s.hook),
            ])
            .arg("--secret-file")
            .arg(secret)
            .arg("--fixtures")
            .arg(&fixtures)
            .args(["--action", "labeled", "--repo", fixture_repo, "--pr", "42"])
            .args(["--head", &head])
            .output()
            .unwrap()
    };
    // A delivery signed with another secret is refused (exit 1, 401).
    let wrong = tmp.path().join("wrong-secret");
    std::fs::write(&wrong, "not the secret").unwrap();
    let out = deliver(&wrong);
    assert!(!out.status.success(), "forged delivery accepted");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "401");
    assert_eq!(get(&s.cache, &narinfo_url(&path)).0, 404);

    let out = deliver(&secret);
    assert!(
        out.status.success(),
        "deliver: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until("released after the webhook", 60, d, || {
        get(&s.cache, &narinfo_url(&path)).0 == 200
    });
    let v = status_json(d, &head);
    assert!(v["prs"][0]["decision"].get("release").is_some(), "{v:#}");
    assert_eq!(v["jobs"][0]["job_id"], job, "{v:#}");
    let how = &v["jobs"][0]["released"]["how"];
    assert_eq!(how["by"], "label", "{v:#}");
    assert_eq!(how["actor"], "alice", "{v:#}");
    assert_eq!(how["head_source"], "activity", "{v:#}");
}
