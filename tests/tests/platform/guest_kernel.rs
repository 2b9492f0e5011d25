//! The trimmed guest kernel (issue 13: "a kernel with only what the guest
//! needs"), for real. The Nix-built guest compiles nixpkgs' kernel source
//! with `vm-images/guest/kernel-config.sh` and the fragment
//! `vm-images/guest/kernel.config`; nixpkgs' kernel cannot be built here, so
//! `vm-images/guest/build-kernel.sh` (run by scripts/setup.sh) builds Debian's
//! 6.12 source with the same script and fragment, and this test boots it
//! under QEMU in place of Debian's stock kernel, with the Debian guest's
//! initramfs and root (whose modules it cannot and need not load: everything
//! is built in). A real job then goes through both phases: a fixed-output
//! fetch over the fetch network (virtio-net, IPv4, DNS configuration), and
//! sandboxed builds on the per-job /nix disk, exported and verified.

use airlock_e2e as common;

use std::path::PathBuf;

use common::internet::Internet;
use common::*;

const KERNEL_DEFAULT: &str = "/var/cache/airlock/guest-kernel/current";

fn kernel_dir() -> PathBuf {
    std::env::var_os("AIRLOCK_GUEST_KERNEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| KERNEL_DEFAULT.into())
}

#[test]
fn a_job_runs_on_the_trimmed_guest_kernel() {
    const TEST: &str = "a_job_runs_on_the_trimmed_guest_kernel";
    if !prerequisites(TEST) {
        return;
    }
    let kdir = kernel_dir();
    if !ready_or_skip(
        TEST,
        &if kdir.join("vmlinux").exists() {
            vec![]
        } else {
            vec![format!(
                "{}/vmlinux (vm-images/guest/build-kernel.sh; scripts/setup.sh runs it)",
                kdir.display()
            )]
        },
    ) {
        return;
    }
    let config = std::fs::read_to_string(kdir.join("config")).unwrap();
    // What the fragment asks is what was built: no module support at all,
    // and the drivers the guest needs built in.
    assert!(config.contains("# CONFIG_MODULES is not set"));
    for opt in [
        "CONFIG_PVH=y",
        "CONFIG_VIRTIO_BLK=y",
        "CONFIG_VIRTIO_NET=y",
        "CONFIG_VIRTIO_CONSOLE=y",
        "CONFIG_EXT4_FS=y",
        "CONFIG_OVERLAY_FS=y",
    ] {
        assert!(config.lines().any(|l| l == opt), "{opt} not in the config");
    }

    // The Debian guest's image with airlockd's default `vm.kernel = "auto"`
    // (the trimmed kernel for that image), or the kernel the environment
    // names.
    let kernel = match std::env::var_os("AIRLOCK_GUEST_KERNEL_DIR") {
        Some(_) => kdir.join("vmlinux").display().to_string(),
        None => "auto".to_owned(),
    };

    let www = tempfile::tempdir().unwrap();
    std::fs::write(www.path().join("file.txt"), "airlock-internet-ok\n").unwrap();
    let net = Internet::up(www.path());
    let d = Daemon::builder()
        .netns(&net.host)
        .with(|c| c.vm.kernel = kernel)
        .toml("[network]\ndns = [\"203.0.113.10\"]\n")
        .start();
    // The fixture set plus an attr that records the kernel it was built on.
    let fixture = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/pkgs/default.nix"),
    )
    .unwrap();
    let top = br#"{ ... }@args: import ./fixture.nix args // {
  uname = derivation {
    name = "airlock-uname";
    system = args.system or builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" "cat /proc/version; cat /proc/version > $out" ];
  };
}
"#;
    let (repo, head) = fixture_repo(
        d.dir.path(),
        &[("fixture.nix", fixture), ("default.nix", top.to_vec())],
    );
    let id = d.submit(&repo, &head, &["chain", "net.fetch-ok", "uname"]);
    let rec = d.wait(&id, 900);
    let log = d.build_log(&id);
    assert_eq!(status(&rec), "Success", "{rec:#}\n{log}\n{}", d.log());
    let paths: Vec<String> = serde_json::from_value(rec["result"]["store_paths"].clone()).unwrap();
    for want in ["-airlock-chain-3", "-airlock-fetch-ok", "-airlock-uname"] {
        assert!(paths.iter().any(|p| p.ends_with(want)), "{want}: {paths:?}");
    }
    // It was this kernel that ran the builds: /proc/version in the sandbox
    // names build-kernel.sh's build user and host.
    let version = log
        .lines()
        .find(|l| l.contains("Linux version"))
        .unwrap_or_else(|| panic!("no /proc/version in the build log:\n{log}"));
    assert!(
        version.contains("(airlock@airlock)"),
        "not the trimmed kernel: {version}"
    );
    println!("guest kernel: {version}");
}

/// A `vm.kernel` that does not boot: the VM is booted again on the image's
/// own kernel, the job succeeds, and the log says why, once.
#[test]
fn a_kernel_that_does_not_boot_falls_back_to_the_images_own() {
    const TEST: &str = "a_kernel_that_does_not_boot_falls_back_to_the_images_own";
    if !prerequisites(TEST) {
        return;
    }
    let d0 = tempfile::tempdir().unwrap();
    let bogus = d0.path().join("vmlinux-bogus");
    std::fs::write(&bogus, b"not a kernel").unwrap();
    let d = Daemon::builder()
        .with(|c| c.vm.kernel = bogus.display().to_string())
        .toml("[network]\nenabled = false\n")
        .start();
    let fixture = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/pkgs/default.nix"),
    )
    .unwrap();
    let (repo, head) = fixture_repo(d.dir.path(), &[("default.nix", fixture)]);
    const SAID: &str = "booting it again on the image's own kernel";
    let id = d.submit(&repo, &head, &["leaf"]);
    let rec = d.wait(&id, 600);
    assert_eq!(status(&rec), "Success", "{rec:#}\n{}", d.log());
    assert!(
        d.log().contains(SAID),
        "no fallback in the log:\n{}",
        d.log()
    );
    // Later VMs boot the image's kernel directly.
    let id = d.submit(&repo, &head, &["leaf"]);
    assert_eq!(status(&d.wait(&id, 600)), "Success", "{}", d.log());
    assert_eq!(d.log().matches(SAID).count(), 1, "{}", d.log());
}
