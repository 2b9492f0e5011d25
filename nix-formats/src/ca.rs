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

use sha2::Digest;

use super::nix32;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("content address {0:?} is not text:<hash> or fixed:[r:]<hash>")]
    Method(String),
    #[error("content address {0:?} names an unknown hash algorithm")]
    Algorithm(String),
    #[error("content address {0:?} has a malformed hash")]
    Hash(String),
    #[error("a {0} content address cannot have references")]
    References(&'static str),
}

/// How the content was hashed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// `text:`: a single non-executable file (`builtins.toFile`, .drv).
    Text,
    /// `fixed:`: the contents of a single regular file.
    Flat,
    /// `fixed:r:`: the NAR serialisation.
    Recursive,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algo {
    Md5,
    Sha1,
    Sha256,
    Sha512,
}

impl Algo {
    fn from_name(name: &str) -> Option<Algo> {
        match name {
            "md5" => Some(Algo::Md5),
            "sha1" => Some(Algo::Sha1),
            "sha256" => Some(Algo::Sha256),
            "sha512" => Some(Algo::Sha512),
            _ => None,
        }
    }

    /// Digest length in bytes.
    pub fn digest_len(self) -> usize {
        match self {
            Algo::Md5 => 16,
            Algo::Sha1 => 20,
            Algo::Sha256 => 32,
            Algo::Sha512 => 64,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Algo::Md5 => "md5",
            Algo::Sha1 => "sha1",
            Algo::Sha256 => "sha256",
            Algo::Sha512 => "sha512",
        }
    }

    pub fn hasher(self) -> Hasher {
        match self {
            Algo::Md5 => Hasher::Md5(md5::Md5::new()),
            Algo::Sha1 => Hasher::Sha1(sha1::Sha1::new()),
            Algo::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
            Algo::Sha512 => Hasher::Sha512(sha2::Sha512::new()),
        }
    }
}

/// A running hash of one of the algorithms content addresses use.
pub enum Hasher {
    Md5(md5::Md5),
    Sha1(sha1::Sha1),
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

impl Hasher {
    pub fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Md5(h) => h.update(data),
            Hasher::Sha1(h) => h.update(data),
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
        }
    }

    pub fn finish(self) -> Vec<u8> {
        match self {
            Hasher::Md5(h) => h.finalize().to_vec(),
            Hasher::Sha1(h) => h.finalize().to_vec(),
            Hasher::Sha256(h) => h.finalize().to_vec(),
            Hasher::Sha512(h) => h.finalize().to_vec(),
        }
    }
}

impl std::io::Write for Hasher {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A parsed content address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentAddress {
    pub method: Method,
    pub algo: Algo,
    pub digest: Vec<u8>,
}

/// Check `ca` against the grammar; returns it unchanged when it is valid.
pub fn parse(ca: &str) -> Result<&str, Error> {
    parse_address(ca).map(|_| ca)
}

/// Parse `ca`, strictly (see the module documentation), into its parts.
pub fn parse_address(ca: &str) -> Result<ContentAddress, Error> {
    let short = || {
        let mut s: String = ca.chars().take(80).collect();
        if ca.len() > s.len() {
            s.push('…');
        }
        s
    };
    let (method, rest) = if let Some(r) = ca.strip_prefix("text:") {
        (Method::Text, r)
    } else if let Some(r) = ca.strip_prefix("fixed:r:") {
        (Method::Recursive, r)
    } else if let Some(r) = ca.strip_prefix("fixed:") {
        (Method::Flat, r)
    } else {
        return Err(Error::Method(short()));
    };
    let (algo, hash) = rest.split_once(':').ok_or_else(|| Error::Method(short()))?;
    let algo = Algo::from_name(algo).ok_or_else(|| Error::Algorithm(short()))?;
    if method == Method::Text && algo != Algo::Sha256 {
        return Err(Error::Algorithm(short()));
    }
    if !hash.bytes().all(nix32::is_nix32_char) {
        return Err(Error::Hash(short()));
    }
    let digest = nix32::decode(hash, algo.digest_len()).ok_or_else(|| Error::Hash(short()))?;
    Ok(ContentAddress {
        method,
        algo,
        digest,
    })
}

/// Nix's `makeStorePath`: the path for `type`, a digest and a name.
fn make_store_path(ty: &str, algo: Algo, digest: &[u8], name: &str) -> String {
    let s = format!(
        "{ty}:{}:{}:/nix/store:{name}",
        algo.name(),
        hex::encode(digest)
    );
    let h = sha2::Sha256::digest(s.as_bytes());
    let mut folded = [0u8; 20];
    for (i, b) in h.iter().enumerate() {
        folded[i % 20] ^= b;
    }
    format!("/nix/store/{}-{name}", nix32::encode(&folded))
}

/// The store path Nix gives content with address `ca`, name `name`, the
/// other store paths it refers to (`references`, full paths) and, for
/// recursive sha256, whether it refers to itself.
pub fn store_path(
    ca: &ContentAddress,
    name: &str,
    references: &[String],
    self_reference: bool,
) -> Result<String, Error> {
    let mut refs: Vec<&str> = references.iter().map(String::as_str).collect();
    refs.sort_unstable();
    let with_refs = |ty: &str| {
        let mut t = ty.to_owned();
        for r in &refs {
            t.push(':');
            t.push_str(r);
        }
        t
    };
    match (ca.method, ca.algo) {
        (Method::Text, _) => {
            if self_reference {
                return Err(Error::References("text (self)"));
            }
            Ok(make_store_path(
                &with_refs("text"),
                ca.algo,
                &ca.digest,
                name,
            ))
        }
        (Method::Recursive, Algo::Sha256) => {
            let mut ty = with_refs("source");
            if self_reference {
                ty.push_str(":self");
            }
            Ok(make_store_path(&ty, ca.algo, &ca.digest, name))
        }
        (method, algo) => {
            if !refs.is_empty() || self_reference {
                return Err(Error::References("fixed-output"));
            }
            let prefix = if method == Method::Recursive {
                "r:"
            } else {
                ""
            };
            let inner = format!(
                "fixed:out:{prefix}{}:{}:",
                algo.name(),
                hex::encode(&ca.digest)
            );
            let h = sha2::Sha256::digest(inner.as_bytes());
            Ok(make_store_path("output:out", Algo::Sha256, &h, name))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: &str = "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73";

    /// Paths printed by Nix itself (`nix-store --print-fixed-path`, and
    /// `builtins.toFile "hello" "hi\n"`).
    #[test]
    fn store_paths_match_nix() {
        let cases = [
            (
                "fixed:sha256:1gjpf7igg9qb2pa2y3w2vzngxdiwlh381v1rspki0k5r2j4iag8z",
                "f.txt",
                "/nix/store/v2zk7dc9fsjch35qblrfynkqiygw9mxa-f.txt",
            ),
            (
                "fixed:sha1:crk39am5zcy43ldkyjca1hc3i3f5mhwj",
                "f.txt",
                "/nix/store/z7g9qgmzbh70wsnlcz2p7120lg2yspny-f.txt",
            ),
            (
                "fixed:r:sha256:00a3r8cv7xaw55wjf3lb0gzmfpgsj083h29s5mslnml9k8c0w0zc",
                "src",
                "/nix/store/bfzzsvjl8l9x1zn68s1qc3m60xxxp9xg-src",
            ),
            (
                "fixed:r:sha512:3qcydhqixxwxiw2yixq56lbycvx1y94lw57wkfx3llfp1igg5mh1lgjnkgqlkml4fr42s2r4vnlwnlsgs9g0ai12r5i7i6gziss0y2r",
                "src",
                "/nix/store/wwjjw8vcmghkz8lr6rj1vs8nafn5fpka-src",
            ),
        ];
        for (ca, name, want) in cases {
            let c = parse_address(ca).unwrap();
            assert_eq!(store_path(&c, name, &[], false).unwrap(), want, "{ca}");
        }
        let text = ContentAddress {
            method: Method::Text,
            algo: Algo::Sha256,
            digest: sha2::Sha256::digest(b"hi\n").to_vec(),
        };
        assert_eq!(
            store_path(&text, "hello", &[], false).unwrap(),
            "/nix/store/yb0n2qbkfp00jb7hkrgrd93vi3cmdjvc-hello"
        );
        // Flat fixed outputs cannot have references.
        let flat = parse_address(cases[0].0).unwrap();
        assert!(store_path(&flat, "f.txt", &["/nix/store/x".into()], false).is_err());
    }

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
