//! ofborg's builder messages, field for field and in ofborg's field order, so
//! that `serde_json::to_string` produces the same bytes ofborg does.

use serde::{Deserialize, Serialize};

pub use airlock_wire::BuildStatus;

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
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("head_sha {0:?} is not a 40-digit hex commit id")]
    BadSha(String),
    #[error("attribute path {0:?} is not allowed")]
    BadAttr(String),
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
        for a in &self.attrs {
            // ofborg takes comment tokens verbatim (printable ASCII); they become
            // one argv entry each, never a shell word.
            if a.is_empty() || a.len() > 1024 || !a.bytes().all(|c| c.is_ascii_graphic()) {
                return Err(Error::BadAttr(a.clone()));
            }
        }
        let b = self.target_branch();
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

#[cfg(test)]
mod tests {
    use super::*;

    const FIX: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/fixtures/ofborg/handwritten"
    );

    fn fixture(name: &str) -> Option<String> {
        std::fs::read_to_string(format!("{FIX}/{name}")).ok()
    }

    #[test]
    fn build_jobs_roundtrip_byte_for_byte() {
        for f in [
            "build-job.json",
            "build-job-auto.json",
            "build-job-null-destinations.json",
        ] {
            let Some(text) = fixture(f) else {
                eprintln!("SKIP: shared fixtures not found at {FIX}");
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
