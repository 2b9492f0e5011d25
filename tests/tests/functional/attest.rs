//! Independent builders (issue 30): four airlockd on one RabbitMQ broker,
//! each of its own operator, take the same job from their operators' own
//! queues (`amqp.operator_queue`), build it in their own VMs, sign what
//! they verified and publish it on `airlock-attestations`. The trusted
//! builder checks the others' signatures against `[verify] builders`:
//! `airlockctl compare` reports what three operators reproduced; the
//! fourth builder, whose guest returns other bytes for one output, is
//! reported as differing and gets a strike; with `require_agreement =
//! {builders = 2, operators = 2}` that path is held back from release
//! while the agreed one is signed and served, and the cache server serves
//! every attestation of a derivation.

use airlock_e2e as common;

use airlock::quarantine::craft::{entry, stream};
use airlock::store::nar::build::{nar, Node};
use airlock::store::signing::SecretKey;
use common::broker::{job_json, rt, Broker, Probe};
use common::github::{gen_key, http, FakeGitHub};
use common::*;
use serde_json::Value;

const JOB_LIMIT: u64 = 900;
const SYSTEM: &str = "x86_64-linux";

/// Builder `i`'s identity key (fixed seeds: the test knows every public key
/// before any builder starts, as operators exchange them).
fn identity(i: u8) -> SecretKey {
    SecretKey::from_seed(&format!("builder-{i}"), &[i; 32]).unwrap()
}

/// The lying guest: after `standin_agent`'s prelude, it says it started
/// and writes the export the test made (base64 in the script itself).
fn liar_agent(export: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(export);
    standin_agent(&format!(
        r#"printf 'E {{"agent_started":{{"version":1}}}}\n' > "$ch"
printf 'L a builder that lies about one output\n' > "$ch"
echo '{b64}' | base64 -d > "$ex"
sync
"#
    ))
}

fn ctl_json(d: &Daemon, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend(args);
    let out = d.ctl(&all);
    assert!(
        out.status.success(),
        "airlockctl {args:?}: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        d.log()
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn independent_builders_agree_and_a_liar_is_struck() {
    let test = "independent_builders_agree_and_a_liar_is_struck";
    if !prerequisites(test) {
        return;
    }
    if !Broker::available() && !ready_or_skip(test, &["rabbitmq-server".into()]) {
        return;
    }
    let broker = Broker::start();
    let shared = tempfile::tempdir().unwrap();
    let (repo, head) = fixture_repo(shared.path(), &[]);

    // What an honest builder makes of `leaf`, from the host's own Nix in a
    // private store: its output path and derivation. The liar exports that
    // path, claims that derivation, and other bytes.
    let store = shared.path().join("host-store");
    let leaf_out = host_build(&store, &repo, "leaf").pop().unwrap();
    let q = std::process::Command::new("nix-store")
        .args([
            "--store",
            store.to_str().unwrap(),
            "-q",
            "--deriver",
            &leaf_out,
        ])
        .env("XDG_CACHE_HOME", store.join("xdg-cache"))
        .output()
        .unwrap();
    let leaf_drv = String::from_utf8_lossy(&q.stdout).trim().to_owned();
    assert!(leaf_drv.ends_with("-airlock-leaf.drv"), "{leaf_drv:?}");
    let evil = nar(&Node::File {
        exec: false,
        data: b"not what leaf builds\n",
    });
    let mut lie = entry(&leaf_out, &evil, &[]);
    lie.deriver = Some(leaf_drv.clone());
    // And `failing`, which fails to build everywhere, claimed as built.
    let st = store.to_str().unwrap();
    let nix = |cmd: &str, args: &[&str]| {
        let o = std::process::Command::new(cmd)
            .current_dir(&repo)
            .args(["--store", st])
            .args(args)
            .env("XDG_CACHE_HOME", store.join("xdg-cache"))
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{cmd}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).trim().to_owned()
    };
    let failing_drv = nix("nix-instantiate", &["-A", "failing"]);
    let failing_out = nix("nix-store", &["-q", "--outputs", &failing_drv]);
    let claimed = nar(&Node::File {
        exec: false,
        data: b"built, says the liar\n",
    });
    let mut lie2 = entry(&failing_out, &claimed, &[]);
    lie2.deriver = Some(failing_drv.clone());
    let liar = shared.path().join("liar-agent");
    std::fs::write(
        &liar,
        liar_agent(&stream(vec![(lie, evil), (lie2, claimed)])),
    )
    .unwrap();

    let keys: Vec<SecretKey> = (1..=4).map(identity).collect();
    let operators = ["Org One", "Org Two", "Org Three", "Org Four"];
    let key_file = |i: usize| {
        let p = shared.path().join(format!("identity-{i}.sec"));
        std::fs::write(&p, keys[i].to_file_text()).unwrap();
        p
    };
    // Every builder: its operator's queue, its identity, its own VMs; no
    // templates (one cold boot each is cheaper than four templates).
    let builder = |i: usize| {
        let kf = key_file(i);
        let op = operators[i];
        let clone = repo.display().to_string();
        Daemon::builder()
            .host_network()
            .amqp(&broker.url(), &format!("builder-{}", i + 1))
            .with(move |c| {
                c.amqp.operator_queue = true;
                c.attestation.key_file = kf;
                c.attestation.operator = op.into();
                c.github.clone_url = clone;
                c.vm.template = false;
                c.vm.memory_mib = 512;
                c.vm.nix_disk_mib = 256;
                c.vm.export_disk_mib = 64;
            })
    };
    let gh = FakeGitHub::start();
    let keydir = tempfile::tempdir().unwrap();
    let (sk, _pk) = gen_key(keydir.path(), "airlock-cache-1");
    let cache = format!("127.0.0.1:{}", free_port());
    let web = format!("127.0.0.1:{}", free_port());
    let known: String = (1..4)
        .map(|i| {
            format!(
                "[[verify.builders]]\nkey = \"{}\"\noperator = \"{}\"\nurl = \"https://builder-{}.example\"\n",
                keys[i].public(),
                operators[i],
                i + 1
            )
        })
        .collect();
    let trusted = builder(0)
        .with(|c| {
            c.vm.user = VM_USER.into();
            c.web.listen = Some(web.clone());
        })
        .toml(&format!(
            "[release]\nrequire_agreement = {{ builders = 2, operators = 2 }}\n[github]\npoll_interval_secs = 1\n{known}"
        ))
        .args(&[
            "--trust",
            "trusted",
            "--signing-key-file",
            sk.to_str().unwrap(),
            "--cache-listen",
            &cache,
            "--github-api-url",
            &gh.url,
        ])
        .start();
    let two = builder(1).start();
    let three = builder(2).start();
    let four = builder(3).with(|c| c.vm.agent = liar.clone()).start();
    let all = [&trusted, &two, &three, &four];

    let req = uuid::Uuid::new_v4().to_string();
    rt().block_on(async {
        let mut p = Probe::setup(&broker.url()).await;
        for (i, d) in all.iter().enumerate() {
            let q = format!("airlock-{}-{SYSTEM}", operators[i].replace(' ', "-"));
            assert!(p.wait_for_queue(&q, 60).await, "no {q}:\n{}", d.log());
        }
        // One job, copied to every operator's queue by the topic exchange.
        p.publish(
            "airlock-build-jobs",
            SYSTEM,
            &job_json(&repo, &head, &["leaf", "chain-1", "failing"], &req),
        )
        .await;
        assert!(
            p.until(JOB_LIMIT, |p| p.results_for(&req).len() == 4).await,
            "not every builder reported:\n{}",
            all.iter()
                .map(|d| d.log())
                .collect::<Vec<_>>()
                .join("\n----\n")
        );
        // ofborg's own queue never saw it.
        assert_eq!(
            p.queue_len("build-inputs-x86_64-linux").await.unwrap_or(0),
            0
        );
    });

    // The trusted builder has everyone's attestations (over the broker).
    let compare = || ctl_json(&trusted, &["compare", &head]);
    let verdict = |c: &Value, drv_suffix: &str| -> Value {
        c["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["drv_path"].as_str().unwrap().ends_with(drv_suffix))
            .cloned()
            .unwrap_or(Value::Null)
    };
    trusted.wait_until("every builder's attestations", 120, || {
        let c = compare();
        verdict(&c, "-airlock-leaf.drv")["verdict"] == "differs"
            && verdict(&c, "-airlock-chain-1.drv")["text"]
                == "reproduced by 3 builders of 3 operators"
    });
    let c = compare();
    let leaf = verdict(&c, "-airlock-leaf.drv");
    assert_eq!(leaf["drv_path"], leaf_drv.as_str());
    let hashes = leaf["hashes"].as_object().unwrap();
    assert_eq!(hashes.len(), 2, "{leaf:#}");
    assert!(
        hashes
            .values()
            .any(|b| b == &serde_json::json!(["builder-1", "builder-2", "builder-3"])),
        "{leaf:#}"
    );
    assert!(hashes
        .values()
        .any(|b| b == &serde_json::json!(["builder-4"])));
    let text = String::from_utf8_lossy(&trusted.ctl(&["compare", &head]).stdout).into_owned();
    assert!(
        text.contains("airlock-chain-1.drv!out: reproduced by 3 builders of 3 operators"),
        "{text}"
    );
    println!("airlockctl compare {head}:\n{text}");

    // The job page shows the same, as it stands now.
    let job = trusted.jobs()[0]["id"].as_str().unwrap().to_owned();
    let (code, _, page) = http(&web, "GET", &format!("/jobs/{job}"), &[], b"");
    let page = String::from_utf8_lossy(&page);
    assert_eq!(code, 200);
    assert!(
        page.contains("reproduced by 3 builders of 3 operators") && page.contains("differs: "),
        "{page}"
    );

    // The liar has two strikes, each with its attestation as the
    // evidence: leaf's hash differs from a reproduced one, and `failing`
    // was claimed as built where the trusted builder's build failed.
    trusted.wait_until("the liar's two strikes", 60, || {
        ctl_json(&trusted, &["builders"])
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["builder"] == "builder-4" && r["strikes"] == 2)
    });
    let builders = ctl_json(&trusted, &["builders"]);
    let row = |n: &str| {
        builders
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["builder"] == n)
            .cloned()
            .unwrap()
    };
    assert_eq!(row("builder-4")["strikes"], 2, "{builders:#}");
    assert_eq!(row("builder-4")["excluded"], false);
    assert_eq!(row("builder-2")["strikes"], 0);
    assert_eq!(
        (
            row("builder-2")["compared"].clone(),
            row("builder-2")["agreed"].clone()
        ),
        (2.into(), 2.into())
    );
    assert_eq!(
        (
            row("builder-4")["compared"].clone(),
            row("builder-4")["agreed"].clone()
        ),
        (1.into(), 0.into())
    );
    assert_eq!(row("builder-2")["operator"], "Org Two");
    assert_eq!(row("builder-1")["own"], true);
    let strikes =
        std::fs::read_to_string(trusted.state().join("attestations/strikes.jsonl")).unwrap();
    assert!(
        strikes.contains(&leaf_drv) && strikes.contains("\"builder\":\"builder-4\""),
        "{strikes}"
    );
    assert!(
        strikes
            .lines()
            .any(|l| l.contains(&failing_drv) && l.contains("\"failed_here\"")),
        "{strikes}"
    );
    println!(
        "airlockctl builders:\n{}",
        String::from_utf8_lossy(&trusted.ctl(&["builders"]).stdout)
    );

    // Release by hand, under require_agreement = 2 builders of 2 operators:
    // chain-1 is signed and served, leaf (the builders differ) held back.
    let out = trusted.ctl(&["release", &head, "--reason", "agreement test"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let st = ctl_json(&trusted, &["release", "status", &head]);
    let released = &st["jobs"][0]["released"];
    let withheld = released["withheld"].as_array().unwrap();
    assert_eq!(withheld.len(), 1, "{st:#}");
    assert_eq!(withheld[0]["path"], leaf_out.as_str());
    assert!(
        withheld[0]["why"].as_str().unwrap().contains("differs"),
        "{st:#}"
    );
    let paths: Vec<String> = serde_json::from_value(released["paths"].clone()).unwrap();
    assert_eq!(paths.len(), 1, "{st:#}");
    assert!(paths[0].ends_with("-airlock-chain-1"), "{paths:?}");
    let narinfo = |p: &str| {
        let base = p.trim_start_matches("/nix/store/");
        http(
            &cache,
            "GET",
            &format!("/{}.narinfo", &base[..32]),
            &[],
            b"",
        )
        .0
    };
    assert_eq!(narinfo(&paths[0]), 200);
    assert_eq!(
        narinfo(&leaf_out),
        404,
        "the path builders differ on is not served"
    );

    // Files: another builder's job attestations are already known; a
    // tampered copy is refused with the reason.
    let two_job = two.jobs()[0]["id"].as_str().unwrap().to_owned();
    let file = two
        .state()
        .join("jobs")
        .join(&two_job)
        .join("attestations.jsonl");
    let text = std::fs::read_to_string(&file).unwrap();
    let tampered = shared.path().join("tampered.jsonl");
    std::fs::write(
        &tampered,
        text.replacen("\"nar_size\":", "\"nar_size\":1", 1),
    )
    .unwrap();
    let imported = ctl_json(
        &trusted,
        &["import", file.to_str().unwrap(), tampered.to_str().unwrap()],
    );
    assert_eq!(imported["kept"], 0, "{imported:#}");
    // Two from the file, the tampered copy's untouched second line.
    assert_eq!(imported["known"], 3, "{imported:#}");
    let refused = imported["refused"].as_array().unwrap();
    assert_eq!(refused.len(), 1, "{imported:#}");
    assert!(
        refused[0].as_str().unwrap().contains("bad signature"),
        "{imported:#}"
    );

    // The cache server's /attestations/<drv hash>: all four, as kept.
    let drv_hash = &leaf_drv.trim_start_matches("/nix/store/")[..32];
    let (code, _, body) = http(
        &cache,
        "GET",
        &format!("/attestations/{drv_hash}"),
        &[],
        b"",
    );
    assert_eq!(code, 200);
    let lines: Vec<Value> = body
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4, "{}", String::from_utf8_lossy(&body));
    assert_eq!(
        http(&cache, "GET", "/attestations/..%2fstrikes", &[], b"").0,
        404
    );
}
