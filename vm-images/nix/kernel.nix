# airlock's guest kernel: nixpkgs' default kernel source, configured with
# only what the guest needs. The configuration is `make tinyconfig` plus the
# fragment vm-images/guest/kernel.config (virtio PCI/block/console/net, PVH,
# ext4, overlayfs, IPv4/6, the Nix sandbox's namespaces and seccomp, KVM for
# nested NixOS tests), made by vm-images/guest/kernel-config.sh, which fails
# if an option of the fragment does not survive `olddefconfig`. Everything is
# built in: no modules, so the initramfs loads none.
#
# The same script and fragment make the kernel that tests/tests/platform/guest_kernel.rs
# builds from Debian's linux-source and runs real jobs on.
#
# Being trimmed, it is not on cache.nixos.org: each builder (or the operator's
# own Hydra) compiles it once, a few minutes on a builder-class machine.
{
  stdenv,
  buildPackages,
  linuxPackages,
  linuxManualConfig,
  bison,
  flex,
  perl,
  bc,
  base ? linuxPackages.kernel,
}:
let
  configfile = stdenv.mkDerivation {
    pname = "airlock-guest-kernel-config";
    inherit (base) version src;
    depsBuildBuild = [ buildPackages.stdenv.cc ];
    nativeBuildInputs = [
      bison
      flex
      perl
      bc
    ];
    dontConfigure = true;
    buildPhase = ''
      runHook preBuild
      patchShebangs scripts
      bash ${../guest/kernel-config.sh} . ${../guest/kernel.config} config \
        ARCH=${stdenv.hostPlatform.linuxArch}
      runHook postBuild
    '';
    installPhase = ''
      runHook preInstall
      cp config $out
      runHook postInstall
    '';
  };

  kernel = linuxManualConfig {
    inherit (base) src version modDirVersion;
    inherit configfile;
    # What build.nix would otherwise read from the config by importing it from
    # the derivation: no module support, so no `modules`/`dev` outputs.
    allowImportFromDerivation = false;
    config = {
      CONFIG_MODULES = "n";
      CONFIG_RUST = "n";
    };
  };
in
kernel.overrideAttrs (old: {
  # The guest boots the uncompressed ELF (PVH entry note) directly; build.nix
  # installs only bzImage on x86, so take vmlinux from the build tree.
  postInstall = (old.postInstall or "") + ''
    cp vmlinux $out/vmlinux
  '';
  passthru = (old.passthru or { }) // {
    inherit configfile;
    fragment = ../guest/kernel.config;
  };
  meta = (old.meta or { }) // {
    description = "airlock's guest kernel (tinyconfig + vm-images/guest/kernel.config)";
  };
})
