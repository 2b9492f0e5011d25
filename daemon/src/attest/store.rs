//! A builder's identity key and attestation log on disk: the adapter over
//! [`super`]'s formats.
//!
//! `<state_dir>/attestations/`: `log.jsonl` (one entry per line, hash
//! chained), `head.json` (the signed head, replaced atomically after each
//! append) and `public` (the identity's public key, `name:base64`, for
//! other operators' `[verify] builders`). The key is
//! `attestation.key_file`, or `<state_dir>/identity.sec` made at first
//! start (mode 0600). At start the whole log is verified against the key
//! and the head: a damaged log stops airlockd rather than growing on.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use airlock_nix_formats::signing::SecretKey;

use tracing::warn;

use super::compare::KnownBuilder;
use super::pool::Pool;
use super::{append, verify_log, Attestation, Head, Statement, GENESIS};
use crate::config::Config;
use crate::job::JobRecord;
use crate::quarantine::VerifiedPath;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("identity key {path}: {why}")]
    Key { path: PathBuf, why: String },
    #[error("attestation log {path}: {source}")]
    Log {
        path: PathBuf,
        #[source]
        source: super::Error,
    },
    #[error("I/O at {0}")]
    Io(PathBuf, #[source] std::io::Error),
}
pub type Result<T> = std::result::Result<T, Error>;

fn io_at(p: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let p = p.to_path_buf();
    move |e| Error::Io(p, e)
}

pub struct Attestor {
    /// Every attestation this builder checked: its own and known builders'.
    pub pool: Pool,
    key: SecretKey,
    public: String,
    operator: String,
    trust: String,
    dir: PathBuf,
    /// The log's length and last line's hash; held while appending.
    state: Mutex<(u64, String)>,
}

/// A key name from the builder's identity: Nix's key names have no
/// whitespace and no `:`.
pub fn key_name(identity: &str) -> String {
    let n = crate::config::name_part(identity);
    if n.is_empty() {
        "airlock".into()
    } else {
        n
    }
}

impl Attestor {
    pub fn open(cfg: &Config) -> Result<Attestor> {
        let a = &cfg.attestation;
        let key_path = if a.key_file.as_os_str().is_empty() {
            cfg.state_dir.join("identity.sec")
        } else {
            a.key_file.clone()
        };
        let key = load_or_make_key(&key_path, &key_name(&cfg.identity.name))?;
        let operator = cfg.operator();
        let dir = cfg.state_dir.join("attestations");
        std::fs::create_dir_all(&dir).map_err(io_at(&dir))?;
        let public = key.public();
        let pub_path = dir.join("public");
        std::fs::write(&pub_path, format!("{public}\n")).map_err(io_at(&pub_path))?;
        let log_path = dir.join("log.jsonl");
        let head_path = dir.join("head.json");
        let state = match std::fs::read(&head_path) {
            Ok(h) => {
                let head: Head = serde_json::from_slice(&h).map_err(|e| Error::Log {
                    path: head_path.clone(),
                    source: super::Error::Head(e.to_string()),
                })?;
                let log = read_log(&log_path)?;
                match verify_log(&log, &public, &head) {
                    Ok(_) => (head.len, head.hash),
                    // Appended, then stopped before the head was replaced.
                    Err(super::Error::Head(why)) => {
                        take_up(&dir, &log_path, &log, &key, &head, &why)?
                    }
                    Err(source) => {
                        return Err(Error::Log {
                            path: log_path.clone(),
                            source,
                        })
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let log = read_log(&log_path)?;
                if log.is_empty() {
                    (0, GENESIS.to_owned())
                } else {
                    // The first append, stopped before the first head was
                    // written: the entries must chain on from the start.
                    let genesis = Head::sign(&key, 0, GENESIS);
                    take_up(&dir, &log_path, &log, &key, &genesis, "no head.json yet")?
                }
            }
            Err(e) => return Err(Error::Io(head_path, e)),
        };
        let pool = Pool::open(
            dir.clone(),
            KnownBuilder {
                key: public.clone(),
                operator: operator.clone(),
            },
            cfg,
        );
        Ok(Attestor {
            pool,
            key,
            public,
            operator,
            trust: cfg.trust.as_str().to_owned(),
            dir,
            state: Mutex::new(state),
        })
    }

    /// `name:base64` of the identity key.
    pub fn public(&self) -> &str {
        &self.public
    }

    pub fn builder(&self) -> &str {
        &self.key.name
    }

    /// Sign one attestation per verified output of `rec` (a path with a
    /// deriver), append them to the builder's log and return them.
    pub fn attest(&self, rec: &JobRecord, verified: &[VerifiedPath]) -> Result<Vec<Attestation>> {
        let time = crate::job::now() as i64;
        let atts: Vec<Attestation> = verified
            .iter()
            .filter_map(|v| {
                let drv = v.deriver.clone()?;
                let st = Statement {
                    version: Statement::VERSION,
                    output: output_name(&drv, &v.path),
                    drv_path: drv,
                    out_path: v.path.clone(),
                    nar_hash: v.nar_hash.clone(),
                    nar_size: v.nar_size,
                    references: v.references.clone(),
                    builder: self.key.name.clone(),
                    operator: self.operator.clone(),
                    trust: self.trust.clone(),
                    job_id: rec.id.clone(),
                    repo: rec.job.repo.full_name.clone(),
                    pr: Some(rec.job.pr.number),
                    head: rec.job.pr.head_sha.clone(),
                    merged: rec.merged_commit.clone(),
                    guest_nix: rec.guest_nix.clone(),
                    time,
                };
                st.sign(&self.key).ok()
            })
            .collect();
        if atts.is_empty() {
            return Ok(atts);
        }
        let log_path = self.dir.join("log.jsonl");
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (mut len, mut last) = state.clone();
        let mut lines = Vec::new();
        let mut head = None;
        for a in &atts {
            let (line, h) = append(&self.key, len, &last, a.clone());
            lines.extend(line);
            lines.push(b'\n');
            len = h.len;
            last = h.hash.clone();
            head = Some(h);
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(io_at(&log_path))?;
        f.write_all(&lines).map_err(io_at(&log_path))?;
        f.sync_data().map_err(io_at(&log_path))?;
        if let Some(head) = &head {
            write_head(&self.dir, head)?;
        }
        *state = (len, last);
        drop(state);
        for a in &atts {
            if let Err(e) = self.pool.add(a) {
                warn!(error = %crate::error::chain(&e), "own attestation not added to the pool");
            }
        }
        Ok(atts)
    }
}

/// A log that ran past its signed head (airlockd stopped between
/// appending and signing the head): the entries past the head must be
/// this key's and chain on from it, or the log is refused as damaged.
/// The head is signed again over the whole log.
fn take_up(
    dir: &Path,
    log_path: &Path,
    log: &[u8],
    key: &SecretKey,
    head: &Head,
    why: &str,
) -> Result<(u64, String)> {
    let (atts, new_head) =
        super::verify_extension(log, key, head).map_err(|source| Error::Log {
            path: log_path.to_owned(),
            source,
        })?;
    warn!(
        log = %log_path.display(),
        signed = head.len,
        entries = atts.len(),
        was = %why,
        "the attestation log ran past its head (airlockd stopped between appending and signing the head); the chain verifies, the head is signed again"
    );
    write_head(dir, &new_head)?;
    Ok((new_head.len, new_head.hash))
}

/// The log's bytes, a torn last line (a crash in the middle of an append,
/// never covered by a head) cut off the file first.
fn read_log(path: &Path) -> Result<Vec<u8>> {
    let mut log = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(Error::Io(path.to_owned(), e)),
    };
    if !log.is_empty() && !log.ends_with(b"\n") {
        let keep = log.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        warn!(log = %path.display(), bytes = log.len() - keep, "the attestation log ends in a torn line (airlockd stopped while appending); it is cut off");
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(io_at(path))?;
        f.set_len(keep as u64)
            .and_then(|_| f.sync_all())
            .map_err(io_at(path))?;
        log.truncate(keep);
    }
    Ok(log)
}

/// Replace `head.json`: written and synced beside it, renamed over it, the
/// directory synced.
fn write_head(dir: &Path, head: &Head) -> Result<()> {
    let tmp = dir.join("head.json.tmp");
    let path = dir.join("head.json");
    let mut f = std::fs::File::create(&tmp).map_err(io_at(&tmp))?;
    f.write_all(&serde_json::to_vec(head).expect("serialises"))
        .and_then(|_| f.sync_all())
        .map_err(io_at(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(io_at(&path))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_at(dir))
}

/// The output name of `out` built by `drv`: Nix names an output path
/// `<drv name>` for `out` and `<drv name>-<output>` for the others.
pub fn output_name(drv: &str, out: &str) -> String {
    let name = |p: &str| -> String {
        let base = p.rsplit('/').next().unwrap_or(p);
        base.split_once('-')
            .map(|(_, n)| n)
            .unwrap_or(base)
            .to_owned()
    };
    let d = name(drv);
    let d = d.strip_suffix(".drv").unwrap_or(&d);
    let o = name(out);
    match o.strip_prefix(d).and_then(|rest| rest.strip_prefix('-')) {
        Some(suffix) if !suffix.is_empty() => suffix.to_owned(),
        _ => "out".to_owned(),
    }
}

fn load_or_make_key(path: &Path, name: &str) -> Result<SecretKey> {
    let err = |why: String| Error::Key {
        path: path.to_owned(),
        why,
    };
    match std::fs::read_to_string(path) {
        Ok(text) => SecretKey::parse(&text).map_err(|e| err(e.to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut seed = [0u8; 32];
            std::fs::File::open("/dev/urandom")
                .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut seed))
                .map_err(|e| err(format!("no randomness for a new key: {e}")))?;
            let key = SecretKey::from_seed(name, &seed).map_err(|e| err(e.to_string()))?;
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(io_at(dir))?;
            }
            // Written beside it and renamed into place: a key file is
            // whole or absent, never empty after a crash.
            use std::os::unix::fs::OpenOptionsExt;
            let tmp = path.with_extension("sec.tmp");
            let _ = std::fs::remove_file(&tmp);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(io_at(&tmp))?;
            f.write_all(key.to_file_text().as_bytes())
                .and_then(|_| f.sync_all())
                .map_err(io_at(&tmp))?;
            std::fs::rename(&tmp, path).map_err(io_at(path))?;
            if let Some(dir) = path.parent() {
                let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
            }
            Ok(key)
        }
        Err(e) => Err(Error::Io(path.to_owned(), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_names() {
        let h = "ihml9cgha2ncb1jfpf857yd6nls4n23b";
        let drv = format!("/nix/store/{h}-hello-2.12.drv");
        assert_eq!(
            output_name(&drv, &format!("/nix/store/{h}-hello-2.12")),
            "out"
        );
        assert_eq!(
            output_name(&drv, &format!("/nix/store/{h}-hello-2.12-dev")),
            "dev"
        );
        assert_eq!(output_name(&drv, &format!("/nix/store/{h}-other")), "out");
        assert_eq!(key_name("airlock builder:7"), "airlock-builder-7");
    }

    #[test]
    fn a_key_is_made_once_and_the_log_survives_a_restart_but_not_an_edit() {
        let d = tempfile::tempdir().unwrap();
        let mut cfg = Config {
            state_dir: d.path().to_owned(),
            identity: "builder one".into(),
            ..Config::default()
        };
        cfg.sponsor.name = "Example Org".into();
        let a = Attestor::open(&cfg).unwrap();
        assert_eq!(a.builder(), "builder-one");
        let key_file = d.path().join("identity.sec");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let job = serde_json::from_str(r#"{"repo":{"owner":"o","name":"n","full_name":"o/n","clone_url":"/x"},"pr":{"target_branch":"master","number":7,"head_sha":"e9872fa30caac57c69bfac8667e6c21254603df1"},"subset":null,"attrs":["a"],"request_id":"r","logs":null,"statusreport":null}"#).unwrap();
        let rec = JobRecord::new(crate::job::Source::Local, job);
        let h = "ihml9cgha2ncb1jfpf857yd6nls4n23b";
        let v = |n: &str| VerifiedPath {
            path: format!("/nix/store/{h}-{n}"),
            nar_hash: "sha256:0x".into(),
            nar_size: 1,
            references: vec![],
            deriver: Some(format!("/nix/store/{h}-{n}.drv")),
            ca: None,
            url: "nar/x.nar".into(),
        };
        let mut src = v("src");
        src.deriver = None;
        let out = a.attest(&rec, &[v("a"), v("b"), src]).unwrap();
        assert_eq!(out.len(), 2, "paths without a deriver are not attested");
        assert_eq!(out[0].statement.operator, "Example Org");
        out[0].verify(a.public()).unwrap();
        a.attest(&rec, &[v("c")]).unwrap();
        drop(a);

        // Restarted: the same key, the log verified and continued.
        let a = Attestor::open(&cfg).unwrap();
        let public = std::fs::read_to_string(d.path().join("attestations/public")).unwrap();
        assert_eq!(public.trim(), a.public());
        a.attest(&rec, &[v("d")]).unwrap();
        let log = d.path().join("attestations/log.jsonl");
        let head: Head = serde_json::from_slice(
            &std::fs::read(d.path().join("attestations/head.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(
            verify_log(&std::fs::read(&log).unwrap(), a.public(), &head)
                .unwrap()
                .len(),
            4
        );
        drop(a);

        // A crash between appending and replacing the head (the old head
        // back), then one in the middle of an append (a torn line): the
        // log is taken up again, the head signed for all of it.
        let head_file = d.path().join("attestations/head.json");
        let old_head = std::fs::read(&head_file).unwrap();
        let a = Attestor::open(&cfg).unwrap();
        a.attest(&rec, &[v("e")]).unwrap();
        drop(a);
        std::fs::write(&head_file, &old_head).unwrap();
        let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        f.write_all(b"{\"seq\":5,\"prev\":\"00").unwrap();
        drop(f);
        let a = Attestor::open(&cfg).unwrap();
        a.attest(&rec, &[v("f")]).unwrap();
        drop(a);
        let head: Head = serde_json::from_slice(&std::fs::read(&head_file).unwrap()).unwrap();
        assert_eq!(head.len, 6);
        let key = SecretKey::parse(&std::fs::read_to_string(&key_file).unwrap()).unwrap();
        assert_eq!(
            verify_log(&std::fs::read(&log).unwrap(), &key.public(), &head)
                .unwrap()
                .len(),
            6
        );

        // An old entry edited: airlockd does not start on that log.
        let text = std::fs::read_to_string(&log).unwrap();
        std::fs::write(
            &log,
            text.replacen(&format!("{h}-b\""), &format!("{h}-x\""), 1),
        )
        .unwrap();
        let e = Attestor::open(&cfg).err().expect("refused");
        assert!(e.to_string().contains("log.jsonl"), "{e}");
    }

    #[test]
    fn a_crash_before_the_first_head_is_taken_up() {
        let d = tempfile::tempdir().unwrap();
        let cfg = Config {
            state_dir: d.path().to_owned(),
            identity: "b".into(),
            ..Config::default()
        };
        let job = serde_json::from_str(r#"{"repo":{"owner":"o","name":"n","full_name":"o/n","clone_url":"/x"},"pr":{"target_branch":"master","number":7,"head_sha":"e9872fa30caac57c69bfac8667e6c21254603df1"},"subset":null,"attrs":["a"],"request_id":"r","logs":null,"statusreport":null}"#).unwrap();
        let rec = JobRecord::new(crate::job::Source::Local, job);
        let h = "ihml9cgha2ncb1jfpf857yd6nls4n23b";
        let v = VerifiedPath {
            path: format!("/nix/store/{h}-a"),
            nar_hash: "sha256:0x".into(),
            nar_size: 1,
            references: vec![],
            deriver: Some(format!("/nix/store/{h}-a.drv")),
            ca: None,
            url: "nar/x.nar".into(),
        };
        let a = Attestor::open(&cfg).unwrap();
        a.attest(&rec, &[v.clone(), v.clone()]).unwrap();
        drop(a);
        // The first append on disk, its head not (yet) written.
        let head_file = d.path().join("attestations/head.json");
        std::fs::remove_file(&head_file).unwrap();
        let a = Attestor::open(&cfg).unwrap();
        a.attest(&rec, &[v]).unwrap();
        drop(a);
        let head: Head = serde_json::from_slice(&std::fs::read(&head_file).unwrap()).unwrap();
        assert_eq!(head.len, 3);
        // Entries another key signed are never taken up.
        let other = tempfile::tempdir().unwrap();
        let cfg2 = Config {
            state_dir: other.path().to_owned(),
            ..cfg.clone()
        };
        std::fs::create_dir_all(other.path().join("attestations")).unwrap();
        std::fs::copy(
            d.path().join("attestations/log.jsonl"),
            other.path().join("attestations/log.jsonl"),
        )
        .unwrap();
        assert!(Attestor::open(&cfg2).is_err());
    }
}
