//! VM backends behind one narrow trait. A backend boots a kernel with a set
//! of disks and two captured character devices (the kernel console and the
//! agent channel), waits for it to power off, and kills it on timeout.
//!
//! The spec is deliberately what both QEMU and cloud-hypervisor can express:
//! direct kernel boot, virtio-blk disks with serials, a serial port to a
//! file, a virtio console to a file, and (later) one virtio-net TAP.

pub mod ch;
pub mod ch_api;
pub mod qemu;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot start the VM with {binary}")]
    Spawn {
        binary: String,
        #[source]
        source: std::io::Error,
    },
    #[error("waiting for the VM failed")]
    Wait(#[source] std::io::Error),
    #[error("guest image file {0} is missing: run vm-images/guest/build-guest.sh")]
    MissingImage(PathBuf),
    #[error("the VMM refused {endpoint}: {why}")]
    Api { endpoint: &'static str, why: String },
    #[error("this backend cannot {0}")]
    Unsupported(&'static str),
}
pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    pub path: PathBuf,
    /// The guest finds its disks by this serial (`/sys/block/vd*/serial`).
    pub serial: String,
    pub readonly: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmSpec {
    /// Unique per VM; used for the process name.
    pub name: String,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub cmdline: String,
    pub memory_mib: u64,
    pub vcpus: u32,
    pub disks: Vec<Disk>,
    /// Kernel console (serial port) goes here.
    pub console_log: PathBuf,
    /// The agent channel (virtio console, `/dev/hvc0`) goes here.
    pub channel_log: PathBuf,
    /// The hypervisor writes its pid here, so a restarted daemon can find
    /// and kill an orphaned VM.
    pub pidfile: PathBuf,
    /// One virtio-net NIC on this existing TAP device (fetch phase only).
    pub tap: Option<String>,
    /// Host directories shared with the guest over virtio-fs (by tag).
    pub shares: Vec<Share>,
    /// Called with the pid of every process the backend starts for this VM
    /// (the VMM, virtiofsd), right after it is spawned: it moves them into
    /// the job's unit ([`crate::supervise`]).
    pub adopt: Adopt,
}

type AdoptFn = dyn Fn(u32) -> BoxFuture<'static, std::result::Result<(), String>> + Send + Sync;

/// Where a VM's processes go once spawned; [`Adopt::none`] leaves them
/// where they are (airlockd's own cgroup).
#[derive(Clone, Default)]
pub struct Adopt(Option<std::sync::Arc<AdoptFn>>);

impl Adopt {
    pub fn none() -> Adopt {
        Adopt(None)
    }

    pub fn new(
        f: impl Fn(u32) -> BoxFuture<'static, std::result::Result<(), String>> + Send + Sync + 'static,
    ) -> Adopt {
        Adopt(Some(std::sync::Arc::new(f)))
    }

    /// Adopt `child`; on failure the caller kills it and fails the boot.
    pub async fn child(&self, child: &tokio::process::Child) -> Result<()> {
        match (&self.0, child.id()) {
            (Some(f), Some(pid)) => f(pid).await.map_err(|why| Error::Api {
                endpoint: "job unit",
                why: format!("cannot move process {pid} into the job's unit: {why}"),
            }),
            _ => Ok(()),
        }
    }
}

impl std::fmt::Debug for Adopt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Adopt(hook)"
        } else {
            "Adopt(none)"
        })
    }
}

/// Two specs are equal whatever their hooks.
impl PartialEq for Adopt {
    fn eq(&self, _: &Adopt) -> bool {
        true
    }
}
impl Eq for Adopt {}

/// A host directory the guest mounts with `mount -t virtiofs TAG`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    pub tag: String,
    pub dir: PathBuf,
    pub readonly: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmExit {
    /// The guest powered off; `ok` is the hypervisor's own exit status.
    PoweredOff { ok: bool, detail: String },
    /// Killed after the deadline.
    TimedOut,
    /// Killed because the caller cancelled it (e.g. boot timeout).
    Killed(String),
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Something that can be awaited to stop a VM early, with the reason.
pub type Cancel = tokio::sync::oneshot::Receiver<String>;

pub trait VmBackend: Send + Sync {
    /// `kvm` or `tcg` (or the backend's own word for what it runs on).
    fn accel(&self) -> &str;
    /// Boot, wait for power-off; kill at `timeout` or when `cancel` fires.
    /// No VM process outlives the returned future, even if it is dropped.
    fn run<'a>(
        &'a self,
        spec: &'a VmSpec,
        timeout: Duration,
        cancel: Cancel,
    ) -> BoxFuture<'a, Result<VmExit>>;
}

/// Boot the guest once with `airlock.probe=1` (its init prints
/// `AIRLOCK-PROBE-OK` on the console and powers off): can this backend run
/// this guest here? Returns how long it took, or why not.
pub async fn probe_boot(
    backend: &dyn VmBackend,
    kernel: &std::path::Path,
    initrd: &std::path::Path,
    scratch: &std::path::Path,
    timeout: Duration,
) -> std::result::Result<Duration, String> {
    let _ = std::fs::create_dir_all(scratch);
    let console = scratch.join("probe-console.log");
    let spec = VmSpec {
        name: "airlock-probe".into(),
        kernel: kernel.into(),
        initrd: initrd.into(),
        cmdline: "console=ttyS0 quiet panic=-1 airlock.probe=1".into(),
        memory_mib: 256,
        vcpus: 1,
        disks: vec![],
        console_log: console.clone(),
        channel_log: scratch.join("probe-channel.log"),
        pidfile: scratch.join("probe.pid"),
        tap: None,
        shares: vec![],
        adopt: Adopt::none(),
    };
    let t0 = std::time::Instant::now();
    let (_tx, rx) = tokio::sync::oneshot::channel();
    let res = backend.run(&spec, timeout, rx).await;
    let out = std::fs::read_to_string(&console).unwrap_or_default();
    let _ = std::fs::remove_file(&console);
    let _ = std::fs::remove_file(scratch.join("probe-channel.log"));
    if out.contains("AIRLOCK-PROBE-OK") {
        return Ok(t0.elapsed());
    }
    let last = out
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("nothing");
    Err(match res {
        Ok(VmExit::TimedOut) => format!(
            "the probe boot did not reach the guest's init within {}s (last console line: {last})",
            timeout.as_secs()
        ),
        Ok(VmExit::PoweredOff { detail, .. }) => format!(
            "the probe boot ended without reaching the guest's init ({}; last console line: {last})",
            detail.lines().next().unwrap_or("")
        ),
        Ok(VmExit::Killed(r)) => r,
        Err(e) => format!("the probe boot could not start: {}", crate::runner::error_chain(&e)),
    })
}

/// The user a VMM and its helpers run as instead of airlockd's (config
/// `vm.user`). It gets the VM's writable files and its TAP; everything else
/// it needs is readable by others anyway (guest image, read-only disks) or
/// is the operator's to grant (`/dev/kvm`, usually through group `kvm`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (`kvm`, …).
    pub groups: Vec<u32>,
}

impl RunAs {
    /// `NAME` (from the user database, with its groups) or `UID:GID`.
    pub fn parse(s: &str) -> std::result::Result<RunAs, String> {
        if let Some((u, g)) = s.split_once(':') {
            let uid = u.parse().map_err(|_| format!("vm.user {s:?}: bad uid"))?;
            let gid = g.parse().map_err(|_| format!("vm.user {s:?}: bad gid"))?;
            return Ok(RunAs {
                uid,
                gid,
                groups: vec![gid],
            });
        }
        let u = nix::unistd::User::from_name(s)
            .map_err(|e| format!("vm.user {s:?}: {e}"))?
            .ok_or_else(|| format!("vm.user {s:?}: no such user"))?;
        let name = std::ffi::CString::new(s).map_err(|_| format!("vm.user {s:?}: bad name"))?;
        let groups = nix::unistd::getgrouplist(&name, u.gid)
            .map_err(|e| format!("vm.user {s:?}: its groups: {e}"))?
            .into_iter()
            .map(|g| g.as_raw())
            .collect();
        Ok(RunAs {
            uid: u.uid.as_raw(),
            gid: u.gid.as_raw(),
            groups,
        })
    }

    /// Give the VM's writable files (its logs, its read-write disks) and
    /// `dir` (its sockets) to this user.
    pub fn give(&self, spec: &VmSpec, dir: &std::path::Path) -> std::io::Result<()> {
        let own = |p: &std::path::Path| std::os::unix::fs::chown(p, Some(self.uid), Some(self.gid));
        own(dir)?;
        for f in [&spec.console_log, &spec.channel_log] {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(f)?;
            own(f)?;
        }
        for d in spec.disks.iter().filter(|d| !d.readonly) {
            own(&d.path)?;
        }
        Ok(())
    }

    /// Switch `cmd`'s process to this user before exec (groups, gid, uid),
    /// then ask for SIGKILL when airlockd dies (a credential change clears
    /// that, so it comes last).
    pub fn apply(&self, cmd: &mut tokio::process::Command) {
        let me = self.clone();
        #[allow(unsafe_code)]
        // SAFETY: the closure runs in the forked child before exec and only
        // calls setgroups(2), setgid(2), setuid(2) and prctl(2), which are
        // async-signal-safe; the group list was allocated before the fork.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setgroups(me.groups.len(), me.groups.as_ptr()) != 0
                    || libc::setgid(me.gid) != 0
                    || libc::setuid(me.uid) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
    }
}

/// The child dies with airlockd, even when airlockd is killed with SIGKILL.
pub fn die_with_parent(cmd: &mut tokio::process::Command) {
    #[allow(unsafe_code)]
    // SAFETY: the closure runs in the forked child before exec and only
    // calls prctl(2), which is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}
