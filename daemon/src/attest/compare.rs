//! Comparing builders: which outputs independent builders reproduced, which
//! they built differently, which only one builder attested (pure).
//!
//! Only attestations whose signature verifies against a known builder key
//! count, and a builder's operator is the one the verifier configured for
//! that key, never the one the statement claims (a builder could claim any
//! operator).

use std::collections::{BTreeMap, BTreeSet};

use super::Attestation;

/// A builder this verifier knows: its public key (`name:base64`) and who
/// runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownBuilder {
    pub key: String,
    pub operator: String,
}

/// One output of one derivation.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct OutputId {
    pub drv_path: String,
    pub output: String,
}

/// What the known builders say about one output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every attesting builder has the same NAR hash.
    Agree {
        nar_hash: String,
        builders: BTreeSet<String>,
        operators: BTreeSet<String>,
    },
    /// Builders differ: each NAR hash with the builders that attested it.
    Differs {
        by_hash: BTreeMap<String, BTreeSet<String>>,
    },
}

impl Verdict {
    /// Agreement of at least `builders` builders of `operators` distinct
    /// operators on `nar_hash`.
    pub fn agrees_on(&self, nar_hash: &str, builders: usize, operators: usize) -> bool {
        matches!(self, Verdict::Agree { nar_hash: h, builders: b, operators: o }
            if h == nar_hash && b.len() >= builders && o.len() >= operators)
    }

    /// `reproduced by N builders of M operators`, `single`, or `differs`.
    pub fn describe(&self) -> String {
        match self {
            Verdict::Agree {
                builders,
                operators,
                ..
            } if builders.len() > 1 => format!(
                "reproduced by {} builders of {} operators",
                builders.len(),
                operators.len()
            ),
            Verdict::Agree { builders, .. } => format!(
                "single ({})",
                builders.iter().next().map(String::as_str).unwrap_or("?")
            ),
            Verdict::Differs { by_hash } => {
                let parts: Vec<String> = by_hash
                    .iter()
                    .map(|(h, b)| {
                        format!(
                            "{h} from {}",
                            b.iter().cloned().collect::<Vec<_>>().join(", ")
                        )
                    })
                    .collect();
                format!("differs: {}", parts.join("; "))
            }
        }
    }
}

/// An attestation that does not count, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ignored {
    pub builder: String,
    pub out_path: String,
    pub why: String,
}

/// Group verified attestations by output and compare their NAR hashes.
/// A builder counts once per output (its latest attestation's hash).
pub fn compare(
    atts: &[Attestation],
    known: &[KnownBuilder],
) -> (BTreeMap<OutputId, Verdict>, Vec<Ignored>) {
    let mut ignored = Vec::new();
    // output → builder → (time, hash, operator)
    let mut seen: BTreeMap<OutputId, BTreeMap<String, (i64, String, String)>> = BTreeMap::new();
    for a in atts {
        let s = &a.statement;
        let Some(k) = known
            .iter()
            .find(|k| k.key.split_once(':').map(|(n, _)| n) == Some(s.builder.as_str()))
        else {
            ignored.push(Ignored {
                builder: s.builder.clone(),
                out_path: s.out_path.clone(),
                why: "unknown builder".into(),
            });
            continue;
        };
        if let Err(e) = a.verify(&k.key) {
            ignored.push(Ignored {
                builder: s.builder.clone(),
                out_path: s.out_path.clone(),
                why: e.to_string(),
            });
            continue;
        }
        let id = OutputId {
            drv_path: s.drv_path.clone(),
            output: s.output.clone(),
        };
        let slot = seen.entry(id).or_default();
        let newer = slot.get(&s.builder).is_none_or(|(t, _, _)| s.time >= *t);
        if newer {
            slot.insert(
                s.builder.clone(),
                (s.time, s.nar_hash.clone(), k.operator.clone()),
            );
        }
    }
    let verdicts = seen
        .into_iter()
        .map(|(id, by_builder)| {
            let mut by_hash: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
            let mut operators = BTreeSet::new();
            for (b, (_, h, op)) in &by_builder {
                by_hash.entry(h.clone()).or_default().insert(b.clone());
                operators.insert(op.clone());
            }
            let v = if by_hash.len() == 1 {
                let (nar_hash, builders) = by_hash.into_iter().next().expect("one");
                Verdict::Agree {
                    nar_hash,
                    builders,
                    operators,
                }
            } else {
                Verdict::Differs { by_hash }
            };
            (id, v)
        })
        .collect();
    (verdicts, ignored)
}

#[cfg(test)]
mod tests {
    use super::*;
    use airlock_nix_formats::signing::SecretKey;

    fn att(
        key: &SecretKey,
        out: &str,
        hash: &str,
        claimed_operator: &str,
        time: i64,
    ) -> Attestation {
        let mut s = crate::attest::tests::statement(&key.name, out, hash);
        s.operator = claimed_operator.into();
        s.time = time;
        s.sign(key).unwrap()
    }

    #[test]
    fn reproduced_differs_single_and_ignored() {
        let k: Vec<SecretKey> = (1..=4u8)
            .map(|i| SecretKey::from_seed(&format!("b{i}"), &[i; 32]).unwrap())
            .collect();
        let known: Vec<KnownBuilder> = k
            .iter()
            .zip(["org-a", "org-b", "org-b", "org-c"])
            .map(|(k, op)| KnownBuilder {
                key: k.public(),
                operator: op.into(),
            })
            .collect();
        let stranger = SecretKey::from_seed("b9", &[9; 32]).unwrap();
        let mut forged = att(&k[3], "x", "sha256:good", "org-c", 1);
        forged.statement.nar_hash = "sha256:evil".into();
        let atts = vec![
            att(&k[0], "x", "sha256:good", "org-a", 1),
            att(&k[1], "x", "sha256:good", "org-b", 1),
            att(&k[2], "x", "sha256:good", "org-z-claimed", 1),
            att(&k[0], "y", "sha256:one", "org-a", 1),
            att(&k[3], "y", "sha256:two", "org-c", 1),
            att(&k[0], "z", "sha256:only", "org-a", 1),
            // b1 first said "old", then "new" for w: its latest counts.
            att(&k[0], "w", "sha256:old", "org-a", 1),
            att(&k[0], "w", "sha256:new", "org-a", 2),
            att(&stranger, "x", "sha256:good", "org-a", 1),
            forged,
        ];
        let (v, ignored) = compare(&atts, &known);
        let get = |o: &str| {
            v.iter()
                .find(|(id, _)| id.drv_path.ends_with(&format!("-{o}.drv")))
                .map(|(_, v)| v.clone())
                .unwrap()
        };
        let x = get("x");
        assert_eq!(x.describe(), "reproduced by 3 builders of 2 operators");
        assert!(x.agrees_on("sha256:good", 3, 2));
        assert!(
            !x.agrees_on("sha256:good", 3, 3),
            "operators are the verifier's, not claimed"
        );
        assert!(!x.agrees_on("sha256:evil", 1, 1));
        let y = get("y");
        assert!(
            y.describe()
                .starts_with("differs: sha256:one from b1; sha256:two from b4"),
            "{}",
            y.describe()
        );
        assert!(!y.agrees_on("sha256:one", 1, 1));
        assert_eq!(get("z").describe(), "single (b1)");
        assert!(get("w").agrees_on("sha256:new", 1, 1));
        assert_eq!(ignored.len(), 2, "{ignored:?}");
        assert!(ignored
            .iter()
            .any(|i| i.builder == "b9" && i.why == "unknown builder"));
        assert!(ignored
            .iter()
            .any(|i| i.builder == "b4" && i.why == "bad signature"));
    }
}
