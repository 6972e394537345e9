//! Watch benchmark: how fast `bullmq-warden watch` notices a loss and how long
//! until every scheduler is back, with the default settings, over repeated
//! trials of three kinds of loss on its own redis-server:
//!
//! - a keyspace-visible deletion (`DEL <prefix>:<queue>:repeat`),
//! - `FLUSHALL` (no per-key event: seen by the poll),
//! - a restart without persistence (kill, start again empty).
//!
//! Each trial also reads Redis's own script time for the recovery (`INFO
//! commandstats`, zeroed just before the loss) and compares the restore with it.
//!
//! `cargo bench --bench watch` prints one table; bench/README.md explains it.
//! Without `--bench` (`cargo test --benches`) it is a smoke run.

// Modules shared by the benchmarks, and the test harness, which starts the
// servers and the binary; each uses only part of them.
#[path = "shared/bench_redis.rs"]
mod bench_redis;
#[path = "shared/machine.rs"]
mod machine;
#[allow(dead_code)]
#[path = "shared/redis_admin.rs"]
mod redis_admin;
#[path = "../tests/support/mod.rs"]
mod support;
#[allow(dead_code)]
#[path = "shared/watcher.rs"]
mod watcher;
#[allow(dead_code)]
#[path = "shared/workload.rs"]
mod workload;

use bench_redis::{wait_restored, Redis};
use machine::{cores, env_number, load_average};
use std::time::{Duration, Instant, SystemTime};

use watcher::{start_watcher, EventLog};

const QUEUE_REPEAT: &str = "bull:inspection:repeat";
const QUEUE_DELAYED: &str = "bull:inspection:delayed";

/// The restore target: within detection plus this many times the Redis
/// script time of the same recovery.
const SCRIPT_FACTOR: f64 = 1.3;

fn main() {
    let measured = std::env::args().any(|arg| arg == "--bench");
    let (schedulers, trials) = match measured {
        true => (
            env_number("BENCH_WATCH_SCHEDULERS", 10_000),
            env_number("BENCH_WATCH_TRIALS", 20),
        ),
        false => (200, 2),
    };
    let load_before = load_average();
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
    wait_restored(
        &mut redis,
        (QUEUE_REPEAT, QUEUE_DELAYED),
        schedulers,
        Duration::from_secs(60),
    );

    let load = load_before.map_or_else(|| "unknown".to_owned(), |l| format!("{l:.2}"));
    println!(
        "bullmq-warden watch, default settings, {schedulers} schedulers, {trials} trials per loss; \
         {} cores, Redis {}; load average before the run {load}\n",
        cores(),
        redis.admin.version()
    );
    println!(
        "| loss | detected p50 / p99 ms | decision p50 / p99 ms | writes p50 / p99 ms \
         | restored p50 / p99 ms | script p50 / p99 ms | ratio p50 / p99 | worst margin ms | target |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for kind in [Loss::Delete, Loss::Flush, Loss::Restart] {
        let results: Vec<Trial> = (0..trials)
            .map(|_| trial(kind, &mut redis, &mut events, schedulers))
            .collect();
        print_row(kind, &results);
    }
}

/// One loss and its recovery, timed.
struct Trial {
    /// From the loss to the watcher's `detected` event (for a restart, from
    /// the kill).
    detected_ms: f64,
    /// From the loss to its `drift_confirmed` event.
    decided_ms: f64,
    /// The watcher's own duration of the recovery (`recovery_finished`).
    writes_ms: f64,
    /// From the loss (for a restart, from the new server's first answer) to
    /// every scheduler and its next job being back.
    restored_ms: f64,
    /// Redis's time executing scripts from the loss to the end of the
    /// recovery (`INFO commandstats`).
    script_ms: f64,
    /// Detection counted from the same origin as `restored_ms`.
    detected_from_origin_ms: f64,
}

impl Trial {
    /// How long the restore took beyond detection, per millisecond of Redis
    /// script time.
    fn ratio(&self) -> f64 {
        (self.restored_ms - self.detected_from_origin_ms) / self.script_ms
    }

    /// The restore target of this trial: detection plus 1.3 × script time.
    fn target_ms(&self) -> f64 {
        self.detected_from_origin_ms + SCRIPT_FACTOR * self.script_ms
    }

    /// Time to spare against the target; negative when missed.
    fn margin_ms(&self) -> f64 {
        self.target_ms() - self.restored_ms
    }
}

/// Twice the default quiet window and a margin: the repair's echo cycle,
/// then a quiet window without any loss.
const CALM_BEFORE_TRIAL: Duration = Duration::from_millis(4_500);

fn trial(kind: Loss, redis: &mut Redis, events: &mut EventLog, schedulers: usize) -> Trial {
    // A calm Redis before each trial, as in production: the watcher takes a
    // loss within `debounce_quiet` (2 s) of the last one, or of the echo
    // cycle that follows a repair a quiet window later, for Redis still
    // changing, and waits for the window.
    std::thread::sleep(CALM_BEFORE_TRIAL);
    events.skip_to_end();
    // Zeroed just before the loss; a restarted server starts at zero anyway.
    redis.admin.reset_stats();
    let lost_at = SystemTime::now();
    let lost_instant = Instant::now();
    let answering_at = kind.inflict(redis);
    // Restored is counted from the loss; for a restart from the new
    // server's first answer, as nothing can be restored before it.
    let (origin, origin_wall) = match kind {
        Loss::Restart => (
            answering_at,
            lost_at + answering_at.duration_since(lost_instant),
        ),
        Loss::Delete | Loss::Flush => (lost_instant, lost_at),
    };
    let detection = events
        .wait_for("detected", Duration::from_secs(30))
        .expect("the loss was detected");
    let decision = events
        .wait_for("drift_confirmed", Duration::from_secs(30))
        .expect("a recovery was decided");
    let back = wait_restored(
        redis,
        (QUEUE_REPEAT, QUEUE_DELAYED),
        schedulers,
        Duration::from_secs(60),
    );
    let finished = events.wait_for("recovery_finished", Duration::from_secs(30));
    // After `recovery_finished`, so that every script of the recovery counts.
    let script = redis.admin.commandstats().script_time();
    Trial {
        detected_ms: millis_between(lost_at, detection.at),
        decided_ms: millis_between(lost_at, decision.at),
        writes_ms: finished
            .and_then(|line| line.fields["duration_ms"].as_f64())
            .unwrap_or(f64::NAN),
        restored_ms: back.duration_since(origin).as_secs_f64() * 1000.0,
        script_ms: script.as_secs_f64() * 1000.0,
        detected_from_origin_ms: millis_between(origin_wall, detection.at),
    }
}

fn print_row(kind: Loss, trials: &[Trial]) {
    let pair = |value: fn(&Trial) -> f64, digits: usize| {
        let values: Vec<f64> = trials.iter().map(value).collect();
        format!(
            "{:.digits$} / {:.digits$}",
            percentile(&values, 50.0),
            percentile(&values, 99.0)
        )
    };
    let detected: Vec<f64> = trials.iter().map(|t| t.detected_ms).collect();
    let worst_margin = trials
        .iter()
        .map(Trial::margin_ms)
        .fold(f64::INFINITY, f64::min);
    let missed = trials.iter().filter(|t| t.margin_ms() < 0.0).count();
    let detect_target_ms = match kind {
        Loss::Delete => 100.0,
        Loss::Flush | Loss::Restart => 1000.0,
    };
    let mut misses = Vec::new();
    if percentile(&detected, 99.0) > detect_target_ms {
        misses.push(format!("detected p99 > {detect_target_ms} ms"));
    }
    if missed > 0 {
        misses.push(format!(
            "restored > detected + {SCRIPT_FACTOR} × script in {missed} of {}",
            trials.len()
        ));
    }
    let verdict = match misses.is_empty() {
        true => "met".to_owned(),
        false => format!("missed: {}", misses.join(", ")),
    };
    println!(
        "| {} | {} | {} | {} | {} | {} | {} | {worst_margin:.0} | {verdict} |",
        kind.name(),
        pair(|t| t.detected_ms, 0),
        pair(|t| t.decided_ms, 0),
        pair(|t| t.writes_ms, 0),
        pair(|t| t.restored_ms, 0),
        pair(|t| t.script_ms, 0),
        pair(Trial::ratio, 2),
    );
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
