//! Content-address claims (`CA:` in a narinfo), in Nix's canonical form:
//!
//! - `text:sha256:<nix32>`
//! - `fixed:sha256:<nix32>` (flat), `fixed:r:sha256:<nix32>` (recursive),
//!   with `md5`, `sha1`, `sha256` or `sha512` as the algorithm
//!
//! The hash is Nix's base32 of exactly the algorithm's digest length. This
//! is the strict grammar the quarantine applies to what a guest claims:
//! nothing else (no other spelling, no whitespace, no control characters)
//! gets into a narinfo.

use super::nix32;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("content address {0:?} is not text:<hash> or fixed:[r:]<hash>")]
    Method(String),
    #[error("content address {0:?} names an unknown hash algorithm")]
    Algorithm(String),
    #[error("content address {0:?} has a malformed hash")]
    Hash(String),
}

/// Digest length in bytes of a hash algorithm Nix uses in content addresses.
fn digest_len(algo: &str) -> Option<usize> {
    match algo {
        "md5" => Some(16),
        "sha1" => Some(20),
        "sha256" => Some(32),
        "sha512" => Some(64),
        _ => None,
    }
}

/// Check `ca` against the grammar; returns it unchanged when it is valid.
pub fn parse(ca: &str) -> Result<&str, Error> {
    let short = || {
        let mut s: String = ca.chars().take(80).collect();
        if ca.len() > s.len() {
            s.push('…');
        }
        s
    };
    let (algo_hash, text) = if let Some(rest) = ca.strip_prefix("text:") {
        (rest, true)
    } else if let Some(rest) = ca.strip_prefix("fixed:") {
        (rest.strip_prefix("r:").unwrap_or(rest), false)
    } else {
        return Err(Error::Method(short()));
    };
    let (algo, hash) = algo_hash
        .split_once(':')
        .ok_or_else(|| Error::Method(short()))?;
    let len = digest_len(algo).ok_or_else(|| Error::Algorithm(short()))?;
    if text && algo != "sha256" {
        return Err(Error::Algorithm(short()));
    }
    if !hash.bytes().all(nix32::is_nix32_char) || nix32::decode(hash, len).is_none() {
        return Err(Error::Hash(short()));
    }
    Ok(ca)
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: &str = "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73";

    #[test]
    fn canonical_forms_are_accepted() {
        for ca in [
            format!("fixed:r:sha256:{H}"),
            format!("fixed:sha256:{H}"),
            format!("text:sha256:{H}"),
            "fixed:sha1:0000000000000000000000000000000a".to_string(),
            "fixed:r:md5:00000000000000000000000000".to_string(),
        ] {
            assert_eq!(parse(&ca), Ok(ca.as_str()), "{ca}");
        }
    }

    #[test]
    fn everything_else_is_refused() {
        let inj = format!("fixed:r:sha256:{H}\nStorePath: /nix/store/x");
        for ca in [
            "fixed:x".to_string(),
            inj,
            format!("fixed:r:sha256:{H} "),
            format!("fixed:r:sha256:{H}\r"),
            format!("fixed:r:sha256:{}", &H[1..]),
            format!("fixed:r:sha256:{H}0"),
            format!("fixed:r:blake3:{H}"),
            format!("text:sha1:{}", "0000000000000000000000000000000a"),
            format!("fixed:r:r:sha256:{H}"),
            format!("source:sha256:{H}"),
            format!("fixed:r:sha256:{}", H.replace('0', "e")),
            String::new(),
        ] {
            assert!(parse(&ca).is_err(), "{ca:?} accepted");
        }
    }
}
