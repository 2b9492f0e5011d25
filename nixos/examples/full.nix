# A trusted builder in ofborg's queue: the typed keys of `settings`, and
# others next to them. Secrets are file paths (sops-nix, agenix or a file
# placed by hand), never values.
{
  services.airlock = {
    enable = true;
    cache.openFirewall = true;
    gc.dates = "hourly";
    settings = {
      identity = "builder-7";
      trust = "trusted";
      max_jobs = 2;
      vm = {
        backend = "qemu";
        vcpus = 4;
        memory_mib = 8192;
        nix_disk_mib = 65536;
        accel = "auto";
      };
      limits = {
        job_timeout_secs = 7200;
        fetch_timeout_secs = 1800;
      };
      amqp = {
        url = "amqps://builder-7@messages.ofborg.example.org/ofborg";
        password_file = "/run/secrets/airlock/amqp-password";
      };
      release = {
        label = "nonmalicious-checked";
        signing_key_file = "/run/secrets/airlock/signing-key";
      };
      github = {
        token_file = "/run/secrets/airlock/github-token";
        webhook_secret_file = "/run/secrets/airlock/webhook-secret";
        webhook_listen = "0.0.0.0:8443";
      };
      cache.listen = "0.0.0.0:8080";
      network = {
        allow = [ "10.20.0.5:3128" ];
        dns = [
          "1.1.1.1"
          "9.9.9.9"
        ];
      };
      nix = {
        substituters = [ "https://cache.nixos.org" ];
        trusted_public_keys = [ "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=" ];
      };
      sponsor = {
        name = "Example Foundation";
        url = "https://example.org";
      };
      retention.unreleased_hours = 168;
    };
  };
}
