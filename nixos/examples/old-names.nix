# nixos/examples/full.nix as it was written before the typed options moved
# into `settings` (issue 28): every old option still works, renamed to its
# `settings` key with a warning, and this renders the same file as full.nix
# (nixos/examples/full.toml).
{
  services.airlock = {
    enable = true;
    trust = "trusted";
    maxJobs = 2;
    vm = {
      backend = "qemu";
      vcpus = 4;
      memory = 8192;
      diskSize = 65536;
      timeout = 7200;
    };
    intake.amqp = {
      url = "amqps://builder-7@messages.ofborg.example.org/ofborg";
      passwordFile = "/run/secrets/airlock/amqp-password";
    };
    release = {
      label = "nonmalicious-checked";
      signingKeyFile = "/run/secrets/airlock/signing-key";
      githubTokenFile = "/run/secrets/airlock/github-token";
      webhookSecretFile = "/run/secrets/airlock/webhook-secret";
    };
    cache = {
      listenAddress = "0.0.0.0:8080";
      openFirewall = true;
    };
    network = {
      allowedEgress = [ "10.20.0.5:3128" ];
      resolvers = [
        "1.1.1.1"
        "9.9.9.9"
      ];
    };
    nix = {
      substituters = [ "https://cache.nixos.org" ];
      trustedPublicKeys = [ "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=" ];
    };
    sponsor = {
      name = "Example Foundation";
      url = "https://example.org";
    };
    gc.dates = "hourly";
    settings = {
      identity = "builder-7";
      vm.accel = "auto";
      limits.fetch_timeout_secs = 1800;
      github.webhook_listen = "0.0.0.0:8443";
      retention.unreleased_hours = 168;
    };
  };
}
