//! A `redis-server` of the test's (or benchmark's) own on a free loopback
//! port, never a shared one, and `redis-cli` against it.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::process::{free_port, ChildGuard};

/// A `redis-server` without persistence, killed on drop.
pub struct RedisServer {
    port: u16,
    // Declared before the data dir so the server stops before its dir is removed.
    process: Option<ChildGuard>,
    dir: tempfile::TempDir,
    /// The extra arguments it was started with, kept for `start_again`.
    extra: Vec<String>,
}

impl RedisServer {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts with extra `redis-server` arguments, e.g. `["--maxmemory-policy", "allkeys-lru"]`.
    pub fn start_with(extra: &[&str]) -> Self {
        // A port picked free can be taken before redis-server binds it: retry.
        for _ in 0..5 {
            let mut server = Self {
                port: free_port(),
                process: None,
                dir: tempfile::tempdir().expect("temp dir for redis-server"),
                extra: extra.iter().map(|a| a.to_string()).collect(),
            };
            if server.spawn() {
                return server;
            }
        }
        panic!("could not start redis-server");
    }

    /// A handle on a server someone else started (it is not stopped on drop).
    pub fn attach(url: &str) -> Self {
        let port = url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("redis://host:port");
        Self {
            port,
            process: None,
            dir: tempfile::tempdir().expect("temp dir"),
            extra: Vec::new(),
        }
    }

    /// Starts the process; true once it answers PING.
    fn spawn(&mut self) -> bool {
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let what = "redis-server (apt-get install redis-server)";
        self.process = Some(ChildGuard::spawn(&mut command, what));
        let ready = self.wait_until_ready();
        if !ready {
            self.stop();
        }
        ready
    }

    /// True once the server answers PING; false if it exited (its port was
    /// taken after all: a PING would then reach someone else's server) or
    /// never answered.
    fn wait_until_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if !self.is_running() {
                return false;
            }
            let pong = self
                .connect()
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
            if pong.is_ok() {
                return self.is_running();
            }
            // Short: a benchmark's restart is measured from when it answers.
            std::thread::sleep(Duration::from_millis(2));
        }
        false
    }

    fn is_running(&mut self) -> bool {
        self.process
            .as_mut()
            .is_some_and(|process| process.exit_status().is_none())
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A new connection of its own.
    pub fn connect(&self) -> redis::RedisResult<redis::Connection> {
        redis::Client::open(self.url())?.get_connection()
    }

    /// Runs `redis-cli` against this server and returns its trimmed output.
    pub fn cli(&self, args: &[&str]) -> Option<String> {
        redis_cli(self.port, args)
    }

    /// Like `cli`, but panics when the command cannot be run.
    pub fn redis(&self, args: &[&str]) -> String {
        self.cli(args)
            .unwrap_or_else(|| panic!("redis-cli {args:?} failed"))
    }

    pub fn zcard(&self, key: &str) -> u64 {
        self.redis(&["ZCARD", key]).parse().expect("ZCARD reply")
    }

    pub fn zmembers(&self, key: &str) -> Vec<String> {
        let out = self.redis(&["ZRANGE", key, "0", "-1"]);
        out.lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// Kills the server if it runs (everything in memory is gone, as nothing
    /// is persisted) and starts it again, empty, on the same port and with
    /// the same arguments; returns the moment it answers again.
    pub fn start_again(&mut self) -> Instant {
        self.stop();
        for _ in 0..50 {
            if self.spawn() {
                return Instant::now();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("redis-server did not come back on port {}", self.port);
    }

    pub fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
    }
}

/// `redis-cli --raw` against the server on `port`: its trimmed output, or
/// `None` when it could not run or failed.
pub fn redis_cli(port: u16, args: &[&str]) -> Option<String> {
    let output = Command::new("redis-cli")
        .args(["-p", &port.to_string(), "--raw"])
        .args(args)
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
}
