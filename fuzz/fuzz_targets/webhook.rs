//! GitHub webhook deliveries (after the signature check) and the `Link`
//! header of API responses.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = airlock::release::webhook::parse("pull_request", data);
    let _ = airlock::release::webhook::verify(b"secret", std::str::from_utf8(data).ok(), b"body");
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = airlock::release::github::next_link(s);
        let _ = airlock::release::github::check_repo(s);
    }
});
