//! Binary cache benchmark: airlock's cache server (the same axum router
//! airlockd serves) versus nginx serving the very same `cache/` directory
//! (a static file server: the upper bound), side by side in one run, driven
//! by wrk:
//! 1. narinfo requests per second (1000 released paths, rotating);
//! 2. NAR throughput (one 256 MiB released NAR);
//! 3. label event → first successful substitution, with webhooks: a real
//!    airlockd (polling set to an hour, so only the webhook can trigger it),
//!    the local GitHub stand-in, a signed `synchronize` delivery, then a real
//!    `nix-store -r` from the cache.
//!
//! Run: `cargo bench -p airlock-e2e --bench cache` (root; needs nix-store,
//! nginx and wrk; scripts/setup.sh installs them).

use airlock_e2e as common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use airlock::quarantine::craft::{entry, stream};
use airlock::release::store::{self, Dirs, How};
use airlock::store::nar::build::{nar, Node};

const SMALL: usize = 1000;
const BIG_MIB: usize = 256;
const SECS: &str = "10";

use common::{free_port, have};

fn store_path(i: usize, name: &str) -> String {
    use sha2::Digest;
    let h = sha2::Sha256::digest(format!("{i}{name}").as_bytes());
    format!(
        "/nix/store/{}-{name}",
        airlock::store::nix32::encode(&h[..20])
    )
}

/// Quarantine one job with SMALL small paths and one big one, release it.
fn prepare(root: &Path) -> (Dirs, Vec<String>, String) {
    let dirs = Dirs::under(root);
    dirs.create().unwrap();
    let mut entries = Vec::new();
    let mut paths = Vec::new();
    for i in 0..SMALL {
        let p = store_path(i, &format!("small-{i}"));
        let data = vec![b'a' + (i % 26) as u8; 4096];
        let n = nar(&Node::File {
            exec: false,
            data: &data,
        });
        entries.push((entry(&p, &n, &[]), n));
        paths.push(p);
    }
    let big_path = store_path(0, "big");
    let big: Vec<u8> = (0..BIG_MIB << 20).map(|i| (i % 251) as u8).collect();
    let n = nar(&Node::File {
        exec: false,
        data: &big,
    });
    drop(big);
    entries.push((entry(&big_path, &n, &[]), n));
    let exp = root.join("export.img");
    std::fs::write(&exp, stream(entries)).unwrap();
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let job_id = uuid::Uuid::new_v4().to_string();
    airlock::quarantine::import(
        &exp,
        &dirs.quarantine,
        &airlock::quarantine::JobRef {
            job_id: &job_id,
            commit,
            repo: "NixOS/nixpkgs",
            pr: 1,
            origin: Some(airlock::quarantine::Origin::test("master")),
            upstream: &Default::default(),
        },
        &airlock::quarantine::Limits {
            max_nar_bytes: 1 << 30,
            max_paths: SMALL + 10,
            max_total_bytes: 0,
        },
    )
    .unwrap();
    std::fs::remove_file(&exp).unwrap();
    let sk = root.join("key.sec");
    let st = Command::new("nix-store")
        .arg("--store")
        .arg(root.join("keygen-store"))
        .args(["--generate-binary-cache-key", "bench-1"])
        .arg(&sk)
        .arg(root.join("key.pub"))
        .status()
        .unwrap();
    assert!(st.success());
    let key =
        airlock::store::signing::SecretKey::parse(&std::fs::read_to_string(&sk).unwrap()).unwrap();
    let job = store::quarantined(&dirs, Some(commit)).pop().unwrap();
    let t0 = Instant::now();
    store::release_job(
        &dirs,
        &key,
        &job,
        How::Operator {
            reason: "bench".into(),
        },
        airlock::job::now(),
    )
    .unwrap();
    println!(
        "release of {} paths ({} MiB): {:.0} ms (sign + hard-link)",
        SMALL + 1,
        BIG_MIB,
        t0.elapsed().as_secs_f64() * 1000.0
    );
    let big_info =
        std::fs::read_to_string(dirs.cache.join(format!("{}.narinfo", &big_path[11..43]))).unwrap();
    let big_url = big_info
        .lines()
        .find_map(|l| l.strip_prefix("URL: "))
        .unwrap()
        .to_owned();
    (dirs, paths, big_url)
}

fn start_airlock(cache: PathBuf) -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.set_nonblocking(true).unwrap();
    let addr = l.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        // Like airlockd: tokio's multi-threaded runtime, one worker a core.
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::from_std(l).unwrap();
            axum::serve(l, airlock::release::server::cache_router(cache, 40))
                .await
                .unwrap();
        });
    });
    addr
}

fn start_nginx(root: &Path, cache: &Path) -> (Child, String) {
    let port = free_port();
    let prefix = root.join("nginx");
    std::fs::create_dir_all(prefix.join("logs")).unwrap();
    let conf = prefix.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "user root;\nworker_processes 2;\ndaemon off;\npid {p}/nginx.pid;\nerror_log {p}/logs/error.log;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n  access_log off;\n  sendfile on;\n  tcp_nopush on;\n  keepalive_requests 100000;\n\
               client_body_temp_path {p}/tmp; proxy_temp_path {p}/tmp; fastcgi_temp_path {p}/tmp; uwsgi_temp_path {p}/tmp; scgi_temp_path {p}/tmp;\n\
               types {{ text/x-nix-narinfo narinfo; }}\n\
               server {{ listen 127.0.0.1:{port}; root {c}; location / {{ }} }}\n}}\n",
            p = prefix.display(),
            c = cache.display()
        ),
    )
    .unwrap();
    let child = Command::new("nginx")
        .arg("-p")
        .arg(&prefix)
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    (child, format!("127.0.0.1:{port}"))
}

fn wait_up(addr: &str) {
    let t0 = Instant::now();
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(t0.elapsed() < Duration::from_secs(10), "{addr} not up");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Run wrk; return (requests/s, transfer MB/s).
fn wrk(addr: &str, conns: &str, script: Option<&Path>, path: &str) -> (f64, f64) {
    let mut c = Command::new("wrk");
    c.args(["-t2", "-c", conns, "-d", SECS]);
    if let Some(s) = script {
        c.arg("-s").arg(s);
    }
    let out = c.arg(format!("http://{addr}{path}")).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let field = |k: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(k))
            .map(|v| v.trim().to_owned())
            .unwrap_or_else(|| panic!("wrk output without {k}:\n{text}"))
    };
    let rps: f64 = field("Requests/sec:").parse().unwrap();
    let tr = field("Transfer/sec:");
    let (num, unit) = tr.split_at(tr.find(|c: char| c.is_ascii_alphabetic()).unwrap());
    let mult = match unit {
        "B" => 1e-6,
        "KB" => 1.024e-3,
        "MB" => 1.048576,
        "GB" => 1073.741824,
        u => panic!("unit {u}"),
    };
    if text.contains("Non-2xx") {
        panic!("errors in wrk run:\n{text}");
    }
    (rps, num.parse::<f64>().unwrap() * mult)
}

fn main() {
    for c in ["nix-store", "nginx", "wrk"] {
        if !have(c) {
            eprintln!("\n!!!!!!!! SKIPPED cache bench: missing {c} (scripts/setup.sh installs it) !!!!!!!!\n");
            return;
        }
    }
    let tmp = tempfile::Builder::new()
        .prefix("airlock-cache-bench-")
        .tempdir()
        .unwrap();
    let (dirs, paths, big_url) = prepare(tmp.path());
    let script = tmp.path().join("narinfos.lua");
    let mut f = std::fs::File::create(&script).unwrap();
    writeln!(f, "paths = {{").unwrap();
    for p in &paths {
        writeln!(f, "  \"/{}.narinfo\",", &p[11..43]).unwrap();
    }
    writeln!(
        f,
        "}}\ni = 0\nrequest = function()\n  i = i % #paths + 1\n  return wrk.format(\"GET\", paths[i])\nend"
    )
    .unwrap();
    drop(f);

    let ours = start_airlock(dirs.cache.clone());
    let (mut nginx, theirs) = start_nginx(tmp.path(), &dirs.cache);
    wait_up(&ours);
    wait_up(&theirs);
    println!("cache: {} narinfos + 1 NAR of {BIG_MIB} MiB; wrk -t2 -d{SECS}s; 2 cores shared by server and client", SMALL + 1);
    println!("{:<28} {:>14} {:>14}", "", "airlock", "nginx");
    let (a, _) = wrk(&ours, "32", Some(&script), "/");
    let (n, _) = wrk(&theirs, "32", Some(&script), "/");
    println!(
        "{:<28} {:>14.0} {:>14.0}",
        "narinfo requests/s (c=32)", a, n
    );
    println!("BENCH cache narinfo_rps airlock={a:.0} nginx={n:.0}");
    let (_, a) = wrk(&ours, "4", None, &format!("/{big_url}"));
    let (_, n) = wrk(&theirs, "4", None, &format!("/{big_url}"));
    println!("{:<28} {:>14.0} {:>14.0}", "NAR MB/s (c=4)", a, n);
    println!("BENCH cache nar_mbps airlock={a:.0} nginx={n:.0}");
    let _ = nginx.kill();
    let _ = nginx.wait();
    label_latency(tmp.path());
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn label_latency(tmp: &Path) {
    use common::github::*;
    const RUNS: u64 = 10;
    if !common::prerequisites("cache bench: label → substitution latency") {
        return;
    }
    let gh = FakeGitHub::start();
    gh.set_permission("alice", "write");
    // Polling once an hour: only the webhook can trigger the release.
    let r = ReleaseDaemon::start(&gh, "trusted", 3600, "");
    let (d, cache) = (&r.d, &r.cache);
    let (mut to_info, mut to_subst) = (Vec::new(), Vec::new());
    for i in 0..RUNS {
        use sha2::Digest;
        let commit: String = sha2::Sha256::digest(format!("latency{i}").as_bytes())[..20]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let pr = 300 + i;
        gh.set_pull(pr, &commit, &["nonmalicious-checked"]);
        gh.event(pr, "labeled", "alice", now() - 50, "nonmalicious-checked");
        let (_, path) = craft_job(&d.state(), &commit, "NixOS/nixpkgs", pr, &format!("p{i}"));
        let info = format!("/{}.narinfo", &path[11..43]);
        let body = webhook_body("synchronize", "NixOS/nixpkgs", pr, &commit, now() - 100, "");
        let t0 = Instant::now();
        assert_eq!(r.deliver("pull_request", &body), 202);
        while http(cache, "GET", &info, &[], b"").0 != 200 {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "not released:\n{}",
                d.log()
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        to_info.push(t0.elapsed().as_secs_f64() * 1000.0);
        let out = nix_substitute(tmp, cache, &r.pk, &path);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        to_subst.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    let (i50, i90) = (pct(&mut to_info, 0.5), pct(&mut to_info, 0.9));
    let (s50, s90) = (pct(&mut to_subst, 0.5), pct(&mut to_subst, 0.9));
    println!(
        "label webhook → narinfo served:        median {i50:.0} ms, p90 {i90:.0} ms ({RUNS} runs)"
    );
    println!("label webhook → nix-store -r succeeded: median {s50:.0} ms, p90 {s90:.0} ms");
    println!("BENCH release_latency narinfo_ms_p50={i50:.0} p90={i90:.0} substituted_ms_p50={s50:.0} p90={s90:.0}");
}
