//! Timed runs of child processes, with their peak memory: what the
//! benchmarks measure. The processes themselves are the harness's
//! `ChildGuard`s, killed however the benchmark ends.

use std::fs::File;
use std::io::{Read, Seek};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::support::{rss_kib, ChildGuard};

/// How often a running child is checked for exit. It bounds the error of the
/// measured wall time, so it is kept well below a millisecond.
const EXIT_POLL: Duration = Duration::from_micros(250);

/// How often a running child's peak memory is read; rarer than the exit
/// check, as each read costs the machine a little.
const MEMORY_POLL: Duration = Duration::from_millis(10);

/// A child that ran to completion.
pub struct Finished {
    /// From just before spawning to the observed exit.
    pub wall: Duration,
    /// Its peak resident set size, read every 10 ms while it ran (Linux), KiB.
    pub peak_rss_kib: Option<u64>,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    /// The last lines of stderr, for failure messages.
    pub fn stderr_tail(&self) -> String {
        let lines: Vec<&str> = self.stderr.lines().collect();
        lines[lines.len().saturating_sub(10)..].join("\n")
    }
}

/// Runs `command` to completion and times it; see `wait_measured` for
/// `timeout` and `measurable`. stdout and stderr go to anonymous files rather
/// than pipes: bullmq-warden's report over 100,000 schedulers is megabytes, and
/// a full pipe would stall the measured process.
pub fn run_timed(
    mut command: Command,
    stdin: Option<&Path>,
    what: &str,
    timeout: Duration,
    measurable: impl Fn() -> bool,
) -> Finished {
    let mut stdout = tempfile::tempfile().expect("temp file for stdout");
    let mut stderr = tempfile::tempfile().expect("temp file for stderr");
    let input = match stdin {
        Some(path) => {
            Stdio::from(File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display())))
        }
        None => Stdio::null(),
    };
    command
        .stdin(input)
        .stdout(stdout.try_clone().expect("clone stdout file"))
        .stderr(stderr.try_clone().expect("clone stderr file"));
    let started = Instant::now();
    let mut child = ChildGuard::spawn(&mut command, what);
    let (status, peak_rss_kib) = wait_measured(&mut child, what, timeout, measurable);
    let wall = started.elapsed();
    Finished {
        wall,
        peak_rss_kib,
        status,
        stdout: read_back(&mut stdout),
        stderr: read_back(&mut stderr),
    }
}

/// Waits for `child` to exit and returns its status with the highest
/// resident set size seen meanwhile (Linux), KiB. Kills it and panics after
/// `timeout`, or as soon as `measurable()` turns false: a client whose Redis
/// went away may retry forever, and the run could not be measured anyway.
///
/// Polls rather than blocking in `wait` so that neither check needs a
/// second thread, at the cost of at most `EXIT_POLL` added to the wall time.
fn wait_measured(
    child: &mut ChildGuard,
    what: &str,
    timeout: Duration,
    measurable: impl Fn() -> bool,
) -> (ExitStatus, Option<u64>) {
    let deadline = Instant::now() + timeout;
    let mut memory_read_at: Option<Instant> = None;
    let mut peak_rss_kib = None;
    loop {
        if memory_read_at.is_none_or(|at| at.elapsed() >= MEMORY_POLL) {
            memory_read_at = Some(Instant::now());
            if let Some((_, peak)) = rss_kib(child.id()) {
                peak_rss_kib = Some(peak);
            }
        }
        if let Some(status) = child.exit_status() {
            return (status, peak_rss_kib);
        }
        if !measurable() {
            child.kill();
            panic!("{what} stopped: the run can no longer be measured");
        }
        if Instant::now() >= deadline {
            child.kill();
            panic!("{what} did not finish within {timeout:?}");
        }
        std::thread::sleep(EXIT_POLL);
    }
}

fn read_back(file: &mut File) -> String {
    file.rewind().expect("rewind output file");
    let mut text = String::new();
    file.read_to_string(&mut text).expect("read output file");
    text
}
