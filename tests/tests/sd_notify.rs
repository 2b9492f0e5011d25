//! airlockd under systemd's notify protocol (`Type=notify`), against a
//! notify socket this test binds the way systemd does: `READY=1` once the
//! API is up, `STATUS=` with job counts, `WATCHDOG=1` at half the interval
//! `WATCHDOG_USEC` asks for, `STOPPING=1` on SIGTERM.

mod common;

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

#[test]
fn sd_notify_ready_status_watchdog_and_stopping() {
    if !common::prerequisites("sd_notify_ready_status_watchdog_and_stopping") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let notify = t.path().join("notify");
    let sock = UnixDatagram::bind(&notify).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let config = common::standalone_config(t.path(), "");
    let mut child = std::process::Command::new(common::bin("airlockd"))
        .arg("--config")
        .arg(&config)
        .arg("--state-dir")
        .arg(t.path().join("state"))
        .arg("--socket")
        .arg(t.path().join("api.sock"))
        .env("NOTIFY_SOCKET", &notify)
        .env("WATCHDOG_USEC", "400000")
        .env("NO_COLOR", "1")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut got = String::new();
    let read_until = |want: &str, got: &mut String| {
        let t0 = Instant::now();
        let mut buf = [0u8; 4096];
        while !got.contains(want) {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "no {want:?} in {got:?}"
            );
            if let Ok(n) = sock.recv(&mut buf) {
                got.push_str(&String::from_utf8_lossy(&buf[..n]));
                got.push('|');
            }
        }
    };
    read_until("READY=1", &mut got);
    read_until("STATUS=0 running, 0 queued", &mut got);
    // At half of 400 ms: several within a second.
    let before = got.matches("WATCHDOG=1").count();
    std::thread::sleep(Duration::from_millis(1200));
    read_until("WATCHDOG=1", &mut got);
    // Take what queued up during the sleep, for a bounded time: airlockd
    // keeps sending WATCHDOG=1 every 200 ms, so "until the socket is quiet"
    // would never end.
    let mut buf = [0u8; 4096];
    let drain_until = Instant::now() + Duration::from_millis(500);
    while Instant::now() < drain_until {
        if let Ok(n) = sock.recv(&mut buf) {
            got.push_str(&String::from_utf8_lossy(&buf[..n]));
            got.push('|');
        }
    }
    assert!(got.matches("WATCHDOG=1").count() >= before + 2, "{got}");
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    read_until("STOPPING=1", &mut got);
    let st = child.wait().unwrap();
    assert!(st.success(), "{st}");
}
