//! The least-privilege ACL line in the README is enough for every command.

mod support;

use std::time::Duration;

use support::{RedisServer, Setup, Watcher, FAST_RECOVERY, FAST_WATCH, TASKS_TABLE_SQLITE};

fn readme_acl_line() -> Vec<String> {
    let readme = std::fs::read_to_string(support::repo_path("README.md")).unwrap();
    let line = readme
        .lines()
        .find(|l| l.starts_with("ACL SETUSER bullmq-warden"))
        .expect("README has the ACL line");
    line.split_whitespace()
        .map(|word| word.replace(">CHANGE-ME", ">acl-test-pass"))
        .collect()
}

#[test]
fn the_readme_acl_user_can_recover_report_and_watch() {
    let redis = RedisServer::start();
    let args = readme_acl_line();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_eq!(redis.redis(&args), "OK");
    let setup = Setup::sqlite(&redis, &format!("{FAST_WATCH}[recovery]\n{FAST_RECOVERY}"));
    setup.sql(TASKS_TABLE_SQLITE);
    setup.sql(
        "INSERT INTO inspection_tasks (id, name, cron, every_ms) VALUES (1, 'a', '0 * * * *', NULL), (2, 'b', NULL, 1000)",
    );
    let url = format!(
        "redis://bullmq-warden:acl-test-pass@127.0.0.1:{}/0",
        redis.port()
    );
    let env = [("BULLMQ_WARDEN__REDIS__URL", url.as_str())];

    let run = setup.warden_env(&["recover", "--json"], &env);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert_eq!(run.json()["created"], 2);
    let run = setup.warden_env(&["status", "--json"], &env);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let run = setup.warden_env(&["check"], &env);
    assert!(!run.stdout.contains("config-access"), "{}", run.stdout);

    let watcher = Watcher::start_env(&setup, &env);
    assert!(watcher.wait_for("keyspace_notifications", 1, Duration::from_secs(10)));
    let subscribed = &watcher.events("keyspace_notifications")[0];
    assert_eq!(subscribed["active"], true, "{}", watcher.log());
    assert!(
        subscribed["message"]
            .as_str()
            .is_some_and(|m| m.contains("flushes tracked")),
        "{subscribed}"
    );
    std::thread::sleep(Duration::from_millis(600));
    redis.redis(&["DEL", "bull:inspection:repeat"]);
    assert!(
        watcher.wait_for("recovery_finished", 1, Duration::from_secs(10)),
        "{}",
        watcher.log()
    );
    assert_eq!(redis.zcard("bull:inspection:repeat"), 2);
    assert_eq!(watcher.count("recovery_failed"), 0, "{}", watcher.log());
}
