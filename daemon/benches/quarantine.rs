//! Verifying a hostile export: as many store paths as fit in the 8 MiB
//! manifest cap (about 49 000), each referring to the one before it, so
//! every NAR is rescanned for every hash part of the job. The security
//! review measured about 194 s of CPU for such an export when the reference
//! scanner was rebuilt per path; it is built once per export now.
//!
//! `cargo bench -p airlock --bench quarantine` (prints one line per run).

use std::time::Instant;

use airlock::quarantine::craft::{entry, stream};
use airlock::quarantine::{import, JobRef, Limits};
use airlock::store::nar::build::{nar, Node};
use sha2::Digest;

const COMMIT: &str = "e9872fa30caac57c69bfac8667e6c21254603df1";

fn path(i: usize) -> String {
    let h = sha2::Sha256::digest(i.to_le_bytes());
    format!(
        "/nix/store/{}-p{i}",
        airlock::store::nix32::encode(&h[..20])
    )
}

/// The largest chain whose manifest fits under the wire format's cap.
fn hostile_export() -> (Vec<u8>, usize) {
    let mut entries = Vec::new();
    let mut manifest_bytes = 0usize;
    for i in 0.. {
        let me = path(i);
        let data = if i == 0 {
            "no references".to_owned()
        } else {
            format!("depends on {}", path(i - 1))
        };
        let n = nar(&Node::File {
            exec: false,
            data: data.as_bytes(),
        });
        let prev = (i > 0).then(|| path(i - 1));
        let refs: Vec<&str> = prev.iter().map(String::as_str).collect();
        let e = entry(&me, &n, &refs);
        manifest_bytes += serde_json::to_vec(&e).expect("serialises").len() + 1;
        if manifest_bytes > (airlock_wire::MAX_MANIFEST_BYTES as usize) - 4096 {
            break;
        }
        entries.push((e, n));
    }
    let count = entries.len();
    (stream(entries), count)
}

fn main() {
    let t = Instant::now();
    let (data, count) = hostile_export();
    println!(
        "crafted {count} paths, {} bytes, in {:.2} s",
        data.len(),
        t.elapsed().as_secs_f64()
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let exp = dir.path().join("export.img");
    std::fs::write(&exp, &data).expect("write export");
    let limits = Limits {
        max_nar_bytes: 1 << 20,
        max_paths: 100_000,
        max_total_bytes: 100 << 30,
    };
    for run in 0..3 {
        let id = uuid::Uuid::new_v4().to_string();
        let job = JobRef {
            job_id: &id,
            commit: COMMIT,
            repo: "o/n",
            pr: 1,
            origin: None,
            upstream: &Default::default(),
        };
        let t = Instant::now();
        let imp = import(&exp, &dir.path().join(format!("q{run}")), &job, &limits)
            .expect("an honest (if hostile-sized) export is accepted");
        println!(
            "BENCH quarantine import run {run}: {} paths verified and published in {:.2} s",
            imp.paths.len(),
            t.elapsed().as_secs_f64()
        );
    }
}
