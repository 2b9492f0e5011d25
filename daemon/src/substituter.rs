//! The host-side substituter: one caching proxy between every job VM and the
//! configured upstream binary caches (`nix.substituters`).
//!
//! - A job's fetch VM gets it as its only substituter, on its own link's host
//!   address ([`Substituter::serve_job`]): the egress policy lets the guest
//!   reach exactly that port, and only the guest of that link can.
//! - Only `GET /nix-cache-info`, `GET /<hash>.narinfo` and
//!   `GET /nar/<hash>.nar[.<ext>]` exist; a guest cannot name an upstream or
//!   a URL, so this is not an open proxy, and nothing a guest sends is stored.
//! - Every narinfo is parsed strictly and must carry a signature by one of
//!   `nix.trusted_public_keys` before it is stored or served; a refused one
//!   is logged with the reason and counted for the job.
//! - NARs are kept on disk exactly as upstream compressed them, checked
//!   against the narinfo's `FileSize`/`FileHash`, under a size bound with
//!   least-recently-used eviction. Concurrent requests for the same narinfo
//!   or NAR share one upstream download; misses are remembered briefly.
//! - Shared state is bounded against a hostile guest (issue 27): a lookup
//!   or download runs in a task of its own, so a guest that hangs up
//!   mid-download neither leaves a partial file nor a stuck download behind
//!   for later jobs; downloads in flight reserve their size under the same
//!   bound as the NARs on disk (so the directory never holds more than
//!   `max_bytes`, or one NAR if that alone is larger); a NAR is opened
//!   under the LRU's lock, so it cannot be evicted between download and
//!   serving; the miss map, the narinfos in memory and `narinfo/` on disk
//!   are capped; an oversized narinfo is a refusal of that path, not a
//!   failure of the upstream.
//! - Nix in the guest checks the signature and the NAR hash again.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use futures_lite::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::sync::OnceCell;
use tracing::{info, warn, Instrument};

use crate::store::narinfo::NarInfo;
use crate::store::{nix32, signing};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("substituter directory {0}")]
    Dir(PathBuf, #[source] std::io::Error),
    #[error("nix.substituters entry {0:?} is not an http:// or https:// URL")]
    BadUpstream(String),
    #[error(
        "nix.trusted_public_keys entry {0:?} is not a Nix public key (name:base64 of 32 bytes)"
    )]
    BadKey(String),
    #[error("cannot listen on {0} for a job")]
    Bind(SocketAddr, #[source] std::io::Error),
    #[error("cannot set up the HTTPS client")]
    Tls(#[source] std::io::Error),
}
pub type Result<T> = std::result::Result<T, Error>;

/// What an upstream fetch can fail with (a missing file is `Ok(None)`).
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{url}: {why}")]
    Failed { url: String, why: String },
    #[error("{url}: more than {limit} bytes")]
    TooLarge { url: String, limit: u64 },
}

/// A body streamed from an upstream.
pub type ByteStream = Pin<Box<dyn Stream<Item = std::result::Result<Bytes, String>> + Send>>;

/// What [`Fetch::get`] returns.
pub type FetchFuture = Pin<
    Box<
        dyn std::future::Future<Output = std::result::Result<Option<ByteStream>, FetchError>>
            + Send,
    >,
>;

/// The only way the substituter reaches the outside world: `GET url`.
/// `Ok(None)` for 404/403 (a cache answers 403 for what it lacks on S3).
pub trait Fetch: Send + Sync + 'static {
    fn get(&self, url: String) -> FetchFuture;
}

/// Settings, from `[nix]` and `[substituter]` in the config.
#[derive(Debug, Clone)]
pub struct Settings {
    pub upstreams: Vec<String>,
    pub trusted_public_keys: Vec<String>,
    pub dir: PathBuf,
    /// Bound on the NARs kept on disk (the narinfos are small and kept).
    pub max_bytes: u64,
    /// How long a miss (no upstream has the path) is remembered.
    pub negative_ttl: Duration,
    /// Largest NAR file fetched when the narinfo gives no `FileSize`.
    pub max_nar_bytes: u64,
}

pub use crate::job::JobStats;

const MAX_REFUSALS_KEPT: usize = 20;
const MAX_NARINFO_BYTES: u64 = 64 << 10;
/// Misses remembered at most (expired ones go first, then all).
const MAX_MISSES: usize = 10_000;
/// Verified narinfos kept in memory at most (the rest reload from disk).
const MAX_NARINFOS_IN_MEMORY: usize = 10_000;
/// Narinfo files kept on disk at most; past it the oldest tenth goes.
const MAX_NARINFO_FILES: usize = 200_000;

/// The proxy's lifetime counters (all jobs), for the log and benchmarks.
#[derive(Debug, Default)]
pub struct Totals {
    pub bytes_upstream: AtomicU64,
    pub bytes_served: AtomicU64,
    pub nar_downloads: AtomicU64,
    pub evictions: AtomicU64,
    /// The most bytes the cache directory was committed to at once: NARs on
    /// disk plus downloads in flight (their reserved size).
    pub peak_bytes: AtomicU64,
}

/// A narinfo that passed every check, and where its NAR comes from.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    /// The upstream base URL it came from.
    upstream: String,
    /// The narinfo text as upstream served it (signatures included).
    narinfo: String,
}

#[derive(Debug, Clone)]
struct Parsed {
    store_path: String,
    /// The upstream base URL the narinfo came from.
    upstream: String,
    /// Upstream's `URL:`, relative to `upstream`.
    nar_url: String,
    /// `<hash>.nar[.<ext>]`: the name in our `nar/` and in what we serve.
    file: String,
    file_size: Option<u64>,
    file_hash: Option<String>,
    /// The narinfo as served to guests: `URL:` points into our `nar/`.
    served: String,
}

type Flight<T> = Arc<OnceCell<std::result::Result<T, String>>>;

/// Run `work` once for `key` however many requests ask for it at the same
/// time: the result, and whether this request was the one that ran it.
async fn single_flight<T: Clone>(
    flights: &Mutex<HashMap<String, Flight<T>>>,
    key: &str,
    work: impl std::future::Future<Output = std::result::Result<T, String>>,
) -> (std::result::Result<T, String>, bool) {
    let (cell, leader) = {
        let mut f = flights.lock().expect("lock");
        match f.get(key) {
            Some(c) => (c.clone(), false),
            None => {
                let c: Flight<T> = Arc::default();
                f.insert(key.to_owned(), c.clone());
                (c, true)
            }
        }
    };
    // The leader's entry goes when it is done, also if its future is
    // dropped mid-way (else every later request would wait on a cell
    // nobody fills, or read a stale result, for good).
    struct Done<'a, T> {
        flights: &'a Mutex<HashMap<String, Flight<T>>>,
        key: &'a str,
        leader: bool,
    }
    impl<T> Drop for Done<'_, T> {
        fn drop(&mut self) {
            if self.leader {
                self.flights.lock().expect("lock").remove(self.key);
            }
        }
    }
    let _done = Done {
        flights,
        key,
        leader,
    };
    let res = cell.get_or_init(|| work).await.clone();
    (res, leader)
}

/// A download's temporary file: removed unless it was moved into place.
struct TmpFile(PathBuf);
impl Drop for TmpFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

struct Inner {
    s: Settings,
    fetch: Arc<dyn Fetch>,
    narinfos: Mutex<HashMap<String, Arc<Parsed>>>,
    misses: Mutex<HashMap<String, Instant>>,
    lru: Mutex<Lru>,
    info_flights: Mutex<HashMap<String, Flight<Lookup>>>,
    nar_flights: Mutex<HashMap<String, Flight<u64>>>,
    /// Upstreams that failed (not a 404) and are skipped until then.
    down: Mutex<HashMap<String, Instant>>,
    /// Woken when a download's reservation is given back.
    room: tokio::sync::Notify,
    totals: Totals,
    /// Narinfo files written since `narinfo/` was last pruned.
    narinfo_writes: AtomicU64,
}

/// How long an upstream that could not be reached is treated as having
/// nothing (so a builder without internet does not wait on every path).
const UPSTREAM_BACKOFF: Duration = Duration::from_secs(30);

/// The result of a narinfo lookup, shared by the requests that waited on it.
#[derive(Clone, Default)]
struct Lookup {
    entry: Option<Arc<Parsed>>,
    refusals: Vec<String>,
    upstream_bytes: u64,
}

/// NAR files on disk in least-recently-used order.
#[derive(Default)]
struct Lru {
    tick: u64,
    files: HashMap<String, (u64, u64)>, // name -> (size, last use)
    total: u64,
    /// Bytes reserved by downloads in flight.
    reserved: u64,
    /// Files a request waits to open (downloading or just downloaded):
    /// never evicted until it has.
    pins: HashMap<String, usize>,
}

impl Lru {
    fn touch(&mut self, name: &str) -> bool {
        self.tick += 1;
        let t = self.tick;
        match self.files.get_mut(name) {
            Some(e) => {
                e.1 = t;
                true
            }
            None => false,
        }
    }
    fn insert(&mut self, name: String, size: u64) {
        self.tick += 1;
        if let Some((old, _)) = self.files.insert(name, (size, self.tick)) {
            self.total -= old;
        }
        self.total += size;
    }
    /// The least recently used files to remove so that the files, the
    /// reservations and `extra` more bytes fit under `max`.
    fn evict(&mut self, max: u64, extra: u64) -> Vec<String> {
        let mut out = Vec::new();
        while self.total + self.reserved + extra > max {
            let Some(victim) = self
                .files
                .iter()
                .filter(|(n, _)| !self.pins.contains_key(n.as_str()))
                .min_by_key(|(_, (_, t))| *t)
                .map(|(n, _)| n.clone())
            else {
                break;
            };
            if let Some((size, _)) = self.files.remove(&victim) {
                self.total -= size;
            }
            out.push(victim);
        }
        out
    }
    /// Bytes of files on disk that requests are about to open.
    fn pinned_bytes(&self) -> u64 {
        self.pins
            .keys()
            .filter_map(|n| self.files.get(n).map(|(size, _)| *size))
            .sum()
    }
    fn remove(&mut self, name: &str) {
        if let Some((size, _)) = self.files.remove(name) {
            self.total -= size;
        }
    }
}

/// A hash part: 32 characters of Nix's base32.
fn is_hash(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(nix32::is_nix32_char)
}

fn extension(compression: &str) -> Option<&'static str> {
    Some(match compression {
        "none" => "",
        "xz" => ".xz",
        "zstd" => ".zst",
        "bzip2" => ".bz2",
        "br" => ".br",
        "gzip" => ".gz",
        "lz4" => ".lz4",
        _ => return None,
    })
}

/// An upstream `URL:` we are willing to follow: relative, no `..`, plain
/// characters only (so it stays inside the upstream cache).
fn safe_relative_url(u: &str) -> bool {
    !u.is_empty()
        && u.len() <= 256
        && !u.starts_with('/')
        && !u.split('/').any(|p| p.is_empty() || p == "." || p == "..")
        && u.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'/' | b'-' | b'_' | b'+'))
}

impl Settings {
    /// From `[nix]` and `[substituter]`; `None` when the proxy is off
    /// (no fetch-phase network, or no upstream).
    pub fn from_config(cfg: &crate::config::Config) -> Option<Settings> {
        cfg.substituter_enabled().then(|| Settings {
            upstreams: cfg.nix.substituters.clone(),
            trusted_public_keys: cfg.nix.trusted_public_keys.clone(),
            dir: cfg.substituter_dir(),
            max_bytes: cfg.substituter.max_bytes,
            negative_ttl: Duration::from_secs(cfg.substituter.negative_ttl_secs),
            max_nar_bytes: cfg.limits.max_nar_bytes,
        })
    }

    pub fn check(&self) -> Result<()> {
        if let Some(u) = self
            .upstreams
            .iter()
            .find(|u| !crate::config::upstream_url_ok(u))
        {
            return Err(Error::BadUpstream(u.clone()));
        }
        for k in &self.trusted_public_keys {
            signing::check_public(k).map_err(|_| Error::BadKey(k.clone()))?;
        }
        Ok(())
    }
}

/// Check an upstream narinfo for `hash`: strict parse, the right path, a
/// trusted signature, a URL and compression we can serve.
fn verify_narinfo(
    upstream: &str,
    text: &str,
    hash: &str,
    keys: &[String],
) -> std::result::Result<Parsed, String> {
    let ni = NarInfo::parse(text).map_err(|e| format!("malformed narinfo: {e}"))?;
    if ni.signed.store_path.hash_part() != hash {
        return Err(format!(
            "narinfo for {hash} describes {}",
            ni.signed.store_path
        ));
    }
    let signed_by = ni.sigs.iter().find_map(|sig| {
        keys.iter()
            .find(|k| signing::verify(k, &ni.signed, sig).unwrap_or(false))
            .map(|k| k.split(':').next().unwrap_or_default().to_owned())
    });
    if signed_by.is_none() {
        let names: Vec<&str> = ni
            .sigs
            .iter()
            .map(|s| s.split(':').next().unwrap_or_default())
            .collect();
        return Err(if names.is_empty() {
            "unsigned narinfo".into()
        } else {
            format!(
                "no valid signature by a trusted key (signed by {})",
                names.join(", ")
            )
        });
    }
    if !safe_relative_url(&ni.url) {
        return Err(format!(
            "narinfo URL {:?} is not a plain relative path",
            ni.url
        ));
    }
    let ext = extension(&ni.compression)
        .ok_or_else(|| format!("unknown compression {:?}", ni.compression))?;
    let file_hash = if ni.file_hash.is_empty() {
        None
    } else {
        Some(
            nix32::normalize_sha256(&ni.file_hash)
                .ok_or_else(|| format!("FileHash {:?} is not a sha256", ni.file_hash))?,
        )
    };
    let file = format!("{hash}.nar{ext}");
    let served = {
        let mut s = String::new();
        for line in text.split('\n').filter(|l| !l.is_empty()) {
            if line.starts_with("URL: ") {
                s.push_str(&format!("URL: nar/{file}\n"));
            } else {
                s.push_str(line);
                s.push('\n');
            }
        }
        s
    };
    Ok(Parsed {
        store_path: ni.signed.store_path.to_string(),
        upstream: upstream.to_owned(),
        nar_url: ni.url,
        file,
        file_size: (ni.file_size > 0).then_some(ni.file_size),
        file_hash,
        served,
    })
}

/// Read a whole (small) body, refusing more than `limit` bytes.
async fn read_limited(
    mut s: ByteStream,
    url: &str,
    limit: u64,
) -> std::result::Result<Vec<u8>, FetchError> {
    let mut out = Vec::new();
    while let Some(chunk) = s.next().await {
        let chunk = chunk.map_err(|why| FetchError::Failed {
            url: url.into(),
            why,
        })?;
        if (out.len() + chunk.len()) as u64 > limit {
            return Err(FetchError::TooLarge {
                url: url.into(),
                limit,
            });
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

#[derive(Clone)]
pub struct Substituter {
    inner: Arc<Inner>,
}

/// One job's view of the substituter: its listener, its counters, and the
/// store paths whose (verified) narinfos it was given.
pub struct JobSession {
    stats: Arc<Mutex<JobStats>>,
    paths: Arc<Mutex<BTreeSet<String>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    pub addr: SocketAddr,
}

impl JobSession {
    /// Stop listening; the job's counters and the store paths it was served.
    pub async fn finish(mut self) -> (JobStats, BTreeSet<String>) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut self.task).await;
        self.task.abort();
        let stats = self.stats.lock().expect("lock").clone();
        let paths = std::mem::take(&mut *self.paths.lock().expect("lock"));
        (stats, paths)
    }
}

#[derive(Clone)]
struct JobState {
    sub: Arc<Inner>,
    stats: Arc<Mutex<JobStats>>,
    paths: Arc<Mutex<BTreeSet<String>>>,
}

impl Substituter {
    /// Open (or create) the cache directory and index the NARs already there,
    /// oldest modification first.
    pub fn open(s: Settings, fetch: Arc<dyn Fetch>) -> Result<Substituter> {
        s.check()?;
        let dir_err = |e| Error::Dir(s.dir.clone(), e);
        for sub in ["narinfo", "nar", "tmp"] {
            std::fs::create_dir_all(s.dir.join(sub)).map_err(dir_err)?;
        }
        // Downloads a previous run did not finish.
        for e in std::fs::read_dir(s.dir.join("tmp"))
            .map_err(dir_err)?
            .flatten()
        {
            let _ = std::fs::remove_file(e.path());
        }
        let mut found: Vec<(SystemTime, String, u64)> = Vec::new();
        for e in std::fs::read_dir(s.dir.join("nar"))
            .map_err(dir_err)?
            .flatten()
        {
            let Ok(md) = e.metadata() else { continue };
            let name = e.file_name().to_string_lossy().into_owned();
            if md.is_file() && name.len() > 32 && name.get(..32).is_some_and(is_hash) {
                found.push((
                    md.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                    name,
                    md.len(),
                ));
            }
        }
        found.sort();
        let mut lru = Lru::default();
        for (_, name, size) in found {
            lru.insert(name, size);
        }
        info!(dir = %s.dir.display(), nars = lru.files.len(), bytes = lru.total, max_bytes = s.max_bytes, upstreams = ?s.upstreams, "substituter ready");
        let sub = Substituter {
            inner: Arc::new(Inner {
                s,
                fetch,
                narinfos: Mutex::new(HashMap::new()),
                misses: Mutex::new(HashMap::new()),
                lru: Mutex::new(lru),
                info_flights: Mutex::new(HashMap::new()),
                nar_flights: Mutex::new(HashMap::new()),
                down: Mutex::new(HashMap::new()),
                room: tokio::sync::Notify::new(),
                totals: Totals::default(),
                narinfo_writes: AtomicU64::new(0),
            }),
        };
        {
            let mut lru = sub.inner.lru.lock().expect("lock");
            sub.inner.evict_locked(&mut lru, 0);
        }
        prune_oldest(&sub.inner.s.dir.join("narinfo"), MAX_NARINFO_FILES);
        Ok(sub)
    }

    pub fn totals(&self) -> &Totals {
        &self.inner.totals
    }

    /// Bytes of NARs on disk now.
    pub fn disk_bytes(&self) -> u64 {
        self.inner.lru.lock().expect("lock").total
    }

    /// Serve one job on `addr` (its link's host address) until
    /// [`JobSession::finish`].
    pub async fn serve_job(&self, addr: SocketAddr) -> Result<JobSession> {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| Error::Bind(addr, e))?;
        let addr = l.local_addr().map_err(|e| Error::Bind(addr, e))?;
        let st = JobState {
            sub: self.inner.clone(),
            stats: Arc::default(),
            paths: Arc::default(),
        };
        let (stats, paths) = (st.stats.clone(), st.paths.clone());
        let router = Router::new()
            .route("/nix-cache-info", get(cache_info))
            .route("/{file}", get(narinfo))
            .route("/nar/{file}", get(nar))
            .with_state(st);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(
            async move {
                let _ = axum::serve(l, router)
                    .with_graceful_shutdown(async {
                        let _ = rx.await;
                    })
                    .await;
            }
            .in_current_span(),
        );
        info!(%addr, "substituter listening for the job");
        Ok(JobSession {
            stats,
            paths,
            stop: Some(tx),
            task,
            addr,
        })
    }
}

async fn cache_info() -> Response {
    (
        [(header::CONTENT_TYPE, "text/x-nix-cache-info")],
        "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 30\n",
    )
        .into_response()
}

fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "not found\n").into_response()
}

async fn narinfo(State(st): State<JobState>, UrlPath(file): UrlPath<String>) -> Response {
    let Some(hash) = file.strip_suffix(".narinfo").filter(|h| is_hash(h)) else {
        return not_found();
    };
    // In a task of its own: a guest that hangs up does not cancel a lookup
    // other requests wait on.
    let (sub, h) = (st.sub.clone(), hash.to_owned());
    let look = match tokio::spawn(async move { sub.lookup(&h).await }.in_current_span()).await {
        Ok(l) => l,
        Err(_) => return (StatusCode::SERVICE_UNAVAILABLE, "try again\n").into_response(),
    };
    let mut stats = st.stats.lock().expect("lock");
    stats.bytes_upstream += look.upstream_bytes;
    for r in look.refusals {
        stats.narinfos_refused += 1;
        if stats.refusals.len() < MAX_REFUSALS_KEPT {
            stats.refusals.push(r);
        }
    }
    match look.entry {
        Some(p) => {
            stats.narinfo_hits += 1;
            st.paths.lock().expect("lock").insert(p.store_path.clone());
            (
                [(header::CONTENT_TYPE, "text/x-nix-narinfo")],
                p.served.clone(),
            )
                .into_response()
        }
        None => {
            stats.narinfo_misses += 1;
            not_found()
        }
    }
}

async fn nar(State(st): State<JobState>, UrlPath(file): UrlPath<String>) -> Response {
    // `get`, not indexing: the name is the guest's, and may not be ASCII.
    let Some(hash) = file.get(..32).filter(|h| file.len() >= 36 && is_hash(h)) else {
        return not_found();
    };
    // Only NARs of narinfos this job was served.
    let entry = match st.sub.cached_entry(hash) {
        Some(e) if e.file == file && st.paths.lock().expect("lock").contains(&e.store_path) => e,
        _ => return not_found(),
    };
    // In a task of its own: a guest that hangs up mid-download does not
    // cancel the download (which other jobs may wait on, and whose partial
    // file would be left behind); it finishes and is cached.
    let sub = st.sub.clone();
    let opened = tokio::spawn(async move { sub.open_nar(&entry).await }.in_current_span()).await;
    let (upstream, f) = match opened {
        Ok(Ok(x)) => x,
        Ok(Err(why)) => {
            warn!(file = %file, %why, "cannot get NAR from upstream");
            return (StatusCode::BAD_GATEWAY, format!("{why}\n")).into_response();
        }
        Err(_) => return (StatusCode::SERVICE_UNAVAILABLE, "try again\n").into_response(),
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let f = tokio::fs::File::from_std(f);
    {
        let mut stats = st.stats.lock().expect("lock");
        stats.nars_served += 1;
        stats.bytes_served += len;
        stats.bytes_upstream += upstream;
    }
    st.sub.totals.bytes_served.fetch_add(len, Ordering::Relaxed);
    let body = Body::from_stream(tokio_util::io::ReaderStream::with_capacity(f, 1 << 20));
    (
        [
            (header::CONTENT_TYPE, "application/x-nix-nar".to_owned()),
            (header::CONTENT_LENGTH, len.to_string()),
        ],
        body,
    )
        .into_response()
}

impl Inner {
    fn narinfo_file(&self, hash: &str) -> PathBuf {
        self.s.dir.join("narinfo").join(format!("{hash}.json"))
    }

    /// A verified narinfo from memory or disk (checked again against the
    /// keys trusted now), without asking upstream.
    fn cached_entry(&self, hash: &str) -> Option<Arc<Parsed>> {
        if let Some(p) = self.narinfos.lock().expect("lock").get(hash) {
            return Some(p.clone());
        }
        let bytes = std::fs::read(self.narinfo_file(hash)).ok()?;
        let e: Entry = serde_json::from_slice(&bytes).ok()?;
        if !self.s.upstreams.contains(&e.upstream) {
            return None;
        }
        let p = Arc::new(
            verify_narinfo(&e.upstream, &e.narinfo, hash, &self.s.trusted_public_keys).ok()?,
        );
        self.remember(hash, p.clone());
        Some(p)
    }

    /// Keep a verified narinfo in memory, at most [`MAX_NARINFOS_IN_MEMORY`]
    /// (past it the map starts again: the files on disk stay).
    fn remember(&self, hash: &str, p: Arc<Parsed>) {
        let mut m = self.narinfos.lock().expect("lock");
        if m.len() >= MAX_NARINFOS_IN_MEMORY {
            m.clear();
        }
        m.insert(hash.to_owned(), p);
    }

    async fn lookup(&self, hash: &str) -> Lookup {
        if let Some(p) = self.cached_entry(hash) {
            return Lookup {
                entry: Some(p),
                ..Lookup::default()
            };
        }
        {
            let mut misses = self.misses.lock().expect("lock");
            match misses.get(hash) {
                Some(t) if t.elapsed() < self.s.negative_ttl => return Lookup::default(),
                Some(_) => {
                    misses.remove(hash);
                }
                None => {}
            }
        }
        let work = async { Ok(self.fetch_narinfo(hash).await) };
        match single_flight(&self.info_flights, hash, work).await {
            (Ok(l), true) => l,
            // Only the request that downloaded counts the bytes.
            (Ok(l), false) => Lookup {
                upstream_bytes: 0,
                ..l
            },
            (Err(_), _) => Lookup::default(),
        }
    }

    async fn fetch_narinfo(&self, hash: &str) -> Lookup {
        let mut out = Lookup::default();
        let mut transient = false;
        for up in &self.s.upstreams {
            if self
                .down
                .lock()
                .expect("lock")
                .get(up)
                .is_some_and(|until| Instant::now() < *until)
            {
                transient = true;
                continue;
            }
            let url = format!("{}/{hash}.narinfo", up.trim_end_matches('/'));
            let body = match self.fetch.get(url.clone()).await {
                Ok(Some(s)) => read_limited(s, &url, MAX_NARINFO_BYTES).await,
                Ok(None) => continue,
                Err(e) => Err(e),
            };
            let body = match body {
                Ok(b) => b,
                // One oversized narinfo is that path's problem, not the
                // upstream's: refused, and the upstream stays up for others.
                Err(FetchError::TooLarge { limit, .. }) => {
                    let why = format!("{url}: refused: larger than {limit} bytes");
                    warn!(%why, "narinfo refused");
                    out.refusals.push(why);
                    continue;
                }
                Err(e) => {
                    warn!(error = %e, upstream = %up, secs = UPSTREAM_BACKOFF.as_secs(), "upstream narinfo fetch failed; the upstream is skipped for a while");
                    self.down
                        .lock()
                        .expect("lock")
                        .insert(up.clone(), Instant::now() + UPSTREAM_BACKOFF);
                    transient = true;
                    continue;
                }
            };
            out.upstream_bytes += body.len() as u64;
            self.totals
                .bytes_upstream
                .fetch_add(body.len() as u64, Ordering::Relaxed);
            let text = String::from_utf8_lossy(&body).into_owned();
            match verify_narinfo(up, &text, hash, &self.s.trusted_public_keys) {
                Ok(p) => {
                    let e = Entry {
                        upstream: up.clone(),
                        narinfo: text,
                    };
                    if let Err(err) = crate::fsutil::write_atomic(
                        &self.narinfo_file(hash),
                        &serde_json::to_vec(&e).expect("serialises"),
                    ) {
                        warn!(error = %err, "cannot store narinfo; serving it from memory");
                    }
                    let writes = self.narinfo_writes.fetch_add(1, Ordering::Relaxed) + 1;
                    if writes >= (MAX_NARINFO_FILES as u64 / 10).max(1) {
                        self.narinfo_writes.store(0, Ordering::Relaxed);
                        prune_oldest(&self.s.dir.join("narinfo"), MAX_NARINFO_FILES);
                    }
                    let p = Arc::new(p);
                    self.remember(hash, p.clone());
                    out.entry = Some(p);
                    return out;
                }
                Err(why) => {
                    let why = format!("{url}: refused: {why}");
                    warn!(%why, "narinfo refused");
                    out.refusals.push(why);
                }
            }
        }
        if !transient {
            let mut misses = self.misses.lock().expect("lock");
            if misses.len() >= MAX_MISSES {
                let ttl = self.s.negative_ttl;
                misses.retain(|_, t| t.elapsed() < ttl);
                if misses.len() >= MAX_MISSES {
                    misses.clear();
                }
            }
            misses.insert(hash.to_owned(), Instant::now());
        }
        out
    }

    /// The NAR file of `p`, opened (downloaded first if it is not on disk),
    /// and the bytes downloaded for this call (0 on a hit or when another
    /// request downloaded it).
    async fn open_nar(
        self: &Arc<Self>,
        p: &Arc<Parsed>,
    ) -> std::result::Result<(u64, std::fs::File), String> {
        if let Some(f) = self.open_cached(&p.file) {
            return Ok((0, f));
        }
        // Pinned until this request has opened it: a download that finishes
        // is not evicted by the next one's reservation before it is served.
        *self
            .lru
            .lock()
            .expect("lock")
            .pins
            .entry(p.file.clone())
            .or_default() += 1;
        struct Pinned<'a>(&'a Inner, &'a str);
        impl Drop for Pinned<'_> {
            fn drop(&mut self) {
                let mut lru = self.0.lru.lock().expect("lock");
                if let Some(n) = lru.pins.get_mut(self.1) {
                    *n -= 1;
                    if *n == 0 {
                        lru.pins.remove(self.1);
                    }
                }
                drop(lru);
                self.0.room.notify_waiters();
            }
        }
        let _pin = Pinned(self, &p.file);
        let (me, pp) = (self.clone(), p.clone());
        let (res, leader) = single_flight(&self.nar_flights, &p.file, async move {
            me.download_nar(&pp).await
        })
        .await;
        let n = res?;
        let f = self.open_cached(&p.file).ok_or_else(|| {
            format!(
                "{}: evicted before it was served (the substituter's max_bytes is too small for the jobs at hand)",
                p.file
            )
        })?;
        Ok((if leader { n } else { 0 }, f))
    }

    /// A NAR on disk, opened under the LRU's lock (so it cannot be evicted
    /// between the check and the open; once open it can be served even if
    /// evicted later) and marked used.
    fn open_cached(&self, name: &str) -> Option<std::fs::File> {
        let mut lru = self.lru.lock().expect("lock");
        if !lru.touch(name) {
            return None;
        }
        let path = self.s.dir.join("nar").join(name);
        match std::fs::File::open(&path) {
            Ok(f) => {
                // Remembered across restarts through the modification time.
                if let Ok(w) = std::fs::File::options().append(true).open(&path) {
                    let _ = w.set_modified(SystemTime::now());
                }
                Some(f)
            }
            Err(_) => {
                lru.remove(name);
                None
            }
        }
    }

    /// Reserve `n` bytes under `max_bytes` for a download, evicting least
    /// recently used NARs, and wait while downloads in flight hold the
    /// room. A NAR larger than the bound alone goes ahead when nothing else
    /// is in flight.
    async fn reserve(&self, n: u64) {
        loop {
            let room = self.room.notified();
            {
                let mut lru = self.lru.lock().expect("lock");
                self.evict_locked(&mut lru, n);
                // Over the bound only for a NAR that alone is larger, when
                // nothing in flight or about to be served can free room.
                let fits = lru.total + lru.reserved + n <= self.s.max_bytes;
                if fits || (lru.reserved == 0 && lru.pinned_bytes() == 0) {
                    lru.reserved += n;
                    self.totals
                        .peak_bytes
                        .fetch_max(lru.total + lru.reserved, Ordering::Relaxed);
                    return;
                }
            }
            room.await;
        }
    }

    async fn download_nar(&self, p: &Parsed) -> std::result::Result<u64, String> {
        let url = format!("{}/{}", p.upstream.trim_end_matches('/'), p.nar_url);
        let limit = p.file_size.unwrap_or(self.s.max_nar_bytes);
        self.reserve(limit).await;
        // Given back however this ends.
        struct Reservation<'a>(&'a Inner, u64);
        impl Drop for Reservation<'_> {
            fn drop(&mut self) {
                self.0.lru.lock().expect("lock").reserved -= self.1;
                self.0.room.notify_waiters();
            }
        }
        let _reserved = Reservation(self, limit);
        let mut stream = self
            .fetch
            .get(url.clone())
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("{url}: not found upstream"))?;
        let tmp = self
            .s
            .dir
            .join("tmp")
            .join(format!("{}.{}", p.file, uuid::Uuid::new_v4()));
        let tmp_file = TmpFile(tmp.clone());
        let result = async {
            let mut f = tokio::fs::File::create(&tmp)
                .await
                .map_err(|e| format!("create {}: {e}", tmp.display()))?;
            let mut h = Sha256::new();
            let mut n = 0u64;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| format!("{url}: {e}"))?;
                n += chunk.len() as u64;
                if n > limit {
                    return Err(format!("{url}: more than the {limit} bytes expected"));
                }
                h.update(&chunk);
                f.write_all(&chunk)
                    .await
                    .map_err(|e| format!("write {}: {e}", tmp.display()))?;
            }
            f.flush().await.map_err(|e| format!("flush: {e}"))?;
            f.sync_all().await.map_err(|e| format!("sync: {e}"))?;
            if let Some(size) = p.file_size {
                if n != size {
                    return Err(format!("{url}: {n} bytes, the narinfo says {size}"));
                }
            }
            if let Some(want) = &p.file_hash {
                let got = format!("sha256:{}", nix32::encode(&h.finalize()));
                if &got != want {
                    return Err(format!("{url}: file hash {got}, the narinfo says {want}"));
                }
            }
            Ok(n)
        }
        .await;
        self.totals
            .bytes_upstream
            .fetch_add(result.as_ref().copied().unwrap_or(0), Ordering::Relaxed);
        let n = result?;
        let dest = self.s.dir.join("nar").join(&p.file);
        let mut lru = self.lru.lock().expect("lock");
        std::fs::rename(&tmp, &dest).map_err(|e| format!("rename into the cache: {e}"))?;
        std::mem::forget(tmp_file);
        self.totals.nar_downloads.fetch_add(1, Ordering::Relaxed);
        lru.insert(p.file.clone(), n);
        Ok(n)
    }

    /// Remove least-recently-used NARs until the NARs, the reservations
    /// and `extra` bytes fit under the bound; with the LRU's lock held, so
    /// no NAR is removed while another request opens it.
    fn evict_locked(&self, lru: &mut Lru, extra: u64) {
        for v in lru.evict(self.s.max_bytes, extra) {
            let _ = std::fs::remove_file(self.s.dir.join("nar").join(&v));
            self.totals.evictions.fetch_add(1, Ordering::Relaxed);
            info!(file = %v, "substituter evicted NAR (least recently used)");
        }
    }
}

/// Keep at most `max` files in `dir`: past it, the oldest (by
/// modification time) go until a tenth of `max` is free.
fn prune_oldest(dir: &std::path::Path, max: usize) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut files: Vec<(SystemTime, PathBuf)> = rd
        .flatten()
        .filter_map(|e| {
            let md = e.metadata().ok()?;
            md.is_file()
                .then(|| (md.modified().unwrap_or(SystemTime::UNIX_EPOCH), e.path()))
        })
        .collect();
    if files.len() <= max {
        return;
    }
    files.sort();
    let remove = files.len() - (max - max / 10);
    for (_, p) in files.into_iter().take(remove) {
        let _ = std::fs::remove_file(p);
    }
    info!(dir = %dir.display(), removed = remove, "pruned the oldest cached narinfos");
}

/// The real upstream client: HTTP/1.1 over rustls with the system's roots;
/// no redirects followed, every request under a timeout.
pub struct HttpFetch {
    client: hyper_util::client::legacy::Client<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        http_body_util::Empty<Bytes>,
    >,
    timeout: Duration,
}

impl HttpFetch {
    pub fn new(timeout: Duration) -> Result<HttpFetch> {
        let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(timeout.min(Duration::from_secs(10))));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()
            .map_err(Error::Tls)?
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build(https);
        Ok(HttpFetch { client, timeout })
    }
}

impl Fetch for HttpFetch {
    fn get(&self, url: String) -> FetchFuture {
        let client = self.client.clone();
        let timeout = self.timeout;
        Box::pin(async move {
            let fail = |why: String| FetchError::Failed {
                url: url.clone(),
                why,
            };
            let uri: http::Uri = url.parse().map_err(|e| fail(format!("{e}")))?;
            let req = http::Request::get(uri)
                .header(
                    header::USER_AGENT,
                    concat!("airlockd/", env!("CARGO_PKG_VERSION")),
                )
                .body(http_body_util::Empty::<Bytes>::new())
                .map_err(|e| fail(e.to_string()))?;
            let resp = tokio::time::timeout(timeout, client.request(req))
                .await
                .map_err(|_| fail(format!("no answer within {}s", timeout.as_secs())))?
                .map_err(|e| fail(crate::error::chain(&e)))?;
            match resp.status() {
                s if s.is_success() => {}
                StatusCode::NOT_FOUND | StatusCode::FORBIDDEN => return Ok(None),
                s => return Err(fail(format!("HTTP {s}"))),
            }
            let body = http_body_util::BodyDataStream::new(resp.into_body());
            // Each chunk under the timeout, so a stalled upstream ends.
            let stream = futures_lite::stream::unfold(body, move |mut b| async move {
                use futures_lite::StreamExt as _;
                match tokio::time::timeout(timeout, b.next()).await {
                    Ok(Some(Ok(c))) => Some((Ok(c), b)),
                    Ok(Some(Err(e))) => Some((Err(e.to_string()), b)),
                    Ok(None) => None,
                    Err(_) => Some((Err("upstream stalled".to_owned()), b)),
                }
            });
            Ok(Some(Box::pin(stream) as ByteStream))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::nar::build::{nar, Node};
    use crate::store::narinfo::Signed;
    use crate::store::signing::SecretKey;
    use crate::store::StorePath;

    // `nix-store --generate-binary-cache-key test-1` (also in signing.rs).
    const SECRET: &str = "test-1:Fh0qvKtNLAP2Js1+EJ19t3nROpqT88Q3Eljtf02C8k5wQZhxnhZXWxrTD8c2u0RXyLmHv/gCxBDduR5e3FbsYg==";
    const PUBLIC: &str = "test-1:cEGYcZ4WV1sa0w/HNrtEV8i5h7/4AsQQ3bkeXtxW7GI=";
    const UP: &str = "http://upstream.test";

    /// The upstream stand-in: files by URL, and how often each was asked for.
    #[derive(Default)]
    struct Mem {
        files: Mutex<HashMap<String, Vec<u8>>>,
        gets: Mutex<HashMap<String, u32>>,
        delay: Duration,
    }
    impl Fetch for Mem {
        fn get(&self, url: String) -> FetchFuture {
            *self.gets.lock().unwrap().entry(url.clone()).or_default() += 1;
            let body = self.files.lock().unwrap().get(&url).cloned();
            let delay = self.delay;
            Box::pin(async move {
                tokio::time::sleep(delay).await;
                Ok(body.map(|b| {
                    Box::pin(futures_lite::stream::once(Ok(Bytes::from(b)))) as ByteStream
                }))
            })
        }
    }
    impl Mem {
        fn gets(&self, suffix: &str) -> u32 {
            self.gets
                .lock()
                .unwrap()
                .iter()
                .filter(|(u, _)| u.ends_with(suffix))
                .map(|(_, n)| n)
                .sum()
        }
        /// Publish a path with `data` as its one file; `key` signs it (or not).
        fn publish(&self, hash: &str, data: &[u8], key: Option<&SecretKey>) -> Vec<u8> {
            let n = nar(&Node::File { exec: false, data });
            let signed = Signed {
                store_path: StorePath::parse(&format!("/nix/store/{hash}-p")).unwrap(),
                nar_hash: format!("sha256:{}", nix32::encode(&Sha256::digest(&n))),
                nar_size: n.len() as u64,
                references: vec![],
            };
            let ni = NarInfo {
                url: format!("nar/{hash}-up.nar"),
                compression: "none".into(),
                file_hash: format!("sha256:{}", nix32::encode(&Sha256::digest(&n))),
                file_size: n.len() as u64,
                deriver: None,
                ca: None,
                sigs: key.map(|k| k.sign(&signed)).into_iter().collect(),
                signed,
            };
            let mut f = self.files.lock().unwrap();
            f.insert(format!("{UP}/{hash}.narinfo"), ni.render().into_bytes());
            f.insert(format!("{UP}/nar/{hash}-up.nar"), n.clone());
            n
        }
    }

    fn settings(dir: &std::path::Path, max_bytes: u64) -> Settings {
        Settings {
            upstreams: vec![UP.into()],
            trusted_public_keys: vec![PUBLIC.into()],
            dir: dir.to_owned(),
            max_bytes,
            negative_ttl: Duration::from_secs(60),
            max_nar_bytes: 1 << 20,
        }
    }

    fn hash(i: u8) -> String {
        nix32::encode(&[i; 20])
    }

    async fn get(addr: SocketAddr, path: &str) -> (u16, Vec<u8>) {
        let f = HttpFetch::new(Duration::from_secs(10)).unwrap();
        let url = format!("http://{addr}{path}");
        match f.get(url.clone()).await.unwrap() {
            None => (404, vec![]),
            Some(s) => match read_limited(s, &url, 1 << 30).await {
                Ok(b) => (200, b),
                Err(_) => (0, vec![]),
            },
        }
    }

    async fn status(addr: SocketAddr, path: &str) -> u16 {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        use tokio::io::AsyncReadExt;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        String::from_utf8_lossy(&out[9..12]).parse().unwrap()
    }

    /// What Nix does for path `i`: its narinfo, then its NAR (returned).
    async fn substitute(addr: SocketAddr, i: u8) -> Vec<u8> {
        assert_eq!(get(addr, &format!("/{}.narinfo", hash(i))).await.0, 200);
        let (code, nar) = get(addr, &format!("/nar/{}.nar", hash(i))).await;
        assert_eq!(code, 200);
        nar
    }

    fn local() -> SocketAddr {
        "127.0.0.1:0".parse().unwrap()
    }

    #[tokio::test]
    async fn serves_signed_paths_refuses_others_and_downloads_once() {
        let dir = tempfile::tempdir().unwrap();
        let up = Arc::new(Mem::default());
        let key = SecretKey::parse(SECRET).unwrap();
        let other = SecretKey::parse("evil-1:Fh0qvKtNLAP2Js1+EJ19t3nROpqT88Q3Eljtf02C8k5wQZhxnhZXWxrTD8c2u0RXyLmHv/gCxBDduR5e3FbsYg==").unwrap();
        let good = up.publish(&hash(1), b"good", Some(&key));
        up.publish(&hash(2), b"unsigned", None);
        up.publish(&hash(3), b"wrong key", Some(&other));
        let sub = Substituter::open(settings(dir.path(), 1 << 30), up.clone()).unwrap();

        let job = sub.serve_job(local()).await.unwrap();
        let (code, info) = get(job.addr, &format!("/{}.narinfo", hash(1))).await;
        assert_eq!(code, 200);
        let info = String::from_utf8(info).unwrap();
        assert!(
            info.contains(&format!("URL: nar/{}.nar\n", hash(1))),
            "{info}"
        );
        assert!(info.contains("Sig: test-1:"));
        let (code, body) = get(job.addr, &format!("/nar/{}.nar", hash(1))).await;
        assert_eq!((code, &body), (200, &good));
        for h in [hash(2), hash(3)] {
            assert_eq!(get(job.addr, &format!("/{h}.narinfo")).await.0, 404);
        }
        // Not an open proxy: only the three routes, only NARs it was served.
        assert_eq!(
            status(job.addr, &format!("/nar/{}.nar", hash(2))).await,
            404
        );
        assert_eq!(status(job.addr, "/nar/../../etc/passwd").await, 404);
        assert_eq!(status(job.addr, "/http://example.com/x.narinfo").await, 404);
        // A multi-byte character across the hash's end is a 404, not a panic.
        let odd = format!("/nar/{}%C3%A9.nar", &hash(1)[..31]);
        assert_eq!(status(job.addr, &odd).await, 404);
        let (stats, paths) = job.finish().await;
        assert_eq!(stats.narinfo_hits, 1);
        assert_eq!(stats.narinfos_refused, 2);
        assert!(
            stats.refusals[0].contains("unsigned narinfo"),
            "{:?}",
            stats.refusals
        );
        assert!(
            stats.refusals[1].contains("signed by evil-1"),
            "{:?}",
            stats.refusals
        );
        assert_eq!(stats.nars_served, 1);
        assert!(stats.bytes_upstream >= good.len() as u64);
        assert_eq!(paths.len(), 1);

        // A second job: everything from the host's cache.
        let job2 = sub.serve_job(local()).await.unwrap();
        assert_eq!(substitute(job2.addr, 1).await, good);
        assert_eq!(
            get(job2.addr, &format!("/{}.narinfo", hash(2))).await.0,
            404
        );
        let (stats2, _) = job2.finish().await;
        assert_eq!(stats2.bytes_upstream, 0, "{stats2:?}");
        assert_eq!(stats2.bytes_served, good.len() as u64);
        assert_eq!(up.gets(".nar"), 1);
        // The miss was remembered: upstream was asked once about hash 2.
        assert_eq!(up.gets(&format!("{}.narinfo", hash(2))), 1);

        // After a restart the NAR is still there.
        drop(sub);
        let sub = Substituter::open(settings(dir.path(), 1 << 30), up.clone()).unwrap();
        let job3 = sub.serve_job(local()).await.unwrap();
        assert_eq!(substitute(job3.addr, 1).await, good);
        assert_eq!(job3.finish().await.0.bytes_upstream, 0);
        assert_eq!(up.gets(".nar"), 1);
    }

    #[tokio::test]
    async fn concurrent_jobs_share_one_download() {
        let dir = tempfile::tempdir().unwrap();
        let up = Arc::new(Mem {
            delay: Duration::from_millis(200),
            ..Mem::default()
        });
        let key = SecretKey::parse(SECRET).unwrap();
        let data = vec![7u8; 300_000];
        let n = up.publish(&hash(9), &data, Some(&key));
        let sub = Substituter::open(settings(dir.path(), 1 << 30), up.clone()).unwrap();
        let mut tasks = Vec::new();
        for _ in 0..6 {
            let sub = sub.clone();
            tasks.push(tokio::spawn(async move {
                let job = sub.serve_job(local()).await.unwrap();
                let body = substitute(job.addr, 9).await;
                (body, job.finish().await.0)
            }));
        }
        let mut upstream = 0;
        for t in tasks {
            let (body, stats) = t.await.unwrap();
            assert_eq!(body, n);
            upstream += stats.bytes_upstream;
        }
        assert_eq!(up.gets(".narinfo"), 1);
        assert_eq!(up.gets(".nar"), 1);
        // Attributed once, to the job that caused the download.
        let info_len = up.files.lock().unwrap()[&format!("{UP}/{}.narinfo", hash(9))].len();
        assert_eq!(upstream, (n.len() + info_len) as u64);
    }

    #[tokio::test]
    async fn least_recently_used_nars_go_first() {
        let dir = tempfile::tempdir().unwrap();
        let up = Arc::new(Mem::default());
        let key = SecretKey::parse(SECRET).unwrap();
        let one = up.publish(&hash(1), &[1u8; 1000], Some(&key)).len() as u64;
        up.publish(&hash(2), &[2u8; 1000], Some(&key));
        up.publish(&hash(3), &[3u8; 1000], Some(&key));
        // Room for two NARs.
        let sub = Substituter::open(settings(dir.path(), 2 * one + 10), up.clone()).unwrap();
        let job = sub.serve_job(local()).await.unwrap();
        for i in [1, 2, 1, 3] {
            substitute(job.addr, i).await;
        }
        job.finish().await;
        let cached = |i: u8| {
            dir.path()
                .join("nar")
                .join(format!("{}.nar", hash(i)))
                .exists()
        };
        // 2 was used least recently when 3 came.
        assert!(cached(1) && !cached(2) && cached(3));
        assert_eq!(sub.disk_bytes(), 2 * one);
        assert_eq!(sub.totals().evictions.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_nar_that_does_not_match_its_narinfo_is_not_kept() {
        let dir = tempfile::tempdir().unwrap();
        let up = Arc::new(Mem::default());
        let key = SecretKey::parse(SECRET).unwrap();
        up.publish(&hash(4), b"real", Some(&key));
        up.files.lock().unwrap().insert(
            format!("{UP}/nar/{}-up.nar", hash(4)),
            b"tampered!".to_vec(),
        );
        let sub = Substituter::open(settings(dir.path(), 1 << 30), up.clone()).unwrap();
        let job = sub.serve_job(local()).await.unwrap();
        assert_eq!(get(job.addr, &format!("/{}.narinfo", hash(4))).await.0, 200);
        assert_eq!(
            status(job.addr, &format!("/nar/{}.nar", hash(4))).await,
            502
        );
        job.finish().await;
        assert_eq!(sub.disk_bytes(), 0);
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
    }

    /// An upstream whose NAR bodies wait for the gate (narinfos do not).
    struct Gated {
        mem: Arc<Mem>,
        gate: Arc<tokio::sync::Semaphore>,
    }
    impl Fetch for Gated {
        fn get(&self, url: String) -> FetchFuture {
            let inner = self.mem.get(url.clone());
            if !url.contains("/nar/") {
                return inner;
            }
            let gate = self.gate.clone();
            Box::pin(async move {
                let body = inner.await?;
                Ok(body.map(|mut b| {
                    Box::pin(futures_lite::stream::once_future(async move {
                        let _p = gate.acquire().await;
                        b.next().await.unwrap_or(Ok(Bytes::new()))
                    })) as ByteStream
                }))
            })
        }
    }

    async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
        let t0 = Instant::now();
        while !f() {
            assert!(t0.elapsed() < Duration::from_secs(20), "never: {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn tmp_files(dir: &std::path::Path) -> usize {
        std::fs::read_dir(dir.join("tmp")).unwrap().count()
    }

    /// Issue 27, items 6 and 7: a guest that hangs up mid-download left
    /// its partial file in tmp/ (5 hang-ups, 5 files) and the dropped
    /// download poisoned that NAR for every later job (503) until restart.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_guest_that_hangs_up_mid_download_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let up = Arc::new(Mem::default());
        let key = SecretKey::parse(SECRET).unwrap();
        let want = up.publish(&hash(5), b"hung up on", Some(&key));
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let fetch = Arc::new(Gated {
            mem: up.clone(),
            gate: gate.clone(),
        });
        let sub = Substituter::open(settings(dir.path(), 1 << 30), fetch).unwrap();
        let job = sub.serve_job(local()).await.unwrap();
        assert_eq!(get(job.addr, &format!("/{}.narinfo", hash(5))).await.0, 200);
        for _ in 0..5 {
            let mut s = tokio::net::TcpStream::connect(job.addr).await.unwrap();
            s.write_all(format!("GET /nar/{}.nar HTTP/1.1\r\nHost: x\r\n\r\n", hash(5)).as_bytes())
                .await
                .unwrap();
            wait_until("the download started", || up.gets("-up.nar") >= 1).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            drop(s);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        gate.add_permits(100);
        // The next job's request is served, from the one download.
        let job2 = sub.serve_job(local()).await.unwrap();
        assert_eq!(substitute(job2.addr, 5).await, want);
        assert_eq!(up.gets("-up.nar"), 1, "downloaded once");
        wait_until("no partial file left", || tmp_files(dir.path()) == 0).await;
        job.finish().await;
        job2.finish().await;
    }

    /// Issue 27, item 8: downloads in flight were not under `max_bytes`
    /// (peak 3.2-4.4x the bound).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn downloads_in_flight_count_against_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let up = Arc::new(Mem {
            delay: Duration::from_millis(100),
            ..Mem::default()
        });
        let key = SecretKey::parse(SECRET).unwrap();
        let mut one = 0;
        for i in 10..18 {
            one = up.publish(&hash(i), &[i; 4000], Some(&key)).len() as u64;
        }
        let bound = 2 * one;
        let sub = Substituter::open(settings(dir.path(), bound), up.clone()).unwrap();
        let job = sub.serve_job(local()).await.unwrap();
        let addr = job.addr;
        let tasks: Vec<_> = (10..18)
            .map(|i| tokio::spawn(async move { substitute(addr, i).await.len() as u64 }))
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap(), one);
        }
        let peak = sub.totals().peak_bytes.load(Ordering::Relaxed);
        println!("8 concurrent downloads of {one} bytes under a bound of {bound}: peak {peak}");
        assert!(peak <= bound, "peak {peak} over the bound {bound}");
        assert!(sub.disk_bytes() <= bound);
        job.finish().await;
    }

    /// Issue 27, item 9: the miss map, the narinfos in memory and
    /// `narinfo/` on disk never shrank (50,000 expired misses kept).
    #[tokio::test]
    async fn the_remembered_misses_and_narinfos_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let up = Arc::new(Mem::default());
        let mut s = settings(dir.path(), 1 << 30);
        s.negative_ttl = Duration::from_millis(1);
        let sub = Substituter::open(s, up).unwrap();
        for i in 0..(MAX_MISSES as u32 + 2_000) {
            let mut b = [0u8; 20];
            b[..4].copy_from_slice(&i.to_le_bytes());
            sub.inner.lookup(&nix32::encode(&b)).await;
        }
        let misses = sub.inner.misses.lock().unwrap().len();
        println!(
            "{} lookups that missed: {misses} misses kept",
            MAX_MISSES + 2_000
        );
        assert!(misses <= MAX_MISSES, "{misses}");
        // The narinfos in memory.
        let p = Arc::new(Parsed {
            store_path: String::new(),
            upstream: String::new(),
            nar_url: String::new(),
            file: String::new(),
            file_size: None,
            file_hash: None,
            served: String::new(),
        });
        for i in 0..(MAX_NARINFOS_IN_MEMORY + 10) {
            sub.inner.remember(&i.to_string(), p.clone());
        }
        assert!(sub.inner.narinfos.lock().unwrap().len() <= MAX_NARINFOS_IN_MEMORY);
        // narinfo/ on disk: the oldest go.
        let d = tempfile::tempdir().unwrap();
        for i in 0..50u64 {
            let f = d.path().join(format!("{i:02}.json"));
            std::fs::write(&f, b"{}").unwrap();
            let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + i);
            std::fs::File::options()
                .append(true)
                .open(&f)
                .unwrap()
                .set_modified(t)
                .unwrap();
        }
        prune_oldest(d.path(), 20);
        let mut left: Vec<String> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left.len(), 18, "{left:?}");
        assert_eq!(left[0], "32.json", "the newest are kept: {left:?}");
    }

    /// Issue 27, item 10: one narinfo over 64 KiB marked the whole
    /// upstream down for 30 s, for every job.
    #[tokio::test]
    async fn an_oversized_narinfo_is_refused_and_the_upstream_stays_up() {
        let dir = tempfile::tempdir().unwrap();
        let up = Arc::new(Mem::default());
        let key = SecretKey::parse(SECRET).unwrap();
        up.publish(&hash(6), b"fine", Some(&key));
        up.files
            .lock()
            .unwrap()
            .insert(format!("{UP}/{}.narinfo", hash(7)), vec![b'x'; 70 << 10]);
        let sub = Substituter::open(settings(dir.path(), 1 << 30), up.clone()).unwrap();
        let job = sub.serve_job(local()).await.unwrap();
        assert_eq!(
            status(job.addr, &format!("/{}.narinfo", hash(7))).await,
            404
        );
        assert_eq!(get(job.addr, &format!("/{}.narinfo", hash(6))).await.0, 200);
        let (stats, _) = job.finish().await;
        assert_eq!(stats.narinfos_refused, 1, "{stats:?}");
        assert!(stats.refusals[0].contains("larger than"), "{stats:?}");
        assert!(sub.inner.down.lock().unwrap().is_empty());
    }

    #[test]
    fn settings_are_checked() {
        let mut s = settings(std::path::Path::new("/nonexistent"), 1);
        assert!(s.check().is_ok());
        s.upstreams = vec!["ftp://x".into()];
        assert!(matches!(s.check(), Err(Error::BadUpstream(_))));
        s.upstreams = vec!["https://cache.nixos.org".into()];
        s.trusted_public_keys = vec!["cache.nixos.org-1:nope".into()];
        assert!(matches!(s.check(), Err(Error::BadKey(_))));
        s.trusted_public_keys =
            vec!["cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=".into()];
        assert!(s.check().is_ok());
        assert!(safe_relative_url("nar/abc.nar.xz"));
        for bad in ["/nar/x", "nar/../x", "http://e/x", "nar//x", "nar/x?y", ""] {
            assert!(!safe_relative_url(bad), "{bad}");
        }
    }
}
