//! The D-Bus admin API (docs/dbus.md): name `org.airlock.Airlock1`, object
//! `/org/airlock/Airlock1`, interface `org.airlock.Airlock1`. Who may call
//! it is the bus's policy (`daemon/dbus/org.airlock.Airlock1.conf`: root
//! and one group), not this code. Job records and release status are
//! returned as JSON strings (the same documents `airlockctl --json`
//! prints); job changes are the `JobChanged` signal.

use std::sync::Arc;

use tracing::{info, warn};
use zbus::fdo;
use zbus::object_server::SignalEmitter;

use crate::daemon::Daemon;
use crate::job::JobState;

pub const NAME: &str = "org.airlock.Airlock1";
pub const PATH: &str = "/org/airlock/Airlock1";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot connect to the D-Bus bus {address:?}")]
    Connect {
        address: String,
        #[source]
        source: zbus::Error,
    },
}

pub struct Admin {
    d: Arc<Daemon>,
}

fn state_word(s: JobState) -> String {
    format!("{s:?}").to_lowercase()
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

    /// Cancel a job; returns what happened (`cancelled`, `cancelling: …`).
    async fn cancel_job(&self, id: String) -> fdo::Result<String> {
        self.d.cancel(&id).map_err(fdo::Error::Failed)
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
        let r = self.d.release_service().map_err(fdo::Error::Failed)?;
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
pub async fn serve(d: Arc<Daemon>, address: &str) -> Result<zbus::Connection, Error> {
    let err = |source| Error::Connect {
        address: address.to_owned(),
        source,
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
        .serve_at(PATH, Admin { d })
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
