//! The ACL file shipped in deploy/redis/, loaded by a redis-server of the
//! test's own with `--aclfile`: the default account cannot wipe or reconfigure
//! Redis, yet every command and the whole watcher work under it; the wider
//! account adds CONFIG for the full audit and auto-configuration.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::{RedisServer, Setup, Watcher, FAST_RECOVERY, FAST_WATCH, TASKS_TABLE_SQLITE};

const SECOND: Duration = Duration::from_secs(1);
const ACL_FILE: &str = "deploy/redis/bullmq-warden.acl";
const PASSWORD_PLACEHOLDER: &str = "CHANGE-ME-bullmq-warden-password";
const CONFIG_PASSWORD_PLACEHOLDER: &str = "CHANGE-ME-bullmq-warden-config-password";

fn shipped_acl() -> String {
    std::fs::read_to_string(support::repo_path(ACL_FILE)).expect("the shipped ACL file")
}

/// A redis-server that loads `acl` as its aclfile (kept across restarts),
/// with extra arguments.
fn redis_with_acl(acl: &str, extra: &[&str]) -> (tempfile::TempDir, RedisServer) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("users.acl");
    std::fs::write(&path, acl).expect("write the aclfile");
    let path = path.display().to_string();
    let mut args = vec!["--aclfile", path.as_str()];
    args.extend_from_slice(extra);
    (dir, RedisServer::start_with(&args))
}

/// The shipped file with the placeholders replaced, as an operator would.
fn acl_with_passwords(enable_config_user: bool) -> String {
    let acl = shipped_acl()
        .replace(PASSWORD_PLACEHOLDER, "acl-test-pass")
        .replace(CONFIG_PASSWORD_PLACEHOLDER, "acl-config-pass");
    match enable_config_user {
        true => acl.replace(
            "user bullmq-warden-config off ",
            "user bullmq-warden-config on ",
        ),
        false => acl,
    }
}

fn watched(redis: &RedisServer) -> Setup {
    let setup = Setup::sqlite(redis, &format!("{FAST_WATCH}[recovery]\n{FAST_RECOVERY}"));
    setup.sql(TASKS_TABLE_SQLITE);
    setup.sql(
        "INSERT INTO inspection_tasks (id, name, cron, every_ms, queue) VALUES
         (1, 'a', '0 * * * *', NULL, NULL), (2, 'b', NULL, 60000, NULL),
         (3, 'c', '0 0 * * MON', NULL, 'reports')",
    );
    setup
}

fn url_for(redis: &RedisServer, user: &str, password: &str) -> String {
    format!("redis://{user}:{password}@127.0.0.1:{}/0", redis.port())
}

/// The ACL log must hold no refusal at all: every denial would be a command
/// the warden needs and lacks.
fn assert_no_denials(redis: &RedisServer) {
    let log = redis.redis(&["ACL", "LOG"]);
    assert!(log.is_empty(), "ACL LOG: {log}");
}

fn findings(run: &support::Run) -> Vec<Value> {
    run.json()["findings"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[test]
fn the_default_account_cannot_wipe_or_reconfigure_redis() {
    let acl = shipped_acl();
    assert!(acl.contains(PASSWORD_PLACEHOLDER), "{acl}");
    assert!(
        acl.contains("user bullmq-warden-config off "),
        "the wider account ships disabled: {acl}"
    );
    // The file loads as it is.
    let (_dir, redis) = redis_with_acl(&acl, &[]);
    for command in [
        &["FLUSHALL"][..],
        &["FLUSHDB"],
        &["SWAPDB", "0", "1"],
        &["CONFIG", "SET", "maxmemory-policy", "allkeys-lru"],
        &["CONFIG", "GET", "requirepass"],
        &["CLIENT", "KILL", "ID", "1"],
        &["CLIENT", "PAUSE", "1000"],
        &["CLIENT", "LIST"],
        &["KEYS", "*"],
        &["DEBUG", "SLEEP", "0"],
        &["SHUTDOWN"],
        &["SCRIPT", "FLUSH"],
        &["FUNCTION", "FLUSH"],
        &["GET", "other-app:key"],
    ] {
        for user in ["bullmq-warden", "bullmq-warden-config"] {
            if user == "bullmq-warden-config" && command[0] == "CONFIG" {
                continue;
            }
            let mut args = vec!["ACL", "DRYRUN", user];
            args.extend_from_slice(command);
            let reply = redis.redis(&args);
            assert!(
                reply.contains("no permissions"),
                "{user} may run {command:?}: {reply}"
            );
        }
    }
    for (user, command) in [
        ("bullmq-warden", &["EVALSHA", "0", "0"][..]),
        (
            "bullmq-warden",
            &["SET", "bull:bullmq-warden:recovery-lease", "x"],
        ),
        ("bullmq-warden-config", &["CONFIG", "GET", "appendonly"]),
        (
            "bullmq-warden-config",
            &["CONFIG", "SET", "notify-keyspace-events", "Kgzxe"],
        ),
    ] {
        let mut args = vec!["ACL", "DRYRUN", user];
        args.extend_from_slice(command);
        assert_eq!(redis.redis(&args), "OK", "{user} {command:?}");
    }
}

#[test]
fn the_readme_quotes_the_shipped_acl_file() {
    let readme = std::fs::read_to_string(support::repo_path("README.md")).expect("README");
    for line in shipped_acl().lines().filter(|l| !l.trim().is_empty()) {
        assert!(readme.contains(line), "README lacks {line}");
    }
}

#[test]
fn the_whole_watcher_works_under_the_default_account() {
    let (_dir, mut redis) = redis_with_acl(
        &acl_with_passwords(false),
        &["--notify-keyspace-events", "Kgzxe"],
    );
    let setup = watched(&redis);
    let url = url_for(&redis, "bullmq-warden", "acl-test-pass");
    let env = [("BULLMQ_WARDEN__REDIS__URL", url.as_str())];
    let watcher = Watcher::start_env(&setup, &env);

    // Start-up recovery, then notifications found flowing without CONFIG.
    assert!(
        watcher.wait_for("recovery_finished", 1, 10 * SECOND),
        "{}",
        watcher.log()
    );
    assert_eq!(watcher.events("recovery_finished")[0]["created"], 3);
    assert!(watcher.wait_for("keyspace_notifications", 1, 10 * SECOND));
    let subscribed = &watcher.events("keyspace_notifications")[0];
    assert_eq!(subscribed["active"], true, "{}", watcher.log());
    let message = subscribed["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("probe key") && message.contains("flushes tracked"),
        "{message}"
    );

    // The subscription survived the pause around the start-up recovery's
    // writes: a deletion arrives as a keyspace notification.
    std::thread::sleep(Duration::from_millis(600));
    redis.redis(&["DEL", "bull:reports:repeat"]);
    assert!(
        support::wait_until(10 * SECOND, || watcher
            .events("detected")
            .iter()
            .any(|e| e["cause"] == "keyspace" && e["queue"] == "reports")),
        "{}",
        watcher.log()
    );
    assert!(watcher.wait_for("recovery_finished", 2, 10 * SECOND));
    // Resumed after that recovery too: both scheduler patterns and the probe's.
    assert!(support::wait_until(5 * SECOND, || redis
        .redis(&["PUBSUB", "NUMPAT"])
        == "3"));
    assert_eq!(redis.zcard("bull:reports:repeat"), 1);

    // A flush by someone else, restored.
    std::thread::sleep(Duration::from_millis(600));
    redis.redis(&["FLUSHALL"]);
    assert!(
        watcher.wait_for("recovery_finished", 3, 10 * SECOND),
        "{}",
        watcher.log()
    );
    assert_eq!(redis.zcard("bull:inspection:repeat"), 2);
    assert_eq!(watcher.count("recovery_failed"), 0, "{}", watcher.log());
    assert_no_denials(&redis);

    // A restart: the same aclfile, an empty dataset.
    std::thread::sleep(Duration::from_millis(600));
    redis.start_again();
    assert!(
        support::wait_until(15 * SECOND, || watcher
            .events("recovery_finished")
            .iter()
            .any(|e| e["trigger"] == "restart")),
        "{}",
        watcher.log()
    );
    assert!(
        support::wait_until(10 * SECOND, || redis.zcard("bull:inspection:repeat") == 2
            && redis.zcard("bull:reports:repeat") == 1),
        "{}",
        watcher.log()
    );
    assert!(
        support::wait_until(10 * SECOND, || watcher
            .events("keyspace_notifications")
            .iter()
            .filter(|e| e["active"] == true)
            .count()
            >= 2),
        "{}",
        watcher.log()
    );

    let run = setup.warden_env(&["recover", "--json"], &env);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert_eq!(run.json()["unchanged"], 3, "{}", run.stdout);
    let run = setup.warden_env(&["status", "--json"], &env);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.json()["queues"]["inspection"]["repeatable"], 2);
    let run = setup.warden_env(&["check", "--json"], &env);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let access = findings(&run)
        .into_iter()
        .find(|f| f["check"] == "config-access")
        .unwrap_or_default();
    assert_eq!(access["severity"], "warning", "{}", run.stdout);
    assert!(
        access["message"]
            .as_str()
            .is_some_and(|m| m.contains("not granted") && m.contains("save")),
        "{access}"
    );
    assert!(
        findings(&run).iter().any(|f| f["check"] == "persistence"),
        "INFO shows AOF off: {}",
        run.stdout
    );

    // While Redis was down, attempts failed for that reason alone.
    let refused: Vec<Value> = watcher
        .events("recovery_failed")
        .into_iter()
        .filter(|e| {
            !e["message"]
                .as_str()
                .is_some_and(|m| m.contains("does not answer"))
        })
        .collect();
    assert!(refused.is_empty(), "{refused:?}");
    let inactive: Vec<Value> = watcher
        .events("keyspace_notifications")
        .into_iter()
        .filter(|e| {
            e["active"] == false
                && e["message"]
                    .as_str()
                    .is_some_and(|m| !m.starts_with("keyspace subscription lost"))
        })
        .collect();
    assert!(inactive.is_empty(), "{inactive:?}");
    assert_no_denials(&redis);
}

#[test]
fn without_notification_flags_the_default_account_warns_once() {
    let (_dir, redis) = redis_with_acl(&acl_with_passwords(false), &[]);
    let setup = watched(&redis);
    let url = url_for(&redis, "bullmq-warden", "acl-test-pass");
    let env = [("BULLMQ_WARDEN__REDIS__URL", url.as_str())];
    let watcher = Watcher::start_env(&setup, &env);
    assert!(watcher.wait_for("keyspace_notifications", 1, 10 * SECOND));
    let reported = &watcher.events("keyspace_notifications")[0];
    assert_eq!(reported["active"], false, "{reported}");
    let message = reported["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("notify-keyspace-events Kgzxe") && message.contains("polling alone"),
        "{message}"
    );
    assert!(watcher.wait_for("recovery_finished", 1, 10 * SECOND));
    std::thread::sleep(SECOND);
    assert_eq!(
        watcher.count("keyspace_notifications"),
        1,
        "{}",
        watcher.log()
    );
    assert_no_denials(&redis);
}

#[test]
fn the_wider_account_audits_everything_and_sets_the_notification_flags() {
    let (_dir, redis) = redis_with_acl(&acl_with_passwords(true), &[]);
    let setup = watched(&redis);
    let url = url_for(&redis, "bullmq-warden-config", "acl-config-pass");
    let env = [("BULLMQ_WARDEN__REDIS__URL", url.as_str())];
    let watcher = Watcher::start_env(&setup, &env);
    assert!(watcher.wait_for("keyspace_notifications", 1, 10 * SECOND));
    let reported = &watcher.events("keyspace_notifications")[0];
    assert_eq!(reported["active"], true, "{reported}");
    assert!(
        reported["message"]
            .as_str()
            .is_some_and(|m| m.contains("set notify-keyspace-events")),
        "{reported}"
    );
    let flags = redis.redis(&["CONFIG", "GET", "notify-keyspace-events"]);
    for flag in ['K', 'g', 'z', 'x', 'e'] {
        assert!(
            flags.lines().nth(1).unwrap_or_default().contains(flag),
            "{flags}"
        );
    }
    assert!(watcher.wait_for("recovery_finished", 1, 10 * SECOND));

    let run = setup.warden_env(&["check", "--json"], &env);
    let checks: Vec<Value> = findings(&run).iter().map(|f| f["check"].clone()).collect();
    assert!(!checks.contains(&"config-access".into()), "{}", run.stdout);
    // The full audit: the save schedule is read, so no persistence means an error.
    assert_eq!(run.code, 4, "{}", run.stdout);
    assert!(
        findings(&run)
            .iter()
            .any(|f| f["check"] == "persistence" && f["severity"] == "error"),
        "{}",
        run.stdout
    );
    assert_eq!(watcher.count("recovery_failed"), 0, "{}", watcher.log());
    assert_no_denials(&redis);
}

/// BullMQ's scripts run under the caller's ACL, command by command: every
/// command that any script of the pinned `bullmq-official` calls must be
/// granted, or a recovery fails half-way with NOPERM on some rarer path.
#[test]
fn every_command_of_bullmqs_scripts_is_granted() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // Only the packages this platform builds are downloaded: without the
    // filter, cargo wants every target's dependencies, offline too.
    let rustc = std::process::Command::new("rustc")
        .arg("-vV")
        .output()
        .expect("rustc -vV");
    let host = String::from_utf8_lossy(&rustc.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_owned))
        .expect("rustc names its host");
    let output = std::process::Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--offline"])
        .args(["--filter-platform", &host])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata");
    let metadata: Value = serde_json::from_slice(&output.stdout).expect("metadata JSON");
    let manifest = metadata["packages"]
        .as_array()
        .and_then(|packages| packages.iter().find(|p| p["name"] == "bullmq-official"))
        .and_then(|p| p["manifest_path"].as_str())
        .expect("bullmq-official among the packages");
    let commands = std::path::Path::new(manifest).with_file_name("src/commands");
    let acl = shipped_acl();
    let default_user = acl
        .lines()
        .find(|l| l.starts_with("user bullmq-warden "))
        .expect("the default account");
    let granted: Vec<&str> = default_user
        .split_whitespace()
        .filter_map(|w| w.strip_prefix('+'))
        .collect();
    let mut scripts = 0;
    for entry in std::fs::read_dir(&commands).expect("BullMQ's Lua scripts") {
        let path = entry.expect("script").path();
        if path.extension().is_none_or(|e| e != "lua") {
            continue;
        }
        scripts += 1;
        let text = std::fs::read_to_string(&path).expect("script text");
        let calls = text.split("rcall(").skip(1);
        for call in calls.chain(text.split("redis.call(").skip(1)) {
            let quoted = call.trim_start();
            let Some(quote) = quoted.chars().next().filter(|c| *c == '"' || *c == '\'') else {
                continue;
            };
            let name = quoted[1..].split(quote).next().unwrap_or_default();
            assert!(
                granted.contains(&name.to_lowercase().as_str()),
                "{} calls {name}, which {ACL_FILE} does not grant",
                path.display()
            );
        }
    }
    assert!(
        scripts > 30,
        "found only {scripts} scripts in {}",
        commands.display()
    );
}

/// Journal mode under the default account: recording, a removal told by its
/// keyspace evidence (read atomically with a script, as the account has no
/// MULTI), and a restore after a flush, without a single refusal.
#[test]
fn journal_mode_works_under_the_default_account() {
    let (_dir, redis) = redis_with_acl(
        &acl_with_passwords(false),
        &["--notify-keyspace-events", "Kgzxe"],
    );
    let setup = Setup::new(
        &redis,
        &format!(
            "[redis]\nurl = \"{{redis}}\"\n[source]\nurl = \"journal://{{dir}}/journal.db\"\n\
             [recovery]\n{FAST_RECOVERY}{FAST_WATCH}"
        ),
    );
    let url = url_for(&redis, "bullmq-warden", "acl-test-pass");
    let watcher = Watcher::start_env(&setup, &[("BULLMQ_WARDEN__REDIS__URL", url.as_str())]);
    assert!(
        watcher.wait_for("source_up", 1, 10 * SECOND),
        "{}",
        watcher.log()
    );
    let schedulers = serde_json::json!([
        {"id": "a", "name": "a", "repeat": {"pattern": "0 1 * * *"}},
        {"id": "b", "name": "b", "repeat": {"pattern": "0 2 * * *"}}
    ]);
    // The application uses the default user, which the file leaves open.
    support::node(
        6,
        "upsert-schedulers",
        &redis,
        "app",
        &[],
        Some(&schedulers),
    );
    let recorded = |change: &str| -> u64 {
        watcher
            .events("journal_recorded")
            .iter()
            .filter_map(|e| e[change].as_u64())
            .sum()
    };
    assert!(
        support::wait_until(10 * SECOND, || recorded("recorded") == 2),
        "{}",
        watcher.log()
    );
    support::node(6, "remove-scheduler", &redis, "app", &["--id", "b"], None);
    assert!(
        support::wait_until(10 * SECOND, || recorded("removed") == 1),
        "{}",
        watcher.log()
    );
    std::thread::sleep(Duration::from_millis(600));
    redis.redis(&["FLUSHALL"]);
    assert!(
        support::wait_until(10 * SECOND, || redis.zmembers("bull:app:repeat") == ["a"]),
        "{}",
        watcher.log()
    );
    assert_eq!(watcher.count("journal_failed"), 0, "{}", watcher.log());
    assert_no_denials(&redis);
}
