# airlock for non-flake users:
#   nix-build -A airlock            airlockd, airlockctl, the static guest agent
#   nix-build -A guest-image        the Nix-built guest (vmlinux, initrd.gz, rootfs.img)
#   imports = [ (import ./. { }).module ];     in a NixOS configuration
#   nix-build -A tests.builder      a NixOS VM test (needs KVM)
# The same outputs as flake.nix.
{
  pkgs ? import <nixpkgs> { },
}:
let
  airlock = pkgs.callPackage ./nixos/package.nix { };
in
{
  inherit airlock;
  default = airlock;
  guest-image = pkgs.callPackage ./vm-images/nix/guest.nix { };
  module = ./nixos/module.nix;
  overlay = import ./nixos/overlay.nix;
  tests = import ./nixos-tests { inherit pkgs; };
}
