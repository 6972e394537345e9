//! Scale benchmark: 100,000 schedulers across 100 queues on the benchmark's
//! own redis-server, through the release binary — `recover` into an empty
//! Redis, `status`, the drift check (`recover --dry-run`), one poll of every
//! queue, and the watcher's start-up recovery, idle time, periodic check and
//! recovery from a FLUSHALL — with time and resident memory for each.
//!
//! `cargo bench --bench scale` prints one table; bench/README.md explains it.

// Modules shared by the benchmarks, and the test harness, which starts the
// servers and the binary; each uses only part of them.
#[allow(dead_code)]
#[path = "shared/machine.rs"]
mod machine;
#[path = "../tests/support/mod.rs"]
mod support;
#[allow(dead_code)]
#[path = "shared/timed.rs"]
mod timed;
#[allow(dead_code)]
#[path = "shared/watcher.rs"]
mod watcher;
#[allow(dead_code)]
#[path = "shared/workload.rs"]
mod workload;

use machine::env_number;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use bullmq_warden::BullmqStore;
use serde_json::Value;
use support::{node_driver, node_packages_installed, rss_kib, warden_command, RedisServer};
use timed::{run_timed, Finished};
use watcher::{start_watcher_logging, EventLog};

/// The bounds for the sidecar's resident memory.
const RECOVERING_BOUND_MIB: f64 = 100.0;
const IDLE_BOUND_MIB: f64 = 25.0;

/// The watcher's periodic drift check with the default settings.
const DRIFT_INTERVAL: Duration = Duration::from_secs(30);

fn main() {
    let schedulers = env_number("BENCH_SCALE_SCHEDULERS", 100_000);
    let queue_count = env_number("BENCH_SCALE_QUEUES", 100);
    let dir = tempfile::tempdir().expect("temp dir");
    let redis = RedisServer::start();
    let mut admin = redis.connect().expect("admin connection");
    let source = dir.path().join("tasks.db");
    workload::write_sqlite_source_across(&workload::tasks(schedulers), &source, queue_count);
    let queues = workload::queue_names(queue_count);
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
    println!(
        "{schedulers} schedulers across {} queues, release binary, {}\n",
        queues.len(),
        machine()
    );
    let mut table = Table::default();

    flushall(&mut admin);
    let recover = warden(&config, &["recover", "--json"]);
    let report: Value = serde_json::from_str(&recover.stdout).expect("recover report");
    assert_eq!(
        report["created"].as_u64(),
        Some(schedulers as u64),
        "{}",
        recover.stderr_tail()
    );
    table.command(
        "recover into an empty Redis",
        &recover,
        RECOVERING_BOUND_MIB,
    );

    let status = warden(&config, &["status", "--json"]);
    table.command(
        "status (every queue's counts and drift)",
        &status,
        RECOVERING_BOUND_MIB,
    );
    if let Some(node) = node_status(&redis, &queues) {
        table.baseline(
            "node bullmq6: getJobCounts + getJobSchedulersCount per queue",
            &node,
            &status,
        );
    }

    let dry_run = warden(&config, &["recover", "--dry-run", "--json"]);
    let report: Value = serde_json::from_str(&dry_run.stdout).expect("dry-run report");
    assert_eq!(report["unchanged"].as_u64(), Some(schedulers as u64));
    table.command(
        "drift check (recover --dry-run, in sync)",
        &dry_run,
        RECOVERING_BOUND_MIB,
    );

    table.poll(&poll_latency(&redis, &queues));

    flushall(&mut admin);
    watch_cycle(&config, dir.path(), &mut admin, &mut table);
    table.print();
}

/// Starts the watcher on an empty Redis and follows it through start-up
/// recovery, idle time, a periodic check and a FLUSHALL.
fn watch_cycle(config: &Path, dir: &Path, admin: &mut redis::Connection, table: &mut Table) {
    let log = dir.join("watch.log");
    let started = Instant::now();
    // The source's debug events include `snapshot_kept`, one per read of
    // the rows: how the idle samples tell a drift check from idling.
    let watcher = start_watcher_logging(config, &log, WATCHER_LOG_FILTER);
    let pid = watcher.id();
    let mut events = EventLog::new(&log);
    let finished = events.wait_for("recovery_finished", Duration::from_secs(300));
    assert!(finished.is_some(), "the start-up recovery did not finish");
    let (_, peak) = rss_kib(pid).expect("watcher memory");
    table.measured(
        "watch: start-up recovery",
        started.elapsed(),
        peak,
        RECOVERING_BOUND_MIB,
    );

    table.idle(
        "watch: idle, median of 5 s from 5 s after recovering, no check in them",
        idle_rss_kib(pid, &mut events),
    );

    // One periodic drift check: the highest and the typical RSS around it.
    let mut samples = Vec::new();
    let until = Instant::now() + DRIFT_INTERVAL + Duration::from_secs(2);
    while Instant::now() < until {
        samples.push(rss_kib(pid).expect("watcher memory").0);
        std::thread::sleep(Duration::from_millis(100));
    }
    samples.sort_unstable();
    table.idle(
        "watch: median over a drift interval",
        samples[samples.len() / 2],
    );
    table.measured(
        "watch: highest during the drift check",
        Duration::ZERO,
        samples[samples.len() - 1],
        RECOVERING_BOUND_MIB,
    );

    reset_peak_rss(pid);
    let flushed = Instant::now();
    flushall(admin);
    let finished = events.wait_for("recovery_finished", Duration::from_secs(300));
    assert!(
        finished.is_some(),
        "the recovery after FLUSHALL did not finish"
    );
    let (_, peak) = rss_kib(pid).expect("watcher memory");
    table.measured(
        "watch: FLUSHALL to restored",
        flushed.elapsed(),
        peak,
        RECOVERING_BOUND_MIB,
    );
    table.idle(
        "watch: idle, median of 5 s from 5 s after the second recovery, no check in them",
        idle_rss_kib(pid, &mut events),
    );
    drop(watcher);
}

/// The watcher's log filter: info, and the source's debug events.
const WATCHER_LOG_FILTER: &str = "info,bullmq_warden::report::events::source=debug";

/// How long a drift check keeps the watcher's memory up after its read of
/// the rows: the comparison (about 1.2 s here) and the release right after
/// it, with room for a slow comparison.
const CHECK_SETTLES: Duration = Duration::from_secs(4);

/// The watcher's resident set while it idles after a recovery: the median of
/// samples over 5 s from 5 s after it. A drift check (every 30 s, from the
/// watcher's start) whose read of the rows falls in that time, or less than
/// `CHECK_SETTLES` before it, would be measured instead of the idle watcher:
/// the samples are then taken again from `CHECK_SETTLES` after that read.
fn idle_rss_kib(pid: u32, events: &mut EventLog) -> u64 {
    let mut from = SystemTime::now() + Duration::from_secs(5);
    loop {
        if let Ok(wait) = from.duration_since(SystemTime::now()) {
            std::thread::sleep(wait);
        }
        let mut samples = Vec::new();
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until {
            samples.push(rss_kib(pid).expect("watcher memory").0);
            std::thread::sleep(Duration::from_millis(100));
        }
        let last_read = std::iter::from_fn(|| {
            events.wait_for_line(|line| line["event"] == "snapshot_kept", Duration::ZERO)
        })
        .last();
        match last_read {
            Some(read) if read.at + CHECK_SETTLES > from => {
                eprintln!(
                    "[bench] a drift check read the rows during the idle samples; \
                     sampling again from {CHECK_SETTLES:?} after its read"
                );
                from = read.at + CHECK_SETTLES;
            }
            _ => {
                samples.sort_unstable();
                return samples[samples.len() / 2];
            }
        }
    }
}

/// Runs the release binary with `args` and waits for it.
fn warden(config: &Path, args: &[&str]) -> Finished {
    let mut command = warden_command(config);
    command.args(args);
    let finished = run_timed(
        command,
        None,
        "bullmq-warden",
        Duration::from_secs(600),
        || true,
    );
    assert!(
        finished.status.success(),
        "bullmq-warden {args:?}: {}",
        finished.stderr_tail()
    );
    finished
}

/// The manual's checkQueueStatus in Node over the same queues; `None` when
/// the pinned packages are not installed (`npm ci --prefix tests/node`).
fn node_status(redis: &RedisServer, queues: &[String]) -> Option<Finished> {
    if !node_packages_installed() {
        eprintln!("no Node baseline: run `npm ci --prefix tests/node` first");
        return None;
    }
    let mut command = Command::new("node");
    command
        .arg(node_driver())
        .args(["counts-all", "--major", "6", "--redis", &redis.url()])
        .args(["--queue", &queues[0], "--queues", &queues.join(",")]);
    let finished = run_timed(command, None, "node", Duration::from_secs(600), || true);
    assert!(
        finished.status.success(),
        "node: {}",
        finished.stderr_tail()
    );
    Some(finished)
}

/// Latency of the watcher's poll (INFO and every queue's counts in one
/// pipeline) against one PING, over the same connection.
fn poll_latency(redis: &RedisServer, queues: &[String]) -> PollLatency {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        let store = BullmqStore::connect_url(&redis.url(), workload::PREFIX)
            .await
            .expect("connect");
        let mut connection = store
            .dedicated_connection(Duration::from_secs(5))
            .await
            .expect("poll connection")
            .expect("a single server");
        let mut polls = Vec::new();
        let mut pings = Vec::new();
        for _ in 0..200 {
            let started = Instant::now();
            store.poll(&mut connection, queues).await.expect("poll");
            polls.push(started.elapsed());
            let started = Instant::now();
            let () = redis::cmd("PING")
                .query_async::<String>(&mut connection)
                .await
                .map(drop)
                .expect("ping");
            pings.push(started.elapsed());
        }
        polls.sort_unstable();
        pings.sort_unstable();
        PollLatency {
            queues: queues.len(),
            p50: polls[polls.len() / 2],
            p99: polls[polls.len() * 99 / 100],
            ping_p50: pings[pings.len() / 2],
        }
    })
}

struct PollLatency {
    queues: usize,
    p50: Duration,
    p99: Duration,
    ping_p50: Duration,
}

fn flushall(admin: &mut redis::Connection) {
    let () = redis::cmd("FLUSHALL").query(admin).expect("FLUSHALL");
}

/// Starts `VmHWM` afresh (Linux: `echo 5 > /proc/<pid>/clear_refs`).
fn reset_peak_rss(pid: u32) {
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
}

/// The benchmark's result lines, printed as one Markdown table.
#[derive(Default)]
struct Table {
    rows: Vec<String>,
}

impl Table {
    fn command(&mut self, step: &str, run: &Finished, bound_mib: f64) {
        self.measured(step, run.wall, run.peak_rss_kib.unwrap_or(0), bound_mib);
    }

    fn measured(&mut self, step: &str, wall: Duration, rss_kib: u64, bound_mib: f64) {
        let mib = mib(rss_kib);
        let wall = match wall.is_zero() {
            true => "-".to_owned(),
            false => format!("{:.2}", wall.as_secs_f64()),
        };
        self.rows.push(format!(
            "| {step} | {wall} | {mib:.1} | ≤ {bound_mib:.0} | {:.2}x | {} |",
            mib / bound_mib,
            verdict(mib <= bound_mib)
        ));
    }

    fn idle(&mut self, step: &str, rss_kib: u64) {
        let mib = mib(rss_kib);
        self.rows.push(format!(
            "| {step} | - | {mib:.1} | ≤ {IDLE_BOUND_MIB:.0} | {:.2}x | {} |",
            mib / IDLE_BOUND_MIB,
            verdict(mib <= IDLE_BOUND_MIB)
        ));
    }

    /// The manual's way in Node, with bullmq-warden's `status` against it.
    fn baseline(&mut self, step: &str, node: &Finished, status: &Finished) {
        let node_mib = mib(node.peak_rss_kib.unwrap_or(0));
        let status_mib = mib(status.peak_rss_kib.unwrap_or(0));
        self.rows.push(format!(
            "| {step} | {:.2} | {node_mib:.1} | - | - | baseline: status takes {:.2}x its time, {:.2}x its memory |",
            node.wall.as_secs_f64(),
            status.wall.as_secs_f64() / node.wall.as_secs_f64(),
            status_mib / node_mib,
        ));
    }

    fn poll(&mut self, poll: &PollLatency) {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        self.rows.push(format!(
            "| one poll of {} queues (INFO and 10 counts each), p50 / p99 ms | {:.2} / {:.2} | - | - | - | one round trip: {:.1}x a PING ({:.2} ms) |",
            poll.queues,
            ms(poll.p50),
            ms(poll.p99),
            ms(poll.p50) / ms(poll.ping_p50),
            ms(poll.ping_p50),
        ));
    }

    fn print(&self) {
        println!("| step | wall s | RSS MiB | bound MiB | RSS / bound | result |");
        println!("|---|---:|---:|---:|---:|---|");
        for row in &self.rows {
            println!("{row}");
        }
    }
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "missed"
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    format!(
        "{cores} cores, load average {}",
        load.split_whitespace().next().unwrap_or("?")
    )
}
