//! The egress policy as data, and the nftables ruleset it becomes. Pure: no
//! I/O; the text is applied by [`crate::nft`] in one transaction.
//!
//! Layout of airlock's own table (`inet airlock`; nothing else is touched):
//! - sets `blocked4` / `blocked6`: private, local and special ranges;
//! - map `jobs_fwd` / `jobs_in`: TAP name → `jump` to the job's chains;
//! - base chains `forward`, `input` (filter) and `postrouting` (nat), which
//!   send a TAP's traffic to its job's chains and drop what no job claims;
//! - per job: chains `fwd-<slot>` (routed traffic) and `in-<slot>` (traffic
//!   to the host itself), added and removed with the map elements atomically.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::{IpNet, Ipv4Net};
use serde::{Deserialize, Serialize};

pub const TABLE: &str = "airlock";
/// Every per-job TAP is called `<TAP_PREFIX><slot>`.
pub const TAP_PREFIX: &str = "alk";

/// Destinations a fetch-phase VM never reaches (besides the host itself):
/// "this" network, RFC 1918, CGNAT, loopback, link-local (cloud metadata
/// 169.254.169.254 included), IETF protocol assignments, benchmarking,
/// multicast and reserved.
pub const BLOCKED4: &[&str] = &[
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "224.0.0.0/3",
    // Cloud host endpoints outside the ranges above: Azure's WireServer
    // (168.63.129.16: the VM agent, host DNS and health probes; Microsoft
    // documents it as the host node's virtual public IP). The metadata
    // services of AWS, GCP, DigitalOcean, Hetzner, OpenStack and Tencent
    // (169.254.x) are link-local, Alibaba's 100.100.100.200 is CGNAT, Oracle's
    // 192.0.0.192 is in 192.0.0/24, AWS's IPv6 fd00:ec2::254 is ULA.
    "168.63.129.16/32",
];
/// Loopback, unspecified, IPv4-mapped, ULA, link-local, multicast.
pub const BLOCKED6: &[&str] = &[
    "::/127",
    "::ffff:0:0/96",
    "fc00::/7",
    "fe80::/10",
    "ff00::/8",
];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("address pool {0} is too small or not IPv4")]
    Pool(String),
    #[error("job slot {0} is outside the address pool")]
    Slot(u32),
}
pub type Result<T> = std::result::Result<T, Error>;

/// What the operator allows; see docs/configuration.md `[network]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    /// Per-job /30 links are carved from this pool.
    pub pool: Ipv4Net,
    /// Resolvers the guest uses; allowed on port 53 even when private.
    pub dns: Vec<IpAddr>,
    /// TCP ports on the host itself a guest may reach via its gateway
    /// (e.g. a local substituter).
    pub allow_host_ports: Vec<u16>,
    /// Extra destinations allowed even if private: `"10.1.2.3/32"` or
    /// `"10.1.2.0/24:5000"` (TCP port).
    pub allow: Vec<String>,
    /// Egress limit per job in kbytes/s (0 = none).
    pub rate_limit_kbytes: u32,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            pool: "10.213.0.0/16".parse().expect("valid"),
            dns: vec![
                IpAddr::V4(Ipv4Addr::new(1, 1, 1, 1)),
                IpAddr::V4(Ipv4Addr::new(9, 9, 9, 9)),
            ],
            allow_host_ports: vec![],
            allow: vec![],
            rate_limit_kbytes: 0,
        }
    }
}

/// One job's link: a /30 with the host at .1 and the guest at .2.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobNet {
    pub slot: u32,
    pub tap: String,
    pub host: Ipv4Addr,
    pub guest: Ipv4Addr,
    pub prefix_len: u8,
}

impl JobNet {
    /// The slot-th /30 of the pool.
    pub fn new(pool: &Ipv4Net, slot: u32) -> Result<JobNet> {
        if pool.prefix_len() > 29 {
            return Err(Error::Pool(pool.to_string()));
        }
        let slots = 1u64 << (30 - pool.prefix_len());
        if u64::from(slot) >= slots {
            return Err(Error::Slot(slot));
        }
        let base = u32::from(pool.network()) + slot * 4;
        Ok(JobNet {
            slot,
            tap: format!("{TAP_PREFIX}{slot}"),
            host: Ipv4Addr::from(base + 1),
            guest: Ipv4Addr::from(base + 2),
            prefix_len: 30,
        })
    }

    pub fn slots(pool: &Ipv4Net) -> u32 {
        if pool.prefix_len() > 29 {
            0
        } else {
            (1u64 << (30 - pool.prefix_len())).min(u64::from(u32::MAX)) as u32
        }
    }
}

/// An `allow` entry parsed: network and optional TCP port. Forms:
/// `10.1.2.0/24`, `10.1.2.3`, `10.1.2.0/24:5000`, `fd00::/8`, `[fd00::1]:5000`.
fn parse_allow(s: &str) -> Option<(IpNet, Option<u16>)> {
    let (net, port) = if let Some(rest) = s.strip_prefix('[') {
        let (n, p) = rest.split_once("]:")?;
        (n, Some(p.parse().ok()?))
    } else if s.matches(':').count() == 1 {
        let (n, p) = s.split_once(':')?;
        (n, Some(p.parse().ok()?))
    } else {
        (s, None)
    };
    let net: IpNet = net
        .parse()
        .or_else(|_| net.parse::<IpAddr>().map(IpNet::from))
        .ok()?;
    Some((net, port))
}

impl Policy {
    /// Invalid `allow` entries, for config checking.
    pub fn bad_allow_entries(&self) -> Vec<String> {
        self.allow
            .iter()
            .filter(|a| parse_allow(a).is_none())
            .cloned()
            .collect()
    }

    fn allow_rules(&self, out: &mut String) {
        for a in &self.allow {
            let Some((net, port)) = parse_allow(a) else {
                continue;
            };
            let fam = if net.addr().is_ipv4() { "ip" } else { "ip6" };
            match port {
                Some(p) => {
                    let _ = writeln!(out, "    {fam} daddr {net} tcp dport {p} accept");
                }
                None => {
                    let _ = writeln!(out, "    {fam} daddr {net} accept");
                }
            }
        }
        for d in &self.dns {
            let fam = if d.is_ipv4() { "ip" } else { "ip6" };
            let _ = writeln!(
                out,
                "    {fam} daddr {d} meta l4proto {{ tcp, udp }} th dport 53 accept"
            );
        }
    }

    /// The table with its sets, maps and base chains. Applying it replaces
    /// any previous airlock table (stale jobs of a crashed daemon included).
    pub fn base_ruleset(&self) -> String {
        self.base_ruleset_for(true)
    }

    /// [`Policy::base_ruleset`]; with `only_jobs_forward`, forwarded traffic
    /// that neither enters nor leaves a job TAP is dropped: the host was not
    /// routing before airlock turned forwarding on, and must not become a
    /// router for its LAN peers now.
    pub fn base_ruleset_for(&self, only_jobs_forward: bool) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "table inet {TABLE}");
        let _ = writeln!(s, "delete table inet {TABLE}");
        let _ = writeln!(s, "table inet {TABLE} {{");
        let _ = writeln!(
            s,
            "  set blocked4 {{ type ipv4_addr; flags interval; elements = {{ {} }} }}",
            BLOCKED4.join(", ")
        );
        let _ = writeln!(
            s,
            "  set blocked6 {{ type ipv6_addr; flags interval; elements = {{ {} }} }}",
            BLOCKED6.join(", ")
        );
        let _ = writeln!(s, "  map jobs_fwd {{ type ifname : verdict; }}");
        let _ = writeln!(s, "  map jobs_in {{ type ifname : verdict; }}");
        // Routed traffic: from a job's TAP to its chain; nothing unsolicited to a TAP.
        let _ = writeln!(s, "  chain forward {{");
        let _ = writeln!(
            s,
            "    type filter hook forward priority filter - 10; policy accept;"
        );
        let _ = writeln!(
            s,
            "    oifname \"{TAP_PREFIX}*\" ct state established,related accept"
        );
        let _ = writeln!(s, "    oifname \"{TAP_PREFIX}*\" counter drop");
        let _ = writeln!(s, "    iifname \"{TAP_PREFIX}*\" iifname vmap @jobs_fwd");
        let _ = writeln!(s, "    iifname \"{TAP_PREFIX}*\" counter drop");
        if only_jobs_forward {
            let _ = writeln!(s, "    meta nfproto ipv4 counter drop comment \"not job traffic: this host routes only for airlock jobs\"");
        }
        let _ = writeln!(s, "  }}");
        // Traffic to the host itself.
        let _ = writeln!(s, "  chain input {{");
        let _ = writeln!(
            s,
            "    type filter hook input priority filter - 10; policy accept;"
        );
        let _ = writeln!(
            s,
            "    iifname \"{TAP_PREFIX}*\" ct state established,related accept"
        );
        let _ = writeln!(s, "    iifname \"{TAP_PREFIX}*\" iifname vmap @jobs_in");
        let _ = writeln!(s, "    iifname \"{TAP_PREFIX}*\" counter drop");
        let _ = writeln!(s, "  }}");
        // Nothing from the host to a TAP but replies.
        let _ = writeln!(s, "  chain output {{");
        let _ = writeln!(
            s,
            "    type filter hook output priority filter - 10; policy accept;"
        );
        let _ = writeln!(
            s,
            "    oifname \"{TAP_PREFIX}*\" ct state established,related accept"
        );
        let _ = writeln!(
            s,
            "    oifname \"{TAP_PREFIX}*\" meta l4proto {{ tcp, udp }} counter drop"
        );
        let _ = writeln!(s, "  }}");
        let _ = writeln!(s, "  chain postrouting {{");
        let _ = writeln!(
            s,
            "    type nat hook postrouting priority srcnat; policy accept;"
        );
        let _ = writeln!(
            s,
            "    ip saddr {} oifname != \"{TAP_PREFIX}*\" masquerade",
            self.pool
        );
        let _ = writeln!(s, "  }}");
        let _ = writeln!(s, "}}");
        s
    }

    /// Add one job's chains and map elements (one transaction).
    pub fn add_job(&self, j: &JobNet) -> String {
        let n = j.slot;
        let mut s = String::new();
        let _ = writeln!(s, "add chain inet {TABLE} fwd-{n}");
        let _ = writeln!(s, "add chain inet {TABLE} in-{n}");
        let mut fwd = String::new();
        // Anything but the job's own source address is spoofed; a job has
        // no IPv6 address at all, so any IPv6 from it is too.
        let _ = writeln!(fwd, "    meta nfproto ipv6 counter drop");
        let _ = writeln!(fwd, "    ip saddr != {} counter drop", j.guest);
        if self.rate_limit_kbytes > 0 {
            let _ = writeln!(
                fwd,
                "    limit rate over {} kbytes/second counter drop",
                self.rate_limit_kbytes
            );
        }
        self.allow_rules(&mut fwd);
        let _ = writeln!(
            fwd,
            "    ip daddr @blocked4 counter reject with icmpx admin-prohibited"
        );
        let _ = writeln!(
            fwd,
            "    ip6 daddr @blocked6 counter reject with icmpx admin-prohibited"
        );
        let _ = writeln!(
            fwd,
            "    fib daddr type local counter reject with icmpx admin-prohibited"
        );
        let _ = writeln!(fwd, "    meta nfproto ipv4 accept");
        let _ = writeln!(fwd, "    counter reject with icmpx admin-prohibited");
        let mut inp = String::new();
        let _ = writeln!(inp, "    meta nfproto ipv6 counter drop");
        let _ = writeln!(inp, "    ip saddr != {} counter drop", j.guest);
        for p in &self.allow_host_ports {
            let _ = writeln!(inp, "    ip daddr {} tcp dport {p} accept", j.host);
        }
        for d in &self.dns {
            if *d == IpAddr::V4(j.host) {
                let _ = writeln!(
                    inp,
                    "    ip daddr {d} meta l4proto {{ tcp, udp }} th dport 53 accept"
                );
            }
        }
        let _ = writeln!(inp, "    meta l4proto {{ tcp, udp }} counter reject");
        let _ = writeln!(inp, "    counter drop");
        let _ = writeln!(s, "table inet {TABLE} {{\n  chain fwd-{n} {{\n{fwd}  }}\n  chain in-{n} {{\n{inp}  }}\n}}");
        let _ = writeln!(
            s,
            "add element inet {TABLE} jobs_fwd {{ \"{}\" : jump fwd-{n} }}",
            j.tap
        );
        let _ = writeln!(
            s,
            "add element inet {TABLE} jobs_in {{ \"{}\" : jump in-{n} }}",
            j.tap
        );
        s
    }

    /// Remove one job's map elements and chains (one transaction).
    pub fn remove_job(&self, j: &JobNet) -> String {
        let n = j.slot;
        format!(
            "delete element inet {TABLE} jobs_fwd {{ \"{tap}\" }}\n\
             delete element inet {TABLE} jobs_in {{ \"{tap}\" }}\n\
             flush chain inet {TABLE} fwd-{n}\n\
             delete chain inet {TABLE} fwd-{n}\n\
             flush chain inet {TABLE} in-{n}\n\
             delete chain inet {TABLE} in-{n}\n",
            tap = j.tap
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_disjoint_30s() {
        let pool: Ipv4Net = "10.213.0.0/16".parse().unwrap();
        let a = JobNet::new(&pool, 0).unwrap();
        let b = JobNet::new(&pool, 1).unwrap();
        assert_eq!(
            (a.host, a.guest),
            ("10.213.0.1".parse().unwrap(), "10.213.0.2".parse().unwrap())
        );
        assert_eq!(
            (b.host, b.guest),
            ("10.213.0.5".parse().unwrap(), "10.213.0.6".parse().unwrap())
        );
        assert_eq!(a.tap, "alk0");
        assert_eq!(JobNet::slots(&pool), 16384);
        assert!(JobNet::new(&pool, 16384).is_err());
        assert!(JobNet::new(&"10.0.0.0/30".parse().unwrap(), 0).is_err());
    }

    #[test]
    fn every_private_range_is_blocked() {
        let blocked: Vec<Ipv4Net> = BLOCKED4.iter().map(|s| s.parse().unwrap()).collect();
        for a in [
            "10.99.0.10",
            "169.254.169.254",
            "192.168.1.1",
            "172.16.5.5",
            "127.0.0.1",
            "100.64.1.1",
            "224.0.0.1",
            "10.213.0.6",
            "168.63.129.16",
            "100.100.100.200",
            "192.0.0.192",
        ] {
            let ip: Ipv4Addr = a.parse().unwrap();
            assert!(blocked.iter().any(|n| n.contains(&ip)), "{a} not blocked");
        }
        for a in ["203.0.113.10", "1.1.1.1", "151.101.1.1"] {
            let ip: Ipv4Addr = a.parse().unwrap();
            assert!(!blocked.iter().any(|n| n.contains(&ip)), "{a} blocked");
        }
    }

    #[test]
    fn job_rules_reference_only_the_job() {
        let p = Policy {
            allow_host_ports: vec![5000],
            allow: vec!["10.1.2.0/24:8080".into(), "192.168.9.9".into()],
            ..Policy::default()
        };
        assert!(p.bad_allow_entries().is_empty());
        let j = JobNet::new(&p.pool, 7).unwrap();
        let add = p.add_job(&j);
        assert!(add.contains("chain fwd-7"));
        assert!(add.contains("ip daddr 10.213.0.29 tcp dport 5000 accept"));
        assert!(add.contains("ip daddr 10.1.2.0/24 tcp dport 8080 accept"));
        assert!(add.contains("ip daddr 192.168.9.9/32 accept"));
        assert!(add.contains("\"alk7\" : jump fwd-7"));
        // IPv6 from a job (which has no IPv6 address) is dropped first, in
        // both of its chains, before any allow rule.
        for chain in ["fwd-7 {", "in-7 {"] {
            let body = &add[add.find(chain).unwrap()..];
            let first = body.lines().nth(1).unwrap().trim();
            assert_eq!(first, "meta nfproto ipv6 counter drop", "{chain}");
        }
        // Forwarding for others: dropped unless the host was routing before.
        assert!(p
            .base_ruleset_for(true)
            .contains("counter drop comment \"not job traffic"));
        assert!(!p.base_ruleset_for(false).contains("not job traffic"));
        let rm = p.remove_job(&j);
        assert!(
            rm.contains("delete chain inet airlock fwd-7")
                && rm.contains("delete chain inet airlock in-7")
        );
        let bad = Policy {
            allow: vec!["not-an-ip".into()],
            ..Policy::default()
        };
        assert_eq!(bad.bad_allow_entries(), vec!["not-an-ip".to_string()]);
    }
}
