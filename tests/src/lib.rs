//! Harness for the end-to-end tests (`tests/tests/`) and benchmarks
//! (`tests/benches/`): real airlockd, real QEMU (TCG here, KVM where it
//! works), real Nix in the guest, real git. One library every test binary
//! links (`use airlock_e2e as common;`), not a module each compiles.

pub mod broker;
pub mod builder;
pub mod github;
pub mod hydra_runner;
pub mod internet;
pub mod systemd_guest;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use builder::DaemonBuilder;

pub const IMAGE_DIR_DEFAULT: &str = "/var/cache/airlock/guest/current";

/// Where cargo put the workspace binaries (tests run from target/<profile>/deps),
/// or `AIRLOCK_BIN_DIR` (a benchmark with the debug build's binaries).
pub fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("AIRLOCK_BIN_DIR") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().expect("current exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf()
}

pub fn bin(name: &str) -> PathBuf {
    bin_dir().join(name)
}

pub fn image_dir() -> PathBuf {
    std::env::var_os("AIRLOCK_IMAGE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| IMAGE_DIR_DEFAULT.into())
}

pub fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Everything an end-to-end test needs. Returns false (after a loud message)
/// when something is missing; with AIRLOCK_REQUIRE_E2E=1 (CI) it panics instead.
pub fn prerequisites(test: &str) -> bool {
    let mut missing = Vec::new();
    // SAFETY-free check for root: the VM disks and Nix's sandbox need it.
    if !Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0"))
    {
        missing.push("root".to_string());
    }
    for c in ["qemu-system-x86_64", "mkfs.ext4", "git", "nix-build", "tar"] {
        if !have(c) {
            missing.push(c.to_string());
        }
    }
    for f in ["vmlinux", "initrd.gz", "rootfs.img"] {
        if !image_dir().join(f).exists() {
            missing.push(format!(
                "guest image {}/{f} (vm-images/guest/build-guest.sh)",
                image_dir().display()
            ));
        }
    }
    for b in ["airlockd", "airlockctl", "airlock-agent"] {
        if !bin(b).exists() {
            missing.push(format!("{} (cargo build --workspace)", bin(b).display()));
        }
    }
    ready_or_skip(test, &missing)
}

/// True when nothing is `missing`; else a loud `SKIPPED` line and false, or
/// (AIRLOCK_REQUIRE_E2E=1, as in CI) a panic.
pub fn ready_or_skip(test: &str, missing: &[String]) -> bool {
    if missing.is_empty() {
        return true;
    }
    let msg = format!("SKIPPED {test}: missing {}", missing.join(", "));
    if std::env::var("AIRLOCK_REQUIRE_E2E").as_deref() == Ok("1") {
        panic!("{msg} (AIRLOCK_REQUIRE_E2E=1 forbids skipping)");
    }
    eprintln!("\n!!!!!!!! {msg} !!!!!!!!\n");
    false
}

/// The optional groups: a part no package registry provides here (the
/// cloud-hypervisor binary, a nixpkgs checkout). True when nothing is
/// `needs`; else one loud `OPTIONAL NOT RUN` line and false, also under
/// AIRLOCK_REQUIRE_E2E=1 (`.ci/run` lists these lines in its summary and
/// fails only on `SKIPPED`).
pub fn optional_or_not_run(test: &str, needs: &[String]) -> bool {
    if needs.is_empty() {
        return true;
    }
    let msg = format!("OPTIONAL NOT RUN: {test}: needs {}", needs.join(", "));
    eprintln!("{msg}");
    println!("{msg}");
    false
}

/// What the cloud-hypervisor tests (an optional group) need and this
/// machine lacks: the binary (no package registry has it) and a usable
/// `/dev/kvm`; for [`optional_or_not_run`].
pub fn cloud_hypervisor_needs() -> Vec<String> {
    let mut needs = Vec::new();
    if cloud_hypervisor_binary().is_none() {
        needs.push(
            "the cloud-hypervisor binary (AIRLOCK_CLOUD_HYPERVISOR, or cloud-hypervisor on PATH; \
             no package registry has it)"
                .to_string(),
        );
    }
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        needs.push("/dev/kvm".into());
    }
    needs
}

/// The cloud-hypervisor binary: `AIRLOCK_CLOUD_HYPERVISOR`, else
/// `cloud-hypervisor` on `PATH`; None where neither is.
pub fn cloud_hypervisor_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("AIRLOCK_CLOUD_HYPERVISOR") {
        let p = PathBuf::from(p);
        return p.exists().then_some(p);
    }
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join("cloud-hypervisor"))
            .find(|p| p.is_file())
    })
}

/// A nixpkgs checkout from `AIRLOCK_NIXPKGS`, or None.
pub fn nixpkgs_checkout() -> Option<PathBuf> {
    let p = PathBuf::from(std::env::var_os("AIRLOCK_NIXPKGS")?);
    p.join("default.nix").exists().then_some(p)
}

/// What the optional nixpkgs group says it needs.
pub const NEEDS_NIXPKGS: &str =
    "a nixpkgs checkout (AIRLOCK_NIXPKGS=/path/to/nixpkgs; none can be installed here from a package registry)";

/// A config for an airlockd started by hand (no VM work: no fetch network,
/// nothing substituted) in `dir`, with the test guest image.
pub fn standalone_config(dir: &Path, extra: &str) -> PathBuf {
    let config = dir.join("airlock.toml");
    std::fs::write(
        &config,
        format!(
            "[vm]\naccel = \"tcg\"\nimage_dir = \"{}\"\n[network]\nenabled = false\n[nix]\nsubstituters = []\n{extra}",
            image_dir().display()
        ),
    )
    .unwrap();
    config
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub child: Option<Child>,
    pub config: PathBuf,
    /// Extra airlockd flags.
    pub args: Vec<String>,
    /// The network namespace airlockd runs in (None: the machine's own).
    pub netns: Option<String>,
    /// Extra environment of airlockd (e.g. `AIRLOCK_FAULT_PAUSE`), used by
    /// every [`Daemon::spawn`].
    pub env: Vec<(String, String)>,
    /// A `/dev/net/tun` node of mode 0666 (as on Debian and NixOS; this
    /// machine's is root's alone), bind-mounted over the real one in a
    /// private mount namespace of airlockd: for a VMM that runs as
    /// `vm.user` and attaches to its TAP.
    pub tun_node: Option<PathBuf>,
}

/// The VMM's user in tests that set `vm.user` (Debian's nobody:nogroup).
pub const VM_USER: &str = "65534:65534";

/// A fresh network namespace with only `lo` up, deleted by the caller.
pub fn new_netns(tag: &str) -> String {
    let name = format!(
        "al-{tag}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    for args in [
        vec!["netns", "add", &name],
        vec!["-n", &name, "link", "set", "lo", "up"],
    ] {
        let st = Command::new("ip").args(&args).status().expect("ip");
        assert!(st.success(), "ip {args:?} failed");
    }
    name
}

pub fn del_netns(name: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", name]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let _ = Command::new("kill").args(["-9", pid]).status();
        }
    }
    let _ = Command::new("ip").args(["netns", "del", name]).status();
}

impl Daemon {
    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("airlockd.sock")
    }
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("airlockd.log")).unwrap_or_default()
    }

    pub fn spawn(&mut self) {
        let _ = std::fs::remove_file(self.socket());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("airlockd.log"))
            .unwrap();
        let mut cmd = match (&self.netns, &self.tun_node) {
            (Some(ns), Some(tun)) => {
                let mut c = Command::new("unshare");
                c.args(["--mount", "--propagation", "private", "--", "sh", "-c"])
                    .arg(r#"mount --bind "$0" /dev/net/tun && exec "$@""#)
                    .arg(tun)
                    .args(["ip", "netns", "exec", ns])
                    .arg(bin("airlockd"));
                c
            }
            (Some(ns), None) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(bin("airlockd"));
                c
            }
            (None, _) => Command::new(bin("airlockd")),
        };
        let child = cmd
            .arg("--config")
            .arg(&self.config)
            .arg("--state-dir")
            .arg(self.state())
            .arg("--socket")
            .arg(self.socket())
            .args(&self.args)
            .env("AIRLOCK_LOG", "info,airlock=debug")
            .env("NO_COLOR", "1")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start airlockd");
        self.child = Some(child);
        let t0 = Instant::now();
        while !self.socket().exists() {
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "airlockd did not start:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then wait up to `secs` for a clean exit.
    pub fn terminate(&mut self, secs: u64) -> bool {
        let Some(mut c) = self.child.take() else {
            return true;
        };
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(secs) {
            if let Ok(Some(_)) = c.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = c.kill();
        let _ = c.wait();
        false
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn ctl(&self, args: &[&str]) -> std::process::Output {
        Command::new(bin("airlockctl"))
            .arg("--socket")
            .arg(self.socket())
            .args(args)
            .output()
            .expect("run airlockctl")
    }

    pub fn submit(&self, repo: &Path, head: &str, attrs: &[&str]) -> String {
        self.submit_pr(repo, head, 42, None, attrs)
    }

    /// Submit as PR `pr`, of GitHub repository `github` (`OWNER/NAME`) if given.
    pub fn submit_pr(
        &self,
        repo: &Path,
        head: &str,
        pr: u64,
        github: Option<&str>,
        attrs: &[&str],
    ) -> String {
        let pr = pr.to_string();
        let mut args = vec![
            "--json",
            "submit",
            "--repo",
            repo.to_str().unwrap(),
            "--head",
            head,
            "--pr",
            &pr,
        ];
        if let Some(g) = github {
            args.extend(["--github", g]);
        }
        for a in attrs {
            args.extend(["--attr", a]);
        }
        self.queue(&args)
    }

    /// `airlockctl --json review --repo REPO --head HEAD ARGS…`: the job id.
    pub fn review(&self, repo: &Path, head: &str, args: &[&str]) -> String {
        let mut all = vec![
            "--json",
            "review",
            "--repo",
            repo.to_str().unwrap(),
            "--head",
            head,
        ];
        all.extend(args);
        self.queue(&all)
    }

    /// Run an airlockctl command that queues a job (`--json`); its id.
    fn queue(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert!(
            out.status.success(),
            "{} failed: {}",
            args[1],
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("--json");
        v["id"].as_str().expect("id").to_owned()
    }

    /// Wait for the job to finish; returns its record as JSON.
    /// Wait until `f` holds (checked every 20 ms); after `secs`, fail
    /// naming `what`, with the daemon's log.
    pub fn wait_until(&self, what: &str, secs: u64, f: impl FnMut() -> bool) {
        wait_until(what, secs, f, || self.log());
    }

    /// `/proc/<pid>/status` of the job's VMM (its pid file), once it runs.
    pub fn vmm_status(&self, id: &str, limit_secs: u64) -> String {
        let pidfile = self.state().join("jobs").join(id).join("vm.pid");
        let t0 = Instant::now();
        loop {
            let status = std::fs::read_to_string(&pidfile)
                .ok()
                .and_then(|p| std::fs::read_to_string(format!("/proc/{}/status", p.trim())).ok());
            if let Some(s) = status {
                return s;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(limit_secs),
                "job {id}: no VMM within {limit_secs} s\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn wait(&self, id: &str, limit_secs: u64) -> serde_json::Value {
        let out = self.ctl(&["--json", "wait", id, "--timeout", &limit_secs.to_string()]);
        serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
            panic!(
                "wait failed: {}\n--- daemon log ---\n{}",
                String::from_utf8_lossy(&out.stderr),
                self.log()
            )
        })
    }

    /// Wait (up to `secs`) until airlockd holds a job at fault point
    /// `point` (see `airlock::fault`); returns the marker to remove to let
    /// it go on.
    pub fn wait_fault(&self, point: &str, secs: u64) -> PathBuf {
        let dir = self.state().join("faults");
        let t0 = Instant::now();
        loop {
            if let Ok(rd) = std::fs::read_dir(&dir) {
                for e in rd.flatten() {
                    if e.file_name()
                        .to_string_lossy()
                        .starts_with(&format!("{point}."))
                    {
                        return e.path();
                    }
                }
            }
            assert!(
                t0.elapsed() < Duration::from_secs(secs),
                "airlockd never reached fault point {point}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Every job record, as `airlockctl --json jobs` prints them.
    pub fn jobs(&self) -> Vec<serde_json::Value> {
        let out = self.ctl(&["--json", "jobs"]);
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "airlockctl jobs: {e}: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }

    pub fn build_log(&self, id: &str) -> String {
        let out = self.ctl(&["log", id, "--no-follow"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
        // AIRLOCK_E2E_LOGS=DIR keeps every daemon's log (one file each).
        if let Some(dir) = std::env::var_os("AIRLOCK_E2E_LOGS") {
            let name = self
                .dir
                .path()
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let _ = std::fs::create_dir_all(&dir);
            let _ = std::fs::write(Path::new(&dir).join(format!("{name}.log")), self.log());
        }
        if let Some(ns) = &self.netns {
            if ns.starts_with("al-d-") {
                del_netns(ns);
            }
        }
    }
}

pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.org")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.org")
        .output()
        .expect("git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

pub fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/pkgs")
}

/// A git repo with the fixture package set on `master` and a PR branch `pr`
/// with one more commit; `extra` files are added in the PR commit.
/// Returns (repo dir, PR head sha).
pub fn fixture_repo(parent: &Path, extra: &[(&str, Vec<u8>)]) -> (PathBuf, String) {
    let repo = parent.join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    std::fs::copy(fixture_dir().join("default.nix"), repo.join("default.nix")).unwrap();
    git(&repo, &["init", "-q", "-b", "master"]);
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-q", "-m", "base"]);
    git(&repo, &["checkout", "-q", "-b", "pr"]);
    std::fs::write(repo.join("PR.md"), "a pull request\n").unwrap();
    for (name, data) in extra {
        let p = repo.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-q", "-m", "pr"]);
    let head = git(&repo, &["rev-parse", "HEAD"]);
    // Move master on, so the head really gets merged, not fast-forwarded.
    git(&repo, &["checkout", "-q", "master"]);
    std::fs::write(repo.join("MASTER.md"), "moved on\n").unwrap();
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-q", "-m", "master moves on"]);
    (repo, head)
}

/// How the tests' host Nix builds: sandboxed, with the busybox the guest's
/// sandbox also maps to `/bin/sh`, substituting nothing.
pub const HOST_NIX_OPTIONS: &[&str] = &[
    "--option",
    "sandbox",
    "true",
    "--option",
    "sandbox-paths",
    "/bin/sh=/bin/busybox",
    "--option",
    "substituters",
    "",
];

/// Build an attr of the fixture set on the host with Nix, into a private
/// store under `store` (a chroot store: paths are `/nix/store/…`, files live
/// under `store/nix/store/…`). Tests never touch the host's own Nix database.
/// Returns the closure of the built path.
pub fn host_build(store: &Path, repo: &Path, attr: &str) -> Vec<String> {
    let st = store.to_str().unwrap();
    let out = Command::new("nix-build")
        .current_dir(repo)
        .args(["--store", st, "--no-out-link"])
        .env("XDG_CACHE_HOME", store.join("xdg-cache"))
        .args(HOST_NIX_OPTIONS)
        .args(["-A", attr])
        .output()
        .expect("nix-build");
    assert!(
        out.status.success(),
        "host nix-build: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let top = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let out = Command::new("nix-store")
        .args(["--store", st, "-qR", &top])
        .env("XDG_CACHE_HOME", store.join("xdg-cache"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Where store path `p` of the private store `store` is on disk.
pub fn in_store(store: &Path, p: &str) -> PathBuf {
    store.join(p.trim_start_matches('/'))
}

pub fn status(rec: &serde_json::Value) -> String {
    let s = &rec["result"]["status"];
    s.as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| s.to_string())
}

/// Wait until `f` holds (checked every 20 ms); after `secs`, fail naming
/// `what`, with `context()` (a log).
pub fn wait_until(
    what: &str,
    secs: u64,
    mut f: impl FnMut() -> bool,
    context: impl Fn() -> String,
) {
    let t0 = Instant::now();
    while !f() {
        assert!(
            t0.elapsed() < Duration::from_secs(secs),
            "timed out after {secs} s waiting for {what}\n--- log ---\n{}",
            context()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn no_vm_for(id: &str) -> bool {
    let out = Command::new("ps").args(["-eo", "args"]).output().unwrap();
    !String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.contains("qemu") && l.contains(id))
}

/// A stand-in for airlock-agent (a shell script, `body` after this
/// prelude), for tests that make the guest do what the real agent would
/// not. The prelude reads the agent's arguments into `$in`, `$ex` and `$ch`
/// the way either start gives them: a cold boot's init passes the mounted
/// input and the export disk; a guest template starts it with `--template
/// PORT` (vm-images/agent/src/restore.rs), and the prelude then does what
/// the real agent does there, in shell: says ready, waits for the go
/// record, takes a random sample first (`$first_sample`, before anything
/// else could stir the RNG), binds the job's disks and mounts `/nix` and
/// the input. `$boot_words` is the go record's words with `+` for spaces,
/// or `cold`.
pub fn standin_agent(body: &str) -> String {
    format!("#!/bin/sh\n{STANDIN_PRELUDE}\n{body}")
}

/// As [`standin_agent`], but in a template the guest waits until it has
/// been up `secs` seconds before the reseed and the save. Early in boot the
/// kernel reseeds its CRNG by itself once the last reseed is older than
/// max(1 s, uptime / 2); a template saved at 3 s of uptime gives a restored
/// VM only 1.5 s (the host's preparing and sending the go record included)
/// before it reseeds from its own interrupt timings, which a loaded machine
/// overruns. At 20 s of uptime the restored VM has 10 s, so what it draws
/// first comes from the template's CRNG unless the VM generation ID changed.
pub fn standin_agent_aged(body: &str, secs: u32) -> String {
    format!("#!/bin/sh\ntemplate_age={secs}\n{STANDIN_PRELUDE}\n{body}")
}

/// [`standin_agent_aged`] for a backend without a VM generation ID
/// (cloud-hypervisor v53): the go record's seed is mixed in and the CRNG
/// reseeded before the first sample, as the real agent does first.
pub fn standin_agent_reseeding(body: &str, secs: u32) -> String {
    format!("#!/bin/sh\ntemplate_age={secs}\nreseed_from_go=1\n{STANDIN_PRELUDE}\n{body}")
}

const STANDIN_PRELUDE: &str = r#"in= ex= ch=/dev/hvc0 port=
while [ $# -gt 1 ]; do
  case $1 in --input) in=$2;; --export) ex=$2;; --channel) ch=$2;; --template) port=$2;; esac; shift 2
done
boot_words=cold
if [ -n "$port" ]; then
  if [ -n "$template_age" ]; then
    while [ "$(cut -d. -f1 /proc/uptime)" -lt "$template_age" ]; do sleep 0.2; done
  fi
  # As the real agent: the template's CRNG reseeded just before the save
  # (RNDRESEEDCRNG), so no restored VM is due for a reseed of its own.
  perl -e 'open(my $f, ">", "/dev/urandom") or die "$!"; ioctl($f, 0x5207, 0) or die "RNDRESEEDCRNG: $!"'
  exec 3<> "$port"
  # cloud-hypervisor: the port is the virtio console, a terminal.
  [ "$port" = /dev/hvc0 ] && stty -echo <&3
  echo AIRLOCK-TEMPLATE-READY >&3
  read -r go <&3
  if [ -n "$reseed_from_go" ]; then
    # As the real agent does first (cloud-hypervisor v53 has no VM
    # generation ID): the go record's seed mixed in, the CRNG reseeded.
    set -- $go
    perl -e 'open(my $f, ">", "/dev/urandom") or die "$!"; my $s = pack("H*", $ARGV[0]); ioctl($f, 0x40085203, pack("i i", 256, length $s) . $s) or die "RNDADDENTROPY: $!"; ioctl($f, 0x5207, 0) or die "RNDRESEEDCRNG: $!"' "$4"
  fi
  # One process, nothing else started beside it: every exec draws from the
  # kernel's RNG too, and a pipeline's processes start in any order.
  head -c 16 /dev/urandom > /tmp/airlock-first-sample
  exec 3>&-
  first_sample=$(od -An -tx1 /tmp/airlock-first-sample | tr -d ' \n')
  set -- $go; shift 4; boot_words=$(echo "$*" | tr ' ' '+')
  for d in $(cat /run/airlock-held); do echo "${d%%:*}" > /sys/bus/virtio/drivers/virtio_blk/bind; done
  dev() {
    for b in /sys/block/vd*; do
      [ "$(cat "$b/serial" 2>/dev/null)" = "$1" ] && { echo "/dev/${b##*/}"; return 0; }
    done
    return 1
  }
  for _ in $(seq 1000); do
    dev airlock-nix >/dev/null && dev airlock-input >/dev/null && dev airlock-export >/dev/null && break
    sleep 0.01
  done
  mount -t ext4 -o nosuid,nodev "$(dev airlock-nix)" /nix
  mkdir -p /run/input
  mount -t ext4 -o ro,noload "$(dev airlock-input)" /run/input
  in=/run/input ex=$(dev airlock-export)
else
  first_sample=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
fi"#;
