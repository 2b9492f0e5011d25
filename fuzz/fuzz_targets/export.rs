//! The export stream header written by the guest.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut r = data;
    if airlock_wire::read_header(&mut r).is_ok() {
        let _ = airlock_wire::read_trailer(&mut r);
    }
});
