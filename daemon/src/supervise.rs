//! Where a job's VM processes live, and their limits.
//!
//! Under systemd every job gets a transient unit, `airlock-job-<id>.service`,
//! made with `StartTransientUnit` over D-Bus when the job starts and stopped
//! when it ends. It is a `Type=oneshot`, `RemainAfterExit=yes` service (its
//! `ExecStart` only prints airlockd's version), so it stays active for the
//! job's whole life, between its VM boots too; the VMM and its helpers
//! (virtiofsd) are moved into it with `AttachProcessesToUnit` right after
//! they are spawned (systemd allows that only for a unit with
//! `Delegate=yes`, so it has that; airlockd makes no sub-cgroups in it).
//! airlockd stays their parent, so it keeps their exit status, their pipes
//! and `PR_SET_PDEATHSIG`. Why a service and not a
//! scope: `systemctl status airlock-job-<id>` then works without a suffix,
//! and the unit outlives the moments with no process (a scope ends when it
//! is empty). The job's limits are unit properties: `MemoryMax`,
//! `CPUQuotaPerSecUSec`, `TasksMax`, `DevicePolicy=closed` with
//! `DeviceAllow=` [`VMM_DEVICES`] and, if configured, `IOWeight`. A VMM
//! joins its unit before its guest runs (QEMU starts with its vCPUs
//! stopped; cloud-hypervisor boots on an API call), so the guest never
//! runs outside these limits.
//! `systemctl stop airlock-job-<id>` kills the VM; airlockd notices the unit
//! is no longer active and reports the job cancelled, as `airlockctl cancel`.
//!
//! Without systemd (containers, this project's test machines) airlockd
//! supervises the processes itself. Where it finds a cgroup v2 hierarchy
//! with the memory, pids and cpu controllers it can use, each job gets a
//! child cgroup `airlock-job-<id>` with the same limits; otherwise the only
//! bounds are the VM's own size. airlockd says at start which mode it runs in.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{info, warn};
use zbus::zvariant::{OwnedObjectPath, Value};

use crate::config::{SupervisionConfig, SupervisionMode};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot reach systemd on the system bus")]
    Bus(#[source] Box<zbus::Error>),
    #[error("systemd refused {what} for {unit}")]
    Systemd {
        what: &'static str,
        unit: String,
        #[source]
        source: Box<zbus::Error>,
    },
    #[error("unit {unit} did not become active within {secs} s (state {state})")]
    NotActive {
        unit: String,
        secs: u64,
        state: String,
    },
    #[error("cgroup {path}: {what}")]
    Cgroup {
        path: String,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("supervision.mode = \"systemd\" but airlockd does not run under systemd (no /run/systemd/system)")]
    NoSystemd,
}
pub type Result<T> = std::result::Result<T, Error>;

/// One job's unit: its name, description and limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobUnit {
    pub id: String,
    /// `airlock job <id>: <repo> PR #<n> at <commit>`.
    pub description: String,
    pub memory_max: u64,
    /// CPU time per second of wall time, in µs (1 000 000 = one core).
    pub cpu_quota_usec: u64,
    pub tasks_max: u64,
    /// 0: not set.
    pub io_weight: u64,
}

impl JobUnit {
    /// The limits for a VM of `memory_mib` and `vcpus`: the guest's memory
    /// plus the configured overhead (the VMM, its helpers, the page cache
    /// of the job's disks); one core per vCPU plus one for the VMM's own
    /// threads, unless configured.
    pub fn new(
        id: &str,
        description: String,
        memory_mib: u64,
        vcpus: u32,
        cfg: &SupervisionConfig,
    ) -> JobUnit {
        let cpu_percent = if cfg.cpu_quota_percent > 0 {
            cfg.cpu_quota_percent
        } else {
            (u64::from(vcpus) + 1) * 100
        };
        JobUnit {
            id: id.to_owned(),
            description,
            memory_max: (memory_mib + cfg.memory_overhead_mib) << 20,
            cpu_quota_usec: cpu_percent * 10_000,
            tasks_max: cfg.tasks_max,
            io_weight: cfg.io_weight,
        }
    }
}

/// The device nodes a job's VMM may open (`DeviceAllow=`, read-write).
pub const VMM_DEVICES: [&str; 3] = ["/dev/kvm", "/dev/net/tun", "/dev/vhost-net"];

/// The name an admin types: `airlock-job-<id>.service`.
pub fn unit_name(id: &str) -> String {
    format!("airlock-job-{id}.service")
}

/// The job id in a unit name made by [`unit_name`].
pub fn job_of_unit(unit: &str) -> Option<&str> {
    unit.strip_prefix("airlock-job-")?.strip_suffix(".service")
}

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Manager",
    default_service = "org.freedesktop.systemd1",
    default_path = "/org/freedesktop/systemd1"
)]
trait Manager {
    fn start_transient_unit(
        &self,
        name: &str,
        mode: &str,
        properties: &[(&str, Value<'_>)],
        aux: &[(&str, &[(&str, Value<'_>)])],
    ) -> zbus::Result<OwnedObjectPath>;
    fn attach_processes_to_unit(
        &self,
        unit_name: &str,
        subcgroup: &str,
        pids: &[u32],
    ) -> zbus::Result<()>;
    fn stop_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn get_unit(&self, name: &str) -> zbus::Result<OwnedObjectPath>;
    fn reset_failed_unit(&self, name: &str) -> zbus::Result<()>;
    #[allow(clippy::type_complexity)]
    fn list_units_by_patterns(
        &self,
        states: &[&str],
        patterns: &[&str],
    ) -> zbus::Result<
        Vec<(
            String,
            String,
            String,
            String,
            String,
            String,
            OwnedObjectPath,
            u32,
            String,
            OwnedObjectPath,
        )>,
    >;
}

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Unit",
    default_service = "org.freedesktop.systemd1"
)]
trait Unit {
    #[zbus(property)]
    fn active_state(&self) -> zbus::Result<String>;
}

/// Transient units through systemd's manager on the system bus.
pub struct SystemdUnits {
    conn: zbus::Connection,
    manager: ManagerProxy<'static>,
    slice: String,
    /// `ExecStart` of every job unit: airlockd's own binary, `--version`.
    exe: String,
}

/// Processes under airlockd, in a cgroup v2 child group where it can.
pub struct Direct {
    /// The cgroup that holds the job groups; `None`: no limits.
    base: Option<PathBuf>,
    /// Why there are no limits, for the start-up line.
    why_not: String,
}

pub enum Supervisor {
    Systemd(SystemdUnits),
    Direct(Direct),
}

impl Supervisor {
    /// Pick the mode (`supervision.mode`): systemd when airlockd runs under
    /// it (`/run/systemd/system` exists) and its manager answers, else direct.
    pub async fn start(cfg: &SupervisionConfig) -> Result<Arc<Supervisor>> {
        let booted = Path::new("/run/systemd/system").is_dir();
        let s = match cfg.mode {
            SupervisionMode::Direct => Supervisor::Direct(Direct::new()),
            SupervisionMode::Systemd if !booted => return Err(Error::NoSystemd),
            SupervisionMode::Systemd => Supervisor::Systemd(SystemdUnits::connect(cfg).await?),
            SupervisionMode::Auto if booted => match SystemdUnits::connect(cfg).await {
                Ok(s) => Supervisor::Systemd(s),
                Err(e) => {
                    warn!(error = %crate::error::chain(&e), "systemd is running but its manager does not answer; supervising VM processes directly");
                    Supervisor::Direct(Direct::new())
                }
            },
            SupervisionMode::Auto => Supervisor::Direct(Direct::new()),
        };
        match &s {
            Supervisor::Systemd(u) => info!(
                mode = "systemd",
                slice = %u.slice,
                "job supervision: each job runs in its own transient unit airlock-job-<id>.service"
            ),
            Supervisor::Direct(d) => match &d.base {
                Some(b) => info!(
                    mode = "direct",
                    cgroup = %b.display(),
                    "job supervision: no systemd; airlockd supervises VM processes itself, each job in cgroup v2 group airlock-job-<id> with its limits"
                ),
                None => info!(
                    mode = "direct",
                    why = %d.why_not,
                    "job supervision: no systemd; airlockd supervises VM processes itself, without cgroup limits"
                ),
            },
        }
        Ok(Arc::new(s))
    }

    /// Direct supervision with no cgroups: for tools and benchmarks.
    pub fn plain() -> Arc<Supervisor> {
        Arc::new(Supervisor::Direct(Direct {
            base: None,
            why_not: "not asked for".into(),
        }))
    }

    pub fn mode(&self) -> &'static str {
        match self {
            Supervisor::Systemd(_) => "systemd",
            Supervisor::Direct(_) => "direct",
        }
    }

    /// The job's unit, when it has one (under systemd).
    pub fn job_unit(&self, id: &str) -> Option<String> {
        matches!(self, Supervisor::Systemd(_)).then(|| unit_name(id))
    }

    /// Make the job's unit (or cgroup) before anything of it runs.
    pub async fn begin(&self, job: &JobUnit) -> Result<()> {
        match self {
            Supervisor::Systemd(s) => s.begin(job).await,
            Supervisor::Direct(d) => d.begin(job),
        }
    }

    /// Move a process of the job's VM into its unit (or cgroup).
    pub async fn adopt(&self, id: &str, pid: u32) -> Result<()> {
        match self {
            Supervisor::Systemd(s) => s.adopt(id, pid).await,
            Supervisor::Direct(d) => d.adopt(id, pid),
        }
    }

    /// Was the job's unit stopped by someone else (`systemctl stop`)?
    pub async fn stopped_from_outside(&self, id: &str) -> bool {
        match self {
            Supervisor::Systemd(s) => s.stopped_from_outside(id).await,
            Supervisor::Direct(_) => false,
        }
    }

    /// The job is over: stop its unit (or remove its cgroup).
    pub async fn end(&self, id: &str) {
        match self {
            Supervisor::Systemd(s) => s.end(id).await,
            Supervisor::Direct(d) => d.end(id),
        }
    }

    /// Crash recovery: stop every job unit (remove every job cgroup) whose
    /// job is not in `running`. Returns the names removed.
    pub async fn clean(&self, running: &[String]) -> Vec<String> {
        match self {
            Supervisor::Systemd(s) => s.clean(running).await,
            Supervisor::Direct(d) => d.clean(running),
        }
    }

    /// An [`crate::vm::Adopt`] hook that moves a job's VM processes here.
    pub fn adopter(self: &Arc<Self>, id: &str) -> crate::vm::Adopt {
        let me = self.clone();
        let id = id.to_owned();
        crate::vm::Adopt::new(move |pid| {
            let me = me.clone();
            let id = id.clone();
            Box::pin(async move {
                me.adopt(&id, pid)
                    .await
                    .map_err(|e| crate::error::chain(&e))
            })
        })
    }
}

impl SystemdUnits {
    async fn connect(cfg: &SupervisionConfig) -> Result<SystemdUnits> {
        let bus = |e| Error::Bus(Box::new(e));
        let conn = zbus::Connection::system().await.map_err(bus)?;
        let manager = ManagerProxy::new(&conn).await.map_err(bus)?;
        // One call now, so a dead manager is found at start.
        manager
            .list_units_by_patterns(&[], &["airlock-job-*.service"])
            .await
            .map_err(bus)?;
        let exe = std::env::current_exe()
            .ok()
            .and_then(|p| p.to_str().map(str::to_owned))
            .unwrap_or_else(|| "/bin/true".into());
        Ok(SystemdUnits {
            conn,
            manager,
            slice: cfg.slice.clone(),
            exe,
        })
    }

    async fn begin(&self, job: &JobUnit) -> Result<()> {
        let unit = unit_name(&job.id);
        let m = &self.manager;
        // A failed unit of the same name (an earlier attempt) blocks a new one.
        let _ = m.reset_failed_unit(&unit).await;
        let exec = vec![(
            self.exe.clone(),
            vec![self.exe.clone(), "--version".into()],
            false,
        )];
        let mut props: Vec<(&str, Value<'_>)> = vec![
            ("Description", Value::from(job.description.clone())),
            ("Type", Value::from("oneshot")),
            ("RemainAfterExit", Value::from(true)),
            ("ExecStart", Value::from(exec)),
            ("CollectMode", Value::from("inactive-or-failed")),
            ("MemoryMax", Value::from(job.memory_max)),
            ("CPUQuotaPerSecUSec", Value::from(job.cpu_quota_usec)),
            ("TasksMax", Value::from(job.tasks_max)),
            ("TimeoutStopUSec", Value::from(10_000_000u64)),
            // systemd moves processes only into delegated units.
            ("Delegate", Value::from(true)),
            // The VMM's devices: KVM, TAPs, vhost-net, and the pseudo
            // devices `closed` keeps (null, zero, urandom, …); airlockd's
            // own unit has the same list, but the VMM is not in it.
            ("DevicePolicy", Value::from("closed")),
            (
                "DeviceAllow",
                Value::from(
                    VMM_DEVICES
                        .iter()
                        .map(|d| (d.to_string(), "rw".to_string()))
                        .collect::<Vec<_>>(),
                ),
            ),
        ];
        if !self.slice.is_empty() {
            props.push(("Slice", Value::from(self.slice.clone())));
        }
        if job.io_weight > 0 {
            props.push(("IOWeight", Value::from(job.io_weight)));
        }
        m.start_transient_unit(&unit, "fail", &props, &[])
            .await
            .map_err(|source| Error::Systemd {
                what: "StartTransientUnit",
                unit: unit.clone(),
                source: Box::new(source),
            })?;
        // The start job ends once ExecStart has exited; processes can only
        // join an active unit.
        let t0 = Instant::now();
        let limit = Duration::from_secs(10);
        loop {
            let state = self.state(&unit).await.unwrap_or_else(|| "gone".into());
            if state == "active" {
                info!(%unit, memory_max = job.memory_max, cpu_quota_usec = job.cpu_quota_usec, tasks_max = job.tasks_max, "job unit started");
                return Ok(());
            }
            if t0.elapsed() > limit || state == "failed" {
                return Err(Error::NotActive {
                    unit,
                    secs: limit.as_secs(),
                    state,
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn state(&self, unit: &str) -> Option<String> {
        let path = self.manager.get_unit(unit).await.ok()?;
        let u = UnitProxy::builder(&self.conn)
            .path(path)
            .ok()?
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await
            .ok()?;
        u.active_state().await.ok()
    }

    async fn adopt(&self, id: &str, pid: u32) -> Result<()> {
        let unit = unit_name(id);
        self.manager
            .attach_processes_to_unit(&unit, "/", &[pid])
            .await
            .map_err(|source| Error::Systemd {
                what: "AttachProcessesToUnit",
                unit,
                source: Box::new(source),
            })
    }

    async fn stopped_from_outside(&self, id: &str) -> bool {
        // Only airlockd stops a job unit while its job runs, and it does
        // that after the job's last VM: any other state is an admin's stop.
        match self.state(&unit_name(id)).await {
            Some(s) => s != "active" && s != "activating",
            None => true,
        }
    }

    async fn end(&self, id: &str) {
        let unit = unit_name(id);
        match self.manager.stop_unit(&unit, "replace").await {
            Ok(_) => info!(%unit, "job unit stopped"),
            Err(e) => {
                // Already gone (an admin stopped it) is fine.
                tracing::debug!(%unit, error = %e, "job unit not stopped");
            }
        }
    }

    async fn clean(&self, running: &[String]) -> Vec<String> {
        let m = &self.manager;
        let units = match m
            .list_units_by_patterns(&[], &["airlock-job-*.service"])
            .await
        {
            Ok(u) => u,
            Err(e) => {
                warn!(error = %e, "cannot list job units left by a previous run");
                return vec![];
            }
        };
        let mut cleaned = Vec::new();
        for u in units {
            let name = u.0;
            let Some(id) = job_of_unit(&name) else {
                continue;
            };
            if running.iter().any(|r| r == id) {
                continue;
            }
            warn!(unit = %name, state = %u.3, "stopping job unit left by a previous run");
            let _ = m.stop_unit(&name, "replace").await;
            let _ = m.reset_failed_unit(&name).await;
            cleaned.push(name);
        }
        cleaned
    }
}

/// Where cgroup v2 is mounted (the unified hierarchy on its own, or the
/// `unified` mount of a hybrid setup), if it is.
fn cgroup2_root() -> Option<PathBuf> {
    ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.join("cgroup.controllers").exists())
}

/// airlockd's own cgroup (v2), relative to the hierarchy's root.
fn own_cgroup() -> Option<String> {
    std::fs::read_to_string("/proc/self/cgroup")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("0::").map(str::to_owned))
}

const CONTROLLERS: [&str; 3] = ["memory", "pids", "cpu"];

fn cg_write(dir: &Path, file: &str, value: &str, what: &'static str) -> Result<()> {
    std::fs::write(dir.join(file), value).map_err(|source| Error::Cgroup {
        path: dir.join(file).display().to_string(),
        what,
        source,
    })
}

impl Direct {
    fn new() -> Direct {
        match Direct::base() {
            Ok(b) => Direct {
                base: Some(b),
                why_not: String::new(),
            },
            Err(why) => Direct {
                base: None,
                why_not: why,
            },
        }
    }

    /// Find (or make) a cgroup whose children may have the memory, pids and
    /// cpu controllers. In the root cgroup that is the root; elsewhere
    /// airlockd first moves itself into a leaf `airlockd` below its own
    /// cgroup, as a delegated cgroup wants (no processes in inner nodes).
    fn base() -> std::result::Result<PathBuf, String> {
        let root = cgroup2_root().ok_or("no cgroup v2 hierarchy is mounted")?;
        let own = own_cgroup().ok_or("airlockd's cgroup v2 path is unknown")?;
        let base = root.join(own.trim_start_matches('/'));
        // The controllers this cgroup may hand to its children.
        let have = std::fs::read_to_string(base.join("cgroup.controllers")).unwrap_or_default();
        let missing: Vec<_> = CONTROLLERS
            .iter()
            .filter(|c| !have.split_whitespace().any(|h| h == **c))
            .collect();
        if !missing.is_empty() {
            return Err(format!(
                "the cgroup {} lacks the {missing:?} controllers (under systemd: Delegate=yes)",
                base.display()
            ));
        }
        if own != "/" {
            let leaf = base.join("airlockd");
            std::fs::create_dir_all(&leaf)
                .and_then(|_| std::fs::write(leaf.join("cgroup.procs"), "0"))
                .map_err(|e| {
                    format!(
                        "cannot move airlockd into {} (is its cgroup delegated?): {e}",
                        leaf.display()
                    )
                })?;
        }
        let enable: String = CONTROLLERS.iter().map(|c| format!("+{c} ")).collect();
        std::fs::write(base.join("cgroup.subtree_control"), enable.trim()).map_err(|e| {
            format!(
                "cannot enable {CONTROLLERS:?} in {}: {e}",
                base.join("cgroup.subtree_control").display()
            )
        })?;
        Ok(base)
    }

    fn dir(&self, id: &str) -> Option<PathBuf> {
        self.base
            .as_ref()
            .map(|b| b.join(format!("airlock-job-{id}")))
    }

    fn begin(&self, job: &JobUnit) -> Result<()> {
        let Some(dir) = self.dir(&job.id) else {
            return Ok(());
        };
        std::fs::create_dir_all(&dir).map_err(|source| Error::Cgroup {
            path: dir.display().to_string(),
            what: "cannot create",
            source,
        })?;
        cg_write(
            &dir,
            "memory.max",
            &job.memory_max.to_string(),
            "cannot set",
        )?;
        cg_write(&dir, "pids.max", &job.tasks_max.to_string(), "cannot set")?;
        cg_write(
            &dir,
            "cpu.max",
            &format!("{} 1000000", job.cpu_quota_usec),
            "cannot set",
        )?;
        if job.io_weight > 0 {
            // The io controller may be missing; a weight is a nicety.
            let _ = cg_write(&dir, "io.weight", &job.io_weight.to_string(), "");
        }
        Ok(())
    }

    fn adopt(&self, id: &str, pid: u32) -> Result<()> {
        match self.dir(id) {
            Some(dir) => cg_write(&dir, "cgroup.procs", &pid.to_string(), "cannot move into"),
            None => Ok(()),
        }
    }

    fn remove(dir: &Path) -> bool {
        if !dir.exists() {
            return false;
        }
        // Anything still in it dies first (cgroup.kill, Linux 5.14+).
        let _ = std::fs::write(dir.join("cgroup.kill"), "1");
        for _ in 0..50 {
            if std::fs::remove_dir(dir).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        warn!(cgroup = %dir.display(), "cannot remove job cgroup");
        false
    }

    fn end(&self, id: &str) {
        if let Some(dir) = self.dir(id) {
            Direct::remove(&dir);
        }
    }

    fn clean(&self, running: &[String]) -> Vec<String> {
        let Some(base) = &self.base else {
            return vec![];
        };
        let mut cleaned = Vec::new();
        for e in std::fs::read_dir(base).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(id) = name.strip_prefix("airlock-job-") else {
                continue;
            };
            if running.iter().any(|r| r == id) {
                continue;
            }
            warn!(cgroup = %e.path().display(), "removing job cgroup left by a previous run");
            if Direct::remove(&e.path()) {
                cleaned.push(name);
            }
        }
        cleaned
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_names_round_trip() {
        let id = "0b6f6a1e-6f1d-4d0c-9a55-2f1f5f8f2a10";
        assert_eq!(
            unit_name(id),
            "airlock-job-0b6f6a1e-6f1d-4d0c-9a55-2f1f5f8f2a10.service"
        );
        assert_eq!(job_of_unit(&unit_name(id)), Some(id));
        assert_eq!(job_of_unit("airlockd.service"), None);
        assert_eq!(job_of_unit("airlock-job-x.scope"), None);
    }

    #[test]
    fn limits_follow_the_vm_and_the_config() {
        let cfg = SupervisionConfig::default();
        let u = JobUnit::new("j", "d".into(), 1024, 1, &cfg);
        assert_eq!(u.memory_max, (1024 + cfg.memory_overhead_mib) << 20);
        assert_eq!(u.cpu_quota_usec, 2_000_000, "one vCPU plus one for the VMM");
        let cfg = SupervisionConfig {
            cpu_quota_percent: 150,
            ..Default::default()
        };
        assert_eq!(
            JobUnit::new("j", "d".into(), 1024, 4, &cfg).cpu_quota_usec,
            1_500_000
        );
    }
}
