//! The queue-runner's stream framing: a `BuildResult` or `FetchPaths`
//! stream is one header listing every path with its NAR size, then chunks
//! of **one** zstd frame that decompresses to the NARs back to back; a
//! `BuildLog` stream is chunks of one zstd frame of the raw log. A second
//! frame would be ignored by the runner's decoder, so everything goes
//! through one encoder, finished before the stream ends.

use sha2::{Digest, Sha256};

use super::proto::{HashAlgorithm, ValidPathInfo};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("zstd: {0}")]
    Zstd(#[source] std::io::Error),
    #[error("path {0} of the stream has no NAR hash or a hash other than SHA-256")]
    NoSha256(String),
    #[error("the stream's NARs are {got} bytes, its header says {want}")]
    Length { got: u64, want: u64 },
    #[error("the NAR of {path} has SHA-256 {got}, its header says {want}")]
    Hash {
        path: String,
        got: String,
        want: String,
    },
    #[error("the stream is larger than {0} bytes")]
    TooLarge(u64),
}
pub type Result<T> = std::result::Result<T, Error>;

/// Bytes per chunk message (the runner sends at most 64 KiB; a message
/// must stay under 50 MiB).
pub const CHUNK: usize = 64 << 10;

/// One zstd frame of `data`, cut into chunks for the stream.
pub fn compress_chunks(data: &[u8]) -> Result<Vec<Vec<u8>>> {
    let frame = zstd::bulk::compress(data, 3).map_err(Error::Zstd)?;
    Ok(frame.chunks(CHUNK).map(<[u8]>::to_vec).collect())
}

/// The chunks of a stream, decompressed: the first frame only (as the
/// runner reads it), and never more than `max` bytes.
pub fn decompress(chunks: &[Vec<u8>], max: u64) -> Result<Vec<u8>> {
    use std::io::Read;
    let joined: Vec<u8> = chunks.concat();
    let mut dec = zstd::stream::read::Decoder::new(&joined[..])
        .map_err(Error::Zstd)?
        .single_frame();
    let mut out = Vec::new();
    (&mut dec)
        .take(max + 1)
        .read_to_end(&mut out)
        .map_err(Error::Zstd)?;
    if out.len() as u64 > max {
        return Err(Error::TooLarge(max));
    }
    Ok(out)
}

/// Split a decompressed NAR stream by the header's sizes, each NAR checked
/// against its header's SHA-256: `(base name, NAR)` in stream order.
pub fn split_nars<'a>(infos: &[ValidPathInfo], data: &'a [u8]) -> Result<Vec<(String, &'a [u8])>> {
    let want = infos
        .iter()
        .map(|i| i.info.as_ref().map_or(0, |i| i.nar_size))
        .try_fold(0u64, u64::checked_add)
        .unwrap_or(u64::MAX);
    if want != data.len() as u64 {
        return Err(Error::Length {
            got: data.len() as u64,
            want,
        });
    }
    let mut out = Vec::new();
    let mut at = 0usize;
    for vpi in infos {
        let name = vpi
            .path
            .as_ref()
            .map(|p| p.path.clone())
            .unwrap_or_default();
        let info = vpi
            .info
            .as_ref()
            .ok_or_else(|| Error::NoSha256(name.clone()))?;
        let hash = info
            .nar_hash
            .as_ref()
            .filter(|h| h.algorithm == HashAlgorithm::Sha256 as i32 && h.digest.len() == 32)
            .ok_or_else(|| Error::NoSha256(name.clone()))?;
        let nar = &data[at..at + info.nar_size as usize];
        at += info.nar_size as usize;
        let got: [u8; 32] = Sha256::digest(nar).into();
        if got[..] != hash.digest[..] {
            return Err(Error::Hash {
                path: name,
                got: hex::encode(got),
                want: hex::encode(&hash.digest),
            });
        }
        out.push((name, nar));
    }
    Ok(out)
}
