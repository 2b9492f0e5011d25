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
        if manifest.paths.is_empty() {
            return res;
        }
        let limits = quarantine::Limits::from_config(&self.cfg.limits);
        let root = self.cfg.quarantine_dir();
        let job_id = rec.id.clone();
        let commit = rec.job.pr.head_sha.clone();
        let repo = rec.job.repo.full_name.clone();
        let pr = rec.job.pr.number;
        let origin = origin(rec);
        let imported = tokio::task::spawn_blocking(move || {
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
        .map_err(|e| e.to_string());
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
