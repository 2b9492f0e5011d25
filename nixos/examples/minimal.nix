# The least a builder needs: a community builder on airlockd's defaults
# (local intake through airlockctl, QEMU, the Nix-built guest).
{
  services.airlock.enable = true;
}
