//! What a review's failures mean, and whether a bot's update may be
//! merged (issue 32). Pure: the report builds both from the host's view
//! of the guest's outcome.
//!
//! - [`classify`]: each failed attr or test is a **new** failure, one the
//!   base has **too** (the VM built its base version and it failed, or the
//!   base has the very derivation that failed), or **unsupported here**
//!   (it needs `kvm` or another feature this builder's VMs lack: skipped,
//!   never counted as failed). What the VM says about the base is its
//!   word: a base failure is labelled so, and anything the VM could not
//!   check stays a new failure.
//! - [`automerge`]: the merge verdict for a bot's point release, each
//!   unmet condition named. airlock never merges; the verdict is posted.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::{BaseCheck, BaseResult};

/// A failure the base has too, or a package this builder cannot build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Noted {
    pub name: String,
    pub reason: String,
}

/// The review's failures, sorted out.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failures {
    /// Failures of the PR's own (also `result.<system>.failed`).
    pub new: Vec<String>,
    /// Failed here and on the base too (the VM's word, with how it saw it).
    pub on_base: Vec<Noted>,
    /// Needs a feature this builder's VMs lack (`kvm`, …): not built.
    pub unsupported: Vec<Noted>,
    /// Where `on_base` comes from.
    pub source: String,
}

pub const ON_BASE_SOURCE: &str = "reported by the VM, which built each failed attr's base version (or found the very derivation that failed); not verified by the host";

/// The reason the guest gives a skipped attr or test that needs a
/// feature the VM lacks starts with this.
pub fn is_unsupported(reason: &str) -> bool {
    reason.starts_with("needs ")
}

/// Sort `failed` (every failed attr and test) by the VM's base checks;
/// `skipped` are the skipped attrs and tests: (name, reason).
pub fn classify(
    failed: &[String],
    checks: &BTreeMap<String, BaseCheck>,
    skipped: &[(&str, &str)],
) -> Failures {
    let mut f = Failures {
        source: ON_BASE_SOURCE.into(),
        ..Failures::default()
    };
    for a in failed {
        match checks.get(a).map(|c| &c.result) {
            Some(BaseResult::FailedOnBase(how)) => f.on_base.push(Noted {
                name: a.clone(),
                reason: how.clone(),
            }),
            _ => f.new.push(a.clone()),
        }
    }
    f.unsupported = skipped
        .iter()
        .filter(|(_, reason)| is_unsupported(reason))
        .map(|(name, reason)| Noted {
            name: name.to_string(),
            reason: reason.to_string(),
        })
        .collect();
    f.new.sort();
    f.on_base.sort_by(|a, b| a.name.cmp(&b.name));
    f.unsupported.sort_by(|a, b| a.name.cmp(&b.name));
    f
}

/// Why a base check did not make a failure the base's: for the report.
pub fn base_note(c: &BaseCheck) -> String {
    match &c.result {
        BaseResult::FailedOnBase(how) => format!("fails on the base too: {how}"),
        BaseResult::BuiltOnBase => "builds on the base: the PR broke it".into(),
        BaseResult::NotOnBase => "not on the base: new with this PR".into(),
        BaseResult::NotChecked(why) => format!("not checked on the base: {why}"),
    }
}

/// The name and version Nix's `builtins.parseDrvName` gives a store
/// path's name (`/nix/store/<hash>-hello-2.12.1` → `hello`, `2.12.1`):
/// the version starts after the first `-` not followed by a letter.
pub fn name_version(store_path: &str) -> (String, String) {
    let base = store_path.rsplit('/').next().unwrap_or(store_path);
    let name = match base.split_once('-') {
        Some((h, rest)) if h.len() == 32 => rest,
        _ => base,
    };
    let b = name.as_bytes();
    for i in 0..b.len() {
        if b[i] == b'-' && b.get(i + 1).is_some_and(|c| !c.is_ascii_alphabetic()) {
            return (name[..i].to_owned(), name[i + 1..].to_owned());
        }
    }
    (name.to_owned(), String::new())
}

/// Nix's version comparison (`builtins.compareVersions`): components
/// split at `.` and `-` (and between digits and letters), numbers
/// compared as numbers, `pre` before anything, a number after a word.
pub fn compare_versions(a: &str, b: &str) -> std::cmp::Ordering {
    use std::cmp::Ordering::*;
    let (ca, cb) = (components(a), components(b));
    for i in 0..ca.len().max(cb.len()) {
        let (x, y) = (
            ca.get(i).copied().unwrap_or(""),
            cb.get(i).copied().unwrap_or(""),
        );
        let o = match (x.parse::<u128>(), y.parse::<u128>()) {
            (Ok(p), Ok(q)) => p.cmp(&q),
            _ if x == y => Equal,
            _ if x.is_empty() && y.parse::<u128>().is_ok() => Less,
            _ if x == "pre" => Less,
            _ if y == "pre" => Greater,
            (Ok(_), Err(_)) => Greater,
            (Err(_), Ok(_)) => Less,
            _ => x.cmp(y),
        };
        if o != Equal {
            return o;
        }
    }
    Equal
}

fn components(v: &str) -> Vec<&str> {
    let mut out = Vec::new();
    for part in v.split(['.', '-']) {
        let b = part.as_bytes();
        let mut start = 0;
        for i in 1..b.len() {
            if b[i].is_ascii_digit() != b[i - 1].is_ascii_digit() {
                out.push(&part[start..i]);
                start = i;
            }
        }
        if !part.is_empty() {
            out.push(&part[start..]);
        }
    }
    out
}

/// A patch step: `1.2.3 → 1.2.4`, `1.2 → 1.2.1`: newer, with the same
/// first two components (major and minor). `1.2.3 → 1.3.0`, `5 → 6`
/// and any downgrade are not.
pub fn is_patch_step(old: &str, new: &str) -> bool {
    let (a, b) = (components(old), components(new));
    a.len() >= 2
        && b.len() >= 2
        && a[..2] == b[..2]
        && compare_versions(new, old) == std::cmp::Ordering::Greater
}

/// One changed attr's version, before and after.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionChange {
    pub attr: String,
    pub from: String,
    pub to: String,
}

/// The changed attrs whose version differs between the base's and the
/// merged tree's out-path names.
pub fn version_changes(
    changed: &[String],
    base: &BTreeMap<String, super::AttrEval>,
    merged: &BTreeMap<String, super::AttrEval>,
) -> Vec<VersionChange> {
    let version = |e: &super::AttrEval| {
        e.outputs
            .get("out")
            .or_else(|| e.outputs.values().next())
            .map(|p| name_version(p).1)
    };
    changed
        .iter()
        .filter_map(|a| {
            let from = version(base.get(a)?)?;
            let to = version(merged.get(a)?)?;
            (from != to).then(|| VersionChange {
                attr: a.clone(),
                from,
                to,
            })
        })
        .collect()
}

/// `report.json`'s `automerge`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Automerge {
    pub eligible: bool,
    /// The PR's author is one of `review.bot_authors` (then report.md
    /// shows the verdict even when it is "not eligible").
    #[serde(default)]
    pub bot: bool,
    /// Each condition not met (empty when eligible).
    pub reasons: Vec<String>,
    /// The version changes the verdict looked at.
    #[serde(default)]
    pub versions: Vec<VersionChange>,
}

impl Automerge {
    /// `eligible` or `not eligible`.
    pub fn word(&self) -> &'static str {
        if self.eligible {
            "eligible"
        } else {
            "not eligible"
        }
    }
}

/// What GitHub says about the PR now (none without GitHub configured).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrNow {
    pub author: String,
    pub head_sha: String,
}

/// What the verdict needs.
pub struct AutomergeInput<'a> {
    pub bot_authors: &'a [String],
    pub pr: Option<&'a PrNow>,
    pub reviewed_head: &'a str,
    pub changed: &'a [String],
    pub mass_rebuild: bool,
    pub built: &'a [String],
    pub failures: &'a Failures,
    /// Changed attr → passing tests whose *verified* (runtime) closure
    /// holds it: the build half is the VM's word and does not count here.
    pub exercised: &'a BTreeMap<String, Vec<String>>,
    pub versions: Vec<VersionChange>,
    /// Attrs the PR made fail to evaluate, and attrs it removed.
    pub broken: &'a [String],
    pub removed: &'a [String],
    /// The base was evaluated (no given rebuild list): versions compare.
    pub base_evaluated: bool,
}

/// At most this many names in one reason.
const NAMES_IN_REASON: usize = 10;

fn names(v: &[&String]) -> String {
    let mut s: Vec<String> = v
        .iter()
        .take(NAMES_IN_REASON)
        .map(|a| a.to_string())
        .collect();
    if v.len() > NAMES_IN_REASON {
        s.push(format!("and {} more", v.len() - NAMES_IN_REASON));
    }
    s.join(", ")
}

/// Eligible only when every condition holds; each unmet one is a reason.
pub fn automerge(i: AutomergeInput<'_>) -> Automerge {
    let mut reasons = Vec::new();
    match i.pr {
        None => reasons.push(
            "the PR's author and current head are not known (no GitHub access configured)".into(),
        ),
        Some(pr) => {
            if !i.bot_authors.iter().any(|b| b == &pr.author) {
                reasons.push(format!(
                    "the author {} is not one of review.bot_authors",
                    pr.author
                ));
            }
            if pr.head_sha != i.reviewed_head {
                reasons.push(format!(
                    "the PR's head is now {}, the review is of {}",
                    pr.head_sha, i.reviewed_head
                ));
            }
        }
    }
    if !i.base_evaluated {
        reasons.push(
            "the base was not evaluated (the rebuild list was given): versions cannot be compared"
                .into(),
        );
    } else if i.versions.is_empty() {
        reasons.push("no changed package changes its version".into());
    }
    if !i.broken.is_empty() {
        let b: Vec<&String> = i.broken.iter().collect();
        reasons.push(format!("do not evaluate: {}", names(&b)));
    }
    if !i.removed.is_empty() {
        let r: Vec<&String> = i.removed.iter().collect();
        reasons.push(format!("removes attrs: {}", names(&r)));
    }
    for v in &i.versions {
        if !is_patch_step(&v.from, &v.to) {
            reasons.push(format!(
                "{}: {} → {} is not a patch step",
                v.attr, v.from, v.to
            ));
        }
    }
    if i.mass_rebuild {
        reasons.push("a mass rebuild: only a sample was built".into());
    }
    let built: BTreeSet<&String> = i.built.iter().collect();
    let unbuilt: Vec<&String> = i.changed.iter().filter(|a| !built.contains(a)).collect();
    if !unbuilt.is_empty() {
        reasons.push(format!("not built: {}", names(&unbuilt)));
    }
    if !i.failures.new.is_empty() {
        let new: Vec<&String> = i.failures.new.iter().collect();
        reasons.push(format!("new failures: {}", names(&new)));
    }
    let untested: Vec<&String> = i
        .changed
        .iter()
        .filter(|a| i.exercised.get(*a).is_none_or(|t| t.is_empty()))
        .collect();
    if !untested.is_empty() {
        reasons.push(format!(
            "exercised by no passing test (verified runtime closures): {}",
            names(&untested)
        ));
    }
    Automerge {
        bot: i
            .pr
            .is_some_and(|pr| i.bot_authors.iter().any(|b| b == &pr.author)),
        eligible: reasons.is_empty(),
        reasons,
        versions: i.versions,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_versions_as_nix_parses_them() {
        let p = "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-hello-2.12.1";
        assert_eq!(name_version(p), ("hello".into(), "2.12.1".into()));
        assert_eq!(
            name_version("/nix/store/0123456789abcdfghijklmnpqrsvwxyz-python3.12-requests-2.32.3"),
            ("python3.12-requests".into(), "2.32.3".into())
        );
        assert_eq!(
            name_version("/nix/store/0123456789abcdfghijklmnpqrsvwxyz-airlock-g-base-a"),
            ("airlock-g-base-a".into(), String::new())
        );
    }

    #[test]
    fn versions_compare_as_nix_compares_them() {
        use std::cmp::Ordering::*;
        for (a, b, o) in [
            ("1.0", "2.3", Less),
            ("2.1", "2.3", Less),
            ("2.3", "2.3", Equal),
            ("2.5", "2.3", Greater),
            ("3.1", "2.3", Greater),
            ("2.3.1", "2.3", Greater),
            ("2.3.1", "2.3a", Greater),
            ("2.3pre1", "2.3", Less),
            ("2.3.10", "2.3.9", Greater),
        ] {
            assert_eq!(compare_versions(a, b), o, "{a} vs {b}");
        }
    }

    #[test]
    fn a_patch_step_keeps_major_and_minor() {
        assert!(is_patch_step("1.2.3", "1.2.4"));
        assert!(is_patch_step("1.2.9", "1.2.10"));
        assert!(is_patch_step("1.2", "1.2.1"));
        assert!(!is_patch_step("1.2.3", "1.3.0"));
        assert!(!is_patch_step("1.2.4", "1.2.3"), "a downgrade");
        assert!(!is_patch_step("5", "6"));
        assert!(!is_patch_step("1.2.3", "1.2.3"));
    }

    fn input<'a>(
        pr: Option<&'a PrNow>,
        changed: &'a [String],
        failures: &'a Failures,
        exercised: &'a BTreeMap<String, Vec<String>>,
        bots: &'a [String],
    ) -> AutomergeInput<'a> {
        AutomergeInput {
            bot_authors: bots,
            pr,
            reviewed_head: "h1",
            changed,
            mass_rebuild: false,
            built: changed,
            failures,
            exercised,
            broken: &[],
            removed: &[],
            base_evaluated: true,
            versions: vec![VersionChange {
                attr: "a".into(),
                from: "1.2.3".into(),
                to: "1.2.4".into(),
            }],
        }
    }

    #[test]
    fn the_verdict_names_each_unmet_condition() {
        let bots = vec!["r-ryantm".to_owned()];
        let changed = vec!["a".to_owned(), "b".to_owned()];
        let ok = Failures::default();
        let mut exercised = BTreeMap::from([
            ("a".to_owned(), vec!["a.passthru.tests.t".to_owned()]),
            ("b".to_owned(), vec!["a.passthru.tests.t".to_owned()]),
        ]);
        let bot = PrNow {
            author: "r-ryantm".into(),
            head_sha: "h1".into(),
        };
        let v = automerge(input(Some(&bot), &changed, &ok, &exercised, &bots));
        assert!(v.eligible, "{v:?}");
        exercised.remove("b");
        let v = automerge(input(Some(&bot), &changed, &ok, &exercised, &bots));
        assert_eq!(
            v.reasons,
            ["exercised by no passing test (verified runtime closures): b"]
        );
        let human = PrNow {
            author: "alice".into(),
            head_sha: "h2".into(),
        };
        let v = automerge(input(Some(&human), &changed, &ok, &exercised, &bots));
        assert_eq!(v.reasons.len(), 3, "{v:?}");
        assert!(v.reasons[0].contains("alice"));
        assert!(v.reasons[1].contains("is now h2"));
        let v = automerge(input(None, &changed, &ok, &exercised, &bots));
        assert!(!v.eligible && v.reasons[0].contains("not known"));
    }

    #[test]
    fn only_failures_the_base_lacks_are_new() {
        let checks = BTreeMap::from([
            (
                "old".to_owned(),
                BaseCheck {
                    result: BaseResult::FailedOnBase("built here and failed".into()),
                    drv_path: String::new(),
                    outputs: BTreeMap::new(),
                },
            ),
            (
                "broke".to_owned(),
                BaseCheck {
                    result: BaseResult::BuiltOnBase,
                    drv_path: String::new(),
                    outputs: BTreeMap::new(),
                },
            ),
            (
                "unchecked".to_owned(),
                BaseCheck {
                    result: BaseResult::NotChecked("needs a source".into()),
                    drv_path: String::new(),
                    outputs: BTreeMap::new(),
                },
            ),
        ]);
        let f = classify(
            &["broke".into(), "old".into(), "unchecked".into()],
            &checks,
            &[
                ("t.vm", "needs KVM inside the VM"),
                ("t.x", "evaluation only"),
            ],
        );
        assert_eq!(f.new, ["broke", "unchecked"]);
        assert_eq!(f.on_base.len(), 1);
        assert_eq!(f.on_base[0].name, "old");
        assert_eq!(f.unsupported.len(), 1);
        assert_eq!(f.unsupported[0].name, "t.vm");
    }
}
