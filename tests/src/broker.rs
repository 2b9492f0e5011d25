//! A private RabbitMQ node per test: own node name, port and data dir, on
//! 127.0.0.1 only. Started and stopped with the real rabbitmq-server.

use super::free_port;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};

pub struct Broker {
    pub dir: tempfile::TempDir,
    pub port: u16,
    /// Erlang distribution port (must differ from `port`).
    pub dist_port: u16,
    pub node: String,
}

impl Broker {
    pub fn available() -> bool {
        Command::new("sh")
            .args(["-c", "command -v rabbitmq-server && command -v rabbitmqctl"])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    pub fn start() -> Broker {
        let dir = tempfile::Builder::new()
            .prefix("airlock-rmq-")
            .tempdir()
            .unwrap();
        let port = free_port();
        let mut dist_port = free_port();
        while dist_port == port {
            dist_port = free_port();
        }
        let node = format!("airlock-test-{port}@localhost");
        std::fs::write(dir.path().join("enabled_plugins"), "[].\n").unwrap();
        // The Debian wrapper runs the node as user rabbitmq.
        Command::new("chown")
            .args(["-R", "rabbitmq:rabbitmq"])
            .arg(dir.path())
            .status()
            .unwrap();
        let b = Broker {
            dir,
            port,
            dist_port,
            node,
        };
        b.boot();
        b
    }

    fn env(&self, c: &mut Command) {
        let d = self.dir.path();
        c.env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_MNESIA_BASE", d.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", d.join("log"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d.join("enabled_plugins"))
            .env("RABBITMQ_PID_FILE", d.join("pid"));
    }

    pub fn boot(&self) {
        let mut c = Command::new("rabbitmq-server");
        c.arg("-detached")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        self.env(&mut c);
        assert!(
            c.status().unwrap().success(),
            "rabbitmq-server -detached failed"
        );
        let t0 = Instant::now();
        loop {
            let ok = Command::new("rabbitmqctl")
                .args(["-n", &self.node, "-q", "await_startup", "--timeout", "30"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(120),
                "RabbitMQ did not start; logs in {:?}",
                self.dir.path().join("log")
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    pub fn stop(&self) {
        let _ = Command::new("rabbitmqctl")
            .args(["-n", &self.node, "shutdown"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    /// Messages in queue `q`, ready and unacked together (None: no such
    /// queue, or the broker does not answer).
    pub fn messages(&self, q: &str) -> Option<u64> {
        let out = Command::new("rabbitmqctl")
            .args(["-n", &self.node, "-q", "list_queues", "name", "messages"])
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
            let mut it = l.split_whitespace();
            (it.next() == Some(q))
                .then(|| it.next()?.parse().ok())
                .flatten()
        })
    }

    /// Close every client connection (the builder loses its connection and
    /// channels; the broker keeps running).
    pub fn close_connections(&self) {
        let st = Command::new("rabbitmqctl")
            .args([
                "-n",
                &self.node,
                "-q",
                "close_all_connections",
                "airlock test fault",
            ])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success(), "rabbitmqctl close_all_connections failed");
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A test-side client: declares the exchanges ofborg's central side declares,
/// durable queues bound to them, publishes jobs and collects what builders send.
pub struct Probe {
    pub url: String,
    pub logs: Vec<serde_json::Value>,
    pub results: Vec<serde_json::Value>,
}

pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

impl Probe {
    pub async fn setup(url: &str) -> Probe {
        let conn = Connection::connect(url, ConnectionProperties::default())
            .await
            .unwrap();
        let ch = conn.create_channel().await.unwrap();
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        ch.exchange_declare(
            "logs".into(),
            ExchangeKind::Topic,
            durable,
            FieldTable::default(),
        )
        .await
        .unwrap();
        ch.exchange_declare(
            "build-results".into(),
            ExchangeKind::Fanout,
            durable,
            FieldTable::default(),
        )
        .await
        .unwrap();
        let q = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        for (queue, ex, key) in [
            ("test-logs", "logs", "#"),
            ("test-results", "build-results", ""),
        ] {
            ch.queue_declare(queue.into(), q, FieldTable::default())
                .await
                .unwrap();
            ch.queue_bind(
                queue.into(),
                ex.into(),
                key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        }
        let _ = conn.close(200, "bye".into()).await;
        Probe {
            url: url.to_owned(),
            logs: vec![],
            results: vec![],
        }
    }

    async fn with_channel<T>(&self, f: impl AsyncFnOnce(&lapin::Channel) -> T) -> Option<T> {
        let conn = Connection::connect(&self.url, ConnectionProperties::default())
            .await
            .ok()?;
        let ch = conn.create_channel().await.ok()?;
        let r = f(&ch).await;
        let _ = conn.close(200, "bye".into()).await;
        Some(r)
    }

    pub async fn publish(&self, exchange: &str, key: &str, body: &[u8]) {
        let body = body.to_vec();
        self.with_channel(async |ch| {
            ch.confirm_select(ConfirmSelectOptions::default())
                .await
                .unwrap();
            ch.basic_publish(
                exchange.into(),
                key.into(),
                BasicPublishOptions::default(),
                &body,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        })
        .await
        .expect("publish");
    }

    /// Drain what arrived on the test queues (tolerates a broker that is down).
    pub async fn poll(&mut self) {
        let got = self
            .with_channel(async |ch| {
                let mut out = (vec![], vec![]);
                for (q, dst) in [("test-logs", 0), ("test-results", 1)] {
                    // Bounded: a daemon still publishing cannot keep it going.
                    for _ in 0..100_000 {
                        let Ok(Some(m)) = ch
                            .basic_get(q.into(), BasicGetOptions { no_ack: true })
                            .await
                        else {
                            break;
                        };
                        let v: serde_json::Value =
                            serde_json::from_slice(&m.delivery.data).unwrap();
                        if dst == 0 {
                            out.0.push(v)
                        } else {
                            out.1.push(v)
                        }
                    }
                }
                out
            })
            .await;
        if let Some((l, r)) = got {
            self.logs.extend(l);
            self.results.extend(r);
        }
    }

    /// Poll until `pred` holds or `secs` pass.
    pub async fn until(&mut self, secs: u64, pred: impl Fn(&Probe) -> bool) -> bool {
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(secs) {
            self.poll().await;
            if pred(self) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        false
    }

    pub async fn queue_len(&self, q: &str) -> Option<u32> {
        self.with_channel(async |ch| {
            ch.queue_declare(
                q.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .ok()
            .map(|q| q.message_count())
        })
        .await
        .flatten()
    }

    /// Wait (up to `secs`) until queue `q` exists, i.e. a builder declared it.
    pub async fn wait_for_queue(&self, q: &str, secs: u64) -> bool {
        let t0 = Instant::now();
        while self.queue_len(q).await.is_none() {
            if t0.elapsed() > Duration::from_secs(secs) {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        true
    }

    pub async fn get_one(&self, q: &str) -> Option<(Vec<u8>, Option<FieldTable>)> {
        self.with_channel(async |ch| {
            ch.basic_get(q.into(), BasicGetOptions { no_ack: true })
                .await
                .ok()
                .flatten()
                .map(|m| {
                    (
                        m.delivery.data.clone(),
                        m.delivery.properties.headers().clone(),
                    )
                })
        })
        .await
        .flatten()
    }

    pub fn results_for(&self, request_id: &str) -> Vec<&serde_json::Value> {
        self.results
            .iter()
            .filter(|r| r["request_id"] == request_id)
            .collect()
    }

    /// `BuildLogStart` messages of an attempt (neither a log line nor a result).
    pub fn starts_for_attempt(&self, attempt: &str) -> usize {
        self.logs_for_attempt(attempt)
            .iter()
            .filter(|m| m.get("line_number").is_none() && m.get("tag").is_none())
            .count()
    }

    pub fn logs_for_attempt(&self, attempt: &str) -> Vec<&serde_json::Value> {
        self.logs
            .iter()
            .filter(|m| m["attempt_id"] == attempt)
            .collect()
    }
}

pub fn job_json(repo: &std::path::Path, head: &str, attrs: &[&str], request_id: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "repo": {"owner": "airlock", "name": "fixture", "full_name": "airlock/fixture", "clone_url": repo.display().to_string()},
        "pr": {"target_branch": "master", "number": 42, "head_sha": head},
        "subset": "Nixpkgs",
        "attrs": attrs,
        "request_id": request_id,
        "logs": ["logs", "airlock/fixture.42"],
        "statusreport": ["build-results", null]
    }))
    .unwrap()
}

pub fn data_dir(b: &Broker) -> PathBuf {
    b.dir.path().to_path_buf()
}

/// Wait (up to `secs`) until queue `build-inputs-x86_64-linux` is empty,
/// unacked messages included, and no job of `d` is queued or running: from
/// then on no further result can come. Then collect what arrived.
pub async fn settle(p: &mut Probe, broker: &Broker, d: &super::Daemon, secs: u64, what: &str) {
    const QUEUE: &str = "build-inputs-x86_64-linux";
    let t0 = Instant::now();
    loop {
        let gone = broker.messages(QUEUE) == Some(0);
        let idle = d.jobs().iter().all(|j| j["state"] == "done");
        if gone && idle {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(secs),
            "{what}: message left in the queue ({:?}) or a job still running:\n{}",
            broker.messages(QUEUE),
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    p.poll().await;
}
