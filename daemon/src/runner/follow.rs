//! Following a running VM: the agent channel's lines (log, events,
//! garbage) into the build log, the broker's stream and the journal, with
//! everything the host keeps from it bounded.

use std::collections::VecDeque;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Instant;

use tracing::warn;

use super::{result, LogSink};
use crate::job::{JobRecord, JobResult};
use crate::ofborg::BuildStatus;
use airlock_wire::{ChannelLine, Event};

/// The new whole lines of a file a VM is writing, read from where the last
/// read stopped.
#[derive(Default)]
pub(super) struct FileTail {
    pub(super) pos: u64,
    pub(super) partial: Vec<u8>,
}

impl FileTail {
    /// Read at most `max_read` new bytes (so a chatty guest cannot stall the
    /// host) and return the completed lines, without their newline; an
    /// unfinished line longer than `max_line` is returned as it is.
    pub(super) fn lines(&mut self, path: &Path, max_read: u64, max_line: usize) -> Vec<Vec<u8>> {
        let Ok(mut f) = std::fs::File::open(path) else {
            return vec![];
        };
        if f.seek(SeekFrom::Start(self.pos)).is_err() {
            return vec![];
        }
        let mut buf = Vec::new();
        let n = (&mut f).take(max_read).read_to_end(&mut buf).unwrap_or(0);
        self.pos += n as u64;
        self.partial.extend_from_slice(&buf);
        let mut out = Vec::new();
        while let Some(i) = self.partial.iter().position(|&b| b == b'\n') {
            let mut line: Vec<u8> = self.partial.drain(..=i).collect();
            line.pop();
            out.push(line);
        }
        if self.partial.len() > max_line {
            out.push(std::mem::take(&mut self.partial));
        }
        out
    }
}

/// Follows the channel file while the VM runs.
pub(super) struct Follower {
    pub(super) channel: FileTail,
    pub(super) tail: VecDeque<String>,
    pub(super) lines: u64,
    pub(super) log: std::fs::File,
    pub(super) started: Option<Instant>,
    pub(super) attempted: Option<Vec<String>>,
    pub(super) skipped: Option<Vec<String>>,
    pub(super) agent_error: Option<String>,
    /// The guest's Nix version, if it said (checked: short, printable).
    pub(super) guest_nix: Option<String>,
    /// What the agent said it realised (summed over `Realised` events).
    pub(super) realised: Option<crate::job::Realised>,
    /// Console and build log lines to the journal.
    pub(super) guest: Option<crate::journal::GuestLines>,
    /// How far the console file has been sent to the journal.
    pub(super) console: FileTail,
    /// (event, when it arrived).
    pub(super) marks: Vec<(String, Instant)>,
    /// Unexpected channel lines seen (only the first few are warned about).
    pub(super) garbage: u64,
    /// A queue-runner step: Nix's result as the guest reported it.
    pub(super) nix_step: Option<crate::job::NixStepResult>,
}

const TAIL: usize = 10;
/// Each timing mark at most this often (once per boot), so a guest that
/// repeats events cannot grow host memory or `job.json`.
const MARKS_PER_KIND: usize = 2;
/// Unexpected channel lines warned about per job; the rest are only counted.
const GARBAGE_WARNINGS: u64 = 5;

impl Follower {
    pub(super) fn new(log: std::fs::File) -> Follower {
        Follower {
            channel: FileTail::default(),
            tail: VecDeque::new(),
            lines: 0,
            log,
            started: None,
            attempted: None,
            skipped: None,
            agent_error: None,
            guest_nix: None,
            realised: None,
            marks: Vec::new(),
            garbage: 0,
            guest: None,
            console: FileTail::default(),
            nix_step: None,
        }
    }

    /// Send the console's new lines to the journal (only when it is there).
    pub(super) fn poll_console(&mut self, console: &Path) {
        let Some(g) = self.guest.as_mut() else {
            return;
        };
        for line in self.console.lines(console, 1 << 20, 4096) {
            let text = String::from_utf8_lossy(&line);
            g.line("console", text.trim_end_matches('\r'));
        }
    }

    /// A `Success` result with what the channel told so far (log tail,
    /// attempted and skipped attrs); the caller sets the real status.
    pub(super) fn result(&self) -> JobResult {
        let mut res = result(BuildStatus::Success, self.tail.iter().cloned().collect());
        res.attempted_attrs = self.attempted.clone();
        res.skipped_attrs = self.skipped.clone();
        res.nix_step = self.nix_step.clone();
        res
    }

    pub(super) fn poll(&mut self, channel: &Path, rec: &JobRecord, sink: &dyn LogSink) {
        for line in self
            .channel
            .lines(channel, 16 << 20, airlock_wire::MAX_CHANNEL_LINE)
        {
            self.handle(&line, rec, sink);
        }
    }

    pub(super) fn mark(&mut self, kind: &str, at: Instant) {
        if self.marks.iter().filter(|(k, _)| k == kind).count() < MARKS_PER_KIND {
            self.marks.push((kind.to_owned(), at));
        }
    }

    pub(super) fn log_line(&mut self, text: String, rec: &JobRecord, sink: &dyn LogSink) {
        self.lines += 1;
        let _ = writeln!(self.log, "{text}");
        sink.line(rec, self.lines, &text);
        if let Some(g) = self.guest.as_mut() {
            g.line("build", &text);
        }
        if self.tail.len() == TAIL {
            self.tail.pop_front();
        }
        self.tail.push_back(text);
    }

    pub(super) fn handle(&mut self, line: &[u8], rec: &JobRecord, sink: &dyn LogSink) {
        match airlock_wire::parse_channel_line(line) {
            ChannelLine::Log(t) => self.log_line(t, rec, sink),
            ChannelLine::Garbage(t) => {
                self.garbage += 1;
                if self.garbage <= GARBAGE_WARNINGS {
                    warn!(line = %crate::term::escape(&t.chars().take(200).collect::<String>()), "unexpected line on the agent channel");
                } else if self.garbage == GARBAGE_WARNINGS + 1 {
                    warn!("more unexpected lines on the agent channel; kept in the job log, not warned about");
                }
                self.log_line(t, rec, sink)
            }
            ChannelLine::Event(ev) => {
                let now = Instant::now();
                match ev {
                    Event::AgentStarted { .. } => {
                        self.started.get_or_insert(now);
                        self.mark("agent_started", now);
                    }
                    Event::Instantiated { attempted, skipped } => {
                        sink.started(rec, &attempted, &skipped);
                        self.attempted = Some(attempted);
                        self.skipped = Some(skipped);
                        self.mark("instantiated", now);
                    }
                    Event::Built { .. } => self.mark("built", now),
                    Event::Realised { built, substituted } => self
                        .realised
                        .get_or_insert_with(Default::default)
                        .add(crate::job::Realised { built, substituted }),
                    Event::Exported { .. } => self.mark("exported", now),
                    Event::AgentError { message } => self.agent_error = Some(message),
                    Event::StepBuilt {
                        nix_status,
                        error,
                        build_ms,
                    } => {
                        // Guest text, bounded: it becomes Hydra's error message.
                        let error: String = error.chars().take(4096).collect();
                        self.nix_step = Some(crate::job::NixStepResult {
                            status: nix_status,
                            error,
                            build_ms,
                        });
                    }
                    Event::GuestInfo { nix } => {
                        // Guest text: kept only when it looks like a version line.
                        if nix.len() <= 64 && nix.chars().all(|c| c.is_ascii_graphic() || c == ' ')
                        {
                            self.guest_nix = Some(nix);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::NoSink;

    /// A guest that floods the channel with events and junk: what the host
    /// keeps stays bounded.
    #[test]
    pub(super) fn a_flooding_guest_cannot_grow_what_the_host_keeps() {
        let t = tempfile::tempdir().unwrap();
        let job: crate::ofborg::BuildJob = serde_json::from_str(r#"{"repo":{"owner":"o","name":"n","full_name":"o/n","clone_url":"/x"},"pr":{"target_branch":"master","number":1,"head_sha":"e9872fa30caac57c69bfac8667e6c21254603df1"},"attrs":["a"],"request_id":"r"}"#).unwrap();
        let rec = JobRecord::new(crate::job::Source::Local, job);
        let mut f = Follower::new(std::fs::File::create(t.path().join("build.log")).unwrap());
        let events = [
            airlock_wire::Event::AgentStarted { version: 1 },
            airlock_wire::Event::Built {
                status: airlock_wire::BuildStatus::Success,
            },
            airlock_wire::Event::Exported { paths: 1, bytes: 1 },
            airlock_wire::Event::Instantiated {
                attempted: vec!["a".into()],
                skipped: vec![],
            },
        ];
        for i in 0..50_000 {
            let line = airlock_wire::encode_event(&events[i % events.len()]);
            f.handle(line.trim_end().as_bytes(), &rec, &NoSink);
            f.handle(b"\x1b[2J junk", &rec, &NoSink);
        }
        assert!(f.marks.len() <= MARKS_PER_KIND * 4, "{}", f.marks.len());
        assert_eq!(f.tail.len(), TAIL);
        assert_eq!(f.garbage, 50_000);
    }
}
