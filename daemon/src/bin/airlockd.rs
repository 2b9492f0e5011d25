//! airlockd: the builder daemon. Parses flags, loads config, wires the
//! runner and the API together; everything else lives in the library.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tracing::info;

use airlock::amqp::Amqp;
use airlock::config::{Backend, Config, Trust};
use airlock::daemon::{sd_notify_ready, Daemon};
use airlock::job::JobStore;
use airlock::release::Release;
use airlock::runner::{LogSink, NoSink, Runner};
use airlock::vm::ch::{self, CloudHypervisor};
use airlock::vm::qemu::{probe_accel, Qemu};
use airlock::vm::{probe_boot, RunAs, VmBackend};

#[derive(Parser, Debug)]
#[command(
    name = "airlockd",
    version,
    about = "Build untrusted nixpkgs PRs in throwaway VMs"
)]
struct Args {
    /// TOML config file (every key optional; see docs/configuration.md).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Override `state_dir`.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Override `socket`.
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Override `amqp.url` (enables the ofborg broker intake).
    #[arg(long)]
    amqp_url: Option<String>,
    /// Override `identity`.
    #[arg(long)]
    identity: Option<String>,
    /// Override `amqp.systems` (repeatable); the first is also `system`.
    #[arg(long = "system")]
    systems: Vec<String>,
    /// Override `trust`: `trusted` (may release to the binary cache) or `community`.
    #[arg(long)]
    trust: Option<Trust>,
    /// Override `release.signing_key_file` (Nix secret key, `name:base64`).
    #[arg(long)]
    signing_key_file: Option<PathBuf>,
    /// Override `cache.listen` (ADDR:PORT of the binary cache server).
    #[arg(long)]
    cache_listen: Option<String>,
    /// Override `github.api_url` (GitHub Enterprise, tests).
    #[arg(long)]
    github_api_url: Option<String>,
    /// Only read and check this configuration file (with the overrides
    /// above), print the effective settings (every key, defaults filled in)
    /// and exit: 0 if airlockd would start with it, else non-zero with the
    /// reason. Nothing is started or written.
    #[arg(long, value_name = "FILE")]
    check_config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_env("AIRLOCK_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
    };
    // Under systemd (stderr is the journal) every event goes to journald
    // with its job's fields; otherwise plain text to stderr.
    let journal = airlock::journal::wanted()
        .then(|| {
            airlock::journal::JournalLayer::new(std::path::Path::new(airlock::journal::SOCKET)).ok()
        })
        .flatten();
    let journald = journal.is_some();
    {
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::util::SubscriberInitExt;
        match journal {
            Some(j) => tracing_subscriber::registry().with(filter()).with(j).init(),
            None => tracing_subscriber::fmt()
                .with_env_filter(filter())
                .with_writer(std::io::stderr)
                // Colours only for a person at a terminal: a redirected log
                // (a file, journald) gets plain text.
                .with_ansi(
                    std::io::IsTerminal::is_terminal(&std::io::stderr())
                        && std::env::var_os("NO_COLOR").is_none(),
                )
                .init(),
        }
    }
    let args = Args::parse();
    let mut cfg = Config::load(args.check_config.as_deref().or(args.config.as_deref()))?;
    if let Some(s) = args.state_dir {
        cfg.state_dir = s;
    }
    if let Some(s) = args.socket {
        cfg.socket = s;
    }
    if let Some(u) = args.amqp_url {
        cfg.amqp.url = u;
    }
    if let Some(i) = args.identity {
        cfg.identity = i;
    }
    if !args.systems.is_empty() {
        cfg.system = args.systems[0].clone();
        cfg.amqp.systems = args.systems;
    }
    if let Some(t) = args.trust {
        cfg.trust = t;
    }
    if let Some(k) = args.signing_key_file {
        cfg.release.signing_key_file = Some(k);
    }
    if let Some(l) = args.cache_listen {
        cfg.cache.listen = Some(l);
    }
    if let Some(u) = args.github_api_url {
        cfg.github.api_url = u;
    }
    cfg.check()?;
    if args.check_config.is_some() {
        print!(
            "{}",
            toml::to_string_pretty(&cfg).context("cannot print the effective settings")?
        );
        eprintln!("config OK");
        return Ok(());
    }
    std::fs::create_dir_all(&cfg.state_dir)
        .with_context(|| format!("cannot create state dir {}", cfg.state_dir.display()))?;
    let img = cfg.vm.image_dir.clone();
    let run_as = match cfg.vm.user.as_str() {
        "" => None,
        u => Some(RunAs::parse(u).map_err(|e| anyhow::anyhow!(e))?),
    };
    if let Some(r) = &run_as {
        if r.uid == 0 && cfg.release.signing_key_file.is_some() {
            anyhow::bail!("{}", airlock::config::VM_USER_FOR_KEY);
        }
        r.open_the_way(&[
            &cfg.state_dir,
            &cfg.jobs_dir(),
            &cfg.state_dir.join("probe"),
        ])
        .map_err(|e| anyhow::anyhow!(e))?;
    }
    let backend: Arc<dyn VmBackend> = match cfg.vm.backend {
        Backend::Qemu => {
            let q = Qemu {
                binary: cfg.vm.qemu.clone(),
                machine: cfg.vm.machine.clone(),
                accel: String::new(),
                run_as: run_as.clone(),
            };
            let (accel, why) = probe_accel(
                &q,
                cfg.vm.accel,
                &img.join("vmlinux"),
                &img.join("initrd.gz"),
                &cfg.state_dir.join("probe"),
                Duration::from_secs(cfg.vm.probe_timeout_secs),
            )
            .await;
            info!(%accel, reason = %why, requested = ?cfg.vm.accel, user = ?run_as.as_ref().map(|r| r.uid), "VM backend qemu, accelerator chosen");
            Arc::new(Qemu { accel, ..q })
        }
        Backend::CloudHypervisor => {
            let landlock = cfg.vm.landlock
                && {
                    let abi = ch::landlock_abi();
                    if abi.is_none() {
                        tracing::warn!("this kernel has no Landlock: cloud-hypervisor runs without it (vm.landlock)");
                    }
                    abi.is_some()
                };
            let b = CloudHypervisor {
                binary: cfg.vm.cloud_hypervisor.clone().into(),
                grace: Duration::from_secs(cfg.vm.stop_grace_secs),
                landlock,
                virtiofsd: (!cfg.vm.virtiofsd.is_empty()).then(|| cfg.vm.virtiofsd.clone().into()),
                run_as: run_as.clone(),
            };
            let took = probe_boot(
                &b,
                &img.join("vmlinux"),
                &img.join("initrd.gz"),
                &cfg.state_dir.join("probe"),
                Duration::from_secs(cfg.vm.probe_timeout_secs),
            )
            .await
            .map_err(|why| {
                anyhow::anyhow!(
                    "vm.backend = \"cloud-hypervisor\" cannot run the guest on this host: {why}. \
                     cloud-hypervisor needs a KVM that boots a Linux guest (not the nested KVM of some \
                     cloud machines); set vm.backend = \"qemu\", which falls back to TCG"
                )
            })?;
            info!(
                took_ms = took.as_millis() as u64,
                landlock,
                user = ?run_as.as_ref().map(|r| r.uid),
                "VM backend cloud-hypervisor: probe boot reached the guest's init"
            );
            Arc::new(b)
        }
    };
    // The fetch VM reaches the substituter on its link's host address.
    if cfg.substituter_settings().is_some()
        && !cfg
            .network
            .policy
            .allow_host_ports
            .contains(&cfg.substituter.port)
    {
        let port = cfg.substituter.port;
        cfg.network.policy.allow_host_ports.push(port);
    }
    let cfg = Arc::new(cfg);
    let (amqp, sink): (Option<Arc<Amqp>>, Arc<dyn LogSink>) = if cfg.amqp.enabled() {
        let (a, s) = Amqp::new(cfg.clone());
        (Some(a), s)
    } else {
        (None, Arc::new(NoSink))
    };
    let network = if cfg.network.enabled {
        let mut n = airlock_network_policy::Network::init(cfg.network.policy.clone())
            .await
            .map_err(|e| anyhow::anyhow!("{}", airlock::runner::error_chain(&e)))
            .context("cannot set up the fetch-phase network (needs root, nftables and /dev/net/tun; or set network.enabled = false)")?;
        // A VMM that runs as its own user attaches to TAPs that user owns.
        n.set_tap_owner(run_as.as_ref().map(|r| (r.uid, r.gid)));
        Some(Arc::new(n))
    } else {
        info!("network.enabled = false: one VM boot per job, no NIC, fixed-output derivations cannot download");
        None
    };
    let substituter = match cfg.substituter_settings() {
        Some(s) => {
            let fetch = airlock::substituter::HttpFetch::new(Duration::from_secs(
                cfg.substituter.timeout_secs,
            ))?;
            Some(
                airlock::substituter::Substituter::open(s, Arc::new(fetch))
                    .context("cannot open the substituter's cache")?,
            )
        }
        None => {
            info!("nothing is substituted (nix.substituters is empty or network.enabled = false): jobs build their whole closure");
            None
        }
    };
    let supervisor = airlock::supervise::Supervisor::start(&cfg.supervision)
        .await
        .map_err(|e| anyhow::anyhow!("{}", airlock::runner::error_chain(&e)))?;
    // Nothing runs yet: every job unit (or cgroup) there is a leftover.
    let cleaned = supervisor.clean(&[]).await;
    if !cleaned.is_empty() {
        info!(units = ?cleaned, "removed job units left by a previous run");
    }
    let runner = Arc::new(Runner {
        supervisor,
        journal: journald.then(|| airlock::journal::SOCKET.into()),
        network,
        substituter,
        control: Default::default(),
        store: JobStore::new(cfg.jobs_dir()),
        cfg: cfg.clone(),
        backend,
        sink,
    });
    info!(state_dir = %cfg.state_dir.display(), max_jobs = cfg.max_jobs, identity = %cfg.identity, "airlockd starting");
    let release = Release::new(cfg.clone()).context("cannot start the release service")?;
    let daemon = Daemon::start(runner)?;
    daemon.set_release(release.clone());
    release
        .spawn()
        .context("cannot listen (cache.listen / github.webhook_listen)")?;
    if let Some(addr) = &cfg.web.listen {
        airlock::release::server::spawn(addr, airlock::web::router(cfg.jobs_dir()), "web view")
            .context("cannot listen (web.listen)")?;
    }
    if let Some(a) = &amqp {
        tokio::spawn(a.clone().run(daemon.clone()));
    }
    // Held for airlockd's lifetime: dropping it leaves the bus.
    let _dbus = if cfg.dbus.address.is_empty() {
        None
    } else {
        Some(
            airlock::dbus::serve(daemon.clone(), &cfg.dbus.address)
                .await
                .map_err(|e| anyhow::anyhow!("{}", airlock::runner::error_chain(&e)))
                .context("the D-Bus admin API is configured (dbus.address) but cannot start; is the bus up, and does its policy let airlockd own org.airlock.Airlock1?")?,
        )
    };
    // Bound before READY=1: a client that connects at READY finds it. And
    // SIGTERM handled before it: a stop right after READY drains.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let server = daemon.bind_and_serve(&cfg.socket)?;
    sd_notify_ready();
    daemon.spawn_sd_status();
    tokio::select! {
        r = server => { r??; return Ok(()); }
        _ = term.recv() => info!("SIGTERM: draining"),
        _ = tokio::signal::ctrl_c() => info!("interrupted: draining"),
    }
    // Graceful drain: take no new jobs, let running ones finish and report.
    daemon.drain();
    airlock::daemon::sd_notify(
        "STOPPING=1\nSTATUS=draining: running jobs finish, queued ones wait\n",
    );
    if let Some(a) = &amqp {
        a.stop_consuming().await;
    }
    let grace = Duration::from_secs(cfg.shutdown_grace_secs);
    let t0 = std::time::Instant::now();
    while t0.elapsed() < grace {
        let unreported = daemon.runner.store.list().0.iter().any(|r| {
            r.state == airlock::job::JobState::Done
                && r.amqp
                    .as_ref()
                    .is_some_and(|o| o.report == airlock::job::ReportState::Pending)
        });
        if daemon.running() == 0 && !unreported {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if let Some(a) = &amqp {
        a.shutdown(&daemon, Duration::from_secs(10)).await;
    }
    info!(
        still_running = daemon.running(),
        "stopped; unfinished jobs run again (local) or are redelivered (broker)"
    );
    Ok(())
}
