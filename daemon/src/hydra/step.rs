//! A queue-runner step in Nix's terms: the resolved derivation of a
//! `BuildMessage` as the BasicDerivation the serve protocol's
//! `BuildDerivation` takes, and the builder's outcome as the runner's
//! `BuildResultState`. Pure: no I/O; every name from the runner is checked.

use airlock_nix_formats::serve::{self, BasicDerivation};

use super::proto::{
    self, output, BuildMessage, BuildResultState, ContentAddressMethod, HashAlgorithm,
};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("the step has no {0}")]
    Missing(&'static str),
    #[error("{0:?} is not a store path base name (<32 nix-base32 characters>-<name>)")]
    BadName(String),
    #[error("output {0:?}: {1}")]
    BadOutput(String, String),
    #[error("the runner asks for presigned uploads, which airlock does not do")]
    Presigned,
}
pub type Result<T> = std::result::Result<T, Error>;

/// What the guest builds: the `.drv` path (it names the outputs) and the
/// derivation, with full paths in `store_dir`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub drv_path: String,
    pub drv: BasicDerivation,
    /// The inputs as base names, for fetching from the runner.
    pub inputs: Vec<String>,
    /// A fixed-output step: it gets the fetch phase's network.
    pub fixed_output: bool,
    pub options: serve::BuildOptions,
}

/// A base name as the runner's `StorePath` holds it, checked.
pub fn base_name(p: &str) -> Result<&str> {
    let bad = || Error::BadName(p.to_owned());
    let (hash, name) = p.split_once('-').ok_or_else(bad)?;
    let name_ok = !name.is_empty()
        && name.len() <= 211
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-._?=".contains(&b));
    if hash.len() != 32
        || !hash
            .bytes()
            .all(|b| airlock_nix_formats::nix32::ALPHABET.contains(&b))
        || !name_ok
    {
        return Err(bad());
    }
    Ok(p)
}

fn method_prefix(m: i32) -> &'static str {
    match ContentAddressMethod::try_from(m) {
        Ok(ContentAddressMethod::NixArchive) => "r:",
        Ok(ContentAddressMethod::Text) => "text:",
        _ => "",
    }
}

fn algo_name(a: i32) -> Result<&'static str> {
    Ok(match HashAlgorithm::try_from(a) {
        Ok(HashAlgorithm::Sha256) => "sha256",
        Ok(HashAlgorithm::Sha512) => "sha512",
        Ok(HashAlgorithm::Sha1) => "sha1",
        Ok(HashAlgorithm::Md5) => "md5",
        _ => {
            return Err(Error::BadOutput(
                String::new(),
                format!("hash algorithm {}", HashAlgorithm::name_of(a)),
            ))
        }
    })
}

/// One output in Nix's form, and whether it is a fixed output.
/// `env_path` is the output's path from the environment (for a fixed
/// output Nix computes the path again and only checks its form).
fn output(
    name: &str,
    out: &proto::Output,
    env_path: &str,
    store_dir: &str,
) -> Result<(serve::Output, bool)> {
    let bad = |why: &str| Error::BadOutput(name.to_owned(), why.to_owned());
    if name.is_empty()
        || !name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"+-._?=".contains(&c))
    {
        return Err(bad("not an output name"));
    }
    let method_algo = |m: i32, a: i32| -> Result<String> {
        Ok(format!(
            "{}{}",
            method_prefix(m),
            algo_name(a).map_err(|_| bad("hash algorithm"))?
        ))
    };
    let none = String::new;
    let (path, hash_algo, hash, fixed) = match out.output.as_ref().ok_or_else(|| bad("no kind"))? {
        output::Output::InputAddressed(p) => (
            format!("{store_dir}/{}", base_name(&p.path)?),
            none(),
            none(),
            false,
        ),
        output::Output::CaFixed(ca) => {
            let h = ca
                .hash
                .as_ref()
                .ok_or_else(|| bad("a fixed output without a hash"))?;
            let base = env_path
                .strip_prefix(&format!("{store_dir}/"))
                .ok_or_else(|| bad("a fixed output whose path is not in the environment"))?;
            base_name(base)?;
            (
                env_path.to_owned(),
                method_algo(ca.method, h.algorithm)?,
                hex::encode(&h.digest),
                true,
            )
        }
        output::Output::Deferred(_) => (none(), none(), none(), false),
        output::Output::CaFloating(m) => {
            (none(), method_algo(m.method, m.algorithm)?, none(), false)
        }
        output::Output::Impure(m) => (
            none(),
            method_algo(m.method, m.algorithm)?,
            "impure".into(),
            false,
        ),
    };
    Ok((
        serve::Output {
            name: name.to_owned(),
            path,
            hash_algo,
            hash,
        },
        fixed,
    ))
}

/// The step's resolved derivation for `nix-store --serve`, in `store_dir`.
pub fn resolve(b: &BuildMessage, store_dir: &str) -> Result<Resolved> {
    if b.presigned_url_opts.is_some() {
        return Err(Error::Presigned);
    }
    let drv = b.drv.as_ref().ok_or(Error::Missing("drv"))?;
    let drv_base = base_name(&drv.path)?;
    if !drv_base.ends_with(".drv") {
        return Err(Error::BadName(drv_base.to_owned()));
    }
    let r = b
        .resolved_drv
        .as_ref()
        .ok_or(Error::Missing("resolved_drv"))?;
    let full = |base: &str| format!("{store_dir}/{base}");
    let mut fixed_output = false;
    let mut outputs = Vec::new();
    for (name, out) in &r.outputs {
        let env_path = r
            .env
            .get(name)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default();
        let (o, fixed) = output(name, out, &env_path, store_dir)?;
        fixed_output |= fixed;
        outputs.push(o);
    }
    if outputs.is_empty() {
        return Err(Error::Missing("outputs"));
    }
    outputs.sort_by(|a, b| a.name.cmp(&b.name));
    let mut inputs = Vec::new();
    for p in &r.inputs {
        inputs.push(base_name(&p.path)?.to_owned());
    }
    let mut input_srcs: Vec<String> = inputs.iter().map(|b| full(b)).collect();
    input_srcs.sort();
    input_srcs.dedup();
    let mut env: Vec<(Vec<u8>, Vec<u8>)> = r
        .env
        .iter()
        .map(|(k, v)| (k.as_bytes().to_vec(), v.clone()))
        .collect();
    if let Some(json) = &r.structured_attrs {
        if !r.env.contains_key("__json") {
            env.push((b"__json".to_vec(), json.as_bytes().to_vec()));
        }
    }
    env.sort();
    let secs = |s: i32| u64::try_from(s).unwrap_or(0);
    Ok(Resolved {
        drv_path: full(drv_base),
        drv: BasicDerivation {
            outputs,
            input_srcs,
            platform: r.platform.clone(),
            builder: r.builder.clone(),
            args: r.args.clone(),
            env,
        },
        inputs,
        fixed_output,
        options: serve::BuildOptions {
            max_silent_time: secs(b.max_silent_time),
            build_timeout: secs(b.build_timeout),
            max_log_size: b.max_log_size,
        },
    })
}

/// How a step ended, in airlock's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Built,
    /// The builder failed (Nix's reason).
    Failed(String),
    TimedOut,
    LogLimit,
    /// An output's NAR is larger than the step's `max_output_size`.
    OutputTooLarge(String),
    /// The VM never got to build: setup failed (retried elsewhere).
    Preparing(String),
    /// An input could not be fetched or failed the host's checks.
    Import(String),
    /// An output failed the host's checks, or its upload failed.
    Upload(String),
}

impl Outcome {
    /// The runner's result state; see docs/hydra.md for what Hydra makes
    /// of each (failures of the step are final, the others retried).
    pub fn state(&self) -> BuildResultState {
        match self {
            Outcome::Built => BuildResultState::Success,
            Outcome::Failed(_) => BuildResultState::BuildFailure,
            Outcome::TimedOut => BuildResultState::TimedOutFailure,
            Outcome::LogLimit => BuildResultState::LogLimitFailure,
            Outcome::OutputTooLarge(_) => BuildResultState::NarSizeLimitFailure,
            Outcome::Preparing(_) => BuildResultState::PreparingFailure,
            Outcome::Import(_) => BuildResultState::ImportFailure,
            Outcome::Upload(_) => BuildResultState::UploadFailure,
        }
    }

    /// The step's error message, as Hydra stores it.
    pub fn message(&self, drv: &str) -> Option<String> {
        match self {
            Outcome::Built => None,
            Outcome::Failed(why) => Some(format!("Build of '{drv}' failed: {why} (see log)")),
            Outcome::TimedOut => Some(format!("Build of '{drv}' timed out")),
            Outcome::LogLimit => Some(format!("Build of '{drv}' exceeded the log size limit")),
            Outcome::OutputTooLarge(why) => Some(format!("Build of '{drv}': {why}")),
            Outcome::Preparing(why) | Outcome::Import(why) | Outcome::Upload(why) => {
                Some(format!("airlock: {why}"))
            }
        }
    }

    /// Nix's result of `BuildDerivation`, as an outcome (its message
    /// without the terminal's colour codes).
    pub fn from_nix(r: &serve::BuildResult) -> Outcome {
        use serve::Status::*;
        let r = &serve::BuildResult {
            error: strip_ansi(&r.error),
            ..r.clone()
        };
        match r.status {
            s if s.is_success() => Outcome::Built,
            TimedOut => Outcome::TimedOut,
            LogLimitExceeded => Outcome::LogLimit,
            MiscFailure if r.error.contains("does not exist") => Outcome::Import(r.error.clone()),
            _ => Outcome::Failed(if r.error.is_empty() {
                format!("{:?}", r.status)
            } else {
                r.error.clone()
            }),
        }
    }
}

/// Text without ANSI escape sequences (Nix colours its messages).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\u{1b}' {
            out.push(c);
            continue;
        }
        if chars.peek() == Some(&'[') {
            chars.next();
            // Parameters and intermediates, up to the final byte.
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
        }
    }
    out
}

/// The `OutputInfo` of a verified output for `CompleteBuild`.
pub fn output_info(
    base: &str,
    nar_hash: [u8; 32],
    nar_size: u64,
    closure_size: u64,
) -> proto::OutputInfo {
    proto::OutputInfo {
        path: Some(proto::StorePath::new(base)),
        closure_size,
        nar_size,
        nar_hash: Some(proto::Hash::sha256(nar_hash)),
        nix_support: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;

    fn recorded_build() -> Option<BuildMessage> {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../shared/fixtures/hydra-queue-runner/success.jsonl"
        );
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                crate::testing::skipped(&format!("hydra step test: {path}: {e}"));
                return None;
            }
        };
        let line: serde_json::Value = serde_json::from_str(text.lines().nth(5).unwrap()).unwrap();
        let m =
            proto::RunnerRequest::decode(&hex::decode(line["hex"].as_str().unwrap()).unwrap()[..])
                .unwrap();
        match m.message {
            Some(proto::runner_request::Message::Build(b)) => Some(b),
            _ => panic!("seq 6 is a build"),
        }
    }

    #[test]
    fn the_recorded_step_resolves_to_what_nix_would_write() {
        let Some(b) = recorded_build() else {
            return;
        };
        let store = "/tmp/hqr/qrstore/nix/store";
        let r = resolve(&b, store).unwrap();
        assert_eq!(
            r.drv_path,
            format!("{store}/qbq4rcbdm97v3l5r0a6r7zb73jlwydaj-airlock-hello2.drv")
        );
        assert_eq!(
            r.drv.outputs,
            [serve::Output {
                name: "out".into(),
                path: format!("{store}/m87k6m0xh73qrr1mgylp7n5nvdw93npl-airlock-hello2"),
                hash_algo: String::new(),
                hash: String::new(),
            }]
        );
        assert_eq!(r.drv.platform, b"x86_64-linux");
        assert_eq!(r.drv.builder, b"/bin/sh");
        assert_eq!(
            r.drv.args,
            [b"-c".to_vec(), b"echo hello from airlock > $out".to_vec()]
        );
        let keys: Vec<&[u8]> = r.drv.env.iter().map(|(k, _)| &k[..]).collect();
        assert_eq!(
            keys,
            [&b"builder"[..], b"name", b"out", b"system"],
            "sorted"
        );
        assert!(!r.fixed_output && r.inputs.is_empty());
        assert_eq!(r.options.max_silent_time, 7200);
        assert_eq!(r.options.build_timeout, 36000);
        assert_eq!(r.options.max_log_size, 64 << 20);
    }

    #[test]
    fn hostile_names_are_refused() {
        let Some(mut b) = recorded_build() else {
            return;
        };
        for bad in [
            "../../etc/passwd",
            "qbq4rcbdm97v3l5r0a6r7zb73jlwydaj-../x.drv",
            "short-x.drv",
            "qbq4rcbdm97v3l5r0a6r7zb73jlwydaj-x",
        ] {
            b.drv = Some(proto::StorePath::new(bad));
            assert!(resolve(&b, "/nix/store").is_err(), "{bad}");
        }
        assert!(
            base_name("eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee-a").is_err(),
            "e is not nix-base32"
        );
    }

    #[test]
    fn outcomes_map_onto_the_runners_states() {
        assert_eq!(Outcome::Built.state(), BuildResultState::Success);
        assert_eq!(
            Outcome::Failed("x".into()).state(),
            BuildResultState::BuildFailure
        );
        assert_eq!(Outcome::TimedOut.state(), BuildResultState::TimedOutFailure);
        assert_eq!(Outcome::LogLimit.state(), BuildResultState::LogLimitFailure);
        assert_eq!(
            Outcome::OutputTooLarge("x".into()).state(),
            BuildResultState::NarSizeLimitFailure
        );
        assert_eq!(
            Outcome::Import("x".into()).state(),
            BuildResultState::ImportFailure
        );
        assert!(Outcome::Built.message("d").is_none());
        let r = serve::BuildResult {
            status: serve::Status::PermanentFailure,
            error: "builder for 'x' failed with exit code 1".into(),
            times_built: 0,
            start_time: 0,
            stop_time: 0,
            built_outputs: vec![],
        };
        assert_eq!(Outcome::from_nix(&r), Outcome::Failed(r.error.clone()));
        assert_eq!(
            strip_ansi("\u{1b}[0mbuilder for '\u{1b}[35;1m/nix/store/x.drv\u{1b}[0m' failed"),
            "builder for '/nix/store/x.drv' failed"
        );
    }
}
