//! VMM start-up and tear-down, cloud-hypervisor against QEMU, on the same
//! tiny PVH guest (it prints a marker on COM1, then writes port 0x600):
//! process start → `vm.boot` accepted (cloud-hypervisor only: QEMU boots
//! from its command line) → marker on the serial log → process exit. Under
//! cloud-hypervisor port 0x600 is the ACPI sleep control, so the guest
//! powers off; QEMU gets an `isa-debug-exit` device there (microvm, no
//! ACPI), which ends the process the same way. KVM for both; median of 20.
//!
//! `cargo bench -p airlock-e2e --bench vmm` (paths as in
//! tests/tests/platform/cloud_hypervisor.rs: AIRLOCK_CLOUD_HYPERVISOR, AIRLOCK_CH_TINY).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use airlock::vm::ch;

const RUNS: usize = 20;

fn env_path(var: &str, default: &str) -> PathBuf {
    std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| default.into())
}

fn wait_marker(console: &Path, t0: Instant) -> Duration {
    loop {
        if std::fs::read_to_string(console).is_ok_and(|c| c.contains("CH_TINY_UP")) {
            return t0.elapsed();
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "no marker");
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// (boot accepted, marker, exit) since process start.
fn one_ch(
    bin: &Path,
    kernel: &Path,
    dir: &Path,
    rt: &tokio::runtime::Runtime,
) -> (Duration, Duration, Duration) {
    let sock = dir.join("api.sock");
    let console = dir.join("console.log");
    let _ = std::fs::remove_file(&sock);
    let _ = std::fs::remove_file(&console);
    let t0 = Instant::now();
    let mut child = Command::new(bin)
        .arg("--api-socket")
        .arg(format!("path={}", sock.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let body = serde_json::json!({
        "cpus": {"boot_vcpus": 1, "max_vcpus": 1},
        "memory": {"size": 64u64 << 20},
        "payload": {"kernel": kernel.display().to_string(), "cmdline": ""},
        "serial": {"mode": "File", "file": console.display().to_string()},
        "console": {"mode": "Off"},
    });
    let accepted = rt.block_on(async {
        loop {
            if let Ok((200, _)) = ch::api(&sock, "GET", "vmm.ping", None).await {
                break;
            }
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        let (s, b) = ch::api(
            &sock,
            "PUT",
            "vm.create",
            Some(body.to_string().into_bytes()),
        )
        .await
        .unwrap();
        assert!((200..300).contains(&s), "{}", String::from_utf8_lossy(&b));
        let (s, _) = ch::api(&sock, "PUT", "vm.boot", None).await.unwrap();
        assert!((200..300).contains(&s));
        t0.elapsed()
    });
    let marker = wait_marker(&console, t0);
    let st = child.wait().unwrap();
    let exit = t0.elapsed();
    assert!(st.success(), "{st}");
    (accepted, marker, exit)
}

fn one_qemu(kernel: &Path, dir: &Path) -> (Duration, Duration) {
    let console = dir.join("qconsole.log");
    let _ = std::fs::remove_file(&console);
    let t0 = Instant::now();
    let mut child = Command::new("qemu-system-x86_64")
        .args([
            "-M",
            "microvm,acpi=off",
            "-accel",
            "kvm",
            "-cpu",
            "host",
            "-m",
            "64M",
        ])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
        ])
        .args(["-device", "isa-debug-exit,iobase=0x600,iosize=0x01"])
        .arg("-kernel")
        .arg(kernel)
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let marker = wait_marker(&console, t0);
    let st = child.wait().unwrap();
    let exit = t0.elapsed();
    // isa-debug-exit: status (0x34 << 1) | 1.
    assert_eq!(st.code(), Some((0x34 << 1) | 1), "{st}");
    (marker, exit)
}

fn median(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64() * 1000.0
}

fn main() {
    let bin = env_path(
        "AIRLOCK_CLOUD_HYPERVISOR",
        "/run/current-system/sw/bin/cloud-hypervisor",
    );
    let kernel = env_path(
        "AIRLOCK_CH_TINY",
        "/var/cache/airlock/cloud-hypervisor/tiny",
    )
    .join("tiny-poweroff.elf");
    if !bin.exists() || !kernel.exists() {
        eprintln!(
            "vmm bench: needs {} (AIRLOCK_CLOUD_HYPERVISOR) and {} (AIRLOCK_CH_TINY; scripts/setup.sh)",
            bin.display(),
            kernel.display()
        );
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (mut ca, mut cm, mut ce, mut qm, mut qe) = (vec![], vec![], vec![], vec![], vec![]);
    for _ in 0..RUNS {
        let (a, m, e) = one_ch(&bin, &kernel, t.path(), &rt);
        ca.push(a);
        cm.push(m);
        ce.push(e);
        let (m, e) = one_qemu(&kernel, t.path());
        qm.push(m);
        qe.push(e);
    }
    println!("median of {RUNS}, ms since process start | vm.boot accepted | marker | process exit");
    println!("|---|---|---|---|");
    println!(
        "| cloud-hypervisor v53.0 | {:.1} | {:.1} | {:.1} |",
        median(ca),
        median(cm),
        median(ce)
    );
    println!(
        "| QEMU (microvm, KVM) | — | {:.1} | {:.1} |",
        median(qm),
        median(qe)
    );
}
