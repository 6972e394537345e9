//! The real `bullmq-warden` binary: a config and an SQLite source to run it
//! with, one-shot commands and their output, and a running `watch` whose JSON
//! log is collected as it comes. Under `cargo bench` the binary is the
//! release build.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::process::{wait_until, ChildGuard};
use super::redis_server::RedisServer;
use super::source::run_sql;

/// Settings that make a watcher react in test time.
pub const FAST_WATCH: &str = "[watch]\ninfo_interval = \"200ms\"\ndrift_interval = \"2s\"\n\
debounce_quiet = \"500ms\"\ndebounce_max = \"4s\"\n[http]\nlisten = \"\"\n";

/// Recovery settings for tests: quick retries, a short lease.
pub const FAST_RECOVERY: &str =
    "backoff_min = \"100ms\"\nbackoff_max = \"2s\"\nlease_ttl = \"3s\"\n";

/// `bullmq-warden --config <config>`, with no config named by the caller's
/// environment; the subcommand and the rest are the caller's.
pub fn warden_command(config: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_bullmq-warden"));
    command
        .arg("--config")
        .arg(config)
        .env_remove("BULLMQ_WARDEN_CONFIG");
    command
}

/// `bullmq-warden --config <config> --log-format json watch`.
pub fn watch_command(config: &Path) -> Command {
    let mut command = warden_command(config);
    command.args(["--log-format", "json", "watch"]);
    command
}

/// A config file and an SQLite source in a temp dir, for running the binary.
pub struct Setup {
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
}

impl Setup {
    /// Writes `config_toml` (with `{redis}` and `{dir}` substituted).
    pub fn new(redis: &RedisServer, config_toml: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let text = config_toml
            .replace("{redis}", &redis.url())
            .replace("{dir}", &dir.path().display().to_string());
        let config_path = dir.path().join("warden.toml");
        std::fs::write(&config_path, text).expect("write config");
        Self { dir, config_path }
    }

    /// A config over an SQLite file `tasks.db` in the temp dir.
    pub fn sqlite(redis: &RedisServer, extra_toml: &str) -> Self {
        Self::new(
            redis,
            &format!(
                "[redis]\nurl = \"{{redis}}\"\n[source]\nurl = \"sqlite://{{dir}}/tasks.db\"\n{extra_toml}"
            ),
        )
    }

    pub fn sqlite_url(&self) -> String {
        format!("sqlite://{}/tasks.db?mode=rwc", self.dir.path().display())
    }

    /// Runs SQL against the SQLite source (creating it when needed).
    pub fn sql(&self, sql: &str) {
        run_sql(&self.sqlite_url(), sql);
    }

    pub fn warden(&self, args: &[&str]) -> Run {
        self.warden_env(args, &[])
    }

    pub fn warden_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let output = warden_command(&self.config_path)
            .args(args)
            .envs(env.iter().copied())
            .env("RUST_LOG", "warn")
            .output()
            .expect("run bullmq-warden");
        Run::from(output)
    }

    /// `recover --json` and its parsed report.
    pub fn recover(&self) -> (i32, Value) {
        let run = self.warden(&["recover", "--json", "--changes"]);
        (run.code, run.json())
    }
}

/// A finished one-shot command: its exit code and output.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(output: Output) -> Self {
        Self {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

impl Run {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}); exit {}; stdout: {}; stderr: {}",
                self.code, self.stdout, self.stderr
            )
        })
    }
}

/// A running `bullmq-warden watch`, its JSON log lines collected as they come.
pub struct Watcher {
    process: ChildGuard,
    lines: Arc<Mutex<Vec<Value>>>,
}

impl Watcher {
    pub fn start(setup: &Setup) -> Self {
        Self::start_env(setup, &[])
    }

    pub fn start_env(setup: &Setup, env: &[(&str, &str)]) -> Self {
        let mut command = watch_command(&setup.config_path);
        command
            .envs(env.iter().copied())
            .env("RUST_LOG", "info,bullmq_warden=debug")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut process = ChildGuard::spawn(&mut command, "bullmq-warden watch");
        let stderr = process.take_stderr().expect("stderr");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                let value = serde_json::from_str(&line).unwrap_or(Value::String(line));
                sink.lock().expect("log lines").push(value);
            }
        });
        Self { process, lines }
    }

    /// Log events named `event` (the `event` field of the structured log).
    pub fn events(&self, event: &str) -> Vec<Value> {
        self.lines
            .lock()
            .expect("log lines")
            .iter()
            .filter(|line| line["event"] == event)
            .cloned()
            .collect()
    }

    pub fn count(&self, event: &str) -> usize {
        self.events(event).len()
    }

    /// Waits until at least `n` events named `event` were logged.
    pub fn wait_for(&self, event: &str, n: usize, timeout: Duration) -> bool {
        wait_until(timeout, || self.count(event) >= n)
    }

    /// Waits for the recovery after the start-up one and asserts that it
    /// went at once, restoring from `rows` (`kept` or `database`).
    pub fn assert_second_recovery_at_once(&self, rows: &str) {
        assert!(
            self.wait_for("recovery_finished", 2, Duration::from_secs(10)),
            "{}",
            self.log()
        );
        let started = &self.events("recovery_started")[1];
        assert_eq!(started["at_once"], true, "{}", self.log());
        let finished = &self.events("recovery_finished")[1];
        assert_eq!(finished["rows"], rows, "{}", self.log());
    }

    pub fn log(&self) -> String {
        self.lines
            .lock()
            .expect("log lines")
            .iter()
            .map(|l| l.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The process id, to read its descriptors and memory under /proc.
    pub fn pid(&self) -> u32 {
        self.process.id()
    }

    pub fn is_running(&mut self) -> bool {
        self.process.exit_status().is_none()
    }

    /// Sends a signal (`HUP`, `TERM`, …) without waiting for anything.
    pub fn signal(&self, name: &str) {
        self.process.signal(name);
    }

    /// SIGTERM, then the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        self.signal("TERM");
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(status) = self.process.exit_status() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn kill(&mut self) {
        self.process.kill();
    }
}
