//! Review jobs (issue 16) inside the VM: evaluate the base and the merged
//! tree with `review-eval.nix`, diff their out-paths, evaluate the changed
//! attrs' `passthru.tests`, realise what is to be built, then record what
//! was built and, for every test that passed, which changed attrs are in
//! its build and runtime closures (the evidence map).
//!
//! The fetch boot evaluates and saves its plan on the job's `/nix` disk;
//! the build boot realises it. Everything here is the guest's claim: the
//! host checks "built" against the export it verified.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use airlock_wire::review::{
    out_paths, rebuild_set, AttrEval, BaseCheck, BaseResult, GuestReview, Outcome, RebuildSet,
    ReviewOutcome, ReviewedAttr, ReviewedTest, LOG_TAIL_LINES,
};
use airlock_wire::{BootParams, BuildStatus, Event, GuestJob, Manifest, Phase, WIRE_VERSION};

use super::{
    counting_builds, fetch, finish, nix_store, plan, realise, show_derivations, valid_paths,
    Channel, Timed, BUILD_PHASE_OPTIONS,
};

const EVAL_NIX: &str = include_str!("review-eval.nix");
const NO_KVM: &str = "needs KVM inside the VM, and this builder cannot give its VMs nested KVM";
const DIR: &str = "/nix/var/airlock/review";
const SAVED: &str = "/nix/var/airlock/review/plan.json";

/// `review-eval.nix`'s "tests" mode: an attr and its `passthru.tests`.
#[derive(serde::Deserialize)]
struct Tested {
    #[serde(default, rename = "drvPath")]
    drv_path: Option<String>,
    #[serde(default)]
    kvm: bool,
    #[serde(default)]
    outputs: BTreeMap<String, String>,
    #[serde(default)]
    tests: BTreeMap<String, TestEval>,
}

#[derive(serde::Deserialize)]
struct TestEval {
    #[serde(default, rename = "drvPath")]
    drv_path: Option<String>,
    #[serde(default)]
    outputs: BTreeMap<String, String>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    kvm: bool,
    #[serde(default)]
    nixos: bool,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Saved {
    outcome: ReviewOutcome,
    drvs: Vec<String>,
}

/// The review's base tree: `base-src/` on the input disk, or the base
/// disk's tree (the host attaches exactly the base commit's image for a
/// review job).
fn base_tree(input: &Path) -> PathBuf {
    let whole = input.join("base-src");
    if whole.is_dir() {
        whole
    } else {
        PathBuf::from("/run/base/tree")
    }
}

pub(crate) fn run(
    job: &GuestJob,
    rv: &GuestReview,
    input: &Path,
    src: &Path,
    boot: &BootParams,
    export: &Path,
    ch: &Channel,
) -> Result<(), String> {
    let phase = boot.phase;
    let saved: Option<Saved> = (phase == Phase::Build)
        .then(|| std::fs::read(SAVED).ok())
        .flatten()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let Saved { mut outcome, drvs } = match saved {
        Some(s) => s,
        None => {
            let s = evaluate(job, rv, input, src, ch)?;
            std::fs::write(SAVED, serde_json::to_vec(&s).unwrap_or_default())
                .map_err(|e| format!("cannot save the review plan: {e}"))?;
            s
        }
    };
    let attempted: Vec<String> = outcome
        .attrs
        .iter()
        .map(|a| a.attr.clone())
        .chain(
            outcome
                .tests
                .iter()
                .filter(|t| !matches!(t.outcome, Outcome::Skipped(_)))
                .map(|t| t.attr.clone()),
        )
        .collect();
    let skipped: Vec<String> = outcome
        .tests
        .iter()
        .filter(|t| matches!(t.outcome, Outcome::Skipped(_)))
        .map(|t| t.attr.clone())
        .collect();
    if phase != Phase::Build {
        ch.event(&Event::Instantiated {
            attempted: attempted.clone(),
            skipped: skipped.clone(),
        });
    }
    let status = if drvs.is_empty() {
        // Nothing to build (evaluation only, or nothing changed).
        BuildStatus::Skipped
    } else if phase == Phase::Fetch {
        let gateway = boot.net.as_ref().map(|(_, gw)| gw.as_str());
        fetch(job, &drvs, gateway, ch)?
    } else {
        let extra: Vec<String> = if phase == Phase::Build {
            BUILD_PHASE_OPTIONS.map(String::from).to_vec()
        } else {
            vec![]
        };
        let st = counting_builds(&drvs, ch, || realise(job, &drvs, &extra, ch))?;
        record_outcomes(&mut outcome, ch)?;
        failure_logs(&mut outcome);
        check_base(job, input, &mut outcome, ch);
        st
    };
    let m = Manifest {
        version: WIRE_VERSION,
        phase,
        status,
        attempted_attrs: attempted,
        skipped_attrs: skipped,
        paths: vec![],
        review: Some(outcome),
    };
    finish(export, m, &drvs, ch)
}

/// `review-eval.nix` over one tree.
fn eval_tree<T: serde::de::DeserializeOwned>(
    job: &GuestJob,
    tree: &Path,
    mode: &str,
    file: Option<(&str, &Path)>,
) -> Result<T, String> {
    let mut cmd = Command::new("nix-instantiate");
    cmd.current_dir(tree)
        .env_clear()
        .env("PATH", "/usr/bin:/usr/sbin:/bin:/sbin")
        .env("HOME", "/tmp")
        .env("TMPDIR", "/nix/var/airlock-tmp")
        // Restricted evaluation may read the tree and the review's own files.
        .env(
            "NIX_PATH",
            format!("ofborg-nixpkgs-pr={}:airlock-review={DIR}", tree.display()),
        )
        .stdin(Stdio::null())
        .args(["--eval", "--strict", "--json"])
        .args(["--option", "restrict-eval", "true"]);
    if mode == "tests" {
        // The test derivations are realised later: their .drv files must exist.
        cmd.arg("--read-write-mode");
    }
    cmd.arg(format!("{DIR}/eval.nix"))
        .arg("--arg")
        .arg("src")
        .arg(tree)
        .args(["--argstr", "entry", &job.nix_file])
        .args(["--argstr", "system", &job.system])
        .args(["--argstr", "mode", mode]);
    if let Some((arg, f)) = file {
        cmd.arg("--arg").arg(arg).arg(f);
    }
    let out = cmd
        .timed_output()
        .map_err(|e| format!("cannot run nix-instantiate: {e}"))?;
    if !out.status.success() {
        use std::os::unix::process::ExitStatusExt;
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(20).collect();
        let killed = match out.status.signal() {
            Some(9) => " (nix-instantiate was killed: out of memory?)".to_owned(),
            Some(s) => format!(" (nix-instantiate died of signal {s})"),
            None => String::new(),
        };
        return Err(format!(
            "the review evaluation of {} failed{killed}: {}",
            tree.display(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("review evaluation output: {e}"))
}

/// Evaluations a review may spend on finding the attrs that end an
/// evaluation (beyond the first).
const MAX_SPLITS: usize = 96;

/// The out-paths of one tree: of `list`, or of every attr (by top-level
/// name). An attr whose evaluation cannot be caught (a missing attribute,
/// `abort`) ends Nix's whole run: the list is split in halves until the
/// attr is found, which is then reported `broken`.
fn eval_outpaths(
    job: &GuestJob,
    tree: &Path,
    list: Option<&[String]>,
    ch: &Channel,
) -> Result<BTreeMap<String, AttrEval>, String> {
    let (items, arg) = match list {
        Some(l) => (l.to_vec(), "attrsFile"),
        None => (eval_tree(job, tree, "names", None)?, "rootsFile"),
    };
    let mut budget = MAX_SPLITS;
    let mut out = BTreeMap::new();
    let mut todo = vec![items];
    while let Some(items) = todo.pop() {
        let f = write_list("part.json", &items)?;
        match eval_tree::<BTreeMap<String, AttrEval>>(job, tree, "outpaths", Some((arg, &f))) {
            Ok(m) => out.extend(m),
            // Out of memory is not one attr's fault: the review ends.
            Err(e) if e.contains("nix-instantiate was killed") => return Err(e),
            Err(e) if items.len() == 1 => {
                ch.log(&format!(
                    "airlock: review: {} cannot be evaluated and ends the evaluation: {}",
                    items[0],
                    e.lines().last().unwrap_or_default()
                ));
                out.insert(
                    items[0].clone(),
                    AttrEval {
                        error: Some("broken".into()),
                        ..AttrEval::default()
                    },
                );
            }
            Err(e) => {
                // Not one attr's fault if the tree does not even import.
                if budget == MAX_SPLITS {
                    let empty = write_list("part.json", &[])?;
                    eval_tree::<BTreeMap<String, AttrEval>>(
                        job,
                        tree,
                        "outpaths",
                        Some((arg, &empty)),
                    )?;
                }
                if budget < 2 {
                    return Err(format!(
                        "{e}\n(too many attrs end the evaluation to find them all)"
                    ));
                }
                budget -= 2;
                let (a, b) = items.split_at(items.len() / 2);
                todo.push(b.to_vec());
                todo.push(a.to_vec());
            }
        }
    }
    Ok(out)
}

fn write_list(name: &str, attrs: &[String]) -> Result<PathBuf, String> {
    let p = Path::new(DIR).join(name);
    std::fs::write(&p, serde_json::to_vec(attrs).unwrap_or_default())
        .map_err(|e| format!("cannot write {}: {e}", p.display()))?;
    Ok(p)
}

fn evaluate(
    job: &GuestJob,
    rv: &GuestReview,
    input: &Path,
    src: &Path,
    ch: &Channel,
) -> Result<Saved, String> {
    std::fs::create_dir_all(DIR).map_err(|e| format!("mkdir {DIR}: {e}"))?;
    std::fs::write(Path::new(DIR).join("eval.nix"), EVAL_NIX)
        .map_err(|e| format!("cannot write eval.nix: {e}"))?;
    let mut outcome = ReviewOutcome {
        kvm: Path::new("/dev/kvm").exists(),
        ..ReviewOutcome::default()
    };
    // 1. The base (unless the rebuild list was given) and the merged tree.
    if let Some(given) = &rv.rebuild {
        ch.log(&format!(
            "airlock: review: the rebuild list was given ({} attrs): the base is not evaluated",
            given.len()
        ));
    } else {
        let t = Instant::now();
        outcome.base = eval_outpaths(job, &base_tree(input), rv.attrs.as_deref(), ch)?;
        outcome.eval_ms.0 = t.elapsed().as_millis() as u64;
        ch.log(&format!(
            "airlock: review: evaluated the base: {} attrs in {:.1}s",
            outcome.base.len(),
            outcome.eval_ms.0 as f64 / 1000.0
        ));
    }
    let t = Instant::now();
    outcome.merged = eval_outpaths(job, src, rv.attrs.as_deref(), ch)?;
    // Never an empty review for an evaluation that did not work: a whole
    // tree of which not one attr evaluates did not evaluate.
    if rv.attrs.is_none()
        && !outcome.merged.is_empty()
        && outcome
            .merged
            .values()
            .all(|e| e.error.as_deref() == Some("broken"))
    {
        return Err(format!(
            "the review evaluation of the merged tree failed: none of its {} attrs evaluates (is the evaluation out of memory? see the lines above)",
            outcome.merged.len()
        ));
    }
    outcome.eval_ms.1 = t.elapsed().as_millis() as u64;
    ch.log(&format!(
        "airlock: review: evaluated the merged tree: {} attrs in {:.1}s",
        outcome.merged.len(),
        outcome.eval_ms.1 as f64 / 1000.0
    ));
    // 2. The diff.
    let mut rebuild = match &rv.rebuild {
        Some(given) => given_rebuild(given, &outcome.merged, rv),
        None => rebuild_set(
            &out_paths(&outcome.base),
            &out_paths(&outcome.merged),
            rv.max_build,
            &rv.seed,
        ),
    };
    rebuild.build.retain(|a| !rv.skip.contains(a));
    ch.log(&format!(
        "airlock: review: {} attrs changed, {} removed{}; building {}",
        rebuild.changed.len(),
        rebuild.removed.len(),
        if rebuild.mass_rebuild {
            format!(
                " (mass rebuild: more than {}, a sample is built)",
                rv.max_build
            )
        } else {
            String::new()
        },
        rebuild.build.len()
    ));
    // 3. The attrs to build and their tests, instantiated.
    let tested: BTreeMap<String, Tested> = if rebuild.build.is_empty() {
        BTreeMap::new()
    } else {
        let f = write_list("build.json", &rebuild.build)?;
        eval_tree(job, src, "tests", Some(("attrsFile", &f)))?
    };
    let mut drvs = Vec::new();
    let why_not = rv.eval_only.then(|| "evaluation only".to_owned());
    for (attr, e) in &tested {
        let Some(drv) = e.drv_path.clone() else {
            continue;
        };
        let skip = why_not
            .clone()
            .or_else(|| (e.kvm && !outcome.kvm).then(|| NO_KVM.to_owned()));
        if skip.is_none() {
            drvs.push(drv.clone());
        }
        outcome.attrs.push(ReviewedAttr {
            attr: attr.clone(),
            drv_path: drv,
            outputs: e.outputs.clone(),
            outcome: Outcome::Skipped(skip.unwrap_or_else(|| "not built".into())),
        });
        for (name, t) in &e.tests {
            let test_attr = format!("{attr}.passthru.tests.{name}");
            let skip = match (&t.drv_path, &why_not) {
                (None, _) => Some(format!(
                    "does not evaluate ({})",
                    t.error.as_deref().unwrap_or("?")
                )),
                (_, Some(w)) => Some(w.clone()),
                (Some(_), None) if t.kvm && !outcome.kvm => Some(NO_KVM.into()),
                _ => None,
            };
            if skip.is_none() {
                drvs.extend(t.drv_path.clone());
            }
            outcome.tests.push(ReviewedTest {
                attr: test_attr,
                of: attr.clone(),
                drv_path: t.drv_path.clone().unwrap_or_default(),
                outputs: t.outputs.clone(),
                nixos: t.nixos,
                outcome: Outcome::Skipped(skip.unwrap_or_else(|| "not built".into())),
                build_closure: vec![],
                runtime_closure: vec![],
            });
        }
    }
    for t in &outcome.tests {
        ch.log(&format!(
            "airlock: review: test {}{}",
            t.attr,
            match &t.outcome {
                Outcome::Skipped(w) if w != "not built" => format!(" skipped: {w}"),
                _ => String::new(),
            }
        ));
    }
    drvs.sort();
    drvs.dedup();
    outcome.rebuild = rebuild;
    Ok(Saved { outcome, drvs })
}

/// A rebuild list from the central side: the attrs of it the merged tree
/// has, capped like a computed one.
fn given_rebuild(
    given: &[String],
    merged: &BTreeMap<String, AttrEval>,
    rv: &GuestReview,
) -> RebuildSet {
    let changed: Vec<String> = given
        .iter()
        .filter(|a| merged.get(*a).is_some_and(|e| e.error.is_none()))
        .cloned()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mass_rebuild = changed.len() > rv.max_build;
    let build = if mass_rebuild {
        airlock_wire::review::sample(&changed, rv.max_build, &rv.seed)
    } else {
        changed.clone()
    };
    RebuildSet {
        changed,
        removed: vec![],
        mass_rebuild,
        build,
    }
}

/// After the build: built or failed, and each passing test's evidence.
fn record_outcomes(o: &mut ReviewOutcome, ch: &Channel) -> Result<(), String> {
    let all: Vec<String> = o
        .attrs
        .iter()
        .flat_map(|a| a.outputs.values().cloned())
        .chain(o.tests.iter().flat_map(|t| t.outputs.values().cloned()))
        .collect();
    let valid: BTreeSet<String> = valid_paths(all)?.into_iter().collect();
    let built = |outs: &BTreeMap<String, String>| outs.values().all(|p| valid.contains(p));
    for a in o
        .attrs
        .iter_mut()
        .filter(|a| a.outcome == Outcome::Skipped("not built".into()))
    {
        a.outcome = if built(&a.outputs) {
            Outcome::Built
        } else {
            Outcome::Failed
        };
    }
    // The changed attrs' derivations and outputs, to look for in closures.
    let changed: BTreeMap<&String, &AttrEval> = o
        .rebuild
        .changed
        .iter()
        .filter_map(|a| o.merged.get(a).map(|e| (a, e)))
        .collect();
    for t in &mut o.tests {
        if t.outcome != Outcome::Skipped("not built".into()) {
            continue;
        }
        if !built(&t.outputs) {
            t.outcome = Outcome::Failed;
            continue;
        }
        t.outcome = Outcome::Built;
        let drv_closure: BTreeSet<String> = nix_store(&["-qR"], std::slice::from_ref(&t.drv_path))?
            .into_iter()
            .collect();
        let outs: Vec<String> = t.outputs.values().cloned().collect();
        let run_closure: BTreeSet<String> = nix_store(&["-qR"], &outs)?.into_iter().collect();
        for (attr, e) in &changed {
            if e.drv_path.as_ref().is_some_and(|d| drv_closure.contains(d)) {
                t.build_closure.push((*attr).clone());
            }
            if e.outputs.values().any(|p| run_closure.contains(p)) {
                t.runtime_closure.push((*attr).clone());
            }
        }
        ch.log(&format!(
            "airlock: review: test {} passed; its closure holds {} changed attrs",
            t.attr,
            t.build_closure.len().max(t.runtime_closure.len())
        ));
    }
    Ok(())
}

/// Most failed attrs built again on the base, and most failure logs kept.
const MAX_BASE_CHECKS: usize = 100;
const MAX_LOGS: usize = 200;

/// Issue 32: every failed attr and test is built again as the base has it
/// (the base tree is on the VM's disks), so the report can tell the PR's
/// failures from those the base has too. Offline: a base version that
/// needs a source the fetch phase did not fetch is not checked (and so
/// stays the PR's failure). Never fails the job: what cannot be checked
/// says why.
fn check_base(job: &GuestJob, input: &Path, o: &mut ReviewOutcome, ch: &Channel) {
    // (failed attr or test, the attr to instantiate on the base, the test's name)
    let failed: Vec<(String, String, Option<String>)> = o
        .attrs
        .iter()
        .filter(|a| a.outcome == Outcome::Failed)
        .map(|a| (a.attr.clone(), a.attr.clone(), None))
        .chain(
            o.tests
                .iter()
                .filter(|t| t.outcome == Outcome::Failed)
                .filter_map(|t| {
                    let name = t.attr.strip_prefix(&format!("{}.passthru.tests.", t.of))?;
                    Some((t.attr.clone(), t.of.clone(), Some(name.to_owned())))
                }),
        )
        .collect();
    if failed.is_empty() {
        return;
    }
    let mut failed = failed;
    for (attr, _, _) in failed.split_off(failed.len().min(MAX_BASE_CHECKS)) {
        o.base_checks.insert(
            attr,
            not_checked(&format!(
                "more than {MAX_BASE_CHECKS} failures: the rest are not built on the base"
            )),
        );
    }
    let merged_drv: BTreeMap<&str, &str> = o
        .attrs
        .iter()
        .map(|a| (a.attr.as_str(), a.drv_path.as_str()))
        .chain(
            o.tests
                .iter()
                .map(|t| (t.attr.as_str(), t.drv_path.as_str())),
        )
        .collect();
    let of: BTreeSet<String> = failed.iter().map(|(_, a, _)| a.clone()).collect();
    ch.log(&format!(
        "airlock: review: {} failed; building them as the base has them",
        failed.len()
    ));
    let base: Result<BTreeMap<String, Tested>, String> =
        write_list("base-check.json", &of.into_iter().collect::<Vec<_>>())
            .and_then(|f| eval_tree(job, &base_tree(input), "tests", Some(("attrsFile", &f))));
    let base = match base {
        Ok(b) => b,
        Err(e) => {
            let why = format!(
                "the base does not evaluate: {}",
                e.lines().last().unwrap_or_default()
            );
            for (attr, _, _) in failed {
                o.base_checks.insert(attr, not_checked(&why));
            }
            return;
        }
    };
    let mut to_build: Vec<(String, String, BTreeMap<String, String>)> = Vec::new();
    for (attr, of, test) in failed {
        let found = base.get(&of).and_then(|e| match &test {
            None => e.drv_path.clone().map(|d| (d, e.outputs.clone())),
            Some(t) => e
                .tests
                .get(t)
                .and_then(|t| t.drv_path.clone().map(|d| (d, t.outputs.clone()))),
        });
        let check = match found {
            None => BaseCheck {
                result: BaseResult::NotOnBase,
                drv_path: String::new(),
                outputs: BTreeMap::new(),
            },
            Some((drv, outputs)) if merged_drv.get(attr.as_str()) == Some(&drv.as_str()) => {
                BaseCheck {
                    result: BaseResult::FailedOnBase(
                        "the base has the very derivation that failed".into(),
                    ),
                    drv_path: drv,
                    outputs,
                }
            }
            Some((drv, outputs)) => {
                to_build.push((attr, drv, outputs));
                continue;
            }
        };
        o.base_checks.insert(attr, check);
    }
    if to_build.is_empty() {
        return;
    }
    // Sources the fetch phase did not fetch cannot be had now (no NIC).
    let drvs: Vec<String> = to_build.iter().map(|(_, d, _)| d.clone()).collect();
    let missing_fods: BTreeSet<String> = plan(&drvs, None)
        .map(|p| p.build)
        .and_then(|b| show_derivations(&b, false))
        .map(|m| {
            m.into_iter()
                .filter(|(_, d)| {
                    d["outputs"]
                        .as_object()
                        .is_some_and(|outs| outs.values().any(|o| o.get("hash").is_some()))
                })
                .map(|(p, _)| p)
                .collect()
        })
        .unwrap_or_default();
    let mut buildable = Vec::new();
    for (attr, drv, outputs) in to_build {
        let needs: Vec<String> = if missing_fods.is_empty() {
            vec![]
        } else {
            nix_store(&["-qR"], std::slice::from_ref(&drv))
                .unwrap_or_default()
                .into_iter()
                .filter(|d| missing_fods.contains(d))
                .collect()
        };
        if let Some(src) = needs.first() {
            let why = format!("its base version needs {src}, which this review did not fetch");
            o.base_checks.insert(
                attr,
                BaseCheck {
                    result: BaseResult::NotChecked(why),
                    drv_path: drv,
                    outputs,
                },
            );
        } else {
            buildable.push((attr, drv, outputs));
        }
    }
    if buildable.is_empty() {
        return;
    }
    let drvs: Vec<String> = buildable.iter().map(|(_, d, _)| d.clone()).collect();
    let extra: Vec<String> = BUILD_PHASE_OPTIONS.map(String::from).to_vec();
    let why_not = match realise(job, &drvs, &extra, ch) {
        Err(e) => Some(format!("cannot build on the base: {e}")),
        Ok(BuildStatus::TimedOut) => Some("the base build timed out".to_owned()),
        Ok(BuildStatus::UnexpectedError { err }) => Some(format!("the base build: {err}")),
        Ok(_) => None,
    };
    if let Some(why) = why_not {
        for (attr, drv, outputs) in buildable {
            o.base_checks.insert(
                attr,
                BaseCheck {
                    result: BaseResult::NotChecked(why.clone()),
                    drv_path: drv,
                    outputs,
                },
            );
        }
        return;
    }
    let all: Vec<String> = buildable
        .iter()
        .flat_map(|(_, _, outs)| outs.values().cloned())
        .collect();
    let valid: BTreeSet<String> = valid_paths(all).unwrap_or_default().into_iter().collect();
    for (attr, drv, outputs) in buildable {
        let built = !outputs.is_empty() && outputs.values().all(|p| valid.contains(p));
        ch.log(&format!(
            "airlock: review: {attr} {} on the base",
            if built { "builds" } else { "fails too" }
        ));
        o.base_checks.insert(
            attr,
            BaseCheck {
                result: if built {
                    BaseResult::BuiltOnBase
                } else {
                    BaseResult::FailedOnBase("its base version was built here and failed".into())
                },
                drv_path: drv,
                outputs,
            },
        );
    }
}

/// The last [`LOG_TAIL_LINES`] lines of each failed attr's and test's own
/// build log (none when a dependency failed first: Nix never built it).
fn failure_logs(o: &mut ReviewOutcome) {
    let failed: Vec<(String, String)> = o
        .attrs
        .iter()
        .filter(|a| a.outcome == Outcome::Failed)
        .map(|a| (a.attr.clone(), a.drv_path.clone()))
        .chain(
            o.tests
                .iter()
                .filter(|t| t.outcome == Outcome::Failed)
                .map(|t| (t.attr.clone(), t.drv_path.clone())),
        )
        .collect();
    // Bounded: the manifest carrying them has a size limit.
    for (attr, drv) in failed.into_iter().take(MAX_LOGS) {
        let Ok(out) = Command::new("nix-store")
            .args(["--read-log", &drv])
            .env("HOME", "/tmp")
            .stdin(Stdio::null())
            .timed_output()
        else {
            continue;
        };
        if !out.status.success() {
            continue;
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(LOG_TAIL_LINES)..]
            .iter()
            .map(|l| l.chars().take(300).collect())
            .collect();
        o.failure_logs.insert(attr, tail);
    }
}

fn not_checked(why: &str) -> BaseCheck {
    BaseCheck {
        result: BaseResult::NotChecked(why.to_owned()),
        drv_path: String::new(),
        outputs: BTreeMap::new(),
    }
}
