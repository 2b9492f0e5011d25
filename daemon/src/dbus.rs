//! The D-Bus admin API (docs/dbus.md): name `org.airlock.Airlock1`, object
//! `/org/airlock/Airlock1`, interface `org.airlock.Airlock1`. Who may call
//! it is the bus's policy (`daemon/dbus/org.airlock.Airlock1.conf`: root
//! and one group), not this code. Job records and release status are
//! returned as JSON strings (the same documents `airlockctl --json`
//! prints); job changes are the `JobChanged` signal.
//!
//! The same interface is also served peer-to-peer (no bus daemon) on
//! airlockd's unix socket (`socket`, [`bind_p2p`], [`serve_listener`]): that is how
//! `airlockctl` talks to airlockd by default, and where local jobs are
//! submitted. `airlockctl --bus system` uses the system bus instead. Either
//! way every operation is one method of this interface.

use std::path::Path;
use std::sync::Arc;

use tracing::{info, warn};
use zbus::fdo;
use zbus::object_server::SignalEmitter;

use crate::job::JobState;
use crate::scheduler::Scheduler;

pub const NAME: &str = "org.airlock.Airlock1";
pub const PATH: &str = "/org/airlock/Airlock1";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot connect to the D-Bus bus {address:?}")]
    Connect {
        address: String,
        #[source]
        source: Box<zbus::Error>,
    },
    #[error("cannot serve the API on {0}")]
    Listen(String, #[source] std::io::Error),
}

/// Bind the admin and local-intake API on `socket` now (it accepts
/// connections when this returns) and serve it on the runtime: this
/// module's D-Bus interface, peer to peer. airlockd does this before
/// `READY=1`.
pub fn bind_and_serve(
    d: &Arc<Scheduler>,
    socket: &Path,
) -> Result<tokio::task::JoinHandle<Result<(), Error>>, Error> {
    let l = bind_p2p(socket).map_err(|e| Error::Listen(socket.display().to_string(), e))?;
    let d = d.clone();
    let shown = socket.display().to_string();
    Ok(tokio::spawn(async move {
        serve_listener(d, l)
            .await
            .map_err(|e| Error::Listen(shown, e))
    }))
}

pub struct Admin {
    d: Arc<Scheduler>,
    /// May this caller sign (`Release`) and delete (`Gc`)? On a bus the
    /// bus policy decides (daemon/dbus/org.airlock.Airlock1.conf: root
    /// only) and this is true; on the peer-to-peer socket, which has no
    /// policy of its own, only a root peer (SO_PEERCRED) may, so the
    /// socket's group (airlock-admin) gets the same read/operate subset
    /// there as on the system bus.
    may_release: bool,
}

impl Admin {
    fn attestor(&self) -> fdo::Result<std::sync::Arc<crate::attest::store::Attestor>> {
        self.d.runner.attestor.clone().ok_or_else(|| {
            fdo::Error::Failed("this airlockd signs and keeps no attestations".into())
        })
    }

    fn check_release(&self, method: &str) -> fdo::Result<()> {
        if self.may_release {
            Ok(())
        } else {
            Err(fdo::Error::AccessDenied(format!(
                "{method} is root's only (it signs or deletes outputs); \
                 group airlock-admin may read and operate"
            )))
        }
    }
}

/// Largest job document `SubmitJob` takes.
const MAX_JOB_JSON: usize = 1 << 20;
/// Largest attestation text `ImportAttestations` takes.
const MAX_IMPORT: usize = 64 << 20;
/// Most build log bytes one `ReadLog` returns.
const MAX_LOG_CHUNK: u64 = 1 << 20;

fn state_word(s: JobState) -> String {
    s.as_str().to_owned()
}

/// A refusal of the scheduler as D-Bus reports it: `InvalidArgs` for the
/// caller's mistake (a bad job, an unknown or malformed id), `Failed` for
/// everything else.
fn api_err(e: crate::scheduler::ApiError) -> fdo::Error {
    if e.is_callers() {
        fdo::Error::InvalidArgs(e.to_string())
    } else {
        fdo::Error::Failed(e.to_string())
    }
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("serialises")
}

#[zbus::interface(name = "org.airlock.Airlock1")]
impl Admin {
    /// Every job record, oldest first (a JSON array).
    async fn list_jobs(&self) -> String {
        json(&self.d.runner.store.list().0)
    }

    /// One job record (JSON).
    async fn show_job(&self, id: String) -> fdo::Result<String> {
        self.d
            .runner
            .store
            .load(&id)
            .map(|r| json(&r))
            .map_err(|e| fdo::Error::InvalidArgs(e.to_string()))
    }

    /// Queue a local job: `job` is an ofborg `BuildJob` (JSON); returns
    /// the new job's id.
    async fn submit_job(&self, job: String) -> fdo::Result<String> {
        if job.len() > MAX_JOB_JSON {
            return Err(fdo::Error::InvalidArgs("job too large".into()));
        }
        let job: crate::ofborg::BuildJob = serde_json::from_str(&job)
            .map_err(|e| fdo::Error::InvalidArgs(format!("bad job: {e}")))?;
        self.d.submit(job).map_err(api_err)
    }

    /// Wait up to `timeout_secs` (at most 20, under a bus's reply timeout)
    /// for a job to be done: its record (JSON), or `""` if it still runs.
    async fn wait_job(&self, id: String, timeout_secs: u32) -> fdo::Result<String> {
        let t0 = std::time::Instant::now();
        let limit = std::time::Duration::from_secs(u64::from(timeout_secs.min(20)));
        loop {
            match self.d.runner.store.load(&id) {
                Ok(r) if r.state.is_terminal() => return Ok(json(&r)),
                Ok(_) if t0.elapsed() >= limit => return Ok(String::new()),
                Ok(_) => tokio::time::sleep(std::time::Duration::from_millis(200)).await,
                Err(e) => return Err(fdo::Error::InvalidArgs(e.to_string())),
            }
        }
    }

    /// The job's build log from byte `offset`: (text, the next offset,
    /// whether the job is done). At most 1 MiB per call, cut at a line end
    /// when there is one; call again with the next offset to follow.
    async fn read_log(&self, id: String, offset: u64) -> fdo::Result<(String, u64, bool)> {
        let rec = self
            .d
            .runner
            .store
            .load(&id)
            .map_err(|e| fdo::Error::InvalidArgs(e.to_string()))?;
        let done = rec.state.is_terminal();
        let path = self.d.runner.paths(&id).build_log();
        let mut buf = Vec::new();
        if let Ok(mut f) = tokio::fs::File::open(&path).await {
            use tokio::io::{AsyncReadExt, AsyncSeekExt};
            f.seek(std::io::SeekFrom::Start(offset))
                .await
                .map_err(|e| fdo::Error::IOError(e.to_string()))?;
            (&mut f)
                .take(MAX_LOG_CHUNK)
                .read_to_end(&mut buf)
                .await
                .map_err(|e| fdo::Error::IOError(e.to_string()))?;
        }
        // Only whole lines, unless one line is longer than a chunk; the
        // job's last line may lack its newline once it is done.
        let full = buf.len() as u64 == MAX_LOG_CHUNK;
        if let Some(i) = buf.iter().rposition(|&b| b == b'\n') {
            buf.truncate(i + 1);
        } else if !full && !done {
            buf.clear();
        }
        let next = offset + buf.len() as u64;
        let more = full || next < std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        Ok((
            String::from_utf8_lossy(&buf).into_owned(),
            next,
            done && !more,
        ))
    }

    /// Release a commit by hand (trusted builders; logged): the jobs
    /// released (JSON).
    async fn release(&self, commit: String, reason: String) -> fdo::Result<String> {
        self.check_release("Release")?;
        let r = self.d.release_service().map_err(api_err)?;
        r.release_by_operator(&commit, &reason)
            .await
            .map(|js| json(&js))
            .map_err(|e| fdo::Error::Failed(e.to_string()))
    }

    /// Per output of a commit's jobs or of one derivation: reproduced by
    /// N builders of M operators, single, or differs (JSON, a Comparison).
    async fn compare(&self, what: String) -> fdo::Result<String> {
        let a = self.attestor()?;
        tokio::task::spawn_blocking(move || a.pool.compare_what(&what))
            .await
            .map_err(|e| fdo::Error::Failed(e.to_string()))?
            .map(|c| json(&c))
            .map_err(|e| fdo::Error::InvalidArgs(crate::error::chain(&e)))
    }

    /// The known builders: attestations, agreement, strikes (JSON).
    async fn builders(&self) -> fdo::Result<String> {
        let a = self.attestor()?;
        tokio::task::spawn_blocking(move || json(&a.pool.builders()))
            .await
            .map_err(|e| fdo::Error::Failed(e.to_string()))
    }

    /// Attestations (one JSON per line, as `jobs/<id>/attestations.jsonl`
    /// or `/attestations/<drv hash>` has them) checked against the known
    /// keys and kept: `{"kept": N, "known": N, "refused": [why, …]}`.
    async fn import_attestations(&self, text: String) -> fdo::Result<String> {
        if text.len() > MAX_IMPORT {
            return Err(fdo::Error::InvalidArgs(format!(
                "more than {MAX_IMPORT} bytes; import in parts"
            )));
        }
        let a = self.attestor()?;
        tokio::task::spawn_blocking(move || {
            let (mut kept, mut known, mut refused) = (0, 0, Vec::new());
            for (i, line) in text
                .lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
            {
                match crate::attest::Attestation::parse(line.as_bytes()) {
                    Err(e) => refused.push(format!("line {}: {e}", i + 1)),
                    Ok(att) => match a.pool.add(&att) {
                        Ok(true) => kept += 1,
                        Ok(false) => known += 1,
                        Err(e) => {
                            refused.push(format!("line {}: {}", i + 1, crate::error::chain(&e)))
                        }
                    },
                }
            }
            if kept > 0 {
                tracing::info!(
                    kept,
                    known,
                    refused = refused.len(),
                    "attestations imported"
                );
            }
            json(&serde_json::json!({ "kept": kept, "known": known, "refused": refused }))
        })
        .await
        .map_err(|e| fdo::Error::Failed(e.to_string()))
    }

    /// Apply the retention policy now: what was removed (JSON).
    async fn gc(&self) -> fdo::Result<String> {
        self.check_release("Gc")?;
        let r = self.d.release_service().map_err(api_err)?;
        r.gc()
            .await
            .map(|g| json(&g))
            .map_err(|e| fdo::Error::Failed(e.to_string()))
    }

    /// Cancel a job; returns what happened (`cancelled`, `cancelling: …`).
    async fn cancel_job(&self, id: String) -> fdo::Result<String> {
        self.d.cancel(&id).map_err(api_err)
    }

    /// Stop starting queued jobs; running ones finish.
    async fn drain(&self, #[zbus(signal_emitter)] e: SignalEmitter<'_>) {
        info!("drain requested over D-Bus");
        self.d.drain();
        let _ = self.draining_changed(&e).await;
    }

    /// Start queued jobs again.
    async fn resume(&self, #[zbus(signal_emitter)] e: SignalEmitter<'_>) {
        info!("resume requested over D-Bus");
        self.d.resume();
        let _ = self.draining_changed(&e).await;
    }

    /// Why a commit is or is not released (JSON).
    async fn release_status(&self, commit: String) -> fdo::Result<String> {
        let r = self.d.release_service().map_err(api_err)?;
        r.status(&commit)
            .await
            .map(|s| json(&s))
            .map_err(|e| fdo::Error::Failed(e.to_string()))
    }

    #[zbus(property)]
    async fn draining(&self) -> bool {
        self.d.is_draining()
    }

    #[zbus(property)]
    async fn running_jobs(&self) -> u32 {
        self.d.running() as u32
    }

    #[zbus(property)]
    async fn queued_jobs(&self) -> u32 {
        self.d.queued() as u32
    }

    /// A job changed state: its id, its state (`queued`, `checkout`,
    /// `running`, `verifying`, `done`) and, once done, its status word.
    #[zbus(signal)]
    async fn job_changed(
        e: &SignalEmitter<'_>,
        id: &str,
        state: &str,
        status: &str,
    ) -> zbus::Result<()>;
}

/// Connect to `address` (`system`, `session`, or a D-Bus address such as
/// `unix:path=/run/dbus/system_bus_socket`), take the name, serve the
/// object, and forward job changes as signals. The connection lives as long
/// as the returned handle.
pub async fn serve(d: Arc<Scheduler>, address: &str) -> Result<zbus::Connection, Error> {
    let err = |source| Error::Connect {
        address: address.to_owned(),
        source: Box::new(source),
    };
    let builder = match address {
        "system" => zbus::connection::Builder::system().map_err(err)?,
        "session" => zbus::connection::Builder::session().map_err(err)?,
        a => zbus::connection::Builder::address(a).map_err(err)?,
    };
    let mut changes = d.runner.control.subscribe();
    let conn = builder
        .name(NAME)
        .map_err(err)?
        .serve_at(
            PATH,
            Admin {
                d,
                may_release: true,
            },
        )
        .map_err(err)?
        .build()
        .await
        .map_err(err)?;
    info!(name = NAME, path = PATH, %address, "D-Bus admin API serving");
    let c = conn.clone();
    tokio::spawn(async move {
        let iface = match c.object_server().interface::<_, Admin>(PATH).await {
            Ok(i) => i,
            Err(e) => {
                warn!(error = %e, "D-Bus object vanished; no job signals");
                return;
            }
        };
        loop {
            match changes.recv().await {
                Ok(ch) => {
                    let e = iface.signal_emitter();
                    let _ = Admin::job_changed(e, &ch.id, &state_word(ch.state), &ch.status).await;
                    let a = iface.get().await;
                    let _ = a.running_jobs_changed(e).await;
                    let _ = a.queued_jobs_changed(e).await;
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    warn!(missed = n, "D-Bus job signals lagged behind");
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    });
    Ok(conn)
}

/// The mode of the API socket, whatever the umask: root (the owner) and the
/// socket's group (`airlock-admin` where that group exists) only. Anyone
/// who can connect can drain, cancel and submit.
pub const SOCKET_MODE: u32 = 0o660;
/// The group given the API socket when it exists.
pub const ADMIN_GROUP: &str = "airlock-admin";

/// Bind the API socket, ready to accept before this returns (so systemd's
/// READY=1 can follow it): bound under a temporary name, given
/// [`SOCKET_MODE`] and the [`ADMIN_GROUP`], then renamed into place, so
/// the path never exists with the umask's mode.
pub fn bind_p2p(socket: &std::path::Path) -> std::io::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    let dir = socket.parent().unwrap_or(std::path::Path::new("."));
    let _ = std::fs::create_dir_all(dir);
    let name = socket
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "airlockd.sock".into());
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let l = std::os::unix::net::UnixListener::bind(&tmp)?;
    let placed = (|| {
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(SOCKET_MODE))?;
        if let Ok(Some(g)) = nix::unistd::Group::from_name(ADMIN_GROUP) {
            std::os::unix::fs::chown(&tmp, None, Some(g.gid.as_raw()))?;
        }
        std::fs::rename(&tmp, socket)
    })();
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    l.set_nonblocking(true)?;
    let l = tokio::net::UnixListener::from_std(l)?;
    info!(socket = %socket.display(), "API listening (D-Bus, peer to peer)");
    Ok(l)
}

/// Serve the interface peer-to-peer on a socket [`bind_p2p`] bound (no
/// bus daemon), for ever: one D-Bus connection per client, authenticated
/// by the kernel's peer credentials; the socket's file mode decides who may
/// connect, and a non-root peer may not `Release` or `Gc`.
pub async fn serve_listener(d: Arc<Scheduler>, l: tokio::net::UnixListener) -> std::io::Result<()> {
    loop {
        let (stream, _) = match l.accept().await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let d = d.clone();
        let may_release = stream.peer_cred().is_ok_and(|c| c.uid() == 0);
        tokio::spawn(async move {
            let guid = zbus::Guid::generate();
            let conn = match zbus::connection::Builder::unix_stream(stream)
                .server(guid)
                .and_then(|b| b.p2p().serve_at(PATH, Admin { d, may_release }))
            {
                Ok(b) => b.build().await,
                Err(e) => Err(e),
            };
            let conn = match conn {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(error = %e, "API client left before its D-Bus handshake");
                    return;
                }
            };
            // Held until the client hangs up (its stream of messages ends).
            let mut msgs = zbus::MessageStream::from(&conn);
            while let Some(m) = futures_lite::StreamExt::next(&mut msgs).await {
                if m.is_err() {
                    break;
                }
            }
        });
    }
}

/// A connection to airlockd's interface: over a bus (`system`, `session`,
/// or an address) to the name `org.airlock.Airlock1`, or peer-to-peer on
/// its unix socket.
pub async fn client(
    bus: Option<&str>,
    socket: &std::path::Path,
) -> zbus::Result<Airlock1Proxy<'static>> {
    let conn = match bus {
        Some("system") => zbus::Connection::system().await?,
        Some("session") => zbus::Connection::session().await?,
        Some(a) => zbus::connection::Builder::address(a)?.build().await?,
        None => {
            let s = tokio::net::UnixStream::connect(socket).await.map_err(|e| {
                zbus::Error::InputOutput(std::sync::Arc::new(std::io::Error::new(
                    e.kind(),
                    format!(
                        "cannot connect to airlockd at {} (is it running? --socket, or --bus system): {e}",
                        socket.display()
                    ),
                )))
            })?;
            zbus::connection::Builder::unix_stream(s)
                .p2p()
                .build()
                .await?
        }
    };
    Airlock1Proxy::builder(&conn)
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
}

/// The client side of [`Admin`], for `airlockctl`.
#[zbus::proxy(
    interface = "org.airlock.Airlock1",
    default_service = "org.airlock.Airlock1",
    default_path = "/org/airlock/Airlock1"
)]
pub trait Airlock1 {
    fn list_jobs(&self) -> zbus::Result<String>;
    fn show_job(&self, id: &str) -> zbus::Result<String>;
    fn submit_job(&self, job: &str) -> zbus::Result<String>;
    fn wait_job(&self, id: &str, timeout_secs: u32) -> zbus::Result<String>;
    fn read_log(&self, id: &str, offset: u64) -> zbus::Result<(String, u64, bool)>;
    fn cancel_job(&self, id: &str) -> zbus::Result<String>;
    fn drain(&self) -> zbus::Result<()>;
    fn resume(&self) -> zbus::Result<()>;
    fn release_status(&self, commit: &str) -> zbus::Result<String>;
    fn release(&self, commit: &str, reason: &str) -> zbus::Result<String>;
    fn gc(&self) -> zbus::Result<String>;
    fn compare(&self, what: &str) -> zbus::Result<String>;
    fn builders(&self) -> zbus::Result<String>;
    fn import_attestations(&self, text: &str) -> zbus::Result<String>;
}
