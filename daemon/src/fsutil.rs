//! Atomic file writes (temp name, fsync, rename, fsync the directory),
//! syncs, and the one exclusive-lock helper.

use std::io::Write;
use std::path::Path;

pub fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile_in(dir, path)?;
    tmp.1.write_all(data)?;
    tmp.1.sync_all()?;
    std::fs::rename(&tmp.0, path)?;
    sync_dir(dir)
}

fn tempfile_in(dir: &Path, target: &Path) -> std::io::Result<(std::path::PathBuf, std::fs::File)> {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", uuid::Uuid::new_v4().simple()));
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)?;
    Ok((tmp, f))
}

/// Flush every dirty file and directory of the file system holding `path`
/// (`syncfs(2)`): one call for a tree of many freshly written files.
pub fn sync_fs(path: &Path) -> std::io::Result<()> {
    let f = std::fs::File::open(path)?;
    nix::unistd::syncfs(&f).map_err(std::io::Error::from)
}

pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Take an exclusive `flock` on `path` (created if missing), waiting on a
/// blocking thread; released when the returned file is dropped. It
/// serialises this daemon's tasks and any other process using the file.
pub async fn lock_exclusive(path: &Path) -> std::io::Result<std::fs::File> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    tokio::task::spawn_blocking(move || f.lock().map(|_| f))
        .await
        .map_err(std::io::Error::other)?
}
