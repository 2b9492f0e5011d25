//! The outputs of a derivation file (`.drv`, Nix's ATerm form):
//! `Derive([("out","/nix/store/…-name","r:sha256","…"),…],…)`.
//!
//! Only the output list is read (name, path, hash algorithm, hash): enough
//! to tell a fixed-output derivation (its output carries a hash) from the
//! rest and to know its output paths without starting Nix. Strict: any
//! other shape is an error, and the caller asks Nix instead.

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum Error {
    #[error("not a derivation in ATerm form (expected `Derive([` at the start)")]
    NotDerive,
    #[error("malformed output list at byte {0}")]
    Malformed(usize),
    #[error("a derivation with no outputs")]
    NoOutputs,
}

/// One output of a derivation as its `.drv` file lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    pub name: String,
    /// Empty for a floating content-addressed output.
    pub path: String,
    /// `r:sha256`, `sha256`, … or empty for an input-addressed output.
    pub hash_algo: String,
    /// The expected hash of a fixed output; empty otherwise.
    pub hash: String,
}

impl Output {
    /// A fixed-output derivation's output: its hash is known in advance.
    pub fn is_fixed(&self) -> bool {
        !self.hash.is_empty()
    }
}

/// The outputs of the derivation `aterm` (a `.drv` file's contents).
pub fn outputs(aterm: &[u8]) -> Result<Vec<Output>, Error> {
    let mut p = Parser { s: aterm, at: 0 };
    p.literal(b"Derive([").map_err(|_| Error::NotDerive)?;
    let mut outs = Vec::new();
    if p.peek() == Some(b']') {
        return Err(Error::NoOutputs);
    }
    loop {
        p.literal(b"(")?;
        let name = p.string()?;
        p.literal(b",")?;
        let path = p.string()?;
        p.literal(b",")?;
        let hash_algo = p.string()?;
        p.literal(b",")?;
        let hash = p.string()?;
        p.literal(b")")?;
        outs.push(Output {
            name,
            path,
            hash_algo,
            hash,
        });
        match p.peek() {
            Some(b',') => p.at += 1,
            Some(b']') => break,
            _ => return Err(Error::Malformed(p.at)),
        }
    }
    p.literal(b"],")?;
    Ok(outs)
}

struct Parser<'a> {
    s: &'a [u8],
    at: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.at).copied()
    }

    fn literal(&mut self, lit: &[u8]) -> Result<(), Error> {
        if self.s[self.at..].starts_with(lit) {
            self.at += lit.len();
            Ok(())
        } else {
            Err(Error::Malformed(self.at))
        }
    }

    /// A quoted ATerm string with Nix's escapes (`\"`, `\\`, `\n`, `\r`,
    /// `\t`); it must be UTF-8.
    fn string(&mut self) -> Result<String, Error> {
        let start = self.at;
        self.literal(b"\"")?;
        let mut out = Vec::new();
        loop {
            let c = self.peek().ok_or(Error::Malformed(start))?;
            self.at += 1;
            match c {
                b'"' => break,
                b'\\' => {
                    let e = self.peek().ok_or(Error::Malformed(start))?;
                    self.at += 1;
                    out.push(match e {
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        other => other,
                    });
                }
                c => out.push(c),
            }
        }
        String::from_utf8(out).map_err(|_| Error::Malformed(start))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_addressed_and_fixed_outputs() {
        let ia = br#"Derive([("dev","/nix/store/aaaa-x-dev","",""),("out","/nix/store/bbbb-x","","")],[],[],"x86_64-linux","/bin/sh",[],[])"#;
        let o = outputs(ia).unwrap();
        assert_eq!(o.len(), 2);
        assert_eq!(o[0].name, "dev");
        assert_eq!(o[1].path, "/nix/store/bbbb-x");
        assert!(o.iter().all(|o| !o.is_fixed()));

        let fod = br#"Derive([("out","/nix/store/cccc-src.tar.gz","sha256","0b5a0f3c")],[],[],"x86_64-linux","builtin:fetchurl",[],[("url","http://e/\"q\"\\")])"#;
        let o = outputs(fod).unwrap();
        assert!(o[0].is_fixed());
        assert_eq!(o[0].hash_algo, "sha256");
        assert_eq!(o[0].hash, "0b5a0f3c");
    }

    #[test]
    fn escapes_in_strings() {
        let d = br#"Derive([("o\"ut","/nix/store/a\\b\n","",""),("x","","r:sha256","")],[],"#;
        let o = outputs(d).unwrap();
        assert_eq!(o[0].name, "o\"ut");
        assert_eq!(o[0].path, "/nix/store/a\\b\n");
        assert_eq!(o[1].hash_algo, "r:sha256");
        assert!(!o[1].is_fixed());
    }

    #[test]
    fn other_shapes_are_errors() {
        assert_eq!(outputs(b""), Err(Error::NotDerive));
        assert_eq!(
            outputs(b"DrvWithVersion(\"xp-dyn-drv\",[]"),
            Err(Error::NotDerive)
        );
        assert_eq!(outputs(b"Derive([],[],"), Err(Error::NoOutputs));
        assert!(outputs(b"Derive([(\"out\",\"/p\",\"\")],").is_err());
        assert!(outputs(b"Derive([(\"out\",\"/p\",\"\",\"\")").is_err());
        assert!(outputs(b"Derive([(\"out\",\"/p").is_err());
        assert!(outputs(b"Derive([(\"out\",\"\xff\",\"\",\"\")],").is_err());
        // Never panics on any prefix of a valid file.
        let d =
            br#"Derive([("out","/nix/store/bbbb-x","","")],[],[],"x86_64-linux","/bin/sh",[],[])"#;
        for n in 0..d.len() {
            let _ = outputs(&d[..n]);
        }
    }
}
