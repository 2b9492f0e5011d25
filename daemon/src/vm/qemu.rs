//! QEMU backend: direct PVH kernel boot, virtio-blk disks, KVM or TCG; or,
//! where a guest template fits, a restore of that template instead of a
//! boot ([`super::template`]).

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::process::{Child, ChildStdin, Command};
use tracing::{info, warn};

use super::template::{self, Shape, Template, Templates};
use super::{BoxFuture, Cancel, Error, Result, RunAs, VmBackend, VmExit, VmSpec};
use crate::config::Accel;
use airlock_wire::disk;

#[derive(Debug, Clone)]
pub struct Qemu {
    pub binary: String,
    pub machine: String,
    /// `kvm` or `tcg`, never `auto` here: resolve with [`probe_accel`] first.
    pub accel: String,
    /// Run QEMU as this user, not airlockd's (`vm.user`).
    pub run_as: Option<RunAs>,
    /// Start VMs by restoring guest templates where they fit (`vm.template`).
    pub templates: Option<Arc<Templates>>,
}

/// How long a template guest may take to be ready to save (it boots in
/// about 4 s under TCG here): well inside the default boot limit, so a
/// template that hangs still leaves the VM time to boot cold.
const TEMPLATE_READY_LIMIT: Duration = Duration::from_secs(90);

/// What a restorable command line is for.
pub enum Role<'a> {
    /// The template VM: its RAM in the shared memfd, the guest root and
    /// placeholder disks.
    Template { ctl: &'a Path, nic: bool },
    /// A job's VM restored from the template: the job's backends, the
    /// template's initramfs.
    Clone {
        ctl: &'a Path,
        guid: &'a str,
        initrd: &'a Path,
    },
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
    /// What every QEMU of airlock starts with, booted or restored.
    fn head_args(&self, spec: &VmSpec) -> Vec<String> {
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
        } else {
            // TCG's default CPU model offers SVM, which QEMU emulates: a
            // guest kernel with KVM built in (the trimmed one) would have a
            // /dev/kvm that runs nested VMs by emulation inside emulation,
            // and review mode would run NixOS tests on it and claim KVM.
            // Under TCG a VM gets no virtualisation extensions.
            a.extend(["-cpu".into(), TCG_CPU.into()]);
        }
        a
    }

    pub fn args(&self, spec: &VmSpec) -> Vec<String> {
        let microvm = self.machine == "microvm";
        let mut cmdline = spec.cmdline.clone();
        let mut a = self.head_args(spec);
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
            a.extend([
                "-drive".into(),
                drive(i, d),
                "-device".into(),
                format!("{blk},drive=disk{i},serial={}", d.serial),
            ]);
        }
        a
    }
}

impl Qemu {
    /// The command line of a template or of a VM restored from it. The two
    /// differ only in backends (files, TAP, logs, the control port), the
    /// VM generation ID, how the memory file is mapped and `-incoming`:
    /// QEMU restores device state only into the same devices, in the same
    /// order.
    pub fn restorable_args(&self, spec: &VmSpec, role: &Role) -> Vec<String> {
        let (_, fixed) = template::split_cmdline(&spec.cmdline);
        let (share, ctl, guid, nic, initrd) = match role {
            Role::Template { ctl, nic } => (
                "on",
                *ctl,
                template::TEMPLATE_VMGENID,
                *nic,
                spec.initrd.as_path(),
            ),
            Role::Clone { ctl, guid, initrd } => ("off", *ctl, *guid, spec.tap.is_some(), *initrd),
        };
        let mem = spec.memory_mib;
        let mut a = self.head_args(spec);
        a.extend([
            "-M".into(),
            format!("{},memory-backend=ram0", self.machine),
            "-m".into(),
            format!("{mem}M"),
            "-smp".into(),
            spec.vcpus.to_string(),
            "-object".into(),
            format!(
                "memory-backend-file,id=ram0,size={mem}M,mem-path=/proc/self/fd/{},share={share}",
                template::MEMORY_FD
            ),
            "-kernel".into(),
            spec.kernel.display().to_string(),
            "-initrd".into(),
            initrd.display().to_string(),
            "-append".into(),
            format!("{fixed} airlock.template=1"),
            "-serial".into(),
            format!("file:{}", spec.console_log.display()),
            "-device".into(),
            "virtio-serial-pci,id=vser0".into(),
            "-chardev".into(),
            format!("file,id=agentch,path={}", spec.channel_log.display()),
            "-device".into(),
            "virtconsole,chardev=agentch,bus=vser0.0".into(),
            "-chardev".into(),
            format!("pipe,id=ctl,path={}", escape_opt(ctl)),
            "-device".into(),
            format!(
                "virtserialport,chardev=ctl,name={},bus=vser0.0",
                airlock_wire::CTL_PORT
            ),
            "-device".into(),
            format!("vmgenid,id=vmgenid0,guid={guid}"),
        ]);
        a.extend(self.device_backends(spec, role, nic));
        if matches!(role, Role::Clone { .. }) {
            a.extend(["-incoming".into(), "defer".into()]);
        }
        a
    }

    /// The NIC (if any) and the five disk slots of a restorable command
    /// line, with the backends `role` gives them.
    fn device_backends(&self, spec: &VmSpec, role: &Role, nic: bool) -> Vec<String> {
        let mut a: Vec<String> = Vec::new();
        if nic {
            let backend = match (role, &spec.tap) {
                (Role::Clone { .. }, Some(tap)) => {
                    format!("tap,id=net0,ifname={tap},script=no,downscript=no")
                }
                // A NIC that leads nowhere: the template never sends.
                _ => "hubport,id=net0,hubid=0".into(),
            };
            a.extend([
                "-netdev".into(),
                backend,
                "-device".into(),
                "virtio-net-pci,netdev=net0,romfile=".into(),
            ]);
        }
        // Every slot, always, in one order; a slot the job does not use
        // (or the template, but for the root) reads zeros.
        for (i, serial) in disk::ALL.iter().enumerate() {
            let backend = match spec.disks.iter().find(|d| d.serial == *serial) {
                Some(d) => vec!["-drive".into(), drive(i, d)],
                None => vec![
                    "-blockdev".into(),
                    format!("driver=null-co,node-name=disk{i},read-zeroes=on,read-only=on"),
                ],
            };
            a.extend(backend);
            a.extend([
                "-device".into(),
                format!("virtio-blk-pci,drive=disk{i},serial={serial}"),
            ]);
        }
        a
    }

    /// The template shape of `spec` on this backend, or why it boots cold.
    fn restorable(&self, spec: &VmSpec) -> std::result::Result<Shape, &'static str> {
        if !matches!(self.machine.as_str(), "q35" | "pc") {
            return Err("its machine has no ACPI for the VM generation ID (vm.machine)");
        }
        let agent = self.templates.as_ref().map(|t| t.agent.as_path());
        Shape::of(spec, agent.unwrap_or(Path::new("airlock-agent")))
    }

    /// Start a job's VM from `t`: QEMU with the template's command line
    /// and the job's backends, in the job's unit; the saved state fed in;
    /// the vCPUs started; the go record sent. Any failure here kills the
    /// new QEMU (and the caller boots the VM cold).
    async fn start_clone(&self, spec: &VmSpec, t: &Template) -> Result<(Child, ChildStdin)> {
        let api = |why: String| Error::Api {
            endpoint: "restore",
            why,
        };
        let ctl = template::ctl_path(spec);
        template::ctl_fifos(&ctl, self.run_as.as_ref())
            .map_err(|e| api(crate::error::chain(&e)))?;
        let state = std::fs::File::open(&t.state)
            .map_err(|e| api(format!("{}: {e}", t.state.display())))?;
        let guid = template::clone_vmgenid();
        let mut cmd = Command::new(&self.binary);
        super::confine(self.run_as.as_ref(), &mut cmd);
        {
            use std::os::fd::AsRawFd;
            template::pass_fds(&mut cmd, vec![t.memory_fd(), state.as_raw_fd()]);
        }
        let mut child = cmd
            .args(self.restorable_args(
                spec,
                &Role::Clone {
                    ctl: &ctl,
                    guid: &guid,
                    initrd: &t.initrd,
                },
            ))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| Error::Spawn {
                binary: self.binary.clone(),
                source,
            })?;
        drop(state);
        super::track(spec, &mut child).await?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        let restored = async {
            let mut qmp = template::Qmp::open(stdin, stdout).await?;
            qmp.ignore_shared().await?;
            qmp.cmd(
                "migrate-incoming",
                serde_json::json!({"uri": format!("fd:{}", template::STATE_FD)}),
            )
            .await?;
            qmp.migrated(Duration::from_secs(60)).await?;
            qmp.cmd("cont", serde_json::json!({})).await?;
            template::send_go(&ctl, &template::go_record(spec)).await?;
            Ok::<ChildStdin, template::Error>(qmp.into_stdin())
        };
        match restored.await {
            Ok(stdin) => {
                info!(template = %t.key, vmgenid = %guid, "VM restored from its template");
                Ok((child, stdin))
            }
            Err(e) => {
                let _ = child.kill().await;
                let detail = super::read_stderr(&mut child).await;
                Err(api(format!(
                    "{}; QEMU said: {detail}",
                    crate::error::chain(&e)
                )))
            }
        }
    }

    /// A VM of `spec` restored from its template, or None: it boots cold
    /// (the reason is in the log).
    async fn try_restore(&self, spec: &VmSpec) -> Option<(Child, ChildStdin)> {
        let templates = self.templates.as_ref()?;
        let shape = match self.restorable(spec) {
            Ok(s) => s,
            Err(why) => {
                tracing::debug!(why, "VM boots cold");
                return None;
            }
        };
        let key = template::key(
            &template::vmm_id(&self.binary, &self.machine, &self.accel),
            &shape,
        );
        let t = templates
            .get(&key, |dir| {
                self.build_template(shape.clone(), key.clone(), dir)
            })
            .await
            .ok()?;
        let t0 = Instant::now();
        match self.start_clone(spec, &t).await {
            Ok(started) => {
                info!(
                    restore_ms = (t0.elapsed().as_secs_f64() * 1000.0).round(),
                    "VM started from template {}", t.key
                );
                Some(started)
            }
            Err(e) => {
                warn!(error = %crate::error::chain(&e), "restore from the guest template failed; the VM boots cold");
                None
            }
        }
    }

    /// Boot a template VM of `shape` (its files in `dir`), wait for its
    /// init to be ready, save it; its memory is sealed after QEMU is gone.
    async fn build_template(
        &self,
        shape: Shape,
        key: String,
        dir: std::path::PathBuf,
    ) -> template::Result<Template> {
        let io = |what: &str| {
            let what = what.to_owned();
            move |source| template::Error::Io { what, source }
        };
        let t0 = Instant::now();
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(io("create the template's directory"))?;
        let spec = template::template_spec(&shape, &key, &dir);
        template::write_initrd(&shape.initrd, &shape.agent, &spec.initrd)?;
        if let Some(r) = &self.run_as {
            r.give(&spec, Some(&dir))
                .map_err(io("give the template's files to vm.user"))?;
        }
        let ctl = dir.join("ctl");
        template::ctl_fifos(&ctl, self.run_as.as_ref())?;
        let memory = template::memfd(shape.memory_mib)?;
        let (sock, listener) = template::state_socket(&dir, self.run_as.as_ref())?;
        let mut cmd = Command::new(&self.binary);
        super::confine(self.run_as.as_ref(), &mut cmd);
        {
            use std::os::fd::AsRawFd;
            template::pass_fds(&mut cmd, vec![memory.as_raw_fd()]);
        }
        let mut child = cmd
            .args(self.restorable_args(
                &spec,
                &Role::Template {
                    ctl: &ctl,
                    nic: shape.nic,
                },
            ))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(io(&format!("start {}", self.binary)))?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        let mut qmp = template::Qmp::open(stdin, stdout).await?;
        qmp.cmd("cont", serde_json::json!({})).await?;
        template::wait_ready(&ctl, &spec.console_log, TEMPLATE_READY_LIMIT).await?;
        let booted = t0.elapsed();
        let (state, bytes) = template::save(&mut qmp, &dir, &sock, listener).await?;
        let _ = qmp.cmd("quit", serde_json::json!({})).await;
        let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
        let _ = child.kill().await;
        template::seal(&memory)?;
        info!(template = %key, boot_secs = booted.as_secs_f64(), "guest template saved");
        Ok(Template::new(&key, spec.initrd, memory, state, bytes))
    }

    /// Boot `spec` cold: its QEMU, in the job's unit, vCPUs started.
    async fn start_cold(&self, spec: &VmSpec) -> Result<(Child, ChildStdin)> {
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
        super::track(spec, &mut child).await?;
        // Held until the VM ends: an EOF would only close the monitor,
        // but nothing more is said on it.
        let mut monitor = child.stdin.take().expect("piped");
        if let Err(e) = tokio::io::AsyncWriteExt::write_all(&mut monitor, QMP_START).await {
            let _ = child.kill().await;
            let detail = super::read_stderr(&mut child).await;
            return Err(Error::Api {
                endpoint: "cont",
                why: format!("QEMU's monitor (stdin): {e}; QEMU said: {detail}"),
            });
        }
        Ok((child, monitor))
    }
}

/// Wait for a started VM: its power-off, the deadline, or a cancel.
async fn wait_vm(
    mut child: Child,
    monitor: ChildStdin,
    timeout: Duration,
    cancel: Cancel,
) -> Result<VmExit> {
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
}

/// The `-drive` of a job's disk in slot `i`.
fn drive(i: usize, d: &super::Disk) -> String {
    let ro = if d.readonly { ",readonly=on" } else { "" };
    format!(
        "file={},if=none,id=disk{i},format=raw,cache=unsafe{ro}",
        escape_opt(&d.path)
    )
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
            let _pidfile = RemoveOnDrop(&spec.pidfile);
            let mut cancel = cancel;
            // The first VM of a shape waits for its template to be built;
            // a cancel (or the runner's boot limit) still stops it.
            let restored = tokio::select! {
                r = self.try_restore(spec) => r,
                Ok(reason) = &mut cancel => return Ok(VmExit::Killed(reason)),
            };
            let _ctl = RemoveCtl(template::ctl_path(spec));
            let (child, monitor) = match restored {
                Some(started) => started,
                None => self.start_cold(spec).await?,
            };
            wait_vm(child, monitor, timeout, cancel).await
        })
    }
}

/// Removes a restored VM's control FIFOs when it is over.
struct RemoveCtl(std::path::PathBuf);

impl Drop for RemoveCtl {
    fn drop(&mut self) {
        for suffix in [".in", ".out"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", self.0.display()));
        }
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
/// The CPU model of a VM under TCG: QEMU's default, without SVM or VMX.
pub const TCG_CPU: &str = "qemu64,-svm,-vmx";

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
            templates: None,
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
        assert!(
            a.contains("-cpu qemu64,-svm,-vmx"),
            "no nested virtualisation under TCG"
        );
        assert!(a.contains("-sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny"));
        assert!(!a.contains("-netdev"), "no NIC unless asked");
        assert!(
            a.contains("-S -qmp stdio"),
            "vCPUs wait for cont on the monitor"
        );
        assert!(!a.contains("-pidfile"), "airlockd writes the pid file");
    }
}
