//! Streaming NAR validation. The guest's NARs are hostile input: they are
//! parsed, never unpacked, with limits on every length, and every byte is
//! hashed and scanned for store references on the way through.

use std::collections::{BTreeSet, HashMap};
use std::io::{self, Read, Write};

use sha2::{Digest, Sha256};

use super::nix32;
use super::path::HASH_LEN;

const MAX_TOKEN: u64 = 64;
const MAX_NAME: u64 = 255;
const MAX_TARGET: u64 = 4096;
const MAX_DEPTH: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("NAR is truncated")]
    Truncated,
    #[error("NAR is malformed: {0}")]
    Malformed(String),
    #[error("NAR entry name {0:?} is not allowed")]
    BadName(String),
    #[error("NAR entries are not sorted or repeat {0:?}")]
    Unsorted(String),
    #[error("NAR nests deeper than {MAX_DEPTH} directories")]
    TooDeep,
    #[error("NAR is larger than the {0} byte limit")]
    TooLarge(u64),
    #[error("NAR has {0} trailing bytes")]
    Trailing(u64),
    #[error("I/O error while reading the NAR")]
    Io(#[source] io::Error),
}
pub type Result<T> = std::result::Result<T, Error>;

fn io_err(e: io::Error) -> Error {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        Error::Truncated
    } else {
        Error::Io(e)
    }
}

/// Finds which candidate store hashes occur in a byte stream, across chunk
/// boundaries (what Nix does to compute references).
pub struct RefScanner {
    /// Shared between the scanners of one export ([`RefScanner::fresh`]):
    /// built once, not once per path.
    candidates: std::sync::Arc<HashMap<[u8; HASH_LEN], usize>>,
    found: BTreeSet<usize>,
    tail: Vec<u8>,
}

impl RefScanner {
    /// `hashes` are store-path hash parts; `found()` returns their indices.
    pub fn new<'a>(hashes: impl IntoIterator<Item = &'a str>) -> RefScanner {
        let mut candidates = HashMap::new();
        for (i, h) in hashes.into_iter().enumerate() {
            if let Ok(k) = <[u8; HASH_LEN]>::try_from(h.as_bytes()) {
                candidates.insert(k, i);
            }
        }
        RefScanner {
            candidates: std::sync::Arc::new(candidates),
            found: BTreeSet::new(),
            tail: Vec::new(),
        }
    }

    /// A scanner for the next stream with the same candidates (nothing
    /// found yet); costs no rebuild of the candidate table.
    pub fn fresh(&self) -> RefScanner {
        RefScanner {
            candidates: self.candidates.clone(),
            found: BTreeSet::new(),
            tail: Vec::new(),
        }
    }

    pub fn feed(&mut self, data: &[u8]) {
        if self.candidates.is_empty() {
            return;
        }
        let mut buf = std::mem::take(&mut self.tail);
        buf.extend_from_slice(data);
        let mut i = 0;
        while i + HASH_LEN <= buf.len() {
            // Check the window from its end; on a non-nix32 byte skip past it.
            let mut j = HASH_LEN;
            while j > 0 && nix32::is_nix32_char(buf[i + j - 1]) {
                j -= 1;
            }
            if j == 0 {
                if let Some(&idx) = self.candidates.get(&buf[i..i + HASH_LEN]) {
                    self.found.insert(idx);
                }
                i += 1;
            } else {
                i += j;
            }
        }
        let keep = buf.len().saturating_sub(i).min(HASH_LEN - 1);
        self.tail = buf[buf.len() - keep..].to_vec();
    }

    pub fn found(&self) -> &BTreeSet<usize> {
        &self.found
    }
}

/// A reader that hashes, counts, scans and (optionally) copies everything
/// read through it.
pub struct Tee<R, W> {
    inner: R,
    sink: Option<W>,
    sha: Sha256,
    count: u64,
    limit: u64,
    scanner: RefScanner,
}

impl<R: Read, W: Write> Tee<R, W> {
    pub fn new(inner: R, sink: Option<W>, limit: u64, scanner: RefScanner) -> Self {
        Tee {
            inner,
            sink,
            sha: Sha256::new(),
            count: 0,
            limit,
            scanner,
        }
    }
}

impl<R: Read, W: Write> Read for Tee<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        if self.count > self.limit {
            return Err(io::Error::other("NAR size limit exceeded"));
        }
        self.sha.update(&buf[..n]);
        self.scanner.feed(&buf[..n]);
        if let Some(s) = self.sink.as_mut() {
            s.write_all(&buf[..n])?;
        }
        Ok(n)
    }
}

/// What a validated NAR turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NarSummary {
    /// `sha256:<nix32>` as in narinfo `NarHash`.
    pub nar_hash: String,
    pub nar_size: u64,
    /// Indices (into the scanner's candidates) of the hashes found.
    pub references: BTreeSet<usize>,
}

/// Validate exactly `size` bytes of NAR from `r` (copied to `sink`), with
/// `max_size` as an upper bound. Fails on any structural problem and on
/// trailing data inside `size`.
pub fn validate<R: Read, W: Write>(
    r: R,
    size: u64,
    max_size: u64,
    sink: Option<W>,
    scanner: RefScanner,
) -> Result<NarSummary> {
    if size > max_size {
        return Err(Error::TooLarge(max_size));
    }
    let mut t = Tee::new(r.take(size), sink, max_size, scanner);
    expect(&mut t, b"nix-archive-1")?;
    node(&mut t, 0)?;
    // Anything left within the declared size is trailing garbage.
    let mut rest = [0u8; 8192];
    let mut trailing = 0u64;
    loop {
        let n = t.read(&mut rest).map_err(io_err)?;
        if n == 0 {
            break;
        }
        trailing += n as u64;
    }
    if trailing > 0 {
        return Err(Error::Trailing(trailing));
    }
    if t.count != size {
        return Err(Error::Truncated);
    }
    if let Some(s) = t.sink.as_mut() {
        s.flush().map_err(Error::Io)?;
    }
    Ok(NarSummary {
        nar_hash: format!("sha256:{}", nix32::encode(&t.sha.finalize())),
        nar_size: t.count,
        references: t.scanner.found.clone(),
    })
}

/// If the NAR from `r` is a single regular file, copy its contents to
/// `sink` and return whether it is executable; `None` for anything else (a
/// directory or a symlink). For NARs [`validate`] has already passed.
pub fn flat_file(mut r: impl Read, sink: &mut impl Write) -> Result<Option<bool>> {
    expect(&mut r, b"nix-archive-1")?;
    expect(&mut r, b"(")?;
    expect(&mut r, b"type")?;
    if read_str(&mut r, MAX_TOKEN)? != b"regular" {
        return Ok(None);
    }
    let mut executable = false;
    let mut tok = read_str(&mut r, MAX_TOKEN)?;
    if tok == b"executable" {
        expect(&mut r, b"")?;
        executable = true;
        tok = read_str(&mut r, MAX_TOKEN)?;
    }
    if tok != b"contents" {
        return Err(Error::Malformed("regular file without contents".into()));
    }
    let len = read_u64(&mut r)?;
    if io::copy(&mut r.take(len), sink).map_err(io_err)? != len {
        return Err(Error::Truncated);
    }
    Ok(Some(executable))
}

fn read_u64(r: &mut impl Read) -> Result<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b).map_err(io_err)?;
    Ok(u64::from_le_bytes(b))
}

fn padding(r: &mut impl Read, len: u64) -> Result<()> {
    let pad = ((8 - len % 8) % 8) as usize;
    let mut b = [0u8; 8];
    r.read_exact(&mut b[..pad]).map_err(io_err)?;
    if b[..pad].iter().any(|&x| x != 0) {
        return Err(Error::Malformed("non-zero padding".into()));
    }
    Ok(())
}

fn read_str(r: &mut impl Read, max: u64) -> Result<Vec<u8>> {
    let len = read_u64(r)?;
    if len > max {
        return Err(Error::Malformed(format!("string of {len} bytes")));
    }
    let mut v = vec![0u8; len as usize];
    r.read_exact(&mut v).map_err(io_err)?;
    padding(r, len)?;
    Ok(v)
}

fn expect(r: &mut impl Read, tok: &[u8]) -> Result<()> {
    let got = read_str(r, MAX_TOKEN)?;
    if got != tok {
        return Err(Error::Malformed(format!(
            "expected {:?}, got {:?}",
            String::from_utf8_lossy(tok),
            String::from_utf8_lossy(&got)
        )));
    }
    Ok(())
}

fn node(r: &mut impl Read, depth: usize) -> Result<()> {
    if depth > MAX_DEPTH {
        return Err(Error::TooDeep);
    }
    expect(r, b"(")?;
    expect(r, b"type")?;
    let ty = read_str(r, MAX_TOKEN)?;
    match ty.as_slice() {
        b"regular" => {
            let mut tok = read_str(r, MAX_TOKEN)?;
            if tok == b"executable" {
                expect(r, b"")?;
                tok = read_str(r, MAX_TOKEN)?;
            }
            if tok != b"contents" {
                return Err(Error::Malformed("regular file without contents".into()));
            }
            let len = read_u64(r)?;
            let copied = io::copy(&mut r.take(len), &mut io::sink()).map_err(io_err)?;
            if copied != len {
                return Err(Error::Truncated);
            }
            padding(r, len)?;
            expect(r, b")")
        }
        b"symlink" => {
            expect(r, b"target")?;
            let target = read_str(r, MAX_TARGET)?;
            if target.is_empty() || target.contains(&0) {
                return Err(Error::Malformed("bad symlink target".into()));
            }
            expect(r, b")")
        }
        b"directory" => {
            let mut prev: Option<Vec<u8>> = None;
            loop {
                let tok = read_str(r, MAX_TOKEN)?;
                match tok.as_slice() {
                    b")" => return Ok(()),
                    b"entry" => {
                        expect(r, b"(")?;
                        expect(r, b"name")?;
                        let name = read_str(r, MAX_NAME)?;
                        let shown = String::from_utf8_lossy(&name).into_owned();
                        if name.is_empty()
                            || name == b"."
                            || name == b".."
                            || name.contains(&b'/')
                            || name.contains(&0)
                        {
                            return Err(Error::BadName(shown));
                        }
                        if prev.as_ref().is_some_and(|p| p >= &name) {
                            return Err(Error::Unsorted(shown));
                        }
                        prev = Some(name);
                        expect(r, b"node")?;
                        node(r, depth + 1)?;
                        expect(r, b")")?;
                    }
                    other => {
                        return Err(Error::Malformed(format!(
                            "unexpected {:?} in directory",
                            String::from_utf8_lossy(other)
                        )))
                    }
                }
            }
        }
        other => Err(Error::Malformed(format!(
            "unknown node type {:?}",
            String::from_utf8_lossy(other)
        ))),
    }
}

/// A regular file inside a NAR: its path below the root (`""` for a NAR
/// that is one file), its size, and where its contents start in the NAR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NarFile {
    pub path: String,
    pub size: u64,
    pub offset: u64,
    pub executable: bool,
}

/// Every regular file of a NAR, in order (names that are not UTF-8 are
/// skipped). For NARs [`validate`] has already passed; still bounded.
pub fn files(r: impl Read) -> Result<Vec<NarFile>> {
    let mut c = Counting { inner: r, count: 0 };
    expect(&mut c, b"nix-archive-1")?;
    let mut out = Vec::new();
    list_node(&mut c, "", 0, &mut out)?;
    Ok(out)
}

struct Counting<R> {
    inner: R,
    count: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        Ok(n)
    }
}

fn list_node<R: Read>(
    r: &mut Counting<R>,
    path: &str,
    depth: usize,
    out: &mut Vec<NarFile>,
) -> Result<()> {
    if depth > MAX_DEPTH {
        return Err(Error::TooDeep);
    }
    expect(r, b"(")?;
    expect(r, b"type")?;
    match read_str(r, MAX_TOKEN)?.as_slice() {
        b"regular" => {
            let mut tok = read_str(r, MAX_TOKEN)?;
            let executable = tok == b"executable";
            if executable {
                expect(r, b"")?;
                tok = read_str(r, MAX_TOKEN)?;
            }
            if tok != b"contents" {
                return Err(Error::Malformed("regular file without contents".into()));
            }
            let size = read_u64(r)?;
            out.push(NarFile {
                path: path.to_owned(),
                size,
                offset: r.count,
                executable,
            });
            if io::copy(&mut r.take(size), &mut io::sink()).map_err(io_err)? != size {
                return Err(Error::Truncated);
            }
            padding(r, size)?;
            expect(r, b")")
        }
        b"symlink" => {
            expect(r, b"target")?;
            read_str(r, MAX_TARGET)?;
            expect(r, b")")
        }
        b"directory" => loop {
            match read_str(r, MAX_TOKEN)?.as_slice() {
                b")" => return Ok(()),
                b"entry" => {
                    expect(r, b"(")?;
                    expect(r, b"name")?;
                    let name = read_str(r, MAX_NAME)?;
                    expect(r, b"node")?;
                    let name = String::from_utf8(name).ok().filter(|n| {
                        !n.is_empty() && n != "." && n != ".." && !n.contains(['/', '\0'])
                    });
                    match name {
                        Some(n) => {
                            let p = if path.is_empty() {
                                n
                            } else {
                                format!("{path}/{n}")
                            };
                            list_node(r, &p, depth + 1, out)?;
                        }
                        None => {
                            let mut skipped = Vec::new();
                            list_node(r, "", depth + 1, &mut skipped)?;
                        }
                    }
                    expect(r, b")")?;
                }
                other => {
                    return Err(Error::Malformed(format!(
                        "unexpected {:?} in directory",
                        String::from_utf8_lossy(other)
                    )))
                }
            }
        },
        other => Err(Error::Malformed(format!(
            "unknown node type {:?}",
            String::from_utf8_lossy(other)
        ))),
    }
}

/// Write one NAR string (length, bytes, zero padding to 8): the token every
/// NAR is made of. The guest agent serialises store paths with it.
pub fn write_str(w: &mut impl std::io::Write, s: &[u8]) -> std::io::Result<()> {
    w.write_all(&(s.len() as u64).to_le_bytes())?;
    w.write_all(s)?;
    w.write_all(&[0u8; 8][..(8 - s.len() % 8) % 8])
}

/// The padding after `len` bytes of file contents.
pub fn zero_padding(len: u64) -> &'static [u8] {
    &[0u8; 8][..((8 - len % 8) % 8) as usize]
}

/// Build NARs in tests, benchmarks and fuzzing (the writer side of the format).
pub mod build {
    pub fn str(out: &mut Vec<u8>, s: &[u8]) {
        super::write_str(out, s).expect("writing to a Vec cannot fail");
    }
    pub enum Node<'a> {
        File { exec: bool, data: &'a [u8] },
        Link(&'a str),
        Dir(Vec<(&'a str, Node<'a>)>),
    }
    pub fn node(out: &mut Vec<u8>, n: &Node) {
        str(out, b"(");
        str(out, b"type");
        match n {
            Node::File { exec, data } => {
                str(out, b"regular");
                if *exec {
                    str(out, b"executable");
                    str(out, b"");
                }
                str(out, b"contents");
                str(out, data);
            }
            Node::Link(t) => {
                str(out, b"symlink");
                str(out, b"target");
                str(out, t.as_bytes());
            }
            Node::Dir(entries) => {
                str(out, b"directory");
                for (name, child) in entries {
                    str(out, b"entry");
                    str(out, b"(");
                    str(out, b"name");
                    str(out, name.as_bytes());
                    str(out, b"node");
                    node(out, child);
                    str(out, b")");
                }
            }
        }
        str(out, b")");
    }
    pub fn nar(n: &Node) -> Vec<u8> {
        let mut out = Vec::new();
        str(&mut out, b"nix-archive-1");
        node(&mut out, n);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::build::{nar, Node};
    use super::*;

    fn check(bytes: &[u8]) -> Result<NarSummary> {
        validate(
            bytes,
            bytes.len() as u64,
            1 << 20,
            None::<Vec<u8>>,
            RefScanner::new([]),
        )
    }

    #[test]
    fn lists_files_with_their_offsets() {
        let n = nar(&Node::Dir(vec![
            (
                "bin",
                Node::Dir(vec![(
                    "hello",
                    Node::File {
                        exec: true,
                        data: b"#!/bin/sh\n",
                    },
                )]),
            ),
            ("link", Node::Link("bin/hello")),
            (
                "shot.png",
                Node::File {
                    exec: false,
                    data: b"PNGDATA",
                },
            ),
        ]));
        let f = files(&n[..]).unwrap();
        let names: Vec<&str> = f.iter().map(|x| x.path.as_str()).collect();
        assert_eq!(names, ["bin/hello", "shot.png"]);
        assert!(f[0].executable && !f[1].executable);
        let o = f[1].offset as usize;
        assert_eq!(&n[o..o + f[1].size as usize], b"PNGDATA");
        let one = nar(&Node::File {
            exec: false,
            data: b"x",
        });
        assert_eq!(files(&one[..]).unwrap()[0].path, "");
    }

    #[test]
    fn valid_tree() {
        let n = nar(&Node::Dir(vec![
            (
                "bin",
                Node::Dir(vec![(
                    "hello",
                    Node::File {
                        exec: true,
                        data: b"#!/bin/sh\n",
                    },
                )]),
            ),
            ("link", Node::Link("bin/hello")),
            (
                "z",
                Node::File {
                    exec: false,
                    data: b"",
                },
            ),
        ]));
        let s = check(&n).unwrap();
        assert_eq!(s.nar_size, n.len() as u64);
    }

    #[test]
    fn empty_file_hash_matches_nix() {
        // `printf '' > f; nix-hash --type sha256 --base32 f` hashes this NAR.
        let n = nar(&Node::File {
            exec: false,
            data: b"",
        });
        let s = check(&n).unwrap();
        let expect = format!("sha256:{}", nix32::encode(&Sha256::digest(&n)));
        assert_eq!(s.nar_hash, expect);
    }

    #[test]
    fn rejects_dotdot_slash_unsorted_and_trailing() {
        for name in ["..", ".", "a/b", ""] {
            let n = nar(&Node::Dir(vec![(
                name,
                Node::File {
                    exec: false,
                    data: b"x",
                },
            )]));
            assert!(matches!(check(&n), Err(Error::BadName(_))), "{name:?}");
        }
        let n = nar(&Node::Dir(vec![
            ("b", Node::Link("x")),
            ("a", Node::Link("x")),
        ]));
        assert!(matches!(check(&n), Err(Error::Unsorted(_))));
        let mut n = nar(&Node::Link("x"));
        n.extend_from_slice(&[0u8; 8]);
        assert!(matches!(check(&n), Err(Error::Trailing(8))));
        let n = nar(&Node::Link("x"));
        assert!(matches!(check(&n[..n.len() - 3]), Err(Error::Truncated)));
    }

    #[test]
    fn rejects_huge_lengths_and_limits() {
        let mut n = Vec::new();
        build::str(&mut n, b"nix-archive-1");
        n.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(check(&n), Err(Error::Malformed(_))));
        let big = nar(&Node::File {
            exec: false,
            data: &[7u8; 4096],
        });
        let r = validate(
            &big[..],
            big.len() as u64,
            100,
            None::<Vec<u8>>,
            RefScanner::new([]),
        );
        assert!(matches!(r, Err(Error::TooLarge(100))));
    }

    #[test]
    fn scanner_finds_refs_across_chunks() {
        let a = "ihml9cgha2ncb1jfpf857yd6nls4n23b";
        let b = "0mdqa9w1p6cmli6976v4wi0sw9r4p5pr";
        let mut s = RefScanner::new([a, b]);
        let text = format!("xx/nix/store/{a}-foo yy");
        let (l, r) = text.as_bytes().split_at(20);
        s.feed(l);
        s.feed(r);
        assert_eq!(s.found().iter().copied().collect::<Vec<_>>(), vec![0]);
    }
}
