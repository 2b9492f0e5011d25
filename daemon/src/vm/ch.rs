//! cloud-hypervisor backend: one VMM process per VM, driven over its REST
//! API on a unix socket (`--api-socket`), its lifecycle followed through
//! the process's exit and its `--event-monitor` stream, never through
//! console text.
//!
//! `vmm.ping` (the API is up) → `vm.create` (the body from
//! [`super::ch_api::vm_config`]) → `vm.boot` → wait. A guest poweroff ends
//! the VMM with status 0. A guest reboot (a kernel panic with `panic=-1`)
//! would boot the guest again; the event stream shows it and the VM is
//! stopped instead. On timeout or cancel the VM gets the power button and
//! `grace` to go down, then the process is killed. A shared directory
//! (virtio-fs) gets one `virtiofsd` per VM, which exits with the VMM.
//! Nothing is left behind: no process, API socket, event file or
//! virtiofsd socket. With `run_as`, the VMM and virtiofsd run as that
//! user, which owns only the VM's logs, writable disks, socket directory
//! and (made by the network policy) TAP.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use tokio::process::{Child, Command};
use tracing::{info, warn};

use super::ch_api::{self, FsShare, VmInfo};
use super::ch_template::{self, ChTemplate, Slot};
use super::template::{self, Shape, Templates};
use super::{BoxFuture, Cancel, Error, Result, RunAs, VmBackend, VmExit, VmSpec};

#[derive(Debug, Clone)]
pub struct CloudHypervisor {
    pub binary: PathBuf,
    /// After a timeout or cancel: the power button, then this long before
    /// the process is killed.
    pub grace: Duration,
    /// Landlock the VMM to the VM's own files (needs a kernel with Landlock).
    pub landlock: bool,
    /// `virtiofsd`, for [`VmSpec::shares`].
    pub virtiofsd: Option<PathBuf>,
    /// Run the VMM and virtiofsd as this user, not airlockd's.
    pub run_as: Option<RunAs>,
    /// Start VMs by restoring guest templates where they fit
    /// (`vm.template`; [`ch_template`]).
    pub templates: Option<Arc<Templates<ChTemplate>>>,
}

/// How long a template guest may take to be ready to save.
const TEMPLATE_READY_LIMIT: Duration = Duration::from_secs(90);

/// A unix socket path must fit `sun_path` (108 bytes with its NUL).
const SUN_PATH_MAX: usize = 107;

/// One HTTP request on the API socket (a connection per request: the API
/// is local, and a request never waits behind a broken connection).
pub async fn api(
    sock: &Path,
    method: &str,
    endpoint: &str,
    body: Option<Vec<u8>>,
) -> std::result::Result<(u16, Vec<u8>), String> {
    let stream = tokio::net::UnixStream::connect(sock)
        .await
        .map_err(|e| format!("connect {}: {e}", sock.display()))?;
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("{endpoint}: {e}"))?;
    let conn = tokio::spawn(conn);
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(format!("http://localhost/api/v1/{endpoint}"))
        .header("host", "localhost");
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    let req = req
        .body(Full::new(bytes::Bytes::from(body.unwrap_or_default())))
        .map_err(|e| format!("{endpoint}: {e}"))?;
    let resp = send
        .send_request(req)
        .await
        .map_err(|e| format!("{endpoint}: {e}"))?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("{endpoint}: {e}"))?
        .to_bytes()
        .to_vec();
    conn.abort();
    Ok((status, body))
}

/// A request that must succeed (any 2xx: v53.0 answers `vmm.shutdown`
/// with 200 where the document says 204).
async fn put_ok(sock: &Path, endpoint: &'static str, body: Option<Vec<u8>>) -> Result<Vec<u8>> {
    match api(sock, "PUT", endpoint, body).await {
        Ok((s, b)) if (200..300).contains(&s) => Ok(b),
        Ok((s, b)) => Err(Error::Api {
            endpoint,
            why: format!("HTTP {s}: {}", ch_api::error_text(&b)),
        }),
        Err(why) => Err(Error::Api { endpoint, why }),
    }
}

/// `GET /vm.info`.
pub async fn vm_info(sock: &Path) -> std::result::Result<VmInfo, String> {
    let (s, b) = api(sock, "GET", "vm.info", None).await?;
    if s != 200 {
        return Err(format!("vm.info: HTTP {s}: {}", ch_api::error_text(&b)));
    }
    serde_json::from_slice(&b).map_err(|e| format!("vm.info: {e}"))
}

/// `GET /vm.counters`.
pub async fn vm_counters(sock: &Path) -> std::result::Result<ch_api::VmCounters, String> {
    let (s, b) = api(sock, "GET", "vm.counters", None).await?;
    if s != 200 {
        return Err(format!("vm.counters: HTTP {s}: {}", ch_api::error_text(&b)));
    }
    serde_json::from_slice(&b).map_err(|e| format!("vm.counters: {e}"))
}

/// The files of one VM in a directory of its own beside its pid file
/// (`<pid file stem>.d/`, given to the VMM's user): API socket, event
/// stream, virtiofsd sockets. Named after the pid file, so two boots of a
/// job never share them.
pub struct VmFiles {
    pub dir: PathBuf,
    pub api: PathBuf,
    pub events: PathBuf,
    pub fs: Vec<PathBuf>,
}

impl VmFiles {
    pub fn new(spec: &VmSpec) -> VmFiles {
        let parent = spec.pidfile.parent().unwrap_or(Path::new("/tmp"));
        let stem = spec
            .pidfile
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "vm".into());
        let dir = parent.join(format!("{stem}.d"));
        VmFiles {
            api: dir.join("api.sock"),
            events: dir.join("events.json"),
            fs: (0..spec.shares.len())
                .map(|i| dir.join(format!("fs{i}.sock")))
                .collect(),
            dir,
        }
    }

    fn all(&self) -> impl Iterator<Item = &PathBuf> {
        [&self.api, &self.events].into_iter().chain(self.fs.iter())
    }

    fn remove(&self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Processes that must not outlive the VM: killed (and reaped) on drop.
struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.start_kill();
        }
    }
}

impl CloudHypervisor {
    /// The user switch (if any) and death with airlockd, for every process
    /// of the VM.
    fn confine(&self, cmd: &mut Command) {
        super::confine(self.run_as.as_ref(), cmd)
    }

    /// The VMM's command line: the API socket, the event stream, seccomp on.
    pub fn args(&self, files: &VmFiles) -> Vec<String> {
        vec![
            "--api-socket".into(),
            format!("path={}", files.api.display()),
            "--event-monitor".into(),
            format!("path={}", files.events.display()),
            "--seccomp".into(),
            "true".into(),
        ]
    }

    async fn start_virtiofsd(
        &self,
        spec: &VmSpec,
        files: &VmFiles,
        procs: &mut Procs,
    ) -> Result<()> {
        if spec.shares.is_empty() {
            return Ok(());
        }
        let bin = self.virtiofsd.clone().ok_or(Error::Api {
            endpoint: "virtiofsd",
            why: "the VM shares a directory but no virtiofsd is configured (vm.virtiofsd)".into(),
        })?;
        for (share, sock) in spec.shares.iter().zip(&files.fs) {
            let mut cmd = Command::new(&bin);
            self.confine(&mut cmd);
            cmd.arg(format!("--socket-path={}", sock.display()))
                .arg(format!("--shared-dir={}", share.dir.display()))
                .args(["--cache=never", "--sandbox=none"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true);
            if share.readonly {
                cmd.arg("--readonly");
            }
            let child = cmd.spawn().map_err(|source| Error::Spawn {
                binary: bin.display().to_string(),
                source,
            })?;
            let adopted = spec.adopt.child(&child).await;
            procs.0.push(child);
            adopted?;
            // The VMM connects to the socket at vm.create: wait for it.
            let t0 = Instant::now();
            while !sock.exists() {
                if t0.elapsed() > Duration::from_secs(10) {
                    return Err(Error::Api {
                        endpoint: "virtiofsd",
                        why: format!("no socket {} after 10 s", sock.display()),
                    });
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Ok(())
    }

    /// Start the VMM (its stdin and stdout: the virtio console in `Tty`
    /// mode) and wait until its API answers.
    async fn start_vmm(
        &self,
        files: &VmFiles,
        spec: &VmSpec,
        stdin: Stdio,
        stdout: Stdio,
    ) -> Result<Child> {
        let mut cmd = Command::new(&self.binary);
        self.confine(&mut cmd);
        let mut child = cmd
            .args(self.args(files))
            .stdin(stdin)
            .stdout(stdout)
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| Error::Spawn {
                binary: self.binary.display().to_string(),
                source,
            })?;
        super::track(spec, &mut child).await?;
        let t0 = Instant::now();
        loop {
            if let Ok((200, _)) = api(&files.api, "GET", "vmm.ping", None).await {
                return Ok(child);
            }
            if let Ok(Some(st)) = child.try_wait() {
                let err = super::read_stderr(&mut child).await;
                return Err(Error::Api {
                    endpoint: "vmm.ping",
                    why: format!("the VMM exited before its API came up ({st}): {err}"),
                });
            }
            if t0.elapsed() > Duration::from_secs(10) {
                return Err(Error::Api {
                    endpoint: "vmm.ping",
                    why: "the VMM's API did not come up within 10 s".into(),
                });
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The VM's directory (API socket, events, its snapshot when
    /// restored) emptied and made anew, given to `vm.user` if any.
    fn fresh_files(&self, spec: &VmSpec, files: &VmFiles) -> std::io::Result<()> {
        files.remove();
        std::fs::create_dir(&files.dir)?;
        match &self.run_as {
            Some(r) => r.give(spec, Some(&files.dir)),
            None => Ok(()),
        }
    }

    /// Power button, `grace`, then kill. True if the guest went down itself.
    async fn stop(&self, child: &mut Child, files: &VmFiles) -> bool {
        let _ = api(&files.api, "PUT", "vm.power-button", None).await;
        let gone = tokio::time::timeout(self.grace, child.wait()).await.is_ok();
        if !gone {
            let _ = child.kill().await;
        }
        gone
    }
}

/// Waits for an event the VM must not go on after (a guest reboot).
async fn watch_events(path: &Path) -> String {
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let Ok(bytes) = std::fs::read(path) else {
            continue;
        };
        if let Some(e) = ch_api::parse_events(&bytes)
            .into_iter()
            .find(|e| e.source == "vm" && e.event == "reboot")
        {
            return format!("the guest rebooted (event {}); a kernel panic?", e.event);
        }
    }
}

impl VmBackend for CloudHypervisor {
    fn accel(&self) -> &str {
        "kvm"
    }

    fn run<'a>(
        &'a self,
        spec: &'a VmSpec,
        timeout: Duration,
        cancel: Cancel,
    ) -> BoxFuture<'a, Result<VmExit>> {
        Box::pin(async move {
            for p in [&spec.kernel, &spec.initrd] {
                if !p.as_os_str().is_empty() && !p.exists() {
                    return Err(Error::MissingImage(p.clone()));
                }
            }
            let files = VmFiles::new(spec);
            for p in files.all() {
                if p.as_os_str().len() > SUN_PATH_MAX {
                    return Err(Error::Api {
                        endpoint: "vmm",
                        why: format!("socket path {} is too long for a unix socket", p.display()),
                    });
                }
            }
            if let Err(e) = self.fresh_files(spec, &files) {
                files.remove();
                return Err(Error::Api {
                    endpoint: "vmm",
                    why: format!("cannot prepare {} for the VMM: {e}", files.dir.display()),
                });
            }
            let res = self.run_inner(spec, &files, timeout, cancel).await;
            files.remove();
            let _ = std::fs::remove_file(&spec.pidfile);
            res
        })
    }
}

impl CloudHypervisor {
    async fn run_inner(
        &self,
        spec: &VmSpec,
        files: &VmFiles,
        timeout: Duration,
        mut cancel: Cancel,
    ) -> Result<VmExit> {
        // The first VM of a shape waits for its template to be built; a
        // cancel still stops it.
        let restored = tokio::select! {
            r = self.try_restore(spec, files) => r,
            Ok(reason) = &mut cancel => return Ok(VmExit::Killed(reason)),
        };
        let mut procs = Procs(Vec::new());
        // A restored VM's console terminal lives as long as the VM.
        let (vmm, _console) = match restored {
            Some((vmm, console)) => (vmm, Some(console)),
            None => (self.start_cold(spec, files, &mut procs).await?, None),
        };
        self.wait(vmm, procs, files, timeout, cancel).await
    }

    /// Boot `spec`: virtiofsd, the VMM, `vm.create`, `vm.boot`.
    async fn start_cold(&self, spec: &VmSpec, files: &VmFiles, procs: &mut Procs) -> Result<Child> {
        self.start_virtiofsd(spec, files, procs).await?;
        let mut vmm = self
            .start_vmm(files, spec, Stdio::null(), Stdio::null())
            .await?;
        let shares: Vec<FsShare> = spec
            .shares
            .iter()
            .zip(&files.fs)
            .map(|(s, p)| FsShare {
                tag: s.tag.clone(),
                socket: p.display().to_string(),
            })
            .collect();
        let body = serde_json::to_vec(&ch_api::vm_config(spec, &shares, self.landlock))
            .expect("serialises");
        let started = async {
            put_ok(&files.api, "vm.create", Some(body)).await?;
            put_ok(&files.api, "vm.boot", None).await
        };
        if let Err(e) = started.await {
            shutdown(&files.api, &mut vmm).await;
            return Err(e);
        }
        Ok(vmm)
    }

    /// Follow the running VM to its end (power-off, a reboot event, the
    /// timeout, a cancel); then make sure virtiofsd is gone.
    async fn wait(
        &self,
        mut vmm: Child,
        mut procs: Procs,
        files: &VmFiles,
        timeout: Duration,
        cancel: Cancel,
    ) -> Result<VmExit> {
        let exit = tokio::select! {
            st = vmm.wait() => {
                let st = st.map_err(Error::Wait)?;
                let err = super::read_stderr(&mut vmm).await;
                let detail = if st.success() {
                    format!("{st}")
                } else {
                    format!("the VMM ended with {st}: {err}")
                };
                VmExit::PoweredOff { ok: st.success(), detail }
            }
            why = watch_events(&files.events) => {
                let _ = vmm.kill().await;
                VmExit::PoweredOff { ok: false, detail: why }
            }
            _ = tokio::time::sleep(timeout) => {
                self.stop(&mut vmm, files).await;
                VmExit::TimedOut
            }
            Ok(reason) = cancel => {
                self.stop(&mut vmm, files).await;
                VmExit::Killed(reason)
            }
        };
        // virtiofsd exits when the VMM disconnects; make sure of it.
        for c in &mut procs.0 {
            if tokio::time::timeout(Duration::from_secs(2), c.wait())
                .await
                .is_err()
            {
                let _ = c.kill().await;
            }
        }
        Ok(exit)
    }

    /// The template shape and slots of `spec` here, or why it boots cold.
    fn restorable(&self, spec: &VmSpec) -> std::result::Result<(Shape, Vec<Slot>), String> {
        if spec.tap.is_some() {
            return Err("it has a NIC (a restored one would keep the template's TAP)".into());
        }
        let agent = self.templates.as_ref().map(|t| t.agent.as_path());
        let shape = Shape::of(spec, agent.unwrap_or(Path::new("airlock-agent")))?;
        Ok((shape, ch_template::slots(spec)?))
    }

    /// A VM of `spec` restored from its template (the VMM and the
    /// console terminal airlockd holds), or None: it boots cold (the
    /// reason in the log), with fresh VM files.
    async fn try_restore(&self, spec: &VmSpec, files: &VmFiles) -> Option<(Child, OwnedFd)> {
        let templates = self.templates.as_ref()?;
        let (shape, slots) = match self.restorable(spec) {
            Ok(s) => s,
            Err(why) => {
                tracing::debug!(why, "VM boots cold");
                return None;
            }
        };
        let vmm = template::vmm_id(
            &self.binary.display().to_string(),
            "cloud-hypervisor",
            "kvm",
        );
        let key = template::key(
            &format!("{vmm} slots {}", ch_template::slots_key(&slots)),
            &shape,
        );
        let t = templates
            .get(&key, |dir| {
                self.build_template(shape, slots, key.clone(), dir)
            })
            .await
            .ok()?;
        let t0 = Instant::now();
        match self.start_clone(spec, files, &t).await {
            Ok(started) => {
                info!(
                    template = %t.key,
                    restore_ms = (t0.elapsed().as_secs_f64() * 1000.0).round(),
                    "VM restored from its template"
                );
                Some(started)
            }
            Err(e) => {
                warn!(error = %crate::error::chain(&e), "restore from the guest template failed; the VM boots cold");
                if let Err(e) = self.fresh_files(spec, files) {
                    warn!(error = %e, "cannot make the VM's files afresh");
                }
                None
            }
        }
    }

    /// Start a job's VM from `t`: its snapshot directory (the job's
    /// files), the VMM on a fresh console terminal with its output to the
    /// channel log, `vm.restore` (resumed), the go record. Any failure
    /// kills the new VMM.
    async fn start_clone(
        &self,
        spec: &VmSpec,
        files: &VmFiles,
        t: &ChTemplate,
    ) -> Result<(Child, OwnedFd)> {
        let fail = |e: template::Error| Error::Api {
            endpoint: "vm.restore",
            why: crate::error::chain(&e),
        };
        let clone_dir = files.dir.join("restore");
        let disks = ch_template::clone_disks(spec, &t.slots, &files.dir).map_err(fail)?;
        if let Some(r) = &self.run_as {
            // The empty files of unused slots are the VM's own.
            for d in disks.iter().filter(|d| d.path.starts_with(&files.dir)) {
                std::os::unix::fs::chown(&d.path, Some(r.uid), Some(r.gid)).map_err(|e| {
                    Error::Api {
                        endpoint: "vm.restore",
                        why: format!("cannot give {} to vm.user: {e}", d.path.display()),
                    }
                })?;
            }
        }
        let initrd = t.snapshot.with_file_name("initrd");
        let rules = ch_template::clone_landlock(spec, &initrd, &disks, &clone_dir, t);
        let landlock = self.landlock.then_some(rules.as_slice());
        ch_template::write_clone_dir(t, &clone_dir, &disks, &spec.console_log, landlock)
            .map_err(fail)?;
        let channel = std::fs::File::create(&spec.channel_log).map_err(|e| Error::Api {
            endpoint: "vm.restore",
            why: format!("{}: {e}", spec.channel_log.display()),
        })?;
        let (console, term) = ch_template::console_pty().map_err(fail)?;
        let mut vmm = self
            .start_vmm(files, spec, Stdio::from(term), Stdio::from(channel))
            .await?;
        // The VMM's user: vm.user, else airlockd's own (OnDemand needs
        // userfaultfd, which an unprivileged user may not have).
        let uid = match &self.run_as {
            Some(r) => r.uid,
            None => nix::unistd::geteuid().as_raw(),
        };
        let body =
            serde_json::to_vec(&ch_template::restore_body(&clone_dir, uid)).expect("serialises");
        let started = async {
            put_ok(&files.api, "vm.restore", Some(body)).await?;
            let go = template::go_record(spec).encode();
            let mut w = std::fs::File::from(console.try_clone().map_err(Error::Wait)?);
            std::io::Write::write_all(&mut w, go.as_bytes()).map_err(|e| Error::Api {
                endpoint: "vm.restore",
                why: format!("cannot send the go record: {e}"),
            })
        };
        if let Err(e) = started.await {
            shutdown(&files.api, &mut vmm).await;
            let said = super::read_stderr(&mut vmm).await;
            return Err(Error::Api {
                endpoint: "vm.restore",
                why: format!("{e}; the VMM said: {said}"),
            });
        }
        Ok((vmm, console))
    }

    /// Boot a template VM of `shape` (its files in `dir`), wait until its
    /// agent is ready, pause it and save it with `vm.snapshot`.
    async fn build_template(
        &self,
        shape: Shape,
        slots: Vec<Slot>,
        key: String,
        dir: PathBuf,
    ) -> template::Result<ChTemplate> {
        let io = |what: &str| {
            let what = what.to_owned();
            move |source| template::Error::Io { what, source }
        };
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(io("create the template's directory"))?;
        let spec = ch_template::template_spec(&shape, &slots, &key, &dir)?;
        template::write_initrd(&shape.initrd, &shape.agent, &spec.initrd)?;
        let snapshot = dir.join("snapshot");
        let files = VmFiles::new(&spec);
        for d in [&snapshot, &files.dir] {
            std::fs::create_dir(d).map_err(io("create the template's directories"))?;
        }
        if let Some(r) = &self.run_as {
            r.give(&spec, Some(&files.dir))
                .and_then(|()| std::os::unix::fs::chown(&snapshot, Some(r.uid), Some(r.gid)))
                .map_err(io("give the template's files to vm.user"))?;
        }
        let res = self.save_template(&spec, &files, &snapshot).await;
        files.remove();
        res?;
        let saved = dir.join("saved");
        let state_bytes = ch_template::keep_saved(&snapshot, &saved)?;
        Ok(ChTemplate {
            key,
            snapshot: saved,
            slots,
            state_bytes,
        })
    }

    /// The template VM's life: boot, ready, pause, snapshot, shutdown.
    async fn save_template(
        &self,
        spec: &VmSpec,
        files: &VmFiles,
        snapshot: &Path,
    ) -> template::Result<()> {
        let api = |e: Error| template::Error::Guest(crate::error::chain(&e));
        let (_console, term) = ch_template::console_pty()?;
        let mut vmm = self
            .start_vmm(files, spec, Stdio::from(term), Stdio::piped())
            .await
            .map_err(api)?;
        let out = vmm.stdout.take().expect("piped");
        let mut config = ch_api::vm_config(spec, &[], self.landlock);
        config.console = ch_api::ConsoleConfig {
            mode: ch_api::ConsoleMode::Tty,
            file: None,
        };
        // The console is the VMM's stdout here, not the channel log (a
        // Landlock rule for a file that does not exist fails vm.boot).
        let channel = spec.channel_log.display().to_string();
        config.landlock_rules.retain(|r| r.path != channel);
        if self.landlock {
            config.landlock_rules.push(ch_api::LandlockConfig {
                path: snapshot.display().to_string(),
                access: "rw".into(),
            });
        }
        let body = serde_json::to_vec(&config).expect("serialises");
        let saved = async {
            put_ok(&files.api, "vm.create", Some(body))
                .await
                .map_err(api)?;
            put_ok(&files.api, "vm.boot", None).await.map_err(api)?;
            template::ready_on(
                async { Ok(out) },
                "console",
                &spec.console_log,
                TEMPLATE_READY_LIMIT,
            )
            .await?;
            put_ok(&files.api, "vm.pause", None).await.map_err(api)?;
            let snap = ch_template::SnapshotBody {
                destination_url: ch_template::file_url(snapshot),
            };
            let snap = serde_json::to_vec(&snap).expect("serialises");
            put_ok(&files.api, "vm.snapshot", Some(snap))
                .await
                .map_err(api)
        };
        let res = saved.await;
        shutdown(&files.api, &mut vmm).await;
        res.map(drop)
    }
}

/// Shut the VMM down through its API, or kill it after 2 s.
async fn shutdown(api: &Path, vmm: &mut Child) {
    let _ = put_ok(api, "vmm.shutdown", None).await;
    if tokio::time::timeout(Duration::from_secs(2), vmm.wait())
        .await
        .is_err()
    {
        let _ = vmm.kill().await;
    }
}

/// The kernel's Landlock ABI version, if it has Landlock.
pub fn landlock_abi() -> Option<i64> {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    #[allow(unsafe_code)]
    // SAFETY: landlock_create_ruleset(NULL, 0, VERSION) only returns the
    // ABI version (or an error); it takes no pointer it would write to.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    (v > 0).then_some(v)
}
