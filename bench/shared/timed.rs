//! Child processes that cannot outlive the benchmark, and timed runs of them.

use std::fs::File;
use std::io::{Read, Seek};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How often a running child is checked for exit. It bounds the error of the
/// measured wall time, so it is kept well below a millisecond.
const EXIT_POLL: Duration = Duration::from_micros(250);

/// How often a running child's peak memory is read; rarer than the exit
/// check, as each read costs the machine a little.
const MEMORY_POLL: Duration = Duration::from_millis(10);

/// A child process that is killed when dropped, so that a panic or an early
/// return never leaves a `redis-server`, `node` or `bullmq-warden` running.
pub struct ChildGuard {
    child: Child,
    what: String,
    /// The highest resident set size seen while waiting (Linux), KiB.
    peak_rss_kib: Option<u64>,
}

impl ChildGuard {
    /// Spawns `command`; `what` names it in messages.
    pub fn spawn(command: &mut Command, what: &str) -> Self {
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        Self {
            child,
            what: what.to_owned(),
            peak_rss_kib: None,
        }
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// `None` while the child runs.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child
            .try_wait()
            .unwrap_or_else(|e| panic!("cannot wait for {}: {e}", self.what))
    }

    /// Waits for the child to exit. Kills it and panics after `timeout`, or as
    /// soon as `measurable()` turns false: a client whose Redis went away may
    /// retry forever, and the run could not be measured anyway.
    ///
    /// Polls rather than blocking in `wait` so that neither check needs a
    /// second thread, at the cost of at most `EXIT_POLL` added to the wall time.
    pub fn wait(&mut self, timeout: Duration, measurable: impl Fn() -> bool) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        let mut memory_read_at: Option<Instant> = None;
        loop {
            if memory_read_at.is_none_or(|at| at.elapsed() >= MEMORY_POLL) {
                memory_read_at = Some(Instant::now());
                if let Some(peak) = peak_rss_kib(self.child.id()) {
                    self.peak_rss_kib = Some(peak);
                }
            }
            if let Some(status) = self.exit_status() {
                return status;
            }
            if !measurable() {
                self.kill();
                panic!("{} stopped: the run can no longer be measured", self.what);
            }
            if Instant::now() >= deadline {
                self.kill();
                panic!("{} did not finish within {timeout:?}", self.what);
            }
            std::thread::sleep(EXIT_POLL);
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if self.exit_status().is_none() {
            self.kill();
        }
    }
}

/// A process's resident memory now and at its peak (`VmRSS`, `VmHWM` in
/// `/proc/<pid>/status`), KiB; `None` where that file does not exist.
pub fn rss_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

fn peak_rss_kib(pid: u32) -> Option<u64> {
    rss_kib(pid).map(|(_, peak)| peak)
}

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

/// Runs `command` to completion and times it; see `ChildGuard::wait` for
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
    let status = child.wait(timeout, measurable);
    let wall = started.elapsed();
    Finished {
        wall,
        peak_rss_kib: child.peak_rss_kib,
        status,
        stdout: read_back(&mut stdout),
        stderr: read_back(&mut stderr),
    }
}

fn read_back(file: &mut File) -> String {
    file.rewind().expect("rewind output file");
    let mut text = String::new();
    file.read_to_string(&mut text).expect("read output file");
    text
}
