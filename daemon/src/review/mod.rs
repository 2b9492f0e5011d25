//! Review mode (issue 16), its pure parts first: which attrs a PR changes.
//!
//! [`rebuild_set`] compares the out-paths of every attr in the base and
//! the merged tree, as nixpkgs-review and nixpkgs' `ci/eval` do: an attr
//! is rebuilt when it is new or any of its outputs changed; an attr that
//! is gone is listed as removed. Over the configured maximum the set is a
//! mass rebuild: reported with its size, and only a deterministic sample
//! (the same PR always gets the same one) is built.

use std::collections::{BTreeMap, BTreeSet};

use sha2::{Digest, Sha256};

/// One tree's evaluation: attr path → its outputs (`out` → store path, …).
pub type OutPaths = BTreeMap<String, BTreeMap<String, String>>;

/// What a PR changes.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
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
