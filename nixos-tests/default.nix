# airlock's NixOS VM tests (pkgs.testers.runNixOSTest). Each needs KVM on the
# machine that runs it, and the builder node runs airlock's own VMs inside
# its VM (nested KVM, or QEMU's TCG when that does not work).
{ pkgs }:
let
  args = {
    module = ../nixos/module.nix;
    fixtures = ../tests/fixtures/pkgs;
  };
in
{
  # One builder on the module's defaults: the unit, its hardening, the gc
  # timer, a job submitted with airlockctl.
  minimal = pkgs.testers.runNixOSTest (import ./minimal.nix args);
  # A trusted builder in an ofborg-like setup: a job from RabbitMQ, the
  # fetch network (internet yes, LAN no), release, a client substituting.
  builder = pkgs.testers.runNixOSTest (import ./builder.nix args);
}
