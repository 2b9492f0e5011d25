//! Review mode (issue 16): what crosses the VM boundary for a review job,
//! and which attrs a PR changes.
//!
//! [`rebuild_set`] compares the out-paths of every attr in the base and
//! the merged tree, as nixpkgs-review and nixpkgs' `ci/eval` do: an attr
//! is rebuilt when it is new or any of its outputs changed; an attr that
//! is gone is listed as removed. Over the configured maximum the set is a
//! mass rebuild: reported with its size, and only a deterministic sample
//! (the same PR always gets the same one) is built.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A review job as the guest sees it (`GuestJob.review`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestReview {
    /// The attr paths evaluated in both trees; `None`: every attr
    /// `nix-env -qa` lists.
    #[serde(default)]
    pub attrs: Option<Vec<String>>,
    /// A rebuild list computed elsewhere (the central side): the base is
    /// not evaluated, these attrs are the changed ones.
    #[serde(default)]
    pub rebuild: Option<Vec<String>>,
    /// Build at most this many attrs; more is a mass rebuild (a sample).
    pub max_build: usize,
    /// What picks the sample (the merged commit).
    pub seed: String,
    /// Evaluate and diff only; build nothing.
    #[serde(default)]
    pub eval_only: bool,
    /// Changed attrs never built (nixpkgs-review's "blacklisted").
    #[serde(default)]
    pub skip: Vec<String>,
}

/// One attr as `review-eval.nix` describes it: its derivation and outputs,
/// or why it has none (`non-existent`, `broken`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttrEval {
    #[serde(default, rename = "drvPath", skip_serializing_if = "Option::is_none")]
    pub drv_path: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub outputs: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// It needs KVM to build (`requiredSystemFeatures`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub kvm: bool,
}

/// What happened to an attr or a test in the VM (the guest's claim; the
/// host checks "built" against the verified export).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "status", content = "reason")]
pub enum Outcome {
    Built,
    Failed,
    /// Not built, with the reason (a test needing KVM where there is none, …).
    Skipped(String),
}

/// A changed attr that was to be built.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReviewedAttr {
    pub attr: String,
    pub drv_path: String,
    pub outputs: BTreeMap<String, String>,
    pub outcome: Outcome,
}

/// One `passthru.tests` entry of a built attr.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReviewedTest {
    /// `<attr>.passthru.tests.<name>`.
    pub attr: String,
    /// The attr whose test it is.
    pub of: String,
    pub drv_path: String,
    pub outputs: BTreeMap<String, String>,
    /// A NixOS test (needs KVM in the guest).
    pub nixos: bool,
    pub outcome: Outcome,
    /// Changed attrs whose derivation is in the test's build closure.
    #[serde(default)]
    pub build_closure: Vec<String>,
    /// Changed attrs with an output in the test's runtime closure.
    #[serde(default)]
    pub runtime_closure: Vec<String>,
}

/// What the guest sends back about a review (`Manifest.review`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReviewOutcome {
    /// The base tree's evaluation (empty when a rebuild list was given).
    pub base: BTreeMap<String, AttrEval>,
    pub merged: BTreeMap<String, AttrEval>,
    pub rebuild: RebuildSet,
    pub attrs: Vec<ReviewedAttr>,
    pub tests: Vec<ReviewedTest>,
    /// Milliseconds spent evaluating the base and the merged tree.
    pub eval_ms: (u64, u64),
    /// Whether the guest had /dev/kvm (NixOS tests run only then).
    pub kvm: bool,
    /// Each failed attr and test built again on the base (issue 32): is
    /// the failure the PR's, or did the base fail too?
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub base_checks: BTreeMap<String, BaseCheck>,
    /// The last lines of each failed attr's and test's build log (at most
    /// [`LOG_TAIL_LINES`]), as `nix-store --read-log` gives them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub failure_logs: BTreeMap<String, Vec<String>>,
}

/// Lines of a failed build's log a review keeps (nixpkgs-review's 20).
pub const LOG_TAIL_LINES: usize = 20;

/// What building a failed attr's (or test's) base version showed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaseCheck {
    pub result: BaseResult,
    /// The base version's derivation and outputs (none when it has none).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub drv_path: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub outputs: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "status", content = "reason")]
pub enum BaseResult {
    /// The base's version failed too (the reason says how it was seen:
    /// built and failed, or the very derivation that failed).
    FailedOnBase(String),
    /// The base's version built: the PR broke it.
    BuiltOnBase,
    /// The base has no such attr or test: a new one that fails.
    NotOnBase,
    /// Not checked, with the reason (it needs sources not fetched, …).
    NotChecked(String),
}

/// The out-paths of an evaluation, without the attrs that have none.
pub fn out_paths(eval: &BTreeMap<String, AttrEval>) -> OutPaths {
    eval.iter()
        .filter(|(_, e)| e.error.is_none())
        .map(|(a, e)| (a.clone(), e.outputs.clone()))
        .collect()
}

/// One tree's evaluation: attr path → its outputs (`out` → store path, …).
pub type OutPaths = BTreeMap<String, BTreeMap<String, String>>;

/// What a PR changes.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RebuildSet {
    /// Attrs that are new or whose out-paths changed, sorted.
    pub changed: Vec<String>,
    /// Attrs of the base that the merged tree no longer has.
    pub removed: Vec<String>,
    /// More changed attrs than the maximum: only `build` is built.
    pub mass_rebuild: bool,
    /// The attrs to build: all of `changed`, or its sample.
    pub build: Vec<String>,
}

/// Diff `base` against `merged`; build at most `max` attrs, picked by
/// `seed` (the merged commit, say) when there are more.
pub fn rebuild_set(base: &OutPaths, merged: &OutPaths, max: usize, seed: &str) -> RebuildSet {
    let changed: Vec<String> = merged
        .iter()
        .filter(|(attr, outs)| base.get(*attr) != Some(*outs))
        .map(|(attr, _)| attr.clone())
        .collect();
    let removed = base
        .keys()
        .filter(|a| !merged.contains_key(*a))
        .cloned()
        .collect();
    let mass_rebuild = changed.len() > max;
    let build = if mass_rebuild {
        sample(&changed, max, seed)
    } else {
        changed.clone()
    };
    RebuildSet {
        changed,
        removed,
        mass_rebuild,
        build,
    }
}

/// `n` of `attrs`, the same for the same `seed`: those with the smallest
/// SHA-256 of `seed` and the attr name, returned sorted.
pub fn sample(attrs: &[String], n: usize, seed: &str) -> Vec<String> {
    let mut keyed: Vec<([u8; 32], &String)> = attrs
        .iter()
        .map(|a| {
            let mut h = Sha256::new();
            h.update(seed.as_bytes());
            h.update([0]);
            h.update(a.as_bytes());
            (h.finalize().into(), a)
        })
        .collect();
    keyed.sort();
    let picked: BTreeSet<&String> = keyed.into_iter().take(n).map(|(_, a)| a).collect();
    picked.into_iter().cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree<A: AsRef<str>, P: AsRef<str>>(entries: &[(A, P)]) -> OutPaths {
        entries
            .iter()
            .map(|(a, p)| {
                (
                    a.as_ref().to_string(),
                    BTreeMap::from([("out".to_string(), format!("/nix/store/{}", p.as_ref()))]),
                )
            })
            .collect()
    }

    #[test]
    fn changed_new_and_removed_attrs() {
        let base = tree(&[("hello", "a-hello"), ("leaf", "b-leaf"), ("gone", "c-gone")]);
        let merged = tree(&[("hello", "a-hello"), ("leaf", "d-leaf"), ("new", "e-new")]);
        let r = rebuild_set(&base, &merged, 10, "seed");
        assert_eq!(r.changed, ["leaf", "new"]);
        assert_eq!(r.removed, ["gone"]);
        assert!(!r.mass_rebuild);
        assert_eq!(r.build, r.changed);
    }

    #[test]
    fn an_added_output_is_a_change() {
        let base = tree(&[("lib", "a-lib")]);
        let mut merged = base.clone();
        merged
            .get_mut("lib")
            .unwrap()
            .insert("dev".into(), "/nix/store/b-lib-dev".into());
        assert_eq!(rebuild_set(&base, &merged, 10, "s").changed, ["lib"]);
    }

    #[test]
    fn a_mass_rebuild_builds_a_stable_sample() {
        let base = OutPaths::new();
        let merged = tree(&(0..100).map(|i| (format!("p{i}"), "x")).collect::<Vec<_>>());
        let a = rebuild_set(&base, &merged, 7, "commit-1");
        assert!(a.mass_rebuild);
        assert_eq!(a.changed.len(), 100);
        assert_eq!(a.build.len(), 7);
        assert!(a.build.iter().all(|x| a.changed.contains(x)));
        assert_eq!(
            a,
            rebuild_set(&base, &merged, 7, "commit-1"),
            "same seed, same sample"
        );
        assert_ne!(
            a.build,
            rebuild_set(&base, &merged, 7, "commit-2").build,
            "another seed, another sample"
        );
    }
}
