//! Randomised never-panic tests for the daemon's own parsers of untrusted
//! input: the agent's wire formats, broker messages, GitHub's answers and
//! webhooks (the store formats have theirs in `airlock-nix-formats`).

use crate::store::testkit::{mutate, Rng};

#[test]
fn wire_and_job_parsers_never_panic() {
    let mut rng = Rng(0xfeed_beef);
    let mut valid = Vec::new();
    let m = airlock_wire::Manifest {
        version: airlock_wire::WIRE_VERSION,
        phase: airlock_wire::Phase::All,
        status: airlock_wire::BuildStatus::Success,
        attempted_attrs: vec!["a".into()],
        skipped_attrs: vec![],
        paths: vec![],
        review: None,
    };
    airlock_wire::write_header(&mut valid, &m).unwrap();
    let job = br#"{"repo":{"owner":"o","name":"n","full_name":"o/n","clone_url":"https://x"},"pr":{"target_branch":"master","number":1,"head_sha":"e9872fa30caac57c69bfac8667e6c21254603df1"},"attrs":["a"],"request_id":"r"}"#;
    for _ in 0..20_000 {
        let header = mutate(&mut rng, &valid);
        let _ = airlock_wire::read_header(&mut &header[..]);
        let line = rng.bytes(200);
        let _ = airlock_wire::parse_channel_line(&line);
        let j = mutate(&mut rng, job);
        let _ = crate::amqp::decode_job(&j);
    }
}

#[test]
fn github_and_webhook_parsers_never_panic() {
    use crate::release::{github, rule, webhook};
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/github/");
    let read = |f: &str| std::fs::read(format!("{dir}{f}")).unwrap();
    let hook = read("webhook-pull_request-synchronize.json");
    let pull = read("pull.json");
    let event = read("issue-event-head_ref_force_pushed.json");
    assert!(webhook::parse("pull_request", &hook).unwrap().is_some());
    let mut rng = Rng(0x617_4b75b);
    for _ in 0..3_000 {
        let h = mutate(&mut rng, &hook);
        let _ = webhook::parse("pull_request", &h);
        let sig = String::from_utf8_lossy(&rng.bytes(80)).into_owned();
        let _ = webhook::verify(b"k", Some(&sig), &h);
        let _ = serde_json::from_slice::<github::Pull>(&mutate(&mut rng, &pull));
        if let Ok(e) = serde_json::from_slice::<github::IssueEvent>(&mutate(&mut rng, &event)) {
            let _ = github::event_time(&e);
        }
        let text = String::from_utf8_lossy(&rng.bytes(120)).into_owned();
        let _ = github::next_link(&text);
        let _ = github::check_repo(&text);
        let _ = rule::parse_time(&text);
    }
}
