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
}

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
