//! Substitution for real: a binary cache made by the host's Nix (`nix copy
//! --to file://…`, signed with a test key) is served over HTTP from an
//! "internet" host (203.0.113.10, a namespace this test creates); airlockd,
//! in a "builder" namespace, has it as its only upstream. Jobs' fetch VMs
//! substitute through airlockd's caching proxy; only the upstream cache is a
//! stand-in for cache.nixos.org.

use airlock_e2e as common;

use std::path::Path;
use std::process::Command;

use common::internet::Internet;
use common::*;

/// `nix copy` the closure of `path` from the private `store` into the
/// binary cache directory `cache`, signed with the secret key file `sk`.
fn copy_to_cache(store: &Path, cache: &Path, sk: &Path, path: &str) {
    let out = Command::new("nix")
        .args(["--extra-experimental-features", "nix-command", "copy"])
        .arg("--store")
        .arg(store)
        .arg("--to")
        .arg(format!(
            "file://{}?secret-key={}&compression=xz",
            cache.display(),
            sk.display()
        ))
        .arg(path)
        .env("XDG_CACHE_HOME", store.join("xdg-cache"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "nix copy: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn name_of(p: &str) -> &str {
    p.rsplit('/').next().unwrap().split_once('-').unwrap().1
}

#[test]
fn fetch_phase_substitutes_through_the_builders_cache() {
    if !prerequisites("fetch_phase_substitutes_through_the_builders_cache") {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let (repo, head) = fixture_repo(work.path(), &[]);
    // The upstream: chain-2 and chain-1 signed by the trusted key, leaf by
    // a key nobody trusts.
    let (sk, pk) = github::gen_key(work.path(), "upstream-test-1");
    let (evil_sk, _) = github::gen_key(work.path(), "evil-1");
    let store = work.path().join("host-store");
    let cache = work.path().join("cache");
    let chain2 = host_build(&store, &repo, "chain-2");
    let chain2_top = chain2
        .iter()
        .find(|p| p.ends_with("-airlock-chain-2"))
        .unwrap()
        .clone();
    copy_to_cache(&store, &cache, &sk, &chain2_top);
    let leaf = host_build(&store, &repo, "leaf");
    copy_to_cache(&store, &cache, &evil_sk, &leaf[0]);
    let net = Internet::up(&cache);

    let config = format!(
        "max_jobs = 2\n[network]\ndns = [\"203.0.113.10\"]\n[nix]\nsubstituters = [\"http://203.0.113.10\"]\ntrusted_public_keys = [\"{pk}\"]\n"
    );
    let d = Daemon::builder().netns(&net.host).toml(&config).start();
    let a = d.submit(&repo, &head, &["chain"]);
    let c = d.submit(&repo, &head, &["leaf"]);

    // Job A: chain-1 and chain-2 come from the cache, chain-3 is built.
    let rec = d.wait(&a, 900);
    let log = d.build_log(&a);
    assert_eq!(status(&rec), "Success", "{rec:#}\n{log}\n{}", d.log());
    assert!(
        !log.contains("airlock-chain-2.drv") && !log.contains("airlock-chain-1.drv"),
        "substituted paths were built:\n{log}"
    );
    assert!(log.contains("airlock-chain-3.drv"), "{log}");
    let paths: Vec<String> = serde_json::from_value(rec["result"]["store_paths"].clone()).unwrap();
    let names: Vec<&str> = paths.iter().map(|p| name_of(p)).collect();
    assert_eq!(
        names,
        vec!["airlock-chain-3"],
        "quarantine holds only the job's own outputs"
    );
    assert_eq!(rec["realised"]["substituted"], 2, "{rec:#}");
    assert_eq!(rec["realised"]["built"], 1, "{rec:#}");
    let sa = &rec["substitution"];
    assert_eq!(sa["nars_served"], 2, "{rec:#}");
    assert!(sa["bytes_upstream"].as_u64().unwrap() > 0, "{rec:#}");
    // The quarantined narinfo refers to the substituted chain-2.
    let q = Path::new(rec["result"]["quarantine"].as_str().unwrap());
    let ni = std::fs::read_dir(q)
        .unwrap()
        .flatten()
        .find(|e| e.path().extension().is_some_and(|x| x == "narinfo"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .unwrap();
    assert!(ni.contains("-airlock-chain-2"), "{ni}");
    assert!(log.contains("2 paths substituted"), "{log}");

    // Job C: leaf's narinfo is signed by an untrusted key: refused, built.
    let rec = d.wait(&c, 900);
    let log = d.build_log(&c);
    assert_eq!(status(&rec), "Success", "{rec:#}\n{log}");
    assert!(
        log.contains("refused: no valid signature by a trusted key (signed by evil-1)"),
        "{log}"
    );
    assert!(log.contains("airlock-leaf.drv"), "leaf was built: {log}");
    assert_eq!(rec["realised"]["substituted"], 0, "{rec:#}");
    assert_eq!(rec["substitution"]["narinfos_refused"], 1, "{rec:#}");
    let paths: Vec<String> = serde_json::from_value(rec["result"]["store_paths"].clone()).unwrap();
    assert_eq!(paths, leaf, "the job's own build of leaf is quarantined");

    // Job B: the same closure again: nothing from upstream.
    let b = d.submit(&repo, &head, &["chain"]);
    let rec = d.wait(&b, 900);
    let log = d.build_log(&b);
    assert_eq!(status(&rec), "Success", "{rec:#}\n{log}");
    assert_eq!(rec["realised"]["substituted"], 2, "{rec:#}");
    assert_eq!(rec["substitution"]["bytes_upstream"], 0, "{rec:#}");
    assert_eq!(rec["substitution"]["nars_served"], 2, "{rec:#}");
    let show = String::from_utf8_lossy(&d.ctl(&["show", &b]).stdout).into_owned();
    assert!(
        show.contains("2 NARs") && show.contains("0.0 MiB downloaded from upstream"),
        "{show}"
    );
    assert!(
        show.contains("1 derivations built, 2 paths substituted"),
        "{show}"
    );
}
