//! What an operator sees at the console: error texts, log lines and their
//! colours, exit codes and `check`'s verdicts, against real servers and the
//! real binary.

mod support;

use std::process::{Command, Output};
use std::time::Duration;

use support::{
    free_local_addr, http, RedisServer, Run, Setup, Watcher, FAST_WATCH, TASKS_TABLE_SQLITE,
};

const SECOND: Duration = Duration::from_secs(1);

/// The binary without `--config`, in `dir`, with `env` and nothing inherited
/// that names a config or sets the log format.
fn bare(dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_bullmq-warden"));
    command
        .current_dir(dir)
        .args(args)
        .env_remove("BULLMQ_WARDEN_CONFIG")
        .env_remove("BULLMQ_WARDEN_LOG_FORMAT")
        .env_remove("NO_COLOR")
        .env_remove("RUST_LOG")
        .envs(env.iter().copied());
    command
}

fn closed_redis_url() -> String {
    format!("redis://{}/0", free_local_addr())
}

fn stderr_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn a_query_without_the_required_columns_says_which_once() {
    let redis = RedisServer::start();
    let setup = Setup::sqlite(&redis, "query = \"SELECT task_id, expr, lane FROM jobs\"\n");
    setup.sql(
        "CREATE TABLE jobs (task_id TEXT, expr TEXT, lane TEXT);
         INSERT INTO jobs VALUES ('a', '* * * * *', 'q'), ('b', '0 * * * *', 'q'), ('c', '0 0 * * *', 'q');",
    );
    let run = setup.warden(&["recover"]);
    assert_eq!(run.code, 6, "{}{}", run.stdout, run.stderr);
    let line = run.stderr.trim();
    assert_eq!(line.lines().count(), 1, "{line}");
    assert!(
        line.contains("lacks the required columns id and pattern, cron or every_ms"),
        "{line}"
    );
    assert!(line.contains("(found: task_id, expr, lane)"), "{line}");
    assert!(run.stdout.is_empty(), "{}", run.stdout);
    assert_eq!(redis.zcard("bull:q:repeat"), 0);

    let setup = Setup::sqlite(
        &redis,
        "query = \"SELECT task_id AS id, expr AS cron, lane AS queue FROM jobs\"\n",
    );
    setup.sql(
        "CREATE TABLE jobs (task_id TEXT, expr TEXT, lane TEXT);
         INSERT INTO jobs VALUES ('a', '* * * * *', 'q');",
    );
    let run = setup.warden(&["recover"]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
}

#[test]
fn errors_from_environment_overrides_name_the_variable() {
    let redis = RedisServer::start();
    let setup = Setup::sqlite(&redis, "");
    setup.sql(TASKS_TABLE_SQLITE);
    for (var, value, says) in [
        ("BULLMQ_WARDEN__WATCH__DRIFT_INTERVAL", "30", "invalid type"),
        (
            "BULLMQ_WARDEN__WATCH__DRIFT_INTERVAL",
            "10ms",
            "(config key watch.drift_interval): must be at least 50ms",
        ),
        ("BULLMQ_WARDEN__REDIS__PREFIXX", "b", "prefixx"),
    ] {
        let run = setup.warden_env(&["status"], &[(var, value)]);
        assert_eq!(run.code, 2, "{var}={value}: {}", run.stderr);
        let line = run.stderr.trim();
        assert_eq!(line.lines().count(), 1, "{line}");
        assert!(
            line.starts_with(&format!("bullmq-warden: environment variable {var}")),
            "{var}={value}: {line}"
        );
        assert!(line.contains(says), "{var}={value}: {line}");
        assert!(!line.contains("warden.toml"), "{var}={value}: {line}");
    }
    // The file is still blamed for what is wrong in the file.
    let broken = Setup::new(&redis, "[watch]\ndrift_interval = 30\n");
    let run = broken.warden_env(&["status"], &[("BULLMQ_WARDEN__REDIS__PREFIX", "bull")]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("warden.toml"), "{}", run.stderr);
}

#[test]
fn an_empty_override_counts_as_unset() {
    let redis = RedisServer::start();
    let setup = Setup::sqlite(&redis, FAST_WATCH);
    setup.sql(TASKS_TABLE_SQLITE);
    let run = setup.warden_env(
        &["status"],
        &[
            ("BULLMQ_WARDEN__REDIS__URL", ""),
            ("BULLMQ_WARDEN__RECOVERY__CONCURRENCY", ""),
        ],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let mut watcher = Watcher::start_env(&setup, &[("BULLMQ_WARDEN__HTTP__TOKEN_FILE", "")]);
    assert!(
        watcher.wait_for("watch_started", 1, 10 * SECOND),
        "{}",
        watcher.log()
    );
    assert_eq!(watcher.terminate(), Some(0), "{}", watcher.log());
}

#[test]
fn without_a_config_file_one_line_says_defaults_are_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let url = closed_redis_url();
    let env = [("BULLMQ_WARDEN__REDIS__URL", url.as_str())];
    let output = bare(dir.path(), &["status"], &env).output().unwrap();
    let stderr = stderr_of(&output);
    let notes: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("built-in defaults"))
        .collect();
    assert_eq!(notes.len(), 1, "{stderr}");
    for part in ["no config file", "--config FILE", "BULLMQ_WARDEN_CONFIG"] {
        assert!(notes[0].contains(part), "{stderr}");
    }
    // An empty BULLMQ_WARDEN_CONFIG names no file either.
    let output = bare(dir.path(), &["status"], &env)
        .env("BULLMQ_WARDEN_CONFIG", "")
        .output()
        .unwrap();
    assert!(stderr_of(&output).contains("built-in defaults"));

    let redis = RedisServer::start();
    let setup = Setup::sqlite(&redis, "");
    setup.sql(TASKS_TABLE_SQLITE);
    let run = setup.warden_env(&["status"], &[("RUST_LOG", "info")]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(!run.stderr.contains("built-in defaults"), "{}", run.stderr);
}

/// Runs `command` on a pseudo-terminal (util-linux `script`); its output.
fn on_a_terminal(dir: &std::path::Path, command: &str, env: &[(&str, &str)]) -> String {
    let output = Command::new("script")
        .args(["-qec", command, "/dev/null"])
        .current_dir(dir)
        .env_remove("NO_COLOR")
        .env_remove("BULLMQ_WARDEN_CONFIG")
        .env_remove("BULLMQ_WARDEN_LOG_FORMAT")
        .env_remove("RUST_LOG")
        .envs(env.iter().copied())
        .output()
        .expect("script (util-linux) runs a command on a pseudo-terminal");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn plain_logs_are_coloured_only_on_a_terminal_and_never_with_no_color() {
    let dir = tempfile::tempdir().unwrap();
    let url = closed_redis_url();
    let env = [("BULLMQ_WARDEN__REDIS__URL", url.as_str())];
    let piped = bare(dir.path(), &["status"], &env).output().unwrap();
    let piped = stderr_of(&piped);
    assert!(piped.contains("built-in defaults"), "{piped}");
    assert!(!piped.contains('\x1b'), "{piped:?}");

    let command = format!("{} status", env!("CARGO_BIN_EXE_bullmq-warden"));
    let tty = on_a_terminal(dir.path(), &command, &env);
    assert!(tty.contains("built-in defaults"), "{tty:?}");
    assert!(tty.contains("\x1b["), "{tty:?}");
    let no_color = on_a_terminal(dir.path(), &command, &[env[0], ("NO_COLOR", "1")]);
    assert!(no_color.contains("built-in defaults"), "{no_color:?}");
    assert!(!no_color.contains('\x1b'), "{no_color:?}");
}

#[test]
fn log_format_and_listen_come_from_the_environment_too() {
    let dir = tempfile::tempdir().unwrap();
    let url = closed_redis_url();
    let output = bare(
        dir.path(),
        &["status"],
        &[
            ("BULLMQ_WARDEN__REDIS__URL", url.as_str()),
            ("BULLMQ_WARDEN_LOG_FORMAT", "json"),
        ],
    )
    .output()
    .unwrap();
    let stderr = stderr_of(&output);
    let first: serde_json::Value = serde_json::from_str(stderr.lines().next().unwrap_or(""))
        .unwrap_or_else(|e| panic!("{e}: {stderr}"));
    assert_eq!(first["event"], "config_defaults", "{stderr}");

    let redis = RedisServer::start();
    // FAST_WATCH serves nothing (`listen = ""`); the flag and the variable do.
    let setup = Setup::sqlite(&redis, FAST_WATCH);
    setup.sql(TASKS_TABLE_SQLITE);
    for how in ["flag", "env"] {
        let addr = free_local_addr();
        let mut child = Command::new(env!("CARGO_BIN_EXE_bullmq-warden"));
        child
            .arg("--config")
            .arg(&setup.config_path)
            .arg("watch")
            .env_remove("BULLMQ_WARDEN_CONFIG")
            .stderr(std::process::Stdio::null());
        match how {
            "flag" => child.args(["--listen", &addr]),
            _ => child.env("BULLMQ_WARDEN_LISTEN", &addr),
        };
        let mut child = child.spawn().unwrap();
        let served = support::wait_until(10 * SECOND, || {
            http("GET", &format!("http://{addr}/healthz"), &[]).0 == 200
        });
        let _ = child.kill();
        let _ = child.wait();
        assert!(served, "{how}: nothing served on {addr}");
    }
    let run = setup.warden(&["watch", "--listen", "nowhere"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("--listen"), "{}", run.stderr);
}

#[test]
fn a_listen_address_in_use_exits_8() {
    let redis = RedisServer::start();
    let setup = Setup::sqlite(&redis, FAST_WATCH);
    setup.sql(TASKS_TABLE_SQLITE);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let run: Run = setup.warden_env(&["watch"], &[("BULLMQ_WARDEN__HTTP__LISTEN", &addr)]);
    assert_eq!(run.code, 8, "{}", run.stderr);
    assert!(run.stderr.contains(&addr), "{}", run.stderr);
    let help = bare(std::path::Path::new("."), &["--help"], &[])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("8 watch could not start"), "{help}");
}

#[test]
fn check_prints_what_is_fine_too() {
    let redis = RedisServer::start_with(&["--appendonly", "yes"]);
    let setup = Setup::sqlite(&redis, "");
    setup.sql(TASKS_TABLE_SQLITE);
    let run = setup.warden(&["check"]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    for (check, says) in [
        ("redis-version", "Redis"),
        ("redis", "answers"),
        ("persistence", "AOF is on"),
        ("appendfsync", "appendfsync everysec"),
        ("eviction-policy", "noeviction"),
        ("source", "0 valid rows, 0 invalid"),
        ("drift", "schedulers in place"),
        ("invalid-row", "every row is valid"),
        ("orphans", "no scheduler"),
        ("legacy-repeatable", "no legacy"),
    ] {
        assert!(
            run.stdout
                .lines()
                .any(|l| l.starts_with("ok ") && l.contains(check) && l.contains(says)),
            "{check}: {}",
            run.stdout
        );
    }
    let run = setup.warden(&["check", "--json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let findings = run.json()["findings"].as_array().unwrap().clone();
    let fine: Vec<&str> = findings
        .iter()
        .filter(|f| f["severity"] == "info")
        .filter_map(|f| f["check"].as_str())
        .collect();
    for check in ["redis", "persistence", "eviction-policy", "source"] {
        assert!(fine.contains(&check), "{check}: {findings:?}");
    }
}

/// A watcher over `setup` that serves /metrics on a free address.
fn serving(setup: &Setup) -> (Watcher, String) {
    let addr = free_local_addr();
    let watcher = Watcher::start_env(setup, &[("BULLMQ_WARDEN__HTTP__LISTEN", addr.as_str())]);
    (watcher, format!("http://{addr}/metrics"))
}

/// The value of the series `series` (name with labels, as exported).
fn sample(metrics_url: &str, series: &str) -> Option<f64> {
    let (_, text) = http("GET", metrics_url, &[]);
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn an_invalid_row_is_logged_once_per_reason() {
    let redis = RedisServer::start();
    let setup = Setup::sqlite(&redis, FAST_WATCH);
    setup.sql(TASKS_TABLE_SQLITE);
    setup.sql(
        "INSERT INTO inspection_tasks (id, name, cron, queue) VALUES
         (1, 'fine', '0 * * * *', NULL), (2, 'broken', '61 * * * *', 'reports');",
    );
    let watcher = Watcher::start(&setup);
    // Each comparison logs source_up; the first comes from the start-up check.
    assert!(
        watcher.wait_for("source_up", 4, 20 * SECOND),
        "{}",
        watcher.log()
    );
    let invalid = watcher.events("row_invalid");
    assert_eq!(invalid.len(), 1, "{invalid:?}");
    assert_eq!(invalid[0]["id"], "2");
    assert_eq!(invalid[0]["queue"], "reports");
    let reason = invalid[0]["message"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("cron pattern \"61 * * * *\": "),
        "{reason}"
    );
    assert_eq!(reason.matches("61 * * * *").count(), 1, "{reason}");

    setup.sql("UPDATE inspection_tasks SET cron = '0 0 * * * * *' WHERE id = 2;");
    assert!(
        watcher.wait_for("row_invalid", 2, 10 * SECOND),
        "{}",
        watcher.log()
    );
    let changed = &watcher.events("row_invalid")[1];
    assert!(
        changed["message"]
            .as_str()
            .is_some_and(|m| m.contains("7 fields")),
        "{changed}"
    );
    let seen = watcher.count("source_up");
    assert!(watcher.wait_for("source_up", seen + 2, 10 * SECOND));
    assert_eq!(watcher.count("row_invalid"), 2, "{}", watcher.log());
}

#[test]
fn a_redis_without_persistence_is_logged_when_it_starts_and_ends() {
    let redis = RedisServer::start();
    // Settings are read every drift interval: 2 s here.
    let setup = Setup::sqlite(&redis, FAST_WATCH);
    setup.sql(TASKS_TABLE_SQLITE);
    let watcher = Watcher::start(&setup);
    assert!(
        watcher.wait_for("source_up", 4, 20 * SECOND),
        "{}",
        watcher.log()
    );
    let conditions = watcher.events("redis_condition");
    assert_eq!(conditions.len(), 1, "{conditions:?}");
    assert_eq!(conditions[0]["condition"], "no_persistence");
    assert_eq!(conditions[0]["holds"], true);
    assert_eq!(conditions[0]["level"], "WARN");

    redis.redis(&["CONFIG", "SET", "appendonly", "yes"]);
    assert!(
        watcher.wait_for("redis_condition", 2, 10 * SECOND),
        "{}",
        watcher.log()
    );
    let ended = &watcher.events("redis_condition")[1];
    assert_eq!(ended["condition"], "no_persistence");
    assert_eq!(ended["holds"], false);
    let seen = watcher.count("source_up");
    assert!(watcher.wait_for("source_up", seen + 2, 10 * SECOND));
    assert_eq!(watcher.count("redis_condition"), 2, "{}", watcher.log());
}

#[test]
fn one_flushall_counts_one_flush_and_a_start_counts_a_startup_detection() {
    let redis = RedisServer::start();
    let setup = Setup::sqlite(&redis, FAST_WATCH);
    setup.sql(TASKS_TABLE_SQLITE);
    setup.sql(
        "INSERT INTO inspection_tasks (id, name, cron, queue) VALUES
         (1, 'a', '0 * * * *', NULL), (2, 'b', '0 0 * * *', 'reports');",
    );
    let (watcher, metrics) = serving(&setup);
    assert!(
        watcher.wait_for("recovery_finished", 1, 10 * SECOND),
        "{}",
        watcher.log()
    );
    let startup = "bullmq_warden_detections_total{cause=\"startup\"}";
    assert_eq!(sample(&metrics, startup), Some(1.0));
    // Let the poll see both filled sets before they are flushed.
    std::thread::sleep(Duration::from_millis(600));
    redis.redis(&["FLUSHALL"]);
    assert!(
        watcher.wait_for("recovery_finished", 2, 10 * SECOND),
        "{}",
        watcher.log()
    );
    assert_eq!(redis.zcard("bull:inspection:repeat"), 1);
    assert_eq!(redis.zcard("bull:reports:repeat"), 1);
    assert_eq!(
        sample(&metrics, "bullmq_warden_redis_flushes_total"),
        Some(1.0)
    );
    assert_eq!(
        sample(&metrics, "bullmq_warden_detections_total{cause=\"flush\"}"),
        Some(1.0)
    );
    assert_eq!(sample(&metrics, startup), Some(1.0));
    assert_eq!(
        sample(&metrics, "bullmq_warden_detections_total{cause=\"manual\"}"),
        None
    );
}
