//! Every shell script of the repository passes shellcheck (warnings and
//! errors; Debian's `shellcheck`, installed by `scripts/setup.sh test`).
//! No VM, no daemon.

use airlock_e2e as common;
use std::path::Path;
use std::process::Command;

fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

#[test]
fn every_script_passes_shellcheck() {
    let test = "every_script_passes_shellcheck";
    let missing: Vec<String> = if common::have("shellcheck") {
        vec![]
    } else {
        vec!["shellcheck (apt-get install shellcheck)".into()]
    };
    if !common::ready_or_skip(test, &missing) {
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

/// Every test file under `tests/tests/<category>/` is a `[[test]]` target
/// of `tests/Cargo.toml` (cargo finds only the top level by itself, so a
/// file without its entry would never run), and none is left at the top.
#[test]
fn every_test_file_is_a_test_target() {
    let here = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let manifest = std::fs::read_to_string(here.join("Cargo.toml")).unwrap();
    let mut seen = 0;
    for cat in std::fs::read_dir(here.join("tests")).unwrap().flatten() {
        let p = cat.path();
        assert!(
            p.is_dir(),
            "{} is not in a category directory (functional, security, platform, packaging)",
            p.display()
        );
        for f in std::fs::read_dir(&p).unwrap().flatten() {
            let rel = format!(
                "tests/{}/{}",
                cat.file_name().to_string_lossy(),
                f.file_name().to_string_lossy()
            );
            assert!(
                manifest.contains(&format!("path = \"{rel}\"")),
                "{rel} has no [[test]] entry in tests/Cargo.toml"
            );
            seen += 1;
        }
    }
    assert!(seen >= 20, "only {seen} test files found");
}
