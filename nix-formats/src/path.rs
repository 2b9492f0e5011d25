//! Store path syntax, checked strictly: everything the guest names is untrusted.

use std::fmt;

use super::nix32;

pub const STORE_DIR: &str = "/nix/store";
pub const HASH_LEN: usize = 32;
const MAX_NAME_LEN: usize = 211;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("store path {0:?} is not under {STORE_DIR}/")]
    NotInStore(String),
    #[error("store path {0:?} has an invalid hash part")]
    BadHash(String),
    #[error("store path {0:?} has an invalid name")]
    BadName(String),
}
pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StorePath {
    hash: String,
    name: String,
}

impl StorePath {
    /// Parse a full path such as `/nix/store/<32 nix32 chars>-<name>`.
    pub fn parse(full: &str) -> Result<StorePath> {
        let base = full
            .strip_prefix(STORE_DIR)
            .and_then(|r| r.strip_prefix('/'))
            .ok_or_else(|| Error::NotInStore(full.to_owned()))?;
        StorePath::from_base_name(base).map_err(|e| match e {
            Error::NotInStore(_) => Error::NotInStore(full.to_owned()),
            Error::BadHash(_) => Error::BadHash(full.to_owned()),
            Error::BadName(_) => Error::BadName(full.to_owned()),
        })
    }

    /// Parse `<hash>-<name>` (as in narinfo `References`).
    pub fn from_base_name(base: &str) -> Result<StorePath> {
        let b = base.as_bytes();
        if b.len() < HASH_LEN + 2 || b[HASH_LEN] != b'-' {
            return Err(Error::BadHash(base.to_owned()));
        }
        if !b[..HASH_LEN].iter().all(|&c| nix32::is_nix32_char(c)) {
            return Err(Error::BadHash(base.to_owned()));
        }
        let name = &base[HASH_LEN + 1..];
        let ok = !name.is_empty()
            && name.len() <= MAX_NAME_LEN
            && !name.starts_with('.')
            && name
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"+-._?=".contains(&c));
        if !ok {
            return Err(Error::BadName(base.to_owned()));
        }
        Ok(StorePath {
            hash: base[..HASH_LEN].to_owned(),
            name: name.to_owned(),
        })
    }

    pub fn hash_part(&self) -> &str {
        &self.hash
    }
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn base_name(&self) -> String {
        format!("{}-{}", self.hash, self.name)
    }
    pub fn is_derivation(&self) -> bool {
        self.name.ends_with(".drv")
    }
}

impl fmt::Display for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{STORE_DIR}/{}-{}", self.hash, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &str = "/nix/store/ihml9cgha2ncb1jfpf857yd6nls4n23b-trivial";

    #[test]
    fn parses_valid() {
        let p = StorePath::parse(OK).unwrap();
        assert_eq!(p.hash_part(), "ihml9cgha2ncb1jfpf857yd6nls4n23b");
        assert_eq!(p.name(), "trivial");
        assert_eq!(p.to_string(), OK);
    }

    #[test]
    fn rejects_hostile() {
        for bad in [
            "/etc/passwd",
            "/nix/store/../../etc/passwd",
            "/nix/store/ihml9cgha2ncb1jfpf857yd6nls4n23b-../x",
            "/nix/store/ihml9cgha2ncb1jfpf857yd6nls4n23b-a/b",
            "/nix/store/ihml9cgha2ncb1jfpf857yd6nls4n23b-",
            "/nix/store/ihml9cgha2ncb1jfpf857yd6nls4n23b-.hidden",
            "/nix/store/IHML9CGHA2NCB1JFPF857YD6NLS4N23B-x",
            "/nix/store/ihml9cgha2ncb1jfpf857yd6nls4n23e-x",
            "/nix/store/short-x",
            "/nix/storeihml9cgha2ncb1jfpf857yd6nls4n23b-x",
            "/nix/store/ihml9cgha2ncb1jfpf857yd6nls4n23b-a\0b",
        ] {
            assert!(StorePath::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
