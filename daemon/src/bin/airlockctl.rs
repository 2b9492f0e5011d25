//! airlockctl: submit jobs and inspect them over airlockd's unix socket.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};

use airlock::api::{Reply, Request};
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
    /// Machine-readable output.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Queue a build of a PR head merged onto its target branch.
    Submit {
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
        #[arg(long, default_value = "master")]
        target_branch: String,
        /// Attribute to build (repeatable).
        #[arg(long = "attr", required = true)]
        attrs: Vec<String>,
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
}

fn call(socket: &PathBuf, req: &Request, mut on_line: impl FnMut(String)) -> anyhow::Result<Reply> {
    let mut s = UnixStream::connect(socket).with_context(|| {
        format!(
            "cannot connect to airlockd at {} (is it running? --socket)",
            socket.display()
        )
    })?;
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    s.write_all(&line)?;
    for l in BufReader::new(s).lines() {
        match serde_json::from_str::<Reply>(&l?)? {
            Reply::Line(t) => on_line(t),
            Reply::Error(e) => bail!("airlockd: {}", airlock::term::escape(&e)),
            other => return Ok(other),
        }
    }
    bail!("airlockd closed the connection without a reply")
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
        out!(
            "job {}  {}#{}  {} path(s)  {what}",
            j.job_id,
            j.repo,
            j.pr,
            j.paths
        );
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

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let json = a.json;
    match a.cmd {
        Cmd::Submit {
            repo,
            head,
            pr,
            github,
            target_branch,
            attrs,
        } => {
            // A local path is resolved here: the daemon has another cwd.
            let clone_url = match std::fs::canonicalize(&repo) {
                Ok(p) if !repo.contains("://") => p.display().to_string(),
                _ => repo.clone(),
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
            let job = BuildJob {
                repo,
                pr: Pr {
                    target_branch: Some(target_branch),
                    number: pr,
                    head_sha: head,
                },
                subset: None,
                attrs,
                request_id: uuid::Uuid::new_v4().to_string(),
                logs: None,
                statusreport: None,
            };
            match call(&a.socket, &Request::Submit { job: Box::new(job) }, |_| {})? {
                Reply::Submitted { id } if json => println!("{}", serde_json::json!({ "id": id })),
                Reply::Submitted { id } => out!("{id}"),
                r => bail!("unexpected reply {r:?}"),
            }
        }
        Cmd::Jobs => match call(&a.socket, &Request::List, |_| {})? {
            Reply::Jobs(js) if json => println!("{}", serde_json::to_string_pretty(&js)?),
            Reply::Jobs(js) => {
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
                    out!(
                        "{:<36}  {:<9}  {:<11}  {:>6}  {}",
                        j.id,
                        format!("{:?}", j.state).to_lowercase(),
                        st.unwrap_or_else(|| "-".into()),
                        j.job.pr.number,
                        j.job.attrs.join(" ")
                    );
                }
            }
            r => bail!("unexpected reply {r:?}"),
        },
        Cmd::Show { id } => match call(&a.socket, &Request::Show { id }, |_| {})? {
            Reply::Job(r) if json => println!("{}", serde_json::to_string_pretty(&r)?),
            Reply::Job(r) => print_job(&r),
            r => bail!("unexpected reply {r:?}"),
        },
        Cmd::Log { id, no_follow } => {
            let req = Request::Log {
                id,
                follow: !no_follow,
            };
            call(&a.socket, &req, |l| {
                if json {
                    println!("{}", serde_json::json!({ "line": l }));
                } else {
                    out!("{l}");
                }
            })?;
        }
        Cmd::Wait { id, timeout } => {
            match call(
                &a.socket,
                &Request::Wait {
                    id,
                    timeout_secs: timeout,
                },
                |_| {},
            )? {
                Reply::Job(r) => {
                    if json {
                        println!("{}", serde_json::to_string_pretty(&r)?);
                    } else {
                        print_job(&r);
                    }
                    let ok = r
                        .result
                        .as_ref()
                        .is_some_and(|x| x.status == BuildStatus::Success);
                    std::process::exit(if ok { 0 } else { 1 });
                }
                r => bail!("unexpected reply {r:?}"),
            }
        }
        Cmd::Release {
            what,
            commit,
            reason,
        } => {
            let req = if what == "status" {
                let Some(commit) = commit else {
                    bail!("usage: airlockctl release status COMMIT");
                };
                Request::ReleaseStatus { commit }
            } else {
                if commit.is_some() {
                    bail!("usage: airlockctl release COMMIT --reason TEXT");
                }
                let Some(reason) = reason else {
                    bail!("releasing by hand needs --reason TEXT (it is logged)");
                };
                Request::Release {
                    commit: what,
                    reason,
                }
            };
            match call(&a.socket, &req, |_| {})? {
                Reply::ReleaseStatus(st) if json => {
                    println!("{}", serde_json::to_string_pretty(&st)?)
                }
                Reply::ReleaseStatus(st) => print_release_status(&st),
                Reply::Released(js) if json => println!("{}", serde_json::to_string_pretty(&js)?),
                Reply::Released(js) => {
                    for j in js {
                        out!("released job {} ({} paths)", j.job_id, j.paths.len());
                    }
                }
                r => bail!("unexpected reply {r:?}"),
            }
        }
        Cmd::Gc => match call(&a.socket, &Request::Gc, |_| {})? {
            Reply::Gc(g) if json => println!("{}", serde_json::to_string_pretty(&g)?),
            Reply::Gc(g) => {
                out!(
                    "expired: {} unreleased job(s), {} released job(s); {} cache path(s) removed; {} bytes freed; {} job log(s) removed",
                    g.expired_unreleased.len(),
                    g.expired_released.len(),
                    g.cache_paths_removed,
                    g.bytes_freed,
                    g.jobs_removed.len()
                );
            }
            r => bail!("unexpected reply {r:?}"),
        },
    }
    Ok(())
}
