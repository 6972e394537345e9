//! Compatibility with real BullMQ in Node, on the latest 5.x and 6.x (pinned in
//! tests/node/package-lock.json): what bullmq-warden restores is what BullMQ
//! itself would have written, a real Worker runs it, and `status` reports what
//! BullMQ's own getters report.

mod support;

use serde_json::{json, Value};
use support::{node, RedisServer, Setup, TASKS_TABLE_SQLITE};

const QUEUE: &str = "inspection";
/// 2030-01-01T00:00:00Z: a start date the tests can rely on being in the future.
const START_2030: u64 = 1_893_456_000_000;

/// Rows covering 5- and 6-field patterns, `every`, time zones, non-ASCII data,
/// job options, a limit and a start date.
fn seed_rows(setup: &Setup) {
    setup.sql(TASKS_TABLE_SQLITE);
    setup.sql("ALTER TABLE inspection_tasks ADD COLUMN \"limit\" INTEGER;");
    setup.sql("ALTER TABLE inspection_tasks ADD COLUMN start_date INTEGER;");
    setup.sql(&format!(
        "INSERT INTO inspection_tasks (id, name, cron, every_ms, tz, payload, opts, \"limit\", start_date) VALUES
         (1, 'five-field', '*/5 * * * *', NULL, NULL, '{{\"host\":\"db-1\"}}', NULL, NULL, NULL),
         (2, 'six-field-tz', '0 30 2 * * *', NULL, 'Asia/Shanghai', '{{\"城市\":\"上海\",\"emoji\":\"✓\"}}', NULL, NULL, NULL),
         (3, 'every-second', NULL, 1000, NULL, '{{\"beat\":true}}', NULL, NULL, NULL),
         (4, 'retrying', '0 0 * * MON', NULL, 'America/New_York', NULL,
             '{{\"attempts\":5,\"backoff\":{{\"type\":\"exponential\",\"delay\":2000}},\"removeOnComplete\":100,\"removeOnFail\":{{\"age\":86400}}}}', NULL, NULL),
         (5, 'limited', '0 0 L * *', NULL, NULL, NULL, '{{\"priority\":3}}', 12, NULL),
         (6, 'later', '15 10 * * *', NULL, 'UTC', NULL, NULL, NULL, {START_2030});"
    ));
}

/// The same schedulers, as the application would create them with BullMQ.
fn node_specs() -> Value {
    json!([
        {"id": "inspection:1", "name": "five-field", "repeat": {"pattern": "*/5 * * * *"}, "data": {"host": "db-1"}},
        {"id": "inspection:2", "name": "six-field-tz", "repeat": {"pattern": "0 30 2 * * *", "tz": "Asia/Shanghai"},
         "data": {"城市": "上海", "emoji": "✓"}},
        {"id": "inspection:3", "name": "every-second", "repeat": {"every": 1000}, "data": {"beat": true}},
        {"id": "inspection:4", "name": "retrying", "repeat": {"pattern": "0 0 * * MON", "tz": "America/New_York"},
         "opts": {"attempts": 5, "backoff": {"type": "exponential", "delay": 2000}, "removeOnComplete": 100,
                  "removeOnFail": {"age": 86400}}},
        {"id": "inspection:5", "name": "limited", "repeat": {"pattern": "0 0 L * *", "limit": 12}, "opts": {"priority": 3}},
        {"id": "inspection:6", "name": "later", "repeat": {"pattern": "15 10 * * *", "tz": "UTC", "startDate": START_2030}}
    ])
}

/// getJobSchedulers() entries without the fields that legitimately change
/// between two creations (next run, iteration count, offset).
fn comparable(schedulers: &Value) -> Vec<Value> {
    support::comparable_schedulers(schedulers, |_| &["next", "iterationCount", "offset"])
}

fn restores_what_bullmq_wrote(major: u8) {
    let redis = RedisServer::start();
    // The default query reads the manual's columns; limit and start_date need their own.
    let setup = Setup::sqlite(
        &redis,
        "query = \"SELECT * FROM inspection_tasks WHERE enabled\"\n",
    );
    seed_rows(&setup);

    let created = node(
        major,
        "upsert-schedulers",
        &redis,
        QUEUE,
        &[],
        Some(&node_specs()),
    );
    assert_eq!(created["upserted"], 6);
    let written_by_bullmq = node(major, "schedulers", &redis, QUEUE, &[], None);
    assert_eq!(written_by_bullmq["count"], 6);

    // Nothing lost yet: what BullMQ wrote already matches the rows.
    let (code, report) = setup.recover();
    assert_eq!(code, 0, "{report}");
    assert_eq!(
        report["unchanged"], 6,
        "BullMQ {major}'s own schedulers must read as in sync: {report}"
    );

    redis.redis(&["FLUSHALL"]);
    let (code, report) = setup.recover();
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["created"], 6, "{report}");

    let restored = node(major, "schedulers", &redis, QUEUE, &[], None);
    assert_eq!(restored["count"], 6);
    assert_eq!(comparable(&restored), comparable(&written_by_bullmq));

    let delayed = redis.zcard(&format!("bull:{QUEUE}:delayed"));
    let (code, again) = setup.recover();
    assert_eq!(code, 0);
    assert_eq!(again["unchanged"], 6, "{again}");
    assert_eq!(
        redis.zcard(&format!("bull:{QUEUE}:delayed")),
        delayed,
        "no duplicate jobs"
    );

    let ran = node(
        major,
        "worker",
        &redis,
        QUEUE,
        &[
            "--until-runs",
            "2",
            "--scheduler",
            "inspection:3",
            "--timeout-ms",
            "20000",
        ],
        None,
    );
    assert!(
        ran["runs"].as_u64().unwrap_or(0) >= 2,
        "BullMQ {major} Worker ran: {ran}"
    );
    assert_eq!(ran["jobs"][0]["data"], json!({"beat": true}));
    assert_eq!(ran["jobs"][0]["name"], "every-second");
}

#[test]
fn bullmq5_schedulers_restored_after_flushall_match_and_run() {
    restores_what_bullmq_wrote(5);
}

#[test]
fn bullmq6_schedulers_restored_after_flushall_match_and_run() {
    restores_what_bullmq_wrote(6);
}

fn status_equals_bullmq_counts(major: u8) {
    let redis = RedisServer::start();
    let queue = "pop";
    let setup = Setup::sqlite(&redis, &format!("queue = \"{queue}\"\n"));
    setup.sql(TASKS_TABLE_SQLITE);
    setup.sql("INSERT INTO inspection_tasks (id, name, cron) VALUES (1, 'hourly', '0 * * * *')");
    node(major, "populate-states", &redis, queue, &[], None);
    setup.recover();

    let counts = node(major, "counts", &redis, queue, &[], None);
    let schedulers = node(major, "schedulers", &redis, queue, &[], None);
    let status = setup.warden(&["status", "--json"]).json();
    let ours = &status["queues"][queue];
    let theirs = counts.as_object().expect("counts object");
    for (state, value) in theirs.iter().filter(|(k, _)| k.as_str() != "isPaused") {
        assert_eq!(
            &ours[state], value,
            "BullMQ {major} {state}: ours {ours}, BullMQ {counts}"
        );
    }
    for state in [
        "active",
        "completed",
        "failed",
        "delayed",
        "prioritized",
        "waiting-children",
    ] {
        assert!(
            ours[state].as_u64().unwrap_or(0) > 0,
            "{state} populated: {ours}"
        );
    }
    assert_eq!(ours["repeatable"], schedulers["count"]);
    if major == 5 {
        assert!(
            ours["paused"].as_u64().unwrap_or(0) > 0,
            "5.x parks jobs in paused: {ours}"
        );
    }
}

#[test]
fn status_equals_bullmq5_get_job_counts_in_every_state() {
    status_equals_bullmq_counts(5);
}

#[test]
fn status_equals_bullmq6_get_job_counts_in_every_state() {
    status_equals_bullmq_counts(6);
}

#[test]
fn legacy_repeatable_jobs_of_bullmq5_are_counted_and_never_touched() {
    let redis = RedisServer::start();
    let setup = Setup::sqlite(&redis, "[recovery]\nprune_orphans = true\n");
    setup.sql(TASKS_TABLE_SQLITE);
    setup.sql("INSERT INTO inspection_tasks (id, name, cron) VALUES (1, 'hourly', '0 * * * *')");
    let legacy = node(
        5,
        "add-legacy-repeatable",
        &redis,
        QUEUE,
        &[],
        Some(&json!({"name": "legacy", "data": {"x": 1}, "repeat": {"pattern": "*/5 * * * *"}})),
    );
    let legacy_key = legacy["repeatKey"].as_str().expect("repeat key").to_owned();

    let (code, report) = setup.recover();
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["legacy"], 1);
    assert_eq!(report["removed"], 0);
    let members = redis.zmembers(&format!("bull:{QUEUE}:repeat"));
    assert!(members.contains(&legacy_key), "{members:?}");

    let status = setup.warden(&["status", "--json"]).json();
    assert_eq!(status["queues"][QUEUE]["legacy"], 1);
    assert_eq!(status["queues"][QUEUE]["repeatable"], 2);
    let check = setup.warden(&["check", "--json"]).json();
    let hint = check["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["check"] == "legacy-repeatable")
        .cloned()
        .expect("legacy finding");
    assert!(
        hint["message"].as_str().unwrap().contains("scheduler_id"),
        "{hint}"
    );
}
