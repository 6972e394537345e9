//! The watcher while its source database is down: a loss is restored from
//! the snapshot of the last rows read (also after a restart), the real source
//! is compared as soon as it answers, failures come within
//! `source.connect_timeout` and hold no lease, and `/readyz` and the status
//! route say what is true. PostgreSQL "goes down" (every connection closed
//! at once) or hangs behind the harness's TCP proxy, which each test
//! controls; the shared server keeps running.

mod support;

use std::thread;
use std::time::{Duration, Instant};

use support::{
    free_local_addr, http, run_sql, wait_until, wait_until_ready, Database, Outage, Proxy,
    RedisServer, Setup, Watcher,
};

const SECOND: Duration = Duration::from_secs(1);
const QUEUE_SET: &str = "bull:inspection:repeat";
const LEASE_KEY: &str = "bull:bullmq-warden:recovery-lease";

/// Three cron rows on PostgreSQL.
fn tasks_table(db: &Database) {
    run_sql(
        &db.url,
        "CREATE TABLE inspection_tasks (id INTEGER PRIMARY KEY, name TEXT, cron TEXT,
           enabled BOOLEAN NOT NULL DEFAULT TRUE);
         INSERT INTO inspection_tasks (id, name, cron) VALUES
           (1, 'disk', '0 3 * * *'), (2, 'mail', '0 4 * * *'), (3, 'logs', '0 5 * * *');",
    );
}

/// A watcher over `source_url` with its API on `listen`; `extra` goes into
/// `[recovery]`.
fn setup(redis: &RedisServer, source_url: &str, listen: &str, extra: &str) -> Setup {
    Setup::new(
        redis,
        &format!(
            "[redis]\nurl = \"{{redis}}\"\n\
             [source]\nurl = \"{source_url}\"\n\
             query = \"SELECT id, name, cron FROM inspection_tasks WHERE enabled\"\n\
             connect_timeout = \"1s\"\nsnapshot_file = \"{{dir}}/snapshot.json\"\n\
             [watch]\ninfo_interval = \"200ms\"\ndrift_interval = \"2s\"\n\
             debounce_quiet = \"500ms\"\ndebounce_max = \"4s\"\n\
             [http]\nlisten = \"{listen}\"\n\
             [recovery]\nprune_orphans = true\nbackoff_min = \"200ms\"\nbackoff_max = \"1s\"\n\
             lease_ttl = \"3s\"\n{extra}"
        ),
    )
}

/// PostgreSQL with the task table, reached through a proxy the test can cut,
/// and a watcher's config over it serving HTTP on `base`.
struct Fixture {
    db: Database,
    redis: RedisServer,
    proxy: Proxy,
    base: String,
    setup: Setup,
}

impl Fixture {
    fn new(extra: &str) -> Self {
        let db = Database::postgres();
        tasks_table(&db);
        let redis = RedisServer::start();
        let proxy = Proxy::in_front_of(&db.url);
        let listen = free_local_addr();
        let setup = setup(&redis, &proxy.url_for(&db.url), &listen, extra);
        Self {
            db,
            redis,
            proxy,
            base: format!("http://{listen}"),
            setup,
        }
    }
}

fn metric(base: &str, name: &str) -> Option<f64> {
    let (_, page) = http("GET", &format!("{base}/metrics"), &[]);
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

fn readyz(base: &str) -> serde_json::Value {
    let (_, body) = http("GET", &format!("{base}/readyz"), &[]);
    serde_json::from_str(&body).unwrap_or_default()
}

/// Waits until the repeat set holds `n` members; the time it took.
fn until_schedulers(redis: &RedisServer, n: u64, timeout: Duration) -> Option<Duration> {
    let started = Instant::now();
    wait_until(timeout, || redis.zcard(QUEUE_SET) == n).then(|| started.elapsed())
}

#[test]
fn a_loss_while_postgres_is_down_is_restored_from_the_snapshot_and_reconciled_after() {
    let Fixture {
        db,
        redis,
        proxy,
        base,
        setup,
    } = Fixture::new("");
    // A connect_timeout far longer than the repair needs: waiting it out
    // cannot pass for not waiting, however slow the machine.
    let connect_timeout = 10 * SECOND;
    let long_timeout = [("BULLMQ_WARDEN__SOURCE__CONNECT_TIMEOUT", "10s")];
    let watcher = Watcher::start_env(&setup, &long_timeout);
    wait_until_ready(&base, &watcher, 20 * SECOND);
    assert_eq!(redis.zcard(QUEUE_SET), 3);

    // A stopped PostgreSQL refuses connections: the case the pool would
    // otherwise retry for the whole connect_timeout.
    proxy.go_down(Outage::Refused);
    redis.redis(&["FLUSHALL"]);
    let took = until_schedulers(&redis, 3, 2 * connect_timeout)
        .unwrap_or_else(|| panic!("not restored:\n{}", watcher.log()));
    println!("PostgreSQL cut, FLUSHALL: 3 schedulers back from the snapshot in {took:?}");
    assert!(
        took < connect_timeout / 2,
        "took {took:?}: the refused connection was retried until connect_timeout:\n{}",
        watcher.log()
    );
    assert!(watcher.wait_for("restored_from_snapshot", 1, 5 * SECOND));
    let restored = &watcher.events("restored_from_snapshot")[0];
    assert_eq!(restored["created"], 3, "{restored}");
    assert_eq!(
        metric(&base, "bullmq_warden_restores_total{source=\"snapshot\"}"),
        Some(1.0)
    );
    let ready = readyz(&base);
    assert_eq!(ready["source"], false, "{ready}");
    assert_eq!(ready["ready"], false, "{ready}");
    let asked = Instant::now();
    let (code, _) = http("GET", &format!("{base}/api/bullmq/status"), &[]);
    let answered = asked.elapsed();
    println!("GET /api/bullmq/status with the source down: {code} in {answered:?}");
    assert_eq!(code, 200);
    assert!(
        answered < connect_timeout / 2,
        "status waited for the source: {answered:?}"
    );

    // Meanwhile the rows change: one pattern, one row disabled.
    run_sql(
        &db.url,
        "UPDATE inspection_tasks SET cron = '30 4 * * *' WHERE id = 2;
         UPDATE inspection_tasks SET enabled = FALSE WHERE id = 3;",
    );
    thread::sleep(SECOND);
    assert_eq!(redis.zcard(QUEUE_SET), 3, "the snapshot removes nothing");
    proxy.come_back();
    let reconciled = wait_until(15 * SECOND, || {
        redis.zcard(QUEUE_SET) == 2
            && redis.redis(&["HGET", "bull:inspection:repeat:inspection:2", "pattern"])
                == "30 4 * * *"
    });
    assert!(reconciled, "not reconciled:\n{}", watcher.log());
    wait_until_ready(&base, &watcher, 10 * SECOND);
    assert_eq!(watcher.count("lease_lost"), 0, "{}", watcher.log());
    let finished = watcher.events("recovery_finished");
    assert_eq!(
        finished.last().map(|f| f["rows"].clone()),
        Some("database".into())
    );
}

#[test]
fn a_warden_restarted_while_the_source_is_down_restores_from_the_persisted_snapshot() {
    let Fixture {
        db: _db,
        redis,
        proxy,
        base,
        setup,
    } = Fixture::new("");
    let mut first = Watcher::start(&setup);
    wait_until_ready(&base, &first, 20 * SECOND);
    let snapshot_file = setup.dir.path().join("snapshot.json");
    assert!(
        wait_until(5 * SECOND, || snapshot_file.exists()),
        "{}",
        first.log()
    );
    assert_eq!(first.terminate(), Some(0));

    proxy.go_down(Outage::Refused);
    redis.redis(&["FLUSHALL"]);
    let started = Instant::now();
    let second = Watcher::start(&setup);
    let took = until_schedulers(&redis, 3, 15 * SECOND)
        .map(|_| started.elapsed())
        .unwrap_or_else(|| panic!("not restored:\n{}", second.log()));
    println!("restarted with PostgreSQL cut: 3 schedulers back from the snapshot file {took:?} after the start");
    assert_eq!(second.count("snapshot_loaded"), 1, "{}", second.log());
    assert!(second.wait_for("restored_from_snapshot", 1, 5 * SECOND));
    assert_eq!(second.count("lease_lost"), 0);
}

#[test]
fn a_corrupt_snapshot_file_is_reported_and_ignored() {
    let redis = RedisServer::start();
    let setup = Setup::sqlite(
        &redis,
        "[watch]\ninfo_interval = \"200ms\"\n[http]\nlisten = \"\"\n",
    );
    support::sqlite_rows(&setup, 2, "inspection");
    let snapshot_file = setup.dir.path().join("tasks.db.snapshot.json");
    std::fs::write(&snapshot_file, "{\"version\": 1, \"takenAtMs\": ").expect("write");
    let watcher = Watcher::start(&setup);
    assert!(
        watcher.wait_for("recovery_finished", 1, 10 * SECOND),
        "{}",
        watcher.log()
    );
    let failed = watcher.events("snapshot_failed");
    assert_eq!(failed.len(), 1, "{}", watcher.log());
    assert_eq!(failed[0]["operation"], "read");
    // The next successful read replaces it with a whole one.
    assert!(wait_until(5 * SECOND, || std::fs::read_to_string(
        &snapshot_file
    )
    .is_ok_and(|t| t.starts_with("{\"version\":1,"))));
}

#[test]
fn a_hanging_source_fails_within_connect_timeout_and_holds_no_lease() {
    // No snapshot: every attempt must read the source, and fails.
    let Fixture {
        db: _db,
        redis,
        proxy,
        base,
        setup,
    } = Fixture::new("snapshot_max_age = \"0s\"\n");
    let watcher = Watcher::start(&setup);
    wait_until_ready(&base, &watcher, 20 * SECOND);
    proxy.blackhole(true);
    redis.redis(&["FLUSHALL"]);
    let mut lease_seen = false;
    let until = Instant::now() + 6 * SECOND;
    while Instant::now() < until {
        lease_seen |= redis.redis(&["EXISTS", LEASE_KEY]) == "1";
        thread::sleep(Duration::from_millis(20));
    }
    let asked = Instant::now();
    let (code, _) = http("GET", &format!("{base}/api/bullmq/status"), &[]);
    let status_took = asked.elapsed();
    let failed = watcher.events("recovery_failed");
    println!(
        "blackholed PostgreSQL: {} failed attempts in 6 s; status {code} in {status_took:?}; {}",
        failed.len(),
        failed.first().map(|f| f.to_string()).unwrap_or_default()
    );
    assert!(!lease_seen, "the lease was held while the source was read");
    assert!(failed.len() >= 2, "{}", watcher.log());
    assert!(failed.iter().all(|f| f["reason"] == "source"), "{failed:?}");
    assert!(
        failed[0].to_string().contains("source.connect_timeout"),
        "{}",
        failed[0]
    );
    assert_eq!(watcher.count("lease_lost"), 0);
    assert!(status_took < SECOND, "{status_took:?}");
    let ready = readyz(&base);
    assert_eq!(
        (ready["source"].clone(), ready["ready"].clone()),
        (false.into(), false.into()),
        "{ready}"
    );
    proxy.blackhole(false);
    assert!(
        until_schedulers(&redis, 3, 15 * SECOND).is_some(),
        "{}",
        watcher.log()
    );
}

#[test]
fn readyz_is_not_synced_while_drift_waits_to_be_repaired() {
    let redis = RedisServer::start();
    let listen = free_local_addr();
    let base = format!("http://{listen}");
    // A scheduler changed in Redis behind the rows' back is seen by the
    // periodic check, then confirmed after a long debounce window: the time
    // /readyz must say so. (A change of the rows would be acted on at once.)
    let setup = Setup::sqlite(
        &redis,
        &format!(
            "[watch]\ninfo_interval = \"200ms\"\ndrift_interval = \"1s\"\n\
             debounce_quiet = \"3s\"\ndebounce_max = \"6s\"\n[http]\nlisten = \"{listen}\"\n"
        ),
    );
    support::sqlite_rows(&setup, 2, "inspection");
    let watcher = Watcher::start(&setup);
    wait_until_ready(&base, &watcher, 20 * SECOND);
    assert_eq!(readyz(&base)["synced"], true);
    let hash = "bull:inspection:repeat:inspection:1";
    redis.redis(&["HSET", hash, "pattern", "7 7 * * *"]);
    assert!(
        wait_until(5 * SECOND, || readyz(&base)["synced"] == false),
        "{}",
        watcher.log()
    );
    let ready = readyz(&base);
    assert_eq!(ready["ready"], false, "{ready}");
    assert!(
        wait_until(10 * SECOND, || readyz(&base)["synced"] == true),
        "{}",
        watcher.log()
    );
    // Row 1's pattern, as `sqlite_rows` writes it.
    assert_eq!(redis.redis(&["HGET", hash, "pattern"]), "1 3 * * *");
}

#[test]
fn a_source_down_from_the_start_is_reported_at_once_and_retried_when_it_says() {
    let redis = RedisServer::start();
    let listen = free_local_addr();
    let base = format!("http://{listen}");
    // Nothing listens there: every connection is refused.
    let nowhere = format!(
        "postgres://warden@127.0.0.1:{}/none?sslmode=disable",
        support::free_port()
    );
    let setup = setup(&redis, &nowhere, &listen, "");
    let watcher = Watcher::start(&setup);
    assert!(
        watcher.wait_for("recovery_failed", 4, 15 * SECOND),
        "{}",
        watcher.log()
    );
    let asked = Instant::now();
    let (code, body) = http("GET", &format!("{base}/api/bullmq/status"), &[]);
    let status_took = asked.elapsed();
    let ready = readyz(&base);
    let failed = watcher.events("recovery_failed");
    let at = |event: &serde_json::Value| {
        let text = event["timestamp"].as_str().unwrap_or_default();
        chrono::DateTime::parse_from_rfc3339(text).expect("timestamp")
    };
    // Each next attempt fails where the log said it would start, give or
    // take one connection attempt.
    let lags: Vec<i64> = failed
        .windows(2)
        .map(|pair| {
            let gap = (at(&pair[1]) - at(&pair[0])).num_milliseconds();
            gap - pair[0]["retry_in_ms"].as_i64().unwrap_or_default()
        })
        .collect();
    println!(
        "source refused from the start: status {code} in {status_took:?}; readyz {ready}; \
         failure after the logged retry_in_ms by {lags:?} ms; {}",
        failed[0]["message"]
    );
    assert_eq!(code, 503, "{body}");
    assert!(status_took < SECOND, "{status_took:?}");
    assert_eq!(ready["source"], false, "{ready}");
    assert!(lags.iter().all(|lag| (0..1000).contains(lag)), "{lags:?}");
    assert!(
        failed[1]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("refused"),
        "{}",
        failed[1]
    );
    assert_eq!(watcher.count("lease_lost"), 0);
}
