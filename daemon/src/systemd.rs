//! systemd's notify protocol (`sd_notify(3)`): READY, STATUS, WATCHDOG,
//! STOPPING on `NOTIFY_SOCKET`, when airlockd runs as a `Type=notify`
//! service; nothing otherwise.

use std::time::Duration;

use tracing::warn;

/// Send `msg` (newline-separated `KEY=value` lines) to systemd's notify
/// socket, if airlockd runs under systemd (`NOTIFY_SOCKET`); else nothing.
pub fn notify(msg: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sock = match std::os::unix::net::UnixDatagram::unbound() {
        Ok(s) => s,
        Err(_) => return,
    };
    let p = path.to_string_lossy().into_owned();
    let res = if let Some(abs) = p.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(abs.as_bytes())
            .and_then(|a| sock.send_to_addr(msg.as_bytes(), &a))
    } else {
        sock.send_to(msg.as_bytes(), &p)
    };
    if let Err(e) = res {
        warn!(error = %e, "sd_notify failed");
    }
}

/// Tell systemd we are ready (`Type=notify`), if it is listening.
pub fn notify_ready() {
    notify("READY=1\n");
}

/// The watchdog interval systemd asks for (`WATCHDOG_USEC`, for this
/// process when `WATCHDOG_PID` is set).
pub fn watchdog() -> Option<Duration> {
    if let Some(pid) = std::env::var_os("WATCHDOG_PID") {
        if pid.to_string_lossy().parse::<u32>().ok() != Some(std::process::id()) {
            return None;
        }
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec))
}
