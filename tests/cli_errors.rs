//! Bad input gets one clear line and a distinct exit code, and leaves Redis as it was.

mod support;

use support::{RedisServer, Setup, TASKS_TABLE_SQLITE};

fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[test]
fn a_broken_config_names_the_key_and_exits_2() {
    let redis = RedisServer::start();
    for (toml, key) in [
        ("[redis]\nurl = \"http://x\"\n", "redis.url"),
        ("[redis]\nprefixx = \"b\"\n", "prefixx"),
        (
            "[source]\nscheduler_id = \"x:{id\"\n",
            "source.scheduler_id",
        ),
        ("[recovery]\nconcurrency = -1\n", "concurrency"),
        ("[redis\n", "warden.toml"),
    ] {
        let setup = Setup::new(&redis, toml);
        let run = setup.warden(&["recover"]);
        assert_eq!(run.code, 2, "{toml}: {}", run.stderr);
        assert!(run.stderr.contains(key), "{toml}: {}", run.stderr);
        assert_eq!(run.stderr.trim().lines().count(), 1, "{}", run.stderr);
    }
    let setup = Setup::new(&redis, "");
    let run = setup.warden_env(&["status"], &[("BULLMQ_WARDEN__REDIS__URL", "ftp://x")]);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("redis.url"), "{}", run.stderr);
}

#[test]
fn a_missing_config_file_is_named() {
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_bullmq-warden"))
        .args(["--config", "/nonexistent/warden.toml", "status"])
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&run.stderr).contains("/nonexistent/warden.toml"));
}

#[test]
fn unreachable_redis_is_one_line_with_the_password_redacted() {
    let redis = RedisServer::start();
    let setup = Setup::sqlite(&redis, "");
    setup.sql(TASKS_TABLE_SQLITE);
    let url = format!("redis://app:hunter2@127.0.0.1:{}/0", closed_port());
    let run = setup.warden_env(&["recover"], &[("BULLMQ_WARDEN__REDIS__URL", &url)]);
    assert_eq!(run.code, 5, "{}", run.stderr);
    assert!(
        run.stderr.contains("redis://app:***@127.0.0.1"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("hunter2"), "{}", run.stderr);
    assert_eq!(run.stderr.trim().lines().count(), 1, "{}", run.stderr);
}

#[test]
fn unreachable_database_is_one_line_with_the_password_redacted() {
    let redis = RedisServer::start();
    let setup = Setup::new(
        &redis,
        &format!(
            "[redis]\nurl = \"{{redis}}\"\n[source]\nurl = \"postgres://app:hunter2@127.0.0.1:{}/tasks\"\n",
            closed_port()
        ),
    );
    let run = setup.warden(&["recover"]);
    assert_eq!(run.code, 6, "{}", run.stderr);
    assert!(
        run.stderr.contains("postgres://app:***@127.0.0.1"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("hunter2"));
    assert_eq!(run.stderr.trim().lines().count(), 1, "{}", run.stderr);
}

#[test]
fn a_missing_sqlite_file_is_not_created_and_exits_6() {
    let redis = RedisServer::start();
    let setup = Setup::sqlite(&redis, "");
    let run = setup.warden(&["recover"]);
    assert_eq!(run.code, 6, "{}", run.stderr);
    assert!(run.stderr.contains("tasks.db"), "{}", run.stderr);
    assert!(!setup.dir.path().join("tasks.db").exists());
}

#[test]
fn a_failing_source_leaves_redis_untouched() {
    let redis = RedisServer::start();
    let setup = Setup::sqlite(&redis, "");
    setup.sql(TASKS_TABLE_SQLITE);
    setup.sql("INSERT INTO inspection_tasks (id, name, cron) VALUES (1, 'x', '0 * * * *')");
    setup.recover();
    let before = redis.redis(&["ZRANGE", "bull:inspection:repeat", "0", "-1", "WITHSCORES"]);
    setup.sql("DROP TABLE inspection_tasks");
    let run = setup.warden(&["recover"]);
    assert_eq!(run.code, 6, "{}", run.stderr);
    assert!(run.stderr.contains("inspection_tasks"), "{}", run.stderr);
    assert_eq!(
        redis.redis(&["ZRANGE", "bull:inspection:repeat", "0", "-1", "WITHSCORES"]),
        before
    );
}

#[test]
fn the_seed_file_creates_a_new_sqlite_source_once() {
    let redis = RedisServer::start();
    let setup = Setup::new(
        &redis,
        &format!(
            "[redis]\nurl = \"{{redis}}\"\n[source]\nurl = \"sqlite://{{dir}}/demo.db\"\nsqlite_seed = \"{}\"\n",
            support::repo_path("examples/tasks.sql").display()
        ),
    );
    let (code, report) = setup.recover();
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["created"], 4);
    // The file exists now: changing the seed's target rows is the database's business.
    let (_, again) = setup.recover();
    assert_eq!(again["unchanged"], 4);
}
