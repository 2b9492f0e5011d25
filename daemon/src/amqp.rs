//! The ofborg broker adapter: consumes `BuildJob`s from
//! `build-inputs-<system>` and publishes `BuildLogStart`, `BuildLogMsg` and
//! `BuildResult` exactly as one of ofborg's own builders does.
//!
//! Delivery rules (see docs/amqp.md):
//! - a job is acked only after its result is published and confirmed;
//! - a body that is not a valid `BuildJob` is copied to the dead-letter queue
//!   with the reason and rejected without requeue;
//! - results are kept in the job record on disk until published, so a broker
//!   outage or a restart loses none; a redelivered job that is running or
//!   already finished here is matched to its record, not built again.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    BasicRejectOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Acker, BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use tokio::sync::{mpsc, Notify};
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::job::{AmqpOrigin, JobRecord, JobState, ReportState, Source};
use crate::ofborg::{
    BuildJob, BuildLogMsg, BuildLogStart, BuildResultV1, BuildStatus, Destination, V1Tag,
};
use crate::runner::LogSink;
use crate::scheduler::Scheduler;

/// Largest job message accepted.
const MAX_BODY: usize = 1 << 20;

/// Fanout exchange every builder publishes its attestations on (one
/// message per attestation, routing key the builder's key name); ofborg's
/// consumers never bind to it.
pub const ATTESTATIONS_EXCHANGE: &str = "airlock-attestations";
/// Topic exchange a publisher copies each job to, routing key `<system>`,
/// for operators' own queues (`amqp.operator_queue`, docs/trust.md).
pub const OPERATOR_JOBS_EXCHANGE: &str = "airlock-build-jobs";

/// Log lines waiting for the publisher, at most: beyond, a chatty build's
/// lines are dropped (and counted) instead of growing memory while the
/// broker is slow or away. The job log on disk keeps every line.
const MAX_QUEUED_LINES: usize = 10_000;
/// And at most this many bytes of them (lines are up to 64 KiB each, so
/// the line count alone would allow 640 MiB).
const MAX_QUEUED_BYTES: u64 = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("broker connection failed")]
    Broker(#[from] lapin::Error),
    #[error("the broker did not confirm a publish")]
    NotConfirmed,
    #[error("not connected to the broker")]
    NotConnected,
    #[error("broker consumer stopped")]
    ConsumerClosed,
    #[error("invalid broker config")]
    Config(#[from] crate::config::Error),
}
pub type Result<T> = std::result::Result<T, Error>;

/// Why a message is not a job.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Poison {
    #[error("message body is {0} bytes, more than {MAX_BODY}")]
    TooLarge(usize),
    #[error("not a BuildJob: {0}")]
    NotAJob(String),
    #[error("invalid BuildJob: {0}")]
    Invalid(String),
    #[error("refused BuildJob: {0}")]
    Refused(String),
}

/// The URL a broker job is fetched from comes from config, never from the
/// message: a `clone_url` that differs from `[github] clone_url` for the
/// job's `full_name` is refused (it could pair a real PR's head with
/// another repository's target branch).
pub fn check_origin(
    cfg: &crate::config::GithubConfig,
    job: &BuildJob,
) -> std::result::Result<(), Poison> {
    let want = cfg
        .clone_url_for(&job.repo.full_name)
        .map_err(Poison::Refused)?;
    if job.repo.clone_url != want {
        return Err(Poison::Refused(format!(
            "clone_url {:?} is not {want:?}, the configured URL of {}",
            job.repo.clone_url, job.repo.full_name
        )));
    }
    Ok(())
}

/// Strictly decode a job message. `Ok(None)`: a valid job with no attrs,
/// which ofborg acks without publishing anything, unless it carries
/// airlock's review marker (`airlock_review`): a review job.
pub fn decode_job(body: &[u8]) -> std::result::Result<Option<BuildJob>, Poison> {
    if body.len() > MAX_BODY {
        return Err(Poison::TooLarge(body.len()));
    }
    let job: BuildJob = serde_json::from_slice(body).map_err(|e| Poison::NotAJob(e.to_string()))?;
    if job.attrs.is_empty() && job.airlock_review.is_none() {
        return Ok(None);
    }
    job.validate().map_err(|e| Poison::Invalid(e.to_string()))?;
    Ok(Some(job))
}

enum Out {
    Publish {
        dest: Destination,
        body: Vec<u8>,
        /// Set for a job's `BuildLogStart`: recorded once published.
        start_of: Option<String>,
    },
    /// Publish the result of this job if it is due, then ack.
    Report(String),
    /// Publish every due result (after a reconnect).
    ReportAll,
}

struct Shared {
    /// Publishing channel of the current connection, with its generation.
    channel: Mutex<Option<(u64, Channel)>>,
    generation: AtomicU64,
    /// Unacked deliveries by job id, with the generation they came on.
    acks: Mutex<HashMap<String, (u64, Acker)>>,
    /// Jobs whose BuildLogStart was handed to the publisher in this run
    /// (what actually went out is recorded on disk: [`start_marker`]).
    started: Mutex<HashSet<String>>,
    /// Consumers to cancel on drain.
    consumers: Mutex<Vec<(Channel, String)>>,
    /// Log lines in the publisher's queue, and lines dropped because it was full.
    queued_lines: AtomicU64,
    queued_bytes: AtomicU64,
    dropped_lines: AtomicU64,
    reconnect: Notify,
    /// The current connection, closed cleanly at shutdown.
    conn: tokio::sync::Mutex<Option<Arc<Connection>>>,
    /// Broker jobs this builder has (not dropped), by [`delivery_key`]: a
    /// redelivery is matched here instead of scanning every record.
    index: Mutex<Option<HashMap<String, String>>>,
}

/// A delivery's identity on one system: ofborg's `request_id` where it
/// sets one, otherwise a hash of the message body. A redelivery carries the
/// same identity as the delivery it repeats.
pub fn delivery_key(system: &str, job: &BuildJob, body: &[u8]) -> String {
    if job.request_id.is_empty() {
        use sha2::{Digest, Sha256};
        format!("{system} body {}", hex::encode(Sha256::digest(body)))
    } else {
        format!("{system} request {}", job.request_id)
    }
}

/// The identity of a stored broker job (records written before identities
/// were stored fall back to the re-serialised job).
fn record_key(o: &AmqpOrigin, job: &BuildJob) -> String {
    o.key.clone().unwrap_or_else(|| {
        let body = serde_json::to_vec(job).expect("serialises");
        delivery_key(&o.system, job, &body)
    })
}

/// Marker file: this job's `BuildLogStart` went out (kept across restarts,
/// so a result published after a restart is not preceded by a second one).
fn start_marker(daemon: &Scheduler, id: &str) -> std::path::PathBuf {
    daemon.runner.store.dir(id).join("amqp-start-published")
}

/// Marker file: this job's `BuildResult` reached its `statusreport`
/// destination (confirmed); a retry after a failure publishing the copy to
/// `logs` must not report the job a second time.
fn result_marker(daemon: &Scheduler, id: &str) -> std::path::PathBuf {
    daemon.runner.store.dir(id).join("amqp-result-published")
}

/// Marker file: this job's attestations were published (confirmed).
fn attestations_marker(daemon: &Scheduler, id: &str) -> std::path::PathBuf {
    daemon
        .runner
        .store
        .dir(id)
        .join("amqp-attestations-published")
}

/// The queue this builder reads other builders' attestations from.
pub fn attestations_queue(builder: &str) -> String {
    format!("airlock-attestations-{builder}")
}

/// Write a marker (an empty file: its existence is the mark), warning if
/// that fails. Right after the broker's confirm and without an fsync: the
/// time in which a killed airlockd has published a message but not yet
/// marked it (and so publishes it again after its restart) is one
/// `open(2)`, not a disk flush. A power loss may still lose a mark; the
/// message is then published twice, never lost.
fn mark(path: &std::path::Path, what: &str) {
    if let Err(e) = std::fs::File::create(path) {
        warn!(error = %e, "cannot record that {what} was published");
    }
}

/// The runner's log sink for broker jobs; feeds the publisher.
pub struct AmqpSink {
    cfg: Arc<Config>,
    tx: mpsc::UnboundedSender<Out>,
    shared: Arc<Shared>,
}

impl AmqpSink {
    fn origin<'a>(&self, rec: &'a JobRecord) -> Option<&'a AmqpOrigin> {
        rec.amqp.as_ref().filter(|_| rec.source == Source::Amqp)
    }

    fn send_start(
        &self,
        rec: &JobRecord,
        attempted: Option<Vec<String>>,
        skipped: Option<Vec<String>>,
    ) {
        let Some(o) = self.origin(rec) else { return };
        if !self
            .shared
            .started
            .lock()
            .expect("lock")
            .insert(rec.id.clone())
        {
            return;
        }
        let m = BuildLogStart {
            system: o.system.clone(),
            identity: self.cfg.identity.name.clone(),
            attempt_id: o.attempt_id.clone(),
            attempted_attrs: attempted,
            skipped_attrs: skipped,
        };
        let _ = self.tx.send(Out::Publish {
            dest: rec.job.logs_destination(),
            body: serde_json::to_vec(&m).expect("serialises"),
            start_of: Some(rec.id.clone()),
        });
    }
}

impl LogSink for AmqpSink {
    fn started(&self, rec: &JobRecord, attempted: &[String], skipped: &[String]) {
        self.send_start(rec, Some(attempted.to_vec()), Some(skipped.to_vec()));
    }

    fn line(&self, rec: &JobRecord, n: u64, text: &str) {
        let Some(o) = self.origin(rec) else { return };
        // A guest that never announced its attrs still gets a start message first.
        self.send_start(rec, None, None);
        let m = BuildLogMsg {
            system: o.system.clone(),
            identity: self.cfg.identity.name.clone(),
            attempt_id: o.attempt_id.clone(),
            line_number: n,
            output: text.to_owned(),
        };
        let body = serde_json::to_vec(&m).expect("serialises");
        let len = body.len() as u64;
        if self.shared.queued_lines.load(Ordering::Relaxed) >= MAX_QUEUED_LINES as u64
            || self.shared.queued_bytes.load(Ordering::Relaxed) + len > MAX_QUEUED_BYTES
        {
            let n = self.shared.dropped_lines.fetch_add(1, Ordering::Relaxed) + 1;
            if n == 1 || n.is_multiple_of(10_000) {
                warn!(
                    dropped = n,
                    "broker log queue full: log lines dropped (the job log keeps them)"
                );
            }
            return;
        }
        self.shared.queued_lines.fetch_add(1, Ordering::Relaxed);
        self.shared.queued_bytes.fetch_add(len, Ordering::Relaxed);
        let _ = self.tx.send(Out::Publish {
            dest: rec.job.logs_destination(),
            body,
            start_of: None,
        });
    }

    fn finished(&self, rec: &JobRecord) {
        if self.origin(rec).is_some() {
            let _ = self.tx.send(Out::Report(rec.id.clone()));
        }
    }
}

pub struct Amqp {
    cfg: Arc<Config>,
    shared: Arc<Shared>,
    rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<Out>>,
    tx: mpsc::UnboundedSender<Out>,
}

fn persistent_json() -> BasicProperties {
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type(ShortString::from("application/json"))
}

impl Amqp {
    /// The adapter and the log sink the runner must use.
    pub fn new(cfg: Arc<Config>) -> (Arc<Amqp>, Arc<AmqpSink>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            channel: Mutex::new(None),
            generation: AtomicU64::new(0),
            acks: Mutex::new(HashMap::new()),
            started: Mutex::new(HashSet::new()),
            consumers: Mutex::new(Vec::new()),
            queued_lines: AtomicU64::new(0),
            queued_bytes: AtomicU64::new(0),
            dropped_lines: AtomicU64::new(0),
            reconnect: Notify::new(),
            conn: tokio::sync::Mutex::new(None),
            index: Mutex::new(None),
        });
        let sink = Arc::new(AmqpSink {
            cfg: cfg.clone(),
            tx: tx.clone(),
            shared: shared.clone(),
        });
        let amqp = Arc::new(Amqp {
            cfg,
            shared,
            rx: tokio::sync::Mutex::new(rx),
            tx,
        });
        (amqp, sink)
    }

    /// Run forever: connect, consume, publish; reconnect with backoff.
    pub async fn run(self: Arc<Self>, daemon: Arc<Scheduler>) {
        let publisher = self.clone();
        let d2 = daemon.clone();
        tokio::spawn(async move { publisher.publish_loop(d2).await });
        let max = Duration::from_secs(self.cfg.amqp.reconnect_max_secs.max(1));
        let mut backoff = Duration::from_millis(500);
        loop {
            if daemon.is_draining() {
                return;
            }
            match self.session(&daemon).await {
                Ok(()) => return,
                Err(e) => {
                    *self.shared.channel.lock().expect("lock") = None;
                    self.shared.consumers.lock().expect("lock").clear();
                    // A session can end while its connection is still up
                    // (its consumer stopped): a delivery the broker hands
                    // to that connection's consumer would stay unacked
                    // there, never redelivered. Closing it gives every
                    // unacked delivery back to the queue; the next session
                    // takes them as redeliveries.
                    if let Some(c) = self.shared.conn.lock().await.take() {
                        let _ = tokio::time::timeout(
                            Duration::from_secs(5),
                            c.close(200, "airlockd reconnects".into()),
                        )
                        .await;
                    }
                    warn!(error = %crate::error::chain(&e), retry_in = ?backoff, "broker connection lost");
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(max);
        }
    }

    /// Stop consuming (SIGTERM). Running jobs still report.
    pub async fn stop_consuming(&self) {
        // Clones: dropping the last handle of a channel closes it, and the
        // running jobs' deliveries must still be acked on it.
        let consumers = self.shared.consumers.lock().expect("lock").clone();
        for (ch, tag) in consumers {
            if let Err(e) = ch
                .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
                .await
            {
                warn!(error = %e, "cannot cancel consumer");
            }
        }
        info!("stopped consuming from the broker");
    }

    /// At shutdown: wait (up to `limit`) until finished jobs are acked, then
    /// close the connection cleanly so every ack reaches the broker and every
    /// unstarted delivery goes back to the queue at once.
    pub async fn shutdown(&self, daemon: &Scheduler, limit: Duration) {
        let t0 = std::time::Instant::now();
        while t0.elapsed() < limit {
            let waiting = {
                let acks = self.shared.acks.lock().expect("lock");
                acks.keys().any(|id| {
                    daemon
                        .runner
                        .store
                        .load(id)
                        .is_ok_and(|r| r.state == JobState::Done)
                })
            };
            if !waiting {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if let Some(c) = self.shared.conn.lock().await.take() {
            let _ = c.close(200, "airlockd shutting down".into()).await;
        }
    }

    async fn session(&self, daemon: &Arc<Scheduler>) -> Result<()> {
        let uri = self.cfg.amqp.uri()?;
        let props = ConnectionProperties::default()
            .with_connection_name(LongString::from(format!("airlock {}", self.cfg.identity)));
        let conn = Arc::new(Connection::connect(&uri, props).await?);
        *self.shared.conn.lock().await = Some(conn.clone());
        let pubch = conn.create_channel().await?;
        pubch
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let systems = self.cfg.amqp_systems();
        self.declare_topology(&pubch, &systems).await?;
        let generation = self.shared.generation.fetch_add(1, Ordering::SeqCst) + 1;
        *self.shared.channel.lock().expect("lock") = Some((generation, pubch.clone()));
        let _ = self.tx.send(Out::ReportAll);
        let mut drx = self.consume(&conn, &systems).await?;
        self.consume_attestations(daemon, &conn).await?;
        info!(broker = %redact(&uri), systems = ?systems, prefetch = self.cfg.max_jobs, "consuming from the broker");
        loop {
            tokio::select! {
                d = drx.recv() => match d {
                    Some(Some((sys, d))) => self.handle(daemon, &sys, d, generation).await,
                    Some(None) | None => {
                        if daemon.is_draining() {
                            // Consumers were cancelled; keep the connection for results.
                            self.shared.reconnect.notified().await;
                        }
                        return Err(Error::ConsumerClosed);
                    }
                },
                _ = self.shared.reconnect.notified() => return Err(Error::ConsumerClosed),
            }
        }
    }

    /// ofborg's topology, flag for flag (a mismatch closes the channel):
    /// the exchanges, one `build-inputs-<system>` queue per system, the
    /// dead-letter queue.
    async fn declare_topology(&self, pubch: &Channel, systems: &[String]) -> Result<()> {
        pubch
            .exchange_declare(
                "build-jobs".into(),
                ExchangeKind::Fanout,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        // The exchanges builders publish to (declared like ofborg's central side
        // does, so a fresh broker works; publishing to a missing one would
        // close the channel).
        for (name, kind) in [
            ("logs", ExchangeKind::Topic),
            ("build-results", ExchangeKind::Fanout),
            // airlock's own, beside ofborg's (docs/trust.md): every
            // builder's attestations, and jobs copied per operator.
            (ATTESTATIONS_EXCHANGE, ExchangeKind::Fanout),
            (OPERATOR_JOBS_EXCHANGE, ExchangeKind::Topic),
        ] {
            pubch
                .exchange_declare(
                    name.into(),
                    kind,
                    ExchangeDeclareOptions {
                        durable: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await?;
        }
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        for sys in systems {
            let q = self.cfg.job_queue(sys);
            pubch
                .queue_declare(q.as_str().into(), durable, FieldTable::default())
                .await?;
            // ofborg's queue on its fanout; an operator's on airlock's
            // topic exchange, keyed by system.
            let (exchange, key) = if self.cfg.amqp.operator_queue {
                (OPERATOR_JOBS_EXCHANGE, sys.as_str())
            } else {
                ("build-jobs", "")
            };
            pubch
                .queue_bind(
                    q.as_str().into(),
                    exchange.into(),
                    key.into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
        pubch
            .queue_declare(
                self.cfg.amqp.dead_letter_queue.as_str().into(),
                durable,
                FieldTable::default(),
            )
            .await?;
        Ok(())
    }

    /// One consumer per system (prefetch `max_jobs`), all feeding one
    /// stream of deliveries; `None` when a consumer ends.
    async fn consume(
        &self,
        conn: &Connection,
        systems: &[String],
    ) -> Result<mpsc::UnboundedReceiver<Option<(String, Delivery)>>> {
        let (dtx, drx) = mpsc::unbounded_channel::<Option<(String, Delivery)>>();
        let tag = format!("{}-{}-builder", self.cfg.identity, systems.join(","));
        for sys in systems {
            let ch = conn.create_channel().await?;
            ch.basic_qos(
                self.cfg.max_jobs.min(u16::MAX as usize) as u16,
                BasicQosOptions::default(),
            )
            .await?;
            let q = self.cfg.job_queue(sys);
            let consumer = ch
                .basic_consume(
                    q.as_str().into(),
                    tag.as_str().into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            self.shared
                .consumers
                .lock()
                .expect("lock")
                .push((ch, tag.clone()));
            let dtx = dtx.clone();
            let sys = sys.clone();
            tokio::spawn(async move {
                use futures_lite::StreamExt;
                let mut consumer = consumer;
                while let Some(d) = consumer.next().await {
                    match d {
                        Ok(d) => {
                            let _ = dtx.send(Some((sys.clone(), d)));
                        }
                        Err(e) => {
                            warn!(error = %e, "consumer error");
                            break;
                        }
                    }
                }
                let _ = dtx.send(None);
            });
        }
        drop(dtx);
        Ok(drx)
    }

    async fn handle(&self, daemon: &Arc<Scheduler>, system: &str, d: Delivery, generation: u64) {
        let job = match decode_job(&d.data).and_then(|j| match j {
            Some(job) => check_origin(&self.cfg.github, &job).map(|_| Some(job)),
            None => Ok(None),
        }) {
            Ok(Some(job)) => job,
            Ok(None) => {
                info!(%system, "job without attrs: acked, nothing published (as ofborg)");
                let _ = d.acker.ack(BasicAckOptions::default()).await;
                return;
            }
            Err(reason) => {
                self.dead_letter(system, &d, &reason).await;
                return;
            }
        };
        // A redelivery of a job this builder already has? Only a delivery
        // the broker flags as redelivered can be one: the same body
        // published again is a new request and is built again, as ofborg does.
        let key = delivery_key(system, &job, &d.data);
        let existing = if d.redelivered {
            self.lookup(daemon, &key)
                .and_then(|id| daemon.runner.store.load(&id).ok())
                .filter(|r| {
                    r.amqp
                        .as_ref()
                        .is_some_and(|o| o.report != ReportState::Dropped)
                })
        } else {
            None
        };
        if let Some(rec) = existing {
            let report = rec.amqp.as_ref().map(|o| o.report);
            rec.span().in_scope(|| info!(state = ?rec.state, ?report, "redelivery of a job this builder already has: not built again"));
            if report == Some(ReportState::Published) {
                let _ = d.acker.ack(BasicAckOptions::default()).await;
                return;
            }
            // Its result acks this (the newest) delivery; an older one died
            // with its connection.
            self.shared
                .acks
                .lock()
                .expect("lock")
                .insert(rec.id.clone(), (generation, d.acker));
            if rec.state == JobState::Done {
                let _ = self.tx.send(Out::Report(rec.id.clone()));
            }
            return;
        }
        let mut rec = JobRecord::new(Source::Amqp, job);
        rec.amqp = Some(AmqpOrigin {
            system: system.to_owned(),
            attempt_id: uuid::Uuid::new_v4().to_string(),
            report: ReportState::Pending,
            key: Some(key.clone()),
        });
        let id = rec.id.clone();
        self.shared
            .acks
            .lock()
            .expect("lock")
            .insert(id.clone(), (generation, d.acker));
        // Indexed before it is queued, so a redelivery that arrives while it
        // waits for a slot finds it.
        self.with_index(daemon, |ix| ix.insert(key.clone(), id.clone()));
        if let Err(e) = daemon.enqueue(rec) {
            warn!(job_id = %id, error = %e, "cannot queue broker job; handed back to the broker");
            self.with_index(daemon, |ix| ix.remove(&key));
            let ack = self.shared.acks.lock().expect("lock").remove(&id);
            if let Some((_, acker)) = ack {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let _ = acker.reject(BasicRejectOptions { requeue: true }).await;
            }
        }
    }

    /// Run `f` on the index of broker jobs by identity (built from the
    /// records on first use, then kept up to date by [`Amqp::handle`]).
    fn with_index<T>(
        &self,
        daemon: &Scheduler,
        f: impl FnOnce(&mut HashMap<String, String>) -> T,
    ) -> T {
        let mut ix = self.shared.index.lock().expect("lock");
        let ix = ix.get_or_insert_with(|| {
            daemon
                .runner
                .store
                .list()
                .0
                .into_iter()
                .filter_map(|r| {
                    let o = r.amqp.as_ref()?;
                    (o.report != ReportState::Dropped)
                        .then(|| (record_key(o, &r.job), r.id.clone()))
                })
                .collect()
        });
        f(ix)
    }

    /// The job id for identity `key`, if this builder has that job.
    fn lookup(&self, daemon: &Scheduler, key: &str) -> Option<String> {
        self.with_index(daemon, |ix| ix.get(key).cloned())
    }

    async fn dead_letter(&self, system: &str, d: &Delivery, reason: &Poison) {
        warn!(%system, reason = %reason, bytes = d.data.len(), "malformed job message: moved to the dead-letter queue");
        let mut headers = FieldTable::default();
        headers.insert(
            "x-airlock-reason".into(),
            AMQPValue::LongString(reason.to_string().into()),
        );
        headers.insert(
            "x-airlock-queue".into(),
            AMQPValue::LongString(self.cfg.job_queue(system).into()),
        );
        headers.insert(
            "x-airlock-identity".into(),
            AMQPValue::LongString(self.cfg.identity.name.clone().into()),
        );
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_headers(headers);
        let dest = Destination {
            exchange: String::new(),
            routing_key: self.cfg.amqp.dead_letter_queue.clone(),
        };
        if let Err(e) = self.publish(&dest, &d.data, props, true).await {
            warn!(error = %e, "cannot copy the message to the dead-letter queue");
        }
        let _ = d.acker.reject(BasicRejectOptions { requeue: false }).await;
    }

    async fn publish(
        &self,
        dest: &Destination,
        body: &[u8],
        props: BasicProperties,
        confirm: bool,
    ) -> Result<()> {
        let ch = self
            .shared
            .channel
            .lock()
            .expect("lock")
            .as_ref()
            .map(|(_, c)| c.clone())
            .ok_or(Error::NotConnected)?;
        let pc = ch
            .basic_publish(
                dest.exchange.as_str().into(),
                dest.routing_key.as_str().into(),
                BasicPublishOptions::default(),
                body,
                props,
            )
            .await
            .inspect_err(|_| self.shared.reconnect.notify_one())?;
        if confirm {
            let c = pc.await?;
            if !c.is_ack() {
                return Err(Error::NotConfirmed);
            }
        }
        Ok(())
    }

    async fn publish_loop(&self, daemon: Arc<Scheduler>) {
        let mut rx = self.rx.lock().await;
        let mut retry = tokio::time::interval(Duration::from_secs(30));
        loop {
            // Queued messages first: a job's start and lines go out before a
            // retry tick publishes its result.
            let msg = tokio::select! {
                biased;
                m = rx.recv() => match m { Some(m) => m, None => return },
                _ = retry.tick() => Out::ReportAll,
            };
            match msg {
                Out::Publish {
                    dest,
                    body,
                    start_of,
                } => {
                    if start_of.is_none() {
                        self.shared.queued_lines.fetch_sub(1, Ordering::Relaxed);
                        self.shared
                            .queued_bytes
                            .fetch_sub(body.len() as u64, Ordering::Relaxed);
                    }
                    // A start that went out with the result already.
                    if start_of
                        .as_ref()
                        .is_some_and(|id| start_marker(&daemon, id).exists())
                    {
                        continue;
                    }
                    // Log lines are best effort: lost while the broker is away.
                    match self.publish(&dest, &body, persistent_json(), false).await {
                        Err(e) => debug!(error = %e, "log message not published"),
                        Ok(()) => {
                            if let Some(id) = start_of {
                                mark(&start_marker(&daemon, &id), "BuildLogStart");
                            }
                        }
                    }
                }
                Out::Report(id) => self.report(&daemon, &id).await,
                Out::ReportAll => {
                    let due: Vec<String> = daemon
                        .runner
                        .store
                        .list()
                        .0
                        .into_iter()
                        .filter(|r| {
                            r.state == JobState::Done
                                && r.amqp
                                    .as_ref()
                                    .is_some_and(|o| o.report == ReportState::Pending)
                        })
                        .map(|r| r.id)
                        .collect();
                    for id in due {
                        self.report(&daemon, &id).await;
                    }
                }
            }
        }
    }

    /// Publish a finished job's result (if not yet), then ack its delivery.
    async fn report(&self, daemon: &Arc<Scheduler>, id: &str) {
        let store = &daemon.runner.store;
        let Ok(mut rec) = store.load(id) else { return };
        let Some(origin) = rec.amqp.clone() else {
            return;
        };
        if rec.state != JobState::Done || origin.report == ReportState::Dropped {
            return;
        }
        let span = rec.span();
        let _g = span.enter();
        if origin.report == ReportState::Pending {
            crate::fault::pause(&self.cfg.state_dir, crate::fault::Point::BeforePublish, id).await;
            if let Err(e) = self.publish_result(daemon, &rec, &origin).await {
                warn!(error = %crate::error::chain(&e), "result not published yet; kept on disk, retried when the broker is back");
                return;
            }
            if let Some(o) = rec.amqp.as_mut() {
                o.report = ReportState::Published;
            }
            if let Err(e) = store.save(&rec) {
                warn!(error = %e, "cannot record that the result was published");
            }
            info!("result published");
        }
        crate::fault::pause(&self.cfg.state_dir, crate::fault::Point::AfterPublish, id).await;
        let ack = self.shared.acks.lock().expect("lock").remove(id);
        let current = self.shared.generation.load(Ordering::SeqCst);
        match ack {
            Some((g, acker)) if g == current => match acker.ack(BasicAckOptions::default()).await {
                Err(e) => {
                    warn!(error = %e, "ack failed; the broker will redeliver and it is acked then")
                }
                Ok(_) => {
                    info!("delivery acked");
                    crate::fault::pause(&self.cfg.state_dir, crate::fault::Point::AfterAck, id)
                        .await;
                }
            },
            Some(_) => info!(
                "delivery belonged to a lost connection; its redelivery is acked when it arrives"
            ),
            None => debug!("no delivery to ack yet"),
        }
    }

    async fn publish_result(
        &self,
        daemon: &Scheduler,
        rec: &JobRecord,
        origin: &AmqpOrigin,
    ) -> Result<()> {
        let Some(res) = rec.result.as_ref() else {
            return Ok(());
        };
        if res.silent {
            return Ok(());
        }
        let merge_failed = res.status == BuildStatus::Failure
            && res.attempted_attrs.is_none()
            && res.output == ["Merge failed"];
        let marker = start_marker(daemon, &rec.id);
        if !merge_failed && !marker.exists() {
            let m = BuildLogStart {
                system: origin.system.clone(),
                identity: self.cfg.identity.name.clone(),
                attempt_id: origin.attempt_id.clone(),
                attempted_attrs: res.attempted_attrs.clone(),
                skipped_attrs: res.skipped_attrs.clone(),
            };
            let body = serde_json::to_vec(&m).expect("serialises");
            self.publish(&rec.job.logs_destination(), &body, persistent_json(), true)
                .await?;
            mark(&marker, "BuildLogStart");
        }
        let result = BuildResultV1 {
            tag: V1Tag::V1,
            repo: rec.job.repo.clone(),
            pr: rec.job.pr.clone(),
            system: origin.system.clone(),
            // ofborg shows a result's output lines with the result: the
            // builder's contribution line goes last.
            output: res
                .output
                .iter()
                .cloned()
                .chain(self.cfg.sponsor.line())
                .collect(),
            attempt_id: origin.attempt_id.clone(),
            request_id: rec.job.request_id.clone(),
            status: res.status.clone(),
            skipped_attrs: res.skipped_attrs.clone(),
            attempted_attrs: res.attempted_attrs.clone(),
        };
        self.publish_attestations(daemon, rec).await?;
        let body = serde_json::to_vec(&result).expect("serialises");
        let sent = result_marker(daemon, &rec.id);
        if !sent.exists() {
            self.publish(
                &rec.job.result_destination(),
                &body,
                persistent_json(),
                true,
            )
            .await?;
            mark(&sent, "BuildResult");
        }
        if !merge_failed {
            self.publish(&rec.job.logs_destination(), &body, persistent_json(), true)
                .await?;
        }
        self.shared.started.lock().expect("lock").remove(&rec.id);
        Ok(())
    }
}

impl Amqp {
    /// The job's attestations on `airlock-attestations`, before its result
    /// (a builder that sees the result can find them), once.
    async fn publish_attestations(&self, daemon: &Scheduler, rec: &JobRecord) -> Result<()> {
        let marker = attestations_marker(daemon, &rec.id);
        if marker.exists() {
            return Ok(());
        }
        let file = daemon.runner.store.paths(&rec.id).attestations();
        let Ok(text) = std::fs::read(&file) else {
            return Ok(());
        };
        let mut n = 0;
        for line in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let Ok(a) = crate::attest::Attestation::parse(line) else {
                warn!(file = %file.display(), "unreadable attestation line not published");
                continue;
            };
            let dest = Destination {
                exchange: ATTESTATIONS_EXCHANGE.into(),
                routing_key: a.statement.builder.clone(),
            };
            self.publish(&dest, line, persistent_json(), true).await?;
            n += 1;
        }
        mark(&marker, "attestations");
        info!(count = n, "attestations published");
        Ok(())
    }

    /// With `[verify] builders`: consume `airlock-attestations` through
    /// this builder's own queue, keeping what verifies. A message that is
    /// not an attestation, or one no known key signed, is logged and
    /// dropped (acked): it would never verify later either.
    async fn consume_attestations(&self, daemon: &Arc<Scheduler>, conn: &Connection) -> Result<()> {
        let Some(att) = daemon.runner.attestor.clone() else {
            return Ok(());
        };
        if self.cfg.verify.builders.is_empty() {
            return Ok(());
        }
        let ch = conn.create_channel().await?;
        let q = attestations_queue(att.builder());
        ch.queue_declare(
            q.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
        ch.queue_bind(
            q.as_str().into(),
            ATTESTATIONS_EXCHANGE.into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
        ch.basic_qos(64, BasicQosOptions::default()).await?;
        let consumer = ch
            .basic_consume(
                q.as_str().into(),
                format!("{}-attestations", self.cfg.identity)
                    .as_str()
                    .into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        info!(queue = %q, known = self.cfg.verify.builders.len(), "consuming other builders' attestations");
        tokio::spawn(async move {
            use futures_lite::StreamExt;
            let _ch = ch;
            let mut consumer = consumer;
            while let Some(Ok(d)) = consumer.next().await {
                let a2 = att.clone();
                let body = d.data.clone();
                let kept = tokio::task::spawn_blocking(move || {
                    if body.len() > crate::attest::MAX_LINE {
                        return Err(format!("{} bytes: too long", body.len()));
                    }
                    let a = crate::attest::Attestation::parse(&body).map_err(|e| e.to_string())?;
                    if a.statement.builder == a2.builder() {
                        return Ok(None);
                    }
                    a2.pool
                        .add(&a)
                        .map(|new| new.then_some(a))
                        .map_err(|e| crate::error::chain(&e))
                })
                .await;
                match kept {
                    Ok(Ok(Some(a))) => info!(
                        builder = %a.statement.builder,
                        out_path = %a.statement.out_path,
                        nar_hash = %a.statement.nar_hash,
                        "attestation received and verified"
                    ),
                    Ok(Ok(None)) => {}
                    Ok(Err(why)) => warn!(%why, "attestation from the broker not kept"),
                    Err(e) => warn!(error = %e, "attestation check crashed"),
                }
                let _ = d.acker.ack(BasicAckOptions::default()).await;
            }
        });
        Ok(())
    }
}

/// The URI without its password, for logs.
fn redact(uri: &str) -> String {
    match (uri.split_once("://"), uri.rfind('@')) {
        (Some((scheme, _)), Some(at)) => format!("{scheme}://…@{}", &uri[at + 1..]),
        _ => uri.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_broker_log_queue_is_bounded_in_lines_and_bytes() {
        let (_amqp, sink) = Amqp::new(Arc::new(Config::default()));
        let job: BuildJob = serde_json::from_str(r#"{"repo":{"owner":"o","name":"n","full_name":"o/n","clone_url":"/x"},"pr":{"target_branch":"master","number":1,"head_sha":"e9872fa30caac57c69bfac8667e6c21254603df1"},"subset":null,"attrs":["a"],"request_id":"r","logs":null,"statusreport":null}"#).unwrap();
        let mut rec = JobRecord::new(Source::Amqp, job);
        rec.amqp = Some(crate::job::AmqpOrigin {
            system: "x86_64-linux".into(),
            attempt_id: "a".into(),
            report: crate::job::ReportState::Pending,
            key: None,
        });
        // A guest writing 64 KiB lines: the byte cap stops it long before
        // the line cap (which alone would let 640 MiB queue up).
        let big = "x".repeat(64 << 10);
        for n in 0..1000 {
            sink.line(&rec, n, &big);
        }
        let bytes = sink.shared.queued_bytes.load(Ordering::Relaxed);
        assert!(bytes <= MAX_QUEUED_BYTES, "{bytes}");
        assert!(bytes > MAX_QUEUED_BYTES / 2, "{bytes}");
        assert!(sink.shared.dropped_lines.load(Ordering::Relaxed) > 700);
        // Short lines: the line cap.
        let (_amqp, sink) = Amqp::new(Arc::new(Config::default()));
        for n in 0..(MAX_QUEUED_LINES as u64 + 50) {
            sink.line(&rec, n, "short");
        }
        assert_eq!(
            sink.shared.queued_lines.load(Ordering::Relaxed),
            MAX_QUEUED_LINES as u64
        );
        assert_eq!(sink.shared.dropped_lines.load(Ordering::Relaxed), 50);
    }

    #[test]
    fn a_review_marker_makes_an_empty_job_a_review_that_ofborg_still_reads() {
        let review = r#"{"repo":{"owner":"o","name":"n","full_name":"o/n","clone_url":"https://x/o/n.git"},"pr":{"target_branch":"staging","number":1,"head_sha":"e9872fa30caac57c69bfac8667e6c21254603df1"},"subset":"Nixpkgs","attrs":[],"request_id":"r","logs":["logs","o/n.1"],"statusreport":["build-results",null],"airlock_review":{"base":"master","attrs":["hello"]}}"#;
        let job = decode_job(review.as_bytes())
            .unwrap()
            .expect("a review job");
        let rv = job.airlock_review.clone().unwrap();
        assert_eq!(rv.attrs.as_deref(), Some(&["hello".to_string()][..]));
        assert_eq!(job.review_base(&Default::default()), "master");
        // ofborg's builder reads the same message (its BuildJob has no
        // deny_unknown_fields) and sees an empty attrs list: it acks it
        // and builds nothing.
        #[derive(serde::Deserialize)]
        #[allow(dead_code)]
        struct OfborgBuildJob {
            repo: crate::ofborg::Repo,
            pr: crate::ofborg::Pr,
            subset: Option<crate::ofborg::Subset>,
            attrs: Vec<String>,
            request_id: String,
            logs: Option<(Option<String>, Option<String>)>,
            statusreport: Option<(Option<String>, Option<String>)>,
        }
        let theirs: OfborgBuildJob = serde_json::from_str(review).unwrap();
        assert!(theirs.attrs.is_empty());
        // A marker with a bad branch is refused like any bad job.
        let bad = review.replace("\"base\":\"master\"", "\"base\":\"-x\"");
        assert!(matches!(
            decode_job(bad.as_bytes()),
            Err(Poison::Invalid(_))
        ));
        // The base: the marker's, else `review.base_for`, else the target.
        let mut j2 = job.clone();
        j2.airlock_review.as_mut().unwrap().base = None;
        let map = std::collections::BTreeMap::from([("staging".to_string(), "master".to_string())]);
        assert_eq!(j2.review_base(&map), "master");
        assert_eq!(j2.review_base(&Default::default()), "staging");
    }

    #[test]
    fn poison_messages_are_classified() {
        assert!(matches!(decode_job(b"not json"), Err(Poison::NotAJob(_))));
        assert!(matches!(
            decode_job(b"{\"repo\":1}"),
            Err(Poison::NotAJob(_))
        ));
        assert!(matches!(
            decode_job(&vec![b' '; MAX_BODY + 1]),
            Err(Poison::TooLarge(_))
        ));
        let ok = r#"{"repo":{"owner":"o","name":"n","full_name":"o/n","clone_url":"https://x/o/n.git"},"pr":{"target_branch":"master","number":1,"head_sha":"e9872fa30caac57c69bfac8667e6c21254603df1"},"attrs":["hello"],"request_id":"r"}"#;
        assert!(decode_job(ok.as_bytes()).unwrap().is_some());
        let empty = ok.replace("[\"hello\"]", "[]");
        assert_eq!(decode_job(empty.as_bytes()), Ok(None));
        let bad_sha = ok.replace("e9872fa30caac57c69bfac8667e6c21254603df1", "HEAD");
        assert!(matches!(
            decode_job(bad_sha.as_bytes()),
            Err(Poison::Invalid(_))
        ));
    }

    #[test]
    fn delivery_identity_is_the_request_id_or_the_body() {
        let body = r#"{"repo":{"owner":"o","name":"n","full_name":"o/n","clone_url":"https://x/o/n.git"},"pr":{"target_branch":"master","number":1,"head_sha":"e9872fa30caac57c69bfac8667e6c21254603df1"},"attrs":["hello"],"request_id":"r-1"}"#;
        let job = decode_job(body.as_bytes()).unwrap().unwrap();
        assert_eq!(
            delivery_key("x86_64-linux", &job, body.as_bytes()),
            "x86_64-linux request r-1"
        );
        assert_ne!(
            delivery_key("aarch64-linux", &job, body.as_bytes()),
            delivery_key("x86_64-linux", &job, body.as_bytes())
        );
        let anon = body.replace("r-1", "");
        let job = decode_job(anon.as_bytes()).unwrap().unwrap();
        let k = delivery_key("x86_64-linux", &job, anon.as_bytes());
        assert!(k.starts_with("x86_64-linux body "), "{k}");
        let other = anon.replace("hello", "world");
        assert_ne!(k, delivery_key("x86_64-linux", &job, other.as_bytes()));
    }

    #[test]
    fn clone_url_comes_from_config() {
        let body = r#"{"repo":{"owner":"NixOS","name":"nixpkgs","full_name":"NixOS/nixpkgs","clone_url":"https://github.com/NixOS/nixpkgs.git"},"pr":{"target_branch":"master","number":1,"head_sha":"e9872fa30caac57c69bfac8667e6c21254603df1"},"attrs":["hello"],"request_id":"r"}"#;
        let gh = crate::config::GithubConfig::default();
        let job = decode_job(body.as_bytes()).unwrap().unwrap();
        assert_eq!(check_origin(&gh, &job), Ok(()));
        for (from, to) in [
            (
                "https://github.com/NixOS/nixpkgs.git",
                "https://github.com/evil/nixpkgs.git",
            ),
            ("https://github.com/NixOS/nixpkgs.git", "file:///root/.ssh"),
            ("https://github.com/NixOS/nixpkgs.git", "/var/lib/airlock"),
            (
                "https://github.com/NixOS/nixpkgs.git",
                "ssh://git@github.com/NixOS/nixpkgs.git",
            ),
            (
                "https://github.com/NixOS/nixpkgs.git",
                "http://169.254.169.254/x",
            ),
            (
                "\"full_name\":\"NixOS/nixpkgs\"",
                "\"full_name\":\"NixOS/../x\"",
            ),
            ("\"full_name\":\"NixOS/nixpkgs\"", "\"full_name\":\"NixOS\""),
        ] {
            let j = decode_job(body.replace(from, to).as_bytes())
                .unwrap()
                .unwrap();
            assert!(
                matches!(check_origin(&gh, &j), Err(Poison::Refused(_))),
                "{to} accepted"
            );
        }
        let ghe = crate::config::GithubConfig {
            clone_url: "https://git.example.org/{full_name}".into(),
            ..Default::default()
        };
        let j = decode_job(
            body.replace(
                "https://github.com/NixOS/nixpkgs.git",
                "https://git.example.org/NixOS/nixpkgs",
            )
            .as_bytes(),
        )
        .unwrap()
        .unwrap();
        assert_eq!(check_origin(&ghe, &j), Ok(()));
    }

    #[test]
    fn redacts_password() {
        assert_eq!(redact("amqps://u:pw@host:5671/v"), "amqps://…@host:5671/v");
    }
}
