//! The read-only HTML view (`web.listen`, off by default): every job with
//! its status, its log (followed while the job runs), a review's report,
//! and the screenshots its passing tests took, inline.
//!
//! Read-only by construction: it reads job records, reports and the
//! quarantine from disk and has no route that changes anything. An
//! artifact is served as the bytes of one image or log file (checked by
//! its magic bytes, `nosniff`, a CSP that forbids everything else), never
//! as a narinfo or a NAR, so nothing here makes a quarantined path
//! substitutable. Everything a guest or a PR wrote is HTML-escaped. The
//! log follower is twenty lines of plain JavaScript: a long poll of
//! `/jobs/<id>/log?from=N`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::job::{JobPaths, JobRecord, JobState, JobStore};
use crate::review::report::Report;

/// Largest piece of log one request returns.
const LOG_CHUNK: u64 = 256 << 10;
/// How long a log request waits for new lines before it answers empty.
const LOG_WAIT: Duration = Duration::from_secs(10);

const PAGE_CSP: &str = "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

pub struct Web {
    jobs: JobStore,
    /// The builder's attestations: a job page compares its outputs with
    /// other builders' as they stand now.
    attestor: Option<Arc<crate::attest::store::Attestor>>,
}

pub fn router(jobs_dir: PathBuf, attestor: Option<Arc<crate::attest::store::Attestor>>) -> Router {
    let st = Arc::new(Web {
        jobs: JobStore::new(jobs_dir),
        attestor,
    });
    Router::new()
        .route("/", get(index))
        .route("/jobs/{id}", get(job_page))
        .route("/jobs/{id}/log", get(log_chunk))
        .route("/jobs/{id}/report.json", get(report_json))
        .route("/jobs/{id}/report.md", get(report_md))
        // Unauthenticated and reading files: a few at a time, the rest wait.
        .route(
            "/jobs/{id}/artifacts/{base}/{*file}",
            get(artifact).layer(tower::limit::ConcurrencyLimitLayer::new(
                MAX_CONCURRENT_ARTIFACTS,
            )),
        )
        .with_state(st)
}

/// Artifact requests the page serves at once.
pub const MAX_CONCURRENT_ARTIFACTS: usize = 4;

/// Escape text for HTML (element content and quoted attributes).
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

fn html(body: String) -> Response {
    let mut r = (StatusCode::OK, body).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(PAGE_CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "not found\n").into_response()
}

fn status_word(r: &JobRecord) -> String {
    match (&r.result, r.state) {
        (_, s) if !s.is_terminal() => s.as_str().to_owned(),
        (Some(res), _) if r.interrupted => format!("interrupted ({:?})", res.status),
        (Some(res), _) => crate::ofborg::status_word(&res.status),
        (None, _) => "done".into(),
    }
}

const STYLE: &str = "body{font-family:sans-serif;margin:1.5em;max-width:70em}\
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2em .5em;text-align:left}\
pre{background:#111;color:#ddd;padding:.6em;overflow:auto;max-height:40em}\
.ok{color:#176}.bad{color:#a11}.shot{border:1px solid #888;margin:.3em;max-width:100%}\
.note{background:#ffd;padding:.4em;border:1px solid #cc8}";

fn page(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{}</title><style>{STYLE}</style></head>\n<body>\n{body}</body></html>\n",
        esc(title)
    )
}

/// The job list, newest first.
pub fn render_index(recs: &[JobRecord]) -> String {
    let mut b = String::from("<h1>airlock jobs</h1>\n<table>\n<tr><th>job</th><th>kind</th><th>status</th><th>repository</th><th>PR</th><th>head</th></tr>\n");
    for r in recs.iter().rev() {
        b.push_str(&format!(
            "<tr><td><a href=\"/jobs/{id}\">{id}</a></td><td>{kind}</td><td>{st}</td><td>{repo}</td><td>#{pr}</td><td><code>{head}</code></td></tr>\n",
            id = esc(&r.id),
            kind = if r.hydra.is_some() {
                "hydra step"
            } else if r.job.airlock_review.is_some() {
                "review"
            } else {
                "build"
            },
            st = esc(&status_word(r)),
            repo = esc(&r.job.repo.full_name),
            pr = r.job.pr.number,
            head = esc(&r.job.pr.head_sha),
        ));
    }
    b.push_str("</table>\n");
    page("airlock jobs", &b)
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        return "<p>none</p>\n".into();
    }
    let mut s = String::from("<ul>\n");
    for i in items {
        s.push_str(&format!("<li><code>{}</code></li>\n", esc(i)));
    }
    s.push_str("</ul>\n");
    s
}

fn render_report(r: &Report) -> String {
    let c = r.categories();
    let mut b = String::from("<h2>Review</h2>\n");
    if r.rebuild.mass_rebuild {
        b.push_str(&format!(
            "<p class=\"note\"><b>Mass rebuild:</b> {} attrs changed, more than this builder's limit of {}; a sample of {} was built.</p>\n",
            r.rebuild.changed.len(),
            r.rebuild.max_build,
            r.rebuild.build.len()
        ));
    } else {
        b.push_str(&format!(
            "<p>{} attrs changed, {} removed.</p>\n",
            r.rebuild.changed.len(),
            r.rebuild.removed.len()
        ));
    }
    for (title, items, class) in [
        ("Built", &c.built, "ok"),
        ("Tests passed", &c.tests, "ok"),
        ("Failed", &c.failed, "bad"),
        ("Broken (does not evaluate)", &c.broken, "bad"),
        ("Does not exist", &c.non_existent, "bad"),
        ("Blacklisted", &c.blacklisted, ""),
    ] {
        if title == "Built" || !items.is_empty() {
            b.push_str(&format!(
                "<h3 class=\"{class}\">{title} ({})</h3>\n{}",
                items.len(),
                list(items)
            ));
        }
    }
    let noted = |v: &[crate::review::verdict::Noted]| -> Vec<(String, String)> {
        v.iter()
            .map(|n| (n.name.clone(), n.reason.clone()))
            .collect()
    };
    let skipped = |v: &[crate::review::report::SkippedTest]| -> Vec<(String, String)> {
        v.iter()
            .map(|t| (t.attr.clone(), t.reason.clone()))
            .collect()
    };
    reasons(
        &mut b,
        "Fail on the base too (the VM's word; not counted as failed)",
        &noted(&r.failures.on_base),
    );
    reasons(
        &mut b,
        "Unsupported here (not counted as failed)",
        &noted(&r.failures.unsupported),
    );
    let a = &r.automerge;
    if a.eligible || a.bot {
        b.push_str(&format!("<h3>Merge verdict: {}</h3>\n<ul>\n", a.word()));
        for why in &a.reasons {
            b.push_str(&format!("<li>{}</li>\n", esc(why)));
        }
        b.push_str("</ul>\n");
    }
    reasons(&mut b, "Packages not built", &skipped(&r.skipped_attrs));
    reasons(&mut b, "Tests skipped", &skipped(&r.skipped_tests));
    render_evidence(&mut b, r);
    render_artifacts(&mut b, r);
    if let Some(s) = &r.builder.sponsor {
        b.push_str(&format!("<p><i>{}</i></p>\n", esc(&s.line)));
    }
    b
}

/// A titled list of names, each with its reason (none: nothing).
fn reasons(b: &mut String, title: &str, list: &[(String, String)]) {
    if list.is_empty() {
        return;
    }
    b.push_str(&format!("<h3>{title} ({})</h3>\n<ul>\n", list.len()));
    for (name, reason) in list {
        b.push_str(&format!(
            "<li><code>{}</code>: {}</li>\n",
            esc(name),
            esc(reason)
        ));
    }
    b.push_str("</ul>\n");
}

/// The evidence map as a table.
fn render_evidence(b: &mut String, r: &Report) {
    b.push_str("<h3>What the passing tests vouch for</h3>\n");
    if r.evidence.by_package.is_empty() {
        b.push_str("<p>No passing test exercises a changed package.</p>\n");
    } else {
        b.push_str(
            "<p><em>runtime</em>: the test's verified outputs refer to the package (checked on \
             this builder); <em>build</em>: the package is in the test's build closure as the \
             VM reported it (not verified).</p>\n",
        );
        b.push_str("<table>\n<tr><th>changed package</th><th>passing tests whose closure holds it</th></tr>\n");
        for (pkg, tests) in &r.evidence.by_package {
            let ts: Vec<String> = tests
                .iter()
                .map(|t| {
                    let e = r.evidence.by_test.get(t);
                    let rt = e.is_some_and(|e| e.runtime.iter().any(|a| a == pkg));
                    let bd = e.is_some_and(|e| e.build.iter().any(|a| a == pkg));
                    let how = match (bd, rt) {
                        (true, true) => "build, runtime",
                        (false, true) => "runtime",
                        _ => "build, reported by the VM",
                    };
                    format!("<code>{}</code> ({how})", esc(t))
                })
                .collect();
            b.push_str(&format!(
                "<tr><td><code>{}</code></td><td>{}</td></tr>\n",
                esc(pkg),
                ts.join("<br>")
            ));
        }
        b.push_str("</table>\n");
    }
}

/// Screenshots as images, other artifacts as links.
fn render_artifacts(b: &mut String, r: &Report) {
    if !r.artifacts.is_empty() {
        b.push_str("<h3>Test artifacts</h3>\n<p>Shown as images only: nothing on this page makes a quarantined path substitutable.</p>\n");
        for a in &r.artifacts {
            let url = esc(&a.url);
            if a.kind == "image" {
                b.push_str(&format!(
                    "<figure><img class=\"shot\" src=\"{url}\" alt=\"{file}\"><figcaption><code>{test}</code>: {file}</figcaption></figure>\n",
                    test = esc(&a.test),
                    file = esc(&a.file)
                ));
            } else {
                b.push_str(&format!(
                    "<p><code>{}</code>: <a href=\"{url}\">{}</a> ({} bytes)</p>\n",
                    esc(&a.test),
                    esc(&a.file),
                    a.size
                ));
            }
        }
    }
}

/// One job: status, the review's report if any, and the log (`log` is
/// its first `next` bytes).
pub fn render_job(
    r: &JobRecord,
    report: Option<&Report>,
    agreement: &[crate::attest::compare::OutputReport],
    log: &str,
    next: u64,
) -> String {
    let mut b = format!(
        "<p><a href=\"/\">all jobs</a></p>\n<h1>Job {}</h1>\n",
        esc(&r.id)
    );
    if let Some(h) = &r.hydra {
        // A queue-runner step: the runner's ids, not a PR's.
        b.push_str(&format!(
            "<p>Hydra queue-runner step: build id <code>{}</code>, derivation <code>{}</code>, machine <code>{}</code></p>\n",
            esc(&h.build_id),
            esc(&h.drv),
            esc(&h.machine_id)
        ));
    }
    b.push_str(&format!(
        "<table>\n<tr><th>status</th><td id=\"status\">{}</td></tr>\n<tr><th>repository</th><td>{}</td></tr>\n<tr><th>PR</th><td>#{}</td></tr>\n<tr><th>head</th><td><code>{}</code></td></tr>\n<tr><th>merged</th><td><code>{}</code></td></tr>\n<tr><th>attrs</th><td>{}</td></tr>\n<tr><th>guest Nix</th><td>{}</td></tr>\n</table>\n",
        esc(&status_word(r)),
        esc(&r.job.repo.full_name),
        r.job.pr.number,
        esc(&r.job.pr.head_sha),
        esc(r.merged_commit.as_deref().unwrap_or("-")),
        if r.job.airlock_review.is_some() {
            "review".to_owned()
        } else {
            esc(&r.job.attrs.join(" "))
        },
        esc(r.guest_nix.as_deref().unwrap_or("-")),
    ));
    if let Some(res) = &r.result {
        if !res.output.is_empty() {
            b.push_str("<h2>Result</h2>\n<pre>");
            b.push_str(&esc(&res.output.join("\n")));
            b.push_str("</pre>\n");
        }
    }
    if let Some(rep) = report {
        b.push_str(&render_report(rep));
        b.push_str(&format!(
            "<p><a href=\"/jobs/{id}/report.json\">report.json</a> · <a href=\"/jobs/{id}/report.md\">report.md</a></p>\n",
            id = esc(&r.id)
        ));
    }
    if !agreement.is_empty() {
        b.push_str("<h2>Builders</h2>\n<p>This job's outputs as independent builders attested them (signatures checked against known keys; operators as configured here).</p>\n<table>\n");
        for o in agreement {
            b.push_str(&format!(
                "<tr><td><code>{}</code> {}</td><td class=\"{}\">{}</td></tr>\n",
                esc(&o.drv_path),
                esc(&o.output),
                esc(&o.verdict),
                esc(&o.text)
            ));
        }
        b.push_str("</table>\n");
    }
    let running = !r.state.is_terminal();
    b.push_str(&format!(
        "<h2>Log</h2>\n<pre id=\"log\" data-next=\"{next}\" data-running=\"{running}\">{}</pre>\n<p id=\"follow\">{}</p>\n",
        esc(log),
        if running { "following the log…" } else { "" }
    ));
    if running {
        b.push_str(&format!(
            "<script>\n(async () => {{\n  const log = document.getElementById('log');\n  const note = document.getElementById('follow');\n  let next = Number(log.dataset.next);\n  for (;;) {{\n    let r;\n    try {{ r = await fetch('/jobs/{id}/log?from=' + next); }} catch (e) {{ await new Promise(s => setTimeout(s, 2000)); continue; }}\n    if (!r.ok) break;\n    const text = await r.text();\n    if (text) {{ log.append(text); log.scrollTop = log.scrollHeight; }}\n    next = Number(r.headers.get('X-Next-Offset'));\n    if (r.headers.get('X-Done') === '1') {{ note.textContent = 'the job has finished; reload for its result'; break; }}\n  }}\n}})();\n</script>\n",
            id = esc(&r.id)
        ));
    }
    page(&format!("airlock job {}", r.id), &b)
}

fn load(st: &Web, id: &str) -> Option<JobRecord> {
    crate::job::check_id(id).ok()?;
    st.jobs.load(id).ok()
}

/// Largest report.json the page reads (a review's is far smaller: its
/// lists are bounded when it is made).
const MAX_REPORT_BYTES: u64 = 16 << 20;

fn read_report(paths: &JobPaths) -> Option<Report> {
    let f = paths.report_json();
    if std::fs::metadata(&f).ok()?.len() > MAX_REPORT_BYTES {
        return None;
    }
    serde_json::from_slice(&std::fs::read(f).ok()?).ok()
}

/// Up to `max` bytes of `path` from `from`, cut after the last newline
/// (so a line is never split), and the offset after them.
fn read_log(path: &Path, from: u64, max: u64) -> (String, u64) {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else {
        return (String::new(), from);
    };
    if f.seek(SeekFrom::Start(from)).is_err() {
        return (String::new(), from);
    }
    let mut buf = Vec::new();
    let _ = f.take(max).read_to_end(&mut buf);
    let cut = buf.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    buf.truncate(cut);
    (
        String::from_utf8_lossy(&buf).into_owned(),
        from + cut as u64,
    )
}

async fn index(State(st): State<Arc<Web>>) -> Response {
    let jobs = st.jobs.clone();
    let recs = tokio::task::spawn_blocking(move || {
        let (mut v, _) = jobs.list();
        v.sort_by_key(|r| r.created_at);
        v
    })
    .await
    .unwrap_or_default();
    html(render_index(&recs))
}

async fn job_page(State(st): State<Arc<Web>>, UrlPath(id): UrlPath<String>) -> Response {
    let Some(rec) = load(&st, &id) else {
        return not_found();
    };
    let paths = st.jobs.paths(&id);
    let report = read_report(&paths);
    // The start of a long log is cut: the page shows its last part.
    let path = paths.build_log();
    let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let from = len.saturating_sub(LOG_CHUNK);
    let (mut text, next) = read_log(&path, from, LOG_CHUNK);
    if from > 0 {
        if let Some(i) = text.find('\n') {
            text.drain(..=i);
        }
        text.insert_str(0, "[… the start of the log is cut …]\n");
    }
    let agreement = match &st.attestor {
        Some(a) => {
            let (a, file) = (a.clone(), paths.attestations());
            tokio::task::spawn_blocking(move || agreement(&a, &file))
                .await
                .unwrap_or_default()
        }
        None => vec![],
    };
    html(render_job(&rec, report.as_ref(), &agreement, &text, next))
}

/// The job's attested outputs compared with every known builder's
/// attestations of the same derivations.
fn agreement(
    a: &crate::attest::store::Attestor,
    job_file: &std::path::Path,
) -> Vec<crate::attest::compare::OutputReport> {
    let mut own = crate::attest::read_file(job_file);
    own.truncate(MAX_AGREEMENT_ROWS);
    let mut all = Vec::new();
    let mut drvs: Vec<&str> = own.iter().map(|x| x.statement.drv_path.as_str()).collect();
    drvs.sort();
    drvs.dedup();
    for d in drvs {
        all.extend(a.pool.of_drv(d).unwrap_or_default());
    }
    let (v, _) = a.pool.compare(&all);
    own.iter()
        .filter_map(|x| {
            let id = crate::attest::compare::OutputId {
                drv_path: x.statement.drv_path.clone(),
                output: x.statement.output.clone(),
            };
            v.get(&id)
                .map(|v| crate::attest::compare::OutputReport::new(&id, v))
        })
        .collect()
}

/// Most outputs a job page compares.
const MAX_AGREEMENT_ROWS: usize = 1000;

#[derive(serde::Deserialize)]
struct From {
    from: Option<u64>,
}

async fn log_chunk(
    State(st): State<Arc<Web>>,
    UrlPath(id): UrlPath<String>,
    Query(q): Query<From>,
) -> Response {
    if load(&st, &id).is_none() {
        return not_found();
    }
    let path = st.jobs.paths(&id).build_log();
    let from = q.from.unwrap_or(0);
    let deadline = tokio::time::Instant::now() + LOG_WAIT;
    let (text, next, done) = loop {
        let (text, next) = read_log(&path, from, LOG_CHUNK);
        let done = load(&st, &id).is_none_or(|r| r.state == JobState::Done);
        if !text.is_empty() || tokio::time::Instant::now() >= deadline {
            break (text, next, done && read_log(&path, next, 1).0.is_empty());
        }
        if done {
            // Finished: what is left is all there is.
            let (t, n) = read_log(&path, from, LOG_CHUNK);
            break (t, n, true);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut h = HeaderMap::new();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("X-Next-Offset", HeaderValue::from(next));
    h.insert(
        "X-Done",
        HeaderValue::from_static(if done { "1" } else { "0" }),
    );
    (StatusCode::OK, h, text).into_response()
}

fn file_response(body: Vec<u8>, ctype: &'static str) -> Response {
    let mut r = (StatusCode::OK, body).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; sandbox"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

async fn report_json(State(st): State<Arc<Web>>, UrlPath(id): UrlPath<String>) -> Response {
    if load(&st, &id).is_none() {
        return not_found();
    }
    match std::fs::read(st.jobs.paths(&id).report_json()) {
        Ok(b) => file_response(b, "application/json"),
        Err(_) => not_found(),
    }
}

async fn report_md(State(st): State<Arc<Web>>, UrlPath(id): UrlPath<String>) -> Response {
    if load(&st, &id).is_none() {
        return not_found();
    }
    match std::fs::read(st.jobs.paths(&id).report_md()) {
        Ok(b) => file_response(b, "text/plain; charset=utf-8"),
        Err(_) => not_found(),
    }
}

/// The image types the page shows, by their first bytes.
pub fn image_type(data: &[u8]) -> Option<&'static str> {
    if data.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some("image/png")
    } else if data.starts_with(&[0xff, 0xd8, 0xff]) {
        Some("image/jpeg")
    } else {
        None
    }
}

async fn artifact(
    State(st): State<Arc<Web>>,
    UrlPath((id, base, file)): UrlPath<(String, String, String)>,
) -> Response {
    let Some(rec) = load(&st, &id) else {
        return not_found();
    };
    // Only the outputs of this job's report's passing tests.
    let Some(report) = read_report(&st.jobs.paths(&id)) else {
        return not_found();
    };
    let store_path = format!("/nix/store/{base}");
    let Some(a) = report
        .artifacts
        .into_iter()
        .find(|a| a.store_path == store_path && a.file == file)
    else {
        return not_found();
    };
    let Some(qdir) = rec.result.as_ref().and_then(|r| r.quarantine.clone()) else {
        return not_found();
    };
    let got = tokio::task::spawn_blocking(move || {
        if !a.nar.is_empty() {
            // Straight to the bytes (reports since issue 27).
            return crate::review::artifact_at(&qdir, &a);
        }
        let verified = std::fs::read(qdir.join("manifest.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<crate::quarantine::JobManifest>(&b).ok())?
            .verified;
        crate::review::artifact_bytes(&qdir, &verified, &base, &file)
    })
    .await
    .ok()
    .flatten();
    match got {
        Some(("image", bytes)) => match image_type(&bytes) {
            Some(t) => file_response(bytes, t),
            None => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "not an image\n").into_response(),
        },
        Some((_, bytes)) => file_response(bytes, "text/plain; charset=utf-8"),
        None => not_found(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_everything_a_guest_wrote() {
        assert_eq!(
            esc("<img src=x onerror='a'>&\""),
            "&lt;img src=x onerror=&#39;a&#39;&gt;&amp;&quot;"
        );
    }

    #[test]
    fn log_chunks_end_at_a_line() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("build.log");
        std::fs::write(&p, "one\ntwo\nthr").unwrap();
        assert_eq!(read_log(&p, 0, 100), ("one\ntwo\n".into(), 8));
        assert_eq!(read_log(&p, 8, 100), (String::new(), 8));
        assert_eq!(read_log(&p, 0, 5), ("one\n".into(), 4));
    }

    /// Issue 27, item 12: the artifact route parsed the whole NAR (up to
    /// 4 GiB) per unauthenticated request. It now reads the bytes at the
    /// offset the report recorded: a NAR whose tail after the artifact is
    /// not even a NAR still serves it.
    #[test]
    fn artifacts_are_read_at_their_offset_without_parsing_the_nar() {
        use airlock_nix_formats::nar::build::{nar, Node};
        let q = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(q.path().join("nar")).unwrap();
        let png = b"\x89PNG\r\n\x1a\nthe screenshot";
        let mut bytes = nar(&Node::Dir(vec![(
            "shot.png",
            Node::File {
                exec: false,
                data: png,
            },
        )]));
        let files = airlock_nix_formats::nar::files(&bytes[..]).unwrap();
        bytes.truncate(bytes.len() - 8);
        bytes.extend_from_slice(&[0xee; 4096]);
        let nar_name = format!("nar/{}.nar", "1".repeat(52));
        std::fs::write(q.path().join(&nar_name), &bytes).unwrap();
        let a = crate::review::report::Artifact {
            test: "t".into(),
            store_path: "/nix/store/00000000000000000000000000000000-shots".into(),
            file: "shot.png".into(),
            size: files[0].size,
            kind: "image".into(),
            url: String::new(),
            nar: nar_name.clone(),
            offset: files[0].offset,
        };
        let (kind, got) = crate::review::artifact_at(q.path(), &a).unwrap();
        assert_eq!((kind, &got[..]), ("image", &png[..]));
        // Only quarantine NAR names.
        for bad in ["../../etc/passwd", "nar/../../x.nar", "nar/short.nar"] {
            let mut b = a.clone();
            b.nar = bad.into();
            assert!(crate::review::artifact_at(q.path(), &b).is_none(), "{bad}");
        }
    }

    #[test]
    fn an_oversized_report_is_not_read() {
        let d = tempfile::tempdir().unwrap();
        let f = std::fs::File::create(d.path().join("report.json")).unwrap();
        f.set_len(MAX_REPORT_BYTES + 1).unwrap();
        assert!(read_report(&JobPaths {
            dir: d.path().to_owned()
        })
        .is_none());
    }

    #[test]
    fn only_real_images_are_images() {
        assert_eq!(image_type(b"\x89PNG\r\n\x1a\nrest"), Some("image/png"));
        assert_eq!(image_type(b"<svg onload=alert(1)>"), None);
    }
}
