//! Being a builder of one queue-runner: check the version, join, ping,
//! take steps and aborts off the tunnel; when the tunnel ends, abort what
//! runs and join again, with backoff and a fresh machine id (the runner
//! keys machines by that id alone).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::client::{self, Client};
use super::proto::{self, builder_request, runner_request, BuilderRequest, JoinMessage};
use crate::config::Config;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Client(#[from] client::Error),
    #[error(
        "the queue-runner speaks {theirs}, this builder {ours} (hydra.version): refusing to join"
    )]
    Version { ours: String, theirs: String },
    #[error("the queue-runner ended the tunnel")]
    Ended,
    #[error("the queue-runner's join reply names machine {got}, this builder joined as {want}")]
    WrongMachine { got: String, want: String },
    #[error("the queue-runner uses presigned uploads, which airlock does not do; not joining it")]
    Presigned,
}
pub type Result<T> = std::result::Result<T, Error>;

/// What runs the steps: the scheduler in airlockd, a recorder in tests.
pub trait Steps: Send + Sync + 'static {
    /// A step arrived on the tunnel of machine `machine_id`; run it, and
    /// report through `client`.
    fn start(&self, step: proto::BuildMessage, machine_id: &str, client: &Client);
    /// The runner no longer wants this step: stop it, report nothing.
    fn abort(&self, build_id: &str);
    /// The tunnel ended: every running step is lost (the runner marks
    /// them aborted and retries them elsewhere).
    fn abort_all(&self);
    /// A tunnel is joined as `machine_id` (until the next `abort_all`).
    fn joined(&self, _machine_id: &str) {}
    /// Steps running now (for the pings' counts).
    fn running(&self) -> usize;
}

pub struct Session {
    cfg: Arc<Config>,
    steps: Arc<dyn Steps>,
}

/// A joined tunnel, as the rest of the daemon may want to see it.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Status {
    pub connected: bool,
    pub machine_id: String,
    pub server_version: String,
    pub last_error: String,
}

impl Session {
    pub fn new(cfg: Arc<Config>, steps: Arc<dyn Steps>) -> Session {
        Session { cfg, steps }
    }

    /// Run until `stop` says so: join, and after every loss join again.
    pub async fn run(self, stop: impl Fn() -> bool + Send + Sync) {
        let max = Duration::from_secs(self.cfg.hydra.reconnect_max_secs.max(1));
        let mut backoff = Duration::from_secs(1);
        while !stop() {
            let machine_id = uuid::Uuid::new_v4().to_string();
            let t0 = Instant::now();
            let r = self.once(&machine_id).await;
            self.steps.abort_all();
            if stop() {
                return;
            }
            // A session that lasted resets the backoff.
            if t0.elapsed() > max {
                backoff = Duration::from_secs(1);
            }
            match r {
                Ok(()) => return,
                Err(e @ Error::Version { .. }) | Err(e @ Error::Presigned) => {
                    warn!(error = %e, retry_in = ?max, "queue-runner refused");
                    tokio::time::sleep(max).await;
                }
                Err(e) => {
                    warn!(error = %crate::error::chain(&e), retry_in = ?backoff, machine_id, "queue-runner connection lost; joining again");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(max);
                }
            }
        }
    }

    /// One tunnel, from the version check to its end.
    pub async fn once(&self, machine_id: &str) -> Result<()> {
        let h = &self.cfg.hydra;
        let client = Client::connect(h).await?;
        let hostname = hostname();
        let v = client
            .check_version(proto::VersionCheckRequest {
                version: h.version.clone(),
                machine_id: machine_id.to_owned(),
                hostname: hostname.clone(),
                store_dir: h.store_dir.clone(),
            })
            .await?;
        if !v.compatible {
            return Err(Error::Version {
                ours: h.version.clone(),
                theirs: v.server_version,
            });
        }
        let (tx, rx) = mpsc::channel::<BuilderRequest>(16);
        tx.send(BuilderRequest {
            message: Some(builder_request::Message::Join(
                self.join(machine_id, hostname),
            )),
        })
        .await
        .expect("the receiver is alive");
        let mut inbound = client
            .open_tunnel(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?;
        // Pings keep the request stream open; it ends when this session
        // drops the sender (the pinger is aborted on every way out).
        let pinger = tokio::spawn(ping_loop(
            tx,
            machine_id.to_owned(),
            self.cfg.clone(),
            self.steps.clone(),
        ));
        let _stop_pings = AbortOnDrop(pinger);
        loop {
            let msg = match inbound.message().await {
                Ok(Some(m)) => m,
                Ok(None) => return Err(Error::Ended),
                Err(status) => {
                    return Err(client::Error::Rpc {
                        rpc: "OpenTunnel",
                        status,
                    }
                    .into())
                }
            };
            match msg.message {
                Some(runner_request::Message::Join(j)) => {
                    if j.machine_id != machine_id {
                        return Err(Error::WrongMachine {
                            got: j.machine_id,
                            want: machine_id.to_owned(),
                        });
                    }
                    self.steps.joined(machine_id);
                    info!(
                        endpoint = %h.endpoint,
                        machine_id,
                        server_version = %v.server_version,
                        max_concurrent_downloads = j.max_concurrent_downloads,
                        "joined the queue-runner"
                    );
                }
                Some(runner_request::Message::Ping(_)) => debug!("queue-runner ping"),
                Some(runner_request::Message::ConfigUpdate(c)) => {
                    info!(
                        max_concurrent_downloads = c.max_concurrent_downloads,
                        "queue-runner configuration updated"
                    );
                }
                Some(runner_request::Message::Build(b)) => {
                    if b.presigned_url_opts.is_some() {
                        return Err(Error::Presigned);
                    }
                    info!(build_id = %b.build_id, drv = %b.drv.as_ref().map(|d| d.path.as_str()).unwrap_or(""), "step received");
                    self.steps.start(b, machine_id, &client);
                }
                Some(runner_request::Message::Abort(a)) => {
                    info!(build_id = %a.build_id, "the queue-runner aborts the step");
                    self.steps.abort(&a.build_id);
                }
                None => debug!("an empty tunnel message"),
            }
        }
    }

    fn join(&self, machine_id: &str, hostname: String) -> JoinMessage {
        let cfg = &self.cfg;
        let h = &cfg.hydra;
        JoinMessage {
            machine_id: machine_id.to_owned(),
            systems: h.systems(&cfg.system),
            hostname,
            cpu_count: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
            bogomips: host::bogomips().unwrap_or(1.0),
            speed_factor: h.speed_factor,
            max_jobs: cfg.max_jobs as u32,
            build_dir_avail_threshold: 0.0,
            store_avail_threshold: 0.0,
            // Load and pressure never hold back dispatch: max_jobs does.
            load1_threshold: 100.0,
            cpu_psi_threshold: 100.0,
            mem_psi_threshold: 100.0,
            io_psi_threshold: None,
            total_mem: host::meminfo("MemTotal:").unwrap_or(0),
            supported_features: h.supported_features.clone(),
            mandatory_features: h.mandatory_features.clone(),
            cgroups: false,
            substituters: vec![],
            use_substitutes: false,
            nix_version: format!("airlock {}", env!("CARGO_PKG_VERSION")),
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn ping_loop(
    tx: mpsc::Sender<BuilderRequest>,
    machine_id: String,
    cfg: Arc<Config>,
    steps: Arc<dyn Steps>,
) {
    let every = Duration::from_secs(cfg.hydra.ping_secs.max(1));
    loop {
        let ping = host::ping(&machine_id, &cfg.state_dir);
        debug!(running = steps.running(), "ping");
        let m = BuilderRequest {
            message: Some(builder_request::Message::Ping(ping)),
        };
        if tx.send(m).await.is_err() {
            return;
        }
        tokio::time::sleep(every).await;
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "airlock".into())
}

/// What the pings report about this machine, from /proc and statvfs.
pub mod host {
    use super::proto::{PingMessage, Pressure, PressureState};
    use std::path::Path;

    /// A `/proc/meminfo` line's value, in bytes.
    pub fn meminfo(key: &str) -> Option<u64> {
        let text = std::fs::read_to_string("/proc/meminfo").ok()?;
        parse_meminfo(&text, key)
    }

    pub fn parse_meminfo(text: &str, key: &str) -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(key))?;
        let kib: u64 = line[key.len()..].split_whitespace().next()?.parse().ok()?;
        Some(kib * 1024)
    }

    pub fn bogomips() -> Option<f32> {
        let text = std::fs::read_to_string("/proc/cpuinfo").ok()?;
        text.lines()
            .find(|l| l.to_ascii_lowercase().starts_with("bogomips"))
            .and_then(|l| l.split(':').nth(1))
            .and_then(|v| v.trim().parse().ok())
    }

    /// `avg10=… avg60=… avg300=… total=…` of a PSI line.
    pub fn parse_pressure_line(line: &str) -> Pressure {
        let mut p = Pressure::default();
        for w in line.split_whitespace() {
            match w.split_once('=') {
                Some(("avg10", v)) => p.avg10 = v.parse().unwrap_or(0.0),
                Some(("avg60", v)) => p.avg60 = v.parse().unwrap_or(0.0),
                Some(("avg300", v)) => p.avg300 = v.parse().unwrap_or(0.0),
                Some(("total", v)) => p.total = v.parse().unwrap_or(0),
                _ => {}
            }
        }
        p
    }

    fn pressure(file: &str, kind: &str) -> Option<Pressure> {
        let text = std::fs::read_to_string(format!("/proc/pressure/{file}")).ok()?;
        text.lines()
            .find(|l| l.starts_with(kind))
            .map(parse_pressure_line)
    }

    fn free_percent(p: &Path) -> f64 {
        match nix::sys::statvfs::statvfs(p) {
            Ok(s) if s.blocks() > 0 => s.blocks_available() as f64 * 100.0 / s.blocks() as f64,
            _ => 0.0,
        }
    }

    /// A ping: load, memory in use, pressure, and the free space where the
    /// job disks and the quarantine live (`state_dir`).
    pub fn ping(machine_id: &str, state_dir: &Path) -> PingMessage {
        let load: Vec<f32> = std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .map(|v| v.parse().unwrap_or(0.0))
            .collect();
        let total = meminfo("MemTotal:").unwrap_or(0);
        let avail = meminfo("MemAvailable:").unwrap_or(0);
        let pressure = PressureState {
            cpu_some: pressure("cpu", "some"),
            mem_some: pressure("memory", "some"),
            mem_full: pressure("memory", "full"),
            io_some: pressure("io", "some"),
            io_full: pressure("io", "full"),
            irq_full: pressure("irq", "full"),
        };
        let free = free_percent(state_dir);
        PingMessage {
            machine_id: machine_id.to_owned(),
            load1: load.first().copied().unwrap_or(0.0),
            load5: load.get(1).copied().unwrap_or(0.0),
            load15: load.get(2).copied().unwrap_or(0.0),
            mem_usage: total.saturating_sub(avail),
            pressure: pressure.cpu_some.is_some().then_some(pressure),
            build_dir_free_percent: free,
            store_free_percent: free,
            current_substituting_path_count: 0,
            current_uploading_path_count: 0,
            current_downloading_path_count: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::host::*;

    #[test]
    fn host_figures_parse() {
        let m =
            "MemTotal:       16318412 kB\nMemFree:         1000 kB\nMemAvailable:    8000000 kB\n";
        assert_eq!(parse_meminfo(m, "MemTotal:"), Some(16318412 * 1024));
        assert_eq!(parse_meminfo(m, "MemAvailable:"), Some(8000000 * 1024));
        assert_eq!(parse_meminfo(m, "Nope:"), None);
        let p = parse_pressure_line("some avg10=1.50 avg60=0.25 avg300=0.00 total=12345");
        assert_eq!((p.avg10, p.avg60, p.total), (1.5, 0.25, 12345));
        let ping = ping("m", std::path::Path::new("/"));
        assert!(ping.mem_usage > 0 && ping.store_free_percent > 0.0);
    }
}
