//! `watch` against real redis-server processes that the tests start, kill,
//! flush and restart, with a real SQLite source and real Node BullMQ.

mod support;

use std::time::Duration;

use serde_json::json;
use support::{node, RedisServer, Setup, Watcher, FAST_RECOVERY, FAST_WATCH, TASKS_TABLE_SQLITE};

const SECOND: Duration = Duration::from_secs(1);

fn watched(redis: &RedisServer, recovery_extra: &str) -> Setup {
    let setup = Setup::sqlite(
        redis,
        &format!("{FAST_WATCH}[recovery]\n{FAST_RECOVERY}{recovery_extra}"),
    );
    setup.sql(TASKS_TABLE_SQLITE);
    setup.sql(
        "INSERT INTO inspection_tasks (id, name, cron, every_ms, queue) VALUES
         (1, 'minutely', '0 * * * * *', NULL, NULL),
         (2, 'nightly', '0 30 2 * * *', NULL, NULL),
         (3, 'beat', NULL, 60000, NULL),
         (4, 'report', '0 0 * * MON', NULL, 'reports');",
    );
    setup
}

fn schedulers(redis: &RedisServer) -> usize {
    (redis.zcard("bull:inspection:repeat") + redis.zcard("bull:reports:repeat")) as usize
}

/// Starts a watcher and waits until its start-up recovery is done.
fn started(setup: &Setup, redis: &RedisServer) -> Watcher {
    started_env(setup, redis, &[])
}

/// `started`, with environment overrides of the configuration.
fn started_env(setup: &Setup, redis: &RedisServer, env: &[(&str, &str)]) -> Watcher {
    let watcher = Watcher::start_env(setup, env);
    assert!(
        watcher.wait_for("recovery_finished", 1, 10 * SECOND),
        "start-up recovery: {}",
        watcher.log()
    );
    assert_eq!(schedulers(redis), 4);
    // Let the poll see the restored sets, as it would long before any real loss.
    std::thread::sleep(Duration::from_millis(600));
    watcher
}

/// The watcher reported a loss of `queue` with `cause`.
fn assert_detected(watcher: &Watcher, cause: &str, queue: &str) {
    let detected = watcher.events("detected");
    assert!(
        detected
            .iter()
            .any(|e| e["cause"] == cause && e["queue"] == queue),
        "{detected:?}"
    );
}

/// Each scheduler has exactly one job for its next run: no duplicates.
fn assert_one_next_job_each(redis: &RedisServer) {
    for (queue, ids) in [
        (
            "inspection",
            vec!["inspection:1", "inspection:2", "inspection:3"],
        ),
        ("reports", vec!["inspection:4"]),
    ] {
        for id in ids {
            let jobs = redis.redis(&["KEYS", &format!("bull:{queue}:repeat:{id}:*")]);
            let count = jobs.lines().filter(|l| !l.is_empty()).count();
            assert_eq!(count, 1, "{queue}/{id} next jobs: {jobs:?}");
        }
    }
}

#[test]
fn startup_restores_missing_schedulers_and_sigterm_exits_cleanly() {
    let redis = RedisServer::start();
    let setup = watched(&redis, "");
    let mut watcher = started(&setup, &redis);
    let finished = &watcher.events("recovery_finished")[0];
    assert_eq!(finished["trigger"], "startup");
    assert_eq!(finished["created"], 4);
    let flags = redis.redis(&["CONFIG", "GET", "notify-keyspace-events"]);
    for flag in ['K', 'g', 'z', 'x', 'e'] {
        assert!(
            flags.lines().nth(1).unwrap_or_default().contains(flag),
            "{flags}"
        );
    }
    assert_eq!(watcher.terminate(), Some(0), "{}", watcher.log());
    assert_eq!(watcher.count("watch_stopped"), 1);
}

#[test]
fn a_restart_without_persistence_is_detected_and_restored() {
    let mut redis = RedisServer::start();
    let setup = watched(&redis, "");
    let watcher = started(&setup, &redis);
    redis.start_again();
    assert!(
        watcher.wait_for("recovery_finished", 2, 10 * SECOND),
        "{}",
        watcher.log()
    );
    let detected = watcher.events("detected");
    assert!(
        detected.iter().any(|e| e["cause"] == "restart"),
        "{detected:?}"
    );
    assert_eq!(watcher.events("recovery_finished")[1]["trigger"], "restart");
    assert_eq!(schedulers(&redis), 4);
    assert_one_next_job_each(&redis);
    // The restarted server forgot its notification flags; they are set again.
    assert!(support::wait_until(5 * SECOND, || redis
        .redis(&["CONFIG", "GET", "notify-keyspace-events"])
        .contains('K')));
}

#[test]
fn flushall_is_reported_by_client_tracking_without_waiting_for_the_poll_and_restored() {
    let redis = RedisServer::start();
    let setup = watched(&redis, "");
    // Polls this rare would see the flush only long after the test gave up.
    let rare_polls = [
        ("BULLMQ_WARDEN__WATCH__INFO_INTERVAL", "120s"),
        ("BULLMQ_WARDEN__WATCH__DRIFT_INTERVAL", "120s"),
    ];
    let watcher = started_env(&setup, &redis, &rare_polls);
    let subscribed = &watcher.events("keyspace_notifications")[0];
    assert!(
        subscribed["message"]
            .as_str()
            .is_some_and(|m| m.contains("flushes tracked")),
        "{subscribed}"
    );
    redis.redis(&["FLUSHALL"]);
    assert!(
        watcher.wait_for("recovery_finished", 2, 10 * SECOND),
        "{}",
        watcher.log()
    );
    assert_eq!(
        watcher.events("recovery_finished")[1]["trigger"],
        "flush",
        "{}",
        watcher.log()
    );
    assert_eq!(schedulers(&redis), 4);
    assert_one_next_job_each(&redis);
}

#[test]
fn the_subscription_pauses_while_the_watcher_writes_and_resumes_after() {
    let redis = RedisServer::start();
    let setup = watched(&redis, "");
    // Enough schedulers that the writes last long enough to be watched.
    setup.sql(
        "WITH RECURSIVE n(i) AS (SELECT 101 UNION ALL SELECT i + 1 FROM n WHERE i < 3100)
         INSERT INTO inspection_tasks (id, name, cron, queue)
         SELECT i, 'bulk', '0 0 1 1 *', 'bulk' FROM n;",
    );
    let watcher = Watcher::start(&setup);
    let patterns = || redis.redis(&["PUBSUB", "NUMPAT"]);
    assert!(
        support::wait_until(10 * SECOND, || patterns() == "2"),
        "{}",
        watcher.log()
    );
    assert!(watcher.wait_for("recovery_finished", 1, 30 * SECOND));
    std::thread::sleep(Duration::from_millis(600));
    redis.redis(&["FLUSHALL"]);
    let mut seen = std::collections::BTreeSet::new();
    let restored = support::wait_until(30 * SECOND, || {
        seen.insert(patterns());
        watcher.count("recovery_finished") >= 2
    });
    assert!(restored, "{}", watcher.log());
    assert!(seen.contains("0"), "never paused: {seen:?}");
    assert!(
        support::wait_until(5 * SECOND, || patterns() == "2"),
        "not resumed: {}",
        watcher.log()
    );
    assert_eq!(redis.zcard("bull:bulk:repeat"), 3000);
}

#[test]
fn deleting_one_queues_scheduler_set_is_seen_by_keyspace_notifications() {
    let redis = RedisServer::start();
    let setup = watched(&redis, "");
    let watcher = started(&setup, &redis);
    redis.redis(&["DEL", "bull:reports:repeat"]);
    assert!(
        watcher.wait_for("recovery_finished", 2, 10 * SECOND),
        "{}",
        watcher.log()
    );
    assert_detected(&watcher, "keyspace", "reports");
    assert_eq!(redis.zcard("bull:reports:repeat"), 1);
    let finished = &watcher.events("recovery_finished")[1];
    // The poll also sees the set emptied; either signal may name the cycle.
    assert!(
        ["keyspace", "flush"].contains(&finished["trigger"].as_str().unwrap()),
        "{finished}"
    );
    assert_eq!(
        finished["created"], 1,
        "only the lost scheduler is written: {finished}"
    );
}

#[test]
fn a_deleted_delayed_set_is_seen_by_the_poll_and_its_stranded_jobs_replaced() {
    let redis = RedisServer::start();
    let setup = watched(&redis, "");
    // Only the poll can see it: the drift check comes too late to count.
    let watcher = started_env(
        &setup,
        &redis,
        &[("BULLMQ_WARDEN__WATCH__DRIFT_INTERVAL", "120s")],
    );
    // The weekly scheduler's job hash survives, still its scheduler's next
    // job, but nothing would ever move it on.
    redis.redis(&["DEL", "bull:reports:delayed"]);
    assert!(
        watcher.wait_for("recovery_finished", 2, 10 * SECOND),
        "{}",
        watcher.log()
    );
    assert_detected(&watcher, "flush", "reports");
    let finished = &watcher.events("recovery_finished")[1];
    assert_eq!(finished["updated"], 1, "{finished}");
    assert_eq!(redis.zcard("bull:reports:delayed"), 1);
    assert_one_next_job_each(&redis);
}

#[test]
fn one_removed_scheduler_whose_row_stays_enabled_comes_back() {
    let redis = RedisServer::start();
    let setup = watched(&redis, "");
    let watcher = started(&setup, &redis);
    let removed = node(
        6,
        "remove-scheduler",
        &redis,
        "inspection",
        &["--id", "inspection:2"],
        None,
    );
    assert_eq!(removed["removed"], true);
    assert!(
        watcher.wait_for("recovery_finished", 2, 10 * SECOND),
        "{}",
        watcher.log()
    );
    assert_eq!(watcher.events("recovery_finished")[1]["created"], 1);
    assert_eq!(redis.zcard("bull:inspection:repeat"), 3);
}

#[test]
fn a_scheduler_removed_with_its_row_disabled_in_the_window_stays_removed() {
    let redis = RedisServer::start();
    let setup = watched(&redis, "");
    let watcher = started(&setup, &redis);
    // What the application does when a user switches a task off.
    node(
        6,
        "remove-scheduler",
        &redis,
        "inspection",
        &["--id", "inspection:2"],
        None,
    );
    setup.sql("UPDATE inspection_tasks SET enabled = 0 WHERE id = 2");
    assert!(
        watcher.wait_for("detected", 1, 5 * SECOND),
        "{}",
        watcher.log()
    );
    std::thread::sleep(3 * SECOND);
    assert_eq!(watcher.count("recovery_started"), 1, "{}", watcher.log());
    let mut left = redis.zmembers("bull:inspection:repeat");
    left.sort();
    assert_eq!(left, vec!["inspection:1", "inspection:3"]);
}

#[test]
fn the_subscription_returns_promptly_after_each_of_many_restarts() {
    let mut redis = RedisServer::start();
    let setup = watched(&redis, "");
    // Backing off further after every restart would wait 1, 2, 4, 8 and
    // then 16 s before subscribing again.
    let backoff = [
        ("BULLMQ_WARDEN__RECOVERY__BACKOFF_MIN", "1s"),
        ("BULLMQ_WARDEN__RECOVERY__BACKOFF_MAX", "60s"),
    ];
    let watcher = Watcher::start_env(&setup, &backoff);
    assert!(watcher.wait_for("recovery_finished", 1, 10 * SECOND));
    let active = || {
        watcher
            .events("keyspace_notifications")
            .iter()
            .filter(|e| e["active"] == true)
            .count()
    };
    assert!(support::wait_until(10 * SECOND, || active() == 1));
    for restart in 1..=5 {
        redis.start_again();
        assert!(
            support::wait_until(8 * SECOND, || active() == restart + 1),
            "restart {restart}: {}",
            watcher.log()
        );
    }
}

/// A flush is a loss Redis shows: repaired without the quiet window, from
/// the rows as last read (SQLite's data_version watch saw no change since).
/// A member removed from a scheduler set, as the application's
/// `removeJobScheduler` does, waits for the window like before (see
/// `a_scheduler_removed_with_its_row_disabled_in_the_window_stays_removed`).
#[test]
fn a_flush_is_repaired_at_once_from_the_rows_kept_ready() {
    let redis = RedisServer::start();
    let setup = watched(&redis, "");
    let slow_window = [("BULLMQ_WARDEN__WATCH__DEBOUNCE_QUIET", "3s")];
    let watcher = started_env(&setup, &redis, &slow_window);
    assert!(watcher.wait_for("source_watch", 1, 5 * SECOND));
    redis.redis(&["FLUSHALL"]);
    watcher.assert_second_recovery_at_once("kept");
    assert_eq!(schedulers(&redis), 4);
    assert_one_next_job_each(&redis);
}

/// Of the source's SQLite connections, only the one watching
/// `data_version` stays open: the one that reads the rows ends with the
/// read. A connection is a thread of its own, and what that thread
/// allocated for the rows goes back to the system only once it has ended.
#[test]
fn a_read_of_the_sqlite_rows_leaves_no_connection_behind() {
    let redis = RedisServer::start();
    let setup = watched(&redis, "");
    let no_drift_check = [("BULLMQ_WARDEN__WATCH__DRIFT_INTERVAL", "10m")];
    let watcher = started_env(&setup, &redis, &no_drift_check);
    assert!(watcher.wait_for("source_watch", 1, 5 * SECOND));
    reschedule_row_2(&setup);
    let key = "bull:inspection:repeat:inspection:2";
    assert!(
        support::wait_until(5 * SECOND, || redis.redis(&["HGET", key, "pattern"])
            == ROW_2_RESCHEDULED),
        "{}",
        watcher.log()
    );
    assert_eq!(sqlite_threads(watcher.pid()), 1, "{}", watcher.log());
}

/// The pattern `reschedule_row_2` gives row 2 (nightly at 02:30 before).
const ROW_2_RESCHEDULED: &str = "0 45 2 * * *";

/// An edit of a row, as the application would make it.
fn reschedule_row_2(setup: &Setup) {
    setup.sql(&format!(
        "UPDATE inspection_tasks SET cron = '{ROW_2_RESCHEDULED}' WHERE id = 2"
    ));
}

/// The threads of `pid` that run an SQLite connection (sqlx names them).
fn sqlite_threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("the watcher's threads")
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with("sqlx-sqlite"))
        .count()
}

/// A row change already waiting when a flush comes makes the rows kept
/// ready stale: the repair still goes at once, but reads the database first,
/// so the changed row comes back as it is now.
#[test]
fn a_flush_with_a_row_change_waiting_is_repaired_at_once_from_a_fresh_read() {
    let redis = RedisServer::start();
    let setup = watched(&redis, "");
    let slow_window = [("BULLMQ_WARDEN__WATCH__DEBOUNCE_QUIET", "3s")];
    let watcher = started_env(&setup, &redis, &slow_window);
    assert!(watcher.wait_for("source_watch", 1, 5 * SECOND));
    reschedule_row_2(&setup);
    assert!(
        support::wait_until(5 * SECOND, || watcher
            .events("detected")
            .iter()
            .any(|e| e["cause"] == "source_change")),
        "{}",
        watcher.log()
    );
    redis.redis(&["FLUSHALL"]);
    watcher.assert_second_recovery_at_once("database");
    let key = "bull:inspection:repeat:inspection:2";
    assert_eq!(redis.redis(&["HGET", key, "pattern"]), ROW_2_RESCHEDULED);
    assert_eq!(schedulers(&redis), 4);
    assert_one_next_job_each(&redis);
}

/// A drift check reads a scheduler's hash only when it may have changed:
/// while the keyspace subscription is live, a hash that matched its row and
/// had no notification since is not read again (none of the idle checks
/// below sends an HMGET). The application rewriting one through BullMQ is a
/// notification, so the next check reads that hash and puts the row back.
#[test]
fn drift_checks_read_only_the_hashes_that_may_have_changed() {
    let redis = RedisServer::start();
    let setup = watched(&redis, "");
    let watcher = started(&setup, &redis);
    // Two drift checks (every 2 s): the first after the start-up writes reads
    // everything (the subscription paused while they were written).
    std::thread::sleep(5 * SECOND);
    redis.redis(&["CONFIG", "RESETSTAT"]);
    std::thread::sleep(5 * SECOND);
    let stats = redis.redis(&["INFO", "commandstats"]);
    assert!(
        stats.contains("cmdstat_zrange:"),
        "drift checks ran: {stats}"
    );
    assert!(!stats.contains("cmdstat_hmget:"), "{stats}");
    // Nor does an idle watcher walk the keyspace for queues (discovery rests
    // after its pass at start-up), or count the scheduler set's far runs
    // (only for a delayed set found empty).
    assert!(!stats.contains("cmdstat_scan:"), "{stats}");
    assert!(!stats.contains("cmdstat_zcount:"), "{stats}");
    let rewrite = json!([{"id": "inspection:1", "name": "minutely",
        "repeat": {"pattern": "0 * * * * *"}, "data": {"written": "by the application"}}]);
    node(
        6,
        "upsert-schedulers",
        &redis,
        "inspection",
        &[],
        Some(&rewrite),
    );
    let data = || redis.redis(&["HGET", "bull:inspection:repeat:inspection:1", "data"]);
    assert!(data().contains("by the application"), "{}", data());
    assert!(
        support::wait_until(10 * SECOND, || !data().contains("by the application")),
        "the row's data was not put back: {}\n{}",
        data(),
        watcher.log()
    );
    assert_one_next_job_each(&redis);
}

/// The bound for a flapping Redis, with the default debounce window (2 s
/// quiet): the first restart is repaired at once, the four that follow
/// within the quiet window make one more recovery once Redis settles.
#[test]
fn five_restarts_in_three_seconds_give_at_most_two_recoveries() {
    let mut redis = RedisServer::start();
    let setup = watched(&redis, "");
    let defaults = [
        ("BULLMQ_WARDEN__WATCH__DEBOUNCE_QUIET", "2s"),
        ("BULLMQ_WARDEN__WATCH__DEBOUNCE_MAX", "15s"),
    ];
    let watcher = started_env(&setup, &redis, &defaults);
    for _ in 0..5 {
        redis.start_again();
        std::thread::sleep(Duration::from_millis(450));
    }
    assert!(
        watcher.wait_for("recovery_finished", 2, 15 * SECOND),
        "{}",
        watcher.log()
    );
    std::thread::sleep(5 * SECOND);
    let recoveries = watcher.count("recovery_finished") - 1;
    assert!(
        (1..=2).contains(&recoveries),
        "{recoveries} recoveries: {}",
        watcher.log()
    );
    let started = watcher.events("recovery_started");
    let at_once: Vec<bool> = started[1..]
        .iter()
        .map(|e| e["at_once"].as_bool().unwrap_or_default())
        .collect();
    assert_eq!(at_once.first(), Some(&true), "{}", watcher.log());
    assert_eq!(schedulers(&redis), 4);
    assert_one_next_job_each(&redis);
}

#[test]
fn redis_down_for_twenty_seconds_backs_off_and_restores_when_back() {
    let mut redis = RedisServer::start();
    let setup = watched(&redis, "");
    let mut watcher = started(&setup, &redis);
    redis.stop();
    std::thread::sleep(20 * SECOND);
    assert!(watcher.is_running(), "{}", watcher.log());
    let failures = watcher.events("recovery_failed");
    assert!(failures.len() >= 3, "retried while down: {}", watcher.log());
    let ceilings: Vec<u64> = failures
        .iter()
        .map(|f| f["backoff_ms"].as_u64().unwrap())
        .collect();
    assert!(ceilings.windows(2).all(|w| w[0] <= w[1]), "{ceilings:?}");
    assert!(
        ceilings.last() > ceilings.first(),
        "backoff grows: {ceilings:?}"
    );
    assert!(watcher.count("redis_down") >= 1);
    redis.start_again();
    assert!(
        watcher.wait_for("recovery_finished", 2, 15 * SECOND),
        "{}",
        watcher.log()
    );
    assert_eq!(schedulers(&redis), 4);
    assert_one_next_job_each(&redis);
}

#[test]
fn two_watchers_on_one_redis_recover_exactly_once() {
    let redis = RedisServer::start();
    let setup = watched(&redis, "");
    let first = started(&setup, &redis);
    let second = Watcher::start(&setup);
    assert!(second.wait_for("keyspace_notifications", 1, 10 * SECOND));
    std::thread::sleep(SECOND);
    let before = first.count("recovery_finished") + second.count("recovery_finished");
    redis.redis(&["FLUSHALL"]);
    assert!(
        support::wait_until(10 * SECOND, || schedulers(&redis) == 4),
        "{}\n{}",
        first.log(),
        second.log()
    );
    std::thread::sleep(4 * SECOND);
    let after = first.count("recovery_finished") + second.count("recovery_finished");
    assert_eq!(after - before, 1, "{}\n---\n{}", first.log(), second.log());
    assert_one_next_job_each(&redis);
}

#[test]
fn a_watcher_killed_mid_recovery_completes_after_a_restart_without_duplicates() {
    let redis = RedisServer::start();
    let setup = Setup::sqlite(
        &redis,
        &format!("{FAST_WATCH}[recovery]\n{FAST_RECOVERY}concurrency = 1\n"),
    );
    setup.sql(TASKS_TABLE_SQLITE);
    let rows: Vec<String> = (1..=3000)
        .map(|i| format!("({i}, 'task-{i}', '{} * * * *')", i % 60))
        .collect();
    setup.sql(&format!(
        "INSERT INTO inspection_tasks (id, name, cron) VALUES {};",
        rows.join(",")
    ));
    let mut watcher = Watcher::start(&setup);
    assert!(
        watcher.wait_for("recovery_started", 1, 10 * SECOND),
        "{}",
        watcher.log()
    );
    assert!(support::wait_until(10 * SECOND, || redis
        .zcard("bull:inspection:repeat")
        > 100));
    watcher.kill();
    let partial = redis.zcard("bull:inspection:repeat");
    assert!(partial < 3000, "killed mid-way: {partial}");

    let again = Watcher::start(&setup);
    assert!(
        again.wait_for("recovery_finished", 1, 30 * SECOND),
        "{}",
        again.log()
    );
    assert_eq!(redis.zcard("bull:inspection:repeat"), 3000);
    assert_eq!(
        redis.zcard("bull:inspection:delayed"),
        3000,
        "one next job each"
    );
}

#[test]
fn fire_once_enqueues_exactly_one_catchup_job_per_missed_cron_scheduler() {
    let mut redis = RedisServer::start();
    let setup = Setup::sqlite(
        &redis,
        &format!("{FAST_WATCH}[recovery]\n{FAST_RECOVERY}catchup = \"fire_once\"\n"),
    );
    setup.sql(TASKS_TABLE_SQLITE);
    setup.sql(
        "INSERT INTO inspection_tasks (id, name, cron, every_ms, payload) VALUES
         (1, 'each-second', '* * * * * *', NULL, '{\"n\":1}'),
         (2, 'every-2s', '*/2 * * * * *', NULL, NULL),
         (3, 'yearly', '0 0 1 1 *', NULL, NULL),
         (4, 'interval', NULL, 1000, NULL);",
    );
    let watcher = Watcher::start(&setup);
    assert!(watcher.wait_for("recovery_finished", 1, 10 * SECOND));
    // A run that fell due while the start-up recovery wrote was missed too
    // and may have its catch-up already; the outage's are counted apart.
    let fired_at_start = watcher.events("catchup_fired").len();
    redis.stop();
    std::thread::sleep(3 * SECOND);
    redis.start_again();
    assert!(
        watcher.wait_for("recovery_finished", 2, 15 * SECOND),
        "{}",
        watcher.log()
    );
    std::thread::sleep(SECOND);
    let fired = watcher.events("catchup_fired");
    let mut ids: Vec<&str> = fired[fired_at_start..]
        .iter()
        .map(|e| e["scheduler_id"].as_str().unwrap())
        .collect();
    ids.sort();
    assert_eq!(
        ids,
        vec!["inspection:1", "inspection:2"],
        "{}",
        watcher.log()
    );
    let catchup_jobs = redis.redis(&["KEYS", "bull:inspection:warden-catchup-*"]);
    let jobs: Vec<&str> = catchup_jobs
        .lines()
        .filter(|l| !l.contains(":lock") && !l.is_empty())
        .collect();
    assert_eq!(jobs.len(), 2, "{jobs:?}");
    let job = jobs.iter().find(|j| j.contains("inspection_1")).unwrap();
    assert_eq!(redis.redis(&["HGET", job, "name"]), "each-second");
    assert_eq!(redis.redis(&["HGET", job, "data"]), "{\"n\":1}");
}

#[test]
fn a_real_bullmq_worker_runs_restored_schedulers_after_a_restart() {
    let mut redis = RedisServer::start();
    let setup = Setup::sqlite(&redis, &format!("{FAST_WATCH}[recovery]\n{FAST_RECOVERY}"));
    setup.sql(TASKS_TABLE_SQLITE);
    setup.sql(
        "INSERT INTO inspection_tasks (id, name, every_ms, payload) VALUES (1, 'tick', 1000, '{\"ok\":true}')",
    );
    let watcher = Watcher::start(&setup);
    assert!(watcher.wait_for("recovery_finished", 1, 10 * SECOND));
    redis.start_again();
    assert!(
        watcher.wait_for("recovery_finished", 2, 10 * SECOND),
        "{}",
        watcher.log()
    );
    let ran = node(
        6,
        "worker",
        &redis,
        "inspection",
        &[
            "--until-runs",
            "2",
            "--scheduler",
            "inspection:1",
            "--timeout-ms",
            "20000",
        ],
        None,
    );
    assert!(ran["runs"].as_u64().unwrap_or(0) >= 2, "{ran}");
    assert_eq!(ran["jobs"][0]["data"], json!({"ok": true}));
}

#[test]
fn a_loss_while_the_database_is_down_is_restored_once_it_returns() {
    let db = support::Database::postgres();
    support::run_sql(
        &db.url,
        "CREATE TABLE inspection_tasks (id BIGINT, name TEXT, cron TEXT, every_ms INTEGER, tz TEXT,
         payload TEXT, opts TEXT, queue TEXT, enabled BOOLEAN);
         INSERT INTO inspection_tasks VALUES (1, 'a', '0 * * * *', NULL, NULL, NULL, NULL, NULL, TRUE),
                                             (2, 'b', NULL, 5000, NULL, NULL, NULL, NULL, TRUE);",
    );
    let redis = RedisServer::start();
    let setup = Setup::new(
        &redis,
        &format!(
            // Without the snapshot, which would restore at once
            // (tests/source_down.rs): the loss waits for the rows.
            "[redis]\nurl = \"{{redis}}\"\n[source]\nurl = \"{}\"\n{FAST_WATCH}[recovery]\n{FAST_RECOVERY}\
             snapshot_max_age = \"0s\"\n",
            db.url
        ),
    );
    let watcher = Watcher::start(&setup);
    assert!(
        watcher.wait_for("recovery_finished", 1, 10 * SECOND),
        "{}",
        watcher.log()
    );
    std::thread::sleep(Duration::from_millis(600));

    let set_connections = |allowed: bool| {
        support::run_sql(
            &db.admin_url,
            &format!(
                "ALTER DATABASE {0} ALLOW_CONNECTIONS {allowed};
                 SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{0}';",
                db.name
            ),
        )
    };
    set_connections(false);
    redis.redis(&["FLUSHALL"]);
    assert!(
        watcher.wait_for("recovery_failed", 2, 10 * SECOND),
        "{}",
        watcher.log()
    );
    let failure = &watcher.events("recovery_failed")[0];
    assert!(
        failure["message"]
            .as_str()
            .unwrap()
            .contains("postgres://warden:***@127.0.0.1"),
        "{failure}"
    );
    assert_eq!(redis.zcard("bull:inspection:repeat"), 0);
    set_connections(true);
    assert!(
        watcher.wait_for("recovery_finished", 2, 15 * SECOND),
        "{}",
        watcher.log()
    );
    assert_eq!(redis.zcard("bull:inspection:repeat"), 2);
}

/// The application's own recover endpoint: records each request and restores
/// the schedulers with real BullMQ, as the manual's recoverTasks would.
fn application_endpoint(
    redis_url: String,
    specs: serde_json::Value,
) -> (String, std::sync::mpsc::Receiver<String>) {
    let (requests, received) = std::sync::mpsc::channel();
    let addr = support::http_endpoint(move |head, body| {
        let redis = support::RedisServer::attach(&redis_url);
        node(
            6,
            "upsert-schedulers",
            &redis,
            "inspection",
            &[],
            Some(&specs),
        );
        let _ = requests.send(format!("{head}\r\n{}", String::from_utf8_lossy(&body)));
        "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}".to_owned()
    });
    (format!("http://{addr}/api/bullmq/recover"), received)
}

#[test]
fn the_webhook_strategy_asks_the_application_and_checks_the_result() {
    let redis = RedisServer::start();
    let specs = json!([
        {"id": "inspection:1", "name": "a", "repeat": {"pattern": "0 * * * *"}},
        {"id": "inspection:2", "name": "b", "repeat": {"every": 60000}}
    ]);
    let (url, requests) = application_endpoint(redis.url(), specs);
    let setup = Setup::sqlite(
        &redis,
        &format!(
            "{FAST_WATCH}[recovery]\n{FAST_RECOVERY}strategy = \"webhook\"\nwebhook_url = \"{url}\"\n\
             webhook_headers = {{ \"X-Api-Key\" = \"k-123\" }}\n"
        ),
    );
    setup.sql(TASKS_TABLE_SQLITE);
    setup.sql("INSERT INTO inspection_tasks (id, name, cron, every_ms) VALUES (1, 'a', '0 * * * *', NULL), (2, 'b', NULL, 60000)");
    let watcher = Watcher::start_env(&setup, &[("BULLMQ_WARDEN_WEBHOOK_TOKEN", "hook-secret")]);
    assert!(
        watcher.wait_for("recovery_finished", 1, 20 * SECOND),
        "{}",
        watcher.log()
    );
    let request = requests
        .recv_timeout(5 * SECOND)
        .expect("the application was called");
    let lower = request.to_ascii_lowercase();
    assert!(lower.starts_with("post /api/bullmq/recover"), "{request}");
    assert!(
        lower.contains("authorization: bearer hook-secret"),
        "{request}"
    );
    assert!(lower.contains("x-api-key: k-123"), "{request}");
    assert!(request.contains("\"missing\":2"), "{request}");
    assert_eq!(redis.zcard("bull:inspection:repeat"), 2);
    let finished = &watcher.events("recovery_finished")[0];
    assert_eq!(finished["created"], 2, "{finished}");
    assert!(
        !watcher.log().contains("hook-secret"),
        "the token is never logged"
    );
}

/// A drift check too far off to explain anything a test sees.
const NO_DRIFT_CHECK: (&str, &str) = ("BULLMQ_WARDEN__WATCH__DRIFT_INTERVAL", "10m");

/// How long until `check` holds, printed as `what`; fails after `limit`.
fn latency(what: &str, limit: Duration, check: impl FnMut() -> bool) -> Duration {
    let took =
        support::time_until(limit, check).unwrap_or_else(|| panic!("{what}: not within {limit:?}"));
    eprintln!("{what}: {} ms", took.as_millis());
    took
}

#[test]
fn sqlite_row_edits_reach_redis_within_seconds_without_configuration() {
    let redis = RedisServer::start();
    let setup = watched(&redis, "");
    let watcher = started_env(&setup, &redis, &[NO_DRIFT_CHECK]);
    let pattern = |id: &str| {
        let key = format!("bull:inspection:repeat:{id}");
        redis.redis(&["HGET", &key, "pattern"])
    };
    setup.sql("UPDATE inspection_tasks SET cron = '0 45 4 * * *' WHERE id = 2");
    latency("SQLite edit to Redis", 3 * SECOND, || {
        pattern("inspection:2") == "0 45 4 * * *"
    });
    setup.sql("INSERT INTO inspection_tasks (id, name, cron) VALUES (5, 'new', '0 15 * * * *')");
    latency("SQLite insert to Redis", 3 * SECOND, || {
        pattern("inspection:5") == "0 15 * * * *"
    });
    assert_detected(&watcher, "source_change", "");
    let finished = watcher.events("recovery_finished");
    assert!(
        finished[1..]
            .iter()
            .all(|f| f["trigger"] == "source_change"),
        "{finished:?}"
    );
    // A disabled row leaves an orphan; it is compared at once too. (Past
    // the one detection log line a second that changes get.)
    std::thread::sleep(SECOND);
    let before = watcher.count("detected");
    setup.sql("UPDATE inspection_tasks SET enabled = 0 WHERE id = 3");
    assert!(
        watcher.wait_for("detected", before + 1, 3 * SECOND),
        "{}",
        watcher.log()
    );
}

#[test]
fn a_deleted_scheduler_hash_is_restored_within_a_second_and_bullmqs_upsert_is_no_loss() {
    let redis = RedisServer::start();
    let setup = watched(&redis, "");
    let watcher = started_env(&setup, &redis, &[NO_DRIFT_CHECK]);
    // BullMQ's upsert deletes and rewrites the hash in one script.
    node(
        6,
        "upsert-schedulers",
        &redis,
        "inspection",
        &[],
        Some(
            &json!([{"id": "inspection:1", "repeat": {"pattern": "0 * * * * *"}, "name": "minutely"}]),
        ),
    );
    std::thread::sleep(SECOND);
    assert!(
        watcher
            .events("detected")
            .iter()
            .all(|e| e["cause"] != "keyspace"),
        "{}",
        watcher.log()
    );
    let key = "bull:inspection:repeat:inspection:2";
    let deleted_at = chrono::Utc::now();
    redis.redis(&["DEL", key]);
    latency("DEL of a scheduler hash to restored", SECOND, || {
        redis.redis(&["EXISTS", key]) == "1"
    });
    let detected = watcher.events("detected");
    let loss = detected
        .iter()
        .find(|e| {
            e["cause"] == "keyspace"
                && e["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("still in the repeat set"))
        })
        .unwrap_or_else(|| panic!("no keyspace detection: {detected:?}"));
    let detected_at = loss["timestamp"]
        .as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .expect("a timestamp");
    let detection = detected_at.signed_duration_since(deleted_at);
    eprintln!(
        "DEL of a scheduler hash to detected: {} ms",
        detection.num_milliseconds()
    );
    assert!(detection.num_milliseconds() < 100, "{loss}");
    assert_one_next_job_each(&redis);
}

#[test]
fn a_worker_running_scheduled_jobs_for_a_minute_raises_no_keyspace_detection() {
    let redis = RedisServer::start();
    let setup = Setup::sqlite(&redis, &format!("{FAST_WATCH}[recovery]\n{FAST_RECOVERY}"));
    setup.sql(TASKS_TABLE_SQLITE);
    setup.sql(
        "INSERT INTO inspection_tasks (id, name, every_ms, opts, queue) VALUES
         (1, 'tick', 500, '{\"removeOnComplete\":true}', 'reports')",
    );
    let watcher = Watcher::start_env(&setup, &[NO_DRIFT_CHECK]);
    assert!(watcher.wait_for("recovery_finished", 1, 10 * SECOND));
    let ran = node(
        6,
        "worker",
        &redis,
        "reports",
        &["--until-runs", "120", "--timeout-ms", "75000"],
        None,
    );
    assert!(ran["runs"].as_u64().unwrap_or(0) >= 100, "{ran}");
    // A job's lock that expires, as when a worker dies mid-job.
    let lock = "bull:reports:repeat:inspection:1:1796169635000:lock";
    redis.redis(&["SET", lock, "token", "PX", "20"]);
    std::thread::sleep(Duration::from_millis(300));
    redis.redis(&["EXISTS", lock]);
    std::thread::sleep(SECOND);
    let keyspace: Vec<_> = watcher
        .events("detected")
        .into_iter()
        .filter(|e| e["cause"] == "keyspace")
        .collect();
    assert!(keyspace.is_empty(), "{keyspace:?}");
    assert_eq!(watcher.count("recovery_started"), 1, "{}", watcher.log());
}
