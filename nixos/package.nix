# airlock: airlockd, airlockctl and the guest agent, built from this
# workspace (Cargo.lock pins every crate; nothing is fetched outside it).
#
# Runtime tools are wired by absolute store path in two ways:
#  - airlockd is wrapped (makeWrapper --prefix PATH) with git, nftables (nft),
#    iproute2, e2fsprogs (mkfs.ext4, debugfs), coreutils (cp) and bash (sh):
#    the commands airlockd runs by name. --prefix, not --set: an operator's
#    PATH still works for anything else, but these come first.
#  - the VMMs (QEMU, cloud-hypervisor, virtiofsd) are also on that PATH, and
#    are in passthru so the NixOS module writes their absolute paths into
#    vm.qemu, vm.cloud_hypervisor and vm.virtiofsd of the TOML file: the
#    config says which binary runs the VMs, not the PATH.
#
# The guest agent is built separately against musl and linked statically
# (pkgsStatic): it is copied onto each job's input disk and runs inside the
# guest, whose /nix is the job's own empty disk, so it cannot load a glibc
# from /nix/store. The static binary runs in both guests (this Nix-built one
# and the Debian one from vm-images/guest/build-guest.sh). It is installed as
# $out/bin/airlock-agent, next to airlockd, which is where airlockd looks
# when vm.agent is empty.
{
  lib,
  rustPlatform,
  pkgsStatic,
  makeWrapper,
  git,
  nftables,
  iproute2,
  e2fsprogs,
  coreutils,
  bash,
  qemu_kvm,
  cloud-hypervisor,
  virtiofsd,
}:
let
  # Only what cargo needs: the workspace manifest, the lock file and the
  # members (tests/ is a member, so its manifest and targets must exist).
  # Never target/, fuzz crates or the docs, so an edit there does not change
  # the source hash. (A filter, not lib.fileset: lib.fileset needs Nix 2.14,
  # and the test machines evaluate with Debian's Nix 2.8.)
  root = toString ../.;
  members = [
    "daemon"
    "network-policy"
    "nix-formats"
    "vm-images/agent"
    "vm-images/wire"
    "tests"
  ];
  wanted =
    path: type:
    let
      rel = lib.removePrefix "${root}/" (toString path);
    in
    builtins.elem rel [
      "Cargo.toml"
      "Cargo.lock"
      "vm-images"
    ]
    || lib.any (m: rel == m || lib.hasPrefix "${m}/" rel) members
    && !(lib.hasPrefix "nix-formats/fuzz" rel)
    && !(lib.elem "target" (lib.splitString "/" rel));
  src = lib.cleanSourceWith {
    name = "airlock-source";
    src = ../.;
    filter = wanted;
  };
  version = (lib.importTOML ../Cargo.toml).workspace.package.version;
  cargoLock.lockFile = ../Cargo.lock;

  agent = pkgsStatic.rustPlatform.buildRustPackage {
    pname = "airlock-agent";
    inherit version src cargoLock;
    cargoBuildFlags = [ "-p" "airlock-agent" ];
    # The agent's tests run in the workspace's own suite (they need a VM).
    doCheck = false;
    meta.mainProgram = "airlock-agent";
  };

  runtimeTools = [
    git
    nftables
    iproute2
    e2fsprogs
    coreutils
    bash
    qemu_kvm
    cloud-hypervisor
    virtiofsd
  ];
in
rustPlatform.buildRustPackage {
  pname = "airlock";
  inherit version src cargoLock;

  cargoBuildFlags = [ "-p" "airlock" ];
  # The test suite needs root, network namespaces, QEMU and a guest image
  # (scripts/test.sh); none of that exists in a Nix build sandbox.
  doCheck = false;

  nativeBuildInputs = [ makeWrapper ];

  postInstall = ''
    install -m 0555 ${agent}/bin/airlock-agent $out/bin/airlock-agent
    wrapProgram $out/bin/airlockd --prefix PATH : ${lib.makeBinPath runtimeTools}
  '';

  passthru = {
    inherit agent;
    qemu = qemu_kvm;
    cloudHypervisor = cloud-hypervisor;
    inherit virtiofsd;
  };

  meta = {
    description = "Build untrusted nixpkgs pull requests in throwaway VMs";
    license = lib.licenses.mit;
    mainProgram = "airlockd";
    platforms = [ "x86_64-linux" ];
  };
}
