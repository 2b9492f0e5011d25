//! The job's input: the merged tree, on read-only disks.
//!
//! Putting a tree of nixpkgs' size (53 000 files, 440 MB) on an ext4 image
//! takes half a minute, and PRs against one target branch share almost all
//! of it. So the image of a target branch's tree is made once and kept (a
//! *base image*, `<state>/inputs/<tree>.img` with the tree under `tree/`, attached read-only to every
//! job that uses it), and each job's own input disk holds only what its
//! merged tree changes against that base: the changed files under `delta/`
//! and the removed paths in `removed` (NUL-separated). The guest stacks
//! them with overlayfs (delta, then whiteouts for the removed paths, then
//! the base).
//!
//! A base image is chosen for a job as follows: the image of the target
//! branch tip's tree if there is one; else the most recently used image
//! whose tree differs from the merged tree in at most `max_delta_files`
//! paths (the branch moved on a little since); else the tip's tree gets an
//! image, made once even when several jobs want it at the same time. Images
//! are evicted least recently used beyond `max_bytes`; a job holds a hard
//! link to its image, so eviction never pulls a disk from under a job.
//!
//! With `max_bytes = 0` there are no base images and the whole merged tree
//! goes on the job's input disk (`src/`), as before.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::checkout::{self, Limits};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Git(#[from] checkout::Error),
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("git diff-tree printed an entry it should not: {0}")]
    Diff(String),
    #[error("{0}")]
    Disk(String),
}

pub type Result<T> = std::result::Result<T, Error>;

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

impl Bases {
    /// The base image cache (`[inputs]`), or `None` when it is off.
    pub fn from_config(cfg: &crate::config::Config) -> Option<Bases> {
        (cfg.inputs.max_bytes > 0).then(|| {
            Bases::new(Settings {
                dir: cfg.state_dir.join("inputs"),
                max_bytes: cfg.inputs.max_bytes,
                max_delta_files: cfg.inputs.max_delta_files,
            })
        })
    }
}

/// Settings of the base image cache.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `<state>/inputs`.
    pub dir: PathBuf,
    /// Bytes (allocated, the images are sparse) kept; 0: no base images.
    pub max_bytes: u64,
    /// Most changed paths a job's delta may have against an image that is
    /// not its target branch tip's.
    pub max_delta_files: u64,
}

pub use crate::job::InputUse;

/// One line of `git diff-tree -r -z --no-renames --name-status` between
/// the base image's tree and the merged tree.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Delta {
    /// Added, modified or changed in type: written to `delta/`.
    pub changed: Vec<Vec<u8>>,
    /// Deleted files.
    pub deleted: Vec<Vec<u8>>,
}

/// Parse `diff-tree -z --name-status` output (`STATUS\0PATH\0` …). Only
/// A, M, T and D can appear between two trees without rename detection;
/// anything else is an error, not a guess.
pub fn parse_diff(out: &[u8]) -> Result<Delta> {
    let mut d = Delta::default();
    let mut it = out.split(|&b| b == 0);
    while let Some(status) = it.next() {
        if status.is_empty() {
            break;
        }
        let path = it
            .next()
            .filter(|p| !p.is_empty())
            .ok_or_else(|| Error::Diff("a status without a path".into()))?;
        match status {
            b"A" | b"M" | b"T" => d.changed.push(path.to_vec()),
            b"D" => d.deleted.push(path.to_vec()),
            other => return Err(Error::Diff(String::from_utf8_lossy(other).into_owned())),
        }
    }
    Ok(d)
}

/// The whiteouts that remove `deleted` files from the base: a deleted file
/// whose directory is gone from the merged tree hides that directory (the
/// topmost one gone), so no empty directory is left behind where the
/// merged tree has none (`builtins.readDir` would see it: nixpkgs'
/// `pkgs/by-name` is read that way). `merged_dirs`: every directory of
/// the merged tree.
pub fn whiteouts(deleted: &[Vec<u8>], merged_dirs: &BTreeSet<Vec<u8>>) -> Vec<Vec<u8>> {
    let mut out = BTreeSet::new();
    for p in deleted {
        let mut hidden = p.clone();
        for (i, _) in p.iter().enumerate().filter(|(_, &b)| b == b'/') {
            if !merged_dirs.contains(&p[..i]) {
                hidden = p[..i].to_vec();
                break;
            }
        }
        out.insert(hidden);
    }
    out.into_iter().collect()
}

/// An image file's size on disk (it is sparse).
fn allocated(md: &std::fs::Metadata) -> u64 {
    use std::os::unix::fs::MetadataExt;
    md.blocks() * 512
}

fn is_tree_id(s: &str) -> bool {
    (s.len() == 40 || s.len() == 64) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Take the exclusive lock `path`, released when dropped.
async fn lock(path: PathBuf) -> Result<std::fs::File> {
    crate::fsutil::lock_exclusive(&path)
        .await
        .map_err(io("cannot lock", &path))
}

/// The base image cache.
#[derive(Debug, Clone)]
pub struct Bases {
    s: Settings,
}

impl Bases {
    pub fn new(s: Settings) -> Bases {
        Bases { s }
    }

    fn image(&self, tree: &str) -> PathBuf {
        self.s.dir.join(format!("{tree}.img"))
    }

    /// Cached images, most recently used first.
    fn images(&self) -> Vec<(String, std::time::SystemTime, u64)> {
        let mut v: Vec<_> = std::fs::read_dir(&self.s.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let tree = name.strip_suffix(".img").filter(|t| is_tree_id(t))?;
                let md = e.metadata().ok()?;
                Some((tree.to_owned(), md.modified().ok()?, allocated(&md)))
            })
            .collect();
        v.sort_by_key(|e| std::cmp::Reverse(e.1));
        v
    }

    /// Link the image of `tree` to `link` (the job's) and mark it used.
    /// `Ok(false)`: there is no such image (any more).
    fn take(&self, tree: &str, link: &Path) -> Result<bool> {
        let img = self.image(tree);
        let _ = std::fs::remove_file(link);
        match std::fs::hard_link(&img, link) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            // Another filesystem: a copy (sparse, reflinked where it can).
            Err(_) => {
                let st = std::process::Command::new("cp")
                    .args(["--reflink=auto", "--sparse=always"])
                    .arg(&img)
                    .arg(link)
                    .status()
                    .map_err(io("cannot run cp for", &img))?;
                if !st.success() {
                    return Err(Error::Disk(format!(
                        "cannot copy the base image {} to {}",
                        img.display(),
                        link.display()
                    )));
                }
            }
        }
        if let Ok(f) = std::fs::File::options().write(true).open(&img) {
            let _ = f.set_modified(std::time::SystemTime::now());
        }
        Ok(true)
    }

    /// Remove the least recently used images beyond `max_bytes`, never `keep`.
    fn evict(&self, keep: &str) {
        let mut total: u64 = 0;
        for (tree, _, bytes) in self.images() {
            total += bytes;
            if total > self.s.max_bytes && tree != keep {
                tracing::info!(%tree, bytes, "evicting a base image (inputs.max_bytes)");
                let _ = std::fs::remove_file(self.image(&tree));
                total -= bytes;
            }
        }
    }

    /// Choose (or make) the base image for a job whose target branch tip
    /// has tree `base_tree` and whose merged tree is `merged_tree`, and
    /// link it to `link`. Returns the image's tree and whether it was made.
    async fn choose(
        &self,
        repo: &Path,
        base_tree: &str,
        merged_tree: &str,
        link: &Path,
        limits: &Limits,
        exact: bool,
    ) -> Result<(String, bool)> {
        std::fs::create_dir_all(&self.s.dir).map_err(io("cannot create", &self.s.dir))?;
        {
            let _all = lock(self.s.dir.join(".lock")).await?;
            if self.take(base_tree, link)? {
                return Ok((base_tree.to_owned(), false));
            }
            // A review job evaluates the image's tree as its base: only the
            // exact one will do.
            let near = if exact { vec![] } else { self.images() };
            for (tree, _, _) in near.into_iter().take(8) {
                // Only trees this repository has (images of other repositories share the directory).
                if checkout::git_raw(
                    repo,
                    &["cat-file", "-e", &format!("{tree}^{{tree}}")],
                    b"",
                    None,
                    limits,
                )
                .await
                .is_err()
                {
                    continue;
                }
                let names = checkout::git_raw(
                    repo,
                    &["diff-tree", "-r", "-z", "--name-only", &tree, merged_tree],
                    b"",
                    None,
                    limits,
                )
                .await?;
                let n = names.iter().filter(|&&b| b == 0).count() as u64;
                if n <= self.s.max_delta_files && self.take(&tree, link)? {
                    return Ok((tree, false));
                }
            }
        }
        // Made once: jobs that want the same image wait for the first.
        let _one = lock(self.s.dir.join(format!("{base_tree}.lock"))).await?;
        let made = if self.image(base_tree).exists() {
            false
        } else {
            let tmp = self
                .s
                .dir
                .join(format!("tmp-{}", uuid::Uuid::new_v4().simple()));
            let res = async {
                // Under `tree/`: the image's root has lost+found.
                let root = tmp.join("root");
                checkout::write_files(repo, base_tree, &root.join("tree"), None, limits).await?;
                let img = tmp.join("base.img");
                tree_disk(&img, &root, "airlock-base").await?;
                std::fs::rename(&img, self.image(base_tree))
                    .map_err(io("cannot store the base image", &img))
            }
            .await;
            let _ = std::fs::remove_dir_all(&tmp);
            res?;
            true
        };
        let _all = lock(self.s.dir.join(".lock")).await?;
        if !self.take(base_tree, link)? {
            return Err(Error::Disk(format!(
                "the base image {base_tree} vanished before it was used"
            )));
        }
        self.evict(base_tree);
        Ok((base_tree.to_owned(), made))
    }

    /// Remove what an interrupted run left (half-made images, and the
    /// lock files, which are recreated on use).
    pub fn clean(&self) {
        for e in std::fs::read_dir(&self.s.dir)
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("tmp-") {
                tracing::warn!(path = %e.path().display(), "removing a half-made base image");
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// Rev's tree id.
async fn tree_of(repo: &Path, rev: &str, limits: &Limits) -> Result<String> {
    let out = checkout::git_raw(
        repo,
        &["rev-parse", &format!("{rev}^{{tree}}")],
        b"",
        None,
        limits,
    )
    .await?;
    Ok(String::from_utf8_lossy(&out).trim().to_owned())
}

/// Stage the job's input tree under `stage` (`src/`, or `delta/` and
/// `removed` with a base image linked at `base_link`) from `repo`, whose
/// `merged` commit is built and whose `base` commit is the target branch
/// tip. `bases`: `None` when base images are off.
pub async fn stage(
    repo: &Path,
    base: &str,
    merged: &str,
    stage: &Path,
    // The base images, and where the job's link to its image goes.
    images: Option<(&Bases, &Path)>,
    limits: &Limits,
    exact_base: bool,
) -> Result<InputUse> {
    let Some((bases, base_link)) = images else {
        let src = stage.join("src");
        checkout::write_files(repo, merged, &src, None, limits).await?;
        if exact_base {
            // A review job's base tree, whole, beside the merged one.
            checkout::write_files(repo, base, &stage.join("base-src"), None, limits).await?;
        }
        let files = count_files(&src);
        return Ok(InputUse {
            files,
            ..InputUse::default()
        });
    };
    let merged_tree = tree_of(repo, merged, limits).await?;
    let base_tree = tree_of(repo, base, limits).await?;
    let (tree, made) = bases
        .choose(
            repo,
            &base_tree,
            &merged_tree,
            base_link,
            limits,
            exact_base,
        )
        .await?;
    let diff = checkout::git_raw(
        repo,
        &[
            "diff-tree",
            "-r",
            "-z",
            "--no-renames",
            "--name-status",
            &tree,
            &merged_tree,
        ],
        b"",
        None,
        limits,
    )
    .await?;
    let delta = parse_diff(&diff)?;
    checkout::write_files(
        repo,
        &merged_tree,
        &stage.join("delta"),
        Some(&delta.changed),
        limits,
    )
    .await?;
    let removed = if delta.deleted.is_empty() {
        vec![]
    } else {
        let dirs = checkout::git_raw(
            repo,
            &["ls-tree", "-r", "-d", "-z", "--name-only", &merged_tree],
            b"",
            None,
            limits,
        )
        .await?;
        let dirs: BTreeSet<Vec<u8>> = dirs
            .split(|&b| b == 0)
            .filter(|d| !d.is_empty())
            .map(<[u8]>::to_vec)
            .collect();
        whiteouts(&delta.deleted, &dirs)
    };
    let list: Vec<u8> = removed
        .iter()
        .flat_map(|p| p.iter().copied().chain([0]))
        .collect();
    let path = stage.join("removed");
    std::fs::write(&path, list).map_err(io("cannot write", &path))?;
    Ok(InputUse {
        base_tree: Some(tree),
        base_made: made,
        files: delta.changed.len() as u64,
        removed: removed.len() as u64,
    })
}

fn count_files(p: &Path) -> u64 {
    let Ok(md) = std::fs::symlink_metadata(p) else {
        return 0;
    };
    if !md.is_dir() {
        return 1;
    }
    std::fs::read_dir(p)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| count_files(&e.path()))
        .sum()
}

/// What the tree at `p` needs on ext4: bytes (each entry rounded up to
/// whole 4 KiB blocks) and inodes (one per entry).
fn tree_usage(p: &Path) -> (u64, u64) {
    let Ok(md) = std::fs::symlink_metadata(p) else {
        return (0, 0);
    };
    let own = md.len().div_ceil(4096).max(1) * 4096;
    if !md.is_dir() {
        return (own, 1);
    }
    std::fs::read_dir(p)
        .map(|rd| {
            rd.flatten().fold((own, 1), |(b, n), e| {
                let (cb, cn) = tree_usage(&e.path());
                (b + cb, n + cn)
            })
        })
        .unwrap_or((own, 1))
}

/// A read-only ext4 image of the tree at `dir`, sized from it: bytes and
/// inodes (a nixpkgs checkout is 53 000 small files, more inodes than
/// mkfs's default ratio gives a disk of its byte size).
pub async fn tree_disk(img: &Path, dir: &Path, label: &str) -> Result<()> {
    let (bytes, entries) = tree_usage(dir);
    let inodes = entries + entries / 4 + 1024;
    // Data, 256-byte inodes, and room for metadata.
    let mib = (bytes + bytes / 4 + inodes * 256).div_ceil(1 << 20) + 32;
    mkfs(img, label, mib, Some((dir, inodes)))
        .await
        .map_err(Error::Disk)
}

/// A sparse file of `mib` MiB.
pub fn sparse_file(path: &Path, mib: u64) -> std::result::Result<(), String> {
    let f = std::fs::File::create(path).map_err(|e| format!("create {}: {e}", path.display()))?;
    f.set_len(mib << 20)
        .map_err(|e| format!("size {}: {e}", path.display()))
}

/// An ext4 image of `mib` MiB; with `from`, filled from that directory
/// and given that many (256-byte) inodes. No journal: every airlock disk
/// is read-only in the guest or thrown away with its job, and a journal
/// costs a replay at every mount after a VM's power-off (the build phase
/// mounts the `/nix` the fetch phase left) and writes under TCG.
pub async fn mkfs(
    img: &Path,
    label: &str,
    mib: u64,
    from: Option<(&Path, u64)>,
) -> std::result::Result<(), String> {
    sparse_file(img, mib)?;
    let mut cmd = tokio::process::Command::new("mkfs.ext4");
    crate::child::die_with_parent(&mut cmd);
    cmd.args([
        "-q",
        "-F",
        "-L",
        label,
        "-O",
        "^has_journal",
        "-E",
        "lazy_itable_init=1",
    ]);
    if let Some((dir, inodes)) = from {
        cmd.args(["-I", "256", "-N"])
            .arg(inodes.to_string())
            .arg("-d")
            .arg(dir);
    }
    cmd.arg(img);
    let out = cmd
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| format!("cannot run mkfs.ext4: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "mkfs.ext4 failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(v: &[&str]) -> BTreeSet<Vec<u8>> {
        v.iter().map(|s| s.as_bytes().to_vec()).collect()
    }
    fn list(v: &[&str]) -> Vec<Vec<u8>> {
        v.iter().map(|s| s.as_bytes().to_vec()).collect()
    }

    #[test]
    fn the_diff_is_parsed_strictly() {
        let d = parse_diff(b"A\0new\0M\0a/b\0T\0l\0D\0gone/x\0").unwrap();
        assert_eq!(d.changed, list(&["new", "a/b", "l"]));
        assert_eq!(d.deleted, list(&["gone/x"]));
        assert_eq!(parse_diff(b"").unwrap(), Delta::default());
        assert!(
            parse_diff(b"R100\0a\0b\0").is_err(),
            "renames are not asked for"
        );
        assert!(parse_diff(b"A\0").is_err(), "a status needs a path");
    }

    #[test]
    fn a_removed_directory_is_hidden_whole() {
        // pkgs/by-name/fo/foo removed, pkgs/by-name/fo still has fox;
        // bar's shard is gone entirely; a plain file in a kept directory.
        let merged = set(&[
            "pkgs",
            "pkgs/by-name",
            "pkgs/by-name/fo",
            "pkgs/by-name/fo/fox",
        ]);
        let w = whiteouts(
            &list(&[
                "pkgs/by-name/fo/foo/package.nix",
                "pkgs/by-name/fo/foo/a.patch",
                "pkgs/by-name/ba/bar/package.nix",
                "pkgs/top.nix",
                "top-level-file",
            ]),
            &merged,
        );
        assert_eq!(
            w,
            list(&[
                "pkgs/by-name/ba",
                "pkgs/by-name/fo/foo",
                "pkgs/top.nix",
                "top-level-file"
            ])
        );
    }

    #[test]
    fn a_directory_turned_into_a_file_is_hidden_under_it() {
        // `a/b/x` deleted, `a` is now a file (in the delta, above the whiteouts).
        assert_eq!(whiteouts(&list(&["a/b/x"]), &set(&[])), list(&["a"]));
    }

    #[test]
    fn input_use_reads_well() {
        let u = InputUse {
            base_tree: Some("0123456789abcdef0123456789abcdef01234567".into()),
            base_made: false,
            files: 1,
            removed: 0,
        };
        assert_eq!(
            u.to_string(),
            "base image 0123456789ab (reused), 1 changed files, 0 removed paths"
        );
    }

    use crate::checkout::tests::sh;

    /// Three jobs against one base: the first makes the base image, the
    /// second reuses it with only its own change on its disk, and after
    /// the branch moves on a little the third reuses it too.
    #[tokio::test]
    async fn the_second_pr_against_a_base_reuses_its_image() {
        let t = tempfile::tempdir().unwrap();
        let repo = t.path().join("repo");
        std::fs::create_dir(&repo).unwrap();
        sh(
            &repo,
            "git init -q -b master && mkdir -p pkgs/foo pkgs/bar && echo foo > pkgs/foo/default.nix \
             && echo bar > pkgs/bar/default.nix && echo top > default.nix && ln -s default.nix link \
             && git add -A && git commit -qm base",
        );
        let base = sh(&repo, "git rev-parse HEAD");
        let pr1 = sh(
            &repo,
            "git checkout -qb pr1 && echo changed > default.nix && git commit -qam pr1 && git rev-parse HEAD",
        );
        let pr2 = sh(
            &repo,
            "git checkout -q master && git checkout -qb pr2 && git rm -qr pkgs/foo && rm -rf pkgs/bar \
             && echo now-a-file > pkgs/bar && git add -A && git commit -qm pr2 && git rev-parse HEAD",
        );
        let moved = sh(
            &repo,
            "git checkout -q master && echo new > new.nix && git add new.nix && git commit -qm moved \
             && git rev-parse HEAD",
        );
        let bases = Bases::new(Settings {
            dir: t.path().join("inputs"),
            max_bytes: 1 << 30,
            max_delta_files: 10,
        });
        let limits = Limits::default();
        let run = |n: &str, head: String, base: String| {
            let (repo, t, bases) = (repo.clone(), t.path().to_owned(), bases.clone());
            let n = n.to_owned();
            async move {
                let stage_dir = t.join(&n);
                let link = t.join(format!("{n}.base.img"));
                let u = stage(
                    &repo,
                    &base,
                    &head,
                    &stage_dir,
                    Some((&bases, &link)),
                    &limits,
                    false,
                )
                .await
                .unwrap();
                assert!(link.exists());
                (u, stage_dir)
            }
        };
        let (u1, s1) = run("job1", pr1, base.clone()).await;
        assert!(u1.base_made, "{u1:?}");
        assert_eq!((u1.files, u1.removed), (1, 0));
        assert_eq!(
            std::fs::read_to_string(s1.join("delta/default.nix")).unwrap(),
            "changed\n"
        );
        let (u2, s2) = run("job2", pr2, base.clone()).await;
        assert!(!u2.base_made, "the second job reuses the image: {u2:?}");
        assert_eq!(u2.base_tree, u1.base_tree);
        assert_eq!(
            std::fs::read_to_string(s2.join("delta/pkgs/bar")).unwrap(),
            "now-a-file\n"
        );
        let removed = std::fs::read(s2.join("removed")).unwrap();
        assert_eq!(removed, b"pkgs/bar\0pkgs/foo\0");
        // The branch moved on: its tip has no image, the old one is close enough.
        let (u3, s3) = run("job3", moved.clone(), moved).await;
        assert!(!u3.base_made && u3.base_tree == u1.base_tree, "{u3:?}");
        assert!(s3.join("delta/new.nix").exists());
        assert_eq!(bases.images().len(), 1);
    }

    /// Without base images the whole tree is on the job's disk.
    #[tokio::test]
    async fn without_base_images_the_whole_tree_is_staged() {
        let t = tempfile::tempdir().unwrap();
        let repo = t.path().join("repo");
        std::fs::create_dir(&repo).unwrap();
        sh(
            &repo,
            "git init -q -b master && mkdir d && echo a > d/a && chmod +x d/a && ln -s d/a l \
             && git add -A && git commit -qm base",
        );
        let head = sh(&repo, "git rev-parse HEAD");
        let s = t.path().join("stage");
        let u = stage(&repo, &head, &head, &s, None, &Limits::default(), false)
            .await
            .unwrap();
        assert_eq!(u.files, 2);
        use std::os::unix::fs::PermissionsExt;
        let md = std::fs::metadata(s.join("src/d/a")).unwrap();
        assert_eq!(md.permissions().mode() & 0o111, 0o111, "modes kept");
        assert_eq!(
            std::fs::read_link(s.join("src/l")).unwrap(),
            Path::new("d/a")
        );
    }

    #[test]
    fn eviction_keeps_the_image_in_use_and_the_newest() {
        let t = tempfile::tempdir().unwrap();
        let b = Bases::new(Settings {
            dir: t.path().to_owned(),
            max_bytes: 3 * 4096,
            max_delta_files: 10,
        });
        let now = std::time::SystemTime::now();
        for (i, c) in ["a", "b", "c", "d"].iter().enumerate() {
            let p = b.image(&c.repeat(40));
            std::fs::write(&p, vec![1u8; 2 * 4096]).unwrap();
            let f = std::fs::File::options().write(true).open(&p).unwrap();
            f.set_modified(now - std::time::Duration::from_secs(100 - i as u64))
                .unwrap();
        }
        b.evict(&"a".repeat(40));
        let left: BTreeSet<String> = b.images().into_iter().map(|(t, _, _)| t).collect();
        assert_eq!(left, BTreeSet::from(["a".repeat(40), "d".repeat(40)]));
    }
}
