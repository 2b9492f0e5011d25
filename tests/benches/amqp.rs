//! AMQP benchmarks against a real RabbitMQ node:
//! 1. intake/reporting throughput with a no-op executor (no VM): jobs/s and
//!    messages/s through airlock's consumer, scheduler, sink and publisher,
//!    with 1, 2, 4 and 8 builders (each its own connection, state and
//!    scheduler, in this process) on one queue;
//! 2. latency from a log line leaving the guest (its appearance in the VM's
//!    channel file) to its BuildLogMsg arriving at a consumer on the broker.
//!
//! Run: `cargo bench -p airlock-e2e --bench amqp` (root; needs rabbitmq-server,
//! and for part 2 QEMU and the guest image).

use airlock_e2e as common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use airlock::amqp::Amqp;
use airlock::config::Config;
use airlock::job::{JobRecord, JobResult, JobState, JobStore};
use airlock::ofborg::BuildStatus;
use airlock::runner::{LogSink, Runner};
use airlock::scheduler::{Executor, Scheduler};
use airlock::vm::qemu::Qemu;
use common::broker::{job_json, Broker, Probe};
use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;

const LINES: u64 = 20;

struct Noop {
    store: JobStore,
    sink: Arc<dyn LogSink>,
}

impl Executor for Noop {
    fn execute<'a>(&'a self, rec: &'a mut JobRecord) -> airlock::vm::BoxFuture<'a, ()> {
        Box::pin(async move {
            let attrs = rec.job.attrs.clone();
            self.sink.started(rec, &attrs, &[]);
            for n in 1..=LINES {
                self.sink.line(rec, n, &format!("building line {n}"));
            }
            rec.state = JobState::Done;
            rec.result = Some(JobResult {
                status: BuildStatus::Success,
                attempted_attrs: Some(attrs),
                skipped_attrs: Some(vec![]),
                output: (LINES - 9..=LINES)
                    .map(|n| format!("building line {n}"))
                    .collect(),
                quarantine: None,
                store_paths: vec![],
                export_error: None,
                silent: false,
                nix_step: None,
            });
            self.store.save(rec).unwrap();
            self.sink.finished(rec);
        })
    }
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// One in-process builder: its own state directory, identity, broker
/// connection and scheduler, with the no-op executor.
fn noop_builder(dir: &std::path::Path, url: &str, i: usize) -> (Arc<Amqp>, Arc<Scheduler>) {
    let mut cfg = Config {
        state_dir: dir.join(format!("builder-{i}")),
        identity: format!("bench-{i}").into(),
        max_jobs: 8,
        ..Config::default()
    };
    cfg.amqp.url = url.to_owned();
    // Jobs are taken only for the configured clone URL (check_origin).
    cfg.github.clone_url = "/nonexistent".into();
    let cfg = Arc::new(cfg);
    let (amqp, sink) = Amqp::new(cfg.clone());
    let store = JobStore::new(cfg.jobs_dir());
    let runner = Arc::new(Runner {
        github: None,
        supervisor: airlock::supervise::Supervisor::plain(),
        journal: None,
        cfg: cfg.clone(),
        backend: Arc::new(Qemu {
            binary: "unused".into(),
            machine: "q35".into(),
            accel: "tcg".into(),
            run_as: None,
            templates: None,
        }),
        store: store.clone(),
        sink: sink.clone(),
        network: None,
        substituter: None,
        control: Default::default(),
        attestor: None,
        kernel: Arc::new(airlock::vm::kernel::KernelChoice::new("", "/unused".as_ref()).0),
    });
    let daemon = Scheduler::start_with(runner, Arc::new(Noop { store, sink })).unwrap();
    (amqp, daemon)
}

/// `n` no-op jobs queued on `build-inputs-x86_64-linux`, then `builders`
/// builders started on it at once: jobs/s until every result arrived.
async fn throughput(broker: &Broker, n: usize, builders: usize) {
    let dir = tempfile::tempdir().unwrap();
    let mut p = Probe::setup(&broker.url()).await;
    // Queue the jobs before the builders connect: only their path is timed.
    let q = lapin::Connection::connect(&broker.url(), Default::default())
        .await
        .unwrap();
    let ch = q.create_channel().await.unwrap();
    ch.queue_declare(
        "build-inputs-x86_64-linux".into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let head = "e9872fa30caac57c69bfac8667e6c21254603df1";
    let run = format!("run{builders}-");
    for i in 0..n {
        let body = job_json(
            std::path::Path::new("/nonexistent"),
            head,
            &["hello"],
            &format!("{run}{i}"),
        );
        ch.basic_publish(
            "".into(),
            "build-inputs-x86_64-linux".into(),
            BasicPublishOptions::default(),
            &body,
            Default::default(),
        )
        .await
        .unwrap();
    }
    ch.wait_for_confirms().await.unwrap();
    let all: Vec<_> = (0..builders)
        .map(|i| noop_builder(dir.path(), &broker.url(), i))
        .collect();
    let t0 = Instant::now();
    for (amqp, daemon) in &all {
        tokio::spawn(amqp.clone().run(daemon.clone()));
    }
    let ours = |p: &Probe| {
        p.results
            .iter()
            .filter(|r| {
                r["request_id"]
                    .as_str()
                    .is_some_and(|id| id.starts_with(&run))
            })
            .count()
    };
    loop {
        p.poll().await;
        let done = ours(&p);
        if done >= n {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "only {done}/{n} results"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let secs = t0.elapsed().as_secs_f64();
    // Jobs each builder took: how evenly one queue spreads over builders.
    let per: Vec<usize> = all
        .iter()
        .map(|(_, d)| d.runner.store.list().0.len())
        .collect();
    // Per job: 1 in; out: BuildLogStart + LINES BuildLogMsg + 2 BuildResult.
    let msgs = n as f64 * (1.0 + 1.0 + LINES as f64 + 2.0);
    println!(
        "| no-op jobs through intake → scheduler → reporting, {builders} builder(s) on one queue | {n} jobs, {LINES} log lines each; jobs per builder {per:?} | {:.0} jobs/s | {:.0} messages/s |",
        n as f64 / secs,
        msgs / secs
    );
    for (amqp, daemon) in &all {
        daemon.drain();
        amqp.stop_consuming().await;
        amqp.shutdown(daemon, Duration::from_secs(5)).await;
    }
}

async fn latency(broker: &Broker) {
    let d = common::Daemon::builder()
        .host_network()
        .amqp(&broker.url(), "bench-latency")
        .start();
    let (repo, head) = common::fixture_repo(d.dir.path(), &[]);
    let p = Probe::setup(&broker.url()).await;
    let conn = lapin::Connection::connect(&broker.url(), Default::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let mut consumer = ch
        .basic_consume(
            "test-logs".into(),
            "bench".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let seen_on_broker: Arc<std::sync::Mutex<HashMap<String, Instant>>> = Default::default();
    let s2 = seen_on_broker.clone();
    tokio::spawn(async move {
        while let Some(Ok(m)) = consumer.next().await {
            let v: serde_json::Value = serde_json::from_slice(&m.data).unwrap();
            if let Some(o) = v["output"].as_str() {
                if o.starts_with("tick ") {
                    s2.lock()
                        .unwrap()
                        .entry(o.to_owned())
                        .or_insert_with(Instant::now);
                }
            }
        }
    });
    assert!(p.wait_for_queue("build-inputs-x86_64-linux", 60).await);
    p.publish(
        "",
        "build-inputs-x86_64-linux",
        &job_json(&repo, &head, &["ticker"], "latency"),
    )
    .await;
    // Watch the channel file the VM writes, every millisecond.
    let jobs = d.state().join("jobs");
    let mut seen_in_file: HashMap<String, Instant> = HashMap::new();
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(300) {
        if let Ok(rd) = std::fs::read_dir(&jobs) {
            for e in rd.flatten() {
                if let Ok(text) = std::fs::read_to_string(e.path().join("channel.log")) {
                    for l in text.lines() {
                        if let Some(t) = l.strip_prefix("L ") {
                            if t.starts_with("tick ") {
                                seen_in_file
                                    .entry(t.to_owned())
                                    .or_insert_with(Instant::now);
                            }
                        }
                    }
                }
            }
        }
        if seen_on_broker.lock().unwrap().len() >= 40 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let b = seen_on_broker.lock().unwrap().clone();
    let mut lat: Vec<f64> = seen_in_file
        .iter()
        .filter_map(|(k, t)| {
            b.get(k)
                .map(|bt| bt.saturating_duration_since(*t).as_secs_f64() * 1000.0)
        })
        .collect();
    assert!(
        lat.len() >= 30,
        "only {} lines matched:\n{}",
        lat.len(),
        d.log()
    );
    let n = lat.len();
    println!(
        "| guest log line → BuildLogMsg on the broker | {n} lines | median {:.0} ms | p99 {:.0} ms |",
        percentile(&mut lat, 0.5),
        percentile(&mut lat, 0.99)
    );
}

fn main() {
    if !Broker::available() {
        eprintln!("SKIPPED amqp bench: rabbitmq-server missing");
        return;
    }
    let broker = Broker::start();
    let rt = common::broker::rt();
    let n: usize = std::env::var("AMQP_BENCH_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    println!("| path | load | rate / median | messages / p99 |\n|---|---|---|---|");
    // Builders on one queue (issue 30: a community grows past one machine
    // by adding builders to one broker). AMQP_BENCH_BUILDERS=1,2 to choose.
    let counts: Vec<usize> = std::env::var("AMQP_BENCH_BUILDERS")
        .ok()
        .map(|v| v.split(',').filter_map(|c| c.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 2, 4, 8]);
    for k in counts {
        rt.block_on(throughput(&broker, n, k));
    }
    if common::prerequisites("amqp latency bench") {
        rt.block_on(latency(&broker));
    }
}
