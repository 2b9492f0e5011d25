# services.airlock: airlockd on a NixOS builder. See docs/nixos.md.
#
# The daemon reads one TOML file (docs/configuration.md); `settings` is that
# file (RFC 42): a freeform TOML value with typed options inside it, on the
# daemon's own key names (`settings.vm.memory_mib`). A typed key left at
# null is not written, so airlockd's own default applies (the module does
# not repeat the daemon's defaults). The options of earlier versions
# (`maxJobs`, `vm.memory`, `intake.amqp.url`, ...) still work: each is
# renamed to its `settings` key, with a warning.
#
# The rendered file is checked at build time by the daemon itself
# (`airlockd --check-config`, `checkConfig`): the module does not copy the
# daemon's rules. Its own assertions are about Nix: secrets that would land
# in the world-readable store, and the firewall.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  inherit (lib)
    mkOption
    mkEnableOption
    mkIf
    mkDefault
    types
    literalExpression
    ;

  cfg = config.services.airlock;
  format = pkgs.formats.toml { };

  # A secret is a path read by airlockd at run time, never its content:
  # an absolute path string that is not in the Nix store.
  secretFile = types.nullOr (types.externalPath or types.str);

  # A key of airlockd's file with a type; null: not written, airlockd's
  # default applies.
  key =
    type: description:
    mkOption {
      type = types.nullOr type;
      default = null;
      inherit description;
    };
  # A key holding a secret's path (read by airlockd at start).
  secretKey =
    example: description:
    mkOption {
      type = secretFile;
      default = null;
      inherit example description;
    };
  # A key the module always writes (a path of this system), changeable.
  pathKey =
    default: defaultText: description:
    mkOption {
      type = types.str;
      inherit default description;
      defaultText = literalExpression defaultText;
    };

  # The typed keys of `settings`; every other key of docs/configuration.md
  # is accepted as it is (freeform) and checked by airlockd.
  settingsOptions = {
    trust = key (types.enum [
      "trusted"
      "community"
    ]) "`trusted` may release labelled outputs to its signed binary cache (needs a signing key); `community` never releases. null: airlockd's default, community.";
    max_jobs = key types.ints.unsigned "Jobs (VMs) running at the same time. null: airlockd's default (1).";
    state_dir = mkOption {
      type = types.str;
      default = "/var/lib/airlock";
      description = "Jobs, quarantine, the released cache, git caches, input images (the unit's `StateDirectory`).";
    };
    socket = mkOption {
      type = types.str;
      default = "/run/airlock/airlockd.sock";
      description = "airlockctl's unix socket (root only; group `airlock-admin` uses the D-Bus API).";
    };
    vm = {
      backend = key (types.enum [
        "qemu"
        "cloud-hypervisor"
      ]) "The VMM. null: airlockd's default (qemu).";
      vcpus = key types.ints.unsigned "vCPUs per VM.";
      memory_mib = key types.ints.unsigned "Memory per VM, in MiB.";
      nix_disk_mib = key types.ints.positive "Size of each job's writable /nix disk, in MiB (also the job's disk limit).";
      user = mkOption {
        type = types.str;
        default = "airlock-vm";
        description = "The VMMs' user (`NAME` or `UID:GID`; the module creates `airlock-vm`, group `kvm`). Not root, and required, with a signing key. Empty: the VMMs run as root.";
      };
      image_dir = pathKey "${cfg.guestImage}" ''"''${config.services.airlock.guestImage}"'' "The guest image (`guestImage`).";
      kernel = mkOption {
        type = types.str;
        default = "";
        description = "A guest kernel to boot instead of the image's `vmlinux` while it boots (airlockd's own default is the Debian build's trimmed kernel). Empty: the image's, which for `guestImage`'s default is already airlock's trimmed kernel.";
      };
      agent = pathKey "${cfg.package}/bin/airlock-agent" ''"''${config.services.airlock.package}/bin/airlock-agent"'' "The guest agent, copied into each job's input disk.";
      qemu = pathKey "${cfg.package.qemu or pkgs.qemu_kvm}/bin/qemu-system-x86_64" ''"''${config.services.airlock.package.qemu or pkgs.qemu_kvm}/bin/qemu-system-x86_64"'' "QEMU (absolute: the configuration, not PATH, says what runs VMs).";
      cloud_hypervisor = pathKey "${
        cfg.package.cloudHypervisor or pkgs.cloud-hypervisor
      }/bin/cloud-hypervisor" ''"''${config.services.airlock.package.cloudHypervisor or pkgs.cloud-hypervisor}/bin/cloud-hypervisor"'' "cloud-hypervisor, for `vm.backend = \"cloud-hypervisor\"`.";
      virtiofsd = pathKey "${cfg.package.virtiofsd or pkgs.virtiofsd}/bin/virtiofsd" ''"''${config.services.airlock.package.virtiofsd or pkgs.virtiofsd}/bin/virtiofsd"'' "virtiofsd, for VMs that share a directory (cloud-hypervisor).";
    };
    limits.job_timeout_secs = key types.ints.unsigned "Wall-clock limit of a job's build VM, in seconds.";
    amqp = {
      url = key types.str "The ofborg broker, `amqps://user@host/vhost` (no password here: use `amqp.password_file`). Enables the broker intake.";
      password_file = secretKey "/run/secrets/airlock-amqp-password" "File holding the broker password, read by airlockd at start.";
    };
    release = {
      label = key types.str "The PR label that says the input is not malicious.";
      signing_key_file = secretKey "/run/secrets/airlock-signing-key" "Nix secret key (`nix-store --generate-binary-cache-key`), passed to airlockd as a systemd credential. Required with `trust = \"trusted\"`.";
    };
    github = {
      token_file = secretKey "/run/secrets/airlock-github-token" "File with a GitHub API token.";
      webhook_secret_file = secretKey "/run/secrets/airlock-webhook-secret" "The webhook's shared secret. Required with `github.webhook_listen`.";
      app_id = key types.ints.unsigned "A GitHub App's id (with `app_key_file` and `installation_id`): reviews post check runs, which only an App may write.";
      app_key_file = secretKey "/run/secrets/airlock-github-app.pem" "The GitHub App's private key (PEM), read by airlockd at start.";
      installation_id = key types.ints.unsigned "The App's installation on the reviewed repositories.";
    };
    cache.listen = key types.str "`ADDR:PORT` of the binary cache server (trusted builders).";
    network = {
      allow = key (types.listOf types.str) "Private destinations fixed-output derivations may reach anyway (`10.1.2.0/24`, `10.1.2.3:5000`).";
      dns = key (types.listOf types.str) "DNS resolvers of the fetch VMs.";
    };
    nix = {
      substituters = key (types.listOf types.str) "Upstream binary caches the fetch phase substitutes from (through airlockd's proxy).";
      trusted_public_keys = key (types.listOf types.str) "Keys a narinfo from those caches must be signed with.";
    };
    sponsor = {
      name = key types.str "Who runs and pays for this builder: credited as \"These build results were contributed by: NAME – URL\" in every result posted to ofborg and at the end of every build log.";
      url = key types.str "Where to read about them.";
    };
    substituter.dir = mkOption {
      type = types.str;
      default = "/var/cache/airlock/substituter";
      description = "The substituter's NARs: a cache, not state (the unit's `CacheDirectory`).";
    };
    dbus.address = mkOption {
      type = types.str;
      default = "system";
      description = "The admin API (docs/dbus.md) on the system bus; the module's policy lets root and group `airlock-admin` call it.";
    };
  };

  # Every option of earlier versions, and the `settings` key it now is.
  renamed = [
    [ [ "trust" ] [ "trust" ] ]
    [ [ "maxJobs" ] [ "max_jobs" ] ]
    [ [ "vm" "backend" ] [ "vm" "backend" ] ]
    [ [ "vm" "vcpus" ] [ "vm" "vcpus" ] ]
    [ [ "vm" "memory" ] [ "vm" "memory_mib" ] ]
    [ [ "vm" "diskSize" ] [ "vm" "nix_disk_mib" ] ]
    [ [ "vm" "timeout" ] [ "limits" "job_timeout_secs" ] ]
    [ [ "intake" "amqp" "url" ] [ "amqp" "url" ] ]
    [ [ "intake" "amqp" "passwordFile" ] [ "amqp" "password_file" ] ]
    [ [ "release" "label" ] [ "release" "label" ] ]
    [ [ "release" "signingKeyFile" ] [ "release" "signing_key_file" ] ]
    [ [ "release" "githubTokenFile" ] [ "github" "token_file" ] ]
    [ [ "release" "webhookSecretFile" ] [ "github" "webhook_secret_file" ] ]
    [ [ "cache" "listenAddress" ] [ "cache" "listen" ] ]
    [ [ "network" "allowedEgress" ] [ "network" "allow" ] ]
    [ [ "network" "resolvers" ] [ "network" "dns" ] ]
    [ [ "nix" "substituters" ] [ "nix" "substituters" ] ]
    [ [ "nix" "trustedPublicKeys" ] [ "nix" "trusted_public_keys" ] ]
    [ [ "sponsor" ] [ "sponsor" ] ]
  ];

  # What is written: typed keys left at null are dropped (and tables left
  # empty by that). A derivation given as a value is a value, not a table.
  dropNulls =
    a:
    lib.filterAttrs (_: v: v != null && v != { }) (
      lib.mapAttrs (_: v: if builtins.isAttrs v && !lib.isDerivation v then dropNulls v else v) a
    );

  s = dropNulls cfg.settings;
  get = path: default: lib.attrByPath path default s;
  rendered = format.generate "airlock.toml" s;
  # The daemon's own check of the rendered file, at build time: a
  # configuration airlockd would refuse at start fails the system's build,
  # in airlockd's words.
  configFile =
    if cfg.checkConfig then
      pkgs.runCommandLocal "airlock.toml" { } ''
        ${cfg.package}/bin/airlockd --check-config ${rendered} > /dev/null
        ln -s ${rendered} $out
      ''
    else
      rendered;

  # `ADDR:PORT` or `[V6]:PORT` → PORT
  portOf = listen: lib.toInt (lib.last (lib.splitString ":" listen));
  cacheListen = get [ "cache" "listen" ] null;
  cachePort = if cacheListen == null then null else portOf cacheListen;
  lowPorts = lib.filter (p: p < 1024) (
    map portOf (
      lib.filter (l: l != null) [
        cacheListen
        (get [ "github" "webhook_listen" ] null)
      ]
    )
  );
  networkEnabled = get [ "network" "enabled" ] true;
  # vm.user (default airlock-vm): airlockd starts the VMM (QEMU or
  # cloud-hypervisor) and virtiofsd as that user and hands it its VM's
  # files, so it must switch users and change owners, and the VMM user must
  # be able to walk into the state dir. Empty: the VMMs run as root.
  vmUserName = get [ "vm" "user" ] "";
  vmUser = vmUserName != "";
  # The signing key reaches airlockd as a systemd credential (a copy only
  # airlockd's unit can read, in /run/credentials/airlockd.service); the
  # file it came from is hidden from airlockd and so from every VMM.
  signingKey = get [ "release" "signing_key_file" ] null;
  vmUserCaps = lib.optionals vmUser [
    "CAP_SETUID"
    "CAP_SETGID"
    "CAP_CHOWN"
  ];
  # The per-job TAPs are `alk<slot>`; the interface wildcard is spelled
  # differently by the two firewall backends.
  tapGlob = if config.networking.nftables.enable then "alk*" else "alk+";

  # Keys that look like a secret given inline (they would be copied into the
  # world-readable store). `*_file` keys hold a path and are fine.
  inlineSecrets =
    let
      walk =
        prefix: a:
        lib.concatLists (
          lib.mapAttrsToList (
            k: v:
            let
              p = if prefix == "" then k else "${prefix}.${k}";
            in
            if builtins.isAttrs v then
              walk p v
            else
              lib.optional (
                builtins.match ".*(password|passwd|token|secret|private_key|signing_key).*" k != null
                && builtins.match ".*_files?" k == null
              ) p
          ) a
        );
    in
    walk "" s;
  fileKeys =
    let
      walk =
        prefix: a:
        lib.concatLists (
          lib.mapAttrsToList (
            k: v:
            let
              p = if prefix == "" then k else "${prefix}.${k}";
            in
            if builtins.isAttrs v then
              walk p v
            else
              lib.optional (builtins.match ".*_file" k != null && builtins.isString v) { inherit p v; }
          ) a
        );
    in
    walk "" s;
  storeSecrets = lib.filter (f: lib.hasPrefix builtins.storeDir f.v) fileKeys;
  amqpUrl = get [ "amqp" "url" ] "";
in
{
  imports = map (
    r:
    lib.mkRenamedOptionModule ([ "services" "airlock" ] ++ lib.elemAt r 0) (
      [
        "services"
        "airlock"
        "settings"
      ]
      ++ lib.elemAt r 1
    )
  ) renamed;

  options.services.airlock = {
    enable = mkEnableOption "airlockd, which builds untrusted nixpkgs pull requests in throwaway VMs";

    package = mkOption {
      type = types.package;
      default = pkgs.callPackage ./package.nix { };
      defaultText = literalExpression "pkgs.callPackage <airlock>/nixos/package.nix { }";
      description = "The airlock package (airlockd, airlockctl, the static guest agent).";
    };

    guestImage = mkOption {
      type = types.path;
      default = pkgs.callPackage ../vm-images/nix/guest.nix { };
      defaultText = literalExpression "pkgs.callPackage <airlock>/vm-images/nix/guest.nix { }";
      example = "/var/cache/airlock/guest/current";
      description = ''
        Directory with the guest's `vmlinux`, `initrd.gz` and `rootfs.img`
        (`vm.image_dir`). The default is built by Nix from nixpkgs alone: its
        Nix has its own nix.conf and does not see this host's `nix.settings`.
        A directory made by `vm-images/guest/build-guest.sh` works too.
      '';
    };

    settings = mkOption {
      type = types.submodule {
        freeformType = format.type;
        options = settingsOptions;
      };
      default = { };
      example = literalExpression ''
        {
          identity = "builder-7";
          trust = "trusted";
          max_jobs = 2;
          vm.memory_mib = 8192;
          vm.accel = "auto";
          limits.fetch_timeout_secs = 1800;
          release.signing_key_file = "/run/secrets/airlock/signing-key";
          github.webhook_listen = "0.0.0.0:8443";
        }
      '';
      description = ''
        airlockd's configuration file, as Nix (every key of
        docs/configuration.md; the keys below are typed, the rest are
        checked by airlockd, which refuses unknown keys). Rendered to TOML
        in the store, so it must not hold secrets: give secrets as file
        paths (`amqp.password_file`, `github.token_file`,
        `github.webhook_secret_file`, `release.signing_key_file`).
      '';
    };

    checkConfig = mkOption {
      type = types.bool;
      default = true;
      description = ''
        Check the rendered configuration with `airlockd --check-config` when
        the system is built, so a configuration airlockd would refuse at
        start fails the build instead, in airlockd's words. It runs the
        package's airlockd on the build machine: turn it off when
        cross-compiling.
      '';
    };

    cache.openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = "Open the binary cache's TCP port (from `settings.cache.listen`) in the firewall.";
    };

    kvmModules = mkOption {
      type = types.listOf types.str;
      default = [
        "kvm-intel"
        "kvm-amd"
      ];
      description = "KVM modules loaded at boot. Keep the one for your CPU to avoid a logged failure for the other.";
    };

    gc = {
      enable = mkOption {
        type = types.bool;
        default = true;
        description = ''
          A systemd timer that runs `airlockctl gc` (retention, `[retention]`).
          airlockd also collects by itself every `retention.gc_interval_secs`;
          the timer is persistent, so a collection missed while the machine
          was off runs at the next boot.
        '';
      };
      dates = mkOption {
        type = types.str;
        default = "daily";
        description = "When the gc timer fires (systemd `OnCalendar`).";
      };
    };
  };

  config = mkIf cfg.enable {
    assertions = [
      {
        assertion = inlineSecrets == [ ];
        message = "services.airlock: settings.${lib.head inlineSecrets} looks like a secret given inline; it would be copied into the world-readable Nix store. Put it in a file and give the file's path (amqp.password_file, github.token_file, github.webhook_secret_file, release.signing_key_file).";
      }
      {
        assertion = builtins.match "[a-z]+://[^/@]*:[^/@]*@.*" amqpUrl == null;
        message = "services.airlock: amqp.url carries a password, which would be copied into the world-readable Nix store; put it in a file and set amqp.password_file (services.airlock.settings.amqp.password_file).";
      }
      {
        assertion = storeSecrets == [ ];
        message = "services.airlock: settings.${(lib.head storeSecrets).p} is in the Nix store, where every user can read it; give the path of a file outside the store.";
      }
      {
        assertion = !cfg.cache.openFirewall || cacheListen != null;
        message = "services.airlock: cache.openFirewall needs cache.listen (services.airlock.settings.cache.listen = \"ADDR:PORT\").";
      }
    ];

    warnings =
      lib.optional (config.networking.nftables.enable && config.networking.nftables.flushRuleset)
        "services.airlock: networking.nftables.flushRuleset = true removes airlockd's nftables table (inet airlock) at every firewall reload; jobs' fetch networks are then unfiltered until airlockd restarts. The module sets it to false by default; do not force it on."
      ;

    environment.systemPackages = [ cfg.package ];
    # The D-Bus admin API's policy (daemon/dbus/, docs/dbus.md).
    services.dbus.packages = [
      (pkgs.writeTextDir "share/dbus-1/system.d/org.airlock.Airlock1.conf" (
        builtins.readFile ../daemon/dbus/org.airlock.Airlock1.conf
      ))
    ];
    users.groups.airlock-admin = { };
    # The VMMs' user: /dev/kvm through group kvm, its TAPs by ownership,
    # its VM's files handed over by airlockd; nothing else of airlock's.
    users.users.airlock-vm = mkIf (vmUserName == "airlock-vm") {
      isSystemUser = true;
      group = "airlock-vm";
      extraGroups = [ "kvm" ];
      description = "airlock VMMs (QEMU, cloud-hypervisor, virtiofsd)";
    };
    users.groups.airlock-vm = mkIf (vmUserName == "airlock-vm") { };
    # The rendered file, for reading and for `airlockd --check-config
    # /etc/airlock/airlock.toml`; the unit reads the checked link to it.
    environment.etc."airlock/airlock.toml".source = rendered;

    boot.kernelModules = cfg.kvmModules ++ [
      "tun"
      "vhost_net"
    ];
    # net.ipv4.ip_forward is deliberately not set here: airlockd turns it on
    # at start, and when it finds it off it installs a forward chain that
    # passes only job traffic. Setting it in boot.kernel.sysctl would make
    # airlockd treat forwarding as the operator's own and leave the host's
    # other forwarding as it is (docs/network.md).

    # NixOS's nftables service flushes the whole ruleset on reload by
    # default, which would delete airlockd's `inet airlock` table.
    networking.nftables.flushRuleset = mkDefault false;

    networking.firewall = {
      allowedTCPPorts = lib.optional (cfg.cache.openFirewall && cachePort != null) cachePort;
      # Fetch VMs reach airlockd's substituter (and network.allow_host_ports)
      # on their TAP's host address; airlock's own nftables table already
      # limits each TAP to exactly these ports.
      interfaces.${tapGlob}.allowedTCPPorts = lib.optionals networkEnabled (
        [ (get [ "substituter" "port" ] 8487) ] ++ get [ "network" "allow_host_ports" ] [ ]
      );
    };

    systemd.services.airlockd = {
      description = "airlock: untrusted nixpkgs PR builds in throwaway VMs";
      wantedBy = [ "multi-user.target" ];
      wants = [ "network-online.target" ];
      after = [
        "network-online.target"
        "nftables.service"
        "firewall.service"
      ];
      environment.AIRLOCK_LOG = mkDefault "info";
      serviceConfig = {
        # airlockd sends READY=1 once its intake and API are up.
        Type = "notify";
        NotifyAccess = "main";
        # With a signing key, airlockd reads the credential's copy (%d is
        # the credentials directory); release.signing_key_file in the
        # config file still names the operator's file.
        ExecStart =
          "${cfg.package}/bin/airlockd --config ${configFile}"
          + lib.optionalString (signingKey != null) " --signing-key-file %d/signing-key";
        LoadCredential = lib.optional (signingKey != null) "signing-key:${toString signingKey}";
        InaccessiblePaths = lib.optional (signingKey != null) "-${toString signingKey}";
        Restart = "on-failure";
        RestartSec = "10s";
        # SIGTERM to airlockd only: it stops taking jobs and lets running
        # VMs finish for shutdown_grace_secs; only then is everything left
        # killed. (Each job's VMM runs in its own transient unit,
        # airlock-job-<id>.service, and dies with airlockd through
        # PR_SET_PDEATHSIG; mixed also covers helpers started before they
        # are moved there.)
        KillMode = "mixed";
        TimeoutStopSec = (get [ "shutdown_grace_secs" ] 600) + 30;

        # root, on purpose: airlockd writes /proc/sys/net/ipv4/ip_forward
        # (a root-owned file; another user would need CAP_DAC_OVERRIDE,
        # which reaches every file) and remembers in /run/airlock whether
        # forwarding was on before it. Root here holds only the capabilities
        # below, and sees the filesystem read-only except its own
        # directories.
        User = "root";
        Group = "root";
        # CAP_NET_ADMIN: TAP devices, their addresses and routes (netlink),
        # the nftables table, the ip_forward sysctl. VMMs started as
        # vm.user lose every capability at the user switch (they attach to
        # TAPs their user owns); with vm.user = "" they would keep it.
        # CAP_NET_BIND_SERVICE only when cache.listen or
        # github.webhook_listen is a port below 1024.
        # CAP_SETUID, CAP_SETGID, CAP_CHOWN only with vm.user (see vmUser).
        CapabilityBoundingSet =
          [ "CAP_NET_ADMIN" ] ++ lib.optional (lowPorts != [ ]) "CAP_NET_BIND_SERVICE" ++ vmUserCaps;
        AmbientCapabilities =
          [ "CAP_NET_ADMIN" ] ++ lib.optional (lowPorts != [ ]) "CAP_NET_BIND_SERVICE" ++ vmUserCaps;
        NoNewPrivileges = true;

        StateDirectory = "airlock";
        StateDirectoryMode = if vmUser then "0711" else "0700";
        CacheDirectory = "airlock";
        CacheDirectoryMode = "0700";
        RuntimeDirectory = "airlock";
        RuntimeDirectoryMode = "0755";
        # The ip_forward memo in /run/airlock must outlive a restart, or the
        # restarted daemon would take its own forwarding for the operator's.
        RuntimeDirectoryPreserve = true;
        ReadWritePaths = lib.filter (p: !(lib.hasPrefix "/var/lib/airlock" p || lib.hasPrefix "/var/cache/airlock" p)) [
          (toString (get [ "state_dir" ] "/var/lib/airlock"))
          (toString (get [ "substituter" "dir" ] "/var/cache/airlock/substituter"))
        ];
        UMask = "0077";

        # Devices: only the VMs' own, nothing else. Each job's VMM runs in
        # its own unit, airlock-job-<id>.service, which airlockd gives the
        # same DevicePolicy and DeviceAllow (daemon/src/supervise.rs).
        DevicePolicy = "closed";
        DeviceAllow = [
          "/dev/kvm rw"
          "/dev/net/tun rw"
          "/dev/vhost-net rw"
        ];

        ProtectSystem = "strict";
        # tmpfs, not read-only: git looks for ~/.gitconfig and should find
        # nothing rather than be refused.
        ProtectHome = "tmpfs";
        PrivateTmp = true;
        PrivateMounts = true;
        ProtectKernelModules = true;
        ProtectKernelLogs = true;
        ProtectControlGroups = true;
        ProtectClock = true;
        ProtectHostname = true;
        ProtectProc = "invisible";
        RestrictNamespaces = true;
        RestrictRealtime = true;
        RestrictSUIDSGID = true;
        LockPersonality = true;
        RemoveIPC = true;
        RestrictAddressFamilies = [
          "AF_UNIX"
          "AF_INET"
          "AF_INET6"
          "AF_NETLINK"
        ];
        SystemCallArchitectures = "native";
        # @system-service, plus what cloud-hypervisor uses to confine
        # itself (its seccomp filter, Landlock). A call outside the list
        # fails with EPERM instead of killing the process.
        SystemCallFilter = [
          "@system-service"
          "seccomp"
          "landlock_create_ruleset"
          "landlock_add_rule"
          "landlock_restrict_self"
        ];
        SystemCallErrorNumber = "EPERM";

        # Left out, each for a reason:
        #  PrivateDevices        hides /dev/kvm, /dev/net/tun, /dev/vhost-net
        #                        (DevicePolicy/DeviceAllow above limit devices instead)
        #  PrivateNetwork        TAPs, nftables, the broker and GitHub are on the host's network
        #  PrivateUsers          CAP_NET_ADMIN must hold in the host's user namespace
        #  ProtectKernelTunables airlockd writes /proc/sys/net/ipv4/ip_forward
        #  ProcSubset=pid        hides /proc/sys (the same sysctl)
        #  MemoryDenyWriteExecute  QEMU's TCG (used when KVM does not work) generates code
        #  DynamicUser           root is needed, see User above
      };
    };

    systemd.services.airlock-gc = mkIf cfg.gc.enable {
      description = "airlock: apply the retention policy (airlockctl gc)";
      after = [ "airlockd.service" ];
      requisite = [ "airlockd.service" ];
      serviceConfig = {
        Type = "oneshot";
        ExecStart = "${cfg.package}/bin/airlockctl --socket ${toString (get [ "socket" ] "/run/airlock/airlockd.sock")} gc";
        # It only talks to airlockd's socket (a path: works without a network).
        PrivateNetwork = true;
        RestrictAddressFamilies = [ "AF_UNIX" ];
        CapabilityBoundingSet = [ "" ];
        NoNewPrivileges = true;
        ProtectSystem = "strict";
        ProtectHome = true;
        PrivateTmp = true;
        PrivateDevices = true;
        ProtectKernelTunables = true;
        ProtectKernelModules = true;
        ProtectControlGroups = true;
        SystemCallFilter = [ "@system-service" ];
        SystemCallArchitectures = "native";
      };
    };
    systemd.timers.airlock-gc = mkIf cfg.gc.enable {
      description = "airlock: retention (airlockctl gc)";
      wantedBy = [ "timers.target" ];
      timerConfig = {
        OnCalendar = cfg.gc.dates;
        Persistent = true;
        RandomizedDelaySec = "30m";
      };
    };
  };
}
