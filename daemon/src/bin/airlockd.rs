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
use airlock::job::JobStore;
use airlock::release::Release;
use airlock::runner::{LogSink, NoSink, Runner};
use airlock::scheduler::Scheduler;
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
    let journald = init_logging();
    let args = Args::parse();
    let check_only = args.check_config.is_some();
    let mut cfg = effective_config(args)?;
    if check_only {
        print!(
            "{}",
            toml::to_string_pretty(&cfg).context("cannot print the effective settings")?
        );
        eprintln!("config OK");
        return Ok(());
    }
    std::fs::create_dir_all(&cfg.state_dir)
        .with_context(|| format!("cannot create state dir {}", cfg.state_dir.display()))?;
    let run_as = vm_user(&cfg)?;
    let backend = vm_backend(&cfg, run_as.as_ref()).await?;
    // The fetch VM reaches the substituter on its link's host address.
    if cfg.substituter_enabled()
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
    // Hydra's queue-runner (docs/hydra.md): a second intake, its own sink.
    let hydra = cfg
        .hydra
        .enabled()
        .then(|| airlock::hydra_intake::HydraIntake::new(cfg.clone()));
    let sink: Arc<dyn LogSink> = match &hydra {
        Some(h) => Arc::new(airlock::hydra_intake::Sinks(vec![
            sink,
            Arc::new(airlock::hydra_intake::HydraSink(h.clone())),
        ])),
        None => sink,
    };
    // GitHub with credentials (issue 32): the review's merge verdict reads
    // the PR; with `review.check_runs`, each review posts a check run.
    let github = airlock::checks::client(&cfg)
        .map_err(|e| anyhow::anyhow!("{}", airlock::error::chain(&e)))
        .context("cannot set up GitHub access ([github] token_file or app_*)")?
        .map(Arc::new);
    let sink: Arc<dyn LogSink> = match &github {
        // Only an App may write check runs (a token would get 403s).
        Some(gh) if cfg.review.check_runs && cfg.github.app_id.is_some() => {
            Arc::new(airlock::hydra_intake::Sinks(vec![
                sink,
                airlock::checks::Checks::start(gh.clone(), cfg.clone()),
            ]))
        }
        _ => sink,
    };
    let runner = runner(&cfg, backend, sink, run_as.as_ref(), journald, github).await?;
    info!(state_dir = %cfg.state_dir.display(), max_jobs = cfg.max_jobs, identity = %cfg.identity, "airlockd starting");
    let daemon = Scheduler::start(runner)?;
    // Set on SIGTERM: the queue-runner session then ends with its tunnel
    // (an administrator's drain only refuses new steps).
    let stopping = Arc::new(std::sync::atomic::AtomicBool::new(false));
    if let Some(h) = &hydra {
        h.set_scheduler(daemon.clone());
        let session = airlock::hydra::session::Session::new(cfg.clone(), Arc::new(h.clone()));
        let stop = stopping.clone();
        info!(endpoint = %cfg.hydra.endpoint, version = %cfg.hydra.version, "joining the queue-runner");
        tokio::spawn(async move {
            session
                .run(move || stop.load(std::sync::atomic::Ordering::SeqCst))
                .await
        });
    }
    // Held for airlockd's lifetime: dropping it leaves the bus.
    let _dbus = front_ends(&cfg, &daemon, amqp.as_ref()).await?;
    // Bound before READY=1: a client that connects at READY finds it. And
    // SIGTERM handled before it: a stop right after READY drains.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let server = airlock::dbus::bind_and_serve(&daemon, &cfg.socket)?;
    airlock::systemd::notify_ready();
    daemon.spawn_sd_status();
    tokio::select! {
        r = server => { r??; return Ok(()); }
        _ = term.recv() => info!("SIGTERM: draining"),
        _ = tokio::signal::ctrl_c() => info!("interrupted: draining"),
    }
    stopping.store(true, std::sync::atomic::Ordering::SeqCst);
    drain(&cfg, &daemon, amqp.as_ref(), hydra.as_ref()).await;
    Ok(())
}

/// journald's native protocol under systemd (every event with its job's
/// fields), else plain text on stderr. Returns whether it is journald.
fn init_logging() -> bool {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_env("AIRLOCK_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
    };
    let journal = airlock::journal::wanted()
        .then(|| {
            airlock::journal::JournalLayer::new(std::path::Path::new(airlock::journal::SOCKET)).ok()
        })
        .flatten();
    let journald = journal.is_some();
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
    journald
}

/// The configuration file with the command line's overrides, checked.
fn effective_config(args: Args) -> anyhow::Result<Config> {
    // Checked once, with the command line's overrides applied.
    let mut cfg = Config::read(args.check_config.as_deref().or(args.config.as_deref()))?;
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
        cfg.identity.name = i;
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
    Ok(cfg)
}

/// `vm.user`, resolved, with its way to the VMs' files opened; never root
/// when there is a signing key.
fn vm_user(cfg: &Config) -> anyhow::Result<Option<RunAs>> {
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
    Ok(run_as)
}

/// The configured VM backend, after a probe boot: QEMU picks KVM or TCG by
/// it; cloud-hypervisor refuses to start without a KVM that boots the guest.
async fn vm_backend(cfg: &Config, run_as: Option<&RunAs>) -> anyhow::Result<Arc<dyn VmBackend>> {
    let img = &cfg.vm.image_dir;
    let probe = cfg.state_dir.join("probe");
    let probe_timeout = Duration::from_secs(cfg.vm.probe_timeout_secs);
    let user = run_as.map(|r| r.uid);
    Ok(match cfg.vm.backend {
        Backend::Qemu => {
            let q = Qemu {
                binary: cfg.vm.qemu.clone(),
                machine: cfg.vm.machine.clone(),
                accel: String::new(),
                run_as: run_as.cloned(),
                templates: cfg.vm.template.then(|| {
                    Arc::new(airlock::vm::template::Templates::new(
                        cfg.state_dir.join("templates"),
                        cfg.agent_path(),
                    ))
                }),
            };
            let (kernel, initrd) = (img.join("vmlinux"), img.join("initrd.gz"));
            let (accel, why) =
                probe_accel(&q, cfg.vm.accel, &kernel, &initrd, &probe, probe_timeout).await;
            info!(%accel, reason = %why, requested = ?cfg.vm.accel, ?user, "VM backend qemu, accelerator chosen");
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
                run_as: run_as.cloned(),
                templates: cfg.vm.template.then(|| {
                    Arc::new(airlock::vm::template::Templates::new(
                        cfg.state_dir.join("templates"),
                        cfg.agent_path(),
                    ))
                }),
            };
            let (kernel, initrd) = (img.join("vmlinux"), img.join("initrd.gz"));
            let took = probe_boot(&b, &kernel, &initrd, &probe, probe_timeout)
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
                ?user,
                "VM backend cloud-hypervisor: probe boot reached the guest's init"
            );
            Arc::new(b)
        }
    })
}

/// The runner and its adapters: the fetch-phase network, the substituter,
/// job supervision (leftover units of a previous run removed).
async fn runner(
    cfg: &Arc<Config>,
    backend: Arc<dyn VmBackend>,
    sink: Arc<dyn LogSink>,
    run_as: Option<&RunAs>,
    journald: bool,
    github: Option<Arc<airlock::release::github::GitHub>>,
) -> anyhow::Result<Arc<Runner>> {
    let network = if cfg.network.enabled {
        let mut n = airlock_network_policy::Network::init(cfg.network.policy.clone())
            .await
            .map_err(|e| anyhow::anyhow!("{}", airlock::error::chain(&e)))
            .context("cannot set up the fetch-phase network (needs root, nftables and /dev/net/tun; or set network.enabled = false)")?;
        // A VMM that runs as its own user attaches to TAPs that user owns.
        n.set_tap_owner(run_as.map(|r| (r.uid, r.gid)));
        Some(Arc::new(n))
    } else {
        info!("network.enabled = false: one VM boot per job, no NIC, fixed-output derivations cannot download");
        None
    };
    let substituter = match airlock::substituter::Settings::from_config(cfg) {
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
        .map_err(|e| anyhow::anyhow!("{}", airlock::error::chain(&e)))?;
    // Nothing runs yet: every job unit (or cgroup) there is a leftover.
    let cleaned = supervisor.clean(&[]).await;
    if !cleaned.is_empty() {
        info!(units = ?cleaned, "removed job units left by a previous run");
    }
    let (kernel, why) = airlock::vm::kernel::KernelChoice::new(&cfg.vm.kernel, &cfg.vm.image_dir);
    info!(kernel = %kernel.current().display(), reason = %why, "guest kernel");
    let attestor = airlock::attest::store::Attestor::open(cfg)
        .map_err(|e| anyhow::anyhow!("{}", airlock::error::chain(&e)))?;
    info!(
        builder = attestor.builder(),
        public_key = attestor.public(),
        "attestations signed with this identity key"
    );
    Ok(Arc::new(Runner {
        github,
        attestor: Some(Arc::new(attestor)),
        kernel: Arc::new(kernel),
        supervisor,
        journal: journald.then(|| airlock::journal::SOCKET.into()),
        network,
        substituter,
        control: Default::default(),
        store: JobStore::new(cfg.jobs_dir()),
        cfg: cfg.clone(),
        backend,
        sink,
    }))
}

/// What talks to the world besides the API socket: the release service
/// (cache, webhook), the web view, the broker, the D-Bus API (returned: it
/// is held for airlockd's lifetime).
async fn front_ends(
    cfg: &Arc<Config>,
    daemon: &Arc<Scheduler>,
    amqp: Option<&Arc<Amqp>>,
) -> anyhow::Result<Option<zbus::Connection>> {
    let release = Release::new(cfg.clone()).context("cannot start the release service")?;
    daemon.set_release(release.clone());
    if let Some(a) = &daemon.runner.attestor {
        release.set_attestor(a.clone());
    }
    let d = daemon.clone();
    release.set_refetcher(Arc::new(move |rec| {
        d.enqueue(rec).map_err(|e| e.to_string())
    }));
    release
        .spawn()
        .context("cannot listen (cache.listen / github.webhook_listen)")?;
    if let Some(addr) = &cfg.web.listen {
        airlock::release::server::spawn(
            addr,
            airlock::web::router(cfg.jobs_dir(), daemon.runner.attestor.clone()),
            "web view",
        )
        .context("cannot listen (web.listen)")?;
    }
    if let Some(a) = amqp {
        tokio::spawn(a.clone().run(daemon.clone()));
    }
    if cfg.dbus.address.is_empty() {
        return Ok(None);
    }
    Ok(Some(
        airlock::dbus::serve(daemon.clone(), &cfg.dbus.address)
            .await
            .map_err(|e| anyhow::anyhow!("{}", airlock::error::chain(&e)))
            .context("the D-Bus admin API is configured (dbus.address) but cannot start; is the bus up, and does its policy let airlockd own org.airlock.Airlock1?")?,
    ))
}

/// Graceful drain: take no new jobs, let running ones finish and report
/// for `shutdown_grace_secs`, then leave the broker.
async fn drain(
    cfg: &Config,
    daemon: &Arc<Scheduler>,
    amqp: Option<&Arc<Amqp>>,
    hydra: Option<&Arc<airlock::hydra_intake::HydraIntake>>,
) {
    daemon.drain();
    airlock::systemd::notify(
        "STOPPING=1\nSTATUS=draining: running jobs finish, queued ones wait\n",
    );
    if let Some(a) = amqp {
        a.stop_consuming().await;
    }
    if hydra.is_some() {
        // Queued steps would only wait out the grace: they are given back
        // (PreparingFailure: the runner retries them elsewhere).
        for r in daemon.runner.store.list().0 {
            if r.source == airlock::job::Source::Hydra && r.state == airlock::job::JobState::Queued
            {
                let _ = daemon.cancel(&r.id);
            }
        }
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
        // A step's job can be done while its outputs still go up.
        let steps = hydra.map_or(0, |h| h.steps());
        if daemon.running() == 0 && !unreported && steps == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if let Some(a) = amqp {
        a.shutdown(daemon, Duration::from_secs(10)).await;
    }
    info!(
        still_running = daemon.running(),
        "stopped; unfinished jobs run again (local) or are redelivered (broker)"
    );
}
