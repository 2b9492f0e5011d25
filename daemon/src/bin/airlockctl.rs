//! airlockctl: submit jobs and inspect them over airlockd's unix socket.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};

use airlock::api::{Reply, Request};
use airlock::job::JobRecord;
use airlock::ofborg::{BuildJob, BuildStatus, Pr, Repo};

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
            Reply::Error(e) => bail!("airlockd: {e}"),
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
    println!("id:        {}", r.id);
    println!("state:     {:?}", r.state);
    println!(
        "repo:      {} (PR #{})",
        r.job.repo.clone_url, r.job.pr.number
    );
    println!(
        "head:      {} onto {}",
        r.job.pr.head_sha,
        r.job.target_branch()
    );
    if let Some(m) = &r.merged_commit {
        println!("merged:    {m}");
    }
    println!("attrs:     {}", r.job.attrs.join(" "));
    if let Some(a) = &r.accel {
        println!("vm accel:  {a}");
    }
    if let Some(b) = r.boot_secs {
        println!("boot:      {b:.1}s to agent");
    }
    if let (Some(s), Some(f)) = (r.started_at, r.finished_at) {
        println!("took:      {}s", f.saturating_sub(s));
    }
    if let Some(res) = &r.result {
        println!("status:    {}", status_text(&res.status));
        if let Some(a) = &res.attempted_attrs {
            println!("attempted: {}", a.join(" "));
        }
        if let Some(s) = &res.skipped_attrs {
            println!("skipped:   {}", s.join(" "));
        }
        if let Some(q) = &res.quarantine {
            println!("quarantine: {}", q.display());
        }
        for p in &res.store_paths {
            println!("  {p}");
        }
        if let Some(e) = &res.export_error {
            println!("export rejected: {e}");
        }
        if !res.output.is_empty() {
            println!("last log lines:");
            for l in &res.output {
                println!("  | {l}");
            }
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
            let job = BuildJob {
                repo: Repo {
                    owner: "local".into(),
                    full_name: format!("local/{name}"),
                    name,
                    clone_url,
                },
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
                Reply::Submitted { id } => println!("{id}"),
                r => bail!("unexpected reply {r:?}"),
            }
        }
        Cmd::Jobs => match call(&a.socket, &Request::List, |_| {})? {
            Reply::Jobs(js) if json => println!("{}", serde_json::to_string_pretty(&js)?),
            Reply::Jobs(js) => {
                println!(
                    "{:<36}  {:<9}  {:<10}  {:>6}  ATTRS",
                    "ID", "STATE", "STATUS", "PR"
                );
                for j in js {
                    let st = j.result.as_ref().map(|r| match &r.status {
                        BuildStatus::UnexpectedError { .. } => "Error".to_string(),
                        s => format!("{s:?}"),
                    });
                    println!(
                        "{:<36}  {:<9}  {:<10}  {:>6}  {}",
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
                    println!("{l}");
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
    }
    Ok(())
}
