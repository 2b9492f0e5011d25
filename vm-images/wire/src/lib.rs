//! Wire formats between `airlockd` (host) and `airlock-agent` (guest).
//!
//! Pure data and codecs: no I/O beyond `Read`/`Write`, no async. Everything
//! the guest sends is untrusted; the decoders here are strict and bounded.
//!
//! Three formats cross the VM boundary:
//!
//! 1. [`GuestJob`] (host → guest): `job.json` on the read-only input disk.
//! 2. The **channel** (guest → host, streamed while the VM runs): the guest
//!    writes lines to its virtio console (`/dev/hvc0`); the host captures
//!    them to a file. Each line is `L <text>` (one build log line) or
//!    `E <json>` (an [`Event`]). See [`parse_channel_line`].
//! 3. The **export stream** (guest → host, read after the VM is gone): the
//!    guest writes it to a raw block device. Layout:
//!    `EXPORT_MAGIC` (16 bytes), manifest length (u32 LE), the [`Manifest`]
//!    as JSON, then for each `manifest.paths[i]` in order exactly
//!    `nar_size` bytes of NAR, then `EXPORT_TRAILER` (16 bytes).

pub mod review;

/// The virtio-blk serials the host gives a job VM's disks and the guest's
/// init finds them by (`/dev/disk/by-id/virtio-<serial>`; `init.sh` and
/// `guest.nix` spell the same words, and a test holds them to these).
pub mod disk {
    /// The guest image's root filesystem (read-only).
    pub const ROOT: &str = "airlock-root";
    /// The job's `/nix` (read-write; kept between the fetch and build phases).
    pub const NIX: &str = "airlock-nix";
    /// The job's input: `job.json`, the agent, the checkout (read-only).
    pub const INPUT: &str = "airlock-input";
    /// The raw export area the agent writes its result stream to.
    pub const EXPORT: &str = "airlock-export";
    /// A base tree the input's delta applies to (only with `airlock.base=1`).
    pub const BASE: &str = "airlock-base";
    /// Every serial, in the order the host attaches them.
    pub const ALL: [&str; 5] = [ROOT, NIX, INPUT, EXPORT, BASE];
}

use std::io::{Read, Write};

use serde::{Deserialize, Serialize};

/// Version of all three formats; bumped on any incompatible change.
pub const WIRE_VERSION: u32 = 1;
pub const EXPORT_MAGIC: &[u8; 16] = b"AIRLOCK-EXPORT\x00\x01";
pub const EXPORT_TRAILER: &[u8; 16] = b"AIRLOCK-END\x00\x00\x00\x00\x00";
/// Upper bound on the manifest's JSON size.
pub const MAX_MANIFEST_BYTES: u32 = 8 << 20;
/// Upper bound on one channel line; longer lines are cut by the host.
pub const MAX_CHANNEL_LINE: usize = 64 << 10;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("export stream does not start with the airlock magic")]
    BadMagic,
    #[error("export manifest is {0} bytes, more than the {MAX_MANIFEST_BYTES} allowed")]
    ManifestTooLarge(u32),
    #[error("export manifest is not valid JSON for this version")]
    BadManifest(#[source] serde_json::Error),
    #[error("export manifest has version {0}, expected {WIRE_VERSION}")]
    BadVersion(u32),
    #[error("export stream is truncated")]
    Truncated(#[source] std::io::Error),
    #[error("export stream does not end with the airlock trailer")]
    BadTrailer,
    #[error("I/O error on the export stream")]
    Io(#[source] std::io::Error),
}
pub type Result<T> = std::result::Result<T, Error>;

/// Which part of the job a VM boot does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Evaluate and build everything in one boot (no network).
    All,
    /// Evaluate, substitute and realise only fixed-output derivations (network).
    Fetch,
    /// Realise everything else (no network).
    Build,
}

/// The job as the guest sees it (`job.json` on the input disk).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestJob {
    pub version: u32,
    pub phase: Phase,
    /// Attribute paths, each evaluated on its own like ofborg does.
    pub attrs: Vec<String>,
    pub system: String,
    /// Nix file relative to the checkout (`default.nix` or `nixos/release.nix`).
    pub nix_file: String,
    /// Passed to Nix as `build-timeout` (per derivation); 0 = none.
    pub build_timeout_secs: u64,
    /// Passed to Nix as `max-silent-time`; 0 = none.
    pub max_silent_secs: u64,
    /// Resolvers for the fetch phase (the only phase with a network).
    #[serde(default)]
    pub dns: Vec<String>,
    /// The host's substituter, for the fetch phase; `None`: substitute nothing.
    #[serde(default)]
    pub substituter: Option<GuestSubstituter>,
    /// A review job (issue 16): `attrs` is empty, the agent evaluates the
    /// base and the merged tree and builds what changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub review: Option<review::GuestReview>,
    /// A re-fetch before release (issue 30): evaluate `attrs`, realise only
    /// their fixed-output derivations (the fetch phase as always; in one
    /// boot without a network, no substituter), build nothing else, and
    /// export exactly these store paths, the ones that are valid then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refetch: Option<Vec<String>>,
    /// A step of Hydra's queue-runner (issue 31): no checkout, no
    /// evaluation; import the inputs the host checked, build the resolved
    /// derivation as given, export its outputs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<GuestStep>,
}

/// A queue-runner step on the input disk: `step/request.bin` holds the
/// serve protocol's `BuildDerivation` command (for protocol 2.7, written by
/// the host from the runner's resolved derivation), `step/inputs/<base
/// name>.nar` every input's NAR, in `inputs`' order (dependencies first).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestStep {
    /// The `.drv` path the step is built as (full path).
    pub drv_path: String,
    /// The output paths to export once built (full paths).
    pub outputs: Vec<String>,
    pub inputs: Vec<GuestInput>,
}

/// One input path of a step, as the host checked it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestInput {
    /// Full path.
    pub path: String,
    pub deriver: Option<String>,
    /// Full paths.
    pub references: Vec<String>,
}

/// The fetch phase's only substituter: `http://<gateway>:<port>` (the
/// gateway is the host end of the job's link, from `airlock.net`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestSubstituter {
    pub port: u16,
    /// Nix's `trusted-public-keys` (`require-sigs` stays on).
    pub trusted_public_keys: Vec<String>,
}

/// Per-boot parameters on the kernel command line (the input disk is the
/// same for both boots): `airlock.phase=fetch|build|all` and, in the fetch
/// phase, `airlock.net=<guest address>/<prefix>,<gateway>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootParams {
    pub phase: Phase,
    pub net: Option<(String, String)>,
}

impl BootParams {
    pub fn to_cmdline(&self) -> String {
        let phase = match self.phase {
            Phase::All => "all",
            Phase::Fetch => "fetch",
            Phase::Build => "build",
        };
        let mut s = format!("airlock.phase={phase}");
        if let Some((addr, gw)) = &self.net {
            s.push_str(&format!(" airlock.net={addr},{gw}"));
        }
        s
    }

    pub fn from_cmdline(cmdline: &str) -> BootParams {
        let mut p = BootParams {
            phase: Phase::All,
            net: None,
        };
        for w in cmdline.split_whitespace() {
            if let Some(v) = w.strip_prefix("airlock.phase=") {
                p.phase = match v {
                    "fetch" => Phase::Fetch,
                    "build" => Phase::Build,
                    _ => Phase::All,
                };
            } else if let Some(v) = w.strip_prefix("airlock.net=") {
                if let Some((a, g)) = v.split_once(',') {
                    p.net = Some((a.to_owned(), g.to_owned()));
                }
            }
        }
        p
    }
}

/// What the host tells a guest restored from a template (see
/// `daemon/src/vm/template.rs`), as one line on the virtio port
/// [`CTL_PORT`]: `AIRLOCK-GO 1 <unix secs> <seed: 64 hex> <boot words>`.
/// The template's agent, waiting on that port, mixes the seed into the
/// kernel's RNG and reseeds it before it does anything else, sets the
/// clock, and keeps the boot words (what a cold boot has on its kernel
/// command line: [`BootParams::to_cmdline`], `airlock.base=1`) in
/// [`BOOT_WORDS_FILE`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoRecord {
    pub unix_secs: u64,
    pub seed: [u8; 32],
    pub words: String,
}

/// The virtio-serial port a template guest waits on.
pub const CTL_PORT: &str = "airlock.ctl";
/// A restored guest's boot words, written by the agent from its go record.
pub const BOOT_WORDS_FILE: &str = "/run/airlock-boot";
/// The virtio disks a template guest's init let go (the placeholders), as
/// `<virtio device>:<serial>` words; the agent binds those the job uses
/// once they are the job's disks.
pub const HELD_FILE: &str = "/run/airlock-held";
/// What a template guest says on [`CTL_PORT`] when it is ready to be saved.
pub const TEMPLATE_READY: &str = "AIRLOCK-TEMPLATE-READY";

impl GoRecord {
    const MAGIC: &'static str = "AIRLOCK-GO";
    const VERSION: &'static str = "1";

    /// The line, newline included. Boot words are the host's own (no
    /// newline in them; a word with one would be cut there).
    pub fn encode(&self) -> String {
        let seed: String = self.seed.iter().map(|b| format!("{b:02x}")).collect();
        let words = self.words.replace(['\n', '\r'], " ");
        format!(
            "{} {} {} {seed} {}\n",
            Self::MAGIC,
            Self::VERSION,
            self.unix_secs,
            words.trim()
        )
    }

    /// Parse a line as [`GoRecord::encode`] writes it.
    pub fn parse(line: &str) -> Option<GoRecord> {
        let mut it = line.trim_end_matches(['\n', '\r']).splitn(5, ' ');
        if it.next()? != Self::MAGIC || it.next()? != Self::VERSION {
            return None;
        }
        let unix_secs = it.next()?.parse().ok()?;
        let seed = decode_seed(it.next()?)?;
        let words = it.next().unwrap_or_default().to_owned();
        Some(GoRecord {
            unix_secs,
            seed,
            words,
        })
    }
}

/// 64 hex digits to 32 bytes.
pub fn decode_seed(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// ofborg's `BuildStatus`, with its exact JSON representation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BuildStatus {
    Success,
    Failure,
    TimedOut,
    HashMismatch,
    Skipped,
    UnexpectedError { err: String },
}

impl BuildStatus {
    /// ofborg's mapping of `nix-build`'s exit code.
    pub fn from_nix_exit(code: Option<i32>) -> BuildStatus {
        match code {
            Some(0) => BuildStatus::Success,
            Some(100) => BuildStatus::Failure,
            Some(101) => BuildStatus::TimedOut,
            Some(102) => BuildStatus::HashMismatch,
            Some(c) => BuildStatus::UnexpectedError {
                err: format!("command failed with exit code {c}"),
            },
            None => BuildStatus::UnexpectedError {
                err: "unexpected build failure".into(),
            },
        }
    }
}

/// Structured events on the channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Event {
    /// The agent started (sent first, so the host can time boot-to-agent).
    AgentStarted { version: u32 },
    /// What the guest runs: its Nix (`nix --version`, e.g. `nix (Nix) 2.26.3`).
    GuestInfo { nix: String },
    /// Every attr was tried with `nix-instantiate`.
    Instantiated {
        attempted: Vec<String>,
        skipped: Vec<String>,
    },
    /// What a phase realised: derivations built in this VM, and store paths
    /// substituted (from the host's substituter, fetch phase only).
    Realised { built: u64, substituted: u64 },
    /// The build finished with this status; export follows.
    Built { status: BuildStatus },
    /// The export stream is complete (paths written, bytes in all).
    Exported { paths: u64, bytes: u64 },
    /// Something went wrong outside the build itself.
    AgentError { message: String },
    /// A queue-runner step's build ended: Nix's `BuildResult` status code
    /// and error message, and how long `BuildDerivation` took (the guest's
    /// word; the host checks the outputs).
    StepBuilt {
        nix_status: u64,
        error: String,
        build_ms: u64,
    },
}

/// One decoded channel line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelLine {
    Log(String),
    Event(Event),
    /// Anything else: kept as log text, flagged so the host can warn.
    Garbage(String),
}

/// Lossy UTF-8 as ofborg does it: a line that is not valid UTF-8 is replaced.
pub fn utf8_line(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) => s.to_owned(),
        Err(_) => "Non-UTF8 data omitted from the log.".to_owned(),
    }
}

/// Decode one channel line (without its newline). Never fails: the guest is
/// untrusted, so anything unexpected becomes [`ChannelLine::Garbage`].
pub fn parse_channel_line(line: &[u8]) -> ChannelLine {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let line = &line[..line.len().min(MAX_CHANNEL_LINE)];
    if let Some(text) = line.strip_prefix(b"L ") {
        return ChannelLine::Log(utf8_line(text));
    }
    if line == b"L" {
        return ChannelLine::Log(String::new());
    }
    if let Some(json) = line.strip_prefix(b"E ") {
        if let Ok(ev) = serde_json::from_slice::<Event>(json) {
            return ChannelLine::Event(ev);
        }
    }
    ChannelLine::Garbage(utf8_line(line))
}

/// Encode a log line for the channel (newlines inside are split by the caller).
pub fn encode_log_line(text: &str) -> String {
    format!("L {}\n", text.replace(['\n', '\r'], " "))
}

pub fn encode_event(ev: &Event) -> String {
    // Serialising our own enum cannot fail.
    format!("E {}\n", serde_json::to_string(ev).unwrap_or_default())
}

/// What the guest claims about one exported store path. Untrusted: the host
/// recomputes the hash and size and rescans the references.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportedPath {
    pub path: String,
    /// `sha256:<nix-base32>` as Nix prints it.
    pub nar_hash: String,
    pub nar_size: u64,
    pub references: Vec<String>,
    pub deriver: Option<String>,
    /// Content address (`fixed:…`) for fixed-output paths.
    pub ca: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub version: u32,
    pub phase: Phase,
    pub status: BuildStatus,
    pub attempted_attrs: Vec<String>,
    pub skipped_attrs: Vec<String>,
    pub paths: Vec<ExportedPath>,
    /// A review job's evaluation, diff, outcomes and evidence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub review: Option<review::ReviewOutcome>,
}

/// Write the stream header (magic, manifest). The NARs and the trailer follow.
pub fn write_header(w: &mut impl Write, manifest: &Manifest) -> Result<()> {
    let json = serde_json::to_vec(manifest).map_err(Error::BadManifest)?;
    let len = u32::try_from(json.len())
        .ok()
        .filter(|l| *l <= MAX_MANIFEST_BYTES)
        .ok_or(Error::ManifestTooLarge(u32::MAX))?;
    w.write_all(EXPORT_MAGIC).map_err(Error::Io)?;
    w.write_all(&len.to_le_bytes()).map_err(Error::Io)?;
    w.write_all(&json).map_err(Error::Io)
}

pub fn write_trailer(w: &mut impl Write) -> Result<()> {
    w.write_all(EXPORT_TRAILER).map_err(Error::Io)
}

/// Read and check the magic and the manifest. The caller then reads each
/// path's NAR (exactly `nar_size` bytes, verifying it) and [`read_trailer`].
pub fn read_header(r: &mut impl Read) -> Result<Manifest> {
    let mut magic = [0u8; 16];
    r.read_exact(&mut magic).map_err(Error::Truncated)?;
    if &magic != EXPORT_MAGIC {
        return Err(Error::BadMagic);
    }
    let mut len = [0u8; 4];
    r.read_exact(&mut len).map_err(Error::Truncated)?;
    let len = u32::from_le_bytes(len);
    if len > MAX_MANIFEST_BYTES {
        return Err(Error::ManifestTooLarge(len));
    }
    let mut json = vec![0u8; len as usize];
    r.read_exact(&mut json).map_err(Error::Truncated)?;
    let m: Manifest = serde_json::from_slice(&json).map_err(Error::BadManifest)?;
    if m.version != WIRE_VERSION {
        return Err(Error::BadVersion(m.version));
    }
    Ok(m)
}

pub fn read_trailer(r: &mut impl Read) -> Result<()> {
    let mut t = [0u8; 16];
    r.read_exact(&mut t).map_err(Error::Truncated)?;
    if &t != EXPORT_TRAILER {
        return Err(Error::BadTrailer);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_go_record_round_trips_and_junk_is_refused() {
        let g = GoRecord {
            unix_secs: 1_796_000_000,
            seed: [0xab; 32],
            words: "airlock.phase=fetch airlock.net=10.0.0.2/30,10.0.0.1 airlock.base=1".into(),
        };
        let line = g.encode();
        assert!(line.starts_with("AIRLOCK-GO 1 1796000000 abab"), "{line}");
        assert!(line.ends_with("airlock.base=1\n"));
        assert_eq!(GoRecord::parse(&line), Some(g.clone()));
        let bare = GoRecord {
            words: String::new(),
            ..g.clone()
        };
        assert_eq!(GoRecord::parse(&bare.encode()), Some(bare));
        for bad in [
            "",
            "AIRLOCK-GO 2 1 ab",
            "AIRLOCK-GO 1 x abab",
            "AIRLOCK-GO 1 5 abc",
            "NOPE 1 5 abab",
        ] {
            assert_eq!(GoRecord::parse(bad), None, "{bad:?}");
        }
        // A newline in the words cannot start a second record.
        let sneaky = GoRecord {
            words: "a\nAIRLOCK-GO".into(),
            ..g
        };
        assert_eq!(sneaky.encode().matches('\n').count(), 1);
        // The guest's init finds the port by this name and starts the
        // template's agent on it (init.sh).
        let init =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../guest/init.sh"))
                .unwrap();
        for must in [CTL_PORT, "--template \"$port\"", HELD_FILE] {
            assert!(init.contains(must), "init.sh lacks {must}");
        }
    }

    /// The guest's init finds every disk under the serial the host gives it.
    #[test]
    fn the_guest_init_looks_for_the_host_serials() {
        let init = concat!(env!("CARGO_MANIFEST_DIR"), "/../guest/init.sh");
        let text = std::fs::read_to_string(init).unwrap();
        for serial in disk::ALL {
            assert!(
                text.contains(&format!("dev_for {serial})")),
                "init.sh does not look for the disk {serial}"
            );
        }
    }

    fn manifest() -> Manifest {
        Manifest {
            version: WIRE_VERSION,
            phase: Phase::All,
            status: BuildStatus::Success,
            attempted_attrs: vec!["a".into()],
            skipped_attrs: vec![],
            paths: vec![],
            review: None,
        }
    }

    #[test]
    fn header_roundtrip() {
        let mut buf = Vec::new();
        write_header(&mut buf, &manifest()).unwrap();
        write_trailer(&mut buf).unwrap();
        let mut r = &buf[..];
        assert_eq!(read_header(&mut r).unwrap(), manifest());
        read_trailer(&mut r).unwrap();
    }

    #[test]
    fn rejects_bad_magic_and_oversized_manifest() {
        let mut r = &b"NOT-AIRLOCK-EXPORT-AT-ALL"[..];
        assert!(matches!(read_header(&mut r), Err(Error::BadMagic)));
        let mut buf = EXPORT_MAGIC.to_vec();
        buf.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            read_header(&mut &buf[..]),
            Err(Error::ManifestTooLarge(_))
        ));
        let mut buf = EXPORT_MAGIC.to_vec();
        buf.extend_from_slice(&100u32.to_le_bytes());
        buf.extend_from_slice(b"{}");
        assert!(matches!(
            read_header(&mut &buf[..]),
            Err(Error::Truncated(_))
        ));
    }

    #[test]
    fn rejects_unknown_manifest_fields() {
        let mut json = serde_json::to_value(manifest()).unwrap();
        json["sneaky"] = serde_json::Value::Bool(true);
        let body = serde_json::to_vec(&json).unwrap();
        let mut buf = EXPORT_MAGIC.to_vec();
        buf.extend_from_slice(&(body.len() as u32).to_le_bytes());
        buf.extend_from_slice(&body);
        assert!(matches!(
            read_header(&mut &buf[..]),
            Err(Error::BadManifest(_))
        ));
    }

    #[test]
    fn channel_lines() {
        assert_eq!(
            parse_channel_line(b"L hello"),
            ChannelLine::Log("hello".into())
        );
        assert_eq!(parse_channel_line(b"L"), ChannelLine::Log("".into()));
        assert_eq!(
            parse_channel_line(b"L \xff\xfe"),
            ChannelLine::Log("Non-UTF8 data omitted from the log.".into())
        );
        let ev = Event::Instantiated {
            attempted: vec!["a".into()],
            skipped: vec![],
        };
        let enc = encode_event(&ev);
        assert_eq!(
            parse_channel_line(enc.trim_end().as_bytes()),
            ChannelLine::Event(ev)
        );
        assert!(matches!(
            parse_channel_line(b"E {\"bogus\":1}"),
            ChannelLine::Garbage(_)
        ));
        assert!(matches!(
            parse_channel_line(b"random"),
            ChannelLine::Garbage(_)
        ));
        assert_eq!(encode_log_line("a\nb"), "L a b\n");
    }

    #[test]
    fn boot_params_roundtrip() {
        let p = BootParams {
            phase: Phase::Fetch,
            net: Some(("10.213.0.2/30".into(), "10.213.0.1".into())),
        };
        let line = format!("console=ttyS0 quiet {} panic=-1", p.to_cmdline());
        assert_eq!(BootParams::from_cmdline(&line), p);
        assert_eq!(BootParams::from_cmdline("console=ttyS0").phase, Phase::All);
    }

    #[test]
    fn status_json_matches_ofborg() {
        assert_eq!(
            serde_json::to_string(&BuildStatus::Success).unwrap(),
            "\"Success\""
        );
        assert_eq!(
            serde_json::to_string(&BuildStatus::UnexpectedError { err: "x".into() }).unwrap(),
            "{\"UnexpectedError\":{\"err\":\"x\"}}"
        );
        assert_eq!(BuildStatus::from_nix_exit(Some(101)), BuildStatus::TimedOut);
    }
}
