//! airlock's per-job network for the fetch phase.
//!
//! - [`policy`]: the egress policy as data and the nftables ruleset it
//!   becomes (pure);
//! - [`tap`]: TAP devices (TUN ioctl + rtnetlink);
//! - [`nft`]: applies rulesets atomically;
//! - [`Network`]: hands out one /30 + TAP + chains per job and takes them
//!   back, and cleans up after a crash at start-up.

pub mod nft;
pub mod policy;
pub mod tap;

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Instant;

use tracing::{info, warn};

pub use policy::{JobNet, Policy};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open a netlink socket")]
    Netlink(#[source] std::io::Error),
    #[error(transparent)]
    Tap(#[from] tap::Error),
    #[error(transparent)]
    Nft(#[from] nft::Error),
    #[error(transparent)]
    Policy(#[from] policy::Error),
    #[error("all {0} job network slots are in use")]
    Exhausted(u32),
    #[error("cannot enable IPv4 forwarding")]
    Forwarding(#[source] std::io::Error),
    #[error("invalid network.allow entries: {0:?}")]
    BadAllow(Vec<String>),
}
pub type Result<T> = std::result::Result<T, Error>;

/// Whether this network namespace forwarded IPv4 before airlock first
/// turned forwarding on in it (since boot). Remembered in
/// `/run/airlock/ip_forward-before-<netns inode>` (tmpfs: gone at reboot,
/// as the sysctl is), so a restarted airlockd does not mistake its own
/// setting for the operator's. Keyed by the *calling thread's* namespace
/// (`/proc/thread-self`; `/proc/self` is the thread-group leader's): the
/// sysctl read below is the thread's too, and two threads in two namespaces
/// must not share one memo.
fn forwarding_before_airlock() -> std::io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let ns = std::fs::metadata("/proc/thread-self/ns/net")?.ino();
    let dir = std::path::Path::new("/run/airlock");
    let memo = dir.join(format!("ip_forward-before-{ns}"));
    if let Ok(v) = std::fs::read_to_string(&memo) {
        return Ok(v.trim() == "1");
    }
    let now = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")?;
    std::fs::create_dir_all(dir)?;
    // Atomically: a crash never leaves an empty memo.
    let tmp = dir.join(format!("ip_forward-before-{ns}.tmp-{}", std::process::id()));
    std::fs::write(&tmp, now.trim())?;
    std::fs::rename(&tmp, &memo)?;
    Ok(now.trim() == "1")
}

pub struct Network {
    policy: Policy,
    handle: rtnetlink::Handle,
    used: Mutex<BTreeSet<u32>>,
    tap_owner: Option<(u32, u32)>,
}

impl Network {
    /// Open netlink, enable forwarding, remove whatever a previous run left
    /// (TAPs named `alk*`, airlock's nftables table) and install the table.
    pub async fn init(policy: Policy) -> Result<Network> {
        let bad = policy.bad_allow_entries();
        if !bad.is_empty() {
            return Err(Error::BadAllow(bad));
        }
        let (conn, handle, _) = rtnetlink::new_connection().map_err(Error::Netlink)?;
        tokio::spawn(conn);
        let n = Network {
            policy,
            handle,
            used: Mutex::new(BTreeSet::new()),
            tap_owner: None,
        };
        n.cleanup().await?;
        let was_routing = forwarding_before_airlock().map_err(Error::Forwarding)?;
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").map_err(Error::Forwarding)?;
        nft::apply(&n.policy.base_ruleset_for(!was_routing)).await?;
        info!(pool = %n.policy.pool, host_was_routing = was_routing, "job network ready: IPv4 forwarding on, nftables table inet airlock installed");
        if was_routing {
            info!("IPv4 forwarding was on before airlock: the operator's own forwarding is left as it is");
        } else {
            info!("IPv4 forwarding was off before airlock: only job traffic is forwarded");
        }
        Ok(n)
    }

    /// Remove every airlock TAP and the airlock table.
    pub async fn cleanup(&self) -> Result<()> {
        for name in tap::list(&self.handle, policy::TAP_PREFIX).await? {
            warn!(tap = %name, "removing TAP device left by a previous run");
            tap::delete(&self.handle, &name).await?;
        }
        let t = policy::TABLE;
        nft::apply(&format!("table inet {t}\ndelete table inet {t}\n")).await?;
        Ok(())
    }

    /// Job TAPs are owned by this (uid, gid): the user the VMM runs as.
    pub fn set_tap_owner(&mut self, owner: Option<(u32, u32)>) {
        self.tap_owner = owner;
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// A /30, a TAP and the job's chains. Undone completely on error.
    pub async fn setup(&self) -> Result<JobNet> {
        let t0 = Instant::now();
        let slot = {
            let mut used = self.used.lock().expect("lock");
            let max = JobNet::slots(&self.policy.pool);
            let slot = (0..max)
                .find(|s| !used.contains(s))
                .ok_or(Error::Exhausted(max))?;
            used.insert(slot);
            slot
        };
        let res = self.setup_slot(slot).await;
        match &res {
            Ok(j) => {
                info!(tap = %j.tap, guest = %j.guest, ms = t0.elapsed().as_secs_f64() * 1000.0, "job network up")
            }
            Err(_) => {
                self.used.lock().expect("lock").remove(&slot);
            }
        }
        res
    }

    async fn setup_slot(&self, slot: u32) -> Result<JobNet> {
        let j = JobNet::new(&self.policy.pool, slot)?;
        let _ = tap::delete(&self.handle, &j.tap).await;
        tap::create(&j.tap, self.tap_owner)?;
        // The rules match the TAP by name, so both can be set up at once;
        // the VM starts only after both are done.
        let rules = self.policy.add_job(&j);
        let (link, chains) = tokio::join!(
            tap::configure(&self.handle, &j.tap, j.host, j.prefix_len),
            nft::apply(&rules)
        );
        if let Err(e) = link.map_err(Error::from).and(chains.map_err(Error::from)) {
            let _ = tap::delete(&self.handle, &j.tap).await;
            let _ = nft::apply(&self.policy.remove_job(&j)).await;
            return Err(e);
        }
        Ok(j)
    }

    /// Remove the job's chains and TAP; never fails the job.
    pub async fn teardown(&self, j: &JobNet) {
        let t0 = Instant::now();
        // The VM is gone: chains and link go at the same time.
        let rules = self.policy.remove_job(j);
        let (chains, link) = tokio::join!(nft::apply(&rules), tap::delete(&self.handle, &j.tap));
        if let Err(e) = chains {
            warn!(tap = %j.tap, error = %e, "cannot remove the job's nftables chains");
        }
        if let Err(e) = link {
            warn!(tap = %j.tap, error = %e, "cannot delete the job's TAP");
        }
        self.used.lock().expect("lock").remove(&j.slot);
        info!(tap = %j.tap, ms = t0.elapsed().as_secs_f64() * 1000.0, "job network down");
    }
}
