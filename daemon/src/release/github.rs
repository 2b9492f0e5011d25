//! The GitHub REST adapter for the label watcher: octocrab as the HTTP
//! client (auth, base URL), our own conditional requests (ETag →
//! `If-None-Match`, a 304 costs no rate limit), pagination by `Link`
//! headers, and rate-limit bookkeeping (`x-ratelimit-*`, `retry-after`).
//! Only the fields the release rule needs are parsed, strictly.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::header::{HeaderMap, HeaderValue, ACCEPT, ETAG, IF_NONE_MATCH, LINK};
use http::StatusCode;
use octocrab::Octocrab;
use serde::Deserialize;
use tracing::{debug, warn};

use super::rule::{parse_time, Time};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("GitHub client: {0}")]
    Client(String),
    /// The request (`GET <url>`), the HTTP status, the body's start.
    #[error("{0}: HTTP {1}: {2}")]
    Status(String, u16, String),
    #[error("GitHub rate limit exhausted; next request allowed at {}", super::rule::fmt_time(*.0))]
    RateLimited(Time),
    #[error("GET {0}: unexpected response: {1}")]
    Parse(String, String),
    #[error("not a GitHub repository name: {0:?}")]
    BadRepo(String),
}
pub type Result<T> = std::result::Result<T, Error>;

/// `owner/name` as GitHub allows them (no path tricks in URLs we build).
pub fn check_repo(full_name: &str) -> Result<()> {
    let ok = |s: &str| {
        !s.is_empty()
            && s.len() <= 100
            && !s.starts_with('.')
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    };
    match full_name.split_once('/') {
        Some((o, n)) if ok(o) && ok(n) => Ok(()),
        _ => Err(Error::BadRepo(full_name.to_owned())),
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct User {
    pub login: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct LabelRef {
    pub name: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PullHead {
    pub sha: String,
    /// The head branch (in `repo`).
    #[serde(rename = "ref", default)]
    pub branch: String,
    /// The head repository (the fork); null when it was deleted.
    #[serde(default)]
    pub repo: Option<RepoRef>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PullBase {
    #[serde(rename = "ref")]
    pub branch: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RepoRef {
    pub full_name: String,
}

/// One element of GET /repos/{owner}/{repo}/activity.
#[derive(Debug, Clone, Deserialize)]
pub struct Activity {
    pub after: String,
    #[serde(rename = "ref")]
    pub git_ref: String,
    pub timestamp: String,
    pub activity_type: String,
}

/// GET /repos/{owner}/{repo}/pulls/{n}, the fields we use.
#[derive(Debug, Clone, Deserialize)]
pub struct Pull {
    pub number: u64,
    pub state: String,
    /// Who opened it (absent in a malformed answer).
    #[serde(default)]
    pub user: Option<User>,
    pub head: PullHead,
    /// The branch the PR targets (absent in a malformed answer: release
    /// then holds).
    #[serde(default)]
    pub base: Option<PullBase>,
    #[serde(default)]
    pub labels: Vec<LabelRef>,
}

/// One element of GET /repos/{owner}/{repo}/issues/{n}/events.
#[derive(Debug, Clone, Deserialize)]
pub struct IssueEvent {
    pub event: String,
    pub actor: Option<User>,
    pub created_at: String,
    #[serde(default)]
    pub commit_id: Option<String>,
    #[serde(default)]
    pub label: Option<LabelRef>,
}

#[derive(Debug, Clone, Deserialize)]
struct PermissionReply {
    permission: String,
}

struct Cached {
    etag: HeaderValue,
    body: bytes::Bytes,
    next: Option<String>,
}

/// One fetched page: body, the `next` link, and GitHub's clock (`Date`).
pub struct Page {
    pub body: bytes::Bytes,
    pub next: Option<String>,
    pub date: Option<Time>,
    pub not_modified: bool,
}

/// Counters for logs, tests and benchmarks.
#[derive(Debug, Default)]
pub struct Stats {
    pub requests: AtomicU64,
    pub not_modified: AtomicU64,
}

pub struct GitHub {
    octo: Octocrab,
    base: http::Uri,
    authenticated: bool,
    etags: Mutex<HashMap<String, Cached>>,
    blocked_until: Mutex<Option<Time>>,
    permissions: Mutex<HashMap<(String, String), (Instant, String)>>,
    pub stats: Stats,
}

/// Longest issue-event history read (100 events a page).
const MAX_PAGES: usize = 50;
const PER_PAGE: usize = 100;
/// Longest pause a rate-limit header can impose (GitHub's window is an hour).
const MAX_PAUSE: i64 = 2 * 3600;
/// Conditional-request cache entries kept (each holds one response body).
const MAX_CACHED: usize = 4096;
const PERMISSION_TTL: Duration = Duration::from_secs(600);

fn now() -> Time {
    crate::job::now() as Time
}

impl GitHub {
    pub fn new(api_url: &str, token: Option<String>) -> Result<GitHub> {
        let base: http::Uri = api_url
            .trim_end_matches('/')
            .parse()
            .map_err(|e| Error::Client(format!("bad github.api_url {api_url:?}: {e}")))?;
        let mut b = Octocrab::builder()
            .base_uri(base.clone())
            .map_err(|e| Error::Client(e.to_string()))?
            .set_connect_timeout(Some(Duration::from_secs(10)))
            .set_read_timeout(Some(Duration::from_secs(30)));
        let authenticated = token.is_some();
        if let Some(t) = token {
            b = b.personal_token(t);
        }
        let octo = b.build().map_err(|e| Error::Client(e.to_string()))?;
        Ok(GitHub {
            octo,
            base,
            authenticated,
            etags: Mutex::new(HashMap::new()),
            blocked_until: Mutex::new(None),
            permissions: Mutex::new(HashMap::new()),
            stats: Stats::default(),
        })
    }

    /// As a GitHub App's installation (issue 32: only an App may write
    /// check runs): a JWT signed with the App's private key (RS256) buys
    /// installation tokens, renewed before they expire (octocrab's).
    pub fn new_app(
        api_url: &str,
        app_id: u64,
        private_key_pem: &[u8],
        installation_id: u64,
    ) -> Result<GitHub> {
        let base: http::Uri = api_url
            .trim_end_matches('/')
            .parse()
            .map_err(|e| Error::Client(format!("bad github.api_url {api_url:?}: {e}")))?;
        let key = octocrab::EncodingKey::from_rsa_pem(private_key_pem).map_err(|e| {
            Error::Client(format!(
                "github.app_key_file is not an RSA private key (PEM): {e}"
            ))
        })?;
        let app = Octocrab::builder()
            .base_uri(base.clone())
            .map_err(|e| Error::Client(e.to_string()))?
            .set_connect_timeout(Some(Duration::from_secs(10)))
            .set_read_timeout(Some(Duration::from_secs(30)))
            .app(octocrab::models::AppId(app_id), key)
            .build()
            .map_err(|e| Error::Client(e.to_string()))?;
        let octo = app
            .installation(octocrab::models::InstallationId(installation_id))
            .map_err(|e| Error::Client(e.to_string()))?;
        Ok(GitHub {
            octo,
            base,
            authenticated: true,
            etags: Mutex::new(HashMap::new()),
            blocked_until: Mutex::new(None),
            permissions: Mutex::new(HashMap::new()),
            stats: Stats::default(),
        })
    }

    /// `POST` or `PATCH` a JSON body to `path` (under the API URL); the
    /// answer's JSON. Rate limits are noted as for reads.
    pub async fn write(
        &self,
        method: http::Method,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value> {
        self.not_blocked()?;
        let url = self.url(path);
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let what = format!("{method} {url}");
        let rel = self.on_api(&url);
        let resp = if method == http::Method::PATCH {
            self.octo._patch(rel.as_str(), Some(body)).await
        } else {
            self.octo._post(rel.as_str(), Some(body)).await
        }
        .map_err(|e| Error::Client(format!("{what}: {}", crate::error::chain(&e))))?;
        let status = resp.status();
        self.note_rate_limit(&resp.headers().clone(), status);
        let text = self
            .octo
            .body_to_string(resp)
            .await
            .map_err(|e| Error::Client(format!("{what}: {}", crate::error::chain(&e))))?;
        if !status.is_success() {
            return Err(Error::Status(what, status.as_u16(), body_start(&text)));
        }
        Self::parse(&what, text.as_bytes())
    }

    /// A GET's JSON, unconditional (a list that must be current).
    pub async fn get_json(&self, path: &str) -> Result<serde_json::Value> {
        let url = self.url(path);
        let p = self.get_inner(&url, false).await?;
        Self::parse(&url, &p.body)
    }

    pub fn authenticated(&self) -> bool {
        self.authenticated
    }

    fn url(&self, path_and_query: &str) -> String {
        format!(
            "{}{}",
            self.base.to_string().trim_end_matches('/'),
            path_and_query
        )
    }

    /// A URL on the API host as the path octocrab sends credentials with:
    /// octocrab adds the `Authorization` header only to a request without
    /// an authority (or to api.github.com), and puts the API URL back in
    /// front. A URL elsewhere stays as it is (and goes without them).
    fn on_api(&self, url: &str) -> String {
        match url.parse::<http::Uri>() {
            Ok(u) if u.authority().is_some() && u.authority() == self.base.authority() => u
                .path_and_query()
                .map(|p| p.as_str().to_owned())
                .unwrap_or_else(|| "/".into()),
            _ => url.to_owned(),
        }
    }

    /// Refused while a rate limit GitHub announced lasts.
    fn not_blocked(&self) -> Result<()> {
        match *self.blocked_until.lock().expect("lock") {
            Some(until) if now() < until => Err(Error::RateLimited(until)),
            _ => Ok(()),
        }
    }

    /// One conditional GET.
    pub async fn get(&self, url: &str) -> Result<Page> {
        self.get_inner(url, true).await
    }

    async fn get_inner(&self, url: &str, conditional: bool) -> Result<Page> {
        self.not_blocked()?;
        let mut h = HeaderMap::new();
        h.insert(
            ACCEPT,
            HeaderValue::from_static("application/vnd.github+json"),
        );
        h.insert(
            "x-github-api-version",
            HeaderValue::from_static("2022-11-28"),
        );
        if conditional {
            if let Some(c) = self.etags.lock().expect("lock").get(url) {
                h.insert(IF_NONE_MATCH, c.etag.clone());
            }
        }
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let resp = self
            .octo
            ._get_with_headers(self.on_api(url), Some(h))
            .await
            .map_err(|e| Error::Client(format!("GET {url}: {}", crate::error::chain(&e))))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let date = headers
            .get(http::header::DATE)
            .and_then(|v| v.to_str().ok())
            .and_then(|s| chrono::DateTime::parse_from_rfc2822(s).ok())
            .map(|d| d.timestamp());
        self.note_rate_limit(&headers, status);
        let link_next = headers
            .get(LINK)
            .and_then(|v| v.to_str().ok())
            .and_then(next_link)
            .map(|n| self.check_next(url, n))
            .transpose()?;
        if status == StatusCode::NOT_MODIFIED {
            self.stats.not_modified.fetch_add(1, Ordering::Relaxed);
            let c = self.etags.lock().expect("lock");
            let c = c
                .get(url)
                .ok_or_else(|| Error::Parse(url.into(), "304 without a cached copy".into()))?;
            // The body is unchanged, the pages after it may not be: a `Link`
            // on the 304 itself wins over the cached one.
            let next = if headers.contains_key(LINK) {
                link_next
            } else {
                c.next.clone()
            };
            return Ok(Page {
                body: c.body.clone(),
                next,
                date,
                not_modified: true,
            });
        }
        let body = self
            .octo
            .body_to_string(resp)
            .await
            .map_err(|e| Error::Client(format!("GET {url}: {}", crate::error::chain(&e))))?;
        if !status.is_success() {
            self.not_blocked()?;
            return Err(Error::Status(
                format!("GET {url}"),
                status.as_u16(),
                body_start(&body),
            ));
        }
        let next = link_next;
        let body = bytes::Bytes::from(body);
        if let Some(etag) = headers.get(ETAG) {
            let mut c = self.etags.lock().expect("lock");
            if c.len() >= MAX_CACHED && !c.contains_key(url) {
                c.clear();
            }
            c.insert(
                url.to_owned(),
                Cached {
                    etag: etag.clone(),
                    body: body.clone(),
                    next: next.clone(),
                },
            );
        }
        Ok(Page {
            body,
            next,
            date,
            not_modified: false,
        })
    }

    /// A `next` link must stay on the API host: the token goes with it.
    fn check_next(&self, url: &str, next: &str) -> Result<String> {
        let n: http::Uri = next
            .parse()
            .map_err(|_| Error::Parse(url.into(), format!("bad Link URL {next:?}")))?;
        if n.authority().is_some() && n.authority() != self.base.authority() {
            return Err(Error::Parse(
                url.into(),
                format!("Link points away from the API host: {next}"),
            ));
        }
        Ok(next.to_owned())
    }

    fn note_rate_limit(&self, h: &HeaderMap, status: StatusCode) {
        let num = |k: &str| {
            h.get(k)
                .and_then(|v| v.to_str().ok())
                .and_then(|s| s.trim().parse::<i64>().ok())
        };
        let mut until = None;
        // Never pause longer than MAX_PAUSE, whatever a header says.
        let cap = |t: i64| t.clamp(now() + 1, now() + MAX_PAUSE);
        if let Some(ra) = num("retry-after") {
            if status == StatusCode::FORBIDDEN || status == StatusCode::TOO_MANY_REQUESTS {
                until = Some(cap(now().saturating_add(ra)));
            }
        }
        if num("x-ratelimit-remaining") == Some(0) {
            if let Some(reset) = num("x-ratelimit-reset") {
                until = Some(until.unwrap_or(0).max(cap(reset)));
            }
        }
        if status == StatusCode::TOO_MANY_REQUESTS && until.is_none() {
            until = Some(now() + 60);
        }
        if let Some(u) = until {
            warn!(until = %super::rule::fmt_time(u), status = status.as_u16(), "GitHub rate limit reached; pausing requests");
            *self.blocked_until.lock().expect("lock") = Some(u);
        } else if let Some(r) = num("x-ratelimit-remaining") {
            debug!(remaining = r, "GitHub rate limit");
        }
    }

    fn parse<T: serde::de::DeserializeOwned>(url: &str, body: &[u8]) -> Result<T> {
        serde_json::from_slice(body).map_err(|e| Error::Parse(url.into(), e.to_string()))
    }

    /// The PR and GitHub's clock at the time of the answer.
    pub async fn pull(&self, repo: &str, number: u64) -> Result<(Pull, Option<Time>)> {
        check_repo(repo)?;
        let url = self.url(&format!("/repos/{repo}/pulls/{number}"));
        let p = self.get(&url).await?;
        let pull: Pull = Self::parse(&url, &p.body)?;
        if pull.number != number || !is_sha(&pull.head.sha) {
            return Err(Error::Parse(url, "PR number or head sha malformed".into()));
        }
        Ok((pull, p.date))
    }

    /// Every issue event of the PR, oldest first, following `Link: next`.
    pub async fn issue_events(&self, repo: &str, number: u64) -> Result<Vec<IssueEvent>> {
        check_repo(repo)?;
        let mut url = self.url(&format!(
            "/repos/{repo}/issues/{number}/events?per_page=100"
        ));
        let mut all = Vec::new();
        for _ in 0..MAX_PAGES {
            let mut p = self.get(&url).await?;
            if p.not_modified && p.next.is_none() && count_items(&p.body) >= PER_PAGE {
                // A full last page, unchanged, and no `Link` on the 304: a new
                // page may have started after it. Ask again, unconditionally.
                p = self.get_inner(&url, false).await?;
            }
            let mut page: Vec<IssueEvent> = Self::parse(&url, &p.body)?;
            all.append(&mut page);
            match p.next {
                Some(n) => url = n,
                None => return Ok(all),
            }
        }
        // The newest events are on the pages not read: deciding without them
        // could miss a force-push or a label removal.
        Err(Error::Parse(
            url,
            format!(
                "issue event history longer than {MAX_PAGES} pages; not deciding on part of it"
            ),
        ))
    }

    /// Server times at which pushes to `branch` of `repo` made a commit its
    /// tip (repository activity API, newest 100): `(sha, time)`.
    pub async fn branch_pushes(&self, repo: &str, branch: &str) -> Result<Vec<(String, Time)>> {
        check_repo(repo)?;
        if branch.is_empty() || branch.len() > 255 {
            return Err(Error::Parse(branch.into(), "not a branch name".into()));
        }
        let url = self.url(&format!(
            "/repos/{repo}/activity?ref={}&per_page=100",
            query_escape(&format!("refs/heads/{branch}"))
        ));
        let p = self.get(&url).await?;
        let acts: Vec<Activity> = Self::parse(&url, &p.body)?;
        let want = format!("refs/heads/{branch}");
        let mut out = Vec::new();
        for a in acts {
            if a.git_ref != want {
                continue;
            }
            let t = parse_time(&a.timestamp).ok_or_else(|| {
                Error::Parse(url.clone(), format!("bad timestamp {:?}", a.timestamp))
            })?;
            if !is_sha(&a.after) {
                return Err(Error::Parse(url, format!("bad sha {:?}", a.after)));
            }
            // Every kind of tip change counts; a deletion (all zeros) is a
            // change to no commit: recorded with no sha.
            let after = a.after.to_ascii_lowercase();
            let after = if after.bytes().all(|b| b == b'0') {
                String::new()
            } else {
                after
            };
            out.push((after, t));
        }
        Ok(out)
    }

    /// The account's permission on the repository, as GitHub reports it
    /// (`admin`, `write`, `read`, `none`); cached for ten minutes.
    pub async fn permission(&self, repo: &str, login: &str) -> Result<String> {
        check_repo(repo)?;
        if login.is_empty()
            || !login
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_[]".contains(&b))
        {
            return Err(Error::Parse(login.into(), "not a GitHub login".into()));
        }
        let key = (repo.to_owned(), login.to_owned());
        if let Some((t, p)) = self.permissions.lock().expect("lock").get(&key) {
            if t.elapsed() < PERMISSION_TTL {
                return Ok(p.clone());
            }
        }
        let url = self.url(&format!("/repos/{repo}/collaborators/{login}/permission"));
        let p = self.get(&url).await?;
        let r: PermissionReply = Self::parse(&url, &p.body)?;
        self.permissions
            .lock()
            .expect("lock")
            .insert(key, (Instant::now(), r.permission.clone()));
        Ok(r.permission)
    }
}

fn count_items(body: &[u8]) -> usize {
    serde_json::from_slice::<Vec<serde::de::IgnoredAny>>(body)
        .map(|v| v.len())
        .unwrap_or(0)
}

/// Percent-encode a query value (unreserved characters and `/` stay).
fn query_escape(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A PR on GitHub: a repository GitHub could have (not a local
/// checkout's `local/<name>`), a PR number, a commit id.
pub fn is_pr(full_name: &str, number: u64, head_sha: &str) -> bool {
    check_repo(full_name).is_ok()
        && !full_name.starts_with("local/")
        && number > 0
        && is_sha(head_sha)
}

/// The first 300 bytes of an error answer, cut at a character boundary
/// (`String::truncate` in the middle of one panics).
fn body_start(body: &str) -> String {
    let mut end = body.len().min(300);
    while !body.is_char_boundary(end) {
        end -= 1;
    }
    body[..end].to_owned()
}

pub fn is_sha(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The `rel="next"` URL of a `Link` header.
pub fn next_link(link: &str) -> Option<&str> {
    link.split(',').find_map(|part| {
        let (url, params) = part.trim().split_once(';')?;
        let url = url.trim().strip_prefix('<')?.strip_suffix('>')?;
        params
            .split(';')
            .any(|p| {
                let p = p.trim();
                p == "rel=\"next\"" || p == "rel=next"
            })
            .then_some(url)
    })
}

/// An event's time; unreadable is an error (deciding without it could
/// miss a force-push or a label removal).
pub fn event_time(e: &IssueEvent) -> Result<Time> {
    parse_time(&e.created_at).ok_or_else(|| {
        Error::Parse(
            format!("issue event {}", e.event),
            format!("unreadable created_at {:?}", e.created_at),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_header() {
        let l = r#"<https://api.github.com/repositories/1/issues/2/events?per_page=100&page=2>; rel="next", <https://api.github.com/repositories/1/issues/2/events?per_page=100&page=5>; rel="last""#;
        assert_eq!(
            next_link(l),
            Some("https://api.github.com/repositories/1/issues/2/events?per_page=100&page=2")
        );
        assert_eq!(
            next_link(r#"<https://x/?page=1>; rel="prev", <https://x/?page=1>; rel="first""#),
            None
        );
        assert_eq!(next_link("garbage"), None);
    }

    #[tokio::test]
    async fn rate_limit_headers_pause_within_bounds() {
        let gh = GitHub::new("http://127.0.0.1:9", None).unwrap();
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("99999999999"));
        gh.note_rate_limit(&h, StatusCode::TOO_MANY_REQUESTS);
        let until = gh.blocked_until.lock().unwrap().unwrap();
        assert!(until <= now() + MAX_PAUSE && until > now());
        // Paused: no request is made, the error says until when.
        match gh.get("http://127.0.0.1:9/x").await {
            Err(Error::RateLimited(t)) => assert_eq!(t, until),
            other => panic!("{:?}", other.map(|p| p.body)),
        }
        let gh = GitHub::new("http://127.0.0.1:9", None).unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-ratelimit-remaining", HeaderValue::from_static("0"));
        h.insert("x-ratelimit-reset", HeaderValue::from_static("-5"));
        gh.note_rate_limit(&h, StatusCode::OK);
        let until = gh.blocked_until.lock().unwrap().unwrap();
        assert!(
            until > now() - 1 && until <= now() + 1,
            "reset in the past pauses ~1s"
        );
    }

    #[test]
    fn activity_fixture_and_escaping() {
        let p = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/github/repository-activity.json"
        );
        let v: Vec<Activity> = serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].activity_type, "push");
        assert_eq!(v[0].git_ref, "refs/heads/hello-2.12.2");
        assert_eq!(
            query_escape("refs/heads/a b+c#d"),
            "refs/heads/a%20b%2Bc%23d"
        );
    }

    #[tokio::test]
    async fn api_urls_go_as_paths_so_credentials_go_with_them() {
        let gh = GitHub::new("https://ghe.example/api/v3", Some("t".into())).unwrap();
        assert_eq!(
            gh.on_api("https://ghe.example/api/v3/repos/a/b/pulls/1?x=1"),
            "/api/v3/repos/a/b/pulls/1?x=1"
        );
        assert_eq!(
            gh.on_api("https://elsewhere.example/x"),
            "https://elsewhere.example/x"
        );
    }

    #[test]
    fn an_error_body_is_cut_between_characters() {
        let body = format!("{}é tail", "x".repeat(299));
        assert_eq!(body_start(&body), "x".repeat(299));
        assert_eq!(body_start("short"), "short");
    }

    #[test]
    fn repo_names() {
        assert!(check_repo("NixOS/nixpkgs").is_ok());
        for bad in ["NixOS", "../x/y", "a/b/c", "a/..", "a/b?x=1", "/b", "a/"] {
            assert!(check_repo(bad).is_err(), "{bad}");
        }
    }
}
