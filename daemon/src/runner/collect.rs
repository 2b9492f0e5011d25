//! After the build VM: read its export, verify it and move what passes
//! into quarantine; what fails is the job's error, and nothing is kept.

use std::collections::BTreeSet;
use std::io::Write as _;

use tracing::{info, warn};

use super::follow::Follower;
use super::{origin, Runner};
use crate::error::chain as error_chain;
use crate::job::{JobPaths, JobRecord, JobResult};
use crate::ofborg::BuildStatus;
use crate::quarantine;

impl Runner {
    pub(super) async fn collect(
        &self,
        rec: &JobRecord,
        paths: &JobPaths,
        res: JobResult,
        f: Follower,
        upstream: BTreeSet<String>,
    ) -> JobResult {
        let res = self.collect_export(rec, paths, res, f, upstream).await;
        if res.status != BuildStatus::Success && rec.refetch.is_none() {
            self.note_failures(rec, paths);
        }
        res
    }

    /// A trusted builder keeps which derivations failed to build here (its
    /// log says so), so another builder's attestation of them as built
    /// is a strike (docs/trust.md).
    fn note_failures(&self, rec: &JobRecord, paths: &JobPaths) {
        let Some(att) = &self.attestor else { return };
        if self.cfg.trust != crate::config::Trust::Trusted {
            return;
        }
        let log = std::fs::read(paths.build_log()).unwrap_or_default();
        for drv in crate::attest::pool::failed_derivations(&String::from_utf8_lossy(&log)) {
            if let Err(e) = att.pool.record_failure(&drv, &rec.id) {
                warn!(%drv, error = %error_chain(&e), "cannot record the failed derivation");
            }
        }
    }

    async fn collect_export(
        &self,
        rec: &JobRecord,
        paths: &JobPaths,
        mut res: JobResult,
        f: Follower,
        upstream: BTreeSet<String>,
    ) -> JobResult {
        let export = paths.export_img();
        let manifest = match quarantine::read_manifest(&export) {
            Ok(m) => m,
            Err(e) => {
                let why = f
                    .agent_error
                    .clone()
                    .unwrap_or_else(|| format!("VM produced no valid result: {e}"));
                warn!(%why, "no result from the VM");
                res.status = BuildStatus::UnexpectedError { err: why };
                return res;
            }
        };
        res.status = manifest.status.clone();
        res.attempted_attrs = Some(manifest.attempted_attrs.clone())
            .filter(|a| !a.is_empty() || res.status != BuildStatus::Skipped);
        res.skipped_attrs = Some(manifest.skipped_attrs.clone());
        if let Some(rf) = &rec.refetch {
            let none = manifest.paths.is_empty();
            return self
                .collect_refetch(rec, paths, res, rf, upstream, none)
                .await;
        }
        if manifest.paths.is_empty() {
            return res;
        }
        let imported = self
            .import(rec, paths, self.cfg.quarantine_dir(), origin(rec), upstream)
            .await;
        match imported {
            Ok(Ok(imp)) => {
                info!(dir = %imp.dir.display(), paths = imp.paths.len(), "outputs verified and quarantined");
                if let Some(att) = &self.attestor {
                    self.attest(att, rec, paths, &imp.verified);
                }
                res.quarantine = Some(imp.dir);
                res.store_paths = imp.paths.iter().map(|p| p.to_string()).collect();
            }
            Ok(Err(e)) => {
                let why = error_chain(&e);
                warn!(reason = %why, "export rejected; nothing quarantined");
                let mut log = std::fs::OpenOptions::new()
                    .append(true)
                    .open(paths.build_log())
                    .ok();
                if let Some(l) = log.as_mut() {
                    let _ = writeln!(l, "airlock: export rejected, nothing quarantined: {why}");
                }
                res.export_error = Some(why.clone());
                res.status = BuildStatus::UnexpectedError {
                    err: format!("export rejected: {why}"),
                };
            }
            Err(e) => {
                res.status = BuildStatus::UnexpectedError {
                    err: format!("export verification crashed: {e}"),
                };
            }
        }
        res
    }

    /// Verify the job's export and publish it under `root` (on a blocking
    /// thread); `Err` if that thread died.
    pub(super) async fn import(
        &self,
        rec: &JobRecord,
        paths: &JobPaths,
        root: std::path::PathBuf,
        origin: Option<quarantine::Origin>,
        upstream: BTreeSet<String>,
    ) -> Result<quarantine::Result<quarantine::Imported>, String> {
        let limits = quarantine::Limits::from_config(&self.cfg.limits);
        let export = paths.export_img();
        let (job_id, commit) = (rec.id.clone(), rec.job.pr.head_sha.clone());
        let (repo, pr) = (rec.job.repo.full_name.clone(), rec.job.pr.number);
        tokio::task::spawn_blocking(move || {
            let jr = quarantine::JobRef {
                job_id: &job_id,
                commit: &commit,
                repo: &repo,
                pr,
                origin,
                upstream: &upstream,
            };
            quarantine::import(&export, &root, &jr, &limits)
        })
        .await
        .map_err(|e| e.to_string())
    }

    /// A re-fetch job's export: verified as any export (into a scratch
    /// root, never the quarantine), each re-fetched path's recomputed NAR
    /// hash compared with the one about to be released; the finding in
    /// `refetch.json`, the status `Success` only if every path matched.
    async fn collect_refetch(
        &self,
        rec: &JobRecord,
        paths: &JobPaths,
        mut res: JobResult,
        rf: &crate::job::Refetch,
        upstream: BTreeSet<String>,
        nothing: bool,
    ) -> JobResult {
        let verified = if nothing {
            Ok(vec![])
        } else {
            let root = self.cfg.state_dir.join("refetch");
            match self.import(rec, paths, root, None, upstream).await {
                Ok(Ok(imp)) => {
                    let _ = std::fs::remove_dir_all(&imp.dir);
                    Ok(imp.verified)
                }
                Ok(Err(e)) => Err(error_chain(&e)),
                Err(e) => Err(e),
            }
        };
        let outcome = refetch_outcome(rf, verified.as_deref());
        if let Err(why) = &verified {
            warn!(%why, "re-fetch export rejected");
        }
        let mut lines = Vec::new();
        for f in &outcome.failed {
            warn!(path = %f.path, drv = ?f.deriver, why = %f.why, "fixed-output path not re-fetched as released");
            lines.push(format!(
                "airlock: re-fetch: {} ({}): {}",
                f.path,
                f.deriver.as_deref().unwrap_or("derivation unknown"),
                f.why
            ));
        }
        lines.push(format!(
            "airlock: re-fetch for job {}: {} of {} fixed-output paths match what is to be released",
            rf.of_job,
            outcome.matched.len(),
            rf.paths.len()
        ));
        info!(matched = outcome.matched.len(), failed = outcome.failed.len(), of_job = %rf.of_job, "re-fetch done");
        if let Ok(mut l) = std::fs::OpenOptions::new()
            .append(true)
            .open(paths.build_log())
        {
            for line in &lines {
                let _ = writeln!(l, "{line}");
            }
        }
        let file = paths.refetch_outcome();
        if let Err(e) =
            crate::fsutil::write_atomic(&file, &serde_json::to_vec(&outcome).expect("serialises"))
        {
            warn!(file = %file.display(), error = %e, "cannot write the re-fetch outcome");
        }
        res.status = if outcome.failed.is_empty() {
            BuildStatus::Success
        } else {
            BuildStatus::HashMismatch
        };
        res.output.extend(lines);
        res
    }

    /// Sign what was verified, append it to the builder's log and keep the
    /// job's own copy; a failure here is logged and costs the job nothing.
    fn attest(
        &self,
        att: &crate::attest::store::Attestor,
        rec: &JobRecord,
        paths: &JobPaths,
        verified: &[quarantine::VerifiedPath],
    ) {
        match att.attest(rec, verified) {
            Ok(list) => {
                let mut text = Vec::new();
                for a in &list {
                    text.extend(a.to_json());
                    text.push(b'\n');
                }
                let file = paths.attestations();
                match std::fs::write(&file, text) {
                    Ok(()) => info!(
                        count = list.len(),
                        builder = att.builder(),
                        "outputs attested"
                    ),
                    Err(e) => {
                        warn!(file = %file.display(), error = %e, "cannot write the job's attestations")
                    }
                }
            }
            Err(e) => warn!(error = %error_chain(&e), "outputs not attested"),
        }
    }
}

/// Compare a re-fetch's verified paths (or why its export was rejected)
/// with the paths about to be released.
pub(crate) fn refetch_outcome(
    rf: &crate::job::Refetch,
    verified: Result<&[quarantine::VerifiedPath], &String>,
) -> crate::job::RefetchOutcome {
    let mut out = crate::job::RefetchOutcome {
        of_job: rf.of_job.clone(),
        ..Default::default()
    };
    for want in &rf.paths {
        let why = match verified {
            Err(e) => Some(format!("the re-fetch's export was rejected: {e}")),
            Ok(v) => match v.iter().find(|p| p.path == want.path) {
                None => Some("not fetched again (its fetch failed or its URL now serves other bytes: see the re-fetch job's log)".to_owned()),
                Some(p) if p.nar_hash != want.nar_hash => Some(format!(
                    "fetched again with NAR hash {}, the job's was {}",
                    p.nar_hash, want.nar_hash
                )),
                Some(_) => None,
            },
        };
        match why {
            None => out.matched.push(want.path.clone()),
            Some(why) => out.failed.push(crate::job::RefetchFailure {
                path: want.path.clone(),
                deriver: want.deriver.clone(),
                why,
            }),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{Refetch, RefetchPath};

    #[test]
    fn a_refetch_matches_only_the_same_nar_hash() {
        let p = |n: &str, h: &str| RefetchPath {
            path: format!("/nix/store/ihml9cgha2ncb1jfpf857yd6nls4n23b-{n}"),
            nar_hash: h.into(),
            deriver: Some(format!(
                "/nix/store/0mdqa9w1p6cmli6976v4wi0sw9r4p5pr-{n}.drv"
            )),
        };
        let rf = Refetch {
            of_job: "j".into(),
            paths: vec![
                p("same", "sha256:1"),
                p("other", "sha256:2"),
                p("gone", "sha256:3"),
            ],
        };
        let v = |w: &RefetchPath, h: &str| quarantine::VerifiedPath {
            path: w.path.clone(),
            nar_hash: h.into(),
            nar_size: 1,
            references: vec![],
            deriver: None,
            ca: None,
            url: "nar/x.nar".into(),
        };
        let got = [v(&rf.paths[0], "sha256:1"), v(&rf.paths[1], "sha256:9")];
        let o = refetch_outcome(&rf, Ok(&got));
        assert_eq!(o.matched, [rf.paths[0].path.clone()]);
        assert_eq!(o.failed.len(), 2);
        assert!(o.failed[0].why.contains("sha256:9"), "{:?}", o.failed);
        assert!(o.failed[1].why.starts_with("not fetched again"));
        let rejected = "a NAR is malformed".to_owned();
        let o = refetch_outcome(&rf, Err(&rejected));
        assert!(o.matched.is_empty() && o.failed.iter().all(|f| f.why.contains("malformed")));
    }
}
