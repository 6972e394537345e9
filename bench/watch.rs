//! Watch benchmark: how fast `bullmq-warden watch` notices a loss and how long
//! until every scheduler is back, with the default settings, over repeated
//! trials of three kinds of loss on its own redis-server:
//!
//! - a keyspace-visible deletion (`DEL <prefix>:<queue>:repeat`),
//! - `FLUSHALL` (no per-key event: seen by the poll),
//! - a restart without persistence (kill, start again empty).
//!
//! `cargo bench --bench watch` prints one table; bench/README.md explains it.

#[allow(dead_code)] // the recovery benchmark uses the rest of these modules
#[path = "recover/process.rs"]
mod process;
#[allow(dead_code)]
#[path = "recover/workload.rs"]
mod workload;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use process::ChildGuard;
use serde_json::Value;

const QUEUE_REPEAT: &str = "bull:inspection:repeat";
const QUEUE_DELAYED: &str = "bull:inspection:delayed";

fn main() {
    let schedulers: usize = env_number("BENCH_WATCH_SCHEDULERS", 10_000);
    let trials: usize = env_number("BENCH_WATCH_TRIALS", 20);
    let dir = tempfile::tempdir().expect("temp dir");
    let mut redis = Redis::start(dir.path());
    let source = dir.path().join("tasks.db");
    workload::write_sqlite_source(&workload::tasks(schedulers), &source);
    let config = dir.path().join("warden.toml");
    std::fs::write(
        &config,
        format!(
            "[redis]\nurl = \"{}\"\n[source]\nurl = \"sqlite://{}\"\n[http]\nlisten = \"\"\n",
            redis.url(),
            source.display()
        ),
    )
    .expect("write config");
    let log = dir.path().join("watch.log");
    let _watcher = start_watcher(&config, &log);
    let mut events = EventLog::new(log);
    assert!(
        events
            .wait_for("recovery_finished", Duration::from_secs(120))
            .is_some(),
        "start-up recovery did not finish"
    );
    wait_restored(&redis, schedulers, Duration::from_secs(60));

    println!(
        "bullmq-warden watch, default settings (poll 1s, debounce 2s quiet / 15s max), \
         {schedulers} schedulers, {trials} trials per loss\n"
    );
    println!("| loss | detected p50 ms | p99 ms | decision p50 ms | p99 ms | restored p50 s | p99 s | target |");
    println!("|---|---|---|---|---|---|---|---|");
    for kind in [Loss::Delete, Loss::Flush, Loss::Restart] {
        let mut detected = Vec::new();
        let mut decided = Vec::new();
        let mut restored = Vec::new();
        for _ in 0..trials {
            // Quiet before each trial, so the debounce window starts fresh.
            std::thread::sleep(Duration::from_millis(500));
            events.skip_to_end();
            let lost_at = SystemTime::now();
            let answering_at = kind.inflict(&mut redis);
            let detection = events
                .wait_for("detected", Duration::from_secs(30))
                .expect("the loss was detected");
            let decision = events
                .wait_for("drift_confirmed", Duration::from_secs(30))
                .expect("a recovery was decided");
            let back = wait_restored(&redis, schedulers, Duration::from_secs(60));
            events.wait_for("recovery_finished", Duration::from_secs(30));
            detected.push(millis_between(lost_at, detection));
            decided.push(millis_between(lost_at, decision));
            restored.push(back.duration_since(answering_at).as_secs_f64());
        }
        let (d50, d99) = (percentile(&detected, 50.0), percentile(&detected, 99.0));
        let (c50, c99) = (percentile(&decided, 50.0), percentile(&decided, 99.0));
        let (r50, r99) = (percentile(&restored, 50.0), percentile(&restored, 99.0));
        let detect_target_ms = match kind {
            Loss::Delete => 100.0,
            Loss::Flush | Loss::Restart => 1000.0,
        };
        let restore_target_s = 2.0 + 1.5;
        let verdict = if d99 <= detect_target_ms && r99 <= restore_target_s {
            "met".to_owned()
        } else {
            format!("detect ≤ {detect_target_ms} ms, restore ≤ {restore_target_s} s")
        };
        println!(
            "| {} | {d50:.0} | {d99:.0} | {c50:.0} | {c99:.0} | {r50:.2} | {r99:.2} | {verdict} |",
            kind.name()
        );
    }
}

#[derive(Clone, Copy)]
enum Loss {
    Delete,
    Flush,
    Restart,
}

impl Loss {
    fn name(self) -> &'static str {
        match self {
            Loss::Delete => "DEL of the repeat set (keyspace)",
            Loss::Flush => "FLUSHALL (poll)",
            Loss::Restart => "restart without persistence",
        }
    }

    /// Causes the loss; returns when Redis answers again (at once, but for a restart).
    fn inflict(self, redis: &mut Redis) -> Instant {
        match self {
            Loss::Delete => {
                redis.cmd(&["DEL", QUEUE_REPEAT]);
                Instant::now()
            }
            Loss::Flush => {
                redis.cmd(&["FLUSHALL"]);
                Instant::now()
            }
            Loss::Restart => redis.restart(),
        }
    }
}

/// The benchmark's own redis-server, restartable on the same port.
struct Redis {
    port: u16,
    dir: PathBuf,
    process: Option<ChildGuard>,
}

impl Redis {
    fn start(dir: &Path) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        let mut redis = Self {
            port,
            dir: dir.to_owned(),
            process: None,
        };
        redis.spawn();
        redis
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn spawn(&mut self) -> Instant {
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        self.process = Some(ChildGuard::spawn(&mut command, "redis-server"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.try_cmd(&["PING"]).is_some_and(|pong| pong == "PONG") {
                return Instant::now();
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        panic!("redis-server did not answer on port {}", self.port);
    }

    fn restart(&mut self) -> Instant {
        // Dropping the guard kills the server: everything in memory is gone.
        self.process = None;
        self.spawn()
    }

    fn try_cmd(&self, args: &[&str]) -> Option<String> {
        let output = Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "--raw"])
            .args(args)
            .output()
            .ok()?;
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }

    fn cmd(&self, args: &[&str]) -> String {
        self.try_cmd(args)
            .unwrap_or_else(|| panic!("redis-cli {args:?} failed"))
    }

    fn zcard(&self, key: &str) -> usize {
        self.try_cmd(&["ZCARD", key])
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }
}

/// Runs `bullmq-warden watch` with JSON logs written to `log`.
fn start_watcher(config: &Path, log: &Path) -> ChildGuard {
    let file = std::fs::File::create(log).expect("log file");
    let mut command = Command::new(env!("CARGO_BIN_EXE_bullmq-warden"));
    command
        .arg("--config")
        .arg(config)
        .args(["--log-format", "json", "watch"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(file);
    ChildGuard::spawn(&mut command, "bullmq-warden watch")
}

/// The watcher's log, read from where the last look ended.
struct EventLog {
    path: PathBuf,
    seen: usize,
}

impl EventLog {
    fn new(path: PathBuf) -> Self {
        Self { path, seen: 0 }
    }

    fn lines(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.path)
            .unwrap_or_default()
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }

    fn skip_to_end(&mut self) {
        self.seen = self.lines().len();
    }

    /// The log time of the next `event` after the last one looked at.
    fn wait_for(&mut self, event: &str, timeout: Duration) -> Option<SystemTime> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let lines = self.lines();
            if let Some(offset) = lines[self.seen.min(lines.len())..]
                .iter()
                .position(|line| line["event"] == event)
            {
                let line = &lines[self.seen + offset];
                self.seen += offset + 1;
                let stamp = line["timestamp"].as_str().unwrap_or_default();
                let time = chrono::DateTime::parse_from_rfc3339(stamp).ok()?;
                return Some(SystemTime::from(time));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        None
    }
}

/// Waits until every scheduler and its next job are back; returns when.
fn wait_restored(redis: &Redis, schedulers: usize, timeout: Duration) -> Instant {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if redis.zcard(QUEUE_REPEAT) == schedulers && redis.zcard(QUEUE_DELAYED) >= schedulers {
            return Instant::now();
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("the schedulers did not come back within {timeout:?}");
}

fn millis_between(from: SystemTime, to: SystemTime) -> f64 {
    to.duration_since(from).unwrap_or_default().as_secs_f64() * 1000.0
}

/// Nearest-rank percentile.
fn percentile(values: &[f64], p: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
