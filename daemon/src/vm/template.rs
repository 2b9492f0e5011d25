//! Guest templates (QEMU): boot a guest once, save it, and start each job's
//! VM by restoring that saved state instead of booting (issue 29).
//!
//! A template is booted with `airlock.template=1`, the guest image's root
//! disk in its slot, placeholders in the job's four, and the agent
//! appended to the initramfs ([`write_initrd`]). The guest's init lets go
//! of the placeholder disks, lets the kernel's RNG become ready, mounts the
//! root and starts the agent in template mode, which says
//! [`TEMPLATE_READY`] on the virtio port [`airlock_wire::CTL_PORT`] and waits
//! there. airlockd then stops it and saves its device state with QEMU's
//! `x-ignore-shared` migration capability: guest RAM is not in the stream,
//! it stays in the template's memory file, a memfd that airlockd seals
//! against writes (`F_SEAL_WRITE`) once the template QEMU is gone.
//!
//! Each job's VM ("clone") is QEMU started with the same command line
//! except for its backends (the job's files on the five disk slots, its
//! logs, its TAP), a fresh VM generation ID, the memory file mapped
//! privately (`share=off`: the clone's writes are its own copies, the
//! memfd is never written) and `-incoming defer`; airlockd feeds it the
//! saved state (`migrate-incoming fd:4`), starts its vCPUs, and writes its
//! [`GoRecord`]: the boot words a cold boot has on its command line, the
//! host clock, and a seed the agent mixes into the guest's RNG before it
//! does anything (the VM generation ID change has reseeded it already).
//! Only then does the agent bind the job's disks and mount them.
//!
//! Anything that goes wrong with a template is a cold boot, with the
//! reason in the log. A template lives as long as airlockd (its memory is
//! airlockd's memfd) and is built by the first job that needs it.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{ChildStdin, ChildStdout, Command};
use tracing::info;

use super::VmSpec;
use airlock_wire::{disk, GoRecord, TEMPLATE_READY};

/// Bumped whenever what a template holds or how a clone is started
/// changes (the guest's template mode, the command line's shape).
const FORMAT: u32 = 2;

/// The template's VM generation ID; every VM restored from it gets a new
/// one, which the guest's vmgenid driver takes as "I was cloned" and
/// reseeds its RNG at once.
pub(super) const TEMPLATE_VMGENID: &str = "a1a1a1a1-0000-4000-8000-000000000029";

/// A fresh VM generation ID for a restored VM; the template's own with
/// `AIRLOCK_FAULT_SAME_VMGENID=1` (tests only: it shows what the change
/// protects against, two restored guests drawing the same random bytes).
pub(super) fn clone_vmgenid() -> String {
    if std::env::var_os("AIRLOCK_FAULT_SAME_VMGENID").is_some_and(|v| v == "1") {
        tracing::warn!("AIRLOCK_FAULT_SAME_VMGENID=1: restored VMs keep the template's VM generation ID (a test's fault)");
        return TEMPLATE_VMGENID.to_owned();
    }
    uuid::Uuid::new_v4().to_string()
}

/// The fd the guest RAM's memfd has in QEMU, and the one its saved state has.
pub(super) const MEMORY_FD: RawFd = 3;
pub(super) const STATE_FD: RawFd = 4;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot {what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("QEMU's monitor: {0}")]
    Qmp(String),
    #[error("the template guest {0}")]
    Guest(String),
}
pub type Result<T> = std::result::Result<T, Error>;

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// What decides a template: two VMs with the same shape may share one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Shape {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// The command line without the per-boot `airlock.*` words.
    pub cmdline: String,
    pub memory_mib: u64,
    pub vcpus: u32,
    /// The fetch phase's VM has a NIC (and so its own template).
    pub nic: bool,
    /// The guest image's root disk (read-only), mounted in the template.
    pub root: PathBuf,
    /// The agent binary, started in the template.
    pub agent: PathBuf,
}

impl Shape {
    /// The template shape of `spec` with `agent`, or why it cannot be
    /// restored.
    pub fn of(spec: &VmSpec, agent: &Path) -> std::result::Result<Shape, &'static str> {
        if !spec.shares.is_empty() {
            return Err("it shares directories (virtio-fs)");
        }
        if spec
            .cmdline
            .split_whitespace()
            .any(|w| w == "airlock.probe=1")
        {
            return Err("a probe boot");
        }
        let root = match spec.disks.iter().find(|d| d.serial == disk::ROOT) {
            None => return Err("it has no guest root disk"),
            Some(d) if !d.readonly => return Err("its root disk is writable"),
            Some(d) => d.path.clone(),
        };
        if spec
            .disks
            .iter()
            .any(|d| !disk::ALL.contains(&d.serial.as_str()))
        {
            return Err("a disk is not one of the job's slots");
        }
        let (_, fixed) = split_cmdline(&spec.cmdline);
        Ok(Shape {
            kernel: spec.kernel.clone(),
            initrd: spec.initrd.clone(),
            cmdline: fixed,
            memory_mib: spec.memory_mib,
            vcpus: spec.vcpus,
            nic: spec.tap.is_some(),
            root,
            agent: agent.to_owned(),
        })
    }
}

/// The per-boot words of a command line (`airlock.*`: they travel in the
/// go record of a restored VM) and the rest.
pub fn split_cmdline(cmdline: &str) -> (String, String) {
    let (boot, fixed): (Vec<&str>, Vec<&str>) = cmdline
        .split_whitespace()
        .partition(|w| w.starts_with("airlock."));
    (boot.join(" "), fixed.join(" "))
}

/// A file's identity for the key: its path, size and modification time
/// (guest images are never rewritten in place: a new build is a new dir).
fn file_id(p: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata(p) {
        Ok(m) => format!(
            "{} {} {}.{}",
            p.display(),
            m.size(),
            m.mtime(),
            m.mtime_nsec()
        ),
        Err(_) => format!("{} missing", p.display()),
    }
}

/// The template's key: its shape and `vmm`, everything of the VMM it
/// depends on ([`vmm_id`]).
pub fn key(vmm: &str, shape: &Shape) -> String {
    let mut h = Sha256::new();
    for part in [
        format!("format {FORMAT}"),
        format!("vmm {vmm}"),
        format!("kernel {}", file_id(&shape.kernel)),
        format!("initrd {}", file_id(&shape.initrd)),
        format!("root {}", file_id(&shape.root)),
        format!("agent {}", file_id(&shape.agent)),
        format!("cmdline {}", shape.cmdline),
        format!(
            "memory {} vcpus {} nic {}",
            shape.memory_mib, shape.vcpus, shape.nic
        ),
    ] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    h.finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A VMM's identity for the key: its binary (found on PATH), machine and
/// accelerator.
pub fn vmm_id(binary: &str, machine: &str, accel: &str) -> String {
    format!(
        "{} machine {machine} accel {accel}",
        file_id(&which(binary))
    )
}

/// `name` on PATH (or as given when it has a slash).
fn which(name: &str) -> PathBuf {
    if name.contains('/') {
        return PathBuf::from(name);
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(name))
}

/// A saved guest: its sealed memory and its device state.
#[derive(Debug)]
pub struct Template {
    pub key: String,
    /// The initramfs with the agent appended: a clone's command line
    /// names the same file as its template's.
    pub initrd: PathBuf,
    memory: OwnedFd,
    pub state: PathBuf,
    pub state_bytes: u64,
}

impl Template {
    pub(super) fn memory_fd(&self) -> RawFd {
        self.memory.as_raw_fd()
    }
}

/// What a saved template says of itself in the log.
pub trait Saved: Send + Sync + 'static {
    /// The bytes saved beside the guest's memory (its device state).
    fn state_bytes(&self) -> u64;
}

impl Saved for Template {
    fn state_bytes(&self) -> u64 {
        self.state_bytes
    }
}

type Cell<T> = Arc<tokio::sync::OnceCell<std::result::Result<Arc<T>, String>>>;

/// The daemon's templates, one per key, each built once (by the first VM
/// that needs it; the others wait for it). `T` is the backend's saved
/// template: QEMU's [`Template`], cloud-hypervisor's
/// [`super::ch_template::ChTemplate`].
pub struct Templates<T = Template> {
    dir: PathBuf,
    /// The agent binary templates start (the one job disks carry).
    pub agent: PathBuf,
    cells: Mutex<HashMap<String, Cell<T>>>,
}

impl<T> std::fmt::Debug for Templates<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Templates({})", self.dir.display())
    }
}

impl<T: Saved> Templates<T> {
    /// Templates' scratch files (console log, state file, initramfs) go
    /// under `dir`; `agent` is started in each.
    pub fn new(dir: PathBuf, agent: PathBuf) -> Templates<T> {
        Templates {
            dir,
            agent,
            cells: Mutex::new(HashMap::new()),
        }
    }

    /// The template `key`, built now by `build` (given its scratch
    /// directory) if this is its first use; or why there is none (kept: a
    /// template that failed is not tried again until airlockd restarts).
    pub async fn get<F, Fut>(&self, key: &str, build: F) -> std::result::Result<Arc<T>, String>
    where
        F: FnOnce(PathBuf) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let cell = self
            .cells
            .lock()
            .expect("lock")
            .entry(key.to_owned())
            .or_default()
            .clone();
        cell.get_or_init(|| async {
            let t0 = Instant::now();
            match build(self.dir.join(key)).await {
                Ok(t) => {
                    info!(template = %key, secs = t0.elapsed().as_secs_f64(), state_bytes = t.state_bytes(), "guest template built");
                    Ok(Arc::new(t))
                }
                Err(e) => {
                    let why = crate::error::chain(&e);
                    tracing::warn!(template = %key, %why, "guest template could not be built; VMs of its shape boot cold");
                    Err(why)
                }
            }
        })
        .await
        .clone()
    }
}

/// A memfd of `mib` MiB that may be sealed.
#[allow(unsafe_code)]
pub(super) fn memfd(mib: u64) -> Result<OwnedFd> {
    let name = c"airlock-template";
    // SAFETY: memfd_create with a valid C string; the fd is owned below.
    let fd =
        unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        return Err(io("create the template's memory (memfd)")(
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: fd was just returned by memfd_create and is not owned elsewhere.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = (mib << 20) as libc::off_t;
    // SAFETY: ftruncate on an fd we own.
    if unsafe { libc::ftruncate(fd.as_raw_fd(), len) } != 0 {
        return Err(io("size the template's memory")(
            std::io::Error::last_os_error(),
        ));
    }
    Ok(fd)
}

/// No more writes, ever, to the template's memory (private mappings of
/// it stay writable: their pages are the mapper's own copies).
#[allow(unsafe_code)]
pub(super) fn seal(fd: &OwnedFd) -> Result<()> {
    let seals = libc::F_SEAL_WRITE | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
    // SAFETY: fcntl(F_ADD_SEALS) on an fd we own.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
        return Err(io("seal the template's memory")(
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// The seals a memfd has (for tests and the log).
#[allow(unsafe_code)]
pub fn seals(t: &Template) -> i32 {
    // SAFETY: fcntl(F_GET_SEALS) on an fd we own.
    unsafe { libc::fcntl(t.memory.as_raw_fd(), libc::F_GET_SEALS) }
}

/// Make `path` a FIFO (removing what was there).
fn fifo(path: &Path) -> Result<()> {
    let _ = std::fs::remove_file(path);
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600))
        .map_err(|e| io(format!("make the FIFO {}", path.display()))(e.into()))
}

/// The control port's FIFOs of a VM whose ctl chardev path is `ctl`.
pub(super) fn ctl_fifos(ctl: &Path, owner: Option<&super::RunAs>) -> Result<()> {
    for suffix in [".in", ".out"] {
        let p = PathBuf::from(format!("{}{suffix}", ctl.display()));
        fifo(&p)?;
        if let Some(r) = owner {
            std::os::unix::fs::chown(&p, Some(r.uid), Some(r.gid))
                .map_err(io(format!("give {} to vm.user", p.display())))?;
        }
    }
    Ok(())
}

/// Give the child `fds` as fds 3, 4, … (in order), open across exec.
pub(super) fn pass_fds(cmd: &mut Command, fds: Vec<RawFd>) {
    #[allow(unsafe_code)]
    // SAFETY: the closure runs in the forked child before exec and only
    // calls dup2(2) and fcntl(2), which are async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            for (i, &fd) in fds.iter().enumerate() {
                let target = MEMORY_FD + i as RawFd;
                if fd == target {
                    let flags = libc::fcntl(fd, libc::F_GETFD);
                    if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                } else if libc::dup2(fd, target) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// QEMU's monitor on its stdin and stdout.
pub(super) struct Qmp {
    tx: ChildStdin,
    rx: Lines<BufReader<ChildStdout>>,
}

/// How long one monitor answer may take.
const QMP_LIMIT: Duration = Duration::from_secs(30);

impl Qmp {
    /// Read the greeting and leave negotiation mode.
    pub(super) async fn open(tx: ChildStdin, out: ChildStdout) -> Result<Qmp> {
        let mut q = Qmp {
            tx,
            rx: BufReader::new(out).lines(),
        };
        q.next().await?;
        q.cmd("qmp_capabilities", serde_json::json!({})).await?;
        Ok(q)
    }

    async fn next(&mut self) -> Result<serde_json::Value> {
        let line = tokio::time::timeout(QMP_LIMIT, self.rx.next_line())
            .await
            .map_err(|_| Error::Qmp(format!("no answer within {QMP_LIMIT:?}")))?
            .map_err(io("read QEMU's monitor"))?
            .ok_or_else(|| Error::Qmp("QEMU closed its monitor".into()))?;
        serde_json::from_str(&line).map_err(|e| Error::Qmp(format!("not JSON ({e}): {line}")))
    }

    /// Run `execute`; its `return` value (events on the way are skipped).
    pub(super) async fn cmd(
        &mut self,
        execute: &str,
        args: serde_json::Value,
    ) -> Result<serde_json::Value> {
        let mut m = serde_json::json!({ "execute": execute });
        if args.as_object().is_some_and(|o| !o.is_empty()) {
            m["arguments"] = args;
        }
        let mut line = m.to_string();
        line.push('\n');
        self.tx
            .write_all(line.as_bytes())
            .await
            .map_err(io("write to QEMU's monitor"))?;
        loop {
            let r = self.next().await?;
            if r.get("event").is_some() {
                continue;
            }
            if let Some(e) = r.get("error") {
                return Err(Error::Qmp(format!("{execute}: {e}")));
            }
            return Ok(r.get("return").cloned().unwrap_or_default());
        }
    }

    /// Turn on `x-ignore-shared`: guest RAM (the memory file) is not in
    /// the migration stream.
    pub(super) async fn ignore_shared(&mut self) -> Result<()> {
        self.cmd(
            "migrate-set-capabilities",
            serde_json::json!({"capabilities": [{"capability": "x-ignore-shared", "state": true}]}),
        )
        .await
        .map(|_| ())
    }

    /// Wait until the migration (either way) is `completed`.
    pub(super) async fn migrated(&mut self, limit: Duration) -> Result<()> {
        let t0 = Instant::now();
        loop {
            let st = self.cmd("query-migrate", serde_json::json!({})).await?;
            match st.get("status").and_then(|s| s.as_str()) {
                Some("completed") => return Ok(()),
                Some("failed") | Some("cancelled") => {
                    return Err(Error::Qmp(format!("migration {st}")));
                }
                _ if t0.elapsed() > limit => {
                    return Err(Error::Qmp(format!(
                        "migration not done within {limit:?}: {st}"
                    )));
                }
                _ => tokio::time::sleep(Duration::from_millis(2)).await,
            }
        }
    }

    /// Hand the monitor back (the VM runs on; its stdin stays open).
    pub(super) fn into_stdin(self) -> ChildStdin {
        self.tx
    }
}

impl Template {
    pub(super) fn new(
        key: &str,
        initrd: PathBuf,
        memory: OwnedFd,
        state: PathBuf,
        state_bytes: u64,
    ) -> Template {
        Template {
            key: key.to_owned(),
            initrd,
            memory,
            state,
            state_bytes,
        }
    }
}

/// The spec of a template VM of `shape`, its files in `dir`.
pub(super) fn template_spec(shape: &Shape, key: &str, dir: &Path) -> VmSpec {
    VmSpec {
        name: format!("airlock-template-{key}"),
        kernel: shape.kernel.clone(),
        initrd: dir.join("initrd"),
        cmdline: shape.cmdline.clone(),
        memory_mib: shape.memory_mib,
        vcpus: shape.vcpus,
        disks: vec![super::Disk {
            path: shape.root.clone(),
            serial: disk::ROOT.into(),
            readonly: true,
        }],
        console_log: dir.join("console.log"),
        channel_log: dir.join("channel.log"),
        pidfile: dir.join("qemu.pid"),
        tap: None,
        shares: vec![],
        adopt: super::Adopt::none(),
    }
}

/// The template's initramfs: the image's `base` with a second archive
/// appended (the kernel unpacks concatenated archives in turn) that holds
/// `agent` as `/airlock-agent`, for init to start in template mode.
pub fn write_initrd(base: &Path, agent: &Path, out: &Path) -> Result<()> {
    let mut bytes = std::fs::read(base).map_err(io(format!("read {}", base.display())))?;
    let exe = std::fs::read(agent).map_err(io(format!("read the agent {}", agent.display())))?;
    pad4(&mut bytes);
    cpio_entry(&mut bytes, "airlock-agent", 0o100755, &exe);
    cpio_entry(&mut bytes, "TRAILER!!!", 0, &[]);
    std::fs::write(out, &bytes).map_err(io(format!("write {}", out.display())))
}

fn pad4(b: &mut Vec<u8>) {
    while !b.len().is_multiple_of(4) {
        b.push(0);
    }
}

/// One entry of a `newc` cpio archive (what the kernel's initramfs
/// unpacker reads): the header, the name, the data, each padded to 4.
fn cpio_entry(out: &mut Vec<u8>, name: &str, mode: u32, data: &[u8]) {
    let nlink = if mode == 0 { 0 } else { 1 };
    let fields = [
        1,
        mode,
        0,
        0,
        nlink,
        0,
        data.len() as u32,
        0,
        0,
        0,
        0,
        name.len() as u32 + 1,
        0,
    ];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08x}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
    out.extend_from_slice(data);
    pad4(out);
}

/// Wait until the template guest says it is ready on its control port.
pub(super) async fn wait_ready(ctl: &Path, console: &Path, limit: Duration) -> Result<()> {
    let out = PathBuf::from(format!("{}.out", ctl.display()));
    ready_on(tokio::fs::File::open(&out), "control port", console, limit).await
}

/// Wait (`limit` in all, opening included) until what `open` gives (the
/// guest's `port`: its control port, or on cloud-hypervisor its console)
/// has a line saying the template is ready.
pub(super) async fn ready_on<R>(
    open: impl std::future::Future<Output = std::io::Result<R>>,
    port: &str,
    console: &Path,
    limit: Duration,
) -> Result<()>
where
    R: tokio::io::AsyncRead + Unpin,
{
    let ready = tokio::time::timeout(limit, async {
        let mut lines = BufReader::new(open.await?).lines();
        while let Some(l) = lines.next_line().await? {
            if l.trim() == TEMPLATE_READY {
                return Ok(true);
            }
        }
        Ok::<bool, std::io::Error>(false)
    })
    .await;
    match ready {
        Ok(Ok(true)) => Ok(()),
        Ok(Ok(false)) => Err(Error::Guest(format!(
            "closed its {port} without saying it was ready"
        ))),
        Ok(Err(e)) => Err(io(format!("read the template's {port}"))(e)),
        Err(_) => {
            let text = std::fs::read_to_string(console).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(5).collect();
            Err(Error::Guest(format!(
                "was not ready within {limit:?} (console: {})",
                tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
            )))
        }
    }
}

/// A listener the template QEMU sends its state to (as vm.user, if any).
pub(super) fn state_socket(
    dir: &Path,
    owner: Option<&super::RunAs>,
) -> Result<(PathBuf, tokio::net::UnixListener)> {
    let sock = dir.join("migrate.sock");
    let _ = std::fs::remove_file(&sock);
    let listener =
        tokio::net::UnixListener::bind(&sock).map_err(io("listen for the template's state"))?;
    if let Some(r) = owner {
        std::os::unix::fs::chown(&sock, Some(r.uid), Some(r.gid))
            .map_err(io("give the state socket to vm.user"))?;
    }
    Ok((sock, listener))
}

/// Stop the template VM and save its device state (RAM stays in the
/// memfd) through `listener` to `dir/state`; returns the file and its size.
pub(super) async fn save(
    qmp: &mut Qmp,
    dir: &Path,
    sock: &Path,
    listener: tokio::net::UnixListener,
) -> Result<(PathBuf, u64)> {
    qmp.cmd("stop", serde_json::json!({})).await?;
    qmp.ignore_shared().await?;
    let state = dir.join("state");
    let tmp = dir.join("state.tmp");
    let copy = {
        let tmp = tmp.clone();
        tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await?;
            let mut f = tokio::fs::File::create(&tmp).await?;
            let n = tokio::io::copy(&mut conn, &mut f).await?;
            f.sync_all().await?;
            Ok::<u64, std::io::Error>(n)
        })
    };
    qmp.cmd(
        "migrate",
        serde_json::json!({"uri": format!("unix:{}", sock.display())}),
    )
    .await?;
    qmp.migrated(Duration::from_secs(60)).await?;
    let bytes = copy
        .await
        .map_err(|e| Error::Qmp(format!("state copy task: {e}")))?
        .map_err(io("save the template's state"))?;
    let _ = std::fs::remove_file(sock);
    std::fs::rename(&tmp, &state).map_err(io("keep the template's state"))?;
    Ok((state, bytes))
}

/// The go record for a clone of `spec`: its boot words, now, a fresh seed.
pub fn go_record(spec: &VmSpec) -> GoRecord {
    let (words, _) = split_cmdline(&spec.cmdline);
    let mut seed = [0u8; 32];
    getrandom(&mut seed);
    GoRecord {
        unix_secs: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default(),
        seed,
        words,
    }
}

/// Fill `buf` from the host's RNG.
fn getrandom(buf: &mut [u8]) {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(buf))
        .expect("the host's /dev/urandom");
}

/// Write the go record to a restored VM's control port.
pub(super) async fn send_go(ctl: &Path, rec: &GoRecord) -> Result<()> {
    let p = PathBuf::from(format!("{}.in", ctl.display()));
    let mut f = tokio::fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .await
        .map_err(io(format!("open {}", p.display())))?;
    f.write_all(rec.encode().as_bytes())
        .await
        .map_err(io("write the go record"))
}

/// The control port's chardev path of a VM (its FIFOs are `<path>.in`
/// and `<path>.out`), beside its console log.
pub fn ctl_path(spec: &VmSpec) -> PathBuf {
    spec.console_log
        .parent()
        .unwrap_or(Path::new("."))
        .join(format!("{}.ctl", spec.name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_words_travel_in_the_go_record_and_the_rest_decides_the_template() {
        let (boot, fixed) = split_cmdline(
            "console=ttyS0 quiet panic=-1 airlock.phase=fetch airlock.net=10.0.0.2/30,10.0.0.1 airlock.base=1",
        );
        assert_eq!(
            boot,
            "airlock.phase=fetch airlock.net=10.0.0.2/30,10.0.0.1 airlock.base=1"
        );
        assert_eq!(fixed, "console=ttyS0 quiet panic=-1");
    }

    #[test]
    fn a_go_record_has_a_new_seed_each_time() {
        let spec = VmSpec {
            name: "x".into(),
            kernel: "/k".into(),
            initrd: "/i".into(),
            cmdline: "quiet airlock.phase=build".into(),
            memory_mib: 512,
            vcpus: 1,
            disks: vec![],
            console_log: "/tmp/c".into(),
            channel_log: "/tmp/h".into(),
            pidfile: "/tmp/p".into(),
            tap: None,
            shares: vec![],
            adopt: super::super::Adopt::none(),
        };
        let (a, b) = (go_record(&spec), go_record(&spec));
        assert_ne!(a.seed, b.seed);
        assert_eq!(a.words, "airlock.phase=build");
        assert!(a.unix_secs > 1_700_000_000);
    }

    #[test]
    fn a_sealed_memfd_refuses_writes_but_not_private_copies() {
        let fd = memfd(1).unwrap();
        seal(&fd).unwrap();
        let t = Template {
            key: "k".into(),
            initrd: PathBuf::new(),
            memory: fd,
            state: PathBuf::new(),
            state_bytes: 0,
        };
        assert_ne!(seals(&t) & libc::F_SEAL_WRITE, 0);
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(format!("/proc/self/fd/{}", t.memory_fd()))
            .unwrap();
        use std::io::Write;
        let e = f.write_all(b"poison").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{e}");
    }

    /// The appended archive is one `cpio` itself reads: the agent,
    /// executable, under the name init looks for.
    #[test]
    fn the_template_initrd_carries_the_agent_after_the_image_initrd() {
        let d = tempfile::tempdir().unwrap();
        let (base, agent, out) = (d.path().join("b"), d.path().join("a"), d.path().join("o"));
        std::fs::write(&base, b"gzip!").unwrap();
        std::fs::write(&agent, b"\x7fELF agent bytes").unwrap();
        write_initrd(&base, &agent, &out).unwrap();
        let bytes = std::fs::read(&out).unwrap();
        assert_eq!(&bytes[..5], b"gzip!");
        assert_eq!(&bytes[5..8], &[0, 0, 0], "padded to 4");
        let x = d.path().join("x");
        std::fs::create_dir(&x).unwrap();
        let mut cpio = std::process::Command::new("cpio")
            .args(["-i", "--quiet"])
            .current_dir(&x)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("cpio (scripts/setup.sh installs it)");
        use std::io::Write;
        cpio.stdin.take().unwrap().write_all(&bytes[8..]).unwrap();
        assert!(cpio.wait().unwrap().success());
        let got = x.join("airlock-agent");
        assert_eq!(std::fs::read(&got).unwrap(), b"\x7fELF agent bytes");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(got.metadata().unwrap().permissions().mode() & 0o777, 0o755);
    }
}
