//! Signed attestations and a builder's hash-chained log of them (issue 30,
//! first layer: the formats; pure, no I/O beyond the caller's bytes).
//!
//! An attestation is one builder's signed statement about one output it
//! built and the host verified: which derivation, which output path, its
//! NAR hash, size and references, who built it (builder and operator, trust
//! mode) and for which job, repository, PR and commits. It is signed with
//! the builder's own identity key (Nix's `name:base64` ed25519 format,
//! never the cache signing key) over a fixed prefix and the statement's
//! canonical JSON (fields in declaration order, no unknown fields, no
//! whitespace), so any reader re-derives the signed bytes from a parsed
//! statement.
//!
//! The log: one JSON line per entry, each naming its sequence number and
//! the SHA-256 of the previous line; the head (sequence number and hash of
//! the last line) is signed. Editing, dropping or reordering an entry
//! breaks the chain at that entry, and a head signed before cannot be
//! matched by a rewritten history.

pub mod compare;
pub mod pool;
pub mod store;

use airlock_nix_formats::signing::{self, SecretKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The signed bytes start with this, so an attestation's signature can
/// never be taken for a narinfo's or a log head's.
const STATEMENT_DOMAIN: &[u8] = b"airlock-attestation-v1\n";
const HEAD_DOMAIN: &[u8] = b"airlock-log-head-v1\n";
/// The `prev` of a log's first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// The largest log line read (an attestation with many references).
pub const MAX_LINE: usize = 1 << 20;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("not an attestation: {0}")]
    Parse(String),
    #[error("unsupported attestation version {0}")]
    Version(u32),
    #[error("the signature is by key {signer:?}, the statement names builder key {named:?}")]
    WrongKey { signer: String, named: String },
    #[error("bad signature")]
    BadSignature,
    #[error("key: {0}")]
    Key(#[from] signing::Error),
    #[error("log entry {entry}: {why}")]
    Chain { entry: u64, why: String },
    #[error("log head: {0}")]
    Head(String),
}
pub type Result<T> = std::result::Result<T, Error>;

/// What one builder says about one output it built and verified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Statement {
    pub version: u32,
    pub drv_path: String,
    pub output: String,
    pub out_path: String,
    /// `sha256:<nix32>`, as the host recomputed it.
    pub nar_hash: String,
    pub nar_size: u64,
    pub references: Vec<String>,
    /// The builder's identity key name (`[identity] name`).
    pub builder: String,
    pub operator: String,
    /// `trusted` or `community`.
    pub trust: String,
    pub job_id: String,
    pub repo: String,
    pub pr: Option<u64>,
    pub head: String,
    pub merged: Option<String>,
    /// The guest's Nix, as the guest said (not verified).
    pub guest_nix: Option<String>,
    /// Unix seconds.
    pub time: i64,
}

/// A statement with its signature (`name:base64`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attestation {
    pub statement: Statement,
    pub sig: String,
}

fn canonical<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("plain structs serialise")
}

impl Statement {
    pub const VERSION: u32 = 1;

    fn signed_bytes(&self) -> Vec<u8> {
        let mut m = STATEMENT_DOMAIN.to_vec();
        m.extend(canonical(self));
        m
    }

    /// Sign with the builder's identity key; the key's name must be the
    /// statement's `builder`.
    pub fn sign(self, key: &SecretKey) -> Result<Attestation> {
        if key.name != self.builder {
            return Err(Error::WrongKey {
                signer: key.name.clone(),
                named: self.builder,
            });
        }
        let sig = key.sign_bytes(&self.signed_bytes());
        Ok(Attestation {
            statement: self,
            sig,
        })
    }
}

impl Attestation {
    /// Parse (strictly) from JSON.
    pub fn parse(json: &[u8]) -> Result<Attestation> {
        let a: Attestation =
            serde_json::from_slice(json).map_err(|e| Error::Parse(e.to_string()))?;
        if a.statement.version != Statement::VERSION {
            return Err(Error::Version(a.statement.version));
        }
        Ok(a)
    }

    /// Check the signature against the builder's public key
    /// (`name:base64`); its name must be the statement's `builder`.
    pub fn verify(&self, public: &str) -> Result<()> {
        let name = signing::key_name(public).unwrap_or_default();
        if name != self.statement.builder {
            return Err(Error::WrongKey {
                signer: name.to_owned(),
                named: self.statement.builder.clone(),
            });
        }
        if signing::verify_bytes(public, &self.statement.signed_bytes(), &self.sig)? {
            Ok(())
        } else {
            Err(Error::BadSignature)
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        canonical(self)
    }
}

/// The attestations of a JSON-lines file (a job's `attestations.jsonl`,
/// a pool file): a line that does not parse as one (a torn append, an
/// unknown version) is skipped.
pub fn read_file(path: &std::path::Path) -> Vec<Attestation> {
    std::fs::read(path)
        .unwrap_or_default()
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .filter_map(|l| Attestation::parse(l).ok())
        .collect()
}

/// One line of a builder's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// 0 for the first entry.
    pub seq: u64,
    /// Hex SHA-256 of the previous line (without its newline), or [`GENESIS`].
    pub prev: String,
    pub attestation: Attestation,
}

/// The signed state of a log: its length and its last line's hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Head {
    pub builder: String,
    /// Entries in the log.
    pub len: u64,
    /// Hex SHA-256 of the last line, or [`GENESIS`] for an empty log.
    pub hash: String,
    pub sig: String,
}

impl Head {
    fn signed_bytes(builder: &str, len: u64, hash: &str) -> Vec<u8> {
        let mut m = HEAD_DOMAIN.to_vec();
        m.extend(format!("{builder}\n{len}\n{hash}").as_bytes());
        m
    }

    pub fn sign(key: &SecretKey, len: u64, hash: &str) -> Head {
        Head {
            builder: key.name.clone(),
            len,
            hash: hash.to_owned(),
            sig: key.sign_bytes(&Head::signed_bytes(&key.name, len, hash)),
        }
    }

    pub fn verify(&self, public: &str) -> Result<()> {
        let ok = signing::verify_bytes(
            public,
            &Head::signed_bytes(&self.builder, self.len, &self.hash),
            &self.sig,
        )?;
        if ok {
            Ok(())
        } else {
            Err(Error::Head("bad signature".into()))
        }
    }
}

fn line_hash(line: &[u8]) -> String {
    hex::encode(Sha256::digest(line))
}

/// Appending to a log: the next entry's line (without newline) and the new
/// head, given the current head's length and hash.
pub fn append(key: &SecretKey, len: u64, last_hash: &str, a: Attestation) -> (Vec<u8>, Head) {
    let line = canonical(&Entry {
        seq: len,
        prev: last_hash.to_owned(),
        attestation: a,
    });
    let head = Head::sign(key, len + 1, &line_hash(&line));
    (line, head)
}

/// Verify a whole log (its lines, newline-separated) against the builder's
/// public key and its signed head: every entry's attestation signed by that
/// builder, every `prev` the hash of the line before, sequence numbers in
/// order, and the head's length and hash those of the log. Returns the
/// attestations. The first entry that fails is named.
pub fn verify_log(text: &[u8], public: &str, head: &Head) -> Result<Vec<Attestation>> {
    head.verify(public)?;
    let chain = verify_chain(text, public)?;
    let last = chain.last().map(|(_, h)| h.as_str()).unwrap_or(GENESIS);
    if chain.len() as u64 != head.len || last != head.hash {
        return Err(Error::Head(format!(
            "signed for {} entries ending in {}; the log has {} ending in {last}",
            head.len,
            head.hash,
            chain.len()
        )));
    }
    Ok(chain.into_iter().map(|(a, _)| a).collect())
}

/// A log that grew past its head: the builder appended entries and
/// stopped before it replaced the head (a crash between the two writes).
/// The head still verifies, the log's first `head.len` entries are the
/// ones it signed, and every later entry chains on and is the builder's
/// own. Returns the log's attestations and the head for its full length.
pub fn verify_extension(
    text: &[u8],
    key: &SecretKey,
    head: &Head,
) -> Result<(Vec<Attestation>, Head)> {
    head.verify(&key.public())?;
    let chain = verify_chain(text, &key.public())?;
    let at_head = match head.len {
        0 => GENESIS,
        n => chain
            .get(n as usize - 1)
            .map(|(_, h)| h.as_str())
            .ok_or_else(|| {
                Error::Head(format!(
                    "signed for {n} entries; the log has only {}",
                    chain.len()
                ))
            })?,
    };
    if at_head != head.hash {
        return Err(Error::Head(format!(
            "signed for {} entries ending in {}; the log's entry {} is {at_head}",
            head.len,
            head.hash,
            head.len.saturating_sub(1)
        )));
    }
    let last = chain
        .last()
        .map(|(_, h)| h.clone())
        .unwrap_or(GENESIS.into());
    let new_head = Head::sign(key, chain.len() as u64, &last);
    Ok((chain.into_iter().map(|(a, _)| a).collect(), new_head))
}

/// Every entry of a log checked (signature, sequence number, `prev`) and
/// returned with its line's hash; the first entry that fails is named.
fn verify_chain(text: &[u8], public: &str) -> Result<Vec<(Attestation, String)>> {
    let mut prev = GENESIS.to_owned();
    let mut out = Vec::new();
    for (i, line) in text
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .enumerate()
    {
        let entry = i as u64;
        let err = |why: String| Error::Chain { entry, why };
        if line.len() > MAX_LINE {
            return Err(err(format!("longer than {MAX_LINE} bytes")));
        }
        let e: Entry = serde_json::from_slice(line).map_err(|e| err(e.to_string()))?;
        if canonical(&e) != line {
            return Err(err("not in canonical form".into()));
        }
        if e.seq != entry {
            return Err(err(format!("sequence number {} out of order", e.seq)));
        }
        if e.prev != prev {
            return Err(err(format!(
                "names {} as the previous entry's hash; it is {prev}",
                e.prev
            )));
        }
        e.attestation
            .verify(public)
            .map_err(|x| err(x.to_string()))?;
        prev = line_hash(line);
        out.push((e.attestation, prev.clone()));
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn key(name: &str, b: u8) -> SecretKey {
        SecretKey::from_seed(name, &[b; 32]).unwrap()
    }

    /// A statement for tests (compare.rs's too).
    pub(crate) fn statement(builder: &str, out: &str, hash: &str) -> Statement {
        Statement {
            version: Statement::VERSION,
            drv_path: format!("/nix/store/{}-{out}.drv", "a".repeat(32)),
            output: "out".into(),
            out_path: format!("/nix/store/{}-{out}", "b".repeat(32)),
            nar_hash: hash.into(),
            nar_size: 120,
            references: vec![],
            builder: builder.into(),
            operator: "Example Org".into(),
            trust: "community".into(),
            job_id: "j1".into(),
            repo: "NixOS/nixpkgs".into(),
            pr: Some(42),
            head: "c".repeat(40),
            merged: None,
            guest_nix: Some("nix (Nix) 2.26.3".into()),
            time: 1_796_578_020,
        }
    }

    #[test]
    fn an_attestation_verifies_only_as_signed_and_by_its_builder() {
        let k = key("builder-a-1", 1);
        let a = statement("builder-a-1", "x", "sha256:0x").sign(&k).unwrap();
        a.verify(&k.public()).unwrap();
        // Through JSON and back: the same signed bytes.
        let back = Attestation::parse(&a.to_json()).unwrap();
        back.verify(&k.public()).unwrap();
        // Any field changed: bad signature.
        let mut t = back.clone();
        t.statement.nar_hash = "sha256:1y".into();
        assert_eq!(t.verify(&k.public()), Err(Error::BadSignature));
        // Another builder's key, or a key named otherwise.
        let other = key("builder-b-1", 2);
        assert!(matches!(
            a.verify(&other.public()),
            Err(Error::WrongKey { .. })
        ));
        let impostor = key("builder-a-1", 3);
        assert_eq!(a.verify(&impostor.public()), Err(Error::BadSignature));
        assert!(matches!(
            statement("builder-a-1", "x", "h").sign(&other),
            Err(Error::WrongKey { .. })
        ));
        // Strict: unknown fields and other versions refused.
        let mut v: serde_json::Value = serde_json::from_slice(&a.to_json()).unwrap();
        v["statement"]["extra"] = 1.into();
        assert!(Attestation::parse(v.to_string().as_bytes()).is_err());
        let mut v: serde_json::Value = serde_json::from_slice(&a.to_json()).unwrap();
        v["statement"]["version"] = 2.into();
        assert_eq!(
            Attestation::parse(v.to_string().as_bytes()),
            Err(Error::Version(2))
        );
    }

    #[test]
    fn the_hash_chain_fails_at_the_edited_entry() {
        let k = key("builder-a-1", 1);
        let (mut log, mut len, mut last) = (Vec::<u8>::new(), 0u64, GENESIS.to_owned());
        let mut head = Head::sign(&k, 0, GENESIS);
        for i in 0..5 {
            let a = statement("builder-a-1", &format!("p{i}"), &format!("sha256:{i}"))
                .sign(&k)
                .unwrap();
            let (line, h) = append(&k, len, &last, a);
            log.extend(&line);
            log.push(b'\n');
            len = h.len;
            last = h.hash.clone();
            head = h;
        }
        assert_eq!(verify_log(&log, &k.public(), &head).unwrap().len(), 5);

        let text = String::from_utf8(log.clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        // An old entry's claim edited: that entry fails (its signature).
        let edited = text.replace(lines[2], &lines[2].replace("sha256:2", "sha256:9"));
        match verify_log(edited.as_bytes(), &k.public(), &head) {
            Err(Error::Chain { entry: 2, .. }) => {}
            other => panic!("{other:?}"),
        }
        // An entry dropped: the next one's `prev` no longer matches.
        let dropped: String = lines
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != 1)
            .map(|(_, l)| format!("{l}\n"))
            .collect();
        assert!(matches!(
            verify_log(dropped.as_bytes(), &k.public(), &head),
            Err(Error::Chain { entry: 1, .. })
        ));
        // History rewritten by the builder itself (re-signed entries from
        // entry 3 on): the chain holds, but a head signed before does not.
        let mut rewritten: Vec<u8> = lines[..3].join("\n").into_bytes();
        rewritten.push(b'\n');
        let h3 = Head::sign(&k, 3, &line_hash(lines[2].as_bytes()));
        let a = statement("builder-a-1", "p3", "sha256:other")
            .sign(&k)
            .unwrap();
        let (line, new_head) = append(&k, 3, &h3.hash, a);
        rewritten.extend(&line);
        rewritten.push(b'\n');
        verify_log(&rewritten, &k.public(), &new_head).unwrap();
        assert!(matches!(
            verify_log(&rewritten, &k.public(), &head),
            Err(Error::Head(_))
        ));
        // A head not signed by the builder.
        let forged = Head::sign(&key("builder-a-1", 7), head.len, &head.hash);
        assert!(verify_log(&log, &k.public(), &forged).is_err());
    }

    #[test]
    fn a_key_file_round_trips() {
        let k = key("builder-a-1", 5);
        let back = SecretKey::parse(&k.to_file_text()).unwrap();
        assert_eq!(back.public(), k.public());
        assert!(SecretKey::from_seed("has space", &[0; 32]).is_err());
        assert!(SecretKey::from_seed("a:b", &[0; 32]).is_err());
    }
}
