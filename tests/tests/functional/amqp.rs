//! ofborg compatibility over a real RabbitMQ: airlockd consumes BuildJobs from
//! `build-inputs-x86_64-linux` and reports like one of ofborg's builders.

use airlock_e2e as common;

use common::broker::{job_json, rt, settle, Broker, Probe};
use common::*;

fn prerequisites_amqp(test: &str) -> bool {
    if !prerequisites(test) {
        return false;
    }
    Broker::available() || ready_or_skip(test, &["rabbitmq-server".into()])
}

const QUEUE: &str = "build-inputs-x86_64-linux";

/// A probe on the broker, once airlockd (`d`) has declared its queue.
async fn probe_when_ready(url: &str, d: &Daemon) -> Probe {
    let p = Probe::setup(url).await;
    assert!(
        p.wait_for_queue(QUEUE, 60).await,
        "airlockd never declared {QUEUE}:\n{}",
        d.log()
    );
    p
}

/// Poll until a job's `BuildLogStart` (with its attempted attrs) arrived.
async fn until_build_started(p: &mut Probe, d: &Daemon) {
    assert!(
        p.until(300, |p| p
            .logs
            .iter()
            .any(|m| m["attempted_attrs"].is_array()))
            .await,
        "{}",
        d.log()
    );
}

#[test]
fn job_from_broker_is_built_and_reported_like_ofborg() {
    if !prerequisites_amqp("job_from_broker_is_built_and_reported_like_ofborg") {
        return;
    }
    let broker = Broker::start();
    let d = Daemon::builder()
        .host_network()
        .amqp(&broker.url(), "airlock-test-1")
        .with(|c| {
            c.sponsor.name = "Example Builders".into();
            c.sponsor.url = "https://example.org/builders".into();
        })
        .start();
    let (repo, head) = fixture_repo(d.dir.path(), &[]);
    rt().block_on(async {
        // Wait for airlockd to declare its queue.
        let mut p = probe_when_ready(&broker.url(), &d).await;
        assert!(p.until(60, |_| true).await);

        // 1. A poison message goes to the dead-letter queue, with the reason.
        p.publish("", QUEUE, b"{\"this is\": \"not a BuildJob\"}")
            .await;
        // 1b. A job whose clone_url is not the configured one (a fork with a
        // malicious target branch, a local path, ssh with root's keys):
        // refused and dead-lettered, never fetched.
        let evil = String::from_utf8(job_json(&repo, &head, &["chain"], "evil-request"))
            .unwrap()
            .replace(&repo.display().to_string(), "file:///root/.ssh");
        p.publish("", QUEUE, evil.as_bytes()).await;
        // 2. A job with no attrs: acked, nothing published (ofborg's silent case).
        p.publish("", QUEUE, &job_json(&repo, &head, &[], "silent-request"))
            .await;
        // 3. A real job.
        let req = uuid::Uuid::new_v4().to_string();
        p.publish(
            "",
            QUEUE,
            &job_json(&repo, &head, &["chain", "broken"], &req),
        )
        .await;

        assert!(
            p.until(600, |p| p.results_for(&req).len() == 1
                && p.logs.iter().any(|m| m["request_id"] == req.as_str()))
                .await,
            "no result; daemon log:\n{}",
            d.log()
        );
        let r = p.results_for(&req)[0].clone();
        assert_eq!(r["tag"], "V1");
        assert_eq!(r["status"], "Success", "{r:#}");
        assert_eq!(r["system"], "x86_64-linux");
        assert_eq!(r["repo"]["full_name"], "airlock/fixture");
        assert_eq!(r["pr"]["number"], 42);
        assert_eq!(r["pr"]["head_sha"], head.as_str());
        assert_eq!(r["attempted_attrs"], serde_json::json!(["chain"]));
        assert_eq!(r["skipped_attrs"], serde_json::json!(["broken"]));
        // The builder's sponsor is credited in the posted result, last.
        let output = r["output"].as_array().unwrap();
        assert_eq!(
            output.last().unwrap(),
            "These build results were contributed by: Example Builders \u{2013} https://example.org/builders",
            "{r:#}"
        );
        let attempt = r["attempt_id"].as_str().unwrap().to_owned();

        // The logs exchange got: BuildLogStart, every line in order, the result.
        let msgs = p.logs_for_attempt(&attempt);
        let first = msgs[0];
        assert_eq!(first["identity"], "airlock-test-1");
        assert_eq!(first["attempted_attrs"], serde_json::json!(["chain"]));
        assert_eq!(first["skipped_attrs"], serde_json::json!(["broken"]));
        assert!(first.get("line_number").is_none());
        let lines: Vec<&serde_json::Value> = msgs
            .iter()
            .copied()
            .filter(|m| m.get("line_number").is_some())
            .collect();
        assert!(lines.len() > 5, "{msgs:#?}");
        for (i, l) in lines.iter().enumerate() {
            assert_eq!(
                l["line_number"],
                (i + 1) as u64,
                "line numbers 1, 2, 3, … in order"
            );
        }
        assert_eq!(
            lines[0]["output"],
            "Cannot nix-instantiate `broken` because:"
        );
        let texts: Vec<&str> = lines
            .iter()
            .map(|l| l["output"].as_str().unwrap())
            .collect();
        let tail: Vec<&str> = texts[texts.len().saturating_sub(10)..].to_vec();
        let output: Vec<&str> = r["output"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(
            output[..output.len() - 1],
            tail,
            "result output = last 10 log lines, then the contribution line"
        );
        assert_eq!(
            msgs.last().unwrap()["tag"],
            "V1",
            "the result also goes to logs, last"
        );
        assert_eq!(p.starts_for_attempt(&attempt), 1);

        // Nothing for the silent job; the poison message is dead-lettered.
        assert!(p.results_for("silent-request").is_empty());
        let (body, headers) = p
            .get_one("airlock-dead-letters")
            .await
            .expect("dead-lettered message");
        assert_eq!(body, b"{\"this is\": \"not a BuildJob\"}");
        let headers = headers.expect("headers");
        let reason = match headers.inner().get("x-airlock-reason") {
            Some(lapin::types::AMQPValue::LongString(s)) => {
                String::from_utf8_lossy(s.as_bytes()).into_owned()
            }
            other => panic!("no reason header: {other:?}"),
        };
        assert!(
            reason.starts_with("not a BuildJob: missing field `repo`"),
            "{reason}"
        );
        let (body, headers) = p
            .get_one("airlock-dead-letters")
            .await
            .expect("the refused job is dead-lettered");
        assert_eq!(body, evil.as_bytes());
        let reason = match headers.expect("headers").inner().get("x-airlock-reason") {
            Some(lapin::types::AMQPValue::LongString(s)) => {
                String::from_utf8_lossy(s.as_bytes()).into_owned()
            }
            other => panic!("no reason header: {other:?}"),
        };
        assert!(
            reason.starts_with("refused BuildJob: clone_url \"file:///root/.ssh\""),
            "{reason}"
        );
        assert!(p.results_for("evil-request").is_empty());
        // Everything was acked.
        let t0 = std::time::Instant::now();
        while p.queue_len(QUEUE).await != Some(0) {
            assert!(t0.elapsed().as_secs() < 30, "jobs left in the queue");
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    });
    assert!(d.log().contains("moved to the dead-letter queue"));
}

#[test]
fn kill9_mid_job_redelivers_and_reports_once() {
    if !prerequisites_amqp("kill9_mid_job_redelivers_and_reports_once") {
        return;
    }
    let broker = Broker::start();
    let mut d = Daemon::builder()
        .host_network()
        .amqp(&broker.url(), "airlock-test-k")
        .start();
    let (repo, head) = fixture_repo(d.dir.path(), &[]);
    let req = uuid::Uuid::new_v4().to_string();
    rt().block_on(async {
        let mut p = probe_when_ready(&broker.url(), &d).await;
        p.publish("", QUEUE, &job_json(&repo, &head, &["chain"], &req))
            .await;
        // Kill the daemon once the VM is running the job.
        until_build_started(&mut p, &d).await;
        d.kill9();
        d.spawn();
        assert!(
            p.until(600, |p| !p.results_for(&req).is_empty()).await,
            "{}",
            d.log()
        );
        settle(&mut p, &broker, &d, 120, "kill -9").await;
        let rs = p.results_for(&req);
        assert_eq!(rs.len(), 1, "exactly one BuildResult: {rs:#?}");
        assert_eq!(rs[0]["status"], "Success");
    });
    assert!(
        d.log().contains("broker job was interrupted by a restart"),
        "{}",
        d.log()
    );
}

#[test]
fn broker_restart_mid_job_still_delivers_the_result() {
    if !prerequisites_amqp("broker_restart_mid_job_still_delivers_the_result") {
        return;
    }
    let broker = Broker::start();
    let d = Daemon::builder()
        .host_network()
        .amqp(&broker.url(), "airlock-test-r")
        .with(|c| c.amqp.reconnect_max_secs = 2)
        .start();
    let (repo, head) = fixture_repo(d.dir.path(), &[]);
    let req = uuid::Uuid::new_v4().to_string();
    rt().block_on(async {
        let mut p = probe_when_ready(&broker.url(), &d).await;
        p.publish("", QUEUE, &job_json(&repo, &head, &["chain"], &req))
            .await;
        until_build_started(&mut p, &d).await;
        broker.stop();
        broker.boot();
        assert!(
            p.until(600, |p| !p.results_for(&req).is_empty()).await,
            "{}",
            d.log()
        );
        settle(&mut p, &broker, &d, 120, "broker restart").await;
        let rs = p.results_for(&req);
        assert_eq!(rs.len(), 1, "exactly one BuildResult: {rs:#?}");
        assert_eq!(rs[0]["status"], "Success");
        let t0 = std::time::Instant::now();
        while p.queue_len(QUEUE).await != Some(0) {
            assert!(
                t0.elapsed().as_secs() < 60,
                "the job was never acked:\n{}",
                d.log()
            );
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
    });
    assert!(d.log().contains("broker connection lost"));
}

#[test]
fn two_builders_share_one_queue() {
    if !prerequisites_amqp("two_builders_share_one_queue") {
        return;
    }
    let broker = Broker::start();
    let src = tempfile::tempdir().unwrap();
    let (repo, head) = fixture_repo(src.path(), &[]);
    let gh = format!("[github]\nclone_url = \"{}\"\n", repo.display());
    let a = Daemon::builder()
        .host_network()
        .amqp(&broker.url(), "airlock-a")
        .toml(&gh)
        .start();
    let b = Daemon::builder()
        .host_network()
        .amqp(&broker.url(), "airlock-b")
        .toml(&gh)
        .start();
    let reqs: Vec<String> = (0..4).map(|_| uuid::Uuid::new_v4().to_string()).collect();
    rt().block_on(async {
        let mut p = probe_when_ready(&broker.url(), &a).await;
        for r in &reqs {
            p.publish("", QUEUE, &job_json(&repo, &head, &["leaf"], r))
                .await;
        }
        assert!(
            p.until(900, |p| reqs.iter().all(|r| !p.results_for(r).is_empty()))
                .await,
            "A:\n{}\nB:\n{}",
            a.log(),
            b.log()
        );
        settle(&mut p, &broker, &a, 120, "builder A").await;
        settle(&mut p, &broker, &b, 120, "builder B").await;
        let mut by = std::collections::BTreeMap::new();
        for r in &reqs {
            let rs = p.results_for(r);
            assert_eq!(rs.len(), 1, "job {r} reported {} times", rs.len());
            let attempt = rs[0]["attempt_id"].as_str().unwrap();
            let start = p
                .logs_for_attempt(attempt)
                .into_iter()
                .find(|m| m.get("identity").is_some())
                .unwrap();
            *by.entry(start["identity"].as_str().unwrap().to_owned())
                .or_insert(0) += 1;
        }
        assert_eq!(by.len(), 2, "both builders took work: {by:?}");
    });
}

#[test]
fn sigterm_drains_running_jobs_and_leaves_the_rest_to_the_broker() {
    if !prerequisites_amqp("sigterm_drains_running_jobs_and_leaves_the_rest_to_the_broker") {
        return;
    }
    let broker = Broker::start();
    let mut d = Daemon::builder()
        .host_network()
        .amqp(&broker.url(), "airlock-test-t")
        .start();
    let (repo, head) = fixture_repo(d.dir.path(), &[]);
    let first = uuid::Uuid::new_v4().to_string();
    let second = uuid::Uuid::new_v4().to_string();
    rt().block_on(async {
        let mut p = probe_when_ready(&broker.url(), &d).await;
        p.publish("", QUEUE, &job_json(&repo, &head, &["chain"], &first))
            .await;
        p.publish("", QUEUE, &job_json(&repo, &head, &["leaf"], &second))
            .await;
        until_build_started(&mut p, &d).await;
        // SIGTERM while the first job runs: it finishes and reports, the
        // second is never started and goes back to the queue.
        assert!(
            d.terminate(300),
            "airlockd did not exit after draining:\n{}",
            d.log()
        );
        p.poll().await;
        assert_eq!(
            p.results_for(&first).len(),
            1,
            "the running job finished and reported:\n{}",
            d.log()
        );
        assert!(p.results_for(&second).is_empty());
        assert_eq!(
            p.queue_len(QUEUE).await,
            Some(1),
            "the unstarted job is back in the queue:\n{}",
            d.log()
        );
    });
    assert!(d.log().contains("stopped consuming from the broker"));
}

/// The two faults a broker can inflict on a builder.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// The broker restarts (unacked deliveries come back, redelivered).
    BrokerRestart,
    /// The builder's connection and channels are closed under it.
    LostConnection,
}

/// Run one job; hold airlockd at fault point `point`, inject `fault`, let it
/// go on. Then: exactly one BuildResult, one BuildLogStart for its attempt,
/// the message gone from the queue (ready and unacked), and every job record
/// of the request but one dropped.
fn one_result_despite(point: &str, faults: &[Fault]) {
    let test = format!("one_result_despite_{point}");
    if !prerequisites_amqp(&test) {
        return;
    }
    let broker = Broker::start();
    let d = Daemon::builder()
        .host_network()
        .amqp(&broker.url(), "airlock-test-f")
        .with(|c| c.amqp.reconnect_max_secs = 1)
        .env("AIRLOCK_FAULT_PAUSE", point)
        .start();
    let (repo, head) = fixture_repo(d.dir.path(), &[]);
    rt().block_on(async {
        let mut p = probe_when_ready(&broker.url(), &d).await;
        for fault in faults {
            let req = uuid::Uuid::new_v4().to_string();
            p.publish("", QUEUE, &job_json(&repo, &head, &["leaf"], &req))
                .await;
            let marker = d.wait_fault(point, 600);
            let connects = d.log().matches("consuming from the broker").count();
            match fault {
                Fault::BrokerRestart => {
                    broker.stop();
                    broker.boot();
                }
                Fault::LostConnection => broker.close_connections(),
            }
            // The builder is back on the broker before it goes on, so the
            // rest of the job meets the new connection.
            assert!(
                p.until(60, |_| d.log().matches("consuming from the broker").count()
                    > connects)
                    .await,
                "no reconnect:\n{}",
                d.log()
            );
            std::fs::remove_file(&marker).unwrap();
            assert!(
                p.until(600, |p| !p.results_for(&req).is_empty()).await,
                "no result after {fault:?} at {point}:\n{}",
                d.log()
            );
            // Settled: the message is gone (acked) and no job is running,
            // so no further result can come.
            settle(&mut p, &broker, &d, 120, &format!("{fault:?} at {point}")).await;
            let rs = p.results_for(&req);
            assert_eq!(
                rs.len(),
                1,
                "{fault:?} at {point}: one BuildResult: {rs:#?}"
            );
            assert_eq!(rs[0]["status"], "Success");
            let attempt = rs[0]["attempt_id"].as_str().unwrap().to_owned();
            assert_eq!(
                p.starts_for_attempt(&attempt),
                1,
                "{fault:?} at {point}: one BuildLogStart"
            );
            let live: Vec<_> = d
                .jobs()
                .into_iter()
                .filter(|j| j["job"]["request_id"] == req.as_str())
                .filter(|j| j["amqp"]["report"] != "dropped")
                .collect();
            assert_eq!(live.len(), 1, "{fault:?} at {point}: one job: {live:#?}");
        }
    });
}

const BOTH: &[Fault] = &[Fault::BrokerRestart, Fault::LostConnection];

#[test]
fn one_result_despite_faults_before_build() {
    one_result_despite("before-build", BOTH);
}

#[test]
fn one_result_despite_faults_mid_build() {
    one_result_despite("mid-build", BOTH);
}

#[test]
fn one_result_despite_faults_after_publish() {
    one_result_despite("after-publish", BOTH);
}

#[test]
fn one_result_despite_faults_after_ack() {
    one_result_despite("after-ack", BOTH);
}

/// kill -9 while a finished job's result is recorded but not yet published:
/// after the restart the result goes out once, and its attempt has one
/// `BuildLogStart` (the one sent during the build), not a second.
#[test]
fn restart_with_unpublished_result_sends_one_start() {
    if !prerequisites_amqp("restart_with_unpublished_result_sends_one_start") {
        return;
    }
    let broker = Broker::start();
    let mut d = Daemon::builder()
        .host_network()
        .amqp(&broker.url(), "airlock-test-s")
        .env("AIRLOCK_FAULT_PAUSE", "before-publish")
        .start();
    let (repo, head) = fixture_repo(d.dir.path(), &[]);
    let req = uuid::Uuid::new_v4().to_string();
    rt().block_on(async {
        let mut p = probe_when_ready(&broker.url(), &d).await;
        p.publish("", QUEUE, &job_json(&repo, &head, &["leaf"], &req))
            .await;
        let marker = d.wait_fault("before-publish", 600);
        d.kill9();
        std::fs::remove_file(&marker).unwrap();
        d.env.clear();
        d.spawn();
        assert!(
            p.until(300, |p| !p.results_for(&req).is_empty()).await,
            "{}",
            d.log()
        );
        settle(&mut p, &broker, &d, 120, "kill -9 before publish").await;
        let rs = p.results_for(&req);
        assert_eq!(rs.len(), 1, "one BuildResult: {rs:#?}");
        let attempt = rs[0]["attempt_id"].as_str().unwrap().to_owned();
        assert_eq!(p.starts_for_attempt(&attempt), 1, "one BuildLogStart");
    });
}
