//! NARs from the guest: the validator must never panic, and accept only
//! exactly the declared size.
#![no_main]
use airlock_nix_formats::nar::{validate, RefScanner};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let scanner = RefScanner::new(["ihml9cgha2ncb1jfpf857yd6nls4n23b"]);
    if let Ok(s) = validate(data, data.len() as u64, 1 << 20, None::<Vec<u8>>, scanner) {
        assert_eq!(s.nar_size, data.len() as u64);
    }
    let mut contents = Vec::new();
    let _ = airlock_nix_formats::nar::flat_file(data, &mut contents);
    assert!(contents.len() <= data.len());
});
