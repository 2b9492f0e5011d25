//! Lines on the agent channel (virtio console) from the guest.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for line in data.split(|&b| b == b'\n') {
        let _ = airlock_wire::parse_channel_line(line);
    }
});
