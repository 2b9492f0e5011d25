//! HTTP: the binary cache (released paths only) and the GitHub webhook
//! receiver, as two axum routers on their own listeners.
//!
//! The cache serves exactly what is in `cache/`: release is the only writer
//! there, so an unreleased path (content-addressed or not) is a 404 by
//! construction. Names are checked before any file is opened.

use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tower::ServiceExt;
use tracing::{info, warn};

use super::{webhook, Release};

#[derive(Clone)]
struct CacheState {
    dir: Arc<PathBuf>,
    info: Arc<String>,
}

fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "not found\n").into_response()
}

fn is_nix32(s: &str) -> bool {
    s.bytes()
        .all(|b| crate::store::nix32::ALPHABET.contains(&b))
}

/// `<32 nix32 chars>.narinfo`
fn narinfo_name(n: &str) -> bool {
    n.strip_suffix(".narinfo")
        .is_some_and(|h| h.len() == 32 && is_nix32(h))
}

/// `<52 nix32 chars>.nar[.<compression>]`
fn nar_name(n: &str) -> bool {
    let (h, rest) = n.split_at(n.find('.').unwrap_or(n.len()));
    h.len() == 52
        && is_nix32(h)
        && matches!(
            rest,
            ".nar" | ".nar.xz" | ".nar.zst" | ".nar.bz2" | ".nar.br" | ".nar.gz"
        )
}

pub fn cache_router(dir: PathBuf, priority: u32) -> Router {
    let st = CacheState {
        dir: Arc::new(dir),
        info: Arc::new(super::store::cache_info(priority)),
    };
    Router::new()
        .route("/nix-cache-info", get(cache_info))
        .route("/{file}", get(narinfo))
        .route("/nar/{file}", get(nar))
        .fallback(|| async { not_found() })
        .with_state(st)
}

/// `/attestations/<drv hash>`: the attestations this builder checked for
/// one derivation's outputs (its own and known builders'), one JSON per
/// line, as kept (each verified before it was kept). Read-only; anything
/// but a 32-character hash is a 404.
pub fn attestations_router(a: Arc<crate::attest::store::Attestor>) -> Router {
    Router::new()
        .route("/attestations/{hash}", get(attestations))
        .with_state(a)
}

async fn attestations(
    State(a): State<Arc<crate::attest::store::Attestor>>,
    Path(hash): Path<String>,
) -> Response {
    match tokio::task::spawn_blocking(move || a.pool.raw(&hash)).await {
        Ok(Some(b)) => ([(header::CONTENT_TYPE, "application/x-ndjson")], b).into_response(),
        _ => not_found(),
    }
}

async fn cache_info(State(s): State<CacheState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/x-nix-cache-info")],
        s.info.to_string(),
    )
        .into_response()
}

async fn narinfo(State(s): State<CacheState>, Path(file): Path<String>) -> Response {
    if !narinfo_name(&file) {
        return not_found();
    }
    match tokio::fs::read(s.dir.join(&file)).await {
        Ok(b) => ([(header::CONTENT_TYPE, "text/x-nix-narinfo")], b).into_response(),
        Err(_) => not_found(),
    }
}

async fn nar(State(s): State<CacheState>, Path(file): Path<String>, req: Request) -> Response {
    if !nar_name(&file) {
        return not_found();
    }
    let path = s.dir.join("nar").join(&file);
    if !path.is_file() {
        return not_found();
    }
    // tower-http's ServeFile: Range / If-Range / HEAD, 206 and 416.
    let svc = tower_http::services::ServeFile::new_with_mime(
        &path,
        &"application/x-nix-nar".parse().expect("valid mime"),
    );
    match svc.oneshot(req).await {
        Ok(r) => r.map(Body::new),
        Err(e) => {
            warn!(file, error = %e, "cannot serve NAR");
            (StatusCode::INTERNAL_SERVER_ERROR, "error\n").into_response()
        }
    }
}

pub fn webhook_router(release: Arc<Release>) -> Router {
    Router::new()
        .route("/github-webhook", post(deliver))
        .fallback(|| async { not_found() })
        .layer(DefaultBodyLimit::max(webhook::MAX_BODY))
        .layer(tower::limit::ConcurrencyLimitLayer::new(8))
        .with_state(release)
}

async fn deliver(State(r): State<Arc<Release>>, h: HeaderMap, body: axum::body::Bytes) -> Response {
    let hv = |k: &str| h.get(k).and_then(|v| v.to_str().ok());
    let delivery = hv("x-github-delivery").unwrap_or("-").to_owned();
    let event = hv("x-github-event").unwrap_or("").to_owned();
    let Some(secret) = r.webhook_secret() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "no webhook secret configured\n",
        )
            .into_response();
    };
    if let Err(e) = webhook::verify(secret, hv("x-hub-signature-256"), &body) {
        warn!(delivery, event, error = %e, "webhook rejected");
        return (StatusCode::UNAUTHORIZED, format!("{e}\n")).into_response();
    }
    match webhook::parse(&event, &body) {
        Ok(Some(ev)) => {
            info!(delivery, repo = %ev.repo, pr = ev.pr, action = %ev.action, "webhook accepted");
            r.on_webhook(ev).await;
            (StatusCode::ACCEPTED, "ok\n").into_response()
        }
        Ok(None) => (StatusCode::ACCEPTED, "ignored\n").into_response(),
        Err(e) => {
            warn!(delivery, event, error = %e, "webhook with a valid signature but a malformed payload");
            (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response()
        }
    }
}

/// Bind `addr` now (so a bad address fails at start-up), then serve
/// `router` on it in the background until the process ends.
pub fn spawn(addr: &str, router: Router, what: &'static str) -> std::io::Result<()> {
    let l = std::net::TcpListener::bind(addr)?;
    l.set_nonblocking(true)?;
    let l = tokio::net::TcpListener::from_std(l)?;
    info!(addr = ?l.local_addr().ok(), what, "listening");
    tokio::spawn(async move {
        if let Err(e) = axum::serve(l, router).await {
            warn!(error = %e, what, "HTTP server stopped");
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(narinfo_name("0123456789abcdfghijklmnpqrsvwxyz.narinfo"));
        assert!(!narinfo_name("0123456789abcdfghijklmnpqrsvwxye.narinfo")); // e
        assert!(!narinfo_name("../../etc/passwd.narinfo"));
        assert!(!narinfo_name("nix-cache-info"));
        let h52 = "0".repeat(52);
        assert!(nar_name(&format!("{h52}.nar")));
        assert!(nar_name(&format!("{h52}.nar.xz")));
        assert!(!nar_name(&format!("{h52}.nar.exe")));
        assert!(!nar_name(&format!("{h52}.narinfo")));
        assert!(!nar_name("..%2f.nar"));
    }
}
