//! `recover`, `status` and `remove-schedulers` against a real redis-server and
//! a real SQLite source.

mod support;

use support::{RedisServer, Setup, TASKS_TABLE_SQLITE};

fn seeded(redis: &RedisServer, extra_toml: &str) -> Setup {
    let setup = Setup::sqlite(redis, extra_toml);
    setup.sql(TASKS_TABLE_SQLITE);
    setup.sql(
        "INSERT INTO inspection_tasks (id, name, cron, every_ms, tz, payload, opts, queue) VALUES
         (1, 'disk', '*/5 * * * *', NULL, NULL, '{\"host\":\"db-1\"}', '{\"attempts\":3}', NULL),
         (2, 'report', '0 30 2 * * *', NULL, 'Europe/Berlin', NULL, NULL, 'reports'),
         (3, 'beat', NULL, 60000, NULL, NULL, NULL, NULL);
         INSERT INTO inspection_tasks (id, name, cron, enabled) VALUES (4, 'off', '* * * * *', 0);",
    );
    setup
}

#[test]
fn recover_creates_every_enabled_row_and_a_second_run_changes_nothing() {
    let redis = RedisServer::start();
    let setup = seeded(&redis, "");

    let (code, report) = setup.recover();
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["success"], true);
    assert_eq!(report["created"], 3);
    assert_eq!(report["recoveredTasks"], 3);
    let mut inspection = redis.zmembers("bull:inspection:repeat");
    inspection.sort();
    assert_eq!(inspection, vec!["inspection:1", "inspection:3"]);
    assert_eq!(redis.zcard("bull:inspection:repeat"), 2);
    assert_eq!(redis.zcard("bull:reports:repeat"), 1);
    assert_eq!(
        redis.redis(&["HGET", "bull:inspection:repeat:inspection:1", "data"]),
        "{\"host\":\"db-1\"}"
    );
    assert_eq!(
        redis.redis(&["HGET", "bull:reports:repeat:inspection:2", "tz"]),
        "Europe/Berlin"
    );
    let delayed_before = redis.zcard("bull:reports:delayed");
    let ids_before = redis.redis(&["GET", "bull:reports:id"]);

    let (code, again) = setup.recover();
    assert_eq!(code, 0);
    assert_eq!(again["unchanged"], 3, "{again}");
    assert_eq!(again["created"], 0);
    assert_eq!(again["updated"], 0);
    assert_eq!(redis.zcard("bull:reports:delayed"), delayed_before);
    assert_eq!(
        redis.redis(&["GET", "bull:reports:id"]),
        ids_before,
        "no job was added"
    );
}

/// The list of changes has one entry per scheduler: printed only when asked
/// for. The counts, invalid rows and failures are always there.
#[test]
fn json_lists_the_changes_only_when_asked() {
    let redis = RedisServer::start();
    let setup = seeded(&redis, "");
    let run = setup.warden(&["recover", "--json"]);
    let report = run.json();
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(report["created"], 3, "{report}");
    assert!(report.get("changes").is_none(), "{report}");
    assert!(report["invalid"].is_array() && report["failed"].is_array());
    let plain = setup.warden(&["recover", "--dry-run"]);
    assert_eq!(
        plain.stdout.trim(),
        format!(
            "plan: 0 created, 0 updated, 3 unchanged, 0 removed, 0 invalid, 0 failed in {} ms",
            plain_ms(&plain.stdout)
        ),
        "{}",
        plain.stdout
    );
    let listed = setup.warden(&["recover", "--json", "--changes"]).json();
    assert_eq!(listed["changes"], serde_json::json!([]), "{listed}");
}

/// The milliseconds a plain report's summary line ends with.
fn plain_ms(stdout: &str) -> &str {
    stdout.trim().rsplit(' ').nth(1).unwrap_or_default()
}

#[test]
fn dry_run_plans_without_writing() {
    let redis = RedisServer::start();
    let setup = seeded(&redis, "");
    let run = setup.warden(&["recover", "--dry-run", "--json", "--changes"]);
    let plan = run.json();
    assert_eq!(run.code, 0);
    assert_eq!(plan["dryRun"], true);
    assert_eq!(plan["created"], 3);
    assert_eq!(plan["changes"].as_array().unwrap().len(), 3);
    assert_eq!(redis.redis(&["DBSIZE"]), "0");
}

#[test]
fn invalid_rows_are_skipped_and_named_while_the_rest_is_restored() {
    let redis = RedisServer::start();
    let setup = Setup::sqlite(&redis, "");
    setup.sql(TASKS_TABLE_SQLITE);
    setup.sql(
        "INSERT INTO inspection_tasks (id, name, cron, every_ms, tz, payload, opts) VALUES
         (10, 'ok', '0 * * * *', NULL, NULL, NULL, NULL),
         (11, 'bad-cron', '0 0 * *', NULL, NULL, NULL, NULL),
         (12, 'w-cron', '0 0 15W * *', NULL, NULL, NULL, NULL),
         (13, 'bad-tz', '0 * * * *', NULL, 'Nowhere/City', NULL, NULL),
         (14, 'bad-data', '0 * * * *', NULL, NULL, '{oops', NULL),
         (15, 'bad-opts', '0 * * * *', NULL, NULL, NULL, 'attempts=3'),
         (16, 'both', '0 * * * *', 1000, NULL, NULL, NULL),
         (17, 'neither', NULL, NULL, NULL, NULL, NULL);",
    );
    let (code, report) = setup.recover();
    assert_eq!(code, 3, "exit 3 when rows were skipped: {report}");
    assert_eq!(report["created"], 1);
    let invalid = report["invalid"].as_array().unwrap();
    let reasons: std::collections::BTreeMap<&str, &str> = invalid
        .iter()
        .map(|i| (i["id"].as_str().unwrap(), i["reason"].as_str().unwrap()))
        .collect();
    assert_eq!(reasons.len(), 7, "{reasons:?}");
    assert!(reasons["11"].contains("4 fields"));
    assert!(reasons["12"].contains('W'));
    assert!(reasons["13"].contains("time zone"));
    assert!(reasons["14"].contains("data is not JSON"));
    assert!(reasons["15"].contains("opts is not JSON"));
    assert!(reasons["16"].contains("both"));
    assert!(reasons["17"].contains("neither"));
    assert_eq!(
        redis.zmembers("bull:inspection:repeat"),
        vec!["inspection:10"]
    );
}

#[test]
fn duplicate_scheduler_ids_are_rejected() {
    let redis = RedisServer::start();
    let setup = Setup::sqlite(&redis, "scheduler_id = \"job:{name}\"\n");
    setup.sql(TASKS_TABLE_SQLITE);
    setup.sql(
        "INSERT INTO inspection_tasks (id, name, cron) VALUES
         (1, 'same', '0 * * * *'), (2, 'same', '5 * * * *'), (3, 'other', '0 * * * *');",
    );
    let (code, report) = setup.recover();
    assert_eq!(code, 3);
    assert_eq!(report["invalid"].as_array().unwrap().len(), 2, "{report}");
    assert_eq!(redis.zmembers("bull:inspection:repeat"), vec!["job:other"]);
}

#[test]
fn changed_rows_update_their_schedulers() {
    let redis = RedisServer::start();
    let setup = seeded(&redis, "");
    setup.recover();
    setup.sql("UPDATE inspection_tasks SET cron = '0 12 * * *', payload = '{\"host\":\"db-2\"}' WHERE id = 1");
    let (code, report) = setup.recover();
    assert_eq!(code, 0);
    assert_eq!(report["updated"], 1, "{report}");
    let change = &report["changes"][0];
    assert_eq!(change["schedulerId"], "inspection:1");
    assert_eq!(change["differs"], serde_json::json!(["pattern", "data"]));
    assert_eq!(
        redis.redis(&["HGET", "bull:inspection:repeat:inspection:1", "pattern"]),
        "0 12 * * *"
    );
    let (_, settled) = setup.recover();
    assert_eq!(settled["unchanged"], 3);
}

#[test]
fn orphans_are_reported_and_pruned_only_when_asked_and_only_under_the_template_prefix() {
    let redis = RedisServer::start();
    let setup = seeded(&redis, "");
    setup.recover();
    // The application's own scheduler, outside the template's prefix.
    let app = Setup::sqlite(&redis, "scheduler_id = \"app:{id}\"\n");
    app.sql(TASKS_TABLE_SQLITE);
    app.sql("INSERT INTO inspection_tasks (id, name, cron) VALUES (1, 'app-made', '0 * * * *')");
    app.recover();
    setup.sql("UPDATE inspection_tasks SET enabled = 0 WHERE id = 3");

    let (code, report) = setup.recover();
    assert_eq!(code, 0);
    assert_eq!(report["orphaned"], 1, "{report}");
    assert_eq!(report["removed"], 0);
    assert_eq!(redis.zcard("bull:inspection:repeat"), 3);

    let pruning = Setup::new(
        &redis,
        &std::fs::read_to_string(&setup.config_path)
            .unwrap()
            .replace("[source]", "[recovery]\nprune_orphans = true\n[source]"),
    );
    let (code, report) = pruning.recover();
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["removed"], 1);
    let mut left = redis.zmembers("bull:inspection:repeat");
    left.sort();
    assert_eq!(left, vec!["app:1", "inspection:1"]);
}

#[test]
fn schedulers_whose_next_job_was_deleted_are_repaired() {
    let redis = RedisServer::start();
    let setup = seeded(&redis, "");
    setup.recover();
    // An operator (or eviction) deletes the delayed jobs: nothing would run again.
    let next: String = redis.redis(&["ZSCORE", "bull:reports:repeat", "inspection:2"]);
    redis.redis(&[
        "DEL",
        &format!("bull:reports:repeat:inspection:2:{next}"),
        "bull:reports:delayed",
    ]);
    let run = setup.warden(&["status", "--json"]);
    assert_eq!(
        run.json()["queues"]["reports"]["drift"]["mismatched"],
        1,
        "{}",
        run.stdout
    );

    let (code, report) = setup.recover();
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["updated"], 1);
    assert_eq!(
        report["changes"][0]["differs"],
        serde_json::json!(["next job"])
    );
    assert_eq!(redis.zcard("bull:reports:delayed"), 1);
    let (_, settled) = setup.recover();
    assert_eq!(settled["unchanged"], 3, "{settled}");
}

#[test]
fn schedulers_whose_delayed_set_was_deleted_are_repaired() {
    let redis = RedisServer::start();
    let setup = Setup::sqlite(&redis, "");
    setup.sql(TASKS_TABLE_SQLITE);
    // Runs months apart: always more than a minute away, so their jobs must
    // be waiting in the delayed set.
    setup.sql(
        "INSERT INTO inspection_tasks (id, name, cron) VALUES
         (1, 'new-year', '0 0 1 1 *'), (2, 'mid-year', '0 12 1 7 *');",
    );
    setup.recover();
    let mut jobs = redis.zmembers("bull:inspection:delayed");
    jobs.sort();
    assert_eq!(jobs.len(), 2);
    // The set goes; the job hashes stay, pointed at by their schedulers, but
    // nothing would ever move them on.
    redis.redis(&["DEL", "bull:inspection:delayed"]);
    let status = setup.warden(&["status", "--json"]).json();
    assert_eq!(
        status["queues"]["inspection"]["drift"]["mismatched"], 2,
        "{status}"
    );

    let (code, report) = setup.recover();
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["updated"], 2, "{report}");
    assert_eq!(
        report["changes"][0]["differs"],
        serde_json::json!(["next job"])
    );
    let mut requeued = redis.zmembers("bull:inspection:delayed");
    requeued.sort();
    assert_eq!(requeued, jobs, "the same runs are queued again");
    assert_eq!(redis.zcard("bull:inspection:repeat"), 2);
    let (_, settled) = setup.recover();
    assert_eq!(settled["unchanged"], 2, "{settled}");
}

#[test]
fn status_reports_counts_rows_and_drift_per_queue() {
    let redis = RedisServer::start();
    let setup = seeded(&redis, "");
    let before = setup.warden(&["status", "--json"]).json();
    let inspection = &before["queues"]["inspection"];
    assert_eq!(inspection["desired"], 2);
    assert_eq!(inspection["repeatable"], 0);
    assert_eq!(inspection["drift"]["missing"], 2);
    for state in [
        "waiting",
        "active",
        "completed",
        "failed",
        "delayed",
        "prioritized",
        "paused",
        "waiting-children",
    ] {
        assert!(
            inspection.get(state).is_some(),
            "{state} missing from {inspection}"
        );
    }
    setup.recover();
    let after = setup
        .warden(&["status", "--json", "--queue", "reports"])
        .json();
    assert_eq!(after["queues"].as_object().unwrap().len(), 1);
    assert_eq!(after["queues"]["reports"]["repeatable"], 1);
    assert_eq!(after["queues"]["reports"]["drift"]["missing"], 0);
    let table = setup.warden(&["status"]);
    assert_eq!(table.code, 0);
    assert!(
        table.stdout.lines().any(|l| l.starts_with("reports")),
        "{}",
        table.stdout
    );
}

#[test]
fn recover_for_one_queue_leaves_the_others_alone() {
    let redis = RedisServer::start();
    let setup = seeded(&redis, "");
    let run = setup.warden(&["recover", "--queue", "reports", "--json"]);
    assert_eq!(run.code, 0);
    assert_eq!(run.json()["created"], 1);
    assert_eq!(redis.zcard("bull:reports:repeat"), 1);
    assert_eq!(redis.zcard("bull:inspection:repeat"), 0);
}

#[test]
fn remove_schedulers_needs_yes_and_spares_other_owners_unless_all() {
    let redis = RedisServer::start();
    let setup = seeded(&redis, "");
    setup.recover();
    let app = Setup::sqlite(&redis, "scheduler_id = \"app:{id}\"\n");
    app.sql(TASKS_TABLE_SQLITE);
    app.sql("INSERT INTO inspection_tasks (id, name, cron) VALUES (1, 'app-made', '0 * * * *')");
    app.recover();

    let refused = setup.warden(&["remove-schedulers", "--queue", "inspection"]);
    assert_eq!(refused.code, 2);
    assert!(refused.stderr.contains("--yes"));
    assert_eq!(redis.zcard("bull:inspection:repeat"), 3);

    let run = setup.warden(&["remove-schedulers", "--queue", "inspection", "--yes"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains("removed 2"), "{}", run.stdout);
    assert_eq!(redis.zmembers("bull:inspection:repeat"), vec!["app:1"]);
    assert_eq!(
        redis.redis(&["EXISTS", "bull:inspection:repeat:inspection:1"]),
        "0"
    );

    let run = setup.warden(&[
        "remove-schedulers",
        "--queue",
        "inspection",
        "--yes",
        "--all",
    ]);
    assert_eq!(run.code, 0);
    assert_eq!(redis.zcard("bull:inspection:repeat"), 0);
}

#[test]
fn a_custom_prefix_and_query_are_honoured() {
    let redis = RedisServer::start();
    let setup = Setup::new(
        &redis,
        "[redis]\nurl = \"{redis}\"\nprefix = \"acme\"\n\
         [source]\nurl = \"sqlite://{dir}/tasks.db\"\nscheduler_id = \"job-{tenant}-{id}\"\n\
         query = \"SELECT task_id AS id, tenant, schedule AS pattern, body AS data, lane AS queue FROM jobs WHERE active = 1\"\n",
    );
    setup.sql(
        "CREATE TABLE jobs (task_id TEXT, tenant TEXT, schedule TEXT, body TEXT, lane TEXT, active INTEGER);
         INSERT INTO jobs VALUES ('a', 't1', '*/10 * * * * *', '{\"n\":1}', 'emails', 1),
                                 ('b', 't2', '0 0 * * *', NULL, 'emails', 0);",
    );
    let (code, report) = setup.recover();
    assert_eq!(code, 0, "{report}");
    assert_eq!(redis.zmembers("acme:emails:repeat"), vec!["job-t1-a"]);
}

#[test]
fn check_reports_persistence_and_drift() {
    let redis = RedisServer::start_with(&["--maxmemory-policy", "allkeys-lru"]);
    let setup = seeded(&redis, "");
    let run = setup.warden(&["check", "--json"]);
    assert_eq!(run.code, 4, "{}", run.stdout);
    let findings = run.json()["findings"].as_array().unwrap().clone();
    let errors: Vec<&str> = findings
        .iter()
        .filter(|f| f["severity"] == "error")
        .map(|f| f["check"].as_str().unwrap())
        .collect();
    assert_eq!(errors, vec!["persistence", "eviction-policy", "drift"]);

    let safe = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "everysec"]);
    let setup = seeded(&safe, "");
    setup.recover();
    let run = setup.warden(&["check"]);
    assert_eq!(run.code, 0, "{}", run.stdout);
    assert!(
        run.stdout.contains("3 schedulers in place"),
        "{}",
        run.stdout
    );
}

#[test]
fn check_degrades_when_config_is_forbidden() {
    let redis = RedisServer::start_with(&["--rename-command", "CONFIG", "\"\""]);
    let setup = seeded(&redis, "");
    setup.recover();
    let run = setup.warden(&["check", "--json"]);
    let findings = run.json()["findings"].as_array().unwrap().clone();
    assert!(
        findings
            .iter()
            .any(|f| f["check"] == "config-access" && f["severity"] == "warning"),
        "{findings:?}"
    );
    assert_eq!(run.code, 0, "{}", run.stdout);
}

#[test]
fn a_deleted_scheduler_set_whose_next_jobs_survived_is_restored() {
    let redis = RedisServer::start();
    let setup = seeded(&redis, "");
    setup.recover();
    // The set goes, the hashes and delayed jobs stay: BullMQ's upsert alone
    // refuses this (job id collision) until the orphaned next job is removed.
    redis.redis(&["DEL", "bull:reports:repeat"]);
    redis.redis(&["CONFIG", "RESETSTAT"]);
    let (code, report) = setup.recover();
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["created"], 1);
    // The orphan is found before writing: BullMQ's removeJob, then one
    // upsert, and no refused upsert in between.
    let stats = redis.redis(&["INFO", "commandstats"]);
    assert!(stats.contains("cmdstat_evalsha:calls=2,"), "{stats}");
    assert_eq!(redis.zcard("bull:reports:repeat"), 1);
    assert_eq!(
        redis.zcard("bull:reports:delayed"),
        1,
        "one next job, not two"
    );
    let (_, settled) = setup.recover();
    assert_eq!(settled["unchanged"], 3, "{settled}");
}
