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

/// Fetch the target branch and the head into the cache, then merge in `work`.
/// `pr` is used to fetch `refs/pull/<pr>/head` when the sha alone is not
/// fetchable (GitHub and local mirrors both have it).
pub async fn prepare(
    cache_root: &Path,
    url: &str,
    target_branch: &str,
    head: &str,
    pr: u64,
    work: &Path,
) -> Result<Outcome> {
    let cache = cache_dir(cache_root, url);
    if !cache.join("HEAD").exists() {
        std::fs::create_dir_all(cache_root).map_err(Error::Export)?;
        let tmp = cache.with_extension(format!("tmp-{}", uuid::Uuid::new_v4().simple()));
        git(None, &["init", "-q", "--bare", &tmp.to_string_lossy()]).await?;
        std::fs::rename(&tmp, &cache).map_err(Error::Export)?;
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
