//! The network policy for real: airlockd runs in a namespace that plays the
//! builder host, wired to an "internet" host (203.0.113.10, TEST-NET-3,
//! `common::internet`: HTTP on port 80, DNS that resolves nothing) and a
//! "LAN" host (10.99.0.10, also answering as 169.254.169.254), all namespaces
//! this test creates. No packet leaves them.

use airlock_e2e as common;

use std::process::{Child, Command, Stdio};

use common::internet::Internet;
use common::*;

struct Topology {
    host: String,
    lan: String,
    servers: Vec<Child>,
    // Dropped after `servers` are stopped: removes the builder and
    // "internet" namespaces.
    _net: Internet,
    www: tempfile::TempDir,
}

fn ip(args: &[&str]) {
    let st = Command::new("ip").args(args).status().unwrap();
    assert!(st.success(), "ip {args:?}");
}

fn nft_in(ns: &str, args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "nft"])
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Topology {
    fn up() -> Topology {
        let www = tempfile::tempdir().unwrap();
        std::fs::write(www.path().join("file.txt"), "airlock-internet-ok\n").unwrap();
        std::fs::write(www.path().join("gw.txt"), "airlock-gw-ok\n").unwrap();
        std::fs::write(www.path().join("honest.txt"), "the real upstream file\n").unwrap();
        std::fs::write(www.path().join("once.txt"), "airlock-once-B\n").unwrap();
        std::fs::write(www.path().join("index.html"), "LEAK\n").unwrap();
        // The builder and the "internet" (serving `www` on 203.0.113.10:80).
        let net = Internet::up(www.path());
        let host = net.host.clone();
        let lan = new_netns("l");
        ip(&[
            "link", "add", "lan0", "netns", &host, "type", "veth", "peer", "name", "eth0", "netns",
            &lan,
        ]);
        ip(&["-n", &host, "addr", "add", "10.99.0.1/24", "dev", "lan0"]);
        ip(&["-n", &host, "link", "set", "lan0", "up"]);
        ip(&["-n", &lan, "addr", "add", "10.99.0.10/24", "dev", "eth0"]);
        ip(&[
            "-n",
            &lan,
            "addr",
            "add",
            "169.254.169.254/32",
            "dev",
            "eth0",
        ]);
        ip(&["-n", &lan, "link", "set", "eth0", "up"]);
        ip(&[
            "-n",
            &host,
            "route",
            "add",
            "169.254.169.254/32",
            "via",
            "10.99.0.10",
        ]);
        // Worst case: a LAN that would route answers back to the job pool.
        ip(&[
            "-n",
            &lan,
            "route",
            "add",
            "10.213.0.0/16",
            "via",
            "10.99.0.1",
        ]);
        let serve = |ns: &str, bind: &str, port: &str| {
            Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    ns,
                    "python3",
                    "-m",
                    "http.server",
                    port,
                    "--bind",
                    bind,
                    "--directory",
                ])
                .arg(www.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        };
        let servers = vec![
            serve(&lan, "0.0.0.0", "80"),
            serve(&host, "0.0.0.0", "8081"), // a host port nobody allowed
            serve(&host, "0.0.0.0", "8080"), // the port the operator allows
        ];
        // The operator's own firewall, which airlock must never touch.
        let op = "table inet operator {\n\tchain input {\n\t\ttype filter hook input priority filter; policy accept;\n\t\ttcp dport 2222 counter packets 0 bytes 0 drop\n\t}\n}\n";
        let mut c = Command::new("ip")
            .args(["netns", "exec", &host, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        c.stdin.take().unwrap().write_all(op.as_bytes()).unwrap();
        assert!(c.wait().unwrap().success());
        std::thread::sleep(std::time::Duration::from_millis(500));
        Topology {
            host,
            lan,
            servers,
            _net: net,
            www,
        }
    }

    fn operator_table(&self) -> String {
        nft_in(&self.host, &["list", "table", "inet", "operator"])
    }

    /// What a job could leave behind: TAPs, its chains, routes into the pool.
    fn leftovers(&self) -> Vec<String> {
        let mut v = Vec::new();
        let links = Command::new("ip")
            .args(["-n", &self.host, "-o", "link"])
            .output()
            .unwrap();
        v.extend(
            String::from_utf8_lossy(&links.stdout)
                .lines()
                .filter(|l| l.contains(": alk"))
                .map(str::to_owned),
        );
        let table = nft_in(&self.host, &["list", "table", "inet", "airlock"]);
        v.extend(
            table
                .lines()
                .filter(|l| l.contains("chain fwd-") || l.contains("chain in-"))
                .map(str::to_owned),
        );
        let routes = Command::new("ip")
            .args(["-n", &self.host, "route"])
            .output()
            .unwrap();
        v.extend(
            String::from_utf8_lossy(&routes.stdout)
                .lines()
                .filter(|l| l.starts_with("10.213."))
                .map(str::to_owned),
        );
        v
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for s in &mut self.servers {
            let _ = s.kill();
            let _ = s.wait();
        }
        del_netns(&self.lan);
    }
}

const CONFIG: &str =
    "max_jobs = 2\n[network]\nallow_host_ports = [8080]\ndns = [\"203.0.113.10\"]\n";

fn probes(log: &str) -> Vec<&str> {
    log.lines().filter(|l| l.contains("PROBE ")).collect()
}

#[test]
fn only_fixed_output_derivations_reach_the_internet() {
    if !prerequisites("only_fixed_output_derivations_reach_the_internet") {
        return;
    }
    let topo = Topology::up();
    let before = topo.operator_table();
    assert!(before.contains("tcp dport 2222"));
    // The VMMs run as their own user (the NixOS module's default), and
    // attach to TAPs that user owns. A trusted builder: the re-fetch of a
    // fixed-output path before release is shown at the end.
    let keys = tempfile::tempdir().unwrap();
    let (sk, _) = common::github::gen_key(keys.path(), "airlock-net-1");
    let d = Daemon::builder()
        .netns(&topo.host)
        .with(|c| c.vm.user = VM_USER.into())
        .toml(CONFIG)
        .args(&[
            "--trust",
            "trusted",
            "--signing-key-file",
            sk.to_str().unwrap(),
        ])
        .start();
    let (repo, head) = fixture_repo(d.dir.path(), &[]);

    // Holds slot 0's network while the attacker (slot 1) probes it.
    let sleeper = d.submit(&repo, &head, &["net.sleeper"]);
    let vmm = d.vmm_status(&sleeper, 300);
    assert!(
        vmm.lines().any(|l| l.split_whitespace().collect::<Vec<_>>()
            == ["Uid:", "65534", "65534", "65534", "65534"]),
        "{vmm}"
    );
    let attrs = [
        "net.fetch-ok",
        "net.fetch-gw",
        "net.probe-lan",
        "net.probe-metadata",
        "net.probe-host-port",
        "net.probe-host-wan",
        "net.probe-other-tap",
        "net.probe-other-guest",
        "net.nonfod",
        "net.console",
    ];
    let attacker = d.submit(&repo, &head, &attrs);
    let badhash = d.submit(&repo, &head, &["net.fetch-badhash"]);

    let rec = d.wait(&attacker, 900);
    let log = d.build_log(&attacker);
    let res = &rec["result"];
    assert_eq!(status(&rec), "Failure", "{rec:#}\n{log}");
    let seen = probes(&log);
    assert!(
        !log.contains(": REACHED"),
        "something got through:\n{seen:#?}"
    );
    for p in [
        "lan",
        "metadata",
        "host-port",
        "host-wan",
        "other-tap",
        "other-guest",
    ] {
        assert!(
            log.contains(&format!("PROBE {p}: BLOCKED")),
            "probe {p} did not run:\n{seen:#?}\n{log}"
        );
    }
    assert!(log.contains("PROBE nonfod: BLOCKED"), "{log}");
    for dev in ["/dev/hvc0", "/dev/ttyS0", "/dev/vda", "/dev/vdd"] {
        let blocked = log.contains(&format!("PROBE console {dev}: BLOCKED"));
        let absent = log.contains(&format!("PROBE console {dev}: ABSENT"));
        assert!(blocked || absent, "{dev}:\n{log}");
    }
    assert!(!log.contains(": WROTE"), "{log}");
    assert_eq!(
        res["attempted_attrs"].as_array().unwrap().len(),
        attrs.len(),
        "no fake agent event: {rec:#}"
    );
    assert!(!res.to_string().contains("pwned"));
    // The allowed fetches worked and were verified against their hashes.
    let paths: Vec<String> = serde_json::from_value(res["store_paths"].clone()).unwrap();
    assert!(
        paths.iter().any(|p| p.ends_with("-airlock-fetch-ok")),
        "{paths:?}"
    );
    assert!(
        paths.iter().any(|p| p.ends_with("-airlock-fetch-gw")),
        "{paths:?}"
    );
    assert!(
        paths.iter().any(|p| p.ends_with("-airlock-console-attack")),
        "{paths:?}"
    );
    let q = std::path::Path::new(res["quarantine"].as_str().unwrap());
    let fetched = std::fs::read_dir(q).unwrap().flatten().find_map(|e| {
        let t = std::fs::read_to_string(e.path()).ok()?;
        t.contains("-airlock-fetch-ok").then_some(t)
    });
    assert!(
        fetched.unwrap().contains("CA: fixed:sha256:"),
        "FOD narinfo carries its content address"
    );

    // Fixed-output hash reuse (ofborg issue 68): the job above fetched
    // file.txt as airlock-fetch-ok under hash H; a later job ("PR 2")
    // names the same output (same name, same H) at a URL serving other
    // bytes. Its VM's store is fresh and its only substituter is the
    // host's proxy of upstream caches, so H is fetched again from PR 2's
    // own URL: a hash mismatch naming the derivation, nothing quarantined,
    // and so nothing of PR 2's commit can be released.
    let (repo2, head2) = fixture_repo(&d.dir.path().join("pr2"), &[("PR2.md", b"pr 2\n".to_vec())]);
    let reuse = d.submit(&repo2, &head2, &["net.fetch-reuse"]);
    let rec = d.wait(&reuse, 900);
    let log = d.build_log(&reuse);
    assert_eq!(status(&rec), "HashMismatch", "{rec:#}\n{log}");
    assert!(
        log.contains("hash mismatch") && log.contains("-airlock-fetch-ok.drv"),
        "{log}"
    );
    assert_eq!(
        rec["result"]["store_paths"],
        serde_json::json!([]),
        "{rec:#}"
    );
    assert!(rec["result"]["quarantine"].is_null(), "{rec:#}");
    let out = d.ctl(&["release", &head2, "--reason", "PR 2"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("no unreleased outputs"),
        "{err}"
    );

    let rec = d.wait(&badhash, 900);
    assert_eq!(
        status(&rec),
        "HashMismatch",
        "{rec:#}\n{}",
        d.build_log(&badhash)
    );
    let rec = d.wait(&sleeper, 900);
    assert_eq!(
        status(&rec),
        "Success",
        "{rec:#}\n{}",
        d.build_log(&sleeper)
    );

    refetch_before_release(&d, &topo);

    assert!(
        topo.leftovers().is_empty(),
        "left behind: {:?}",
        topo.leftovers()
    );
    assert_eq!(topo.operator_table(), before, "operator's table changed");
}

/// A fixed-output path is released only if fetching it again from its own
/// URL, in a job VM of the releasing builder, gives the same bytes (issue
/// 30). Here the URL served the hashed bytes while the job fetched, and
/// other bytes since: the release is refused, naming the derivation.
fn refetch_before_release(d: &Daemon, topo: &Topology) {
    let (repo, head) = fixture_repo(
        &d.dir.path().join("once"),
        &[("ONCE.md", b"pr 1\n".to_vec())],
    );
    let id = d.submit(&repo, &head, &["net.fetch-once"]);
    let rec = d.wait(&id, 900);
    assert_eq!(status(&rec), "Success", "{rec:#}\n{}", d.build_log(&id));
    std::fs::write(topo.www.path().join("once.txt"), "other bytes now\n").unwrap();
    let release = || d.ctl(&["release", &head, "--reason", "re-fetch test"]);
    let out = release();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success() && err.contains("fetching its 1 fixed-output path(s) again"),
        "{err}"
    );
    let refetch = || {
        d.jobs()
            .into_iter()
            .find(|j| j["refetch"]["of_job"] == id.as_str())
            .unwrap_or_else(|| panic!("no re-fetch job:\n{}", d.log()))
    };
    let rid = refetch()["id"].as_str().unwrap().to_owned();
    let r = d.wait(&rid, 900);
    assert_eq!(status(&r), "HashMismatch", "{r:#}\n{}", d.build_log(&rid));
    let out = release();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "released after a failed re-fetch");
    assert!(
        err.contains("does not match") && err.contains("-airlock-fetch-once.drv"),
        "{err}"
    );
    let st = d.ctl(&["--json", "release", "status", &head]);
    let st: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    assert!(st["jobs"][0]["released"].is_null(), "{st:#}");
    assert!(
        st["jobs"][0]["refetch"]
            .as_str()
            .unwrap()
            .contains("-airlock-fetch-once.drv"),
        "{st:#}"
    );
    println!("re-fetch refused: {err}");
}

#[test]
fn kill9_during_fetch_leaves_no_network_behind() {
    if !prerequisites("kill9_during_fetch_leaves_no_network_behind") {
        return;
    }
    let topo = Topology::up();
    let before = topo.operator_table();
    let mut d = Daemon::builder().netns(&topo.host).toml(CONFIG).start();
    let (repo, head) = fixture_repo(d.dir.path(), &[]);
    // Two jobs in their fetch VMs at once (max_jobs = 2).
    let ids = [
        d.submit(&repo, &head, &["net.sleeper"]),
        d.submit(&repo, &head, &["net.sleeper"]),
    ];
    let t0 = std::time::Instant::now();
    let taps = |topo: &Topology| {
        topo.leftovers()
            .iter()
            .filter(|l| l.contains(": alk"))
            .count()
    };
    while taps(&topo) < 2 {
        assert!(
            t0.elapsed().as_secs() < 180,
            "the two job networks never came up together:\n{}",
            d.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    d.kill9();
    // PR_SET_PDEATHSIG kills the VMs when airlockd dies, within moments.
    for id in &ids {
        wait_until(
            &format!("the VM of {id} to die with the daemon"),
            10,
            || no_vm_for(id),
            || d.log(),
        );
    }
    d.spawn();
    // Start-up recovery: each job's disks are gone, both jobs are marked
    // interrupted (the table says so) and run again as new jobs.
    for id in &ids {
        let paths = airlock::job::JobPaths {
            dir: d.state().join("jobs").join(id),
        };
        for p in paths.scratch() {
            assert!(!p.exists(), "{} left behind", p.display());
        }
    }
    let table = String::from_utf8_lossy(&d.ctl(&["jobs"]).stdout).into_owned();
    for id in &ids {
        assert!(
            table
                .lines()
                .any(|l| l.starts_with(id.as_str()) && l.contains("interrupted")),
            "{id} not shown interrupted:\n{table}"
        );
    }
    for id in &ids {
        let old = d.wait(id, 60);
        assert_eq!(old["interrupted"], true, "{old:#}");
        let retry = old["retried_as"]
            .as_str()
            .expect("retried as a new job")
            .to_owned();
        let rec = d.wait(&retry, 900);
        assert_eq!(rec["retry_of"].as_str(), Some(id.as_str()));
        assert_eq!(status(&rec), "Success", "{rec:#}");
    }
    assert!(
        d.log()
            .contains("removing TAP device left by a previous run"),
        "{}",
        d.log()
    );
    assert!(
        topo.leftovers().is_empty(),
        "left behind: {:?}",
        topo.leftovers()
    );
    assert_eq!(topo.operator_table(), before);
}
