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
    let ino = std::fs::metadata("/proc/self/ns/net").unwrap().ino();
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
