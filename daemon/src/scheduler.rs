//! The scheduler, airlockd's runtime: the job queue, `max_jobs` slots,
//! drain and resume, cancel, and start-up recovery. Its front-ends (D-Bus,
//! the broker, the web view) call it; it calls none of them, and tells
//! them why it refused a request ([`ApiError`]).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::{mpsc, Semaphore};
use tracing::{error, info, warn};

use crate::job::{JobRecord, JobState, ReportState, Source};
use crate::release::Release;
use crate::runner::Runner;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot create state directory {0}")]
    StateDir(String, #[source] std::io::Error),
}

/// Why the scheduler refused a request of a front-end (D-Bus, the broker):
/// the caller's mistake (a bad job, an unknown id) is told apart from a
/// refusal (a job already done) and from the daemon's own trouble.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("bad job: {0}")]
    BadJob(#[from] crate::ofborg::Error),
    #[error(transparent)]
    NoSuchJob(crate::job::Error),
    #[error("job {0} is already done")]
    AlreadyDone(String),
    #[error("the release service is not running")]
    NoRelease,
    #[error("the scheduler has stopped")]
    Stopped,
    #[error("cannot save the job")]
    Store(#[source] crate::job::Error),
}

impl ApiError {
    /// The caller named something that is not there or not valid.
    pub fn is_callers(&self) -> bool {
        matches!(self, ApiError::BadJob(_) | ApiError::NoSuchJob(_))
    }
}

/// Runs one job to completion (the [`Runner`] in production).
pub trait Executor: Send + Sync {
    fn execute<'a>(&'a self, rec: &'a mut JobRecord) -> crate::vm::BoxFuture<'a, ()>;
}

impl Executor for Runner {
    fn execute<'a>(&'a self, rec: &'a mut JobRecord) -> crate::vm::BoxFuture<'a, ()> {
        Box::pin(self.run(rec))
    }
}

pub struct Scheduler {
    pub runner: Arc<Runner>,
    queue: mpsc::UnboundedSender<String>,
    /// Jobs whose VM work is under way.
    running: Arc<AtomicUsize>,
    /// Set on SIGTERM: queued jobs are not started any more.
    draining: Arc<AtomicBool>,
    /// The release service, once started: poked when a job is done.
    release: Arc<OnceLock<Arc<Release>>>,
    /// Jobs not started because of a drain, started again on resume.
    held: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Scheduler {
    /// Recover the state dir, start the scheduler. Returns its handle.
    pub fn start(runner: Arc<Runner>) -> Result<Arc<Scheduler>, Error> {
        let exec: Arc<dyn Executor> = runner.clone();
        Scheduler::start_with(runner, exec)
    }

    /// Like [`Scheduler::start`] with another executor (benchmarks of the
    /// intake path use one that runs no VM).
    pub fn start_with(
        runner: Arc<Runner>,
        exec: Arc<dyn Executor>,
    ) -> Result<Arc<Scheduler>, Error> {
        let cfg = runner.cfg.clone();
        for d in [cfg.jobs_dir(), cfg.quarantine_dir(), cfg.git_cache_dir()] {
            std::fs::create_dir_all(&d).map_err(|e| Error::StateDir(d.display().to_string(), e))?;
        }
        let (tx, mut rx) = mpsc::unbounded_channel::<String>();
        let running = Arc::new(AtomicUsize::new(0));
        let draining = Arc::new(AtomicBool::new(false));
        let release: Arc<OnceLock<Arc<Release>>> = Arc::new(OnceLock::new());
        let held = Arc::new(std::sync::Mutex::new(Vec::new()));
        let d = Arc::new(Scheduler {
            runner: runner.clone(),
            queue: tx,
            running: running.clone(),
            draining: draining.clone(),
            release: release.clone(),
            held: held.clone(),
        });
        let requeue = d.recover();
        let sem = Arc::new(Semaphore::new(cfg.max_jobs));
        let r = runner.clone();
        let exec = exec.clone();
        tokio::spawn(async move {
            while let Some(id) = rx.recv().await {
                let permit = sem.clone().acquire_owned().await.expect("semaphore open");
                if draining.load(Ordering::SeqCst) {
                    // Left queued: it runs on resume, or (a local job) at the
                    // next start; a broker job is redelivered by the broker.
                    held.lock().expect("lock").push(id);
                    continue;
                }
                let r = r.clone();
                let exec = exec.clone();
                let running = running.clone();
                let release = release.clone();
                running.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let _permit = permit;
                    crate::fault::pause(&r.cfg.state_dir, crate::fault::Point::BeforeBuild, &id)
                        .await;
                    match r.store.load(&id) {
                        Ok(mut rec) if !rec.state.is_terminal() => {
                            exec.execute(&mut rec).await;
                            if let Some(r) = release.get() {
                                r.poke();
                            }
                        }
                        Ok(_) => {}
                        Err(e) => error!(job_id = %id, error = %e, "cannot load queued job"),
                    }
                    running.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        for id in requeue {
            let _ = d.queue.send(id);
        }
        Ok(d)
    }

    /// Clean up after a previous run: half-written quarantine directories,
    /// per-job disks of jobs that were running. Unfinished jobs run again.
    fn recover(&self) -> Vec<String> {
        let cfg = &self.runner.cfg;
        crate::quarantine::remove_half_written(&cfg.quarantine_dir());
        if let Some(b) = crate::input::Bases::from_config(cfg) {
            b.clean();
        }
        crate::checkout::remove_half_made(&cfg.git_cache_dir());
        let (recs, errs) = self.runner.store.list();
        for e in errs {
            warn!(error = %e, "skipping unreadable job record");
        }
        let mut requeue = Vec::new();
        for mut rec in recs {
            if rec.state.is_terminal() {
                continue;
            }
            if rec.state == JobState::Queued && rec.source != Source::Hydra {
                // Nothing of it ran: it simply waits its turn again.
                requeue.push(rec.id);
                continue;
            }
            let paths = self.runner.paths(&rec.id);
            crate::runner::clear_scratch(&paths);
            let _ = std::fs::remove_dir_all(paths.step_dir());
            // A broker job is redelivered by the broker; a queue-runner
            // step is retried by the runner (the tunnel it came on is gone).
            let broker = matches!(rec.source, Source::Amqp | Source::Hydra);
            // A local job's request runs again as a new job; a broker job
            // is redelivered by the broker (which still holds the unacked
            // delivery), and running it here as well would report it twice.
            let retry = (!broker).then(|| {
                let mut r = JobRecord::new(rec.source.clone(), rec.job.clone());
                r.retry_of = Some(rec.id.clone());
                r.refetch = rec.refetch.clone();
                r
            });
            let err = match &retry {
                Some(r) => format!(
                    "interrupted by a restart of airlockd; running it again as job {}",
                    r.id
                ),
                None => {
                    "interrupted by a restart of airlockd; the broker redelivers the job".into()
                }
            };
            let _in_job = rec.span().entered();
            match &retry {
                Some(r) => {
                    warn!(state = ?rec.state, retried_as = %r.id, "job was interrupted by a restart of airlockd; running it again as a new job")
                }
                None => {
                    warn!(state = ?rec.state, "broker job was interrupted by a restart of airlockd; the broker redelivers it")
                }
            }
            rec.finish(crate::job::JobResult {
                silent: broker,
                ..crate::job::JobResult::new(
                    crate::ofborg::BuildStatus::UnexpectedError { err },
                    vec![],
                )
            });
            rec.interrupted = true;
            rec.retried_as = retry.as_ref().map(|r| r.id.clone());
            if let Some(o) = rec.amqp.as_mut() {
                o.report = ReportState::Dropped;
            }
            if let Err(e) = self.runner.store.save(&rec) {
                warn!(error = %e, "cannot mark the job interrupted");
            }
            if let Some(r) = retry {
                match self.runner.store.save(&r) {
                    Ok(()) => requeue.push(r.id),
                    Err(e) => warn!(retry = %r.id, error = %e, "cannot queue the retry"),
                }
            }
        }
        requeue
    }

    pub fn submit(&self, job: crate::ofborg::BuildJob) -> Result<String, ApiError> {
        job.validate()?;
        self.enqueue(JobRecord::new(Source::Local, job))
    }

    /// Persist a new job record and queue it.
    pub fn enqueue(&self, mut rec: JobRecord) -> Result<String, ApiError> {
        // nixpkgs CI's comparison: only what this builder reads is kept
        // (the record is saved at every step).
        if let Some(c) = rec
            .job
            .airlock_review
            .as_mut()
            .and_then(|r| r.ci_comparison.as_mut())
        {
            *c = c.for_system(&self.runner.cfg.system);
        }
        self.runner.store.save(&rec).map_err(ApiError::Store)?;
        rec.span()
            .in_scope(|| info!(source = ?rec.source, attrs = ?rec.job.attrs, "job queued"));
        // Signal watchers see a job a drain holds, and the queue's length.
        self.runner.control.changed(crate::control::JobChange {
            id: rec.id.clone(),
            state: JobState::Queued,
            status: String::new(),
        });
        self.queue
            .send(rec.id.clone())
            .map_err(|_| ApiError::Stopped)?;
        self.runner.sink.queued(&rec);
        if let Some(r) = self.release.get().filter(|_| rec.source != Source::Hydra) {
            // Date the PR's head now, not when the build is done: a label
            // added during the build then counts even without webhooks.
            r.observe(&rec.job.repo.full_name, rec.job.pr.number);
        }
        Ok(rec.id)
    }

    /// Attach the release service (status, release, gc over the API).
    pub fn set_release(&self, r: Arc<Release>) {
        let _ = self.release.set(r);
    }

    /// The release service, or why it is not there.
    pub fn release_service(&self) -> Result<&Arc<Release>, ApiError> {
        self.release.get().ok_or(ApiError::NoRelease)
    }

    /// Stop starting queued jobs (SIGTERM, or an administrator).
    pub fn drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Start queued jobs again after [`Scheduler::drain`].
    pub fn resume(&self) {
        self.draining.store(false, Ordering::SeqCst);
        let held: Vec<String> = std::mem::take(&mut *self.held.lock().expect("lock"));
        for id in held {
            let _ = self.queue.send(id);
        }
    }

    /// Cancel a job: one that has not started is finished at once without
    /// running anything; a running one has its VM stopped by its runner.
    /// Either way its result is `UnexpectedError: cancelled by an
    /// administrator` (ofborg has no "cancelled").
    pub fn cancel(&self, id: &str) -> Result<String, ApiError> {
        let mut rec = self.runner.store.load(id).map_err(|e| match e {
            e @ (crate::job::Error::NotFound(_) | crate::job::Error::BadId(_)) => {
                ApiError::NoSuchJob(e)
            }
            e => ApiError::Store(e),
        })?;
        if rec.state.is_terminal() {
            return Err(ApiError::AlreadyDone(id.to_owned()));
        }
        rec.span().in_scope(|| info!("cancel requested"));
        Ok(match self.runner.control.cancel(id) {
            crate::control::Cancel::NotStarted => {
                self.runner.finish_cancelled(&mut rec);
                "cancelled".into()
            }
            crate::control::Cancel::Running => "cancelling: its VM is being stopped".into(),
            crate::control::Cancel::Again => "already being cancelled".into(),
        })
    }

    /// Jobs waiting for a slot.
    pub fn queued(&self) -> usize {
        let (recs, _) = self.runner.store.list();
        recs.iter()
            .filter(|r| r.state == JobState::Queued && !self.runner.control.is_cancelled(&r.id))
            .count()
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Jobs currently running.
    pub fn running(&self) -> usize {
        self.running.load(Ordering::SeqCst)
    }
}

impl Scheduler {
    /// systemd's view of airlockd: `STATUS=` with the running and queued
    /// job counts whenever a job changes (and every 10 s), ", draining"
    /// while an administrator's drain holds queued jobs, and `WATCHDOG=1` at
    /// half the interval the unit asks for. Never `STOPPING=1`: systemd
    /// takes that as the service going down and arms `TimeoutStopSec`, so
    /// only airlockd's own shutdown (SIGTERM) sends it.
    pub fn spawn_sd_status(self: &Arc<Self>) {
        if std::env::var_os("NOTIFY_SOCKET").is_none() {
            return;
        }
        let d = self.clone();
        let mut changes = d.runner.control.subscribe();
        let watchdog = crate::systemd::watchdog();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(
                watchdog
                    .map(|w| w / 2)
                    .unwrap_or(Duration::from_secs(10))
                    .min(Duration::from_secs(10)),
            );
            let mut last = String::new();
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    r = changes.recv() => {
                        if matches!(r, Err(tokio::sync::broadcast::error::RecvError::Closed)) {
                            return;
                        }
                    }
                }
                let mut msg = String::new();
                let status = format!(
                    "STATUS={} running, {} queued{}\n",
                    d.running(),
                    d.queued(),
                    if d.is_draining() { ", draining" } else { "" }
                );
                if status != last {
                    msg.push_str(&status);
                    last = status;
                }
                if watchdog.is_some() {
                    msg.push_str("WATCHDOG=1\n");
                }
                if !msg.is_empty() {
                    crate::systemd::notify(&msg);
                }
            }
        });
    }
}
