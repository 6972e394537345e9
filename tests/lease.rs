//! The recovery lease against a real redis-server: one writer at a time,
//! whether it is a watcher, `recover` from the command line or from the HTTP
//! API, and a writer that loses the lease stops writing.

mod support;

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::{http, RedisServer, Setup, Watcher, FAST_WATCH};

const SECOND: Duration = Duration::from_secs(1);
const LEASE_KEY: &str = "bull:bullmq-warden:recovery-lease";
/// A writer checks the lease every this many writes (`LEASE_CHECK_EVERY`).
const CHECK_EVERY: u64 = 128;

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
fn a_lease_deleted_mid_restore_stops_the_cli_writer_within_a_bounded_number_of_writes() {
    let redis = RedisServer::start();
    // A long ttl: the renewal would notice only after 10 s; the writer's own
    // checks must notice first.
    let setup = Setup::sqlite(&redis, "[recovery]\nconcurrency = 1\nlease_ttl = \"30s\"\n");
    support::sqlite_rows(&setup, 20_000, "inspection");
    std::thread::scope(|scope| {
        let recover = scope.spawn(|| setup.warden(&["recover", "--json", "--changes"]));
        assert!(
            support::wait_until(60 * SECOND, || redis.zcard("bull:inspection:repeat") > 1000),
            "the restore did not start"
        );
        let at_loss = at_once(&redis, "redis.call('DEL', KEYS[1])", "inspection");
        let run = recover.join().expect("recover thread");
        let written = redis.zcard("bull:inspection:repeat");
        assert!(at_loss < 20_000 && written < 20_000, "restore ended first");
        assert!(
            written - at_loss <= CHECK_EVERY + 1,
            "{} writes after the lease was deleted",
            written - at_loss
        );
        assert_eq!(run.code, 7, "{}", run.stderr);
        let report = run.json();
        assert_eq!(report["success"], false);
        let stopped = report["stopped"].as_str().expect("a reason");
        assert!(
            stopped.contains(LEASE_KEY) && stopped.contains("expired or was deleted"),
            "{stopped}"
        );
        assert_eq!(report["created"].as_u64(), Some(written), "{stopped}");
        let not_done = report["changes"]
            .as_array()
            .expect("changes")
            .iter()
            .filter(|c| c["notDone"] == true)
            .count() as u64;
        assert_eq!(not_done, 20_000 - written);
    });
    // The lease was not ours any more: it is not recreated, nothing else runs.
    assert_eq!(redis.redis(&["EXISTS", LEASE_KEY]), "0");
    let rest = setup.warden_env(
        &["recover", "--json"],
        &[("BULLMQ_WARDEN__RECOVERY__CONCURRENCY", "24")],
    );
    assert_eq!(rest.code, 0, "{}", rest.stderr);
    assert_eq!(redis.zcard("bull:inspection:repeat"), 20_000);
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
    support::sqlite_rows(&setup, 20_000, "inspection");
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

/// A `redis-cli MONITOR` of the server, its lines collected as they come.
struct Monitor {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Monitor {
    fn start(redis: &RedisServer) -> Self {
        let mut child = Command::new("redis-cli")
            .args(["-p", &redis.port().to_string(), "MONITOR"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-cli MONITOR");
        let stdout = child.stdout.take().expect("stdout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                sink.lock().expect("lines").push(line);
            }
        });
        // Listening once it reports a command sent after it started.
        assert!(
            support::wait_until(5 * SECOND, || {
                redis.redis(&["PING"]);
                lines
                    .lock()
                    .expect("lines")
                    .iter()
                    .any(|l| l.contains("\"PING\""))
            }),
            "MONITOR did not start"
        );
        Self { child, lines }
    }

    /// The queue of every write that BullMQ's scripts made, in the order
    /// Redis ran them: the commands a script runs appear as `[0 lua]` lines
    /// naming their keys.
    fn writes_by_queue(&self) -> Vec<String> {
        const WRITES: [&str; 9] = [
            "\"ZADD\"",
            "\"HSET\"",
            "\"HMSET\"",
            "\"SET\"",
            "\"DEL\"",
            "\"ZREM\"",
            "\"XADD\"",
            "\"INCR\"",
            "\"LPUSH\"",
        ];
        self.lines
            .lock()
            .expect("lines")
            .iter()
            .filter_map(|line| {
                let (_, command) = line.split_once(" [0 lua] ")?;
                let (name, args) = command.split_once(' ')?;
                if !WRITES.contains(&name.to_ascii_uppercase().as_str()) {
                    return None;
                }
                let queue = args.strip_prefix("\"bull:")?.split(':').next()?;
                Some(queue.to_owned())
            })
            .collect()
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Each queue's writes form one unbroken run: no two writers were writing at once.
fn assert_one_writer_at_a_time(monitor: &Monitor, queues: &[&str]) {
    let writes = monitor.writes_by_queue();
    let mut runs: Vec<(String, usize)> = Vec::new();
    for queue in writes.iter().filter(|q| queues.contains(&q.as_str())) {
        match runs.last_mut() {
            Some((last, n)) if last == queue => *n += 1,
            _ => runs.push((queue.clone(), 1)),
        }
    }
    let writers: std::collections::BTreeSet<&str> = runs.iter().map(|(q, _)| q.as_str()).collect();
    assert_eq!(writers.len(), queues.len(), "every writer wrote: {runs:?}");
    assert_eq!(
        runs.len(),
        queues.len(),
        "writes interleaved (queue, writes in a row): {:?}",
        &runs[..runs.len().min(20)]
    );
}

/// Two sources of `n` rows, each for its own queue, on one Redis: the queue a
/// write touches tells which writer made it. `sections` follow `[source]`.
fn two_sources(redis: &RedisServer, sections: &str, n: u32) -> (Setup, Setup) {
    let alpha = Setup::sqlite(redis, &format!("queue = \"alpha\"\n{sections}"));
    support::sqlite_rows(&alpha, n, "alpha");
    let beta = Setup::sqlite(redis, &format!("queue = \"beta\"\n{sections}"));
    support::sqlite_rows(&beta, n, "beta");
    (alpha, beta)
}

const TWO_WRITERS: &str = "[recovery]\nconcurrency = 4\nlease_wait = \"120s\"\n";

#[test]
fn two_cli_recovers_started_at_once_never_write_at_the_same_time() {
    let redis = RedisServer::start();
    let (alpha, beta) = two_sources(&redis, TWO_WRITERS, 5_000);
    let monitor = Monitor::start(&redis);
    let (a, b) = std::thread::scope(|scope| {
        let a = scope.spawn(|| alpha.recover());
        let b = scope.spawn(|| beta.recover());
        (a.join().expect("alpha"), b.join().expect("beta"))
    });
    assert_eq!(a.0, 0, "{}", a.1);
    assert_eq!(b.0, 0, "{}", b.1);
    assert_eq!(a.1["created"], 5_000);
    assert_eq!(b.1["created"], 5_000);
    assert_one_writer_at_a_time(&monitor, &["alpha", "beta"]);
    assert_eq!(redis.redis(&["EXISTS", LEASE_KEY]), "0", "released");
}

#[test]
fn a_cli_recover_during_a_watchers_restore_waits_for_the_lease() {
    let redis = RedisServer::start();
    // Both configs watch quickly; only alpha's is run as a watcher.
    let (alpha, beta) = two_sources(&redis, &format!("{FAST_WATCH}{TWO_WRITERS}"), 10_000);
    let monitor = Monitor::start(&redis);
    let watcher = Watcher::start(&alpha);
    assert!(
        support::wait_until(60 * SECOND, || redis.zcard("bull:alpha:repeat") > 500),
        "{}",
        watcher.log()
    );
    let (code, report) = beta.recover();
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["created"], 10_000);
    assert!(watcher.wait_for("recovery_finished", 1, 60 * SECOND));
    assert_eq!(redis.zcard("bull:alpha:repeat"), 10_000);
    assert_one_writer_at_a_time(&monitor, &["alpha", "beta"]);
}

#[test]
fn a_recover_while_another_holds_the_lease_fails_after_the_wait_and_writes_nothing() {
    let redis = RedisServer::start();
    let setup = Setup::sqlite(&redis, "[recovery]\nlease_wait = \"1s\"\n");
    support::sqlite_rows(&setup, 3, "inspection");
    redis.redis(&["SET", LEASE_KEY, "db-host-7:4242:00ff", "PX", "600000"]);

    let started = Instant::now();
    let run = setup.warden(&["recover", "--json"]);
    let waited = started.elapsed();
    assert_eq!(run.code, 7, "{}{}", run.stdout, run.stderr);
    assert!(waited >= SECOND, "gave up after {waited:?}");
    assert!(waited < 15 * SECOND, "waited {waited:?}");
    let error = run.stderr.trim();
    assert_eq!(error.lines().count(), 1, "{error}");
    for part in [LEASE_KEY, "db-host-7:4242:00ff", "recovery.lease_wait"] {
        assert!(error.contains(part), "{part} missing from {error}");
    }
    assert_eq!(redis.redis(&["DBSIZE"]), "1", "nothing but the lease");
    assert_eq!(redis.redis(&["GET", LEASE_KEY]), "db-host-7:4242:00ff");

    // A dry run writes nothing and takes no lease.
    let dry = setup.warden(&["recover", "--dry-run", "--json"]);
    assert_eq!(dry.code, 0, "{}", dry.stderr);
    assert_eq!(dry.json()["created"], 3);

    // A lease that ends while a writer waits lets it through.
    redis.redis(&["PEXPIRE", LEASE_KEY, "1500"]);
    let run = setup.warden_env(
        &["recover", "--json"],
        &[("BULLMQ_WARDEN__RECOVERY__LEASE_WAIT", "10s")],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.json()["created"], 3);
    assert_eq!(redis.redis(&["EXISTS", LEASE_KEY]), "0", "released");
}

#[test]
fn the_http_recover_answers_409_while_another_holds_the_lease() {
    let redis = RedisServer::start();
    let addr = support::free_local_addr();
    let setup = Setup::sqlite(
        &redis,
        &format!(
            "{}lease_wait = \"1s\"\n",
            support::fast_watch_with_api(&addr)
        ),
    );
    support::sqlite_rows(&setup, 3, "inspection");
    let watcher = Watcher::start(&setup);
    let base = format!("http://{addr}");
    support::wait_until_ready(&base, &watcher, 10 * SECOND);
    redis.redis(&["SET", LEASE_KEY, "db-host-7:4242:00ff", "PX", "600000"]);
    let before = redis.redis(&["DBSIZE"]);

    let (code, body) = http("POST", &format!("{base}/api/bullmq/recover"), &[]);
    assert_eq!(code, 409, "{body}");
    let error: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let error = error["error"].as_str().expect("an error");
    assert!(
        error.contains(LEASE_KEY) && error.contains("db-host-7:4242:00ff"),
        "{error}"
    );
    assert_eq!(redis.redis(&["DBSIZE"]), before);

    let (code, body) = http(
        "POST",
        &format!("{base}/api/bullmq/recover?dry_run=true"),
        &[],
    );
    assert_eq!(code, 200, "{body}");
}
