//! narinfo text (read back from quarantine and, later, from other caches)
//! and content-address claims.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(ni) = airlock_nix_formats::narinfo::NarInfo::parse(s) {
            let again = airlock_nix_formats::narinfo::NarInfo::parse(&ni.render()).expect("re-parse");
            assert_eq!(again, ni);
        }
        let _ = airlock_nix_formats::StorePath::parse(s);
        if let Ok(ca) = airlock_nix_formats::ca::parse(s) {
            assert!(!ca.chars().any(char::is_control));
            let parts = airlock_nix_formats::ca::parse_address(ca).expect("parts");
            let _ = airlock_nix_formats::ca::store_path(&parts, "x", &[], false);
        }
    }
});
