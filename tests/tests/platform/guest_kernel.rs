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

    // The Debian guest's initramfs and root around the trimmed kernel.
    let images = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(kdir.join("vmlinux"), images.path().join("vmlinux")).unwrap();
    for f in ["initrd.gz", "rootfs.img"] {
        std::os::unix::fs::symlink(image_dir().join(f), images.path().join(f)).unwrap();
    }

    let www = tempfile::tempdir().unwrap();
    std::fs::write(www.path().join("file.txt"), "airlock-internet-ok\n").unwrap();
    let net = Internet::up(www.path());
    let d = Daemon::builder()
        .netns(&net.host)
        .with(|c| c.vm.image_dir = images.path().to_owned())
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
