//! The job record: one `jobs/<id>/job.json` per job, a small state machine,
//! rewritten atomically on every transition.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::fsutil::write_atomic;

pub mod layout;
use crate::ofborg::{BuildJob, BuildStatus};
pub use layout::JobPaths;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("job {0} not found")]
    NotFound(String),
    #[error("job id {0:?} is invalid")]
    BadId(String),
    #[error("cannot write job record {0}")]
    Write(PathBuf, #[source] std::io::Error),
    #[error("cannot read job record {0}")]
    Read(PathBuf, #[source] std::io::Error),
    #[error("job record {0} is corrupt")]
    Corrupt(PathBuf, #[source] serde_json::Error),
    #[error("job {id}: {from:?} cannot move to {to:?} (a job only moves forward, and ends only by finishing)")]
    Transition {
        id: String,
        from: JobState,
        to: JobState,
    },
}
pub type Result<T> = std::result::Result<T, Error>;

/// A job's place in its story, in order: it only moves forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Queued,
    Checkout,
    Running,
    Verifying,
    Done,
}

impl JobState {
    pub fn is_terminal(self) -> bool {
        self == JobState::Done
    }

    /// The word every front-end shows (`airlockctl jobs`, the web view,
    /// the D-Bus API): the serialised name.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Checkout => "checkout",
            JobState::Running => "running",
            JobState::Verifying => "verifying",
            JobState::Done => "done",
        }
    }
}

/// Where a job came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Local,
    Amqp,
    /// A step of Hydra's queue-runner (issue 31).
    Hydra,
}

/// Where a queue-runner step came from (docs/hydra.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HydraOrigin {
    /// The runner's id of this dispatch (a UUID; a retry gets a new one).
    pub build_id: String,
    /// The tunnel's machine id it came on.
    pub machine_id: String,
    /// The step's `.drv`, as a base name.
    pub drv: String,
    /// A fixed-output step: built with the fetch phase's network.
    pub fixed_output: bool,
    /// The output paths (full) the guest is to export.
    pub outputs: Vec<String>,
    /// The input closure (full paths): what the outputs may refer to
    /// besides themselves.
    pub inputs: Vec<String>,
}

/// Nix's own result of a queue-runner step, as the guest reported it
/// (the guest's word: the host checks the outputs, not this).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NixStepResult {
    pub status: u64,
    pub error: String,
    /// How long Nix's `BuildDerivation` took in the guest (the step's own
    /// build time; the rest of the step is airlock's overhead).
    #[serde(default)]
    pub build_ms: u64,
}

/// Whether a broker job's result has been published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReportState {
    /// Finished (or running); the result still has to go out.
    Pending,
    /// The result was published and confirmed by the broker.
    Published,
    /// Never to be reported: interrupted by a restart, the broker redelivers it.
    Dropped,
}

/// Where a broker job came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AmqpOrigin {
    /// The system of the queue it came from.
    pub system: String,
    /// New for every delivery (ofborg's `attempt_id`).
    pub attempt_id: String,
    pub report: ReportState,
    /// The delivery's identity: `<system> request <request_id>`, or
    /// `<system> body <sha256>` for messages without a `request_id`. A
    /// redelivery with the same identity is this job, not a new one.
    #[serde(default)]
    pub key: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobResult {
    pub status: BuildStatus,
    pub attempted_attrs: Option<Vec<String>>,
    pub skipped_attrs: Option<Vec<String>>,
    /// Last ≤ 10 log lines, as ofborg reports them.
    pub output: Vec<String>,
    /// Quarantine directory of this job's verified outputs, if any.
    pub quarantine: Option<PathBuf>,
    pub store_paths: Vec<String>,
    /// Why an export was rejected, if it was.
    pub export_error: Option<String>,
    /// ofborg's silent cases (no attrs, PR or commit gone): nothing is
    /// published for a broker job, it is only acked.
    #[serde(default)]
    pub silent: bool,
    /// A queue-runner step: Nix's result in the guest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nix_step: Option<NixStepResult>,
}

impl JobResult {
    /// A result with this status and these last lines, and nothing else
    /// (no attrs, no outputs).
    pub fn new(status: BuildStatus, output: Vec<String>) -> JobResult {
        JobResult {
            status,
            attempted_attrs: None,
            skipped_attrs: None,
            output,
            quarantine: None,
            store_paths: vec![],
            export_error: None,
            silent: false,
            nix_step: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    pub id: String,
    pub source: Source,
    #[serde(default)]
    pub amqp: Option<AmqpOrigin>,
    /// A queue-runner step's origin (`source = hydra`); `job` is then a
    /// stand-in naming the runner and the derivation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hydra: Option<HydraOrigin>,
    pub job: BuildJob,
    pub state: JobState,
    /// The merged commit that was built (head merged onto the target branch).
    pub merged_commit: Option<String>,
    /// The target branch commit the head was merged onto.
    #[serde(default)]
    pub base_commit: Option<String>,
    /// The branch the head was merged onto: the PR's target branch, or for
    /// a review the branch it is reviewed against (`review.base_for`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merged_onto: Option<String>,
    pub created_at: u64,
    pub started_at: Option<u64>,
    pub finished_at: Option<u64>,
    /// The guest's Nix (`nix --version`), as its agent reported it.
    #[serde(default)]
    pub guest_nix: Option<String>,
    /// Derivations built and paths substituted in the VMs, as the agent
    /// counted them (a guest's claim: for people, not for decisions).
    #[serde(default)]
    pub realised: Option<Realised>,
    /// What the host's substituter did for this job (its own counters).
    #[serde(default)]
    pub substitution: Option<JobStats>,
    /// How the job's input disks were made (a base image reused or not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<InputUse>,
    /// VM accelerator used (kvm or tcg).
    pub accel: Option<String>,
    /// Seconds from VM start to the agent's first message, per phase.
    pub boot_secs: Option<f64>,
    /// Seconds since the job started at which each step ended, in order
    /// (checkout, disks, agent_started, instantiated, built, exported,
    /// vm_exit, verified): where the time goes.
    #[serde(default)]
    pub timings: Vec<(String, f64)>,
    /// When the current run started (in memory only).
    #[serde(skip)]
    pub run_started: Option<std::time::Instant>,
    pub result: Option<JobResult>,
    /// A restart of airlockd (a crash, kill -9) ended this job while it
    /// ran; its result says so.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub interrupted: bool,
    /// The job that runs this local job's request again after it was
    /// interrupted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retried_as: Option<String>,
    /// The interrupted job this one runs again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_of: Option<String>,
    /// A re-fetch before release (issue 30): this job fetches a
    /// quarantined job's fixed-output paths again; what it exports is
    /// compared, never quarantined.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refetch: Option<Refetch>,
}

/// What a re-fetch job fetches again, and for which quarantined job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Refetch {
    pub of_job: String,
    pub paths: Vec<RefetchPath>,
}

/// One fixed-output path as the quarantined job verified it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefetchPath {
    pub path: String,
    pub nar_hash: String,
    pub deriver: Option<String>,
}

/// A re-fetch job's finding (`jobs/<id>/refetch.json`): per path, whether
/// the bytes fetched again are the ones about to be released.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefetchOutcome {
    pub of_job: String,
    /// Paths whose re-fetched NAR hash (host-computed) is the released one.
    pub matched: Vec<String>,
    /// The others: the path, its derivation, and why.
    pub failed: Vec<RefetchFailure>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefetchFailure {
    pub path: String,
    pub deriver: Option<String>,
    pub why: String,
}

/// Derivations built and store paths substituted for a job (all phases).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Realised {
    pub built: u64,
    pub substituted: u64,
}

impl Realised {
    /// Add another phase's (or event's) counts.
    pub fn add(&mut self, other: Realised) {
        self.built = self.built.saturating_add(other.built);
        self.substituted = self.substituted.saturating_add(other.substituted);
    }
}

/// Bytes as MiB, for people.
pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Job ids are UUIDs; they name directories, so check before use.
pub fn check_id(id: &str) -> Result<()> {
    uuid::Uuid::parse_str(id)
        .map(|_| ())
        .map_err(|_| Error::BadId(id.to_owned()))
}

impl JobRecord {
    /// Move the job to the next step of its story (`Checkout`, `Running`,
    /// `Verifying`): forward only, and never to `Done`, which only
    /// [`JobRecord::finish`] reaches.
    pub fn advance(&mut self, to: JobState) -> Result<()> {
        if to <= self.state || to == JobState::Done {
            return Err(Error::Transition {
                id: self.id.clone(),
                from: self.state,
                to,
            });
        }
        self.state = to;
        Ok(())
    }

    /// The one way a job ends: its result, `Done`, the time.
    pub fn finish(&mut self, result: JobResult) {
        self.result = Some(result);
        self.state = JobState::Done;
        self.finished_at = Some(now());
    }

    /// The span every event about this job is logged in: its fields are the
    /// journal's `JOB_ID`, `PR`, `COMMIT`, `REPO` and `ATTR`
    /// (docs/operations.md), on every entry of the job.
    pub fn span(&self) -> tracing::Span {
        if let Some(h) = &self.hydra {
            // A queue-runner step: its build id and derivation instead of
            // a PR and a commit.
            return tracing::info_span!(
                "job",
                job_id = %self.id,
                build_id = %h.build_id,
                drv = %h.drv,
                object_systemd_unit = tracing::field::Empty,
            );
        }
        tracing::info_span!(
            "job",
            job_id = %self.id,
            pr = self.job.pr.number,
            commit = %self.job.pr.head_sha,
            repo = %self.job.repo.full_name,
            attr = %self.job.attrs.join(" "),
            object_systemd_unit = tracing::field::Empty,
        )
    }

    pub fn new(source: Source, job: BuildJob) -> JobRecord {
        JobRecord {
            id: uuid::Uuid::new_v4().to_string(),
            source,
            amqp: None,
            job,
            state: JobState::Queued,
            merged_commit: None,
            base_commit: None,
            merged_onto: None,
            guest_nix: None,
            realised: None,
            substitution: None,
            input: None,
            created_at: now(),
            started_at: None,
            finished_at: None,
            accel: None,
            boot_secs: None,
            timings: Vec::new(),
            run_started: None,
            result: None,
            interrupted: false,
            retried_as: None,
            retry_of: None,
            refetch: None,
            hydra: None,
        }
    }
}

/// Reads and writes job records under `jobs/`.
#[derive(Debug, Clone)]
pub struct JobStore {
    root: PathBuf,
}

impl JobStore {
    pub fn new(root: impl Into<PathBuf>) -> JobStore {
        JobStore { root: root.into() }
    }
    pub fn dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }
    /// The files of job `id` (its directory's layout).
    pub fn paths(&self, id: &str) -> JobPaths {
        JobPaths { dir: self.dir(id) }
    }
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn save(&self, rec: &JobRecord) -> Result<()> {
        let dir = self.dir(&rec.id);
        std::fs::create_dir_all(&dir).map_err(|e| Error::Write(dir.clone(), e))?;
        let path = self.paths(&rec.id).record();
        let data = serde_json::to_vec_pretty(rec).expect("job record serialises");
        write_atomic(&path, &data).map_err(|e| Error::Write(path, e))
    }

    pub fn load(&self, id: &str) -> Result<JobRecord> {
        check_id(id)?;
        let path = self.paths(id).record();
        let data = match std::fs::read(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NotFound(id.to_owned()))
            }
            Err(e) => return Err(Error::Read(path, e)),
        };
        serde_json::from_slice(&data).map_err(|e| Error::Corrupt(path, e))
    }

    /// All records, oldest first. Unreadable ones are reported, not fatal.
    pub fn list(&self) -> (Vec<JobRecord>, Vec<Error>) {
        let mut recs = Vec::new();
        let mut errs = Vec::new();
        let Ok(rd) = std::fs::read_dir(&self.root) else {
            return (recs, errs);
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if check_id(&name).is_err() {
                continue;
            }
            match self.load(&name) {
                Ok(r) => recs.push(r),
                Err(Error::NotFound(_)) => {}
                Err(e) => errs.push(e),
            }
        }
        recs.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        (recs, errs)
    }
}

/// How a job's input was made, for the job record and `airlockctl show`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InputUse {
    /// The tree of the base image; `None`: the whole tree on the job's disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_tree: Option<String>,
    /// The base image was made for this job (else an existing one was reused).
    #[serde(default)]
    pub base_made: bool,
    /// Files written to the job's own disk (the delta, or the whole tree).
    pub files: u64,
    /// Paths of the base hidden from the job (whiteouts).
    #[serde(default)]
    pub removed: u64,
}

impl std::fmt::Display for InputUse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.base_tree {
            None => write!(f, "whole tree on the job's disk ({} files)", self.files),
            Some(t) => write!(
                f,
                "base image {} ({}), {} changed files, {} removed paths",
                t.get(..12).unwrap_or(t),
                if self.base_made {
                    "made for this job"
                } else {
                    "reused"
                },
                self.files,
                self.removed
            ),
        }
    }
}

/// What one job got from the substituter (shown by `airlockctl show`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobStats {
    pub narinfo_hits: u64,
    pub narinfo_misses: u64,
    pub narinfos_refused: u64,
    pub nars_served: u64,
    /// NAR bytes sent to the guest (compressed, as stored).
    pub bytes_served: u64,
    /// Bytes downloaded from upstream for this job (narinfos and NARs).
    pub bytes_upstream: u64,
    /// Why narinfos were refused (first few).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refusals: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> BuildJob {
        serde_json::from_str(r#"{"repo":{"owner":"o","name":"n","full_name":"o/n","clone_url":"/x"},"pr":{"target_branch":"master","number":1,"head_sha":"e9872fa30caac57c69bfac8667e6c21254603df1"},"subset":null,"attrs":["a"],"request_id":"r","logs":null,"statusreport":null}"#).unwrap()
    }

    #[test]
    fn a_job_moves_forward_and_ends_by_finishing() {
        let mut r = JobRecord::new(Source::Local, job());
        r.advance(JobState::Checkout).unwrap();
        r.advance(JobState::Running).unwrap();
        assert!(r.advance(JobState::Checkout).is_err(), "backwards");
        assert!(r.advance(JobState::Running).is_err(), "again");
        assert!(r.advance(JobState::Done).is_err(), "only finish ends a job");
        r.advance(JobState::Verifying).unwrap();
        r.finish(JobResult::new(BuildStatus::Success, vec![]));
        assert_eq!(r.state, JobState::Done);
        assert!(r.finished_at.is_some());
        for s in [
            JobState::Queued,
            JobState::Checkout,
            JobState::Running,
            JobState::Verifying,
            JobState::Done,
        ] {
            assert_eq!(
                serde_json::to_value(s).unwrap(),
                s.as_str(),
                "one word per state"
            );
        }
        let e = r.advance(JobState::Verifying).unwrap_err().to_string();
        assert!(e.contains("Done cannot move to Verifying"), "{e}");
    }

    #[test]
    fn save_load_list() {
        let d = tempfile::tempdir().unwrap();
        let s = JobStore::new(d.path());
        let mut r = JobRecord::new(Source::Local, job());
        s.save(&r).unwrap();
        r.state = JobState::Done;
        s.save(&r).unwrap();
        assert_eq!(s.load(&r.id).unwrap(), r);
        assert_eq!(s.list().0.len(), 1);
        assert!(matches!(s.load("../etc"), Err(Error::BadId(_))));
        assert!(matches!(
            s.load(&uuid::Uuid::new_v4().to_string()),
            Err(Error::NotFound(_))
        ));
    }
}
