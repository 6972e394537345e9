//! The source query on PostgreSQL and MariaDB: native column types (boolean,
//! jsonb, timestamps), a read-only transaction, and one-line errors.
//! Each test uses a throwaway database of its own (`support::Database`).

mod support;

use std::time::Duration;

use support::{
    run_sql, time_until, wait_until, Database, RedisServer, Setup, Watcher, FAST_RECOVERY,
    FAST_WATCH, NOTIFY_TRIGGER_SQL,
};

fn setup_for(redis: &RedisServer, db: &Database, extra: &str) -> Setup {
    Setup::new(
        redis,
        &format!(
            "[redis]\nurl = \"{{redis}}\"\n[source]\nurl = \"{}\"\n{extra}",
            db.url
        ),
    )
}

fn restores_rows_with_native_types(db: &Database, table_sql: &str) {
    run_sql(&db.url, table_sql);
    run_sql(
        &db.url,
        "INSERT INTO inspection_tasks (id, name, cron, every_ms, tz, payload, opts, queue, enabled) VALUES
         (1, 'pg-disk', '*/5 * * * *', NULL, NULL, '{\"host\":\"db-1\"}', '{\"attempts\":2}', NULL, TRUE),
         (2, 'beat', NULL, 30000, NULL, NULL, NULL, 'beats', TRUE),
         (3, 'berlin', '0 30 2 * * *', NULL, 'Europe/Berlin', '{\"城市\":\"柏林\"}', NULL, NULL, TRUE),
         (4, 'broken', '0 0 * *', NULL, NULL, NULL, NULL, NULL, TRUE),
         (5, 'off', '* * * * *', NULL, NULL, NULL, NULL, NULL, FALSE);",
    );
    let redis = RedisServer::start();
    let setup = setup_for(&redis, db, "");
    let (code, report) = setup.recover();
    assert_eq!(code, 3, "one invalid row: {report}");
    assert_eq!(report["created"], 3, "{report}");
    assert_eq!(report["invalid"][0]["id"], "4");
    assert_eq!(redis.zcard("bull:inspection:repeat"), 2);
    assert_eq!(redis.zcard("bull:beats:repeat"), 1);
    assert_eq!(
        redis.redis(&["HGET", "bull:inspection:repeat:inspection:3", "data"]),
        "{\"城市\":\"柏林\"}"
    );
    let (_, again) = setup.recover();
    assert_eq!(again["unchanged"], 3, "{again}");
}

#[test]
fn postgres_rows_with_boolean_and_jsonb_columns_are_restored() {
    let db = Database::postgres();
    restores_rows_with_native_types(
        &db,
        "CREATE TABLE inspection_tasks (id BIGINT PRIMARY KEY, name TEXT, cron TEXT, every_ms INTEGER,
         tz TEXT, payload JSONB, opts JSON, queue TEXT, enabled BOOLEAN NOT NULL)",
    );
}

#[test]
fn mariadb_rows_with_tinyint_and_json_columns_are_restored() {
    let db = Database::mariadb();
    restores_rows_with_native_types(
        &db,
        "CREATE TABLE inspection_tasks (id BIGINT PRIMARY KEY, name VARCHAR(100), cron VARCHAR(100),
         every_ms INT, tz VARCHAR(64), payload JSON, opts TEXT, queue VARCHAR(100), enabled BOOLEAN NOT NULL)",
    );
}

#[test]
fn postgres_timestamps_become_start_and_end_dates() {
    let db = Database::postgres();
    run_sql(
        &db.url,
        "CREATE TABLE tasks (id TEXT, pattern TEXT, start_date TIMESTAMPTZ, end_date TIMESTAMP, \"limit\" SMALLINT);
         INSERT INTO tasks VALUES ('a', '0 * * * *', '2030-01-01T00:00:00Z', '2031-01-01 00:00:00', 5);",
    );
    let redis = RedisServer::start();
    let setup = setup_for(&redis, &db, "query = \"SELECT * FROM tasks\"\n");
    let (code, report) = setup.recover();
    assert_eq!(code, 0, "{report}");
    let hash = "bull:inspection:repeat:inspection:a";
    assert_eq!(redis.redis(&["HGET", hash, "startDate"]), "1893456000000");
    assert_eq!(redis.redis(&["HGET", hash, "endDate"]), "1924992000000");
    assert_eq!(redis.redis(&["HGET", hash, "limit"]), "5");
}

#[test]
fn the_source_query_runs_read_only() {
    for db in [Database::postgres(), Database::mariadb()] {
        run_sql(&db.url, "CREATE TABLE marks (id INTEGER)");
        let redis = RedisServer::start();
        let query = if db.url.starts_with("postgres") {
            "INSERT INTO marks VALUES (1) RETURNING id, '* * * * *' AS cron"
        } else {
            "INSERT INTO marks VALUES (1)"
        };
        let setup = setup_for(&redis, &db, &format!("query = \"{query}\"\n"));
        let run = setup.warden(&["recover"]);
        assert_eq!(run.code, 6, "{}{}", run.stdout, run.stderr);
        assert!(run.stderr.to_lowercase().contains("read"), "{}", run.stderr);
        assert_eq!(run.stderr.trim().lines().count(), 1, "{}", run.stderr);
    }
}

#[test]
fn sqlite_source_is_opened_read_only() {
    let redis = RedisServer::start();
    let setup = Setup::sqlite(
        &redis,
        "query = \"DELETE FROM inspection_tasks RETURNING id\"\n",
    );
    setup.sql(support::TASKS_TABLE_SQLITE);
    setup.sql("INSERT INTO inspection_tasks (id, name, cron) VALUES (1, 'x', '0 * * * *')");
    let run = setup.warden(&["recover"]);
    assert_eq!(run.code, 6, "{}", run.stderr);
    assert!(
        run.stderr.contains("readonly") || run.stderr.contains("read-only"),
        "{}",
        run.stderr
    );
}

/// A drift check too far off to explain anything a test sees.
const NO_DRIFT_CHECK: (&str, &str) = ("BULLMQ_WARDEN__WATCH__DRIFT_INTERVAL", "10m");

/// A watcher over `db` with `source_extra` in `[source]`, its start-up
/// recovery done.
fn watching(redis: &RedisServer, db: &Database, source_extra: &str) -> (Setup, Watcher) {
    let extra = format!("{source_extra}{FAST_WATCH}[recovery]\n{FAST_RECOVERY}");
    let setup = setup_for(redis, db, &extra);
    let watcher = Watcher::start_env(&setup, &[NO_DRIFT_CHECK]);
    assert!(
        watcher.wait_for("recovery_finished", 1, Duration::from_secs(10)),
        "{}",
        watcher.log()
    );
    (setup, watcher)
}

/// Runs `sql` and measures until scheduler `id` has `pattern` in Redis.
fn edit_reaches_redis(
    redis: &RedisServer,
    db: &Database,
    what: &str,
    sql: &str,
    id: &str,
    pattern: &str,
) {
    run_sql(&db.url, sql);
    let key = format!("bull:inspection:repeat:inspection:{id}");
    let took = time_until(Duration::from_secs(3), || {
        redis.redis(&["HGET", &key, "pattern"]) == pattern
    })
    .unwrap_or_else(|| panic!("{what}: not in Redis within 3 s"));
    eprintln!("{what}: {} ms", took.as_millis());
}

/// The task table on PostgreSQL, with one cron row (id 1).
const ONE_POSTGRES_ROW: &str = "CREATE TABLE inspection_tasks (id BIGINT PRIMARY KEY, name TEXT,
  cron TEXT, every_ms INTEGER, tz TEXT, payload JSONB, opts JSON, queue TEXT,
  enabled BOOLEAN NOT NULL DEFAULT TRUE);
INSERT INTO inspection_tasks (id, name, cron) VALUES (1, 'a', '0 0 * * * *');";

/// Without a watch on the rows, the rows kept from the last read may be
/// stale: a flush is still repaired at once, but from a fresh read, so an
/// edit nobody announced is in what comes back.
#[test]
fn without_a_watch_on_the_rows_a_flush_is_repaired_at_once_from_a_fresh_read() {
    let db = Database::postgres();
    run_sql(&db.url, ONE_POSTGRES_ROW);
    let redis = RedisServer::start();
    let (_setup, watcher) = watching(&redis, &db, "");
    assert_eq!(watcher.count("source_watch"), 0, "{}", watcher.log());
    run_sql(
        &db.url,
        "UPDATE inspection_tasks SET cron = '0 5 * * * *' WHERE id = 1",
    );
    redis.redis(&["FLUSHALL"]);
    watcher.assert_second_recovery_at_once("database");
    let key = "bull:inspection:repeat:inspection:1";
    assert_eq!(redis.redis(&["HGET", key, "pattern"]), "0 5 * * * *");
}

#[test]
fn postgres_notify_trigger_brings_row_edits_to_redis_within_seconds() {
    let db = Database::postgres();
    run_sql(&db.url, ONE_POSTGRES_ROW);
    run_sql(&db.url, NOTIFY_TRIGGER_SQL);
    let redis = RedisServer::start();
    let channel = "notify_channel = \"inspection_tasks_changed\"\n";
    let (_setup, watcher) = watching(&redis, &db, channel);
    let (edit, insert) = (
        "UPDATE inspection_tasks SET cron = '0 5 * * * *' WHERE id = 1",
        "INSERT INTO inspection_tasks (id, name, cron) VALUES (2, 'b', '0 7 * * * *')",
    );
    edit_reaches_redis(
        &redis,
        &db,
        "PostgreSQL NOTIFY edit",
        edit,
        "1",
        "0 5 * * * *",
    );
    edit_reaches_redis(
        &redis,
        &db,
        "PostgreSQL NOTIFY insert",
        insert,
        "2",
        "0 7 * * * *",
    );
    // A dropped listening connection is listened again, and counts as a change.
    let detections = watcher.count("detected");
    run_sql(
        &db.url,
        &format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = '{}' AND query LIKE 'LISTEN%'",
            db.name
        ),
    );
    assert!(
        wait_until(Duration::from_secs(5), || watcher
            .events("detected")
            .iter()
            .skip(detections)
            .any(|e| e["message"]
                .as_str()
                .is_some_and(|m| m.contains("re-established")))),
        "{}",
        watcher.log()
    );
    let again = "UPDATE inspection_tasks SET cron = '0 9 * * * *' WHERE id = 1";
    edit_reaches_redis(
        &redis,
        &db,
        "PostgreSQL NOTIFY after reconnect",
        again,
        "1",
        "0 9 * * * *",
    );
}

#[test]
fn mariadb_change_query_brings_row_edits_to_redis_within_seconds() {
    let db = Database::mariadb();
    run_sql(
        &db.url,
        "CREATE TABLE inspection_tasks (id BIGINT PRIMARY KEY, name VARCHAR(100), cron VARCHAR(100),
         every_ms INT, tz VARCHAR(64), payload JSON, opts TEXT, queue VARCHAR(100),
         enabled BOOLEAN NOT NULL DEFAULT TRUE,
         updated_at TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3) ON UPDATE CURRENT_TIMESTAMP(3));
         INSERT INTO inspection_tasks (id, name, cron) VALUES (1, 'a', '0 0 * * * *');",
    );
    let redis = RedisServer::start();
    let probe = "change_query = \"SELECT count(*), max(updated_at) FROM inspection_tasks\"\n";
    let (_setup, watcher) = watching(&redis, &db, probe);
    let (edit, insert) = (
        "UPDATE inspection_tasks SET cron = '0 5 * * * *' WHERE id = 1",
        "INSERT INTO inspection_tasks (id, name, cron) VALUES (2, 'b', '0 7 * * * *')",
    );
    edit_reaches_redis(
        &redis,
        &db,
        "MariaDB change_query edit",
        edit,
        "1",
        "0 5 * * * *",
    );
    edit_reaches_redis(
        &redis,
        &db,
        "MariaDB change_query insert",
        insert,
        "2",
        "0 7 * * * *",
    );
    assert!(
        watcher
            .events("recovery_finished")
            .iter()
            .skip(1)
            .all(|f| f["trigger"] == "source_change"),
        "{}",
        watcher.log()
    );
}
