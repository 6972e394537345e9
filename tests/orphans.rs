//! A scheduler in Redis that no enabled row wants — its row disabled, deleted
//! or moved to another queue — is an orphan: pruned as soon as the watcher
//! notices with `prune_orphans`, reported once without it, and its queue is
//! still compared when no row names it any more, also after a restart.

mod support;

use std::time::Duration;

use support::{wait_until, RedisServer, Setup, Watcher};

/// A watcher that checks every second and decides 200 ms after a signal.
fn orphan_setup(redis: &RedisServer, prune: bool) -> Setup {
    let setup = Setup::sqlite(
        redis,
        &format!(
            "[watch]\ninfo_interval = \"200ms\"\ndrift_interval = \"1s\"\ndebounce_quiet = \"200ms\"\n\
             [recovery]\nprune_orphans = {prune}\n[http]\nlisten = \"\"\n"
        ),
    );
    setup.sql(support::TASKS_TABLE_SQLITE);
    // Row 1 is the only row of queue `solo`; rows 2 and 3 share `inspection`.
    setup.sql(
        "INSERT INTO inspection_tasks (id, cron, queue) VALUES
           (1, '0 * * * *', 'solo'), (2, '5 * * * *', 'inspection'), (3, '9 * * * *', 'inspection');",
    );
    setup
}

fn wait_for_schedulers(redis: &RedisServer, solo: u64, inspection: u64, watcher: &Watcher) {
    assert!(
        wait_until(Duration::from_secs(15), || {
            redis.zcard("bull:solo:repeat") == solo
                && redis.zcard("bull:inspection:repeat") == inspection
        }),
        "expected {solo} + {inspection} schedulers, found {} + {}\n{}",
        redis.zcard("bull:solo:repeat"),
        redis.zcard("bull:inspection:repeat"),
        watcher.log()
    );
}

#[test]
fn disabled_rows_lose_their_schedulers_with_prune_orphans_even_the_last_of_a_queue() {
    let redis = RedisServer::start();
    let setup = orphan_setup(&redis, true);
    let mut watcher = Watcher::start(&setup);
    wait_for_schedulers(&redis, 1, 2, &watcher);
    setup.sql("UPDATE inspection_tasks SET enabled = 0 WHERE id IN (1, 2);");
    wait_for_schedulers(&redis, 0, 1, &watcher);
    assert_eq!(
        redis.zmembers("bull:inspection:repeat"),
        vec!["inspection:3".to_owned()]
    );
    assert_eq!(watcher.count("orphan_found"), 0, "{}", watcher.log());
    watcher.terminate();
}

#[test]
fn an_orphan_is_reported_once_and_its_queue_is_not_forgotten_after_a_restart() {
    let redis = RedisServer::start();
    let setup = orphan_setup(&redis, false);
    let mut watcher = Watcher::start(&setup);
    wait_for_schedulers(&redis, 1, 2, &watcher);
    setup.sql("UPDATE inspection_tasks SET enabled = 0 WHERE id = 1;");
    assert!(
        watcher.wait_for("orphan_found", 1, Duration::from_secs(10)),
        "{}",
        watcher.log()
    );
    // Several more comparisons: still one warning, and the scheduler stays.
    std::thread::sleep(Duration::from_secs(4));
    let found = watcher.events("orphan_found");
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0]["queue"], "solo", "{found:?}");
    assert_eq!(redis.zcard("bull:solo:repeat"), 1);
    watcher.terminate();
    // A new watcher finds the queue in Redis although no row names it.
    let mut again = Watcher::start(&setup);
    assert!(
        again.wait_for("orphan_found", 1, Duration::from_secs(10)),
        "{}",
        again.log()
    );
    again.terminate();
}
