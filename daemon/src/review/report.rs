//! A review's report: `report.json` (nixpkgs-review's categories, plus the
//! rebuild set, the evidence map, artifacts, NAR hashes, the guest's Nix
//! and the builder's identity) and `report.md` (a PR comment in
//! nixpkgs-review's shape). Pure: the caller reads the quarantine.
//!
//! What the guest claims is checked where the host can: an attr or a test
//! counts as built only when every output is among the paths the host
//! verified and quarantined.

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
    /// Changed attrs the builder never builds.
    pub skip: &'a [String],
    pub max_build: usize,
    /// Verified paths: store path → (NAR hash, NAR size).
    pub verified: &'a BTreeMap<String, (String, u64)>,
    pub artifacts: Vec<Artifact>,
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
}

/// nixpkgs-review's per-system categories.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Categories {
    pub blacklisted: Vec<String>,
    pub broken: Vec<String>,
    pub built: Vec<String>,
    pub failed: Vec<String>,
    #[serde(rename = "non-existent")]
    pub non_existent: Vec<String>,
    pub tests: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evidence {
    /// Per passing test: the changed attrs in its build and runtime closures.
    pub by_test: BTreeMap<String, TestEvidence>,
    /// Per changed attr: the passing tests whose closure holds it.
    pub by_package: BTreeMap<String, Vec<String>>,
}

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
    pub changed: Vec<String>,
    pub removed: Vec<String>,
    pub mass_rebuild: bool,
    pub max_build: usize,
    /// The attrs that were to be built (all changed ones, or the sample).
    pub build: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub pr: u64,
    pub system: String,
    /// nixpkgs-review's shape: `result.<system>.{built,failed,…}`.
    pub result: BTreeMap<String, Categories>,
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
}

impl Report {
    pub fn categories(&self) -> &Categories {
        self.result
            .get(&self.system)
            .expect("a report has its own system")
    }
}

pub fn build(o: &ReviewOutcome, ctx: Context<'_>) -> Report {
    let verified = |outs: &BTreeMap<String, String>| {
        !outs.is_empty() && outs.values().all(|p| ctx.verified.contains_key(p))
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
    for t in &o.tests {
        match &t.outcome {
            Outcome::Built if verified(&t.outputs) => {
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
    // Broken: attrs that do not evaluate in the merged tree, unless they
    // did not in the base either (the PR did not break them).
    for (attr, e) in &o.merged {
        if e.error.as_deref() == Some("broken")
            && o.base.get(attr).and_then(|b| b.error.as_deref()) != Some("broken")
            && (!o.base.is_empty() || ctx.requested.is_some())
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
    let mut evidence = Evidence::default();
    for t in o.tests.iter().filter(|t| passed.contains(&t.attr)) {
        evidence.by_test.insert(
            t.attr.clone(),
            TestEvidence {
                build: t.build_closure.clone(),
                runtime: t.runtime_closure.clone(),
            },
        );
        let all: BTreeSet<&String> = t.build_closure.iter().chain(&t.runtime_closure).collect();
        for a in all {
            evidence
                .by_package
                .entry(a.clone())
                .or_default()
                .push(t.attr.clone());
        }
    }
    let RebuildSet {
        changed,
        removed,
        mass_rebuild,
        build,
    } = o.rebuild.clone();
    Report {
        pr: ctx.pr,
        system: ctx.system.to_owned(),
        result: BTreeMap::from([(ctx.system.to_owned(), c)]),
        rebuild: RebuildInfo {
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
        nar_hashes: ctx
            .verified
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
            .collect(),
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
    }
}

/// HTML-escape text for the `<li>`/`<summary>` parts of the comment (attr
/// names come from the PR: untrusted).
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Text for a Markdown code span (a backtick would end it).
fn code(s: &str) -> String {
    format!("`{}`", s.replace('`', "'"))
}

/// `what` is "noun rest": "package built" → "2 packages built".
fn section(md: &mut String, icon: &str, what: &str, items: &[String]) {
    if items.is_empty() {
        return;
    }
    let n = items.len();
    let (noun, rest) = what.split_once(' ').unwrap_or((what, ""));
    // "1 package does not exist", "2 packages do not exist".
    let rest = match rest.strip_prefix("does ") {
        Some(r) if n != 1 => format!("do {r}"),
        _ => rest.to_owned(),
    };
    md.push_str(&format!(
        "<details>\n  <summary>{icon} {n} {noun}{} {rest}:</summary>\n  <ul>\n",
        if n == 1 { "" } else { "s" }
    ));
    for i in items {
        md.push_str(&format!("    <li>{}</li>\n", esc(i)));
    }
    md.push_str("  </ul>\n</details>\n");
}

/// `report.md`: fit for a PR comment (nixpkgs-review's collapsible sections).
pub fn markdown(r: &Report) -> String {
    let c = r.categories();
    let mut md = String::new();
    md.push_str(&format!(
        "## airlock review of {} PR #{}\n\n",
        code(&r.job.repo),
        r.pr
    ));
    md.push_str(&format!(
        "Commit {} merged onto {}{}, built in a VM on {} ({} builder{}).\n\n",
        code(&r.job.head),
        code(&r.job.base_branch),
        r.job
            .base_commit
            .as_deref()
            .map(|b| format!(" ({})", code(b)))
            .unwrap_or_default(),
        code(&r.builder.identity),
        r.builder.trust,
        r.guest_nix
            .as_deref()
            .map(|n| format!(", guest {}", code(n)))
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
    md.push_str("---\n\n");
    md.push_str(&format!("### {}\n\n", code(&r.system)));
    section(
        &mut md,
        ":fast_forward:",
        "package blacklisted",
        &c.blacklisted,
    );
    section(
        &mut md,
        ":x:",
        "package marked as broken and skipped",
        &c.broken,
    );
    section(&mut md, ":x:", "package failed to build", &c.failed);
    section(&mut md, ":white_check_mark:", "test built", &c.tests);
    section(&mut md, ":white_check_mark:", "package built", &c.built);
    section(
        &mut md,
        ":grey_question:",
        "package does not exist",
        &c.non_existent,
    );
    let skipped = |v: &[SkippedTest]| -> Vec<String> {
        v.iter()
            .map(|s| format!("{} ({})", s.attr, s.reason))
            .collect()
    };
    section(
        &mut md,
        ":fast_forward:",
        "package not built",
        &skipped(&r.skipped_attrs),
    );
    section(
        &mut md,
        ":fast_forward:",
        "test skipped",
        &skipped(&r.skipped_tests),
    );
    md.push('\n');
    if !r.evidence.by_package.is_empty() {
        md.push_str("### What the passing tests vouch for\n\n");
        md.push_str("| changed package | passing tests whose closure holds it |\n|---|---|\n");
        for (pkg, tests) in &r.evidence.by_package {
            let ts: Vec<String> = tests
                .iter()
                .map(|t| {
                    let e = &r.evidence.by_test[t];
                    let how = match (e.build.contains(pkg), e.runtime.contains(pkg)) {
                        (true, true) => "build, runtime",
                        (false, true) => "runtime",
                        _ => "build",
                    };
                    format!("{} ({how})", code(t))
                })
                .collect();
            md.push_str(&format!("| {} | {} |\n", code(pkg), ts.join(", ")));
        }
        md.push('\n');
    }
    if !r.artifacts.is_empty() {
        md.push_str("### Test artifacts\n\n");
        for a in &r.artifacts {
            md.push_str(&format!(
                "- {} {}: {} ({} bytes)\n",
                code(&a.test),
                a.kind,
                code(&a.url),
                a.size
            ));
        }
        md.push('\n');
    }
    if let Some(s) = &r.builder.sponsor {
        md.push_str("---\n\n");
        md.push_str(&esc(&s.line));
        md.push('\n');
    }
    md
}

/// The few lines a review puts into its result (the broker's BuildResult
/// `output`): the summary a reader of ofborg's results sees.
pub fn summary_lines(r: &Report) -> Vec<String> {
    let c = r.categories();
    let mut v = vec![format!(
        "airlock review: {} changed{}, {} built, {} failed, {} broken, {} tests passed, {} tests skipped",
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
        r.skipped_tests.len()
    )];
    for (pkg, tests) in &r.evidence.by_package {
        v.push(format!(
            "airlock review: {pkg} is exercised by {}",
            tests.join(", ")
        ));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::super::{AttrEval, ReviewedAttr, ReviewedTest};
    use super::*;

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
            artifacts: vec![],
        }
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
        let (mut o, v) = sample();
        o.rebuild.mass_rebuild = true;
        let mut c = ctx(&v);
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
            md.contains("| `leaf` | `app.passthru.tests.smoke` (build) |"),
            "{md}"
        );
        assert!(md.ends_with("contributed by: ACME \u{2013} https://acme.example\n"));
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
        section(&mut md, "?", "package does not exist", &["a".into()]);
        section(
            &mut md,
            "?",
            "package does not exist",
            &["a".into(), "b".into()],
        );
        section(
            &mut md,
            "x",
            "package failed to build",
            &["a".into(), "b".into()],
        );
        assert!(md.contains("1 package does not exist:"), "{md}");
        assert!(md.contains("2 packages do not exist:"), "{md}");
        assert!(md.contains("2 packages failed to build:"), "{md}");
    }
}
