//! The admin and local-intake API: newline-delimited JSON over a unix socket.
//! One request per connection; the reply is one JSON line, or for `log` a
//! stream of `{"line": …}` objects closed by a final reply.

use serde::{Deserialize, Serialize};

use crate::job::JobRecord;
use crate::ofborg::BuildJob;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Submit {
        job: Box<BuildJob>,
    },
    List,
    Show {
        id: String,
    },
    Log {
        id: String,
        follow: bool,
    },
    Wait {
        id: String,
        timeout_secs: Option<u64>,
    },
    /// Why a commit is or is not released.
    ReleaseStatus {
        commit: String,
    },
    /// Operator release by hand (trusted builders only; logged).
    Release {
        commit: String,
        reason: String,
    },
    /// Apply the retention policy now.
    Gc,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    Submitted { id: String },
    Jobs(Vec<JobRecord>),
    Job(Box<JobRecord>),
    Line(String),
    ReleaseStatus(Box<crate::release::Status>),
    Released(Vec<crate::release::store::ReleasedJob>),
    Gc(crate::release::store::GcReport),
    End,
    Error(String),
}

/// Longest request line the server reads.
pub const MAX_REQUEST: usize = 1 << 20;
