//! A step of Hydra's queue-runner (issue 31), inside the VM: import the
//! inputs the host fetched and checked, build the resolved derivation
//! through `nix-store --serve --write` (the serve protocol's
//! `BuildDerivation`: the derivation as given, no `.drv` written, so the
//! output paths are the runner's), stream the build log, export the
//! outputs. Nothing here is trusted by the host: it re-verifies every
//! exported NAR.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use airlock_nix_formats::serve;
use airlock_wire::{BuildStatus, Event, GuestStep, Manifest, Phase, WIRE_VERSION};

use crate::Channel;

type Result<T> = std::result::Result<T, String>;

pub fn run(step: &GuestStep, input: &Path, export: &Path, ch: &Channel) -> Result<()> {
    let dir = input.join("step");
    import(step, &dir, ch)?;
    let t0 = std::time::Instant::now();
    let res = build(step, &dir.join("request.bin"), ch)?;
    ch.event(&Event::StepBuilt {
        nix_status: status_code(res.status),
        error: res.error.clone(),
        build_ms: t0.elapsed().as_millis() as u64,
    });
    let status = match res.status {
        s if s.is_success() => BuildStatus::Success,
        serve::Status::TimedOut => BuildStatus::TimedOut,
        _ => BuildStatus::Failure,
    };
    ch.event(&Event::Built {
        status: status.clone(),
    });
    let mut m = Manifest {
        version: WIRE_VERSION,
        phase: Phase::All,
        status,
        attempted_attrs: vec![],
        skipped_attrs: vec![],
        paths: vec![],
        review: None,
    };
    if res.status.is_success() {
        m.paths = crate::from_store(
            "the step's outputs",
            |s| {
                let valid: Vec<String> = s.valid(&step.outputs)?.into_iter().collect();
                s.path_infos(&valid)
            },
            || crate::path_infos_by_nix(&step.outputs),
        )?
        .into_iter()
        .filter(|p| step.outputs.contains(&p.path))
        .collect();
    }
    let bytes = crate::write_export(export, &m)?;
    ch.event(&Event::Exported {
        paths: m.paths.len() as u64,
        bytes,
    });
    Ok(())
}

fn status_code(s: serve::Status) -> u64 {
    use serve::Status::*;
    match s {
        Built => 0,
        Substituted => 1,
        AlreadyValid => 2,
        PermanentFailure => 3,
        InputRejected => 4,
        OutputRejected => 5,
        TransientFailure => 6,
        CachedFailure => 7,
        TimedOut => 8,
        MiscFailure => 9,
        DependencyFailed => 10,
        LogLimitExceeded => 11,
        NotDeterministic => 12,
        ResolvesToAlreadyValid => 13,
        NoSubstituters => 14,
        Other(n) => n,
    }
}

/// Restore every input not valid yet from its NAR, then register them
/// all at once (Nix hashes each path itself).
fn import(step: &GuestStep, dir: &Path, ch: &Channel) -> Result<()> {
    if step.inputs.is_empty() {
        return Ok(());
    }
    let all: Vec<String> = step.inputs.iter().map(|i| i.path.clone()).collect();
    let valid = crate::from_store(
        "the step's inputs",
        |s| Ok(s.valid(&all)?.into_iter().collect::<Vec<_>>()),
        || {
            let invalid = crate::nix_store(&["--check-validity", "--print-invalid"], &all)?;
            Ok(all
                .iter()
                .filter(|p| !invalid.contains(p))
                .cloned()
                .collect())
        },
    )?;
    let t0 = std::time::Instant::now();
    let mut reginfo = String::new();
    let mut n = 0;
    for i in step.inputs.iter().filter(|i| !valid.contains(&i.path)) {
        let base = i
            .path
            .rsplit('/')
            .next()
            .filter(|b| !b.is_empty() && !b.starts_with('.'))
            .ok_or_else(|| format!("input {:?} is not a store path", i.path))?;
        let nar = std::fs::File::open(dir.join("inputs").join(format!("{base}.nar")))
            .map_err(|e| format!("input {base}: {e}"))?;
        let _ = std::fs::remove_dir_all(&i.path);
        let _ = std::fs::remove_file(&i.path);
        let st = Command::new("nix-store")
            .args(["--restore", &i.path])
            .stdin(nar)
            .status()
            .map_err(|e| format!("cannot run nix-store --restore: {e}"))?;
        if !st.success() {
            return Err(format!("nix-store --restore {} failed ({st})", i.path));
        }
        reginfo.push_str(&format!(
            "{}\n{}\n{}\n",
            i.path,
            i.deriver.as_deref().unwrap_or(""),
            i.references.len()
        ));
        for r in &i.references {
            reginfo.push_str(r);
            reginfo.push('\n');
        }
        n += 1;
    }
    if n > 0 {
        let mut child = Command::new("nix-store")
            .arg("--register-validity")
            .stdin(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run nix-store --register-validity: {e}"))?;
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(reginfo.as_bytes())
            .map_err(|e| format!("nix-store --register-validity: {e}"))?;
        let st = child
            .wait()
            .map_err(|e| format!("nix-store --register-validity: {e}"))?;
        if !st.success() {
            return Err(format!("nix-store --register-validity failed ({st})"));
        }
    }
    ch.log(&format!(
        "airlock: step: {n} input paths imported ({} already here) in {:.1} s",
        step.inputs.len() - n,
        t0.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// `BuildDerivation` through `nix-store --serve --write`: the build log
/// (its stderr) goes to the channel line by line as it comes.
fn build(step: &GuestStep, request: &Path, ch: &Channel) -> Result<serve::BuildResult> {
    let req = std::fs::read(request).map_err(|e| format!("{}: {e}", request.display()))?;
    let mut child = Command::new("nix-store")
        .args(["--serve", "--write"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run nix-store --serve: {e}"))?;
    let stderr = child.stderr.take().expect("piped");
    let ch2 = ch.clone();
    let log = std::thread::spawn(move || {
        for line in BufReader::new(stderr).split(b'\n').map_while(|l| l.ok()) {
            ch2.log(&airlock_wire::utf8_line(&line));
        }
    });
    let mut stdin = child.stdin.take().expect("piped");
    let mut stdout = child.stdout.take().expect("piped");
    let mut talk = || -> std::result::Result<serve::BuildResult, serve::Error> {
        let v = serve::handshake(&mut stdin, &mut stdout)?;
        if v != serve::VERSION {
            return Err(serve::Error::Version {
                major: v >> 8,
                minor: v & 0xff,
            });
        }
        stdin.write_all(&req)?;
        stdin.flush()?;
        serve::read_build_result(&mut stdout, v)
    };
    ch.log(&format!("airlock: step: building {}", step.drv_path));
    let res = talk();
    drop(stdin);
    let mut rest = Vec::new();
    let _ = stdout.read_to_end(&mut rest);
    let _ = child.wait();
    let _ = log.join();
    res.map_err(|e| format!("nix-store --serve: {e}"))
}
