//! airlockd's configuration: one TOML file, every key optional. Every key and
//! its default is documented in `docs/configuration.md`; keep the two in step.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read config file {0}")]
    Read(PathBuf, #[source] std::io::Error),
    #[error("invalid config file {0}")]
    Parse(PathBuf, #[source] toml::de::Error),
    #[error("invalid config: {0}")]
    Invalid(String),
}
pub type Result<T> = std::result::Result<T, Error>;

/// Why a signing key needs `vm.user`: a VMM with airlockd's user (root)
/// could open the key file.
pub const VM_USER_FOR_KEY: &str = "release.signing_key_file needs vm.user (a user other than root): a VMM running as airlockd's user could read the signing key";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Jobs, quarantine and the binary cache live here.
    pub state_dir: PathBuf,
    /// Unix socket of the admin/local-intake API (airlockctl).
    pub socket: PathBuf,
    /// Jobs that run at the same time.
    pub max_jobs: usize,
    /// The Nix system this builder builds for.
    pub system: String,
    /// Name of this builder in reports (ofborg's `identity`); also the
    /// table `[identity] name, operator, url` (issue 30).
    pub identity: Identity,
    /// On SIGTERM: stop taking jobs, let running ones finish for this long.
    pub shutdown_grace_secs: u64,
    pub vm: VmConfig,
    pub limits: Limits,
    pub amqp: AmqpConfig,
    pub network: NetworkConfig,
    /// `trusted` (the project's own infrastructure: may release to the
    /// binary cache) or `community` (never releases). Default: community.
    pub trust: Trust,
    pub release: ReleaseConfig,
    pub cache: CacheConfig,
    pub github: GithubConfig,
    pub retention: RetentionConfig,
    pub nix: NixConfig,
    pub substituter: SubstituterConfig,
    pub inputs: InputsConfig,
    pub dbus: DbusConfig,
    pub sponsor: SponsorConfig,
    pub attestation: AttestationConfig,
    pub verify: VerifyConfig,
    pub supervision: SupervisionConfig,
    pub review: ReviewConfig,
    pub web: WebConfig,
    pub hydra: HydraConfig,
}

/// Signed attestations of what this builder built (issue 30,
/// docs/trust.md): the builder's identity is `identity` (its key's name)
/// with the operator and URL here.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AttestationConfig {
    /// Who runs this builder; empty: `sponsor.name`, else `identity`.
    pub operator: String,
    /// The operator's `https://…` page; empty: `sponsor.url`.
    pub url: String,
    /// The builder's ed25519 identity key (Nix's `name:base64` secret key
    /// format; never the cache signing key). Empty:
    /// `<state_dir>/identity.sec`, made at first start.
    pub key_file: PathBuf,
}

/// Other builders whose attestations this one checks and counts (issue 30,
/// docs/trust.md).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VerifyConfig {
    /// Known builders: their identity keys and who runs them. An
    /// attestation counts only if its signature verifies against one of
    /// these (or this builder's own key); the operator is the one named
    /// here, never the one the attestation claims.
    pub builders: Vec<KnownBuilderConfig>,
    /// A builder with more strikes than this (its results contradicted by
    /// this trusted builder's) is no longer counted.
    pub max_strikes: u32,
}

impl Default for VerifyConfig {
    fn default() -> Self {
        VerifyConfig {
            builders: vec![],
            max_strikes: 3,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KnownBuilderConfig {
    /// The builder's public identity key, `name:base64` (its
    /// `<state_dir>/attestations/public`).
    pub key: String,
    /// Who runs it: builders of one operator count as one operator.
    pub operator: String,
    /// The operator's page.
    pub url: String,
}

/// How many builders must agree before release (`release.require_agreement`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Agreement {
    pub builders: usize,
    pub operators: usize,
}

impl Default for Agreement {
    fn default() -> Self {
        Agreement {
            builders: 1,
            operators: 1,
        }
    }
}

impl Agreement {
    /// 1 builder of 1 operator: the releasing builder's own result is
    /// enough (no attestation is looked up).
    pub fn is_own_word(&self) -> bool {
        self.builders <= 1 && self.operators <= 1
    }
}

/// Review jobs (issue 16): build everything a PR changes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReviewConfig {
    /// Build at most this many changed attrs; a PR that changes more is a
    /// mass rebuild: reported with its count, and a deterministic sample
    /// of this size is built.
    pub max_build: usize,
    /// Review PRs against a target branch against another branch instead
    /// (`staging = "master"`): the head is merged onto it and it is the base.
    pub base_for: std::collections::BTreeMap<String, String>,
    /// Changed attrs never built (reported as `blacklisted`).
    pub skip_attrs: Vec<String>,
    /// GitHub logins whose point releases get a merge verdict
    /// (`report.json` `automerge`); airlock never merges.
    pub bot_authors: Vec<String>,
    /// Post a GitHub check run per (PR head, builder) for each review
    /// (needs `[github]` credentials that may write checks: a GitHub App).
    pub check_runs: bool,
}

impl Default for ReviewConfig {
    fn default() -> Self {
        ReviewConfig {
            max_build: 100,
            base_for: Default::default(),
            skip_attrs: vec![],
            bot_authors: vec!["r-ryantm".into()],
            check_runs: true,
        }
    }
}

/// The read-only HTML view of jobs and reviews.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebConfig {
    /// `ADDRESS:PORT` to serve it on; unset (the default): not served.
    pub listen: Option<String>,
    /// Where readers reach the page (`https://airlock.example.org`, behind
    /// the proxy): check runs link `<public_url>/jobs/<id>`. Unset: no link.
    pub public_url: Option<String>,
}

/// Who contributes this builder's compute: named in every posted result
/// and at the end of every build log.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SponsorConfig {
    /// Empty: no contribution line.
    pub name: String,
    /// `https://…` (or `http://…`); optional.
    pub url: String,
}

impl SponsorConfig {
    /// `These build results were contributed by: NAME – URL`.
    pub fn line(&self) -> Option<String> {
        if self.name.is_empty() {
            return None;
        }
        Some(if self.url.is_empty() {
            format!("These build results were contributed by: {}", self.name)
        } else {
            format!(
                "These build results were contributed by: {} \u{2013} {}",
                self.name, self.url
            )
        })
    }

    fn check(&self) -> Result<()> {
        let printable = |s: &str| s.len() <= 200 && !s.chars().any(char::is_control);
        if !printable(&self.name) || !printable(&self.url) {
            return Err(Error::Invalid(
                "sponsor.name and sponsor.url must be one printable line of at most 200 bytes"
                    .into(),
            ));
        }
        if !(self.url.is_empty()
            || self.url.starts_with("https://")
            || self.url.starts_with("http://"))
        {
            return Err(Error::Invalid(
                "sponsor.url must start with https:// or http://".into(),
            ));
        }
        if self.name.is_empty() && !self.url.is_empty() {
            return Err(Error::Invalid("sponsor.url needs sponsor.name".into()));
        }
        Ok(())
    }
}

/// Where jobs' VM processes live ([`crate::supervise`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SupervisionMode {
    /// systemd when airlockd runs under it, else direct.
    #[default]
    Auto,
    /// A transient unit `airlock-job-<id>.service` per job; refuse to
    /// start without systemd.
    Systemd,
    /// airlockd's own children, in a cgroup v2 group per job where it can.
    Direct,
}

/// Each job's unit (or cgroup) and its limits.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SupervisionConfig {
    pub mode: SupervisionMode,
    /// The slice job units go in (`""`: systemd's default, system.slice).
    pub slice: String,
    /// `MemoryMax` is the VM's memory plus this (the VMM, virtiofsd, the
    /// page cache of the job's disks).
    pub memory_overhead_mib: u64,
    /// `TasksMax` of a job's unit.
    pub tasks_max: u64,
    /// `CPUQuota` in percent of one core; 0: (vm.vcpus + 1) × 100.
    pub cpu_quota_percent: u64,
    /// `IOWeight` (1–10000); 0: not set.
    pub io_weight: u64,
    /// Most guest console and build log lines per second a job sends to
    /// the journal (bursts of ten times that pass); the rest are counted,
    /// and kept in the job's log on disk. 0: none go to the journal.
    pub journal_lines_per_sec: u64,
}

impl Default for SupervisionConfig {
    fn default() -> Self {
        SupervisionConfig {
            mode: SupervisionMode::Auto,
            slice: "airlock.slice".into(),
            memory_overhead_mib: 768,
            tasks_max: 512,
            cpu_quota_percent: 0,
            io_weight: 0,
            journal_lines_per_sec: 50,
        }
    }
}

/// The D-Bus admin API (docs/dbus.md).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DbusConfig {
    /// `""`: off; `"system"`, `"session"`, or a D-Bus address
    /// (`unix:path=…`). airlockd refuses to start if it cannot take its
    /// name there.
    pub address: String,
}

/// Images of target branch trees that jobs' input disks build on
/// ([`crate::input`]): a second PR against the same base writes only its
/// changes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InputsConfig {
    /// Bound on the base images kept (bytes on disk; least recently used
    /// go first). 0: no base images, every job's disk holds its whole tree.
    pub max_bytes: u64,
    /// Most paths a job's tree may differ in from a base image that is not
    /// its target branch tip's, for that image to be used.
    pub max_delta_files: u64,
}

impl Default for InputsConfig {
    fn default() -> Self {
        InputsConfig {
            max_bytes: 8 << 30,
            max_delta_files: 4096,
        }
    }
}

/// Binary caches the fetch phase substitutes from (through the host's
/// [`crate::substituter`]; the guest never talks to them directly).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NixConfig {
    /// Upstream binary caches, in order. Empty: nothing is substituted and
    /// every job builds its whole closure.
    pub substituters: Vec<String>,
    /// Keys whose signature a narinfo must carry (Nix's `name:base64`).
    pub trusted_public_keys: Vec<String>,
}

/// An upstream binary cache URL airlock fetches from: `http(s)://HOST…`,
/// no whitespace, no query.
pub fn upstream_url_ok(u: &str) -> bool {
    u.strip_prefix("https://")
        .or_else(|| u.strip_prefix("http://"))
        .is_some_and(|rest| {
            !rest.is_empty() && !rest.contains(char::is_whitespace) && !rest.contains('?')
        })
}

impl NixConfig {
    /// Every upstream a URL, every key a Nix public key.
    pub fn check(&self) -> std::result::Result<(), String> {
        if let Some(u) = self.substituters.iter().find(|u| !upstream_url_ok(u)) {
            return Err(format!(
                "nix.substituters entry {u:?} is not an http:// or https:// URL"
            ));
        }
        if let Some(k) = self
            .trusted_public_keys
            .iter()
            .find(|k| airlock_nix_formats::signing::check_public(k).is_err())
        {
            return Err(format!(
                "nix.trusted_public_keys entry {k:?} is not a Nix public key (name:base64 of 32 bytes)"
            ));
        }
        Ok(())
    }
}

impl Default for NixConfig {
    fn default() -> Self {
        NixConfig {
            substituters: vec!["https://cache.nixos.org".into()],
            trusted_public_keys: vec![
                "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=".into(),
            ],
        }
    }
}

/// The host-side caching proxy every fetch VM substitutes through.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SubstituterConfig {
    /// TCP port on each job link's host address.
    pub port: u16,
    /// Where narinfos and NARs are kept; empty: `<state_dir>/substituter`.
    pub dir: PathBuf,
    /// Bound on the NARs kept (least recently used go first).
    pub max_bytes: u64,
    /// How long "no upstream has this path" is remembered.
    pub negative_ttl_secs: u64,
    /// Per upstream request (and per stalled chunk of a download).
    pub timeout_secs: u64,
}

impl Default for SubstituterConfig {
    fn default() -> Self {
        SubstituterConfig {
            port: 8487,
            dir: PathBuf::new(),
            max_bytes: 50 << 30,
            negative_ttl_secs: 60,
            timeout_secs: 20,
        }
    }
}

/// Is this builder trusted with the binary cache? (ARCHITECTURE.md, trust model.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Trust {
    Trusted,
    #[default]
    Community,
}

impl Trust {
    /// As the configuration spells it (`trusted`, `community`).
    pub fn as_str(self) -> &'static str {
        match self {
            Trust::Trusted => "trusted",
            Trust::Community => "community",
        }
    }
}

impl std::str::FromStr for Trust {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Trust, String> {
        match s {
            "trusted" => Ok(Trust::Trusted),
            "community" => Ok(Trust::Community),
            o => Err(format!("trust must be `trusted` or `community`, not `{o}`")),
        }
    }
}

/// When quarantined outputs are released (docs/release.md).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReleaseConfig {
    /// The PR label that says the input is not malicious.
    pub label: String,
    /// GitHub logins whose label counts. Empty: anyone GitHub reports as
    /// having write (or admin) access to the repository.
    pub allowed_actors: Vec<String>,
    /// Repositories (`owner/name`) whose PRs may be released; empty: any.
    pub repositories: Vec<String>,
    /// Nix secret key file (`name:base64`, as `nix-store
    /// --generate-binary-cache-key` writes it). Required to release.
    pub signing_key_file: Option<PathBuf>,
    /// Seconds a commit must have been the PR's head before a label on it
    /// counts (a push just before the label is not what was reviewed).
    pub min_head_age_secs: u64,
    /// Release a path only when this many builders of this many distinct
    /// operators attested the same NAR hash for it, this builder among
    /// them. 1/1 (default): the label alone releases.
    pub require_agreement: Agreement,
    /// Before a job's outputs are released, fetch its fixed-output paths
    /// again from their own derivations' URLs in a job VM of this builder
    /// and release only if the bytes match (docs/trust.md).
    pub refetch_fixed_outputs: bool,
}

impl Default for ReleaseConfig {
    fn default() -> Self {
        ReleaseConfig {
            label: "nonmalicious-checked".into(),
            allowed_actors: vec![],
            repositories: vec!["NixOS/nixpkgs".into()],
            signing_key_file: None,
            min_head_age_secs: 300,
            require_agreement: Agreement::default(),
            refetch_fixed_outputs: true,
        }
    }
}

/// The binary cache HTTP server (released outputs only).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// `ADDR:PORT` to serve on; unset: no server.
    pub listen: Option<String>,
    /// `Priority` in /nix-cache-info (lower is preferred by Nix).
    pub priority: u32,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            listen: None,
            priority: 40,
        }
    }
}

/// GitHub, for the label watcher.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GithubConfig {
    /// REST API base URL (GitHub Enterprise: `https://HOST/api/v3`).
    pub api_url: String,
    /// File holding an API token; unset: unauthenticated (public repos,
    /// 60 requests an hour, and write access cannot be checked).
    pub token_file: Option<PathBuf>,
    /// Seconds between polls of PRs that have outputs waiting.
    pub poll_interval_secs: u64,
    /// `ADDR:PORT` for GitHub webhook deliveries (`POST /github-webhook`);
    /// unset: polling only.
    pub webhook_listen: Option<String>,
    /// File holding the webhook secret (required with `webhook_listen`).
    pub webhook_secret_file: Option<PathBuf>,
    /// Where broker jobs are fetched from: `{full_name}` is replaced by the
    /// job's `repo.full_name`. A BuildJob whose own `clone_url` differs is
    /// refused (dead-lettered): the URL is never taken from the message.
    pub clone_url: String,
    /// A GitHub App (issue 32; only an App may write check runs): its id,
    /// its private key (PEM) and the installation on the repositories.
    /// All three or none; with them, `token_file` is not used.
    pub app_id: Option<u64>,
    pub app_key_file: Option<PathBuf>,
    pub installation_id: Option<u64>,
}

impl GithubConfig {
    /// The clone URL for repository `full_name` (`OWNER/NAME`, each part
    /// of GitHub's characters), or why there is none.
    pub fn clone_url_for(&self, full_name: &str) -> std::result::Result<String, String> {
        let ok_part = |p: &str| {
            !p.is_empty()
                && !p.starts_with('.')
                && p.len() <= 100
                && p.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(&c))
        };
        match full_name.split_once('/') {
            Some((o, n)) if ok_part(o) && ok_part(n) => {
                Ok(self.clone_url.replace("{full_name}", full_name))
            }
            _ => Err(format!("repo.full_name {full_name:?} is not OWNER/NAME")),
        }
    }
}

impl Default for GithubConfig {
    fn default() -> Self {
        GithubConfig {
            api_url: "https://api.github.com".into(),
            token_file: None,
            poll_interval_secs: 60,
            webhook_listen: None,
            webhook_secret_file: None,
            clone_url: "https://github.com/{full_name}.git".into(),
            app_id: None,
            app_key_file: None,
            installation_id: None,
        }
    }
}

/// How long outputs are kept (`airlockctl gc` and the daemon's timer).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Unreleased quarantined outputs are deleted this long after the job.
    pub unreleased_hours: u64,
    /// Released outputs are deleted (from quarantine and the cache) this long
    /// after their release; 0 keeps them for ever.
    pub released_hours: u64,
    /// Seconds between automatic collections; 0 disables the timer.
    pub gc_interval_secs: u64,
    /// Finished jobs' records and logs (`jobs/<id>/`) are deleted this long
    /// after the job ended (a broker result not yet published is kept);
    /// 0 keeps them for ever.
    pub job_hours: u64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            unreleased_hours: 24 * 14,
            released_hours: 24 * 90,
            gc_interval_secs: 3600,
            job_hours: 24 * 14,
        }
    }
}

/// The fetch phase's network (see docs/network.md).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkConfig {
    /// Two boots per job (fetch with a NIC, build without). Off: one boot
    /// with no NIC at all, so fixed-output derivations cannot download.
    pub enabled: bool,
    #[serde(flatten)]
    pub policy: airlock_network_policy::Policy,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            enabled: true,
            policy: airlock_network_policy::Policy::default(),
        }
    }
}

/// Hydra's queue-runner (`runner.v1.RunnerService`, docs/hydra.md): the
/// second intake. Disabled unless `endpoint` is set; needs
/// `trust = "trusted"` (the runner signs whatever a builder uploads).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HydraConfig {
    /// `http://host:port` (h2c) or `https://host:port` (TLS).
    pub endpoint: String,
    /// File holding the bearer token (whitespace trimmed), sent with every
    /// call as `authorization: Bearer <token>`.
    pub token_file: Option<PathBuf>,
    /// mTLS: the CA that signed the runner's certificate, and this
    /// builder's client certificate and key (PEM). The CA alone verifies
    /// the server; the certificate and key go together.
    pub ca_file: Option<PathBuf>,
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
    /// The name the runner's certificate is checked against; empty: the
    /// endpoint's host.
    pub domain_name: String,
    /// The runner's version string this builder speaks (`CheckVersion`):
    /// master's `0.1.0-5f82f0f0`; hydra.nixos.org's branch has
    /// `0.1.0-dffd1b61`. A runner with another version is refused.
    pub version: String,
    /// The runner's store directory; paths on the wire are base names in it.
    pub store_dir: String,
    /// Systems announced; empty: `system`.
    pub systems: Vec<String>,
    /// Features a step may require (`big-parallel`, …). `kvm` and
    /// `nixos-test` only where the job VMs can honour them.
    pub supported_features: Vec<String>,
    /// Only steps requiring all of these are taken.
    pub mandatory_features: Vec<String>,
    /// Hydra's ranking weight for this machine.
    pub speed_factor: f32,
    /// Seconds between the pings with load, memory and free space.
    pub ping_secs: u64,
    /// Upper bound of the reconnect backoff, seconds.
    pub reconnect_max_secs: u64,
}

impl Default for HydraConfig {
    fn default() -> Self {
        HydraConfig {
            endpoint: String::new(),
            token_file: None,
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
            domain_name: String::new(),
            version: "0.1.0-5f82f0f0".into(),
            store_dir: "/nix/store".into(),
            systems: vec![],
            supported_features: vec![],
            mandatory_features: vec![],
            speed_factor: 1.0,
            ping_secs: 10,
            reconnect_max_secs: 90,
        }
    }
}

impl HydraConfig {
    pub fn enabled(&self) -> bool {
        !self.endpoint.is_empty()
    }

    /// What a queue-runner intake needs; `trusted`: this builder's trust.
    pub fn check(&self, trusted: bool) -> std::result::Result<(), String> {
        if !self.enabled() {
            return Ok(());
        }
        if !trusted {
            return Err("[hydra] needs trust = \"trusted\": the queue-runner signs and serves whatever a builder uploads, so only a builder trusted with the cache may join one (the VM protects this host from the step, not the runner's cache from this builder)".into());
        }
        let Some((scheme, _)) = self.endpoint.split_once("://") else {
            return Err(format!(
                "hydra.endpoint {:?} is not http://host:port or https://host:port",
                self.endpoint
            ));
        };
        if !matches!(scheme, "http" | "https") {
            return Err(format!(
                "hydra.endpoint {:?}: the scheme must be http (h2c) or https",
                self.endpoint
            ));
        }
        let tls = self.ca_file.is_some()
            || self.client_cert_file.is_some()
            || self.client_key_file.is_some();
        if tls && scheme != "https" {
            return Err(
                "hydra.ca_file, client_cert_file and client_key_file need an https:// endpoint"
                    .into(),
            );
        }
        if self.client_cert_file.is_some() != self.client_key_file.is_some() {
            return Err("hydra.client_cert_file and hydra.client_key_file go together".into());
        }
        if !self.version.starts_with("0.1.0-") {
            return Err(format!(
                "hydra.version {:?} is not a queue-runner version string (0.1.0-<8 hex digits>)",
                self.version
            ));
        }
        if self.store_dir != "/nix/store" {
            return Err(format!("hydra.store_dir {:?}: the job VMs' Nix store is /nix/store, so only a runner with that store can be served", self.store_dir));
        }
        if let Some(f) = self
            .supported_features
            .iter()
            .chain(&self.mandatory_features)
            .find(|f| matches!(f.as_str(), "kvm" | "nixos-test"))
        {
            return Err(format!(
                "hydra: feature {f:?} cannot be honoured: a step's VM has no /dev/kvm inside"
            ));
        }
        if let Some(f) = self
            .mandatory_features
            .iter()
            .find(|f| !self.supported_features.contains(f))
        {
            return Err(format!(
                "hydra.mandatory_features: {f:?} is not in supported_features"
            ));
        }
        if self.speed_factor.is_nan() || self.speed_factor <= 0.0 {
            return Err("hydra.speed_factor must be > 0".into());
        }
        if self.ping_secs == 0 || self.reconnect_max_secs == 0 {
            return Err("hydra.ping_secs and hydra.reconnect_max_secs must be > 0".into());
        }
        Ok(())
    }

    /// The systems joined with.
    pub fn systems(&self, system: &str) -> Vec<String> {
        if self.systems.is_empty() {
            vec![system.to_owned()]
        } else {
            self.systems.clone()
        }
    }
}

/// The ofborg broker. Disabled unless `url` or `host` is set.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AmqpConfig {
    /// Full URI `amqp[s]://user[:password]@host[:port]/vhost`; wins over the fields below.
    pub url: String,
    /// ofborg 2025 style: TLS on/off, host, vhost, user, password file.
    pub ssl: bool,
    pub host: String,
    pub port: Option<u16>,
    pub virtualhost: String,
    pub username: String,
    /// File holding the password (whitespace trimmed), as ofborg's `password_file`.
    pub password_file: PathBuf,
    /// Systems to take jobs for (`build-inputs-<system>`); empty = `[system]`.
    pub systems: Vec<String>,
    /// Where malformed job messages are moved (declared durable by airlockd).
    pub dead_letter_queue: String,
    /// Longest wait between reconnect attempts.
    pub reconnect_max_secs: u64,
    /// Take jobs from this operator's own queue `airlock-<operator>-<system>`,
    /// bound to the topic exchange `airlock-build-jobs` with key `<system>`,
    /// instead of ofborg's shared `build-inputs-<system>` (docs/trust.md:
    /// every operator sees every job; one operator's builders compete).
    pub operator_queue: bool,
}

impl Default for AmqpConfig {
    fn default() -> Self {
        AmqpConfig {
            url: String::new(),
            ssl: true,
            host: String::new(),
            port: None,
            virtualhost: "/".into(),
            username: String::new(),
            password_file: PathBuf::new(),
            systems: Vec::new(),
            dead_letter_queue: "airlock-dead-letters".into(),
            reconnect_max_secs: 30,
            operator_queue: false,
        }
    }
}

impl AmqpConfig {
    pub fn enabled(&self) -> bool {
        !self.url.is_empty() || !self.host.is_empty()
    }

    /// The connection URI with the password from `password_file` filled in.
    pub fn uri(&self) -> Result<String> {
        let mut uri = if !self.url.is_empty() {
            self.url.clone()
        } else {
            let scheme = if self.ssl { "amqps" } else { "amqp" };
            let port = self.port.map(|p| format!(":{p}")).unwrap_or_default();
            let vhost = if self.virtualhost == "/" {
                "%2f".to_owned()
            } else {
                self.virtualhost.clone()
            };
            let user = if self.username.is_empty() {
                String::new()
            } else {
                format!("{}@", self.username)
            };
            format!("{scheme}://{user}{}{port}/{vhost}", self.host)
        };
        if !self.password_file.as_os_str().is_empty() {
            let pw = std::fs::read_to_string(&self.password_file)
                .map_err(|e| Error::Read(self.password_file.clone(), e))?;
            let pw: String = pw
                .trim()
                .bytes()
                .map(|b| match b {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                        (b as char).to_string()
                    }
                    _ => format!("%{b:02X}"),
                })
                .collect();
            let (scheme, rest) = uri
                .split_once("://")
                .ok_or_else(|| Error::Invalid("amqp.url has no scheme".into()))?;
            let (auth, tail) = rest.split_once('@').ok_or_else(|| {
                Error::Invalid(
                    "amqp.password_file needs a user name in the URL or amqp.username".into(),
                )
            })?;
            let user = auth.split(':').next().unwrap_or_default();
            uri = format!("{scheme}://{user}:{pw}@{tail}");
        }
        Ok(uri)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    Auto,
    Kvm,
    Tcg,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    Qemu,
    /// `cloud-hypervisor` (KVM only).
    CloudHypervisor,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VmConfig {
    pub backend: Backend,
    pub accel: Accel,
    /// QEMU binary (name on PATH or absolute path).
    pub qemu: String,
    /// QEMU machine type: `q35` or `microvm`.
    pub machine: String,
    /// Directory with `vmlinux`, `initrd.gz`, `rootfs.img` (vm-images/guest/build-guest.sh).
    pub image_dir: PathBuf,
    /// The guest kernel jobs boot while it boots: `auto` (airlock's trimmed
    /// kernel for the Debian build's image), a path, or empty; missing or
    /// failing: the image's own `vmlinux` (vm::kernel).
    pub kernel: String,
    /// The guest agent binary; empty = `airlock-agent` next to airlockd.
    pub agent: PathBuf,
    pub memory_mib: u64,
    pub vcpus: u32,
    /// Size of the per-job writable /nix disk (sparse).
    pub nix_disk_mib: u64,
    /// Size of the per-job export area: the most a job can hand back.
    pub export_disk_mib: u64,
    /// How long the KVM probe boot may take before TCG is chosen.
    pub probe_timeout_secs: u64,
    /// The cloud-hypervisor binary (name on PATH or absolute path), for
    /// `backend = "cloud-hypervisor"`.
    pub cloud_hypervisor: String,
    /// `virtiofsd`, for VMs that share a directory (cloud-hypervisor).
    pub virtiofsd: String,
    /// cloud-hypervisor: after a timeout or cancel, the VM gets the power
    /// button and this long before its VMM is killed.
    pub stop_grace_secs: u64,
    /// cloud-hypervisor: Landlock the VMM to the VM's own files where the
    /// kernel has Landlock (airlockd says at start if it has not).
    pub landlock: bool,
    /// QEMU: start each VM by restoring a saved guest template (booted once
    /// per image and VM size) instead of booting it; a VM that cannot be
    /// restored boots cold (the reason is in the log). q35 and pc only.
    pub template: bool,
    /// Run the VMM (QEMU or cloud-hypervisor, and virtiofsd) as this user,
    /// `NAME` or `UID:GID`; empty: as airlockd. It needs `/dev/kvm` (group
    /// `kvm`). Required (and not root) with a signing key.
    pub user: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Wall-clock limit for the build VM (or the only VM without network);
    /// it is killed and the job TimedOut.
    pub job_timeout_secs: u64,
    /// Wall-clock limit for the fetch VM.
    pub fetch_timeout_secs: u64,
    /// The VM must start the agent within this time or the job fails.
    pub boot_timeout_secs: u64,
    /// Nix `build-timeout` per derivation inside the VM (0 = none).
    pub build_timeout_secs: u64,
    /// Nix `max-silent-time` inside the VM (0 = none).
    pub max_silent_secs: u64,
    /// Largest single NAR accepted from a VM.
    pub max_nar_bytes: u64,
    /// Most store paths accepted from one job.
    pub max_paths: usize,
    /// Most files (tree entries) a PR's head or merged tree may have; checked
    /// before anything is written out (git bombs).
    pub max_checkout_files: u64,
    /// Largest total size of a PR's head or merged tree.
    pub max_checkout_bytes: u64,
    /// Wall-clock limit for each git step of the host-side checkout.
    pub checkout_timeout_secs: u64,
    /// Memory bound (`RLIMIT_DATA`) of each git process of the checkout;
    /// 0: none.
    pub max_checkout_memory_bytes: u64,
    /// Most bytes a VM may write to its console or its agent channel (the
    /// build log) per boot; over it the VM is killed and the job fails.
    pub max_log_bytes: u64,
    /// Most bytes the quarantine may hold (all jobs' verified outputs,
    /// released or not); an export that would pass it is not kept and the
    /// job fails with that reason. 0: no quota.
    pub max_quarantine_bytes: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            state_dir: PathBuf::from("/var/lib/airlock"),
            socket: PathBuf::from("/run/airlock/airlockd.sock"),
            max_jobs: 1,
            system: "x86_64-linux".into(),
            identity: default_identity(),
            shutdown_grace_secs: 600,
            vm: VmConfig::default(),
            limits: Limits::default(),
            amqp: AmqpConfig::default(),
            network: NetworkConfig::default(),
            trust: Trust::Community,
            release: ReleaseConfig::default(),
            cache: CacheConfig::default(),
            github: GithubConfig::default(),
            retention: RetentionConfig::default(),
            nix: NixConfig::default(),
            substituter: SubstituterConfig::default(),
            inputs: InputsConfig::default(),
            dbus: DbusConfig::default(),
            sponsor: SponsorConfig::default(),
            attestation: AttestationConfig::default(),
            verify: VerifyConfig::default(),
            supervision: SupervisionConfig::default(),
            review: ReviewConfig::default(),
            web: WebConfig::default(),
            hydra: HydraConfig::default(),
        }
    }
}

impl Default for VmConfig {
    fn default() -> Self {
        VmConfig {
            backend: Backend::Qemu,
            accel: Accel::Auto,
            qemu: "qemu-system-x86_64".into(),
            machine: "q35".into(),
            image_dir: PathBuf::from("/var/cache/airlock/guest/current"),
            kernel: "auto".into(),
            agent: PathBuf::new(),
            memory_mib: 1024,
            vcpus: 1,
            nix_disk_mib: 8192,
            export_disk_mib: 4096,
            probe_timeout_secs: 20,
            cloud_hypervisor: "cloud-hypervisor".into(),
            virtiofsd: "virtiofsd".into(),
            stop_grace_secs: 5,
            landlock: true,
            template: true,
            user: String::new(),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            job_timeout_secs: 4 * 3600,
            fetch_timeout_secs: 3600,
            boot_timeout_secs: 300,
            build_timeout_secs: 18000,
            max_silent_secs: 7200,
            max_nar_bytes: 4 << 30,
            max_paths: 100_000,
            // nixpkgs has about 55 000 files and 450 MB today.
            max_checkout_files: 500_000,
            max_checkout_bytes: 4 << 30,
            checkout_timeout_secs: 1800,
            max_checkout_memory_bytes: 4 << 30,
            max_log_bytes: 512 << 20,
            max_quarantine_bytes: 100 << 30,
        }
    }
}

/// `s` with anything but ASCII letters, digits, `.`, `_` and `-` as `-`:
/// fit for a Nix key name and an AMQP queue name.
pub fn name_part(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// This builder's name, and who runs it. In the file either a string
/// (ofborg's `identity = "builder-7"`, `--identity`) or a table
/// `[identity]` with `name` and optional `operator` and `url` (issue 30's
/// form; the same as `[attestation] operator` and `url`, which win).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    pub name: String,
    pub operator: String,
    pub url: String,
}

impl From<&str> for Identity {
    fn from(name: &str) -> Identity {
        Identity {
            name: name.to_owned(),
            ..Identity::default()
        }
    }
}

impl From<String> for Identity {
    fn from(name: String) -> Identity {
        Identity {
            name,
            ..Identity::default()
        }
    }
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct IdentityTable {
    name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    operator: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    url: String,
}

impl Serialize for Identity {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        if self.operator.is_empty() && self.url.is_empty() {
            s.serialize_str(&self.name)
        } else {
            IdentityTable {
                name: self.name.clone(),
                operator: self.operator.clone(),
                url: self.url.clone(),
            }
            .serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for Identity {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Identity, D::Error> {
        #[derive(Deserialize)]
        #[serde(
            untagged,
            expecting = "a name, or a table with name and optional operator and url"
        )]
        enum Raw {
            Name(String),
            Table(IdentityTable),
        }
        Ok(match Raw::deserialize(d)? {
            Raw::Name(name) => Identity::from(name),
            Raw::Table(t) => Identity {
                name: t.name,
                operator: t.operator,
                url: t.url,
            },
        })
    }
}

fn default_identity() -> Identity {
    Identity::from(default_identity_name())
}

fn default_identity_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .map(|h| format!("airlock-{h}"))
        .unwrap_or_else(|| "airlock".into())
}

impl Config {
    /// Load `path`, or the defaults when `None`.
    pub fn load(path: Option<&Path>) -> Result<Config> {
        let cfg = Config::read(path)?;
        cfg.check()?;
        Ok(cfg)
    }

    /// The file parsed (strictly) but not yet checked: for a caller that
    /// applies command-line overrides first (`--trust`,
    /// `--signing-key-file`, …) and then checks the result.
    pub fn read(path: Option<&Path>) -> Result<Config> {
        Ok(match path {
            None => Config::default(),
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| Error::Read(p.into(), e))?;
                toml::from_str(&text).map_err(|e| Error::Parse(p.into(), e))?
            }
        })
    }

    pub fn check(&self) -> Result<()> {
        let g = &self.github;
        let app = [
            g.app_id.is_some(),
            g.app_key_file.is_some(),
            g.installation_id.is_some(),
        ];
        if app.iter().any(|x| *x) && !app.iter().all(|x| *x) {
            return Err(Error::Invalid(
                "a GitHub App needs all of github.app_id, github.app_key_file and github.installation_id".into(),
            ));
        }
        if let Some(u) = &self.web.public_url {
            if !(u.starts_with("https://") || u.starts_with("http://")) {
                return Err(Error::Invalid(format!(
                    "web.public_url {u:?} is not an http:// or https:// URL"
                )));
            }
        }
        if self.github.webhook_listen.is_some() && self.github.webhook_secret_file.is_none() {
            return Err(Error::Invalid(
                "github.webhook_listen needs github.webhook_secret_file".into(),
            ));
        }
        if self.max_jobs == 0 {
            return Err(Error::Invalid("max_jobs must be at least 1".into()));
        }
        self.sponsor.check()?;
        let sv = &self.supervision;
        if sv.io_weight > 10_000 {
            return Err(Error::Invalid(
                "supervision.io_weight must be 0 (unset) or 1-10000".into(),
            ));
        }
        if sv.tasks_max < 16 {
            return Err(Error::Invalid(
                "supervision.tasks_max must be at least 16 (the VMM has threads)".into(),
            ));
        }
        if !sv.slice.is_empty() && (!sv.slice.ends_with(".slice") || sv.slice.contains('/')) {
            return Err(Error::Invalid(format!(
                "supervision.slice {:?} is not a slice unit name (NAME.slice)",
                sv.slice
            )));
        }
        if self.trust == Trust::Trusted && self.release.signing_key_file.is_none() {
            return Err(Error::Invalid(
                "trust = \"trusted\" needs release.signing_key_file (or --signing-key-file)".into(),
            ));
        }
        if !self.attestation.key_file.as_os_str().is_empty()
            && self.release.signing_key_file.as_deref() == Some(self.attestation.key_file.as_path())
        {
            return Err(Error::Invalid(
                "attestation.key_file is release.signing_key_file: a builder's identity key must not be the cache signing key".into(),
            ));
        }
        self.check_verify()?;
        self.hydra
            .check(self.trust == Trust::Trusted)
            .map_err(Error::Invalid)?;
        let vmm_as_root =
            matches!(self.vm.user.as_str(), "" | "root") || self.vm.user.starts_with("0:");
        if self.release.signing_key_file.is_some() && vmm_as_root {
            return Err(Error::Invalid(VM_USER_FOR_KEY.into()));
        }
        if self.vm.memory_mib < 256 || self.vm.vcpus == 0 {
            return Err(Error::Invalid(
                "vm.memory_mib must be >= 256 and vm.vcpus >= 1".into(),
            ));
        }
        if !matches!(self.vm.machine.as_str(), "q35" | "microvm" | "pc") {
            return Err(Error::Invalid(format!(
                "vm.machine {:?} is not q35, pc or microvm",
                self.vm.machine
            )));
        }
        if self.substituter_enabled() {
            self.nix.check().map_err(Error::Invalid)?;
        }
        if self.limits.job_timeout_secs == 0 {
            return Err(Error::Invalid("limits.job_timeout_secs must be > 0".into()));
        }
        Ok(())
    }

    /// `[verify] builders` and `release.require_agreement`.
    fn check_verify(&self) -> Result<()> {
        let mut names = std::collections::BTreeSet::new();
        for b in &self.verify.builders {
            airlock_nix_formats::signing::check_public(&b.key)
                .map_err(|e| Error::Invalid(format!("verify.builders: key {:?}: {e}", b.key)))?;
            let name = airlock_nix_formats::signing::key_name(&b.key).unwrap_or_default();
            if !names.insert(name.to_owned()) {
                return Err(Error::Invalid(format!(
                    "verify.builders: two keys named {name:?} (a builder's key name is its identity)"
                )));
            }
            if b.operator.trim().is_empty() {
                return Err(Error::Invalid(format!(
                    "verify.builders: key {name:?} has no operator (who runs it decides what agreement is worth)"
                )));
            }
        }
        let a = self.release.require_agreement;
        if a.builders == 0 || a.operators == 0 || a.operators > a.builders {
            return Err(Error::Invalid(format!(
                "release.require_agreement: builders = {}, operators = {}: both at least 1, operators at most builders",
                a.builders, a.operators
            )));
        }
        if a.builders > self.verify.builders.len() + 1 {
            return Err(Error::Invalid(format!(
                "release.require_agreement: {} builders must agree, but [verify] builders knows only {} besides this one",
                a.builders,
                self.verify.builders.len()
            )));
        }
        Ok(())
    }

    /// Who runs this builder: `attestation.operator`, else `identity`'s
    /// operator, else `sponsor.name`, else the identity's name.
    pub fn operator(&self) -> String {
        [
            &self.attestation.operator,
            &self.identity.operator,
            &self.sponsor.name,
            &self.identity.name,
        ]
        .into_iter()
        .find(|s| !s.is_empty())
        .cloned()
        .unwrap_or_default()
    }

    /// The operator's page: `attestation.url`, else `identity`'s url,
    /// else `sponsor.url`.
    pub fn operator_url(&self) -> String {
        [&self.attestation.url, &self.identity.url, &self.sponsor.url]
            .into_iter()
            .find(|s| !s.is_empty())
            .cloned()
            .unwrap_or_default()
    }

    /// The queue jobs for `system` are taken from: ofborg's
    /// `build-inputs-<system>`, or with `amqp.operator_queue` this
    /// operator's `airlock-<operator>-<system>` (the operator's name with
    /// anything but letters, digits, `.`, `_` and `-` as `-`).
    pub fn job_queue(&self, system: &str) -> String {
        if self.amqp.operator_queue {
            format!("airlock-{}-{system}", name_part(&self.operator()))
        } else {
            format!("build-inputs-{system}")
        }
    }

    /// Systems the broker intake consumes for.
    pub fn amqp_systems(&self) -> Vec<String> {
        if self.amqp.systems.is_empty() {
            vec![self.system.clone()]
        } else {
            self.amqp.systems.clone()
        }
    }

    pub fn jobs_dir(&self) -> PathBuf {
        self.state_dir.join("jobs")
    }
    pub fn quarantine_dir(&self) -> PathBuf {
        self.state_dir.join("quarantine")
    }
    pub fn substituter_dir(&self) -> PathBuf {
        if self.substituter.dir.as_os_str().is_empty() {
            self.state_dir.join("substituter")
        } else {
            self.substituter.dir.clone()
        }
    }

    /// The substituter's settings, or `None` when nothing is substituted
    /// (no upstreams, or no fetch-phase network to reach them).
    /// Is the caching proxy for fetch VMs on (a NIC and an upstream)?
    pub fn substituter_enabled(&self) -> bool {
        self.network.enabled && !self.nix.substituters.is_empty()
    }

    pub fn git_cache_dir(&self) -> PathBuf {
        self.state_dir.join("git")
    }

    /// The agent binary: configured, or next to the running executable.
    pub fn agent_path(&self) -> PathBuf {
        if !self.vm.agent.as_os_str().is_empty() {
            return self.vm.agent.clone();
        }
        std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(|d| d.join("airlock-agent")))
            .filter(|p| p.exists())
            .unwrap_or_else(|| PathBuf::from("/usr/lib/airlock/airlock-agent"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hydra_intake_needs_a_trusted_builder_and_honest_features() {
        let c: Config = toml::from_str("[hydra]\nendpoint = \"http://runner:50051\"\n").unwrap();
        let e = c.check().unwrap_err().to_string();
        assert!(
            e.contains("trust = \"trusted\"") && e.contains("signs"),
            "{e}"
        );
        let trusted = |extra: &str| -> Result<()> {
            let mut c: Config = toml::from_str(&format!(
                "trust = \"trusted\"\n[vm]\nuser = \"airlock-vmm\"\n[release]\nsigning_key_file = \"/k\"\n[hydra]\nendpoint = \"http://runner:50051\"\n{extra}"
            ))
            .unwrap();
            c.vm.user = "airlock-vmm".into();
            c.check()
        };
        trusted("").unwrap();
        let e = trusted("supported_features = [\"kvm\"]")
            .unwrap_err()
            .to_string();
        assert!(e.contains("kvm"), "{e}");
        let e = trusted("mandatory_features = [\"big-parallel\"]")
            .unwrap_err()
            .to_string();
        assert!(e.contains("supported_features"), "{e}");
        let e = trusted("ca_file = \"/ca.pem\"").unwrap_err().to_string();
        assert!(e.contains("https"), "{e}");
        assert_eq!(
            HydraConfig::default().systems("x86_64-linux"),
            ["x86_64-linux"]
        );
    }

    #[test]
    fn identity_is_a_name_or_a_table() {
        let c: Config = toml::from_str("identity = \"builder-7\"\n").unwrap();
        assert_eq!(c.identity, Identity::from("builder-7"));
        assert_eq!(c.operator(), "builder-7");
        let c: Config = toml::from_str(
            "[identity]\nname = \"builder-7\"\noperator = \"Example Org\"\nurl = \"https://example.org\"\n[sponsor]\nname = \"Sponsor\"\nurl = \"https://sponsor.example\"\n",
        )
        .unwrap();
        assert_eq!(c.identity.name, "builder-7");
        assert_eq!(
            (c.operator(), c.operator_url()),
            ("Example Org".into(), "https://example.org".into())
        );
        // Round trip (the tests' builder writes the file from the struct).
        let back: Config = toml::from_str(&toml::to_string(&c).unwrap()).unwrap();
        assert_eq!(back.identity, c.identity);
        let mut c = c;
        c.attestation.operator = "Wins".into();
        assert_eq!(c.operator(), "Wins");
        c.identity.operator.clear();
        c.attestation.operator.clear();
        assert_eq!(c.operator(), "Sponsor");
        assert!(toml::from_str::<Config>("[identity]\nname = \"x\"\nemail = \"a\"\n").is_err());
        assert!(toml::from_str::<Config>("[identity]\noperator = \"x\"\n").is_err());
    }

    #[test]
    fn the_sponsor_line_names_who_contributed() {
        let mut s = SponsorConfig::default();
        assert_eq!(s.line(), None);
        s.name = "Example Org".into();
        assert_eq!(
            s.line().unwrap(),
            "These build results were contributed by: Example Org"
        );
        s.url = "https://example.org/airlock".into();
        assert_eq!(
            s.line().unwrap(),
            "These build results were contributed by: Example Org \u{2013} https://example.org/airlock"
        );
        assert!(s.check().is_ok());
        s.url = "javascript:alert(1)".into();
        assert!(s.check().is_err());
        s.url = String::new();
        s.name = "two\nlines".into();
        assert!(s.check().is_err());
    }

    #[test]
    fn amqp_uri_from_fields_and_password_file() {
        let d = tempfile::tempdir().unwrap();
        let pw = d.path().join("pw");
        std::fs::write(&pw, "s3cr@t/x\n").unwrap();
        let c = AmqpConfig {
            host: "messages.example.org".into(),
            port: Some(5671),
            virtualhost: "ofborg".into(),
            username: "builder-1".into(),
            password_file: pw.clone(),
            ..AmqpConfig::default()
        };
        assert!(c.enabled());
        assert_eq!(
            c.uri().unwrap(),
            "amqps://builder-1:s3cr%40t%2Fx@messages.example.org:5671/ofborg"
        );
        let c = AmqpConfig {
            url: "amqp://guest@127.0.0.1:5672/%2f".into(),
            password_file: pw,
            ..AmqpConfig::default()
        };
        assert_eq!(
            c.uri().unwrap(),
            "amqp://guest:s3cr%40t%2Fx@127.0.0.1:5672/%2f"
        );
        assert!(!AmqpConfig::default().enabled());
    }

    #[test]
    fn defaults_are_valid_and_typos_are_errors() {
        Config::default().check().unwrap();
        let c: Config = toml::from_str("max_jobs = 2\n[vm]\naccel = \"tcg\"\n").unwrap();
        assert_eq!(c.max_jobs, 2);
        assert_eq!(c.vm.accel, Accel::Tcg);
        assert_eq!(c.vm.memory_mib, 1024);
        assert!(toml::from_str::<Config>("max_job = 2\n").is_err());
        assert!(toml::from_str::<Config>("[vm]\naccel = \"fast\"\n").is_err());
    }

    #[test]
    fn a_signing_key_needs_a_vmm_user_other_than_root() {
        let with = |user: &str| {
            let mut c = Config::default();
            c.release.signing_key_file = Some("/k".into());
            c.vm.user = user.into();
            c.check()
        };
        for root in ["", "root", "0:0", "0:36"] {
            let e = with(root).unwrap_err().to_string();
            assert!(e.contains(VM_USER_FOR_KEY), "{root:?}: {e}");
        }
        for user in ["airlock-vm", "65534:65534", "1000:0"] {
            with(user).unwrap();
        }
        // No key, no rule (the VMM may run as airlockd's user).
        Config::default().check().unwrap();
    }
}
