//! Journal mode against real BullMQ 5 and 6 in Node: an application that
//! defines its job schedulers only in code, the warden recording them beside
//! it, and every kind of loss and removal the journal must tell apart.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::{block_on, node, wait_until, RedisServer, Setup, Watcher, FAST_RECOVERY, FAST_WATCH};

const APP: &str = "app";
const REPORTS: &str = "reports";
const WAIT: Duration = Duration::from_secs(30);

/// The application's schedulers, and one every second that a Worker runs.
fn app_schedulers() -> Value {
    let mut schedulers = support::app_schedulers();
    if let Some(list) = schedulers.as_array_mut() {
        list.push(json!({"id": "pulse", "name": "pulse", "repeat": {"every": 1000}}));
    }
    schedulers
}

/// A watcher in journal mode that has read its journal once.
fn journal_watcher(redis: &RedisServer) -> (Setup, Watcher) {
    let setup = journal_setup(redis);
    let watcher = Watcher::start(&setup);
    assert!(watcher.wait_for("source_up", 1, WAIT), "{}", watcher.log());
    (setup, watcher)
}

fn journal_setup(redis: &RedisServer) -> Setup {
    Setup::new(
        redis,
        &format!(
            "[redis]\nurl = \"{{redis}}\"\n[source]\nurl = \"journal://{{dir}}/journal.db\"\n\
             [recovery]\n{FAST_RECOVERY}{FAST_WATCH}"
        ),
    )
}

/// getJobSchedulers() of `queue`, sorted, without the iteration count (a
/// re-created scheduler counts from 1 again) and without the next run of
/// `pulse`, which a Worker moves on every second.
fn schedulers(major: u8, redis: &RedisServer, queue: &str) -> Vec<Value> {
    let listed = node(major, "schedulers", redis, queue, &[], None);
    support::comparable_schedulers(&listed, |s| match s["key"] == "pulse" {
        true => &["iterationCount", "next"],
        false => &["iterationCount"],
    })
}

/// (queue, id) of every scheduler in the journal file.
fn journal_rows(setup: &Setup) -> Vec<(String, String)> {
    let url = format!("sqlite://{}/journal.db?mode=rw", setup.dir.path().display());
    block_on(move || async move {
        use sqlx::Connection;
        let mut conn = sqlx::SqliteConnection::connect(&url)
            .await
            .expect("open the journal");
        sqlx::query_as::<_, (String, String)>("SELECT queue, id FROM schedulers ORDER BY queue, id")
            .fetch_all(&mut conn)
            .await
            .expect("read the journal")
    })
}

fn journal_holds(setup: &Setup, queue: &str, id: &str) -> bool {
    journal_rows(setup)
        .iter()
        .any(|(q, i)| q == queue && i == id)
}

/// Waits for `reads` more reads of the journal by the watcher: comparisons
/// that had the chance to restore what they should not.
fn let_comparisons_pass(watcher: &Watcher, reads: usize) {
    let seen = watcher.count("source_up");
    assert!(
        watcher.wait_for("source_up", seen + reads, WAIT),
        "no further comparison:\n{}",
        watcher.log()
    );
}

/// Runs the application's Worker until `scheduler` ran `runs` times.
fn worker_runs(major: u8, redis: &RedisServer, scheduler: &str, runs: u64) {
    let until = runs.to_string();
    let args = [
        "--until-runs",
        &until,
        "--scheduler",
        scheduler,
        "--timeout-ms",
        "20000",
    ];
    let report = node(major, "worker", redis, APP, &args, None);
    assert_eq!(report["runs"], runs, "{report}");
}

fn without(entries: &[Value], key: &str) -> Vec<Value> {
    entries
        .iter()
        .filter(|s| s["key"] != key)
        .cloned()
        .collect()
}

fn schedulers_defined_in_code_survive_losses_and_removals_stay_removed(major: u8) {
    let mut redis = RedisServer::start();
    let setup = journal_setup(&redis);
    let watcher = Watcher::start(&setup);
    assert!(
        watcher.wait_for("source_up", 1, WAIT),
        "the watcher never read the journal:\n{}",
        watcher.log()
    );
    // The application starts and defines its schedulers in code.
    node(
        major,
        "upsert-schedulers",
        &redis,
        APP,
        &[],
        Some(&app_schedulers()),
    );
    let weekly = json!([{"id": "weekly", "name": "summary", "repeat": {"pattern": "0 8 * * MON"}}]);
    node(
        major,
        "upsert-schedulers",
        &redis,
        REPORTS,
        &[],
        Some(&weekly),
    );
    // Its Worker takes the first run BullMQ gives a new interval scheduler
    // at once; from then on `beat` runs on its grid (its offset).
    worker_runs(major, &redis, "beat", 1);
    assert!(
        wait_until(WAIT, || journal_rows(&setup).len() == 9),
        "journal: {:?}\n{}",
        journal_rows(&setup),
        watcher.log()
    );
    let app = schedulers(major, &redis, APP);
    let reports = schedulers(major, &redis, REPORTS);
    assert_eq!(app.len(), 8);

    // FLUSHALL, then a restart without persistence: everything comes back.
    redis.redis(&["FLUSHALL"]);
    assert!(
        wait_until(WAIT, || schedulers(major, &redis, APP) == app
            && schedulers(major, &redis, REPORTS) == reports),
        "after FLUSHALL: {:?}\n{}",
        schedulers(major, &redis, APP),
        watcher.log()
    );
    redis.start_again();
    assert!(
        wait_until(WAIT, || schedulers(major, &redis, APP) == app
            && schedulers(major, &redis, REPORTS) == reports),
        "after a restart: {:?}\n{}",
        schedulers(major, &redis, APP),
        watcher.log()
    );
    // The application's Worker runs the restored schedulers.
    worker_runs(major, &redis, "pulse", 2);

    // The application removes one scheduler; a flush later does not bring it back.
    node(
        major,
        "remove-scheduler",
        &redis,
        APP,
        &["--id", "nightly"],
        None,
    );
    assert!(
        wait_until(WAIT, || !journal_holds(&setup, APP, "nightly")),
        "the removal was not recorded:\n{}",
        watcher.log()
    );
    redis.redis(&["FLUSHALL"]);
    let app_left = without(&app, "nightly");
    assert!(
        wait_until(WAIT, || schedulers(major, &redis, APP) == app_left),
        "after the removal and a flush: {:?}\n{}",
        schedulers(major, &redis, APP),
        watcher.log()
    );
    let_comparisons_pass(&watcher, 2);
    assert_eq!(schedulers(major, &redis, APP), app_left);

    // The application obliterates a queue: nothing of it comes back.
    node(major, "obliterate", &redis, REPORTS, &[], None);
    assert!(
        wait_until(WAIT, || journal_rows(&setup)
            .iter()
            .all(|(q, _)| q != REPORTS)),
        "the obliteration was not recorded: {:?}\n{}",
        journal_rows(&setup),
        watcher.log()
    );
    redis.redis(&["FLUSHALL"]);
    assert!(
        wait_until(WAIT, || schedulers(major, &redis, APP) == app_left),
        "after the obliteration and a flush:\n{}",
        watcher.log()
    );
    let_comparisons_pass(&watcher, 2);
    assert_eq!(schedulers(major, &redis, REPORTS), Vec::<Value>::new());
    assert!(
        watcher.count("journal_recorded") >= 3,
        "recorded, removed and forgotten are logged:\n{}",
        watcher.log()
    );
}

#[test]
fn bullmq5_schedulers_defined_in_code_survive_losses_and_removals_stay_removed() {
    schedulers_defined_in_code_survive_losses_and_removals_stay_removed(5);
}

#[test]
fn bullmq6_schedulers_defined_in_code_survive_losses_and_removals_stay_removed() {
    schedulers_defined_in_code_survive_losses_and_removals_stay_removed(6);
}

/// A warden killed with SIGKILL while it records leaves a journal that
/// opens, holds only schedulers Redis held, and is completed on restart.
#[test]
fn a_warden_killed_while_recording_leaves_a_consistent_journal() {
    let redis = RedisServer::start();
    let (setup, watcher) = journal_watcher(&redis);
    let many: Vec<Value> = (0..2000)
        .map(|i| json!({"id": format!("job-{i}"), "name": "n", "repeat": {"pattern": format!("{} 2 * * *", i % 60)}}))
        .collect();
    let app = std::thread::spawn({
        let url = redis.url();
        move || {
            let redis = RedisServer::attach(&url);
            node(
                6,
                "upsert-schedulers",
                &redis,
                APP,
                &["--parallel"],
                Some(&Value::from(many)),
            )
        }
    });
    assert!(
        watcher.wait_for("journal_recorded", 1, WAIT),
        "nothing recorded:\n{}",
        watcher.log()
    );
    watcher.signal("KILL");
    app.join().expect("the application's upserts");

    let in_redis: std::collections::BTreeSet<String> = redis
        .zmembers(&format!("bull:{APP}:repeat"))
        .into_iter()
        .collect();
    assert_eq!(in_redis.len(), 2000);
    let url = format!("sqlite://{}/journal.db?mode=rw", setup.dir.path().display());
    let (check, rows) = block_on(move || async move {
        use sqlx::Connection;
        let mut conn = sqlx::SqliteConnection::connect(&url).await.expect("open");
        let check: String = sqlx::query_scalar("PRAGMA integrity_check")
            .fetch_one(&mut conn)
            .await
            .expect("integrity check");
        let rows: Vec<(String, String, String)> =
            sqlx::query_as("SELECT queue, id, pattern FROM schedulers")
                .fetch_all(&mut conn)
                .await
                .expect("read");
        (check, rows)
    });
    assert_eq!(check, "ok");
    for (queue, id, pattern) in &rows {
        assert_eq!(queue, APP);
        assert!(in_redis.contains(id), "invented: {id}");
        let n: u32 = id.trim_start_matches("job-").parse().expect("job-<n>");
        assert_eq!(pattern, &format!("{} 2 * * *", n % 60), "{id}");
    }

    // Restarted, it records the rest and restores all of them after a flush.
    let watcher = Watcher::start(&setup);
    assert!(
        wait_until(WAIT, || journal_rows(&setup).len() == 2000),
        "journal holds {} after the restart:\n{}",
        journal_rows(&setup).len(),
        watcher.log()
    );
    redis.redis(&["FLUSHALL"]);
    assert!(
        wait_until(WAIT, || redis.zcard(&format!("bull:{APP}:repeat")) == 2000),
        "{}",
        watcher.log()
    );
}

/// Only the queues `[source] queues` names are recorded and restored.
#[test]
fn listed_queues_alone_are_recorded() {
    let redis = RedisServer::start();
    let setup = Setup::new(
        &redis,
        &format!(
            "[redis]\nurl = \"{{redis}}\"\n[source]\nurl = \"journal://{{dir}}/journal.db\"\n\
             queues = [\"{APP}\"]\n[recovery]\n{FAST_RECOVERY}{FAST_WATCH}"
        ),
    );
    let watcher = Watcher::start(&setup);
    assert!(watcher.wait_for("source_up", 1, WAIT), "{}", watcher.log());
    let one = json!([{"id": "one", "name": "n", "repeat": {"pattern": "0 1 * * *"}}]);
    node(6, "upsert-schedulers", &redis, APP, &[], Some(&one));
    node(6, "upsert-schedulers", &redis, REPORTS, &[], Some(&one));
    assert!(
        wait_until(WAIT, || journal_holds(&setup, APP, "one")),
        "{}",
        watcher.log()
    );
    let_comparisons_pass(&watcher, 2);
    assert_eq!(journal_rows(&setup), [(APP.to_owned(), "one".to_owned())]);
}

/// Keys that only a task table has are configuration errors with a journal.
#[test]
fn journal_mode_refuses_keys_that_do_not_apply() {
    let redis = RedisServer::start();
    for (extra, key) in [
        ("query = \"SELECT 1\"\n", "source.query"),
        ("scheduler_id = \"app:{id}\"\n", "source.scheduler_id"),
        (
            "[recovery]\nprune_orphans = true\n",
            "recovery.prune_orphans",
        ),
    ] {
        let setup = Setup::new(
            &redis,
            &format!(
                "[redis]\nurl = \"{{redis}}\"\n[source]\nurl = \"journal://{{dir}}/journal.db\"\n{extra}"
            ),
        );
        let run = setup.warden(&["recover", "--dry-run"]);
        assert_eq!(run.code, 2, "{key}: {}", run.stderr);
        assert!(run.stderr.contains(key), "{key}: {}", run.stderr);
        assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
    }
    let setup = Setup::new(
        &redis,
        "[redis]\nurl = \"{redis}\"\n[source]\nurl = \"journal://{dir}/missing/journal.db\"\n",
    );
    let run = setup.warden(&["recover", "--dry-run"]);
    assert_eq!(run.code, 6, "{}", run.stderr);
    assert!(run.stderr.contains("journal"), "{}", run.stderr);
}

/// `recover` reads the journal as it is, like rows: a dry run plans the
/// restore and writes nothing, the run restores through BullMQ.
#[test]
fn recover_from_the_command_line_reads_the_journal() {
    let redis = RedisServer::start();
    let (setup, mut watcher) = journal_watcher(&redis);
    node(
        6,
        "upsert-schedulers",
        &redis,
        APP,
        &[],
        Some(&app_schedulers()),
    );
    worker_runs(6, &redis, "beat", 1);
    assert!(
        wait_until(WAIT, || journal_rows(&setup).len() == 8),
        "{}",
        watcher.log()
    );
    let before = schedulers(6, &redis, APP);
    assert_eq!(watcher.terminate(), Some(0));

    redis.redis(&["FLUSHALL"]);
    let dry = setup.warden(&["recover", "--dry-run", "--json"]);
    assert_eq!(dry.code, 0, "{}", dry.stderr);
    assert_eq!(dry.json()["created"], 8, "{}", dry.stdout);
    assert_eq!(redis.zcard(&format!("bull:{APP}:repeat")), 0);
    let (code, report) = setup.recover();
    assert_eq!((code, &report["created"]), (0, &json!(8)), "{report}");
    assert_eq!(schedulers(6, &redis, APP), before);
}

/// The deletion of a whole repeat set, or of one scheduler's hash, is a
/// loss: announced, but not as BullMQ's removal, so it is restored.
#[test]
fn a_deleted_repeat_set_or_hash_is_restored_not_removed() {
    let redis = RedisServer::start();
    let (setup, watcher) = journal_watcher(&redis);
    let two = json!([
        {"id": "one", "name": "n", "repeat": {"pattern": "0 1 * * *"}},
        {"id": "two", "name": "n", "repeat": {"pattern": "0 2 * * *"}}
    ]);
    node(6, "upsert-schedulers", &redis, APP, &[], Some(&two));
    assert!(
        wait_until(WAIT, || journal_rows(&setup).len() == 2),
        "{}",
        watcher.log()
    );
    // A cron scheduler's hash rewritten in place loses the `offset: 0` that
    // BullMQ keeps for it (an interval field, meaningless for cron).
    let cron_view = |redis: &RedisServer| -> Vec<Value> {
        let mut entries = schedulers(6, redis, APP);
        for entry in &mut entries {
            if let Some(object) = entry.as_object_mut() {
                object.remove("offset");
            }
        }
        entries
    };
    let before = cron_view(&redis);
    let set = format!("bull:{APP}:repeat");
    for deleted in [set.clone(), format!("{set}:two")] {
        let restored = watcher.count("recovery_finished");
        redis.redis(&["DEL", &deleted]);
        assert!(
            watcher.wait_for("recovery_finished", restored + 1, WAIT),
            "{deleted}:\n{}",
            watcher.log()
        );
        assert!(
            wait_until(WAIT, || cron_view(&redis) == before),
            "{deleted}: {:?}\n{}",
            cron_view(&redis),
            watcher.log()
        );
        assert_eq!(journal_rows(&setup).len(), 2, "{deleted}");
    }
    assert_eq!(watcher.count("journal_failed"), 0, "{}", watcher.log());
}
