//! What the agent asks of the guest's Nix store without starting Nix:
//! Nix's own database (`/nix/var/nix/db/db.sqlite`, read only) and the
//! `.drv` files.
//!
//! Under TCG every Nix process costs about half a second of start-up in the
//! guest (BENCHMARKS.md: a job started eight of them only to ask which paths
//! are valid, what a derivation's outputs are and the closure's metadata).
//! The database answers the same in milliseconds. Only while no Nix process
//! runs (before a build, after it); every caller falls back to asking Nix
//! when the database cannot answer (another schema, a locked file), and the
//! host re-verifies everything exported either way.

use std::collections::BTreeSet;
use std::time::Duration;

use airlock_wire::ExportedPath;
use rusqlite::{Connection, OpenFlags};

pub const DB: &str = "/nix/var/nix/db/db.sqlite";

pub struct Store(Connection);

type Result<T> = std::result::Result<T, String>;

fn db_err(e: rusqlite::Error) -> String {
    format!("Nix database {DB}: {e}")
}

impl Store {
    /// The guest's Nix database, read only.
    pub fn open() -> Result<Store> {
        Store::open_at(DB)
    }

    pub fn open_at(path: &str) -> Result<Store> {
        let c = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(db_err)?;
        c.busy_timeout(Duration::from_secs(5)).map_err(db_err)?;
        Ok(Store(c))
    }

    /// The paths of `paths` that are valid (registered) in the store.
    pub fn valid(&self, paths: &[String]) -> Result<BTreeSet<String>> {
        let mut st = self
            .0
            .prepare_cached(
                "SELECT path FROM ValidPaths WHERE path IN (SELECT value FROM json_each(?1))",
            )
            .map_err(db_err)?;
        let rows = st
            .query_map([json(paths)], |r| r.get::<_, String>(0))
            .map_err(db_err)?;
        rows.collect::<std::result::Result<_, _>>().map_err(db_err)
    }

    /// Each of `drvs` with its output paths (Nix's `DerivationOutputs`),
    /// in the order of `drvs`; a derivation Nix does not know is an error.
    pub fn outputs(&self, drvs: &[String]) -> Result<Vec<(String, Vec<String>)>> {
        let mut st = self
            .0
            .prepare_cached(
                "SELECT o.path FROM DerivationOutputs o JOIN ValidPaths v ON o.drv = v.id \
                 WHERE v.path = ?1 ORDER BY o.id",
            )
            .map_err(db_err)?;
        drvs.iter()
            .map(|d| {
                let outs: Vec<String> = st
                    .query_map([d], |r| r.get::<_, String>(0))
                    .map_err(db_err)?
                    .collect::<std::result::Result<_, _>>()
                    .map_err(db_err)?;
                if outs.is_empty() {
                    return Err(format!("{d}: no outputs registered in {DB}"));
                }
                Ok((d.clone(), outs))
            })
            .collect()
    }

    /// Every path in the closure of `roots` (by Nix's registered references).
    pub fn closure(&self, roots: &[String]) -> Result<BTreeSet<String>> {
        let mut st = self
            .0
            .prepare_cached(
                "WITH RECURSIVE c(id) AS ( \
                   SELECT id FROM ValidPaths WHERE path IN (SELECT value FROM json_each(?1)) \
                   UNION SELECT r.reference FROM Refs r JOIN c ON r.referrer = c.id) \
                 SELECT v.path FROM ValidPaths v JOIN c ON v.id = c.id",
            )
            .map_err(db_err)?;
        let rows = st
            .query_map([json(roots)], |r| r.get::<_, String>(0))
            .map_err(db_err)?;
        let all: BTreeSet<String> = rows
            .collect::<std::result::Result<_, _>>()
            .map_err(db_err)?;
        if let Some(missing) = roots.iter().find(|p| !all.contains(*p)) {
            return Err(format!("{missing} is not valid"));
        }
        Ok(all)
    }

    /// The metadata of every path in the closure of `roots`, as `nix
    /// path-info --json -r` gives it (the NAR hash as Nix stores it,
    /// `sha256:<base16>`; references sorted).
    pub fn path_infos(&self, roots: &[String]) -> Result<Vec<ExportedPath>> {
        let closure: Vec<String> = self.closure(roots)?.into_iter().collect();
        let mut st = self
            .0
            .prepare_cached(
                "SELECT v.path, v.hash, v.narSize, v.deriver, v.ca FROM ValidPaths v \
                 WHERE v.path IN (SELECT value FROM json_each(?1)) ORDER BY v.path",
            )
            .map_err(db_err)?;
        let mut infos: Vec<ExportedPath> = st
            .query_map([json(&closure)], |r| {
                Ok(ExportedPath {
                    path: r.get(0)?,
                    nar_hash: r.get(1)?,
                    nar_size: r.get::<_, Option<i64>>(2)?.unwrap_or(-1) as u64,
                    references: vec![],
                    deriver: r.get::<_, Option<String>>(3)?.filter(|d| !d.is_empty()),
                    ca: r.get::<_, Option<String>>(4)?.filter(|c| !c.is_empty()),
                })
            })
            .map_err(db_err)?
            .collect::<std::result::Result<_, _>>()
            .map_err(db_err)?;
        let mut refs = self
            .0
            .prepare_cached(
                "SELECT w.path FROM ValidPaths v JOIN Refs r ON r.referrer = v.id \
                 JOIN ValidPaths w ON w.id = r.reference WHERE v.path = ?1 ORDER BY w.path",
            )
            .map_err(db_err)?;
        for i in &mut infos {
            if i.nar_size == u64::MAX {
                return Err(format!("{}: no NAR size registered", i.path));
            }
            i.references = refs
                .query_map([&i.path], |r| r.get::<_, String>(0))
                .map_err(db_err)?
                .collect::<std::result::Result<_, _>>()
                .map_err(db_err)?;
        }
        Ok(infos)
    }

    /// What a build of `drvs` without substituters has to build: each
    /// derivation reachable from `drvs` through derivations that have an
    /// output not yet valid, itself with such an output (what `nix-store
    /// -r --dry-run` lists as "will be built").
    pub fn to_build(&self, drvs: &[String]) -> Result<Vec<String>> {
        let mut input_drvs = self
            .0
            .prepare_cached(
                "SELECT w.path FROM ValidPaths v JOIN Refs r ON r.referrer = v.id \
                 JOIN ValidPaths w ON w.id = r.reference \
                 WHERE v.path = ?1 AND w.path LIKE '%.drv' AND w.id != v.id",
            )
            .map_err(db_err)?;
        let mut seen: BTreeSet<String> = drvs.iter().cloned().collect();
        let mut todo: Vec<String> = drvs.to_vec();
        let mut build = Vec::new();
        while let Some(d) = todo.pop() {
            let outs = self.outputs(std::slice::from_ref(&d))?.remove(0).1;
            if self.valid(&outs)?.len() == outs.len() {
                continue;
            }
            let inputs: Vec<String> = input_drvs
                .query_map([&d], |r| r.get::<_, String>(0))
                .map_err(db_err)?
                .collect::<std::result::Result<_, _>>()
                .map_err(db_err)?;
            for i in inputs {
                if seen.insert(i.clone()) {
                    todo.push(i);
                }
            }
            build.push(d);
        }
        build.sort();
        Ok(build)
    }
}

/// Of derivations with these output lists, how many have every output
/// `valid` now.
pub fn count_complete(outputs: &[Vec<String>], valid: impl Fn(&String) -> bool) -> u64 {
    outputs
        .iter()
        .filter(|o| !o.is_empty() && o.iter().all(&valid))
        .count() as u64
}

/// The fixed-output derivations among `drvs`, read from their `.drv` files.
pub fn fixed_output(drvs: &[String]) -> Result<Vec<String>> {
    fixed_output_in(std::path::Path::new("/"), drvs)
}

/// As [`fixed_output`], for a store under `root` (tests: a chroot store).
pub fn fixed_output_in(root: &std::path::Path, drvs: &[String]) -> Result<Vec<String>> {
    let mut fods = Vec::new();
    for d in drvs {
        let file = root.join(d.trim_start_matches('/'));
        let text = std::fs::read(&file).map_err(|e| format!("{d}: {e}"))?;
        let outs = airlock_nix_formats::drv::outputs(&text).map_err(|e| format!("{d}: {e}"))?;
        if outs.iter().any(|o| o.is_fixed()) {
            fods.push(d.clone());
        }
    }
    Ok(fods)
}

fn json(paths: &[String]) -> String {
    serde_json::to_string(paths).unwrap_or_else(|_| "[]".into())
}

#[cfg(test)]
mod tests {
    //! Against the host's Nix in a private (chroot) store: the database's
    //! answers are Nix's own answers.
    use super::*;
    use std::path::Path;
    use std::process::Command;

    const FIXTURE: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/pkgs/default.nix"
    );

    fn nix(root: &Path, args: &[&str]) -> Vec<String> {
        let out = Command::new(args[0])
            .arg("--store")
            .arg(root)
            .args(&args[1..])
            .output()
            .unwrap_or_else(|e| panic!("{}: {e} (scripts/setup.sh installs Nix)", args[0]));
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn database_answers_as_nix_does() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let inst = |attr: &str| nix(root, &["nix-instantiate", FIXTURE, "-A", attr])[0].clone();
        let (chain, fod, leaf) = (inst("chain"), inst("fod-local"), inst("leaf"));
        let db = root.join("nix/var/nix/db/db.sqlite");
        let store = Store::open_at(db.to_str().unwrap()).unwrap();

        // Before the build: everything of chain's to build, nothing valid.
        let before = store.to_build(std::slice::from_ref(&chain)).unwrap();
        assert_eq!(before.len(), 3, "{before:?}");
        let outs = store.outputs(std::slice::from_ref(&chain)).unwrap();
        let expect = nix(root, &["nix-store", "-q", "--outputs", &chain]);
        assert_eq!(outs[0].1, expect);
        assert!(store.valid(&expect).unwrap().is_empty());

        let sandbox = [
            "--option",
            "sandbox",
            "true",
            "--option",
            "sandbox-paths",
            "/bin/sh=/bin/busybox",
            "--option",
            "substituters",
            "",
        ];
        let mut build = vec!["nix-store", "-r", &chain];
        build.extend(sandbox);
        nix(root, &build);
        assert!(store
            .to_build(std::slice::from_ref(&chain))
            .unwrap()
            .is_empty());
        assert_eq!(store.valid(&expect).unwrap().len(), 1);
        // Only the derivations still unbuilt: leaf's, not chain's.
        assert_eq!(
            store.to_build(&[chain.clone(), leaf.clone()]).unwrap(),
            vec![leaf.clone()]
        );

        // The closure's metadata as `nix path-info --json -r` has it.
        let infos = store.path_infos(&expect).unwrap();
        let mut pi = vec![
            "nix",
            "--extra-experimental-features",
            "nix-command",
            "path-info",
            "--json",
            "-r",
        ];
        pi.extend(expect.iter().map(String::as_str));
        let json: serde_json::Value = serde_json::from_str(&nix(root, &pi).join("\n")).unwrap();
        let want: Vec<&serde_json::Value> = match &json {
            serde_json::Value::Array(a) => a.iter().collect(),
            _ => panic!("{json}"),
        };
        assert_eq!(infos.len(), want.len());
        for (i, w) in infos.iter().zip(&want) {
            assert_eq!(i.path, w["path"]);
            assert_eq!(
                airlock_nix_formats::nix32::normalize_sha256(&i.nar_hash),
                airlock_nix_formats::nix32::normalize_sha256(w["narHash"].as_str().unwrap())
            );
            assert_eq!(i.nar_size, w["narSize"].as_u64().unwrap());
            let refs: Vec<String> = serde_json::from_value(w["references"].clone()).unwrap();
            assert_eq!(i.references, refs);
            assert_eq!(i.deriver.as_deref(), w["deriver"].as_str());
        }

        // Fixed-output derivations told from their .drv files.
        let drvs = vec![chain.clone(), fod.clone(), leaf];
        assert_eq!(fixed_output_in(root, &drvs).unwrap(), vec![fod]);
        // Every .drv of chain's closure, as `nix-store -qR` lists it.
        let mut closure: Vec<String> = store
            .closure(std::slice::from_ref(&chain))
            .unwrap()
            .into_iter()
            .collect();
        let mut qr = nix(root, &["nix-store", "-qR", &chain]);
        closure.sort();
        qr.sort();
        assert_eq!(closure, qr);
        assert!(store
            .closure(&["/nix/store/00000000000000000000000000000000-x".into()])
            .is_err());
    }
}
