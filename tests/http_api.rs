//! The HTTP server of `watch`: metrics, health, and the manual's REST routes.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::{http, RedisServer, Setup, Watcher, FAST_RECOVERY, TASKS_TABLE_SQLITE};

const SECOND: Duration = Duration::from_secs(1);
const STATES: [&str; 8] = [
    "active",
    "completed",
    "delayed",
    "failed",
    "paused",
    "prioritized",
    "waiting",
    "waiting-children",
];

struct Api {
    base: String,
    watcher: Watcher,
    setup: Setup,
}

fn api(redis: &RedisServer, auto: bool, env: &[(&str, &str)]) -> Api {
    api_with(redis, auto, env, "drift_interval = \"2s\"", "")
}

/// `watch` and `http` take extra keys of those sections.
fn api_with(
    redis: &RedisServer,
    auto: bool,
    env: &[(&str, &str)],
    watch: &str,
    http_keys: &str,
) -> Api {
    let addr = support::free_local_addr();
    let setup = Setup::sqlite(
        redis,
        &format!(
            "[watch]\ninfo_interval = \"200ms\"\n{watch}\ndebounce_quiet = \"300ms\"\n\
             [http]\nlisten = \"{addr}\"\n{http_keys}\n[recovery]\nauto = {auto}\n{FAST_RECOVERY}"
        ),
    );
    setup.sql(TASKS_TABLE_SQLITE);
    setup.sql(
        "INSERT INTO inspection_tasks (id, name, cron, every_ms, queue) VALUES
         (1, 'a', '0 * * * *', NULL, NULL), (2, 'b', NULL, 60000, 'mail');",
    );
    let watcher = Watcher::start_env(&setup, env);
    let base = format!("http://{addr}");
    support::wait_until_ready(&base, &watcher, 10 * SECOND);
    Api {
        base,
        watcher,
        setup,
    }
}

impl Api {
    fn get(&self, path: &str) -> (u16, String) {
        http("GET", &format!("{}{path}", self.base), &[])
    }

    fn post(&self, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
        http("POST", &format!("{}{path}", self.base), headers)
    }
}

#[test]
fn status_route_equals_the_status_command() {
    let redis = RedisServer::start();
    let api = api(&redis, true, &[]);
    let (code, body) = api.get("/api/bullmq/status");
    assert_eq!(code, 200, "{body}");
    let from_api: Value = serde_json::from_str(&body).unwrap();
    let from_cli = api.setup.warden(&["status", "--json"]).json();
    assert_eq!(from_api["queues"], from_cli["queues"]);
    for age in ["comparedAt", "polledAt", "ageMs"] {
        assert!(from_api[age].is_u64(), "{age}: {body}");
    }
    for queue in ["inspection", "mail"] {
        for state in STATES {
            assert!(
                from_api["queues"][queue].get(state).is_some(),
                "{queue}/{state}: {body}"
            );
        }
    }
    let (code, body) = api.get("/api/bullmq/status?queue=mail");
    assert_eq!(code, 200);
    let only: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(only["queues"].as_object().unwrap().len(), 1);
}

#[test]
fn recover_route_without_a_configured_token_on_loopback_works_and_matches_the_cli_shape() {
    let redis = RedisServer::start();
    let api = api(&redis, false, &[]);
    let (code, body) = api.post("/api/bullmq/recover?dry_run=true", &[]);
    assert_eq!(code, 200, "{body}");
    let plan: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(plan["dryRun"], true);
    assert_eq!(plan["created"], 2);
    assert_eq!(
        redis.zcard("bull:inspection:repeat"),
        0,
        "dry run wrote nothing"
    );

    let (code, body) = api.post("/api/bullmq/recover", &[]);
    assert_eq!(code, 200, "{body}");
    let report: Value = serde_json::from_str(&body).unwrap();
    for key in [
        "success",
        "recoveredTasks",
        "created",
        "updated",
        "unchanged",
        "removed",
        "invalid",
    ] {
        assert!(report.get(key).is_some(), "{key}: {body}");
    }
    assert_eq!(report["recoveredTasks"], 2);
    assert_eq!(redis.zcard("bull:mail:repeat"), 1);
    let metrics = api.get("/metrics").1;
    assert!(
        metrics.contains("bullmq_warden_recoveries_total{queue=\"mail\",trigger=\"manual\",result=\"success\"} 1"),
        "{metrics}"
    );
}

#[test]
fn mutating_routes_need_the_right_bearer_token() {
    let redis = RedisServer::start();
    let api = api(
        &redis,
        false,
        &[("BULLMQ_WARDEN_API_TOKEN", "s3cret-token")],
    );
    let (code, _) = api.post("/api/bullmq/recover", &[]);
    assert_eq!(code, 401);
    let (code, _) = api.post("/api/bullmq/recover", &[("Authorization", "Bearer wrong")]);
    assert_eq!(code, 401);
    assert_eq!(redis.zcard("bull:inspection:repeat"), 0);
    let (code, body) = api.post(
        "/api/bullmq/recover",
        &[("Authorization", "Bearer s3cret-token")],
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(redis.zcard("bull:inspection:repeat"), 1);
    // The status needs it too; metrics, health and the API's description do not.
    let (code, body) = api.get("/api/bullmq/status");
    assert_eq!(code, 401, "{body}");
    let (code, body) = http(
        "GET",
        &format!("{}/api/bullmq/status", api.base),
        &[("Authorization", "Bearer s3cret-token")],
    );
    assert_eq!(code, 200, "{body}");
    for open in [
        "/metrics",
        "/healthz",
        "/readyz",
        "/api/bullmq/openapi.json",
    ] {
        assert_eq!(api.get(open).0, 200, "{open}");
    }
}

#[test]
fn the_status_can_be_left_open_to_readers() {
    let redis = RedisServer::start();
    let api = api_with(
        &redis,
        false,
        &[("BULLMQ_WARDEN_API_TOKEN", "s3cret-token")],
        "drift_interval = \"2s\"",
        "status_requires_token = false",
    );
    assert!(support::wait_until(5 * SECOND, || api
        .get("/api/bullmq/status")
        .0
        == 200));
    assert_eq!(api.post("/api/bullmq/recover", &[]).0, 401);
}

/// The status comes from what the watcher last polled and compared: parallel
/// requests send no comparison's commands to Redis (ZRANGE of a scheduler set,
/// HMGET of scheduler hashes) and say how old their answer is.
#[test]
fn parallel_status_requests_read_neither_rows_nor_schedulers() {
    let redis = RedisServer::start();
    // No periodic comparison during the test: only the start-up one.
    let api = api_with(&redis, true, &[], "drift_interval = \"1h\"", "");
    let restored = || {
        let (code, body) = api.get("/api/bullmq/status");
        code == 200
            && serde_json::from_str::<Value>(&body).unwrap()["queues"]["mail"]["repeatable"] == 1
    };
    assert!(
        support::wait_until(10 * SECOND, restored),
        "{}",
        api.watcher.log()
    );
    let comparison_commands = || {
        let stats = redis.redis(&["INFO", "commandstats"]);
        ["cmdstat_zrange:", "cmdstat_hmget:"]
            .iter()
            .map(|name| {
                stats
                    .lines()
                    .find_map(|line| line.strip_prefix(name))
                    .and_then(|rest| rest.strip_prefix("calls="))
                    .and_then(|rest| rest.split(',').next())
                    .and_then(|calls| calls.parse::<u64>().ok())
                    .unwrap_or(0)
            })
            .sum::<u64>()
    };
    let before = comparison_commands();
    let url = format!("{}/api/bullmq/status", api.base);
    let answers: Vec<(u16, String)> = std::thread::scope(|scope| {
        let requests: Vec<_> = (0..40)
            .map(|_| scope.spawn(|| http("GET", &url, &[])))
            .collect();
        requests.into_iter().map(|r| r.join().unwrap()).collect()
    });
    for (code, body) in &answers {
        assert_eq!(*code, 200, "{body}");
    }
    assert_eq!(comparison_commands(), before, "a request ran a comparison");
    let status: Value = serde_json::from_str(&answers[0].1).unwrap();
    assert_eq!(status["queues"]["mail"]["desired"], 1);
    assert_eq!(status["queues"]["mail"]["repeatable"], 1);
    assert!(status["ageMs"].as_u64().unwrap() < 3_600_000);
    let (code, body) = api.get("/api/bullmq/status?queue=unknown");
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("unknown"), "{body}");
}

#[test]
fn malformed_requests_get_400_with_a_message() {
    let redis = RedisServer::start();
    let api = api(&redis, false, &[]);
    let (code, body) = api.post("/api/bullmq/recover?dry_run=maybe", &[]);
    assert_eq!(code, 400);
    assert!(body.contains("dry_run"), "{body}");
    let (code, body) = api.post("/api/bullmq/recover?force=1", &[]);
    assert_eq!(code, 400);
    assert!(body.contains("force"), "{body}");
    let (code, body) = api.get("/api/bullmq/status?queue=a&x=1");
    assert_eq!(code, 400, "{body}");
    assert_eq!(api.get("/api/bullmq/status").0, 200);
}

#[test]
fn metrics_cover_every_state_and_move_with_a_recovery() {
    let redis = RedisServer::start();
    let api = api(&redis, true, &[]);
    // Queues named by rows join the poll once the first comparison has listed them.
    assert!(support::wait_until(5 * SECOND, || api
        .get("/metrics")
        .1
        .contains("bullmq_job_count{queue=\"mail\",state=\"active\"}")));
    let (code, text) = api.get("/metrics");
    assert_eq!(code, 200);
    for queue in ["inspection", "mail"] {
        for state in STATES {
            assert!(
                text.contains(&format!(
                    "bullmq_job_count{{queue=\"{queue}\",state=\"{state}\"}}"
                )),
                "{queue}/{state}"
            );
        }
    }
    let restored = |text: &str| {
        text.lines()
            .find(|l| l.starts_with("bullmq_warden_schedulers_restored_total{queue=\"mail\"}"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let before = restored(&text);
    redis.redis(&["DEL", "bull:mail:repeat"]);
    assert!(support::wait_until(10 * SECOND, || restored(
        &api.get("/metrics").1
    ) > before));
    let text = api.get("/metrics").1;
    assert!(text.contains("bullmq_warden_redis_up 1"));
    assert!(text.contains("bullmq_warden_keyspace_notifications_active 1"));
    assert!(text.contains("bullmq_warden_build_info{version="));
    assert!(text.contains("bullmq_warden_drift_schedulers{queue=\"mail\",kind=\"missing\"} 0"));

    let (code, open) = http(
        "GET",
        &format!("{}/metrics", api.base),
        &[("Accept", "application/openmetrics-text; version=1.0.0")],
    );
    assert_eq!(code, 200);
    assert!(open.ends_with("# EOF\n"), "OpenMetrics when asked");
}

#[test]
fn readiness_flips_when_redis_goes_away_and_back() {
    let mut redis = RedisServer::start();
    let api = api(&redis, true, &[]);
    assert_eq!(api.get("/healthz").0, 200);
    redis.stop();
    assert!(support::wait_until(10 * SECOND, || api.get("/readyz").0 == 503));
    assert_eq!(api.get("/healthz").0, 200, "alive while Redis is away");
    redis.start_again();
    assert!(
        support::wait_until(15 * SECOND, || api.get("/readyz").0 == 200),
        "{}",
        api.watcher.log()
    );
}

#[test]
fn a_mutating_api_on_a_public_address_without_a_token_is_refused() {
    let redis = RedisServer::start();
    let setup = Setup::sqlite(&redis, "[http]\nlisten = \"0.0.0.0:0\"\n");
    setup.sql(TASKS_TABLE_SQLITE);
    let run = setup.warden(&["watch"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("BULLMQ_WARDEN_API_TOKEN"),
        "{}",
        run.stderr
    );
}

#[test]
fn persistence_gauges_are_absent_while_config_is_refused() {
    let redis = RedisServer::start_with(&["--rename-command", "CONFIG", "\"\""]);
    let api = api(&redis, true, &[]);
    assert!(support::wait_until(5 * SECOND, || api
        .get("/metrics")
        .1
        .contains("bullmq_warden_redis_config_readable 0")));
    let text = api.get("/metrics").1;
    for unknown in [
        "bullmq_warden_redis_aof_enabled ",
        "bullmq_warden_redis_rdb_save_configured ",
        "bullmq_warden_redis_maxmemory_policy_noeviction ",
        "bullmq_warden_redis_appendfsync{",
    ] {
        assert!(!text.contains(unknown), "{unknown} while CONFIG is refused");
    }
    assert!(
        text.contains("bullmq_warden_keyspace_notifications_active 0"),
        "polling alone"
    );
    assert!(
        text.contains("bullmq_warden_detections_total{cause=\"restart\"} 0"),
        "counters start at zero"
    );
    assert!(text.contains(
        "bullmq_warden_recoveries_total{queue=\"mail\",trigger=\"flush\",result=\"failure\"} 0"
    ));
}

#[test]
fn metrics_and_health_answer_while_redis_is_down_at_start() {
    let mut redis = RedisServer::start();
    redis.stop();
    let addr = support::free_local_addr();
    let setup = Setup::sqlite(
        &redis,
        &format!("[http]\nlisten = \"{addr}\"\n[recovery]\n{FAST_RECOVERY}"),
    );
    setup.sql(TASKS_TABLE_SQLITE);
    let watcher = Watcher::start(&setup);
    let base = format!("http://{addr}");
    assert!(
        support::wait_until(10 * SECOND, || http("GET", &format!("{base}/metrics"), &[])
            .1
            .contains("bullmq_warden_redis_up 0")),
        "{}",
        watcher.log()
    );
    assert_eq!(http("GET", &format!("{base}/healthz"), &[]).0, 200);
    assert_eq!(http("GET", &format!("{base}/readyz"), &[]).0, 503);
    let (code, body) = http("GET", &format!("{base}/api/bullmq/status"), &[]);
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("not connected"), "{body}");
    redis.start_again();
    support::wait_until_ready(&base, &watcher, 15 * SECOND);
}
