//! airlockd: the builder daemon. Parses flags, loads config, wires the
//! runner and the API together; everything else lives in the library.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tracing::info;

use airlock::config::{Backend, Config};
use airlock::daemon::{sd_notify_ready, Daemon};
use airlock::job::JobStore;
use airlock::runner::{NoSink, Runner};
use airlock::vm::qemu::{probe_accel, Qemu};

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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("AIRLOCK_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let mut cfg = Config::load(args.config.as_deref())?;
    if let Some(s) = args.state_dir {
        cfg.state_dir = s;
    }
    if let Some(s) = args.socket {
        cfg.socket = s;
    }
    cfg.check()?;
    std::fs::create_dir_all(&cfg.state_dir)
        .with_context(|| format!("cannot create state dir {}", cfg.state_dir.display()))?;
    let Backend::Qemu = cfg.vm.backend;
    let img = &cfg.vm.image_dir;
    let (accel, why) = probe_accel(
        &cfg.vm.qemu,
        &cfg.vm.machine,
        cfg.vm.accel,
        &img.join("vmlinux"),
        &img.join("initrd.gz"),
        &cfg.state_dir.join("probe"),
        Duration::from_secs(cfg.vm.probe_timeout_secs),
    )
    .await;
    info!(%accel, reason = %why, requested = ?cfg.vm.accel, "VM accelerator chosen");
    let backend = Arc::new(Qemu {
        binary: cfg.vm.qemu.clone(),
        machine: cfg.vm.machine.clone(),
        accel,
    });
    let cfg = Arc::new(cfg);
    let runner = Arc::new(Runner {
        store: JobStore::new(cfg.jobs_dir()),
        cfg: cfg.clone(),
        backend,
        sink: Arc::new(NoSink),
    });
    info!(state_dir = %cfg.state_dir.display(), max_jobs = cfg.max_jobs, identity = %cfg.identity, "airlockd starting");
    let daemon = Daemon::start(runner)?;
    let socket = cfg.socket.clone();
    let server = tokio::spawn(async move { daemon.serve(&socket).await });
    sd_notify_ready();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = server => { r??; }
        _ = term.recv() => info!("SIGTERM: stopping; unfinished jobs run again at next start"),
        _ = tokio::signal::ctrl_c() => info!("interrupted; unfinished jobs run again at next start"),
    }
    Ok(())
}
