//! Helpers of the library's own unit tests.

/// A test that cannot run here says so loudly (`SKIPPED: …`, which
/// scripts/test.sh lists) and passes, except under `AIRLOCK_REQUIRE_E2E=1`
/// (CI), where it fails.
pub fn skipped(msg: &str) {
    let msg = format!("SKIPPED: {msg}");
    eprintln!("{msg}");
    println!("{msg}");
    assert!(
        std::env::var("AIRLOCK_REQUIRE_E2E").as_deref() != Ok("1"),
        "{msg}"
    );
}
