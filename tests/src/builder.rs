//! [`DaemonBuilder`]: an airlockd for a test, configured through the typed
//! [`Config`] the daemon itself parses. A test changes fields
//! ([`DaemonBuilder::with`]) or merges a TOML fragment onto them
//! ([`DaemonBuilder::toml`], checked by the same strict parser: a mistyped
//! key fails the test where it is written); the file airlockd reads is the
//! serialised result.

use std::path::PathBuf;

use airlock::config::{Accel, Backend, Config, GithubConfig};

use crate::{cloud_hypervisor_binary, image_dir, new_netns, Daemon};

/// Where airlockd runs.
enum Netns {
    /// A fresh namespace of its own (its job networks and nftables table
    /// live there), deleted with the daemon.
    Own,
    /// A namespace the test built (a topology with a stand-in internet).
    Named(String),
    /// The machine's own, with the fetch-phase network off (the test talks
    /// to airlockd's listeners on 127.0.0.1; nothing is changed there).
    Host,
}

pub struct DaemonBuilder {
    cfg: Config,
    args: Vec<String>,
    netns: Netns,
    env: Vec<(String, String)>,
}

impl Daemon {
    /// airlockd with the tests' defaults: one job at a time, TCG (or
    /// `AIRLOCK_TEST_ACCEL`), the suite's guest image, small disks, nothing
    /// substituted from the real cache.nixos.org, in a network namespace of
    /// its own. `AIRLOCK_BACKEND=cloud-hypervisor` runs it under
    /// cloud-hypervisor (a host with real KVM; docs/operations.md);
    /// `AIRLOCK_TEST_TEMPLATE=0` boots every VM cold (`vm.template = false`).
    pub fn builder() -> DaemonBuilder {
        let mut cfg = Config {
            max_jobs: 1,
            ..Config::default()
        };
        cfg.vm.accel = match std::env::var("AIRLOCK_TEST_ACCEL").as_deref() {
            Ok("kvm") => Accel::Kvm,
            Ok("auto") => Accel::Auto,
            _ => Accel::Tcg,
        };
        cfg.vm.image_dir = image_dir();
        // The suite once with every VM booted cold (issue 29: templates
        // are the default, a cold boot the fallback that must keep working).
        if std::env::var("AIRLOCK_TEST_TEMPLATE").as_deref() == Ok("0") {
            cfg.vm.template = false;
        }
        cfg.vm.nix_disk_mib = 1024;
        cfg.vm.export_disk_mib = 256;
        if std::env::var("AIRLOCK_BACKEND").as_deref() == Ok("cloud-hypervisor") {
            cfg.vm.backend = Backend::CloudHypervisor;
            if let Some(ch) = cloud_hypervisor_binary() {
                cfg.vm.cloud_hypervisor = ch.display().to_string();
            }
        }
        cfg.nix.substituters = vec![];
        DaemonBuilder {
            cfg,
            args: vec![],
            netns: Netns::Own,
            env: vec![],
        }
    }
}

impl DaemonBuilder {
    /// Change the configuration's typed fields.
    pub fn with(mut self, f: impl FnOnce(&mut Config)) -> Self {
        f(&mut self.cfg);
        self
    }

    /// Merge a TOML fragment (top-level keys, then tables) onto the
    /// configuration, table by table; parsed as airlockd parses its file.
    pub fn toml(mut self, fragment: &str) -> Self {
        let mut base = toml::Table::try_from(&self.cfg).expect("the config serialises");
        let over: toml::Table = fragment
            .parse()
            .unwrap_or_else(|e| panic!("test config fragment is not TOML: {e}\n{fragment}"));
        merge(&mut base, over);
        self.cfg = toml::Value::Table(base)
            .try_into()
            .unwrap_or_else(|e| panic!("test config fragment is not airlockd's: {e}\n{fragment}"));
        self
    }

    /// Run in the existing network namespace `name`.
    pub fn netns(mut self, name: &str) -> Self {
        self.netns = Netns::Named(name.to_owned());
        self
    }

    /// Run in the machine's network namespace, fetch-phase network off.
    pub fn host_network(mut self) -> Self {
        self.netns = Netns::Host;
        self.cfg.network.enabled = false;
        self
    }

    /// Take jobs from the broker at `url` as `identity`, for x86_64-linux
    /// (by flags, as an operator's unit does). Broker jobs are fetched only
    /// from `github.clone_url`: unless the test sets it, the fixture
    /// repository that `fixture_repo(d.dir.path(), …)` makes.
    pub fn amqp(self, url: &str, identity: &str) -> Self {
        self.args(&[
            "--amqp-url",
            url,
            "--identity",
            identity,
            "--system",
            "x86_64-linux",
        ])
    }

    /// Extra airlockd flags.
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|s| s.to_string()));
        self
    }

    /// Extra environment of airlockd (e.g. `AIRLOCK_FAULT_PAUSE`), kept for
    /// every [`Daemon::spawn`].
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Write the configuration and start airlockd; returns once its socket
    /// is there.
    pub fn start(mut self) -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("airlock-e2e-")
            .tempdir()
            .expect("tempdir");
        let netns = match self.netns {
            Netns::Own => Some(new_netns("d")),
            Netns::Named(n) => Some(n),
            Netns::Host => None,
        };
        let mut tun_node = None;
        if !self.cfg.vm.user.is_empty() {
            // vm.user must reach state_dir (the NixOS module's
            // StateDirectoryMode=0711 does this on a builder).
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
            if netns.is_some() {
                use nix::sys::stat::{makedev, mknod, Mode, SFlag};
                let node = dir.path().join("tun");
                mknod(&node, SFlag::S_IFCHR, Mode::empty(), makedev(10, 200)).unwrap();
                std::fs::set_permissions(&node, std::fs::Permissions::from_mode(0o666)).unwrap();
                tun_node = Some(node);
            }
        }
        if self.args.iter().any(|a| a == "--amqp-url")
            && self.cfg.github.clone_url == GithubConfig::default().clone_url
        {
            self.cfg.github.clone_url = dir.path().join("repo").display().to_string();
        }
        let config: PathBuf = dir.path().join("airlock.toml");
        let text = toml::to_string(&self.cfg).expect("the config serialises");
        std::fs::write(&config, text).unwrap();
        let mut d = Daemon {
            dir,
            child: None,
            config,
            args: self.args,
            netns,
            env: self.env,
            tun_node,
        };
        d.spawn();
        d
    }
}

/// `over` onto `base`: tables merge key by key, anything else replaces.
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fragment_merges_onto_the_typed_defaults() {
        let b = Daemon::builder()
            .toml("max_jobs = 2\n[vm]\nmemory_mib = 3072\n[limits]\njob_timeout_secs = 9\n")
            .with(|c| c.vm.user = crate::VM_USER.into());
        assert_eq!(b.cfg.max_jobs, 2);
        assert_eq!(b.cfg.vm.memory_mib, 3072);
        assert_eq!(b.cfg.vm.nix_disk_mib, 1024, "the test default stays");
        assert_eq!(b.cfg.limits.job_timeout_secs, 9);
        assert_eq!(b.cfg.vm.user, crate::VM_USER);
        assert!(b.cfg.nix.substituters.is_empty());
        // What airlockd reads back is the same configuration.
        let text = toml::to_string(&b.cfg).unwrap();
        let back: Config = toml::from_str(&text).unwrap();
        back.check().unwrap();
        assert_eq!(back.vm.memory_mib, 3072);
    }

    #[test]
    #[should_panic(expected = "not airlockd's")]
    fn a_mistyped_key_fails_where_it_is_written() {
        let _ = Daemon::builder().toml("[vm]\nmemroy_mib = 1\n");
    }
}
