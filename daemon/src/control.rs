//! Administrative control over jobs while they run: cancellation, and a
//! stream of job changes for whoever follows them (the D-Bus signals).
//!
//! Cancel and start meet under one lock, so a job is finished exactly once:
//! a job cancelled before it started is finished by the canceller without
//! running anything; a job cancelled while it runs is stopped by its runner
//! (the VM killed through its cancel channel, the network and disks torn
//! down as after any other end) and finished there.

use std::collections::HashSet;
use std::sync::Mutex;

use crate::job::JobState;

/// What a cancelled job's result carries: ofborg's `BuildStatus` has no
/// "cancelled", so it is `UnexpectedError` with this text.
pub const CANCELLED: &str = "cancelled by an administrator";

/// One job's state changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobChange {
    pub id: String,
    pub state: JobState,
    /// The result's status once done (`Success`, `Failure`, …), else empty.
    pub status: String,
}

#[derive(Default)]
struct Sets {
    started: HashSet<String>,
    cancelled: HashSet<String>,
}

pub struct JobControl {
    sets: Mutex<Sets>,
    changes: tokio::sync::broadcast::Sender<JobChange>,
}

impl Default for JobControl {
    fn default() -> Self {
        JobControl {
            sets: Mutex::default(),
            changes: tokio::sync::broadcast::channel(256).0,
        }
    }
}

/// What [`JobControl::cancel`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cancel {
    /// Not started: the caller finishes the job.
    NotStarted,
    /// Running: its runner stops it.
    Running,
    /// Already cancelled.
    Again,
}

impl JobControl {
    /// The runner is about to run `id`; false if it was cancelled first.
    pub fn start(&self, id: &str) -> bool {
        let mut s = self.sets.lock().expect("lock");
        if s.cancelled.contains(id) {
            return false;
        }
        s.started.insert(id.to_owned());
        true
    }

    /// The runner is done with `id`.
    pub fn done(&self, id: &str) {
        let mut s = self.sets.lock().expect("lock");
        s.started.remove(id);
        s.cancelled.remove(id);
    }

    pub fn cancel(&self, id: &str) -> Cancel {
        let mut s = self.sets.lock().expect("lock");
        if !s.cancelled.insert(id.to_owned()) {
            return Cancel::Again;
        }
        if s.started.contains(id) {
            Cancel::Running
        } else {
            Cancel::NotStarted
        }
    }

    pub fn is_cancelled(&self, id: &str) -> bool {
        self.sets.lock().expect("lock").cancelled.contains(id)
    }

    /// Forget a cancellation once the job is finished by its canceller.
    pub fn forget(&self, id: &str) {
        self.sets.lock().expect("lock").cancelled.remove(id);
    }

    pub fn changed(&self, c: JobChange) {
        // Nobody listening is fine.
        let _ = self.changes.send(c);
    }

    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<JobChange> {
        self.changes.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_is_cancelled_once_and_finished_once() {
        let c = JobControl::default();
        assert_eq!(c.cancel("q"), Cancel::NotStarted);
        assert!(!c.start("q"), "a cancelled job does not start");
        assert_eq!(c.cancel("q"), Cancel::Again);
        assert!(c.start("r"));
        assert_eq!(c.cancel("r"), Cancel::Running);
        assert!(c.is_cancelled("r"));
        c.done("r");
        assert!(!c.is_cancelled("r"));
    }
}
