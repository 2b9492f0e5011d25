# services.airlock.enable = true and not much more: the unit starts with its
# hardening, airlockctl reaches it, a job runs in a VM and is in the journal.
{ module, fixtures }:
{ pkgs, lib, ... }:
{
  name = "airlock-minimal";

  nodes.builder = {
    imports = [ module ];
    virtualisation = {
      memorySize = 3072;
      cores = 2;
      diskSize = 8192;
      # Nested KVM where the host offers it; airlockd falls back to TCG.
      qemu.options = [ "-cpu host" ];
    };
    environment.systemPackages = [ pkgs.git ];
    services.airlock = {
      enable = true;
      settings = {
        vm.memory_mib = 1024;
        vm.nix_disk_mib = 2048;
        # No internet in the test: nothing to substitute from.
        nix.substituters = [ ];
      };
    };
  };

  testScript = ''
    ${import ./lib.nix { inherit fixtures; }}

    builder.wait_for_unit("airlockd.service")
    builder.wait_until_succeeds("airlockctl jobs")

    with subtest("the unit runs with its hardening and device allow-list"):
        props = builder.succeed(
            "systemctl show airlockd -p User -p DevicePolicy -p DeviceAllow"
            " -p CapabilityBoundingSet -p ProtectSystem -p NoNewPrivileges"
        )
        print(props)
        assert "DevicePolicy=closed" in props, props
        assert "/dev/kvm rw" in props, props
        assert "ProtectSystem=strict" in props, props
        assert "NoNewPrivileges=yes" in props, props
        assert "cap_net_admin" in props.lower(), props
        print(builder.succeed("systemd-analyze security airlockd.service || true"))
        builder.succeed("test -S /run/airlock/airlockd.sock")
        builder.succeed("systemctl list-timers airlock-gc.timer | grep airlock-gc")
        builder.succeed("systemctl start airlock-gc.service")

    with subtest("a job builds in a VM and shows in airlockctl, systemctl and the journal"):
        base, head = make_repo(builder, "/root/repo")
        job = builder.succeed(
            f"airlockctl submit --repo /root/repo --head {head} --attr chain"
        ).strip()
        builder.succeed(f"airlockctl wait {job}", timeout=1800)
        print(builder.succeed(f"airlockctl show {job}"))
        builder.succeed(f"journalctl -u airlockd | grep {job}")
        builder.succeed("systemctl status airlockd.service")
  '';
}
