//! Config reload without a restart: a changed config file or SIGHUP puts the
//! live keys in force, names the keys that need a restart, and a file that
//! does not validate leaves the running config in force.

mod support;

use std::time::Duration;

use support::{RedisServer, Setup, Watcher, FAST_RECOVERY, TASKS_TABLE_SQLITE};

const SECOND: Duration = Duration::from_secs(1);

fn config(redis: &RedisServer, setup_dir: &str, source: &str, recovery: &str) -> String {
    format!(
        "[redis]\nurl = \"{}\"\n[source]\nurl = \"sqlite://{setup_dir}/tasks.db\"\n{source}\
         [watch]\ninfo_interval = \"200ms\"\ndrift_interval = \"1h\"\ndebounce_quiet = \"200ms\"\n\
         [http]\nlisten = \"\"\n[recovery]\n{FAST_RECOVERY}{recovery}",
        redis.url()
    )
}

/// A watcher over two rows without a queue column value, so they go to
/// `[source] queue`, once it has restored them.
fn watcher(redis: &RedisServer) -> (Setup, Watcher, String) {
    let setup = Setup::sqlite(redis, "");
    let dir = setup.dir.path().display().to_string();
    std::fs::write(&setup.config_path, config(redis, &dir, "", "")).unwrap();
    setup.sql(TASKS_TABLE_SQLITE);
    setup.sql(
        "INSERT INTO inspection_tasks (id, name, cron) VALUES
         (1, 'a', '0 * * * *'), (2, 'b', '0 3 * * *');",
    );
    let watcher = Watcher::start(&setup);
    assert!(
        support::wait_until(10 * SECOND, || redis.zcard("bull:inspection:repeat") == 2),
        "{}",
        watcher.log()
    );
    (setup, watcher, dir)
}

#[test]
fn a_changed_file_puts_live_keys_in_force_without_a_restart() {
    let redis = RedisServer::start();
    let (setup, mut watcher, dir) = watcher(&redis);
    std::fs::write(
        &setup.config_path,
        config(&redis, &dir, "queue = \"reports\"\n", ""),
    )
    .unwrap();
    assert!(
        support::wait_until(15 * SECOND, || redis.zcard("bull:reports:repeat") == 2),
        "the rows did not move to the new default queue: the reload did not take effect\n{}",
        watcher.log()
    );
    let reloaded = watcher.events("config_reloaded");
    assert_eq!(reloaded.len(), 1, "{}", watcher.log());
    assert_eq!(reloaded[0]["trigger"], "file changed");
    assert_eq!(reloaded[0]["applied"], "source.queue");
    assert!(watcher.is_running());
}

#[test]
fn an_invalid_file_keeps_the_running_config_and_sighup_reloads() {
    let redis = RedisServer::start();
    let (setup, mut watcher, dir) = watcher(&redis);

    // concurrency 0 does not validate: nothing of this file takes effect.
    std::fs::write(
        &setup.config_path,
        config(&redis, &dir, "queue = \"reports\"\n", "concurrency = 0\n"),
    )
    .unwrap();
    assert!(
        watcher.wait_for("config_reload_failed", 1, 10 * SECOND),
        "{}",
        watcher.log()
    );
    let failed = &watcher.events("config_reload_failed")[0];
    let message = failed["message"].as_str().unwrap_or_default();
    assert!(message.contains("recovery.concurrency"), "{failed}");
    assert!(message.contains("running config stays"), "{failed}");
    std::thread::sleep(2 * SECOND);
    assert_eq!(
        redis.zcard("bull:reports:repeat"),
        0,
        "the invalid file took effect"
    );
    assert_eq!(watcher.count("config_reloaded"), 0, "{}", watcher.log());

    // A key read only at start is reported, not applied; SIGHUP re-reads.
    let restart_only = config(&redis, &dir, "", "").replace("200ms", "300ms");
    std::fs::write(&setup.config_path, &restart_only).unwrap();
    assert!(
        watcher.wait_for("config_reloaded", 1, 10 * SECOND),
        "{}",
        watcher.log()
    );
    let reloaded = &watcher.events("config_reloaded")[0];
    assert_eq!(
        reloaded["needs_restart"], "watch.info_interval",
        "{reloaded}"
    );
    assert_eq!(reloaded["applied"], "watch.debounce_quiet", "{reloaded}");

    watcher.signal("HUP");
    assert!(
        watcher.wait_for("config_reloaded", 2, 10 * SECOND),
        "{}",
        watcher.log()
    );
    let again = &watcher.events("config_reloaded")[1];
    assert_eq!(again["trigger"], "SIGHUP", "{again}");
    assert!(watcher.is_running(), "SIGHUP must not stop the watcher");
}
