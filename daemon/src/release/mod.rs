//! Release from quarantine (docs/release.md): the label watcher decides,
//! with the pure [`rule`], whether a commit's outputs may leave quarantine;
//! [`store`] signs and links them into `cache/`; [`server`] serves `cache/`
//! as a Nix binary cache and receives GitHub webhooks.

pub mod github;
pub mod refetch;
pub mod rule;
pub mod server;
pub mod store;
pub mod webhook;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::config::{Config, Trust};
use crate::store::signing::SecretKey;
use github::GitHub;
use rule::{Allowed, Decision, HeadRecord, HeadSource, LabelEvent};
use store::{Dirs, GcReport, How, QuarantinedJob, ReleasedJob};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {0}: {1}")]
    ReadFile(String, #[source] std::io::Error),
    #[error("signing key {0}: {1}")]
    Key(String, String),
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    GitHub(#[from] github::Error),
    #[error(transparent)]
    Store(#[from] store::Error),
}
pub type Result<T> = std::result::Result<T, Error>;

/// Shortest webhook secret accepted.
pub const MIN_SECRET: usize = 16;

fn read_secret(p: &std::path::Path) -> Result<String> {
    std::fs::read_to_string(p)
        .map(|s| s.trim().to_owned())
        .map_err(|e| Error::ReadFile(p.display().to_string(), e))
}

/// What `airlockctl release status` shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub commit: String,
    pub trust: Trust,
    pub jobs: Vec<JobStatus>,
    /// Per PR that built the commit: the rule's answer now.
    pub prs: Vec<PrStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobStatus {
    pub job_id: String,
    pub repo: String,
    pub pr: u64,
    pub paths: usize,
    pub released: Option<ReleasedJob>,
    /// Where the fixed-output re-fetch stands (`None`: no fixed-output
    /// paths, or `release.refetch_fixed_outputs` off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refetch: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PrStatus {
    pub repo: String,
    pub pr: u64,
    /// The branch the jobs were merged onto (`None`: not recorded).
    #[serde(default)]
    pub base_branch: Option<String>,
    pub decision: Decision,
}

/// What the rule decides about: one commit, merged onto one base branch.
type Candidate = (String, Option<String>);

pub struct Release {
    cfg: Arc<Config>,
    dirs: Dirs,
    gh: GitHub,
    key: Option<Arc<SecretKey>>,
    webhook_secret: Option<Vec<u8>>,
    /// Serialises writes to cache/ and releases/ (release, gc).
    lock: tokio::sync::Mutex<()>,
    /// Serialises reads and writes of github/ (head evidence).
    heads_lock: tokio::sync::Mutex<()>,
    poke_tx: mpsc::UnboundedSender<()>,
    poke_rx: Mutex<Option<mpsc::UnboundedReceiver<()>>>,
    /// Last decision logged per commit, so the log says each change once.
    last: Mutex<HashMap<Candidate, String>>,
    /// Jobs whose "label removed after release" was logged.
    unlabel_logged: Mutex<std::collections::HashSet<String>>,
    /// When polling last looked for labels removed after release.
    unlabel_checked: Mutex<Option<std::time::Instant>>,
    /// The builder's attestations (set by airlockd after the runner is built).
    attestor: std::sync::OnceLock<Arc<crate::attest::store::Attestor>>,
    /// Queues a job (the scheduler's), for the fixed-output re-fetch.
    refetcher: std::sync::OnceLock<refetch::Enqueue>,
}

/// How long after a label release polling still watches for the label's removal.
const WATCH_AFTER_RELEASE_SECS: u64 = 7 * 24 * 3600;

impl Release {
    pub fn new(cfg: Arc<Config>) -> Result<Arc<Release>> {
        let dirs = Dirs::new(&cfg);
        dirs.create()?;
        let key = match &cfg.release.signing_key_file {
            Some(p) => {
                let text = read_secret(p)?;
                let k = SecretKey::parse(&text)
                    .map_err(|e| Error::Key(p.display().to_string(), e.to_string()))?;
                warn_if_readable(p);
                Some(Arc::new(k))
            }
            None => None,
        };
        if let Some(k) = &key {
            // The builder's own cache as a trusted upstream would give a
            // job what another PR's job built or fetched (a fixed-output
            // path fetched from an attacker's URL under the hash of the
            // real file) as if it were upstream's.
            if cfg.nix.trusted_public_keys.contains(&k.public()) {
                return Err(Error::Refused(format!(
                    "nix.trusted_public_keys holds this builder's own release key {}: jobs would substitute other PRs' outputs as if they were upstream's",
                    k.public()
                )));
            }
        }
        if cfg.trust == Trust::Trusted && key.is_none() {
            return Err(Error::Refused(
                "trust = \"trusted\" needs release.signing_key_file (or --signing-key-file)".into(),
            ));
        }
        let token = cfg
            .github
            .token_file
            .as_deref()
            .map(read_secret)
            .transpose()?;
        let webhook_secret = cfg
            .github
            .webhook_secret_file
            .as_deref()
            .map(read_secret)
            .transpose()?
            .map(String::into_bytes);
        if webhook_secret
            .as_ref()
            .is_some_and(|s| s.len() < MIN_SECRET)
        {
            return Err(Error::Refused(format!(
                "github.webhook_secret_file holds fewer than {MIN_SECRET} characters: anyone could sign deliveries"
            )));
        }
        let gh = GitHub::new(&cfg.github.api_url, token)?;
        let (poke_tx, poke_rx) = mpsc::unbounded_channel();
        Ok(Arc::new(Release {
            cfg,
            dirs,
            gh,
            key,
            webhook_secret,
            lock: tokio::sync::Mutex::new(()),
            heads_lock: tokio::sync::Mutex::new(()),
            poke_tx,
            poke_rx: Mutex::new(Some(poke_rx)),
            last: Mutex::new(HashMap::new()),
            unlabel_logged: Mutex::new(Default::default()),
            unlabel_checked: Mutex::new(None),
            attestor: std::sync::OnceLock::new(),
            refetcher: std::sync::OnceLock::new(),
        }))
    }

    /// How the release service queues its fixed-output re-fetch jobs.
    pub fn set_refetcher(&self, e: refetch::Enqueue) {
        let _ = self.refetcher.set(e);
    }

    /// The jobs whose fixed-output paths were fetched again and matched
    /// (`release.refetch_fixed_outputs`); the others are held (their
    /// re-fetch queued or running) or refused, with the reason logged.
    /// None left while some were held or refused: that is the error.
    fn past_refetch<'a>(&self, jobs: &[&'a QuarantinedJob]) -> Result<Vec<&'a QuarantinedJob>> {
        if !self.cfg.release.refetch_fixed_outputs {
            return Ok(jobs.to_vec());
        }
        let store = crate::job::JobStore::new(self.cfg.jobs_dir());
        let mut ready = Vec::new();
        let mut why = Vec::new();
        for j in jobs {
            match refetch::gate(j, &store, self.refetcher.get()) {
                refetch::Gate::Ready => ready.push(*j),
                refetch::Gate::Held(w) => {
                    info!(job_id = %j.job_id, commit = %j.commit, why = %w, "release held");
                    why.push(format!("job {}: {w}", j.job_id));
                }
                refetch::Gate::Refused(w) => {
                    warn!(job_id = %j.job_id, commit = %j.commit, why = %w, "release refused");
                    why.push(format!("job {}: {w}", j.job_id));
                }
            }
        }
        if ready.is_empty() && !why.is_empty() {
            return Err(Error::Refused(why.join("; ")));
        }
        Ok(ready)
    }

    /// The builder's attestations, for `release.require_agreement`.
    pub fn set_attestor(&self, a: Arc<crate::attest::store::Attestor>) {
        let _ = self.attestor.set(a);
    }

    pub fn public_key(&self) -> Option<String> {
        self.key.as_ref().map(|k| k.public())
    }

    pub fn webhook_secret(&self) -> Option<&[u8]> {
        self.webhook_secret.as_deref()
    }

    /// Ask the watcher to look now (a job finished, a webhook arrived).
    pub fn poke(&self) {
        let _ = self.poke_tx.send(());
    }

    /// Start the watcher, the gc timer and the HTTP listeners.
    pub fn spawn(self: &Arc<Self>) -> std::io::Result<()> {
        let cfg = &self.cfg;
        if cfg.trust == Trust::Trusted {
            info!(public_key = %self.public_key().unwrap_or_default(), "trusted builder: released outputs are signed with this key (trusted-public-keys)");
            let me = self.clone();
            tokio::spawn(async move { me.watch().await });
        } else {
            info!("community builder: quarantined outputs are never released");
        }
        if let Some(addr) = &cfg.cache.listen {
            if cfg.trust == Trust::Trusted {
                let mut r = server::cache_router(self.dirs.cache.clone(), cfg.cache.priority);
                if let Some(a) = self.attestor.get() {
                    r = server::attestations_router(a.clone()).merge(r);
                }
                server::spawn(addr, r, "binary cache")?;
            } else {
                warn!("cache.listen ignored: a community builder serves no cache");
            }
        } else if cfg.trust == Trust::Trusted {
            warn!(
                "cache.listen is not set: released outputs are signed into cache/ but not served"
            );
        }
        if let Some(addr) = &cfg.github.webhook_listen {
            server::spawn(
                addr,
                server::webhook_router(self.clone()),
                "GitHub webhook receiver",
            )?;
        }
        if cfg.retention.gc_interval_secs > 0 {
            let me = self.clone();
            let every = Duration::from_secs(cfg.retention.gc_interval_secs);
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    match me.gc().await {
                        Ok(r) => info!(?r, "retention: gc done"),
                        Err(e) => warn!(error = %e, "retention: gc failed"),
                    }
                }
            });
        }
        Ok(())
    }

    async fn watch(self: Arc<Self>) {
        let Some(mut rx) = self.poke_rx.lock().expect("lock").take() else {
            return;
        };
        let every = Duration::from_secs(self.cfg.github.poll_interval_secs.max(1));
        info!(api = %self.cfg.github.api_url, authenticated = self.gh.authenticated(), poll_secs = every.as_secs(), label = %self.cfg.release.label, "label watcher running");
        loop {
            self.check_all().await;
            let st = &self.gh.stats;
            debug!(
                requests = st.requests.load(std::sync::atomic::Ordering::Relaxed),
                not_modified = st.not_modified.load(std::sync::atomic::Ordering::Relaxed),
                "GitHub requests so far"
            );
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                p = rx.recv() => {
                    if p.is_none() { return; }
                    while rx.try_recv().is_ok() {}
                }
            }
        }
    }

    /// One pass: every PR with unreleased outputs.
    pub async fn check_all(&self) {
        let pending = store::pending(&self.dirs);
        self.last
            .lock()
            .expect("lock")
            .retain(|(c, _), _| pending.iter().any(|j| &j.commit == c));
        let mut by_pr: BTreeMap<(String, u64), Vec<QuarantinedJob>> = BTreeMap::new();
        for j in pending {
            by_pr.entry((j.repo.clone(), j.pr)).or_default().push(j);
        }
        for ((repo, pr), jobs) in by_pr {
            let span = info_span!("release", %repo, pr);
            async {
                let candidates: Vec<Candidate> = {
                    let mut c: Vec<Candidate> = jobs
                        .iter()
                        .map(|j| (j.commit.clone(), j.base_branch.clone()))
                        .collect();
                    c.sort();
                    c.dedup();
                    c
                };
                let decisions = self.evaluate(&repo, pr, &candidates).await;
                for ((commit, base), d) in decisions {
                    self.log_decision(&(commit.clone(), base.clone()), &d);
                    if let Decision::Release(g) = d {
                        let how = How::Label {
                            repo: repo.clone(),
                            pr,
                            grant: g,
                        };
                        let js: Vec<&QuarantinedJob> = jobs
                            .iter()
                            .filter(|j| j.commit == commit && j.base_branch == base)
                            .collect();
                        if let Err(e) = self.release_jobs(&js, how).await {
                            warn!(%commit, error = %e, "release failed; retried at the next check");
                        }
                    }
                }
            }
            .instrument(span)
            .await;
        }
        self.check_unlabels().await;
    }

    fn log_unlabel_after_release(&self, r: &store::LabelRelease) {
        if self
            .unlabel_logged
            .lock()
            .expect("lock")
            .insert(r.job_id.clone())
        {
            warn!(repo = %r.repo, pr = r.pr, commit = %r.commit, job_id = %r.job_id, "label removed after release; the released outputs stay released (they are signed and may be in Hydra already)");
        }
    }

    /// Polling's view of labels removed after a release (webhooks report it
    /// at once): PRs with a label release in the last week.
    async fn check_unlabels(&self) {
        // At most once a poll interval, however often webhooks poke.
        {
            let mut last = self.unlabel_checked.lock().expect("lock");
            let every = Duration::from_secs(self.cfg.github.poll_interval_secs.max(1));
            if last.is_some_and(|t| t.elapsed() < every) {
                return;
            }
            *last = Some(std::time::Instant::now());
        }
        let since = crate::job::now().saturating_sub(WATCH_AFTER_RELEASE_SECS);
        let mut by_pr: BTreeMap<(String, u64), Vec<store::LabelRelease>> = BTreeMap::new();
        let releases = store::label_releases(&self.dirs);
        self.unlabel_logged.lock().expect("lock").retain(|job| {
            releases
                .iter()
                .any(|r| &r.job_id == job && r.released_at >= since)
        });
        for r in releases {
            let logged = self
                .unlabel_logged
                .lock()
                .expect("lock")
                .contains(&r.job_id);
            if r.released_at >= since && !logged {
                by_pr.entry((r.repo.clone(), r.pr)).or_default().push(r);
            }
        }
        for ((repo, pr), rs) in by_pr {
            let Ok(events) = self.gh.issue_events(&repo, pr).await else {
                continue;
            };
            let last = events
                .iter()
                .filter(|e| {
                    matches!(e.event.as_str(), "labeled" | "unlabeled")
                        && e.label
                            .as_ref()
                            .is_some_and(|l| l.name == self.cfg.release.label)
                })
                .filter_map(|e| github::event_time(e).ok().map(|t| (t, e.event.as_str())))
                .max_by_key(|(t, _)| *t);
            if let Some((t, "unlabeled")) = last {
                for r in rs.iter().filter(|r| t >= r.released_at as i64) {
                    self.log_unlabel_after_release(r);
                }
            }
        }
    }

    fn log_decision(&self, key: &Candidate, d: &Decision) {
        let (commit, base) = (&key.0, key.1.as_deref().unwrap_or("(not recorded)"));
        let text = match d {
            Decision::Release(g) => format!("release: labelled by {}", g.actor),
            Decision::Hold(why) => why.clone(),
        };
        let mut last = self.last.lock().expect("lock");
        if last.get(key) != Some(&text) {
            match d {
                Decision::Release(g) => {
                    info!(%commit, %base, actor = %g.actor, labeled_at = %rule::fmt_time(g.labeled_at), head_since = %rule::fmt_time(g.head_since), head_source = rule::source_text(g.head_source), "release rule holds")
                }
                Decision::Hold(why) => info!(%commit, %base, reason = %why, "not released"),
            }
            last.insert(key.clone(), text);
        }
    }

    /// Whether outputs of `repo`#`pr` can be released here at all, before
    /// asking GitHub anything.
    fn eligible(&self, repo: &str, pr: u64) -> std::result::Result<(), String> {
        if self.cfg.trust != Trust::Trusted {
            return Err(rule::COMMUNITY.into());
        }
        if repo.starts_with("local/") || pr == 0 {
            return Err("job has no GitHub PR (submit with --github OWNER/NAME --pr N)".into());
        }
        let repos = &self.cfg.release.repositories;
        if !repos.is_empty() && !repos.iter().any(|r| r.eq_ignore_ascii_case(repo)) {
            return Err(format!("repository {repo} is not in release.repositories"));
        }
        Ok(())
    }

    /// The rule's answer for each commit (merged onto a base branch) of one
    /// PR. Errors (GitHub unreachable, rate limited) are holds with the
    /// reason.
    async fn evaluate(
        &self,
        repo: &str,
        pr: u64,
        commits: &[Candidate],
    ) -> Vec<(Candidate, Decision)> {
        let hold_all = |why: String| {
            commits
                .iter()
                .map(|c| (c.clone(), Decision::Hold(why.clone())))
                .collect()
        };
        if let Err(why) = self.eligible(repo, pr) {
            return hold_all(why);
        }
        match self.facts(repo, pr).await {
            Err(e) => hold_all(format!("cannot ask GitHub: {e}")),
            Ok(f) => {
                let mut out = Vec::new();
                for c in commits {
                    let d = rule::decide(
                        &rule::Facts {
                            trust: self.cfg.trust,
                            commit: &c.0,
                            label: &self.cfg.release.label,
                            current_head: &f.head,
                            current_base: f.base.as_deref(),
                            merged_base: c.1.as_deref(),
                            current_labels: &f.labels,
                            label_events: &f.label_events,
                            heads: &f.heads,
                            min_head_age: self.cfg.release.min_head_age_secs as i64,
                        },
                        |a| {
                            f.allowed
                                .get(a)
                                .cloned()
                                .unwrap_or(Allowed::No("unknown".into()))
                        },
                    );
                    out.push((c.clone(), d));
                }
                out
            }
        }
    }

    async fn facts(&self, repo: &str, pr: u64) -> Result<Facts> {
        let (pull, date) = self.gh.pull(repo, pr).await?;
        let head = pull.head.sha.to_ascii_lowercase();
        let label = &self.cfg.release.label;
        let mut label_events = Vec::new();
        let mut heads = self.load_heads(repo, pr).await;
        for e in self.gh.issue_events(repo, pr).await? {
            let relevant = match e.event.as_str() {
                "labeled" | "unlabeled" => e.label.as_ref().is_some_and(|l| &l.name == label),
                "head_ref_force_pushed" => true,
                // The head may have jumped to whatever the branch tip is now
                // (pushes while a PR is closed do not move its head).
                "reopened" | "head_ref_restored" => true,
                _ => false,
            };
            if !relevant {
                continue;
            }
            let at = github::event_time(&e)?;
            if matches!(e.event.as_str(), "reopened" | "head_ref_restored") {
                // An unknown head from `at` on: it ends every earlier
                // headship, so earlier pushes no longer date the current one.
                heads.push(HeadRecord {
                    sha: String::new(),
                    at,
                    source: HeadSource::Reopened,
                });
            } else if e.event == "head_ref_force_pushed" {
                // `commit_id` is the new head. Unknown: some head changed at
                // `at`, which still ends every earlier headship.
                let sha = e
                    .commit_id
                    .as_deref()
                    .filter(|c| github::is_sha(c))
                    .map(str::to_ascii_lowercase)
                    .unwrap_or_default();
                heads.push(HeadRecord {
                    sha,
                    at,
                    source: HeadSource::ForcePush,
                });
            } else {
                label_events.push(LabelEvent {
                    added: e.event == "labeled",
                    actor: e.actor.map(|a| a.login).unwrap_or_default(),
                    at,
                });
            }
        }
        // Exact push times from the head repository's activity, when GitHub
        // answers (more evidence; without it the rule is only stricter).
        if let Some(fork) = pull.head.repo.as_ref().map(|r| r.full_name.clone()) {
            match self.gh.branch_pushes(&fork, &pull.head.branch).await {
                Ok(pushes) => heads.extend(pushes.into_iter().map(|(sha, at)| HeadRecord {
                    sha,
                    at,
                    source: HeadSource::Activity,
                })),
                Err(e) => debug!(%fork, error = %e, "no push activity for the head branch"),
            }
        }
        if let Some(at) = date {
            self.record_observation(repo, pr, &head, at, &mut heads)
                .await?;
        }
        let mut allowed = HashMap::new();
        if let Some(ev) = rule::latest_label(&label_events) {
            let a = self.allowed(repo, &ev.actor).await;
            allowed.insert(ev.actor.clone(), a);
        }
        Ok(Facts {
            head,
            base: pull.base.map(|b| b.branch),
            labels: pull.labels.into_iter().map(|l| l.name).collect(),
            label_events,
            heads,
            allowed,
        })
    }

    /// Our own observation that `head` is the head at `at` (GitHub's clock,
    /// the response's `Date`). Kept when the head changed since the newest
    /// record, or when the evidence does not yet date the current headship.
    async fn record_observation(
        &self,
        repo: &str,
        pr: u64,
        head: &str,
        at: rule::Time,
        heads: &mut Vec<HeadRecord>,
    ) -> Result<()> {
        let newest = heads.iter().max_by_key(|h| h.at).map(|h| h.sha.as_str());
        if newest != Some(head) || rule::head_since(head, heads).is_none() {
            let obs = HeadRecord {
                sha: head.to_owned(),
                at,
                source: HeadSource::Observed,
            };
            self.add_heads(repo, pr, obs.clone()).await?;
            heads.push(obs);
        }
        Ok(())
    }

    /// A job for `repo`#`pr` arrived: note the PR's head now (in the
    /// background), so the time it became the head is bounded by the job's
    /// arrival rather than by the end of its build.
    pub fn observe(self: &Arc<Self>, repo: &str, pr: u64) {
        if self.eligible(repo, pr).is_err() {
            return;
        }
        let (me, repo) = (self.clone(), repo.to_owned());
        tokio::spawn(async move {
            let seen = match me.gh.pull(&repo, pr).await {
                Ok((p, Some(at))) => Some((p.head.sha.to_ascii_lowercase(), at)),
                Ok((_, None)) => None,
                Err(e) => {
                    debug!(%repo, pr, error = %e, "cannot observe the PR head at job arrival");
                    None
                }
            };
            if let Some((head, at)) = seen {
                let mut heads = me.load_heads(&repo, pr).await;
                if let Err(e) = me
                    .record_observation(&repo, pr, &head, at, &mut heads)
                    .await
                {
                    warn!(%repo, pr, error = %e, "cannot record the observed head");
                }
            }
        });
    }

    async fn load_heads(&self, repo: &str, pr: u64) -> Vec<HeadRecord> {
        let _g = self.heads_lock.lock().await;
        let (dirs, repo) = (self.dirs.clone(), repo.to_owned());
        tokio::task::spawn_blocking(move || store::load_heads(&dirs, &repo, pr))
            .await
            .unwrap_or_default()
    }

    /// Persist head evidence (one writer at a time: webhooks and the watcher).
    async fn add_heads(&self, repo: &str, pr: u64, h: HeadRecord) -> Result<()> {
        let _g = self.heads_lock.lock().await;
        let (dirs, repo) = (self.dirs.clone(), repo.to_owned());
        tokio::task::spawn_blocking(move || store::add_heads(&dirs, &repo, pr, &[h]))
            .await
            .map_err(|e| Error::Refused(format!("heads task failed: {e}")))??;
        Ok(())
    }

    async fn allowed(&self, repo: &str, actor: &str) -> Allowed {
        let list = &self.cfg.release.allowed_actors;
        if !list.is_empty() {
            return if list.iter().any(|a| a.eq_ignore_ascii_case(actor)) {
                Allowed::Yes
            } else {
                Allowed::No("not in release.allowed_actors".into())
            };
        }
        match self.gh.permission(repo, actor).await {
            Ok(p) if p == "admin" || p == "write" => Allowed::Yes,
            Ok(p) => Allowed::No(format!(
                "GitHub reports permission `{p}`; write or admin needed"
            )),
            Err(e) => Allowed::No(format!("cannot check write access: {e}")),
        }
    }

    async fn release_jobs(&self, jobs: &[&QuarantinedJob], how: How) -> Result<Vec<ReleasedJob>> {
        let key = self
            .key
            .clone()
            .ok_or_else(|| Error::Refused("no signing key configured".into()))?;
        let jobs = self.past_refetch(jobs)?;
        let jobs = &jobs[..];
        let _g = self.lock.lock().await;
        let dirs = self.dirs.clone();
        let jobs: Vec<QuarantinedJob> = jobs.iter().map(|j| (*j).clone()).collect();
        let need = self.cfg.release.require_agreement;
        let attestor = self.attestor.get().cloned();
        tokio::task::spawn_blocking(move || {
            let now = crate::job::now();
            // 1 builder of 1 operator: the label (or operator) alone.
            let gate = |v: &crate::quarantine::VerifiedPath| -> std::result::Result<(), String> {
                if need.is_own_word() {
                    return Ok(());
                }
                let a = attestor
                    .as_ref()
                    .ok_or("this builder signs no attestations")?;
                let output = v
                    .deriver
                    .as_deref()
                    .map(|d| crate::attest::store::output_name(d, &v.path))
                    .unwrap_or_default();
                a.pool
                    .agreement(v.deriver.as_deref(), &output, &v.nar_hash, need)
                    .map(|_| ())
                    .map_err(|why| format!("release.require_agreement: {why}"))
            };
            jobs.iter()
                .map(|j| {
                    store::release_job_gated(
                        &dirs,
                        &key,
                        j,
                        how.clone(),
                        now,
                        &gate,
                        !need.is_own_word(),
                    )
                    .map_err(Error::from)
                })
                .collect()
        })
        .await
        .map_err(|e| Error::Refused(format!("release task failed: {e}")))?
    }

    /// A verified webhook: record push evidence, then check at once.
    pub async fn on_webhook(&self, ev: webhook::PrEvent) {
        if let Some(h) = &ev.head {
            if let Err(e) = self.add_heads(&ev.repo, ev.pr, h.clone()).await {
                warn!(error = %e, "cannot record the pushed head");
            }
        }
        if ev.action == "unlabeled" && ev.label.as_deref() == Some(self.cfg.release.label.as_str())
        {
            for r in store::label_releases(&self.dirs) {
                if r.repo == ev.repo && r.pr == ev.pr {
                    self.log_unlabel_after_release(&r);
                }
            }
        }
        self.poke();
    }

    pub async fn status(&self, commit: &str) -> Result<Status> {
        let commit = store::check_commit(commit)?;
        let rec = store::load_record(&self.dirs, &commit)?;
        let jobs = store::quarantined(&self.dirs, Some(&commit));
        let mut prs: Vec<(String, u64, Option<String>)> = jobs
            .iter()
            .map(|j| (j.repo.clone(), j.pr, j.base_branch.clone()))
            .collect();
        prs.sort();
        prs.dedup();
        let mut out = Vec::new();
        for (repo, pr, base) in prs {
            let d = self
                .evaluate(&repo, pr, &[(commit.clone(), base.clone())])
                .await
                .pop()
                .map(|(_, d)| d)
                .expect("one commit in, one out");
            out.push(PrStatus {
                repo,
                pr,
                base_branch: base,
                decision: d,
            });
        }
        let jobs_store = crate::job::JobStore::new(self.cfg.jobs_dir());
        let mut js: Vec<JobStatus> = jobs
            .iter()
            .map(|j| JobStatus {
                job_id: j.job_id.clone(),
                repo: j.repo.clone(),
                pr: j.pr,
                paths: j.paths.len(),
                released: rec.jobs.iter().find(|r| r.job_id == j.job_id).cloned(),
                refetch: self
                    .cfg
                    .release
                    .refetch_fixed_outputs
                    .then(|| refetch::describe(j, &jobs_store))
                    .flatten(),
            })
            .collect();
        // Released jobs whose outputs have since expired.
        for r in &rec.jobs {
            if !js.iter().any(|j| j.job_id == r.job_id) {
                js.push(JobStatus {
                    job_id: r.job_id.clone(),
                    repo: String::new(),
                    pr: 0,
                    paths: r.paths.len(),
                    released: Some(r.clone()),
                    refetch: None,
                });
            }
        }
        Ok(Status {
            commit,
            trust: self.cfg.trust,
            jobs: js,
            prs: out,
        })
    }

    /// `airlockctl release COMMIT --reason TEXT`: an operator's release of
    /// every unreleased job of the commit (trusted builders only).
    pub async fn release_by_operator(
        &self,
        commit: &str,
        reason: &str,
    ) -> Result<Vec<ReleasedJob>> {
        if self.cfg.trust != Trust::Trusted {
            return Err(Error::Refused(rule::COMMUNITY.into()));
        }
        if reason.trim().is_empty() {
            return Err(Error::Refused("a --reason is required".into()));
        }
        let commit = store::check_commit(commit)?;
        let pending: Vec<QuarantinedJob> = store::pending(&self.dirs)
            .into_iter()
            .filter(|j| j.commit == commit)
            .collect();
        if pending.is_empty() {
            return Err(Error::Refused(format!(
                "no unreleased outputs of {commit} in quarantine"
            )));
        }
        warn!(%commit, reason, jobs = pending.len(), "operator release by hand");
        let refs: Vec<&QuarantinedJob> = pending.iter().collect();
        self.release_jobs(
            &refs,
            How::Operator {
                reason: reason.to_owned(),
            },
        )
        .await
    }

    pub async fn gc(&self) -> Result<GcReport> {
        let _g = self.lock.lock().await;
        let dirs = self.dirs.clone();
        let r = &self.cfg.retention;
        let unreleased = r.unreleased_hours * 3600;
        let released = (r.released_hours > 0).then_some(r.released_hours * 3600);
        let jobs = crate::job::JobStore::new(self.cfg.jobs_dir());
        let job_secs = r.job_hours * 3600;
        tokio::task::spawn_blocking(move || {
            let mut rep = store::gc(&dirs, unreleased, released, crate::job::now())?;
            rep.jobs_removed = prune_jobs(&jobs, job_secs, crate::job::now());
            Ok::<_, store::Error>(rep)
        })
        .await
        .map_err(|e| Error::Refused(format!("gc task failed: {e}")))?
        .map_err(Error::from)
    }
}

/// Delete the records and logs of jobs that ended more than `secs` ago.
/// A broker job whose result is still to be published is kept.
fn prune_jobs(jobs: &crate::job::JobStore, secs: u64, now: u64) -> Vec<String> {
    let mut removed = Vec::new();
    if secs == 0 {
        return removed; // 0: kept for ever
    }
    for rec in jobs.list().0 {
        let Some(end) = rec.finished_at.filter(|_| rec.state.is_terminal()) else {
            continue;
        };
        let pending = rec
            .amqp
            .as_ref()
            .is_some_and(|o| o.report == crate::job::ReportState::Pending);
        if pending || now.saturating_sub(end) < secs {
            continue;
        }
        let dir = jobs.dir(&rec.id);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {
                info!(job_id = %rec.id, "job record and logs expired");
                removed.push(rec.id);
            }
            Err(e) => warn!(job_id = %rec.id, error = %e, "cannot remove an expired job"),
        }
    }
    removed
}

struct Facts {
    head: String,
    base: Option<String>,
    labels: Vec<String>,
    label_events: Vec<LabelEvent>,
    heads: Vec<HeadRecord>,
    allowed: HashMap<String, Allowed>,
}

fn warn_if_readable(p: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(m) = std::fs::metadata(p) {
        if m.permissions().mode() & 0o077 != 0 {
            warn!(path = %p.display(), "signing key file is readable by group or others; chmod 600 it");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn refuses_unsafe_configuration() {
        let t = tempfile::tempdir().unwrap();
        let mut cfg = Config {
            state_dir: t.path().join("state"),
            ..Config::default()
        };
        // Community with no key: fine.
        assert!(Release::new(Arc::new(cfg.clone())).is_ok());
        // Trusted needs a key.
        cfg.trust = Trust::Trusted;
        let e = Release::new(Arc::new(cfg.clone())).err().unwrap();
        assert!(e.to_string().contains("signing_key_file"), "{e}");
        // A short webhook secret would let anyone sign deliveries.
        cfg.trust = Trust::Community;
        let sf = t.path().join("secret");
        std::fs::write(&sf, "  short \n").unwrap();
        cfg.github.webhook_secret_file = Some(sf.clone());
        let e = Release::new(Arc::new(cfg.clone())).err().unwrap();
        assert!(e.to_string().contains("fewer than"), "{e}");
        std::fs::write(&sf, "a-long-enough-random-secret\n").unwrap();
        assert!(Release::new(Arc::new(cfg.clone())).is_ok());
        // Its own release key trusted for the jobs' substitution.
        let k = SecretKey::from_seed("airlock-1", &[7; 32]).unwrap();
        let kf = t.path().join("signing.sec");
        std::fs::write(&kf, k.to_file_text()).unwrap();
        cfg.release.signing_key_file = Some(kf);
        assert!(Release::new(Arc::new(cfg.clone())).is_ok());
        cfg.nix.trusted_public_keys.push(k.public());
        let e = Release::new(Arc::new(cfg)).err().unwrap();
        assert!(e.to_string().contains("own release key"), "{e}");
    }
}

#[cfg(test)]
mod prune_tests {
    use crate::job::{AmqpOrigin, JobRecord, JobState, JobStore, ReportState, Source};

    #[test]
    fn old_job_logs_go_and_unpublished_results_stay() {
        let t = tempfile::tempdir().unwrap();
        let store = JobStore::new(t.path());
        let job: crate::ofborg::BuildJob = serde_json::from_str(r#"{"repo":{"owner":"o","name":"n","full_name":"o/n","clone_url":"/x"},"pr":{"target_branch":"master","number":1,"head_sha":"e9872fa30caac57c69bfac8667e6c21254603df1"},"attrs":["a"],"request_id":"r"}"#).unwrap();
        let mk = |finished: Option<u64>, report: Option<ReportState>| {
            let mut r = JobRecord::new(Source::Local, job.clone());
            r.state = if finished.is_some() {
                JobState::Done
            } else {
                JobState::Running
            };
            r.finished_at = finished;
            r.amqp = report.map(|report| AmqpOrigin {
                system: "x86_64-linux".into(),
                attempt_id: "a".into(),
                report,
                key: None,
            });
            store.save(&r).unwrap();
            std::fs::write(store.dir(&r.id).join("build.log"), "log").unwrap();
            r.id
        };
        let old = mk(Some(1_000), None);
        let recent = mk(Some(9_000), None);
        let running = mk(None, None);
        let unpublished = mk(Some(1_000), Some(ReportState::Pending));
        let published = mk(Some(1_000), Some(ReportState::Published));
        let removed = super::prune_jobs(&store, 5_000, 10_000);
        let mut want = vec![old.clone(), published.clone()];
        want.sort();
        let mut got = removed.clone();
        got.sort();
        assert_eq!(got, want);
        for id in [recent, running, unpublished] {
            assert!(store.load(&id).is_ok());
        }
        assert!(!store.dir(&old).exists());
    }
}
