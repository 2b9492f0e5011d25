//! ofborg's builder messages, field for field and in ofborg's field order, so
//! that `serde_json::to_string` produces the same bytes ofborg does.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use airlock_wire::BuildStatus;

/// `Success`, `Failure`, `UnexpectedError`, …: the status word of a result
/// (ofborg's variant names; the error text is not part of it).
pub fn status_word(s: &BuildStatus) -> String {
    match s {
        BuildStatus::UnexpectedError { .. } => "UnexpectedError".into(),
        other => format!("{other:?}"),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Repo {
    pub owner: String,
    pub name: String,
    pub full_name: String,
    pub clone_url: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pr {
    pub target_branch: Option<String>,
    pub number: u64,
    pub head_sha: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Subset {
    Nixpkgs,
    NixOS,
}

/// `[exchange, routing_key]`.
pub type ExchangeQueue = (Option<String>, Option<String>);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildJob {
    pub repo: Repo,
    pub pr: Pr,
    #[serde(default)]
    pub subset: Option<Subset>,
    pub attrs: Vec<String>,
    pub request_id: String,
    #[serde(default)]
    pub logs: Option<ExchangeQueue>,
    #[serde(default)]
    pub statusreport: Option<ExchangeQueue>,
    /// airlock's own marker of a review job (issue 16): `attrs` is empty,
    /// so ofborg's builders, which skip a job without attrs, ack it and do
    /// nothing; airlock reviews the PR. Absent from every ofborg message,
    /// and never serialised when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub airlock_review: Option<ReviewRequest>,
}

/// What a review job asks for (the `airlock_review` marker).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReviewRequest {
    /// The branch to review against (evaluated as the base, and the head
    /// merged onto it); default: the builder's `review.base_for` mapping
    /// of the target branch, else the target branch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
    /// Evaluate only these attr paths in both trees (default: every attr
    /// `nix-env -qa` lists).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attrs: Option<Vec<String>>,
    /// A rebuild list computed by the central side: the base is not evaluated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rebuild: Option<Vec<String>>,
    /// Evaluate and diff, build nothing.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub eval_only: bool,
    /// nixpkgs CI's `changed-paths.json` (issue 32): its rebuild list for
    /// this builder's system is the rebuild list (`rebuild` then unused);
    /// the base is not evaluated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ci_comparison: Option<crate::nixpkgs_ci::ChangedPaths>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("head_sha {0:?} is not a 40-digit hex commit id")]
    BadSha(String),
    #[error("attribute path {0:?} is not allowed")]
    BadAttr(String),
    #[error("airlock_review.ci_comparison: {0}")]
    BadComparison(String),
    #[error("target branch {0:?} is not a valid branch name")]
    BadBranch(String),
}

impl BuildJob {
    /// ofborg's fallback for a missing target branch.
    pub fn target_branch(&self) -> &str {
        self.pr.target_branch.as_deref().unwrap_or("master")
    }

    /// Checks beyond the JSON shape, before anything acts on the job.
    pub fn validate(&self) -> Result<(), Error> {
        let sha = &self.pr.head_sha;
        if sha.len() != 40 || !sha.bytes().all(|c| c.is_ascii_hexdigit()) {
            return Err(Error::BadSha(sha.clone()));
        }
        let review_attrs = self
            .airlock_review
            .iter()
            .flat_map(|r| r.attrs.iter().flatten().chain(r.rebuild.iter().flatten()));
        for a in self.attrs.iter().chain(review_attrs) {
            // ofborg takes comment tokens verbatim (printable ASCII); they become
            // one argv entry each, never a shell word.
            if a.is_empty() || a.len() > 1024 || !a.bytes().all(|c| c.is_ascii_graphic()) {
                return Err(Error::BadAttr(a.clone()));
            }
        }
        if let Some(b) = self.airlock_review.as_ref().and_then(|r| r.base.as_deref()) {
            check_branch(b)?;
        }
        if let Some(c) = self
            .airlock_review
            .as_ref()
            .and_then(|r| r.ci_comparison.as_ref())
        {
            c.check().map_err(|e| Error::BadComparison(e.to_string()))?;
        }
        check_branch(self.target_branch())
    }

    /// The branch a review job is reviewed against.
    pub fn review_base<'a>(&'a self, base_for: &'a BTreeMap<String, String>) -> &'a str {
        let t = self.target_branch();
        self.airlock_review
            .as_ref()
            .and_then(|r| r.base.as_deref())
            .or_else(|| base_for.get(t).map(String::as_str))
            .unwrap_or(t)
    }
}

fn check_branch(b: &str) -> Result<(), Error> {
    let bad = b.is_empty()
        || b.starts_with('-')
        || b.contains("..")
        || !b
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"/._-+".contains(&c));
    if bad {
        return Err(Error::BadBranch(b.to_owned()));
    }
    Ok(())
}

/// First message of an attempt on the logs destination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildLogStart {
    pub system: String,
    pub identity: String,
    pub attempt_id: String,
    pub attempted_attrs: Option<Vec<String>>,
    pub skipped_attrs: Option<Vec<String>>,
}

/// One log line of an attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildLogMsg {
    pub system: String,
    pub identity: String,
    pub attempt_id: String,
    pub line_number: u64,
    pub output: String,
}

/// Where to publish: `(exchange, routing key)`, `""` meaning the default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    pub exchange: String,
    pub routing_key: String,
}

fn resolve(d: &Option<ExchangeQueue>, default: (&str, &str)) -> Destination {
    match d {
        None => Destination {
            exchange: default.0.into(),
            routing_key: default.1.into(),
        },
        Some((e, k)) => Destination {
            exchange: e.clone().unwrap_or_default(),
            routing_key: k.clone().unwrap_or_default(),
        },
    }
}

impl BuildJob {
    /// ofborg's fallback for `logs: null` is `("logs", "build.log")`.
    pub fn logs_destination(&self) -> Destination {
        resolve(&self.logs, ("logs", "build.log"))
    }
    /// ofborg's fallback for `statusreport: null` is `("build-results", null)`.
    pub fn result_destination(&self) -> Destination {
        resolve(&self.statusreport, ("build-results", ""))
    }
}

/// `BuildResult::V1`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildResultV1 {
    pub tag: V1Tag,
    pub repo: Repo,
    pub pr: Pr,
    pub system: String,
    pub output: Vec<String>,
    pub attempt_id: String,
    pub request_id: String,
    pub status: BuildStatus,
    pub skipped_attrs: Option<Vec<String>>,
    pub attempted_attrs: Option<Vec<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum V1Tag {
    V1,
}

/// The pre-2018 result format (no `tag`); consumers must still read it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildResultLegacy {
    pub repo: Repo,
    pub pr: Pr,
    pub system: String,
    pub output: Vec<String>,
    pub attempt_id: String,
    pub request_id: String,
    #[serde(default)]
    pub success: Option<bool>,
    #[serde(default)]
    pub status: Option<BuildStatus>,
    #[serde(default)]
    pub skipped_attrs: Option<Vec<String>>,
    #[serde(default)]
    pub attempted_attrs: Option<Vec<String>>,
}

/// What a reader of `build-results`/`logs` accepts: V1 first, then legacy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum BuildResult {
    V1(BuildResultV1),
    Legacy(BuildResultLegacy),
}

impl BuildResult {
    /// ofborg's effective status: `status`, else from `success`, else Skipped.
    pub fn status(&self) -> BuildStatus {
        match self {
            BuildResult::V1(r) => r.status.clone(),
            BuildResult::Legacy(r) => match (&r.status, r.success) {
                (Some(s), _) => s.clone(),
                (None, Some(true)) => BuildStatus::Success,
                (None, Some(false)) => BuildStatus::Failure,
                (None, None) => BuildStatus::Skipped,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIX: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/fixtures/ofborg/handwritten"
    );

    /// A recorded ofborg message from `../shared/fixtures`; missing, the
    /// test says so loudly and passes, except under
    /// `AIRLOCK_REQUIRE_E2E=1` (CI), where it fails.
    fn fixture(name: &str) -> Option<String> {
        match std::fs::read_to_string(format!("{FIX}/{name}")) {
            Ok(t) => Some(t),
            Err(e) => {
                crate::testing::skipped(&format!("ofborg golden test: fixture {FIX}/{name}: {e}"));
                None
            }
        }
    }

    #[test]
    fn build_jobs_roundtrip_byte_for_byte() {
        for f in [
            "build-job.json",
            "build-job-auto.json",
            "build-job-null-destinations.json",
        ] {
            let Some(text) = fixture(f) else {
                return;
            };
            let job: BuildJob = serde_json::from_str(&text).unwrap();
            job.validate().unwrap();
            assert_eq!(serde_json::to_string(&job).unwrap(), text, "{f}");
        }
    }

    #[test]
    fn results_roundtrip_byte_for_byte() {
        for f in [
            "build-result-v1-success.json",
            "build-result-v1-failure.json",
            "build-result-v1-timed-out.json",
            "build-result-v1-hash-mismatch.json",
            "build-result-v1-skipped.json",
            "build-result-v1-unexpected-error.json",
            "build-result-v1-merge-failed.json",
        ] {
            let Some(text) = fixture(f) else { return };
            let r: BuildResultV1 = serde_json::from_str(&text).unwrap();
            assert_eq!(serde_json::to_string(&r).unwrap(), text, "{f}");
        }
    }

    #[test]
    fn log_messages_roundtrip_and_destinations() {
        let Some(text) = fixture("build-log-start.json") else {
            return;
        };
        let m: BuildLogStart = serde_json::from_str(&text).unwrap();
        assert_eq!(serde_json::to_string(&m).unwrap(), text);
        let Some(text) = fixture("build-log-msg.json") else {
            return;
        };
        let m: BuildLogMsg = serde_json::from_str(&text).unwrap();
        assert_eq!(serde_json::to_string(&m).unwrap(), text);
        let job: BuildJob =
            serde_json::from_str(&fixture("build-job-null-destinations.json").unwrap()).unwrap();
        assert_eq!(
            job.logs_destination(),
            Destination {
                exchange: "logs".into(),
                routing_key: "build.log".into()
            }
        );
        assert_eq!(
            job.result_destination(),
            Destination {
                exchange: "build-results".into(),
                routing_key: "".into()
            }
        );
        let job: BuildJob = serde_json::from_str(&fixture("build-job.json").unwrap()).unwrap();
        assert_eq!(job.logs_destination().routing_key, "nixos/nixpkgs.123456");
        assert_eq!(job.result_destination().exchange, "build-results");
    }

    #[test]
    fn legacy_results_still_decode() {
        // Consumers must accept them; the builder never writes them.
        let Some(text) = fixture("build-result-legacy.json") else {
            return;
        };
        let r: BuildResult = serde_json::from_str(&text).unwrap();
        assert!(matches!(r, BuildResult::Legacy(_)));
        assert_eq!(r.status(), BuildStatus::Success);
        assert_eq!(serde_json::to_string(&r).unwrap(), text);
        let text = fixture("build-result-legacy-minimal.json").unwrap();
        let r: BuildResult = serde_json::from_str(&text).unwrap();
        assert_eq!(r.status(), BuildStatus::Skipped);
        let text = fixture("build-result-v1-timed-out.json").unwrap();
        let r: BuildResult = serde_json::from_str(&text).unwrap();
        assert!(matches!(r, BuildResult::V1(_)));
        assert_eq!(r.status(), BuildStatus::TimedOut);
    }

    #[test]
    fn sequence_fixture_matches_our_publishing_order() {
        // BuildLogStart, BuildLogMsg 1..n, BuildResult to build-results, then to logs.
        let Some(text) = fixture("sequence-success.jsonl") else {
            return;
        };
        let msgs: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let body = |i: usize| serde_json::to_string(&msgs[i]["body"]).unwrap();
        let start: BuildLogStart = serde_json::from_str(&body(0)).unwrap();
        assert!(start.attempted_attrs.is_some());
        let n = msgs.len();
        for i in 1..n - 2 {
            let m: BuildLogMsg = serde_json::from_str(&body(i)).unwrap();
            assert_eq!(m.line_number, i as u64);
        }
        assert_eq!(msgs[n - 2]["exchange"], "build-results");
        assert_eq!(msgs[n - 1]["exchange"], "logs");
        let r: BuildResultV1 = serde_json::from_str(&body(n - 1)).unwrap();
        assert_eq!(r.status, BuildStatus::Success);
    }

    #[test]
    fn validate_rejects_hostile_jobs() {
        let Some(text) = fixture("build-job.json") else {
            return;
        };
        let job: BuildJob = serde_json::from_str(&text).unwrap();
        let mut j = job.clone();
        j.pr.head_sha = "HEAD; rm -rf /".into();
        assert!(j.validate().is_err());
        let mut j = job.clone();
        j.attrs = vec!["a b".into()];
        assert!(j.validate().is_err());
        let mut j = job;
        j.pr.target_branch = Some("--upload-pack=evil".into());
        assert!(j.validate().is_err());
    }
}
