//! VM backends behind one narrow trait. A backend boots a kernel with a set
//! of disks and two captured character devices (the kernel console and the
//! agent channel), waits for it to power off, and kills it on timeout.
//!
//! The spec is deliberately what both QEMU and cloud-hypervisor can express:
//! direct kernel boot, virtio-blk disks with serials, a serial port to a
//! file, a virtio console to a file, and (later) one virtio-net TAP.

pub mod ch;
pub mod ch_api;
pub mod ch_template;
pub mod kernel;
pub mod qemu;
pub mod template;

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

/// A VMM just spawned for `spec`: its pid into the pid file (airlockd
/// writes it: the VMM's own would need a directory writable by vm.user),
/// then the process into the job's unit; killed if that fails.
pub(crate) async fn track(spec: &VmSpec, child: &mut tokio::process::Child) -> Result<()> {
    if let Some(pid) = child.id() {
        let _ = std::fs::write(&spec.pidfile, pid.to_string());
    }
    if let Err(e) = spec.adopt.child(child).await {
        let _ = child.kill().await;
        return Err(e);
    }
    Ok(())
}

/// What a VMM said on stderr (trimmed, at most 2000 characters; waits at
/// most 2 s for the pipe to close).
pub(crate) async fn read_stderr(child: &mut tokio::process::Child) -> String {
    let Some(mut e) = child.stderr.take() else {
        return String::new();
    };
    let mut s = String::new();
    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::io::AsyncReadExt::read_to_string(&mut e, &mut s),
    )
    .await;
    s.trim().chars().take(2000).collect()
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
        Err(e) => format!("the probe boot could not start: {}", crate::error::chain(&e)),
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

    /// May this user do `want` (a mask of `r`/`w`/`x` as 4/2/1) to a file
    /// with this owner, group and mode? (The kernel's DAC check, without
    /// capabilities: the VMM has none once it is this user.)
    pub fn may(&self, owner: u32, group: u32, mode: u32, want: u32) -> bool {
        let bits = if self.uid == 0 {
            return true;
        } else if owner == self.uid {
            mode >> 6
        } else if group == self.gid || self.groups.contains(&group) {
            mode >> 3
        } else {
            mode
        };
        bits & want == want
    }

    fn may_path(&self, p: &std::path::Path, want: u32) -> std::io::Result<bool> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(p)?;
        Ok(self.may(m.uid(), m.gid(), m.mode(), want))
    }

    /// The first directory on the way to (and including) `dir` that this
    /// user cannot search, with its mode and owner, for an error message.
    pub fn blocked_on_the_way_to(&self, dir: &std::path::Path) -> Option<String> {
        use std::os::unix::fs::MetadataExt;
        let dir = std::path::absolute(dir).ok()?;
        for d in dir.ancestors().collect::<Vec<_>>().into_iter().rev() {
            let Ok(m) = std::fs::metadata(d) else {
                return Some(format!("{} is missing", d.display()));
            };
            if !self.may(m.uid(), m.gid(), m.mode(), 1) {
                return Some(format!(
                    "{} (mode {:04o}, owner {}:{}) is not searchable by uid {}",
                    d.display(),
                    m.mode() & 0o7777,
                    m.uid(),
                    m.gid(),
                    self.uid
                ));
            }
        }
        None
    }

    /// Let this user search (not list) airlockd's own directories that
    /// lead to its VMs' files (`state_dir`, `jobs/`, `probe/`: mode o+x,
    /// as the NixOS module's `StateDirectoryMode=0711`), then check that
    /// it can reach them: a parent that is not airlockd's is named in the
    /// error, never changed.
    pub fn open_the_way(&self, own: &[&std::path::Path]) -> std::result::Result<(), String> {
        use std::os::unix::fs::PermissionsExt;
        for d in own {
            std::fs::create_dir_all(d)
                .map_err(|e| format!("cannot create {}: {e}", d.display()))?;
            let mode = std::fs::metadata(d)
                .map_err(|e| format!("{}: {e}", d.display()))?
                .permissions()
                .mode();
            if !self.may_path(d, 1).unwrap_or(false) {
                std::fs::set_permissions(
                    d,
                    std::fs::Permissions::from_mode((mode & 0o7777) | 0o001),
                )
                .map_err(|e| format!("cannot let vm.user search {}: {e}", d.display()))?;
                tracing::info!(dir = %d.display(), "made searchable (not readable) for vm.user");
            }
        }
        for d in own {
            if let Some(why) = self.blocked_on_the_way_to(d) {
                return Err(format!(
                    "vm.user (uid {}) cannot reach its VMs' files in {}: {why}; let it search that directory (chmod o+x) or move state_dir",
                    self.uid,
                    d.display()
                ));
            }
        }
        Ok(())
    }

    /// Hand the VM's files to this user: its logs and read-write disks
    /// become its own; read-only disks it cannot read are given to its
    /// group, read-only; the job's directory (where the logs are) lets its
    /// group search (not list) it; `dir` (the VMM's socket directory, if
    /// any) becomes its own. Any other directory on the way to a file must
    /// already be searchable: it is the operator's, and the error names it.
    pub fn give(&self, spec: &VmSpec, dir: Option<&std::path::Path>) -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let own = |p: &std::path::Path| std::os::unix::fs::chown(p, Some(self.uid), Some(self.gid));
        let add_group = |p: &std::path::Path, bits: u32| -> std::io::Result<()> {
            let mode = std::fs::metadata(p)?.permissions().mode() & 0o7777;
            std::os::unix::fs::chown(p, None, Some(self.gid))?;
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode | bits))
        };
        if let Some(job_dir) = spec.console_log.parent() {
            if !self.may_path(job_dir, 1)? {
                add_group(job_dir, 0o010)?;
            }
        }
        if let Some(d) = dir {
            own(d)?;
        }
        for f in [&spec.console_log, &spec.channel_log] {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(f)?;
            own(f)?;
        }
        for d in &spec.disks {
            if !d.readonly {
                own(&d.path)?;
            } else if !self.may_path(&d.path, 4)? {
                add_group(&d.path, 0o040)?;
            }
        }
        let files = [&spec.kernel, &spec.initrd, &spec.console_log]
            .into_iter()
            .chain(spec.disks.iter().map(|d| &d.path))
            .filter(|p| !p.as_os_str().is_empty());
        for f in files {
            if let Some(why) = f.parent().and_then(|p| self.blocked_on_the_way_to(p)) {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    format!("vm.user cannot reach {}: {why}", f.display()),
                ));
            }
            if !self.may_path(f, 4)? {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    format!("vm.user (uid {}) cannot read {}", self.uid, f.display()),
                ));
            }
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

/// Every process of a VM: as `run_as` if given, and dead with airlockd.
pub fn confine(run_as: Option<&RunAs>, cmd: &mut tokio::process::Command) {
    match run_as {
        Some(r) => r.apply(cmd),
        None => die_with_parent(cmd),
    }
}

pub use crate::child::die_with_parent;

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn nobody() -> RunAs {
        RunAs {
            uid: 65534,
            gid: 65533,
            groups: vec![65533, 36],
        }
    }

    #[test]
    fn may_follows_owner_then_group_then_others() {
        let u = nobody();
        assert!(u.may(65534, 0, 0o700, 1), "owner bits");
        assert!(
            !u.may(65534, 65533, 0o070, 4),
            "owner bits, even if the group may"
        );
        assert!(u.may(0, 36, 0o750, 5), "a supplementary group");
        assert!(!u.may(0, 0, 0o750, 1), "others");
        assert!(
            u.may(0, 0, 0o711, 1) && !u.may(0, 0, 0o711, 4),
            "search, not list"
        );
        assert!(
            RunAs {
                uid: 0,
                gid: 0,
                groups: vec![]
            }
            .may(1, 1, 0, 7),
            "root"
        );
    }

    fn spec_in(dir: &std::path::Path) -> VmSpec {
        VmSpec {
            name: "t".into(),
            kernel: dir.join("vmlinux"),
            initrd: PathBuf::new(),
            cmdline: String::new(),
            memory_mib: 256,
            vcpus: 1,
            disks: vec![
                Disk {
                    path: dir.join("job/input.img"),
                    serial: "in".into(),
                    readonly: true,
                },
                Disk {
                    path: dir.join("job/nix.img"),
                    serial: "nix".into(),
                    readonly: false,
                },
            ],
            console_log: dir.join("job/console.log"),
            channel_log: dir.join("job/channel.log"),
            pidfile: dir.join("job/vm.pid"),
            tap: None,
            shares: vec![],
            adopt: Adopt::none(),
        }
    }

    /// Needs root (chown); the suite runs as root.
    #[test]
    fn give_hands_over_only_the_vms_files() {
        if !nix::unistd::geteuid().is_root() {
            crate::testing::skipped("give_hands_over_only_the_vms_files: needs root (chown)");
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o711)).unwrap();
        let job = d.join("job");
        std::fs::create_dir(&job).unwrap();
        std::fs::set_permissions(&job, std::fs::Permissions::from_mode(0o700)).unwrap();
        for (f, mode) in [
            ("vmlinux", 0o644),
            ("job/input.img", 0o600),
            ("job/nix.img", 0o600),
            ("job/build.log", 0o600),
        ] {
            std::fs::write(d.join(f), b"x").unwrap();
            std::fs::set_permissions(d.join(f), std::fs::Permissions::from_mode(mode)).unwrap();
        }
        let u = nobody();
        let spec = spec_in(d);
        u.give(&spec, None).unwrap();
        let meta = |f: &str| std::fs::metadata(d.join(f)).unwrap();
        let m = meta("job");
        assert_eq!(
            (m.uid(), m.gid(), m.mode() & 0o777),
            (0, u.gid, 0o710),
            "search, not list"
        );
        let m = meta("job/input.img");
        assert_eq!(
            (m.uid(), m.gid(), m.mode() & 0o777),
            (0, u.gid, 0o640),
            "read-only stays read-only"
        );
        let m = meta("job/nix.img");
        assert_eq!((m.uid(), m.mode() & 0o777), (u.uid, 0o600));
        for f in ["job/console.log", "job/channel.log"] {
            assert_eq!(meta(f).uid(), u.uid, "{f}");
        }
        let m = meta("job/build.log");
        assert_eq!(
            (m.uid(), m.gid(), m.mode() & 0o777),
            (0, 0, 0o600),
            "not the VM's"
        );
        assert_eq!(meta("vmlinux").uid(), 0, "readable already: untouched");

        // A directory on the way that is not airlockd's to change is named.
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700)).unwrap();
        let e = u.give(&spec, None).unwrap_err().to_string();
        assert!(e.contains(&format!("{} (mode 0700", d.display())), "{e}");
        let e = u.open_the_way(&[&job]).unwrap_err();
        assert!(
            e.contains("cannot reach its VMs' files") && e.contains("mode 0700"),
            "{e}"
        );
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o711)).unwrap();
        u.open_the_way(&[&job, &d.join("probe")]).unwrap();
        assert_eq!(meta("probe").mode() & 0o001, 0o001);
    }
}
