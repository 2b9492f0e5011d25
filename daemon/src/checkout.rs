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
    #[error("git cache lock task failed: {0}")]
    LockTask(String),
}
pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Merged; `commit` is the merge result that gets built.
    Merged { commit: String },
    /// The head does not merge cleanly onto the target branch.
    MergeFailed,
    /// The head commit (or the target branch) could not be fetched.
    Missing(String),
}

async fn git(dir: Option<&Path>, args: &[&str]) -> Result<String> {
    let mut cmd = Command::new("git");
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
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::Cache(path.clone(), e))?;
    tokio::task::spawn_blocking(move || f.lock().map(|_| f).map_err(|e| Error::Cache(path, e)))
        .await
        .map_err(|e| Error::LockTask(e.to_string()))?
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
) -> Result<Outcome> {
    std::fs::create_dir_all(cache_root).map_err(|e| Error::Cache(cache_root.to_owned(), e))?;
    let cache = cache_dir(cache_root, url);
    let lock = lock_cache(&cache).await?;
    if !cache.join("HEAD").exists() {
        // A directory without HEAD is a leftover of an interrupted init.
        if cache.exists() {
            std::fs::remove_dir_all(&cache).map_err(|e| Error::Cache(cache.clone(), e))?;
        }
        let tmp = cache.with_extension(format!("tmp-{}", uuid::Uuid::new_v4().simple()));
        git(None, &["init", "-q", "--bare", &tmp.to_string_lossy()]).await?;
        std::fs::rename(&tmp, &cache).map_err(|e| Error::Cache(cache.clone(), e))?;
    }
    let target_ref = format!("+refs/heads/{target_branch}:refs/heads/{target_branch}");
    if let Err(e) = git(
        Some(&cache),
        &["fetch", "-q", "--no-tags", "--", url, &target_ref],
    )
    .await
    {
        return Ok(Outcome::Missing(format!(
            "target branch {target_branch}: {e}"
        )));
    }
    let have_head = |c: PathBuf| async move {
        git(Some(&c), &["cat-file", "-e", &format!("{head}^{{commit}}")])
            .await
            .is_ok()
    };
    if !have_head(cache.clone()).await {
        let pr_ref = format!("+refs/pull/{pr}/head:refs/pull/{pr}/head");
        let by_sha = git(Some(&cache), &["fetch", "-q", "--no-tags", "--", url, head]).await;
        if by_sha.is_err() {
            let _ = git(
                Some(&cache),
                &["fetch", "-q", "--no-tags", "--", url, &pr_ref],
            )
            .await;
        }
        if !have_head(cache.clone()).await {
            return Ok(Outcome::Missing(format!(
                "commit {head} not found in {url}"
            )));
        }
    }
    let work_s = work.to_string_lossy().into_owned();
    git(
        None,
        &[
            "clone",
            "-q",
            "--shared",
            "--no-checkout",
            &cache.to_string_lossy(),
            &work_s,
        ],
    )
    .await?;
    drop(lock);
    git(Some(work), &["checkout", "-q", "--detach", target_branch]).await?;
    let merged = git(
        Some(work),
        &[
            "merge",
            "--no-gpg-sign",
            "--no-edit",
            "-q",
            "-m",
            "Automatic merge for airlock",
            head,
        ],
    )
    .await;
    if merged.is_err() {
        let _ = git(Some(work), &["merge", "--abort"]).await;
        return Ok(Outcome::MergeFailed);
    }
    let commit = git(Some(work), &["rev-parse", "HEAD"]).await?;
    Ok(Outcome::Merged { commit })
}

/// Write the merged tree (no `.git`) to `dest`.
pub async fn export_tree(work: &Path, dest: &Path) -> Result<()> {
    std::fs::create_dir_all(dest).map_err(Error::Export)?;
    let mut archive = Command::new("git")
        .arg("-C")
        .arg(work)
        .args(["archive", "--format=tar", "HEAD"])
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(Error::Spawn)?;
    let stdout: Stdio = archive
        .stdout
        .take()
        .expect("piped")
        .try_into()
        .map_err(Error::Export)?;
    let tar = Command::new("tar")
        .arg("-x")
        .arg("-C")
        .arg(dest)
        .stdin(stdout)
        .output()
        .await
        .map_err(Error::Export)?;
    let st = archive.wait().await.map_err(Error::Export)?;
    if !st.success() || !tar.status.success() {
        return Err(Error::Git {
            args: "archive | tar -x".into(),
            stderr: String::from_utf8_lossy(&tar.stderr).trim().to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(dir: &Path, script: &str) -> String {
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

    /// Jobs of one repository that arrive together, before airlock has ever
    /// fetched it, all get their checkout (the first fetch included).
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_first_fetches_of_one_repository_all_merge() {
        let t = tempfile::tempdir().unwrap();
        let repo = t.path().join("repo");
        std::fs::create_dir(&repo).unwrap();
        let head = sh(
            &repo,
            "git init -q -b master && echo a > a && git add a && git commit -qm base \
             && git checkout -qb pr && echo b > b && git add b && git commit -qm pr \
             && git rev-parse HEAD && git checkout -q master && echo c > c && git add c \
             && git commit -qm moved >/dev/null",
        );
        let cache = t.path().join("git");
        let url = repo.to_string_lossy().into_owned();
        let jobs: Vec<_> = (0..6)
            .map(|i| {
                let (cache, url, head) = (cache.clone(), url.clone(), head.clone());
                let work = t.path().join(format!("work-{i}"));
                tokio::spawn(async move { prepare(&cache, &url, "master", &head, 1, &work).await })
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

    #[test]
    fn a_failed_checkout_names_its_cause() {
        let e = Error::Cache(
            "/var/cache/airlock/git/x.git".into(),
            std::io::Error::from_raw_os_error(libc::ENOSPC),
        );
        let text = crate::runner::error_chain(&e);
        assert!(
            text.contains("x.git") && text.contains("No space left"),
            "{text}"
        );
    }
}
