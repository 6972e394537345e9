//! Source change benchmark: how long from a committed row edit to the edited
//! scheduler in Redis, per way of noticing it, with the default settings and
//! the drift check out of the way (10 minutes):
//!
//! - SQLite, no configuration (`PRAGMA data_version` every 500 ms),
//! - PostgreSQL with `[source] notify_channel` and the README's trigger,
//! - MariaDB with `[source] change_query` (every 2 s by default).
//!
//! `cargo bench --bench source_change` prints one table; bench/README.md
//! explains it. Without `--bench` (`cargo test --benches`) it is a smoke run.

// The test harness, which starts the servers and the binary.
#[allow(dead_code)]
#[path = "shared/machine.rs"]
mod machine;
#[path = "../tests/support/mod.rs"]
mod support;
#[allow(dead_code)]
#[path = "shared/watcher.rs"]
mod watcher;

use machine::env_number;
use std::path::Path;
use std::time::{Duration, Instant};

use support::{run_sql, Database, RedisServer, NOTIFY_TRIGGER_SQL};
use watcher::{start_watcher, EventLog};

/// The p99 target from a committed edit to Redis.
const TARGET: Duration = Duration::from_secs(3);

fn main() {
    let measured = std::env::args().any(|arg| arg == "--bench");
    let (rows, trials) = match measured {
        true => (
            env_number("BENCH_CHANGE_ROWS", 1000),
            env_number("BENCH_CHANGE_TRIALS", 20),
        ),
        false => (50, 2),
    };
    println!(
        "bullmq-warden watch, default settings, drift check every 10m, {rows} rows, \
         {trials} edits per source\n"
    );
    println!("| source | noticed by | p50 ms | p99 ms | max ms | target |");
    println!("|---|---|---|---|---|---|");
    for kind in [Kind::Sqlite, Kind::Postgres, Kind::MariaDb] {
        let latencies = kind.run(rows, trials);
        let (p50, p99) = (percentile(&latencies, 50.0), percentile(&latencies, 99.0));
        let max = latencies.iter().copied().fold(0.0, f64::max);
        let verdict = match p99 <= TARGET.as_secs_f64() * 1000.0 {
            true => "met",
            false => "≤ 3000 ms p99",
        };
        println!(
            "| {} | {} | {p50:.0} | {p99:.0} | {max:.0} | {verdict} |",
            kind.name(),
            kind.how()
        );
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Sqlite,
    Postgres,
    MariaDb,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Sqlite => "SQLite",
            Kind::Postgres => "PostgreSQL",
            Kind::MariaDb => "MariaDB",
        }
    }

    fn how(self) -> &'static str {
        match self {
            Kind::Sqlite => "data_version (no configuration)",
            Kind::Postgres => "notify_channel",
            Kind::MariaDb => "change_query, change_interval 2s",
        }
    }

    /// The table, as this database spells it.
    fn table_sql(self) -> &'static str {
        match self {
            Kind::Sqlite => support::TASKS_TABLE_SQLITE,
            Kind::Postgres => {
                "CREATE TABLE inspection_tasks (id BIGINT PRIMARY KEY, name TEXT, cron TEXT,
                every_ms INTEGER, tz TEXT, payload TEXT, opts TEXT, queue TEXT,
                enabled BOOLEAN NOT NULL DEFAULT TRUE)"
            }
            Kind::MariaDb => {
                "CREATE TABLE inspection_tasks (id BIGINT PRIMARY KEY, name VARCHAR(100),
                cron VARCHAR(100), every_ms INT, tz VARCHAR(64), payload TEXT, opts TEXT,
                queue VARCHAR(100), enabled BOOLEAN NOT NULL DEFAULT TRUE,
                updated_at TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3)
                ON UPDATE CURRENT_TIMESTAMP(3))"
            }
        }
    }

    /// The `[source]` keys beyond the URL.
    fn source_keys(self) -> &'static str {
        match self {
            Kind::Sqlite => "",
            Kind::Postgres => "notify_channel = \"inspection_tasks_changed\"\n",
            Kind::MariaDb => {
                "change_query = \"SELECT count(*), max(updated_at) FROM inspection_tasks\"\n"
            }
        }
    }

    /// Sets up the source and a watcher over it, edits `trials` rows one
    /// at a time, and returns each edit's latency in milliseconds.
    fn run(self, rows: usize, trials: usize) -> Vec<f64> {
        let dir = tempfile::tempdir().expect("temp dir");
        let redis = RedisServer::start();
        let database = match self {
            Kind::Sqlite => None,
            Kind::Postgres => Some(Database::postgres()),
            Kind::MariaDb => Some(Database::mariadb()),
        };
        let url = match &database {
            Some(database) => database.url.clone(),
            None => format!("sqlite://{}/tasks.db?mode=rwc", dir.path().display()),
        };
        run_sql(&url, self.table_sql());
        if let Kind::Postgres = self {
            run_sql(&url, NOTIFY_TRIGGER_SQL);
        }
        run_sql(&url, &insert_rows(rows));
        let source_url = url.replace("?mode=rwc", "");
        let config = write_config(dir.path(), &redis, &source_url, self.source_keys());
        let log = dir.path().join("watch.log");
        let _watcher = start_watcher(&config, &log);
        let mut events = EventLog::new(&log);
        assert!(
            events
                .wait_for("recovery_finished", Duration::from_secs(60))
                .is_some(),
            "{}: the start-up recovery did not finish",
            self.name()
        );
        let mut connection = redis.connect().expect("connect to the benchmark's Redis");
        (0..trials)
            .map(|trial| {
                // Edits at varying moments, so that they fall anywhere
                // between two looks of a polling watch.
                std::thread::sleep(Duration::from_millis(300 + (trial as u64 * 389) % 1700));
                edit_latency(&url, &mut connection, rows, trial)
            })
            .collect()
    }
}

/// `rows` enabled daily cron rows, in one statement every database takes.
fn insert_rows(rows: usize) -> String {
    let values: Vec<String> = (1..=rows)
        .map(|i| format!("({i}, 'task-{i}', '{} 3 * * *')", i % 60))
        .collect();
    format!(
        "INSERT INTO inspection_tasks (id, name, cron) VALUES {}",
        values.join(", ")
    )
}

fn write_config(dir: &Path, redis: &RedisServer, source: &str, keys: &str) -> std::path::PathBuf {
    let config = dir.join("warden.toml");
    std::fs::write(
        &config,
        format!(
            "[redis]\nurl = \"{}\"\n[source]\nurl = \"{source}\"\n{keys}\
             [watch]\ndrift_interval = \"10m\"\n[http]\nlisten = \"\"\n",
            redis.url()
        ),
    )
    .expect("write config");
    config
}

/// Edits one row's cron and waits until its scheduler has it; milliseconds
/// from the commit to Redis, polled every 2 ms over one connection.
fn edit_latency(url: &str, redis: &mut redis::Connection, rows: usize, trial: usize) -> f64 {
    let id = trial % rows + 1;
    let pattern = format!("{} {} 4 * * *", trial % 60, trial / 60 % 60);
    run_sql(
        url,
        &format!("UPDATE inspection_tasks SET cron = '{pattern}' WHERE id = {id}"),
    );
    let committed = Instant::now();
    let key = format!("bull:inspection:repeat:inspection:{id}");
    while committed.elapsed() < Duration::from_secs(30) {
        let stored: Option<String> = redis::cmd("HGET")
            .arg(&key)
            .arg("pattern")
            .query(redis)
            .unwrap_or(None);
        if stored.as_deref() == Some(pattern.as_str()) {
            return committed.elapsed().as_secs_f64() * 1000.0;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    panic!("row {id}'s edit did not reach Redis within 30 s");
}

/// Nearest-rank percentile.
fn percentile(values: &[f64], p: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}
