//! nixpkgs CI's comparison of a PR (issue 32): the `changed-paths.json`
//! of the `comparison` artifact its Eval workflow publishes
//! (`ci/eval/compare/default.nix` in nixpkgs). Reusing it saves a review
//! the base evaluation, as nixpkgs-review's `--eval github` does.
//!
//! Shape: `{attrdiff: {added, changed, removed}, rebuildsByPlatform:
//! {<system>: [attr]}, rebuildsByKernel: {linux, darwin}, rebuildCountByKernel,
//! labels}`; attr names have the platform already stripped. Like
//! nixpkgs-review, a review takes `rebuildsByPlatform.<system>` (a system
//! with no rebuilds has no key: nothing to rebuild); `attrdiff.removed`
//! is reported as removed. Other keys are ignored; the file is untrusted
//! input, parsed strictly where read.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("changed-paths.json: {0}")]
    Parse(String),
    #[error("changed-paths.json: attribute {0:?} is not an attr path")]
    BadAttr(String),
    #[error("changed-paths.json: more than {MAX_ATTRS} attrs")]
    TooMany,
}

/// Most attrs read from one file (nixpkgs has ~120,000 attrs in all).
pub const MAX_ATTRS: usize = 500_000;
/// Most removed attrs a review keeps.
pub const MAX_REMOVED: usize = 10_000;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttrDiff {
    #[serde(default)]
    pub added: Vec<String>,
    #[serde(default)]
    pub changed: Vec<String>,
    #[serde(default)]
    pub removed: Vec<String>,
}

/// What airlock reads of `changed-paths.json` (and carries in the review
/// marker as `ci_comparison`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangedPaths {
    #[serde(default)]
    pub attrdiff: AttrDiff,
    #[serde(rename = "rebuildsByPlatform")]
    pub rebuilds_by_platform: BTreeMap<String, Vec<String>>,
}

impl ChangedPaths {
    /// Parse and check (every name an attr path, bounded).
    pub fn parse(bytes: &[u8]) -> Result<ChangedPaths, Error> {
        let c: ChangedPaths =
            serde_json::from_slice(bytes).map_err(|e| Error::Parse(e.to_string()))?;
        c.check()?;
        Ok(c)
    }

    /// Every name an attr path (printable ASCII, no spaces, at most 1 KiB),
    /// at most [`MAX_ATTRS`] in all.
    pub fn check(&self) -> Result<(), Error> {
        let all = self
            .rebuilds_by_platform
            .values()
            .flatten()
            .chain(&self.attrdiff.added)
            .chain(&self.attrdiff.changed)
            .chain(&self.attrdiff.removed);
        let mut n = 0usize;
        for a in all {
            n += 1;
            if n > MAX_ATTRS {
                return Err(Error::TooMany);
            }
            let ok = !a.is_empty()
                && a.len() <= 1024
                && a.bytes().all(|c| c.is_ascii_graphic())
                && !a.starts_with('.')
                && !a.ends_with('.');
            if !ok {
                return Err(Error::BadAttr(a.clone()));
            }
        }
        for s in self.rebuilds_by_platform.keys() {
            if s.is_empty() || s.len() > 64 || !s.bytes().all(|c| c.is_ascii_graphic()) {
                return Err(Error::BadAttr(s.clone()));
            }
        }
        Ok(())
    }

    /// Only what a builder of `system` reads: its rebuild list and the
    /// removed attrs (at most [`MAX_REMOVED`]).
    pub fn for_system(&self, system: &str) -> ChangedPaths {
        ChangedPaths {
            attrdiff: AttrDiff {
                added: vec![],
                changed: vec![],
                removed: self
                    .attrdiff
                    .removed
                    .iter()
                    .take(MAX_REMOVED)
                    .cloned()
                    .collect(),
            },
            rebuilds_by_platform: self
                .rebuilds_by_platform
                .get(system)
                .map(|v| BTreeMap::from([(system.to_owned(), v.clone())]))
                .unwrap_or_default(),
        }
    }

    /// The rebuild list for `system`, sorted, without duplicates.
    pub fn rebuilds(&self, system: &str) -> Vec<String> {
        let mut v = self
            .rebuilds_by_platform
            .get(system)
            .cloned()
            .unwrap_or_default();
        v.sort();
        v.dedup();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of nixpkgs' `ci/eval/compare/default.nix` docstring,
    /// in its current shape (labels an object).
    const EXAMPLE: &str = r#"{
      "attrdiff": { "added": ["package1"], "changed": ["package2", "package3"], "removed": ["package4"] },
      "labels": { "10.rebuild-darwin: 1-10": true, "10.rebuild-linux: 1-10": true },
      "rebuildsByKernel": { "darwin": ["package1", "package2"], "linux": ["package1", "package2", "package3"] },
      "rebuildCountByKernel": { "darwin": 2, "linux": 3 },
      "rebuildsByPlatform": {
        "aarch64-darwin": ["package1", "package2"],
        "aarch64-linux": ["package1", "package2"],
        "x86_64-linux": ["package3", "package1", "package2"],
        "x86_64-darwin": ["package1"]
      }
    }"#;

    #[test]
    fn the_documented_shape_gives_the_platforms_rebuilds() {
        let c = ChangedPaths::parse(EXAMPLE.as_bytes()).unwrap();
        assert_eq!(
            c.rebuilds("x86_64-linux"),
            ["package1", "package2", "package3"]
        );
        assert!(
            c.rebuilds("riscv64-linux").is_empty(),
            "no key: no rebuilds"
        );
        assert_eq!(c.attrdiff.removed, ["package4"]);
        let mine = c.for_system("x86_64-linux");
        assert_eq!(mine.rebuilds_by_platform.len(), 1);
        assert_eq!(mine.rebuilds("x86_64-linux"), c.rebuilds("x86_64-linux"));
        assert_eq!(mine.attrdiff.removed, ["package4"]);
        // The older shape (labels a list) is read too: labels are ignored.
        let old = EXAMPLE.replace(
            r#"{ "10.rebuild-darwin: 1-10": true, "10.rebuild-linux: 1-10": true }"#,
            r#"["10.rebuild-darwin: 1-10"]"#,
        );
        assert_eq!(ChangedPaths::parse(old.as_bytes()).unwrap(), c);
    }

    #[test]
    fn hostile_names_and_shapes_are_refused() {
        for bad in [
            r#"{"rebuildsByPlatform": {"x86_64-linux": ["a b"]}}"#,
            r#"{"rebuildsByPlatform": {"x86_64-linux": [""]}}"#,
            r#"{"rebuildsByPlatform": {"x86_64-linux": "hello"}}"#,
            r#"{"attrdiff": {}}"#,
            r#"[]"#,
        ] {
            assert!(
                ChangedPaths::parse(bad.as_bytes()).is_err(),
                "{bad} was accepted"
            );
        }
    }
}
