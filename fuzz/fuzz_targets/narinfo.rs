//! narinfo text (read back from quarantine and, later, from other caches)
//! and content-address claims.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(ni) = airlock::store::narinfo::NarInfo::parse(s) {
            let again = airlock::store::narinfo::NarInfo::parse(&ni.render()).expect("re-parse");
            assert_eq!(again, ni);
        }
        let _ = airlock::store::StorePath::parse(s);
        if let Ok(ca) = airlock::store::ca::parse(s) {
            assert!(!ca.chars().any(char::is_control));
            let parts = airlock::store::ca::parse_address(ca).expect("parts");
            let _ = airlock::store::ca::store_path(&parts, "x", &[], false);
        }
    }
});
