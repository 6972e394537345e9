//! Idle benchmark: what `bullmq-warden watch` costs Redis while nothing
//! happens. For each number of schedulers (in one queue) it starts its own
//! `redis-server`, an SQLite source and the release watcher, waits for the
//! start-up recovery, then over a window of whole drift intervals measures
//!
//! - Redis's own time for the watcher's commands (`INFO commandstats`), split
//!   into the poll's, the drift check's and the rest by command name,
//! - the latency another client sees (one `PING` at a time on its own
//!   connection), and Redis's main-thread CPU (`INFO cpu`),
//!
//! and then the same probe and CPU with the watcher stopped, as the baseline.
//!
//! `cargo bench --bench idle` prints one table; bench/README.md explains it.
//! Without `--bench` (`cargo test --benches`) it is a smoke run.

// Modules shared by the benchmarks, and the test harness, which starts the
// servers and the binary; each uses only part of them.
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

use machine::{cores, env_number, load_average};
use std::path::Path;
use std::time::{Duration, Instant};

use redis_admin::{Admin, CommandStats};
use support::{ChildGuard, RedisServer};
use watcher::{start_watcher, EventLog};

/// The commands of the poll (`src/store/bullmq.rs` `poll`, every
/// `[watch] info_interval`): one `INFO` and the queues' counts, pipelined.
/// The poll task's settings read (every `drift_interval`) adds one `INFO` of
/// its own; its `CONFIG GET`s and ACL-check script fall under "other".
const POLL_COMMANDS: &[&str] = &["info", "llen", "zcard", "zcount"];

/// The commands of the drift check's reads of Redis (`read_schedulers`): the
/// scheduler set, each scheduler's hash, next-run job and scores, and
/// whatever else a comparison may read. The recovery lease the check takes
/// (`SET`, and a script to release it) falls under "other".
const DRIFT_COMMANDS: &[&str] = &[
    "zrange",
    "zrangebyscore",
    "zrevrange",
    "zscan",
    "zscore",
    "zmscore",
    "hmget",
    "hget",
    "hgetall",
    "hexists",
    "exists",
    "scan",
    "type",
    "mget",
];

/// The command each drift check sends once per queue: checks are counted by it.
const DRIFT_CHECK_MARKER: &str = "zrange";

/// The benchmark's own commands in the window: the probe and the reset.
const OWN_COMMANDS: &[&str] = &["ping", "config|resetstat"];

/// The probe sends at most one command per this interval.
const PROBE_INTERVAL: Duration = Duration::from_millis(1);

struct Settings {
    sizes: Vec<usize>,
    window: Duration,
    drift_interval: Duration,
    settle: Duration,
    /// A quick check rather than a measurement.
    smoke: bool,
}

impl Settings {
    fn from_env() -> Self {
        if !std::env::args().any(|arg| arg == "--bench") {
            return Self {
                sizes: vec![20],
                window: Duration::from_secs(2),
                drift_interval: Duration::from_secs(2),
                settle: Duration::from_millis(200),
                smoke: true,
            };
        }
        let sizes = std::env::var("BENCH_IDLE_SIZES")
            .ok()
            .map(|list| {
                list.split(',')
                    .filter_map(|n| n.trim().parse().ok())
                    .collect()
            })
            .unwrap_or_else(|| vec![1, 100, 10_000]);
        let secs: u64 = env_number("BENCH_IDLE_SECS", 20);
        let drift: u64 = env_number("BENCH_IDLE_DRIFT_SECS", 5).max(1);
        // Whole drift intervals, so that the window holds whole checks.
        let secs = secs.div_ceil(drift) * drift;
        Self {
            sizes,
            window: Duration::from_secs(secs),
            drift_interval: Duration::from_secs(drift),
            settle: Duration::from_secs(2),
            smoke: false,
        }
    }
}

fn main() {
    let settings = Settings::from_env();
    assert!(
        !settings.sizes.is_empty(),
        "BENCH_IDLE_SIZES selects no size"
    );
    let load = load_average();
    let mut rows = Vec::new();
    for &n in &settings.sizes {
        eprintln!("[bench] N={n}: starting");
        rows.push(measure(n, &settings));
    }
    let load = load.map_or_else(|| "unknown".to_owned(), |l| format!("{l:.2}"));
    println!(
        "bullmq-warden watch idle: poll every 1s (default), drift_interval {}s, one queue, \
         {} s windows; {} cores; load average before the run {load}\n",
        settings.drift_interval.as_secs(),
        settings.window.as_secs(),
        cores(),
    );
    println!(
        "| N | s | polls | Redis µs / poll | drift checks | Redis ms / check | µs / scheduler / check \
         | other µs | probe p50 / p99 / max µs | no watcher p50 / p99 µs | p99 ratio | Redis CPU ms/s with / without |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---:|---|");
    for row in &rows {
        row.print();
    }
    println!();
    println!("Redis time by command in each window (calls × and µs):\n");
    for row in &rows {
        println!("- N={}: {}", row.n, row.detail());
    }
}

/// One size's measurements.
struct Row {
    n: usize,
    window: Duration,
    stats: CommandStats,
    with: Probe,
    without: Probe,
    cpu_with: Duration,
    cpu_without: Duration,
}

impl Row {
    fn usec(&self, commands: &[&str]) -> u64 {
        commands.iter().map(|c| self.stats.get(c).usec).sum()
    }

    /// The window's commands that `belongs` accepts: name, calls, µs.
    fn commands(&self, belongs: impl Fn(&str) -> bool) -> Vec<(&str, u64, u64)> {
        self.stats
            .0
            .iter()
            .filter(|(name, _)| belongs(name))
            .map(|(name, stat)| (name.as_str(), stat.calls, stat.usec))
            .collect()
    }

    /// Commands in neither list, nor the benchmark's own.
    fn others(&self) -> Vec<(&str, u64, u64)> {
        self.commands(|name| {
            !POLL_COMMANDS.contains(&name)
                && !DRIFT_COMMANDS.contains(&name)
                && !OWN_COMMANDS.contains(&name)
        })
    }

    /// Every command of the window by group, for the lines below the table.
    fn detail(&self) -> String {
        let list = |commands: Vec<(&str, u64, u64)>| match commands.is_empty() {
            true => "nothing".to_owned(),
            false => commands
                .iter()
                .map(|(name, calls, usec)| format!("{name} {calls}× {usec} µs"))
                .collect::<Vec<_>>()
                .join(", "),
        };
        format!(
            "poll: {}; drift check: {}; other: {}; benchmark's own: {}",
            list(self.commands(|name| POLL_COMMANDS.contains(&name))),
            list(self.commands(|name| DRIFT_COMMANDS.contains(&name))),
            list(self.others()),
            list(self.commands(|name| OWN_COMMANDS.contains(&name))),
        )
    }

    fn print(&self) {
        let secs = self.window.as_secs_f64();
        let polls = self.stats.get("info").calls;
        let poll_usec = self.usec(POLL_COMMANDS) as f64;
        // One marker command per queue and check; this benchmark has one queue.
        let checks = self.stats.get(DRIFT_CHECK_MARKER).calls;
        let drift_usec = self.usec(DRIFT_COMMANDS) as f64;
        let other_usec: u64 = self.others().iter().map(|(_, _, usec)| usec).sum();
        let per = |total: f64, count: u64, scale: f64, digits: usize| match count {
            0 => "-".to_owned(),
            count => format!("{:.digits$}", total / count as f64 / scale),
        };
        let cpu_rate = |cpu: Duration| cpu.as_secs_f64() * 1000.0 / secs;
        println!(
            "| {} | {secs:.0} | {polls} | {} | {checks} | {} | {} | {other_usec} | {} / {} / {} | {} / {} | {:.2}x | {:.2} / {:.2} |",
            self.n,
            per(poll_usec, polls, 1.0, 0),
            per(drift_usec, checks, 1000.0, 2),
            per(drift_usec, checks, self.n as f64, 3),
            self.with.p50,
            self.with.p99,
            self.with.max,
            self.without.p50,
            self.without.p99,
            self.with.p99 as f64 / self.without.p99.max(1) as f64,
            cpu_rate(self.cpu_with),
            cpu_rate(self.cpu_without),
        );
    }
}

fn measure(n: usize, settings: &Settings) -> Row {
    let dir = tempfile::tempdir().expect("temp dir");
    let redis = RedisServer::start();
    let mut admin = Admin::connect(&redis);
    let source = dir.path().join("tasks.db");
    workload::write_sqlite_source(&workload::tasks(n), &source);
    let config = dir.path().join("warden.toml");
    std::fs::write(
        &config,
        format!(
            "[redis]\nurl = \"{}\"\n[source]\nurl = \"sqlite://{}\"\n[http]\nlisten = \"\"\n\
             [watch]\ndrift_interval = \"{}s\"\n",
            redis.url(),
            source.display(),
            settings.drift_interval.as_secs()
        ),
    )
    .expect("write config");
    let log = dir.path().join("watch.log");
    let mut watcher = start_watcher(&config, &log);
    let mut events = EventLog::new(&log);
    assert!(
        events
            .wait_for("recovery_finished", Duration::from_secs(120))
            .is_some(),
        "start-up recovery did not finish; see {}",
        log.display()
    );
    wait_restored(&mut admin, n as u64);
    std::thread::sleep(settings.settle);
    if !settings.smoke {
        align_between_checks(&mut admin, settings.drift_interval);
    }

    let mut probe_conn = redis.connect().expect("probe connection");
    let cpu_before = admin.reset_stats();
    let with = probe(&mut probe_conn, settings.window);
    let stats = admin.commandstats();
    let cpu_with = admin.cpu_time().saturating_sub(cpu_before);
    eprintln!(
        "[bench] N={n}: {} probes with the watcher; stopping it",
        with.count
    );

    stop(&mut watcher, &log);
    std::thread::sleep(settings.settle);
    let cpu_before = admin.reset_stats();
    let without = probe(&mut probe_conn, settings.window);
    let baseline = admin.commandstats();
    let cpu_without = admin.cpu_time().saturating_sub(cpu_before);
    let strangers: Vec<&String> = baseline
        .0
        .keys()
        .filter(|name| !OWN_COMMANDS.contains(&name.as_str()))
        .collect();
    if !strangers.is_empty() {
        eprintln!("[bench] warning: commands without the watcher: {strangers:?}");
    }
    let row = Row {
        n,
        window: settings.window,
        stats,
        with,
        without,
        cpu_with,
        cpu_without,
    };
    if settings.smoke {
        assert!(row.stats.get("info").calls > 0, "no poll in the window");
    } else {
        let expected = settings.window.as_secs() / settings.drift_interval.as_secs();
        let checks = row.stats.get(DRIFT_CHECK_MARKER).calls;
        if checks != expected {
            eprintln!(
                "[bench] warning: N={n}: {checks} drift checks counted by {DRIFT_CHECK_MARKER}, \
                 {expected} expected from the interval"
            );
        }
    }
    row
}

/// Waits until every scheduler and its next job are in Redis.
fn wait_restored(admin: &mut Admin, n: u64) {
    let repeat = format!("{}:{}:repeat", workload::PREFIX, workload::QUEUE);
    let delayed = format!("{}:{}:delayed", workload::PREFIX, workload::QUEUE);
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if admin.zcard(&repeat) == n && admin.zcard(&delayed) >= n {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("the {n} schedulers did not come back within 60 s");
}

/// Waits for a drift check to begin (its reads show in `INFO commandstats`),
/// then half an interval: the window then starts and, being whole intervals
/// long, ends midway between two checks, and holds whole checks only.
fn align_between_checks(admin: &mut Admin, interval: Duration) {
    let drift_calls = |admin: &mut Admin| -> u64 {
        let stats = admin.commandstats();
        DRIFT_COMMANDS.iter().map(|c| stats.get(c).calls).sum()
    };
    let before = drift_calls(admin);
    let deadline = Instant::now() + interval * 3 + Duration::from_secs(5);
    while Instant::now() < deadline {
        if drift_calls(admin) > before {
            std::thread::sleep(interval / 2);
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("[bench] warning: no drift check seen; the window is not aligned with the checks");
}

/// SIGTERM, then waits for the watcher to exit (killed after 30 s).
fn stop(watcher: &mut ChildGuard, log: &Path) {
    watcher.signal("TERM");
    let deadline = Instant::now() + Duration::from_secs(30);
    while watcher.exit_status().is_none() {
        if Instant::now() > deadline {
            watcher.kill();
            panic!(
                "the watcher did not stop within 30 s; see {}",
                log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Round-trip times of the probe's `PING`s, µs.
struct Probe {
    count: usize,
    p50: u64,
    p99: u64,
    max: u64,
}

/// Sends one `PING` at a time (a closed loop, paced to at most one per
/// `PROBE_INTERVAL`) for `window`, and times each.
fn probe(conn: &mut redis::Connection, window: Duration) -> Probe {
    let started = Instant::now();
    let mut latencies = Vec::new();
    let mut next = started;
    while started.elapsed() < window {
        let sent = Instant::now();
        let _: String = redis::cmd("PING").query(conn).expect("probe PING");
        latencies.push(sent.elapsed().as_micros() as u64);
        next += PROBE_INTERVAL;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else {
            next = now;
        }
    }
    latencies.sort_unstable();
    let rank = |p: f64| {
        let rank = ((p / 100.0) * latencies.len() as f64).ceil() as usize;
        latencies[rank.clamp(1, latencies.len()) - 1]
    };
    Probe {
        count: latencies.len(),
        p50: rank(50.0),
        p99: rank(99.0),
        max: latencies.last().copied().unwrap_or_default(),
    }
}
