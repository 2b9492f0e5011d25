//! A job whose closure does not fit its `/nix` disk fails with the reason,
//! and the builder goes on: the next job on the same daemon succeeds.

use airlock_e2e as common;

use common::*;

#[test]
fn a_closure_larger_than_the_nix_disk_fails_clearly() {
    if !prerequisites("a_closure_larger_than_the_nix_disk_fails_clearly") {
        return;
    }
    // 192 MiB of /nix; the `big` fixture writes 300 MiB.
    let d = Daemon::builder().with(|c| c.vm.nix_disk_mib = 192).start();
    let (repo, head) = fixture_repo(d.dir.path(), &[]);
    let id = d.submit(&repo, &head, &["big"]);
    let rec = d.wait(&id, 900);
    let log = d.build_log(&id);
    let st = status(&rec);
    assert!(
        st.contains("no space left for the closure") && st.contains("raise vm.nix_disk_mib"),
        "status {st}\n{log}"
    );
    assert!(
        log.contains("airlock: no space left for the closure"),
        "{log}"
    );
    assert!(rec["result"]["quarantine"].is_null(), "{rec:#}");
    // The host is unaffected: the job's disks are gone, the next job runs.
    let dir = d.state().join("jobs").join(&id);
    for f in ["nix.img", "input.img", "export.img"] {
        assert!(!dir.join(f).exists(), "{f} left behind");
    }
    let next = d.submit(&repo, &head, &["leaf"]);
    let rec = d.wait(&next, 900);
    assert_eq!(status(&rec), "Success", "{rec:#}");
}
