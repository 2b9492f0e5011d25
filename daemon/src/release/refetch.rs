//! The fixed-output re-fetch before release (issue 30, docs/trust.md): a
//! quarantined job's fixed-output paths are fetched again from their own
//! derivations' URLs in a job VM of this builder (a fetch-phase VM where
//! the builder has a fetch network; one boot without a NIC otherwise),
//! and the job is released only if the bytes match. So a fixed-output
//! path is never released on one fetch's word: a hash that once came with
//! an attacker's bytes, or bytes that only one PR's URL served, is named
//! and refused.
//!
//! The state lives beside the quarantined job (`refetch.json`: the
//! re-fetch job's id); the re-fetch job's own finding in its job
//! directory (`jobs/<id>/refetch.json`, [`crate::job::RefetchOutcome`]).

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::store::QuarantinedJob;
use crate::job::{JobRecord, JobState, JobStore, Refetch, RefetchOutcome, RefetchPath, Source};

/// Queue a job (the scheduler's `enqueue`); returns its id.
pub type Enqueue = Arc<dyn Fn(JobRecord) -> Result<String, String> + Send + Sync>;

/// Whether a quarantined job may be released as far as its fixed-output
/// paths go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    /// No fixed-output paths, or all of them fetched again and equal.
    Ready,
    /// The re-fetch is queued or running.
    Held(String),
    /// The re-fetch found other bytes, or could not run.
    Refused(String),
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct State {
    job_id: String,
}

fn state_file(j: &QuarantinedJob) -> PathBuf {
    j.dir.join("refetch.json")
}

/// The job's fixed-output paths, as quarantine verified them.
pub fn fixed_outputs(j: &QuarantinedJob) -> Vec<RefetchPath> {
    j.verified
        .iter()
        .filter(|v| v.ca.as_deref().is_some_and(|ca| ca.starts_with("fixed:")))
        .map(|v| RefetchPath {
            path: v.path.clone(),
            nar_hash: v.nar_hash.clone(),
            deriver: v.deriver.clone(),
        })
        .collect()
}

/// The gate for `j`; queues its re-fetch job the first time it is asked.
pub fn gate(j: &QuarantinedJob, jobs: &JobStore, enqueue: Option<&Enqueue>) -> Gate {
    let fods = fixed_outputs(j);
    if fods.is_empty() {
        return Gate::Ready;
    }
    match std::fs::read(state_file(j)) {
        Ok(b) => match serde_json::from_slice::<State>(&b) {
            Ok(s) => judge(&s.job_id, &fods, jobs, j),
            Err(e) => Gate::Refused(format!(
                "{} is not a re-fetch state ({e}); remove it to re-fetch again",
                state_file(j).display()
            )),
        },
        Err(_) => start(j, fods, jobs, enqueue),
    }
}

/// What the gate says now, without queueing anything (release status).
pub fn describe(j: &QuarantinedJob, jobs: &JobStore) -> Option<String> {
    let fods = fixed_outputs(j);
    if fods.is_empty() {
        return None;
    }
    let s: Option<State> = std::fs::read(state_file(j))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    Some(match s {
        None => format!(
            "{} fixed-output path(s) to fetch again before release",
            fods.len()
        ),
        Some(s) => match judge(&s.job_id, &fods, jobs, j) {
            Gate::Ready => format!(
                "{} fixed-output path(s) fetched again: the same bytes (job {})",
                fods.len(),
                s.job_id
            ),
            Gate::Held(why) | Gate::Refused(why) => why,
        },
    })
}

fn start(
    j: &QuarantinedJob,
    fods: Vec<RefetchPath>,
    jobs: &JobStore,
    enqueue: Option<&Enqueue>,
) -> Gate {
    let Some(enqueue) = enqueue else {
        return Gate::Refused("no re-fetch of fixed-output paths possible here".into());
    };
    let orig = match jobs.load(&j.job_id) {
        Ok(r) => r,
        Err(e) => {
            return Gate::Refused(format!(
                "its fixed-output paths cannot be fetched again: job record {}: {e}",
                j.job_id
            ))
        }
    };
    let mut job = orig.job.clone();
    job.request_id = uuid::Uuid::new_v4().to_string();
    if job.airlock_review.take().is_some() || job.attrs.is_empty() {
        // A review built the attrs its report lists.
        job.attrs = reviewed_attrs(jobs, &j.job_id);
    }
    let n = fods.len();
    let mut rec = JobRecord::new(Source::Local, job);
    rec.refetch = Some(Refetch {
        of_job: j.job_id.clone(),
        paths: fods,
    });
    let id = match enqueue(rec) {
        Ok(id) => id,
        Err(e) => return Gate::Held(format!("cannot queue the fixed-output re-fetch yet: {e}")),
    };
    let st = State { job_id: id.clone() };
    if let Err(e) = crate::fsutil::write_atomic(
        &state_file(j),
        &serde_json::to_vec(&st).expect("serialises"),
    ) {
        return Gate::Refused(format!("cannot record the re-fetch job {id}: {e}"));
    }
    tracing::info!(job_id = %j.job_id, refetch_job = %id, paths = n, "release waits for the fixed-output re-fetch");
    Gate::Held(format!(
        "fetching its {n} fixed-output path(s) again from their own URLs (job {id})"
    ))
}

/// The attrs a review job built (its report's built attrs and tests).
fn reviewed_attrs(jobs: &JobStore, id: &str) -> Vec<String> {
    let Ok(b) = std::fs::read(jobs.paths(id).report_json()) else {
        return vec![];
    };
    let Ok(r) = serde_json::from_slice::<crate::review::report::Report>(&b) else {
        return vec![];
    };
    let c = r.categories();
    c.built.iter().chain(&c.tests).cloned().collect()
}

fn judge(id: &str, fods: &[RefetchPath], jobs: &JobStore, j: &QuarantinedJob) -> Gate {
    // A re-fetch interrupted by a restart runs again as another job.
    let mut id = id.to_owned();
    let mut rec = None;
    for _ in 0..8 {
        match jobs.load(&id) {
            Ok(r) => match r.retried_as.clone() {
                Some(next) => id = next,
                None => {
                    rec = Some(r);
                    break;
                }
            },
            Err(e) => {
                return Gate::Refused(format!(
                    "the re-fetch job {id} is gone ({e}); remove {} to re-fetch again",
                    state_file(j).display()
                ))
            }
        }
    }
    let Some(rec) = rec else {
        return Gate::Refused(format!("the re-fetch job {id} was retried too often"));
    };
    if rec.state != JobState::Done {
        return Gate::Held(format!(
            "waiting for the re-fetch of its {} fixed-output path(s) (job {id})",
            fods.len()
        ));
    }
    let outcome: Option<RefetchOutcome> = std::fs::read(jobs.paths(&id).refetch_outcome())
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let Some(o) = outcome else {
        let status = rec
            .result
            .as_ref()
            .map(|r| format!("{:?}", r.status))
            .unwrap_or_else(|| "no result".into());
        return Gate::Refused(format!(
            "the re-fetch job {id} ended without a finding ({status}); remove {} to re-fetch again",
            state_file(j).display()
        ));
    };
    if o.failed.is_empty() && fods.iter().all(|f| o.matched.contains(&f.path)) {
        return Gate::Ready;
    }
    let named: Vec<String> = o
        .failed
        .iter()
        .map(|f| {
            format!(
                "{} ({}): {}",
                f.deriver.as_deref().unwrap_or("derivation unknown"),
                f.path,
                f.why
            )
        })
        .collect();
    Gate::Refused(format!(
        "fixed-output re-fetch (job {id}) does not match: {}",
        named.join("; ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::RefetchFailure;
    use crate::quarantine::VerifiedPath;

    fn job(dir: &std::path::Path, jobs: &JobStore) -> QuarantinedJob {
        let bj = serde_json::from_str(r#"{"repo":{"owner":"o","name":"n","full_name":"o/n","clone_url":"/x"},"pr":{"target_branch":"master","number":7,"head_sha":"e9872fa30caac57c69bfac8667e6c21254603df1"},"attrs":["fod"],"request_id":"r"}"#).unwrap();
        let rec = JobRecord::new(Source::Local, bj);
        jobs.save(&rec).unwrap();
        let v = |n: &str, ca: Option<&str>| VerifiedPath {
            path: format!("/nix/store/ihml9cgha2ncb1jfpf857yd6nls4n23b-{n}"),
            nar_hash: "sha256:0x".into(),
            nar_size: 1,
            references: vec![],
            deriver: Some(format!(
                "/nix/store/0mdqa9w1p6cmli6976v4wi0sw9r4p5pr-{n}.drv"
            )),
            ca: ca.map(str::to_owned),
            url: "nar/x.nar".into(),
        };
        std::fs::create_dir_all(dir).unwrap();
        QuarantinedJob {
            commit: "e9872fa30caac57c69bfac8667e6c21254603df1".into(),
            job_id: rec.id,
            repo: "o/n".into(),
            pr: 7,
            created_at: 0,
            paths: vec![],
            dir: dir.to_owned(),
            verified: vec![v("src", Some("fixed:sha256:1b")), v("app", None)],
            base_branch: None,
        }
    }

    #[test]
    fn a_fixed_output_path_waits_for_its_refetch_and_is_refused_on_other_bytes() {
        let t = tempfile::tempdir().unwrap();
        let jobs = JobStore::new(t.path().join("jobs"));
        let j = job(&t.path().join("q"), &jobs);
        assert_eq!(fixed_outputs(&j).len(), 1);
        let queued = std::sync::Mutex::new(Vec::<JobRecord>::new());
        let js = jobs.clone();
        let q2 = Arc::new(queued);
        let q3 = q2.clone();
        let enqueue: Enqueue = Arc::new(move |r: JobRecord| {
            js.save(&r).unwrap();
            q3.lock().unwrap().push(r.clone());
            Ok(r.id)
        });
        // First ask: a re-fetch job is queued for exactly the FOD path.
        let g = gate(&j, &jobs, Some(&enqueue));
        assert!(
            matches!(&g, Gate::Held(w) if w.contains("fetching its 1 fixed-output")),
            "{g:?}"
        );
        let r = q2.lock().unwrap()[0].clone();
        let rf = r.refetch.clone().unwrap();
        assert_eq!(rf.paths[0].path, j.verified[0].path);
        assert_eq!(r.job.attrs, ["fod"]);
        // Asked again while it runs: held, nothing more queued.
        assert!(matches!(gate(&j, &jobs, Some(&enqueue)), Gate::Held(w) if w.contains("waiting")));
        assert_eq!(q2.lock().unwrap().len(), 1);
        // Done with other bytes: refused, naming the derivation.
        let mut done = r.clone();
        done.state = JobState::Done;
        jobs.save(&done).unwrap();
        let bad = RefetchOutcome {
            of_job: j.job_id.clone(),
            matched: vec![],
            failed: vec![RefetchFailure {
                path: rf.paths[0].path.clone(),
                deriver: rf.paths[0].deriver.clone(),
                why: "not fetched again".into(),
            }],
        };
        let file = jobs.paths(&r.id).refetch_outcome();
        std::fs::write(&file, serde_json::to_vec(&bad).unwrap()).unwrap();
        let g = gate(&j, &jobs, Some(&enqueue));
        assert!(
            matches!(&g, Gate::Refused(w) if w.contains("-src.drv") && w.contains("not fetched again")),
            "{g:?}"
        );
        assert!(describe(&j, &jobs).unwrap().contains("does not match"));
        // The same bytes: ready.
        let good = RefetchOutcome {
            of_job: j.job_id.clone(),
            matched: vec![rf.paths[0].path.clone()],
            failed: vec![],
        };
        std::fs::write(&file, serde_json::to_vec(&good).unwrap()).unwrap();
        assert_eq!(gate(&j, &jobs, Some(&enqueue)), Gate::Ready);
        // Without fixed-output paths there is nothing to wait for.
        let mut plain = j.clone();
        plain.verified.remove(0);
        assert_eq!(gate(&plain, &jobs, None), Gate::Ready);
        assert_eq!(describe(&plain, &jobs), None);
    }
}
