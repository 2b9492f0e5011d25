//! Applies nftables scripts with `nft -f -`: nft turns the whole script into
//! one netlink batch, so it is committed atomically or not at all.

use std::process::Stdio;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot run nft (is nftables installed?)")]
    Spawn(#[source] std::io::Error),
    #[error("nft rejected the ruleset: {0}")]
    Rejected(String),
}
pub type Result<T> = std::result::Result<T, Error>;

pub async fn apply(script: &str) -> Result<()> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(Error::Spawn)?;
    let mut stdin = child.stdin.take().expect("piped");
    stdin
        .write_all(script.as_bytes())
        .await
        .map_err(Error::Spawn)?;
    drop(stdin);
    let out = child.wait_with_output().await.map_err(Error::Spawn)?;
    if !out.status.success() {
        return Err(Error::Rejected(
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ));
    }
    Ok(())
}

/// `nft list table inet <name>`, or None if it does not exist.
pub async fn list_table(family: &str, name: &str) -> Option<String> {
    let out = Command::new("nft")
        .args(["list", "table", family, name])
        .output()
        .await
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}
