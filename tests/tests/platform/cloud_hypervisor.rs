//! The cloud-hypervisor backend against the real cloud-hypervisor binary
//! with the tiny PVH test guests (`../shared/tiny-guest`, ours, built by
//! scripts/setup.sh): on this machine's nested KVM no Linux guest reaches
//! user space under cloud-hypervisor, the tiny guest runs in milliseconds.
//! Every test here is named `cloud_hypervisor_…`, so `cargo test
//! cloud_hypervisor` runs exactly them (as an operator with real KVM can).
//!
//! An optional group: cloud-hypervisor has no Debian package and no real
//! crates.io release, so it cannot be installed here. Where the binary is
//! not given (`AIRLOCK_CLOUD_HYPERVISOR`, else `cloud-hypervisor` on
//! `PATH`) or `/dev/kvm` is missing, each test prints `OPTIONAL NOT RUN`.
//! With the binary, a missing tiny guest or virtiofsd is a `SKIPPED`
//! (a failure under AIRLOCK_REQUIRE_E2E=1): setup.sh makes those.
//!
//! Paths: `AIRLOCK_CH_TINY` (the directory with `tiny-poweroff.elf` and
//! `tiny-wait.elf`), `AIRLOCK_VIRTIOFSD`; defaults are where
//! scripts/setup.sh puts them.

use airlock_e2e as common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use airlock::vm::ch::{self, CloudHypervisor, VmFiles};
use airlock::vm::{Disk, Share, VmBackend, VmExit, VmSpec};

const TINY_DEFAULT: &str = "/var/cache/airlock/cloud-hypervisor/tiny";
const VIRTIOFSD_DEFAULT: &str = "/var/cache/airlock/virtiofsd/bin/virtiofsd";
const MARKER: &str = "CH_TINY_UP";

fn env_path(var: &str, default: &str) -> PathBuf {
    std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| default.into())
}

fn ch_binary() -> PathBuf {
    common::cloud_hypervisor_binary().unwrap_or_else(|| "cloud-hypervisor".into())
}
fn tiny(which: &str) -> PathBuf {
    env_path("AIRLOCK_CH_TINY", TINY_DEFAULT).join(format!("tiny-{which}.elf"))
}
fn virtiofsd() -> PathBuf {
    env_path("AIRLOCK_VIRTIOFSD", VIRTIOFSD_DEFAULT)
}

/// The real VMM (optional: `OPTIONAL NOT RUN` without it or /dev/kvm),
/// then the tiny guests and virtiofsd, loud when missing (and a failure
/// under AIRLOCK_REQUIRE_E2E=1).
fn ready(test: &str, need_virtiofsd: bool) -> bool {
    if !common::optional_or_not_run(test, &common::cloud_hypervisor_needs()) {
        return false;
    }
    let mut missing = Vec::new();
    for g in ["poweroff", "wait"] {
        if !tiny(g).exists() {
            missing.push(format!(
                "{} (AIRLOCK_CH_TINY; scripts/setup.sh builds it from ../shared/tiny-guest)",
                tiny(g).display()
            ));
        }
    }
    if need_virtiofsd && !virtiofsd().exists() {
        missing.push(format!("{} (AIRLOCK_VIRTIOFSD)", virtiofsd().display()));
    }
    common::ready_or_skip(test, &missing)
}

fn backend(grace_ms: u64) -> CloudHypervisor {
    CloudHypervisor {
        binary: ch_binary(),
        grace: Duration::from_millis(grace_ms),
        landlock: ch::landlock_abi().is_some(),
        virtiofsd: Some(virtiofsd()),
        run_as: None,
        templates: None,
    }
}

fn spec(dir: &Path, guest: &str) -> VmSpec {
    let disk = dir.join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    VmSpec {
        name: "airlock-ch-test".into(),
        kernel: tiny(guest),
        initrd: PathBuf::new(),
        cmdline: "console=ttyS0".into(),
        memory_mib: 64,
        vcpus: 1,
        disks: vec![Disk {
            path: disk,
            serial: "airlock-test".into(),
            readonly: true,
        }],
        console_log: dir.join("console.log"),
        channel_log: dir.join("channel.log"),
        pidfile: dir.join("vm.pid"),
        tap: None,
        shares: vec![],
        adopt: Default::default(),
    }
}

/// Processes whose command line mentions `needle` (the VM's own files).
fn procs_mentioning(needle: &str) -> Vec<String> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter_map(|e| {
            let c = std::fs::read(e.path().join("cmdline")).ok()?;
            let c = String::from_utf8_lossy(&c).replace('\0', " ");
            c.contains(needle).then_some(c)
        })
        .collect()
}

/// Nothing of the VM is left: no process, API socket, event file, pid file.
fn assert_clean(s: &VmSpec) {
    let files = VmFiles::new(s);
    let dir = s.pidfile.parent().unwrap().to_string_lossy().into_owned();
    // The VMM (and virtiofsd) are reaped asynchronously after a kill.
    let t0 = Instant::now();
    while !procs_mentioning(&dir).is_empty() && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        procs_mentioning(&dir),
        Vec::<String>::new(),
        "a process outlived the VM"
    );
    for p in [&files.api, &files.events, &s.pidfile]
        .into_iter()
        .chain(files.fs.iter())
    {
        assert!(!p.exists(), "{} left behind", p.display());
    }
}

/// Wait (at most 20 s) for the tiny guest's marker on the serial log.
async fn guest_up(console: &Path) {
    let t0 = Instant::now();
    while !std::fs::read_to_string(console).is_ok_and(|c| c.contains(MARKER)) {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "guest never came up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn run(b: &CloudHypervisor, s: &VmSpec, timeout: Duration) -> airlock::vm::Result<VmExit> {
    let (_tx, rx) = tokio::sync::oneshot::channel();
    rt().block_on(b.run(s, timeout, rx))
}

#[test]
fn cloud_hypervisor_tiny_guest_boots_prints_and_powers_off_cleanly() {
    if !ready(
        "cloud_hypervisor_tiny_guest_boots_prints_and_powers_off_cleanly",
        false,
    ) {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let s = spec(t.path(), "poweroff");
    let t0 = Instant::now();
    let exit = run(&backend(1000), &s, Duration::from_secs(30)).unwrap();
    assert!(
        matches!(exit, VmExit::PoweredOff { ok: true, .. }),
        "{exit:?}"
    );
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    let console = std::fs::read_to_string(&s.console_log).unwrap();
    assert!(console.contains(MARKER), "serial log: {console:?}");
    assert_clean(&s);
}

#[test]
fn cloud_hypervisor_timeout_presses_the_power_button_then_kills() {
    if !ready(
        "cloud_hypervisor_timeout_presses_the_power_button_then_kills",
        false,
    ) {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let s = spec(t.path(), "wait");
    let t0 = Instant::now();
    // The WAIT guest halts and ignores the power button: after the grace
    // period the VMM is killed.
    let exit = run(&backend(500), &s, Duration::from_secs(2)).unwrap();
    assert_eq!(exit, VmExit::TimedOut);
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(2500) && took < Duration::from_secs(10),
        "{took:?}"
    );
    assert!(std::fs::read_to_string(&s.console_log)
        .unwrap()
        .contains(MARKER));
    assert_clean(&s);
}

#[test]
fn cloud_hypervisor_cancel_stops_the_vm_with_its_reason() {
    if !ready(
        "cloud_hypervisor_cancel_stops_the_vm_with_its_reason",
        false,
    ) {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let s = spec(t.path(), "wait");
    let b = backend(200);
    let (tx, rx) = tokio::sync::oneshot::channel();
    let exit = rt().block_on(async {
        let vm = b.run(&s, Duration::from_secs(60), rx);
        let cancel = async {
            tokio::time::sleep(Duration::from_millis(800)).await;
            let _ = tx.send("boot timeout".to_string());
            std::future::pending::<()>().await
        };
        tokio::select! { e = vm => e, _ = cancel => unreachable!() }
    });
    assert_eq!(exit.unwrap(), VmExit::Killed("boot timeout".into()));
    assert_clean(&s);
}

#[test]
fn cloud_hypervisor_a_vm_the_vmm_rejects_is_a_clear_error() {
    if !ready(
        "cloud_hypervisor_a_vm_the_vmm_rejects_is_a_clear_error",
        false,
    ) {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let mut s = spec(t.path(), "poweroff");
    s.disks[0].path = t.path().join("no-such-disk.img");
    let err = run(&backend(200), &s, Duration::from_secs(30)).unwrap_err();
    let text = airlock::error::chain(&err);
    assert!(
        text.contains("the VMM refused vm.") && text.contains("HTTP"),
        "{text}"
    );
    assert_clean(&s);
}

#[test]
fn cloud_hypervisor_a_vmm_killed_from_outside_is_reported() {
    if !ready(
        "cloud_hypervisor_a_vmm_killed_from_outside_is_reported",
        false,
    ) {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let s = spec(t.path(), "wait");
    let pidfile = s.pidfile.clone();
    let console = s.console_log.clone();
    let killer = std::thread::spawn(move || {
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(20) {
            let up = std::fs::read_to_string(&console).is_ok_and(|c| c.contains(MARKER));
            if let (true, Ok(pid)) = (up, std::fs::read_to_string(&pidfile)) {
                let pid: i32 = pid.trim().parse().unwrap();
                // SAFETY-free: the kill command.
                std::process::Command::new("kill")
                    .args(["-9", &pid.to_string()])
                    .status()
                    .unwrap();
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    });
    let t0 = Instant::now();
    let exit = run(&backend(200), &s, Duration::from_secs(60)).unwrap();
    assert!(killer.join().unwrap(), "the guest never came up");
    match &exit {
        VmExit::PoweredOff { ok: false, detail } => {
            assert!(
                detail.contains("signal") || detail.contains("KILL"),
                "{detail}"
            )
        }
        other => panic!("{other:?}"),
    }
    assert!(t0.elapsed() < Duration::from_secs(20));
    assert_clean(&s);
}

/// Run `f` on a thread that has entered network namespace `ns` (setns
/// changes only the calling thread; the VMM it starts inherits it).
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let fd = std::fs::File::open(&path).unwrap();
        nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        f()
    })
    .join()
    .unwrap()
}

#[test]
fn cloud_hypervisor_gets_a_tap_from_the_network_policy() {
    if !ready("cloud_hypervisor_gets_a_tap_from_the_network_policy", false) {
        return;
    }
    let ns = common::new_netns("ch");
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().to_owned();
    let (exit, info, counters, taps_after) = in_netns(&ns, move || {
        rt().block_on(async move {
            let policy = airlock_network_policy::Policy::default();
            let net = airlock_network_policy::Network::init(policy).await.unwrap();
            let jn = net.setup().await.unwrap();
            let mut s = spec(&dir, "wait");
            s.tap = Some(jn.tap.clone());
            let b = backend(200);
            let files = VmFiles::new(&s);
            let (tx, rx) = tokio::sync::oneshot::channel();
            let vm = b.run(&s, Duration::from_secs(60), rx);
            let probe = async {
                // Wait for the guest, then read the VM's devices and counters.
                guest_up(&s.console_log).await;
                let info = ch::vm_info(&files.api).await.unwrap();
                let counters = ch::vm_counters(&files.api).await.unwrap();
                let _ = tx.send("done".to_string());
                (info, counters)
            };
            let (exit, (info, counters)) = tokio::join!(vm, probe);
            net.teardown(&jn).await;
            let taps = std::process::Command::new("ip")
                .args(["-o", "link", "show", "type", "tun"])
                .output()
                .unwrap();
            net.cleanup().await.unwrap();
            (
                exit,
                info,
                counters,
                String::from_utf8_lossy(&taps.stdout).into_owned(),
            )
        })
    });
    common::del_netns(&ns);
    assert_eq!(exit.unwrap(), VmExit::Killed("done".into()));
    let net = &info.config["net"][0];
    assert!(net["tap"].as_str().unwrap().starts_with("alk"), "{net}");
    assert!(
        info.device_tree.as_ref().unwrap().contains_key("net0"),
        "{:?}",
        info.device_tree
    );
    let c = &counters["net0"];
    assert!(
        c.contains_key("rx_bytes") && c.contains_key("tx_bytes"),
        "{counters:?}"
    );
    assert!(!taps_after.contains("alk"), "TAP left: {taps_after}");
}

#[test]
fn cloud_hypervisor_virtiofs_share_has_its_own_virtiofsd_that_exits_with_the_vm() {
    if !ready(
        "cloud_hypervisor_virtiofs_share_has_its_own_virtiofsd_that_exits_with_the_vm",
        true,
    ) {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let shared = t.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::write(shared.join("hello"), "hi").unwrap();
    let mut s = spec(t.path(), "wait");
    s.shares = vec![Share {
        tag: "src".into(),
        dir: shared,
        readonly: true,
    }];
    let b = backend(200);
    let files = VmFiles::new(&s);
    let (info, during, exit) = rt().block_on(async {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let vm = b.run(&s, Duration::from_secs(60), rx);
        let probe = async {
            guest_up(&s.console_log).await;
            let info = ch::vm_info(&files.api).await.unwrap();
            let during = procs_mentioning(&files.fs[0].to_string_lossy());
            let _ = tx.send("done".to_string());
            (info, during)
        };
        let (exit, (info, during)) = tokio::join!(vm, probe);
        (info, during, exit)
    });
    assert_eq!(exit.unwrap(), VmExit::Killed("done".into()));
    let fs = &info.config["fs"][0];
    assert_eq!(fs["tag"], "src", "{fs}");
    assert_eq!(info.config["memory"]["shared"], true);
    assert!(
        info.device_tree.as_ref().unwrap().contains_key("fs0"),
        "{:?}",
        info.device_tree
    );
    // One virtiofsd (and the VMM, whose config names the socket) while it ran.
    assert!(
        during.iter().any(|c| c.contains("virtiofsd")),
        "no virtiofsd: {during:?}"
    );
    assert_clean(&s);
}

/// airlockd with `vm.backend = "cloud-hypervisor"` probe-boots the guest
/// at start; a guest that never reaches its init (here the halting test
/// guest in place of the kernel) makes it refuse to start, saying why and
/// what to set instead, and leave no VMM behind.
#[test]
fn cloud_hypervisor_airlockd_refuses_to_start_when_the_probe_boot_fails() {
    if !ready(
        "cloud_hypervisor_airlockd_refuses_to_start_when_the_probe_boot_fails",
        false,
    ) {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let img = t.path().join("image");
    std::fs::create_dir(&img).unwrap();
    std::fs::copy(tiny("wait"), img.join("vmlinux")).unwrap();
    std::fs::write(img.join("initrd.gz"), b"").unwrap();
    std::fs::write(img.join("rootfs.img"), b"").unwrap();
    let config = t.path().join("airlock.toml");
    std::fs::write(
        &config,
        format!(
            "[vm]\nbackend = \"cloud-hypervisor\"\ncloud_hypervisor = \"{}\"\nimage_dir = \"{}\"\nprobe_timeout_secs = 2\nstop_grace_secs = 1\n[network]\nenabled = false\n",
            ch_binary().display(),
            img.display()
        ),
    )
    .unwrap();
    let state = t.path().join("state");
    let t0 = Instant::now();
    let out = std::process::Command::new(common::bin("airlockd"))
        .arg("--config")
        .arg(&config)
        .arg("--state-dir")
        .arg(&state)
        .arg("--socket")
        .arg(t.path().join("s.sock"))
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "airlockd started: {err}");
    assert!(
        err.contains("cannot run the guest on this host")
            && err.contains("set vm.backend = \"qemu\""),
        "{err}"
    );
    assert!(t0.elapsed() < Duration::from_secs(30));
    assert_eq!(
        procs_mentioning(&state.to_string_lossy()),
        Vec::<String>::new(),
        "a VMM outlived the refusal"
    );
}

/// `vm.user`: the VMM runs as its own unprivileged user with only
/// `/dev/kvm`, its TAP (owned by that user, made by the network policy) and
/// its own files. This machine's `/dev/kvm` and `/dev/net/tun` are root's
/// alone, so the test gives the user its own nodes in a private mount
/// namespace (on a builder, group `kvm` and tun's usual mode 0666 do that).
#[test]
fn cloud_hypervisor_runs_as_its_own_user_with_only_kvm_its_tap_and_its_files() {
    use std::os::unix::fs::PermissionsExt;
    if !ready(
        "cloud_hypervisor_runs_as_its_own_user_with_only_kvm_its_tap_and_its_files",
        false,
    ) {
        return;
    }
    let (uid, gid) = (
        64000 + std::process::id() % 1000,
        64000 + std::process::id() % 1000,
    );
    let ns = common::new_netns("chu");
    let t = tempfile::tempdir().unwrap();
    std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let dir = t.path().to_owned();
    let (exit, vmm_uid, tap_owner, net) = in_netns(&ns, move || {
        use nix::mount::{mount, MsFlags};
        use nix::sys::stat::{makedev, mknod, Mode, SFlag};
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).unwrap();
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .unwrap();
        let kvm = dir.join("kvm");
        mknod(
            &kvm,
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o600),
            makedev(10, 232),
        )
        .unwrap();
        std::os::unix::fs::chown(&kvm, Some(uid), Some(gid)).unwrap();
        mount(
            Some(&kvm),
            "/dev/kvm",
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .unwrap();
        // /dev/net/tun is 0666 on Debian and NixOS, root's alone here.
        let tun = dir.join("tun");
        mknod(
            &tun,
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            makedev(10, 200),
        )
        .unwrap();
        std::fs::set_permissions(&tun, std::fs::Permissions::from_mode(0o666)).unwrap();
        mount(
            Some(&tun),
            "/dev/net/tun",
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .unwrap();
        rt().block_on(async move {
            let mut net = airlock_network_policy::Network::init(Default::default())
                .await
                .unwrap();
            net.set_tap_owner(Some((uid, gid)));
            let jn = net.setup().await.unwrap();
            // (sysfs shows the namespace it was mounted in: ask `ip`.)
            let details = std::process::Command::new("ip")
                .args(["-d", "link", "show", &jn.tap])
                .output()
                .unwrap();
            let details = String::from_utf8_lossy(&details.stdout).into_owned();
            let tap_owner = details
                .split_whitespace()
                .skip_while(|w| *w != "user")
                .nth(1)
                .unwrap_or_default()
                .to_owned();
            let mut s = spec(&dir, "wait");
            s.tap = Some(jn.tap.clone());
            let mut b = backend(200);
            b.run_as = Some(airlock::vm::RunAs {
                uid,
                gid,
                groups: vec![gid],
            });
            let files = VmFiles::new(&s);
            let (tx, rx) = tokio::sync::oneshot::channel();
            let vm = b.run(&s, Duration::from_secs(60), rx);
            let probe = async {
                guest_up(&s.console_log).await;
                let pid = std::fs::read_to_string(&s.pidfile).unwrap();
                let status =
                    std::fs::read_to_string(format!("/proc/{}/status", pid.trim())).unwrap();
                let uid_line = status
                    .lines()
                    .find(|l| l.starts_with("Uid:"))
                    .unwrap()
                    .to_owned();
                let info = ch::vm_info(&files.api).await.unwrap();
                let _ = tx.send("done".to_string());
                (uid_line, info.config["net"].clone())
            };
            tokio::pin!(vm);
            let (uid_line, net_cfg) = tokio::select! {
                e = &mut vm => panic!("the VM ended before the guest came up: {e:?}"),
                r = probe => r,
            };
            let exit = vm.await;
            net.teardown(&jn).await;
            net.cleanup().await.unwrap();
            (exit, uid_line, tap_owner, net_cfg)
        })
    });
    common::del_netns(&ns);
    assert_eq!(exit.unwrap(), VmExit::Killed("done".into()));
    // Real, effective, saved and filesystem uid: all the VM user's.
    let want = format!("Uid:\t{uid}\t{uid}\t{uid}\t{uid}");
    assert_eq!(vmm_uid, want);
    assert_eq!(
        tap_owner.trim(),
        uid.to_string(),
        "the TAP belongs to the VMM's user"
    );
    assert!(net[0]["tap"].as_str().unwrap().starts_with("alk"), "{net}");
}
