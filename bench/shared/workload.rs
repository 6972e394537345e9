//! The schedulers every method restores: the same N rows, written once as an
//! SQLite source for bullmq-warden and once as JSON for the Node driver.
//!
//! The mix stands in for a real `inspection_tasks` table: 5- and 6-field cron
//! patterns, a few time zones, a small JSON payload and, on most rows, job
//! options. No pattern fires within the next few seconds, so every first job
//! lands in the delayed set and the correctness check can count it there.

use std::path::Path;

use serde_json::{json, Value};
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::{Connection, QueryBuilder, Sqlite};

use crate::support::TASKS_TABLE_SQLITE;

/// The queue all schedulers go to, unless they are spread over several.
pub const QUEUE: &str = "inspection";

/// BullMQ's key prefix (the default of both BullMQ and bullmq-warden).
pub const PREFIX: &str = "bull";

/// bullmq-warden's id template; the Node baseline uses the same ids.
pub const SCHEDULER_ID_TEMPLATE: &str = "inspection:{id}";

const PATTERNS: [&str; 9] = [
    "*/5 * * * *",
    "0 * * * *",
    "15 2 * * *",
    "0 9 * * 1-5",
    "30 6 1 * *",
    "0 */10 * * * *",
    "30 0 3 * * *",
    "0 15 8 * * 1-5",
    "0 0 12 * * 0",
];

const TIME_ZONES: [Option<&str>; 4] = [
    None,
    Some("Europe/Berlin"),
    Some("America/New_York"),
    Some("Asia/Tokyo"),
];

const CHECKS: [&str; 4] = ["disk", "memory", "certificate", "backup"];

/// Rows per INSERT: 8 bound values each stays far below SQLite's parameter limit.
const INSERT_CHUNK: usize = 1000;

/// One row of `inspection_tasks`.
pub struct Task {
    pub id: u64,
    pub name: String,
    pub cron: &'static str,
    pub tz: Option<&'static str>,
    pub payload: Value,
    pub opts: Option<Value>,
}

impl Task {
    fn new(id: u64) -> Self {
        let i = id as usize;
        let check = CHECKS[i % CHECKS.len()];
        Self {
            id,
            name: format!("inspect-{check}"),
            cron: PATTERNS[i % PATTERNS.len()],
            // A different stride than the patterns, so every pattern meets every zone.
            tz: TIME_ZONES[(i / 2) % TIME_ZONES.len()],
            payload: json!({ "host": format!("host-{id:06}"), "check": check, "threshold": 70 + i % 25 }),
            opts: job_options(i),
        }
    }

    /// The scheduler id bullmq-warden renders from `SCHEDULER_ID_TEMPLATE`.
    pub fn scheduler_id(&self) -> String {
        SCHEDULER_ID_TEMPLATE.replace("{id}", &self.id.to_string())
    }

    /// The driver's `upsert-schedulers` item, i.e. the arguments of
    /// `queue.upsertJobScheduler(id, repeat, { name, data, opts })`.
    fn node_item(&self) -> Value {
        let mut repeat = json!({ "pattern": self.cron });
        if let Some(tz) = self.tz {
            repeat["tz"] = json!(tz);
        }
        let mut item = json!({
            "id": self.scheduler_id(),
            "repeat": repeat,
            "name": self.name,
            "data": self.payload,
        });
        if let Some(opts) = &self.opts {
            item["opts"] = opts.clone();
        }
        item
    }
}

/// Three rows in four carry options, in the shapes the manual's rows use.
fn job_options(i: usize) -> Option<Value> {
    match i % 4 {
        0 => Some(json!({ "attempts": 3, "backoff": { "type": "exponential", "delay": 1000 } })),
        1 => Some(json!({ "attempts": 5, "removeOnComplete": 100 })),
        2 => Some(json!({ "attempts": 2, "backoff": { "type": "fixed", "delay": 5000 } })),
        _ => None,
    }
}

/// Rows 1..=n.
pub fn tasks(n: usize) -> Vec<Task> {
    (1..=n as u64).map(Task::new).collect()
}

/// Writes the Node driver's stdin: a JSON array of schedulers.
pub fn write_node_input(tasks: &[Task], path: &Path) {
    let items: Vec<Value> = tasks.iter().map(Task::node_item).collect();
    let text = serde_json::to_vec(&items).expect("encode the Node input");
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// Creates the SQLite source bullmq-warden reads: the manual's table with
/// `tasks` in it, all in `QUEUE`.
pub fn write_sqlite_source(tasks: &[Task], path: &Path) {
    write_sqlite_source_across(tasks, path, 1);
}

/// The queue names of `write_sqlite_source_across`: `QUEUE` alone for one.
pub fn queue_names(queues: usize) -> Vec<String> {
    match queues {
        0 | 1 => vec![QUEUE.to_owned()],
        n => (0..n).map(|q| format!("{QUEUE}-{q:03}")).collect(),
    }
}

/// Like `write_sqlite_source`, with the rows dealt round-robin over `queues` queues.
pub fn write_sqlite_source_across(tasks: &[Task], path: &Path, queues: usize) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(fill_sqlite(tasks, path, &queue_names(queues)));
}

async fn fill_sqlite(tasks: &[Task], path: &Path, queues: &[String]) {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true);
    let mut conn = SqliteConnection::connect_with(&options)
        .await
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    sqlx::raw_sql(TASKS_TABLE_SQLITE)
        .execute(&mut conn)
        .await
        .expect("create inspection_tasks");
    let mut tx = conn.begin().await.expect("begin");
    for chunk in tasks.chunks(INSERT_CHUNK) {
        let mut insert: QueryBuilder<Sqlite> = QueryBuilder::new(
            "INSERT INTO inspection_tasks (id, name, cron, tz, payload, opts, queue, enabled) ",
        );
        insert.push_values(chunk, |mut row, task| {
            row.push_bind(task.id as i64)
                .push_bind(task.name.clone())
                .push_bind(task.cron)
                .push_bind(task.tz)
                .push_bind(task.payload.to_string())
                .push_bind(task.opts.as_ref().map(Value::to_string))
                .push_bind(queues[task.id as usize % queues.len()].clone())
                .push_bind(true);
        });
        insert.build().execute(&mut *tx).await.expect("insert rows");
    }
    tx.commit().await.expect("commit");
    conn.close().await.expect("close SQLite");
}
