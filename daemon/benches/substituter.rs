//! The substituter's NAR throughput on a cache hit, against Nix reading the
//! same binary cache directly (issue 12: goal ≥ 0.9×), same run, same
//! machine.
//!
//! A 256 MiB store path (random bytes, so no compression helps either side)
//! is put into a signed `file://` binary cache with the host's Nix. Then,
//! three times each, alternating: `nix copy --from file://CACHE` and
//! `nix copy --from http://SUBSTITUTER` into a fresh private store. The
//! substituter's upstream is the same directory, read by a `Fetch` that
//! opens its files; it is warmed once first, so every timed run is a hit.
//!
//! `cargo bench -p airlock --bench substituter` (needs `nix`, `nix-store`;
//! host Nix only through private stores). `AIRLOCK_BENCH_MIB` changes the size.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use airlock::substituter::{ByteStream, Fetch, FetchFuture, Settings, Substituter};
use futures_lite::StreamExt;

const UP: &str = "http://upstream.invalid";

/// The upstream: files of a binary cache directory.
struct Dir(PathBuf);

impl Fetch for Dir {
    fn get(&self, url: String) -> FetchFuture {
        let path = self
            .0
            .join(url.strip_prefix(&format!("{UP}/")).unwrap_or("-"));
        Box::pin(async move {
            match tokio::fs::File::open(&path).await {
                Ok(f) => {
                    let s = tokio_util::io::ReaderStream::with_capacity(f, 1 << 20)
                        .map(|r| r.map_err(|e| e.to_string()));
                    Ok(Some(Box::pin(s) as ByteStream))
                }
                Err(_) => Ok(None),
            }
        })
    }
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn nix_copy(work: &Path, from: &str, path: &str, pk: &str, n: usize) -> Duration {
    let dest = work.join(format!("dest-{n}"));
    let t0 = Instant::now();
    run(Command::new("nix")
        .args(["--extra-experimental-features", "nix-command", "copy"])
        .args(["--from", from, "--to"])
        .arg(&dest)
        .arg(path)
        .args(["--option", "trusted-public-keys", pk])
        .args(["--option", "require-sigs", "true"])
        .env("XDG_CACHE_HOME", work.join(format!("xdg-{n}"))));
    let t = t0.elapsed();
    let _ = std::fs::remove_dir_all(&dest);
    t
}

fn main() {
    let mib: u64 = std::env::var("AIRLOCK_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let work = tempfile::Builder::new()
        .prefix("airlock-bench-subst-")
        .tempdir()
        .unwrap();
    let w = work.path();
    // A store path of random bytes in a private store, copied into a signed cache.
    let data = w.join("data");
    run(Command::new("sh").arg("-c").arg(format!(
        "head -c {} /dev/urandom > {}",
        mib << 20,
        data.display()
    )));
    let store = w.join("store");
    let path = run(Command::new("nix-store")
        .arg("--store")
        .arg(&store)
        .arg("--add")
        .arg(&data)
        .env("XDG_CACHE_HOME", w.join("xdg")));
    let (sk, pk) = (w.join("k.sec"), w.join("k.pub"));
    run(Command::new("nix-store")
        .arg("--store")
        .arg(w.join("keygen"))
        .args(["--generate-binary-cache-key", "bench-1"])
        .arg(&sk)
        .arg(&pk));
    let pk = std::fs::read_to_string(&pk).unwrap().trim().to_owned();
    let cache = w.join("cache");
    run(Command::new("nix")
        .args(["--extra-experimental-features", "nix-command", "copy"])
        .arg("--store")
        .arg(&store)
        .arg("--to")
        .arg(format!(
            "file://{}?secret-key={}&compression=none",
            cache.display(),
            sk.display()
        ))
        .arg(&path)
        .env("XDG_CACHE_HOME", w.join("xdg")));

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let sub = Substituter::open(
        Settings {
            upstreams: vec![UP.into()],
            trusted_public_keys: vec![pk.clone()],
            dir: w.join("substituter"),
            max_bytes: 4 << 30,
            negative_ttl: Duration::from_secs(60),
            max_nar_bytes: 4 << 30,
        },
        Arc::new(Dir(cache.clone())),
    )
    .unwrap();
    let job = rt
        .block_on(sub.serve_job("127.0.0.1:0".parse().unwrap()))
        .unwrap();
    let proxy = format!("http://{}", job.addr);
    let direct = format!("file://{}", cache.display());
    // Warm: the first copy through the substituter downloads from "upstream".
    let cold = nix_copy(w, &proxy, &path, &pk, 0);
    let rate = |t: Duration| mib as f64 / t.as_secs_f64();
    println!(
        "substituter, cold (downloads from upstream): {:.2}s",
        cold.as_secs_f64()
    );
    let (mut d, mut p) = (Vec::new(), Vec::new());
    for i in 0..3 {
        d.push(nix_copy(w, &direct, &path, &pk, 10 + i));
        p.push(nix_copy(w, &proxy, &path, &pk, 20 + i));
    }
    let best = |v: &[Duration]| v.iter().min().copied().unwrap();
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let (bd, bp) = (best(&d), best(&p));
    let (md, mp) = (median(&mut d), median(&mut p));
    println!("{mib} MiB NAR (uncompressed), nix copy into a fresh private store, 3 runs each:");
    println!(
        "  nix copy --from file://CACHE     best {:.2}s ({:.0} MiB/s), median {:.2}s",
        bd.as_secs_f64(),
        rate(bd),
        md.as_secs_f64()
    );
    println!(
        "  nix copy --from http://SUBSTITUTER best {:.2}s ({:.0} MiB/s), median {:.2}s",
        bp.as_secs_f64(),
        rate(bp),
        mp.as_secs_f64()
    );
    println!(
        "  substituter / direct throughput: best {:.2}x, median {:.2}x (goal >= 0.9x)",
        bd.as_secs_f64() / bp.as_secs_f64(),
        md.as_secs_f64() / mp.as_secs_f64()
    );
    let (stats, _) = rt.block_on(job.finish());
    println!(
        "  substituter counters: {} NARs served, {} bytes served, {} bytes from upstream",
        stats.nars_served, stats.bytes_served, stats.bytes_upstream
    );
}
