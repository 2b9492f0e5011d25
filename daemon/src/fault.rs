//! Deterministic fault points for tests: with `AIRLOCK_FAULT_PAUSE` set to a
//! comma-separated list of [`Point`] names, airlockd stops at each named
//! point of each job, writes `<state_dir>/faults/<point>.<job-id>`, and goes
//! on only once a test has removed that file. The test injects its fault
//! (a broker restart, a lost connection, a kill -9) while the daemon waits
//! at an exactly known place: no sleeps, no races.
//!
//! Unset (production), [`pause`] returns at once.

use std::collections::HashSet;
use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use tracing::warn;

/// The environment variable naming the points to stop at.
pub const ENV: &str = "AIRLOCK_FAULT_PAUSE";

/// Where a job can be held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    /// The job is queued (its delivery taken), nothing built yet.
    BeforeBuild,
    /// The VM has built everything; the result is not recorded yet.
    MidBuild,
    /// The result is recorded on disk, not published yet.
    BeforePublish,
    /// The result was published and confirmed, the delivery not acked yet.
    AfterPublish,
    /// The delivery was acked.
    AfterAck,
}

impl Point {
    pub fn name(self) -> &'static str {
        match self {
            Point::BeforeBuild => "before-build",
            Point::MidBuild => "mid-build",
            Point::BeforePublish => "before-publish",
            Point::AfterPublish => "after-publish",
            Point::AfterAck => "after-ack",
        }
    }
}

fn enabled() -> &'static HashSet<String> {
    static E: OnceLock<HashSet<String>> = OnceLock::new();
    E.get_or_init(|| {
        std::env::var(ENV)
            .map(|v| {
                v.split(',')
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default()
    })
}

/// Hold here if the test asked for `point`; see the module docs.
pub async fn pause(state_dir: &Path, point: Point, job_id: &str) {
    if !enabled().contains(point.name()) {
        return;
    }
    let dir = state_dir.join("faults");
    let marker = dir.join(format!("{}.{job_id}", point.name()));
    if let Err(e) = std::fs::create_dir_all(&dir).and_then(|_| std::fs::write(&marker, b"")) {
        warn!(error = %e, point = point.name(), "cannot write the fault marker; not pausing");
        return;
    }
    warn!(
        point = point.name(),
        job_id,
        "{ENV}: paused until {} is removed",
        marker.display()
    );
    while marker.exists() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
