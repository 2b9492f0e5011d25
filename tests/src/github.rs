//! A local stand-in for GitHub's REST API (the one part of the release path
//! that cannot run here). It serves the documented response shapes from
//! `tests/fixtures/github/` with the test's values patched in, paginates
//! issue events with `Link` headers, answers `If-None-Match` with 304, and
//! sends the rate-limit headers. Plus: a tiny HTTP client, webhook
//! deliveries, and Nix binary-cache key generation.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};

pub fn fixture(name: &str) -> Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/github")
        .join(name);
    serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap()
}

pub fn now() -> i64 {
    airlock::job::now() as i64
}

pub fn iso(t: i64) -> String {
    airlock::release::rule::fmt_time(t)
}

#[derive(Default)]
pub struct GhState {
    pulls: HashMap<u64, Value>,
    events: HashMap<u64, Vec<Value>>,
    perms: HashMap<String, String>,
    /// Repository activity per (repo, full ref), newest first.
    activity: HashMap<(String, String), Vec<Value>>,
    next_id: u64,
    /// Largest page the fake serves (forces pagination).
    pub page_cap: usize,
    pub requests: u64,
    /// GETs of each PR (one per look the watcher takes at it).
    pub pull_gets: HashMap<u64, u64>,
    pub not_modified: u64,
    pub event_pages_served: u64,
    /// Event pages after the first (pagination followed).
    pub later_pages_served: u64,
    /// Authorization headers seen.
    pub auth: Vec<Option<String>>,
    /// x-ratelimit-remaining to report (decremented on 200s).
    pub remaining: i64,
    /// Check runs by id, as GitHub would return them now.
    pub check_runs: std::collections::BTreeMap<u64, Value>,
    /// Every check-run write: (method, check run id, request body).
    pub check_writes: Vec<(String, u64, Value)>,
    /// Requests refused (status, why), for the test to show.
    pub refused: Vec<(u16, String)>,
    /// The GitHub App: its id and public key (PEM), to check JWTs.
    pub app: Option<(u64, Vec<u8>)>,
    /// Installation tokens handed out.
    pub tokens: Vec<String>,
}

pub struct FakeGitHub {
    pub url: String,
    pub state: Arc<Mutex<GhState>>,
}

impl FakeGitHub {
    pub fn start() -> FakeGitHub {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        FakeGitHub::start_on(l)
    }

    /// Listening in the network namespace `netns` (a daemon's own, where
    /// the host's loopback is out of reach).
    pub fn start_in(netns: &str) -> FakeGitHub {
        let path = format!("/var/run/netns/{netns}");
        let l = std::thread::spawn(move || {
            let f = std::fs::File::open(&path).unwrap();
            nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            std::net::TcpListener::bind("127.0.0.1:0").unwrap()
        })
        .join()
        .unwrap();
        FakeGitHub::start_on(l)
    }

    fn start_on(l: std::net::TcpListener) -> FakeGitHub {
        let state = Arc::new(Mutex::new(GhState {
            page_cap: 2,
            remaining: 5000,
            next_id: 1000,
            ..Default::default()
        }));
        l.set_nonblocking(true).unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let st = state.clone();
        let base = url.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let app = Router::new()
                    .route("/repos/{o}/{r}/pulls/{n}", get(pull))
                    .route("/repos/{o}/{r}/issues/{n}/events", get(events))
                    .route(
                        "/repos/{o}/{r}/collaborators/{u}/permission",
                        get(permission),
                    )
                    .route("/repos/{o}/{r}/activity", get(activity))
                    .route("/repos/{o}/{r}/check-runs", post(create_check_run))
                    .route(
                        "/repos/{o}/{r}/check-runs/{id}",
                        axum::routing::patch(update_check_run),
                    )
                    .route(
                        "/repos/{o}/{r}/commits/{sha}/check-runs",
                        get(list_check_runs),
                    )
                    .route(
                        "/app/installations/{id}/access_tokens",
                        post(installation_token),
                    )
                    .with_state((st, base));
                let l = tokio::net::TcpListener::from_std(l).unwrap();
                axum::serve(l, app).await.unwrap();
            });
        });
        FakeGitHub { url, state }
    }

    /// PR `n` with head `sha` and these labels.
    pub fn set_pull(&self, n: u64, sha: &str, labels: &[&str]) {
        let mut p = fixture("pull.json");
        let label = p["labels"][0].clone();
        p["number"] = json!(n);
        p["head"]["sha"] = json!(sha);
        // One head branch per PR in the fork (see `push_activity`).
        p["head"]["ref"] = json!(format!("pr-{n}"));
        p["labels"] = Value::Array(
            labels
                .iter()
                .map(|l| {
                    let mut o = label.clone();
                    o["name"] = json!(l);
                    o
                })
                .collect(),
        );
        self.state.lock().unwrap().pulls.insert(n, p);
    }

    /// Append an issue event: `labeled`/`unlabeled` (of `label`),
    /// `head_ref_force_pushed` (to `commit`), or any other kind (shaped like
    /// the `referenced` fixture, with `event` set to `kind`).
    pub fn event(&self, n: u64, kind: &str, actor: &str, at: i64, label_or_commit: &str) {
        let file = match kind {
            "labeled" | "unlabeled" | "head_ref_force_pushed" => format!("issue-event-{kind}.json"),
            _ => "issue-event-other.json".to_string(),
        };
        let mut e = fixture(&file);
        let mut st = self.state.lock().unwrap();
        st.next_id += 1;
        e["id"] = json!(st.next_id);
        e["actor"]["login"] = json!(actor);
        e["created_at"] = json!(iso(at));
        e["event"] = json!(kind);
        match kind {
            "labeled" | "unlabeled" => e["label"]["name"] = json!(label_or_commit),
            "head_ref_force_pushed" => e["commit_id"] = json!(label_or_commit),
            _ => {}
        }
        st.events.entry(n).or_default().push(e);
    }

    /// Record an ordinary push (repository activity) that made `sha` the
    /// tip of PR `n`'s head branch in the fork at `at`.
    pub fn push_activity(&self, n: u64, sha: &str, at: i64) {
        let fork = fixture("pull.json")["head"]["repo"]["full_name"]
            .as_str()
            .unwrap()
            .to_owned();
        let mut a = fixture("repository-activity.json")[0].clone();
        let git_ref = format!("refs/heads/pr-{n}");
        let mut st = self.state.lock().unwrap();
        st.next_id += 1;
        a["id"] = json!(st.next_id);
        a["after"] = json!(sha);
        a["ref"] = json!(git_ref);
        a["timestamp"] = json!(iso(at));
        st.activity.entry((fork, git_ref)).or_default().insert(0, a);
    }

    pub fn set_permission(&self, login: &str, perm: &str) {
        self.state
            .lock()
            .unwrap()
            .perms
            .insert(login.into(), perm.into());
    }

    /// PR `n` was opened by `login`.
    pub fn set_author(&self, n: u64, login: &str) {
        let mut s = self.state.lock().unwrap();
        let p = s.pulls.get_mut(&n).expect("set_pull first");
        p["user"]["login"] = json!(login);
    }

    /// Be GitHub for an App: `app_id`, whose JWTs verify with `public_pem`.
    pub fn set_app(&self, app_id: u64, public_pem: Vec<u8>) {
        self.state.lock().unwrap().app = Some((app_id, public_pem));
    }

    /// The check runs on `head`, oldest first.
    pub fn check_runs_on(&self, head: &str) -> Vec<Value> {
        self.state
            .lock()
            .unwrap()
            .check_runs
            .values()
            .filter(|r| r["head_sha"] == head)
            .cloned()
            .collect()
    }

    pub fn with<T>(&self, f: impl FnOnce(&mut GhState) -> T) -> T {
        f(&mut self.state.lock().unwrap())
    }
}

type St = (Arc<Mutex<GhState>>, String);

fn etag_of(body: &[u8]) -> String {
    use sha2::Digest;
    format!("W/\"{}\"", hex(&sha2::Sha256::digest(body)[..16]))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn respond(st: &Arc<Mutex<GhState>>, h: &HeaderMap, body: Value, link: Option<String>) -> Response {
    let body = serde_json::to_vec_pretty(&body).unwrap();
    let etag = etag_of(&body);
    let mut s = st.lock().unwrap();
    s.requests += 1;
    s.auth.push(
        h.get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    );
    let reset = (now() + 3600).to_string();
    let conditional = h.get("if-none-match").and_then(|v| v.to_str().ok()) == Some(&etag);
    if !conditional {
        s.remaining = (s.remaining - 1).max(0);
    } else {
        s.not_modified += 1;
    }
    let remaining = s.remaining.to_string();
    let used = (5000 - s.remaining).to_string();
    drop(s);
    let mut hdrs = vec![
        ("etag".to_string(), etag.clone()),
        ("x-ratelimit-limit".into(), "5000".into()),
        ("x-ratelimit-remaining".into(), remaining),
        ("x-ratelimit-used".into(), used),
        ("x-ratelimit-reset".into(), reset),
        ("x-ratelimit-resource".into(), "core".into()),
        (
            "content-type".into(),
            "application/json; charset=utf-8".into(),
        ),
    ];
    if let Some(l) = link {
        hdrs.push(("link".into(), l));
    }
    let mut r = if conditional {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (StatusCode::OK, body).into_response()
    };
    for (k, v) in hdrs {
        r.headers_mut().insert(
            axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    r
}

fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        r#"{"message":"Not Found","documentation_url":"https://docs.github.com/rest","status":"404"}"#,
    )
        .into_response()
}

async fn pull(
    State((st, _)): State<St>,
    UrlPath((_o, _r, n)): UrlPath<(String, String, u64)>,
    h: HeaderMap,
) -> Response {
    let p = {
        let mut s = st.lock().unwrap();
        *s.pull_gets.entry(n).or_default() += 1;
        s.pulls.get(&n).cloned()
    };
    match p {
        Some(p) => respond(&st, &h, p, None),
        None => not_found(),
    }
}

async fn events(
    State((st, base)): State<St>,
    UrlPath((o, r, n)): UrlPath<(String, String, u64)>,
    Query(q): Query<HashMap<String, String>>,
    h: HeaderMap,
) -> Response {
    let (all, cap) = {
        let s = st.lock().unwrap();
        (s.events.get(&n).cloned().unwrap_or_default(), s.page_cap)
    };
    let per: usize = q
        .get("per_page")
        .and_then(|v| v.parse().ok())
        .unwrap_or(30)
        .min(cap);
    let page: usize = q
        .get("page")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .max(1);
    let pages = all.len().div_ceil(per).max(1);
    let chunk: Vec<Value> = all
        .iter()
        .skip((page - 1) * per)
        .take(per)
        .cloned()
        .collect();
    let u = |k: usize| format!("{base}/repos/{o}/{r}/issues/{n}/events?per_page={per}&page={k}");
    let mut links = vec![];
    if page < pages {
        links.push(format!("<{}>; rel=\"next\"", u(page + 1)));
        links.push(format!("<{}>; rel=\"last\"", u(pages)));
    }
    if page > 1 {
        links.push(format!("<{}>; rel=\"first\"", u(1)));
        links.push(format!("<{}>; rel=\"prev\"", u(page - 1)));
    }
    {
        let mut s = st.lock().unwrap();
        s.event_pages_served += 1;
        if page > 1 {
            s.later_pages_served += 1;
        }
    }
    let link = (!links.is_empty()).then(|| links.join(", "));
    respond(&st, &h, Value::Array(chunk), link)
}

async fn activity(
    State((st, _)): State<St>,
    UrlPath((o, r)): UrlPath<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    h: HeaderMap,
) -> Response {
    let key = (
        format!("{o}/{r}"),
        q.get("ref").cloned().unwrap_or_default(),
    );
    let list = st
        .lock()
        .unwrap()
        .activity
        .get(&key)
        .cloned()
        .unwrap_or_default();
    respond(&st, &h, Value::Array(list), None)
}

async fn permission(
    State((st, _)): State<St>,
    UrlPath((_o, _r, u)): UrlPath<(String, String, String)>,
    h: HeaderMap,
) -> Response {
    let perm = st.lock().unwrap().perms.get(&u).cloned();
    let Some(perm) = perm else {
        return not_found();
    };
    let file = if perm == "read" {
        "collaborator-permission-read.json"
    } else {
        "collaborator-permission-write.json"
    };
    let mut v = fixture(file);
    v["permission"] = json!(perm);
    v["user"]["login"] = json!(u);
    respond(&st, &h, v, None)
}

/// A minimal HTTP/1.1 client: (status, headers lower-cased, body).
pub fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, HashMap<String, String>, Vec<u8>) {
    let addr = addr.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("header end");
    let head = String::from_utf8_lossy(&buf[..split]).into_owned();
    let mut raw = buf[split + 4..].to_vec();
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .expect("status");
    let hs: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    if hs.get("transfer-encoding").map(String::as_str) == Some("chunked") {
        raw = dechunk(&raw);
    }
    (status, hs, raw)
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(i) = b.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let n = usize::from_str_radix(String::from_utf8_lossy(&b[..i]).trim(), 16).unwrap_or(0);
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&b[i + 2..i + 2 + n]);
        b = &b[i + 2 + n + 2..];
    }
}

/// A `pull_request` webhook body (GitHub's shape) for `action`.
pub fn webhook_body(
    action: &str,
    repo: &str,
    n: u64,
    head: &str,
    updated_at: i64,
    label: &str,
) -> Vec<u8> {
    let file = match action {
        "labeled" | "unlabeled" => format!("webhook-pull_request-{action}.json"),
        _ => "webhook-pull_request-synchronize.json".to_string(),
    };
    let mut v = fixture(&file);
    v["action"] = json!(action);
    v["number"] = json!(n);
    v["pull_request"]["number"] = json!(n);
    v["pull_request"]["head"]["sha"] = json!(head);
    v["pull_request"]["updated_at"] = json!(iso(updated_at));
    v["repository"]["full_name"] = json!(repo);
    if action == "synchronize" {
        v["after"] = json!(head);
    }
    if v.get("label").is_some() {
        v["label"]["name"] = json!(label);
    }
    serde_json::to_vec(&v).unwrap()
}

/// Deliver a webhook; `secret` None sends a signature made with a wrong key.
pub fn deliver(addr: &str, secret: Option<&[u8]>, event: &str, body: &[u8]) -> u16 {
    let sig = airlock::release::webhook::sign(secret.unwrap_or(b"not-the-secret"), body);
    let delivery = uuid::Uuid::new_v4().to_string();
    http(
        addr,
        "POST",
        "/github-webhook",
        &[
            ("X-GitHub-Event", event),
            ("X-GitHub-Delivery", &delivery),
            ("X-Hub-Signature-256", &sig),
            ("Content-Type", "application/json"),
            ("User-Agent", "GitHub-Hookshot/test"),
        ],
        body,
    )
    .0
}

/// `nix-store --generate-binary-cache-key NAME` into `dir`: (secret file, public key).
pub fn gen_key(dir: &Path, name: &str) -> (PathBuf, String) {
    let sk = dir.join(format!("{name}.sec"));
    let pk = dir.join(format!("{name}.pub"));
    // A private store: the host's Nix database is never opened.
    let st = std::process::Command::new("nix-store")
        .arg("--store")
        .arg(dir.join("keygen-store"))
        .arg("--generate-binary-cache-key")
        .arg(name)
        .arg(&sk)
        .arg(&pk)
        .status()
        .unwrap();
    assert!(st.success());
    (sk, std::fs::read_to_string(pk).unwrap().trim().to_owned())
}

/// Substitute `path` from the binary cache at `cache` into a fresh store
/// under `dir` with a real Nix that trusts only `pk` (signatures required).
pub fn nix_substitute(dir: &Path, cache: &str, pk: &str, path: &str) -> std::process::Output {
    let store = dir.join(format!("store-{}", uuid::Uuid::new_v4().simple()));
    std::process::Command::new("nix-store")
        .args(["--store", store.to_str().unwrap(), "-r", path])
        .args(["--option", "substituters", &format!("http://{cache}")])
        .args(["--option", "trusted-public-keys", pk])
        .args(["--option", "require-sigs", "true"])
        .args(["--option", "narinfo-cache-negative-ttl", "0"])
        .env("XDG_CACHE_HOME", dir.join("xdg-cache"))
        .output()
        .unwrap()
}

/// airlockd with release on: its own signing key, a binary cache and a
/// webhook receiver on free 127.0.0.1 ports, GitHub at `gh`.
pub struct ReleaseDaemon {
    pub d: super::Daemon,
    pub cache: String,
    pub hook: String,
    pub secret: Vec<u8>,
    /// The public key (for `trusted-public-keys`).
    pub pk: String,
    /// The signing key's file.
    pub sk: std::path::PathBuf,
    _keys: tempfile::TempDir,
}

impl ReleaseDaemon {
    /// `extra` goes inside the `[github]` table first (keys), then may open
    /// other tables.
    pub fn start(gh: &FakeGitHub, trust: &str, poll_secs: u64, extra: &str) -> ReleaseDaemon {
        Self::start_at(&gh.url, trust, poll_secs, "", extra)
    }

    /// As [`ReleaseDaemon::start`], with GitHub's API at `api_url` and
    /// `release_keys` added to the `[release]` table.
    pub fn start_at(
        api_url: &str,
        trust: &str,
        poll_secs: u64,
        release_keys: &str,
        extra: &str,
    ) -> ReleaseDaemon {
        let keys = tempfile::tempdir().unwrap();
        let (sk, pk) = gen_key(keys.path(), "airlock-test-1");
        let secret = b"webhook secret for tests".to_vec();
        let secret_file = keys.path().join("webhook.secret");
        std::fs::write(&secret_file, &secret).unwrap();
        let cache = format!("127.0.0.1:{}", super::free_port());
        let hook = format!("127.0.0.1:{}", super::free_port());
        // The fake GitHub's label events follow pushes by seconds; the
        // minimum head age (default 300 s) has its own rule tests.
        let cfg = format!(
            "[release]\nmin_head_age_secs = 0\n{release_keys}\n[github]\npoll_interval_secs = {poll_secs}\nwebhook_listen = \"{hook}\"\nwebhook_secret_file = \"{}\"\n{extra}",
            secret_file.display()
        );
        // A signing key needs a VMM user other than root: nobody.
        let d = super::Daemon::builder()
            .host_network()
            .with(|c| c.vm.user = super::VM_USER.into())
            .toml(&cfg)
            .args(&[
                "--trust",
                trust,
                "--signing-key-file",
                sk.to_str().unwrap(),
                "--cache-listen",
                &cache,
                "--github-api-url",
                api_url,
            ])
            .start();
        ReleaseDaemon {
            d,
            cache,
            hook,
            secret,
            pk,
            sk: sk.clone(),
            _keys: keys,
        }
    }

    /// Deliver a correctly signed webhook; returns the HTTP status.
    pub fn deliver(&self, event: &str, body: &[u8]) -> u16 {
        deliver(&self.hook, Some(&self.secret), event, body)
    }
}

/// Put a hand-made quarantined job for `commit` of `repo`#`pr` into the
/// quarantine under `state` (as the runner does after a build). Returns
/// (job id, its one store path).
pub fn craft_job(state: &Path, commit: &str, repo: &str, pr: u64, name: &str) -> (String, String) {
    craft_job_on(state, commit, repo, pr, name, Some("master"))
}

/// As [`craft_job`], merged onto `base` (`None`: a manifest from before the
/// origin was recorded).
pub fn craft_job_on(
    state: &Path,
    commit: &str,
    repo: &str,
    pr: u64,
    name: &str,
    base: Option<&str>,
) -> (String, String) {
    use airlock::quarantine::craft::{entry, stream};
    use airlock::store::nar::build::{nar, Node};
    use sha2::Digest;
    let h = sha2::Sha256::digest(format!("{commit}{name}").as_bytes());
    let path = format!(
        "/nix/store/{}-{name}",
        airlock::store::nix32::encode(&h[..20])
    );
    let data = format!("{name} of {commit}\n");
    let n = nar(&Node::File {
        exec: false,
        data: data.as_bytes(),
    });
    let exp = state.join(format!("export-{}.img", uuid::Uuid::new_v4()));
    std::fs::write(&exp, stream(vec![(entry(&path, &n, &[]), n.clone())])).unwrap();
    let id = uuid::Uuid::new_v4().to_string();
    airlock::quarantine::import(
        &exp,
        &state.join("quarantine"),
        &airlock::quarantine::JobRef {
            job_id: &id,
            commit,
            repo,
            pr,
            origin: base.map(airlock::quarantine::Origin::test),
            upstream: &Default::default(),
        },
        &airlock::quarantine::Limits {
            max_nar_bytes: 1 << 20,
            max_paths: 10,
            max_total_bytes: 0,
        },
    )
    .unwrap();
    std::fs::remove_file(&exp).unwrap();
    (id, path)
}

/// A GitHub App's key pair for the tests: (private key file, public key
/// PEM), made by openssl as GitHub hands them out (PKCS#1).
pub fn app_key(dir: &Path) -> (PathBuf, Vec<u8>) {
    let key = dir.join("app-key.pem");
    let ok = std::process::Command::new("openssl")
        .args(["genrsa", "-traditional", "-out"])
        .arg(&key)
        .arg("2048")
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap()
        .success();
    assert!(ok, "openssl genrsa");
    let out = std::process::Command::new("openssl")
        .args(["rsa", "-pubout", "-in"])
        .arg(&key)
        .stderr(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "openssl rsa -pubout");
    (key, out.stdout)
}

fn refuse(st: &Arc<Mutex<GhState>>, code: StatusCode, why: String) -> Response {
    st.lock()
        .unwrap()
        .refused
        .push((code.as_u16(), why.clone()));
    (
        code,
        json!({"message": why, "documentation_url": "https://docs.github.com/rest/checks/runs"})
            .to_string(),
    )
        .into_response()
}

/// Only an App's installation token may write checks.
fn check_auth(st: &Arc<Mutex<GhState>>, h: &HeaderMap) -> Result<(), Box<Response>> {
    let auth = h
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let token = auth
        .strip_prefix("Bearer ")
        .or_else(|| auth.strip_prefix("token "))
        .unwrap_or_default();
    let known = st.lock().unwrap().tokens.iter().any(|t| t == token);
    if known {
        Ok(())
    } else {
        Err(Box::new(refuse(
            st,
            StatusCode::FORBIDDEN,
            format!("Resource not accessible by personal access token (authorization: {auth:?})"),
        )))
    }
}

const STATUSES: &[&str] = &["queued", "in_progress", "completed"];
const CONCLUSIONS: &[&str] = &[
    "action_required",
    "cancelled",
    "failure",
    "neutral",
    "success",
    "skipped",
    "timed_out",
];

/// The documented request shape (create: `name` and `head_sha` required).
fn check_body(b: &Value, create: bool) -> Result<(), String> {
    let o = b.as_object().ok_or("the body is not an object")?;
    let known = [
        "name",
        "head_sha",
        "details_url",
        "external_id",
        "status",
        "started_at",
        "conclusion",
        "completed_at",
        "output",
        "actions",
    ];
    if let Some(k) = o.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(format!("{k} is not a check run field"));
    }
    if create {
        if !b["name"].is_string() {
            return Err("name is required".into());
        }
        let sha = b["head_sha"].as_str().ok_or("head_sha is required")?;
        if sha.len() != 40 || !sha.bytes().all(|c| c.is_ascii_hexdigit()) {
            return Err(format!("head_sha {sha:?} is not a commit"));
        }
    }
    if let Some(s) = o.get("status") {
        if !STATUSES.contains(&s.as_str().unwrap_or("")) {
            return Err(format!("status {s} is not one of {STATUSES:?}"));
        }
    }
    if let Some(c) = o.get("conclusion") {
        if !CONCLUSIONS.contains(&c.as_str().unwrap_or("")) {
            return Err(format!("conclusion {c} is not one of {CONCLUSIONS:?}"));
        }
    }
    if (b["status"] == "completed" || o.contains_key("completed_at"))
        && !o.contains_key("conclusion")
    {
        return Err("conclusion is required with completed_at or status completed".into());
    }
    for k in ["started_at", "completed_at"] {
        if let Some(t) = o.get(k) {
            let t = t.as_str().unwrap_or("");
            if chrono::DateTime::parse_from_rfc3339(t).is_err() || !t.ends_with('Z') {
                return Err(format!("{k} {t:?} is not YYYY-MM-DDTHH:MM:SSZ"));
            }
        }
    }
    if let Some(out) = o.get("output") {
        if !out["title"].is_string() || !out["summary"].is_string() {
            return Err("output needs title and summary".into());
        }
        for k in ["summary", "text"] {
            if let Some(t) = out[k].as_str() {
                if t.chars().count() > 65_535 {
                    return Err(format!("output.{k} is longer than 65535 characters"));
                }
            }
        }
    }
    Ok(())
}

/// A check run as GitHub returns it: the fixture with the run's values.
fn apply(run: &mut Value, b: &Value) {
    for k in [
        "name",
        "head_sha",
        "details_url",
        "external_id",
        "status",
        "started_at",
        "conclusion",
        "completed_at",
    ] {
        if let Some(v) = b.get(k) {
            run[k] = v.clone();
        }
    }
    if b.get("conclusion").is_some() {
        run["status"] = json!("completed");
    }
    if let Some(o) = b.get("output") {
        for k in ["title", "summary", "text"] {
            if let Some(v) = o.get(k) {
                run["output"][k] = v.clone();
            }
        }
    }
}

/// A check-run write's body, once the caller may write checks and the
/// body has the documented shape (`create`: `name` and `head_sha` too).
fn write_body(
    st: &Arc<Mutex<GhState>>,
    h: &HeaderMap,
    body: &[u8],
    create: bool,
) -> Result<Value, Box<Response>> {
    check_auth(st, h)?;
    let b: Value = serde_json::from_slice(body).map_err(|e| {
        Box::new(refuse(
            st,
            StatusCode::BAD_REQUEST,
            format!("Problems parsing JSON: {e}"),
        ))
    })?;
    check_body(&b, create)
        .map_err(|why| Box::new(refuse(st, StatusCode::UNPROCESSABLE_ENTITY, why)))?;
    Ok(b)
}

/// The next id the stand-in hands out (events, check runs, tokens).
fn next_id(st: &Arc<Mutex<GhState>>) -> u64 {
    let mut s = st.lock().unwrap();
    s.next_id += 1;
    s.next_id
}

async fn create_check_run(
    State((st, base)): State<St>,
    UrlPath((o, r)): UrlPath<(String, String)>,
    h: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let b = match write_body(&st, &h, &body, true) {
        Ok(b) => b,
        Err(resp) => return *resp,
    };
    let mut run = fixture("check-run.json");
    let id = next_id(&st);
    run["id"] = json!(id);
    run["url"] = json!(format!("{base}/repos/{o}/{r}/check-runs/{id}"));
    run["html_url"] = json!(format!("https://github.com/{o}/{r}/runs/{id}"));
    run["status"] = json!("queued");
    for k in ["details_url", "external_id"] {
        run[k] = json!(null);
    }
    apply(&mut run, &b);
    let mut s = st.lock().unwrap();
    s.check_writes.push(("POST".into(), id, b));
    s.check_runs.insert(id, run.clone());
    drop(s);
    (StatusCode::CREATED, run.to_string()).into_response()
}

async fn update_check_run(
    State((st, _)): State<St>,
    UrlPath((_o, _r, id)): UrlPath<(String, String, u64)>,
    h: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let b = match write_body(&st, &h, &body, false) {
        Ok(b) => b,
        Err(resp) => return *resp,
    };
    let mut s = st.lock().unwrap();
    let Some(run) = s.check_runs.get_mut(&id) else {
        drop(s);
        return not_found();
    };
    // A completed run is not reopened (how GitHub is seen to behave; not
    // spelled out in its documentation).
    if run["status"] == "completed" && b.get("status").is_some_and(|x| x != "completed") {
        drop(s);
        return refuse(
            &st,
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("check run {id} is completed and cannot be reopened"),
        );
    }
    apply(run, &b);
    let run = run.clone();
    s.check_writes.push(("PATCH".into(), id, b));
    drop(s);
    (StatusCode::OK, run.to_string()).into_response()
}

async fn list_check_runs(
    State((st, _)): State<St>,
    UrlPath((_o, _r, sha)): UrlPath<(String, String, String)>,
    Query(q): Query<HashMap<String, String>>,
    h: HeaderMap,
) -> Response {
    let runs: Vec<Value> = st
        .lock()
        .unwrap()
        .check_runs
        .values()
        .filter(|r| r["head_sha"] == sha.as_str())
        .filter(|r| q.get("check_name").is_none_or(|n| r["name"] == n.as_str()))
        .cloned()
        .collect();
    let mut list = fixture("check-runs-list.json");
    list["total_count"] = json!(runs.len());
    list["check_runs"] = Value::Array(runs);
    respond(&st, &h, list, None)
}

/// The App's JWT checked as GitHub documents it: RS256, `iss` the App's
/// id, at most 10 minutes from `iat` to `exp`.
async fn installation_token(
    State((st, _)): State<St>,
    UrlPath(_id): UrlPath<u64>,
    h: HeaderMap,
) -> Response {
    use octocrab::jsonwebtoken::{decode, Algorithm, DecodingKey, Validation};
    let Some((app_id, public)) = st.lock().unwrap().app.clone() else {
        return not_found();
    };
    let jwt = h
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_owned();
    let key = DecodingKey::from_rsa_pem(&public).unwrap();
    let mut v = Validation::new(Algorithm::RS256);
    v.set_required_spec_claims(&["exp"]);
    let claims = match decode::<Value>(&jwt, &key, &v) {
        Ok(d) => d.claims,
        Err(e) => {
            return refuse(
                &st,
                StatusCode::UNAUTHORIZED,
                format!("A JSON web token could not be decoded: {e}"),
            )
        }
    };
    // `iss`: the App's id (a number, or its text).
    let iss_ok = claims["iss"].as_u64() == Some(app_id)
        || claims["iss"].as_str() == Some(app_id.to_string().as_str());
    if !iss_ok {
        return refuse(
            &st,
            StatusCode::UNAUTHORIZED,
            format!("'Issuer' claim ('iss') {} is not this App", claims["iss"]),
        );
    }
    let (iat, exp) = (
        claims["iat"].as_i64().unwrap_or(0),
        claims["exp"].as_i64().unwrap_or(0),
    );
    if exp - iat > 660 {
        return refuse(
            &st,
            StatusCode::UNAUTHORIZED,
            "'Expiration time' claim ('exp') is too far in the future".into(),
        );
    }
    let mut t = fixture("installation-token.json");
    let token = format!("ghs_airlockTest{}{}", next_id(&st), "x".repeat(40));
    st.lock().unwrap().tokens.push(token.clone());
    t["token"] = json!(token);
    t["expires_at"] = json!(iso(now() + 3600));
    (StatusCode::CREATED, t.to_string()).into_response()
}
