//! Quarantine: read the export stream a VM left behind, verify every NAR
//! without unpacking it, and publish the job's outputs atomically as an
//! unsigned binary cache under `quarantine/<commit>/<job-id>/`.
//!
//! Nothing here trusts the guest: store paths are parsed strictly, NAR
//! structure, size and hash are recomputed, and references are rescanned and
//! must equal what the guest claimed and stay inside the job's own paths.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::fsutil::sync_dir;
use crate::store::nar::{self, RefScanner};
use crate::store::narinfo::{NarInfo, Signed};
use crate::store::{nix32, StorePath};
use airlock_wire::{BuildStatus, Manifest};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("export stream rejected")]
    Wire(#[from] airlock_wire::Error),
    #[error("export lists an invalid store path")]
    Path(#[from] crate::store::path::Error),
    #[error("export lists {0} paths, more than the {1} allowed")]
    TooManyPaths(usize, usize),
    #[error("export lists {0} twice (or another path with its hash)")]
    Duplicate(String),
    #[error("{path} is rejected: {source}")]
    Nar {
        path: String,
        #[source]
        source: nar::Error,
    },
    #[error("{path}: NAR hash {actual} does not match the claimed {claimed}")]
    HashMismatch {
        path: String,
        claimed: String,
        actual: String,
    },
    #[error("{path}: claimed references {claimed:?} differ from the scanned {actual:?}")]
    References {
        path: String,
        claimed: Vec<String>,
        actual: Vec<String>,
    },
    #[error("{path} refers to {reference}, which is not part of this job's export")]
    ReferenceOutsideJob { path: String, reference: String },
    #[error("{path} names an invalid deriver {deriver:?}")]
    BadDeriver { path: String, deriver: String },
    #[error("{path} claims an invalid content address: {source}")]
    BadCa {
        path: String,
        #[source]
        source: crate::store::ca::Error,
    },
    #[error("{path}: false content address: {why}")]
    FalseCa { path: String, why: String },
    #[error("commit {0:?} is not a 40-digit hex id")]
    BadCommit(String),
    #[error("quarantine for job {0} already exists")]
    Exists(String),
    #[error("I/O error in quarantine at {0}")]
    Io(PathBuf, #[source] std::io::Error),
    #[error(
        "quarantine is full: {used} bytes in use and {claimed} more claimed, over limits.max_quarantine_bytes = {max}; nothing was kept (run `airlockctl gc`, or raise the limit)"
    )]
    QuotaFull { used: u64, claimed: u64, max: u64 },
}
pub type Result<T> = std::result::Result<T, Error>;

/// One path as the host verified it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifiedPath {
    pub path: String,
    pub nar_hash: String,
    pub nar_size: u64,
    pub references: Vec<String>,
    pub deriver: Option<String>,
    pub ca: Option<String>,
    /// `nar/<file>` under the job's quarantine directory.
    pub url: String,
}

impl VerifiedPath {
    fn of(ni: &NarInfo) -> VerifiedPath {
        VerifiedPath {
            path: ni.signed.store_path.to_string(),
            nar_hash: ni.signed.nar_hash.clone(),
            nar_size: ni.signed.nar_size,
            references: ni.signed.references.iter().map(|r| r.to_string()).collect(),
            deriver: ni.deriver.as_ref().map(|d| d.to_string()),
            ca: ni.ca.clone(),
            url: ni.url.clone(),
        }
    }

    /// The (unsigned) narinfo of this path; every field is checked again
    /// against its grammar, so a damaged manifest cannot smuggle text in.
    pub fn narinfo(&self) -> std::result::Result<NarInfo, String> {
        let sp = |p: &str| StorePath::parse(p).map_err(|e| format!("{p:?}: {e}"));
        let hash = nix32::normalize_sha256(&self.nar_hash)
            .filter(|h| *h == self.nar_hash)
            .ok_or_else(|| format!("bad NAR hash {:?}", self.nar_hash))?;
        let digest = hash.trim_start_matches("sha256:");
        if self.url != format!("nar/{digest}.nar") {
            return Err(format!("bad NAR URL {:?}", self.url));
        }
        if let Some(ca) = &self.ca {
            crate::store::ca::parse(ca).map_err(|e| e.to_string())?;
        }
        Ok(NarInfo {
            signed: Signed {
                store_path: sp(&self.path)?,
                nar_hash: hash.clone(),
                nar_size: self.nar_size,
                references: self
                    .references
                    .iter()
                    .map(|r| sp(r))
                    .collect::<std::result::Result<_, _>>()?,
            },
            url: self.url.clone(),
            compression: "none".into(),
            file_hash: hash,
            file_size: self.nar_size,
            deriver: self.deriver.as_deref().map(sp).transpose()?,
            ca: self.ca.clone(),
            sigs: vec![],
        })
    }
}

#[derive(Debug, Clone)]
pub struct Limits {
    pub max_nar_bytes: u64,
    pub max_paths: usize,
    /// Most bytes the whole quarantine (every job, released or not) may
    /// hold after this import; 0: no quota.
    pub max_total_bytes: u64,
}

impl Limits {
    pub fn from_config(l: &crate::config::Limits) -> Limits {
        Limits {
            max_nar_bytes: l.max_nar_bytes,
            max_paths: l.max_paths,
            max_total_bytes: l.max_quarantine_bytes,
        }
    }
}

/// What one store path costs besides its NAR: its narinfo and its share of
/// `manifest.json`.
const PER_PATH_OVERHEAD: u64 = 4096;

/// Bytes claimed by imports in progress, per quarantine root. Checking the
/// quota and reserving are one step under this lock, so concurrent imports
/// cannot all squeeze under it.
static RESERVED: std::sync::Mutex<BTreeMap<PathBuf, u64>> = std::sync::Mutex::new(BTreeMap::new());

/// A claim on quarantine space, given back when the import ends (its
/// files are then counted on disk instead).
struct Reservation {
    root: PathBuf,
    bytes: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut r = RESERVED.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(v) = r.get_mut(&self.root) {
            *v = v.saturating_sub(self.bytes);
        }
    }
}

fn reserve(root: &Path, claimed: u64, max: u64) -> Result<Option<Reservation>> {
    if max == 0 {
        return Ok(None);
    }
    let mut r = RESERVED.lock().unwrap_or_else(|e| e.into_inner());
    let used = disk_usage(root).saturating_add(r.get(root).copied().unwrap_or(0));
    if used.saturating_add(claimed) > max {
        return Err(Error::QuotaFull { used, claimed, max });
    }
    *r.entry(root.to_owned()).or_default() += claimed;
    Ok(Some(Reservation {
        root: root.to_owned(),
        bytes: claimed,
    }))
}

/// Bytes of the files under `root`, without imports in progress (`.tmp-*`,
/// covered by their reservations).
pub fn disk_usage(root: &Path) -> u64 {
    let mut total = 0u64;
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with(".tmp-") {
                continue;
            }
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(_) => total = total.saturating_add(e.metadata().map(|m| m.len()).unwrap_or(0)),
                Err(_) => {}
            }
        }
    }
    total
}

/// What quarantine keeps about a job, next to its NARs (`manifest.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobManifest {
    pub job_id: String,
    pub commit: String,
    pub repo: String,
    pub pr: u64,
    pub status: BuildStatus,
    pub attempted_attrs: Vec<String>,
    pub skipped_attrs: Vec<String>,
    pub paths: Vec<String>,
    pub created_at: u64,
    /// What the host verified for each path (hash, size, scanned
    /// references, checked deriver and content address, NAR file): release
    /// signs these values, never text read back from disk.
    #[serde(default)]
    pub verified: Vec<VerifiedPath>,
    /// What the host fetched and merged. Absent in manifests written before
    /// it was recorded: release then holds (the base cannot be checked).
    #[serde(default)]
    pub origin: Option<Origin>,
}

/// Where the built tree came from, as the host fetched and merged it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    /// The URL both the head and the target branch were fetched from.
    pub clone_url: String,
    /// The target branch the head was merged onto (`pr.target_branch`).
    pub base_branch: String,
    /// That branch's commit at the time of the merge.
    pub base_commit: String,
    /// The merge result that was built.
    pub merged_commit: String,
}

impl Origin {
    /// An origin for crafted test jobs: `branch` of a local repository.
    #[doc(hidden)]
    pub fn test(branch: &str) -> Origin {
        Origin {
            clone_url: "/nonexistent/test.git".into(),
            base_branch: branch.into(),
            base_commit: "0".repeat(40),
            merged_commit: "1".repeat(40),
        }
    }
}

/// Identifies the job whose export is imported.
#[derive(Debug, Clone)]
pub struct JobRef<'a> {
    pub job_id: &'a str,
    pub commit: &'a str,
    pub repo: &'a str,
    pub pr: u64,
    pub origin: Option<Origin>,
    /// Store paths the job substituted from the configured upstream caches
    /// (narinfos the host's substituter checked and served to this job):
    /// outputs may refer to them although they are not in the export.
    pub upstream: &'a BTreeSet<String>,
}

pub struct Imported {
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub paths: Vec<StorePath>,
    /// What the host verified of each path (as in `manifest.json`).
    pub verified: Vec<VerifiedPath>,
}

/// Check a content address against the path's NAR (on disk at `nar`, its
/// sha256 `nar_hash` already known), its scanned references and its store
/// path, as Nix computes them.
fn check_ca(
    ca: &str,
    sp: &StorePath,
    references: &BTreeSet<StorePath>,
    nar_hash: &str,
    nar: &Path,
) -> std::result::Result<(), String> {
    use crate::store::ca::{self, Algo, Method};
    let c = ca::parse_address(ca).map_err(|e| e.to_string())?;
    let open = || {
        File::open(nar)
            .map(BufReader::new)
            .map_err(|e| e.to_string())
    };
    let digest = match (c.method, c.algo) {
        (Method::Recursive, Algo::Sha256) => {
            nix32::decode(nar_hash.trim_start_matches("sha256:"), 32).unwrap_or_default()
        }
        (Method::Recursive, algo) => {
            let mut h = algo.hasher();
            std::io::copy(&mut open()?, &mut h).map_err(|e| e.to_string())?;
            h.finish()
        }
        (method, algo) => {
            let mut h = algo.hasher();
            let exec = nar::flat_file(open()?, &mut h).map_err(|e| e.to_string())?;
            match exec {
                None => {
                    return Err(format!(
                        "{ca} is for a single file, but the path is not one"
                    ))
                }
                Some(true) if method == Method::Text => {
                    return Err(format!("{ca} is for a non-executable file"))
                }
                Some(_) => h.finish(),
            }
        }
    };
    if digest != c.digest {
        return Err(format!(
            "claims {ca}, but the content hashes to {}:{}",
            c.algo.name(),
            nix32::encode(&digest)
        ));
    }
    let others: Vec<String> = references
        .iter()
        .filter(|r| *r != sp)
        .map(|r| r.to_string())
        .collect();
    let expected = ca::store_path(&c, sp.name(), &others, references.contains(sp))
        .map_err(|e| e.to_string())?;
    if expected != sp.to_string() {
        return Err(format!(
            "{ca} with these references is the store path {expected}, not {sp}"
        ));
    }
    Ok(())
}

/// Read just the manifest (status, attrs) from an export, without importing.
pub fn read_manifest(export: &Path) -> Result<Manifest> {
    let f = File::open(export).map_err(|e| Error::Io(export.into(), e))?;
    Ok(airlock_wire::read_header(&mut BufReader::new(f))?)
}

/// Verify `export` and publish it under `root/<commit>/<job-id>/`. On any
/// error nothing is left behind.
pub fn import(export: &Path, root: &Path, job: &JobRef<'_>, limits: &Limits) -> Result<Imported> {
    let c = job.commit;
    if c.len() != 40 || !c.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::BadCommit(c.to_owned()));
    }
    crate::job::check_id(job.job_id).map_err(|_| Error::Exists(job.job_id.to_owned()))?;
    let commit_dir = root.join(c.to_ascii_lowercase());
    let dest = commit_dir.join(job.job_id);
    if dest.exists() {
        return Err(Error::Exists(job.job_id.to_owned()));
    }
    std::fs::create_dir_all(&commit_dir).map_err(|e| Error::Io(commit_dir.clone(), e))?;
    let tmp = commit_dir.join(format!(".tmp-{}", job.job_id));
    let _ = std::fs::remove_dir_all(&tmp);
    // Held until the import is renamed into place (then its files count).
    let mut reservation = None;
    let res = import_into(export, root, &tmp, job, limits, &mut reservation).and_then(|imported| {
        std::fs::rename(&tmp, &dest).map_err(|e| Error::Io(dest.clone(), e))?;
        sync_dir(&commit_dir).map_err(|e| Error::Io(commit_dir.clone(), e))?;
        Ok(Imported {
            dir: dest.clone(),
            ..imported
        })
    });
    if res.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
        // Leave no empty commit directory behind for a rejected job.
        let _ = std::fs::remove_dir(&commit_dir);
    }
    res
}

fn import_into(
    export: &Path,
    root: &Path,
    tmp: &Path,
    job: &JobRef<'_>,
    limits: &Limits,
    reservation: &mut Option<Reservation>,
) -> Result<Imported> {
    let f = File::open(export).map_err(io_at(export))?;
    let mut r = BufReader::with_capacity(1 << 20, f);
    let manifest = airlock_wire::read_header(&mut r)?;
    if manifest.paths.len() > limits.max_paths {
        return Err(Error::TooManyPaths(manifest.paths.len(), limits.max_paths));
    }
    // Every NAR is checked against its claimed size below, so the claims
    // bound what this import writes.
    let claimed = manifest.paths.iter().fold(0u64, |a, p| {
        a.saturating_add(p.nar_size)
            .saturating_add(PER_PATH_OVERHEAD)
    });
    *reservation = reserve(root, claimed, limits.max_total_bytes)?;
    let set = PathSet::of(&manifest, job)?;
    let scanner = RefScanner::new(set.scan.iter().map(StorePath::hash_part));
    let nar_dir = tmp.join("nar");
    std::fs::create_dir_all(&nar_dir).map_err(io_at(&nar_dir))?;
    let mut verified = Vec::with_capacity(set.paths.len());
    for (claim, sp) in manifest.paths.iter().zip(&set.paths) {
        let ni = verify_path(&mut r, claim, sp, &set, &scanner, &nar_dir, limits)?;
        verified.push(VerifiedPath::of(&ni));
        let ni_path = tmp.join(format!("{}.narinfo", sp.hash_part()));
        // Plain writes: nothing in `tmp` is visible until it is renamed into
        // place, after one sync of everything (below).
        std::fs::write(&ni_path, ni.render().as_bytes()).map_err(io_at(&ni_path))?;
    }
    airlock_wire::read_trailer(&mut r)?;
    write_job_files(tmp, job, &manifest, &set.paths, verified.clone())?;
    // One sync of the file system instead of one per file (three per path
    // made a 35 000-path export take 20 s): the files, then the directories.
    crate::fsutil::sync_fs(tmp).map_err(io_at(tmp))?;
    Ok(Imported {
        dir: tmp.to_path_buf(),
        manifest,
        paths: set.paths,
        verified,
    })
}

fn io_at(p: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let p = p.to_path_buf();
    move |e| Error::Io(p, e)
}

/// The paths one export claims, parsed, and the upstream paths its
/// references may also name (substituted by the job; scanned for too, and
/// they must then really occur).
struct PathSet {
    paths: Vec<StorePath>,
    seen: HashSet<StorePath>,
    extra: BTreeSet<StorePath>,
    /// What a NAR is scanned for: `paths`, then `extra`.
    scan: Vec<StorePath>,
}

impl PathSet {
    fn of(manifest: &Manifest, job: &JobRef<'_>) -> Result<PathSet> {
        let mut paths = Vec::with_capacity(manifest.paths.len());
        let mut seen = HashSet::new();
        let mut hash_parts = HashSet::new();
        for p in &manifest.paths {
            let sp = StorePath::parse(&p.path)?;
            // Two paths with one hash part would share `<hash>.narinfo`.
            if !hash_parts.insert(sp.hash_part().to_owned()) || !seen.insert(sp.clone()) {
                return Err(Error::Duplicate(p.path.clone()));
            }
            paths.push(sp);
        }
        let mut scan: Vec<StorePath> = paths.clone();
        let mut extra = BTreeSet::new();
        for r in manifest.paths.iter().flat_map(|c| &c.references) {
            if job.upstream.contains(r) {
                let rp = StorePath::parse(r)?;
                if !seen.contains(&rp) && extra.insert(rp.clone()) {
                    scan.push(rp);
                }
            }
        }
        Ok(PathSet {
            paths,
            seen,
            extra,
            scan,
        })
    }

    /// A claim's references, each a path of this export (or an upstream
    /// path the job substituted).
    fn claimed_references(
        &self,
        claim: &airlock_wire::ExportedPath,
        name: &str,
    ) -> Result<BTreeSet<StorePath>> {
        let mut claimed = BTreeSet::new();
        for r in &claim.references {
            let rp = StorePath::parse(r)?;
            if !self.seen.contains(&rp) && !self.extra.contains(&rp) {
                return Err(Error::ReferenceOutsideJob {
                    path: name.to_owned(),
                    reference: r.clone(),
                });
            }
            claimed.insert(rp);
        }
        Ok(claimed)
    }
}

/// One path of the export: its NAR read from `r` (exactly its claimed
/// size), validated and written to `nar_dir/<hash>.nar`; its hash,
/// references and content address checked against the claim. Returns its
/// (unsigned) narinfo.
fn verify_path(
    r: &mut impl Read,
    claim: &airlock_wire::ExportedPath,
    sp: &StorePath,
    set: &PathSet,
    scanner: &RefScanner,
    nar_dir: &Path,
    limits: &Limits,
) -> Result<NarInfo> {
    let name = sp.to_string();
    let claimed = set.claimed_references(claim, &name)?;
    let (ca, deriver) = claimed_ca_and_deriver(claim, &name)?;
    let part = nar_dir.join(format!("{}.nar.part", sp.hash_part()));
    let out = File::create(&part).map_err(io_at(&part))?;
    let summary = nar::validate(
        r.take(claim.nar_size),
        claim.nar_size,
        limits.max_nar_bytes,
        Some(BufWriter::with_capacity(1 << 20, &out)),
        scanner.fresh(),
    )
    .map_err(|source| Error::Nar {
        path: name.clone(),
        source,
    })?;
    if nix32::normalize_sha256(&claim.nar_hash).as_deref() != Some(summary.nar_hash.as_str()) {
        return Err(Error::HashMismatch {
            path: name,
            claimed: claim.nar_hash.clone(),
            actual: summary.nar_hash,
        });
    }
    let actual: BTreeSet<StorePath> = summary
        .references
        .iter()
        .map(|&i| set.scan[i].clone())
        .collect();
    if actual != claimed {
        return Err(Error::References {
            path: name,
            claimed: claimed.iter().map(|p| p.to_string()).collect(),
            actual: actual.iter().map(|p| p.to_string()).collect(),
        });
    }
    // Uncompressed: the file hash is the NAR hash.
    let digest = summary.nar_hash.trim_start_matches("sha256:").to_owned();
    let file = format!("{digest}.nar");
    let final_path = nar_dir.join(&file);
    std::fs::rename(&part, &final_path).map_err(io_at(&final_path))?;
    // A content address is a claim about the contents and the path: both
    // are recomputed, so a signed narinfo never carries a false one.
    if let Some(ca) = &ca {
        check_ca(ca, sp, &actual, &summary.nar_hash, &final_path)
            .map_err(|why| Error::FalseCa { path: name, why })?;
    }
    Ok(NarInfo {
        signed: Signed {
            store_path: sp.clone(),
            nar_hash: summary.nar_hash.clone(),
            nar_size: summary.nar_size,
            references: actual.into_iter().collect(),
        },
        url: format!("nar/{file}"),
        compression: "none".into(),
        file_hash: summary.nar_hash,
        file_size: summary.nar_size,
        deriver,
        ca,
        sigs: vec![],
    })
}

/// The content address goes into the narinfo verbatim: only Nix's
/// canonical grammar passes (no other text, no control characters). The
/// deriver must be a store path.
fn claimed_ca_and_deriver(
    claim: &airlock_wire::ExportedPath,
    name: &str,
) -> Result<(Option<String>, Option<StorePath>)> {
    let ca = match &claim.ca {
        None => None,
        Some(ca) => Some(
            crate::store::ca::parse(ca)
                .map_err(|source| Error::BadCa {
                    path: name.to_owned(),
                    source,
                })?
                .to_owned(),
        ),
    };
    let deriver = match &claim.deriver {
        None => None,
        Some(d) => Some(StorePath::parse(d).map_err(|_| Error::BadDeriver {
            path: name.to_owned(),
            deriver: d.clone(),
        })?),
    };
    Ok((ca, deriver))
}

/// `nix-cache-info` and `manifest.json` of an import.
fn write_job_files(
    tmp: &Path,
    job: &JobRef<'_>,
    manifest: &Manifest,
    paths: &[StorePath],
    verified: Vec<VerifiedPath>,
) -> Result<()> {
    std::fs::write(
        tmp.join("nix-cache-info"),
        b"StoreDir: /nix/store\nWantMassQuery: 0\nPriority: 50\n",
    )
    .map_err(io_at(tmp))?;
    let jm = JobManifest {
        job_id: job.job_id.to_owned(),
        commit: job.commit.to_ascii_lowercase(),
        repo: job.repo.to_owned(),
        pr: job.pr,
        status: manifest.status.clone(),
        attempted_attrs: manifest.attempted_attrs.clone(),
        skipped_attrs: manifest.skipped_attrs.clone(),
        paths: paths.iter().map(|p| p.to_string()).collect(),
        verified,
        created_at: crate::job::now(),
        origin: job.origin.clone(),
    };
    let jm_path = tmp.join("manifest.json");
    std::fs::write(
        &jm_path,
        serde_json::to_vec_pretty(&jm).expect("serialises"),
    )
    .map_err(io_at(&jm_path))
}

/// nix32 of a sha256 digest, for callers that hash NAR files themselves.
pub fn sha256_nix32(data: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", nix32::encode(&sha2::Sha256::digest(data)))
}

/// Hand-made export streams, for tests (here, in `tests/`) and benchmarks:
/// honest ones and tampered ones.
pub mod craft {
    use super::sha256_nix32;
    use airlock_wire::{BuildStatus, ExportedPath, Manifest, Phase, WIRE_VERSION};

    /// A manifest entry whose claims match `nar` (change them to lie).
    pub fn entry(path: &str, nar: &[u8], refs: &[&str]) -> ExportedPath {
        ExportedPath {
            path: path.into(),
            nar_hash: sha256_nix32(nar),
            nar_size: nar.len() as u64,
            references: refs.iter().map(|s| s.to_string()).collect(),
            deriver: None,
            ca: None,
        }
    }

    /// A complete export stream claiming `Success` for attr `x`.
    pub fn stream(entries: Vec<(ExportedPath, Vec<u8>)>) -> Vec<u8> {
        let m = Manifest {
            version: WIRE_VERSION,
            phase: Phase::All,
            status: BuildStatus::Success,
            attempted_attrs: vec!["x".into()],
            skipped_attrs: vec![],
            paths: entries.iter().map(|e| e.0.clone()).collect(),
            review: None,
        };
        let mut out = Vec::new();
        airlock_wire::write_header(&mut out, &m).expect("in memory");
        for (_, b) in &entries {
            out.extend_from_slice(b);
        }
        airlock_wire::write_trailer(&mut out).expect("in memory");
        out
    }
}

/// Remove the half-written job directories (`<commit>/.tmp-*`) an import
/// interrupted by a restart left under the quarantine `root`.
pub fn remove_half_written(root: &Path) {
    let Ok(rd) = std::fs::read_dir(root) else {
        return;
    };
    for commit in rd.flatten() {
        let Ok(rd2) = std::fs::read_dir(commit.path()) else {
            continue;
        };
        for e in rd2.flatten() {
            if e.file_name().to_string_lossy().starts_with(".tmp-") {
                tracing::warn!(path = %e.path().display(), "removing half-written quarantine directory");
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::craft::{entry, stream};
    use super::*;
    use crate::store::nar::build::{nar, Node};

    const A: &str = "/nix/store/ihml9cgha2ncb1jfpf857yd6nls4n23b-a";
    const B: &str = "/nix/store/0mdqa9w1p6cmli6976v4wi0sw9r4p5pr-b";
    const COMMIT: &str = "e9872fa30caac57c69bfac8667e6c21254603df1";

    fn run(data: &[u8]) -> (tempfile::TempDir, Result<Imported>) {
        let d = tempfile::tempdir().unwrap();
        let mut padded = data.to_vec();
        padded.resize(data.len() + 4096, 0); // a disk is bigger than its stream
        let r = import_into_root(&d.path().join("q"), &padded, 0);
        (d, r)
    }

    /// Import `data` as a new job into the quarantine `root`.
    fn import_into_root(root: &Path, data: &[u8], max_total_bytes: u64) -> Result<Imported> {
        import_with(root, data, max_total_bytes, &BTreeSet::new())
    }

    fn import_with(
        root: &Path,
        data: &[u8],
        max_total_bytes: u64,
        upstream: &BTreeSet<String>,
    ) -> Result<Imported> {
        let exp = root.with_extension(format!("{}.img", uuid::Uuid::new_v4()));
        std::fs::write(&exp, data).unwrap();
        let id = uuid::Uuid::new_v4().to_string();
        let job = JobRef {
            job_id: &id,
            commit: COMMIT,
            repo: "o/n",
            pr: 1,
            origin: Some(Origin::test("master")),
            upstream,
        };
        let lim = Limits {
            max_nar_bytes: 1 << 20,
            max_paths: 100,
            max_total_bytes,
        };
        let r = import(&exp, root, &job, &lim);
        std::fs::remove_file(&exp).unwrap();
        r
    }

    fn quarantine_is_empty(d: &tempfile::TempDir) -> bool {
        let q = d.path().join("q");
        !q.exists() || std::fs::read_dir(q).unwrap().next().is_none()
    }

    #[test]
    fn outputs_may_refer_to_substituted_upstream_paths_only() {
        let text = format!("see {A}");
        let b = nar(&Node::File {
            exec: false,
            data: text.as_bytes(),
        });
        let s = stream(vec![(entry(B, &b, &[A]), b.clone())]);
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("q");
        let mut padded = s.clone();
        padded.resize(s.len() + 4096, 0);
        // A is neither exported nor substituted.
        assert!(matches!(
            import_with(&root, &padded, 0, &BTreeSet::new()),
            Err(Error::ReferenceOutsideJob { .. })
        ));
        // A was substituted: the reference stands, and is in the narinfo.
        let up: BTreeSet<String> = [A.to_owned()].into();
        let imp = import_with(&root, &padded, 0, &up).unwrap();
        assert_eq!(imp.paths, vec![StorePath::parse(B).unwrap()]);
        let ni = std::fs::read_to_string(imp.dir.join("0mdqa9w1p6cmli6976v4wi0sw9r4p5pr.narinfo"))
            .unwrap();
        assert!(
            ni.contains("References: ihml9cgha2ncb1jfpf857yd6nls4n23b-a\n"),
            "{ni}"
        );
        // A claimed upstream reference that the NAR does not contain is false.
        let c = nar(&Node::File {
            exec: false,
            data: b"nothing",
        });
        let s = stream(vec![(entry(B, &c, &[A]), c.clone())]);
        let mut padded = s.clone();
        padded.resize(s.len() + 4096, 0);
        assert!(matches!(
            import_with(&d.path().join("q2"), &padded, 0, &up),
            Err(Error::References { .. })
        ));
    }

    #[test]
    fn imports_valid_closure() {
        let a = nar(&Node::File {
            exec: false,
            data: b"hello",
        });
        let text = format!("see {A}");
        let b = nar(&Node::Dir(vec![(
            "f",
            Node::File {
                exec: true,
                data: text.as_bytes(),
            },
        )]));
        let s = stream(vec![
            (entry(A, &a, &[]), a.clone()),
            (entry(B, &b, &[A]), b.clone()),
        ]);
        let (_d, r) = run(&s);
        let imp = r.unwrap();
        let ni = std::fs::read_to_string(imp.dir.join("0mdqa9w1p6cmli6976v4wi0sw9r4p5pr.narinfo"))
            .unwrap();
        let ni = NarInfo::parse(&ni).unwrap();
        assert_eq!(ni.signed.references, vec![StorePath::parse(A).unwrap()]);
        assert!(imp.dir.join(&ni.url).exists());
        assert!(imp.dir.join("manifest.json").exists());
        // The verified values are recorded, and give the same narinfo.
        let m: JobManifest =
            serde_json::from_slice(&std::fs::read(imp.dir.join("manifest.json")).unwrap()).unwrap();
        assert_eq!(m.verified.len(), 2);
        let v = m.verified.iter().find(|v| v.path == B).unwrap();
        assert_eq!(v.narinfo().unwrap(), ni);
        // A damaged record is refused, not signed.
        let mut bad = v.clone();
        bad.url = "nar/../../etc/passwd".into();
        assert!(bad.narinfo().is_err());
        let mut bad = v.clone();
        bad.ca = Some("fixed:x\nSig: forged".into());
        assert!(bad.narinfo().is_err());
    }

    #[test]
    fn content_addresses_are_checked_against_contents_and_path() {
        // Nix's own answer: `nix-store --print-fixed-path sha256 <hash> f.txt`.
        const FLAT_PATH: &str = "/nix/store/v2zk7dc9fsjch35qblrfynkqiygw9mxa-f.txt";
        const FLAT_CA: &str = "fixed:sha256:1gjpf7igg9qb2pa2y3w2vzngxdiwlh381v1rspki0k5r2j4iag8z";
        let file = nar(&Node::File {
            exec: false,
            data: b"hello airlock\n",
        });
        let with_ca = |path: &str, ca: &str, n: &[u8]| {
            let mut e = entry(path, n, &[]);
            e.ca = Some(ca.to_owned());
            stream(vec![(e, n.to_vec())])
        };
        let (_d, r) = run(&with_ca(FLAT_PATH, FLAT_CA, &file));
        let imp = r.unwrap();
        let ni = std::fs::read_to_string(imp.dir.join("v2zk7dc9fsjch35qblrfynkqiygw9mxa.narinfo"))
            .unwrap();
        assert!(ni.contains(&format!("CA: {FLAT_CA}")), "{ni}");
        // Recursive sha256: the NAR hash, and the path Nix derives from it.
        let dir = nar(&Node::Dir(vec![(
            "a",
            Node::File {
                exec: false,
                data: b"x",
            },
        )]));
        let rec = format!(
            "fixed:r:sha256:{}",
            sha256_nix32(&dir).trim_start_matches("sha256:")
        );
        let c = crate::store::ca::parse_address(&rec).unwrap();
        let rec_path = crate::store::ca::store_path(&c, "src", &[], false).unwrap();
        let (_d, r) = run(&with_ca(&rec_path, &rec, &dir));
        assert!(r.is_ok(), "{:?}", r.err().map(|e| e.to_string()));
        // Well-formed but false: another file's hash; the right hash on
        // another path; a flat address on a directory.
        let other = "fixed:sha256:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73";
        for (what, data, want) in [
            (
                "hash",
                with_ca(FLAT_PATH, other, &file),
                "content hashes to",
            ),
            ("path", with_ca(A, FLAT_CA, &file), "is the store path"),
            ("kind", with_ca(&rec_path, FLAT_CA, &dir), "not one"),
        ] {
            let (d, r) = run(&data);
            let Err(e) = r else {
                panic!("{what}: a false content address was accepted")
            };
            assert!(matches!(e, Error::FalseCa { .. }), "{what}: {e}");
            assert!(e.to_string().contains(want), "{what}: {e}");
            assert!(quarantine_is_empty(&d), "{what}: left files behind");
        }
    }

    #[test]
    fn rejects_tampering_and_leaves_nothing() {
        let good = nar(&Node::File {
            exec: false,
            data: b"hello",
        });
        // The NAR writer does not check names, so it can write a hostile one.
        let dotdot = nar(&Node::Dir(vec![(
            "..",
            Node::File {
                exec: false,
                data: b"x",
            },
        )]));
        let mut wrong_hash = entry(A, &good, &[]);
        wrong_hash.nar_hash = sha256_nix32(b"something else");
        let cases: Vec<(&str, Vec<u8>)> = vec![
            (
                "dotdot",
                stream(vec![(entry(A, &dotdot, &[]), dotdot.clone())]),
            ),
            ("hash", stream(vec![(wrong_hash, good.clone())])),
            (
                "outside store",
                stream(vec![(entry("/etc/passwd", &good, &[]), good.clone())]),
            ),
            (
                "traversal",
                stream(vec![(
                    entry("/nix/store/../../etc/x", &good, &[]),
                    good.clone(),
                )]),
            ),
            (
                "ref outside job",
                stream(vec![(entry(A, &good, &[B]), good.clone())]),
            ),
            ("unclaimed ref", {
                let t = B.to_string();
                let n = nar(&Node::File {
                    exec: false,
                    data: t.as_bytes(),
                });
                stream(vec![
                    (entry(A, &n, &[]), n.clone()),
                    (entry(B, &good, &[]), good.clone()),
                ])
            }),
            ("truncated", {
                let s = stream(vec![(entry(A, &good, &[]), good.clone())]);
                s[..s.len() - 30].to_vec()
            }),
            ("garbage", b"definitely not an export".to_vec()),
            ("same hash part", {
                let twin = format!("{}-twin", &A[..44]);
                stream(vec![
                    (entry(A, &good, &[]), good.clone()),
                    (entry(&twin, &good, &[]), good.clone()),
                ])
            }),
            ("injected CA", {
                let mut e = entry(A, &good, &[]);
                e.ca = Some(format!(
                    "fixed:r:{}\nURL: nar/other.nar",
                    sha256_nix32(b"x")
                ));
                stream(vec![(e, good.clone())])
            }),
            ("CA of another grammar", {
                let mut e = entry(A, &good, &[]);
                e.ca = Some("fixed:x".into());
                stream(vec![(e, good.clone())])
            }),
        ];
        for (what, data) in cases {
            let (d, r) = run(&data);
            assert!(r.is_err(), "{what} was accepted");
            assert!(quarantine_is_empty(&d), "{what} left files behind");
        }
    }
}
