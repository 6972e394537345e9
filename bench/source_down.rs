//! Source-down benchmark: how long from a loss of Redis's data to every
//! scheduler back while the source database cannot be reached (the watcher
//! restores from the snapshot of the last rows it read), against the same
//! loss with the database up, in one run, with `bullmq-warden watch` and its
//! default settings:
//!
//! - `FLUSHALL` (seen by client tracking and the poll),
//! - a restart of `redis-server` without persistence.
//!
//! PostgreSQL is reached through the harness's TCP proxy, which "takes the
//! database down" for a trial and brings it back after: every open
//! connection is closed, and new ones are refused (nothing listens, as when
//! the server is stopped) or, in a second set of trials, accepted and closed
//! at once. The shared server itself keeps running.
//!
//! `cargo bench --bench source_down` prints one table; bench/README.md
//! explains it. Without `--bench` (`cargo test --benches`) it is a smoke run.

// Modules shared by the benchmarks, and the test harness, which starts the
// servers, the proxy and the binary; each uses only part of them.
#[allow(dead_code)]
#[path = "shared/bench_redis.rs"]
mod bench_redis;
#[allow(dead_code)]
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
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use machine::{cores, env_number};
use serde_json::Value;
use sqlx::{Connection, PgConnection, Postgres, QueryBuilder};
use support::{block_on, run_sql, ChildGuard, Outage, Proxy};
use watcher::{start_watcher_logging, EventLog};
use workload::Task;

/// The watcher's defaults (`[watch]` and `[recovery]`), which the benchmark
/// does not change; they only label the table and set the target.
const DEBOUNCE_QUIET: Duration = Duration::from_secs(2);
const DEBOUNCE_MAX: Duration = Duration::from_secs(15);

/// The target: every scheduler back within the debounce window's
/// quiet time plus one second, p99.
const TARGET: Duration = Duration::from_secs(DEBOUNCE_QUIET.as_secs() + 1);

/// The quiet time before each trial: twice the quiet window and a margin.
/// The watcher repairs a loss at once only when Redis was calm, i.e. no loss
/// was heard of and no cycle for one ended within the quiet window; after a
/// repair, its echoes may start one more cycle a quiet window later.
const CALM: Duration = Duration::from_millis(2 * DEBOUNCE_QUIET.as_millis() as u64 + 500);

const REPEAT: &str = "bull:inspection:repeat";
const DELAYED: &str = "bull:inspection:delayed";

/// The watcher's log levels: `info`, and the source's events at `debug`,
/// where `source_up` (the source answered a whole read) is logged.
const LOG_FILTER: &str = "info,sqlx=warn,bullmq_warden::report::events::source=debug";

fn main() {
    let measured = std::env::args().any(|arg| arg == "--bench");
    let (sizes, trials) = match measured {
        true => (
            env_list("BENCH_SOURCE_DOWN_SCHEDULERS", &[1000]),
            env_number("BENCH_SOURCE_DOWN_TRIALS", 10),
        ),
        false => (vec![50], 1),
    };
    let postgres = std::env::var("BENCH_SOURCE_DOWN_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let cores = cores();
    let load_before = load_averages();
    let started = Instant::now();
    let mut rows = Vec::new();
    for &n in &sizes {
        rows.extend(run(n, trials, &postgres));
    }
    println!(
        "bullmq-warden watch, default settings (poll 1s, debounce {}s quiet / {}s max, \
         backoff 500ms–60s, snapshot in memory), PostgreSQL through a TCP proxy; \
         {cores} cores, load average {load_before} before and {} after the run ({:.0} s)\n",
        DEBOUNCE_QUIET.as_secs(),
        DEBOUNCE_MAX.as_secs(),
        load_averages(),
        started.elapsed().as_secs_f64()
    );
    println!(
        "| loss | source | rows from | N | trials | detected p50 ms | p99 ms | restored p50 ms \
         | p99 ms | down / up p50 | p99 | reconciled p50 ms | p99 ms | target | result |"
    );
    println!("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|");
    for row in &rows {
        row.print();
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Loss {
    Flush,
    Restart,
}

impl Loss {
    fn name(self) -> &'static str {
        match self {
            Loss::Flush => "FLUSHALL",
            Loss::Restart => "restart without persistence",
        }
    }

    /// Causes the loss; returns when Redis answers again, empty (at once,
    /// but for a restart).
    fn inflict(self, redis: &mut Redis) -> Instant {
        match self {
            Loss::Flush => {
                let () = redis::cmd("FLUSHALL")
                    .query(&mut redis.connection)
                    .expect("FLUSHALL");
                Instant::now()
            }
            Loss::Restart => redis.restart(),
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Source {
    Up,
    Down(Outage),
}

impl Source {
    const ALL: [Source; 3] = [
        Source::Up,
        Source::Down(Outage::Refused),
        Source::Down(Outage::Closed),
    ];

    fn name(self) -> &'static str {
        match self {
            Source::Up => "up",
            Source::Down(Outage::Refused) => "down: refused",
            Source::Down(Outage::Closed) => "down: closed",
        }
    }
}

/// One trial's figures, in milliseconds.
struct Trial {
    detected: f64,
    restored: f64,
    /// From the source back to the watcher's next whole read of it.
    reconciled: Option<f64>,
    /// Where the recovery took the rows from, as its `recovery_finished`
    /// says: `database`, `snapshot` or `kept` (the last read, in memory).
    rows: String,
}

/// One row of the table.
struct Row {
    loss: Loss,
    source: Source,
    n: usize,
    trials: Vec<Trial>,
    /// The restored p50 and p99 of the same loss with the source up.
    baseline: Option<(f64, f64)>,
}

impl Row {
    fn restored(&self) -> (f64, f64) {
        let restored: Vec<f64> = self.trials.iter().map(|t| t.restored).collect();
        (percentile(&restored, 50.0), percentile(&restored, 99.0))
    }

    fn print(&self) {
        let detected: Vec<f64> = self.trials.iter().map(|t| t.detected).collect();
        let reconciled: Vec<f64> = self.trials.iter().filter_map(|t| t.reconciled).collect();
        let (r50, r99) = self.restored();
        let mut from: Vec<&str> = self.trials.iter().map(|t| t.rows.as_str()).collect();
        from.sort_unstable();
        from.dedup();
        let ratios = match self.baseline {
            Some((b50, b99)) => format!("{:.2}x | {:.2}x", r50 / b50, r99 / b99),
            None => "- | -".to_owned(),
        };
        let reconciled = match reconciled.is_empty() {
            true => "- | -".to_owned(),
            false => format!(
                "{:.0} | {:.0}",
                percentile(&reconciled, 50.0),
                percentile(&reconciled, 99.0)
            ),
        };
        let target_ms = TARGET.as_secs_f64() * 1000.0;
        let result = match r99 <= target_ms {
            true => "met",
            false => "missed",
        };
        println!(
            "| {} | {} | {} | {} | {} | {:.0} | {:.0} | {r50:.0} | {r99:.0} | {ratios} | {reconciled} \
             | ≤ {target_ms:.0} ms p99 | {result} |",
            self.loss.name(),
            self.source.name(),
            from.join(", "),
            self.n,
            self.trials.len(),
            percentile(&detected, 50.0),
            percentile(&detected, 99.0),
        );
    }
}

/// Sets up `n` rows, Redis, the proxy and a watcher, and runs `trials`
/// trials of each loss, alternating the source up and down.
fn run(n: usize, trials: usize, postgres: &str) -> Vec<Row> {
    let dir = tempfile::tempdir().expect("temp dir");
    // Declared first so that it is dropped last, after the watcher.
    let table = Table::create(postgres, workload::tasks(n));
    let mut redis = Redis::start();
    let proxy = Proxy::in_front_of(postgres);
    let config = write_config(dir.path(), &redis, &proxy.url_for(postgres), &table.name);
    let log = dir.path().join("watch.log");
    let _watcher: ChildGuard = start_watcher_logging(&config, &log, LOG_FILTER);
    let mut events = EventLog::new(&log);
    assert!(
        events
            .wait_for("recovery_finished", Duration::from_secs(120))
            .is_some(),
        "the start-up recovery did not finish:\n{}",
        tail(&log)
    );
    wait_restored(&mut redis, (REPEAT, DELAYED), n, Duration::from_secs(60));

    let mut rows = Vec::new();
    for loss in [Loss::Flush, Loss::Restart] {
        // The sources take turns, so that a machine that slows down for a
        // while slows each of them alike.
        let mut measured: Vec<Vec<Trial>> = Source::ALL.iter().map(|_| Vec::new()).collect();
        for _ in 0..trials {
            for (source, trials) in Source::ALL.into_iter().zip(&mut measured) {
                trials.push(trial(
                    loss,
                    source,
                    &mut redis,
                    &proxy,
                    &mut events,
                    n,
                    &log,
                ));
            }
        }
        let mut baseline = None;
        for (source, trials) in Source::ALL.into_iter().zip(measured) {
            let row = Row {
                loss,
                source,
                n,
                trials,
                baseline,
            };
            baseline = baseline.or(Some(row.restored()));
            rows.push(row);
        }
    }
    rows
}

/// One loss with the source `source`: the times to the watcher's
/// `detected` event and to every scheduler back; with the source down, the
/// source is brought back afterwards and the watcher's next read of it
/// awaited, so that the next trial starts from a watcher in sync.
fn trial(
    loss: Loss,
    source: Source,
    redis: &mut Redis,
    proxy: &Proxy,
    events: &mut EventLog,
    n: usize,
    log: &Path,
) -> Trial {
    // Every loss comes after a calm spell, as independent losses do.
    std::thread::sleep(CALM);
    events.skip_to_end();
    if let Source::Down(how) = source {
        proxy.go_down(how);
    }
    let lost_at = SystemTime::now();
    let answering = loss.inflict(redis);
    let detection = events
        .wait_for("detected", Duration::from_secs(30))
        .unwrap_or_else(|| panic!("the loss was not detected:\n{}", tail(log)));
    let back = wait_restored(redis, (REPEAT, DELAYED), n, Duration::from_secs(60));
    if back.duration_since(answering) > TARGET {
        eprintln!(
            "[bench] {} with the source {}: over the target; the watcher's events since 3 s \
             before the loss:\n{}",
            loss.name(),
            source.name(),
            events_since(log, lost_at - Duration::from_secs(3), lost_at)
        );
    }
    let finished = events
        .wait_for("recovery_finished", Duration::from_secs(30))
        .unwrap_or_else(|| panic!("no recovery_finished:\n{}", tail(log)));
    let rows = finished.fields["rows"].as_str().unwrap_or("?").to_owned();
    // A read through the proxy while it is down would mean the benchmark
    // measured something else than it says.
    assert!(
        source == Source::Up || rows != "database",
        "read the source while it was down: {}",
        finished.fields
    );
    let reconciled = match source {
        Source::Up => None,
        Source::Down(_) => {
            let back_at = Instant::now();
            proxy.come_back();
            // `source_up`, or, should that debug event be missing, a
            // recovery that wrote from the database's rows.
            let read = events.wait_for_line(
                |line| {
                    line["event"] == "source_up"
                        || (line["event"] == "recovery_finished" && line["rows"] == "database")
                },
                Duration::from_secs(120),
            );
            assert!(
                read.is_some(),
                "the watcher did not read the source again after it came back:\n{}",
                tail(log)
            );
            Some(back_at.elapsed().as_secs_f64() * 1000.0)
        }
    };
    let trial = Trial {
        detected: millis_between(lost_at, detection.at),
        restored: back.duration_since(answering).as_secs_f64() * 1000.0,
        reconciled,
        rows,
    };
    eprintln!(
        "[bench] {} with the source {}, {n} schedulers: detected {:.0} ms, restored {:.0} ms{}",
        loss.name(),
        source.name(),
        trial.detected,
        trial.restored,
        trial
            .reconciled
            .map(|ms| format!(", source read again {ms:.0} ms after it came back"))
            .unwrap_or_default()
    );
    trial
}

/// The benchmark's rows in a table of its own on the PostgreSQL server,
/// dropped at the end.
struct Table {
    url: String,
    name: String,
}

impl Table {
    fn create(url: &str, tasks: Vec<Task>) -> Self {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .subsec_nanos();
        let table = Self {
            url: url.to_owned(),
            name: format!("bench_source_down_{}_{nanos}", std::process::id()),
        };
        run_sql(
            url,
            &format!(
                "CREATE TABLE {} (id BIGINT PRIMARY KEY, name TEXT, cron TEXT, tz TEXT,
                 payload TEXT, opts TEXT, queue TEXT, enabled BOOLEAN NOT NULL DEFAULT TRUE)",
                table.name
            ),
        );
        let (url, name) = (table.url.clone(), table.name.clone());
        block_on(move || async move {
            let mut conn = PgConnection::connect(&url)
                .await
                .unwrap_or_else(|e| panic!("connect {url}: {e}"));
            // 7 values a row stays far below PostgreSQL's 65,535 parameters.
            for chunk in tasks.chunks(1000) {
                let mut insert: QueryBuilder<Postgres> = QueryBuilder::new(format!(
                    "INSERT INTO {name} (id, name, cron, tz, payload, opts, queue) "
                ));
                insert.push_values(chunk, |mut row, task| {
                    row.push_bind(task.id as i64)
                        .push_bind(task.name.clone())
                        .push_bind(task.cron)
                        .push_bind(task.tz)
                        .push_bind(task.payload.to_string())
                        .push_bind(task.opts.as_ref().map(Value::to_string))
                        .push_bind(workload::QUEUE);
                });
                insert
                    .build()
                    .execute(&mut conn)
                    .await
                    .expect("insert rows");
            }
            conn.close().await.expect("close PostgreSQL");
        });
        table
    }
}

impl Drop for Table {
    fn drop(&mut self) {
        let (url, name) = (self.url.clone(), self.name.clone());
        // Never panic while unwinding from a failed trial.
        let _ = std::panic::catch_unwind(move || {
            run_sql(&url, &format!("DROP TABLE IF EXISTS {name}"))
        });
    }
}

fn write_config(dir: &Path, redis: &Redis, source: &str, table: &str) -> PathBuf {
    let config = dir.join("warden.toml");
    std::fs::write(
        &config,
        format!(
            "[redis]\nurl = \"{}\"\n[source]\nurl = \"{source}\"\n\
             query = \"SELECT id, name, cron, tz, payload, opts, queue FROM {table} WHERE enabled\"\n\
             [http]\nlisten = \"\"\n",
            redis.server.url()
        ),
    )
    .expect("write config");
    config
}

/// The last lines of the watcher's log, for failure messages.
fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// The watcher's events logged since `since`, one line each: milliseconds
/// from `zero`, the event, and its other fields but the timestamp.
fn events_since(log: &Path, since: SystemTime, zero: SystemTime) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut lines = Vec::new();
    for line in text.lines() {
        let Ok(Value::Object(mut fields)) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let at = fields
            .remove("timestamp")
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t.as_str()?).ok())
            .map(SystemTime::from);
        let Some(at) = at.filter(|at| *at >= since) else {
            continue;
        };
        let offset = match at.duration_since(zero) {
            Ok(after) => after.as_secs_f64() * 1000.0,
            Err(before) => -before.duration().as_secs_f64() * 1000.0,
        };
        let event = fields.remove("event").unwrap_or_default();
        fields.remove("target");
        fields.remove("level");
        lines.push(format!(
            "  {offset:+.0} ms {event} {}",
            Value::Object(fields)
        ));
    }
    lines.join("\n")
}

fn millis_between(from: SystemTime, to: SystemTime) -> f64 {
    to.duration_since(from).unwrap_or_default().as_secs_f64() * 1000.0
}

/// The 1-, 5- and 15-minute load averages.
fn load_averages() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Nearest-rank percentile.
fn percentile(values: &[f64], p: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// A comma-separated list of numbers, e.g. `1000,10000`.
fn env_list(name: &str, default: &[usize]) -> Vec<usize> {
    let parsed: Vec<usize> = std::env::var(name)
        .unwrap_or_default()
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect();
    match parsed.is_empty() {
        true => default.to_vec(),
        false => parsed,
    }
}
