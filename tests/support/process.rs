//! The processes the harness starts and what they need: a guard that kills a
//! child however the test or benchmark ends, a free loopback port to listen
//! on, waiting for a condition, and async code run from synchronous code.

use std::future::Future;
use std::net::TcpListener;
use std::process::{Child, ChildStderr, Command, ExitStatus};
use std::time::{Duration, Instant};

/// A child process that is killed when dropped, so that a panic or an early
/// return never leaves a `redis-server`, `node` or `bullmq-warden` running.
pub struct ChildGuard {
    child: Child,
    what: String,
}

impl ChildGuard {
    /// Spawns `command`; `what` names it in messages.
    pub fn spawn(command: &mut Command, what: &str) -> Self {
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        Self::new(child, what)
    }

    /// Guards a child spawned elsewhere.
    pub fn new(child: Child, what: &str) -> Self {
        Self {
            child,
            what: what.to_owned(),
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

    /// Its stderr, when it was spawned with `Stdio::piped()`; once.
    pub fn take_stderr(&mut self) -> Option<ChildStderr> {
        self.child.stderr.take()
    }

    /// Sends a signal (`HUP`, `TERM`, …) without waiting for anything.
    pub fn signal(&self, name: &str) {
        let _ = Command::new("kill")
            .args([&format!("-{name}"), &self.id().to_string()])
            .status();
    }

    /// SIGKILL, and waits for it to be gone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        // Never panic here: the test may be unwinding already.
        if matches!(self.child.try_wait(), Ok(None)) {
            self.kill();
        }
    }
}

/// A loopback port that was free a moment ago. Someone else can take it
/// before the server meant for it binds it: servers started on it retry.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free loopback port")
}

/// Polls `check` until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    check()
}

/// How long `check` took to hold, polled every 10 ms; `None` when it did
/// not within `timeout`. For latencies a test measures and prints.
pub fn time_until(timeout: Duration, mut check: impl FnMut() -> bool) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < timeout {
        if check() {
            return Some(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

/// Runs the future that `make` returns to completion, on a runtime and a
/// thread of its own: callable from plain tests and from inside a runtime.
pub fn block_on<F>(make: impl FnOnce() -> F + Send + 'static) -> F::Output
where
    F: Future,
    F::Output: Send + 'static,
{
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime")
            .block_on(make())
    })
    .join()
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
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
