//! The source query on PostgreSQL and MariaDB: native column types (boolean,
//! jsonb, timestamps), a read-only transaction, and one-line errors.
//! Each test uses a throwaway database of its own (`support::Database`).

mod support;

use support::{run_sql, Database, RedisServer, Setup};

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
