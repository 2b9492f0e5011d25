//! Nix binary-cache signatures: key files in Nix's `name:base64` format (as
//! `nix-store --generate-binary-cache-key` writes them) and ed25519
//! signatures over a narinfo's fingerprint. Pure; the release step (not yet
//! written) is the only caller that may sign, and only at release.

use base64::Engine as _;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};

use super::narinfo::Signed;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("key is not in Nix's name:base64 format")]
    Format,
    #[error("key has {0} bytes; a secret key has 64, a public key 32")]
    Length(usize),
    #[error("the secret key's public half does not match its seed")]
    Inconsistent,
}
pub type Result<T> = std::result::Result<T, Error>;

fn split(text: &str) -> Result<(&str, Vec<u8>)> {
    let (name, b64) = text.trim().split_once(':').ok_or(Error::Format)?;
    if name.is_empty() || name.contains(char::is_whitespace) {
        return Err(Error::Format);
    }
    Ok((name, B64.decode(b64).map_err(|_| Error::Format)?))
}

pub struct SecretKey {
    pub name: String,
    key: SigningKey,
}

impl SecretKey {
    /// Parse a secret key file (64 bytes: the ed25519 seed, then the public key).
    pub fn parse(text: &str) -> Result<SecretKey> {
        let (name, bytes) = split(text)?;
        let bytes: [u8; 64] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| Error::Length(bytes.len()))?;
        let key = SigningKey::from_keypair_bytes(&bytes).map_err(|_| Error::Inconsistent)?;
        Ok(SecretKey {
            name: name.to_owned(),
            key,
        })
    }

    /// `name:base64(public key)`, as for `trusted-public-keys`.
    pub fn public(&self) -> String {
        format!(
            "{}:{}",
            self.name,
            B64.encode(self.key.verifying_key().as_bytes())
        )
    }

    /// The narinfo `Sig:` value for these signed fields.
    pub fn sign(&self, signed: &Signed) -> String {
        self.sign_bytes(signed.fingerprint().as_bytes())
    }

    /// `name:base64(signature)` over any message (a builder's attestations
    /// and log head; never with the cache's key).
    pub fn sign_bytes(&self, message: &[u8]) -> String {
        let sig = self.key.sign(message);
        format!("{}:{}", self.name, B64.encode(sig.to_bytes()))
    }

    /// A new key named `name` from 32 random bytes (a builder's identity).
    pub fn from_seed(name: &str, seed: &[u8; 32]) -> Result<SecretKey> {
        if name.is_empty() || name.contains(char::is_whitespace) || name.contains(':') {
            return Err(Error::Format);
        }
        Ok(SecretKey {
            name: name.to_owned(),
            key: SigningKey::from_bytes(seed),
        })
    }

    /// The key file's text (`name:base64(seed ‖ public)`), as Nix writes it.
    pub fn to_file_text(&self) -> String {
        format!("{}:{}", self.name, B64.encode(self.key.to_keypair_bytes()))
    }
}

/// Parse a public key (`name:base64` of 32 bytes, as for
/// `trusted-public-keys`): its name and the key.
fn parse_public(public: &str) -> Result<(&str, VerifyingKey)> {
    let (name, pk) = split(public)?;
    let pk: [u8; 32] = pk
        .as_slice()
        .try_into()
        .map_err(|_| Error::Length(pk.len()))?;
    Ok((
        name,
        VerifyingKey::from_bytes(&pk).map_err(|_| Error::Format)?,
    ))
}

/// The name of a `name:base64` key (`None` without a `:`), unchecked.
pub fn key_name(key: &str) -> Option<&str> {
    key.split_once(':').map(|(n, _)| n)
}

/// Is `public` a usable public key? (For checking configuration.)
pub fn check_public(public: &str) -> Result<()> {
    parse_public(public).map(|_| ())
}

/// Check a `Sig:` value against a public key (`name:base64`).
pub fn verify(public: &str, signed: &Signed, sig: &str) -> Result<bool> {
    verify_bytes(public, signed.fingerprint().as_bytes(), sig)
}

/// Check a `name:base64` signature over `message` against a public key.
pub fn verify_bytes(public: &str, message: &[u8], sig: &str) -> Result<bool> {
    let (name, pk) = parse_public(public)?;
    let (sname, sbytes) = split(sig)?;
    let Ok(sbytes) = <[u8; 64]>::try_from(sbytes.as_slice()) else {
        return Ok(false);
    };
    Ok(sname == name && pk.verify(message, &Signature::from_bytes(&sbytes)).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StorePath;

    // Made for this test with `nix-store --generate-binary-cache-key test-1`.
    const SECRET: &str = "test-1:Fh0qvKtNLAP2Js1+EJ19t3nROpqT88Q3Eljtf02C8k5wQZhxnhZXWxrTD8c2u0RXyLmHv/gCxBDduR5e3FbsYg==";
    const PUBLIC: &str = "test-1:cEGYcZ4WV1sa0w/HNrtEV8i5h7/4AsQQ3bkeXtxW7GI=";

    fn chain1() -> Signed {
        Signed {
            store_path: StorePath::parse(
                "/nix/store/5ghsfj4g7l7989gd9dfrri5bxfy64j54-airlock-chain-1",
            )
            .unwrap(),
            nar_hash: "sha256:18507a4bmknpfjcf0pl9hppplsyzfpvcb4fxfwy0wnzh4h0ksmzy".into(),
            nar_size: 120,
            references: vec![],
        }
    }

    #[test]
    fn signature_is_byte_identical_to_nix() {
        // `nix store sign --key-file` with SECRET on the same path gave this.
        let nix = "test-1:4YAT+ThW1qAmsgjYAGdKh6umPmnYosMpV5sofuCrtltjOo/1BT1441oxIfmYQk+ITfVQbv1ujtnM2a6OEPBdBQ==";
        let k = SecretKey::parse(SECRET).unwrap();
        assert_eq!(k.public(), PUBLIC);
        assert_eq!(k.sign(&chain1()), nix);
        assert!(verify(PUBLIC, &chain1(), nix).unwrap());
        let mut other = chain1();
        other.nar_size = 121;
        assert!(!verify(PUBLIC, &other, nix).unwrap());
        assert!(!verify(
            "test-2:cEGYcZ4WV1sa0w/HNrtEV8i5h7/4AsQQ3bkeXtxW7GI=",
            &chain1(),
            nix
        )
        .unwrap());
    }

    #[test]
    fn rejects_malformed_keys() {
        assert_eq!(SecretKey::parse("no-colon").err(), Some(Error::Format));
        assert_eq!(SecretKey::parse(PUBLIC).err(), Some(Error::Length(32)));
        assert_eq!(SecretKey::parse("x:!!!").err(), Some(Error::Format));
    }
}
