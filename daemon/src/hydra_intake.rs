//! Hydra's queue-runner as an intake (issue 31, docs/hydra.md): each step
//! the session hands over becomes a job of the scheduler (sharing
//! `max_jobs` with the other intakes). Before the job is queued its inputs
//! are fetched from the runner and checked on the host (NAR structure,
//! SHA-256, size); while it runs its log streams to `BuildLog`; when it is
//! done its verified outputs are uploaded (`BuildResult`) and the step
//! completed (`CompleteBuild`), or failed with the state the runner knows.
//! An abort cancels the job and reports nothing.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use airlock_nix_formats::serve;
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn, Instrument};

use crate::config::Config;
use crate::hydra::client::Client;
use crate::hydra::frame;
use crate::hydra::proto::{
    self, add_to_store_request, AddToStoreRequest, BuildResultInfo, StepStatus,
};
use crate::hydra::session::Steps;
use crate::hydra::step::{self, Outcome};
use crate::job::{HydraOrigin, JobRecord, Source};
use crate::ofborg::{BuildJob, BuildStatus, Pr, Repo};
use crate::runner::LogSink;
use crate::scheduler::Scheduler;

/// A step's log stream to the runner: one zstd frame, sent in chunks as
/// the lines come.
struct LogStream {
    enc: Option<zstd::stream::write::Encoder<'static, Vec<u8>>>,
    tx: Option<mpsc::UnboundedSender<proto::LogChunk>>,
    drv: Option<proto::StorePath>,
    bytes: u64,
    max: u64,
    pending: usize,
    over: bool,
}

impl LogStream {
    fn new(drv: &str, max: u64) -> (LogStream, mpsc::UnboundedReceiver<proto::LogChunk>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let enc = zstd::stream::write::Encoder::new(Vec::new(), 3).ok();
        (
            LogStream {
                enc,
                tx: Some(tx),
                drv: Some(proto::StorePath::new(drv)),
                bytes: 0,
                max,
                pending: 0,
                over: false,
            },
            rx,
        )
    }

    /// One log line; `true` exactly once: when this line takes the log
    /// over the step's limit (what follows is dropped).
    fn line(&mut self, text: &str) -> bool {
        if self.over {
            return false;
        }
        self.bytes += text.len() as u64 + 1;
        if self.max > 0 && self.bytes > self.max {
            self.over = true;
            return true;
        }
        if let Some(e) = self.enc.as_mut() {
            let _ = e.write_all(text.as_bytes());
            let _ = e.write_all(b"\n");
        }
        self.pending += text.len() + 1;
        false
    }

    /// Send what the encoder has so far (a block of the same frame).
    fn flush(&mut self) {
        if self.pending == 0 {
            return;
        }
        self.pending = 0;
        let Some(e) = self.enc.as_mut() else { return };
        let _ = e.flush();
        let data = std::mem::take(e.get_mut());
        self.send(data);
    }

    fn send(&mut self, data: Vec<u8>) {
        if data.is_empty() {
            return;
        }
        if let Some(tx) = &self.tx {
            for c in data.chunks(frame::CHUNK) {
                let _ = tx.send(proto::LogChunk {
                    drv: self.drv.take(),
                    data: c.to_vec(),
                });
            }
        }
    }

    /// End the frame and the stream.
    fn finish(&mut self) {
        if let Some(e) = self.enc.take() {
            if let Ok(rest) = e.finish() {
                self.send(rest);
            }
        }
        self.tx = None;
    }
}

struct Running {
    job_id: Option<String>,
    aborted: bool,
    log: Arc<Mutex<LogStream>>,
    done: Option<oneshot::Sender<JobRecord>>,
}

pub struct HydraIntake {
    cfg: Arc<Config>,
    sched: OnceLock<Arc<Scheduler>>,
    /// By build id.
    running: Mutex<HashMap<String, Running>>,
    /// Machine ids of the tunnels that are up.
    live: Mutex<std::collections::HashSet<String>>,
}

impl HydraIntake {
    pub fn new(cfg: Arc<Config>) -> Arc<HydraIntake> {
        // No step outlives airlockd (its tunnel is gone, the runner retries
        // it): what a previous run left is removed.
        let _ = std::fs::remove_dir_all(cfg.state_dir.join("hydra"));
        if let Ok(rd) = std::fs::read_dir(cfg.state_dir.join("jobs")) {
            for e in rd.flatten() {
                if e.path().join("step").exists() && !e.path().join("job.json").exists() {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        Arc::new(HydraIntake {
            cfg,
            sched: OnceLock::new(),
            running: Mutex::new(HashMap::new()),
            live: Mutex::new(Default::default()),
        })
    }

    /// Steps taken and not yet reported (or given up).
    pub fn steps(&self) -> usize {
        self.running.lock().expect("lock").len()
    }

    /// The scheduler exists after the runner (which needs the sink).
    pub fn set_scheduler(&self, s: Arc<Scheduler>) {
        let _ = self.sched.set(s);
    }

    fn by_job<T>(&self, rec: &JobRecord, f: impl FnOnce(&mut Running) -> T) -> Option<T> {
        let h = rec.hydra.as_ref()?;
        let mut r = self.running.lock().expect("lock");
        r.get_mut(&h.build_id).map(f)
    }

    async fn run_step(self: Arc<Self>, b: proto::BuildMessage, machine_id: String, client: Client) {
        let build_id = b.build_id.clone();
        let t0 = Instant::now();
        let outcome = self.step_outcome(&b, &machine_id, &client, t0).await;
        let aborted = self
            .running
            .lock()
            .expect("lock")
            .remove(&build_id)
            .is_none_or(|r| r.aborted);
        let Some((outcome, infos, times)) = outcome else {
            return;
        };
        if aborted {
            info!("step aborted by the queue-runner; nothing reported");
            return;
        }
        let drv = b.drv.as_ref().map(|d| d.path.clone()).unwrap_or_default();
        let m = BuildResultInfo {
            build_id: build_id.clone(),
            machine_id: machine_id.clone(),
            import_time_ms: times.0,
            build_time_ms: times.1,
            upload_time_ms: times.2,
            result_state: outcome.state() as i32,
            output_infos: infos,
            error_msg: outcome.message(&drv),
        };
        let total_ms = ms(t0.elapsed());
        // Retried with backoff (a proxy may recycle the connection), as
        // the runner's own builder does; given up when the tunnel the step
        // came on is gone (the runner then retries the step itself).
        let mut wait = Duration::from_secs(3);
        for attempt in 1.. {
            match client.complete_build(m.clone()).await {
                Ok(_) => {
                    info!(
                        state = outcome.state().name(),
                        total_ms,
                        nix_build_ms = times.3,
                        overhead_ms = total_ms.saturating_sub(times.3),
                        "step completed"
                    );
                    return;
                }
                Err(e) if attempt < 5 && self.live.lock().expect("lock").contains(&machine_id) => {
                    warn!(error = %crate::error::chain(&e), retry_in = ?wait, "CompleteBuild failed; trying again");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(90));
                }
                Err(e) => {
                    warn!(error = %crate::error::chain(&e), "CompleteBuild failed; given up (the runner retries the step when its tunnel ends)");
                    return;
                }
            }
        }
    }

    /// Everything up to `CompleteBuild`; `None` when nothing is to be
    /// reported (the runner aborted the step).
    async fn step_outcome(
        &self,
        b: &proto::BuildMessage,
        machine_id: &str,
        client: &Client,
        t0: Instant,
    ) -> Option<Report> {
        let resolved = match step::resolve(b, &self.cfg.hydra.store_dir) {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "step refused");
                return Some(report(Outcome::Failed(e.to_string()), 0));
            }
        };
        let Some(sched) = self.sched.get().cloned() else {
            return Some(report(Outcome::Preparing("airlockd is starting".into()), 0));
        };
        if sched.is_draining() {
            // Held jobs would hold the runner's step too: it goes elsewhere.
            return Some(report(
                Outcome::Preparing("airlockd is draining; not taking steps".into()),
                0,
            ));
        }
        let mut rec = record(b, machine_id, &resolved);
        let span = rec.span();
        async {
            let paths = sched.runner.paths(&rec.id);
            let ctx = Ctx {
                b,
                machine_id,
                client,
            };
            let import_ms = match self.prepare(&ctx, &resolved, &mut rec, &paths).await {
                Ok(()) => ms(t0.elapsed()),
                Err(o) => {
                    let _ = std::fs::remove_dir_all(paths.step_dir());
                    return Some(report(o, ms(t0.elapsed())));
                }
            };
            let t_build = Instant::now();
            let built = self.build(&ctx, &sched, &rec).await;
            let (done, over) = match built {
                Some(Ok(d)) => d,
                // Not queued (refused, or aborted first): its inputs go.
                Some(Err(o)) => {
                    let _ = std::fs::remove_dir_all(paths.step_dir());
                    return Some(report(o, import_ms));
                }
                None => {
                    let _ = std::fs::remove_dir_all(paths.step_dir());
                    return None;
                }
            };
            let build_ms = ms(t_build.elapsed());
            let t_up = Instant::now();
            let (outcome, infos) = self.deliver(&ctx, &done, over, &resolved).await;
            let nix_ms = done
                .result
                .as_ref()
                .and_then(|r| r.nix_step.as_ref())
                .map_or(0, |n| n.build_ms);
            Some((
                outcome,
                infos,
                (import_ms, build_ms, ms(t_up.elapsed()), nix_ms),
            ))
        }
        .instrument(span)
        .await
    }

    /// Fetch and check the inputs, write the step's material for the VM.
    async fn prepare(
        &self,
        ctx: &Ctx<'_>,
        resolved: &step::Resolved,
        rec: &mut JobRecord,
        paths: &crate::job::JobPaths,
    ) -> Result<(), Outcome> {
        std::fs::create_dir_all(paths.step_dir().join("inputs"))
            .map_err(|e| Outcome::Preparing(format!("cannot make the step directory: {e}")))?;
        ctx.update(StepStatus::SeningInputs).await;
        let inputs = fetch_inputs(ctx.client, resolved, &paths.step_dir(), &self.cfg)
            .await
            .map_err(|why| {
                warn!(%why, "step inputs not fetched");
                Outcome::Import(why)
            })?;
        if let Some(h) = rec.hydra.as_mut() {
            h.inputs = inputs.iter().map(|i| i.path.clone()).collect();
        }
        let mut req = Vec::new();
        serve::write_build_derivation(
            &mut req,
            serve::VERSION,
            &resolved.drv_path,
            &resolved.drv,
            &resolved.options,
        )
        .map_err(|e| e.to_string())
        .and_then(|_| {
            std::fs::write(paths.step_dir().join("request.bin"), &req).map_err(|e| e.to_string())
        })
        .and_then(|_| {
            std::fs::write(
                paths.step_dir().join("inputs.json"),
                serde_json::to_vec(&inputs).expect("serialises"),
            )
            .map_err(|e| e.to_string())
        })
        .map_err(|e| Outcome::Preparing(format!("cannot write the step: {e}")))
    }

    /// Queue the job with its log stream open; wait for its end. `None`:
    /// aborted (nothing to report); `Err`: it could not be queued.
    async fn build(
        &self,
        ctx: &Ctx<'_>,
        sched: &Arc<Scheduler>,
        rec: &JobRecord,
    ) -> Option<Result<(JobRecord, bool), Outcome>> {
        let drv = rec
            .hydra
            .as_ref()
            .map(|h| h.drv.clone())
            .unwrap_or_default();
        let (log, rx) = LogStream::new(&drv, ctx.b.max_log_size);
        let log = Arc::new(Mutex::new(log));
        let c2 = ctx.client.clone();
        let log_call = tokio::spawn(async move {
            c2.client_stream(
                "BuildLog",
                tokio_stream::wrappers::UnboundedReceiverStream::new(rx),
            )
            .await
        });
        let flusher = {
            let log = log.clone();
            AbortOnDrop(tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    log.lock().expect("lock").flush();
                }
            }))
        };
        ctx.update(StepStatus::Building).await;
        let (done_tx, done_rx) = oneshot::channel();
        {
            // Registered and queued under one lock: an abort either sees
            // the job to cancel or finds the step gone before it is queued.
            let mut r = self.running.lock().expect("lock");
            let run = r.get_mut(&ctx.b.build_id).filter(|run| !run.aborted)?;
            run.job_id = Some(rec.id.clone());
            run.log = log.clone();
            run.done = Some(done_tx);
            if let Err(e) = sched.enqueue(rec.clone()) {
                return Some(Err(Outcome::Preparing(format!(
                    "cannot queue the step: {e}"
                ))));
            }
        }
        let done = self.wait_done(done_rx, sched, &rec.id).await;
        drop(flusher);
        let over = {
            let mut l = log.lock().expect("lock");
            l.flush();
            l.finish();
            l.over
        };
        if let Ok(Err(e)) = log_call.await {
            warn!(error = %crate::error::chain(&e), "BuildLog failed");
        }
        let done = done?;
        let aborted = self
            .running
            .lock()
            .expect("lock")
            .get(&ctx.b.build_id)
            .is_none_or(|r| r.aborted);
        if aborted {
            drop_outputs(&done);
            return None;
        }
        Some(Ok((done, over)))
    }

    /// The job's end as the sink reports it; should that never come (a
    /// runner that died), the record on disk once it is done.
    async fn wait_done(
        &self,
        mut rx: oneshot::Receiver<JobRecord>,
        sched: &Arc<Scheduler>,
        id: &str,
    ) -> Option<JobRecord> {
        loop {
            tokio::select! {
                r = &mut rx => return r.ok(),
                _ = tokio::time::sleep(Duration::from_secs(30)) => {
                    match sched.runner.store.load(id) {
                        Ok(rec) if rec.state.is_terminal() => return Some(rec),
                        Ok(_) => {}
                        Err(e) => {
                            warn!(error = %e, "the step's job record is gone");
                            return None;
                        }
                    }
                }
            }
        }
    }

    /// The outcome, and for a built step its outputs uploaded; the step's
    /// verified outputs are dropped here (the runner keeps them now).
    async fn deliver(
        &self,
        ctx: &Ctx<'_>,
        done: &JobRecord,
        over: bool,
        resolved: &step::Resolved,
    ) -> (Outcome, HashMap<String, proto::OutputInfo>) {
        let mut outcome = outcome_of(done, over);
        let mut infos = HashMap::new();
        if outcome == Outcome::Built {
            ctx.update(StepStatus::ReceivingOutputs).await;
            match upload(
                ctx.client,
                done,
                resolved,
                ctx.b.max_output_size,
                &self.cfg.hydra.store_dir,
            )
            .await
            {
                Ok(i) => infos = i,
                Err(o) => outcome = o,
            }
            ctx.update(StepStatus::PostProcessing).await;
        }
        drop_outputs(done);
        (outcome, infos)
    }
}

/// A step's verified outputs, once uploaded or of no use.
fn drop_outputs(done: &JobRecord) {
    if let Some(dir) = done.result.as_ref().and_then(|r| r.quarantine.as_ref()) {
        let _ = std::fs::remove_dir_all(dir);
        if let Some(parent) = dir.parent() {
            let _ = std::fs::remove_dir(parent);
        }
    }
}

/// What a step reports: its outcome, its outputs, the import, build
/// and upload times in ms, and Nix's own build time in the guest.
type Report = (
    Outcome,
    HashMap<String, proto::OutputInfo>,
    (u64, u64, u64, u64),
);

fn report(o: Outcome, import_ms: u64) -> Report {
    (o, HashMap::new(), (import_ms, 0, 0, 0))
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One step's message, tunnel and RPCs.
struct Ctx<'a> {
    b: &'a proto::BuildMessage,
    machine_id: &'a str,
    client: &'a Client,
}

impl Ctx<'_> {
    /// The runner's UI status of the step; an error costs the step nothing.
    async fn update(&self, s: StepStatus) {
        let m = proto::StepUpdate {
            build_id: self.b.build_id.clone(),
            machine_id: self.machine_id.to_owned(),
            step_status: s as i32,
        };
        if let Err(e) = self.client.step_update(m).await {
            warn!(error = %crate::error::chain(&e), "BuildStepUpdate failed");
        }
    }
}

/// The job record of a step.
fn record(b: &proto::BuildMessage, machine_id: &str, resolved: &step::Resolved) -> JobRecord {
    let mut rec = JobRecord::new(Source::Hydra, stand_in(b));
    rec.hydra = Some(HydraOrigin {
        build_id: b.build_id.clone(),
        machine_id: machine_id.to_owned(),
        drv: b.drv.as_ref().map(|d| d.path.clone()).unwrap_or_default(),
        fixed_output: resolved.fixed_output,
        outputs: resolved
            .drv
            .outputs
            .iter()
            .map(|o| o.path.clone())
            .filter(|p| !p.is_empty())
            .collect(),
        inputs: vec![],
    });
    rec
}

/// A job record's `job` for a step: it names the runner's step, not a PR.
fn stand_in(b: &proto::BuildMessage) -> BuildJob {
    let drv = b.drv.as_ref().map(|d| d.path.clone()).unwrap_or_default();
    BuildJob {
        repo: Repo {
            owner: "hydra".into(),
            name: "queue-runner".into(),
            full_name: "hydra/queue-runner".into(),
            clone_url: String::new(),
        },
        pr: Pr {
            target_branch: None,
            number: 0,
            head_sha: crate::runner::step::step_commit(&b.build_id),
        },
        subset: None,
        attrs: vec![drv],
        request_id: b.build_id.clone(),
        logs: None,
        statusreport: None,
        airlock_review: None,
    }
}

/// How the job ended, as the runner is told.
fn outcome_of(rec: &JobRecord, log_over: bool) -> Outcome {
    if log_over {
        return Outcome::LogLimit;
    }
    let Some(res) = &rec.result else {
        return Outcome::Preparing("the job has no result".into());
    };
    if let Some(n) = &res.nix_step {
        let r = serve::BuildResult {
            status: serve::Status::from_code(n.status),
            error: n.error.clone(),
            times_built: 0,
            start_time: 0,
            stop_time: 0,
            built_outputs: vec![],
        };
        let o = Outcome::from_nix(&r);
        if o != Outcome::Built {
            return o;
        }
    }
    match &res.status {
        BuildStatus::Success if res.quarantine.is_some() => Outcome::Built,
        BuildStatus::Success => Outcome::Upload("the VM exported no outputs".into()),
        // Nix's own timeouts come as its result above; this is airlock's
        // limit on the whole VM (limits.job_timeout_secs), not the step's:
        // another builder may have a longer one.
        BuildStatus::TimedOut => {
            Outcome::Preparing("the VM ran into this builder's limits.job_timeout_secs".into())
        }
        BuildStatus::Failure => Outcome::Failed("the builder failed".into()),
        BuildStatus::UnexpectedError { err } if err.contains("export rejected") => {
            Outcome::Upload(err.clone())
        }
        BuildStatus::UnexpectedError { err } if err == crate::control::CANCELLED => {
            Outcome::Preparing(err.clone())
        }
        BuildStatus::UnexpectedError { err } => Outcome::Preparing(err.clone()),
        other => Outcome::Failed(format!("{other:?}")),
    }
}

/// Fetch the step's input closure from the runner (`FetchRequisites`,
/// then `FetchPaths` in batches), each NAR checked (structure, SHA-256,
/// size) and written to `dir/inputs/<base>.nar`; their metadata for the
/// guest, dependencies first.
async fn fetch_inputs(
    client: &Client,
    r: &step::Resolved,
    dir: &Path,
    cfg: &Config,
) -> Result<Vec<airlock_wire::GuestInput>, String> {
    // Asked even for a step without inputs, as the runner's own builder
    // does (the recordings show it).
    let store = &cfg.hydra.store_dir;
    let req = proto::StorePaths {
        paths: r
            .inputs
            .iter()
            .map(|p| proto::StorePath::new(p.clone()))
            .collect(),
    };
    let closure = client
        .fetch_requisites(req)
        .await
        .map_err(|e| crate::error::chain(&e))?
        .requisites;
    let mut out = Vec::new();
    // The inputs must fit the guest's /nix disk anyway.
    let max_total = cfg.vm.nix_disk_mib << 20;
    let mut total = 0u64;
    for batch in closure.chunks(8) {
        let mut s = client
            .fetch_paths(proto::StorePaths {
                paths: batch.to_vec(),
            })
            .await
            .map_err(|e| crate::error::chain(&e))?;
        let mut header = None;
        let mut chunks = Vec::new();
        let mut compressed = 0u64;
        while let Some(m) = s.message().await.map_err(|e| format!("FetchPaths: {e}"))? {
            match (m.content, &header) {
                (Some(add_to_store_request::Content::Header(h)), None) => header = Some(h),
                (Some(add_to_store_request::Content::NarChunk(c)), Some(_)) => {
                    compressed += c.len() as u64;
                    if compressed > max_total {
                        return Err(format!("FetchPaths: more than {max_total} bytes"));
                    }
                    chunks.push(c);
                }
                _ => return Err("FetchPaths: not a header followed by chunks".into()),
            }
        }
        let h = header.ok_or("FetchPaths: no header")?;
        // Decompressing, hashing and parsing NARs is CPU work: off the
        // threads that keep the tunnel alive.
        let (dir, store, left, max_nar) = (
            dir.to_owned(),
            store.clone(),
            max_total.saturating_sub(total),
            cfg.limits.max_nar_bytes,
        );
        let (inputs, bytes) = tokio::task::spawn_blocking(move || {
            check_batch(&h, &chunks, &dir, &store, left, max_nar)
        })
        .await
        .map_err(|e| format!("checking inputs crashed: {e}"))??;
        total += bytes;
        out.extend(inputs);
    }
    info!(
        paths = out.len(),
        bytes = total,
        "step inputs fetched and checked"
    );
    Ok(out)
}

/// One `FetchPaths` answer: decompressed (at most `left` bytes), split by
/// the header's sizes, each NAR checked (SHA-256, size, structure) and
/// written to `dir/inputs/<base>.nar`; its metadata with full paths.
fn check_batch(
    h: &proto::AddToStoreHeader,
    chunks: &[Vec<u8>],
    dir: &Path,
    store: &str,
    left: u64,
    max_nar: u64,
) -> Result<(Vec<airlock_wire::GuestInput>, u64), String> {
    let full = |p: &str| -> Result<String, String> {
        Ok(format!(
            "{store}/{}",
            step::base_name(p).map_err(|e| e.to_string())?
        ))
    };
    let nars = frame::decompress(chunks, left).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for ((base, nar), vpi) in frame::split_nars(&h.path_infos, &nars)
        .map_err(|e| e.to_string())?
        .into_iter()
        .zip(&h.path_infos)
    {
        let path = full(&base)?;
        airlock_nix_formats::nar::validate(
            nar,
            nar.len() as u64,
            max_nar,
            None::<std::io::Sink>,
            airlock_nix_formats::nar::RefScanner::new(std::iter::empty()),
        )
        .map_err(|e| format!("input {base}: not a valid NAR: {e}"))?;
        std::fs::write(dir.join("inputs").join(format!("{base}.nar")), nar)
            .map_err(|e| format!("input {base}: {e}"))?;
        let info = vpi.info.clone().unwrap_or_default();
        let references = info
            .references
            .iter()
            .map(|r| full(&r.path))
            .collect::<Result<Vec<_>, _>>()?;
        let deriver = match &info.deriver {
            Some(d) if !d.path.is_empty() => Some(full(&d.path)?),
            _ => None,
        };
        out.push(airlock_wire::GuestInput {
            path,
            deriver,
            references,
        });
    }
    Ok((out, nars.len() as u64))
}

/// Upload the step's verified outputs the runner lacks (`HasPath`, then
/// one `BuildResult` stream), each within `max_output_size`; their
/// `OutputInfo`s by output name.
async fn upload(
    client: &Client,
    rec: &JobRecord,
    r: &step::Resolved,
    max_output_size: u64,
    store: &str,
) -> Result<HashMap<String, proto::OutputInfo>, Outcome> {
    let res = rec
        .result
        .as_ref()
        .ok_or(Outcome::Upload("no result".into()))?;
    let dir = res
        .quarantine
        .clone()
        .ok_or(Outcome::Upload("no outputs".into()))?;
    let manifest: Vec<crate::quarantine::VerifiedPath> = std::fs::read(dir.join("manifest.json"))
        .map_err(|e| e.to_string())
        .and_then(|b| {
            serde_json::from_slice::<crate::quarantine::JobManifest>(&b).map_err(|e| e.to_string())
        })
        .map_err(|e| Outcome::Upload(format!("the verified outputs: {e}")))?
        .verified;
    let base = |p: &str| p.strip_prefix(&format!("{store}/")).unwrap_or(p).to_owned();
    let mut infos = HashMap::new();
    let mut header = Vec::new();
    let mut nars = Vec::new();
    for (out, v) in dependency_order(&r.drv.outputs, &manifest)? {
        if max_output_size > 0 && v.nar_size > max_output_size {
            return Err(Outcome::OutputTooLarge(format!(
                "output {} is {} bytes, more than the limit of {max_output_size}",
                out.name, v.nar_size
            )));
        }
        let digest: [u8; 32] =
            airlock_nix_formats::nix32::decode(v.nar_hash.trim_start_matches("sha256:"), 32)
                .and_then(|d| d.try_into().ok())
                .ok_or_else(|| {
                    Outcome::Upload(format!("{}: bad NAR hash {}", v.path, v.nar_hash))
                })?;
        infos.insert(
            out.name.clone(),
            step::output_info(&base(&v.path), digest, v.nar_size, v.nar_size),
        );
        let has = client
            .has_path(proto::StorePath::new(base(&v.path)))
            .await
            .map(|h| h.has_path)
            .unwrap_or(false);
        if has {
            continue;
        }
        let nar = std::fs::read(dir.join(&v.url))
            .map_err(|e| Outcome::Upload(format!("{}: {e}", v.url)))?;
        header.push(path_info(v, digest, store));
        nars.extend(nar);
    }
    if !header.is_empty() {
        send_nars(client, header, &nars).await?;
    }
    info!(
        outputs = infos.len(),
        bytes = nars.len(),
        "step outputs uploaded"
    );
    Ok(infos)
}

/// The step's outputs with what the host verified of each, an output after
/// the outputs it refers to (the runner imports them in stream order, and a
/// path's references must be valid first).
fn dependency_order<'a>(
    outputs: &'a [airlock_nix_formats::serve::Output],
    verified: &'a [crate::quarantine::VerifiedPath],
) -> Result<
    Vec<(
        &'a airlock_nix_formats::serve::Output,
        &'a crate::quarantine::VerifiedPath,
    )>,
    Outcome,
> {
    let mut left = Vec::new();
    for out in outputs {
        let v = verified
            .iter()
            .find(|v| v.path == out.path)
            .ok_or_else(|| Outcome::Upload(format!("output {} was not built", out.name)))?;
        left.push((out, v));
    }
    let mut ordered: Vec<(&serve::Output, &crate::quarantine::VerifiedPath)> = Vec::new();
    while !left.is_empty() {
        let ready = left.iter().position(|(_, v)| {
            v.references.iter().all(|r| {
                r == &v.path
                    || ordered.iter().any(|(_, o)| &o.path == r)
                    || !left.iter().any(|(_, o)| &o.path == r)
            })
        });
        // A cycle between outputs cannot be (Nix refuses them): the rest
        // goes in the step's order.
        let i = ready.unwrap_or(0);
        ordered.push(left.remove(i));
    }
    Ok(ordered)
}

/// A verified path as the runner's `ValidPathInfo` (base names).
fn path_info(
    v: &crate::quarantine::VerifiedPath,
    digest: [u8; 32],
    store: &str,
) -> proto::ValidPathInfo {
    let base = |p: &str| p.strip_prefix(&format!("{store}/")).unwrap_or(p).to_owned();
    proto::ValidPathInfo {
        path: Some(proto::StorePath::new(base(&v.path))),
        info: Some(proto::UnkeyedValidPathInfo {
            deriver: v.deriver.as_deref().map(|d| proto::StorePath::new(base(d))),
            nar_hash: Some(proto::Hash::sha256(digest)),
            references: v
                .references
                .iter()
                .map(|p| proto::StorePath::new(base(p)))
                .collect(),
            registration_time: None,
            nar_size: v.nar_size,
            ultimate: false,
            signatures: vec![],
            ca: None,
            store_dir: store.to_owned(),
        }),
    }
}

/// One `BuildResult` stream: the header, then the NARs as one zstd frame.
async fn send_nars(
    client: &Client,
    header: Vec<proto::ValidPathInfo>,
    nars: &[u8],
) -> Result<(), Outcome> {
    let mut msgs = vec![AddToStoreRequest {
        content: Some(add_to_store_request::Content::Header(
            proto::AddToStoreHeader { path_infos: header },
        )),
    }];
    let data = nars.to_vec();
    let chunks = tokio::task::spawn_blocking(move || frame::compress_chunks(&data))
        .await
        .map_err(|e| Outcome::Upload(format!("compressing crashed: {e}")))?
        .map_err(|e| Outcome::Upload(e.to_string()))?;
    for c in chunks {
        msgs.push(AddToStoreRequest {
            content: Some(add_to_store_request::Content::NarChunk(c)),
        });
    }
    client
        .client_stream("BuildResult", tokio_stream::iter(msgs))
        .await
        .map(|_| ())
        .map_err(|e| Outcome::Upload(format!("BuildResult: {}", crate::error::chain(&e))))
}

/// The session hands steps to the intake through this (the step tasks
/// hold the intake).
impl Steps for Arc<HydraIntake> {
    fn start(&self, step: proto::BuildMessage, machine_id: &str, client: &Client) {
        let me = self.clone();
        self.running.lock().expect("lock").insert(
            step.build_id.clone(),
            Running {
                job_id: None,
                aborted: false,
                log: Arc::new(Mutex::new(LogStream::new("", 0).0)),
                done: None,
            },
        );
        tokio::spawn(me.run_step(step, machine_id.to_owned(), client.clone()));
    }

    fn abort(&self, build_id: &str) {
        let job = {
            let mut r = self.running.lock().expect("lock");
            let Some(run) = r.get_mut(build_id) else {
                return;
            };
            run.aborted = true;
            run.job_id.clone()
        };
        if let (Some(id), Some(s)) = (job, self.sched.get()) {
            if let Err(e) = s.cancel(&id) {
                warn!(job_id = %id, error = %e, "cannot cancel the aborted step's job");
            }
        }
    }

    fn joined(&self, machine_id: &str) {
        self.live
            .lock()
            .expect("lock")
            .insert(machine_id.to_owned());
    }

    fn abort_all(&self) {
        self.live.lock().expect("lock").clear();
        let ids: Vec<String> = self.running.lock().expect("lock").keys().cloned().collect();
        for id in ids {
            self.abort(&id);
        }
    }

    fn running(&self) -> usize {
        self.running.lock().expect("lock").len()
    }
}

/// The log sink for steps: lines to the step's `BuildLog` stream; the
/// job's end to the step's task.
pub struct HydraSink(pub Arc<HydraIntake>);

impl LogSink for HydraSink {
    fn line(&self, rec: &JobRecord, _n: u64, text: &str) {
        if rec.source != Source::Hydra {
            return;
        }
        let over = self
            .0
            .by_job(rec, |r| r.log.lock().expect("lock").line(text));
        if over == Some(true) {
            // Past max_log_size: the job stops, the step is a log limit failure.
            if let Some(s) = self.0.sched.get() {
                let _ = s.cancel(&rec.id);
            }
        }
    }

    fn finished(&self, rec: &JobRecord) {
        if rec.source != Source::Hydra {
            return;
        }
        if let Some(Some(tx)) = self.0.by_job(rec, |r| r.done.take()) {
            let _ = tx.send(rec.clone());
        }
    }
}

/// Several sinks, each taking the jobs of its own intake.
pub struct Sinks(pub Vec<Arc<dyn LogSink>>);

impl LogSink for Sinks {
    fn queued(&self, rec: &JobRecord) {
        for s in &self.0 {
            s.queued(rec);
        }
    }
    fn started(&self, rec: &JobRecord, attempted: &[String], skipped: &[String]) {
        for s in &self.0 {
            s.started(rec, attempted, skipped);
        }
    }
    fn line(&self, rec: &JobRecord, n: u64, text: &str) {
        for s in &self.0 {
            s.line(rec, n, text);
        }
    }
    fn finished(&self, rec: &JobRecord) {
        for s in &self.0 {
            s.finished(rec);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quarantine::VerifiedPath;

    fn out(name: &str) -> serve::Output {
        serve::Output {
            name: name.into(),
            path: format!("/nix/store/ihml9cgha2ncb1jfpf857yd6nls4n23b-x-{name}"),
            hash_algo: String::new(),
            hash: String::new(),
        }
    }

    fn verified(o: &serve::Output, refs: &[&serve::Output]) -> VerifiedPath {
        VerifiedPath {
            path: o.path.clone(),
            nar_hash: String::new(),
            nar_size: 1,
            references: refs.iter().map(|r| r.path.clone()).collect(),
            deriver: None,
            ca: None,
            url: String::new(),
        }
    }

    #[test]
    fn outputs_go_up_after_what_they_refer_to() {
        // bin -> out -> lib (and self-references), listed by name.
        let (bin, lib, o) = (out("bin"), out("lib"), out("out"));
        let outputs = vec![bin.clone(), lib.clone(), o.clone()];
        let v = vec![
            verified(&bin, &[&bin, &o]),
            verified(&lib, &[&lib]),
            verified(&o, &[&lib, &o]),
        ];
        let order: Vec<&str> = dependency_order(&outputs, &v)
            .unwrap()
            .iter()
            .map(|(o, _)| o.name.as_str())
            .collect();
        assert_eq!(order, ["lib", "out", "bin"]);
        // A missing output is an upload failure, not a panic.
        assert!(dependency_order(&outputs, &v[..1]).is_err());
    }

    #[test]
    fn the_log_limit_cancels_once() {
        let (mut l, _rx) = LogStream::new("d", 10);
        assert!(!l.line("12345"));
        assert!(l.line("67890"), "the line that passes the limit");
        assert!(!l.line("more"), "reported once");
        assert!(l.over);
    }
}
