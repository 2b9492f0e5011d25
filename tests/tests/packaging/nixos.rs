//! The Nix side (issue 13), checked against a nixpkgs checkout in
//! `$AIRLOCK_NIXPKGS` with `../shared/tools/eval-module.sh`
//! (`$AIRLOCK_SHARED`, default `<repo>/../shared`). Nothing is built.
//!
//! A nixpkgs checkout cannot be installed here from a package registry, so
//! the tests that evaluate nixpkgs are an optional group: without
//! `AIRLOCK_NIXPKGS` each prints `OPTIONAL NOT RUN`. What needs no nixpkgs
//! runs everywhere: every `.nix` file parses; the example configurations
//! (`nixos/examples/*.toml`, what the module renders for the examples) and
//! the bad configurations the module refuses go through
//! `airlockd --check-config`.
//!
//! With nixpkgs:
//! - the rendered examples are exactly `nixos/examples/*.toml` (store paths
//!   aside);
//! - the module evaluates on nixos/examples/{minimal,full}.nix, and the
//!   airlockd unit, its hardening and devices, the config file, the user,
//!   the firewall port and the gc timer are what they should be;
//! - the TOML the module renders is accepted by `airlockd --check-config`;
//! - each bad configuration is refused: by the module's own assertions
//!   (secrets in the store, the firewall) at evaluation, or by airlockd's
//!   check of the rendered file (what `checkConfig` runs when the system is
//!   built), in airlockd's words;
//! - nixos/examples/old-names.nix (the options of earlier versions) renders
//!   what full.nix renders, with a rename warning for each;
//! - the package, the guest image and every NixOS test instantiate to a
//!   `.drv` (`--option max-jobs 0`, a private store: the host's Nix database
//!   is never written), and the guest image's kernel is the trimmed one
//!   configured from vm-images/guest/kernel.config;
//! - the NixOS tests' Python scripts pass the lint the test driver runs;
//! - the options table in docs/nixos.md is what nixos/options-doc.nix
//!   generates from the module (scripts/gen-nixos-options.sh rewrites it).

use airlock_e2e as common;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo")
        .to_path_buf()
}

fn eval_module_sh() -> PathBuf {
    std::env::var_os("AIRLOCK_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("../shared"))
        .join("tools/eval-module.sh")
}

fn snapshot() -> Option<PathBuf> {
    let p = PathBuf::from(std::env::var_os("AIRLOCK_NIXPKGS")?);
    p.join("nixos/lib/eval-config.nix").exists().then_some(p)
}

/// What a test needs besides `nix-instantiate`.
#[derive(Clone, Copy, PartialEq)]
enum Needs {
    /// Nothing else.
    Nix,
    /// The nixpkgs snapshot.
    Snapshot,
    /// The snapshot, eval-module.sh and a built airlockd.
    SnapshotAndTools,
}

/// The nixpkgs checkout (an optional part: `OPTIONAL NOT RUN` without it),
/// then what setup.sh installs, or None after a loud SKIPPED (a panic with
/// AIRLOCK_REQUIRE_E2E=1).
fn prerequisites(test: &str, needs: Needs) -> Option<PathBuf> {
    let np = snapshot();
    if needs != Needs::Nix
        && np.is_none()
        && !common::optional_or_not_run(test, &[common::NEEDS_NIXPKGS.into()])
    {
        return None;
    }
    let mut missing = Vec::new();
    if !common::have("nix-instantiate") {
        missing.push("nix-instantiate (nix-bin; scripts/setup.sh installs it)".to_string());
    }
    if needs == Needs::SnapshotAndTools {
        if !eval_module_sh().exists() {
            missing.push(format!("{} (AIRLOCK_SHARED)", eval_module_sh().display()));
        }
        if !common::bin("airlockd").exists() {
            missing.push(format!(
                "{} (cargo build --workspace)",
                common::bin("airlockd").display()
            ));
        }
    }
    common::ready_or_skip(test, &missing).then(|| np.unwrap_or_default())
}

/// A built airlockd, or None after a loud SKIPPED.
fn airlockd_or_skip(test: &str) -> bool {
    let mut missing = Vec::new();
    if !common::bin("airlockd").exists() {
        missing.push(format!(
            "{} (cargo build --workspace)",
            common::bin("airlockd").display()
        ));
    }
    common::ready_or_skip(test, &missing)
}

/// Every `/nix/store/<hash>-<name>` prefix made the same, so a rendering
/// with another nixpkgs' store paths compares equal.
fn without_store_paths(v: &Value) -> Value {
    match v {
        Value::String(s) => {
            let mut out = String::new();
            let mut rest = s.as_str();
            while let Some(i) = rest.find("/nix/store/") {
                out.push_str(&rest[..i]);
                out.push_str("/nix/store/HASH-NAME");
                let after = &rest[i + "/nix/store/".len()..];
                let end = after.find('/').unwrap_or(after.len());
                rest = &after[end..];
            }
            out.push_str(rest);
            Value::String(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(without_store_paths).collect()),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, v)| (k.clone(), without_store_paths(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// `nixos/examples/<name>.toml` as a JSON value.
fn example_toml(name: &str) -> Value {
    let f = repo().join(format!("nixos/examples/{name}.toml"));
    let s = std::fs::read_to_string(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
    let t: toml::Value = toml::from_str(&s).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
    serde_json::to_value(t).unwrap()
}

/// The module renders exactly the committed example (store paths aside).
fn assert_renders_example(name: &str, cfg: &Value) {
    assert!(
        without_store_paths(cfg) == without_store_paths(&example_toml(name)),
        "the module's rendering of nixos/examples/{name}.nix is not nixos/examples/{name}.toml; \
         it renders (store paths are placeholders in the file):\n{}",
        to_toml(cfg)
    );
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `eval-module.sh --json <repo> <settings>`, with Nix's caches in `tmp`.
fn eval_module(np: &Path, tmp: &Path, settings: &Path) -> Output {
    Command::new(eval_module_sh())
        .arg("--json")
        .arg(repo())
        .arg(settings)
        .env("NIXPKGS", np)
        .env("XDG_CACHE_HOME", tmp.join("xdg-cache"))
        .env("TMPDIR", tmp)
        .stdin(Stdio::null())
        .output()
        .expect("eval-module.sh")
}

fn eval_ok(np: &Path, tmp: &Path, settings: &Path) -> Value {
    let out = eval_module(np, tmp, settings);
    assert!(
        out.status.success(),
        "eval-module.sh {} failed:\n{}",
        settings.display(),
        text(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("eval-module.sh --json output")
}

fn unit<'a>(report: &'a Value, name: &str) -> &'a str {
    report["units"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == name)
        .unwrap_or_else(|| panic!("no unit {name} in {report:#}"))["text"]
        .as_str()
        .unwrap()
}

fn lines(unit: &str) -> Vec<&str> {
    unit.lines().map(str::trim).collect()
}

/// The value the module hands the TOML generator for /etc/airlock/airlock.toml.
fn rendered(report: &Value) -> Value {
    let e = report["etc"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "airlock/airlock.toml")
        .unwrap_or_else(|| panic!("no /etc/airlock/airlock.toml in {report:#}"));
    assert_eq!(e["content"]["kind"], "generator-input", "{e:#}");
    assert_eq!(e["content"]["generator"], "airlock.toml", "{e:#}");
    serde_json::from_str(e["content"]["data"].as_str().unwrap()).unwrap()
}

/// JSON (what pkgs.formats.toml is given) to TOML: scalars and arrays of a
/// table first, then its sub-tables.
fn to_toml(v: &Value) -> String {
    fn key(k: &str) -> String {
        if !k.is_empty()
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            k.to_owned()
        } else {
            serde_json::to_string(k).unwrap()
        }
    }
    fn value(v: &Value) -> String {
        match v {
            Value::String(s) => serde_json::to_string(s).unwrap(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            Value::Array(a) => format!("[{}]", a.iter().map(value).collect::<Vec<_>>().join(", ")),
            Value::Object(m) => format!(
                "{{ {} }}",
                m.iter()
                    .map(|(k, v)| format!("{} = {}", key(k), value(v)))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Value::Null => panic!("null has no TOML form"),
        }
    }
    fn table(out: &mut String, path: &[String], v: &Value) {
        let m = v.as_object().expect("a table");
        for (k, v) in m.iter().filter(|(_, v)| !v.is_object()) {
            writeln!(out, "{} = {}", key(k), value(v)).unwrap();
        }
        for (k, v) in m.iter().filter(|(_, v)| v.is_object()) {
            let mut p = path.to_vec();
            p.push(key(k));
            writeln!(out, "\n[{}]", p.join(".")).unwrap();
            table(out, &p, v);
        }
    }
    let mut out = String::new();
    table(&mut out, &[], v);
    out
}

/// `airlockd --check-config FILE` on `toml`: (success, stdout+stderr).
fn check_config(tmp: &Path, name: &str, toml: &str) -> (bool, String) {
    let f = tmp.join(format!("{name}.toml"));
    std::fs::write(&f, toml).unwrap();
    let out = Command::new(common::bin("airlockd"))
        .arg("--check-config")
        .arg(&f)
        .env("RUST_BACKTRACE", "0")
        .env("RUST_LIB_BACKTRACE", "0")
        .output()
        .expect("airlockd");
    (
        out.status.success(),
        format!("{}{}", text(&out.stdout), text(&out.stderr)),
    )
}

fn assert_accepted(tmp: &Path, name: &str, cfg: &Value) {
    let toml = to_toml(cfg);
    let (ok, said) = check_config(tmp, name, &toml);
    assert!(
        // It prints the effective settings, defaults filled in.
        ok && said.contains("config OK")
            && said.contains("[limits]")
            && said.contains("job_timeout_secs = "),
        "airlockd --check-config refused the module's {name} config:\n{said}\n--- TOML:\n{toml}"
    );
    // And the daemon's own type (deny_unknown_fields) takes the very value.
    serde_json::from_value::<airlock::config::Config>(cfg.clone())
        .unwrap_or_else(|e| panic!("{name}: {e}\n{cfg:#}"));
}

fn nix_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let p = e.path();
        let name = e.file_name();
        let name = name.to_string_lossy();
        if e.file_type().unwrap().is_dir() {
            if !matches!(name.as_ref(), "target" | ".git" | "corpus" | "artifacts") {
                nix_files(&p, out);
            }
        } else if name.ends_with(".nix") {
            out.push(p);
        }
    }
}

#[test]
fn every_nix_file_parses() {
    if prerequisites("every_nix_file_parses", Needs::Nix).is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    nix_files(&repo(), &mut files);
    for must in [
        "flake.nix",
        "default.nix",
        "nixos/module.nix",
        "nixos/package.nix",
        "vm-images/nix/guest.nix",
        "nixos-tests/default.nix",
    ] {
        assert!(files.contains(&repo().join(must)), "{must} missing");
    }
    for f in &files {
        let out = Command::new("nix-instantiate")
            .arg("--parse")
            .arg(f)
            .env("XDG_CACHE_HOME", tmp.path())
            .stdout(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{} does not parse:\n{}",
            f.display(),
            text(&out.stderr)
        );
    }
    println!("{} .nix files parse", files.len());
}

/// What both examples must show about the airlockd unit.
fn check_airlockd_unit(report: &Value) {
    let u = unit(report, "airlockd.service");
    let l = lines(u);
    let exec = l
        .iter()
        .find(|l| l.starts_with("ExecStart="))
        .expect("ExecStart");
    let cmd = exec.trim_start_matches("ExecStart=");
    let (bin, config) = cmd.split_once(" --config ").expect("--config");
    assert!(
        bin.starts_with("/nix/store/")
            && bin.ends_with("/bin/airlockd")
            && bin.contains("-airlock-"),
        "{exec}"
    );
    assert!(
        config.starts_with("/nix/store/")
            && config.ends_with("-airlock.toml")
            && !config.contains(' '),
        "{exec}"
    );
    for want in [
        "Type=notify",
        "NotifyAccess=main",
        "User=root",
        "CapabilityBoundingSet=CAP_NET_ADMIN",
        "AmbientCapabilities=CAP_NET_ADMIN",
        "NoNewPrivileges=true",
        "StateDirectory=airlock",
        "CacheDirectory=airlock",
        "RuntimeDirectory=airlock",
        "RuntimeDirectoryPreserve=true",
        "ProtectSystem=strict",
        "ProtectHome=tmpfs",
        "PrivateTmp=true",
        "PrivateMounts=true",
        "ProtectKernelModules=true",
        "ProtectKernelLogs=true",
        "ProtectControlGroups=true",
        "ProtectClock=true",
        "ProtectHostname=true",
        "RestrictNamespaces=true",
        "RestrictSUIDSGID=true",
        "LockPersonality=true",
        "SystemCallArchitectures=native",
        "SystemCallFilter=@system-service",
        "SystemCallErrorNumber=EPERM",
        "UMask=0077",
        "KillMode=mixed",
        "DevicePolicy=closed",
        "WantedBy=multi-user.target",
    ] {
        assert!(l.contains(&want), "airlockd.service lacks {want}:\n{u}");
    }
    // Left out on purpose (each named in the module with its reason).
    for absent in [
        "ProtectKernelTunables=",
        "PrivateDevices=",
        "PrivateNetwork=",
        "MemoryDenyWriteExecute=",
        "DynamicUser=",
        "ProcSubset=",
    ] {
        assert!(
            !l.iter().any(|l| l.starts_with(absent)),
            "airlockd.service has {absent}:\n{u}"
        );
    }
    let devices: Vec<&str> = l
        .iter()
        .filter_map(|l| l.strip_prefix("DeviceAllow="))
        .collect();
    assert_eq!(
        devices,
        ["/dev/kvm rw", "/dev/net/tun rw", "/dev/vhost-net rw"],
        "{u}"
    );
    // root (see the module for why): no user is created; the group that
    // may call the D-Bus admin API is.
    assert_eq!(report["users"], serde_json::json!([]), "{report:#}");
    assert!(
        report["groups"].to_string().contains("airlock-admin"),
        "{report:#}"
    );
}

fn check_gc(report: &Value, calendar: &str) {
    let timer = unit(report, "airlock-gc.timer");
    assert!(
        lines(timer).contains(&format!("OnCalendar={calendar}").as_str()),
        "{timer}"
    );
    assert!(lines(timer).contains(&"Persistent=true"), "{timer}");
    assert!(lines(timer).contains(&"WantedBy=timers.target"), "{timer}");
    let svc = unit(report, "airlock-gc.service");
    assert!(
        lines(svc)
            .iter()
            .any(|l| l.starts_with("ExecStart=/nix/store/")
                && l.ends_with("/bin/airlockctl --socket /run/airlock/airlockd.sock gc")),
        "{svc}"
    );
    assert!(lines(svc).contains(&"Type=oneshot"), "{svc}");
}

fn check_paths(cfg: &Value) {
    let vm = &cfg["vm"];
    for (k, end) in [
        ("image_dir", "-airlock-guest-image"),
        ("agent", "/bin/airlock-agent"),
        ("qemu", "/bin/qemu-system-x86_64"),
        ("cloud_hypervisor", "/bin/cloud-hypervisor"),
        ("virtiofsd", "/bin/virtiofsd"),
    ] {
        let v = vm[k].as_str().unwrap_or_default();
        assert!(
            v.starts_with("/nix/store/") && v.ends_with(end),
            "vm.{k} = {v:?}"
        );
    }
    assert_eq!(cfg["state_dir"], "/var/lib/airlock");
    assert_eq!(cfg["socket"], "/run/airlock/airlockd.sock");
    assert_eq!(cfg["substituter"]["dir"], "/var/cache/airlock/substituter");
}

#[test]
fn module_minimal_example() {
    let Some(np) = prerequisites("module_minimal_example", Needs::SnapshotAndTools) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let t0 = std::time::Instant::now();
    let r = eval_ok(&np, tmp.path(), &repo().join("nixos/examples/minimal.nix"));
    println!("eval-module minimal: {:.1}s", t0.elapsed().as_secs_f64());
    check_airlockd_unit(&r);
    check_gc(&r, "daily");
    assert_eq!(
        r["firewall"]["allowedTCPPorts"],
        serde_json::json!([]),
        "no port unless asked"
    );
    let cfg = rendered(&r);
    check_paths(&cfg);
    // Nothing but the module's paths: every other key is airlockd's default.
    let keys: Vec<&String> = cfg.as_object().unwrap().keys().collect();
    assert_eq!(
        keys,
        ["dbus", "socket", "state_dir", "substituter", "vm"],
        "{cfg:#}"
    );
    assert_accepted(tmp.path(), "minimal", &cfg);
    assert_renders_example("minimal", &cfg);
}

#[test]
fn module_full_example() {
    let Some(np) = prerequisites("module_full_example", Needs::SnapshotAndTools) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    // full.nix sets the typed keys of `settings`; old-names.nix the same
    // through the options of earlier versions, each renamed (a warning).
    for example in ["full", "old-names"] {
        let t0 = std::time::Instant::now();
        let r = eval_ok(
            &np,
            tmp.path(),
            &repo().join(format!("nixos/examples/{example}.nix")),
        );
        println!("eval-module {example}: {:.1}s", t0.elapsed().as_secs_f64());
        let warnings = r["warnings"].to_string();
        if example == "full" {
            assert!(!warnings.contains("renamed"), "{warnings}");
        } else {
            for (old, new) in [
                ("maxJobs", "settings.max_jobs"),
                ("vm.memory", "settings.vm.memory_mib"),
                ("vm.timeout", "settings.limits.job_timeout_secs"),
                ("intake.amqp.passwordFile", "settings.amqp.password_file"),
                ("release.githubTokenFile", "settings.github.token_file"),
                ("cache.listenAddress", "settings.cache.listen"),
                ("sponsor", "settings.sponsor"),
            ] {
                assert!(
                    warnings.contains(&format!("services.airlock.{old}' defined in"))
                        && warnings.contains(&format!("renamed to `services.airlock.{new}'")),
                    "no rename warning {old} -> {new}: {warnings}"
                );
            }
        }
        check_full_example(&tmp, &r);
    }
}

/// What full.nix (and old-names.nix) must render and make.
fn check_full_example(tmp: &tempfile::TempDir, r: &Value) {
    let r = r.clone();
    check_airlockd_unit(&r);
    check_gc(&r, "hourly");
    assert_eq!(
        r["firewall"]["allowedTCPPorts"],
        serde_json::json!([8080]),
        "cache.openFirewall"
    );
    let cfg = rendered(&r);
    check_paths(&cfg);
    // Each typed option on its airlockd key.
    for (path, want) in [
        ("/trust", serde_json::json!("trusted")),
        ("/max_jobs", serde_json::json!(2)),
        ("/vm/backend", serde_json::json!("qemu")),
        ("/vm/vcpus", serde_json::json!(4)),
        ("/vm/memory_mib", serde_json::json!(8192)),
        ("/vm/nix_disk_mib", serde_json::json!(65536)),
        ("/limits/job_timeout_secs", serde_json::json!(7200)),
        (
            "/amqp/url",
            serde_json::json!("amqps://builder-7@messages.ofborg.example.org/ofborg"),
        ),
        (
            "/amqp/password_file",
            serde_json::json!("/run/secrets/airlock/amqp-password"),
        ),
        ("/release/label", serde_json::json!("nonmalicious-checked")),
        (
            "/release/signing_key_file",
            serde_json::json!("/run/secrets/airlock/signing-key"),
        ),
        (
            "/github/token_file",
            serde_json::json!("/run/secrets/airlock/github-token"),
        ),
        (
            "/github/webhook_secret_file",
            serde_json::json!("/run/secrets/airlock/webhook-secret"),
        ),
        ("/cache/listen", serde_json::json!("0.0.0.0:8080")),
        ("/network/allow", serde_json::json!(["10.20.0.5:3128"])),
        ("/network/dns", serde_json::json!(["1.1.1.1", "9.9.9.9"])),
        (
            "/nix/substituters",
            serde_json::json!(["https://cache.nixos.org"]),
        ),
        (
            "/nix/trusted_public_keys",
            serde_json::json!(["cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY="]),
        ),
        // settings next to the typed options
        ("/identity", serde_json::json!("builder-7")),
        ("/github/webhook_listen", serde_json::json!("0.0.0.0:8443")),
        ("/retention/unreleased_hours", serde_json::json!(168)),
    ] {
        assert_eq!(cfg.pointer(path), Some(&want), "{path} in {cfg:#}");
    }
    // The sponsor, credited in every posted result.
    assert_eq!(
        cfg.get("sponsor"),
        Some(&serde_json::json!({"name": "Example Foundation", "url": "https://example.org"})),
        "{cfg:#}"
    );
    assert_accepted(tmp.path(), "full", &cfg);
    assert_renders_example("full", &cfg);
}

/// The example configurations the module's docs show, as the module
/// renders them (nixos/examples/*.toml): airlockd takes them. Needs no
/// nixpkgs; the module tests above keep the files true to the module.
#[test]
fn example_configs_pass_check_config() {
    if !airlockd_or_skip("example_configs_pass_check_config") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    for name in ["minimal", "full"] {
        let cfg = example_toml(name);
        assert_accepted(tmp.path(), name, &cfg);
        println!("nixos/examples/{name}.toml: config OK");
    }
    let full = example_toml("full");
    assert_eq!(full["trust"], "trusted");
    assert_eq!(full["sponsor"]["name"], "Example Foundation");
}

/// airlockd's half of the bad configurations below: it refuses each, in the
/// module's words where the module copies its check. Needs no nixpkgs.
#[test]
fn airlockd_refuses_the_bad_configs_the_module_refuses() {
    if !airlockd_or_skip("airlockd_refuses_the_bad_configs_the_module_refuses") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut n = 0;
    for b in BAD {
        if assert_airlockd_refuses(tmp.path(), b).is_some() {
            n += 1;
        }
    }
    println!("airlockd refused {n} bad configurations");
}

/// Where the module refuses a bad configuration.
#[derive(Clone, Copy, PartialEq, Debug)]
enum At {
    /// An assertion of the module's own (secrets in the store, the
    /// firewall), at evaluation.
    Eval,
    /// airlockd's check of the rendered file (`checkConfig`: `airlockd
    /// --check-config` when the system is built), in airlockd's words.
    Build,
}

struct Bad {
    name: &'static str,
    /// the body of `services.airlock = { enable = true; … }`
    nix: &'static str,
    at: At,
    /// in the refusal's message
    says: &'static str,
    /// the same configuration for airlockd, and whether it says `says`
    daemon: Option<(&'static str, bool)>,
}

const BAD: &[Bad] = &[
    Bad {
        name: "trusted_without_key",
        nix: r#"settings.trust = "trusted";"#,
        at: At::Build,
        says: r#"trust = "trusted" needs release.signing_key_file (or --signing-key-file)"#,
        daemon: Some(("trust = \"trusted\"\n", true)),
    },
    Bad {
        name: "signing_key_with_a_root_vmm",
        nix: r#"settings.release.signing_key_file = "/run/secrets/airlock/signing-key"; settings.vm.user = "";"#,
        at: At::Build,
        says: "release.signing_key_file needs vm.user (a user other than root): a VMM running as airlockd's user could read the signing key",
        daemon: Some((
            "[release]\nsigning_key_file = \"/run/secrets/airlock/signing-key\"\n[vm]\nuser = \"root\"\n",
            true,
        )),
    },
    Bad {
        name: "webhook_without_secret",
        nix: r#"settings.github.webhook_listen = "0.0.0.0:8443";"#,
        at: At::Build,
        says: "github.webhook_listen needs github.webhook_secret_file",
        daemon: Some(("[github]\nwebhook_listen = \"0.0.0.0:8443\"\n", true)),
    },
    Bad {
        name: "no_jobs",
        nix: "settings.max_jobs = 0;",
        at: At::Build,
        says: "max_jobs must be at least 1",
        daemon: Some(("max_jobs = 0\n", true)),
    },
    Bad {
        name: "tiny_vm",
        nix: "settings.vm.memory_mib = 128;",
        at: At::Build,
        says: "vm.memory_mib must be >= 256 and vm.vcpus >= 1",
        daemon: Some(("[vm]\nmemory_mib = 128\n", true)),
    },
    Bad {
        name: "bad_machine",
        nix: r#"settings.vm.machine = "virt";"#,
        at: At::Build,
        says: r#"vm.machine "virt" is not q35, pc or microvm"#,
        daemon: Some(("[vm]\nmachine = \"virt\"\n", true)),
    },
    Bad {
        name: "no_timeout",
        // An option of earlier versions, renamed: the same check.
        nix: "vm.timeout = 0;",
        at: At::Build,
        says: "limits.job_timeout_secs must be > 0",
        daemon: Some(("[limits]\njob_timeout_secs = 0\n", true)),
    },
    Bad {
        name: "bad_substituter",
        nix: r#"settings.nix.substituters = [ "ftp://cache.example.org" ];"#,
        at: At::Build,
        says: r#"nix.substituters entry "ftp://cache.example.org" is not an http:// or https:// URL"#,
        daemon: Some((
            "[nix]\nsubstituters = [\"ftp://cache.example.org\"]\n",
            true,
        )),
    },
    Bad {
        name: "inline_password",
        nix: r#"settings.amqp.password = "hunter2";"#,
        at: At::Eval,
        says: "settings.amqp.password looks like a secret given inline",
        // airlockd refuses it too, as an unknown key.
        daemon: Some(("[amqp]\npassword = \"hunter2\"\n", false)),
    },
    Bad {
        name: "inline_token",
        nix: r#"settings.github.token = "ghp_x";"#,
        at: At::Eval,
        says: "settings.github.token looks like a secret given inline",
        daemon: Some(("[github]\ntoken = \"ghp_x\"\n", false)),
    },
    Bad {
        name: "password_in_amqp_url",
        nix: r#"settings.amqp.url = "amqps://builder:hunter2@broker.example.org/ofborg";"#,
        at: At::Eval,
        says: "amqp.url carries a password",
        daemon: None,
    },
    Bad {
        name: "secret_file_in_store",
        nix: r#"settings.github.token_file = "/nix/store/00000000000000000000000000000000-token";"#,
        at: At::Eval,
        says: "settings.github.token_file is in the Nix store",
        daemon: None,
    },
    Bad {
        name: "secret_file_as_nix_path",
        nix: "settings.amqp.password_file = ./amqp-password;",
        at: At::Eval,
        says: "absolute path not in the Nix store",
        daemon: None,
    },
    Bad {
        name: "firewall_without_listen",
        nix: "cache.openFirewall = true;",
        at: At::Eval,
        says: "cache.openFirewall needs cache.listen",
        daemon: None,
    },
];

/// airlockd's half of a bad configuration: it refuses `b.daemon`, in the
/// module's words where `same_words`. None when `b` has no daemon half,
/// else whether the words must be the same.
fn assert_airlockd_refuses(tmp: &Path, b: &Bad) -> Option<bool> {
    let (toml, same_words) = b.daemon?;
    let (ok, said) = check_config(tmp, b.name, toml);
    assert!(!ok, "{}: airlockd accepted:\n{toml}", b.name);
    if same_words {
        assert!(
            said.contains(&format!("invalid config: {}", b.says)),
            "{}: airlockd says something else than the module ({:?}):\n{said}",
            b.name,
            b.says
        );
    }
    Some(same_words)
}

#[test]
fn module_refuses_bad_configs() {
    let Some(np) = prerequisites("module_refuses_bad_configs", Needs::SnapshotAndTools) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let t0 = std::time::Instant::now();
    // Two evaluations at a time (about 8 s each).
    let results: Vec<(String, Output)> = std::thread::scope(|s| {
        let chunks: Vec<Vec<&Bad>> = vec![
            BAD.iter().step_by(2).collect(),
            BAD.iter().skip(1).step_by(2).collect(),
        ];
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|chunk| {
                let (np, tmp) = (&np, tmp.path());
                s.spawn(move || {
                    chunk
                        .into_iter()
                        .map(|b| {
                            let d = tmp.join(b.name);
                            std::fs::create_dir_all(&d).unwrap();
                            let f = d.join("settings.nix");
                            std::fs::write(
                                &f,
                                format!(
                                    "{{ services.airlock = {{ enable = true; {} }}; }}\n",
                                    b.nix
                                ),
                            )
                            .unwrap();
                            (b.name.to_string(), eval_module(np, &d, &f))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    println!(
        "{} bad configurations evaluated in {:.1}s",
        BAD.len(),
        t0.elapsed().as_secs_f64()
    );
    for b in BAD {
        let out = &results.iter().find(|(n, _)| n == b.name).unwrap().1;
        let err = text(&out.stderr);
        match b.at {
            At::Eval => {
                assert!(!out.status.success(), "{}: the module accepted it", b.name);
                assert!(
                    err.contains(b.says),
                    "{}: expected {:?} in:\n{err}",
                    b.name,
                    b.says
                );
            }
            At::Build => {
                // It evaluates; the build's check (airlockd --check-config
                // on the rendered file) refuses it in airlockd's words.
                assert!(
                    out.status.success(),
                    "{}: refused at evaluation, not by airlockd's check:\n{err}",
                    b.name
                );
                let r: Value = serde_json::from_slice(&out.stdout).unwrap();
                let toml = to_toml(&rendered(&r));
                let (ok, said) = check_config(tmp.path(), b.name, &toml);
                assert!(!ok, "{}: airlockd accepted the rendering:\n{toml}", b.name);
                assert!(
                    said.contains(&format!("invalid config: {}", b.says)),
                    "{}: airlockd says something else ({:?}):\n{said}",
                    b.name,
                    b.says
                );
            }
        }
        assert_airlockd_refuses(tmp.path(), b);
        println!("{}: refused ({:?}): {}", b.name, b.at, b.says);
    }
}

/// nixpkgs from the snapshot without its Nix-version gate (impure.nix), with
/// placeholders for what its stubbed Haskell package set cannot provide
/// (a slim snapshot stubs the Haskell set): ShellCheck (NixOS toplevels) and pandoc
/// (Erlang's documentation, RabbitMQ's dependency). Only drv hashes change.
fn pkgs_expr(np: &Path) -> String {
    format!(
        r#"import {}/pkgs/top-level/impure.nix {{
  overlays = [ (final: prev: {{
    shellcheck-minimal = final.writeShellScriptBin "shellcheck" "exit 0" // {{ compiler.bootstrapAvailable = true; }};
    pandoc = final.writeShellScriptBin "pandoc" "exit 0" // {{ compiler.bootstrapAvailable = false; }};
  }}) ];
}}"#,
        np.display()
    )
}

#[test]
fn package_guest_image_and_nixos_tests_instantiate() {
    let Some(np) = prerequisites(
        "package_guest_image_and_nixos_tests_instantiate",
        Needs::SnapshotAndTools,
    ) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let nix = |args: &[&str]| {
        let out = Command::new("nix-instantiate")
            .args([
                "--store",
                store.to_str().unwrap(),
                "--option",
                "max-jobs",
                "0",
            ])
            .args(args)
            .env("XDG_CACHE_HOME", tmp.path().join("xdg-cache"))
            .stdin(Stdio::null())
            .output()
            .expect("nix-instantiate");
        assert!(
            out.status.success(),
            "nix-instantiate {args:?}:\n{}",
            text(&out.stderr)
        );
        text(&out.stdout)
    };
    let pkgs = pkgs_expr(&np);
    let top = repo().join("default.nix");
    let t0 = std::time::Instant::now();
    let attrs = ["airlock", "guest-image", "tests.minimal", "tests.builder"];
    let mut args = vec![top.to_str().unwrap(), "--arg", "pkgs", pkgs.as_str()];
    for a in &attrs {
        args.extend(["-A", a]);
    }
    let drvs: Vec<String> = nix(&args).lines().map(str::to_owned).collect();
    println!(
        "instantiated in {:.1}s:\n{}",
        t0.elapsed().as_secs_f64(),
        drvs.join("\n")
    );
    assert_eq!(drvs.len(), attrs.len(), "{drvs:?}");
    for (a, d) in attrs.iter().zip(&drvs) {
        assert!(
            d.starts_with("/nix/store/") && d.ends_with(".drv"),
            "{a}: {d}"
        );
        assert!(
            store.join(d.trim_start_matches('/')).exists(),
            "{a}: {d} not written to the private store"
        );
    }
    assert!(drvs[0].ends_with("-airlock-0.1.0.drv"), "{}", drvs[0]);
    assert!(drvs[1].ends_with("-airlock-guest-image.drv"), "{}", drvs[1]);
    assert!(
        drvs[2].ends_with("-vm-test-run-airlock-minimal.drv"),
        "{}",
        drvs[2]
    );
    assert!(
        drvs[3].ends_with("-vm-test-run-airlock-builder.drv"),
        "{}",
        drvs[3]
    );
    // The guest's kernel is the trimmed one (vm-images/nix/kernel.nix): the
    // default kernel's source and version, configured from the fragment by
    // the script tests/tests/platform/guest_kernel.rs boots, with no module outputs.
    let k: Value = serde_json::from_str(&nix(&[
        "--eval",
        "--strict",
        "--json",
        "-E",
        &format!(
            r#"let pkgs = {pkgs}; g = (import {} {{ inherit pkgs; }}).guest-image; in {{
  trimmed = g.kernel.drvPath != pkgs.linuxPackages.kernel.drvPath;
  sameSource = g.kernel.src == pkgs.linuxPackages.kernel.src && g.kernel.version == pkgs.linuxPackages.kernel.version;
  outputs = g.kernel.outputs;
  fragment = builtins.readFile g.kernel.fragment == builtins.readFile {}/vm-images/guest/kernel.config;
  config = g.kernel.configfile.drvPath;
  kernel = g.kernel.drvPath;
}}"#,
            top.display(),
            repo().display()
        ),
    ]))
    .unwrap();
    assert_eq!(k["trimmed"], true, "{k:#}");
    assert_eq!(k["sameSource"], true, "{k:#}");
    assert_eq!(k["outputs"], serde_json::json!(["out"]), "{k:#}");
    assert_eq!(k["fragment"], true, "{k:#}");
    let refs = |drv: &str| {
        let out = Command::new("nix-store")
            .args([
                "--store",
                store.to_str().unwrap(),
                "-q",
                "--references",
                drv,
            ])
            .output()
            .expect("nix-store -q");
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout)
    };
    let config_refs = refs(k["config"].as_str().unwrap());
    for f in ["-kernel.config", "-kernel-config.sh"] {
        assert!(
            config_refs.lines().any(|l| l.ends_with(f)),
            "the kernel config derivation does not use {f}:\n{config_refs}"
        );
    }
    assert!(
        refs(&drvs[1])
            .lines()
            .any(|l| l == k["kernel"].as_str().unwrap()),
        "the guest image does not use the trimmed kernel"
    );

    // Every test default.nix exposes is in the list above.
    let names = nix(&[
        "--eval",
        "--json",
        "-E",
        &format!(
            "builtins.attrNames (import {} {{ pkgs = {pkgs}; }}).tests",
            top.display()
        ),
    ]);
    assert_eq!(names.trim(), r#"["builder","minimal"]"#);

    // The flake's outputs, with the snapshot as its nixpkgs input: the same
    // derivations, the module, the overlay and the checks.
    let flake = format!(
        r#"let
  pkgs = {pkgs};
  f = (import {}/flake.nix).outputs {{ self = f; nixpkgs = {{ legacyPackages.x86_64-linux = pkgs; }}; }};
  top = import {} {{ inherit pkgs; }};
in {{
  packages = builtins.attrNames f.packages.x86_64-linux;
  checks = builtins.attrNames f.checks.x86_64-linux;
  same = f.packages.x86_64-linux.default.drvPath == top.airlock.drvPath
    && f.packages.x86_64-linux.guest-image.drvPath == top.guest-image.drvPath;
  module = f.nixosModules.default == {}/nixos/module.nix;
  overlay = builtins.attrNames (f.overlays.default pkgs pkgs);
  inputs = builtins.attrNames (import {}/flake.nix).inputs;
}}"#,
        repo().display(),
        top.display(),
        repo().display(),
        repo().display()
    );
    let v: Value =
        serde_json::from_str(&nix(&["--eval", "--strict", "--json", "-E", &flake])).unwrap();
    assert_eq!(
        v,
        serde_json::json!({
            "packages": ["airlock", "default", "guest-image"],
            "checks": ["builder", "minimal"],
            "same": true,
            "module": true,
            "overlay": ["airlock", "airlock-guest-image"],
            "inputs": ["nixpkgs"],
        })
    );
    println!("all done in {:.1}s", t0.elapsed().as_secs_f64());
}

const DOC_BEGIN: &str = "<!-- BEGIN generated by nixos/options-doc.nix: do not edit -->\n";
const DOC_END: &str = "<!-- END generated -->\n";

/// A line diff of `old` against `new` ("-" only in old, "+" only in new),
/// changed lines only, each with its line number in `old`/`new`.
fn line_diff(old: &str, new: &str) -> String {
    let (a, b): (Vec<&str>, Vec<&str>) = (old.lines().collect(), new.lines().collect());
    // lcs[i][j]: longest common subsequence of a[i..] and b[j..].
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, String::new());
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            (i, j) = (i + 1, j + 1);
        } else if j == b.len() || (i < a.len() && lcs[i + 1][j] >= lcs[i][j + 1]) {
            writeln!(out, "-{:>3}: {}", i + 1, a[i]).unwrap();
            i += 1;
        } else {
            writeln!(out, "+{:>3}: {}", j + 1, b[j]).unwrap();
            j += 1;
        }
    }
    out
}

#[test]
fn options_table_in_docs_is_current() {
    let Some(np) = prerequisites("options_table_in_docs_is_current", Needs::Snapshot) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let t0 = std::time::Instant::now();
    let out = Command::new("nix-instantiate")
        .arg("--store")
        .arg(tmp.path().join("store"))
        .args(["--eval", "--strict", "--json"])
        .arg(repo().join("nixos/options-doc.nix"))
        .arg("--arg")
        .arg("nixpkgs")
        .arg(&np)
        .env("XDG_CACHE_HOME", tmp.path().join("xdg-cache"))
        .stdin(Stdio::null())
        .output()
        .expect("nix-instantiate");
    assert!(
        out.status.success(),
        "nix-instantiate nixos/options-doc.nix failed:\n{}",
        text(&out.stderr)
    );
    let generated: String =
        serde_json::from_slice(&out.stdout).expect("options-doc.nix gives a string");
    println!(
        "options-doc.nix: {} lines in {:.1}s",
        generated.lines().count(),
        t0.elapsed().as_secs_f64()
    );
    // The table covers the module's options, sub-options included.
    for row in [
        "| `services.airlock.enable` | boolean | `false` |",
        "| `services.airlock.settings` | TOML value | `{ }` |",
        "| `services.airlock.kvmModules` | list of string | `[ \"kvm-intel\" \"kvm-amd\" ]` |",
        "| `services.airlock.package` | package | `pkgs.callPackage <airlock>/nixos/package.nix { }` |",
        "| `services.airlock.sponsor.name` | string | none (must be set) |",
    ] {
        assert!(
            generated.lines().any(|l| l.starts_with(row)),
            "no row {row} in:\n{generated}"
        );
    }

    let doc_path = repo().join("docs/nixos.md");
    let doc = std::fs::read_to_string(&doc_path).unwrap();
    let regen = "scripts/gen-nixos-options.sh   # AIRLOCK_NIXPKGS, or the nixpkgs path as argument";
    assert!(
        doc.matches(DOC_BEGIN).count() == 1 && doc.matches(DOC_END).count() == 1,
        "docs/nixos.md needs exactly one of each marker line:\n{DOC_BEGIN}{DOC_END}"
    );
    let in_doc = doc
        .split_once(DOC_BEGIN)
        .and_then(|(_, rest)| rest.split_once(DOC_END))
        .map(|(block, _)| block)
        .expect("the END marker after the BEGIN marker");
    assert!(
        in_doc == generated,
        "docs/nixos.md's options table is not what nixos/options-doc.nix generates \
         from nixos/module.nix. Regenerate it:\n\n    {regen}\n\n\
         diff (- in docs/nixos.md's block, + generated; each with its line number in its own block):\n{}",
        line_diff(in_doc, &generated)
    );
}

/// The NixOS tests' Python scripts pass the lint the test driver runs before
/// anything boots (nixos/lib/testing/driver.nix: the driver's type-hint
/// prelude, a fake machine per node and vlan, then the script, checked for
/// pyflakes' errors), so a typo fails here and not after building the test.
/// Debian's pyflakes3 stands in for the driver's `ruff check --select F`.
#[test]
fn nixos_test_scripts_pass_the_drivers_lint() {
    const TEST: &str = "nixos_test_scripts_pass_the_drivers_lint";
    let Some(np) = prerequisites(TEST, Needs::Snapshot) else {
        return;
    };
    if !common::have("pyflakes3")
        && !common::ready_or_skip(
            TEST,
            &["pyflakes3 (apt-get install pyflakes3; scripts/setup.sh does)".into()],
        )
    {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let pkgs = pkgs_expr(&np);
    for name in ["minimal", "builder"] {
        let expr = format!(
            r#"let
  pkgs = {pkgs};
  lib = pkgs.lib;
  c = (import {}/default.nix {{ inherit pkgs; }}).tests.{name}.config;
  hints = map (i: "vlan${{toString i}} = create_fake_vlan()") c.driverConfiguration.vlans
    ++ map (n: "${{n}} = create_fake_qemu_machine()") (builtins.attrNames c.driverConfiguration.vms);
in builtins.unsafeDiscardStringContext (
  builtins.readFile {}/nixos/lib/test-script-prepend.py + "\n"
  + lib.concatStringsSep "\n" hints + "\n" + c.testScriptString)"#,
            repo().display(),
            np.display()
        );
        let out = Command::new("nix-instantiate")
            .args(["--store", tmp.path().join("store").to_str().unwrap()])
            .args(["--eval", "--json", "-E", &expr])
            .env("XDG_CACHE_HOME", tmp.path().join("xdg-cache"))
            .stdin(Stdio::null())
            .output()
            .expect("nix-instantiate");
        assert!(out.status.success(), "{name}: {}", text(&out.stderr));
        let script: String = serde_json::from_slice(&out.stdout).unwrap();
        assert!(
            script.contains("start_all()"),
            "{name}: no test script in {script}"
        );
        let file = tmp.path().join(format!("{name}.py"));
        std::fs::write(&file, &script).unwrap();
        let lint = Command::new("pyflakes3").arg(&file).output().unwrap();
        assert!(
            lint.status.success(),
            "{name}'s test script fails the driver's lint:\n{}{}",
            text(&lint.stdout),
            text(&lint.stderr)
        );
    }
}
