//! GitHub check runs for reviews (issue 32): one check run per (PR head,
//! builder), named `airlock review (<builder>)`. Queued when the job is
//! queued, in progress (with the builder's name and sponsor) when it
//! starts, completed with the review's summary, the evidence table and a
//! link to the page when it is done. Only new failures make it fail: a
//! failure the base has too, or a package this builder cannot build, does
//! not.
//!
//! The request bodies are built by pure functions ([`queued`],
//! [`in_progress`], [`completed`]); [`Checks`] sends them, one job's in
//! order, from one task. GitHub being down costs the job nothing: each
//! failure is logged with the job's id and the job goes on.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::Method;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tracing::{debug, info, warn, Instrument};

use crate::config::Config;
use crate::job::{JobPaths, JobRecord, JobStore};
use crate::ofborg::BuildStatus;
use crate::release::github::GitHub;
use crate::review::report::{self, Report};
use crate::runner::LogSink;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {0}: {1}")]
    ReadFile(String, std::io::Error),
    #[error(transparent)]
    GitHub(#[from] crate::release::github::Error),
    #[error("GitHub's answer has no check run id: {0}")]
    NoId(String),
}
pub type Result<T> = std::result::Result<T, Error>;

/// GitHub's longest `output.summary` and `output.text`, in characters.
pub const MAX_OUTPUT_CHARS: usize = 65_535;

/// The check run's name: one per builder on a head.
pub fn name(builder: &str) -> String {
    format!("airlock review ({builder})")
}

/// What a check run says about its builder, in every state.
pub struct Who<'a> {
    pub builder: &'a str,
    pub trust: &'a str,
    pub sponsor: Option<String>,
    /// The job's page (`web.public_url`/jobs/<id>).
    pub page: Option<String>,
    pub job_id: &'a str,
}

impl Who<'_> {
    fn line(&self) -> String {
        let mut s = format!(
            "Builder `{}` ({} builder), job `{}`.",
            self.builder, self.trust, self.job_id
        );
        if let Some(sp) = &self.sponsor {
            s.push(' ');
            s.push_str(&report::plain(sp));
        }
        s
    }

    fn link(&self, body: &mut Value) {
        if let Some(p) = &self.page {
            body["details_url"] = json!(p);
        }
    }
}

/// `POST /repos/{owner}/{repo}/check-runs` (or the `PATCH` of an existing
/// run of this builder on this head): queued.
pub fn queued(head_sha: &str, who: &Who<'_>) -> Value {
    let mut b = json!({
        "name": name(who.builder),
        "head_sha": head_sha,
        "status": "queued",
        "external_id": who.job_id,
        "output": {
            "title": format!("Queued on {}", who.builder),
            "summary": who.line(),
        },
    });
    who.link(&mut b);
    b
}

/// `PATCH`: the job's VM is running.
pub fn in_progress(started_at: &str, who: &Who<'_>) -> Value {
    let mut b = json!({
        "status": "in_progress",
        "started_at": started_at,
        "output": {
            "title": format!("Building on {}", who.builder),
            "summary": who.line(),
        },
    });
    who.link(&mut b);
    b
}

/// `PATCH`: done. With a report: `failure` only for new failures (or
/// attrs the PR made fail to evaluate), `neutral` for an evaluation-only
/// review, `success` otherwise; the summary is the review's, the text its
/// report.md (cut to GitHub's limit). Without one: the job's error.
pub fn completed(
    completed_at: &str,
    status: &BuildStatus,
    report: Option<&Report>,
    who: &Who<'_>,
) -> Value {
    let (conclusion, title, summary, text) = match report {
        Some(r) => {
            let c = r.categories();
            // Tests that do not evaluate are listed as broken, but whether
            // the base's do cannot be told: they do not fail the run.
            let broken_tests: std::collections::BTreeSet<&str> =
                r.skipped_tests.iter().map(|t| t.attr.as_str()).collect();
            let broken_attrs = c
                .broken
                .iter()
                .filter(|b| !broken_tests.contains(b.as_str()))
                .count();
            let conclusion = if !c.failed.is_empty() || broken_attrs > 0 {
                "failure"
            } else if *status == BuildStatus::Skipped || (c.built.is_empty() && c.tests.is_empty())
            {
                // Evaluation only, or nothing this builder could build.
                "neutral"
            } else {
                "success"
            };
            let mut title = format!(
                "{} changed, {} built, {} new failures",
                r.rebuild.changed.len(),
                c.built.len(),
                c.failed.len()
            );
            if !r.failures.on_base.is_empty() {
                title.push_str(&format!(
                    ", {} fail on the base too",
                    r.failures.on_base.len()
                ));
            }
            if r.automerge.eligible {
                title.push_str("; eligible for merging");
            }
            let mut summary = summary(r);
            summary.push('\n');
            summary.push_str(&who.line());
            if let Some(p) = &who.page {
                summary.push_str(&format!("\n\nThe report: {p}"));
            }
            let text = report::markdown_within(r, MAX_OUTPUT_CHARS);
            (conclusion, title, summary, Some(text))
        }
        None => {
            let (conclusion, why) = match status {
                BuildStatus::UnexpectedError { err } if err.contains("cancelled") => {
                    ("cancelled", err.clone())
                }
                BuildStatus::UnexpectedError { err } => ("failure", err.clone()),
                BuildStatus::TimedOut => ("timed_out", "the job timed out".to_owned()),
                s => (
                    "neutral",
                    format!("no review report ({})", crate::ofborg::status_word(s)),
                ),
            };
            let lines: Vec<String> = why.lines().map(str::to_owned).collect();
            let summary = format!("<pre>{}</pre>\n\n{}", report::pre_text(&lines), who.line());
            (
                conclusion,
                "The review did not finish".to_owned(),
                summary,
                None,
            )
        }
    };
    let mut output = json!({
        "title": cut(&title, 1000),
        "summary": cut(&summary, MAX_OUTPUT_CHARS),
    });
    if let Some(t) = text {
        output["text"] = json!(cut(&t, MAX_OUTPUT_CHARS));
    }
    let mut b = json!({
        "status": "completed",
        "conclusion": conclusion,
        "completed_at": completed_at,
        "output": output,
    });
    who.link(&mut b);
    b
}

/// Most evidence lines a summary lists.
const SUMMARY_PACKAGES: usize = 50;

/// A check run's summary (Markdown): the counts, what the tests vouch for
/// and the merge verdict. Every name from the PR or the guest is
/// [`report::lit`]: inert.
fn summary(r: &Report) -> String {
    let c = r.categories();
    let mut s = format!(
        "{} changed{}, {} built, **{} failed** (new), {} fail on the base too, {} unsupported here, {} broken, {} tests passed, {} tests skipped.\n\n",
        r.rebuild.changed.len(),
        if r.rebuild.mass_rebuild {
            format!(" (a mass rebuild: a sample of {} built)", r.rebuild.build.len())
        } else {
            String::new()
        },
        c.built.len(),
        c.failed.len(),
        r.failures.on_base.len(),
        r.failures.unsupported.len(),
        c.broken.len(),
        c.tests.len(),
        r.skipped_tests.len()
    );
    for (pkg, tests) in r.evidence.by_package.iter().take(SUMMARY_PACKAGES) {
        let tests: Vec<String> = tests.iter().map(|t| report::lit(t)).collect();
        s.push_str(&format!(
            "- {} is exercised by {}\n",
            report::lit(pkg),
            tests.join(", ")
        ));
    }
    if r.evidence.by_package.len() > SUMMARY_PACKAGES {
        s.push_str(&format!(
            "- … and {} more packages\n",
            r.evidence.by_package.len() - SUMMARY_PACKAGES
        ));
    }
    let a = &r.automerge;
    if a.bot || a.eligible {
        s.push_str(&format!("\n**Merge verdict: {}**\n", a.word()));
        for why in &a.reasons {
            s.push_str(&format!("- {}\n", report::lit(why)));
        }
    }
    s
}

fn cut(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max - 1).collect();
    out.push('…');
    out
}

/// GitHub's time format: `YYYY-MM-DDTHH:MM:SSZ`.
pub fn iso_now() -> String {
    crate::release::rule::fmt_time(crate::job::now() as i64)
}

/// A GitHub client with credentials, if `[github]` has them: an App
/// (`app_id`, `app_key_file`, `installation_id`) or a token.
pub fn client(cfg: &Config) -> Result<Option<GitHub>> {
    let g = &cfg.github;
    if let (Some(app), Some(key), Some(inst)) = (g.app_id, &g.app_key_file, g.installation_id) {
        let pem = std::fs::read(key).map_err(|e| Error::ReadFile(key.display().to_string(), e))?;
        return Ok(Some(GitHub::new_app(&g.api_url, app, &pem, inst)?));
    }
    match &g.token_file {
        Some(f) => {
            let t = std::fs::read_to_string(f)
                .map_err(|e| Error::ReadFile(f.display().to_string(), e))?;
            Ok(Some(GitHub::new(&g.api_url, Some(t.trim().to_owned()))?))
        }
        None => Ok(None),
    }
}

enum Event {
    Queued(JobRecord),
    Started(JobRecord),
    Finished(JobRecord),
}

/// Posts the check runs of review jobs (a [`LogSink`]).
pub struct Checks {
    tx: mpsc::UnboundedSender<Event>,
}

struct Poster {
    gh: Arc<GitHub>,
    cfg: Arc<Config>,
    store: JobStore,
    /// Job id → check run id.
    ids: Mutex<HashMap<String, u64>>,
}

impl Checks {
    /// Start the poster (needs a tokio runtime).
    pub fn start(gh: Arc<GitHub>, cfg: Arc<Config>) -> Arc<Checks> {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let p = Poster {
            store: JobStore::new(cfg.jobs_dir()),
            gh,
            cfg,
            ids: Mutex::new(HashMap::new()),
        };
        tokio::spawn(async move {
            while let Some(ev) = rx.recv().await {
                let rec = match &ev {
                    Event::Queued(r) | Event::Started(r) | Event::Finished(r) => r,
                };
                let span = rec.span();
                if let Err(e) = p.handle(&ev).instrument(span.clone()).await {
                    span.in_scope(
                        || warn!(error = %crate::error::chain(&e), "check run not updated"),
                    );
                }
            }
        });
        Arc::new(Checks { tx })
    }

    fn send(&self, rec: &JobRecord, ev: impl FnOnce(JobRecord) -> Event) {
        if rec.job.airlock_review.is_some() && on_github(rec) {
            let _ = self.tx.send(ev(rec.clone()));
        }
    }
}

/// A job of a PR on GitHub (see [`crate::release::github::is_pr`]).
pub fn on_github(rec: &JobRecord) -> bool {
    crate::release::github::is_pr(
        &rec.job.repo.full_name,
        rec.job.pr.number,
        &rec.job.pr.head_sha,
    )
}

impl LogSink for Checks {
    fn queued(&self, rec: &JobRecord) {
        self.send(rec, Event::Queued);
    }
    fn started(&self, rec: &JobRecord, _attempted: &[String], _skipped: &[String]) {
        self.send(rec, Event::Started);
    }
    fn finished(&self, rec: &JobRecord) {
        self.send(rec, Event::Finished);
    }
}

impl Poster {
    fn who<'a>(&'a self, rec: &'a JobRecord) -> Who<'a> {
        Who {
            builder: &self.cfg.identity.name,
            trust: self.cfg.trust.as_str(),
            sponsor: self.cfg.sponsor.line(),
            page: self
                .cfg
                .web
                .public_url
                .as_deref()
                .map(|u| format!("{}/jobs/{}", u.trim_end_matches('/'), rec.id)),
            job_id: &rec.id,
        }
    }

    async fn handle(&self, ev: &Event) -> Result<()> {
        match ev {
            Event::Queued(rec) => {
                let id = self.create(rec).await?;
                info!(check_run = id, "check run queued");
            }
            Event::Started(rec) => {
                let body = in_progress(&iso_now(), &self.who(rec));
                self.update(rec, &body).await?;
            }
            Event::Finished(rec) => {
                let paths = self.store.paths(&rec.id);
                let report = read_report(&paths);
                let status = rec.result.as_ref().map(|r| r.status.clone()).unwrap_or(
                    BuildStatus::UnexpectedError {
                        err: "no result".into(),
                    },
                );
                let body = completed(&iso_now(), &status, report.as_ref(), &self.who(rec));
                let id = self.update(rec, &body).await?;
                info!(check_run = id, conclusion = %body["conclusion"], "check run completed");
            }
        }
        Ok(())
    }

    /// The run of this builder on this head: the one GitHub has (a review
    /// of the same head again, or after a restart), else a new one.
    async fn create(&self, rec: &JobRecord) -> Result<u64> {
        let repo = &rec.job.repo.full_name;
        let head = &rec.job.pr.head_sha;
        let body = queued(head, &self.who(rec));
        let list = self
            .gh
            .get_json(&format!(
                "/repos/{repo}/commits/{head}/check-runs?check_name={}&filter=latest",
                query_escape(&name(&self.cfg.identity.name))
            ))
            .await?;
        // A run not yet completed (airlockd restarted, or the same head
        // queued again) is taken over; a completed one stays as it was
        // (GitHub does not reopen it): a new run supersedes it.
        let existing = list["check_runs"]
            .as_array()
            .and_then(|v| {
                v.iter()
                    .find(|r| r["name"] == body["name"] && r["status"] != "completed")
            })
            .and_then(|r| r["id"].as_u64());
        let answer = match existing {
            Some(id) => {
                self.gh
                    .write(
                        Method::PATCH,
                        &format!("/repos/{repo}/check-runs/{id}"),
                        &body,
                    )
                    .await?
            }
            None => {
                self.gh
                    .write(Method::POST, &format!("/repos/{repo}/check-runs"), &body)
                    .await?
            }
        };
        let id = answer["id"]
            .as_u64()
            .ok_or_else(|| Error::NoId(answer.to_string().chars().take(200).collect()))?;
        self.remember(rec, id);
        Ok(id)
    }

    fn remember(&self, rec: &JobRecord, id: u64) {
        self.ids.lock().expect("lock").insert(rec.id.clone(), id);
        let f = self.store.paths(&rec.id).dir.join("check-run.json");
        if let Err(e) = crate::fsutil::write_atomic(&f, json!({ "id": id }).to_string().as_bytes())
        {
            debug!(error = %e, "cannot record the check run's id");
        }
    }

    /// The job's check run, created first if it has none yet (airlockd
    /// restarted, or queued before GitHub answered).
    async fn id_of(&self, rec: &JobRecord) -> Result<u64> {
        if let Some(id) = self.ids.lock().expect("lock").get(&rec.id) {
            return Ok(*id);
        }
        let f = self.store.paths(&rec.id).dir.join("check-run.json");
        if let Some(id) = std::fs::read(&f)
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .and_then(|v| v["id"].as_u64())
        {
            return Ok(id);
        }
        self.create(rec).await
    }

    async fn update(&self, rec: &JobRecord, body: &Value) -> Result<u64> {
        let id = self.id_of(rec).await?;
        let path = format!("/repos/{}/check-runs/{id}", rec.job.repo.full_name);
        let mut wait = Duration::from_secs(1);
        for attempt in 1.. {
            match self.gh.write(Method::PATCH, &path, body).await {
                Ok(_) => break,
                Err(e) if attempt < 6 => {
                    debug!(error = %e, attempt, "check run update failed; trying again");
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(id)
    }
}

fn read_report(paths: &JobPaths) -> Option<Report> {
    serde_json::from_slice(&std::fs::read(paths.report_json()).ok()?).ok()
}

fn query_escape(s: &str) -> String {
    crate::review::url_path(s).replace('/', "%2F")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who() -> Who<'static> {
        Who {
            builder: "b1",
            trust: "untrusted",
            sponsor: Some("These build results were contributed by: Example Compute".into()),
            page: Some("https://airlock.example/jobs/j1".into()),
            job_id: "j1",
        }
    }

    #[test]
    fn queued_and_in_progress_carry_the_documented_fields() {
        let q = queued(&"a".repeat(40), &who());
        for k in ["name", "head_sha", "status", "external_id", "details_url"] {
            assert!(q.get(k).is_some(), "{k}");
        }
        assert_eq!(q["name"], "airlock review (b1)");
        assert_eq!(q["status"], "queued");
        let p = in_progress("2026-12-07T03:00:00Z", &who());
        assert_eq!(p["status"], "in_progress");
        let s = p["output"]["summary"].as_str().unwrap();
        assert!(s.contains("b1") && s.contains("Example Compute"), "{s}");
    }

    #[test]
    fn without_a_report_the_error_is_the_summary() {
        let c = completed(
            "2026-12-07T03:00:00Z",
            &BuildStatus::UnexpectedError {
                err: "the review evaluation of /run/src failed: out of memory".into(),
            },
            None,
            &who(),
        );
        assert_eq!(c["conclusion"], "failure");
        assert!(c["output"]["summary"]
            .as_str()
            .unwrap()
            .contains("out of memory"));
    }

    #[test]
    fn names_are_escaped_for_the_query() {
        assert_eq!(
            query_escape("airlock review (b/1)"),
            "airlock%20review%20%28b%2F1%29"
        );
    }
}
