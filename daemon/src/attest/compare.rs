//! Comparing builders: which outputs independent builders reproduced, which
//! they built differently, which only one builder attested (pure).
//!
//! Only attestations whose signature verifies against a known builder key
//! count, and a builder's operator is the one the verifier configured for
//! that key, never the one the statement claims (a builder could claim any
//! operator).

use std::collections::{BTreeMap, BTreeSet};

use super::Attestation;
use airlock_nix_formats::signing;

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
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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
            .find(|k| signing::key_name(&k.key) == Some(s.builder.as_str()))
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

/// Whose attestations a trusted builder's own result contradicts, for one
/// output: when `own` attested a hash that at least one more builder of
/// another operator attested too (the output is reproducible, and `own`
/// is not alone in its hash), every builder that attested another hash.
/// An output only `own` built,
/// or one no two operators agree on, contradicts nobody: honest builders
/// of a build that is not bit-reproducible differ too.
pub fn contradicted(
    v: &Verdict,
    own: &str,
    operator_of: impl Fn(&str) -> Option<String>,
) -> Option<Contradiction> {
    let Verdict::Differs { by_hash } = v else {
        return None;
    };
    let (ours, agreeing) = by_hash.iter().find(|(_, b)| b.contains(own))?;
    let operators: BTreeSet<String> = agreeing.iter().filter_map(|b| operator_of(b)).collect();
    if agreeing.len() < 2 || operators.len() < 2 {
        return None;
    }
    let others = by_hash
        .iter()
        .filter(|(h, _)| *h != ours)
        .flat_map(|(h, bs)| bs.iter().map(move |b| (b.clone(), h.clone())))
        .collect();
    Some(Contradiction {
        ours: ours.clone(),
        agreeing: agreeing.clone(),
        others,
    })
}

/// What [`contradicted`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contradiction {
    /// The reproduced hash.
    pub ours: String,
    /// The builders that attested it.
    pub agreeing: BTreeSet<String>,
    /// The contradicted builders, each with its hash.
    pub others: Vec<(String, String)>,
}

/// One output's verdict as airlockctl and the web page show it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OutputReport {
    pub drv_path: String,
    pub output: String,
    /// `reproduced`, `single` or `differs`.
    pub verdict: String,
    /// [`Verdict::describe`].
    pub text: String,
    /// Each NAR hash with the builders that attested it.
    pub hashes: BTreeMap<String, Vec<String>>,
    /// Distinct operators of the builders that agree (empty when they differ).
    pub operators: Vec<String>,
}

impl OutputReport {
    pub fn new(id: &OutputId, v: &Verdict) -> OutputReport {
        let (verdict, hashes, operators) = match v {
            Verdict::Agree {
                nar_hash,
                builders,
                operators,
            } => (
                if builders.len() > 1 {
                    "reproduced"
                } else {
                    "single"
                },
                BTreeMap::from([(nar_hash.clone(), builders.iter().cloned().collect())]),
                operators.iter().cloned().collect(),
            ),
            Verdict::Differs { by_hash } => (
                "differs",
                by_hash
                    .iter()
                    .map(|(h, b)| (h.clone(), b.iter().cloned().collect()))
                    .collect(),
                vec![],
            ),
        };
        OutputReport {
            drv_path: id.drv_path.clone(),
            output: id.output.clone(),
            verdict: verdict.into(),
            text: v.describe(),
            hashes,
            operators,
        }
    }
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

    #[test]
    fn only_a_reproduced_hash_contradicts() {
        let op = |b: &str| Some(format!("org-{b}"));
        let same_org = |_: &str| Some("org".to_owned());
        let differs = |pairs: &[(&str, &[&str])]| Verdict::Differs {
            by_hash: pairs
                .iter()
                .map(|(h, bs)| (h.to_string(), bs.iter().map(|b| b.to_string()).collect()))
                .collect(),
        };
        // Three agree, one differs: the one is contradicted.
        let v = differs(&[("good", &["a", "b", "c"]), ("evil", &["d"])]);
        let c = contradicted(&v, "a", op).unwrap();
        assert_eq!((c.ours.as_str(), c.agreeing.len()), ("good", 3));
        assert_eq!(c.others, vec![("d".to_owned(), "evil".to_owned())]);
        // The same from the liar's side: it is alone, it accuses nobody.
        assert_eq!(contradicted(&v, "d", op), None);
        // Two of one operator are not independent.
        assert_eq!(contradicted(&v, "a", same_org), None);
        // Not reproducible (everyone alone), or no result of ours: nobody.
        let v = differs(&[("one", &["a"]), ("two", &["b"])]);
        assert_eq!(contradicted(&v, "a", op), None);
        assert_eq!(contradicted(&v, "z", op), None);
        let agree = Verdict::Agree {
            nar_hash: "h".into(),
            builders: ["a".to_owned(), "b".to_owned()].into(),
            operators: ["x".to_owned()].into(),
        };
        assert_eq!(contradicted(&agree, "a", op), None);
        assert_eq!(
            OutputReport::new(
                &OutputId {
                    drv_path: "d".into(),
                    output: "out".into()
                },
                &agree
            )
            .verdict,
            "reproduced"
        );
    }
}
