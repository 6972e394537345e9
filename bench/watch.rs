//! Watch benchmark: how fast `bullmq-warden watch` notices a loss and how long
//! until every scheduler is back, with the default settings, over repeated
//! trials of three kinds of loss on its own redis-server:
//!
//! - a keyspace-visible deletion (`DEL <prefix>:<queue>:repeat`),
//! - `FLUSHALL` (no per-key event: seen by the poll),
//! - a restart without persistence (kill, start again empty).
//!
//! `cargo bench --bench watch` prints one table; bench/README.md explains it.

// Modules shared by the benchmarks, and the test harness, which starts the
// servers and the binary; each uses only part of them.
#[path = "../tests/support/mod.rs"]
mod support;
#[allow(dead_code)]
#[path = "shared/watcher.rs"]
mod watcher;
#[allow(dead_code)]
#[path = "shared/workload.rs"]
mod workload;

use std::time::{Duration, Instant, SystemTime};

use support::RedisServer;
use watcher::{start_watcher, EventLog};

const QUEUE_REPEAT: &str = "bull:inspection:repeat";
const QUEUE_DELAYED: &str = "bull:inspection:delayed";

fn main() {
    let schedulers: usize = env_number("BENCH_WATCH_SCHEDULERS", 10_000);
    let trials: usize = env_number("BENCH_WATCH_TRIALS", 20);
    let dir = tempfile::tempdir().expect("temp dir");
    let mut redis = Redis::start();
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
    let mut events = EventLog::new(&log);
    assert!(
        events
            .wait_for("recovery_finished", Duration::from_secs(120))
            .is_some(),
        "start-up recovery did not finish"
    );
    wait_restored(&mut redis, schedulers, Duration::from_secs(60));

    println!(
        "bullmq-warden watch, default settings (poll 1s, debounce 2s quiet / 15s max), \
         {schedulers} schedulers, {trials} trials per loss\n"
    );
    println!("| loss | detected p50 ms | p99 ms | decision p50 ms | p99 ms | writes p50 ms | p99 ms | restored p50 s | p99 s | target |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for kind in [Loss::Delete, Loss::Flush, Loss::Restart] {
        let mut detected = Vec::new();
        let mut decided = Vec::new();
        let mut restored = Vec::new();
        let mut writes = Vec::new();
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
            let back = wait_restored(&mut redis, schedulers, Duration::from_secs(60));
            let finished = events.wait_for("recovery_finished", Duration::from_secs(30));
            detected.push(millis_between(lost_at, detection.at));
            decided.push(millis_between(lost_at, decision.at));
            restored.push(back.duration_since(answering_at).as_secs_f64());
            writes.push(
                finished
                    .and_then(|line| line.fields["duration_ms"].as_f64())
                    .unwrap_or(f64::NAN),
            );
        }
        let (d50, d99) = (percentile(&detected, 50.0), percentile(&detected, 99.0));
        let (c50, c99) = (percentile(&decided, 50.0), percentile(&decided, 99.0));
        let (r50, r99) = (percentile(&restored, 50.0), percentile(&restored, 99.0));
        let (w50, w99) = (percentile(&writes, 50.0), percentile(&writes, 99.0));
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
            "| {} | {d50:.0} | {d99:.0} | {c50:.0} | {c99:.0} | {w50:.0} | {w99:.0} | {r50:.2} | {r99:.2} | {verdict} |",
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

/// The benchmark's own redis-server with one connection of its own, made
/// again after a restart.
struct Redis {
    server: RedisServer,
    connection: redis::Connection,
}

impl Redis {
    fn start() -> Self {
        let server = RedisServer::start();
        let connection = server.connect().expect("connect to the benchmark's Redis");
        Self { server, connection }
    }

    fn url(&self) -> String {
        self.server.url()
    }

    fn restart(&mut self) -> Instant {
        let answering = self.server.start_again();
        self.connection = self
            .server
            .connect()
            .expect("connect to the restarted Redis");
        answering
    }

    fn cmd(&mut self, args: &[&str]) {
        let mut command = redis::cmd(args[0]);
        command.arg(&args[1..]);
        let () = command
            .query(&mut self.connection)
            .unwrap_or_else(|e| panic!("{args:?} failed: {e}"));
    }

    fn zcard(&mut self, key: &str) -> usize {
        redis::cmd("ZCARD")
            .arg(key)
            .query(&mut self.connection)
            .unwrap_or(0)
    }
}

/// Waits until every scheduler and its next job are back; returns when.
fn wait_restored(redis: &mut Redis, schedulers: usize, timeout: Duration) -> Instant {
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
