# A trusted builder in an ofborg-like setup:
#   rabbitmq  ofborg's central side: the broker, a job published to
#             build-inputs-x86_64-linux, the BuildResult read back; and
#             GitHub's REST API (nixos-tests/github.py serve, port 8090),
#             whose state the test driver writes
#   internet  203.0.113.10 (TEST-NET-3, a "public" address), HTTP on port 80
#   lan       10.99.0.10, a private network the builder is also on
#   client    a Hydra-like machine that substitutes from the builder's cache
#   builder   services.airlock, connected to all of them
# The fixture package set's net.fetch-ok downloads from the internet node,
# net.probe-lan tries the LAN node and says whether it got through.
{ module, fixtures }:
{ pkgs, lib, ... }:
let
  secrets = "/run/secrets/airlock";
  # GitHub's stand-in: the REST endpoints the release path asks, and signed
  # webhook deliveries, from GitHub's documented shapes (tests/fixtures/github).
  # tests/tests/security/release.rs runs the same script against airlockd on a
  # machine without KVM.
  githubPy = "${pkgs.python3}/bin/python3 ${./github.py}";
  githubFixtures = ../tests/fixtures/github;
  githubState = "/var/lib/github-stand-in/state.json";
  www =
    text:
    pkgs.writeTextDir "file.txt" text;
  pika = pkgs.python3.withPackages (ps: [ ps.pika ]);
  # ofborg's side of a job: publish a BuildJob, wait for its BuildResult.
  centralScript = pkgs.writeText "central.py" ''
    import json, sys, time, pika
    cmd, rid = sys.argv[1], sys.argv[2]
    conn = pika.BlockingConnection(pika.ConnectionParameters("localhost"))
    ch = conn.channel()
    ch.exchange_declare("build-results", "fanout", durable=True)
    ch.queue_declare("test-results", durable=True)
    ch.queue_bind("test-results", "build-results", "")
    if cmd == "publish":
        head, attrs = sys.argv[3], sys.argv[4:]
        job = {
            "repo": {"owner": "airlock", "name": "fixture", "full_name": "airlock/fixture",
                     "clone_url": "/srv/git/airlock/fixture.git"},
            "pr": {"target_branch": "master", "number": 42, "head_sha": head},
            "subset": "Nixpkgs", "attrs": attrs, "request_id": rid,
            "logs": ["logs", "airlock/fixture.42"], "statusreport": ["build-results", None],
        }
        ch.queue_declare("build-inputs-x86_64-linux", durable=True)
        ch.basic_publish("", "build-inputs-x86_64-linux", json.dumps(job),
                         pika.BasicProperties(delivery_mode=2, content_type="application/json"))
    else:
        while True:
            m, _, body = ch.basic_get("test-results", auto_ack=False)
            if m is None:
                sys.exit(1)
            r = json.loads(body)
            if r.get("request_id") == rid:
                ch.basic_ack(m.delivery_tag)
                print(json.dumps(r))
                sys.exit(0)
            ch.basic_nack(m.delivery_tag, requeue=True)
            time.sleep(0.1)
  '';
in
{
  name = "airlock-builder";

  nodes = {
    rabbitmq = {
      virtualisation.vlans = [ 1 ];
      services.rabbitmq = {
        enable = true;
        listenAddress = "0.0.0.0";
        # guest may log in from other hosts in this test only
        configItems."loopback_users" = "none";
      };
      networking.firewall.allowedTCPPorts = [
        5672
        8090
      ];
      environment.systemPackages = [ pkgs.curl ];
      systemd.services.github-stand-in = {
        wantedBy = [ "multi-user.target" ];
        serviceConfig = {
          ExecStart = "${githubPy} serve --listen 0.0.0.0:8090 --fixtures ${githubFixtures} --state ${githubState}";
          StateDirectory = "github-stand-in";
        };
      };
    };

    internet = {
      virtualisation.vlans = [ 2 ];
      networking.interfaces.eth1.ipv4.addresses = lib.mkForce [
        {
          address = "203.0.113.10";
          prefixLength = 24;
        }
      ];
      services.static-web-server = {
        enable = true;
        listen = "[::]:80";
        root = www "airlock-internet-ok\n";
      };
      networking.firewall.allowedTCPPorts = [ 80 ];
    };

    lan = {
      virtualisation.vlans = [ 3 ];
      networking.interfaces.eth1.ipv4.addresses = lib.mkForce [
        {
          address = "10.99.0.10";
          prefixLength = 24;
        }
      ];
      services.static-web-server = {
        enable = true;
        listen = "[::]:80";
        root = www "LEAK\n";
      };
      networking.firewall.allowedTCPPorts = [ 80 ];
    };

    client = {
      virtualisation.vlans = [ 1 ];
      environment.systemPackages = [ pkgs.curl ];
    };

    builder = {
      imports = [ module ];
      virtualisation = {
        vlans = [
          1
          2
          3
        ];
        memorySize = 4096;
        cores = 2;
        diskSize = 8192;
        qemu.options = [ "-cpu host" ];
      };
      networking.interfaces.eth2.ipv4.addresses = lib.mkForce [
        {
          address = "203.0.113.1";
          prefixLength = 24;
        }
      ];
      networking.interfaces.eth3.ipv4.addresses = lib.mkForce [
        {
          address = "10.99.0.1";
          prefixLength = 24;
        }
      ];
      environment.systemPackages = [
        pkgs.git
        pkgs.jq
      ];
      services.airlock = {
        enable = true;
        cache.openFirewall = true;
        settings = {
          identity = "nixos-test-builder";
          trust = "trusted";
          max_jobs = 1;
          vm = {
            memory_mib = 1024;
            nix_disk_mib = 2048;
          };
          limits.job_timeout_secs = 3600;
          amqp = {
            url = "amqp://guest@rabbitmq:5672/%2f";
            password_file = "${secrets}/amqp-password";
          };
          cache.listen = "0.0.0.0:8080";
          network.dns = [ "203.0.113.10" ];
          nix.substituters = [ ];
          github = {
            webhook_secret_file = "${secrets}/webhook-secret";
            clone_url = "/srv/git/{full_name}.git";
            webhook_listen = "0.0.0.0:8081";
            api_url = "http://rabbitmq:8090";
            # The webhook starts each look; no polling in between.
            poll_interval_secs = 3600;
          };
          release = {
            signing_key_file = "${secrets}/signing-key";
            min_head_age_secs = 0;
            # The fixture's repository, not nixpkgs (the default).
            repositories = [ "airlock/fixture" ];
          };
        };
      };
      networking.firewall.allowedTCPPorts = [ 8081 ];
      # Started by the test once its secrets exist.
      systemd.services.airlockd.wantedBy = lib.mkForce [ ];
    };
  };

  testScript = ''
    import json
    ${import ./lib.nix { inherit fixtures; }}

    start_all()
    rabbitmq.wait_for_unit("rabbitmq.service")
    rabbitmq.wait_for_open_port(5672)
    internet.wait_for_open_port(80)
    lan.wait_for_open_port(80)

    builder.succeed(
        "install -d -m 0700 ${secrets}"
        " && printf guest > ${secrets}/amqp-password"
        " && printf 0123456789abcdef0123456789abcdef > ${secrets}/webhook-secret"
        " && nix-store --generate-binary-cache-key nixos-test-builder-1"
        "    ${secrets}/signing-key ${secrets}/signing.pub"
    )
    pubkey = builder.succeed("cat ${secrets}/signing.pub").strip()
    base, head = make_repo(builder, "/root/work")
    builder.succeed(
        "mkdir -p /srv/git/airlock"
        " && git clone -q --bare /root/work /srv/git/airlock/fixture.git"
    )
    builder.succeed("systemctl start airlockd.service")
    builder.wait_for_unit("airlockd.service")
    builder.wait_until_succeeds("airlockctl jobs")

    def run_job(rid, *attrs):
        rabbitmq.succeed(f"${pika}/bin/python3 ${centralScript} publish {rid} {head} {' '.join(attrs)}")
        out = rabbitmq.wait_until_succeeds(f"${pika}/bin/python3 ${centralScript} result {rid}", timeout=1800)
        return json.loads(out)

    with subtest("a job from the broker builds in a VM and reports"):
        r = run_job("nixos-test-1", "chain")
        print(r)
        assert r["status"] == "Success", r
        jobs = json.loads(builder.succeed("airlockctl --json jobs"))
        job = [j for j in jobs if j.get("request_id") == "nixos-test-1" or "chain" in json.dumps(j)][0]
        job_id = job["id"]
        builder.succeed(f"journalctl -u airlockd | grep {job_id}")
        builder.succeed("systemctl status airlockd.service | grep -i active")

    with subtest("an FOD reaches the internet node but not the LAN node"):
        r = run_job("nixos-test-2", "net.fetch-ok")
        assert r["status"] == "Success", r
        run_job("nixos-test-3", "net.probe-lan")
        log = builder.succeed("for j in $(airlockctl --json jobs | jq -r '.[].id'); do airlockctl log $j; done")
        assert "PROBE lan: BLOCKED" in log, log
        assert "PROBE lan: REACHED" not in log, log

    with subtest("a committer's label, signalled by a signed webhook, releases the commit"):
        rabbitmq.wait_for_open_port(8090)
        t = int(rabbitmq.succeed("date +%s"))
        state = {
            "pulls": {"42": {
                "head": head,
                "labels": ["nonmalicious-checked"],
                "events": [{"event": "labeled", "actor": "alice",
                            "label": "nonmalicious-checked", "at": t - 300}],
                "pushes": [{"sha": head, "at": t - 600}],
            }},
            "permissions": {"alice": "write"},
        }
        rabbitmq.succeed(f"cat > ${githubState} <<'EOF'\n{json.dumps(state)}\nEOF")
        assert "nonmalicious-checked" in rabbitmq.succeed("curl -sf http://localhost:8090/repos/airlock/fixture/pulls/42")
        deliver = (
            "${githubPy} deliver --url http://builder:8081/github-webhook"
            " --fixtures ${githubFixtures} --action labeled --repo airlock/fixture"
            f" --pr 42 --head {head} --secret-file "
        )
        client.succeed("printf 'not the secret' > /tmp/wrong-secret")
        client.fail(deliver + "/tmp/wrong-secret")
        builder.wait_until_succeeds("journalctl -u airlockd | grep 'webhook rejected'")
        client.succeed("printf 0123456789abcdef0123456789abcdef > /tmp/webhook-secret")
        client.succeed(deliver + "/tmp/webhook-secret")
        builder.wait_until_succeeds(
            f"airlockctl --json release status {head} | jq -e '.prs[0].decision.release'",
            timeout=120,
        )
        print(builder.succeed(f"airlockctl release status {head}"))

    with subtest("released outputs are signed and a client substitutes them"):
        show = json.loads(builder.succeed(f"airlockctl --json show {job_id}"))
        print(show)
        out = [p for p in json.dumps(show).split('"') if p.startswith("/nix/store/") and p.endswith("-airlock-chain-3")][0]
        client.succeed(
            f"nix-store -r {out} --option substituters http://builder:8080"
            f" --option trusted-public-keys '{pubkey}' --option require-sigs true"
        )
        client.succeed(f"grep 'three, built on' {out}/three")
  '';
}
