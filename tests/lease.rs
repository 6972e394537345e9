//! The recovery lease against a real redis-server: a writer that loses the
//! lease stops writing.

mod support;

use std::time::Duration;

use support::{RedisServer, Setup, Watcher, FAST_WATCH, TASKS_TABLE_SQLITE};

const SECOND: Duration = Duration::from_secs(1);
const LEASE_KEY: &str = "bull:bullmq-warden:recovery-lease";
/// A writer checks the lease every this many writes (`LEASE_CHECK_EVERY`).
const CHECK_EVERY: u64 = 128;

/// `n` enabled rows for `queue`, made by SQLite itself.
fn rows(setup: &Setup, n: u32, queue: &str) {
    setup.sql(TASKS_TABLE_SQLITE);
    setup.sql(&format!(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {n})
         INSERT INTO inspection_tasks (id, name, cron, queue)
         SELECT i, 'task-' || i, (i % 60) || ' * * * *', '{queue}' FROM n;"
    ));
}

fn repeat_key(queue: &str) -> String {
    format!("bull:{queue}:repeat")
}

/// Runs `action` on the lease key and reads the scheduler count of `queue`
/// in one script, so the count is exactly the writes done when the lease went.
fn at_once(redis: &RedisServer, action: &str, queue: &str) -> u64 {
    redis
        .redis(&[
            "EVAL",
            &format!("{action}; return redis.call('ZCARD', KEYS[2])"),
            "2",
            LEASE_KEY,
            &repeat_key(queue),
        ])
        .parse()
        .expect("ZCARD")
}

#[test]
fn a_watcher_whose_lease_is_taken_over_mid_restore_stops_until_it_is_free_again() {
    let redis = RedisServer::start();
    let setup = Setup::sqlite(
        &redis,
        &format!(
            "{FAST_WATCH}[recovery]\nconcurrency = 1\nlease_ttl = \"30s\"\n\
             backoff_min = \"100ms\"\nbackoff_max = \"1s\"\n"
        ),
    );
    rows(&setup, 20_000, "inspection");
    let watcher = Watcher::start(&setup);
    assert!(
        support::wait_until(60 * SECOND, || redis.zcard("bull:inspection:repeat") > 1000),
        "{}",
        watcher.log()
    );
    let at_loss = at_once(
        &redis,
        "redis.call('SET', KEYS[1], 'intruder:1:00', 'PX', 600000)",
        "inspection",
    );
    assert!(
        watcher.wait_for("lease_lost", 1, 10 * SECOND),
        "{}",
        watcher.log()
    );
    let stalled = redis.zcard("bull:inspection:repeat");
    std::thread::sleep(2 * SECOND);
    assert_eq!(
        redis.zcard("bull:inspection:repeat"),
        stalled,
        "no writes while another holds the lease"
    );
    assert!(
        stalled - at_loss <= CHECK_EVERY + 1,
        "{} writes after the lease was taken over",
        stalled - at_loss
    );
    assert!(stalled < 20_000);
    let lost = &watcher.events("lease_lost")[0];
    assert!(
        lost.to_string().contains("taken over by intruder:1:00"),
        "{lost}"
    );
    // Retried as a failed attempt, then held off by the other holder.
    assert!(watcher.wait_for("recovery_failed", 1, 5 * SECOND));
    assert!(watcher.wait_for("lease_busy", 1, 10 * SECOND));
    assert_eq!(redis.zcard("bull:inspection:repeat"), stalled);

    redis.redis(&["DEL", LEASE_KEY]);
    assert!(
        support::wait_until(120 * SECOND, || redis.zcard("bull:inspection:repeat")
            == 20_000),
        "{}",
        watcher.log()
    );
    assert!(watcher.wait_for("recovery_finished", 1, 10 * SECOND));
}
