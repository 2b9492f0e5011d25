//! Randomised never-panic tests for every parser of untrusted input (the
//! `cargo fuzz` targets in `fuzz/` explore further; these run in CI).

use super::nar::build::{nar, Node};
use super::nar::{validate, RefScanner};
use super::narinfo::NarInfo;
use super::StorePath;

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = self.below(max);
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn sample_nar() -> Vec<u8> {
    nar(&Node::Dir(vec![
        (
            "a",
            Node::File {
                exec: true,
                data: b"/nix/store/ihml9cgha2ncb1jfpf857yd6nls4n23b-x",
            },
        ),
        ("b", Node::Link("a")),
        (
            "c",
            Node::Dir(vec![(
                "d",
                Node::File {
                    exec: false,
                    data: b"",
                },
            )]),
        ),
    ]))
}

fn mutate(rng: &mut Rng, base: &[u8]) -> Vec<u8> {
    let mut v = base.to_vec();
    match rng.below(4) {
        0 => {
            let i = rng.below(v.len());
            v[i] = rng.next() as u8;
        }
        1 => v.truncate(rng.below(v.len())),
        2 => {
            let i = rng.below(v.len());
            let extra = rng.bytes(16);
            v.splice(i..i, extra);
        }
        _ => {
            // A huge length where a length is expected.
            let i = rng.below(v.len() / 8) * 8;
            if i + 8 <= v.len() {
                v[i..i + 8].copy_from_slice(&rng.next().to_le_bytes());
            }
        }
    }
    v
}

#[test]
fn nar_validator_never_panics() {
    let mut rng = Rng(0x5eed_1234);
    let base = sample_nar();
    assert!(validate(
        &base[..],
        base.len() as u64,
        1 << 20,
        None::<Vec<u8>>,
        RefScanner::new([])
    )
    .is_ok());
    for _ in 0..20_000 {
        let data = if rng.below(2) == 0 {
            mutate(&mut rng, &base)
        } else {
            rng.bytes(300)
        };
        let scanner = RefScanner::new(["ihml9cgha2ncb1jfpf857yd6nls4n23b"]);
        if let Ok(s) = validate(
            &data[..],
            data.len() as u64,
            1 << 20,
            None::<Vec<u8>>,
            scanner,
        ) {
            assert_eq!(s.nar_size, data.len() as u64);
        }
        let mut contents = Vec::new();
        let _ = super::nar::flat_file(&data[..], &mut contents);
        assert!(contents.len() <= data.len());
    }
}

#[test]
fn wire_and_text_parsers_never_panic() {
    let mut rng = Rng(0xfeed_beef);
    let mut valid = Vec::new();
    let m = airlock_wire::Manifest {
        version: airlock_wire::WIRE_VERSION,
        phase: airlock_wire::Phase::All,
        status: airlock_wire::BuildStatus::Success,
        attempted_attrs: vec!["a".into()],
        skipped_attrs: vec![],
        paths: vec![],
    };
    airlock_wire::write_header(&mut valid, &m).unwrap();
    let job = br#"{"repo":{"owner":"o","name":"n","full_name":"o/n","clone_url":"https://x"},"pr":{"target_branch":"master","number":1,"head_sha":"e9872fa30caac57c69bfac8667e6c21254603df1"},"attrs":["a"],"request_id":"r"}"#;
    let narinfo = b"StorePath: /nix/store/ihml9cgha2ncb1jfpf857yd6nls4n23b-x\nURL: nar/x.nar\nNarHash: sha256:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73\nNarSize: 1\nReferences: ihml9cgha2ncb1jfpf857yd6nls4n23b-x\n";
    let ca_valid = b"fixed:r:sha256:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73";
    for _ in 0..20_000 {
        let header = mutate(&mut rng, &valid);
        let _ = airlock_wire::read_header(&mut &header[..]);
        let line = rng.bytes(200);
        let _ = airlock_wire::parse_channel_line(&line);
        let j = mutate(&mut rng, job);
        let _ = crate::amqp::decode_job(&j);
        let text = String::from_utf8_lossy(&mutate(&mut rng, narinfo)).into_owned();
        if let Ok(ni) = NarInfo::parse(&text) {
            assert_eq!(NarInfo::parse(&ni.render()).unwrap(), ni);
        }
        let ca = String::from_utf8_lossy(&mutate(&mut rng, ca_valid)).into_owned();
        if let Ok(ok) = super::ca::parse(&ca) {
            assert!(!ok.chars().any(char::is_control), "{ok:?}");
            assert!(ok.starts_with("fixed:") || ok.starts_with("text:"));
            let parts = super::ca::parse_address(ok).expect("what parse accepts has parts");
            let _ = super::ca::store_path(&parts, "x", &[], false);
        } else {
            assert!(super::ca::parse_address(&ca).is_err());
        }
        let p = String::from_utf8_lossy(&rng.bytes(60)).into_owned();
        if let Ok(sp) = StorePath::parse(&p) {
            assert_eq!(sp.to_string(), p);
        }
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
