//! A review's report: `report.json` (nixpkgs-review's categories, plus the
//! rebuild set, the evidence map, artifacts, NAR hashes, the guest's Nix
//! and the builder's identity) and `report.md` (a PR comment in
//! nixpkgs-review's shape). Pure: the caller reads the quarantine.
//!
//! The guest's outcome is untrusted input (docs/security.md, "The review
//! outcome"). [`build`] first cuts it to bounds ([`bounded`]: names
//! printable and at most [`MAX_NAME_CHARS`], every list capped), then
//! checks what the host can:
//! - an attr or a test counts as built only when every output is among the
//!   paths the host verified and quarantined; a test passes only if its
//!   outputs are its own (no attr's and no other test's);
//! - the rebuild set is the host's diff of the two evaluations the VM sent,
//!   not the VM's own list;
//! - evidence names only changed attrs that were built and verified; its
//!   runtime half is computed on the host from the verified outputs'
//!   references, its build half (the test's `.drv` closure) is the VM's
//!   word and labelled so.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::{Outcome, RebuildSet, ReviewOutcome};

/// What the host knows about the job, beside the guest's outcome.
pub struct Context<'a> {
    pub job_id: &'a str,
    pub repo: &'a str,
    pub pr: u64,
    pub head: &'a str,
    pub base_branch: &'a str,
    pub base_commit: Option<&'a str>,
    pub merged_commit: Option<&'a str>,
    pub system: &'a str,
    pub guest_nix: Option<&'a str>,
    pub identity: &'a str,
    pub trust: &'a str,
    pub sponsor: Option<Sponsor>,
    /// The explicit attr list of the request, if any (for `non-existent`).
    pub requested: Option<&'a [String]>,
    /// The rebuild list given with the request (`rebuild`, or nixpkgs
    /// CI's for this system): then the base is not evaluated, and this,
    /// not the VM's word, is the rebuild set.
    pub given: Option<&'a [String]>,
    /// Changed attrs the builder never builds.
    pub skip: &'a [String],
    pub max_build: usize,
    /// Verified paths: store path → (NAR hash, NAR size).
    pub verified: &'a BTreeMap<String, (String, u64)>,
    /// Verified paths' references (rescanned by the host), for the runtime
    /// evidence.
    pub references: &'a BTreeMap<String, Vec<String>>,
    pub artifacts: Vec<Artifact>,
    /// This builder's signed attestations of the job's outputs.
    pub attestations: Vec<crate::attest::Attestation>,
    /// `review.bot_authors`: whose point releases may get a merge verdict.
    pub bot_authors: &'a [String],
    /// The PR as GitHub shows it now (author, head), if GitHub is configured.
    pub pr_now: Option<&'a super::verdict::PrNow>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sponsor {
    pub name: String,
    pub url: String,
    /// `These build results were contributed by: …`
    pub line: String,
}

/// A file a passing test produced, to look at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifact {
    /// The test attr.
    pub test: String,
    pub store_path: String,
    /// Path of the file inside the output.
    pub file: String,
    pub size: u64,
    /// `image` or `log`.
    pub kind: String,
    /// Where the page serves it (relative to the web listener).
    pub url: String,
    /// The output's NAR under the job's quarantine (`nar/<hash>.nar`) and
    /// the file's contents' offset in it: the page reads just those bytes.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub nar: String,
    #[serde(default)]
    pub offset: u64,
}

/// nixpkgs-review's per-system categories. In `report.json` each entry is
/// nixpkgs-review 4.0's `{name, aliases}` object; older reports' plain
/// names are read too. `failed` holds only the PR's own failures (see
/// [`Report::failures`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Categories {
    #[serde(with = "packages")]
    pub blacklisted: Vec<String>,
    #[serde(with = "packages")]
    pub broken: Vec<String>,
    #[serde(with = "packages")]
    pub built: Vec<String>,
    #[serde(with = "packages")]
    pub failed: Vec<String>,
    #[serde(rename = "non-existent", with = "packages")]
    pub non_existent: Vec<String>,
    #[serde(with = "packages")]
    pub tests: Vec<String>,
}

/// A category's entries as nixpkgs-review 4.0 writes them:
/// `[{"name": "hello", "aliases": []}]`; plain strings are read as well.
pub mod packages {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    #[serde(untagged)]
    enum Entry {
        Object {
            name: String,
            #[serde(default)]
            aliases: Vec<String>,
        },
        Name(String),
    }

    pub fn serialize<S: Serializer>(v: &[String], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|n| Entry::Object {
            name: n.clone(),
            aliases: vec![],
        }))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
        Ok(Vec::<Entry>::deserialize(d)?
            .into_iter()
            .map(|e| match e {
                Entry::Object { name, .. } | Entry::Name(name) => name,
            })
            .collect())
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evidence {
    /// Per passing test: the changed attrs in its build and runtime closures.
    pub by_test: BTreeMap<String, TestEvidence>,
    /// Per changed attr: the passing tests whose closure holds it.
    pub by_package: BTreeMap<String, Vec<String>>,
    /// Where each half comes from: `runtime` is verified by the host,
    /// `build` is reported by the VM.
    #[serde(default)]
    pub sources: BTreeMap<String, String>,
}

/// What [`Evidence::sources`] says.
pub const RUNTIME_SOURCE: &str =
    "verified: computed on the host from the references of the outputs it verified";
pub const BUILD_SOURCE: &str =
    "reported by the VM (the test's .drv closure, from the VM's evaluation), not verified";

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestEvidence {
    pub build: Vec<String>,
    pub runtime: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedTest {
    pub attr: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NarHash {
    pub nar_hash: String,
    pub nar_size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Builder {
    pub identity: String,
    pub trust: String,
    pub sponsor: Option<Sponsor>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobInfo {
    pub id: String,
    pub repo: String,
    pub head: String,
    pub base_branch: String,
    pub base_commit: Option<String>,
    pub merged_commit: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RebuildInfo {
    /// Where the set comes from: the host's diff of the VM's two
    /// evaluations, or a list given with the request.
    #[serde(default)]
    pub source: String,
    /// Set when the VM's own rebuild list contradicted its evaluations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
    pub mass_rebuild: bool,
    pub max_build: usize,
    /// The attrs that were to be built (all changed ones, or the sample).
    pub build: Vec<String>,
}

/// `report.json`. Its first keys are nixpkgs-review 4.0's (docs/review.md
/// has the shape, key by key); airlock's own follow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// nixpkgs-review: the systems of `result`.
    #[serde(default)]
    pub systems: Vec<String>,
    pub pr: u64,
    /// nixpkgs-review: the commit reviewed (the PR's head).
    #[serde(default)]
    pub commit: Option<String>,
    /// nixpkgs-review: `merge` (the head merged onto the base, as here).
    #[serde(default)]
    pub checkout: String,
    #[serde(default, rename = "extra-nixpkgs-config")]
    pub extra_nixpkgs_config: Option<String>,
    /// nixpkgs-review's package filters: the request's attr list
    /// (`only_packages`) and `review.skip_attrs` (`skip_packages`).
    #[serde(default)]
    pub only_packages: Vec<String>,
    #[serde(default)]
    pub additional_packages: Vec<String>,
    #[serde(default)]
    pub package_regex: Vec<String>,
    #[serde(default)]
    pub skip_packages: Vec<String>,
    #[serde(default)]
    pub skip_packages_regex: Vec<String>,
    /// nixpkgs-review 4.0: the packages reviewed per system (the rebuild
    /// set), `{name, aliases}` entries.
    #[serde(default)]
    pub pkgs: BTreeMap<String, Pkgs>,
    pub system: String,
    /// nixpkgs-review's shape: `result.<system>.{built,failed,…}`.
    pub result: BTreeMap<String, Categories>,
    /// The failures sorted out: new, failing on the base too, unsupported
    /// here. Only `new` are in `result.<system>.failed`.
    #[serde(default)]
    pub failures: super::verdict::Failures,
    /// What the VM saw building each failed attr's base version.
    #[serde(default)]
    pub base_checks: BTreeMap<String, String>,
    /// The last lines of each failure's build log (the VM's).
    #[serde(default)]
    pub failure_logs: BTreeMap<String, Vec<String>>,
    /// The merge verdict for a bot's point release.
    #[serde(default)]
    pub automerge: super::verdict::Automerge,
    pub rebuild: RebuildInfo,
    /// Changed attrs that were not built, with the reason (evaluation
    /// only, needs KVM).
    pub skipped_attrs: Vec<SkippedTest>,
    pub skipped_tests: Vec<SkippedTest>,
    pub evidence: Evidence,
    pub artifacts: Vec<Artifact>,
    /// Every verified output: its NAR hash and size.
    pub nar_hashes: BTreeMap<String, NarHash>,
    pub guest_nix: Option<String>,
    pub builder: Builder,
    pub job: JobInfo,
    /// Milliseconds spent evaluating the base and the merged tree in the VM.
    pub eval_ms: BTreeMap<String, u64>,
    /// This builder's signed attestations of the job's verified outputs
    /// (docs/trust.md): anyone with its public key can check them, and
    /// `airlockctl compare <head>` sets them beside other builders'.
    #[serde(default)]
    pub attestations: Vec<crate::attest::Attestation>,
}

/// `pkgs.<system>`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pkgs(#[serde(with = "packages")] pub Vec<String>);

impl Report {
    pub fn categories(&self) -> &Categories {
        self.result
            .get(&self.system)
            .expect("a report has its own system")
    }
}

/// Most attrs, tests and closure entries read from a guest's outcome.
pub const MAX_ATTRS: usize = 100_000;
pub const MAX_TESTS: usize = 10_000;
pub const MAX_CLOSURE: usize = 100_000;
/// Most steps of all runtime-closure walks of one report together.
pub const MAX_CLOSURE_STEPS: usize = 20_000_000;
/// Most (package, test) pairs in the evidence map.
pub const MAX_EVIDENCE_PAIRS: usize = 200_000;

/// A name the report may carry: printable, at most [`MAX_NAME_CHARS`].
fn name_ok(s: &str) -> bool {
    !s.is_empty()
        && s.chars().count() <= MAX_NAME_CHARS
        && !s
            .chars()
            .any(|c| c.is_control() || matches!(c, '\u{2028}' | '\u{2029}'))
}

fn cut(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '\u{FFFD}' } else { c })
        .take(MAX_NAME_CHARS)
        .collect()
}

/// The guest's outcome cut to what the host reads of it: names that are
/// not printable or longer than [`MAX_NAME_CHARS`] dropped (with what
/// refers to them), at most [`MAX_ATTRS`] attrs, [`MAX_TESTS`] tests and
/// [`MAX_CLOSURE`] closure entries per test, reasons cut.
pub fn bounded(o: &ReviewOutcome) -> ReviewOutcome {
    let outcome = |x: &Outcome| match x {
        Outcome::Skipped(why) => Outcome::Skipped(cut(why)),
        other => other.clone(),
    };
    let evals = |m: &BTreeMap<String, super::AttrEval>| {
        m.iter()
            .filter(|(a, e)| name_ok(a) && e.outputs.len() <= 64)
            .take(MAX_ATTRS)
            .map(|(a, e)| {
                let mut e = e.clone();
                e.error = e.error.as_deref().map(cut);
                (a.clone(), e)
            })
            .collect()
    };
    let names = |v: &[String]| -> Vec<String> {
        v.iter()
            .filter(|a| name_ok(a))
            .take(MAX_ATTRS)
            .cloned()
            .collect()
    };
    let closure = |v: &[String]| -> Vec<String> {
        let mut v: Vec<String> = v
            .iter()
            .filter(|a| name_ok(a))
            .take(MAX_CLOSURE)
            .cloned()
            .collect();
        v.sort();
        v.dedup();
        v
    };
    ReviewOutcome {
        base: evals(&o.base),
        merged: evals(&o.merged),
        rebuild: RebuildSet {
            changed: names(&o.rebuild.changed),
            removed: names(&o.rebuild.removed),
            mass_rebuild: o.rebuild.mass_rebuild,
            build: names(&o.rebuild.build),
        },
        attrs: o
            .attrs
            .iter()
            .filter(|a| name_ok(&a.attr) && a.outputs.len() <= 64)
            .take(MAX_ATTRS)
            .map(|a| super::ReviewedAttr {
                outcome: outcome(&a.outcome),
                ..a.clone()
            })
            .collect(),
        tests: o
            .tests
            .iter()
            .filter(|t| name_ok(&t.attr) && name_ok(&t.of) && t.outputs.len() <= 64)
            .take(MAX_TESTS)
            .map(|t| super::ReviewedTest {
                attr: t.attr.clone(),
                of: t.of.clone(),
                drv_path: t.drv_path.clone(),
                outputs: t.outputs.clone(),
                nixos: t.nixos,
                outcome: outcome(&t.outcome),
                build_closure: closure(&t.build_closure),
                runtime_closure: closure(&t.runtime_closure),
            })
            .collect(),
        base_checks: o
            .base_checks
            .iter()
            .filter(|(a, _)| name_ok(a))
            .take(MAX_ATTRS)
            .map(|(a, b)| {
                let mut b = b.clone();
                b.result = match &b.result {
                    super::BaseResult::FailedOnBase(w) => super::BaseResult::FailedOnBase(cut(w)),
                    super::BaseResult::NotChecked(w) => super::BaseResult::NotChecked(cut(w)),
                    r => r.clone(),
                };
                (a.clone(), b)
            })
            .collect(),
        ..o.clone()
    }
}

/// The store paths reachable from `from` through the verified paths'
/// references (the host's own rescan), `from` included.
/// Each visit spends one unit of `budget`; at zero the walk stops short.
fn verified_closure<'a>(
    from: impl IntoIterator<Item = &'a String>,
    refs: &'a BTreeMap<String, Vec<String>>,
    budget: &mut usize,
) -> BTreeSet<&'a str> {
    let mut seen: BTreeSet<&str> = BTreeSet::new();
    let mut todo: Vec<&str> = from.into_iter().map(String::as_str).collect();
    while let Some(p) = todo.pop() {
        if *budget == 0 {
            break;
        }
        *budget -= 1;
        if !seen.insert(p) {
            continue;
        }
        if let Some(rs) = refs.get(p) {
            todo.extend(rs.iter().map(String::as_str).filter(|r| !seen.contains(r)));
        }
    }
    seen
}

pub fn build(o: &ReviewOutcome, ctx: Context<'_>) -> Report {
    let o = &bounded(o);
    let Sorted {
        mut c,
        skipped_attrs,
        skipped_tests,
        passed,
        guest_failed,
    } = sort_outcomes(o, &ctx);
    broken_and_missing(o, &ctx, &mut c);
    let (rebuild, rebuild_source, rebuild_note) = host_rebuild_set(o, &ctx);
    unreported_failed(o, &rebuild, &mut c);
    let evidence = evidence_map(o, &ctx, &c, &rebuild, &passed);
    let Verdicts {
        failures,
        checks,
        automerge,
        failure_logs,
    } = verdicts(
        o,
        &ctx,
        &mut c,
        &rebuild,
        &evidence,
        &guest_failed,
        &skipped_attrs,
        &skipped_tests,
    );
    let RebuildSet {
        changed,
        removed,
        mass_rebuild,
        build,
    } = rebuild;
    Report {
        systems: vec![ctx.system.to_owned()],
        pr: ctx.pr,
        commit: Some(ctx.head.to_owned()),
        checkout: "merge".into(),
        extra_nixpkgs_config: None,
        only_packages: ctx.requested.map(<[String]>::to_vec).unwrap_or_default(),
        additional_packages: vec![],
        package_regex: vec![],
        skip_packages: ctx.skip.to_vec(),
        skip_packages_regex: vec![],
        pkgs: BTreeMap::from([(ctx.system.to_owned(), Pkgs(changed.clone()))]),
        system: ctx.system.to_owned(),
        result: BTreeMap::from([(ctx.system.to_owned(), c)]),
        failures,
        base_checks: checks
            .iter()
            .map(|(a, b)| (a.clone(), super::verdict::base_note(b)))
            .collect(),
        failure_logs,
        automerge,
        rebuild: RebuildInfo {
            source: rebuild_source,
            note: rebuild_note,
            changed,
            removed,
            mass_rebuild,
            max_build: ctx.max_build,
            build,
        },
        skipped_attrs,
        skipped_tests,
        evidence,
        artifacts: ctx.artifacts,
        nar_hashes: nar_hashes(ctx.verified),
        guest_nix: ctx.guest_nix.map(str::to_owned),
        builder: Builder {
            identity: ctx.identity.to_owned(),
            trust: ctx.trust.to_owned(),
            sponsor: ctx.sponsor,
        },
        job: JobInfo {
            id: ctx.job_id.to_owned(),
            repo: ctx.repo.to_owned(),
            head: ctx.head.to_owned(),
            base_branch: ctx.base_branch.to_owned(),
            base_commit: ctx.base_commit.map(str::to_owned),
            merged_commit: ctx.merged_commit.map(str::to_owned),
        },
        eval_ms: BTreeMap::from([
            ("base".to_owned(), o.eval_ms.0),
            ("merged".to_owned(), o.eval_ms.1),
        ]),
        attestations: ctx.attestations,
    }
}

/// An attr that was to be built and that the VM says nothing about
/// failed (a VM that leaves out a failure does not hide it).
fn unreported_failed(o: &ReviewOutcome, rebuild: &RebuildSet, c: &mut Categories) {
    let reported: BTreeSet<&str> = o.attrs.iter().map(|a| a.attr.as_str()).collect();
    c.failed.extend(
        rebuild
            .build
            .iter()
            .filter(|a| !reported.contains(a.as_str()))
            .cloned(),
    );
    c.failed.sort();
    c.failed.dedup();
}

/// Changed attr → passing tests whose verified runtime closure holds it.
fn verified_evidence(e: &Evidence) -> BTreeMap<String, Vec<String>> {
    let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (test, te) in &e.by_test {
        for a in &te.runtime {
            m.entry(a.clone()).or_default().push(test.clone());
        }
    }
    m
}

fn nar_hashes(verified: &BTreeMap<String, (String, u64)>) -> BTreeMap<String, NarHash> {
    verified
        .iter()
        .map(|(p, (h, s))| {
            (
                p.clone(),
                NarHash {
                    nar_hash: h.clone(),
                    nar_size: *s,
                },
            )
        })
        .collect()
}

/// What the report concludes from the failures: new or the base's, the
/// merge verdict, the failures' log tails.
struct Verdicts {
    failures: super::verdict::Failures,
    checks: BTreeMap<String, super::BaseCheck>,
    automerge: super::verdict::Automerge,
    failure_logs: BTreeMap<String, Vec<String>>,
}

/// `c.failed` becomes the new failures only.
#[allow(clippy::too_many_arguments)]
fn verdicts(
    o: &ReviewOutcome,
    ctx: &Context<'_>,
    c: &mut Categories,
    rebuild: &RebuildSet,
    evidence: &Evidence,
    guest_failed: &BTreeSet<String>,
    skipped_attrs: &[SkippedTest],
    skipped_tests: &[SkippedTest],
) -> Verdicts {
    // Only what the guest itself said failed can fail on the base too.
    let checks: BTreeMap<String, super::BaseCheck> = o
        .base_checks
        .iter()
        .filter(|(a, _)| guest_failed.contains(*a))
        .map(|(a, b)| (a.clone(), b.clone()))
        .collect();
    let skipped: Vec<(&str, &str)> = skipped_attrs
        .iter()
        .chain(skipped_tests)
        .map(|s| (s.attr.as_str(), s.reason.as_str()))
        .collect();
    let failures = super::verdict::classify(&c.failed, &checks, &skipped);
    c.failed = failures.new.clone();
    let automerge = super::verdict::automerge(super::verdict::AutomergeInput {
        bot_authors: ctx.bot_authors,
        pr: ctx.pr_now,
        reviewed_head: ctx.head,
        changed: &rebuild.changed,
        mass_rebuild: rebuild.mass_rebuild,
        built: &c.built,
        failures: &failures,
        exercised: &verified_evidence(evidence),
        versions: super::verdict::version_changes(&rebuild.changed, &o.base, &o.merged),
        broken: &c.broken,
        removed: &rebuild.removed,
        base_evaluated: !o.base.is_empty(),
    });
    let failure_logs = o
        .failure_logs
        .iter()
        .filter(|(a, _)| guest_failed.contains(*a) && name_ok(a))
        .take(MAX_LOGS)
        .map(|(a, lines)| {
            let tail = lines.len().saturating_sub(super::LOG_TAIL_LINES);
            (
                a.clone(),
                lines[tail..].iter().map(|l| cut_line(l)).collect(),
            )
        })
        .collect();
    Verdicts {
        failures,
        checks,
        automerge,
        failure_logs,
    }
}

/// Most failure logs a report keeps, and the longest line of one.
pub const MAX_LOGS: usize = 1000;
pub const MAX_LOG_LINE: usize = 300;

/// A log line as the report keeps it: control characters (colour codes
/// included) replaced, cut at [`MAX_LOG_LINE`].
fn cut_line(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_control() && c != '\t' {
                '\u{FFFD}'
            } else {
                c
            }
        })
        .take(MAX_LOG_LINE)
        .collect();
    if s.chars().count() > MAX_LOG_LINE {
        out.push('\u{2026}');
    }
    out
}

/// The attrs and tests of an outcome in their report categories.
struct Sorted {
    c: Categories,
    skipped_attrs: Vec<SkippedTest>,
    skipped_tests: Vec<SkippedTest>,
    /// Tests whose outputs are verified and their own.
    passed: BTreeSet<String>,
    /// What the guest itself reported failed.
    guest_failed: BTreeSet<String>,
}

/// Built only when every output is a path the host verified; a test
/// passes only when its outputs are also its own.
fn sort_outcomes(o: &ReviewOutcome, ctx: &Context<'_>) -> Sorted {
    let verified = |outs: &BTreeMap<String, String>| {
        !outs.is_empty() && outs.values().all(|p| ctx.verified.contains_key(p))
    };
    // Whose outputs are they? A test's outputs must be its own: no attr's
    // or other test's of another derivation (a test that "passes" by naming
    // a built package's output is no evidence).
    let mut owners: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (drv, outs) in o
        .attrs
        .iter()
        .map(|a| (a.drv_path.as_str(), &a.outputs))
        .chain(
            o.merged
                .values()
                .map(|e| (e.drv_path.as_deref().unwrap_or(""), &e.outputs)),
        )
        .chain(o.tests.iter().map(|t| (t.drv_path.as_str(), &t.outputs)))
    {
        for p in outs.values() {
            owners.entry(p.as_str()).or_default().insert(drv);
        }
    }
    let own_outputs = |t: &super::ReviewedTest| {
        t.outputs.values().all(|p| {
            owners
                .get(p.as_str())
                .is_some_and(|d| d.len() == 1 && d.contains(t.drv_path.as_str()))
        })
    };
    let mut c = Categories::default();
    let mut skipped_attrs = Vec::new();
    for a in &o.attrs {
        match &a.outcome {
            Outcome::Built if verified(&a.outputs) => c.built.push(a.attr.clone()),
            Outcome::Built | Outcome::Failed => c.failed.push(a.attr.clone()),
            Outcome::Skipped(why) => skipped_attrs.push(SkippedTest {
                attr: a.attr.clone(),
                reason: why.clone(),
            }),
        }
    }
    let mut skipped_tests = Vec::new();
    let mut passed = BTreeSet::new();
    let guest_failed = o
        .attrs
        .iter()
        .filter(|a| a.outcome == Outcome::Failed)
        .map(|a| a.attr.clone())
        .chain(
            o.tests
                .iter()
                .filter(|t| t.outcome == Outcome::Failed)
                .map(|t| t.attr.clone()),
        )
        .collect();
    for t in &o.tests {
        match &t.outcome {
            Outcome::Built if verified(&t.outputs) && own_outputs(t) => {
                passed.insert(t.attr.clone());
                c.tests.push(t.attr.clone());
            }
            Outcome::Built | Outcome::Failed => c.failed.push(t.attr.clone()),
            Outcome::Skipped(why) if t.drv_path.is_empty() => {
                c.broken.push(t.attr.clone());
                skipped_tests.push(SkippedTest {
                    attr: t.attr.clone(),
                    reason: why.clone(),
                });
            }
            Outcome::Skipped(why) => skipped_tests.push(SkippedTest {
                attr: t.attr.clone(),
                reason: why.clone(),
            }),
        }
    }
    Sorted {
        c,
        skipped_attrs,
        skipped_tests,
        passed,
        guest_failed,
    }
}

/// Broken and non-existent attrs, the skip list; every category sorted.
fn broken_and_missing(o: &ReviewOutcome, ctx: &Context<'_>, c: &mut Categories) {
    // Broken: attrs that do not evaluate in the merged tree, unless they
    // did not in the base either (the PR did not break them).
    for (attr, e) in &o.merged {
        if e.error.as_deref() == Some("broken")
            && o.base.get(attr).and_then(|b| b.error.as_deref()) != Some("broken")
            && (!o.base.is_empty()
                || ctx.requested.is_some()
                || ctx.given.is_some_and(|g| g.contains(attr)))
        {
            c.broken.push(attr.clone());
        }
        if e.error.as_deref() == Some("non-existent") && ctx.requested.is_some() {
            c.non_existent.push(attr.clone());
        }
    }
    c.blacklisted = o
        .rebuild
        .changed
        .iter()
        .filter(|a| ctx.skip.contains(a))
        .cloned()
        .collect();
    for v in [
        &mut c.blacklisted,
        &mut c.broken,
        &mut c.built,
        &mut c.failed,
        &mut c.non_existent,
        &mut c.tests,
    ] {
        v.sort();
        v.dedup();
    }
}

/// The rebuild set, where it comes from, and a note when the VM's own
/// list disagrees with it.
fn host_rebuild_set(o: &ReviewOutcome, ctx: &Context<'_>) -> (RebuildSet, String, Option<String>) {
    // The rebuild set: the host's diff of the VM's two evaluations (a
    // list given with the request otherwise), never the VM's word alone.
    if let (true, Some(given)) = (o.base.is_empty(), ctx.given) {
        // The given list, of the attrs the merged tree has.
        let changed: Vec<String> = given
            .iter()
            .filter(|a| o.merged.get(*a).is_some_and(|e| e.error.is_none()))
            .cloned()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let mass_rebuild = changed.len() > ctx.max_build;
        let mut build = if mass_rebuild {
            super::sample(
                &changed,
                ctx.max_build,
                ctx.merged_commit.unwrap_or_default(),
            )
        } else {
            changed.clone()
        };
        build.retain(|a| !ctx.skip.contains(a));
        let note = (changed != o.rebuild.changed).then(|| {
            format!(
                "the VM reported {} changed attrs, the given list has {} the merged tree evaluates; this is the given list",
                o.rebuild.changed.len(),
                changed.len()
            )
        });
        (
            RebuildSet {
                changed,
                removed: vec![],
                mass_rebuild,
                build,
            },
            "the rebuild list given with the request".to_owned(),
            note,
        )
    } else {
        let mut r = super::rebuild_set(
            &super::out_paths(&o.base),
            &super::out_paths(&o.merged),
            ctx.max_build,
            ctx.merged_commit.unwrap_or_default(),
        );
        r.build.retain(|a| !ctx.skip.contains(a));
        let note = (r.changed != o.rebuild.changed).then(|| {
            format!(
                "the VM reported {} changed attrs, its own evaluations differ in {}; this is the host's diff of them",
                o.rebuild.changed.len(),
                r.changed.len()
            )
        });
        (
            r,
            "the host's diff of the base and merged evaluations the VM reported".to_owned(),
            note,
        )
    }
}

/// Which passing tests vouch for which changed, built packages: through
/// their verified runtime closures (the host's) and their build closures
/// (the VM's word), bounded.
fn evidence_map(
    o: &ReviewOutcome,
    ctx: &Context<'_>,
    c: &Categories,
    rebuild: &RebuildSet,
    passed: &BTreeSet<String>,
) -> Evidence {
    // Evidence: only changed attrs that were built and verified.
    let changed_built: BTreeSet<&str> = rebuild
        .changed
        .iter()
        .map(String::as_str)
        .filter(|a| c.built.binary_search_by(|b| b.as_str().cmp(a)).is_ok())
        .collect();
    let outputs_of: BTreeMap<&str, Vec<&str>> = o
        .attrs
        .iter()
        .filter(|a| changed_built.contains(a.attr.as_str()))
        .map(|a| {
            (
                a.attr.as_str(),
                a.outputs.values().map(String::as_str).collect(),
            )
        })
        .collect();
    let mut evidence = Evidence::default();
    evidence
        .sources
        .insert("runtime".into(), RUNTIME_SOURCE.into());
    evidence.sources.insert("build".into(), BUILD_SOURCE.into());
    let mut pairs = 0usize;
    let mut budget = MAX_CLOSURE_STEPS;
    for t in o.tests.iter().filter(|t| passed.contains(&t.attr)) {
        let closure = verified_closure(t.outputs.values(), ctx.references, &mut budget);
        if budget == 0 {
            evidence.sources.insert(
                "cut".into(),
                format!("the runtime closures took more than {MAX_CLOSURE_STEPS} steps; later tests are left out"),
            );
            break;
        }
        let runtime: Vec<String> = outputs_of
            .iter()
            .filter(|(_, outs)| outs.iter().any(|p| closure.contains(p)))
            .map(|(a, _)| a.to_string())
            .collect();
        let build: Vec<String> = t
            .build_closure
            .iter()
            .filter(|a| changed_built.contains(a.as_str()))
            .cloned()
            .collect();
        let all: BTreeSet<&String> = build.iter().chain(&runtime).collect();
        // Bounded whatever the guest claims: at most MAX_EVIDENCE_PAIRS
        // (package, test) entries in all.
        if pairs + all.len() > MAX_EVIDENCE_PAIRS {
            evidence.sources.insert(
                "cut".into(),
                format!(
                    "more than {MAX_EVIDENCE_PAIRS} (package, test) pairs; the rest are left out"
                ),
            );
            break;
        }
        pairs += all.len();
        for a in all {
            evidence
                .by_package
                .entry(a.clone())
                .or_default()
                .push(t.attr.clone());
        }
        evidence
            .by_test
            .insert(t.attr.clone(), TestEvidence { build, runtime });
    }
    evidence
}

/// HTML-escape text for the `<li>`/`<summary>` parts of the comment (attr
/// names come from the PR: untrusted).
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Longest name the report shows of a PR- or guest-chosen string.
pub const MAX_NAME_CHARS: usize = 1024;

/// A PR- or guest-chosen string (attr and test names, reasons, the guest's
/// Nix version, …) as inert inline text, safe anywhere in report.md: in
/// the `<details>` HTML blocks, in table cells, in paragraphs. It is one
/// `<code>` element (GitHub links no @mention, emoji or URL in code) whose
/// text has no newline or other control character (a blank line would end
/// the HTML block), no `<`, `&` or quote (no tag, comment or attribute can
/// start), and no ASCII punctuation but `-` (no `|` splitting a cell, no
/// backtick, emphasis, link, autolinked `www.`/`http:`/`@`): each is a
/// numeric character reference, which CommonMark reads as literal text.
/// Cut at [`MAX_NAME_CHARS`], with `…`.
pub fn lit(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 16);
    out.push_str("<code>");
    clean(s, &mut out, |c, out| match c {
        '-' => out.push('-'),
        c if c.is_ascii_punctuation() => out.push_str(&format!("&#{};", c as u32)),
        c => out.push(c),
    });
    out.push_str("</code>");
    out
}

/// A PR- or guest-chosen string for a plain-text line (the broker's
/// `BuildResult.output`, which ofborg shows in a code block): one line,
/// no control characters, no backtick (a run of them could close the
/// block), cut at [`MAX_NAME_CHARS`].
pub fn plain(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    clean(s, &mut out, |c, out| {
        out.push(if c == '`' { '\'' } else { c })
    });
    out
}

/// `s` into `out` through `each`, cut at [`MAX_NAME_CHARS`] with `…`;
/// control characters, line and paragraph separators and BOMs become
/// U+FFFD before `each` sees them.
fn clean(s: &str, out: &mut String, each: impl Fn(char, &mut String)) {
    for (i, c) in s.chars().enumerate() {
        if i == MAX_NAME_CHARS {
            out.push('\u{2026}');
            break;
        }
        if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}' | '\u{FEFF}') {
            out.push('\u{FFFD}');
        } else {
            each(c, out);
        }
    }
}

/// GitHub's limit on a comment's (and a check run's output's) length, in
/// characters.
pub const MAX_COMMENT_CHARS: usize = 65_536;

/// How much of each list a rendering shows.
#[derive(Debug, Clone, Copy)]
struct Lim {
    /// Entries per list (sections, evidence rows, artifacts, attestations).
    items: usize,
    /// Failure logs shown.
    logs: usize,
}

/// Tried in order until the comment fits.
const LIMS: [Lim; 7] = [
    Lim {
        items: usize::MAX,
        logs: usize::MAX,
    },
    Lim {
        items: usize::MAX,
        logs: 50,
    },
    Lim {
        items: 500,
        logs: 20,
    },
    Lim {
        items: 100,
        logs: 10,
    },
    Lim { items: 25, logs: 3 },
    Lim { items: 5, logs: 1 },
    Lim { items: 0, logs: 0 },
];

/// `what` is "noun rest": "package built" → "2 packages built".
fn section(md: &mut String, icon: &str, what: &str, items: &[String], lim: Lim) {
    if items.is_empty() {
        return;
    }
    let n = items.len();
    let (noun, rest) = what.split_once(' ').unwrap_or((what, ""));
    // "1 package does not exist", "2 packages do not exist".
    let rest = match (rest.strip_prefix("does "), rest.strip_prefix("fails ")) {
        (Some(r), _) if n != 1 => format!("do {r}"),
        (_, Some(r)) if n != 1 => format!("fail {r}"),
        _ => rest.to_owned(),
    };
    md.push_str(&format!(
        "<details>\n  <summary>{icon} {n} {noun}{} {rest}:</summary>\n  <ul>\n",
        if n == 1 { "" } else { "s" }
    ));
    for i in items.iter().take(lim.items) {
        md.push_str(&format!("    <li>{}</li>\n", lit(i)));
    }
    if n > lim.items {
        md.push_str(&format!(
            "    <li>… and {} more (report.json lists them all)</li>\n",
            n - lim.items
        ));
    }
    md.push_str("  </ul>\n</details>\n");
}

/// `report.md`: fit for a PR comment (nixpkgs-review's collapsible
/// sections), within [`MAX_COMMENT_CHARS`] whatever the PR: lists and
/// failure logs are cut, with a note saying so, until it fits.
pub fn markdown(r: &Report) -> String {
    markdown_within(r, MAX_COMMENT_CHARS)
}

/// [`markdown`] within `limit` characters.
pub fn markdown_within(r: &Report, limit: usize) -> String {
    let full = render(r, LIMS[0], None);
    if full.chars().count() <= limit {
        return full;
    }
    for lim in &LIMS[1..] {
        let md = render(r, *lim, Some(limit));
        if md.chars().count() <= limit {
            return md;
        }
    }
    // Unreachable with bounded names; cut hard rather than post too much.
    let note = "\n\n(cut: the comment was too long; report.json has everything)\n";
    let mut md: String = render(r, LIMS[LIMS.len() - 1], Some(limit))
        .chars()
        .take(limit.saturating_sub(note.chars().count()))
        .collect();
    md.push_str(note);
    md
}

fn render(r: &Report, lim: Lim, cut_to: Option<usize>) -> String {
    let mut md = String::new();
    md_header(&mut md, r);
    if let Some(limit) = cut_to {
        md.push_str(&format!(
            "> **This comment was cut to fit GitHub's {limit}-character limit**: {}{}; report.json has everything.\n\n",
            if lim.items == usize::MAX {
                "every list is whole".to_owned()
            } else {
                format!("each list shows at most {} entries", lim.items)
            },
            if lim.logs == usize::MAX {
                String::new()
            } else {
                format!(", at most {} failure logs are shown", lim.logs)
            }
        ));
    }
    md_verdict(&mut md, r);
    md_categories(&mut md, r, lim);
    md_logs(&mut md, r, lim);
    if !r.evidence.by_package.is_empty() {
        md_evidence(&mut md, r, lim);
    }
    if !r.artifacts.is_empty() {
        md.push_str("### Test artifacts\n\n");
        for a in r.artifacts.iter().take(lim.items) {
            md.push_str(&format!(
                "- {} {}: {} ({} bytes)\n",
                lit(&a.test),
                a.kind,
                lit(&a.url),
                a.size
            ));
        }
        more(&mut md, r.artifacts.len(), lim);
        md.push('\n');
    }
    if !r.attestations.is_empty() {
        md_attestations(&mut md, r, lim);
    }
    if let Some(s) = &r.builder.sponsor {
        md.push_str("---\n\n");
        md.push_str(&esc(&s.line));
        md.push('\n');
    }
    md
}

fn more(md: &mut String, n: usize, lim: Lim) {
    if n > lim.items {
        md.push_str(&format!(
            "- … and {} more (report.json lists them all)\n",
            n - lim.items
        ));
    }
}

/// The merge verdict, for a bot's PR (or whenever it is eligible).
fn md_verdict(md: &mut String, r: &Report) {
    let a = &r.automerge;
    if a.eligible {
        md.push_str(
            "**Merge verdict: eligible.** A bot's point release: every changed package built, no new failure, each is exercised by a passing test, and the PR's head is the one reviewed. airlock does not merge; this is for the merge bot or a committer to act on.\n\n",
        );
    } else if a.bot {
        md.push_str("**Merge verdict: not eligible.**\n\n");
        for why in &a.reasons {
            md.push_str(&format!("- {}\n", lit(why)));
        }
        md.push('\n');
    }
}

/// The builder's signed word on each output, and where to compare it.
fn md_attestations(md: &mut String, r: &Report, lim: Lim) {
    md.push_str("### Attestations\n\n");
    md.push_str(&format!(
        "Signed by builder {} (its identity key, not the cache key); compare with other builders: <code>airlockctl compare</code> {}.\n\n",
        lit(&r.attestations[0].statement.builder),
        lit(&r.job.head)
    ));
    for a in r.attestations.iter().take(lim.items) {
        let s = &a.statement;
        md.push_str(&format!(
            "- {} ({}!{}): {}, {} bytes\n",
            lit(&s.out_path),
            lit(&s.drv_path),
            lit(&s.output),
            lit(&s.nar_hash),
            s.nar_size
        ));
    }
    more(md, r.attestations.len(), lim);
    md.push('\n');
}
/// Title, what was built where, how much changed.
fn md_header(md: &mut String, r: &Report) {
    md.push_str(&format!(
        "## airlock review of {} PR #{}\n\n",
        lit(&r.job.repo),
        r.pr
    ));
    md.push_str(&format!(
        "Commit {} merged onto {}{}, built in a VM on {} ({} builder{}).\n\n",
        lit(&r.job.head),
        lit(&r.job.base_branch),
        r.job
            .base_commit
            .as_deref()
            .map(|b| format!(" ({})", lit(b)))
            .unwrap_or_default(),
        lit(&r.builder.identity),
        r.builder.trust,
        r.guest_nix
            .as_deref()
            .map(|n| format!(", guest {}", lit(n)))
            .unwrap_or_default()
    ));
    let rb = &r.rebuild;
    if rb.mass_rebuild {
        md.push_str(&format!(
            "**Mass rebuild: {} attrs changed, more than this builder's limit of {}; a sample of {} was built.**\n\n",
            rb.changed.len(),
            rb.max_build,
            rb.build.len()
        ));
    } else {
        md.push_str(&format!(
            "{} attrs changed, {} removed.\n\n",
            rb.changed.len(),
            rb.removed.len()
        ));
    }
}

/// nixpkgs-review's sections, one per category, and airlock's own: the
/// failures the base has too, and what this builder cannot build.
fn md_categories(md: &mut String, r: &Report, lim: Lim) {
    let c = r.categories();
    md.push_str("---\n\n");
    md.push_str(&format!("### {}\n\n", lit(&r.system)));
    section(
        md,
        ":fast_forward:",
        "package blacklisted",
        &c.blacklisted,
        lim,
    );
    section(
        md,
        ":x:",
        "package marked as broken and skipped",
        &c.broken,
        lim,
    );
    section(md, ":x:", "package failed to build", &c.failed, lim);
    let noted = |v: &[super::verdict::Noted]| -> Vec<String> {
        v.iter()
            .map(|s| format!("{} ({})", s.name, s.reason))
            .collect()
    };
    section(
        md,
        ":heavy_minus_sign:",
        "package fails on the base too (the VM's word; not counted as failed)",
        &noted(&r.failures.on_base),
        lim,
    );
    section(
        md,
        ":no_entry_sign:",
        "package unsupported here (needs a feature this builder's VMs lack; not counted as failed)",
        &noted(&r.failures.unsupported),
        lim,
    );
    section(md, ":white_check_mark:", "test built", &c.tests, lim);
    section(md, ":white_check_mark:", "package built", &c.built, lim);
    section(
        md,
        ":grey_question:",
        "package does not exist",
        &c.non_existent,
        lim,
    );
    let skipped = |v: &[SkippedTest]| -> Vec<String> {
        v.iter()
            .filter(|s| !super::verdict::is_unsupported(&s.reason))
            .map(|s| format!("{} ({})", s.attr, s.reason))
            .collect()
    };
    section(
        md,
        ":fast_forward:",
        "package not built",
        &skipped(&r.skipped_attrs),
        lim,
    );
    section(
        md,
        ":fast_forward:",
        "test skipped",
        &skipped(&r.skipped_tests),
        lim,
    );
    md.push('\n');
}

/// Failure logs' tails, nixpkgs-review's way: a `<pre>` per failure,
/// HTML-escaped (and `@` too: no mention), new failures first.
fn md_logs(md: &mut String, r: &Report, lim: Lim) {
    let order: Vec<&String> = r
        .failures
        .new
        .iter()
        .chain(r.failures.on_base.iter().map(|n| &n.name))
        .filter(|a| r.failure_logs.contains_key(*a))
        .collect();
    if order.is_empty() {
        return;
    }
    md.push_str(&format!(
        "<details>\n<summary>Error logs: {} (the last {} lines of each, as the VM reported them)</summary>\n\n",
        lit(&r.system),
        super::LOG_TAIL_LINES
    ));
    for a in order.iter().take(lim.logs) {
        md.push_str(&format!(
            "<details>\n<summary>{}</summary>\n\n<pre>{}</pre>\n\n</details>\n",
            lit(a),
            pre_text(&r.failure_logs[*a])
        ));
    }
    if order.len() > lim.logs {
        md.push_str(&format!(
            "\nWARNING: {} more logs were not included in this report: there were too many.\n",
            order.len() - lim.logs
        ));
    }
    md.push_str("</details>\n\n");
}

/// Log lines as the inside of a `<pre>` that starts its own HTML block
/// (after a blank line: CommonMark ends such a block only at `</pre>`):
/// HTML-escaped, `@` too (no mention), and no line blank either, so
/// nothing of the log is ever read as Markdown.
pub fn pre_text(lines: &[String]) -> String {
    lines
        .iter()
        .map(|l| {
            let e = esc(l).replace('@', "&#64;");
            if e.trim().is_empty() {
                "&#160;".to_owned()
            } else {
                e
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The evidence map: which passing tests vouch for which changed package.
fn md_evidence(md: &mut String, r: &Report, lim: Lim) {
    md.push_str("### What the passing tests vouch for\n\n");
    md.push_str(
        "*runtime*: the test's verified outputs refer to the package (checked on this \
         builder); *build*: the package is in the test's build closure as the VM \
         reported it (not verified).\n\n",
    );
    md.push_str("| changed package | passing tests whose closure holds it |\n|---|---|\n");
    let sets: BTreeMap<&str, (BTreeSet<&str>, BTreeSet<&str>)> = r
        .evidence
        .by_test
        .iter()
        .map(|(t, e)| {
            (
                t.as_str(),
                (
                    e.build.iter().map(String::as_str).collect(),
                    e.runtime.iter().map(String::as_str).collect(),
                ),
            )
        })
        .collect();
    for (pkg, tests) in r.evidence.by_package.iter().take(lim.items) {
        let ts: Vec<String> = tests
            .iter()
            .map(|t| {
                let (b, rt) = sets
                    .get(t.as_str())
                    .map(|(b, rt)| (b.contains(pkg.as_str()), rt.contains(pkg.as_str())))
                    .unwrap_or((false, false));
                let how = match (b, rt) {
                    (true, true) => "build, runtime",
                    (false, true) => "runtime",
                    _ => "build",
                };
                format!("{} ({how})", lit(t))
            })
            .collect();
        md.push_str(&format!("| {} | {} |\n", lit(pkg), ts.join(", ")));
    }
    if r.evidence.by_package.len() > lim.items {
        md.push_str(&format!(
            "\n… and {} more packages (report.json lists them all)\n",
            r.evidence.by_package.len() - lim.items
        ));
    }
    md.push('\n');
}

/// The few lines a review puts into its result (the broker's BuildResult
/// `output`): the summary a reader of ofborg's results sees.
pub fn summary_lines(r: &Report) -> Vec<String> {
    let c = r.categories();
    let mut v = vec![format!(
        "airlock review: {} changed{}, {} built, {} failed, {} broken, {} tests passed, {} tests skipped{}{}",
        r.rebuild.changed.len(),
        if r.rebuild.mass_rebuild {
            format!(" (mass rebuild, {} built as a sample)", r.rebuild.build.len())
        } else {
            String::new()
        },
        c.built.len(),
        c.failed.len(),
        c.broken.len(),
        c.tests.len(),
        r.skipped_tests.len(),
        match r.failures.on_base.len() {
            0 => String::new(),
            n => format!(", {n} fail on the base too"),
        },
        match r.failures.unsupported.len() {
            0 => String::new(),
            n => format!(", {n} unsupported here"),
        }
    )];
    if r.automerge.eligible {
        v.push("airlock review: merge verdict: eligible (a bot's point release, every changed package built and tested)".into());
    }
    for (pkg, tests) in &r.evidence.by_package {
        let tests: Vec<String> = tests.iter().map(|t| plain(t)).collect();
        v.push(format!(
            "airlock review: {} is exercised by {}",
            plain(pkg),
            tests.join(", ")
        ));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::super::{AttrEval, ReviewedAttr, ReviewedTest};
    use super::*;
    use crate::ofborg::BuildStatus;

    fn drv(name: &str) -> AttrEval {
        AttrEval {
            drv_path: Some(format!("/nix/store/{name}.drv")),
            outputs: BTreeMap::from([("out".into(), format!("/nix/store/{name}"))]),
            error: None,
            kvm: false,
        }
    }

    fn sample() -> (ReviewOutcome, BTreeMap<String, (String, u64)>) {
        let mut o = ReviewOutcome::default();
        o.base.insert("leaf".into(), drv("a-leaf"));
        o.base.insert("bad".into(), drv("a-bad"));
        o.merged.insert("leaf".into(), drv("b-leaf"));
        o.merged.insert(
            "bad".into(),
            AttrEval {
                error: Some("broken".into()),
                ..AttrEval::default()
            },
        );
        o.merged.insert("app".into(), drv("b-app"));
        o.rebuild = RebuildSet {
            changed: vec!["app".into(), "leaf".into()],
            removed: vec!["bad".into()],
            mass_rebuild: false,
            build: vec!["app".into(), "leaf".into()],
        };
        for (a, outcome) in [("app", Outcome::Built), ("leaf", Outcome::Built)] {
            let e = &o.merged[a];
            o.attrs.push(ReviewedAttr {
                attr: a.into(),
                drv_path: e.drv_path.clone().unwrap(),
                outputs: e.outputs.clone(),
                outcome,
            });
        }
        let test = |name: &str, outcome: Outcome, b: &[&str], r: &[&str]| ReviewedTest {
            attr: format!("app.passthru.tests.{name}"),
            of: "app".into(),
            drv_path: format!("/nix/store/t-{name}.drv"),
            outputs: BTreeMap::from([("out".into(), format!("/nix/store/t-{name}"))]),
            nixos: false,
            outcome,
            build_closure: b.iter().map(|s| s.to_string()).collect(),
            runtime_closure: r.iter().map(|s| s.to_string()).collect(),
        };
        o.tests
            .push(test("smoke", Outcome::Built, &["app", "leaf"], &["app"]));
        o.tests
            .push(test("vm", Outcome::Skipped("needs KVM".into()), &[], &[]));
        o.tests.push(test("lying", Outcome::Built, &["leaf"], &[]));
        let verified = [
            "/nix/store/b-leaf",
            "/nix/store/b-app",
            "/nix/store/t-smoke",
        ]
        .into_iter()
        .map(|p| (p.to_owned(), ("sha256:x".to_owned(), 1)))
        .collect();
        (o, verified)
    }

    static NO_REFS: BTreeMap<String, Vec<String>> = BTreeMap::new();

    fn ctx<'a>(verified: &'a BTreeMap<String, (String, u64)>) -> Context<'a> {
        Context {
            job_id: "j1",
            repo: "local/r",
            pr: 7,
            head: "h",
            base_branch: "master",
            base_commit: Some("b"),
            merged_commit: Some("m"),
            system: "x86_64-linux",
            guest_nix: Some("nix (Nix) 2.26.3"),
            identity: "builder-1",
            trust: "community",
            sponsor: None,
            requested: None,
            skip: &[],
            max_build: 10,
            verified,
            references: &NO_REFS,
            artifacts: vec![],
            attestations: vec![],
            given: None,
            bot_authors: &[],
            pr_now: None,
        }
    }

    #[test]
    fn the_builders_attestations_are_listed_for_checking() {
        let (o, v) = sample();
        let k = crate::store::signing::SecretKey::from_seed("builder-1", &[1; 32]).unwrap();
        let a = crate::attest::tests::statement("builder-1", "leaf", "sha256:0x")
            .sign(&k)
            .unwrap();
        let mut c = ctx(&v);
        c.attestations = vec![a.clone()];
        let r = build(&o, c);
        let back: Report = serde_json::from_slice(&serde_json::to_vec(&r).unwrap()).unwrap();
        back.attestations[0].verify(&k.public()).unwrap();
        let md = markdown(&r);
        assert!(md.contains("### Attestations"), "{md}");
        assert!(
            md.contains("<code>airlockctl compare</code> <code>h</code>"),
            "{md}"
        );
        assert!(md.contains(&lit(&a.statement.out_path)), "{md}");
        // Older reports, without the list, still read.
        let mut old: serde_json::Value = serde_json::to_value(&r).unwrap();
        old.as_object_mut().unwrap().remove("attestations");
        assert!(serde_json::from_value::<Report>(old)
            .unwrap()
            .attestations
            .is_empty());
    }

    #[test]
    fn categories_trust_only_verified_outputs() {
        let (o, v) = sample();
        let r = build(&o, ctx(&v));
        let c = r.categories();
        assert_eq!(c.built, ["app", "leaf"]);
        assert_eq!(c.tests, ["app.passthru.tests.smoke"]);
        // Claimed built, but its output is not in the verified export.
        assert_eq!(c.failed, ["app.passthru.tests.lying"]);
        assert_eq!(c.broken, ["bad"]);
        assert_eq!(r.skipped_tests[0].reason, "needs KVM");
        assert_eq!(
            r.evidence.by_package["leaf"],
            ["app.passthru.tests.smoke"],
            "only passing, verified tests are evidence"
        );
        assert_eq!(r.evidence.by_test.len(), 1);
    }

    #[test]
    fn markdown_names_the_mass_rebuild_and_the_sponsor() {
        let (o, v) = sample();
        let mut c = ctx(&v);
        c.max_build = 1;
        c.sponsor = Some(Sponsor {
            name: "ACME".into(),
            url: "https://acme.example".into(),
            line: "These build results were contributed by: ACME \u{2013} https://acme.example"
                .into(),
        });
        let md = markdown(&build(&o, c));
        assert!(md.contains("**Mass rebuild: 2 attrs changed"), "{md}");
        assert!(md.contains("<summary>:white_check_mark: 2 packages built:</summary>"));
        assert!(
            md.contains(&format!(
                "| {} | {} (build) |",
                lit("leaf"),
                lit("app.passthru.tests.smoke")
            )),
            "{md}"
        );
        assert!(md.ends_with("contributed by: ACME \u{2013} https://acme.example\n"));
    }

    /// The shape of rendered Markdown: every element and HTML tag, with
    /// text left out (CommonMark + GFM tables, as GitHub renders).
    fn shape(md: &str) -> Vec<String> {
        use pulldown_cmark::{Event, Options, Parser};
        let mut out = Vec::new();
        for e in Parser::new_ext(md, Options::ENABLE_TABLES) {
            match e {
                Event::Start(t) => out.push(format!("start {t:?}")),
                Event::End(t) => out.push(format!("end {t:?}")),
                Event::Html(h) | Event::InlineHtml(h) => {
                    // Only the tags: `<name` … and `</name`, and comments.
                    let h = h.to_string();
                    let mut rest = h.as_str();
                    while let Some(i) = rest.find('<') {
                        let tag: String = rest[i..]
                            .chars()
                            .take_while(|c| !c.is_whitespace() && *c != '>')
                            .collect();
                        out.push(format!("html {tag}"));
                        rest = &rest[i + 1..];
                    }
                }
                Event::Code(_) => out.push("code span".into()),
                Event::SoftBreak | Event::HardBreak => out.push("break".into()),
                Event::Rule => out.push("rule".into()),
                Event::Text(_) | Event::FootnoteReference(_) | Event::TaskListMarker(_) => {}
                other => out.push(format!("{other:?}")),
            }
        }
        // Headings' ids and tables' alignments are part of the tags.
        out
    }

    /// Issue 27, item 5: PR-chosen names reach report.md, a PR comment.
    /// Rendered with a CommonMark + GFM-tables renderer, the report with
    /// hostile names has exactly the elements of the report with plain
    /// ones: no Markdown or HTML construct of theirs survives.
    #[test]
    fn hostile_names_add_no_element_to_the_comment() {
        // Names (attrs, tests) must be printable or they are dropped at the
        // boundary; reasons, the guest's Nix version and file names are cut
        // and shown.
        let hostile = [
            "tart|<img src=//evil/x>",
            "@NixOS/security please merge",
            "<!-- hide the rest",
            "![pixel](https://evil.example/t.png)",
            "`code` *emph* __strong__ ~~gone~~ www.evil.example http://evil.example",
            "x\n\n## Approved by the security team\n\n[log in](https://evil.example)",
            "</code></li></ul></details><script>alert(1)</script>",
            "a\r\u{2028}b\u{0}c &amp; &#124; \\| :smile:",
        ];
        let render = |names: &[String]| {
            let (mut o, v) = sample();
            let (app, leaf) = (names[0].clone(), names[1].clone());
            let rename = |s: &str| match s {
                "app" => app.clone(),
                "leaf" => leaf.clone(),
                s => s.to_owned(),
            };
            for a in &mut o.attrs {
                a.attr = rename(&a.attr);
            }
            o.base = o.base.iter().map(|(a, e)| (rename(a), e.clone())).collect();
            o.merged = o
                .merged
                .iter()
                .map(|(a, e)| (rename(a), e.clone()))
                .collect();
            o.rebuild.changed = o.rebuild.changed.iter().map(|a| rename(a)).collect();
            o.rebuild.build = o.rebuild.build.iter().map(|a| rename(a)).collect();
            for (i, t) in o.tests.iter_mut().enumerate() {
                t.attr = names[2 + i].clone();
                t.of = rename(&t.of);
                t.build_closure = t.build_closure.iter().map(|a| rename(a)).collect();
                t.runtime_closure = t.runtime_closure.iter().map(|a| rename(a)).collect();
                if let Outcome::Skipped(_) = t.outcome {
                    t.outcome = Outcome::Skipped(names[5].clone());
                }
            }
            let mut c = ctx(&v);
            c.guest_nix = Some(&names[6]);
            c.artifacts = vec![Artifact {
                test: names[2].clone(),
                store_path: "/nix/store/t-smoke".into(),
                url: format!("/jobs/j1/artifacts/t-smoke/{}", names[7]),
                file: names[7].clone(),
                size: 1,
                kind: "image".into(),
                nar: String::new(),
                offset: 0,
            }];
            markdown(&build(&o, c))
        };
        let plain: Vec<String> = (0..8).map(|i| format!("name{i}")).collect();
        let evil: Vec<String> = hostile.iter().map(|s| s.to_string()).collect();
        let (md_plain, md_evil) = (render(&plain), render(&evil));
        assert_eq!(shape(&md_evil), shape(&md_plain), "{md_evil}");
        // And the text is still there to read, once each where it was.
        let mut html = String::new();
        pulldown_cmark::html::push_html(
            &mut html,
            pulldown_cmark::Parser::new_ext(&md_evil, pulldown_cmark::Options::ENABLE_TABLES),
        );
        assert!(html.contains("@NixOS/security please merge"), "{html}");
        assert!(
            md_evil.contains("<table>") || md_evil.contains("|---|---|"),
            "{md_evil}"
        );
        assert!(!html.contains("<img") && !html.contains("<script") && !html.contains("<!--"));
        // The summary lines for the broker: one line each, no backtick.
        let (mut o, v) = sample();
        o.tests[0].attr = hostile[0].into();
        for l in summary_lines(&build(&o, ctx(&v))) {
            assert!(!l.contains('\n') && !l.contains('`'), "{l:?}");
        }
    }

    /// Issue 27, item 4: what the host can check, it checks.
    #[test]
    fn the_host_checks_what_the_guest_claims() {
        let (mut o, v) = sample();
        // A "test" whose output is a built package's own output.
        o.tests[2].outputs = BTreeMap::from([("out".into(), "/nix/store/b-app".into())]);
        // The guest claims evidence for attrs that were not built, and a
        // runtime closure the references do not show.
        o.tests[0].build_closure = vec!["app".into(), "bad".into(), "unrelated".into()];
        o.tests[0].runtime_closure = vec!["app".into(), "leaf".into()];
        // And a rebuild list its own evaluations contradict.
        o.rebuild.changed = vec!["app".into()];
        let refs = BTreeMap::from([
            (
                "/nix/store/t-smoke".to_owned(),
                vec!["/nix/store/b-app".to_owned()],
            ),
            ("/nix/store/b-app".to_owned(), vec![]),
        ]);
        let mut c = ctx(&v);
        c.references = &refs;
        let r = build(&o, c);
        let cats = r.categories();
        assert!(
            cats.failed.contains(&"app.passthru.tests.lying".to_owned()),
            "{cats:?}"
        );
        assert!(!cats.tests.contains(&"app.passthru.tests.lying".to_owned()));
        assert_eq!(r.rebuild.changed, ["app", "leaf"], "the host's diff");
        assert!(r.rebuild.note.is_some());
        let e = &r.evidence.by_test["app.passthru.tests.smoke"];
        assert_eq!(e.runtime, ["app"], "from the verified references only");
        assert_eq!(e.build, ["app"], "only changed attrs that were built");
        assert_eq!(
            r.evidence.by_package.keys().collect::<Vec<_>>(),
            ["app"],
            "{:?}",
            r.evidence
        );
        assert_eq!(r.evidence.sources["runtime"], RUNTIME_SOURCE);
        assert_eq!(r.evidence.sources["build"], BUILD_SOURCE);
        let md = markdown(&r);
        assert!(md.contains("as the VM reported it (not verified)"), "{md}");
    }

    /// Issue 27, items 1 and 3: a test's name was copied once per closure
    /// entry (a 152 KiB outcome became 1 GiB), and report.md scanned the
    /// closures per package (40k x 2 entries: 14 s, x4 per doubling).
    #[test]
    fn a_huge_outcome_gives_a_bounded_report() {
        let (mut o, v) = sample();
        let long = "t".repeat(MAX_NAME_CHARS);
        for t in &mut o.tests {
            t.attr = format!("{}{}", t.attr, &long[..MAX_NAME_CHARS - t.attr.len()]);
            t.build_closure = (0..40_000).map(|i| format!("pkg{i}")).collect();
            t.build_closure.push("leaf".into());
            t.runtime_closure = t.build_closure.clone();
        }
        o.tests[0].attr.push('x'); // over the limit: dropped
        let outcome_bytes = serde_json::to_vec(&o).unwrap().len();
        let t0 = std::time::Instant::now();
        let r = build(&o, ctx(&v));
        let md = markdown(&r);
        let json = serde_json::to_vec(&r).unwrap();
        println!(
            "outcome {outcome_bytes} bytes: report.json {} bytes, report.md {} bytes, in {:?}",
            json.len(),
            md.len(),
            t0.elapsed()
        );
        assert!(json.len() < 64 << 10, "{}", json.len());
        assert!(md.len() < 64 << 10, "{}", md.len());
        assert!(
            r.evidence.by_package.len() <= 2,
            "{:?}",
            r.evidence.by_package.keys()
        );
    }

    #[test]
    fn long_names_are_cut() {
        let l = lit(&"a".repeat(5000));
        assert!(l.chars().count() < MAX_NAME_CHARS + 20, "{}", l.len());
        assert!(plain(&"b".repeat(5000)).ends_with('\u{2026}'));
    }

    #[test]
    fn untrusted_names_are_escaped() {
        let (mut o, v) = sample();
        o.attrs[0].attr = "<script>x</script>".into();
        let md = markdown(&build(&o, ctx(&v)));
        assert!(!md.contains("<script>"), "{md}");
    }

    #[test]
    fn section_counts_agree_with_their_verbs() {
        let mut md = String::new();
        let all = LIMS[0];
        section(&mut md, "?", "package does not exist", &["a".into()], all);
        section(
            &mut md,
            "?",
            "package does not exist",
            &["a".into(), "b".into()],
            all,
        );
        section(
            &mut md,
            "x",
            "package failed to build",
            &["a".into(), "b".into()],
            all,
        );
        assert!(md.contains("1 package does not exist:"), "{md}");
        assert!(md.contains("2 packages do not exist:"), "{md}");
        assert!(md.contains("2 packages failed to build:"), "{md}");
        let mut md = String::new();
        let two = ["a".to_owned(), "b".to_owned()];
        section(&mut md, "-", "package fails on the base too", &two, all);
        section(
            &mut md,
            "-",
            "package fails on the base too",
            &two[..1],
            all,
        );
        assert!(md.contains("2 packages fail on the base too:"), "{md}");
        assert!(md.contains("1 package fails on the base too:"), "{md}");
    }

    /// nixpkgs-review 4.0's `report.json` keys and types, as docs/review.md
    /// writes them down (`result.<system>.<category>`: `{name, aliases}`).
    #[test]
    fn report_json_has_nixpkgs_review_4s_shape_key_by_key() {
        let (o, v) = sample();
        let j = serde_json::to_value(build(&o, ctx(&v))).unwrap();
        let is_list_of_str = |x: &serde_json::Value| {
            x.as_array()
                .is_some_and(|a| a.iter().all(serde_json::Value::is_string))
        };
        assert_eq!(j["systems"], serde_json::json!(["x86_64-linux"]));
        assert_eq!(j["pr"], 7);
        assert_eq!(j["commit"], "h");
        assert_eq!(j["checkout"], "merge");
        assert!(j["extra-nixpkgs-config"].is_null());
        for k in [
            "only_packages",
            "additional_packages",
            "package_regex",
            "skip_packages",
            "skip_packages_regex",
        ] {
            assert!(is_list_of_str(&j[k]), "{k}: {}", j[k]);
        }
        let entry = |x: &serde_json::Value| {
            x.as_object().is_some_and(|o| {
                o.len() == 2 && o["name"].is_string() && is_list_of_str(&o["aliases"])
            })
        };
        assert!(j["pkgs"]["x86_64-linux"]
            .as_array()
            .unwrap()
            .iter()
            .all(entry));
        let r = j["result"].as_object().unwrap();
        assert_eq!(r.keys().collect::<Vec<_>>(), ["x86_64-linux"]);
        let c = r["x86_64-linux"].as_object().unwrap();
        assert_eq!(
            c.keys().collect::<Vec<_>>(),
            [
                "blacklisted",
                "broken",
                "built",
                "failed",
                "non-existent",
                "tests"
            ]
        );
        for (k, list) in c {
            assert!(list.as_array().unwrap().iter().all(entry), "{k}: {list}");
        }
        assert_eq!(
            c["built"][0],
            serde_json::json!({"name": "app", "aliases": []})
        );
        // Older readers' plain names are read back too.
        let mut old = j.clone();
        old["result"]["x86_64-linux"]["built"] = serde_json::json!(["app", "leaf"]);
        let back: Report = serde_json::from_value(old).unwrap();
        assert_eq!(back.categories().built, ["app", "leaf"]);
        // airlock's own keys beside them.
        for k in [
            "failures",
            "automerge",
            "evidence",
            "artifacts",
            "nar_hashes",
            "builder",
            "attestations",
            "rebuild",
        ] {
            assert!(j.get(k).is_some(), "{k}");
        }
    }

    fn failed_outcome(n: usize) -> ReviewOutcome {
        let mut o = ReviewOutcome::default();
        for i in 0..n {
            let a = format!("python313Packages.package-number-{i:05}");
            o.merged.insert(a.clone(), drv(&format!("m-{i}")));
            o.base.insert(a.clone(), drv(&format!("b-{i}")));
            o.rebuild.changed.push(a.clone());
            o.rebuild.build.push(a.clone());
            o.attrs.push(ReviewedAttr {
                attr: a.clone(),
                drv_path: format!("/nix/store/m-{i}.drv"),
                outputs: BTreeMap::from([("out".into(), format!("/nix/store/m-{i}"))]),
                outcome: Outcome::Failed,
            });
            o.failure_logs.insert(
                a,
                (0..30)
                    .map(|l| format!("line {l}: error: builder for '/nix/store/m-{i}.drv' failed <b>@mention</b>"))
                    .collect(),
            );
        }
        o
    }

    #[test]
    fn five_thousand_failures_fit_in_a_comment_that_says_what_was_cut() {
        let v = BTreeMap::new();
        let mut c = ctx(&v);
        c.max_build = 10_000;
        let r = build(&failed_outcome(5000), c);
        assert_eq!(r.categories().failed.len(), 5000);
        assert!(r.failure_logs.values().all(|l| l.len() == 20));
        let md = markdown(&r);
        let n = md.chars().count();
        assert!(n <= MAX_COMMENT_CHARS, "{n} characters");
        assert!(
            md.contains("This comment was cut to fit"),
            "{}",
            &md[..2000]
        );
        assert!(md.contains("more (report.json lists them all)"));
        assert!(md.contains("<pre>"), "some logs are still there");
        assert!(
            !md.contains("<b>") && !md.contains("@mention"),
            "log text is inert"
        );
        // A small report is not cut.
        let small = markdown(&build(&failed_outcome(3), ctx(&v)));
        assert!(!small.contains("was cut"));
        assert_eq!(small.matches("<pre>").count(), 3);
    }

    #[test]
    fn a_failure_the_base_has_too_is_not_counted_as_failed() {
        let mut o = failed_outcome(3);
        o.failure_logs.clear();
        let check = |r: super::super::BaseResult| super::super::BaseCheck {
            result: r,
            drv_path: String::new(),
            outputs: BTreeMap::new(),
        };
        let names: Vec<String> = o.attrs.iter().map(|a| a.attr.clone()).collect();
        o.base_checks.insert(
            names[0].clone(),
            check(super::super::BaseResult::FailedOnBase(
                "built here, failed".into(),
            )),
        );
        o.base_checks.insert(
            names[1].clone(),
            check(super::super::BaseResult::BuiltOnBase),
        );
        // A claim about something the guest did not say failed is ignored:
        // it said "built", the host found no verified output.
        o.attrs[2].outcome = Outcome::Built;
        o.base_checks.insert(
            names[2].clone(),
            check(super::super::BaseResult::FailedOnBase("forged".into())),
        );
        let v = BTreeMap::new();
        let r = build(&o, ctx(&v));
        assert_eq!(r.categories().failed, [names[1].clone(), names[2].clone()]);
        assert_eq!(r.failures.on_base.len(), 1);
        assert_eq!(r.failures.on_base[0].name, names[0]);
        let md = markdown(&r);
        assert!(md.contains("2 packages failed to build"), "{md}");
        assert!(md.contains("1 package fails on the base too"), "{md}");
        let lines = summary_lines(&r);
        assert!(
            lines[0].contains("2 failed") && lines[0].contains("1 fail on the base too"),
            "{lines:?}"
        );
        // The check run concludes on the new failures only.
        let who = crate::checks::Who {
            builder: "b",
            trust: "community",
            sponsor: None,
            page: None,
            job_id: "j",
        };
        let done = |r: &Report| {
            crate::checks::completed("t", &BuildStatus::Failure, Some(r), &who)["conclusion"]
                .clone()
        };
        assert_eq!(done(&r), "failure");
        let mut only_old = o.clone();
        only_old.attrs.truncate(1);
        only_old.rebuild.changed.truncate(1);
        only_old.rebuild.build.truncate(1);
        only_old.base.retain(|a, _| *a == names[0]);
        only_old.merged.retain(|a, _| *a == names[0]);
        let r = build(&only_old, ctx(&v));
        assert!(r.categories().failed.is_empty());
        // Not a failure (and, as nothing else was built, neutral).
        assert_eq!(done(&r), "neutral");
    }

    #[test]
    fn a_log_tail_cannot_write_markdown() {
        let mut o = failed_outcome(1);
        let a = o.attrs[0].attr.clone();
        o.failure_logs.insert(
            a,
            vec![
                "error: oops".into(),
                String::new(),
                "   ".into(),
                "![x](https://evil.example/p.png)".into(),
                "# **Merge verdict: eligible.**".into(),
                "[approve](https://evil.example) @someone </pre> <img src=x>".into(),
                "```".into(),
            ],
        );
        let v = BTreeMap::new();
        let md = markdown(&build(&o, ctx(&v)));
        use pulldown_cmark::{Event, Parser, Tag};
        // Everything of the log stays inside the HTML block: no image, no
        // link, no text of its own.
        for e in Parser::new(&md) {
            match e {
                Event::Start(Tag::Image { .. } | Tag::Link { .. }) => panic!("{e:?} in {md}"),
                Event::Text(t) if t.contains("Merge verdict") || t.contains("evil") => {
                    panic!("{t:?} is Markdown text: {md}")
                }
                _ => {}
            }
        }
        assert!(
            md.contains("&lt;/pre&gt;") && !md.contains("@someone"),
            "{md}"
        );
    }

    /// With a given rebuild list the host's rebuild set is that list (of
    /// the attrs the merged tree has), not the VM's; an attr that was to
    /// be built and that the VM says nothing about is failed.
    #[test]
    fn a_given_list_is_the_rebuild_set_and_a_silent_vm_fails() {
        let (mut o, v) = sample();
        o.base.clear();
        // The VM "forgets" app: not in its rebuild list, nothing reported.
        o.rebuild.changed = vec!["leaf".into()];
        o.rebuild.build = vec!["leaf".into()];
        o.attrs.retain(|a| a.attr == "leaf");
        let given = vec!["app".to_owned(), "leaf".to_owned(), "bad".to_owned()];
        let mut c = ctx(&v);
        c.given = Some(&given);
        let r = build(&o, c);
        assert_eq!(r.rebuild.changed, ["app", "leaf"]);
        assert!(r.rebuild.note.is_some());
        assert!(
            r.categories().failed.contains(&"app".to_owned()),
            "{:?}",
            r.categories()
        );
        // "bad" is in the list and does not evaluate: broken, not dropped.
        assert_eq!(r.categories().broken, ["bad"]);
        assert!(r
            .automerge
            .reasons
            .iter()
            .any(|x| x.contains("base was not evaluated")));
    }
}
