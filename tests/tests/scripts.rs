//! Every shell script of the repository passes shellcheck (warnings and
//! errors; Debian's `shellcheck`, installed by `scripts/setup.sh test`).
//! No VM, no daemon: this file does not use the harness.

use std::path::Path;
use std::process::Command;

fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

#[test]
fn every_script_passes_shellcheck() {
    let test = "every_script_passes_shellcheck";
    if Command::new("shellcheck")
        .arg("--version")
        .output()
        .is_err()
    {
        let msg = format!("SKIPPED {test}: missing shellcheck (apt-get install shellcheck)");
        eprintln!("{msg}");
        println!("{msg}");
        assert!(
            std::env::var("AIRLOCK_REQUIRE_E2E").as_deref() != Ok("1"),
            "{msg}"
        );
        return;
    }
    let files = Command::new("git")
        .current_dir(repo())
        .args(["ls-files", "*.sh"])
        .output()
        .expect("git ls-files");
    let files: Vec<String> = String::from_utf8_lossy(&files.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    assert!(
        files.iter().any(|f| f == "scripts/setup.sh"),
        "no scripts found: {files:?}"
    );
    let out = Command::new("shellcheck")
        .current_dir(repo())
        .args(["-S", "warning", "-x"])
        .args(&files)
        .output()
        .expect("shellcheck");
    assert!(
        out.status.success(),
        "shellcheck on {} scripts:\n{}",
        files.len(),
        String::from_utf8_lossy(&out.stdout)
    );
    println!("shellcheck: {} scripts clean", files.len());
}
