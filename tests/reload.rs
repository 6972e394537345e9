//! Config reload without a restart: a changed config file or SIGHUP puts the
//! live keys in force, names the keys that need a restart, and a file that
//! does not validate leaves the running config in force.

mod support;

use std::time::Duration;

use support::{RedisServer, Setup, Watcher, FAST_RECOVERY, TASKS_TABLE_SQLITE};

const SECOND: Duration = Duration::from_secs(1);

/// Where the watcher runs: its temp dir and its HTTP address.
struct Place {
    dir: String,
    listen: String,
}

fn config(redis: &RedisServer, at: &Place, source: &str, recovery: &str) -> String {
    format!(
        "[redis]\nurl = \"{}\"\n[source]\nurl = \"sqlite://{}/tasks.db\"\n{source}\
         [watch]\ninfo_interval = \"200ms\"\ndrift_interval = \"1h\"\ndebounce_quiet = \"200ms\"\n\
         [http]\nlisten = \"{}\"\n[recovery]\n{FAST_RECOVERY}{recovery}",
        redis.url(),
        at.dir,
        at.listen
    )
}

/// `bullmq_warden_config_last_reload_successful` as served now.
fn reload_successful(at: &Place) -> Option<String> {
    let text = support::http("GET", &format!("http://{}/metrics", at.listen), &[]).1;
    text.lines()
        .find_map(|l| l.strip_prefix("bullmq_warden_config_last_reload_successful "))
        .map(str::to_owned)
}

/// A watcher over two rows without a queue column value, so they go to
/// `[source] queue`, once it has restored them.
fn watcher(redis: &RedisServer) -> (Setup, Watcher, Place) {
    let setup = Setup::sqlite(redis, "");
    let at = Place {
        dir: setup.dir.path().display().to_string(),
        listen: support::free_local_addr(),
    };
    std::fs::write(&setup.config_path, config(redis, &at, "", "")).unwrap();
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
    (setup, watcher, at)
}

#[test]
fn a_changed_file_puts_live_keys_in_force_without_a_restart() {
    let redis = RedisServer::start();
    let (setup, mut watcher, at) = watcher(&redis);
    std::fs::write(
        &setup.config_path,
        config(&redis, &at, "queue = \"reports\"\n", ""),
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
    let (setup, mut watcher, at) = watcher(&redis);

    // concurrency 0 does not validate: nothing of this file takes effect.
    std::fs::write(
        &setup.config_path,
        config(&redis, &at, "queue = \"reports\"\n", "concurrency = 0\n"),
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
    assert_eq!(reload_successful(&at).as_deref(), Some("0"));
    assert_eq!(watcher.count("config_reloaded"), 0, "{}", watcher.log());

    // A key read only at start is reported, not applied; SIGHUP re-reads.
    let restart_only = config(&redis, &at, "", "").replace("200ms", "300ms");
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
    assert_eq!(reload_successful(&at).as_deref(), Some("1"));

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

/// The config named by `BULLMQ_WARDEN_CONFIG` (not `--config`) with the
/// listen address from `watch --listen`: SIGHUP reads them the same way as
/// the start did, so an unchanged file changes nothing.
#[test]
fn sighup_rereads_the_file_named_in_the_environment_and_keeps_the_listen_flag() {
    let redis = RedisServer::start();
    let setup = Setup::sqlite(&redis, "");
    let at = Place {
        dir: setup.dir.path().display().to_string(),
        listen: "127.0.0.1:0".into(),
    };
    std::fs::write(&setup.config_path, config(&redis, &at, "", "")).unwrap();
    setup.sql(TASKS_TABLE_SQLITE);
    let listen = support::free_local_addr();
    let log = setup.dir.path().join("watch.log");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_bullmq-warden"))
        .args(["--log-format", "json", "watch", "--listen", &listen])
        .env("BULLMQ_WARDEN_CONFIG", &setup.config_path)
        .env("RUST_LOG", "info")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let events = |name: &str| -> Vec<serde_json::Value> {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(|event| event["event"] == name)
            .collect()
    };
    let ready = support::wait_until(10 * SECOND, || {
        support::http("GET", &format!("http://{listen}/readyz"), &[]).0 == 200
    });
    let _ = std::process::Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status();
    let reloaded = support::wait_until(10 * SECOND, || !events("config_reloaded").is_empty());
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(ready && reloaded, "{text}");
    let event = &events("config_reloaded")[0];
    for field in ["applied", "needs_restart"] {
        let keys = event[field].as_str().unwrap_or_default();
        assert!(keys.is_empty(), "nothing changed, yet {field}: {event}");
    }
}
