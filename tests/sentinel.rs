//! Redis Sentinel: the watcher connects to the primary the sentinels name,
//! follows a failover, and treats a promoted replica without schedulers as a loss.

mod support;

use std::time::Duration;

use support::{SentinelGroup, Setup, Watcher, FAST_RECOVERY, TASKS_TABLE_SQLITE};

const SECOND: Duration = Duration::from_secs(1);

fn setup(group: &SentinelGroup) -> Setup {
    let sentinels: Vec<String> = group
        .sentinel_urls()
        .iter()
        .map(|u| format!("\"{u}\""))
        .collect();
    let setup = Setup::new(
        &group.primary,
        &format!(
            "[redis]\nurl = \"redis://sentinel-names-the-host:6379/0\"\nmaster_name = \"mymaster\"\n\
             sentinels = [{}]\n[source]\nurl = \"sqlite://{{dir}}/tasks.db\"\n\
             [watch]\ninfo_interval = \"200ms\"\ndrift_interval = \"2s\"\ndebounce_quiet = \"500ms\"\n\
             [http]\nlisten = \"\"\n[recovery]\n{FAST_RECOVERY}",
            sentinels.join(", ")
        ),
    );
    setup.sql(TASKS_TABLE_SQLITE);
    setup.sql(
        "INSERT INTO inspection_tasks (id, name, cron, every_ms) VALUES
         (1, 'a', '0 * * * *', NULL), (2, 'b', '0 0 * * *', NULL), (3, 'c', NULL, 60000)",
    );
    setup
}

#[test]
fn commands_reach_the_primary_through_the_sentinels() {
    let group = SentinelGroup::start(&[]);
    let setup = setup(&group);
    let (code, report) = setup.recover();
    assert_eq!(code, 0, "{report}");
    assert_eq!(group.primary.zcard("bull:inspection:repeat"), 3);
}

#[test]
fn a_failover_to_a_replica_that_has_the_schedulers_needs_no_recovery() {
    let group = SentinelGroup::start(&[]);
    let setup = setup(&group);
    let watcher = Watcher::start(&setup);
    assert!(
        watcher.wait_for("recovery_finished", 1, 10 * SECOND),
        "{}",
        watcher.log()
    );
    assert!(support::wait_until(5 * SECOND, || group
        .replica
        .zcard("bull:inspection:repeat")
        == 3));

    group.failover();
    assert!(
        support::wait_until(15 * SECOND, || watcher
            .events("detected")
            .iter()
            .any(|e| e["cause"] == "failover")),
        "{}",
        watcher.log()
    );
    std::thread::sleep(3 * SECOND);
    assert_eq!(
        watcher.count("recovery_finished"),
        1,
        "nothing was lost: {}",
        watcher.log()
    );

    // The watcher now guards the new primary.
    group.replica.redis(&["DEL", "bull:inspection:repeat"]);
    assert!(
        watcher.wait_for("recovery_finished", 2, 10 * SECOND),
        "{}",
        watcher.log()
    );
    assert_eq!(group.replica.zcard("bull:inspection:repeat"), 3);
}

#[test]
fn a_failover_to_an_empty_replica_is_a_loss_and_is_restored() {
    let group = SentinelGroup::start(&["--replica-read-only", "no"]);
    let setup = setup(&group);
    let watcher = Watcher::start(&setup);
    assert!(
        watcher.wait_for("recovery_finished", 1, 10 * SECOND),
        "{}",
        watcher.log()
    );
    assert!(support::wait_until(5 * SECOND, || group
        .replica
        .zcard("bull:inspection:repeat")
        == 3));
    // The replica loses its copy (as one restarted without persistence would).
    group.replica.redis(&["FLUSHALL"]);
    assert_eq!(group.replica.zcard("bull:inspection:repeat"), 0);

    group.failover();
    assert!(
        watcher.wait_for("recovery_finished", 2, 20 * SECOND),
        "{}",
        watcher.log()
    );
    let finished = &watcher.events("recovery_finished")[1];
    assert_eq!(finished["trigger"], "failover", "{finished}");
    assert_eq!(finished["created"], 3);
    assert_eq!(group.replica.zcard("bull:inspection:repeat"), 3);
}
