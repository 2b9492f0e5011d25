//! QEMU backend: direct PVH kernel boot, virtio-blk disks, KVM or TCG.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

use super::{BoxFuture, Cancel, Error, Result, RunAs, VmBackend, VmExit, VmSpec};
use crate::config::Accel;

#[derive(Debug, Clone)]
pub struct Qemu {
    pub binary: String,
    pub machine: String,
    /// `kvm` or `tcg`, never `auto` here: resolve with [`probe_accel`] first.
    pub accel: String,
    /// Run QEMU as this user, not airlockd's (`vm.user`).
    pub run_as: Option<RunAs>,
}

/// What airlockd says on QEMU's monitor (QMP on its stdin) once QEMU is in
/// the job's unit: leave negotiation, start the vCPUs.
const QMP_START: &[u8] = b"{\"execute\":\"qmp_capabilities\"}\n{\"execute\":\"cont\"}\n";

/// TCG microvm needs a TSC hint or it may hang calibrating (test-environment §1.4).
fn host_tsc_khz() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let mhz: f64 = info
        .lines()
        .find(|l| l.starts_with("cpu MHz"))?
        .split(':')
        .nth(1)?
        .trim()
        .parse()
        .ok()?;
    Some((mhz * 1000.0) as u64)
}

impl Qemu {
    pub fn args(&self, spec: &VmSpec) -> Vec<String> {
        let microvm = self.machine == "microvm";
        let mut cmdline = spec.cmdline.clone();
        let mut a: Vec<String> = vec![
            "-name".into(),
            spec.name.clone(),
            "-nodefaults".into(),
            "-no-user-config".into(),
            "-display".into(),
            "none".into(),
            "-no-reboot".into(),
            // The vCPUs wait for `cont` on the monitor (stdin), sent once
            // QEMU is in the job's unit: no guest instruction runs outside
            // its limits and device policy.
            "-S".into(),
            "-qmp".into(),
            "stdio".into(),
            // QEMU's own seccomp filter: no obsolete system calls, no
            // setuid, no fork/exec, no scheduler or affinity changes.
            "-sandbox".into(),
            "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny".into(),
            "-accel".into(),
            self.accel.clone(),
        ];
        if self.accel == "kvm" {
            a.extend(["-cpu".into(), "host".into()]);
        }
        if microvm {
            a.extend(["-M".into(), "microvm,rtc=on".into()]);
            if self.accel == "tcg" {
                if let Some(khz) = host_tsc_khz() {
                    cmdline.push_str(&format!(" tsc_early_khz={khz}"));
                }
            }
        } else {
            a.extend(["-M".into(), self.machine.clone()]);
        }
        let (blk, serialbus, console) = if microvm {
            ("virtio-blk-device", "virtio-serial-device", "virtconsole")
        } else {
            ("virtio-blk-pci", "virtio-serial-pci", "virtconsole")
        };
        a.extend([
            "-m".into(),
            format!("{}M", spec.memory_mib),
            "-smp".into(),
            spec.vcpus.to_string(),
            "-kernel".into(),
            spec.kernel.display().to_string(),
            "-initrd".into(),
            spec.initrd.display().to_string(),
            "-append".into(),
            cmdline,
            "-serial".into(),
            format!("file:{}", spec.console_log.display()),
            "-device".into(),
            serialbus.into(),
            "-chardev".into(),
            format!("file,id=agentch,path={}", spec.channel_log.display()),
            "-device".into(),
            format!("{console},chardev=agentch"),
        ]);
        if let Some(tap) = &spec.tap {
            let nic = if microvm {
                "virtio-net-device"
            } else {
                "virtio-net-pci"
            };
            a.extend([
                "-netdev".into(),
                format!("tap,id=net0,ifname={tap},script=no,downscript=no"),
                "-device".into(),
                format!("{nic},netdev=net0"),
            ]);
        }
        for (i, d) in spec.disks.iter().enumerate() {
            let ro = if d.readonly { ",readonly=on" } else { "" };
            a.extend([
                "-drive".into(),
                format!(
                    "file={},if=none,id=disk{i},format=raw,cache=unsafe{ro}",
                    escape_opt(&d.path)
                ),
                "-device".into(),
                format!("{blk},drive=disk{i},serial={}", d.serial),
            ]);
        }
        a
    }
}

/// QEMU option values escape ',' by doubling it.
fn escape_opt(p: &Path) -> String {
    p.display().to_string().replace(',', ",,")
}

impl VmBackend for Qemu {
    fn accel(&self) -> &str {
        &self.accel
    }

    fn run<'a>(
        &'a self,
        spec: &'a VmSpec,
        timeout: Duration,
        cancel: Cancel,
    ) -> BoxFuture<'a, Result<VmExit>> {
        Box::pin(async move {
            for p in [&spec.kernel, &spec.initrd] {
                if !p.exists() {
                    return Err(Error::MissingImage(p.clone()));
                }
            }
            if !spec.shares.is_empty() {
                return Err(Error::Unsupported("share directories (virtio-fs) yet"));
            }
            if let Some(r) = &self.run_as {
                r.give(spec, None).map_err(|e| Error::Api {
                    endpoint: "vmm",
                    why: format!("cannot prepare the VM's files for vm.user: {e}"),
                })?;
            }
            let mut cmd = Command::new(&self.binary);
            super::confine(self.run_as.as_ref(), &mut cmd);
            let mut child = cmd
                .args(self.args(spec))
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .map_err(|source| Error::Spawn {
                    binary: self.binary.clone(),
                    source,
                })?;
            // airlockd writes the pid file (QEMU's own `-pidfile` would need
            // a directory writable by vm.user).
            if let Some(pid) = child.id() {
                let _ = std::fs::write(&spec.pidfile, pid.to_string());
            }
            let _pidfile = RemoveOnDrop(&spec.pidfile);
            if let Err(e) = spec.adopt.child(&child).await {
                let _ = child.kill().await;
                return Err(e);
            }
            // Held until the VM ends: an EOF would only close the monitor,
            // but nothing more is said on it.
            let mut monitor = child.stdin.take().expect("piped");
            if let Err(e) = tokio::io::AsyncWriteExt::write_all(&mut monitor, QMP_START).await {
                let _ = child.kill().await;
                let detail = match child.stderr.take() {
                    Some(mut err) => {
                        let mut s = String::new();
                        let _ = tokio::io::AsyncReadExt::read_to_string(&mut err, &mut s).await;
                        s
                    }
                    None => String::new(),
                };
                return Err(Error::Api {
                    endpoint: "cont",
                    why: format!("QEMU's monitor (stdin): {e}; QEMU said: {}", detail.trim()),
                });
            }
            let mut stderr = child.stderr.take().expect("piped");
            let err_task = tokio::spawn(async move {
                let mut s = String::new();
                let _ = tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut s).await;
                s
            });
            let exit = tokio::select! {
                st = child.wait() => {
                    let st = st.map_err(Error::Wait)?;
                    let detail = err_task.await.unwrap_or_default();
                    VmExit::PoweredOff { ok: st.success(), detail: format!("{st}; {}", detail.trim()) }
                }
                _ = tokio::time::sleep(timeout) => {
                    let _ = child.kill().await;
                    VmExit::TimedOut
                }
                Ok(reason) = cancel => {
                    let _ = child.kill().await;
                    VmExit::Killed(reason)
                }
            };
            drop(monitor);
            Ok(exit)
        })
    }
}

/// Removes the pid file when the VM is over, however it ends.
struct RemoveOnDrop<'a>(&'a Path);

impl Drop for RemoveOnDrop<'_> {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.0);
    }
}

/// Kill a VM left behind by a previous daemon (its pid file names it, and
/// its command line must name `marker`, so a reused pid is never hit).
pub fn kill_orphan(pidfile: &Path, marker: &str) -> bool {
    let Ok(pid) = std::fs::read_to_string(pidfile) else {
        return false;
    };
    let Ok(pid) = pid.trim().parse::<i32>() else {
        return false;
    };
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let found = String::from_utf8_lossy(&cmdline).contains(marker);
    if found {
        #[allow(unsafe_code)]
        // SAFETY: kill(2) on a pid whose command line we just checked.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
    let _ = std::fs::remove_file(pidfile);
    found
}

/// Resolve `accel = auto`: KVM only if `/dev/kvm` exists *and* a probe boot of
/// the guest kernel reaches its init within `timeout`. Returns the choice and
/// why, for the log.
/// `qemu` is the backend as configured; its `accel` is not looked at.
pub async fn probe_accel(
    qemu: &Qemu,
    requested: Accel,
    kernel: &Path,
    initrd: &Path,
    scratch: &Path,
    timeout: Duration,
) -> (String, String) {
    match requested {
        Accel::Kvm => return ("kvm".into(), "configured".into()),
        Accel::Tcg => return ("tcg".into(), "configured".into()),
        Accel::Auto => {}
    }
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        return ("tcg".into(), "/dev/kvm is not usable".into());
    }
    let q = Qemu {
        accel: "kvm".into(),
        ..qemu.clone()
    };
    match super::probe_boot(&q, kernel, initrd, scratch, timeout).await {
        Ok(took) => (
            "kvm".into(),
            format!("KVM probe boot succeeded in {:.1}s", took.as_secs_f64()),
        ),
        Err(why) => ("tcg".into(), format!("KVM {why}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::Disk;

    #[test]
    fn args_have_disks_with_serials_and_readonly_root() {
        let q = Qemu {
            binary: "qemu-system-x86_64".into(),
            machine: "q35".into(),
            accel: "tcg".into(),
            run_as: None,
        };
        let spec = VmSpec {
            name: "t".into(),
            kernel: "/k".into(),
            initrd: "/i".into(),
            cmdline: "console=ttyS0".into(),
            memory_mib: 512,
            vcpus: 1,
            disks: vec![
                Disk {
                    path: "/r,x.img".into(),
                    serial: "airlock-root".into(),
                    readonly: true,
                },
                Disk {
                    path: "/n.img".into(),
                    serial: "airlock-nix".into(),
                    readonly: false,
                },
            ],
            console_log: "/c".into(),
            channel_log: "/ch".into(),
            pidfile: "/p".into(),
            tap: None,
            shares: vec![],
            adopt: Default::default(),
        };
        let a = q.args(&spec).join(" ");
        assert!(a.contains("file=/r,,x.img,if=none,id=disk0,format=raw,cache=unsafe,readonly=on"));
        assert!(a.contains("virtio-blk-pci,drive=disk1,serial=airlock-nix"));
        assert!(a.contains("-accel tcg"));
        assert!(a.contains("-sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny"));
        assert!(!a.contains("-netdev"), "no NIC unless asked");
        assert!(
            a.contains("-S -qmp stdio"),
            "vCPUs wait for cont on the monitor"
        );
        assert!(!a.contains("-pidfile"), "airlockd writes the pid file");
    }
}
