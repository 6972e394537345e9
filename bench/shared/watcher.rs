//! `bullmq-warden watch` as the benchmarks run it: the harness's command for
//! the (release) binary with JSON logs, the log written to a file rather than
//! collected on a thread, and read back incrementally as events.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

use crate::support::{watch_command, ChildGuard};

/// Runs `bullmq-warden watch` with JSON logs written to `log`.
pub fn start_watcher(config: &Path, log: &Path) -> ChildGuard {
    start_watcher_logging(config, log, "info")
}

/// Like `start_watcher`, with `filter` as `RUST_LOG`: a benchmark that
/// waits for a debug-level event names its target.
pub fn start_watcher_logging(config: &Path, log: &Path, filter: &str) -> ChildGuard {
    let file = File::create(log).expect("log file");
    let mut command = watch_command(config);
    command
        .env("RUST_LOG", filter)
        .stdout(Stdio::null())
        .stderr(file);
    ChildGuard::spawn(&mut command, "bullmq-warden watch")
}

/// The watcher's log, read from where the last look ended. Only new bytes
/// are read: parsing the whole log every few milliseconds would take CPU
/// from the watcher and Redis while they restore.
pub struct EventLog {
    reader: BufReader<File>,
    /// A line the watcher has not finished writing yet.
    partial: String,
}

impl EventLog {
    pub fn new(path: &Path) -> Self {
        Self {
            reader: BufReader::new(File::open(path).expect("open the watcher's log")),
            partial: String::new(),
        }
    }

    /// The next complete line, if the watcher has written one.
    fn next_line(&mut self) -> Option<Value> {
        loop {
            let read = self
                .reader
                .read_line(&mut self.partial)
                .expect("read the watcher's log");
            if read == 0 || !self.partial.ends_with('\n') {
                return None;
            }
            let line = std::mem::take(&mut self.partial);
            if let Ok(value) = serde_json::from_str(&line) {
                return Some(value);
            }
        }
    }

    pub fn skip_to_end(&mut self) {
        while self.next_line().is_some() {}
    }

    /// The next line after the last one looked at for which `wanted` holds;
    /// with a zero `timeout`, only among the lines written already.
    pub fn wait_for_line(
        &mut self,
        wanted: impl Fn(&Value) -> bool,
        timeout: Duration,
    ) -> Option<LogLine> {
        let deadline = Instant::now() + timeout;
        loop {
            while let Some(line) = self.next_line() {
                if !wanted(&line) {
                    continue;
                }
                let stamp = line["timestamp"].as_str().unwrap_or_default();
                let time = chrono::DateTime::parse_from_rfc3339(stamp).ok()?;
                return Some(LogLine {
                    at: SystemTime::from(time),
                    fields: line,
                });
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// The next `event` after the last one looked at.
    pub fn wait_for(&mut self, event: &str, timeout: Duration) -> Option<LogLine> {
        self.wait_for_line(|line| line["event"] == event, timeout)
    }
}

/// One event of the watcher's log.
pub struct LogLine {
    pub at: SystemTime,
    /// The whole line: the event's fields are at its top level.
    pub fields: Value,
}
