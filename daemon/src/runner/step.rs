//! A queue-runner step as a job (issue 31): no checkout, no evaluation.
//! The intake has fetched and checked the inputs into the job's
//! `step/` directory before the job was queued; here they go onto the
//! input disk with the agent and `job.json`, one VM builds the step (sealed,
//! or for a fixed-output step with the fetch phase's network and egress
//! policy), and its outputs are verified as quarantine verifies a job's
//! exports, into `<state_dir>/hydra/`.

use std::collections::BTreeSet;

use tracing::{info, warn};

use super::{end_with_error, JobEnd, Runner, Step};
use crate::error::chain as error_chain;
use crate::job::{HydraOrigin, JobPaths, JobRecord, JobResult, JobState};
use crate::ofborg::BuildStatus;
use crate::vm::VmExit;
use airlock_wire::{GuestJob, GuestStep, Phase, WIRE_VERSION};

/// The stand-in commit a step's outputs are kept under (quarantine keys
/// jobs by commit): 40 hex digits from the build id.
pub fn step_commit(build_id: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(&Sha256::digest(build_id.as_bytes())[..20])
}

impl Runner {
    pub(super) async fn run_step_inner(
        &self,
        rec: &mut JobRecord,
        paths: &JobPaths,
    ) -> Step<Box<JobResult>> {
        let Some(origin) = rec.hydra.clone() else {
            return Err(end_with_error("not a queue-runner step".into()));
        };
        self.not_cancelled(rec)?;
        if let Err(e) = self.make_step_disks(rec, paths, &origin).await {
            warn!(error = %e, "cannot prepare the step's VM disks");
            return Err(end_with_error(e));
        }
        self.mark(rec, "disks");
        let mut follower = self.follow(rec, paths)?;
        let exit = if origin.fixed_output {
            self.step_with_network(rec, paths, &mut follower).await
        } else {
            self.boot(rec, paths, Phase::All, None, &mut follower).await
        };
        let exit = exit.map_err(|e| {
            warn!(error = %e, "VM failed");
            end_with_error(e)
        })?;
        let res = match exit {
            VmExit::TimedOut => {
                let mut r = follower.result();
                r.status = BuildStatus::TimedOut;
                return Err(JobEnd(Box::new(r)));
            }
            VmExit::Killed(reason) => {
                let mut r = follower.result();
                r.status = BuildStatus::UnexpectedError { err: reason };
                return Err(JobEnd(Box::new(r)));
            }
            VmExit::PoweredOff { .. } => follower.result(),
        };
        self.advance(rec, JobState::Verifying);
        let res = self.collect_step(rec, paths, res, &origin).await;
        self.mark(rec, "verified");
        Ok(Box::new(res))
    }

    /// A fixed-output step: one boot on a job network behind the egress
    /// policy (no substituter: its inputs came from the runner).
    async fn step_with_network(
        &self,
        rec: &mut JobRecord,
        paths: &JobPaths,
        f: &mut super::follow::Follower,
    ) -> Result<VmExit, String> {
        let Some(net) = self.network.clone() else {
            return Err(
                "a fixed-output step needs [network] (the fetch phase's egress policy); it is off"
                    .into(),
            );
        };
        let jn = net
            .setup()
            .await
            .map_err(|e| format!("cannot set up the job network: {}", error_chain(&e)))?;
        let exit = self.boot(rec, paths, Phase::Fetch, Some(&jn), f).await;
        net.teardown(&jn).await;
        exit
    }

    /// The input disk: the step's material, `job.json` and the agent; an
    /// empty `/nix`; the export area.
    async fn make_step_disks(
        &self,
        rec: &JobRecord,
        paths: &JobPaths,
        origin: &HydraOrigin,
    ) -> Result<(), String> {
        let stage = paths.stage();
        let _ = std::fs::remove_dir_all(&stage);
        std::fs::create_dir_all(&stage).map_err(|e| format!("mkdir {}: {e}", stage.display()))?;
        let inputs_file = paths.step_dir().join("inputs.json");
        let inputs: Vec<airlock_wire::GuestInput> = serde_json::from_slice(
            &std::fs::read(&inputs_file).map_err(|e| format!("{}: {e}", inputs_file.display()))?,
        )
        .map_err(|e| format!("{}: {e}", inputs_file.display()))?;
        std::fs::rename(paths.step_dir(), stage.join("step"))
            .map_err(|e| format!("cannot stage the step's inputs: {e}"))?;
        let gj = GuestJob {
            version: WIRE_VERSION,
            phase: Phase::All,
            attrs: vec![],
            system: self.cfg.system.clone(),
            nix_file: String::new(),
            build_timeout_secs: self.cfg.limits.build_timeout_secs,
            max_silent_secs: self.cfg.limits.max_silent_secs,
            dns: self.guest_dns(),
            substituter: None,
            review: None,
            refetch: None,
            step: Some(GuestStep {
                drv_path: format!("{}/{}", self.cfg.hydra.store_dir, origin.drv),
                outputs: origin.outputs.clone(),
                inputs,
            }),
        };
        info!(job_id = %rec.id, inputs = origin.inputs.len(), "step staged");
        self.finish_disks(paths, &stage, &gj).await
    }

    /// The step's export, verified as quarantine verifies any export (the
    /// outputs may refer to themselves and to the step's inputs only),
    /// kept under `<state_dir>/hydra/` for the upload.
    async fn collect_step(
        &self,
        rec: &JobRecord,
        paths: &JobPaths,
        mut res: JobResult,
        origin: &HydraOrigin,
    ) -> JobResult {
        let manifest = match crate::quarantine::read_manifest(&paths.export_img()) {
            Ok(m) => m,
            Err(e) => {
                res.status = BuildStatus::UnexpectedError {
                    err: format!("VM produced no valid result: {e}"),
                };
                return res;
            }
        };
        res.status = manifest.status.clone();
        res.attempted_attrs = None;
        res.skipped_attrs = None;
        if manifest.paths.is_empty() {
            return res;
        }
        let unexpected: Vec<&String> = manifest
            .paths
            .iter()
            .map(|p| &p.path)
            .filter(|p| !origin.outputs.contains(p))
            .collect();
        if !unexpected.is_empty() {
            res.status = BuildStatus::UnexpectedError {
                err: format!(
                    "the VM exported paths that are not the step's outputs: {unexpected:?}"
                ),
            };
            return res;
        }
        let upstream: BTreeSet<String> = origin.inputs.iter().cloned().collect();
        let root = self.cfg.state_dir.join("hydra");
        match self.import(rec, paths, root, None, upstream).await {
            Ok(Ok(imp)) => {
                info!(dir = %imp.dir.display(), paths = imp.paths.len(), "step outputs verified");
                res.quarantine = Some(imp.dir);
                res.store_paths = imp.paths.iter().map(|p| p.to_string()).collect();
            }
            Ok(Err(e)) => {
                let why = error_chain(&e);
                warn!(reason = %why, "step export rejected");
                res.export_error = Some(why.clone());
                res.status = BuildStatus::UnexpectedError {
                    err: format!("export rejected: {why}"),
                };
            }
            Err(e) => {
                res.status = BuildStatus::UnexpectedError {
                    err: format!("export verification crashed: {e}"),
                }
            }
        }
        res
    }
}
