//! Host-side checkout, as ofborg does it: fetch the PR head and the target
//! branch into a per-repository cache, then merge the head onto the tip of
//! the target branch in a per-job working tree. The VM gets a read-only copy
//! of the merged tree (no `.git`).

use std::path::{Path, PathBuf};
use std::process::Stdio;

use sha2::{Digest, Sha256};
use tokio::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("git {args} failed: {stderr}")]
    Git { args: String, stderr: String },
    #[error("cannot run git")]
    Spawn(#[source] std::io::Error),
    #[error("cannot export the merged tree")]
    Export(#[source] std::io::Error),
    #[error("cannot prepare the git cache {0}")]
    Cache(PathBuf, #[source] std::io::Error),
    #[error("git {args} did not finish within {secs} s")]
    Timeout { args: String, secs: u64 },
}

/// Bounds on the host-side checkout of an untrusted PR.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_files: u64,
    pub max_bytes: u64,
    pub timeout: std::time::Duration,
    /// `RLIMIT_DATA` of every git process (heap and private mappings; the
    /// pack files git maps read-only do not count); 0: none.
    pub max_memory: u64,
}

impl Limits {
    pub fn from_config(l: &crate::config::Limits) -> Limits {
        Limits {
            max_files: l.max_checkout_files,
            max_bytes: l.max_checkout_bytes,
            timeout: std::time::Duration::from_secs(l.checkout_timeout_secs.max(1)),
            max_memory: l.max_checkout_memory_bytes,
        }
    }
}

impl Default for Limits {
    fn default() -> Limits {
        Limits::from_config(&crate::config::Limits::default())
    }
}
pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Merged; `commit` is the merge result that gets built, `base` the
    /// target branch commit the head was merged onto.
    Merged { commit: String, base: String },
    /// The head does not merge cleanly onto the target branch.
    MergeFailed,
    /// The head commit (or the target branch) could not be fetched.
    Missing(String),
    /// The tree is over a checkout limit (a git bomb, or simply too big);
    /// nothing of it was written out.
    TooLarge(String),
}

/// Run `work` (a git step named `what`) under `limit`; when it runs over
/// it is dropped, which kills its git process (`kill_on_drop`).
async fn timed<T>(
    limit: std::time::Duration,
    what: impl FnOnce() -> String,
    work: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    tokio::time::timeout(limit, work).await.unwrap_or_else(|_| {
        Err(Error::Timeout {
            args: what(),
            secs: limit.as_secs(),
        })
    })
}

/// `git` under the checkout's timeout and memory bound.
async fn git_t(dir: Option<&Path>, args: &[&str], limits: &Limits) -> Result<String> {
    timed(limits.timeout, || args.join(" "), git(dir, args, limits)).await
}

/// A git command whose memory is bounded by `limits.max_memory`: a tree
/// that makes git allocate without end ends in git's own "out of memory"
/// error, not in the host's OOM killer.
fn git_command(limits: &Limits) -> Command {
    let mut cmd = Command::new("git");
    // A git left running by a killed airlockd would go on writing into a
    // checkout the next airlockd has cleared.
    crate::child::die_with_parent(&mut cmd);
    let max = limits.max_memory;
    if max > 0 {
        use nix::sys::resource::{setrlimit, Resource};
        #[allow(unsafe_code)]
        // SAFETY: the closure runs in the child between fork and exec; it
        // only calls setrlimit(2), which is async-signal-safe, and
        // allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                setrlimit(Resource::RLIMIT_DATA, max, max).map_err(std::io::Error::from)
            });
        }
    }
    cmd
}

/// Count the files of `rev`'s tree and add up their sizes, streaming `git
/// ls-tree -r -l`, and stop (killing git) at the first limit passed: a tree
/// of nested trees that expands to billions of entries costs no more than
/// `max_files` lines. `Ok(None)`: within limits; `Ok(Some(why))`: over.
pub async fn check_tree(repo: &Path, rev: &str, limits: &Limits) -> Result<Option<String>> {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt};
    let work = async {
        let mut child = git_command(limits)
            .arg("-C")
            .arg(repo)
            .args(["ls-tree", "-r", "-l", "-z", "--full-tree", rev])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(Error::Spawn)?;
        let mut out = tokio::io::BufReader::new(child.stdout.take().expect("piped"));
        let (mut files, mut bytes) = (0u64, 0u64);
        let mut entry = Vec::new();
        loop {
            entry.clear();
            // Bounded: an entry is mode, type, id, size and a path.
            let n = (&mut out)
                .take(64 * 1024)
                .read_until(0, &mut entry)
                .await
                .map_err(Error::Spawn)?;
            if n == 0 {
                break;
            }
            files += 1;
            // "<mode> <type> <id> <size>\t<path>"; size is "-" for submodules.
            let meta = entry.split(|&b| b == b'\t').next().unwrap_or_default();
            if let Some(size) = meta.split(|&b| b == b' ').filter(|f| !f.is_empty()).nth(3) {
                bytes += std::str::from_utf8(size)
                    .ok()
                    .and_then(|s| s.trim().parse::<u64>().ok())
                    .unwrap_or(0);
            }
            if files > limits.max_files {
                return Ok(Some(format!(
                    "{rev} has more than {} files (limits.max_checkout_files)",
                    limits.max_files
                )));
            }
            if bytes > limits.max_bytes {
                return Ok(Some(format!(
                    "{rev} has more than {} bytes of files (limits.max_checkout_bytes)",
                    limits.max_bytes
                )));
            }
        }
        let st = child.wait().await.map_err(Error::Spawn)?;
        if !st.success() {
            return Err(Error::Git {
                args: format!("ls-tree -r {rev}"),
                stderr: format!("exit {st}"),
            });
        }
        Ok(None)
    };
    timed(limits.timeout, || format!("ls-tree -r {rev}"), work).await
}

async fn git(dir: Option<&Path>, args: &[&str], limits: &Limits) -> Result<String> {
    let mut cmd = git_command(limits);
    if let Some(d) = dir {
        cmd.arg("-C").arg(d);
    }
    cmd.args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_AUTHOR_NAME", "airlock")
        .env("GIT_AUTHOR_EMAIL", "airlock@localhost")
        .env("GIT_COMMITTER_NAME", "airlock")
        .env("GIT_COMMITTER_EMAIL", "airlock@localhost")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = cmd.output().await.map_err(Error::Spawn)?;
    if !out.status.success() {
        return Err(Error::Git {
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The bare cache for one repository URL.
pub fn cache_dir(root: &Path, url: &str) -> PathBuf {
    let h = Sha256::digest(url.as_bytes());
    let hex: String = h.iter().take(8).map(|b| format!("{b:02x}")).collect();
    root.join(format!("{hex}.git"))
}

/// Take the exclusive lock of one repository's cache (`<hash>.lock`, an
/// flock: it serialises jobs of this daemon and of any other process using
/// the same cache). Released when the file is dropped.
async fn lock_cache(cache: &Path) -> Result<std::fs::File> {
    let path = cache.with_extension("lock");
    crate::fsutil::lock_exclusive(&path)
        .await
        .map_err(|e| Error::Cache(path, e))
}

/// Fetch the target branch and the head into the cache, then merge in `work`.
/// `pr` is used to fetch `refs/pull/<pr>/head` when the sha alone is not
/// fetchable (GitHub and local mirrors both have it).
///
/// Concurrent jobs of one repository take turns on its cache (init, fetch,
/// clone); their merges run in parallel in their own working trees.
pub async fn prepare(
    cache_root: &Path,
    url: &str,
    target_branch: &str,
    head: &str,
    pr: u64,
    work: &Path,
    limits: &Limits,
) -> Result<Outcome> {
    let cache = cache_dir(cache_root, url);
    let lock = open_cache(cache_root, &cache, limits).await?;
    if let Some(why) = fetch(&cache, url, target_branch, head, pr, limits).await? {
        return Ok(Outcome::Missing(why));
    }
    // Nothing of an untrusted tree is written out before its size is known.
    for rev in [head, target_branch] {
        if let Some(why) = check_tree(&cache, rev, limits).await? {
            return Ok(Outcome::TooLarge(why));
        }
    }
    let work_s = work.to_string_lossy().into_owned();
    let cache_s = cache.to_string_lossy().into_owned();
    git_t(
        None,
        &[
            "clone",
            "-q",
            "--shared",
            "--no-checkout",
            &cache_s,
            &work_s,
        ],
        limits,
    )
    .await?;
    drop(lock);
    let base = git_t(
        Some(work),
        &[
            "rev-parse",
            "--verify",
            &format!("refs/remotes/origin/{target_branch}^{{commit}}"),
        ],
        limits,
    )
    .await?;
    let Some(commit) = merge(work, &base, head, limits).await? else {
        return Ok(Outcome::MergeFailed);
    };
    if let Some(why) = check_tree(work, &commit, limits).await? {
        return Ok(Outcome::TooLarge(why));
    }
    Ok(Outcome::Merged { commit, base })
}

/// Make (if needed) and lock the bare cache of one repository; the lock is
/// held until the returned file is dropped.
async fn open_cache(cache_root: &Path, cache: &Path, t: &Limits) -> Result<std::fs::File> {
    std::fs::create_dir_all(cache_root).map_err(|e| Error::Cache(cache_root.to_owned(), e))?;
    let lock = lock_cache(cache).await?;
    if !cache.join("HEAD").exists() {
        // A directory without HEAD is a leftover of an interrupted init.
        if cache.exists() {
            std::fs::remove_dir_all(cache).map_err(|e| Error::Cache(cache.to_owned(), e))?;
        }
        let tmp = cache.with_extension(format!("tmp-{}", uuid::Uuid::new_v4().simple()));
        git_t(None, &["init", "-q", "--bare", &tmp.to_string_lossy()], t).await?;
        std::fs::rename(&tmp, cache).map_err(|e| Error::Cache(cache.to_owned(), e))?;
    }
    Ok(lock)
}

/// Fetch the target branch and the head into the cache (the head by its
/// sha, else as `refs/pull/<pr>/head`). `Some(why)`: one of them is not
/// there.
async fn fetch(
    cache: &Path,
    url: &str,
    target_branch: &str,
    head: &str,
    pr: u64,
    t: &Limits,
) -> Result<Option<String>> {
    let fetch = |what: String| async move {
        git_t(
            Some(cache),
            &["fetch", "-q", "--no-tags", "--", url, &what],
            t,
        )
        .await
    };
    match fetch(format!(
        "+refs/heads/{target_branch}:refs/heads/{target_branch}"
    ))
    .await
    {
        Ok(_) => {}
        // Too slow is our problem, not a missing branch: reported, not silent.
        Err(e @ Error::Timeout { .. }) => return Err(e),
        Err(e) => return Ok(Some(format!("target branch {target_branch}: {e}"))),
    }
    let have_head = || async {
        git_t(
            Some(cache),
            &["cat-file", "-e", &format!("{head}^{{commit}}")],
            t,
        )
        .await
        .is_ok()
    };
    if have_head().await {
        return Ok(None);
    }
    let mut why = String::new();
    if let Err(e1) = fetch(head.to_owned()).await {
        if let Err(e2) = fetch(format!("+refs/pull/{pr}/head:refs/pull/{pr}/head")).await {
            why = format!(" ({e1}; {e2})");
        }
    }
    if !have_head().await {
        return Ok(Some(format!("commit {head} not found in {url}{why}")));
    }
    Ok(None)
}

/// Merge `head` onto `base` in `work` as `git merge` would (up to date, a
/// fast-forward, or a merge commit). The merge is made without a working
/// tree (`merge-tree`, the same merge machinery): nothing of the tree is
/// written out here; the input disks take what they need from the
/// objects. `None`: a conflict.
async fn merge(work: &Path, base: &str, head: &str, t: &Limits) -> Result<Option<String>> {
    let is_ancestor = |a: &str, b: &str| {
        let (a, b) = (a.to_owned(), b.to_owned());
        async move {
            git_t(Some(work), &["merge-base", "--is-ancestor", &a, &b], t)
                .await
                .is_ok()
        }
    };
    if is_ancestor(head, base).await {
        // Already merged: what `git merge` calls "up to date".
        return Ok(Some(base.to_owned()));
    }
    if is_ancestor(base, head).await {
        // A fast-forward, as `git merge` does by default.
        return Ok(Some(head.to_owned()));
    }
    let tree = match git_t(
        Some(work),
        &["merge-tree", "--write-tree", "--no-messages", base, head],
        t,
    )
    .await
    {
        Ok(out) => out.lines().next().unwrap_or_default().to_owned(),
        Err(e @ Error::Timeout { .. }) => return Err(e),
        Err(_) => return Ok(None),
    };
    let commit = git_t(
        Some(work),
        &[
            "commit-tree",
            "--no-gpg-sign",
            &tree,
            "-p",
            base,
            "-p",
            head,
            "-m",
            "Automatic merge for airlock",
        ],
        t,
    )
    .await?;
    Ok(Some(commit))
}

/// `git` in `repo` under the checkout's timeout and memory bound, with
/// `input` on its stdin and its stdout returned as bytes (paths in git
/// need not be UTF-8). `index`: the index file it uses (`GIT_INDEX_FILE`).
pub async fn git_raw(
    repo: &Path,
    args: &[&str],
    input: &[u8],
    index: Option<&Path>,
    limits: &Limits,
) -> Result<Vec<u8>> {
    let work = async {
        use tokio::io::AsyncWriteExt;
        let mut cmd = git_command(limits);
        cmd.arg("-C").arg(repo).args(args);
        if let Some(i) = index {
            cmd.env("GIT_INDEX_FILE", i);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(Error::Spawn)?;
        let mut stdin = child.stdin.take().expect("piped");
        let input = input.to_vec();
        // Written while the output is read: neither pipe can fill up.
        let feed = tokio::spawn(async move {
            let _ = stdin.write_all(&input).await;
        });
        let out = child.wait_with_output().await.map_err(Error::Spawn)?;
        let _ = feed.await;
        if !out.status.success() {
            return Err(Error::Git {
                args: args.join(" "),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        Ok(out.stdout)
    };
    timed(limits.timeout, || args.join(" "), work).await
}

/// Write files of `rev`'s tree under `dest` as a checkout would (modes,
/// symlinks, `.gitattributes` conversions; no `.git`): all of them, or
/// only `paths`. Its size was checked by [`check_tree`].
pub async fn write_files(
    repo: &Path,
    rev: &str,
    dest: &Path,
    paths: Option<&[Vec<u8>]>,
    limits: &Limits,
) -> Result<()> {
    std::fs::create_dir_all(dest).map_err(Error::Export)?;
    let index = dest.with_extension(format!("index-{}", uuid::Uuid::new_v4().simple()));
    let res = async {
        git_raw(repo, &["read-tree", rev], b"", Some(&index), limits).await?;
        let prefix = format!("--prefix={}/", dest.to_string_lossy());
        match paths {
            None => {
                git_raw(
                    repo,
                    &["checkout-index", "-a", &prefix],
                    b"",
                    Some(&index),
                    limits,
                )
                .await
            }
            Some(p) => {
                let list: Vec<u8> = p
                    .iter()
                    .flat_map(|p| p.iter().copied().chain([0]))
                    .collect();
                git_raw(
                    repo,
                    &["checkout-index", "-z", "--stdin", &prefix],
                    &list,
                    Some(&index),
                    limits,
                )
                .await
            }
        }
    }
    .await;
    let _ = std::fs::remove_file(&index);
    res.map(|_| ())
}

/// Remove the half-made git caches (`*.tmp-*`) an interrupted first fetch
/// left in the cache directory.
pub fn remove_half_made(cache_dir: &Path) {
    let Ok(rd) = std::fs::read_dir(cache_dir) else {
        return;
    };
    for e in rd.flatten() {
        if e.file_name().to_string_lossy().contains(".tmp-") {
            tracing::warn!(path = %e.path().display(), "removing half-made git cache");
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Run a shell script in `dir` with a git identity; its trimmed stdout.
    pub(crate) fn sh(dir: &Path, script: &str) -> String {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(script)
            .current_dir(dir)
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@example.org")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example.org")
            .output()
            .expect("sh");
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// A repository under `t` whose `master` has one commit, then a PR
    /// branch made by `pr` (shell, committed), then `master` again with
    /// `after` (shell). Returns (its URL, the PR's head).
    fn pr_repo(t: &Path, pr: &str, after: &str) -> (String, String) {
        let repo = t.join("repo");
        std::fs::create_dir(&repo).unwrap();
        let head = sh(
            &repo,
            &format!(
                "git init -q -b master && echo a > a && git add a && git commit -qm base \
                 && git checkout -qb pr && {pr} && git add -A && git commit -qm pr \
                 && git rev-parse HEAD && git checkout -q master && {after}"
            ),
        );
        (repo.to_string_lossy().into_owned(), head)
    }

    /// Jobs of one repository that arrive together, before airlock has ever
    /// fetched it, all get their checkout (the first fetch included).
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_first_fetches_of_one_repository_all_merge() {
        let t = tempfile::tempdir().unwrap();
        let (url, head) = pr_repo(
            t.path(),
            "echo b > b",
            "echo c > c && git add c && git commit -qm moved >/dev/null",
        );
        let cache = t.path().join("git");
        let jobs: Vec<_> = (0..6)
            .map(|i| {
                let (cache, url, head) = (cache.clone(), url.clone(), head.clone());
                let work = t.path().join(format!("work-{i}"));
                tokio::spawn(async move {
                    prepare(&cache, &url, "master", &head, 1, &work, &Limits::default()).await
                })
            })
            .collect();
        for j in jobs {
            let out = j.await.unwrap();
            assert!(
                matches!(out, Ok(Outcome::Merged { .. })),
                "every job merges: {out:?}"
            );
        }
    }

    /// A head whose objects make git allocate more than the checkout's
    /// memory bound: git fails with its own error (the host is not at
    /// risk), and the job says why.
    #[tokio::test]
    async fn git_runs_under_the_memory_bound() {
        let t = tempfile::tempdir().unwrap();
        let (url, head) = pr_repo(t.path(), "head -c 200000000 /dev/zero > big", "true");
        let tight = Limits {
            max_memory: 64 << 20,
            ..Limits::default()
        };
        let work = t.path().join("work");
        let out = prepare(
            &t.path().join("git"),
            &url,
            "master",
            &head,
            1,
            &work,
            &tight,
        )
        .await;
        let text = match &out {
            Ok(Outcome::Missing(why)) => why.clone(),
            Err(e) => e.to_string(),
            other => panic!("git went past its memory bound: {other:?}"),
        };
        assert!(text.to_lowercase().contains("memory"), "{text}");
        // The same checkout with the default bound works.
        let out = prepare(
            &t.path().join("git2"),
            &url,
            "master",
            &head,
            1,
            &t.path().join("w2"),
            &Limits::default(),
        )
        .await
        .unwrap();
        assert!(matches!(out, Outcome::Merged { .. }), "{out:?}");
    }

    /// A PR whose head is a git bomb (ten trees of ten trees … of one
    /// blob: 10^9 files in a few kilobytes of objects) is refused from its
    /// object listing, quickly, without writing anything out.
    #[tokio::test]
    async fn a_git_bomb_is_refused_before_anything_is_written() {
        let t = tempfile::tempdir().unwrap();
        let repo = t.path().join("repo");
        std::fs::create_dir(&repo).unwrap();
        sh(
            &repo,
            "git init -q -b master && echo a > a && git add a && git commit -qm base",
        );
        let head = sh(
            &repo,
            "blob=$(echo boom | git hash-object -w --stdin) \
             && tree=$(printf '100644 blob %s\\tf\\n' $blob | git mktree) \
             && for level in 1 2 3 4 5 6 7 8 9; do \
                  tree=$(for i in 0 1 2 3 4 5 6 7 8 9; do printf '040000 tree %s\\td%s\\n' $tree $i; done | git mktree); \
                done \
             && git commit-tree -p HEAD -m bomb $tree",
        );
        let limits = Limits {
            max_files: 100_000,
            max_bytes: 1 << 30,
            timeout: std::time::Duration::from_secs(60),
            ..Limits::default()
        };
        let t0 = std::time::Instant::now();
        let work = t.path().join("work");
        let cache = t.path().join("git");
        let url = repo.to_string_lossy().into_owned();
        let out = prepare(&cache, &url, "master", &head, 1, &work, &limits)
            .await
            .unwrap();
        assert!(
            matches!(&out, Outcome::TooLarge(why) if why.contains("max_checkout_files")),
            "{out:?}"
        );
        assert!(t0.elapsed().as_secs() < 30, "took {:?}", t0.elapsed());
        assert!(!work.exists(), "nothing was checked out");
        // A blob that is simply too big is refused the same way.
        let big = sh(
            &repo,
            "git checkout -q master && head -c 2000000 /dev/zero > big && git add big \
             && git commit -qm big && git rev-parse HEAD",
        );
        let small = Limits {
            max_bytes: 1_000_000,
            ..limits
        };
        let w2 = t.path().join("w2");
        let out = prepare(&cache, &url, "master", &big, 1, &w2, &small)
            .await
            .unwrap();
        assert!(
            matches!(&out, Outcome::TooLarge(why) if why.contains("max_checkout_bytes")),
            "{out:?}"
        );
    }

    #[test]
    fn a_failed_checkout_names_its_cause() {
        let e = Error::Cache(
            "/var/cache/airlock/git/x.git".into(),
            std::io::Error::from_raw_os_error(libc::ENOSPC),
        );
        let text = crate::error::chain(&e);
        assert!(
            text.contains("x.git") && text.contains("No space left"),
            "{text}"
        );
    }
}
