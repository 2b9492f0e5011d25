//! Logging straight to journald (its native protocol on
//! `/run/systemd/journal/socket`), so that one job's story is
//! `journalctl -u airlockd JOB_ID=…`.
//!
//! Every event is one entry: `MESSAGE`, `PRIORITY`, `SYSLOG_IDENTIFIER`,
//! `TARGET`, `CODE_FILE`, `CODE_LINE`, and as fields of their own the
//! event's fields and those of the spans it is in, upper-cased (`job_id` →
//! `JOB_ID`; the job span carries `JOB_ID`, `PR`, `COMMIT`, `REPO`,
//! `ATTR`; VM events `PHASE`). airlockd uses it when systemd connected its
//! stderr to the journal (`JOURNAL_STREAM`), or with `AIRLOCK_JOURNALD=1`.

use std::fmt::Write as _;
use std::os::unix::net::UnixDatagram;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

pub const SOCKET: &str = "/run/systemd/journal/socket";
/// Longest value sent; an entry must fit one datagram.
const MAX_VALUE: usize = 16 * 1024;

/// Should airlockd log to the journal? (stderr is the journal's stream, or
/// it is asked to.)
pub fn wanted() -> bool {
    if std::env::var("AIRLOCK_JOURNALD").as_deref() == Ok("1") {
        return true;
    }
    let Ok(stream) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    use std::os::unix::fs::MetadataExt;
    let Ok(md) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    stream == format!("{}:{}", md.dev(), md.ino())
}

/// journald's field-name rules: `[A-Z0-9_]`, not starting with `_` or a
/// digit, at most 64 bytes.
pub fn field_name(name: &str) -> Option<String> {
    let n: String = name
        .chars()
        .map(|c| match c {
            'a'..='z' => c.to_ascii_uppercase(),
            'A'..='Z' | '0'..='9' | '_' => c,
            _ => '_',
        })
        .collect();
    let n = n.trim_start_matches(|c: char| c == '_' || c.is_ascii_digit());
    (!n.is_empty()).then(|| n.chars().take(64).collect())
}

/// Append one field in the native protocol (the length-prefixed form when
/// the value has a newline).
pub fn put(buf: &mut Vec<u8>, name: &str, value: &str) {
    let mut v = value;
    if v.len() > MAX_VALUE {
        let mut end = MAX_VALUE;
        while !v.is_char_boundary(end) {
            end -= 1;
        }
        v = &v[..end];
    }
    buf.extend_from_slice(name.as_bytes());
    if v.contains('\n') {
        buf.push(b'\n');
        buf.extend_from_slice(&(v.len() as u64).to_le_bytes());
    } else {
        buf.push(b'=');
    }
    buf.extend_from_slice(v.as_bytes());
    buf.push(b'\n');
}

#[derive(Default)]
struct Fields {
    message: String,
    fields: Vec<(String, String)>,
}

impl Visit for Fields {
    fn record_str(&mut self, f: &Field, v: &str) {
        self.add(f, v.to_owned());
    }
    fn record_debug(&mut self, f: &Field, v: &dyn std::fmt::Debug) {
        self.add(f, format!("{v:?}"));
    }
}

impl Fields {
    fn add(&mut self, f: &Field, v: String) {
        if f.name() == "message" {
            self.message = v;
        } else if let Some(n) = field_name(f.name()) {
            self.fields.retain(|(k, _)| *k != n);
            self.fields.push((n, v));
        }
    }
}

pub struct JournalLayer {
    sock: UnixDatagram,
    path: std::path::PathBuf,
}

impl JournalLayer {
    pub fn new(path: &std::path::Path) -> std::io::Result<JournalLayer> {
        let sock = UnixDatagram::unbound()?;
        // Fail now if there is no journal, not at the first event.
        sock.connect(path)?;
        Ok(JournalLayer {
            sock,
            path: path.to_owned(),
        })
    }
}

fn priority(l: &Level) -> &'static str {
    match *l {
        Level::ERROR => "3",
        Level::WARN => "4",
        Level::INFO => "6",
        _ => "7",
    }
}

impl<S> tracing_subscriber::Layer<S> for JournalLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: Context<'_, S>,
    ) {
        let mut f = Fields::default();
        attrs.record(&mut f);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(f);
        }
    }

    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        ctx: Context<'_, S>,
    ) {
        if let Some(span) = ctx.span(id) {
            let mut ext = span.extensions_mut();
            if let Some(f) = ext.get_mut::<Fields>() {
                values.record(f);
            }
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut ev = Fields::default();
        event.record(&mut ev);
        let mut buf = Vec::with_capacity(512);
        let mut text = ev.message.clone();
        // Span fields first (root to leaf), the event's own last: an event
        // field wins over a span field of the same name.
        let mut all: Vec<(String, String)> = Vec::new();
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope.from_root() {
                if let Some(f) = span.extensions().get::<Fields>() {
                    all.extend(f.fields.iter().cloned());
                }
            }
        }
        for (k, v) in &ev.fields {
            let _ = write!(text, " {}={v}", k.to_lowercase());
        }
        all.extend(ev.fields);
        let meta = event.metadata();
        put(&mut buf, "MESSAGE", &text);
        put(&mut buf, "PRIORITY", priority(meta.level()));
        put(&mut buf, "SYSLOG_IDENTIFIER", "airlockd");
        put(&mut buf, "TARGET", meta.target());
        if let Some(f) = meta.file() {
            put(&mut buf, "CODE_FILE", f);
        }
        if let Some(l) = meta.line() {
            put(&mut buf, "CODE_LINE", &l.to_string());
        }
        let mut seen = std::collections::HashSet::new();
        for (k, v) in all.iter().rev() {
            if seen.insert(k.clone()) {
                put(&mut buf, k, v);
            }
        }
        if self.sock.send(&buf).is_err() {
            // journald restarted: one reconnect, then the entry is dropped.
            let _ = self.sock.connect(&self.path);
            let _ = self.sock.send(&buf);
        }
    }
}

/// A job's guest console and build log lines, sent to the journal as
/// entries of their own (`SYSLOG_IDENTIFIER=airlock-guest`, `AIRLOCK_SOURCE`
/// `console` or `build`, the job's `JOB_ID`, `PR`, `COMMIT`, `REPO`, and
/// under systemd `OBJECT_SYSTEMD_UNIT`, so `journalctl -u airlock-job-<id>`
/// shows them). A token bucket bounds them: `rate` lines a second, bursts of
/// ten times that; what does not fit is counted and said once the bucket
/// refills (and at the end). The job's log on disk keeps every line.
pub struct GuestLines {
    sock: UnixDatagram,
    fields: Vec<(String, String)>,
    /// One bucket for the console, one for the build log: a chatty
    /// console cannot crowd out the build log, nor the other way round.
    console: Bucket,
    build: Bucket,
}

/// The token bucket behind [`GuestLines`]: `rate` a second, bursts of ten
/// times that.
#[derive(Debug, Clone)]
pub struct Bucket {
    rate: f64,
    tokens: f64,
    last: std::time::Instant,
    /// Lines held back since the last report.
    pub dropped: u64,
}

impl Bucket {
    pub fn new(rate: u64, now: std::time::Instant) -> Bucket {
        Bucket {
            rate: rate as f64,
            tokens: rate as f64 * 10.0,
            last: now,
            dropped: 0,
        }
    }

    /// May a line go out at `now`? Counts it in `dropped` if not.
    pub fn admit(&mut self, now: std::time::Instant) -> bool {
        let cap = self.rate * 10.0;
        self.tokens = (self.tokens
            + now.saturating_duration_since(self.last).as_secs_f64() * self.rate)
            .min(cap);
        self.last = now;
        if self.tokens < 1.0 {
            self.dropped += 1;
            return false;
        }
        self.tokens -= 1.0;
        true
    }
}

impl GuestLines {
    /// `None` when `rate` is 0 or there is no journal at `path`.
    pub fn new(path: &std::path::Path, rate: u64, fields: Vec<(String, String)>) -> Option<Self> {
        if rate == 0 {
            return None;
        }
        let sock = UnixDatagram::unbound().ok()?;
        sock.connect(path).ok()?;
        // A journal that cannot keep up costs lines, never the job's time.
        sock.set_nonblocking(true).ok()?;
        Some(GuestLines {
            sock,
            fields,
            console: Bucket::new(rate, std::time::Instant::now()),
            build: Bucket::new(rate, std::time::Instant::now()),
        })
    }

    fn send(&mut self, source: &str, priority: &str, text: &str) {
        let mut buf = Vec::with_capacity(256 + text.len());
        put(&mut buf, "MESSAGE", text);
        put(&mut buf, "PRIORITY", priority);
        put(&mut buf, "SYSLOG_IDENTIFIER", "airlock-guest");
        put(&mut buf, "AIRLOCK_SOURCE", source);
        for (k, v) in &self.fields {
            put(&mut buf, k, v);
        }
        if self.sock.send(&buf).is_err() {
            self.bucket(source).dropped += 1;
        }
    }

    fn bucket(&mut self, source: &str) -> &mut Bucket {
        if source == "build" {
            &mut self.build
        } else {
            &mut self.console
        }
    }

    /// One line from the guest (`source`: `console` or `build`).
    pub fn line(&mut self, source: &str, text: &str) {
        if !self.bucket(source).admit(std::time::Instant::now()) {
            return;
        }
        if self.bucket(source).dropped > 0 {
            self.flush();
        }
        self.send(source, "6", &crate::term::escape(text));
    }

    /// Say how many lines the limit held back, if any.
    pub fn flush(&mut self) {
        for (what, source) in [("console", "console"), ("build log", "build")] {
            let b = self.bucket(source);
            if b.dropped > 0 {
                let n = std::mem::take(&mut b.dropped);
                let text = format!(
                    "{n} guest {what} lines not sent to the journal (supervision.journal_lines_per_sec = {}); the job's log keeps them",
                    b.rate
                );
                self.send("airlockd", "5", &text);
            }
        }
    }
}

impl Drop for GuestLines {
    fn drop(&mut self) {
        self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guest_line_bucket_allows_bursts_and_the_rate() {
        let t0 = std::time::Instant::now();
        let mut b = Bucket::new(5, t0);
        let passed = (0..200).filter(|_| b.admit(t0)).count();
        assert_eq!(passed, 50, "a burst of ten seconds' worth");
        assert_eq!(b.dropped, 150);
        // Two seconds later: ten more.
        let t2 = t0 + std::time::Duration::from_secs(2);
        assert_eq!((0..100).filter(|_| b.admit(t2)).count(), 10);
        // Never more than the burst, however long the pause.
        let t9 = t0 + std::time::Duration::from_secs(3600);
        assert_eq!((0..100).filter(|_| b.admit(t9)).count(), 50);
    }

    #[test]
    fn guest_lines_carry_the_job_fields() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.sock");
        let server = UnixDatagram::bind(&path).unwrap();
        let mut g = GuestLines::new(&path, 5, vec![("JOB_ID".into(), "j1".into())]).unwrap();
        g.line("console", "boot \x1b[31mred");
        let mut buf = vec![0u8; 65536];
        let n = server.recv(&mut buf).unwrap();
        let m = String::from_utf8_lossy(&buf[..n]).into_owned();
        assert!(m.contains("JOB_ID=j1\n"), "{m}");
        assert!(m.contains("SYSLOG_IDENTIFIER=airlock-guest\n"), "{m}");
        assert!(m.contains("AIRLOCK_SOURCE=console\n"), "{m}");
        assert!(!m.contains('\x1b'), "control characters are escaped: {m}");
    }

    #[test]
    fn field_names_follow_journald_rules() {
        assert_eq!(field_name("job_id").as_deref(), Some("JOB_ID"));
        assert_eq!(field_name("pr").as_deref(), Some("PR"));
        assert_eq!(field_name("_secret").as_deref(), Some("SECRET"));
        assert_eq!(field_name("9lives").as_deref(), Some("LIVES"));
        assert_eq!(field_name("a.b-c").as_deref(), Some("A_B_C"));
        assert_eq!(field_name("__"), None);
    }

    #[test]
    fn values_with_newlines_are_length_prefixed() {
        let mut b = Vec::new();
        put(&mut b, "MESSAGE", "one line");
        put(&mut b, "LOG", "two\nlines");
        let mut want = b"MESSAGE=one line\nLOG\n".to_vec();
        want.extend_from_slice(&9u64.to_le_bytes());
        want.extend_from_slice(b"two\nlines\n");
        assert_eq!(b, want);
    }
}
