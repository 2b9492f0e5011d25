//! airlock-agent: PID 1's only child inside the job VM.
//!
//! Reads `job.json` from the read-only input disk, evaluates every attr with
//! `nix-instantiate` (each on its own, like ofborg), builds the ones that
//! evaluate with one `nix-build --keep-going`, streams every output line to
//! the host over the channel (virtio console), and finally writes every store
//! path the job produced as NARs into the export stream on a raw disk.
//!
//! The agent runs inside the sandbox it is meant to protect the host from: the
//! host trusts nothing it says and re-verifies everything it exports.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex};

mod nar;
mod restore;
mod review;
mod step;
mod store;

use airlock_wire::{
    encode_event, encode_log_line, BootParams, BuildStatus, Event, ExportedPath, GuestJob,
    Manifest, Phase, WIRE_VERSION,
};

/// Nix prints this for settings an untrusted client may not set; ofborg drops it.
const RESTRICTED_WARNING: &str =
    "because it is a restricted setting and you are not a trusted user";

#[derive(Clone)]
struct Channel(Arc<Mutex<Box<dyn Write + Send>>>);

impl Channel {
    fn open(path: Option<&Path>) -> Channel {
        let w: Box<dyn Write + Send> = match path.map(|p| OpenOptions::new().write(true).open(p)) {
            Some(Ok(f)) => Box::new(f),
            Some(Err(e)) => {
                eprintln!("airlock-agent: cannot open channel: {e}; using stderr");
                Box::new(std::io::stderr())
            }
            None => Box::new(std::io::stderr()),
        };
        Channel(Arc::new(Mutex::new(w)))
    }
    fn send(&self, s: &str) {
        if let Ok(mut w) = self.0.lock() {
            let _ = w.write_all(s.as_bytes());
            let _ = w.flush();
        }
    }
    fn log(&self, line: &str) {
        self.send(&encode_log_line(line));
    }
    fn event(&self, ev: &Event) {
        self.send(&encode_event(ev));
    }
}

/// Runs a child and prints on the console (stderr) how long it took: under
/// TCG every Nix process's start-up is a visible share of a job, and the
/// console log is where an operator reads the guest's side of a job.
trait Timed {
    fn timed_output(&mut self) -> std::io::Result<std::process::Output>;
}

impl Timed for Command {
    fn timed_output(&mut self) -> std::io::Result<std::process::Output> {
        let t = std::time::Instant::now();
        let r = self.output();
        say_took(&describe(self), t);
        r
    }
}

/// `airlock-agent: WHAT took N ms` on the console (bench/skeleton.sh reads it).
fn say_took(what: &str, since: std::time::Instant) {
    eprintln!(
        "airlock-agent: {what} took {} ms",
        since.elapsed().as_millis()
    );
}

/// A command as the timing lines name it: the program and its first
/// option-like arguments (not the store paths).
fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args().take(4) {
        let a = a.to_string_lossy();
        if a.starts_with('/') {
            break;
        }
        s.push(' ');
        s.push_str(&a);
    }
    s
}

struct Args {
    input: PathBuf,
    export: PathBuf,
    channel: Option<PathBuf>,
}

/// How this agent was started: by a cold boot's init with the job's disks
/// mounted, or in a template guest (`--template PORT`), where the export
/// disk is known only after the go record (restore.rs).
enum Start {
    Cold(Args),
    Template {
        ctl: PathBuf,
        channel: Option<PathBuf>,
    },
}

fn parse_args() -> Result<Start, String> {
    let mut it = std::env::args().skip(1);
    let (mut input, mut export, mut channel, mut template) = (None, None, None, None);
    while let Some(a) = it.next() {
        let v = it.next().ok_or(format!("{a} needs a value"))?;
        match a.as_str() {
            "--input" => input = Some(PathBuf::from(v)),
            "--export" => export = Some(PathBuf::from(v)),
            "--channel" => channel = Some(PathBuf::from(v)),
            "--template" => template = Some(PathBuf::from(v)),
            _ => return Err(format!("unknown argument {a}")),
        }
    }
    if let Some(ctl) = template {
        return Ok(Start::Template { ctl, channel });
    }
    Ok(Start::Cold(Args {
        input: input.ok_or("--input is required")?,
        export: export.ok_or("--export is required")?,
        channel,
    }))
}

fn main() -> ExitCode {
    let (args, nix) = match parse_args() {
        // A cold boot asks after the agent has started (below).
        Ok(Start::Cold(a)) => (a, None),
        // Waits here, in the template, until a restored VM's go record;
        // reseeds the RNG before anything else. What is the same for every
        // job is asked before: the guest's Nix version (a Nix process costs
        // half a second under TCG, and its pages stay in the template's page
        // cache for every Nix the job starts).
        Ok(Start::Template { ctl, channel }) => match (nix_version(), restore::await_job(&ctl)) {
            (nix, Ok(r)) => (
                Args {
                    input: PathBuf::from("/run/input"),
                    export: r.export,
                    channel,
                },
                nix,
            ),
            (_, Err(e)) => {
                let ch = Channel::open(channel.as_deref());
                ch.event(&Event::AgentStarted {
                    version: WIRE_VERSION,
                });
                let e = format!("cannot take the job after restore: {e}");
                eprintln!("airlock-agent: {e}");
                ch.event(&Event::AgentError { message: e });
                return ExitCode::FAILURE;
            }
        },
        Err(e) => {
            eprintln!("airlock-agent: {e}");
            return ExitCode::from(2);
        }
    };
    let ch = Channel::open(args.channel.as_deref());
    ch.event(&Event::AgentStarted {
        version: WIRE_VERSION,
    });
    if let Some(nix) = nix.or_else(nix_version) {
        ch.event(&Event::GuestInfo { nix });
    }
    match run(&args, &ch) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("airlock-agent: {e}");
            ch.event(&Event::AgentError { message: e.clone() });
            // Best effort: tell the host through the export stream as well.
            let m = Manifest {
                version: WIRE_VERSION,
                phase: Phase::All,
                status: BuildStatus::UnexpectedError { err: e },
                attempted_attrs: vec![],
                skipped_attrs: vec![],
                paths: vec![],
                review: None,
            };
            let _ = write_export(&args.export, &m);
            ExitCode::FAILURE
        }
    }
}

/// The boot words: what init wrote from the go record of a restored VM,
/// else the kernel command line.
fn boot_words() -> String {
    std::fs::read_to_string(airlock_wire::BOOT_WORDS_FILE)
        .or_else(|_| std::fs::read_to_string("/proc/cmdline"))
        .unwrap_or_default()
}

/// `_IOW('R', 0x03, int[2])` and `_IO('R', 0x07)` of linux/random.h.
const RNDADDENTROPY: u32 = 0x4008_5203;
const RNDRESEEDCRNG: u32 = 0x5207;

#[allow(unsafe_code)]
fn add_entropy_and_reseed(seed: &[u8; 32]) -> Result<(), String> {
    use std::os::fd::AsRawFd;
    // struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
    #[repr(C)]
    struct PoolInfo {
        entropy_count: libc::c_int,
        buf_size: libc::c_int,
        buf: [u8; 32],
    }
    let info = PoolInfo {
        entropy_count: 256,
        buf_size: 32,
        buf: *seed,
    };
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/urandom")
        .map_err(|e| format!("/dev/urandom: {e}"))?;
    // SAFETY: RNDADDENTROPY reads a rand_pool_info of buf_size bytes of
    // buffer from `info`, which lives for the call.
    if unsafe { libc::ioctl(f.as_raw_fd(), RNDADDENTROPY as _, &info) } != 0 {
        return Err(format!(
            "RNDADDENTROPY: {}",
            std::io::Error::last_os_error()
        ));
    }
    reseed_crng(&f)
}

/// Reseed the kernel's CRNG from its input pool now (`RNDRESEEDCRNG`;
/// `f` is /dev/urandom open for writing).
#[allow(unsafe_code)]
fn reseed_crng(f: &std::fs::File) -> Result<(), String> {
    use std::os::fd::AsRawFd;
    // SAFETY: RNDRESEEDCRNG takes no argument.
    if unsafe { libc::ioctl(f.as_raw_fd(), RNDRESEEDCRNG as _) } != 0 {
        return Err(format!(
            "RNDRESEEDCRNG: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

fn nix_env(cmd: &mut Command, src: &Path) {
    cmd.current_dir(src)
        .env_clear()
        .env("PATH", "/usr/bin:/usr/sbin:/bin:/sbin")
        .env("HOME", "/tmp")
        .env("TMPDIR", "/nix/var/airlock-tmp")
        .env("NIX_PATH", format!("ofborg-nixpkgs-pr={}", src.display()))
        .stdin(Stdio::null());
}

/// ofborg's common arguments for evaluation and build.
fn nix_common(job: &GuestJob) -> Vec<String> {
    let mut v: Vec<String> = vec![
        "--show-trace".into(),
        "--option".into(),
        "restrict-eval".into(),
        "true".into(),
        "--argstr".into(),
        "system".into(),
        job.system.clone(),
        "--arg".into(),
        "supportedSystems".into(),
        format!("[\"{}\"]", job.system),
    ];
    v.push(format!("./{}", job.nix_file));
    v
}

fn run(args: &Args, ch: &Channel) -> Result<(), String> {
    let job_path = args.input.join("job.json");
    let job: GuestJob = serde_json::from_slice(
        &std::fs::read(&job_path)
            .map_err(|e| format!("cannot read {}: {e}", job_path.display()))?,
    )
    .map_err(|e| format!("invalid job.json: {e}"))?;
    if job.version != WIRE_VERSION {
        return Err(format!("job.json version {} unsupported", job.version));
    }
    std::fs::create_dir_all("/nix/var/airlock-tmp").map_err(|e| format!("mkdir tmp: {e}"))?;
    // Which boot this is: the kernel command line, or for a VM restored
    // from a template the boot words its go record carried.
    let boot = BootParams::from_cmdline(&boot_words());
    let phase = boot.phase;
    if phase == Phase::Fetch {
        configure_network(boot.net.as_ref(), &job.dns)?;
    } else {
        // Nix wants /etc/resolv.conf to exist.
        std::fs::write("/run/resolv.conf", "").map_err(|e| format!("resolv.conf: {e}"))?;
    }
    bind_resolv_conf();
    if let Some(st) = &job.step {
        return step::run(st, &args.input, &args.export, ch);
    }
    let src = source_tree(&args.input)?;
    if let Some(rv) = &job.review {
        return review::run(&job, rv, &args.input, &src, &boot, &args.export, ch);
    }

    let mut errors: Vec<String> = Vec::new();
    let mut notes: Vec<String> = Vec::new();
    // 1. Evaluate each attr on its own (the build phase reuses the fetch
    // phase's evaluation, kept on the job's /nix disk).
    let saved: Option<Eval> = (phase == Phase::Build)
        .then(|| std::fs::read(EVAL_FILE).ok())
        .flatten()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let reused = saved.is_some();
    let Eval {
        attempted,
        skipped,
        drvs,
    } = match saved {
        Some(e) => e,
        None => evaluate(&job, &src, &mut errors, &mut notes)?,
    };
    if phase == Phase::Fetch {
        let e = Eval {
            attempted: attempted.clone(),
            skipped: skipped.clone(),
            drvs: drvs.clone(),
        };
        let _ = std::fs::create_dir_all("/nix/var/airlock");
        std::fs::write(EVAL_FILE, serde_json::to_vec(&e).unwrap_or_default())
            .map_err(|e| format!("cannot save the evaluation: {e}"))?;
    }
    // As ofborg: BuildLogStart (this event) first, then the error lines.
    // The build phase re-evaluates the same tree: already reported.
    if phase != Phase::Build {
        ch.event(&Event::Instantiated {
            attempted: attempted.clone(),
            skipped: skipped.clone(),
        });
        for l in &errors {
            ch.log(l);
        }
        for l in &notes {
            ch.log(l);
        }
    }

    // 2. Fetch phase: only fixed-output derivations. Otherwise: build.
    // A re-fetch builds nothing but them: after its fetch phase it only
    // exports; in one boot (no network) it realises them without a
    // substituter.
    let status = if attempted.is_empty() {
        BuildStatus::Skipped
    } else if phase == Phase::Fetch {
        let gateway = boot.net.as_ref().map(|(_, gw)| gw.as_str());
        fetch(&job, &drvs, gateway, ch)?
    } else if let Some(targets) = &job.refetch {
        if phase == Phase::All {
            fetch(&job, &drvs, None, ch)?;
        }
        return finish_refetch(&args.export, phase, attempted, skipped, targets, ch);
    } else if reused {
        counting_builds(&drvs, ch, || {
            realise(&job, &drvs, &BUILD_PHASE_OPTIONS.map(String::from), ch)
        })?
    } else {
        counting_builds(&drvs, ch, || build(&job, &src, &attempted, ch))?
    };
    // 3. Export every store path the job produced (after the last phase).
    let m = Manifest {
        version: WIRE_VERSION,
        phase,
        status,
        attempted_attrs: attempted,
        skipped_attrs: skipped,
        paths: vec![],
        review: None,
    };
    finish(&args.export, m, &drvs, ch)
}

/// Report the status, then write the export: the manifest with every
/// store path the job produced (after the last phase; none after fetch).
fn finish(export: &Path, mut m: Manifest, drvs: &[String], ch: &Channel) -> Result<(), String> {
    ch.event(&Event::Built {
        status: m.status.clone(),
    });
    if !drvs.is_empty() && m.phase != Phase::Fetch {
        m.paths = produced_paths(drvs)?;
    }
    let bytes = write_export(export, &m)?;
    ch.event(&Event::Exported {
        paths: m.paths.len() as u64,
        bytes,
    });
    Ok(())
}

/// A re-fetch's export: which of `targets` are valid now, with their
/// metadata (the host recomputes every hash and compares it with what it
/// is about to release); the status says whether all of them are.
fn finish_refetch(
    export: &Path,
    phase: Phase,
    attempted: Vec<String>,
    skipped: Vec<String>,
    targets: &[String],
    ch: &Channel,
) -> Result<(), String> {
    let paths: Vec<ExportedPath> = from_store(
        "the re-fetched paths",
        |s| {
            let valid: Vec<String> = s.valid(targets)?.into_iter().collect();
            if valid.is_empty() {
                return Ok(vec![]);
            }
            s.path_infos(&valid)
        },
        || {
            let invalid = nix_store(&["--check-validity", "--print-invalid"], targets)?;
            let valid: Vec<String> = targets
                .iter()
                .filter(|p| !invalid.contains(p))
                .cloned()
                .collect();
            path_infos_by_nix(&valid)
        },
    )?;
    let missing = targets
        .iter()
        .filter(|t| !paths.iter().any(|p| &p.path == *t))
        .count();
    ch.log(&format!(
        "airlock: re-fetch: {} of {} fixed-output paths are valid again",
        targets.len() - missing,
        targets.len()
    ));
    let m = Manifest {
        version: WIRE_VERSION,
        phase,
        status: if missing == 0 {
            BuildStatus::Success
        } else {
            BuildStatus::HashMismatch
        },
        attempted_attrs: attempted,
        skipped_attrs: skipped,
        paths,
        review: None,
    };
    ch.event(&Event::Built {
        status: m.status.clone(),
    });
    let bytes = write_export(export, &m)?;
    ch.event(&Event::Exported {
        paths: m.paths.len() as u64,
        bytes,
    });
    Ok(())
}

/// Where the fetch phase leaves its evaluation for the build phase.
const EVAL_FILE: &str = "/nix/var/airlock/eval.json";

#[derive(serde::Serialize, serde::Deserialize)]
struct Eval {
    attempted: Vec<String>,
    skipped: Vec<String>,
    drvs: Vec<String>,
}

/// `nix-instantiate` each attr on its own, as ofborg does; error lines for
/// the attrs that fail go to `errors`, the derivations of those that
/// evaluate to `notes`.
fn evaluate(
    job: &GuestJob,
    src: &Path,
    errors: &mut Vec<String>,
    notes: &mut Vec<String>,
) -> Result<Eval, String> {
    let mut attempted = Vec::new();
    let mut skipped = Vec::new();
    let mut drvs: Vec<String> = Vec::new();
    for attr in &job.attrs {
        let mut cmd = Command::new("nix-instantiate");
        nix_env(&mut cmd, src);
        cmd.args(nix_common(job)).arg("-A").arg(attr);
        let t0 = std::time::Instant::now();
        let out = cmd
            .timed_output()
            .map_err(|e| format!("cannot run nix-instantiate: {e}"))?;
        notes.push(format!(
            "airlock: evaluating {attr} took {:.1}s{}",
            t0.elapsed().as_secs_f64(),
            peak_child_mib()
                .map(|m| format!(", peak memory of an evaluation so far {m} MiB"))
                .unwrap_or_default()
        ));
        if out.status.success() {
            attempted.push(attr.clone());
            let these: Vec<String> = String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| !l.is_empty())
                // `…drv!bin` when the default output is not `out`.
                .map(|l| l.split('!').next().unwrap_or(l).to_owned())
                .collect();
            notes.push(format!("airlock: {attr} evaluates to {}", these.join(" ")));
            drvs.extend(these);
        } else {
            skipped.push(attr.clone());
            errors.push(format!("Cannot nix-instantiate `{attr}` because:"));
            for l in String::from_utf8_lossy(&out.stderr).lines() {
                if !l.contains(RESTRICTED_WARNING) {
                    errors.push(l.to_owned());
                }
            }
            {
                use std::os::unix::process::ExitStatusExt;
                // SIGKILL here comes from the kernel's OOM killer: the VM
                // has no other process that would send it.
                if out.status.signal() == Some(9) {
                    errors.push(format!(
                        "error: the evaluation ran out of memory and was killed ({} MiB in the VM; raise vm.memory_mib)",
                        total_memory_mib().unwrap_or(0)
                    ));
                }
            }
            errors.push(String::new());
        }
    }
    Ok(Eval {
        attempted,
        skipped,
        drvs,
    })
}

fn build(
    job: &GuestJob,
    src: &Path,
    attrs: &[String],
    ch: &Channel,
) -> Result<BuildStatus, String> {
    let mut cmd = Command::new("nix-build");
    nix_env(&mut cmd, src);
    cmd.args(["--no-out-link", "--keep-going"]);
    timeouts(job, &mut cmd);
    cmd.args(nix_common(job));
    for a in attrs {
        cmd.arg("-A").arg(a);
    }
    run_streamed(cmd, "nix-build", ch)
}

fn timeouts(job: &GuestJob, cmd: &mut Command) {
    if job.build_timeout_secs > 0 {
        cmd.args([
            "--option",
            "build-timeout",
            &job.build_timeout_secs.to_string(),
        ]);
    }
    if job.max_silent_secs > 0 {
        cmd.args([
            "--option",
            "max-silent-time",
            &job.max_silent_secs.to_string(),
        ]);
    }
}

/// Where the fetch phase lists the paths it substituted (upstream's, not the
/// job's: the build phase does not export them).
const SUBSTITUTED_FILE: &str = "/nix/var/airlock/substituted.json";

/// Fixed-output derivations realised at once in the fetch phase.
const FETCH_JOBS: &str = "8";

/// In the build phase (no NIC) a fixed-output derivation the fetch phase
/// could not realise fails at once instead of retrying a download that
/// cannot work.
const BUILD_PHASE_OPTIONS: [&str; 3] = ["--option", "download-attempts", "1"];

/// What Nix would do to realise some derivations (`--dry-run`).
#[derive(Debug, Default, PartialEq)]
struct Plan {
    /// Derivations it would build.
    build: Vec<String>,
    /// Store paths it would substitute.
    fetch: Vec<String>,
    /// What those paths take unpacked, as Nix estimates it (MiB).
    unpacked_mib: f64,
}

/// Parse `nix-store -r --dry-run`'s report ("these N derivations will be
/// built:", "this path will be fetched (…):", each followed by indented
/// store paths).
fn parse_plan(text: &str) -> Plan {
    let mut p = Plan::default();
    let mut section: Option<bool> = None; // Some(true): build, Some(false): fetch
    for line in text.lines() {
        if let Some(path) = line
            .strip_prefix("  ")
            .filter(|l| l.starts_with("/nix/store/"))
        {
            match section {
                Some(true) => p.build.push(path.trim().to_owned()),
                Some(false) => p.fetch.push(path.trim().to_owned()),
                None => {}
            }
        } else if line.contains(" will be built") {
            section = Some(true);
        } else if line.contains(" will be fetched") {
            section = Some(false);
            // "… (1.25 MiB download, 5.10 MiB unpacked):"
            if let Some(n) = line
                .rsplit_once(" MiB unpacked")
                .and_then(|(head, _)| head.rsplit(' ').next())
                .and_then(|n| n.parse::<f64>().ok())
            {
                p.unpacked_mib += n;
            }
        } else {
            section = None;
        }
    }
    p
}

/// The substituter options for Nix: the host's proxy as the only cache.
fn substituter_args(job: &GuestJob, gateway: Option<&str>) -> Vec<String> {
    match (&job.substituter, gateway) {
        (Some(s), Some(gw)) => vec![
            "--option".into(),
            "substituters".into(),
            format!("http://{gw}:{}", s.port),
            "--option".into(),
            "trusted-public-keys".into(),
            s.trusted_public_keys.join(" "),
            "--option".into(),
            "require-sigs".into(),
            "true".into(),
            "--option".into(),
            "connect-timeout".into(),
            "10".into(),
        ],
        _ => vec![],
    }
}

fn plan(drvs: &[String], subst: Option<&[String]>) -> Result<Plan, String> {
    let out = Command::new("nix-store")
        .env("HOME", "/tmp")
        .args(["-r", "--dry-run"])
        .args(subst.unwrap_or_default())
        .args(drvs)
        .stdin(Stdio::null())
        .timed_output()
        .map_err(|e| format!("cannot run nix-store --dry-run: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "nix-store -r --dry-run failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(parse_plan(&String::from_utf8_lossy(&out.stderr)))
}

/// `nix show-derivation` of `drvs` (with `-r`: and their whole closure).
fn show_derivations(
    drvs: &[String],
    recursive: bool,
) -> Result<std::collections::BTreeMap<String, serde_json::Value>, String> {
    if drvs.is_empty() {
        return Ok(Default::default());
    }
    let out = Command::new("nix")
        .args([
            "--extra-experimental-features",
            "nix-command",
            "show-derivation",
        ])
        .args(recursive.then_some("-r"))
        .args(drvs)
        .stdin(Stdio::null())
        .timed_output()
        .map_err(|e| format!("cannot run nix show-derivation: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "nix show-derivation failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("nix show-derivation output: {e}"))
}

fn is_fixed_output(d: &serde_json::Value) -> bool {
    d["outputs"]
        .as_object()
        .is_some_and(|o| o.values().any(|v| v.get("hash").is_some()))
}

/// Ask the store database (`db`), or Nix (`nix`) when the database cannot
/// answer; either way the host re-verifies what is exported.
fn from_store<T>(
    what: &str,
    db: impl FnOnce(&store::Store) -> Result<T, String>,
    nix: impl FnOnce() -> Result<T, String>,
) -> Result<T, String> {
    let t = std::time::Instant::now();
    match store::Store::open().and_then(|s| db(&s)) {
        Ok(v) => {
            say_took(&format!("{what} from the store database"), t);
            Ok(v)
        }
        Err(e) => {
            eprintln!("airlock-agent: {what}: {e}; asking Nix");
            nix()
        }
    }
}

/// How many of `drvs` have every output valid now.
fn count_built(drvs: &[String]) -> u64 {
    from_store(
        "built derivations",
        |s| {
            let outs: Vec<Vec<String>> = s.outputs(drvs)?.into_iter().map(|(_, o)| o).collect();
            let valid = s.valid(&outs.concat())?;
            Ok(store::count_complete(&outs, |p| valid.contains(p)))
        },
        || Ok(count_built_by_nix(drvs)),
    )
    .unwrap_or(0)
}

fn count_built_by_nix(drvs: &[String]) -> u64 {
    let Ok(all) = show_derivations(drvs, false) else {
        return 0;
    };
    let outputs: Vec<Vec<String>> = all
        .values()
        .map(|d| {
            d["outputs"]
                .as_object()
                .map(|o| {
                    o.values()
                        .filter_map(|v| v["path"].as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()
        })
        .collect();
    let valid = valid_paths(outputs.concat()).unwrap_or_default();
    store::count_complete(&outputs, |p| valid.contains(p))
}

/// Run a build of `drvs` (`run`), then report how many derivations it built
/// (those Nix planned to build whose outputs are now valid).
fn counting_builds(
    drvs: &[String],
    ch: &Channel,
    run: impl FnOnce() -> Result<BuildStatus, String>,
) -> Result<BuildStatus, String> {
    // Without substituters, what Nix will build is every derivation with
    // an output not yet valid that the job needs.
    let to_build = from_store(
        "derivations to build",
        |s| s.to_build(drvs),
        || Ok(plan(drvs, None).unwrap_or_default().build),
    )?;
    let status = run()?;
    ch.event(&Event::Realised {
        built: count_built(&to_build),
        substituted: 0,
    });
    Ok(status)
}

/// The fetch phase: substitute what the host's substituter has, then realise
/// the fixed-output derivations among what is left to build.
fn fetch(
    job: &GuestJob,
    drvs: &[String],
    gateway: Option<&str>,
    ch: &Channel,
) -> Result<BuildStatus, String> {
    let subst = substituter_args(job, gateway);
    let planned = plan(drvs, Some(&subst));
    let (to_build, substituted) = match planned {
        Ok(p) => {
            ch.log(&format!(
                "airlock: {} derivations to build, {} paths to substitute",
                p.build.len(),
                p.fetch.len()
            ));
            if let Some((free, total)) = nix_disk_mib() {
                // Leave room for the database and the builds.
                if p.unpacked_mib > free as f64 * 0.9 {
                    return Err(format!(
                        "no space left for the closure ({:.0} MiB needed to substitute it, {free} MiB free on the job's {total} MiB /nix disk; raise vm.nix_disk_mib)",
                        p.unpacked_mib
                    ));
                }
            }
            let mut done: Vec<String> = Vec::new();
            if !p.fetch.is_empty() {
                realise(job, &p.fetch, &subst, ch)?;
                let wanted = p.fetch.len();
                done = valid_paths(p.fetch)?;
                if done.len() < wanted {
                    ch.log(&format!(
                        "airlock: {} paths could not be substituted; the build phase builds them",
                        wanted - done.len()
                    ));
                }
            }
            (p.build, done)
        }
        Err(e) => {
            // Without a plan: every derivation in the closure is a candidate.
            ch.log(&format!("airlock: {e}; substituting nothing"));
            (show_derivations(drvs, true)?.into_keys().collect(), vec![])
        }
    };
    let _ = std::fs::create_dir_all("/nix/var/airlock");
    std::fs::write(
        SUBSTITUTED_FILE,
        serde_json::to_vec(&substituted).unwrap_or_default(),
    )
    .map_err(|e| format!("cannot save the substituted paths: {e}"))?;
    let fods: Vec<String> = from_store(
        "fixed-output derivations",
        |_| store::fixed_output(&to_build),
        || {
            Ok(show_derivations(&to_build, false)?
                .into_iter()
                .filter(|(_, d)| is_fixed_output(d))
                .map(|(p, _)| p)
                .collect())
        },
    )?;
    // A re-fetch realises only the derivations of the paths it is for.
    let fods = match &job.refetch {
        None => fods,
        Some(targets) => from_store(
            "the re-fetch's derivations",
            |s| {
                Ok(s.outputs(&fods)?
                    .into_iter()
                    .filter(|(_, outs)| outs.iter().any(|o| targets.contains(o)))
                    .map(|(d, _)| d)
                    .collect())
            },
            || {
                Ok(fods
                    .iter()
                    .filter(|d| {
                        nix_store(&["-q", "--outputs"], std::slice::from_ref(*d))
                            .is_ok_and(|outs| outs.iter().any(|o| targets.contains(o)))
                    })
                    .cloned()
                    .collect())
            },
        )?,
    };
    ch.log(&format!(
        "airlock: fetching {} fixed-output derivations",
        fods.len()
    ));
    // Downloads wait on the network, not the CPU: several at once.
    let mut args = subst.clone();
    args.extend(["--max-jobs".into(), FETCH_JOBS.into()]);
    let status = if fods.is_empty() {
        BuildStatus::Success
    } else {
        realise(job, &fods, &args, ch)?
    };
    ch.event(&Event::Realised {
        built: count_built(&fods),
        substituted: substituted.len() as u64,
    });
    Ok(status)
}

/// `nix-store -r --keep-going` of `paths`: derivations (the fetch phase's
/// FODs, or the build phase's whole job) or store paths to substitute.
fn realise(
    job: &GuestJob,
    paths: &[String],
    extra: &[String],
    ch: &Channel,
) -> Result<BuildStatus, String> {
    let mut cmd = Command::new("nix-store");
    cmd.env("TMPDIR", "/nix/var/airlock-tmp")
        .env("HOME", "/tmp")
        .stdin(Stdio::null())
        .args(["-r", "--keep-going", "--no-gc-warning"]);
    timeouts(job, &mut cmd);
    cmd.args(extra).args(paths);
    run_streamed(cmd, "nix-store -r", ch)
}

/// The removed paths of a delta input (`removed`: relative paths, each
/// ended by NUL). Strict: the host wrote it, but a path that leaves the
/// tree must not become a whiteout elsewhere.
fn parse_removed(list: &[u8]) -> Result<Vec<PathBuf>, String> {
    use std::os::unix::ffi::OsStrExt;
    let mut out = Vec::new();
    if list.is_empty() {
        return Ok(out);
    }
    let body = list
        .strip_suffix(b"\0")
        .ok_or("input/removed does not end with NUL")?;
    for p in body.split(|&b| b == 0) {
        let bad = p.is_empty()
            || p.starts_with(b"/")
            || p.split(|&b| b == b'/')
                .any(|c| c.is_empty() || c == b"." || c == b"..");
        if bad {
            return Err(format!(
                "input/removed has an unusable path {:?}",
                String::from_utf8_lossy(p)
            ));
        }
        out.push(PathBuf::from(std::ffi::OsStr::from_bytes(p)));
    }
    Ok(out)
}

/// The job's source tree. A whole tree is `INPUT/src`. A delta input
/// (`INPUT/delta`, `INPUT/removed`, with the base disk the init mounted
/// at /run/base, its tree in `tree/`) is stacked read-only with overlayfs at /run/src: the
/// changed files over whiteouts for the removed paths over the base.
fn source_tree(input: &Path) -> Result<PathBuf, String> {
    use nix::mount::{mount, MsFlags};
    use nix::sys::stat::{mknod, Mode, SFlag};
    let delta = input.join("delta");
    if !delta.is_dir() {
        return Ok(input.join("src"));
    }
    // The base disk holds its tree under `tree/` (its root has lost+found).
    let base = Path::new("/run/base/tree");
    if !base.is_dir() {
        return Err("the input is a delta but no base disk is mounted at /run/base".into());
    }
    let removed = parse_removed(
        &std::fs::read(input.join("removed"))
            .map_err(|e| format!("cannot read input/removed: {e}"))?,
    )?;
    let wh = Path::new("/run/whiteouts");
    std::fs::create_dir_all(wh).map_err(|e| format!("mkdir {}: {e}", wh.display()))?;
    for r in &removed {
        let p = wh.join(r);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("mkdir {}: {e}", parent.display()))?;
        }
        // An overlayfs whiteout: a character device 0/0.
        mknod(&p, SFlag::S_IFCHR, Mode::empty(), 0)
            .map_err(|e| format!("whiteout {}: {e}", p.display()))?;
    }
    let src = Path::new("/run/src");
    std::fs::create_dir_all(src).map_err(|e| format!("mkdir {}: {e}", src.display()))?;
    let opts = format!(
        "lowerdir={}:{}:{}",
        delta.display(),
        wh.display(),
        base.display()
    );
    mount(
        Some("overlay"),
        src,
        Some("overlay"),
        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(opts.as_str()),
    )
    .map_err(|e| format!("cannot stack the input on the base disk (overlayfs): {e}"))?;
    Ok(src.to_owned())
}

/// Put /run/resolv.conf over the root's (read-only, empty) /etc/resolv.conf.
/// A regular file, not a symlink: Nix from 2.19 copies a symlinked
/// resolv.conf into the sandbox as a dangling link, so fixed-output
/// derivations could not resolve names. Best effort (an older guest root
/// has the symlink, which works with its Nix).
fn bind_resolv_conf() {
    let _ = Command::new("/bin/busybox")
        .args(["mount", "--bind", "/run/resolv.conf", "/etc/resolv.conf"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Bring up the fetch phase's NIC: `net` = (address/prefix, gateway).
fn configure_network(net: Option<&(String, String)>, dns: &[String]) -> Result<(), String> {
    let (addr, gw) = net.ok_or("fetch phase without airlock.net on the kernel command line")?;
    let ip = |args: &[&str]| -> Result<(), String> {
        let st = Command::new("/bin/busybox")
            .arg("ip")
            .args(args)
            .status()
            .map_err(|e| format!("busybox ip: {e}"))?;
        if st.success() {
            Ok(())
        } else {
            Err(format!("ip {} failed", args.join(" ")))
        }
    };
    ip(&["link", "set", "lo", "up"])?;
    ip(&["link", "set", "eth0", "up"])?;
    ip(&["addr", "add", addr, "dev", "eth0"])?;
    ip(&["route", "add", "default", "via", gw])?;
    let mut conf: String = dns.iter().map(|d| format!("nameserver {d}\n")).collect();
    // A resolver that does not answer costs 2 s, not glibc's 5 s per try.
    conf.push_str("options timeout:2 attempts:2\n");
    std::fs::write("/run/resolv.conf", conf).map_err(|e| format!("resolv.conf: {e}"))
}

fn run_streamed(mut cmd: Command, what: &str, ch: &Channel) -> Result<BuildStatus, String> {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let started = std::time::Instant::now();
    let described = describe(&cmd);
    let mut child = cmd.spawn().map_err(|e| format!("cannot run {what}: {e}"))?;
    let full = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let failed_build = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pump = |r: Box<dyn Read + Send>, ch: Channel| {
        let full = full.clone();
        let failed_build = failed_build.clone();
        std::thread::spawn(move || {
            let mut r = BufReader::new(r);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match r.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let line = buf.strip_suffix(b"\n").unwrap_or(&buf);
                        let text = airlock_wire::utf8_line(line);
                        if text.contains("No space left on device") {
                            full.store(true, std::sync::atomic::Ordering::Relaxed);
                        }
                        if is_build_failure(&text) {
                            failed_build.store(true, std::sync::atomic::Ordering::Relaxed);
                        }
                        if !text.contains(RESTRICTED_WARNING) {
                            ch.log(&text);
                        }
                    }
                }
            }
        })
    };
    let t1 = pump(Box::new(child.stdout.take().expect("piped")), ch.clone());
    let t2 = pump(Box::new(child.stderr.take().expect("piped")), ch.clone());
    let st = child
        .wait()
        .map_err(|e| format!("waiting for nix-build: {e}"))?;
    let _ = t1.join();
    let _ = t2.join();
    say_took(&described, started);
    let mut status = BuildStatus::from_nix_exit(st.code());
    // Nix exits 1, not 100, when what failed is a download (a transient
    // failure to Nix): still a build that failed, not an error of Nix.
    if st.code() == Some(1) && failed_build.load(std::sync::atomic::Ordering::Relaxed) {
        status = BuildStatus::Failure;
    }
    if status != BuildStatus::Success && full.load(std::sync::atomic::Ordering::Relaxed) {
        let size = nix_disk_mib()
            .map(|(_, total)| format!(" ({total} MiB)"))
            .unwrap_or_default();
        let why = format!(
            "no space left for the closure: the job's /nix disk{size} is full (raise vm.nix_disk_mib)"
        );
        ch.log(&format!("airlock: {why}"));
        return Ok(BuildStatus::UnexpectedError { err: why });
    }
    Ok(status)
}

/// Nix's report that a derivation failed to build (itself or through its
/// dependencies), as opposed to Nix failing.
fn is_build_failure(line: &str) -> bool {
    line.starts_with("error: builder for '")
        || (line.starts_with("error: ") && line.ends_with("failed to build"))
        || line.starts_with("error: unable to download")
}

/// The largest resident size any finished child reached (MiB).
fn peak_child_mib() -> Option<u64> {
    let u = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN).ok()?;
    Some(u.max_rss() as u64 / 1024)
}

/// The VM's memory (`MemTotal`, MiB).
fn total_memory_mib() -> Option<u64> {
    let m = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = m
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024)
}

/// Available and total MiB of the filesystem holding /nix (`df -Pm`).
fn nix_disk_mib() -> Option<(u64, u64)> {
    let out = Command::new("df")
        .args(["-Pm", "/nix"])
        .stdin(Stdio::null())
        .timed_output()
        .ok()?;
    parse_df(&String::from_utf8_lossy(&out.stdout))
}

fn parse_df(text: &str) -> Option<(u64, u64)> {
    let f: Vec<&str> = text.lines().nth(1)?.split_whitespace().collect();
    Some((f.get(3)?.parse().ok()?, f.get(1)?.parse().ok()?))
}

fn nix_store(args: &[&str], paths: &[String]) -> Result<Vec<String>, String> {
    let out = Command::new("nix-store")
        .args(args)
        .args(paths)
        .stdin(Stdio::null())
        .timed_output()
        .map_err(|e| format!("cannot run nix-store: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "nix-store {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect())
}

/// The paths of `paths` that are valid in the store.
fn valid_paths(paths: Vec<String>) -> Result<Vec<String>, String> {
    if paths.is_empty() {
        return Ok(paths);
    }
    from_store(
        "valid paths",
        |s| {
            let valid = s.valid(&paths)?;
            Ok(paths
                .iter()
                .filter(|p| valid.contains(*p))
                .cloned()
                .collect())
        },
        || {
            // --check-validity --print-invalid exits 0 and prints the invalid ones.
            let invalid = nix_store(&["--check-validity", "--print-invalid"], &paths)?;
            Ok(paths
                .iter()
                .filter(|p| !invalid.contains(p))
                .cloned()
                .collect())
        },
    )
}

/// Every valid output of every derivation in the closure of `drvs`, plus the
/// runtime closure of those outputs (sources they reference), minus `.drv`s.
fn produced_paths(drvs: &[String]) -> Result<Vec<ExportedPath>, String> {
    // Paths the fetch phase substituted are upstream's, not the job's.
    let substituted: std::collections::BTreeSet<String> = std::fs::read(SUBSTITUTED_FILE)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let infos: Vec<ExportedPath> = from_store(
        "the export's paths",
        |s| {
            let all_drvs: Vec<String> = s
                .closure(drvs)?
                .into_iter()
                .filter(|p| p.ends_with(".drv"))
                .collect();
            let outputs: Vec<String> = s
                .outputs(&all_drvs)?
                .into_iter()
                .flat_map(|(_, o)| o)
                .collect();
            let valid = s.valid(&outputs)?;
            let roots: Vec<String> = valid
                .into_iter()
                .filter(|p| !substituted.contains(p))
                .collect();
            if roots.is_empty() {
                return Ok(vec![]);
            }
            s.path_infos(&roots)
        },
        || produced_by_nix(drvs, &substituted),
    )?;
    let mut paths: Vec<ExportedPath> = infos
        .into_iter()
        .filter(|i| !i.path.ends_with(".drv") && !substituted.contains(&i.path))
        .collect();
    paths.sort_by(|a, b| a.path.cmp(&b.path));
    paths.dedup_by(|a, b| a.path == b.path);
    Ok(paths)
}

/// [`produced_paths`]' metadata, from Nix.
fn produced_by_nix(
    drvs: &[String],
    substituted: &std::collections::BTreeSet<String>,
) -> Result<Vec<ExportedPath>, String> {
    let reqs = nix_store(&["-qR"], drvs)?;
    let all_drvs: Vec<String> = reqs.into_iter().filter(|p| p.ends_with(".drv")).collect();
    let outputs = nix_store(&["-q", "--outputs"], &all_drvs)?;
    let invalid = nix_store(&["--check-validity", "--print-invalid"], &outputs)?;
    let valid: Vec<String> = outputs
        .into_iter()
        .filter(|p| !invalid.contains(p) && !substituted.contains(p))
        .collect();
    path_infos_by_nix(&valid)
}

/// `nix path-info --json -r` of `valid`: the closure's metadata (hash,
/// size, references, deriver, CA) in one call.
fn path_infos_by_nix(valid: &[String]) -> Result<Vec<ExportedPath>, String> {
    if valid.is_empty() {
        return Ok(vec![]);
    }
    let out = Command::new("nix")
        .args([
            "--extra-experimental-features",
            "nix-command",
            "path-info",
            "--json",
            "-r",
        ])
        .args(valid)
        .stdin(Stdio::null())
        .timed_output()
        .map_err(|e| format!("cannot run nix path-info: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "nix path-info failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(parse_path_infos(&out.stdout)?
        .into_iter()
        .map(|i| {
            let mut references = i.references;
            references.sort();
            ExportedPath {
                path: i.path,
                nar_hash: i.nar_hash,
                nar_size: i.nar_size,
                references,
                deriver: i.deriver,
                ca: i.ca,
            }
        })
        .collect())
}

/// The guest's Nix, as `nix --version` prints it.
fn nix_version() -> Option<String> {
    let out = Command::new("nix")
        .arg("--version")
        .stdin(Stdio::null())
        .timed_output()
        .ok()?;
    let v = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (out.status.success() && !v.is_empty()).then_some(v)
}

/// `nix path-info --json` output: an array of objects with a `path` (Nix
/// before 2.19) or an object keyed by path (2.19 and later).
fn parse_path_infos(json: &[u8]) -> Result<Vec<PathInfo>, String> {
    let bad = |e: serde_json::Error| format!("nix path-info output: {e}");
    match serde_json::from_slice::<serde_json::Value>(json).map_err(bad)? {
        serde_json::Value::Array(items) => items
            .into_iter()
            .map(|v| serde_json::from_value(v).map_err(bad))
            .collect(),
        serde_json::Value::Object(map) => map
            .into_iter()
            .map(|(path, mut v)| {
                let obj = v
                    .as_object_mut()
                    .ok_or_else(|| format!("nix path-info: {path} is not valid"))?;
                obj.insert("path".into(), serde_json::Value::String(path));
                serde_json::from_value(v).map_err(bad)
            })
            .collect(),
        _ => Err("nix path-info output is neither an array nor an object".into()),
    }
}

/// The part of `nix path-info --json` the agent uses.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct PathInfo {
    path: String,
    nar_hash: String,
    nar_size: u64,
    #[serde(default)]
    references: Vec<String>,
    deriver: Option<String>,
    ca: Option<String>,
}

/// Write the whole export stream; returns the bytes written.
fn write_export(dev: &Path, m: &Manifest) -> Result<u64, String> {
    let f = OpenOptions::new()
        .write(true)
        .open(dev)
        .map_err(|e| format!("cannot open export device {}: {e}", dev.display()))?;
    let mut w = CountingWriter {
        inner: BufWriter::with_capacity(1 << 20, f),
        count: 0,
    };
    airlock_wire::write_header(&mut w, m).map_err(|e| format!("export: {e}"))?;
    for p in &m.paths {
        let before = w.count;
        nar::dump(Path::new(&p.path), &mut w)
            .map_err(|e| format!("export of {} failed (export disk full?): {e}", p.path))?;
        let n = w.count - before;
        if n != p.nar_size {
            return Err(format!(
                "NAR of {} is {n} bytes, Nix says {}",
                p.path, p.nar_size
            ));
        }
    }
    airlock_wire::write_trailer(&mut w).map_err(|e| format!("export: {e}"))?;
    w.inner.flush().map_err(|e| format!("export flush: {e}"))?;
    let f: File = w
        .inner
        .into_inner()
        .map_err(|e| format!("export flush: {e}"))?;
    f.sync_all().map_err(|e| format!("export sync: {e}"))?;
    Ok(w.count)
}

struct CountingWriter<W> {
    inner: W,
    count: u64,
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removed_paths_are_checked() {
        assert_eq!(parse_removed(b"").unwrap(), Vec::<PathBuf>::new());
        assert_eq!(
            parse_removed(b"pkgs/by-name/fo\0top\0").unwrap(),
            vec![PathBuf::from("pkgs/by-name/fo"), PathBuf::from("top")]
        );
        for bad in [
            &b"/etc/passwd\0"[..],
            b"a/../../x\0",
            b"a//b\0",
            b"./a\0",
            b"a",
            b"\0",
        ] {
            assert!(
                parse_removed(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn dry_run_report_of_nix() {
        // `nix-store -r --dry-run` of Nix 2.26 (stderr).
        let text = "these 2 derivations will be built:
  /nix/store/0j6kpwz4dm9964pssxn1zf5vql05y3fl-hello-2.12.3.drv
  /nix/store/ihml9cgha2ncb1jfpf857yd6nls4n23b-hello-2.12.3.tar.gz.drv
this path will be fetched (1.25 MiB download, 5.10 MiB unpacked):
  /nix/store/0mdqa9w1p6cmli6976v4wi0sw9r4p5pr-glibc-2.40
don't know how to build these paths:
  /nix/store/5ghsfj4g7l7989gd9dfrri5bxfy64j54-x
";
        let p = parse_plan(text);
        assert_eq!(p.unpacked_mib, 5.10);
        assert_eq!(p.build.len(), 2);
        assert!(p.build[1].ends_with(".tar.gz.drv"));
        assert_eq!(
            p.fetch,
            vec!["/nix/store/0mdqa9w1p6cmli6976v4wi0sw9r4p5pr-glibc-2.40".to_owned()]
        );
        assert_eq!(parse_plan(""), Plan::default());
    }

    #[test]
    fn build_failures_are_told_from_nix_errors() {
        assert!(is_build_failure("error: 4 dependencies of derivation '/nix/store/9w4h6mwgy4vivksdb54jhz6i2dihqv1l-hello-2.12.3.tar.gz.drv' failed to build"));
        assert!(is_build_failure(
            "error: builder for '/nix/store/x-a.drv' failed with exit code 3"
        ));
        assert!(!is_build_failure(
            "error: getting status of '/nix/store/x': No such file or directory"
        ));
    }

    #[test]
    fn free_space_from_df() {
        let df = "Filesystem     1048576-blocks  Used Available Capacity Mounted on
/dev/vdb                 992    12       913       2% /nix
";
        assert_eq!(parse_df(df), Some((913, 992)));
        assert_eq!(parse_df("garbage"), None);
    }

    #[test]
    fn path_info_json_of_old_and_new_nix() {
        // Nix 2.8 (Debian 12).
        let old = br#"[{"path":"/nix/store/ihml9cgha2ncb1jfpf857yd6nls4n23b-a","narHash":"sha256-AAAA","narSize":8,"references":[],"ca":"fixed:r:sha256:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73"}]"#;
        // Nix 2.26 (Debian 13): keyed by path, nulls spelled out.
        let new = br#"{"/nix/store/ihml9cgha2ncb1jfpf857yd6nls4n23b-a":{"narHash":"sha256-AAAA","narSize":8,"references":[],"ca":"fixed:r:sha256:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73","deriver":null,"registrationTime":1,"signatures":[],"ultimate":false}}"#;
        for json in [&old[..], &new[..]] {
            let infos = parse_path_infos(json).unwrap();
            assert_eq!(infos.len(), 1);
            assert_eq!(
                infos[0].path,
                "/nix/store/ihml9cgha2ncb1jfpf857yd6nls4n23b-a"
            );
            assert_eq!(infos[0].nar_size, 8);
            assert!(infos[0].ca.is_some() && infos[0].deriver.is_none());
        }
        // An invalid path is `null` in the new shape: an error, not a panic.
        assert!(parse_path_infos(br#"{"/nix/store/x-a":null}"#).is_err());
        assert!(parse_path_infos(b"3").is_err());
    }
}
