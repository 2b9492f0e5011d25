//! Release on disk: quarantine → signed cache, release records, head
//! evidence per PR, and retention (gc). Synchronous; the watcher runs these
//! on blocking threads under one lock.
//!
//! ```text
//! quarantine/<commit>/<job>/   unsigned narinfos, nar/, manifest.json
//! cache/<hash>.narinfo         signed at release
//! cache/nar/<file>             hard links to the quarantine NARs
//! releases/<commit>.json       which jobs were released, when, by what
//! github/<owner>/<repo>/<pr>.json   head evidence (HeadRecord list)
//! ```

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::rule::{Grant, HeadRecord};
use crate::fsutil::write_atomic;
use crate::quarantine::JobManifest;
use crate::store::narinfo::NarInfo;
use crate::store::signing::SecretKey;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}: {1}")]
    Io(PathBuf, #[source] std::io::Error),
    #[error("{0}: {1}")]
    Bad(PathBuf, String),
    #[error("not a commit id: {0:?}")]
    BadCommit(String),
}
pub type Result<T> = std::result::Result<T, Error>;

fn io(p: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |e| Error::Io(p.to_path_buf(), e)
}

pub fn check_commit(c: &str) -> Result<String> {
    if super::github::is_sha(c) {
        Ok(c.to_ascii_lowercase())
    } else {
        Err(Error::BadCommit(c.to_owned()))
    }
}

/// Directory layout under the state dir.
#[derive(Debug, Clone)]
pub struct Dirs {
    pub quarantine: PathBuf,
    pub cache: PathBuf,
    pub releases: PathBuf,
    pub github: PathBuf,
}

impl Dirs {
    pub fn new(cfg: &crate::config::Config) -> Dirs {
        Dirs::under(&cfg.state_dir)
    }
    /// The layout under a state directory.
    pub fn under(state_dir: &Path) -> Dirs {
        Dirs {
            quarantine: state_dir.join("quarantine"),
            cache: state_dir.join("cache"),
            releases: state_dir.join("releases"),
            github: state_dir.join("github"),
        }
    }
    pub fn create(&self) -> Result<()> {
        for d in [
            &self.quarantine,
            &self.cache.join("nar"),
            &self.releases,
            &self.github,
        ] {
            std::fs::create_dir_all(d).map_err(io(d))?;
        }
        Ok(())
    }
}

/// Who or what released a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "by", rename_all = "snake_case")]
pub enum How {
    Label {
        repo: String,
        pr: u64,
        #[serde(flatten)]
        grant: Grant,
    },
    Operator {
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleasedJob {
    pub job_id: String,
    pub released_at: u64,
    pub how: How,
    pub paths: Vec<String>,
    /// Set when retention removed the outputs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expired_at: Option<u64>,
    /// Paths held back (`release.require_agreement` not met), with why;
    /// the job stays pending for them and is released again when they are.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub withheld: Vec<Withheld>,
}

/// A path a release left out, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Withheld {
    pub path: String,
    pub why: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseRecord {
    pub commit: String,
    pub jobs: Vec<ReleasedJob>,
}

/// A quarantined job's outputs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QuarantinedJob {
    pub commit: String,
    pub job_id: String,
    pub repo: String,
    pub pr: u64,
    pub created_at: u64,
    pub paths: Vec<String>,
    #[serde(skip)]
    pub dir: PathBuf,
    /// The values quarantine verified, which release signs.
    #[serde(skip)]
    pub verified: Vec<crate::quarantine::VerifiedPath>,
    /// The target branch the head was merged onto (`None`: not recorded).
    #[serde(default)]
    pub base_branch: Option<String>,
}

pub fn load_record(d: &Dirs, commit: &str) -> Result<ReleaseRecord> {
    let p = d.releases.join(format!("{commit}.json"));
    match std::fs::read(&p) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| Error::Bad(p, e.to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ReleaseRecord {
            commit: commit.to_owned(),
            jobs: vec![],
        }),
        Err(e) => Err(Error::Io(p, e)),
    }
}

fn save_record(d: &Dirs, r: &ReleaseRecord) -> Result<()> {
    let p = d.releases.join(format!("{}.json", r.commit));
    let data = serde_json::to_vec_pretty(r).expect("serialises");
    write_atomic(&p, &data).map_err(io(&p))
}

/// Quarantined jobs of one commit, or of all commits (`None`).
pub fn quarantined(d: &Dirs, commit: Option<&str>) -> Vec<QuarantinedJob> {
    let commits: Vec<PathBuf> = match commit {
        Some(c) => vec![d.quarantine.join(c)],
        None => std::fs::read_dir(&d.quarantine)
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default(),
    };
    let mut out = Vec::new();
    for cdir in commits {
        let Ok(rd) = std::fs::read_dir(&cdir) else {
            continue;
        };
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with('.') {
                continue; // half-written import
            }
            let mp = e.path().join("manifest.json");
            match std::fs::read(&mp)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<JobManifest>(&b).map_err(|e| e.to_string()))
            {
                Ok(m) => out.push(QuarantinedJob {
                    commit: m.commit.to_ascii_lowercase(),
                    job_id: m.job_id,
                    repo: m.repo,
                    pr: m.pr,
                    created_at: m.created_at,
                    paths: m.paths,
                    dir: e.path(),
                    verified: m.verified,
                    base_branch: m.origin.map(|o| o.base_branch),
                }),
                Err(err) => {
                    warn!(path = %mp.display(), error = %err, "unreadable quarantine manifest; skipped")
                }
            }
        }
    }
    out.sort_by(|a, b| (a.created_at, &a.job_id).cmp(&(b.created_at, &b.job_id)));
    out
}

/// Quarantined jobs not released yet, or released with paths withheld.
pub fn pending(d: &Dirs) -> Vec<QuarantinedJob> {
    let mut released: std::collections::HashMap<String, HashSet<String>> = Default::default();
    quarantined(d, None)
        .into_iter()
        .filter(|j| {
            let set = released.entry(j.commit.clone()).or_insert_with(|| {
                load_record(d, &j.commit)
                    .map(|r| {
                        r.jobs
                            .into_iter()
                            .filter(|j| j.withheld.is_empty())
                            .map(|j| j.job_id)
                            .collect()
                    })
                    .unwrap_or_default()
            });
            !set.contains(&j.job_id)
        })
        .collect()
}

/// What may be released of a job: `Err(why)` holds a path back.
pub type Gate<'a> =
    &'a (dyn Fn(&crate::quarantine::VerifiedPath) -> std::result::Result<(), String> + Sync);

/// A job released because of a label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelRelease {
    pub repo: String,
    pub pr: u64,
    pub commit: String,
    pub job_id: String,
    pub released_at: u64,
}

/// Every release record, with its commit (from the file name).
fn all_records(d: &Dirs) -> impl Iterator<Item = Result<(String, ReleaseRecord)>> + '_ {
    std::fs::read_dir(&d.releases)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_suffix(".json").map(str::to_owned)
        })
        .map(|c| load_record(d, &c).map(|r| (c, r)))
}

/// Every job released by a label (expired ones included); unreadable
/// records are skipped.
pub fn label_releases(d: &Dirs) -> Vec<LabelRelease> {
    let mut out = Vec::new();
    for (_, r) in all_records(d).flatten() {
        for j in r.jobs {
            if let How::Label { repo, pr, .. } = j.how {
                out.push(LabelRelease {
                    repo,
                    pr,
                    commit: r.commit.clone(),
                    job_id: j.job_id,
                    released_at: j.released_at,
                });
            }
        }
    }
    out
}

fn safe_nar_url(url: &str) -> Option<&str> {
    let f = url.strip_prefix("nar/")?;
    let ok = !f.is_empty()
        && f.len() <= 80
        && !f.starts_with('.')
        && f.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.');
    ok.then_some(f)
}

/// Hard-link (or, across file systems, copy) `src` to `dst` unless present.
fn link(src: &Path, dst: &Path) -> Result<()> {
    if dst.exists() {
        return Ok(());
    }
    let tmp = dst.with_extension("linking");
    let _ = std::fs::remove_file(&tmp);
    if std::fs::hard_link(src, &tmp).is_err() {
        std::fs::copy(src, &tmp).map_err(io(dst))?;
    }
    std::fs::rename(&tmp, dst).map_err(io(dst))
}

/// Sign and publish one quarantined job into the cache, then record it.
/// NARs first, narinfos second, record last: a crash leaves either nothing
/// served or a complete path (a path in the cache without a record is
/// swept by gc).
pub fn release_job(
    d: &Dirs,
    key: &SecretKey,
    job: &QuarantinedJob,
    how: How,
    now: u64,
) -> Result<ReleasedJob> {
    release_job_gated(d, key, job, how, now, &|_| Ok(()), false)
}

/// [`release_job`], every path passed through `gate` first; `gated` says
/// the gate is a real one (a job quarantined before verified values were
/// recorded is then held back whole: its paths have no deriver to check).
pub fn release_job_gated(
    d: &Dirs,
    key: &SecretKey,
    job: &QuarantinedJob,
    how: How,
    now: u64,
    gate: Gate<'_>,
    gated: bool,
) -> Result<ReleasedJob> {
    let mut infos = Vec::new();
    let mut withheld = Vec::new();
    let manifest = job.dir.join("manifest.json");
    if gated && job.verified.is_empty() {
        withheld = job
            .paths
            .iter()
            .map(|p| Withheld {
                path: p.clone(),
                why: "quarantined before verified values were recorded: nothing to check agreement on".into(),
            })
            .collect();
    } else if !job.verified.is_empty() {
        // The values quarantine verified, checked against their grammars
        // again; never the narinfo text on disk.
        for v in &job.verified {
            if let Err(why) = gate(v) {
                withheld.push(Withheld {
                    path: v.path.clone(),
                    why,
                });
                continue;
            }
            let ni = v.narinfo().map_err(|e| Error::Bad(manifest.clone(), e))?;
            if !job.paths.contains(&v.path) {
                return Err(Error::Bad(
                    manifest.clone(),
                    format!("{} not in the job's paths", v.path),
                ));
            }
            let file = safe_nar_url(&ni.url)
                .ok_or_else(|| Error::Bad(manifest.clone(), format!("bad URL {:?}", ni.url)))?
                .to_owned();
            infos.push((ni, file));
        }
    } else {
        // Quarantined before verified values were recorded: the strict
        // parser (no repeated or unknown keys, canonical CA only).
        let rd = std::fs::read_dir(&job.dir).map_err(io(&job.dir))?;
        for e in rd.flatten() {
            let p = e.path();
            if p.extension().and_then(|x| x.to_str()) != Some("narinfo") {
                continue;
            }
            let text = std::fs::read_to_string(&p).map_err(io(&p))?;
            let ni = NarInfo::parse(&text).map_err(|e| Error::Bad(p.clone(), e.to_string()))?;
            let file = safe_nar_url(&ni.url)
                .ok_or_else(|| Error::Bad(p.clone(), format!("bad URL {:?}", ni.url)))?
                .to_owned();
            infos.push((ni, file));
        }
    }
    let nar_dir = d.cache.join("nar");
    std::fs::create_dir_all(&nar_dir).map_err(io(&nar_dir))?;
    for (_, file) in &infos {
        link(&job.dir.join("nar").join(file), &nar_dir.join(file))?;
    }
    let mut paths = Vec::new();
    for (mut ni, _) in infos {
        let sig = key.sign(&ni.signed);
        ni.sigs
            .retain(|s| !s.starts_with(&format!("{}:", key.name)));
        ni.sigs.push(sig);
        let out = d
            .cache
            .join(format!("{}.narinfo", ni.signed.store_path.hash_part()));
        write_atomic(&out, ni.render().as_bytes()).map_err(io(&out))?;
        paths.push(ni.signed.store_path.to_string());
    }
    paths.sort();
    let rj = ReleasedJob {
        job_id: job.job_id.clone(),
        released_at: now,
        how,
        paths,
        expired_at: None,
        withheld,
    };
    let mut rec = load_record(d, &job.commit)?;
    rec.jobs.retain(|j| j.job_id != job.job_id);
    rec.jobs.push(rj.clone());
    save_record(d, &rec)?;
    for w in &rj.withheld {
        warn!(commit = %job.commit, job_id = %job.job_id, path = %w.path, why = %w.why, "path held back from release");
    }
    info!(commit = %job.commit, job_id = %job.job_id, paths = rj.paths.len(), withheld = rj.withheld.len(), how = ?rj.how, "released: signed and served by the binary cache");
    Ok(rj)
}

/// `/nix-cache-info`.
pub fn cache_info(priority: u32) -> String {
    format!("StoreDir: /nix/store\nWantMassQuery: 1\nPriority: {priority}\n")
}

/// Head evidence for one PR.
pub fn heads_path(d: &Dirs, repo: &str, pr: u64) -> PathBuf {
    d.github.join(repo).join(format!("{pr}.json"))
}

pub fn load_heads(d: &Dirs, repo: &str, pr: u64) -> Vec<HeadRecord> {
    if super::github::check_repo(repo).is_err() {
        return vec![];
    }
    std::fs::read(heads_path(d, repo, pr))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Most evidence kept per PR.
const MAX_HEADS: usize = 200;

/// Add evidence (deduplicated), persist. Returns whether anything changed.
pub fn add_heads(d: &Dirs, repo: &str, pr: u64, new: &[HeadRecord]) -> Result<bool> {
    if super::github::check_repo(repo).is_err() {
        return Err(Error::Bad(
            d.github.clone(),
            format!("bad repository name {repo:?}"),
        ));
    }
    let mut hs = load_heads(d, repo, pr);
    let before = hs.len();
    for h in new {
        if !hs.contains(h) {
            hs.push(h.clone());
        }
    }
    if hs.len() == before {
        return Ok(false);
    }
    hs.sort_by_key(|h| h.at);
    if hs.len() > MAX_HEADS {
        hs.drain(..hs.len() - MAX_HEADS);
    }
    let p = heads_path(d, repo, pr);
    if let Some(dir) = p.parent() {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    write_atomic(&p, &serde_json::to_vec(&hs).expect("serialises")).map_err(io(&p))?;
    Ok(true)
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcReport {
    /// Unreleased jobs whose outputs expired.
    pub expired_unreleased: Vec<String>,
    /// Released jobs whose outputs expired.
    pub expired_released: Vec<String>,
    /// narinfos removed from the cache.
    pub cache_paths_removed: usize,
    pub bytes_freed: u64,
    /// Finished jobs whose records and logs were deleted.
    #[serde(default)]
    pub jobs_removed: Vec<String>,
}

fn dir_size(p: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(p) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Retention: expire quarantined jobs (unreleased after `unreleased_secs`,
/// released after `released_secs` since release, 0 = never), then sweep
/// cache entries no live release needs.
pub fn gc(
    d: &Dirs,
    unreleased_secs: u64,
    released_secs: Option<u64>,
    now: u64,
) -> Result<GcReport> {
    let mut rep = GcReport::default();
    let mut records = std::collections::HashMap::new();
    for r in all_records(d) {
        let (commit, rec) = r?;
        records.insert(commit, rec);
    }
    for j in quarantined(d, None) {
        let rec = records.get(&j.commit).cloned().unwrap_or_default();
        let released = rec
            .jobs
            .iter()
            .find(|r| r.job_id == j.job_id && r.expired_at.is_none());
        let expire = match released {
            None => now.saturating_sub(j.created_at) >= unreleased_secs,
            Some(r) => released_secs.is_some_and(|s| now.saturating_sub(r.released_at) >= s),
        };
        if !expire {
            continue;
        }
        rep.bytes_freed += dir_size(&j.dir);
        std::fs::remove_dir_all(&j.dir).map_err(io(&j.dir))?;
        let _ = std::fs::remove_dir(j.dir.parent().unwrap_or(&j.dir));
        if released.is_some() {
            info!(commit = %j.commit, job_id = %j.job_id, "released outputs expired");
            rep.expired_released.push(j.job_id.clone());
            let r = records
                .get_mut(&j.commit)
                .expect("a released job has a record");
            for rj in r.jobs.iter_mut().filter(|rj| rj.job_id == j.job_id) {
                rj.expired_at = Some(now);
            }
            save_record(d, r)?;
        } else {
            info!(commit = %j.commit, job_id = %j.job_id, "unreleased outputs expired");
            rep.expired_unreleased.push(j.job_id.clone());
        }
    }
    // Live: every path of every unexpired released job (all records).
    let mut live: HashSet<String> = HashSet::new();
    for r in records.values() {
        for j in r.jobs.iter().filter(|j| j.expired_at.is_none()) {
            for p in &j.paths {
                if let Ok(sp) = crate::store::path::StorePath::parse(p) {
                    live.insert(sp.hash_part().to_owned());
                }
            }
        }
    }
    let mut live_nars = HashSet::new();
    let rd = std::fs::read_dir(&d.cache).map_err(io(&d.cache))?;
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(h) = name.strip_suffix(".narinfo") else {
            continue;
        };
        if live.contains(h) {
            if let Some(f) = std::fs::read_to_string(e.path())
                .ok()
                .and_then(|t| NarInfo::parse(&t).ok())
                .and_then(|ni| safe_nar_url(&ni.url).map(str::to_owned))
            {
                live_nars.insert(f);
            }
            continue;
        }
        let _ = std::fs::remove_file(e.path());
        rep.cache_paths_removed += 1;
    }
    if let Ok(rd) = std::fs::read_dir(d.cache.join("nar")) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !live_nars.contains(&name) {
                // The NAR's other link (quarantine) may still be there; count
                // only what this frees.
                if let Ok(m) = e.metadata() {
                    use std::os::unix::fs::MetadataExt;
                    if m.nlink() == 1 {
                        rep.bytes_freed += m.len();
                    }
                }
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    Ok(rep)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quarantine::craft::{entry, stream};
    use crate::store::nar::build::{nar, Node};

    const SECRET: &str = "test-1:Fh0qvKtNLAP2Js1+EJ19t3nROpqT88Q3Eljtf02C8k5wQZhxnhZXWxrTD8c2u0RXyLmHv/gCxBDduR5e3FbsYg==";
    const PUBLIC: &str = "test-1:cEGYcZ4WV1sa0w/HNrtEV8i5h7/4AsQQ3bkeXtxW7GI=";

    fn dirs(root: &Path) -> Dirs {
        let d = Dirs::under(root);
        d.create().unwrap();
        d
    }

    /// One quarantined job of `commit` with one path; returns it.
    fn job(d: &Dirs, commit: &str, path: &str) -> QuarantinedJob {
        let data = format!("contents of {}", &path[44..]);
        let n = nar(&Node::File {
            exec: false,
            data: data.as_bytes(),
        });
        let exp = d.quarantine.with_file_name("export.img");
        std::fs::write(&exp, stream(vec![(entry(path, &n, &[]), n.clone())])).unwrap();
        let id = uuid::Uuid::new_v4().to_string();
        let jr = crate::quarantine::JobRef {
            job_id: &id,
            commit,
            repo: "o/n",
            pr: 1,
            origin: Some(crate::quarantine::Origin::test("master")),
            upstream: &Default::default(),
        };
        let lim = crate::quarantine::Limits {
            max_nar_bytes: 1 << 20,
            max_paths: 10,
            max_total_bytes: 0,
        };
        crate::quarantine::import(&exp, &d.quarantine, &jr, &lim).unwrap();
        quarantined(d, Some(commit))
            .into_iter()
            .find(|j| j.job_id == id)
            .unwrap()
    }

    const C1: &str = "1111111111111111111111111111111111111111";
    const C2: &str = "2222222222222222222222222222222222222222";
    const P1: &str = "/nix/store/ihml9cgha2ncb1jfpf857yd6nls4n23b-one";
    const P2: &str = "/nix/store/0mdqa9w1p6cmli6976v4wi0sw9r4p5pr-two";

    #[test]
    fn release_signs_links_and_records() {
        let t = tempfile::tempdir().unwrap();
        let d = dirs(t.path());
        let j = job(&d, C1, P1);
        assert_eq!(pending(&d).len(), 1);
        let key = SecretKey::parse(SECRET).unwrap();
        let how = How::Operator { reason: "t".into() };
        let r = release_job(&d, &key, &j, how, 100).unwrap();
        assert_eq!(r.paths, vec![P1.to_string()]);
        assert!(pending(&d).is_empty());
        let text =
            std::fs::read_to_string(d.cache.join("ihml9cgha2ncb1jfpf857yd6nls4n23b.narinfo"))
                .unwrap();
        let ni = NarInfo::parse(&text).unwrap();
        assert_eq!(ni.sigs.len(), 1);
        assert!(crate::store::signing::verify(PUBLIC, &ni.signed, &ni.sigs[0]).unwrap());
        // The NAR is the quarantine's file, linked, not copied.
        use std::os::unix::fs::MetadataExt;
        let nar = d.cache.join(&ni.url);
        assert_eq!(std::fs::metadata(&nar).unwrap().nlink(), 2);
        // Releasing again does not sign twice.
        let r2 = release_job(
            &d,
            &key,
            &j,
            How::Operator {
                reason: "again".into(),
            },
            101,
        )
        .unwrap();
        assert_eq!(r2.paths, r.paths);
        let ni = NarInfo::parse(
            &std::fs::read_to_string(d.cache.join("ihml9cgha2ncb1jfpf857yd6nls4n23b.narinfo"))
                .unwrap(),
        )
        .unwrap();
        assert_eq!(ni.sigs.len(), 1);
        assert_eq!(load_record(&d, C1).unwrap().jobs.len(), 1);
    }

    #[test]
    fn gc_expires_by_policy() {
        let t = tempfile::tempdir().unwrap();
        let d = dirs(t.path());
        let key = SecretKey::parse(SECRET).unwrap();
        let released = job(&d, C1, P1);
        let unreleased = job(&d, C2, P2);
        let how = How::Operator { reason: "t".into() };
        release_job(&d, &key, &released, how, crate::job::now()).unwrap();
        let now = crate::job::now();
        // Young: nothing expires.
        let r = gc(&d, 3600, Some(3600), now).unwrap();
        assert_eq!(r, GcReport::default());
        // Unreleased expire; released kept for ever (None).
        let r = gc(&d, 0, None, now + 10).unwrap();
        assert_eq!(r.expired_unreleased, vec![unreleased.job_id.clone()]);
        assert!(r.expired_released.is_empty());
        assert!(!unreleased.dir.exists() && released.dir.exists());
        assert!(d
            .cache
            .join("ihml9cgha2ncb1jfpf857yd6nls4n23b.narinfo")
            .exists());
        // Released expire after their own period: quarantine and cache go.
        let r = gc(&d, 0, Some(5), now + 10).unwrap();
        assert_eq!(r.expired_released, vec![released.job_id.clone()]);
        assert_eq!(r.cache_paths_removed, 1);
        assert!(!released.dir.exists());
        assert!(!d
            .cache
            .join("ihml9cgha2ncb1jfpf857yd6nls4n23b.narinfo")
            .exists());
        assert_eq!(std::fs::read_dir(d.cache.join("nar")).unwrap().count(), 0);
        assert!(load_record(&d, C1).unwrap().jobs[0].expired_at.is_some());
    }
}
