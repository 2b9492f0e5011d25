//! VM backends behind one narrow trait. A backend boots a kernel with a set
//! of disks and two captured character devices (the kernel console and the
//! agent channel), waits for it to power off, and kills it on timeout.
//!
//! The spec is deliberately what both QEMU and cloud-hypervisor can express:
//! direct kernel boot, virtio-blk disks with serials, a serial port to a
//! file, a virtio console to a file, and (later) one virtio-net TAP.

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
