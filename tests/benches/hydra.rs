//! Per-step overhead of the queue-runner intake (issue 31): airlockd joined
//! to the test double of Hydra's queue-runner builds N small steps, each in
//! its own VM, one at a time. For each step: received → `CompleteBuild`
//! at the runner, Nix's own `BuildDerivation` time in the guest, and the
//! rest (airlock's overhead: fetching and checking inputs, staging, the
//! VM, import in the guest, export, host verification, upload).
//!
//! Run: `cargo bench -p airlock-e2e --bench hydra` (root; QEMU and the
//! guest image). `AIRLOCK_BENCH_STEPS` (default 20) steps.

use std::time::{Duration, Instant};

use airlock::hydra::proto::{self, runner_request};
use airlock_e2e::hydra_runner::{own_step, FakeRunner};

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    if !airlock_e2e::prerequisites("bench hydra") {
        return;
    }
    let n: usize = std::env::var("AIRLOCK_BENCH_STEPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let runner = FakeRunner::new("0.1.0-5f82f0f0");
    let port = runner.serve(&rt);
    // One input per step, so every step also fetches, checks and imports.
    let input = "0c5b8vw40dy178xlpddw65q9gf1h2186-airlock-input";
    let nar = airlock::store::nar::build::nar(&airlock::store::nar::build::Node::File {
        exec: false,
        data: &[b'x'; 64 << 10],
    });
    runner.hold(input, &nar);
    let keydir = tempfile::tempdir().unwrap();
    let (sk, _) = airlock_e2e::github::gen_key(keydir.path(), "airlock-cache-1");
    let mut d = airlock_e2e::Daemon::builder()
        .host_network()
        .with(|c| {
            c.vm.user = airlock_e2e::VM_USER.into();
            c.hydra.endpoint = format!("http://127.0.0.1:{port}");
        })
        .args(&[
            "--trust",
            "trusted",
            "--signing-key-file",
            sk.to_str().unwrap(),
        ])
        .start();
    d.wait_until("the join", 60, || runner.joined().len() == 1);
    let machine = runner.joined()[0].clone();
    let alphabet = b"0123456789abcdfghijklmnpqrsvwxyz";
    let (mut total, mut overhead, mut nix) = (vec![], vec![], vec![]);
    for i in 0..n {
        let mut hash = *b"4c5b8vw40dy178xlpddw65q9gf1h2186";
        hash[0] = alphabet[i % 32];
        hash[1] = alphabet[i / 32 % 32];
        let hash = String::from_utf8(hash.to_vec()).unwrap();
        let s = own_step(
            "airlock-bench",
            &hash,
            &format!("cat /nix/store/{input} > $out; echo {i} >> $out"),
            &[input],
        );
        let t0 = Instant::now();
        assert!(runner.send(&machine, runner_request::Message::Build(s.clone())));
        let t = Instant::now();
        loop {
            if let Some(c) = runner.state.lock().unwrap().completed.get(&s.build_id) {
                assert_eq!(
                    c.result_state,
                    proto::BuildResultState::Success as i32,
                    "{c:?}"
                );
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(300),
                "step {i} never completed"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        total.push(t0.elapsed().as_secs_f64());
    }
    // Nix's own time per step, from airlockd's "step completed" lines.
    for line in d.log().lines().filter(|l| l.contains("step completed")) {
        let field = |k: &str| -> Option<f64> {
            let rest = line.split(&format!("{k}=")).nth(1)?;
            rest.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        };
        if let (Some(t), Some(b)) = (field("total_ms"), field("nix_build_ms")) {
            nix.push(b / 1000.0);
            overhead.push((t - b) / 1000.0);
        }
    }
    d.terminate(30);
    println!(
        "hydra steps: {n} (each one input of 64 KiB, one VM), received → CompleteBuild: p50 {:.2} s, p95 {:.2} s",
        pct(&mut total, 0.5),
        pct(&mut total, 0.95)
    );
    println!(
        "  Nix's BuildDerivation in the guest: p50 {:.2} s; overhead (everything else): p50 {:.2} s, p95 {:.2} s",
        pct(&mut nix, 0.5),
        pct(&mut overhead, 0.5),
        pct(&mut overhead, 0.95)
    );
}
