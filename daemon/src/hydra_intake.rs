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

    /// One log line; `false` once the log is over the step's limit.
    fn line(&mut self, text: &str) -> bool {
        if self.over {
            return false;
        }
        self.bytes += text.len() as u64 + 1;
        if self.max > 0 && self.bytes > self.max {
            self.over = true;
            return false;
        }
        if let Some(e) = self.enc.as_mut() {
            let _ = e.write_all(text.as_bytes());
            let _ = e.write_all(b"\n");
        }
        self.pending += text.len() + 1;
        true
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
}

impl HydraIntake {
    pub fn new(cfg: Arc<Config>) -> Arc<HydraIntake> {
        Arc::new(HydraIntake {
            cfg,
            sched: OnceLock::new(),
            running: Mutex::new(HashMap::new()),
        })
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
        match client.complete_build(m).await {
            Ok(_) => info!(
                state = outcome.state().name(),
                total_ms,
                nix_build_ms = times.3,
                overhead_ms = total_ms.saturating_sub(times.3),
                "step completed"
            ),
            Err(e) => {
                warn!(error = %crate::error::chain(&e), "CompleteBuild failed (the runner retries the step)")
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
            let (done, over) = match self.build(&ctx, &sched, &rec).await? {
                Ok(d) => d,
                Err(o) => return Some(report(o, import_ms)),
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
        let (done_tx, done_rx) = oneshot::channel();
        {
            let mut r = self.running.lock().expect("lock");
            let run = r.get_mut(&ctx.b.build_id).filter(|run| !run.aborted)?;
            run.job_id = Some(rec.id.clone());
            run.log = log.clone();
            run.done = Some(done_tx);
        }
        ctx.update(StepStatus::Building).await;
        if let Err(e) = sched.enqueue(rec.clone()) {
            return Some(Err(Outcome::Preparing(format!(
                "cannot queue the step: {e}"
            ))));
        }
        let done = done_rx.await.ok();
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
        (!aborted).then_some(Ok((done, over)))
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
        if let Some(dir) = done.result.as_ref().and_then(|r| r.quarantine.as_ref()) {
            let _ = std::fs::remove_dir_all(dir);
            if let Some(parent) = dir.parent() {
                let _ = std::fs::remove_dir(parent);
            }
        }
        (outcome, infos)
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
        BuildStatus::TimedOut => Outcome::TimedOut,
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
        while let Some(m) = s.message().await.map_err(|e| format!("FetchPaths: {e}"))? {
            match (m.content, &header) {
                (Some(add_to_store_request::Content::Header(h)), None) => header = Some(h),
                (Some(add_to_store_request::Content::NarChunk(c)), Some(_)) => chunks.push(c),
                _ => return Err("FetchPaths: not a header followed by chunks".into()),
            }
        }
        let h = header.ok_or("FetchPaths: no header")?;
        let nars = frame::decompress(&chunks, max_total.saturating_sub(total))
            .map_err(|e| e.to_string())?;
        total += nars.len() as u64;
        for ((base, nar), vpi) in frame::split_nars(&h.path_infos, &nars)
            .map_err(|e| e.to_string())?
            .into_iter()
            .zip(&h.path_infos)
        {
            step::base_name(&base).map_err(|e| e.to_string())?;
            airlock_nix_formats::nar::validate(
                nar,
                nar.len() as u64,
                cfg.limits.max_nar_bytes,
                None::<std::io::Sink>,
                airlock_nix_formats::nar::RefScanner::new(std::iter::empty()),
            )
            .map_err(|e| format!("input {base}: not a valid NAR: {e}"))?;
            std::fs::write(dir.join("inputs").join(format!("{base}.nar")), nar)
                .map_err(|e| format!("input {base}: {e}"))?;
            let info = vpi.info.clone().unwrap_or_default();
            let mut references = Vec::new();
            for r in &info.references {
                references.push(format!(
                    "{store}/{}",
                    step::base_name(&r.path).map_err(|e| e.to_string())?
                ));
            }
            let deriver = match &info.deriver {
                Some(d) if !d.path.is_empty() => Some(format!(
                    "{store}/{}",
                    step::base_name(&d.path).map_err(|e| e.to_string())?
                )),
                _ => None,
            };
            out.push(airlock_wire::GuestInput {
                path: format!("{store}/{base}"),
                deriver,
                references,
            });
        }
    }
    info!(
        paths = out.len(),
        bytes = total,
        "step inputs fetched and checked"
    );
    Ok(out)
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
    for out in &r.drv.outputs {
        let v = manifest
            .iter()
            .find(|v| v.path == out.path)
            .ok_or_else(|| Outcome::Upload(format!("output {} was not built", out.name)))?;
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
    for c in frame::compress_chunks(nars).map_err(|e| Outcome::Upload(e.to_string()))? {
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

    fn abort_all(&self) {
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
            .by_job(rec, |r| !r.log.lock().expect("lock").line(text));
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
