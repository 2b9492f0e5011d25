//! The job runner: one job's story as named steps (admit → checkout →
//! disks → follow → fetch phase → build phase → collect → review finish),
//! each returning its output or the job's end ([`JobEnd`]). It composes the
//! adapters; the rules it applies itself are ofborg's status rules (how a
//! VM's end, a checkout's outcome and a fetch-phase hash mismatch become
//! the job's status), each a pure function tested here.
//!
//! - `follow`: the agent channel while a VM runs.
//! - `disks`: the job's disks and the VM spec.
//! - `boot`: one VM boot, watched.
//! - `collect`: the export, verified into quarantine.

mod boot;
mod collect;
mod disks;
mod follow;
pub mod step;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{info, warn, Instrument};

use crate::checkout::{self, Outcome};
use crate::config::Config;
use crate::error::chain as error_chain;
use crate::input::sparse_file;
use crate::job::{JobPaths, JobRecord, JobResult, JobState, JobStore};
use crate::ofborg::{status_word, BuildStatus};
use crate::quarantine;
use crate::vm::{VmBackend, VmExit};
use airlock_network_policy::Network;
use airlock_wire::Phase;
use follow::Follower;

/// Receives a job's live log (the local log file; the AMQP reporter later).
pub trait LogSink: Send + Sync {
    /// The job is queued (saved, not yet started).
    fn queued(&self, _rec: &JobRecord) {}
    fn started(&self, _rec: &JobRecord, _attempted: &[String], _skipped: &[String]) {}
    fn line(&self, _rec: &JobRecord, _n: u64, _text: &str) {}
    /// The job is done and its record saved with the result.
    fn finished(&self, _rec: &JobRecord) {}
}

pub struct NoSink;
impl LogSink for NoSink {}

pub struct Runner {
    pub cfg: Arc<Config>,
    pub backend: Arc<dyn VmBackend>,
    pub store: JobStore,
    pub sink: Arc<dyn LogSink>,
    /// The fetch phase's network; `None`: one boot without any NIC.
    pub network: Option<Arc<Network>>,
    /// The host's caching proxy the fetch phase substitutes through.
    pub substituter: Option<crate::substituter::Substituter>,
    /// Cancellation and the stream of job changes.
    pub control: Arc<crate::control::JobControl>,
    /// Each job's unit (systemd) or cgroup, and its limits.
    pub supervisor: Arc<crate::supervise::Supervisor>,
    /// journald's socket when airlockd logs there: the guest's console and
    /// build log lines go there too (rate-limited).
    pub journal: Option<PathBuf>,
    /// The kernel a VM boots: the trimmed one while it boots.
    pub kernel: Arc<crate::vm::kernel::KernelChoice>,
    /// Signs an attestation for every verified output (issue 30).
    pub attestor: Option<Arc<crate::attest::store::Attestor>>,
    /// GitHub with credentials (a token or an App), for a review's merge
    /// verdict (the PR's author and current head).
    pub github: Option<Arc<crate::release::github::GitHub>>,
}

/// Remove what must not outlive the job, after killing a VM a previous
/// run left behind (its pid file names it).
pub fn clear_scratch(paths: &JobPaths) {
    let id = paths
        .dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if crate::vm::qemu::kill_orphan(&paths.pidfile(), &id) {
        tracing::warn!(job_id = %id, "killed a VM left behind by a previous run");
    }
    paths.remove_scratch();
}

/// A job that ends before its last step, with the result it reports.
#[derive(Debug)]
pub struct JobEnd(pub Box<JobResult>);

/// What each step of the job returns: its output, or the job's end.
pub type Step<T> = std::result::Result<T, JobEnd>;

/// Where the built tree came from, for the quarantine manifest (and so
/// for the release rule, which checks the branch against the PR's).
pub(super) fn origin(rec: &JobRecord) -> Option<quarantine::Origin> {
    match (&rec.base_commit, &rec.merged_commit) {
        (Some(base), Some(merged)) => Some(quarantine::Origin {
            clone_url: rec.job.repo.clone_url.clone(),
            base_branch: merged_onto(rec).to_owned(),
            base_commit: base.clone(),
            merged_commit: merged.clone(),
        }),
        _ => None,
    }
}

/// The branch the job's head was merged onto (recorded at checkout; a
/// record from before that field: the PR's target branch).
fn merged_onto(rec: &JobRecord) -> &str {
    rec.merged_onto
        .as_deref()
        .unwrap_or_else(|| rec.job.target_branch())
}

fn end_with_error(err: String) -> JobEnd {
    JobEnd(Box::new(result(
        BuildStatus::UnexpectedError { err },
        vec![],
    )))
}

/// The merged commit and its base, or how the job ends: a refused or
/// failed checkout is an error, a merge conflict a failure, a head that
/// cannot be fetched is silent (as ofborg: nothing to the broker).
fn checkout_outcome(o: Result<Outcome, checkout::Error>) -> Step<(String, String)> {
    match o {
        Ok(Outcome::Merged { commit, base }) => Ok((commit, base)),
        Ok(Outcome::TooLarge(why)) => {
            warn!(%why, "checkout refused");
            Err(end_with_error(format!("checkout refused: {why}")))
        }
        Ok(Outcome::MergeFailed) => {
            info!("merge failed");
            Err(JobEnd(Box::new(result(
                BuildStatus::Failure,
                vec!["Merge failed".into()],
            ))))
        }
        Ok(Outcome::Missing(why)) => {
            warn!(%why, "cannot fetch; as ofborg, nothing is reported to the broker");
            Err(JobEnd(Box::new(JobResult {
                silent: true,
                ..result(BuildStatus::UnexpectedError { err: why }, vec![])
            })))
        }
        Err(e) => {
            warn!(error = %e, "checkout failed");
            Err(end_with_error(format!(
                "checkout failed: {}",
                error_chain(&e)
            )))
        }
    }
}

/// How the build VM ended decides whether its export is read: a timeout
/// or a kill ends the job; a power-off (even with the hypervisor's error
/// status, which is logged) goes on to verification.
fn after_build_vm(exit: VmExit, mut res: JobResult, limit_secs: u64) -> Step<JobResult> {
    match exit {
        VmExit::TimedOut => {
            warn!(limit = limit_secs, "job timed out; VM killed");
            res.status = BuildStatus::TimedOut;
            Err(JobEnd(Box::new(res)))
        }
        VmExit::Killed(reason) => {
            warn!(%reason, "VM killed");
            res.status = BuildStatus::UnexpectedError { err: reason };
            Err(JobEnd(Box::new(res)))
        }
        VmExit::PoweredOff { ok, detail } => {
            if !ok {
                warn!(%detail, "hypervisor exited with an error");
            }
            Ok(res)
        }
    }
}

/// A fixed-output hash mismatch in the fetch phase is what the job
/// reports (the build phase only sees the missing output), unless the
/// build succeeded or timed out anyway.
fn fetch_status_wins(fetch: Option<&BuildStatus>, mut res: JobResult) -> JobResult {
    if fetch == Some(&BuildStatus::HashMismatch)
        && !matches!(res.status, BuildStatus::Success | BuildStatus::TimedOut)
    {
        res.status = BuildStatus::HashMismatch;
    }
    res
}

pub(super) fn result(status: BuildStatus, output: Vec<String>) -> JobResult {
    JobResult::new(status, output)
}

impl Runner {
    pub fn paths(&self, id: &str) -> JobPaths {
        self.store.paths(id)
    }

    /// Move the job forward and save it (a refused move is a bug: logged,
    /// and the job goes on).
    fn advance(&self, rec: &mut JobRecord, to: JobState) {
        if let Err(e) = rec.advance(to) {
            warn!(error = %e, "job state not changed");
        }
        self.save(rec);
    }

    /// Record that a step of the job ended now.
    fn mark(&self, rec: &mut JobRecord, step: &str) {
        self.mark_at(rec, step, Instant::now());
    }

    fn mark_at(&self, rec: &mut JobRecord, step: &str, at: Instant) {
        if let Some(t0) = rec.run_started {
            let secs = at.saturating_duration_since(t0).as_secs_f64();
            rec.timings
                .push((step.to_owned(), (secs * 1000.0).round() / 1000.0));
        }
    }

    fn save(&self, rec: &JobRecord) {
        if let Err(e) = self.store.save(rec) {
            warn!(error = %e, "cannot save job record");
        }
        self.control.changed(crate::control::JobChange {
            id: rec.id.clone(),
            state: rec.state,
            status: rec
                .result
                .as_ref()
                .map(|r| status_word(&r.status))
                .unwrap_or_default(),
        });
    }

    fn cancelled(&self, rec: &JobRecord) -> Option<JobResult> {
        self.control.is_cancelled(&rec.id).then(|| {
            result(
                BuildStatus::UnexpectedError {
                    err: crate::control::CANCELLED.into(),
                },
                vec![],
            )
        })
    }

    /// Finish a job that was cancelled before it started: nothing ran.
    pub fn finish_cancelled(&self, rec: &mut JobRecord) {
        rec.span()
            .in_scope(|| info!("job cancelled before it started"));
        rec.finish(result(
            BuildStatus::UnexpectedError {
                err: crate::control::CANCELLED.into(),
            },
            vec![],
        ));
        self.save(rec);
        let _ = std::fs::remove_dir_all(self.paths(&rec.id).step_dir());
        self.sink.finished(rec);
        self.control.forget(&rec.id);
    }

    /// Run one job to completion. Always returns with `rec` in `Done` and its
    /// scratch files removed.
    pub async fn run(&self, rec: &mut JobRecord) {
        let span = rec.span();
        if let Some(unit) = self.supervisor.job_unit(&rec.id) {
            // `journalctl -u airlock-job-<id>` shows airlockd's lines about
            // the job too (journald matches OBJECT_SYSTEMD_UNIT from root).
            span.record("object_systemd_unit", unit.as_str());
        }
        async {
            let paths = self.paths(&rec.id);
            let t0 = Instant::now();
            rec.run_started = Some(t0);
            rec.timings.clear();
            if !self.control.start(&rec.id) {
                // Cancelled before it started: its canceller finishes it.
                return;
            }
            rec.started_at = Some(crate::job::now());
            let what = match &rec.hydra {
                Some(h) => format!(
                    "airlock job {}: queue-runner step {} ({})",
                    rec.id, h.build_id, h.drv
                ),
                None => format!(
                    "airlock job {}: {} PR #{} at {}",
                    rec.id,
                    rec.job.repo.full_name,
                    rec.job.pr.number,
                    rec.job.pr.head_sha.chars().take(12).collect::<String>()
                ),
            };
            let unit = crate::supervise::JobUnit::new(
                &rec.id,
                what,
                self.cfg.vm.memory_mib,
                self.cfg.vm.vcpus,
                &self.cfg.supervision,
            );
            let res = match self.supervisor.begin(&unit).await {
                Ok(()) => {
                    let r = if rec.hydra.is_some() {
                        self.run_step_inner(rec, &paths).await
                    } else {
                        self.run_inner(rec, &paths).await
                    };
                    match r {
                        Ok(res) | Err(JobEnd(res)) => *res,
                    }
                }
                Err(e) => {
                    warn!(error = %error_chain(&e), "cannot make the job's unit");
                    result(
                        BuildStatus::UnexpectedError {
                            err: format!("cannot make the job's unit: {}", error_chain(&e)),
                        },
                        vec![],
                    )
                }
            };
            self.supervisor.end(&rec.id).await;
            let res = match (self.control.is_cancelled(&rec.id), res) {
                (true, r) if r.status != BuildStatus::Success => JobResult {
                    status: BuildStatus::UnexpectedError {
                        err: crate::control::CANCELLED.into(),
                    },
                    ..r
                },
                (_, r) => r,
            };
            self.control.done(&rec.id);
            if let (Some(line), false) = (self.cfg.sponsor.line(), res.silent) {
                if let Ok(mut l) = std::fs::OpenOptions::new()
                    .append(true)
                    .open(paths.build_log())
                {
                    let _ = writeln!(l, "{line}");
                }
            }
            clear_scratch(&paths);
            let _ = std::fs::remove_dir_all(paths.step_dir());
            info!(status = ?res.status, secs = t0.elapsed().as_secs_f64(), paths = res.store_paths.len(), "job finished");
            rec.finish(res);
            self.save(rec);
            self.sink.finished(rec);
        }
        .instrument(span)
        .await
    }

    /// The job's story, step by step; each step either hands the next its
    /// input or ends the job with its result.
    async fn run_inner(&self, rec: &mut JobRecord, paths: &JobPaths) -> Step<Box<JobResult>> {
        self.admit(rec, paths)?;
        self.checkout(rec, paths).await?;
        self.not_cancelled(rec)?;
        self.disks(rec, paths).await?;
        let mut follower = self.follow(rec, paths)?;
        let mut upstream = BTreeSet::new();
        let (fetch_status, last_phase) = match &self.network {
            Some(net) => {
                let st = self
                    .fetch_step(rec, paths, net, &mut follower, &mut upstream)
                    .await?;
                (Some(st), Phase::Build)
            }
            None => (None, Phase::All),
        };
        let res = self
            .build_step(rec, paths, last_phase, &mut follower)
            .await?;
        crate::fault::pause(&self.cfg.state_dir, crate::fault::Point::MidBuild, &rec.id).await;
        self.advance(rec, JobState::Verifying);
        let mut res = self.collect(rec, paths, res, follower, upstream).await;
        self.mark(rec, "verified");
        self.review_finish(rec, paths, &mut res).await;
        Ok(Box::new(fetch_status_wins(fetch_status.as_ref(), res)))
    }

    /// A job with nothing to build is skipped (and says nothing); a job
    /// that is malformed or already cancelled ends here.
    fn admit(&self, rec: &JobRecord, paths: &JobPaths) -> Step<()> {
        let _ = std::fs::create_dir_all(&paths.dir);
        clear_scratch(paths);
        let review = crate::review::Review::for_job(&rec.job, &self.cfg.review);
        if rec.job.attrs.is_empty() && review.is_none() {
            return Err(JobEnd(Box::new(JobResult {
                silent: true,
                ..result(BuildStatus::Skipped, vec![])
            })));
        }
        rec.job
            .validate()
            .map_err(|e| end_with_error(e.to_string()))?;
        self.not_cancelled(rec)
    }

    fn not_cancelled(&self, rec: &JobRecord) -> Step<()> {
        match self.cancelled(rec) {
            Some(r) => Err(JobEnd(Box::new(r))),
            None => Ok(()),
        }
    }

    /// 1. Fetch the head and the branch it is merged onto, and merge.
    async fn checkout(&self, rec: &mut JobRecord, paths: &JobPaths) -> Step<()> {
        self.advance(rec, JobState::Checkout);
        let onto = self.base_branch(rec).to_owned();
        let outcome = checkout::prepare(
            &self.cfg.git_cache_dir(),
            &rec.job.repo.clone_url,
            &onto,
            &rec.job.pr.head_sha,
            rec.job.pr.number,
            &paths.checkout(),
            &checkout::Limits::from_config(&self.cfg.limits),
        )
        .await;
        let (commit, base) = checkout_outcome(outcome)?;
        info!(merged = %commit, %base, "merged head onto {onto}");
        rec.merged_commit = Some(commit);
        rec.base_commit = Some(base);
        rec.merged_onto = Some(onto);
        self.mark(rec, "checkout");
        Ok(())
    }

    /// 2. The VM's disks: the staged input, an empty /nix, the export area.
    async fn disks(&self, rec: &mut JobRecord, paths: &JobPaths) -> Step<()> {
        if let Err(e) = self.make_disks(rec, paths).await {
            warn!(error = %e, "cannot prepare the VM disks");
            return Err(end_with_error(e));
        }
        self.mark(rec, "disks");
        Ok(())
    }

    /// 3. The job runs: its build log, and the guest's lines to the journal.
    fn follow(&self, rec: &mut JobRecord, paths: &JobPaths) -> Step<Follower> {
        self.advance(rec, JobState::Running);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(paths.build_log())
            .map_err(|e| end_with_error(format!("open build log: {e}")))?;
        let mut follower = Follower::new(log);
        follower.guest = self.journal.as_deref().and_then(|j| {
            let mut fields = vec![
                ("JOB_ID".to_owned(), rec.id.clone()),
                ("PR".to_owned(), rec.job.pr.number.to_string()),
                ("COMMIT".to_owned(), rec.job.pr.head_sha.clone()),
                ("REPO".to_owned(), rec.job.repo.full_name.clone()),
            ];
            if let Some(h) = &rec.hydra {
                fields.push(("BUILD_ID".to_owned(), h.build_id.clone()));
                fields.push(("DRV".to_owned(), h.drv.clone()));
            }
            if let Some(unit) = self.supervisor.job_unit(&rec.id) {
                fields.push(("OBJECT_SYSTEMD_UNIT".to_owned(), unit));
            }
            crate::journal::GuestLines::new(j, self.cfg.supervision.journal_lines_per_sec, fields)
        });
        Ok(follower)
    }

    /// 3a. The fetch phase: a NIC behind the egress policy; only FODs are
    /// realised. A review whose evaluation failed, or with nothing to
    /// build, ends here.
    async fn fetch_step(
        &self,
        rec: &mut JobRecord,
        paths: &JobPaths,
        net: &Network,
        follower: &mut Follower,
        upstream: &mut BTreeSet<String>,
    ) -> Step<BuildStatus> {
        let (status, review) = self
            .fetch_phase(rec, paths, net, follower, upstream)
            .await
            .map_err(JobEnd)?;
        let review_ends = crate::review::Review::for_job(&rec.job, &self.cfg.review)
            .is_some_and(|r| r.ends_on(&status));
        if review_ends {
            let mut res = follower.result();
            res.status = status;
            return Err(JobEnd(Box::new(res)));
        }
        if status == BuildStatus::Skipped {
            let mut res = result(
                BuildStatus::Skipped,
                follower.tail.iter().cloned().collect(),
            );
            res.skipped_attrs = follower.skipped.clone();
            if let Some(rv) = review {
                self.review_report(rec, paths, &mut res, &rv).await;
            }
            return Err(JobEnd(Box::new(res)));
        }
        Ok(status)
    }

    /// 3b. The build phase (or the only phase): no NIC at all.
    async fn build_step(
        &self,
        rec: &mut JobRecord,
        paths: &JobPaths,
        phase: Phase,
        follower: &mut Follower,
    ) -> Step<JobResult> {
        let exit = self
            .boot(rec, paths, phase, None, follower)
            .await
            .map_err(|e| {
                warn!(error = %e, "VM failed");
                end_with_error(e)
            })?;
        // What was built and substituted: one more log line (so also in the
        // result's last lines and on the broker's log stream).
        if let Some(r) = rec.realised {
            let line = realised_line(&r, rec.substitution.as_ref());
            info!(built = r.built, substituted = r.substituted, "{line}");
            follower.log_line(line, rec, self.sink.as_ref());
        }
        after_build_vm(exit, follower.result(), self.cfg.limits.job_timeout_secs)
    }

    /// 4b. A review job's report, from the outcome its VM exported.
    async fn review_finish(&self, rec: &JobRecord, paths: &JobPaths, res: &mut JobResult) {
        if crate::review::Review::for_job(&rec.job, &self.cfg.review).is_none() {
            return;
        }
        match quarantine::read_manifest(&paths.export_img()).map(|m| m.review) {
            Ok(Some(rv)) => self.review_report(rec, paths, res, &rv).await,
            _ => warn!("the review VM reported no review"),
        }
    }

    /// Boot the fetch VM on a fresh job network; returns the fetch status,
    /// or the job's final result when the job cannot go on.
    async fn fetch_phase(
        &self,
        rec: &mut JobRecord,
        paths: &JobPaths,
        net: &Network,
        f: &mut Follower,
        upstream: &mut BTreeSet<String>,
    ) -> Result<(BuildStatus, Option<crate::review::ReviewOutcome>), Box<JobResult>> {
        let fail = |err: String| Box::new(result(BuildStatus::UnexpectedError { err }, vec![]));
        let jn = net.setup().await.map_err(|e| {
            fail(format!(
                "cannot set up the job network: {}",
                error_chain(&e)
            ))
        })?;
        let session = match &self.substituter {
            None => None,
            Some(s) => {
                let addr = std::net::SocketAddr::new(jn.host.into(), self.cfg.substituter.port);
                match s.serve_job(addr).await {
                    Ok(sess) => Some(sess),
                    Err(e) => {
                        net.teardown(&jn).await;
                        return Err(fail(format!(
                            "cannot start the substituter for the job: {}",
                            error_chain(&e)
                        )));
                    }
                }
            }
        };
        let exit = self.boot(rec, paths, Phase::Fetch, Some(&jn), f).await;
        if let Some(sess) = session {
            let (stats, served) = sess.finish().await;
            info!(
                narinfo_hits = stats.narinfo_hits,
                narinfo_misses = stats.narinfo_misses,
                refused = stats.narinfos_refused,
                nars = stats.nars_served,
                bytes_served = stats.bytes_served,
                bytes_upstream = stats.bytes_upstream,
                "substituter done for the job"
            );
            // Through the follower: in the build log and on the broker's
            // log stream, numbered with the guest's lines.
            for r in &stats.refusals {
                f.log_line(
                    format!("airlock: substituter: {r}"),
                    rec,
                    self.sink.as_ref(),
                );
            }
            rec.substitution = Some(stats);
            *upstream = served;
        }
        net.teardown(&jn).await;
        let exit = exit.map_err(fail)?;
        let mut res = f.result();
        match exit {
            VmExit::TimedOut => {
                warn!(
                    limit = self.cfg.limits.fetch_timeout_secs,
                    "fetch phase timed out; VM killed"
                );
                res.status = BuildStatus::TimedOut;
                return Err(Box::new(res));
            }
            VmExit::Killed(reason) => {
                res.status = BuildStatus::UnexpectedError { err: reason };
                return Err(Box::new(res));
            }
            VmExit::PoweredOff { .. } => {}
        }
        let m = quarantine::read_manifest(&paths.export_img()).map_err(|e| {
            let why = f
                .agent_error
                .clone()
                .unwrap_or_else(|| format!("fetch VM produced no valid result: {e}"));
            res.status = BuildStatus::UnexpectedError { err: why };
            Box::new(res.clone())
        })?;
        info!(status = ?m.status, "fetch phase done");
        // A fresh export area for the build phase.
        sparse_file(&paths.export_img(), self.cfg.vm.export_disk_mib).map_err(fail)?;
        Ok((m.status, m.review))
    }

    /// The branch the head is merged onto: the target branch, or for a
    /// review job the branch it is reviewed against.
    fn base_branch<'a>(&'a self, rec: &'a JobRecord) -> &'a str {
        crate::review::merge_onto(&rec.job, &self.cfg.review)
    }

    /// The PR as GitHub shows it now (author, head), for the merge
    /// verdict; none without GitHub credentials or for a non-GitHub repo.
    async fn pr_now(&self, rec: &JobRecord) -> Option<crate::review::verdict::PrNow> {
        let gh = self.github.as_ref()?;
        let (repo, pr) = (&rec.job.repo.full_name, rec.job.pr.number);
        if !crate::release::github::is_pr(repo, pr, &rec.job.pr.head_sha) {
            return None;
        }
        match gh.pull(repo, pr).await {
            Ok((p, _)) => Some(crate::review::verdict::PrNow {
                author: p.user.map(|u| u.login).unwrap_or_default(),
                head_sha: p.head.sha,
            }),
            Err(e) => {
                warn!(error = %e, "cannot read the PR from GitHub: no merge verdict");
                None
            }
        }
    }

    /// Write `report.json` and `report.md` of a review job from the guest's
    /// outcome and what the host verified; its summary joins the result's
    /// lines (and so the broker's BuildResult). The work (reading NARs for
    /// artifacts, building, rendering) runs on a blocking thread, bounded
    /// by the report's own caps and by [`REPORT_TIME_LIMIT`]: past it the
    /// job says so and no report is written.
    async fn review_report(
        &self,
        rec: &JobRecord,
        paths: &JobPaths,
        res: &mut JobResult,
        rv: &crate::review::ReviewOutcome,
    ) {
        let input = crate::review::ReportInput {
            cfg: self.cfg.clone(),
            rec: rec.clone(),
            base_branch: self.base_branch(rec).to_owned(),
            quarantine: res.quarantine.clone(),
            paths: JobPaths {
                dir: paths.dir.clone(),
            },
            outcome: rv.clone(),
            pr_now: self.pr_now(rec).await,
        };
        let late = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = late.clone();
        let span = tracing::Span::current();
        let lines = match blocking_with_limit(REPORT_TIME_LIMIT, move || {
            let _job = span.enter();
            crate::review::write_report(&input, &flag)
        })
        .await
        {
            Ok(lines) => lines,
            Err(why) => {
                late.store(true, std::sync::atomic::Ordering::SeqCst);
                warn!(%why, "no review report");
                vec![format!("airlock: review report not written: {why}")]
            }
        };
        for l in &lines {
            info!("{l}");
        }
        if let Ok(mut l) = std::fs::OpenOptions::new()
            .append(true)
            .open(paths.build_log())
        {
            for line in &lines {
                let _ = writeln!(l, "{line}");
            }
        }
        res.output.extend(lines);
        let extra = res.output.len().saturating_sub(10);
        res.output.drain(..extra);
    }
}

/// One line for the log and the result: what was built, what substituted,
/// and where the bytes came from.
pub fn realised_line(r: &crate::job::Realised, s: Option<&crate::substituter::JobStats>) -> String {
    use crate::job::mib;
    let mut line = format!(
        "airlock: {} derivations built, {} paths substituted",
        r.built, r.substituted
    );
    if let Some(s) = s {
        line.push_str(&format!(
            " ({:.1} MiB from the builder's cache, {:.1} MiB of it downloaded from upstream for this job",
            mib(s.bytes_served),
            mib(s.bytes_upstream)
        ));
        if s.narinfos_refused > 0 {
            line.push_str(&format!("; {} narinfos refused", s.narinfos_refused));
        }
        line.push(')');
    }
    line
}

/// The longest a review report may take to build and write.
pub const REPORT_TIME_LIMIT: Duration = Duration::from_secs(120);

/// Run `f` on a blocking thread; give up waiting after `limit` (the thread
/// is not stopped: `f` must be bounded itself, and check a flag before it
/// does anything visible late).
pub async fn blocking_with_limit<T: Send + 'static>(
    limit: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    match tokio::time::timeout(limit, tokio::task::spawn_blocking(f)).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("it failed: {e}")),
        Err(_) => Err(format!("not done within {limit:?}")),
    }
}

#[cfg(test)]
mod tests {
    fn record(review_base: Option<&str>) -> JobRecord {
        let mut job: crate::ofborg::BuildJob = serde_json::from_str(r#"{"repo":{"owner":"o","name":"n","full_name":"o/n","clone_url":"/x"},"pr":{"target_branch":"master","number":1,"head_sha":"e9872fa30caac57c69bfac8667e6c21254603df1"},"subset":null,"attrs":["a"],"request_id":"r","logs":null,"statusreport":null}"#).unwrap();
        if let Some(b) = review_base {
            job.attrs = vec![];
            job.airlock_review = Some(crate::ofborg::ReviewRequest {
                base: (!b.is_empty()).then(|| b.to_owned()),
                ..Default::default()
            });
        }
        JobRecord::new(crate::job::Source::Local, job)
    }

    /// What the checkout step records, then what the quarantine manifest
    /// (and so the release rule) is told.
    fn origin_after_checkout(
        base_for: &std::collections::BTreeMap<String, String>,
        mut rec: JobRecord,
    ) -> String {
        let cfg = crate::config::ReviewConfig {
            base_for: base_for.clone(),
            ..Default::default()
        };
        let onto = crate::review::merge_onto(&rec.job, &cfg).to_owned();
        rec.base_commit = Some("a".repeat(40));
        rec.merged_commit = Some("b".repeat(40));
        rec.merged_onto = Some(onto);
        origin(&rec).unwrap().base_branch
    }

    /// Issue 28: a review merged onto its review base recorded the PR's
    /// target branch as the base in its quarantine manifest.
    #[test]
    fn the_origin_names_the_branch_the_head_was_merged_onto() {
        let none = Default::default();
        assert_eq!(origin_after_checkout(&none, record(None)), "master");
        assert_eq!(
            origin_after_checkout(&none, record(Some("staging-next"))),
            "staging-next"
        );
        let base_for = [("master".to_owned(), "staging".to_owned())].into();
        assert_eq!(
            origin_after_checkout(&base_for, record(Some(""))),
            "staging"
        );
        assert_eq!(
            origin_after_checkout(&base_for, record(None)),
            "master",
            "base_for is for reviews only"
        );
        // A record written before `merged_onto` existed: the target branch.
        let mut old = record(None);
        old.base_commit = Some("a".repeat(40));
        old.merged_commit = Some("b".repeat(40));
        assert_eq!(origin(&old).unwrap().base_branch, "master");
    }

    #[test]
    fn how_the_build_vm_ended_decides_what_comes_next() {
        let res = || result(BuildStatus::Success, vec!["line".into()]);
        let ended = |s: Step<JobResult>| s.map_err(|JobEnd(r)| r.status);
        assert_eq!(
            ended(after_build_vm(VmExit::TimedOut, res(), 60)).unwrap_err(),
            BuildStatus::TimedOut
        );
        assert_eq!(
            ended(after_build_vm(
                VmExit::Killed("cancelled".into()),
                res(),
                60
            ))
            .unwrap_err(),
            BuildStatus::UnexpectedError {
                err: "cancelled".into()
            }
        );
        for ok in [true, false] {
            let exit = VmExit::PoweredOff {
                ok,
                detail: String::new(),
            };
            let r = after_build_vm(exit, res(), 60).unwrap();
            assert_eq!(r.output, ["line"], "verification goes on (ok = {ok})");
        }
    }

    #[test]
    fn a_fetch_phase_hash_mismatch_is_what_a_failed_job_reports() {
        let with = |fetch: Option<BuildStatus>, build: BuildStatus| {
            fetch_status_wins(fetch.as_ref(), result(build, vec![])).status
        };
        use BuildStatus::*;
        assert_eq!(with(Some(HashMismatch), Failure), HashMismatch);
        assert_eq!(
            with(Some(HashMismatch), UnexpectedError { err: "x".into() }),
            HashMismatch
        );
        assert_eq!(with(Some(HashMismatch), Success), Success);
        assert_eq!(with(Some(HashMismatch), TimedOut), TimedOut);
        assert_eq!(with(Some(Success), Failure), Failure);
        assert_eq!(with(None, Failure), Failure);
    }

    #[tokio::test]
    async fn blocking_work_has_a_time_limit() {
        let limit = std::time::Duration::from_millis(100);
        assert_eq!(super::blocking_with_limit(limit, || 7).await, Ok(7));
        let t0 = std::time::Instant::now();
        let e = super::blocking_with_limit(limit, || {
            std::thread::sleep(std::time::Duration::from_millis(600))
        })
        .await
        .unwrap_err();
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(1),
            "waited for the work"
        );
        assert_eq!(e, "not done within 100ms");
    }

    use super::*;
}
