//! NARs from the guest: the validator must never panic, and accept only
//! exactly the declared size.
#![no_main]
use airlock::store::nar::{validate, RefScanner};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let scanner = RefScanner::new(["ihml9cgha2ncb1jfpf857yd6nls4n23b"]);
    if let Ok(s) = validate(data, data.len() as u64, 1 << 20, None::<Vec<u8>>, scanner) {
        assert_eq!(s.nar_size, data.len() as u64);
    }
    let mut seen = 0usize;
    let _ = airlock::store::nar::flat_file(data, |b| seen += b.len());
    assert!(seen <= data.len());
});
