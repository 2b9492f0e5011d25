//! Review mode (issue 16): build everything a PR changes, run its tests,
//! and say which changed packages the passing tests vouch for.
//!
//! The diff itself ([`rebuild_set`]) lives in `airlock_wire::review`, as
//! the guest computes it too; this module turns the guest's
//! [`ReviewOutcome`] and the host's verified export into the report.

pub mod report;
pub mod verdict;

pub use airlock_wire::review::*;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::config::{Config, ReviewConfig};
use crate::job::{JobPaths, JobRecord};
use crate::ofborg::{BuildJob, BuildStatus, ReviewRequest};
use crate::quarantine::VerifiedPath;

/// Every review-specific decision about one job, in one value: the runner
/// asks [`Review::for_job`] and, for a build job, gets `None`.
pub struct Review<'a> {
    job: &'a BuildJob,
    req: &'a ReviewRequest,
    cfg: &'a ReviewConfig,
}

impl<'a> Review<'a> {
    pub fn for_job(job: &'a BuildJob, cfg: &'a ReviewConfig) -> Option<Review<'a>> {
        job.airlock_review
            .as_ref()
            .map(|req| Review { job, req, cfg })
    }

    /// The branch the head is merged onto and reviewed against: the
    /// request's, else `review.base_for` of the target branch, else the
    /// target branch.
    pub fn base(&self) -> &'a str {
        self.job.review_base(&self.cfg.base_for)
    }

    /// What the guest is asked to do (`seed`: the merged commit, which
    /// picks a mass rebuild's sample).
    pub fn guest(&self, seed: &str, system: &str) -> GuestReview {
        GuestReview {
            attrs: self.req.attrs.clone(),
            rebuild: match &self.req.ci_comparison {
                Some(c) => Some(c.rebuilds(system)),
                None => self.req.rebuild.clone(),
            },
            max_build: self.cfg.max_build,
            seed: seed.to_owned(),
            eval_only: self.req.eval_only,
            skip: self.cfg.skip_attrs.clone(),
        }
    }

    /// Does the fetch phase's status end the review? An evaluation that
    /// failed leaves nothing to build.
    pub fn ends_on(&self, fetch_status: &BuildStatus) -> bool {
        matches!(fetch_status, BuildStatus::UnexpectedError { .. })
    }
}

/// The branch a job's head is merged onto: the PR's target branch, or for
/// a review the branch it is reviewed against.
pub fn merge_onto<'a>(job: &'a BuildJob, cfg: &'a ReviewConfig) -> &'a str {
    match Review::for_job(job, cfg) {
        Some(r) => r.base(),
        None => job.target_branch(),
    }
}

/// What building a review report needs, owned (it runs on its own thread).
pub struct ReportInput {
    pub cfg: std::sync::Arc<Config>,
    pub rec: JobRecord,
    pub base_branch: String,
    pub quarantine: Option<PathBuf>,
    pub paths: JobPaths,
    pub outcome: ReviewOutcome,
    /// The PR as GitHub shows it now, for the merge verdict.
    pub pr_now: Option<verdict::PrNow>,
}

/// Build the report, write `report.json` and `report.md` (unless `late`
/// says the job has gone on without them), return its summary lines.
pub fn write_report(i: &ReportInput, late: &AtomicBool) -> Vec<String> {
    let (cfg, rec, rv) = (&i.cfg, &i.rec, &i.outcome);
    let verified = i
        .quarantine
        .as_deref()
        .and_then(|d| std::fs::read(d.join("manifest.json")).ok())
        .and_then(|b| serde_json::from_slice::<crate::quarantine::JobManifest>(&b).ok())
        .map(|m| m.verified)
        .unwrap_or_default();
    let hashes = verified
        .iter()
        .map(|v| (v.path.clone(), (v.nar_hash.clone(), v.nar_size)))
        .collect();
    let references = verified
        .iter()
        .map(|v| (v.path.clone(), v.references.clone()))
        .collect();
    let passed: Vec<(&str, &str)> = rv
        .tests
        .iter()
        .filter(|t| t.outcome == Outcome::Built)
        .flat_map(|t| t.outputs.values().map(|p| (t.attr.as_str(), p.as_str())))
        .collect();
    let artifacts = match &i.quarantine {
        Some(dir) => artifacts(&rec.id, dir, &verified, &passed),
        None => vec![],
    };
    let sponsor = cfg.sponsor.line().map(|line| report::Sponsor {
        name: cfg.sponsor.name.clone(),
        url: cfg.sponsor.url.clone(),
        line,
    });
    let requested = rec
        .job
        .airlock_review
        .as_ref()
        .and_then(|r| r.attrs.as_deref());
    let given: Option<Vec<String>> =
        rec.job
            .airlock_review
            .as_ref()
            .and_then(|r| match &r.ci_comparison {
                Some(c) => Some(c.rebuilds(&cfg.system)),
                None => r.rebuild.clone(),
            });
    let r = report::build(
        rv,
        report::Context {
            job_id: &rec.id,
            repo: &rec.job.repo.full_name,
            pr: rec.job.pr.number,
            head: &rec.job.pr.head_sha,
            base_branch: &i.base_branch,
            base_commit: rec.base_commit.as_deref(),
            merged_commit: rec.merged_commit.as_deref(),
            system: &cfg.system,
            guest_nix: rec.guest_nix.as_deref(),
            identity: &cfg.identity.name,
            trust: cfg.trust.as_str(),
            sponsor,
            requested,
            given: given.as_deref(),
            skip: &cfg.review.skip_attrs,
            max_build: cfg.review.max_build,
            verified: &hashes,
            references: &references,
            artifacts,
            attestations: job_attestations(&i.paths),
            bot_authors: &cfg.review.bot_authors,
            pr_now: i.pr_now.as_ref(),
        },
    );
    let mut r = r;
    ci_comparison_source(&mut r, rec, &cfg.system);
    let json = serde_json::to_vec_pretty(&r).expect("serialises");
    let md = report::markdown(&r);
    if late.load(Ordering::SeqCst) {
        return vec![];
    }
    for (path, body) in [
        (i.paths.report_json(), &json[..]),
        (i.paths.report_md(), md.as_bytes()),
    ] {
        if let Err(e) = crate::fsutil::write_atomic(&path, body) {
            tracing::warn!(error = %e, file = %path.display(), "cannot write the review report");
        }
    }
    report::summary_lines(&r)
}

/// A review whose rebuild list is nixpkgs CI's says so, and lists what CI
/// found removed.
fn ci_comparison_source(r: &mut report::Report, rec: &JobRecord, system: &str) {
    let Some(c) = rec
        .job
        .airlock_review
        .as_ref()
        .and_then(|q| q.ci_comparison.as_ref())
    else {
        return;
    };
    r.rebuild.source = format!(
        "nixpkgs CI's changed-paths.json (rebuildsByPlatform.{system}); the base was not evaluated"
    );
    r.rebuild.removed = c
        .attrdiff
        .removed
        .iter()
        .take(report::MAX_ATTRS)
        .cloned()
        .collect();
}

/// The job's own attestations (`jobs/<id>/attestations.jsonl`, written
/// by the host before the report), at most one per verified output.
fn job_attestations(paths: &JobPaths) -> Vec<crate::attest::Attestation> {
    let mut all = crate::attest::read_file(&paths.attestations());
    all.truncate(report::MAX_CLOSURE);
    all
}

/// Largest artifact the page shows.
pub const MAX_ARTIFACT_BYTES: u64 = 16 << 20;

/// What kind of artifact a file of a test's output is, by its name:
/// `image` (screenshots) or `log`; other files are not listed.
pub fn artifact_kind(file: &str) -> Option<&'static str> {
    let lower = file.to_ascii_lowercase();
    let ext = lower.rsplit_once('.').map(|(_, e)| e)?;
    match ext {
        "png" | "jpg" | "jpeg" => Some("image"),
        "log" | "txt" => Some("log"),
        _ => None,
    }
}

/// Most artifacts one review lists, and most from one output: the pairs
/// and files come from the guest, so the report's size is bounded here.
pub const MAX_ARTIFACTS: usize = 256;
pub const MAX_ARTIFACTS_PER_OUTPUT: usize = 32;

/// `s` percent-encoded for a URL path, `/` kept between segments: a file
/// name with `#` or `?` stays part of the path.
pub fn url_path(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/' | b'+' | b'=')
        {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The artifacts in the verified outputs of passing tests
/// (`passed`: test attr, output path), read from the quarantined NARs:
/// each output's NAR is read once however many tests name it, one test per
/// output is credited (the first), and the list is capped at
/// [`MAX_ARTIFACTS`] ([`MAX_ARTIFACTS_PER_OUTPUT`] per output).
pub fn artifacts(
    job_id: &str,
    qdir: &Path,
    verified: &[VerifiedPath],
    passed: &[(&str, &str)],
) -> Vec<report::Artifact> {
    let mut out = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for (test, path) in passed {
        if out.len() >= MAX_ARTIFACTS {
            break;
        }
        if !seen.insert(*path) {
            continue;
        }
        let Some(v) = verified.iter().find(|v| v.path == *path) else {
            continue;
        };
        let Ok(f) = std::fs::File::open(qdir.join(&v.url)) else {
            continue;
        };
        let Ok(files) = airlock_nix_formats::nar::files(std::io::BufReader::new(f)) else {
            continue;
        };
        let base = path.trim_start_matches("/nix/store/");
        let mut from_this = 0;
        for nf in files {
            if out.len() >= MAX_ARTIFACTS || from_this >= MAX_ARTIFACTS_PER_OUTPUT {
                break;
            }
            let name = if nf.path.is_empty() {
                base.to_owned()
            } else {
                nf.path.clone()
            };
            let Some(kind) = artifact_kind(&name) else {
                continue;
            };
            if nf.size > MAX_ARTIFACT_BYTES {
                continue;
            }
            from_this += 1;
            out.push(report::Artifact {
                test: test.to_string(),
                store_path: path.to_string(),
                url: format!(
                    "/jobs/{}/artifacts/{}/{}",
                    url_path(job_id),
                    url_path(base),
                    url_path(&nf.path)
                ),
                file: nf.path,
                size: nf.size,
                kind: kind.into(),
                nar: v.url.clone(),
                offset: nf.offset,
            });
        }
    }
    out
}

/// The bytes of an artifact the report lists, read at its offset in its
/// NAR (no parse of the NAR: it was verified at import). `nar` must be a
/// quarantine NAR name (`nar/<nix32 hash>.nar`).
pub fn artifact_at(qdir: &Path, a: &report::Artifact) -> Option<(&'static str, Vec<u8>)> {
    use std::io::{Read, Seek};
    let hash = a.nar.strip_prefix("nar/")?.strip_suffix(".nar")?;
    if hash.len() != 52 || !hash.bytes().all(airlock_nix_formats::nix32::is_nix32_char) {
        return None;
    }
    let name = if a.file.is_empty() {
        a.store_path.rsplit('/').next()?
    } else {
        &a.file
    };
    let kind = artifact_kind(name)?;
    if a.size > MAX_ARTIFACT_BYTES || a.offset == 0 {
        return None;
    }
    let mut f = std::fs::File::open(qdir.join(&a.nar)).ok()?;
    f.seek(std::io::SeekFrom::Start(a.offset)).ok()?;
    let mut buf = vec![0; a.size as usize];
    f.read_exact(&mut buf).ok()?;
    Some((kind, buf))
}

/// The bytes of one artifact of a job's quarantined outputs: `base` is
/// the store path's name, `file` a path inside it. Only files
/// [`artifact_kind`] names, only from verified NARs.
pub fn artifact_bytes(
    qdir: &Path,
    verified: &[VerifiedPath],
    base: &str,
    file: &str,
) -> Option<(&'static str, Vec<u8>)> {
    use std::io::{Read, Seek};
    let path = format!("/nix/store/{base}");
    let v = verified.iter().find(|v| v.path == path)?;
    let name = if file.is_empty() { base } else { file };
    let kind = artifact_kind(name)?;
    let mut f = std::fs::File::open(qdir.join(&v.url)).ok()?;
    let nf = airlock_nix_formats::nar::files(std::io::BufReader::new(&mut f))
        .ok()?
        .into_iter()
        .find(|nf| nf.path == file)?;
    if nf.size > MAX_ARTIFACT_BYTES {
        return None;
    }
    f.seek(std::io::SeekFrom::Start(nf.offset)).ok()?;
    let mut buf = vec![0; nf.size as usize];
    f.read_exact(&mut buf).ok()?;
    Some((kind, buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 27, item 2: 500 (test, output) pairs naming one output whose
    /// NAR holds 2,000 screenshots gave 1,000,000 artifacts (a 205 MiB
    /// report.json) and read the NAR 500 times.
    #[test]
    fn artifacts_are_bounded_whatever_the_guest_claims() {
        use airlock_nix_formats::nar::build::{nar, Node};
        let dir = tempfile::tempdir().unwrap();
        let names: Vec<String> = (0..2000).map(|i| format!("shot-{i:04}.png")).collect();
        let entries = names
            .iter()
            .map(|n| {
                (
                    n.as_str(),
                    Node::File {
                        exec: false,
                        data: b"png",
                    },
                )
            })
            .collect();
        std::fs::create_dir_all(dir.path().join("nar")).unwrap();
        std::fs::write(dir.path().join("nar/x.nar"), nar(&Node::Dir(entries))).unwrap();
        let path = "/nix/store/00000000000000000000000000000000-shots";
        let verified = vec![VerifiedPath {
            path: path.into(),
            nar_hash: String::new(),
            nar_size: 0,
            references: vec![],
            deriver: None,
            ca: None,
            url: "nar/x.nar".into(),
        }];
        let tests: Vec<String> = (0..500).map(|i| format!("test-{i}")).collect();
        let passed: Vec<(&str, &str)> = tests.iter().map(|t| (t.as_str(), path)).collect();
        let t0 = std::time::Instant::now();
        let a = artifacts("j", dir.path(), &verified, &passed);
        let took = t0.elapsed();
        assert_eq!(a.len(), MAX_ARTIFACTS_PER_OUTPUT, "one output, read once");
        assert!(a.iter().all(|x| x.test == "test-0"));
        let json = serde_json::to_vec(&a).unwrap();
        println!(
            "500 pairs x 2000 files: {} artifacts, {} bytes of JSON, {took:?}",
            a.len(),
            json.len()
        );
        assert!(json.len() < 64 << 10, "{}", json.len());
    }

    #[test]
    fn artifact_urls_keep_hash_and_question_mark_in_the_path() {
        assert_eq!(url_path("shots/a #1?.png"), "shots/a%20%231%3F.png");
        assert_eq!(url_path("x\n<y>"), "x%0A%3Cy%3E");
        assert_eq!(url_path("abc-1.2_3~/z"), "abc-1.2_3~/z");
    }
}
