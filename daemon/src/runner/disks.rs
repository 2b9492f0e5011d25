//! The job's disks: the staged input (checkout, `job.json`, the agent),
//! an empty `/nix`, the export area; and the VM spec that attaches them
//! under the serials the guest's init looks for.

use tracing::info;

use super::Runner;
use crate::checkout;
use crate::error::chain as error_chain;
use crate::input::{self, mkfs, sparse_file};
use crate::job::{JobPaths, JobRecord};
use crate::ofborg::Subset;
use crate::vm::{Disk, VmSpec};
use airlock_network_policy::JobNet;
use airlock_wire::{disk, BootParams, GuestJob, Phase, WIRE_VERSION};

impl Runner {
    pub(super) async fn make_disks(
        &self,
        rec: &mut JobRecord,
        paths: &JobPaths,
    ) -> Result<(), String> {
        let stage = paths.stage();
        let (Some(base), Some(merged)) = (&rec.base_commit, &rec.merged_commit) else {
            return Err("no merged commit to stage".into());
        };
        let bases = input::Bases::from_config(&self.cfg);
        let base_img = paths.base_img();
        let used = input::stage(
            &paths.checkout(),
            base,
            merged,
            &stage,
            bases.as_ref().map(|b| (b, base_img.as_path())),
            &checkout::Limits::from_config(&self.cfg.limits),
            crate::review::Review::for_job(&rec.job, &self.cfg.review).is_some(),
        )
        .await
        .map_err(|e| format!("cannot stage the checkout: {}", error_chain(&e)))?;
        info!(input = %used, "input staged");
        rec.input = Some(used);
        let _ = std::fs::remove_dir_all(paths.checkout());
        let gj = GuestJob {
            version: WIRE_VERSION,
            phase: Phase::All,
            attrs: rec.job.attrs.clone(),
            system: self.cfg.system.clone(),
            nix_file: match rec.job.subset {
                Some(Subset::NixOS) => "nixos/release.nix".into(),
                _ => "default.nix".into(),
            },
            build_timeout_secs: self.cfg.limits.build_timeout_secs,
            max_silent_secs: self.cfg.limits.max_silent_secs,
            dns: self.guest_dns(),
            substituter: self
                .substituter
                .as_ref()
                .map(|_| airlock_wire::GuestSubstituter {
                    port: self.cfg.substituter.port,
                    trusted_public_keys: self.cfg.nix.trusted_public_keys.clone(),
                }),
            review: crate::review::Review::for_job(&rec.job, &self.cfg.review)
                .filter(|_| rec.refetch.is_none())
                .map(|r| r.guest(merged, &self.cfg.system)),
            refetch: rec
                .refetch
                .as_ref()
                .map(|r| r.paths.iter().map(|p| p.path.clone()).collect()),
            step: None,
        };
        self.finish_disks(paths, &stage, &gj).await
    }

    /// The rest of every job's disks: `job.json` and the agent into the
    /// staged tree, the input disk made from it (the tree then goes), an
    /// empty `/nix` and the export area.
    pub(super) async fn finish_disks(
        &self,
        paths: &JobPaths,
        stage: &std::path::Path,
        gj: &GuestJob,
    ) -> Result<(), String> {
        std::fs::write(
            stage.join("job.json"),
            serde_json::to_vec_pretty(gj).expect("serialises"),
        )
        .map_err(|e| format!("write job.json: {e}"))?;
        self.stage_agent(stage)?;
        input::tree_disk(&paths.input_img(), stage, "airlock-in")
            .await
            .map_err(|e| e.to_string())?;
        let _ = std::fs::remove_dir_all(stage);
        mkfs(
            &paths.nix_img(),
            "airlock-nix",
            self.cfg.vm.nix_disk_mib,
            None,
        )
        .await?;
        sparse_file(&paths.export_img(), self.cfg.vm.export_disk_mib)
    }

    /// The resolvers the fetch phase's guest uses.
    pub(super) fn guest_dns(&self) -> Vec<String> {
        self.cfg
            .network
            .policy
            .dns
            .iter()
            .map(|d| d.to_string())
            .collect()
    }

    /// The guest agent, executable, in the input disk's tree.
    fn stage_agent(&self, stage: &std::path::Path) -> Result<(), String> {
        let agent = self.cfg.agent_path();
        let staged = stage.join("airlock-agent");
        std::fs::copy(&agent, &staged)
            .map_err(|e| format!("guest agent {} unusable: {e}", agent.display()))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| format!("chmod agent: {e}"))
    }

    pub(super) fn spec(
        &self,
        rec: &JobRecord,
        paths: &JobPaths,
        phase: Phase,
        net: Option<&JobNet>,
    ) -> VmSpec {
        let img = &self.cfg.vm.image_dir;
        let base = paths.base_img().exists();
        let boot = BootParams {
            phase,
            net: net.map(|n| (format!("{}/{}", n.guest, n.prefix_len), n.host.to_string())),
        };
        VmSpec {
            name: format!("airlock-{}-{:?}", rec.id, phase).to_lowercase(),
            kernel: self.kernel.current(),
            initrd: img.join("initrd.gz"),
            cmdline: format!(
                "console=ttyS0 quiet panic=-1 {}{}",
                boot.to_cmdline(),
                if base { " airlock.base=1" } else { "" }
            ),
            memory_mib: self.cfg.vm.memory_mib,
            vcpus: self.cfg.vm.vcpus,
            disks: vec![
                Disk {
                    path: img.join("rootfs.img"),
                    serial: disk::ROOT.into(),
                    readonly: true,
                },
                Disk {
                    path: paths.nix_img(),
                    serial: disk::NIX.into(),
                    readonly: false,
                },
                Disk {
                    path: paths.input_img(),
                    serial: disk::INPUT.into(),
                    readonly: true,
                },
                Disk {
                    path: paths.export_img(),
                    serial: disk::EXPORT.into(),
                    readonly: false,
                },
            ]
            .into_iter()
            .chain(base.then(|| Disk {
                path: paths.base_img(),
                serial: disk::BASE.into(),
                readonly: true,
            }))
            .collect(),
            console_log: paths.console_log(),
            channel_log: paths.channel_log(),
            pidfile: paths.pidfile(),
            tap: net.map(|n| n.tap.clone()),
            shares: vec![],
            adopt: self.supervisor.adopter(&rec.id),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::input;

    /// A tree of many small files (as nixpkgs is: 53 000 files in 440 MB)
    /// fits its input disk: inodes are counted, not guessed from bytes.
    #[tokio::test]
    pub(super) async fn the_input_disk_fits_a_tree_of_many_small_files() {
        let t = tempfile::tempdir().unwrap();
        let stage = t.path().join("stage");
        for d in 0..40 {
            let dir = stage.join(format!("pkgs/d{d}"));
            std::fs::create_dir_all(&dir).unwrap();
            for f in 0..500 {
                std::fs::write(dir.join(format!("f{f}.nix")), "{ }:\n").unwrap();
            }
        }
        let img = t.path().join("input.img");
        input::tree_disk(&img, &stage, "airlock-in").await.unwrap();
        // The image holds every file (debugfs lists one directory).
        let out = std::process::Command::new("debugfs")
            .args(["-R", "ls -l /pkgs/d39"])
            .arg(&img)
            .output()
            .unwrap();
        let listing = String::from_utf8_lossy(&out.stdout);
        assert!(listing.contains("f499.nix"), "{listing}");
        assert!(std::fs::metadata(&img).unwrap().len() < 200 << 20);
    }
}
