//! `.narinfo` files as Nix binary caches serve them.
//!
//! Quarantine writes them unsigned; signatures are only added at release.
//! The fields a signature covers (the fingerprint: path, NAR hash and size,
//! references) are kept apart from the cache-specific ones.

use std::fmt::Write as _;

use super::path::{self, StorePath};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("narinfo line {0:?} is malformed")]
    BadLine(String),
    #[error("narinfo lacks field {0}")]
    Missing(&'static str),
    #[error("narinfo field {0} is invalid")]
    BadField(&'static str),
    #[error("narinfo has field {0} twice")]
    Duplicate(String),
    #[error("narinfo has unknown field {0:?}")]
    Unknown(String),
    #[error("narinfo contains a control character")]
    Control,
    #[error(transparent)]
    Path(#[from] path::Error),
}
pub type Result<T> = std::result::Result<T, Error>;

/// What a signature covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    pub store_path: StorePath,
    pub nar_hash: String,
    pub nar_size: u64,
    pub references: Vec<StorePath>,
}

impl Signed {
    /// `1;<path>;<narHash>;<narSize>;<comma-separated full reference paths>`
    pub fn fingerprint(&self) -> String {
        let refs: Vec<String> = self.references.iter().map(|r| r.to_string()).collect();
        format!(
            "1;{};{};{};{}",
            self.store_path,
            self.nar_hash,
            self.nar_size,
            refs.join(",")
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NarInfo {
    pub signed: Signed,
    pub url: String,
    pub compression: String,
    pub file_hash: String,
    pub file_size: u64,
    pub deriver: Option<StorePath>,
    pub ca: Option<String>,
    pub sigs: Vec<String>,
}

impl NarInfo {
    pub fn render(&self) -> String {
        let mut s = String::new();
        let refs: Vec<String> = self
            .signed
            .references
            .iter()
            .map(StorePath::base_name)
            .collect();
        let _ = writeln!(s, "StorePath: {}", self.signed.store_path);
        let _ = writeln!(s, "URL: {}", self.url);
        let _ = writeln!(s, "Compression: {}", self.compression);
        let _ = writeln!(s, "FileHash: {}", self.file_hash);
        let _ = writeln!(s, "FileSize: {}", self.file_size);
        let _ = writeln!(s, "NarHash: {}", self.signed.nar_hash);
        let _ = writeln!(s, "NarSize: {}", self.signed.nar_size);
        let _ = writeln!(s, "References: {}", refs.join(" "));
        if let Some(d) = &self.deriver {
            let _ = writeln!(s, "Deriver: {}", d.base_name());
        }
        for sig in &self.sigs {
            let _ = writeln!(s, "Sig: {sig}");
        }
        if let Some(ca) = &self.ca {
            let _ = writeln!(s, "CA: {ca}");
        }
        s
    }

    /// Strict: every line is `Key: value` with a key Nix knows, each key at
    /// most once (`Sig` may repeat), no control characters but the newlines
    /// between lines, a `CA` only in Nix's canonical grammar.
    pub fn parse(text: &str) -> Result<NarInfo> {
        if text.chars().any(|c| c != '\n' && c.is_control()) {
            return Err(Error::Control);
        }
        let (mut sp, mut url, mut comp, mut fh, mut fs, mut nh, mut ns) =
            (None, None, None, None, None, None, None);
        let (mut refs, mut deriver, mut ca, mut sigs) = (Vec::new(), None, None, Vec::new());
        let mut seen = std::collections::HashSet::new();
        for line in text.split('\n').filter(|l| !l.is_empty()) {
            let (k, v) = line
                .split_once(": ")
                .ok_or_else(|| Error::BadLine(line.chars().take(200).collect()))?;
            if k != "Sig" && !seen.insert(k) {
                return Err(Error::Duplicate(k.to_owned()));
            }
            match k {
                "StorePath" => sp = Some(StorePath::parse(v)?),
                "URL" => url = Some(v.to_owned()),
                "Compression" => comp = Some(v.to_owned()),
                "FileHash" => fh = Some(v.to_owned()),
                "FileSize" => fs = Some(v.parse().map_err(|_| Error::BadField("FileSize"))?),
                "NarHash" => nh = Some(v.to_owned()),
                "NarSize" => ns = Some(v.parse().map_err(|_| Error::BadField("NarSize"))?),
                "References" => {
                    refs = v
                        .split_whitespace()
                        .map(StorePath::from_base_name)
                        .collect::<std::result::Result<_, _>>()?
                }
                "Deriver" if v != "unknown-deriver" => {
                    deriver = Some(StorePath::from_base_name(v)?)
                }
                "Deriver" | "System" => {}
                "Sig" => sigs.push(v.to_owned()),
                "CA" => {
                    super::ca::parse(v).map_err(|_| Error::BadField("CA"))?;
                    ca = Some(v.to_owned())
                }
                _ => return Err(Error::Unknown(k.chars().take(64).collect())),
            }
        }
        Ok(NarInfo {
            signed: Signed {
                store_path: sp.ok_or(Error::Missing("StorePath"))?,
                nar_hash: nh.ok_or(Error::Missing("NarHash"))?,
                nar_size: ns.ok_or(Error::Missing("NarSize"))?,
                references: refs,
            },
            url: url.ok_or(Error::Missing("URL"))?,
            compression: comp.unwrap_or_else(|| "bzip2".into()),
            file_hash: fh.unwrap_or_default(),
            file_size: fs.unwrap_or_default(),
            deriver,
            ca,
            sigs,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_fingerprint() {
        let a = StorePath::parse("/nix/store/ihml9cgha2ncb1jfpf857yd6nls4n23b-trivial").unwrap();
        let b = StorePath::parse("/nix/store/0mdqa9w1p6cmli6976v4wi0sw9r4p5pr-dep").unwrap();
        let ni = NarInfo {
            signed: Signed {
                store_path: a.clone(),
                nar_hash: "sha256:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73".into(),
                nar_size: 120,
                references: vec![b.clone(), a.clone()],
            },
            url: "nar/x.nar".into(),
            compression: "none".into(),
            file_hash: "sha256:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73".into(),
            file_size: 120,
            deriver: None,
            ca: None,
            sigs: vec![],
        };
        assert_eq!(NarInfo::parse(&ni.render()).unwrap(), ni);
        let text = ni.render();
        // Strictness: a repeated key, an unknown key, a control character,
        // a CA that is not canonical, an injected line.
        for bad in [
            format!("{text}NarHash: sha256:1111111111111111111111111111111111111111111111111111\n"),
            format!("{text}URL: nar/other.nar\n"),
            format!("{text}Evil: yes\n"),
            text.replace("nar/x.nar", "nar/x.nar\r"),
            text.replace("nar/x.nar", "nar/x\u{1b}[2J.nar"),
            format!("{text}CA: fixed:x\n"),
            format!(
                "{text}CA: fixed:r:sha256:{}\nStorePath: {}\n",
                "0".repeat(52),
                b
            ),
        ] {
            assert!(NarInfo::parse(&bad).is_err(), "accepted:\n{bad}");
        }
        assert!(
            NarInfo::parse(&format!("{text}System: x86_64-linux\nSig: a:b\nSig: c:d\n")).is_ok()
        );
        assert_eq!(
            ni.signed.fingerprint(),
            "1;/nix/store/ihml9cgha2ncb1jfpf857yd6nls4n23b-trivial;sha256:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73;120;/nix/store/0mdqa9w1p6cmli6976v4wi0sw9r4p5pr-dep,/nix/store/ihml9cgha2ncb1jfpf857yd6nls4n23b-trivial"
        );
    }
}
