# A trusted builder in an ofborg-like setup:
#   rabbitmq  ofborg's central side: the broker, a job published to
#             build-inputs-x86_64-linux, the BuildResult read back
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
      networking.firewall.allowedTCPPorts = [ 5672 ];
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
        trust = "trusted";
        maxJobs = 1;
        vm = {
          memory = 1024;
          diskSize = 2048;
          timeout = 3600;
        };
        intake.amqp = {
          url = "amqp://guest@rabbitmq:5672/%2f";
          passwordFile = "${secrets}/amqp-password";
        };
        release = {
          signingKeyFile = "${secrets}/signing-key";
          webhookSecretFile = "${secrets}/webhook-secret";
        };
        cache = {
          listenAddress = "0.0.0.0:8080";
          openFirewall = true;
        };
        network.resolvers = [ "203.0.113.10" ];
        nix.substituters = [ ];
        settings = {
          identity = "nixos-test-builder";
          github = {
            clone_url = "/srv/git/{full_name}.git";
            webhook_listen = "0.0.0.0:8081";
            # No GitHub here: the release below is the operator's.
            api_url = "http://127.0.0.1:9";
          };
          release.min_head_age_secs = 0;
        };
      };
      networking.firewall.allowedTCPPorts = [ 8081 ];
      # Started by the test once its secrets exist.
      systemd.services.airlockd.wantedBy = lib.mkForce [ ];
    };
  };

  testScript = ''
    import hashlib, hmac, json
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

    with subtest("a signed webhook is accepted, a forged one refused"):
        body = json.dumps({"action": "labeled", "number": 42,
                           "label": {"name": "nonmalicious-checked"},
                           "pull_request": {"number": 42, "head": {"sha": head}},
                           "repository": {"full_name": "airlock/fixture"},
                           "sender": {"login": "tester"}})
        sig = "sha256=" + hmac.new(b"0123456789abcdef0123456789abcdef", body.encode(), hashlib.sha256).hexdigest()
        client.succeed(
            f"curl -sf -X POST -H 'X-GitHub-Event: pull_request' -H 'X-Hub-Signature-256: {sig}'"
            f" -H 'Content-Type: application/json' --data-binary {json.dumps(body)!r}"
            " http://builder:8081/github-webhook"
        )
        client.fail(
            "curl -sf -X POST -H 'X-GitHub-Event: pull_request' -H 'X-Hub-Signature-256: sha256=00'"
            " --data-binary '{}' http://builder:8081/github-webhook"
        )
        builder.wait_until_succeeds("journalctl -u airlockd | grep 'webhook rejected'")

    with subtest("released outputs are signed and a client substitutes them"):
        builder.succeed(f"airlockctl release {head} --reason 'nixos test'")
        print(builder.succeed(f"airlockctl release status {head}"))
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
