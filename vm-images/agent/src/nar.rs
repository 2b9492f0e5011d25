//! NAR serialisation of a store path (what `nix-store --dump` writes), done
//! in-process so exporting N paths does not spawn N processes.

use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use airlock_nix_formats::nar::{write_str as str, zero_padding};

pub fn dump(path: &Path, w: &mut impl Write) -> io::Result<()> {
    str(w, b"nix-archive-1")?;
    node(path, w)
}

fn node(path: &Path, w: &mut impl Write) -> io::Result<()> {
    let md = std::fs::symlink_metadata(path)?;
    str(w, b"(")?;
    str(w, b"type")?;
    let ft = md.file_type();
    if ft.is_symlink() {
        str(w, b"symlink")?;
        str(w, b"target")?;
        str(w, std::fs::read_link(path)?.as_os_str().as_bytes())?;
    } else if ft.is_file() {
        str(w, b"regular")?;
        if md.permissions().mode() & 0o100 != 0 {
            str(w, b"executable")?;
            str(w, b"")?;
        }
        str(w, b"contents")?;
        let len = md.len();
        w.write_all(&len.to_le_bytes())?;
        let copied = io::copy(&mut std::fs::File::open(path)?, w)?;
        if copied != len {
            return Err(io::Error::other(format!(
                "{} changed while dumping",
                path.display()
            )));
        }
        w.write_all(zero_padding(len))?;
    } else if ft.is_dir() {
        str(w, b"directory")?;
        let mut entries: Vec<_> = std::fs::read_dir(path)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<io::Result<_>>()?;
        entries.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        for name in entries {
            str(w, b"entry")?;
            str(w, b"(")?;
            str(w, b"name")?;
            str(w, name.as_bytes())?;
            str(w, b"node")?;
            node(&path.join(&name), w)?;
            str(w, b")")?;
        }
    } else {
        return Err(io::Error::other(format!(
            "{} is not a file, directory or symlink",
            path.display()
        )));
    }
    str(w, b")")
}
