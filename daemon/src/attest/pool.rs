//! Every attestation this builder has checked, its own and known builders',
//! by derivation; the strikes it recorded; comparing, agreement for
//! release, the builders' record (the adapter over [`super::compare`]).
//!
//! `<state_dir>/attestations/by-drv/<drv hash>.jsonl`: the attestations of
//! one derivation's outputs, one canonical JSON per line, each verified
//! against a known key before it was written (so the cache server can serve
//! the file as it is). `strikes.jsonl`: one strike per line, with the
//! contradicted attestation as its evidence.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::compare::{self, Ignored, KnownBuilder, OutputId, OutputReport, Verdict};
use super::{read_file, Attestation};
use crate::config::{Agreement, Config, Trust};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("attestation by {builder}: unknown builder (not in [verify] builders)")]
    Unknown { builder: String },
    #[error("attestation by {builder} for {out_path}: {source}")]
    Invalid {
        builder: String,
        out_path: String,
        #[source]
        source: super::Error,
    },
    #[error("{0:?} is not a derivation path or hash")]
    NotADrv(String),
    #[error("{0:?} is neither a commit (40 hex digits) nor a derivation")]
    What(String),
    #[error("I/O at {0}")]
    Io(PathBuf, #[source] std::io::Error),
}
pub type Result<T> = std::result::Result<T, Error>;

/// A trusted builder's record that another builder's attestation
/// contradicts a reproduced result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Strike {
    /// The contradicted builder.
    pub builder: String,
    pub drv_path: String,
    pub output: String,
    pub their_hash: String,
    pub our_hash: String,
    /// The builders that attested `our_hash` (empty when it failed here).
    pub agreeing: Vec<String>,
    /// Set when this trusted builder's build of the derivation failed
    /// (its job, whose log says so: the guest's word) where the struck
    /// builder attested success; `our_hash` is then empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_here: Option<String>,
    /// The builder that recorded the strike.
    pub by: String,
    pub time: i64,
    /// The contradicted attestation, checkable by anyone with its key.
    pub evidence: Attestation,
}

/// `airlockctl compare`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Comparison {
    pub what: String,
    pub outputs: Vec<OutputReport>,
    pub ignored: Vec<Ignored>,
}

/// `airlockctl builders`' answer, one row per known builder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuilderRow {
    pub builder: String,
    pub key: String,
    pub operator: String,
    pub url: String,
    /// This builder itself.
    pub own: bool,
    pub attestations: usize,
    /// Outputs this builder and at least one other attested.
    pub compared: usize,
    /// Of those, the ones where another builder attested the same hash.
    pub agreed: usize,
    pub strikes: usize,
    /// More strikes than `verify.max_strikes`: its attestations do not count.
    pub excluded: bool,
}

pub struct Pool {
    dir: PathBuf,
    own: KnownBuilder,
    known: Vec<KnownBuilder>,
    urls: BTreeMap<String, String>,
    trusted: bool,
    max_strikes: u32,
    lock: Mutex<()>,
}

fn io_at(p: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let p = p.to_path_buf();
    move |e| Error::Io(p, e)
}

fn key_name(key: &str) -> &str {
    airlock_nix_formats::signing::key_name(key).unwrap_or(key)
}

/// The hash part of a derivation: a bare 32-character hash, or a
/// `/nix/store/<hash>-<name>.drv` path.
pub fn drv_hash(what: &str) -> Option<&str> {
    let base = what.strip_prefix("/nix/store/").unwrap_or(what);
    let hash = base.get(..32)?;
    let rest = &base[32..];
    let ok_rest =
        rest.is_empty() || (rest.starts_with('-') && rest.ends_with(".drv") && !rest.contains('/'));
    (ok_rest && hash.bytes().all(airlock_nix_formats::nix32::is_nix32_char)).then_some(hash)
}

fn is_commit(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

impl Pool {
    /// The pool under `dir` (`<state_dir>/attestations`), knowing `own`
    /// and `[verify] builders`.
    pub fn open(dir: PathBuf, own: KnownBuilder, cfg: &Config) -> Pool {
        let mut known = vec![own.clone()];
        let mut urls = BTreeMap::new();
        let own_url = cfg.operator_url();
        urls.insert(key_name(&own.key).to_owned(), own_url);
        for b in &cfg.verify.builders {
            if key_name(&b.key) == key_name(&own.key) {
                continue;
            }
            urls.insert(key_name(&b.key).to_owned(), b.url.clone());
            known.push(KnownBuilder {
                key: b.key.clone(),
                operator: b.operator.clone(),
            });
        }
        Pool {
            dir,
            own,
            known,
            urls,
            trusted: cfg.trust == Trust::Trusted,
            max_strikes: cfg.verify.max_strikes,
            lock: Mutex::new(()),
        }
    }

    pub fn own_builder(&self) -> &str {
        key_name(&self.own.key)
    }

    fn operator_of(&self, builder: &str) -> Option<String> {
        self.known
            .iter()
            .find(|k| key_name(&k.key) == builder)
            .map(|k| k.operator.clone())
    }

    fn file(&self, hash: &str) -> PathBuf {
        self.dir.join("by-drv").join(format!("{hash}.jsonl"))
    }

    /// Check `a` against the known keys and keep it. `Ok(false)`: it was
    /// already kept. A trusted builder then looks for strikes on its output.
    pub fn add(&self, a: &Attestation) -> Result<bool> {
        let s = &a.statement;
        let k = self
            .known
            .iter()
            .find(|k| key_name(&k.key) == s.builder)
            .ok_or_else(|| Error::Unknown {
                builder: s.builder.clone(),
            })?;
        let invalid = |source| Error::Invalid {
            builder: s.builder.clone(),
            out_path: s.out_path.clone(),
            source,
        };
        a.verify(&k.key).map_err(invalid)?;
        let hash = drv_hash(&s.drv_path)
            .ok_or_else(|| invalid(super::Error::Parse(format!("drv_path {:?}", s.drv_path))))?;
        let file = self.file(hash);
        let line = a.to_json();
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let existing = std::fs::read(&file).unwrap_or_default();
        if existing
            .split(|&b| b == b'\n')
            .any(|l| l == line.as_slice())
        {
            return Ok(false);
        }
        append_line(&file, line)?;
        if self.trusted {
            self.look_for_strikes(
                hash,
                &OutputId {
                    drv_path: s.drv_path.clone(),
                    output: s.output.clone(),
                },
            )?;
            self.strike_failed_here(a)?;
        }
        Ok(true)
    }

    /// The attestations kept for one derivation (by path or hash).
    pub fn of_drv(&self, drv: &str) -> Result<Vec<Attestation>> {
        let hash = drv_hash(drv).ok_or_else(|| Error::NotADrv(drv.to_owned()))?;
        Ok(read_file(&self.file(hash)))
    }

    /// The file the cache server serves for `/attestations/<drv hash>`.
    pub fn raw(&self, hash: &str) -> Option<Vec<u8>> {
        if drv_hash(hash) != Some(hash) {
            return None;
        }
        std::fs::read(self.file(hash)).ok()
    }

    fn all(&self) -> Vec<Attestation> {
        let mut out = Vec::new();
        let Ok(rd) = std::fs::read_dir(self.dir.join("by-drv")) else {
            return out;
        };
        for e in rd.flatten() {
            out.extend(read_file(&e.path()));
        }
        out
    }

    pub fn strikes(&self) -> Vec<Strike> {
        json_lines(&self.dir.join("strikes.jsonl"))
    }

    /// Builders past `verify.max_strikes`, with their strike counts.
    fn excluded(&self) -> BTreeMap<String, usize> {
        let mut n: BTreeMap<String, usize> = BTreeMap::new();
        for s in self.strikes() {
            *n.entry(s.builder).or_default() += 1;
        }
        n.retain(|_, c| *c > self.max_strikes as usize);
        n
    }

    /// [`compare::compare`] over `atts`, builders past their strikes left out.
    pub fn compare(&self, atts: &[Attestation]) -> (BTreeMap<OutputId, Verdict>, Vec<Ignored>) {
        let excluded = self.excluded();
        let (kept, mut ignored): (Vec<_>, Vec<_>) = atts
            .iter()
            .cloned()
            .partition(|a| !excluded.contains_key(&a.statement.builder));
        let ignored: Vec<Ignored> = ignored
            .drain(..)
            .map(|a| Ignored {
                why: format!(
                    "{} strikes (more than verify.max_strikes = {})",
                    excluded[&a.statement.builder], self.max_strikes
                ),
                builder: a.statement.builder,
                out_path: a.statement.out_path,
            })
            .collect();
        let (v, mut more) = compare::compare(&kept, &self.known);
        more.extend(ignored);
        (v, more)
    }

    /// Per output of a commit's jobs (any builder's attestation naming it
    /// as head or merged commit) or of one derivation.
    pub fn compare_what(&self, what: &str) -> Result<Comparison> {
        let what = what.trim();
        let atts = if is_commit(what) {
            let c = what.to_ascii_lowercase();
            self.all()
                .into_iter()
                .filter(|a| a.statement.head == c || a.statement.merged.as_deref() == Some(&c))
                .collect()
        } else if drv_hash(what).is_some() {
            self.of_drv(what)?
        } else {
            return Err(Error::What(what.to_owned()));
        };
        let (v, ignored) = self.compare(&atts);
        Ok(Comparison {
            what: what.to_owned(),
            outputs: v.iter().map(|(id, v)| OutputReport::new(id, v)).collect(),
            ignored,
        })
    }

    /// Whether `need` builders of distinct operators, this one among them,
    /// attested `nar_hash` for `out_path` (built by `drv`): `Ok` with what
    /// agreed, or `Err` with why not.
    pub fn agreement(
        &self,
        drv: Option<&str>,
        output: &str,
        nar_hash: &str,
        need: Agreement,
    ) -> std::result::Result<String, String> {
        let drv = drv.ok_or("no deriver recorded, so no builder attested it")?;
        let atts = self.of_drv(drv).map_err(|e| e.to_string())?;
        let (v, _) = self.compare(&atts);
        let id = OutputId {
            drv_path: drv.to_owned(),
            output: output.to_owned(),
        };
        let verdict = v.get(&id).ok_or("no attestation of it")?;
        let own_agrees = matches!(verdict, Verdict::Agree { nar_hash: h, builders, .. }
            if h == nar_hash && builders.contains(self.own_builder()));
        if own_agrees && verdict.agrees_on(nar_hash, need.builders, need.operators) {
            Ok(verdict.describe())
        } else {
            Err(format!(
                "needs {} builders of {} operators agreeing on {nar_hash}, this one among them; {}",
                need.builders,
                need.operators,
                verdict.describe()
            ))
        }
    }

    /// One row per known builder: what it attested, how often it agreed
    /// with the others, its strikes.
    pub fn builders(&self) -> Vec<BuilderRow> {
        let all = self.all();
        let (verdicts, _) = compare::compare(&all, &self.known);
        let strikes = self.strikes();
        let excluded = self.excluded();
        self.known
            .iter()
            .map(|k| {
                let name = key_name(&k.key);
                // Compared: another builder attested the output too;
                // agreed: one of them attested the same hash.
                let mut compared = 0;
                let mut agreed = 0;
                for v in verdicts.values() {
                    let (same, total) = match v {
                        Verdict::Agree { builders, .. } => (
                            builders.contains(name).then_some(builders.len()),
                            builders.len(),
                        ),
                        Verdict::Differs { by_hash } => (
                            by_hash
                                .values()
                                .find(|b| b.contains(name))
                                .map(BTreeSet::len),
                            by_hash.values().map(BTreeSet::len).sum(),
                        ),
                    };
                    if let Some(same) = same.filter(|_| total > 1) {
                        compared += 1;
                        agreed += usize::from(same > 1);
                    }
                }
                BuilderRow {
                    builder: name.to_owned(),
                    key: k.key.clone(),
                    operator: k.operator.clone(),
                    url: self.urls.get(name).cloned().unwrap_or_default(),
                    own: k.key == self.own.key,
                    attestations: all.iter().filter(|a| a.statement.builder == name).count(),
                    compared,
                    agreed,
                    strikes: strikes.iter().filter(|s| s.builder == name).count(),
                    excluded: excluded.contains_key(name),
                }
            })
            .collect()
    }

    /// Called with the lock held, after an attestation of `id` was kept.
    fn look_for_strikes(&self, hash: &str, id: &OutputId) -> Result<()> {
        let atts: Vec<Attestation> = read_file(&self.file(hash))
            .into_iter()
            .filter(|a| a.statement.drv_path == id.drv_path && a.statement.output == id.output)
            .collect();
        let (v, _) = self.compare(&atts);
        let Some(verdict) = v.get(id) else {
            return Ok(());
        };
        let Some(compare::Contradiction {
            ours,
            agreeing,
            others: liars,
        }) = compare::contradicted(verdict, self.own_builder(), |b| self.operator_of(b))
        else {
            return Ok(());
        };
        let old = self.strikes();
        for (builder, theirs) in liars {
            if old
                .iter()
                .any(|s| s.builder == builder && s.drv_path == id.drv_path && s.output == id.output)
            {
                continue;
            }
            let Some(evidence) = atts
                .iter()
                .filter(|a| a.statement.builder == builder && a.statement.nar_hash == theirs)
                .max_by_key(|a| a.statement.time)
                .cloned()
            else {
                continue;
            };
            self.record_strike(Strike {
                builder: builder.clone(),
                drv_path: id.drv_path.clone(),
                output: id.output.clone(),
                their_hash: theirs.clone(),
                our_hash: ours.clone(),
                agreeing: agreeing.iter().cloned().collect(),
                failed_here: None,
                by: self.own_builder().to_owned(),
                time: crate::job::now() as i64,
                evidence,
            })?;
        }
        Ok(())
    }
}

impl Pool {
    /// Append a strike (called with the lock held), and say when it
    /// excludes its builder.
    fn record_strike(&self, strike: Strike) -> Result<()> {
        let path = self.dir.join("strikes.jsonl");
        warn!(
            builder = %strike.builder,
            drv = %strike.drv_path,
            output = %strike.output,
            their_hash = %strike.their_hash,
            our_hash = %strike.our_hash,
            agreeing = ?strike.agreeing,
            failed_here = ?strike.failed_here,
            "strike: the builder's attestation contradicts this trusted builder's result"
        );
        append_line(&path, serde_json::to_vec(&strike).expect("serialises"))?;
        let n = self
            .strikes()
            .iter()
            .filter(|s| s.builder == strike.builder)
            .count();
        if n == self.max_strikes as usize + 1 {
            info!(builder = %strike.builder, strikes = n, max = self.max_strikes, "builder excluded: its attestations no longer count");
        }
        Ok(())
    }

    /// A trusted builder's build of `drv` failed in job `job_id` (its log
    /// says so): kept (`failures.jsonl`), and every other builder that
    /// attested an output of `drv` as built gets a strike, now or when its
    /// attestation arrives.
    pub fn record_failure(&self, drv: &str, job_id: &str) -> Result<()> {
        if !self.trusted {
            return Ok(());
        }
        let hash = drv_hash(drv).ok_or_else(|| Error::NotADrv(drv.to_owned()))?;
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        if !self.failures().iter().any(|f| f.drv_path == drv) {
            let line = serde_json::to_vec(&Failure {
                drv_path: drv.to_owned(),
                job_id: job_id.to_owned(),
                time: crate::job::now() as i64,
            })
            .expect("serialises");
            append_line(&self.dir.join("failures.jsonl"), line)?;
        }
        for a in read_file(&self.file(hash)) {
            self.strike_failed_here(&a)?;
        }
        Ok(())
    }

    fn failures(&self) -> Vec<Failure> {
        json_lines(&self.dir.join("failures.jsonl"))
    }

    /// `a` (another builder's) claims an output of a derivation whose build
    /// failed here: a strike, once per builder and output. Lock held.
    fn strike_failed_here(&self, a: &Attestation) -> Result<()> {
        let s = &a.statement;
        if s.builder == self.own_builder() {
            return Ok(());
        }
        let Some(fail) = self
            .failures()
            .into_iter()
            .find(|f| f.drv_path == s.drv_path)
        else {
            return Ok(());
        };
        if self.excluded().contains_key(&s.builder)
            || self
                .strikes()
                .iter()
                .any(|k| k.builder == s.builder && k.drv_path == s.drv_path && k.output == s.output)
        {
            return Ok(());
        }
        self.record_strike(Strike {
            builder: s.builder.clone(),
            drv_path: s.drv_path.clone(),
            output: s.output.clone(),
            their_hash: s.nar_hash.clone(),
            our_hash: String::new(),
            agreeing: vec![],
            failed_here: Some(fail.job_id),
            by: self.own_builder().to_owned(),
            time: crate::job::now() as i64,
            evidence: a.clone(),
        })
    }
}

/// A derivation whose build failed on this trusted builder.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Failure {
    drv_path: String,
    job_id: String,
    time: i64,
}

/// The derivations a build log says failed to build here: Nix's
/// `builder for '<drv>' failed` and `hash mismatch in fixed-output
/// derivation '<drv>'` lines (the guest's word).
pub fn failed_derivations(log: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for line in log.lines() {
        for marker in [
            "builder for '",
            "hash mismatch in fixed-output derivation '",
        ] {
            let Some(i) = line.find(marker) else { continue };
            let rest = &line[i + marker.len()..];
            let Some(end) = rest.find('\'') else { continue };
            let drv = &rest[..end];
            if drv.starts_with("/nix/store/")
                && drv_hash(drv).is_some()
                && !out.iter().any(|d| d == drv)
            {
                out.push(drv.to_owned());
            }
        }
    }
    out
}

/// The records of a JSON-lines file; a line that does not parse (a torn
/// append) is skipped.
fn json_lines<T: serde::de::DeserializeOwned>(path: &Path) -> Vec<T> {
    let text = std::fs::read(path).unwrap_or_default();
    text.split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .filter_map(|l| serde_json::from_slice(l).ok())
        .collect()
}

/// Append one line (`line` and a newline) to a JSON-lines file, its
/// directory made if need be, and sync it.
fn append_line(path: &Path, mut line: Vec<u8>) -> Result<()> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(io_at(d))?;
    }
    line.push(b'\n');
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io_at(path))?;
    f.write_all(&line)
        .and_then(|_| f.sync_data())
        .map_err(io_at(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::KnownBuilderConfig;
    use airlock_nix_formats::signing::SecretKey;

    fn key(i: u8) -> SecretKey {
        SecretKey::from_seed(&format!("b{i}"), &[i; 32]).unwrap()
    }

    fn att(k: &SecretKey, out: &str, hash: &str) -> Attestation {
        crate::attest::tests::statement(&k.name, out, hash)
            .sign(k)
            .unwrap()
    }

    fn pool(dir: &Path, own: &SecretKey, others: &[&SecretKey], max_strikes: u32) -> Pool {
        let mut cfg = Config {
            trust: Trust::Trusted,
            ..Config::default()
        };
        cfg.verify.max_strikes = max_strikes;
        cfg.verify.builders = others
            .iter()
            .map(|k| KnownBuilderConfig {
                key: k.public(),
                operator: format!("org-{}", k.name),
                url: format!("https://{}.example", k.name),
            })
            .collect();
        Pool::open(
            dir.to_owned(),
            KnownBuilder {
                key: own.public(),
                operator: "org-own".into(),
            },
            &cfg,
        )
    }

    #[test]
    fn agreement_strikes_and_exclusion() {
        let d = tempfile::tempdir().unwrap();
        let (own, b2, b3, liar) = (key(1), key(2), key(3), key(4));
        let p = pool(d.path(), &own, &[&b2, &b3, &liar], 1);
        let need = Agreement {
            builders: 2,
            operators: 2,
        };
        let x = att(&own, "x", "sha256:good");
        let drv = x.statement.drv_path.clone();
        assert!(p.add(&x).unwrap());
        assert!(!p.add(&x).unwrap(), "kept once");
        // Alone: not enough.
        let e = p
            .agreement(Some(&drv), "out", "sha256:good", need)
            .unwrap_err();
        assert!(e.contains("single (b1)"), "{e}");
        p.add(&att(&b2, "x", "sha256:good")).unwrap();
        assert_eq!(
            p.agreement(Some(&drv), "out", "sha256:good", need).unwrap(),
            "reproduced by 2 builders of 2 operators"
        );
        // Unknown and forged attestations are refused.
        assert!(matches!(
            p.add(&att(&key(9), "x", "sha256:good")),
            Err(Error::Unknown { .. })
        ));
        let mut forged = att(&b3, "x", "sha256:good");
        forged.statement.nar_hash = "sha256:evil".into();
        assert!(matches!(p.add(&forged), Err(Error::Invalid { .. })));
        // The liar differs: a strike, and the path is no longer agreed on.
        p.add(&att(&liar, "x", "sha256:evil")).unwrap();
        let s = p.strikes();
        assert_eq!(s.len(), 1);
        assert_eq!(
            (s[0].builder.as_str(), s[0].their_hash.as_str()),
            ("b4", "sha256:evil")
        );
        s[0].evidence.verify(&liar.public()).unwrap();
        let e = p
            .agreement(Some(&drv), "out", "sha256:good", need)
            .unwrap_err();
        assert!(e.contains("differs"), "{e}");
        let c = p.compare_what(&drv).unwrap();
        assert_eq!(c.outputs[0].verdict, "differs");
        // A second strike (on another output) is past max_strikes = 1:
        // the liar no longer counts, and the first output is agreed again.
        p.add(&att(&own, "y", "sha256:g2")).unwrap();
        p.add(&att(&b3, "y", "sha256:g2")).unwrap();
        p.add(&att(&liar, "y", "sha256:e2")).unwrap();
        assert_eq!(p.strikes().len(), 2);
        assert_eq!(
            p.agreement(Some(&drv), "out", "sha256:good", need).unwrap(),
            "reproduced by 2 builders of 2 operators"
        );
        let c = p.compare_what(&"c".repeat(40)).unwrap();
        assert_eq!(c.outputs.len(), 2);
        assert!(c
            .ignored
            .iter()
            .all(|i| i.builder == "b4" && i.why.contains("2 strikes")));
        let rows = p.builders();
        let row = |n: &str| rows.iter().find(|r| r.builder == n).unwrap().clone();
        assert!(row("b1").own);
        assert_eq!(
            (
                row("b4").strikes,
                row("b4").excluded,
                row("b4").agreed,
                row("b4").compared
            ),
            (2, true, 0, 2)
        );
        assert_eq!((row("b2").compared, row("b2").agreed), (1, 1));
        assert_eq!(row("b3").url, "https://b3.example");
        // Served as kept; bad names are not files.
        let hash = drv_hash(&drv).unwrap();
        assert!(p.raw(hash).unwrap().starts_with(b"{\"statement\""));
        assert!(p.raw("../strikes").is_none());
        assert!(p.raw(&"e".repeat(32)).is_none());
        assert!(matches!(p.compare_what("hello"), Err(Error::What(_))));
    }

    #[test]
    fn success_claimed_where_the_trusted_builder_failed_is_a_strike() {
        let d = tempfile::tempdir().unwrap();
        let (own, b2, b3) = (key(1), key(2), key(3));
        let p = pool(d.path(), &own, &[&b2, &b3], 3);
        let early = att(&b2, "x", "sha256:claimed");
        let drv = early.statement.drv_path.clone();
        p.add(&early).unwrap();
        let log = format!(
            "building '{drv}'...\nerror: builder for '{drv}' failed with exit code 3;\n       last 3 log lines:\nerror: 1 dependencies of derivation '/nix/store/{}-top.drv' failed to build\n",
            "c".repeat(32)
        );
        assert_eq!(failed_derivations(&log), vec![drv.clone()]);
        assert_eq!(
            failed_derivations(&format!(
                "error: hash mismatch in fixed-output derivation '{drv}':"
            )),
            vec![drv.clone()]
        );
        assert!(failed_derivations("builder for '/etc/passwd' failed").is_empty());
        // The failure here strikes the builder that attested before it...
        p.record_failure(&drv, "job-9").unwrap();
        p.record_failure(&drv, "job-9").unwrap();
        let s = p.strikes();
        assert_eq!(s.len(), 1, "{s:?}");
        assert_eq!(
            (s[0].builder.as_str(), s[0].failed_here.as_deref()),
            ("b2", Some("job-9"))
        );
        // ...and the one that attests after it.
        p.add(&att(&b3, "x", "sha256:claimed")).unwrap();
        assert_eq!(p.strikes().len(), 2);
        assert!(p.strikes().iter().all(|k| k.our_hash.is_empty()));
    }

    #[test]
    fn a_community_builder_records_no_strikes_and_the_default_needs_nothing() {
        let d = tempfile::tempdir().unwrap();
        let (own, b2, b3) = (key(1), key(2), key(3));
        let mut p = pool(d.path(), &own, &[&b2, &b3], 3);
        p.trusted = false;
        p.add(&att(&own, "x", "sha256:good")).unwrap();
        p.add(&att(&b2, "x", "sha256:good")).unwrap();
        p.add(&att(&b3, "x", "sha256:evil")).unwrap();
        assert!(p.strikes().is_empty());
        assert!(Agreement::default().is_own_word());
        assert_eq!(
            drv_hash(&format!("/nix/store/{}-a.drv", "a".repeat(32))),
            Some(&*"a".repeat(32))
        );
        assert_eq!(drv_hash(&format!("/nix/store/{}-a", "a".repeat(32))), None);
    }
}
