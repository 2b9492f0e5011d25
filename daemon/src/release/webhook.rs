//! GitHub webhook deliveries: signature check (HMAC-SHA256 over the raw
//! body, `X-Hub-Signature-256: sha256=<hex>`, constant-time) and a strict
//! parse of the `pull_request` fields we use. Pure: the HTTP handler lives
//! in [`super::server`].

use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

use super::rule::{parse_time, HeadRecord, HeadSource};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("missing X-Hub-Signature-256 header")]
    NoSignature,
    #[error("bad signature")]
    BadSignature,
    #[error("malformed payload: {0}")]
    Payload(String),
}

/// Most bytes of a delivery read (GitHub caps payloads at 25 MB; a
/// `pull_request` one is tens of KB).
pub const MAX_BODY: usize = 4 << 20;

pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut m = Hmac::<Sha256>::new_from_slice(secret).expect("any key length");
    m.update(body);
    format!("sha256={}", hex::encode(m.finalize().into_bytes()))
}

pub fn verify(secret: &[u8], header: Option<&str>, body: &[u8]) -> Result<(), Error> {
    let h = header.ok_or(Error::NoSignature)?;
    let hex_sig = h
        .trim()
        .strip_prefix("sha256=")
        .ok_or(Error::BadSignature)?;
    let sig = hex::decode(hex_sig).map_err(|_| Error::BadSignature)?;
    let mut m = Hmac::<Sha256>::new_from_slice(secret).expect("any key length");
    m.update(body);
    m.verify_slice(&sig).map_err(|_| Error::BadSignature)
}

#[derive(Debug, Deserialize)]
struct Payload {
    action: String,
    number: u64,
    pull_request: PrPart,
    repository: RepoPart,
    #[serde(default)]
    label: Option<LabelPart>,
}

#[derive(Debug, Deserialize)]
struct LabelPart {
    name: String,
}

#[derive(Debug, Deserialize)]
struct PrPart {
    head: HeadPart,
    updated_at: String,
}

#[derive(Debug, Deserialize)]
struct HeadPart {
    sha: String,
}

#[derive(Debug, Deserialize)]
struct RepoPart {
    full_name: String,
}

/// What a verified `pull_request` delivery tells the watcher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrEvent {
    pub repo: String,
    pub pr: u64,
    pub action: String,
    /// For `labeled`/`unlabeled`: the label's name.
    pub label: Option<String>,
    /// For pushes (`synchronize`, `opened`, `reopened`): the new head, as of
    /// the PR's `updated_at` (at or after the push, in GitHub's clock).
    pub head: Option<HeadRecord>,
}

/// Parse a verified delivery. `Ok(None)`: an event we do not act on.
pub fn parse(event: &str, body: &[u8]) -> Result<Option<PrEvent>, Error> {
    if event != "pull_request" {
        return Ok(None);
    }
    let p: Payload = serde_json::from_slice(body).map_err(|e| Error::Payload(e.to_string()))?;
    super::github::check_repo(&p.repository.full_name)
        .map_err(|e| Error::Payload(e.to_string()))?;
    let head = match p.action.as_str() {
        "synchronize" | "opened" | "reopened" => {
            if !super::github::is_sha(&p.pull_request.head.sha) {
                return Err(Error::Payload("head.sha is not a commit id".into()));
            }
            let at = parse_time(&p.pull_request.updated_at)
                .ok_or_else(|| Error::Payload("bad pull_request.updated_at".into()))?;
            Some(HeadRecord {
                sha: p.pull_request.head.sha.to_ascii_lowercase(),
                at,
                source: HeadSource::Webhook,
            })
        }
        _ => None,
    };
    Ok(Some(PrEvent {
        repo: p.repository.full_name,
        pr: p.number,
        action: p.action,
        label: p.label.map(|l| l.name),
        head,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        let p = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/github/");
        std::fs::read(format!("{p}{name}")).unwrap()
    }

    #[test]
    fn github_documented_test_vector() {
        let s = sign(b"It's a Secret to Everybody", b"Hello, World!");
        assert_eq!(
            s,
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        );
        assert_eq!(
            verify(b"It's a Secret to Everybody", Some(&s), b"Hello, World!"),
            Ok(())
        );
        assert_eq!(
            verify(b"It's a Secret to Everybody", Some(&s), b"Hello, World?"),
            Err(Error::BadSignature)
        );
        assert_eq!(
            verify(b"other", Some(&s), b"Hello, World!"),
            Err(Error::BadSignature)
        );
        assert_eq!(verify(b"k", None, b"x"), Err(Error::NoSignature));
        assert_eq!(
            verify(b"k", Some("sha1=00"), b"x"),
            Err(Error::BadSignature)
        );
        assert_eq!(
            verify(b"k", Some("sha256=zz"), b"x"),
            Err(Error::BadSignature)
        );
    }

    #[test]
    fn fixtures_parse() {
        let s = parse(
            "pull_request",
            &fixture("webhook-pull_request-synchronize.json"),
        )
        .unwrap()
        .unwrap();
        assert_eq!(s.repo, "NixOS/nixpkgs");
        assert_eq!(s.pr, 1234);
        let h = s.head.unwrap();
        assert_eq!(h.sha, "a7c4e1f8b2d5e9c3f6a0b4d8e2c7f1a5b9d3e6c0");
        assert_eq!(h.source, HeadSource::Webhook);
        assert_eq!(Some(h.at), parse_time("2026-11-25T06:20:00Z"));
        for f in [
            "webhook-pull_request-labeled.json",
            "webhook-pull_request-unlabeled.json",
        ] {
            let e = parse("pull_request", &fixture(f)).unwrap().unwrap();
            assert!(e.head.is_none(), "{f}");
            assert_eq!(e.label.as_deref(), Some("nonmalicious-checked"));
        }
        assert_eq!(parse("ping", b"{}"), Ok(None));
        assert!(parse("pull_request", b"{\"action\":1}").is_err());
    }
}
