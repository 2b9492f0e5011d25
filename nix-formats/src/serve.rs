//! Nix's serve protocol (`nix-store --serve --write` on stdin/stdout), the
//! part a builder of resolved derivations needs: the handshake, the
//! `BuildDerivation` command with a BasicDerivation, and its result.
//!
//! Why this protocol: a step from Hydra's queue-runner is a force-resolved
//! BasicDerivation. Writing it out as a `.drv` would give other output
//! paths (an input-addressed path hashes the derivation modulo its input
//! derivations, which the resolved form no longer has), so it must reach
//! Nix as a BasicDerivation; `BuildDerivation` of the serve protocol takes
//! exactly that, as root needs no daemon trust, and writes the build log
//! as plain lines on stderr.
//!
//! Framing: every integer is a u64, little endian (booleans too); a string
//! is its length, its bytes and zero padding to a multiple of 8; a list is
//! its count and its elements. Versions are `major << 8 | minor`.

use std::io::{Read, Write};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("not a serve protocol peer (magic {0:#x})")]
    Magic(u64),
    #[error("serve protocol {major}.{minor} is not 2.x with x >= 5")]
    Version { major: u64, minor: u64 },
    #[error("a string of {0} bytes is longer than the bound")]
    TooLong(u64),
    #[error("a list of {0} entries is longer than the bound")]
    TooMany(u64),
}
pub type Result<T> = std::result::Result<T, Error>;

pub const MAGIC_1: u64 = 0x390c_9deb;
pub const MAGIC_2: u64 = 0x5452_eecb;
/// 2.7: the version this client speaks (Nix 2.2x's servers speak it too).
pub const VERSION: u64 = 2 << 8 | 7;
pub const CMD_BUILD_DERIVATION: u64 = 8;

/// Bounds on what a reply may make us allocate.
const MAX_STRING: u64 = 64 << 20;
const MAX_LIST: u64 = 1 << 20;

/// One output of a BasicDerivation: the same four strings as a `.drv`
/// file's output (input-addressed (path, "", ""); fixed (path,
/// `r:sha256` or `sha256`, base16 hash); floating ("", method:algo, "");
/// deferred ("", "", "")).
pub use crate::drv::Output;

/// A derivation whose inputs are all store paths (no input derivations).
/// Strings are bytes, as in Nix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BasicDerivation {
    /// Sorted by name (Nix's map order).
    pub outputs: Vec<Output>,
    /// Full paths, sorted.
    pub input_srcs: Vec<String>,
    pub platform: Vec<u8>,
    pub builder: Vec<u8>,
    pub args: Vec<Vec<u8>>,
    /// Sorted by name.
    pub env: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Limits passed with the build (seconds and bytes; 0 = none).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BuildOptions {
    pub max_silent_time: u64,
    pub build_timeout: u64,
    pub max_log_size: u64,
}

/// Nix's `BuildResult::Status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Built,
    Substituted,
    AlreadyValid,
    PermanentFailure,
    InputRejected,
    OutputRejected,
    TransientFailure,
    CachedFailure,
    TimedOut,
    MiscFailure,
    DependencyFailed,
    LogLimitExceeded,
    NotDeterministic,
    ResolvesToAlreadyValid,
    NoSubstituters,
    Other(u64),
}

impl Status {
    pub fn from_code(c: u64) -> Status {
        use Status::*;
        match c {
            0 => Built,
            1 => Substituted,
            2 => AlreadyValid,
            3 => PermanentFailure,
            4 => InputRejected,
            5 => OutputRejected,
            6 => TransientFailure,
            7 => CachedFailure,
            8 => TimedOut,
            9 => MiscFailure,
            10 => DependencyFailed,
            11 => LogLimitExceeded,
            12 => NotDeterministic,
            13 => ResolvesToAlreadyValid,
            14 => NoSubstituters,
            n => Other(n),
        }
    }

    /// The outputs are there: built now or already.
    pub fn is_success(self) -> bool {
        matches!(
            self,
            Status::Built
                | Status::Substituted
                | Status::AlreadyValid
                | Status::ResolvesToAlreadyValid
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildResult {
    pub status: Status,
    pub error: String,
    pub times_built: u64,
    pub start_time: u64,
    pub stop_time: u64,
    /// `(DrvOutput id, Realisation JSON)` as Nix sent them.
    pub built_outputs: Vec<(String, String)>,
}

pub fn write_u64(w: &mut impl Write, n: u64) -> Result<()> {
    Ok(w.write_all(&n.to_le_bytes())?)
}

pub fn write_bytes(w: &mut impl Write, b: &[u8]) -> Result<()> {
    write_u64(w, b.len() as u64)?;
    w.write_all(b)?;
    let pad = (8 - b.len() % 8) % 8;
    Ok(w.write_all(&[0u8; 8][..pad])?)
}

fn write_list<T: AsRef<[u8]>>(w: &mut impl Write, items: &[T]) -> Result<()> {
    write_u64(w, items.len() as u64)?;
    for i in items {
        write_bytes(w, i.as_ref())?;
    }
    Ok(())
}

pub fn read_u64(r: &mut impl Read) -> Result<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

pub fn read_bytes(r: &mut impl Read) -> Result<Vec<u8>> {
    let n = read_u64(r)?;
    if n > MAX_STRING {
        return Err(Error::TooLong(n));
    }
    let mut b = vec![0u8; n as usize];
    r.read_exact(&mut b)?;
    let mut pad = [0u8; 8];
    r.read_exact(&mut pad[..((8 - n % 8) % 8) as usize])?;
    Ok(b)
}

fn read_string(r: &mut impl Read) -> Result<String> {
    Ok(String::from_utf8_lossy(&read_bytes(r)?).into_owned())
}

/// The client's side of the handshake: the negotiated version.
pub fn handshake(w: &mut impl Write, r: &mut impl Read) -> Result<u64> {
    write_u64(w, MAGIC_1)?;
    write_u64(w, VERSION)?;
    w.flush()?;
    let magic = read_u64(r)?;
    if magic != MAGIC_2 {
        return Err(Error::Magic(magic));
    }
    let theirs = read_u64(r)?;
    if theirs >> 8 != 2 || theirs & 0xff < 5 {
        return Err(Error::Version {
            major: theirs >> 8,
            minor: theirs & 0xff,
        });
    }
    Ok(theirs.min(VERSION))
}

/// `BuildDerivation` of `drv` (its full `.drv` path: its name names the
/// outputs), written for the negotiated `version`.
pub fn write_build_derivation(
    w: &mut impl Write,
    version: u64,
    drv_path: &str,
    d: &BasicDerivation,
    o: &BuildOptions,
) -> Result<()> {
    let minor = version & 0xff;
    write_u64(w, CMD_BUILD_DERIVATION)?;
    write_bytes(w, drv_path.as_bytes())?;
    write_u64(w, d.outputs.len() as u64)?;
    for out in &d.outputs {
        write_bytes(w, out.name.as_bytes())?;
        write_bytes(w, out.path.as_bytes())?;
        write_bytes(w, out.hash_algo.as_bytes())?;
        write_bytes(w, out.hash.as_bytes())?;
    }
    write_list(w, &d.input_srcs)?;
    write_bytes(w, &d.platform)?;
    write_bytes(w, &d.builder)?;
    write_list(w, &d.args)?;
    write_u64(w, d.env.len() as u64)?;
    for (k, v) in &d.env {
        write_bytes(w, k)?;
        write_bytes(w, v)?;
    }
    write_u64(w, o.max_silent_time)?;
    write_u64(w, o.build_timeout)?;
    if minor >= 2 {
        write_u64(w, o.max_log_size)?;
    }
    if minor >= 3 {
        write_u64(w, 0)?; // nrRepeats
        write_u64(w, 0)?; // enforceDeterminism
    }
    if minor >= 7 {
        write_u64(w, 0)?; // keepFailed
    }
    Ok(w.flush()?)
}

/// The reply to `BuildDerivation` at the negotiated `version`.
pub fn read_build_result(r: &mut impl Read, version: u64) -> Result<BuildResult> {
    let minor = version & 0xff;
    let status = Status::from_code(read_u64(r)?);
    let error = read_string(r)?;
    let mut res = BuildResult {
        status,
        error,
        times_built: 0,
        start_time: 0,
        stop_time: 0,
        built_outputs: vec![],
    };
    if minor >= 3 {
        res.times_built = read_u64(r)?;
        let _non_deterministic = read_u64(r)?;
        res.start_time = read_u64(r)?;
        res.stop_time = read_u64(r)?;
    }
    if minor >= 6 {
        let n = read_u64(r)?;
        if n > MAX_LIST {
            return Err(Error::TooMany(n));
        }
        for _ in 0..n {
            let id = read_string(r)?;
            let realisation = read_string(r)?;
            res.built_outputs.push((id, realisation));
        }
    }
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_padded_to_eight_bytes() {
        let mut b = vec![];
        write_bytes(&mut b, b"-c").unwrap();
        assert_eq!(b, [2, 0, 0, 0, 0, 0, 0, 0, b'-', b'c', 0, 0, 0, 0, 0, 0]);
        assert_eq!(read_bytes(&mut &b[..]).unwrap(), b"-c");
        let mut e = vec![];
        write_bytes(&mut e, b"").unwrap();
        assert_eq!(e.len(), 8);
    }

    #[test]
    fn a_result_reads_at_each_version() {
        let mut b = vec![];
        write_u64(&mut b, 3).unwrap();
        write_bytes(&mut b, b"builder failed").unwrap();
        for v in [1, 0, 10, 11] {
            write_u64(&mut b, v).unwrap();
        }
        write_u64(&mut b, 1).unwrap();
        write_bytes(&mut b, b"sha256:00!out").unwrap();
        write_bytes(&mut b, b"{}").unwrap();
        let r = read_build_result(&mut &b[..], VERSION).unwrap();
        assert_eq!(r.status, Status::PermanentFailure);
        assert!(!r.status.is_success());
        assert_eq!((r.times_built, r.start_time, r.stop_time), (1, 10, 11));
        assert_eq!(r.built_outputs.len(), 1);
        // A hostile length is refused before anything is allocated.
        let mut h = vec![];
        write_u64(&mut h, 0).unwrap();
        write_u64(&mut h, u64::MAX).unwrap();
        assert!(matches!(
            read_build_result(&mut &h[..], VERSION),
            Err(Error::TooLong(_))
        ));
    }

    #[test]
    fn the_handshake_refuses_what_is_not_a_serve_peer() {
        let mut reply = vec![];
        write_u64(&mut reply, MAGIC_2).unwrap();
        write_u64(&mut reply, 2 << 8 | 7).unwrap();
        let mut sent = vec![];
        assert_eq!(handshake(&mut sent, &mut &reply[..]).unwrap(), VERSION);
        assert_eq!(&sent[..8], &MAGIC_1.to_le_bytes());
        let mut bad = vec![];
        write_u64(&mut bad, 0x6478696f).unwrap();
        assert!(matches!(
            handshake(&mut vec![], &mut &bad[..]),
            Err(Error::Magic(_))
        ));
    }
}
