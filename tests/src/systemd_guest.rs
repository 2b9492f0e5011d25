//! Boots the systemd test guest (vm-images/systemd-guest/build.sh): Debian
//! with systemd as PID 1 under QEMU TCG, so that a test can run the real
//! airlockd against a real systemd, system D-Bus, journald and cgroup v2.
//!
//! The guest's root is the image's `root/` directory, shared read-only over
//! virtiofs with a tmpfs overlay on top; the caller's `share` is
//! `/airlock-test` (read-write, virtiofs); a fresh sparse ext4 scratch disk
//! is `/var/lib/airlock` (room for VM disk images without eating guest RAM).
//! Once the system is up, `airlock-test.service` runs `/airlock-test/run`
//! (console + `/airlock-test/out.log`), writes `/airlock-test/exit-code` and
//! powers off.
//!
//! Paths: `AIRLOCK_SYSTEMD_GUEST` (the built image directory),
//! `AIRLOCK_VIRTIOFSD`; defaults are where scripts/setup.sh puts them.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const IMAGE_DEFAULT: &str = "/var/cache/airlock/systemd-guest/current";
const VIRTIOFSD_DEFAULT: &str = "/var/cache/airlock/virtiofsd/bin/virtiofsd";
/// Guest memory; vhost-user-fs needs it in a shared memfd of the same size.
pub const MEMORY_MIB: u64 = 1536;
/// Size of the (sparse) scratch disk [`run`] attaches.
pub const SCRATCH_MIB_DEFAULT: u64 = 8192;

/// What one boot of the guest produced.
#[derive(Debug)]
pub struct GuestRun {
    /// The serial console (kernel, initramfs, systemd status, the script's output).
    pub console: String,
    /// `/airlock-test/out.log`: the script's stdout and stderr.
    pub out: String,
    /// `/airlock-test/exit-code`; None if the script never finished.
    pub exit_code: Option<i32>,
    /// QEMU start to exit (or to the kill at the timeout).
    pub secs: f64,
    /// The guest did not power off within the timeout and was killed.
    pub timed_out: bool,
    /// QEMU's and the virtiofsds' own output, for diagnosing a failed boot.
    pub host_log: String,
}

/// Knobs of [`run_with`]; [`run`] uses the defaults.
#[derive(Debug, Clone)]
pub struct Options {
    /// Size of the sparse ext4 scratch disk at /var/lib/airlock; None: no
    /// disk, /var/lib/airlock is then on the 1 GiB tmpfs overlay.
    pub scratch_mib: Option<u64>,
    /// Appended to the kernel command line (e.g. `systemd.log_level=debug`).
    pub extra_append: String,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            scratch_mib: Some(SCRATCH_MIB_DEFAULT),
            extra_append: String::new(),
        }
    }
}

/// The built image directory (`vmlinux`, `initrd.gz`, `root/`).
pub fn image_dir() -> PathBuf {
    std::env::var_os("AIRLOCK_SYSTEMD_GUEST")
        .map(PathBuf::from)
        .unwrap_or_else(|| IMAGE_DEFAULT.into())
}

/// virtiofsd: `AIRLOCK_VIRTIOFSD`, else where scripts/setup.sh installs it,
/// else Debian's /usr/libexec/virtiofsd, else PATH.
pub fn virtiofsd() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("AIRLOCK_VIRTIOFSD") {
        return Some(PathBuf::from(p)).filter(|p| p.exists());
    }
    for p in [VIRTIOFSD_DEFAULT, "/usr/libexec/virtiofsd"] {
        if Path::new(p).exists() {
            return Some(p.into());
        }
    }
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join("virtiofsd"))
            .find(|p| p.exists())
    })
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1))
            == Some("0")
    })
}

/// What is missing to boot the systemd guest (empty = ready).
pub fn missing() -> Vec<String> {
    let mut missing = Vec::new();
    if !is_root() {
        missing.push("root (virtiofsd's sandbox)".to_string());
    }
    for c in ["qemu-system-x86_64", "mkfs.ext4"] {
        if !super::have(c) {
            missing.push(c.to_string());
        }
    }
    if virtiofsd().is_none() {
        missing.push(format!(
            "virtiofsd (AIRLOCK_VIRTIOFSD, {VIRTIOFSD_DEFAULT} or PATH; scripts/setup.sh)"
        ));
    }
    let img = image_dir();
    for f in [
        "vmlinux",
        "initrd.gz",
        "root/lib/systemd/systemd",
        ".complete",
    ] {
        if !img.join(f).exists() {
            missing.push(format!(
                "systemd guest {}/{f} (AIRLOCK_SYSTEMD_GUEST; vm-images/systemd-guest/build.sh)",
                img.display()
            ));
        }
    }
    missing
}

/// Boots the guest with `share` (a host directory; the caller puts an
/// executable `run` script and anything else it needs in it) as
/// `/airlock-test`, waits for the poweroff (killing QEMU and virtiofsd at
/// `timeout`) and returns the console, `out.log` and the exit code. A stale
/// `out.log` and `exit-code` in `share` are removed first. Everything else
/// (sockets, console log, scratch disk) lives in a temporary directory of
/// its own, so runs may overlap. Panics if the VM cannot even be started.
pub fn run(share: &Path, timeout: Duration) -> GuestRun {
    run_with(share, timeout, &Options::default())
}

/// [`run`] with [`Options`].
pub fn run_with(share: &Path, timeout: Duration, opts: &Options) -> GuestRun {
    let img = std::fs::canonicalize(image_dir())
        .unwrap_or_else(|e| panic!("systemd guest {}: {e}", image_dir().display()));
    let share = std::fs::canonicalize(share)
        .unwrap_or_else(|e| panic!("test share {}: {e}", share.display()));
    for f in ["out.log", "exit-code"] {
        let _ = std::fs::remove_file(share.join(f));
    }
    let virtiofsd = virtiofsd().expect("virtiofsd (see systemd_guest::missing)");
    let tmp = tempfile::Builder::new()
        .prefix("airlock-sdguest-")
        .tempdir()
        .expect("temp dir");
    let dir = tmp.path();
    let console = dir.join("console.log");
    let mut procs = Procs::default();

    let root_sock = dir.join("rootfs.sock");
    let test_sock = dir.join("test.sock");
    // No --tag: virtiofsd's own help says it crashes QEMU 7.1-8.0 (bookworm
    // has 7.2); the tag is set on QEMU's side.
    procs.spawn(
        "virtiofsd-rootfs",
        Command::new(&virtiofsd)
            .arg("--shared-dir")
            .arg(img.join("root"))
            .arg("--socket-path")
            .arg(&root_sock)
            // The image never changes under a running guest (a rebuild
            // makes a new directory): caching everything halves the boot.
            .args(["--readonly", "--cache=always"]),
        &dir.join("virtiofsd-rootfs.log"),
    );
    procs.spawn(
        "virtiofsd-test",
        Command::new(&virtiofsd)
            .arg("--shared-dir")
            .arg(&share)
            .arg("--socket-path")
            .arg(&test_sock)
            .arg("--cache=auto"),
        &dir.join("virtiofsd-test.log"),
    );
    for sock in [&root_sock, &test_sock] {
        procs.wait_for_socket(sock, dir);
    }

    let mut append = format!(
        "console=ttyS0 panic=-1 quiet systemd.show_status=1 {}",
        opts.extra_append
    );
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args(["-accel", "tcg", "-M", "q35", "-smp", "1"])
        .args(["-m", &MEMORY_MIB.to_string()])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-no-reboot",
            "-display",
            "none",
        ])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-kernel")
        .arg(img.join("vmlinux"))
        .arg("-initrd")
        .arg(img.join("initrd.gz"))
        .args([
            "-object",
            &format!("memory-backend-memfd,id=mem,size={MEMORY_MIB}M,share=on"),
            "-numa",
            "node,memdev=mem",
        ])
        .arg("-chardev")
        .arg(format!("socket,id=rootfs,path={}", root_sock.display()))
        .args(["-device", "vhost-user-fs-pci,chardev=rootfs,tag=rootfs"])
        .arg("-chardev")
        .arg(format!(
            "socket,id=airlocktest,path={}",
            test_sock.display()
        ))
        .args([
            "-device",
            "vhost-user-fs-pci,chardev=airlocktest,tag=airlocktest",
        ]);
    if let Some(mib) = opts.scratch_mib {
        let img = dir.join("scratch.img");
        make_scratch(&img, mib);
        qemu.arg("-drive")
            .arg(format!(
                "file={},if=none,id=scratch,format=raw,cache=unsafe,aio=threads",
                img.display()
            ))
            .args(["-device", "virtio-blk-pci,drive=scratch,serial=scratch"]);
        append.push_str(" airlock.scratch=1");
    }
    qemu.arg("-append").arg(append.trim_end());

    let t0 = Instant::now();
    let qemu_idx = procs.spawn("qemu", &mut qemu, &dir.join("qemu.log"));
    let mut timed_out = false;
    loop {
        if procs.try_wait(qemu_idx) {
            break;
        }
        if t0.elapsed() >= timeout {
            timed_out = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let secs = t0.elapsed().as_secs_f64();
    if timed_out {
        procs.kill_all();
    } else {
        // Each virtiofsd exits when its VM disconnects; give them a moment.
        procs.wait_all(Duration::from_secs(5));
        procs.kill_all();
    }

    let read = |p: &Path| {
        std::fs::read(p)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    };
    let mut host_log = String::new();
    for (name, log) in [
        ("qemu", "qemu.log"),
        ("virtiofsd rootfs", "virtiofsd-rootfs.log"),
        ("virtiofsd airlocktest", "virtiofsd-test.log"),
    ] {
        host_log.push_str(&format!("--- {name}:\n{}", read(&dir.join(log))));
    }
    GuestRun {
        console: read(&console),
        out: read(&share.join("out.log")),
        exit_code: read(&share.join("exit-code")).trim().parse().ok(),
        secs,
        timed_out,
        host_log,
    }
}

/// A sparse raw file of `mib` MiB with an empty ext4, inode tables left to
/// initialise lazily (the guest mounts it with noinit_itable).
fn make_scratch(path: &Path, mib: u64) {
    File::create(path)
        .and_then(|f| f.set_len(mib << 20))
        .expect("scratch disk");
    let out = Command::new("mkfs.ext4")
        .args([
            "-q",
            "-F",
            "-L",
            "scratch",
            "-E",
            "lazy_itable_init=1,lazy_journal_init=1",
        ])
        .arg(path)
        .output()
        .expect("mkfs.ext4");
    assert!(
        out.status.success(),
        "mkfs.ext4 {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The VM's host processes. Every one is killed and reaped when this is
/// dropped, whether the run ended, timed out or panicked; with util-linux's
/// setpriv they also get SIGKILL if the test process itself dies.
#[derive(Default)]
struct Procs {
    kids: Vec<(&'static str, Child, bool)>,
}

impl Procs {
    fn spawn(&mut self, name: &'static str, cmd: &mut Command, log: &Path) -> usize {
        let log = File::create(log).expect("log file");
        let prog = cmd.get_program().to_owned();
        let args: Vec<_> = cmd.get_args().map(ToOwned::to_owned).collect();
        let mut wrapped = if pdeathsig_works() {
            let mut w = Command::new("setpriv");
            w.args(["--pdeathsig", "KILL", "--"]).arg(&prog).args(&args);
            w
        } else {
            let mut w = Command::new(&prog);
            w.args(&args);
            w
        };
        let child = wrapped
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({}): {e}", prog.to_string_lossy()));
        self.kids.push((name, child, false));
        self.kids.len() - 1
    }

    /// True once child `i` has exited (reaped).
    fn try_wait(&mut self, i: usize) -> bool {
        let (_, child, done) = &mut self.kids[i];
        if !*done && !matches!(child.try_wait(), Ok(None)) {
            *done = true;
        }
        *done
    }

    fn wait_all(&mut self, limit: Duration) {
        let t0 = Instant::now();
        while t0.elapsed() < limit {
            if (0..self.kids.len()).all(|i| self.try_wait(i)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill_all(&mut self) {
        for (_, child, done) in &mut self.kids {
            if !*done {
                let _ = child.kill();
                let _ = child.wait();
                *done = true;
            }
        }
    }

    /// Waits until virtiofsd has created `sock` (QEMU cannot connect before).
    /// Connecting to probe it is not an option: virtiofsd serves exactly one
    /// client and exits when it disconnects.
    fn wait_for_socket(&mut self, sock: &Path, dir: &Path) {
        let t0 = Instant::now();
        while !sock.exists() {
            for i in 0..self.kids.len() {
                if self.try_wait(i) {
                    let name = self.kids[i].0;
                    let log = std::fs::read_to_string(dir.join(format!("{name}.log")))
                        .unwrap_or_default();
                    panic!("{name} exited before QEMU started: {log}");
                }
            }
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "virtiofsd did not create {} within 20 s",
                sock.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // bind() creates the file just before listen().
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// Whether `setpriv --pdeathsig` is available (util-linux 2.33 and later).
fn pdeathsig_works() -> bool {
    static WORKS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *WORKS.get_or_init(|| {
        Command::new("setpriv")
            .args(["--pdeathsig", "KILL", "--", "true"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}
