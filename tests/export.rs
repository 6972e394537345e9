//! `export` against real BullMQ 6 in Node: the schedulers an application
//! defined in code, printed as rows of the default table, loaded into an
//! empty SQLite, PostgreSQL or MariaDB database, and restored from there
//! after a flush by `recover`, equal to what the application had defined.

mod support;

use serde_json::{json, Value};
use support::{
    app_schedulers, node, node_packages_installed, run_sql, Database, RedisServer, Setup, END_2040,
    START_2030,
};

const APP: &str = "app";
/// getJobSchedulers() of the application's queue, sorted, without the
/// iteration count (a re-created scheduler counts from 1 again).
fn schedulers(redis: &RedisServer) -> Vec<Value> {
    let listed = node(6, "schedulers", redis, APP, &[], None);
    support::comparable_schedulers(&listed, |_| &["iterationCount"])
}

/// A Redis holding the application's schedulers, and what BullMQ reports of them.
fn application() -> (RedisServer, Vec<Value>) {
    assert!(
        node_packages_installed(),
        "run `npm ci --prefix tests/node`"
    );
    let redis = RedisServer::start();
    node(
        6,
        "upsert-schedulers",
        &redis,
        APP,
        &[],
        Some(&app_schedulers()),
    );
    // The application's Worker takes the first run BullMQ gives a new
    // interval scheduler at once; from then on `beat` runs on its grid.
    let args = [
        "--until-runs",
        "1",
        "--scheduler",
        "beat",
        "--timeout-ms",
        "20000",
    ];
    let report = node(6, "worker", &redis, APP, &args, None);
    assert_eq!(report["runs"], 1, "{report}");
    let before = schedulers(&redis);
    assert_eq!(before.len(), 7);
    (redis, before)
}

fn config(source_url: &str) -> String {
    format!("[redis]\nurl = \"{{redis}}\"\n[source]\nurl = \"{source_url}\"\nscheduler_id = \"{{id}}\"\n")
}

/// `export --format sql` of the application's queue.
fn exported_sql(redis: &RedisServer) -> String {
    let setup = Setup::new(redis, &config("sqlite://{dir}/unused.db"));
    let run = setup.warden(&["export", "--queue", APP, "--format", "sql"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        run.stdout.matches("INSERT INTO inspection_tasks").count(),
        7
    );
    run.stdout
}

/// Flushes Redis, recovers from `setup`'s database and compares.
fn flush_recover_compare(redis: &RedisServer, setup: &Setup, before: &[Value]) {
    redis.redis(&["FLUSHALL"]);
    let (code, report) = setup.recover();
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["created"], 7, "{report}");
    assert_eq!(schedulers(redis), before);
    // A second recover finds nothing to do: the rows read back as written.
    let (code, report) = setup.recover();
    assert_eq!((code, &report["unchanged"]), (0, &json!(7)), "{report}");
}

#[test]
fn export_to_sqlite_and_recover_gives_the_same_schedulers() {
    let (redis, before) = application();
    let sql = exported_sql(&redis);
    let setup = Setup::new(&redis, &config("sqlite://{dir}/tasks.db"));
    setup.sql(&sql);
    flush_recover_compare(&redis, &setup, &before);
}

#[test]
fn export_to_postgres_and_recover_gives_the_same_schedulers() {
    let (redis, before) = application();
    let sql = exported_sql(&redis);
    let db = Database::postgres();
    run_sql(&db.url, &sql);
    let setup = Setup::new(&redis, &config(&db.url));
    flush_recover_compare(&redis, &setup, &before);
}

#[test]
fn export_to_mariadb_and_recover_gives_the_same_schedulers() {
    let (redis, before) = application();
    let sql = exported_sql(&redis);
    let db = Database::mariadb();
    run_sql(&db.url, &sql);
    let setup = Setup::new(&redis, &config(&db.url));
    flush_recover_compare(&redis, &setup, &before);
}

#[test]
fn schedulers_that_cannot_be_rows_are_named_and_the_exit_code_says_so() {
    let (redis, _) = application();
    let odd = json!([{"id": "odd", "name": "n", "repeat": {"pattern": "0 1 * * *"}, "opts": {"lifo": true}}]);
    node(6, "upsert-schedulers", &redis, "odd", &[], Some(&odd));
    let setup = Setup::new(&redis, &config("sqlite://{dir}/unused.db"));
    let run = setup.warden(&["export", "--format", "json"]);
    assert_eq!(run.code, 3, "{}", run.stderr);
    assert!(
        run.stderr.contains("left out odd/odd") && run.stderr.contains("lifo"),
        "{}",
        run.stderr
    );
    let rows = run.json();
    assert_eq!(rows.as_array().map(Vec::len), Some(7), "{rows}");
    let later = rows
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["id"] == "later"))
        .expect("the later row");
    assert_eq!(later["start_date"], START_2030);
    assert_eq!(later["end_date"], END_2040);
    assert_eq!(later["queue"], APP);

    let csv = setup.warden(&["export", "--queue", APP, "--format", "csv"]);
    assert_eq!(csv.code, 0, "{}", csv.stderr);
    let mut lines = csv.stdout.lines();
    assert_eq!(
        lines.next(),
        Some("id,queue,name,cron,every_ms,tz,payload,opts,start_date,end_date,repeat_limit,repeat_offset")
    );
    assert_eq!(lines.count(), 7);
}

#[test]
fn export_of_an_unreachable_redis_exits_5() {
    let mut redis = RedisServer::start();
    let setup = Setup::new(&redis, &config("sqlite://{dir}/unused.db"));
    redis.stop();
    let run = setup.warden(&["export"]);
    assert_eq!(run.code, 5, "{}", run.stderr);
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
}
