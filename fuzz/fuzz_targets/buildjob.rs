//! BuildJob bodies from the broker.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = airlock::amqp::decode_job(data);
});
