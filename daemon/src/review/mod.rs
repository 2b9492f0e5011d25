//! Review mode (issue 16): build everything a PR changes, run its tests,
//! and say which changed packages the passing tests vouch for.
//!
//! The diff itself ([`rebuild_set`]) lives in `airlock_wire::review`, as
//! the guest computes it too; this module turns the guest's
//! [`ReviewOutcome`] and the host's verified export into the report.

pub mod report;

pub use airlock_wire::review::*;

use std::path::Path;

use crate::quarantine::VerifiedPath;

/// Largest artifact the page shows.
pub const MAX_ARTIFACT_BYTES: u64 = 16 << 20;

/// What kind of artifact a file of a test's output is, by its name:
/// `image` (screenshots) or `log`; other files are not listed.
pub fn artifact_kind(file: &str) -> Option<&'static str> {
    let lower = file.to_ascii_lowercase();
    let ext = lower.rsplit_once('.').map(|(_, e)| e)?;
    match ext {
        "png" | "jpg" | "jpeg" => Some("image"),
        "log" | "txt" => Some("log"),
        _ => None,
    }
}

/// The artifacts in the verified outputs of passing tests
/// (`passed`: test attr, output path), read from the quarantined NARs.
pub fn artifacts(
    job_id: &str,
    qdir: &Path,
    verified: &[VerifiedPath],
    passed: &[(&str, &str)],
) -> Vec<report::Artifact> {
    let mut out = Vec::new();
    for (test, path) in passed {
        let Some(v) = verified.iter().find(|v| v.path == *path) else {
            continue;
        };
        let Ok(f) = std::fs::File::open(qdir.join(&v.url)) else {
            continue;
        };
        let Ok(files) = airlock_nix_formats::nar::files(std::io::BufReader::new(f)) else {
            continue;
        };
        let base = path.trim_start_matches("/nix/store/");
        for nf in files {
            let name = if nf.path.is_empty() {
                base.to_owned()
            } else {
                nf.path.clone()
            };
            let Some(kind) = artifact_kind(&name) else {
                continue;
            };
            if nf.size > MAX_ARTIFACT_BYTES {
                continue;
            }
            out.push(report::Artifact {
                test: test.to_string(),
                store_path: path.to_string(),
                url: format!("/jobs/{job_id}/artifacts/{base}/{}", nf.path),
                file: nf.path,
                size: nf.size,
                kind: kind.into(),
            });
        }
    }
    out
}

/// The bytes of one artifact of a job's quarantined outputs: `base` is
/// the store path's name, `file` a path inside it. Only files
/// [`artifact_kind`] names, only from verified NARs.
pub fn artifact_bytes(
    qdir: &Path,
    verified: &[VerifiedPath],
    base: &str,
    file: &str,
) -> Option<(&'static str, Vec<u8>)> {
    use std::io::{Read, Seek};
    let path = format!("/nix/store/{base}");
    let v = verified.iter().find(|v| v.path == path)?;
    let name = if file.is_empty() { base } else { file };
    let kind = artifact_kind(name)?;
    let mut f = std::fs::File::open(qdir.join(&v.url)).ok()?;
    let nf = airlock_nix_formats::nar::files(std::io::BufReader::new(&mut f))
        .ok()?
        .into_iter()
        .find(|nf| nf.path == file)?;
    if nf.size > MAX_ARTIFACT_BYTES {
        return None;
    }
    f.seek(std::io::SeekFrom::Start(nf.offset)).ok()?;
    let mut buf = vec![0; nf.size as usize];
    f.read_exact(&mut buf).ok()?;
    Some((kind, buf))
}
