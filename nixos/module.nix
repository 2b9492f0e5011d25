# services.airlock: airlockd on a NixOS builder. See docs/nixos.md.
#
# The daemon reads one TOML file (docs/configuration.md); `settings` is that
# file (freeform, RFC 42), and the typed options below are shorthands that
# land on its keys. A typed option left at null is not written, so airlockd's
# own default applies (the module does not repeat the daemon's defaults).
# Setting both a typed option and its `settings` key to different values is
# a "conflicting definition" error, not a silent override.
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

  nullOr = t: types.nullOr t;
  opt =
    type: description:
    mkOption {
      type = nullOr type;
      default = null;
      inherit description;
    };

  # The typed options, on airlockd's key names; nulls are dropped.
  typed = {
    trust = cfg.trust;
    max_jobs = cfg.maxJobs;
    vm = {
      inherit (cfg.vm) backend vcpus;
      memory_mib = cfg.vm.memory;
      nix_disk_mib = cfg.vm.diskSize;
    };
    limits.job_timeout_secs = cfg.vm.timeout;
    amqp = {
      inherit (cfg.intake.amqp) url;
      password_file = cfg.intake.amqp.passwordFile;
    };
    release = {
      inherit (cfg.release) label;
      signing_key_file = cfg.release.signingKeyFile;
    };
    github = {
      token_file = cfg.release.githubTokenFile;
      webhook_secret_file = cfg.release.webhookSecretFile;
    };
    cache.listen = cfg.cache.listenAddress;
    network = {
      allow = cfg.network.allowedEgress;
      dns = cfg.network.resolvers;
    };
    nix = {
      inherit (cfg.nix) substituters;
      trusted_public_keys = cfg.nix.trustedPublicKeys;
    };
    sponsor =
      if cfg.sponsor == null then
        null
      else
        {
          inherit (cfg.sponsor) name;
          url = cfg.sponsor.url;
        };
  };
  dropNulls =
    a:
    lib.filterAttrs (_: v: v != null && v != { }) (
      lib.mapAttrs (_: v: if builtins.isAttrs v then dropNulls v else v) a
    );

  s = cfg.settings;
  get = path: default: lib.attrByPath path default s;
  configFile = format.generate "airlock.toml" s;

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
  vmAsRoot = vmUserName == "" || vmUserName == "root" || lib.hasPrefix "0:" vmUserName;
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

  machine = get [ "vm" "machine" ] "q35";
  badUpstreams = lib.filter (u: builtins.match "https?://[^[:space:]?]+" u == null) (
    get [ "nix" "substituters" ] [ ]
  );

  # airlockd's own words (daemon/src/config.rs, Config::check, and the
  # substituter's check), so the assertion says what the daemon would.
  daemonSays = msg: "services.airlock: invalid config: ${msg}";
in
{
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
      type = format.type;
      default = { };
      example = literalExpression ''
        {
          identity = "builder-7";
          vm.accel = "auto";
          limits.fetch_timeout_secs = 1800;
          github.webhook_listen = "0.0.0.0:8443";
        }
      '';
      description = ''
        airlockd's configuration file, as Nix (every key of
        docs/configuration.md; airlockd refuses unknown keys). Rendered to
        TOML in the store, so it must not hold secrets: give secrets as file
        paths (`amqp.password_file`, `github.token_file`,
        `github.webhook_secret_file`, `release.signing_key_file`).
      '';
    };

    trust = opt (types.enum [
      "trusted"
      "community"
    ]) "`trust`: `trusted` may release labelled outputs to its signed binary cache (needs a signing key); `community` never releases. null: airlockd's default, community.";

    maxJobs = opt types.ints.unsigned "`max_jobs`: jobs (VMs) running at the same time. null: airlockd's default (1).";

    vm = {
      backend = opt (types.enum [
        "qemu"
        "cloud-hypervisor"
      ]) "`vm.backend`. null: airlockd's default (qemu).";
      vcpus = opt types.ints.unsigned "`vm.vcpus`: vCPUs per VM.";
      memory = opt types.ints.unsigned "`vm.memory_mib`: memory per VM, in MiB.";
      diskSize = opt types.ints.positive "`vm.nix_disk_mib`: size of each job's writable /nix disk, in MiB (also the job's disk limit).";
      timeout = opt types.ints.unsigned "`limits.job_timeout_secs`: wall-clock limit of a job's build VM, in seconds.";
    };

    intake.amqp = {
      url = opt types.str "`amqp.url`: the ofborg broker, `amqps://user@host/vhost` (no password here: use passwordFile). Enables the broker intake.";
      passwordFile = mkOption {
        type = secretFile;
        default = null;
        example = "/run/secrets/airlock-amqp-password";
        description = "`amqp.password_file`: file holding the broker password, read by airlockd at start.";
      };
    };

    release = {
      label = opt types.str "`release.label`: the PR label that says the input is not malicious.";
      signingKeyFile = mkOption {
        type = secretFile;
        default = null;
        example = "/run/secrets/airlock-signing-key";
        description = "`release.signing_key_file`: Nix secret key (`nix-store --generate-binary-cache-key`). Required with `trust = \"trusted\"`.";
      };
      githubTokenFile = mkOption {
        type = secretFile;
        default = null;
        description = "`github.token_file`: file with a GitHub API token.";
      };
      webhookSecretFile = mkOption {
        type = secretFile;
        default = null;
        description = "`github.webhook_secret_file`: the webhook's shared secret. Required with `settings.github.webhook_listen`.";
      };
    };

    cache = {
      listenAddress = opt types.str "`cache.listen`: `ADDR:PORT` of the binary cache server (trusted builders).";
      openFirewall = mkOption {
        type = types.bool;
        default = false;
        description = "Open the binary cache's TCP port (from `cache.listen`) in the firewall.";
      };
    };

    network = {
      allowedEgress = opt (types.listOf types.str) "`network.allow`: private destinations fixed-output derivations may reach anyway (`10.1.2.0/24`, `10.1.2.3:5000`).";
      resolvers = opt (types.listOf types.str) "`network.dns`: DNS resolvers of the fetch VMs.";
    };

    nix = {
      substituters = opt (types.listOf types.str) "`nix.substituters`: upstream binary caches the fetch phase substitutes from (through airlockd's proxy).";
      trustedPublicKeys = opt (types.listOf types.str) "`nix.trusted_public_keys`: keys a narinfo from those caches must be signed with.";
    };

    sponsor = mkOption {
      type = types.nullOr (
        types.submodule {
          options = {
            name = mkOption {
              type = types.str;
              description = "Who runs and pays for this builder.";
            };
            url = mkOption {
              type = types.nullOr types.str;
              default = null;
              description = "Where to read about them.";
            };
          };
        }
      );
      default = null;
      description = ''
        Who contributes this builder's compute (`[sponsor]`): credited as
        "These build results were contributed by: NAME – URL" in every
        result posted to ofborg and at the end of every build log.
      '';
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
    services.airlock.settings = lib.mkMerge [
      (dropNulls typed)
      {
        state_dir = mkDefault "/var/lib/airlock";
        socket = mkDefault "/run/airlock/airlockd.sock";
        vm = {
          # The VMMs run as their own user, never root (a signing key needs
          # that: docs/security.md).
          user = mkDefault "airlock-vm";
          image_dir = mkDefault "${cfg.guestImage}";
          # Absolute store paths: the config, not PATH, says what runs VMs.
          agent = mkDefault "${cfg.package}/bin/airlock-agent";
          qemu = mkDefault "${cfg.package.qemu or pkgs.qemu_kvm}/bin/qemu-system-x86_64";
          cloud_hypervisor = mkDefault "${cfg.package.cloudHypervisor or pkgs.cloud-hypervisor}/bin/cloud-hypervisor";
          virtiofsd = mkDefault "${cfg.package.virtiofsd or pkgs.virtiofsd}/bin/virtiofsd";
        };
        # A cache, not state: it can be dropped and refilled from upstream.
        substituter.dir = mkDefault "/var/cache/airlock/substituter";
        # The admin API (docs/dbus.md) on the system bus; the policy below
        # lets root and group airlock-admin call it.
        dbus.address = mkDefault "system";
      }
    ];

    assertions = [
      {
        assertion = get [ "trust" ] "community" != "trusted" || get [ "release" "signing_key_file" ] null != null;
        message = daemonSays ''trust = "trusted" needs release.signing_key_file (or --signing-key-file)'';
      }
      {
        assertion = signingKey == null || !vmAsRoot;
        message = daemonSays "release.signing_key_file needs vm.user (a user other than root): a VMM running as airlockd's user could read the signing key";
      }
      {
        assertion =
          get [ "github" "webhook_listen" ] null == null || get [ "github" "webhook_secret_file" ] null != null;
        message = daemonSays "github.webhook_listen needs github.webhook_secret_file";
      }
      {
        assertion = get [ "max_jobs" ] 1 >= 1;
        message = daemonSays "max_jobs must be at least 1";
      }
      {
        assertion = get [ "vm" "memory_mib" ] 1024 >= 256 && get [ "vm" "vcpus" ] 1 >= 1;
        message = daemonSays "vm.memory_mib must be >= 256 and vm.vcpus >= 1";
      }
      {
        assertion = builtins.elem machine [
          "q35"
          "microvm"
          "pc"
        ];
        message = daemonSays "vm.machine ${builtins.toJSON machine} is not q35, pc or microvm";
      }
      {
        assertion = get [ "limits" "job_timeout_secs" ] 14400 > 0;
        message = daemonSays "limits.job_timeout_secs must be > 0";
      }
      {
        assertion = !networkEnabled || badUpstreams == [ ];
        message = daemonSays "nix.substituters entry ${builtins.toJSON (lib.head badUpstreams)} is not an http:// or https:// URL";
      }
      {
        assertion = inlineSecrets == [ ];
        message = "services.airlock: settings.${lib.head inlineSecrets} looks like a secret given inline; it would be copied into the world-readable Nix store. Put it in a file and give the file's path (amqp.password_file, github.token_file, github.webhook_secret_file, release.signing_key_file).";
      }
      {
        assertion = builtins.match "[a-z]+://[^/@]*:[^/@]*@.*" amqpUrl == null;
        message = "services.airlock: amqp.url carries a password, which would be copied into the world-readable Nix store; put it in a file and set amqp.password_file (intake.amqp.passwordFile).";
      }
      {
        assertion = storeSecrets == [ ];
        message = "services.airlock: settings.${(lib.head storeSecrets).p} is in the Nix store, where every user can read it; give the path of a file outside the store.";
      }
      {
        assertion = !cfg.cache.openFirewall || cacheListen != null;
        message = "services.airlock: cache.openFirewall needs cache.listen (services.airlock.cache.listenAddress = \"ADDR:PORT\").";
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
    # The rendered file, for reading and for `airlockd --check-config /etc/airlock/airlock.toml`.
    environment.etc."airlock/airlock.toml".source = configFile;

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
