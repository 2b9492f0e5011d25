//! The network adapter for real, inside a fresh network namespace of its own
//! (nothing here touches the machine's own network).

use std::time::Instant;

use airlock_network_policy::{nft, tap, Network, Policy};

/// Run `f` on a new thread that lives in a new, empty network namespace.
fn in_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    let ok = std::process::Command::new("sh")
        .args([
            "-c",
            "command -v nft && [ -e /dev/net/tun ] && [ $(id -u) = 0 ]",
        ])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        let msg = "SKIPPED network-policy netns test: needs root, nft and /dev/net/tun";
        if std::env::var("AIRLOCK_REQUIRE_E2E").as_deref() == Ok("1") {
            panic!("{msg}");
        }
        eprintln!("\n!!!!!!!! {msg} !!!!!!!!\n");
        return None;
    }
    Some(
        std::thread::spawn(move || {
            #[allow(unsafe_code)]
            // SAFETY: unshare(2) on this thread only; the thread is ours.
            let rc = unsafe { libc_unshare() };
            assert_eq!(
                rc,
                0,
                "unshare(CLONE_NEWNET): {}",
                std::io::Error::last_os_error()
            );
            f()
        })
        .join()
        .unwrap(),
    )
}

#[allow(unsafe_code)]
unsafe fn libc_unshare() -> i32 {
    extern "C" {
        fn unshare(flags: i32) -> i32;
    }
    const CLONE_NEWNET: i32 = 0x4000_0000;
    unsafe { unshare(CLONE_NEWNET) }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn jobs_get_and_lose_taps_and_chains_and_the_operator_table_survives() {
    in_netns(|| {
        rt().block_on(async {
            let operator = "table inet operator {\n\tchain input {\n\t\ttype filter hook input priority filter; policy accept;\n\t\ttcp dport 2222 counter packets 0 bytes 0 drop\n\t}\n}\n";
            nft::apply(operator).await.unwrap();
            let before = nft::list_table("inet", "operator").await.unwrap();

            let net = Network::init(Policy::default()).await.unwrap();
            let (a, b) = (net.setup().await.unwrap(), net.setup().await.unwrap());
            assert_ne!(a.slot, b.slot);
            let (conn, h, _) = rtnetlink::new_connection().unwrap();
            tokio::spawn(conn);
            let taps = tap::list(&h, "alk").await.unwrap();
            assert_eq!(taps.len(), 2, "{taps:?}");
            let table = nft::list_table("inet", "airlock").await.unwrap();
            assert!(table.contains(&format!("chain fwd-{}", a.slot)) && table.contains(&format!("chain in-{}", b.slot)), "{table}");
            net.teardown(&a).await;
            net.teardown(&b).await;
            assert!(tap::list(&h, "alk").await.unwrap().is_empty());
            let table = nft::list_table("inet", "airlock").await.unwrap();
            assert!(!table.contains("chain fwd-") && !table.contains("chain in-"), "{table}");

            // A crashed daemon's leftovers are removed by the next init.
            let c = net.setup().await.unwrap();
            drop(net);
            let net = Network::init(Policy::default()).await.unwrap();
            assert!(tap::list(&h, "alk").await.unwrap().is_empty(), "stale TAP {}", c.tap);
            assert!(!nft::list_table("inet", "airlock").await.unwrap().contains("chain fwd-"));

            assert_eq!(nft::list_table("inet", "operator").await.unwrap(), before, "operator table changed");

            // Setup + teardown time (the benchmark reads this line).
            let n = 20;
            let (mut up, mut down) = (Vec::new(), Vec::new());
            for _ in 0..n {
                let t0 = Instant::now();
                let j = net.setup().await.unwrap();
                up.push(t0.elapsed().as_secs_f64() * 1000.0);
                let t1 = Instant::now();
                net.teardown(&j).await;
                down.push(t1.elapsed().as_secs_f64() * 1000.0);
            }
            let med = |v: &mut Vec<f64>| {
                v.sort_by(|a, b| a.partial_cmp(b).unwrap());
                v[v.len() / 2]
            };
            println!("BENCH network setup: median {:.1} ms, teardown: median {:.1} ms (n={n})", med(&mut up), med(&mut down));
        })
    });
}

/// This namespace's memo of "forwarding before airlock" (see
/// `Network::init`), removed so the test starts from the real sysctl.
fn forget_forwarding_memo() {
    use std::os::unix::fs::MetadataExt;
    let ino = std::fs::metadata("/proc/thread-self/ns/net").unwrap().ino();
    let _ = std::fs::remove_file(format!("/run/airlock/ip_forward-before-{ino}"));
}

#[test]
fn the_host_forwards_only_job_traffic_unless_it_was_routing_before() {
    // A host that did not route: airlock turns forwarding on for its jobs,
    // and drops forwarded traffic that is not a job's (a LAN peer cannot use
    // the builder as a router).
    in_netns(|| {
        forget_forwarding_memo();
        rt().block_on(async {
            std::fs::write("/proc/sys/net/ipv4/ip_forward", "0").unwrap();
            let _net = Network::init(Policy::default()).await.unwrap();
            let table = nft::list_table("inet", "airlock").await.unwrap();
            assert!(table.contains("not job traffic"), "{table}");
            // A restart does not mistake airlock's own setting for the operator's.
            let _net = Network::init(Policy::default()).await.unwrap();
            let table = nft::list_table("inet", "airlock").await.unwrap();
            assert!(table.contains("not job traffic"), "{table}");
        });
        forget_forwarding_memo();
    });
    // A host that was a router (its operator forwards, with rules of their
    // own): airlock leaves that forwarding alone.
    in_netns(|| {
        forget_forwarding_memo();
        rt().block_on(async {
            std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").unwrap();
            let operator = "table inet operator {\n\tchain forward {\n\t\ttype filter hook forward priority filter; policy accept;\n\t\tiifname \"lo\" counter packets 0 bytes 0 accept\n\t}\n}\n";
            nft::apply(operator).await.unwrap();
            let before = nft::list_table("inet", "operator").await.unwrap();
            let _net = Network::init(Policy::default()).await.unwrap();
            let table = nft::list_table("inet", "airlock").await.unwrap();
            assert!(!table.contains("not job traffic"), "{table}");
            assert_eq!(nft::list_table("inet", "operator").await.unwrap(), before);
        });
        forget_forwarding_memo();
    });
}

// ---------------------------------------------------------------------------
// Packet-level checks: frames written into TAP devices from "the other side"
// (as a guest or a LAN peer would send them), and what comes out.

/// Attach to TAP `name` as its (non-blocking) queue, as a VMM does.
fn attach(name: &str) -> std::fs::File {
    tap::attach(name, true).unwrap()
}

/// `ip ARGS` in this thread's network namespace.
fn ip(args: &str) {
    let out = std::process::Command::new("ip")
        .args(args.split_whitespace())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ip {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn mac_of(dev: &str) -> [u8; 6] {
    let out = std::process::Command::new("ip")
        .args(["-o", "link", "show", "dev", dev])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let hex = text
        .split("link/ether ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no MAC in {text}"));
    let mut m = [0u8; 6];
    for (i, b) in hex.split(':').enumerate() {
        m[i] = u8::from_str_radix(b, 16).unwrap();
    }
    m
}

fn checksum(chunks: &[&[u8]]) -> u16 {
    let mut sum = 0u32;
    for c in chunks {
        for pair in c.chunks(2) {
            let w = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
            sum += u32::from(w);
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

const PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

/// An ICMPv6 echo request in an Ethernet frame to `dst_mac`.
fn ping6(dst_mac: [u8; 6], src: std::net::Ipv6Addr, dst: std::net::Ipv6Addr, id: u16) -> Vec<u8> {
    let mut icmp = vec![128, 0, 0, 0];
    icmp.extend_from_slice(&id.to_be_bytes());
    icmp.extend_from_slice(&1u16.to_be_bytes());
    icmp.extend_from_slice(b"airlock v6 probe");
    let len = (icmp.len() as u32).to_be_bytes();
    let c = checksum(&[&src.octets(), &dst.octets(), &len, &[0, 0, 0, 58], &icmp]);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let mut f = Vec::new();
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&PEER_MAC);
    f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
    f.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
    f.extend_from_slice(&[58, 64]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    f.extend_from_slice(&icmp);
    f
}

/// A UDP datagram carrying `marker` in an Ethernet frame to `dst_mac`.
fn udp4(
    dst_mac: [u8; 6],
    src: std::net::Ipv4Addr,
    dst: std::net::Ipv4Addr,
    marker: &[u8],
) -> Vec<u8> {
    let mut udp = Vec::new();
    udp.extend_from_slice(&4000u16.to_be_bytes());
    udp.extend_from_slice(&4001u16.to_be_bytes());
    udp.extend_from_slice(&((8 + marker.len()) as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]); // no UDP checksum (allowed in IPv4)
    udp.extend_from_slice(marker);
    let mut iph = vec![0x45, 0];
    iph.extend_from_slice(&((20 + udp.len()) as u16).to_be_bytes());
    iph.extend_from_slice(&[0, 1, 0x40, 0, 64, 17, 0, 0]);
    iph.extend_from_slice(&src.octets());
    iph.extend_from_slice(&dst.octets());
    let c = checksum(&[&iph]);
    iph[10..12].copy_from_slice(&c.to_be_bytes());
    let mut f = Vec::new();
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&PEER_MAC);
    f.extend_from_slice(&[0x08, 0x00]);
    f.extend_from_slice(&iph);
    f.extend_from_slice(&udp);
    f
}

/// Read frames from `tap` for up to 2 s; true once one matches.
fn sees(tap: &mut std::fs::File, want: impl Fn(&[u8]) -> bool) -> bool {
    use std::io::Read;
    let deadline = Instant::now() + std::time::Duration::from_secs(2);
    let mut buf = vec![0u8; 65536];
    while Instant::now() < deadline {
        match tap.read(&mut buf) {
            Ok(n) if want(&buf[..n]) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(std::time::Duration::from_millis(10))
            }
            Err(e) => panic!("reading a TAP: {e}"),
        }
    }
    false
}

fn is_echo_reply(f: &[u8], id: u16) -> bool {
    f.len() >= 14 + 40 + 8
        && f[12..14] == [0x86, 0xdd]
        && f[20] == 58
        && f[54] == 129
        && f[58..60] == id.to_be_bytes()
}

fn is_udp_with(f: &[u8], marker: &[u8]) -> bool {
    f.len() > 14 + 28
        && f[12..14] == [0x08, 0x00]
        && f[23] == 17
        && f.windows(marker.len()).any(|w| w == marker)
}

#[test]
fn ipv6_from_a_job_gets_no_answer_while_another_tap_does() {
    use std::io::Write;
    in_netns(|| {
        forget_forwarding_memo();
        rt().block_on(async {
            let net = Network::init(Policy::default()).await.unwrap();
            let job = net.setup().await.unwrap();
            // A TAP airlock does not manage: the control.
            tap::create("ctl0", None).unwrap();
            ip("link set ctl0 up");
            for (dev, host) in [
                (job.tap.as_str(), "2001:db8:a::1"),
                ("ctl0", "2001:db8:b::1"),
            ] {
                ip(&format!("-6 addr add {host}/64 dev {dev} nodad"));
                let peer = host.replace("::1", "::2");
                ip(&format!(
                    "-6 neigh replace {peer} lladdr 02:00:00:00:00:02 dev {dev} nud permanent"
                ));
            }
            let mut ctl = attach("ctl0");
            let mut jt = attach(&job.tap);
            std::thread::sleep(std::time::Duration::from_millis(300));
            let (a, b) = (
                "2001:db8:a::2".parse().unwrap(),
                "2001:db8:a::1".parse().unwrap(),
            );
            let (c, d) = (
                "2001:db8:b::2".parse().unwrap(),
                "2001:db8:b::1".parse().unwrap(),
            );
            // The control answers: the frames and the setup are right.
            ctl.write_all(&ping6(mac_of("ctl0"), c, d, 7)).unwrap();
            assert!(
                sees(&mut ctl, |f| is_echo_reply(f, 7)),
                "the control TAP did not answer"
            );
            // From the job's TAP, IPv6 (to the host's own address on it) is dropped.
            jt.write_all(&ping6(mac_of(&job.tap), a, b, 8)).unwrap();
            assert!(
                !sees(&mut jt, |f| is_echo_reply(f, 8)),
                "the host answered IPv6 from a job"
            );
            let table = nft::list_table("inet", "airlock").await.unwrap();
            assert!(table.contains("meta nfproto ipv6"), "{table}");
            drop(jt);
            net.teardown(&job).await;
        });
        forget_forwarding_memo();
    });
}

/// Two TAPs as the host's LAN and WAN ports, a peer "behind" each (a
/// permanent neighbour entry), and one datagram from the LAN peer to the WAN
/// peer: does the host route it?
fn lan_peer_routes_through_host(routing_before: bool, operator: Option<&str>) -> bool {
    forget_forwarding_memo();
    let routed = rt().block_on(async {
        std::fs::write(
            "/proc/sys/net/ipv4/ip_forward",
            if routing_before { "1" } else { "0" },
        )
        .unwrap();
        for (dev, addr, peer) in [
            ("lan0", "10.99.0.1/24", "10.99.0.10"),
            ("wan0", "203.0.113.1/24", "203.0.113.10"),
        ] {
            tap::create(dev, None).unwrap();
            ip(&format!("addr add {addr} dev {dev}"));
            ip(&format!("link set {dev} up"));
            ip(&format!(
                "neigh replace {peer} lladdr 02:00:00:00:00:02 dev {dev} nud permanent"
            ));
        }
        if let Some(o) = operator {
            nft::apply(o).await.unwrap();
        }
        let _net = Network::init(Policy::default()).await.unwrap();
        let mut lan = attach("lan0");
        let mut wan = attach("wan0");
        std::thread::sleep(std::time::Duration::from_millis(300));
        use std::io::Write;
        let marker = b"lan peer using the builder as a router";
        lan.write_all(&udp4(
            mac_of("lan0"),
            "10.99.0.10".parse().unwrap(),
            "203.0.113.10".parse().unwrap(),
            marker,
        ))
        .unwrap();
        sees(&mut wan, |f| is_udp_with(f, marker))
    });
    forget_forwarding_memo();
    routed
}

#[test]
fn a_lan_peer_cannot_route_through_a_builder_that_was_not_a_router() {
    // Forwarding was off before airlock: airlock turns it on for its jobs,
    // and a LAN peer's packet for elsewhere is dropped.
    let routed = in_netns(|| lan_peer_routes_through_host(false, None));
    if let Some(routed) = routed {
        assert!(!routed, "the LAN peer's datagram was forwarded");
    }
    // The operator's own router (forwarding on, a forward chain with policy
    // drop and one accept rule): still routes exactly what they allow.
    let operator = "table inet operator {\n\tchain forward {\n\t\ttype filter hook forward priority filter; policy drop;\n\t\tiifname \"lan0\" oifname \"wan0\" accept\n\t}\n}\n";
    let routed = in_netns(move || lan_peer_routes_through_host(true, Some(operator)));
    if let Some(routed) = routed {
        assert!(routed, "the operator's forwarding rule stopped working");
    }
}
