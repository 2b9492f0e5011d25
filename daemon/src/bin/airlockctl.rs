//! airlockctl: submit jobs and inspect them over airlockd's unix socket.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};

use airlock::job::JobRecord;
use airlock::ofborg::{BuildJob, BuildStatus, Pr, Repo};
use airlock::release::rule::{fmt_time, source_text, Decision};
use airlock::release::store::How;
use airlock::release::Status;

/// `println!` for people: guest text in it cannot reach the terminal as
/// control characters (see `airlock::term`). `--json` output goes through
/// serde_json, which escapes them itself.
macro_rules! out {
    ($($arg:tt)*) => {
        println!("{}", airlock::term::escape(&format!($($arg)*)))
    };
}

#[derive(Parser, Debug)]
#[command(name = "airlockctl", version, about = "Control airlockd")]
struct Args {
    /// airlockd's API socket.
    #[arg(
        long,
        global = true,
        env = "AIRLOCK_SOCKET",
        default_value = "/run/airlock/airlockd.sock"
    )]
    socket: PathBuf,
    /// Talk to airlockd over this D-Bus bus instead of its socket:
    /// `system`, `session` or a D-Bus address (airlockd's `dbus.address`;
    /// on the system bus the policy lets root and group airlock-admin in).
    #[arg(long, global = true, env = "AIRLOCK_BUS")]
    bus: Option<String>,
    /// Machine-readable output.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

/// The PR a job is for.
#[derive(clap::Args, Debug)]
struct PrArgs {
    /// Git URL or local path of the repository.
    #[arg(long)]
    repo: String,
    /// The PR head commit (40 hex digits).
    #[arg(long)]
    head: String,
    #[arg(long, default_value_t = 0)]
    pr: u64,
    /// The GitHub repository the PR belongs to (for the label watcher).
    #[arg(long, value_name = "OWNER/NAME")]
    github: Option<String>,
    /// The PR's target branch.
    #[arg(long, default_value = "master")]
    target_branch: String,
}

impl PrArgs {
    fn job(
        self,
        attrs: Vec<String>,
        review: Option<airlock::ofborg::ReviewRequest>,
    ) -> anyhow::Result<BuildJob> {
        Ok(BuildJob {
            repo: repo_of(&self.repo, self.github, self.pr)?,
            pr: Pr {
                target_branch: Some(self.target_branch),
                number: self.pr,
                head_sha: self.head,
            },
            subset: None,
            attrs,
            request_id: uuid::Uuid::new_v4().to_string(),
            logs: None,
            statusreport: None,
            airlock_review: review,
        })
    }
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Queue a build of a PR head merged onto its target branch.
    Submit {
        #[command(flatten)]
        pr: PrArgs,
        /// Attribute to build (repeatable).
        #[arg(long = "attr", required = true)]
        attrs: Vec<String>,
    },
    /// Review a PR (issue 16): evaluate the base and the PR merged onto
    /// it, build every attr whose out-paths changed (up to the builder's
    /// `review.max_build`) and their `passthru.tests`, and report which
    /// changed packages the passing tests exercise.
    Review {
        #[command(flatten)]
        pr: PrArgs,
        /// Review against this branch instead (default: the builder's
        /// `review.base_for` of the target branch, else the target branch).
        #[arg(long)]
        base: Option<String>,
        /// Evaluate only these attr paths in both trees (repeatable;
        /// default: every attr `nix-env -qa` lists).
        #[arg(long = "attr")]
        attrs: Vec<String>,
        /// File with a JSON list of attr paths, as --attr.
        #[arg(long, value_name = "FILE")]
        attrs_file: Option<std::path::PathBuf>,
        /// The rebuild list, computed elsewhere: the base is not evaluated
        /// (repeatable).
        #[arg(long = "rebuild")]
        rebuild: Vec<String>,
        /// Evaluate and diff only; build nothing.
        #[arg(long)]
        eval_only: bool,
        /// nixpkgs CI's comparison (`changed-paths.json` of the PR's
        /// `comparison` artifact): its rebuilds for the builder's system
        /// are the rebuild list; the base is not evaluated.
        #[arg(long, value_name = "FILE")]
        ci_comparison: Option<std::path::PathBuf>,
    },
    /// List jobs.
    Jobs,
    /// Show one job.
    Show { id: String },
    /// Print a job's build log; follows a running job.
    Log {
        id: String,
        /// Print what is there and exit, even if the job still runs.
        #[arg(long)]
        no_follow: bool,
    },
    /// Wait until a job is done, then show it; exit 0 only on Success.
    Wait {
        id: String,
        #[arg(long)]
        timeout: Option<u64>,
    },
    /// `release status COMMIT`: why a commit is or is not released.
    /// `release COMMIT --reason TEXT`: release by hand (trusted builders; logged).
    Release {
        /// `status`, or the commit to release.
        what: String,
        /// With `status`: the commit.
        commit: Option<String>,
        /// Why the operator releases by hand (required to release).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Apply the retention policy now (expire old quarantined and released outputs).
    Gc,
    /// Cancel a job: a queued one never runs, a running one's VM is stopped.
    Cancel { id: String },
    /// Stop starting queued jobs (running ones finish).
    Drain,
    /// Start queued jobs again after a drain.
    Resume,
    /// What independent builders attested for a commit's outputs (head or
    /// merged commit) or one derivation's: reproduced by N builders of M
    /// operators, single, or differs (each hash and who attested it).
    Compare {
        /// A commit (40 hex digits), a `.drv` path or its hash.
        what: String,
    },
    /// The builders whose attestations count: attestations, agreement
    /// with the others, strikes.
    Builders,
    /// Check attestation files (one JSON per line: a job's
    /// attestations.jsonl, a cache's /attestations/<drv hash>) against the
    /// known keys and keep what verifies. `-` reads stdin.
    Import {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

/// Queue `job`; print its id.
async fn submit(
    api: &airlock::dbus::Airlock1Proxy<'_>,
    job: BuildJob,
    json: bool,
) -> anyhow::Result<()> {
    let id = api
        .submit_job(&serde_json::to_string(&job)?)
        .await
        .map_err(api_err)?;
    if json {
        println!("{}", serde_json::json!({ "id": id }));
    } else {
        out!("{id}");
    }
    Ok(())
}

/// The job's repository: `repo` (a URL, or a local path made absolute:
/// the daemon has another cwd), on GitHub as `github` if given.
fn repo_of(repo: &str, github: Option<String>, pr: u64) -> anyhow::Result<Repo> {
    // A local path is resolved here: the daemon has another cwd.
    let clone_url = match std::fs::canonicalize(repo) {
        Ok(p) if !repo.contains("://") => p.display().to_string(),
        _ => repo.to_owned(),
    };
    let name = clone_url
        .trim_end_matches('/')
        .trim_end_matches(".git")
        .rsplit('/')
        .next()
        .unwrap_or("repo")
        .to_owned();
    let repo = match github {
        Some(g) => {
            airlock::release::github::check_repo(&g)?;
            if pr == 0 {
                bail!("--github needs --pr N");
            }
            let (o, n) = g.split_once('/').expect("checked");
            Repo {
                owner: o.into(),
                name: n.into(),
                full_name: g.clone(),
                clone_url,
            }
        }
        None => Repo {
            owner: "local".into(),
            full_name: format!("local/{name}"),
            name,
            clone_url,
        },
    };
    Ok(repo)
}

fn status_text(s: &BuildStatus) -> String {
    match s {
        BuildStatus::UnexpectedError { err } => format!("UnexpectedError: {err}"),
        other => format!("{other:?}"),
    }
}

fn print_job(r: &JobRecord) {
    out!("id:        {}", r.id);
    out!("state:     {:?}", r.state);
    out!(
        "repo:      {} (PR #{})",
        r.job.repo.clone_url,
        r.job.pr.number
    );
    out!(
        "head:      {} onto {}",
        r.job.pr.head_sha,
        r.job.target_branch()
    );
    if let Some(m) = &r.merged_commit {
        out!("merged:    {m}");
    }
    out!("attrs:     {}", r.job.attrs.join(" "));
    if r.interrupted {
        match &r.retried_as {
            Some(n) => out!("interrupted by a restart of airlockd; running again as job {n}"),
            None => out!("interrupted by a restart of airlockd"),
        }
    }
    if let Some(o) = &r.retry_of {
        out!("retry of: {o} (interrupted)");
    }
    if let Some(f) = &r.refetch {
        out!(
            "re-fetch:  of job {} ({} fixed-output paths, before release)",
            f.of_job,
            f.paths.len()
        );
    }
    if let Some(a) = &r.accel {
        out!("vm accel:  {a}");
    }
    if let Some(n) = &r.guest_nix {
        out!("guest nix: {n}");
    }
    if let Some(b) = r.boot_secs {
        out!("boot:      {b:.1}s to agent");
    }
    if let Some(i) = &r.input {
        out!("input:     {i}");
    }
    if let Some(x) = &r.realised {
        out!(
            "realised:  {} derivations built, {} paths substituted",
            x.built,
            x.substituted
        );
    }
    if let Some(s) = &r.substitution {
        use airlock::job::mib;
        out!(
            "substituter: {} narinfos found, {} missing, {} refused; {} NARs, {:.1} MiB from the builder's cache, {:.1} MiB downloaded from upstream",
            s.narinfo_hits,
            s.narinfo_misses,
            s.narinfos_refused,
            s.nars_served,
            mib(s.bytes_served),
            mib(s.bytes_upstream)
        );
        for why in &s.refusals {
            out!("  refused: {why}");
        }
    }
    if let (Some(s), Some(f)) = (r.started_at, r.finished_at) {
        out!("took:      {}s", f.saturating_sub(s));
    }
    if let Some(res) = &r.result {
        out!("status:    {}", status_text(&res.status));
        if let Some(a) = &res.attempted_attrs {
            out!("attempted: {}", a.join(" "));
        }
        if let Some(s) = &res.skipped_attrs {
            out!("skipped:   {}", s.join(" "));
        }
        if let Some(q) = &res.quarantine {
            out!("quarantine: {}", q.display());
        }
        for p in &res.store_paths {
            out!("  {p}");
        }
        if let Some(e) = &res.export_error {
            out!("export rejected: {e}");
        }
        if !res.output.is_empty() {
            out!("last log lines:");
            for l in &res.output {
                out!("  | {l}");
            }
        }
    }
}

fn how_text(h: &How) -> String {
    match h {
        How::Label { repo, pr, grant } => format!(
            "label on {repo}#{pr} by {} at {} (head since {}, {})",
            grant.actor,
            fmt_time(grant.labeled_at),
            fmt_time(grant.head_since),
            source_text(grant.head_source)
        ),
        How::Operator { reason } => format!("operator by hand: {reason}"),
    }
}

/// `airlockctl compare COMMIT|DRV`.
async fn compare(
    api: &airlock::dbus::Airlock1Proxy<'_>,
    what: &str,
    json: bool,
) -> anyhow::Result<()> {
    let doc = api.compare(what).await.map_err(api_err)?;
    if json {
        println!("{}", pretty(&doc)?);
    } else {
        print_comparison(&parse(&doc)?);
    }
    Ok(())
}

/// `airlockctl builders`.
async fn builders(api: &airlock::dbus::Airlock1Proxy<'_>, json: bool) -> anyhow::Result<()> {
    let doc = api.builders().await.map_err(api_err)?;
    if json {
        println!("{}", pretty(&doc)?);
    } else {
        let rows: Vec<airlock::attest::pool::BuilderRow> = parse(&doc)?;
        print_builders(&rows);
    }
    Ok(())
}

/// `airlockctl import FILE…`.
async fn import(
    api: &airlock::dbus::Airlock1Proxy<'_>,
    files: &[PathBuf],
    json: bool,
) -> anyhow::Result<()> {
    let mut text = String::new();
    for f in files {
        let t = if f.as_os_str() == "-" {
            std::io::read_to_string(std::io::stdin()).context("stdin")?
        } else {
            std::fs::read_to_string(f).with_context(|| f.display().to_string())?
        };
        text.push_str(&t);
        text.push('\n');
    }
    let doc = api.import_attestations(&text).await.map_err(api_err)?;
    if json {
        println!("{}", pretty(&doc)?);
    } else {
        let v: serde_json::Value = parse(&doc)?;
        out!("kept {}, already known {}", v["kept"], v["known"]);
        for r in v["refused"].as_array().into_iter().flatten() {
            out!("refused: {}", r.as_str().unwrap_or_default());
        }
    }
    Ok(())
}

fn print_comparison(c: &airlock::attest::pool::Comparison) {
    if c.outputs.is_empty() {
        out!("{}: no attestations from known builders", c.what);
    }
    for o in &c.outputs {
        out!("{}!{}: {}", o.drv_path, o.output, o.text);
        if o.verdict != "differs" {
            for (h, b) in &o.hashes {
                out!("  {h}: {}", b.join(", "));
            }
        }
    }
    for i in &c.ignored {
        out!("ignored: {} for {}: {}", i.builder, i.out_path, i.why);
    }
}

fn print_builders(rows: &[airlock::attest::pool::BuilderRow]) {
    for r in rows {
        let rate = if r.compared == 0 {
            "none compared yet".to_owned()
        } else {
            format!(
                "agreed on {} of {} compared outputs ({:.0}%)",
                r.agreed,
                r.compared,
                100.0 * r.agreed as f64 / r.compared as f64
            )
        };
        out!(
            "{}{}  operator {}{}  {} attestations; {rate}; {} strike(s){}",
            r.builder,
            if r.own { " (this builder)" } else { "" },
            r.operator,
            if r.url.is_empty() {
                String::new()
            } else {
                format!(" <{}>", r.url)
            },
            r.attestations,
            r.strikes,
            if r.excluded {
                "; EXCLUDED (more than verify.max_strikes)"
            } else {
                ""
            }
        );
    }
}

fn print_release_status(st: &Status) {
    out!("commit:   {}", st.commit);
    out!("builder:  {:?}", st.trust);
    if st.jobs.is_empty() {
        out!("jobs:     none in quarantine");
    }
    for j in &st.jobs {
        let what = match &j.released {
            Some(r) if r.expired_at.is_some() => {
                format!("released, since expired ({})", how_text(&r.how))
            }
            Some(r) => format!(
                "RELEASED at {} by {}",
                fmt_time(r.released_at as i64),
                how_text(&r.how)
            ),
            None => "not released".into(),
        };
        let what = match &j.released {
            Some(r) if !r.withheld.is_empty() => {
                let list: Vec<String> = r
                    .withheld
                    .iter()
                    .map(|w| format!("{} ({})", w.path, w.why))
                    .collect();
                format!(
                    "{what}; {} path(s) held back: {}",
                    r.withheld.len(),
                    list.join("; ")
                )
            }
            _ => what,
        };
        out!(
            "job {}  {}#{}  {} path(s)  {what}",
            j.job_id,
            j.repo,
            j.pr,
            j.paths
        );
        if let Some(r) = &j.refetch {
            out!("  fixed-output re-fetch: {r}");
        }
    }
    for p in &st.prs {
        let onto = p.base_branch.as_deref().unwrap_or("(base not recorded)");
        match &p.decision {
            Decision::Release(g) => out!(
                "{}#{} onto {onto}: rule holds: labelled by {} at {}, after the head was set at {} ({})",
                p.repo,
                p.pr,
                g.actor,
                fmt_time(g.labeled_at),
                fmt_time(g.head_since),
                source_text(g.head_source)
            ),
            Decision::Hold(why) => out!("{}#{} onto {onto}: not released: {why}", p.repo, p.pr),
        }
    }
}

/// What airlockd's D-Bus error says, without zbus's wrapping.
fn api_err(e: zbus::Error) -> anyhow::Error {
    let text = match &e {
        zbus::Error::MethodError(_, Some(m), _) => m.clone(),
        zbus::Error::FDO(f) => f.to_string(),
        other => other.to_string(),
    };
    anyhow::anyhow!("airlockd: {}", airlock::term::escape(&text))
}

fn parse<T: serde::de::DeserializeOwned>(doc: &str) -> anyhow::Result<T> {
    serde_json::from_str(doc).context("airlockd sent a document this airlockctl cannot read")
}

/// Pretty JSON for `--json`.
fn pretty(doc: &str) -> anyhow::Result<String> {
    Ok(serde_json::to_string_pretty(&parse::<serde_json::Value>(
        doc,
    )?)?)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let json = a.json;
    let api = airlock::dbus::client(a.bus.as_deref(), &a.socket)
        .await
        .map_err(|e| match e {
            zbus::Error::InputOutput(io) => anyhow::anyhow!("{io}"),
            e => anyhow::anyhow!(
                "cannot reach airlockd's API ({}): {e}",
                a.bus.as_deref().unwrap_or("its socket")
            ),
        })?;
    match a.cmd {
        Cmd::Review {
            pr,
            base,
            attrs,
            attrs_file,
            rebuild,
            eval_only,
            ci_comparison,
        } => {
            let review =
                review_request(base, attrs, attrs_file, rebuild, eval_only, ci_comparison)?;
            submit(&api, pr.job(vec![], Some(review))?, json).await?;
        }
        Cmd::Submit { pr, attrs } => submit(&api, pr.job(attrs, None)?, json).await?,
        Cmd::Jobs => jobs(&api, json).await?,
        Cmd::Show { id } => {
            let doc = api.show_job(&id).await.map_err(api_err)?;
            if json {
                println!("{}", pretty(&doc)?);
            } else {
                print_job(&parse(&doc)?);
            }
        }
        Cmd::Log { id, no_follow } => log(&api, &id, no_follow, json).await?,
        Cmd::Wait { id, timeout } => wait(&api, &id, timeout, json).await?,
        Cmd::Release {
            what,
            commit,
            reason,
        } => release(&api, &what, commit, reason, json).await?,
        Cmd::Gc => {
            let doc = api.gc().await.map_err(api_err)?;
            if json {
                println!("{}", pretty(&doc)?);
            } else {
                let g: airlock::release::store::GcReport = parse(&doc)?;
                out!(
                    "expired: {} unreleased job(s), {} released job(s); {} cache path(s) removed; {} bytes freed; {} job log(s) removed",
                    g.expired_unreleased.len(),
                    g.expired_released.len(),
                    g.cache_paths_removed,
                    g.bytes_freed,
                    g.jobs_removed.len()
                );
            }
        }
        Cmd::Compare { what } => compare(&api, &what, json).await?,
        Cmd::Builders => builders(&api, json).await?,
        Cmd::Import { files } => import(&api, &files, json).await?,
        Cmd::Cancel { id } => {
            let what = api.cancel_job(&id).await.map_err(api_err)?;
            if json {
                println!("{}", serde_json::json!({ "id": id, "result": what }));
            } else {
                out!("{id}: {what}");
            }
        }
        Cmd::Drain => {
            api.drain().await.map_err(api_err)?;
            if !json {
                out!("draining: queued jobs wait, running ones finish");
            }
        }
        Cmd::Resume => {
            api.resume().await.map_err(api_err)?;
            if !json {
                out!("resumed");
            }
        }
    }
    Ok(())
}

type Api<'a> = airlock::dbus::Airlock1Proxy<'a>;

/// `airlockctl jobs`: a table, newest last.
async fn jobs(api: &Api<'_>, json: bool) -> anyhow::Result<()> {
    let doc = api.list_jobs().await.map_err(api_err)?;
    if json {
        println!("{}", pretty(&doc)?);
        return Ok(());
    }
    let js: Vec<JobRecord> = parse(&doc)?;
    out!(
        "{:<36}  {:<9}  {:<11}  {:>6}  ATTRS",
        "ID",
        "STATE",
        "STATUS",
        "PR"
    );
    for j in js {
        let st = j.result.as_ref().map(|r| match &r.status {
            _ if j.interrupted => "interrupted".to_string(),
            BuildStatus::UnexpectedError { .. } => "Error".to_string(),
            s => format!("{s:?}"),
        });
        // A queue-runner step has no PR: its build id and derivation.
        let (pr, what) = match &j.hydra {
            Some(h) => ("step".to_owned(), format!("build {} {}", h.build_id, h.drv)),
            None => (j.job.pr.number.to_string(), j.job.attrs.join(" ")),
        };
        out!(
            "{:<36}  {:<9}  {:<11}  {:>6}  {}",
            j.id,
            j.state.as_str(),
            st.unwrap_or_else(|| "-".into()),
            pr,
            what
        );
    }
    Ok(())
}

/// `airlockctl log`: the build log, followed until the job ends.
async fn log(api: &Api<'_>, id: &str, no_follow: bool, json: bool) -> anyhow::Result<()> {
    let print = |line: &str| {
        if json {
            println!("{}", serde_json::json!({ "line": line }));
        } else {
            out!("{line}");
        }
    };
    let mut offset = 0u64;
    let mut partial = String::new();
    loop {
        let (text, next, done) = api.read_log(id, offset).await.map_err(api_err)?;
        let got = next > offset;
        offset = next;
        partial.push_str(&text);
        while let Some(i) = partial.find('\n') {
            let line: String = partial.drain(..=i).collect();
            print(line.trim_end_matches('\n'));
        }
        if done || (no_follow && !got) {
            break;
        }
        if !got {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }
    if !partial.is_empty() {
        print(&partial);
    }
    Ok(())
}

/// `airlockctl wait`: exits 0 if the job succeeded, 1 otherwise.
async fn wait(api: &Api<'_>, id: &str, timeout: Option<u64>, json: bool) -> anyhow::Result<()> {
    let t0 = std::time::Instant::now();
    let limit = timeout.unwrap_or(u64::MAX / 4);
    let doc = loop {
        let left = limit.saturating_sub(t0.elapsed().as_secs());
        let doc = api
            .wait_job(id, left.clamp(1, 20) as u32)
            .await
            .map_err(api_err)?;
        if !doc.is_empty() {
            break doc;
        }
        if t0.elapsed().as_secs() >= limit {
            bail!("airlockd: job {id} still running after {limit}s");
        }
    };
    let r: JobRecord = parse(&doc)?;
    if json {
        println!("{}", pretty(&doc)?);
    } else {
        print_job(&r);
    }
    let ok = r
        .result
        .as_ref()
        .is_some_and(|x| x.status == BuildStatus::Success);
    std::process::exit(if ok { 0 } else { 1 });
}

/// `airlockctl release status COMMIT` or `airlockctl release COMMIT --reason`.
async fn release(
    api: &Api<'_>,
    what: &str,
    commit: Option<String>,
    reason: Option<String>,
    json: bool,
) -> anyhow::Result<()> {
    if what == "status" {
        let Some(commit) = commit else {
            bail!("usage: airlockctl release status COMMIT");
        };
        let doc = api.release_status(&commit).await.map_err(api_err)?;
        if json {
            println!("{}", pretty(&doc)?);
        } else {
            print_release_status(&parse(&doc)?);
        }
        return Ok(());
    }
    if commit.is_some() {
        bail!("usage: airlockctl release COMMIT --reason TEXT");
    }
    let Some(reason) = reason else {
        bail!("releasing by hand needs --reason TEXT (it is logged)");
    };
    let doc = api.release(what, &reason).await.map_err(api_err)?;
    if json {
        println!("{}", pretty(&doc)?);
    } else {
        let js: Vec<airlock::release::store::ReleasedJob> = parse(&doc)?;
        for j in js {
            out!("released job {} ({} paths)", j.job_id, j.paths.len());
        }
    }
    Ok(())
}

/// `airlockctl review`'s marker from its flags (the files read and checked).
fn review_request(
    base: Option<String>,
    mut attrs: Vec<String>,
    attrs_file: Option<std::path::PathBuf>,
    rebuild: Vec<String>,
    eval_only: bool,
    ci_comparison: Option<std::path::PathBuf>,
) -> anyhow::Result<airlock::ofborg::ReviewRequest> {
    let ci_comparison = ci_comparison
        .map(|f| -> anyhow::Result<_> {
            let b = std::fs::read(&f).with_context(|| format!("reading {}", f.display()))?;
            airlock::nixpkgs_ci::ChangedPaths::parse(&b)
                .with_context(|| format!("{} is not nixpkgs CI's changed-paths.json", f.display()))
        })
        .transpose()?;
    if ci_comparison.is_some() && !rebuild.is_empty() {
        anyhow::bail!("--ci-comparison and --rebuild both give the rebuild list: use one");
    }
    if let Some(f) = attrs_file {
        let list: Vec<String> = serde_json::from_slice(
            &std::fs::read(&f).with_context(|| format!("reading {}", f.display()))?,
        )
        .with_context(|| format!("{} is not a JSON list of attr paths", f.display()))?;
        attrs.extend(list);
    }
    Ok(airlock::ofborg::ReviewRequest {
        base,
        attrs: (!attrs.is_empty()).then_some(attrs),
        rebuild: (!rebuild.is_empty()).then_some(rebuild),
        eval_only,
        ci_comparison,
    })
}
