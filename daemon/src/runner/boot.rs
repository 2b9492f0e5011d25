//! One VM boot of a job: start it in the job's unit, watch it every 100 ms
//! (cancel, output flood, an agent that never starts), and take what it
//! said into the job record.

use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::follow::{FileTail, Follower};
use super::Runner;
use crate::job::{JobPaths, JobRecord};
use crate::vm::{VmExit, VmSpec};
use airlock_network_policy::JobNet;
use airlock_wire::Phase;

impl Runner {
    /// Was the job's unit stopped by an admin (`systemctl stop`)? Then the
    /// job is cancelled, as with `airlockctl cancel`.
    pub(super) async fn stopped_by_systemd(&self, rec: &JobRecord) -> bool {
        if !self.supervisor.stopped_from_outside(&rec.id).await {
            return false;
        }
        if self.control.cancel(&rec.id) != crate::control::Cancel::Again {
            warn!(
                unit = %crate::supervise::unit_name(&rec.id),
                "the job's unit was stopped (systemctl stop): job cancelled"
            );
        }
        true
    }

    pub(super) async fn boot(
        &self,
        rec: &mut JobRecord,
        paths: &JobPaths,
        phase: Phase,
        net: Option<&JobNet>,
        f: &mut Follower,
    ) -> Result<VmExit, String> {
        loop {
            let spec = self.spec(rec, paths, phase, net);
            let exit = self.boot_once(rec, &spec, phase, f).await?;
            // A VM on the trimmed kernel that never started its agent (and
            // was not stopped for another reason): again, on the image's.
            if f.started.is_none()
                && !self.control.is_cancelled(&rec.id)
                && self.kernel.did_not_boot(&spec.kernel)
            {
                let fallback = self.kernel.current();
                warn!(
                    kernel = %spec.kernel.display(),
                    fallback = %fallback.display(),
                    ?exit,
                    "the VM did not start its agent on the trimmed kernel: booting it again on the image's own kernel, as every later VM (vm.kernel)"
                );
                continue;
            }
            return Ok(exit);
        }
    }

    async fn boot_once(
        &self,
        rec: &mut JobRecord,
        spec: &VmSpec,
        phase: Phase,
        f: &mut Follower,
    ) -> Result<VmExit, String> {
        if !self.cfg.vm.image_dir.join("rootfs.img").exists() {
            return Err(format!(
                "guest image not found in {}: run vm-images/guest/build-guest.sh",
                self.cfg.vm.image_dir.display()
            ));
        }
        if self.stopped_by_systemd(rec).await {
            return Ok(VmExit::Killed(crate::control::CANCELLED.into()));
        }
        let _ = std::fs::File::create(&spec.channel_log);
        f.channel = FileTail::default();
        f.started = None;
        f.console = FileTail::default();
        let (cancel_tx, cancel_rx) = tokio::sync::oneshot::channel();
        let timeout = Duration::from_secs(match phase {
            Phase::Fetch => self.cfg.limits.fetch_timeout_secs,
            _ => self.cfg.limits.job_timeout_secs,
        });
        let t0 = Instant::now();
        // When this VM was asked for: with its `agent_started` mark, the
        // VM's start to a running agent (benchmarks, bench/skeleton.sh).
        f.mark("vm_start", t0);
        rec.accel = Some(self.backend.accel().to_owned());
        info!(accel = self.backend.accel(), ?phase, "starting VM");
        let vm = self.backend.run(spec, timeout, cancel_rx);
        tokio::pin!(vm);
        let mut cancel_tx = Some(cancel_tx);
        // Every 10 ms until the agent has started (a restored VM's agent is
        // up in well under a second, and the mark should say when), then
        // every 100 ms.
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        let mut ticks: u64 = 0;
        let exit = loop {
            tokio::select! {
                r = &mut vm => break r.map_err(|e| e.to_string())?,
                _ = tick.tick() => {
                    ticks += 1;
                    if f.started.is_some() && !ticks.is_multiple_of(10) {
                        continue;
                    }
                    if let Some(why) = self.watch(rec, spec, f, t0, cancel_tx.is_none()) {
                        if let Some(tx) = cancel_tx.take() {
                            let _ = tx.send(why);
                        }
                    }
                }
            }
        };
        f.poll(&spec.channel_log, rec, self.sink.as_ref());
        f.poll_console(&spec.console_log);
        // systemd killed the VM because an admin stopped the job's unit.
        let exit = if !self.control.is_cancelled(&rec.id) && self.stopped_by_systemd(rec).await {
            VmExit::Killed(crate::control::CANCELLED.into())
        } else {
            exit
        };
        info!(
            secs = t0.elapsed().as_secs_f64(),
            ?exit,
            ?phase,
            "VM stopped"
        );
        self.take_from_vm(rec, phase, f);
        Ok(exit)
    }

    /// Every 100 ms of a running VM (10 ms until its agent started): follow its channel and console, and
    /// (unless it is `stopping` already) say why it must stop: a cancel, a
    /// flood of output, an agent that never started.
    pub(super) fn watch(
        &self,
        rec: &mut JobRecord,
        spec: &VmSpec,
        f: &mut Follower,
        t0: Instant,
        stopping: bool,
    ) -> Option<String> {
        let mut stop = None;
        if !stopping && self.control.is_cancelled(&rec.id) {
            warn!("cancelled by an administrator; VM stopped");
            stop = Some(crate::control::CANCELLED.to_string());
        }
        // A guest that floods its console or channel is stopped before it
        // fills the host's disk.
        let cap = self.cfg.limits.max_log_bytes;
        for (what, p) in [
            ("console", &spec.console_log),
            ("agent channel", &spec.channel_log),
        ] {
            let len = std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
            if !stopping && len > cap && stop.is_none() {
                warn!(
                    what,
                    bytes = len,
                    cap,
                    "guest output over the limit; VM killed"
                );
                stop = Some(format!(
                    "the guest wrote more than {cap} bytes to its {what} (limits.max_log_bytes)"
                ));
            }
        }
        let was_started = f.started.is_some();
        f.poll(&spec.channel_log, rec, self.sink.as_ref());
        f.poll_console(&spec.console_log);
        if !was_started {
            let boot_limit = Duration::from_secs(self.cfg.limits.boot_timeout_secs);
            if let Some(s) = f.started {
                let secs = (s - t0).as_secs_f64();
                info!(secs, "agent started");
                rec.boot_secs.get_or_insert(secs);
            } else if !stopping && t0.elapsed() > boot_limit && stop.is_none() {
                stop = Some(format!(
                    "VM did not start the agent within {}s",
                    boot_limit.as_secs()
                ));
            }
        }
        stop
    }

    /// What a VM left in its follower goes into the job record: its step
    /// marks (prefixed by phase), the guest's Nix, what it realised.
    pub(super) fn take_from_vm(&self, rec: &mut JobRecord, phase: Phase, f: &mut Follower) {
        let prefix = match phase {
            Phase::Fetch => "fetch:",
            Phase::Build => "build:",
            Phase::All => "",
        };
        for (name, at) in f.marks.drain(..) {
            self.mark_at(rec, &format!("{prefix}{name}"), at);
        }
        if let Some(nix) = f.guest_nix.take() {
            rec.guest_nix = Some(nix);
        }
        if let Some(r) = f.realised.take() {
            rec.realised.get_or_insert_with(Default::default).add(r);
        }
        self.mark(rec, &format!("{prefix}vm_exit"));
    }
}
