//! Randomised never-panic tests for every parser of this crate (the
//! `cargo fuzz` targets in `fuzz/` beside it explore further; these run in CI).

use crate::nar::build::{nar, Node};
use crate::nar::{validate, RefScanner};
use crate::narinfo::NarInfo;
use crate::testkit::{mutate, Rng};
use crate::StorePath;

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
        let _ = crate::nar::flat_file(&data[..], &mut contents);
        assert!(contents.len() <= data.len());
    }
}

#[test]
fn text_parsers_never_panic() {
    let mut rng = Rng(0xfeed_beef);
    let narinfo = b"StorePath: /nix/store/ihml9cgha2ncb1jfpf857yd6nls4n23b-x\nURL: nar/x.nar\nNarHash: sha256:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73\nNarSize: 1\nReferences: ihml9cgha2ncb1jfpf857yd6nls4n23b-x\nSig: k-1:AAAA\n";
    let ca_valid = b"fixed:r:sha256:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73";
    let key = b"cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=";
    for _ in 0..20_000 {
        let text = String::from_utf8_lossy(&mutate(&mut rng, narinfo)).into_owned();
        if let Ok(ni) = NarInfo::parse(&text) {
            assert_eq!(NarInfo::parse(&ni.render()).unwrap(), ni);
            let k = String::from_utf8_lossy(&mutate(&mut rng, key)).into_owned();
            for sig in &ni.sigs {
                let _ = crate::signing::verify(&k, &ni.signed, sig);
            }
        }
        let ca = String::from_utf8_lossy(&mutate(&mut rng, ca_valid)).into_owned();
        if let Ok(ok) = crate::ca::parse(&ca) {
            assert!(!ok.chars().any(char::is_control), "{ok:?}");
            assert!(ok.starts_with("fixed:") || ok.starts_with("text:"));
            let parts = crate::ca::parse_address(ok).expect("what parse accepts has parts");
            let _ = crate::ca::store_path(&parts, "x", &[], false);
        } else {
            assert!(crate::ca::parse_address(&ca).is_err());
        }
        let p = String::from_utf8_lossy(&rng.bytes(60)).into_owned();
        if let Ok(sp) = StorePath::parse(&p) {
            assert_eq!(sp.to_string(), p);
        }
    }
}

#[test]
fn drv_outputs_parser_never_panics() {
    let mut rng = Rng(0xd7f0_0001);
    let base = br#"Derive([("dev","/nix/store/ihml9cgha2ncb1jfpf857yd6nls4n23b-x-dev","",""),("out","/nix/store/ihml9cgha2ncb1jfpf857yd6nls4n23b-x","r:sha256","0b5a\"q\\")],[],[],"x86_64-linux","/bin/sh",[],[])"#;
    assert_eq!(crate::drv::outputs(base).unwrap().len(), 2);
    for _ in 0..20_000 {
        let _ = crate::drv::outputs(&mutate(&mut rng, base));
    }
}
