//! Fault drills: the real binary against real servers failing the way
//! production fails — a Redis that hangs instead of refusing, a warden killed
//! in the middle of a recovery, a Redis out of memory, a source database that
//! drops or cuts a read. Each drill prints its figures (`cargo test --test
//! drills -- --nocapture`); docs/reliability.md publishes them.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use support::{http, wait_until, ChildGuard, Database, Proxy, RedisServer, Setup, Watcher};

const SECOND: Duration = Duration::from_secs(1);
const LEASE_KEY: &str = "bull:bullmq-warden:recovery-lease";

// ---------------------------------------------------------------------------
// Tools of the drills

fn redis_conn(redis: &RedisServer) -> redis::Connection {
    redis.connect().expect("connect to the test's redis-server")
}

fn query<T: redis::FromRedisValue>(conn: &mut redis::Connection, args: &[&str]) -> T {
    let mut cmd = redis::cmd(args[0]);
    for arg in &args[1..] {
        cmd.arg(*arg);
    }
    cmd.query(conn).unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

/// Open descriptors and resident memory (KiB) of a process.
fn fds_and_rss(pid: u32) -> (usize, u64) {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0);
    let rss = support::rss_kib(pid).map_or(0, |(now, _)| now);
    (fds, rss)
}

/// The value of an unlabelled metric in a Prometheus text page.
fn metric(page: &str, name: &str) -> Option<f64> {
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Every scheduler of `queue` whole: each member of the repeat set has its
/// hash and each scheduler hash its member, and each scheduler has exactly
/// one next job (`repeat:<id>:<millis>`) in the delayed set, with its hash.
/// Returns how many schedulers there are.
fn assert_whole(redis: &RedisServer, queue: &str) -> usize {
    let mut conn = redis_conn(redis);
    let members: BTreeSet<String> = query::<Vec<String>>(
        &mut conn,
        &["ZRANGE", &format!("bull:{queue}:repeat"), "0", "-1"],
    )
    .into_iter()
    .collect();
    let prefix = format!("bull:{queue}:repeat:");
    let keys: Vec<String> = query(&mut conn, &["KEYS", &format!("{prefix}*")]);
    let mut hashes = BTreeSet::new();
    let mut job_hashes = BTreeSet::new();
    for key in &keys {
        let rest = &key[prefix.len()..];
        if members.contains(rest) {
            hashes.insert(rest.to_owned());
        } else if rest
            .rsplit_once(':')
            .is_some_and(|(id, ts)| members.contains(id) && ts.parse::<u64>().is_ok())
        {
            job_hashes.insert(format!("repeat:{rest}"));
        } else {
            panic!("{key}: a scheduler hash or job without its repeat-set member");
        }
    }
    let without_hash: Vec<_> = members.difference(&hashes).collect();
    assert!(
        without_hash.is_empty(),
        "repeat-set members without their hash: {without_hash:?}"
    );
    let delayed: Vec<String> = query(
        &mut conn,
        &["ZRANGE", &format!("bull:{queue}:delayed"), "0", "-1"],
    );
    let mut next_jobs: BTreeMap<&str, usize> = BTreeMap::new();
    for job in &delayed {
        let id = job
            .strip_prefix("repeat:")
            .and_then(|r| r.rsplit_once(':'))
            .map(|(id, _)| id)
            .unwrap_or_else(|| panic!("{job}: not a scheduler's job"));
        assert!(
            members.contains(id),
            "{job}: a next job without its scheduler"
        );
        assert!(
            job_hashes.contains(job),
            "{job}: in the delayed set without its hash"
        );
        *next_jobs.entry(id).or_default() += 1;
    }
    for id in &members {
        assert_eq!(next_jobs.get(id.as_str()), Some(&1), "next jobs of {id}");
    }
    assert_eq!(
        job_hashes.len(),
        members.len(),
        "job hashes outside the delayed set"
    );
    members.len()
}

fn get(base: &str, path: &str) -> (u16, String, Duration) {
    let started = Instant::now();
    let (status, body) = http("GET", &format!("{base}{path}"), &[]);
    (status, body, started.elapsed())
}

// ---------------------------------------------------------------------------
// Drill 1: a Redis that hangs instead of refusing

#[derive(Clone, Copy, Debug)]
enum Hang {
    DebugSleep,
    ClientPause,
    Blackhole,
    /// The partition begins just as a recovery starts, and lasts longer than
    /// the 10 s response timeout of the connection the recovery writes on.
    BlackholeMidRecovery,
}

impl Hang {
    /// Long enough to cross the poll's 2 s deadline several times, short
    /// enough for the suite (a 20 s hang makes no other point).
    fn duration(self) -> Duration {
        match self {
            Hang::BlackholeMidRecovery => Duration::from_secs(12),
            _ => Duration::from_secs(8),
        }
    }
}

fn hang_drill(kind: Hang) {
    let redis = RedisServer::start_with(&["--enable-debug-command", "yes"]);
    let proxy = Proxy::start(format!("127.0.0.1:{}", redis.port()).parse().expect("addr"));
    let watched_url = match kind {
        Hang::Blackhole | Hang::BlackholeMidRecovery => format!("redis://{}", proxy.addr),
        _ => redis.url(),
    };
    let listen = support::free_local_addr();
    let base = format!("http://{listen}");
    // The default poll interval (1 s) and lease ttl (30 s), so that the
    // figures are production's.
    let setup = Setup::new(
        &redis,
        &format!(
            "[redis]\nurl = \"{watched_url}\"\n[source]\nurl = \"sqlite://{{dir}}/tasks.db\"\n\
             [watch]\ndebounce_quiet = \"300ms\"\ndebounce_max = \"4s\"\n\
             [http]\nlisten = \"{listen}\"\n\
             [recovery]\nbackoff_min = \"100ms\"\nbackoff_max = \"2s\"\n"
        ),
    );
    support::sqlite_rows(&setup, 4, "inspection");
    let watcher = Watcher::start(&setup);
    support::wait_until_ready(&base, &watcher, 20 * SECOND);
    assert!(
        watcher.wait_for("recovery_finished", 1, 10 * SECOND),
        "{}",
        watcher.log()
    );
    thread::sleep(SECOND);
    let pid = watcher.pid();
    let (fds_before, rss_before) = fds_and_rss(pid);
    let accepted_before = proxy.accepted();

    // The hang, with data lost while it lasts: a FLUSHALL queued behind the
    // sleep or the pause runs the moment Redis wakes; behind the partition
    // it goes to Redis by another path at once.
    let hang = kind.duration();
    let started = Instant::now();
    let mut helpers = Vec::new();
    let port = redis.port().to_string();
    let cli = move |args: &'static [&'static str]| {
        let port = port.clone();
        thread::spawn(move || {
            let _ = Command::new("redis-cli")
                .args(["-p", &port])
                .args(args)
                .output();
        })
    };
    match kind {
        Hang::DebugSleep => {
            helpers.push(cli(&["DEBUG", "SLEEP", "8"]));
            thread::sleep(Duration::from_millis(300));
            helpers.push(cli(&["FLUSHALL"]));
        }
        Hang::ClientPause => {
            redis.redis(&["CLIENT", "PAUSE", "8000", "ALL"]);
            helpers.push(cli(&["FLUSHALL"]));
        }
        Hang::Blackhole => {
            proxy.blackhole(true);
            redis.redis(&["FLUSHALL"]);
        }
        Hang::BlackholeMidRecovery => {
            let seen = watcher.count("detected");
            redis.redis(&["DEL", "bull:inspection:repeat"]);
            assert!(
                watcher.wait_for("detected", seen + 1, 5 * SECOND),
                "{}",
                watcher.log()
            );
            // Within the debounce window: the recovery starts in the partition.
            proxy.blackhole(true);
        }
    }

    // While it hangs: noticed, reported, and the HTTP routes still answer.
    let mut detected_after = None;
    let mut slowest_http = Duration::ZERO;
    let (mut fds_max, mut rss_max) = (fds_before, rss_before);
    let mut readyz_down = None;
    let mut metric_down = false;
    while started.elapsed() < hang - Duration::from_millis(500) {
        if detected_after.is_none() && watcher.count("redis_down") > 0 {
            detected_after = Some(started.elapsed());
        }
        let (status, page, took) = get(&base, "/metrics");
        assert_eq!(status, 200, "/metrics during the hang");
        slowest_http = slowest_http.max(took);
        if detected_after.is_some() {
            metric_down |= metric(&page, "bullmq_warden_redis_up") == Some(0.0);
            let (status, body, took) = get(&base, "/readyz");
            slowest_http = slowest_http.max(took);
            if status == 503 {
                readyz_down = Some(body);
            }
        }
        let (status, _, took) = get(&base, "/healthz");
        assert_eq!(status, 200, "/healthz during the hang");
        slowest_http = slowest_http.max(took);
        let (fds, rss) = fds_and_rss(pid);
        fds_max = fds_max.max(fds);
        rss_max = rss_max.max(rss);
        thread::sleep(Duration::from_millis(200));
    }
    let detected_after =
        detected_after.unwrap_or_else(|| panic!("never reported down: {}", watcher.log()));
    let accepted_during = proxy.accepted() - accepted_before;
    while started.elapsed() < hang {
        thread::sleep(Duration::from_millis(20));
    }
    proxy.blackhole(false);
    let woke = Instant::now();
    for helper in helpers {
        let _ = helper.join();
    }

    // After: Redis answers again, the loss is repaired, nothing piled up.
    assert!(
        watcher.wait_for("redis_up", 2, 10 * SECOND),
        "{}",
        watcher.log()
    );
    assert!(
        watcher.wait_for("recovery_finished", 2, 15 * SECOND),
        "{}",
        watcher.log()
    );
    let repaired_after = woke.elapsed();
    let finished = &watcher.events("recovery_finished")[1];
    assert_eq!(finished["created"], 4, "{finished}");
    assert_eq!(assert_whole(&redis, "inspection"), 4);
    thread::sleep(SECOND);
    let failed_attempts = watcher.count("recovery_failed");
    let (fds_after, rss_after) = fds_and_rss(pid);
    let clients: usize = redis.redis(&["CLIENT", "LIST"]).lines().count() - 1;
    let open_through_proxy = proxy.open();
    println!(
        "drill 1 {kind:?}: hang {hang:?}; redis_down after {detected_after:?}; repaired {repaired_after:?} \
         after Redis answered; slowest /metrics|/healthz|/readyz {slowest_http:?}; fds {fds_before} → max \
         {fds_max} → {fds_after}; RSS {rss_before} → max {rss_max} → {rss_after} KiB; proxy accepted \
         {accepted_during} during the hang, {open_through_proxy} open after; {clients} warden clients on \
         Redis after; {failed_attempts} failed attempts"
    );
    assert!(
        detected_after <= 5 * SECOND,
        "noticed after {detected_after:?}"
    );
    assert!(
        metric_down,
        "bullmq_warden_redis_up never 0 during the hang"
    );
    let readyz = readyz_down.expect("/readyz never 503 during the hang");
    assert!(readyz.contains("\"redis\":false"), "{readyz}");
    assert!(slowest_http < SECOND, "an HTTP route took {slowest_http:?}");
    assert!(
        fds_max <= fds_before + 4,
        "descriptors piled up: {fds_before} → {fds_max}"
    );
    assert!(
        fds_after <= fds_before + 2,
        "descriptors left: {fds_before} → {fds_after}"
    );
    assert!(
        rss_max <= rss_before + 16 * 1024,
        "memory grew: {rss_before} → {rss_max} KiB"
    );
    // One dial per poll deadline (2 s) at most, and the reconnects of the
    // connections whose commands timed out.
    let dial_bound = hang.as_secs() as usize / 2 + 3;
    assert!(
        accepted_during <= dial_bound,
        "{accepted_during} connections dialled in {hang:?}"
    );
    assert!(
        repaired_after < 5 * SECOND,
        "repaired {repaired_after:?} after Redis answered"
    );
    assert!(clients <= 8, "{clients} clients on Redis after the hang");
    let down = &watcher.events("redis_down")[0];
    assert!(
        down["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{down}"
    );
}

#[test]
fn drill1_debug_sleep_is_reported_down_within_5s_and_repaired_after() {
    hang_drill(Hang::DebugSleep);
}

#[test]
fn drill1_client_pause_all_is_reported_down_within_5s_and_repaired_after() {
    hang_drill(Hang::ClientPause);
}

#[test]
fn drill1_blackholed_connection_is_reported_down_within_5s_and_repaired_after() {
    hang_drill(Hang::Blackhole);
}

#[test]
fn drill1_a_partition_longer_than_the_command_timeout_during_a_recovery_delays_nothing_after() {
    hang_drill(Hang::BlackholeMidRecovery);
}

// ---------------------------------------------------------------------------
// Drill 3: SIGKILL in the middle of a recovery

const KILL_ROWS: u32 = 4000;

#[derive(Clone, Copy, Debug)]
enum KillPoint {
    /// The lease is taken, the comparison runs, nothing is written yet.
    BeforeFirstWrite,
    /// Half the schedulers are written.
    Halfway,
    /// The last scheduler is written; the lease is being released.
    AtRelease,
}

fn reached(conn: &mut redis::Connection, point: KillPoint) -> bool {
    match point {
        KillPoint::BeforeFirstWrite => query::<u64>(conn, &["EXISTS", LEASE_KEY]) == 1,
        KillPoint::Halfway => {
            query::<u64>(conn, &["ZCARD", "bull:inspection:repeat"]) >= u64::from(KILL_ROWS / 2)
        }
        KillPoint::AtRelease => {
            query::<u64>(conn, &["ZCARD", "bull:inspection:repeat"]) == u64::from(KILL_ROWS)
        }
    }
}

fn killed_setup(redis: &RedisServer, listen: &str) -> Setup {
    let setup = Setup::sqlite(
        redis,
        &format!(
            "[watch]\ninfo_interval = \"200ms\"\ndrift_interval = \"30s\"\ndebounce_quiet = \"300ms\"\n\
             [http]\nlisten = \"{listen}\"\n\
             [recovery]\nconcurrency = 1\nlease_ttl = \"3s\"\nbackoff_min = \"100ms\"\nbackoff_max = \"1s\"\n"
        ),
    );
    support::sqlite_rows(&setup, KILL_ROWS, "inspection");
    setup
}

fn kill_watcher_drill(point: KillPoint) {
    let redis = RedisServer::start();
    let listen = support::free_local_addr();
    let setup = killed_setup(&redis, &listen);
    let mut conn = redis_conn(&redis);
    let mut first = Watcher::start(&setup);
    let deadline = Instant::now() + 60 * SECOND;
    while !reached(&mut conn, point) {
        assert!(
            Instant::now() < deadline,
            "{point:?} not reached: {}",
            first.log()
        );
    }
    first.kill();
    let killed = Instant::now();
    let written: u64 = query(&mut conn, &["ZCARD", "bull:inspection:repeat"]);
    let lease_left: i64 = query(&mut conn, &["PTTL", LEASE_KEY]);
    // What the killed writer wrote is whole, wherever it stopped.
    assert_eq!(assert_whole(&redis, "inspection") as u64, written);
    match point {
        KillPoint::BeforeFirstWrite => assert_eq!(written, 0, "killed after writing"),
        KillPoint::Halfway => assert!(written < u64::from(KILL_ROWS)),
        KillPoint::AtRelease => assert_eq!(written, u64::from(KILL_ROWS)),
    }

    let second = Watcher::start(&setup);
    let base = format!("http://{listen}");
    let done = wait_until(30 * SECOND, || {
        let all = redis.zcard("bull:inspection:repeat") == u64::from(KILL_ROWS);
        let finished = written == u64::from(KILL_ROWS) || second.count("recovery_finished") > 0;
        all && finished && get(&base, "/readyz").0 == 200
    });
    assert!(done, "{}", second.log());
    let took = killed.elapsed();
    assert_eq!(assert_whole(&redis, "inspection"), KILL_ROWS as usize);
    assert_eq!(
        redis.redis(&["EXISTS", LEASE_KEY]),
        "0",
        "lease left behind"
    );
    let created: u64 = second
        .events("recovery_finished")
        .iter()
        .map(|e| e["created"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(created, u64::from(KILL_ROWS) - written, "{}", second.log());
    let busy = second.count("lease_busy");
    println!(
        "drill 3 watcher {point:?}: killed with {written}/{KILL_ROWS} written, lease ttl left {lease_left} ms; \
         next watcher: {busy} lease_busy, created {created}, all whole {took:?} after the kill"
    );
    if lease_left > 300 {
        assert!(
            busy > 0,
            "the stale lease was not waited for: {}",
            second.log()
        );
    }
    // The stale lease expires after its 3 s ttl; then the work is done.
    assert!(took < 15 * SECOND, "{took:?}");
}

#[test]
fn drill3_watcher_killed_before_its_first_write() {
    kill_watcher_drill(KillPoint::BeforeFirstWrite);
}

#[test]
fn drill3_watcher_killed_halfway() {
    kill_watcher_drill(KillPoint::Halfway);
}

#[test]
fn drill3_watcher_killed_after_its_last_write_around_the_lease_release() {
    kill_watcher_drill(KillPoint::AtRelease);
}

#[test]
fn drill3_cli_recover_killed_halfway_then_recover_again() {
    let redis = RedisServer::start();
    let setup = killed_setup(&redis, "");
    let mut conn = redis_conn(&redis);
    let mut recover = ChildGuard::spawn(
        support::warden_command(&setup.config_path)
            .args(["recover", "--json"])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
        "recover",
    );
    let deadline = Instant::now() + 60 * SECOND;
    while !reached(&mut conn, KillPoint::Halfway) {
        assert!(Instant::now() < deadline, "halfway not reached");
    }
    recover.kill();
    let killed = Instant::now();
    let written: u64 = query(&mut conn, &["ZCARD", "bull:inspection:repeat"]);
    let lease_left: i64 = query(&mut conn, &["PTTL", LEASE_KEY]);
    assert_eq!(assert_whole(&redis, "inspection") as u64, written);
    let (code, report) = setup.recover();
    let took = killed.elapsed();
    assert_eq!(code, 0, "{report}");
    assert_eq!(
        report["created"].as_u64(),
        Some(u64::from(KILL_ROWS) - written)
    );
    assert_eq!(assert_whole(&redis, "inspection"), KILL_ROWS as usize);
    println!(
        "drill 3 CLI recover killed halfway: {written}/{KILL_ROWS} written, lease ttl left {lease_left} ms; \
         the next recover waited for it and created {} in {took:?}",
        report["created"]
    );
    assert!(lease_left > 0, "the killed recover left no lease");
    assert!(
        took >= Duration::from_millis(lease_left as u64 / 2),
        "{took:?}"
    );
}

// ---------------------------------------------------------------------------
// Drill 2: a slow Redis

/// Rows restored through the slow link: long enough that the lease below must
/// be renewed several times before the writes end.
const SLOW_ROWS: u32 = 10_000;

#[test]
fn drill2_ten_thousand_schedulers_restore_through_a_slow_link_under_a_renewed_lease() {
    let redis = RedisServer::start();
    let upstream: SocketAddr = format!("127.0.0.1:{}", redis.port()).parse().unwrap();
    let proxy = Proxy::start(upstream);
    proxy.delay_each_way(Duration::from_millis(25));
    let setup = Setup::sqlite(&redis, "[recovery]\nlease_ttl = \"6s\"\n");
    let through_proxy = format!("redis://{}/0", proxy.addr);
    support::sqlite_rows(&setup, SLOW_ROWS, "inspection");
    let mut conn = redis_conn(&redis);
    let round_trip = Instant::now();
    let _: String = query(&mut redis_conn_through(&proxy), &["PING"]);
    let rtt = round_trip.elapsed();
    let started = Instant::now();
    let run = setup.warden_env(
        &["recover", "--json"],
        &[("BULLMQ_WARDEN__REDIS__URL", &through_proxy)],
    );
    let took = started.elapsed();
    let report = run.json();
    assert_eq!(run.code, 0, "{report} {}", run.stderr);
    assert_eq!(
        report["created"].as_u64(),
        Some(u64::from(SLOW_ROWS)),
        "{report}"
    );
    assert!(
        report.get("stopped").is_none(),
        "the lease was lost: {report}"
    );
    assert_eq!(assert_whole(&redis, "inspection"), SLOW_ROWS as usize);
    let lease_left: i64 = query(&mut conn, &["EXISTS", LEASE_KEY]);
    assert_eq!(lease_left, 0, "the lease was released");
    println!(
        "drill 2 slow link ({rtt:?} per round trip): {SLOW_ROWS} schedulers restored in {took:?} \
         under a 6 s lease"
    );
    assert!(
        rtt >= Duration::from_millis(50),
        "the proxy added less than 50 ms: {rtt:?}"
    );
    assert!(
        took > Duration::from_secs(6),
        "the restore outlasted the lease only if it took over 6 s: {took:?}"
    );
}

fn redis_conn_through(proxy: &Proxy) -> redis::Connection {
    redis::Client::open(format!("redis://{}/0", proxy.addr))
        .and_then(|client| client.get_connection())
        .expect("a connection through the proxy")
}

// ---------------------------------------------------------------------------
// Drill 4: Redis at maxmemory

#[test]
fn drill4_noeviction_oom_is_reported_backed_off_and_completed_after_memory_is_freed() {
    const ROWS: u32 = 3000;
    let redis = RedisServer::start_with(&["--maxmemory-policy", "noeviction"]);
    let listen = support::free_local_addr();
    let base = format!("http://{listen}");
    let setup = Setup::sqlite(
        &redis,
        &format!(
            "[watch]\ninfo_interval = \"200ms\"\ndrift_interval = \"30s\"\ndebounce_quiet = \"300ms\"\n\
             [http]\nlisten = \"{listen}\"\n\
             [recovery]\nlease_ttl = \"3s\"\nbackoff_min = \"200ms\"\nbackoff_max = \"2s\"\n"
        ),
    );
    support::sqlite_rows(&setup, ROWS, "inspection");
    let mut conn = redis_conn(&redis);
    let info: String = query(&mut conn, &["INFO", "memory"]);
    let used: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("used_memory");
    // Room for about a third of the schedulers.
    let limit = used + 1024 * 1024;
    redis.redis(&["CONFIG", "SET", "maxmemory", &limit.to_string()]);
    let watcher = Watcher::start(&setup);
    assert!(
        watcher.wait_for("recovery_failed", 1, 30 * SECOND),
        "{}",
        watcher.log()
    );
    let window_start = Instant::now();
    let failed_before = watcher.count("recovery_failed");
    thread::sleep(10 * SECOND);
    let failed_in_window = watcher.count("recovery_failed") - failed_before;
    let written_while_full = redis.zcard("bull:inspection:repeat");
    let (_, page, _) = get(&base, "/metrics");
    let window = window_start.elapsed();
    let messages: Vec<String> = watcher
        .events("recovery_failed")
        .iter()
        .map(|e| e["message"].as_str().unwrap_or_default().to_owned())
        .collect();
    redis.redis(&["CONFIG", "SET", "maxmemory", "0"]);
    let freed = Instant::now();
    assert!(
        watcher.wait_for("recovery_finished", 1, 20 * SECOND),
        "{}",
        watcher.log()
    );
    let completed_after = freed.elapsed();
    assert_eq!(assert_whole(&redis, "inspection"), ROWS as usize);
    println!(
        "drill 4 noeviction: {written_while_full}/{ROWS} written before maxmemory; {failed_in_window} failed \
         attempts in {window:?}; completed {completed_after:?} after maxmemory 0; first error: {}; later: {}",
        messages[0],
        messages.last().cloned().unwrap_or_default()
    );
    assert!(
        written_while_full < u64::from(ROWS),
        "maxmemory never refused a write"
    );
    for message in &messages {
        assert!(message.contains("OOM"), "{message}");
    }
    assert!(
        (2..=25).contains(&failed_in_window),
        "{failed_in_window} attempts in {window:?}"
    );
    let used_metric = metric(&page, "bullmq_warden_redis_used_memory_bytes").unwrap_or(0.0);
    let max_metric = metric(&page, "bullmq_warden_redis_maxmemory_bytes").unwrap_or(0.0);
    assert!(
        max_metric > 0.0 && used_metric / max_metric > 0.9,
        "{used_metric} / {max_metric}"
    );
    assert!(metric(&page, "bullmq_warden_recovery_consecutive_failures").unwrap_or(0.0) >= 2.0);
    assert_eq!(
        metric(&page, "bullmq_warden_redis_up"),
        Some(1.0),
        "OOM is not Redis down"
    );
    assert!(completed_after < 10 * SECOND, "{completed_after:?}");
}

#[derive(Clone, Copy, Debug)]
enum Evicted {
    /// `repeat:<id>`, the scheduler's hash.
    SchedulerHash,
    /// `repeat:<id>:<millis>`, the hash of the scheduler's next job.
    NextJobHash,
}

/// Keys of `kind` that exist now, listed without touching them (KEYS, unlike
/// a read, leaves their idle time as it is).
fn existing(conn: &mut redis::Connection, kind: Evicted) -> BTreeSet<String> {
    let keys: Vec<String> = query(conn, &["KEYS", "bull:inspection:repeat:*"]);
    keys.into_iter()
        .filter(|k| {
            let is_job = k.matches(':').count() == 5;
            matches!(kind, Evicted::NextJobHash) == is_job
        })
        .collect()
}

fn eviction_drill(kind: Evicted) {
    // With volatile-lru only keys with a ttl can go: the targets are given
    // one, so that Redis evicts exactly them and nothing else signals.
    let policy = match kind {
        Evicted::SchedulerHash => "allkeys-lru",
        Evicted::NextJobHash => "volatile-lru",
    };
    let redis = RedisServer::start_with(&[
        "--maxmemory-policy",
        policy,
        // Each eviction weighs the idle time of up to 64 keys, so the least
        // recently used keys go first, nearly as an exact LRU would.
        "--maxmemory-samples",
        "64",
    ]);
    // No drift check within the drill: only a signal can start the repair.
    let setup = Setup::sqlite(
        &redis,
        "[watch]\ninfo_interval = \"200ms\"\ndrift_interval = \"60s\"\ndebounce_quiet = \"300ms\"\n\
         [http]\nlisten = \"\"\n[recovery]\nbackoff_min = \"100ms\"\nbackoff_max = \"1s\"\n",
    );
    support::sqlite_rows(&setup, 20, "inspection");
    let watcher = Watcher::start(&setup);
    assert!(
        watcher.wait_for("recovery_finished", 1, 20 * SECOND),
        "{}",
        watcher.log()
    );
    // Settled, as long before any real eviction.
    thread::sleep(2 * SECOND);
    let mut conn = redis_conn(&redis);
    let targets = existing(&mut conn, kind);
    let other = match kind {
        Evicted::SchedulerHash => Evicted::NextJobHash,
        Evicted::NextJobHash => Evicted::SchedulerHash,
    };
    let others = existing(&mut conn, other);
    assert_eq!((targets.len(), others.len()), (20, 20));
    // The targets have been idle for a day (RESTORE … IDLETIME sets what an
    // untouched key would show) while the other hashes are read now and
    // then, as a worker or the application would: the least recently used
    // keys are the targets, and Redis's sampled LRU finds them first.
    for key in &targets {
        let dump: Vec<u8> = redis::cmd("DUMP").arg(key).query(&mut conn).expect("DUMP");
        redis::cmd("RESTORE")
            .arg(key)
            .arg(0)
            .arg(dump)
            .arg("REPLACE")
            .arg("IDLETIME")
            .arg(86_400)
            .query::<()>(&mut conn)
            .expect("RESTORE");
        if policy == "volatile-lru" {
            let _: u64 = query(&mut conn, &["PEXPIRE", key, "86400000"]);
        }
    }
    let info: String = query(&mut conn, &["INFO", "memory"]);
    let used: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("used_memory");
    let limit = (used + 512 * 1024).to_string();
    redis.redis(&["CONFIG", "SET", "maxmemory", &limit]);
    let filler = "x".repeat(1024);
    let mut written = 0;
    let evicted_at = loop {
        for key in &others {
            let _: Option<String> = query(&mut conn, &["HGET", key, "name"]);
        }
        let mut pipe = redis::pipe();
        for i in written..written + 10 {
            pipe.cmd("SET")
                .arg(format!("filler:{i}"))
                .arg(&filler)
                .ignore();
        }
        // Refused (OOM) once nothing is left that the policy may evict.
        let _ = pipe.query::<()>(&mut conn);
        written += 10;
        if existing(&mut conn, kind).len() < targets.len() {
            break Instant::now();
        }
        assert!(written < 20_000, "no {kind:?} evicted");
    };
    // The burst passes: its keys are deleted, memory is free again.
    for chunk in (0..written).collect::<Vec<_>>().chunks(500) {
        let mut pipe = redis::pipe();
        for i in chunk {
            pipe.cmd("UNLINK").arg(format!("filler:{i}")).ignore();
        }
        pipe.query::<()>(&mut conn).expect("unlink filler");
    }
    let stats: String = query(&mut conn, &["INFO", "stats"]);
    let evicted = stats
        .lines()
        .find_map(|l| l.strip_prefix("evicted_keys:"))
        .unwrap_or("?")
        .trim()
        .to_owned();
    let repaired = wait_until(20 * SECOND, || watcher.count("recovery_finished") >= 2);
    let repaired_after = evicted_at.elapsed();
    assert!(
        repaired,
        "{kind:?} evicted, never repaired: {}",
        watcher.log()
    );
    let detected = watcher.events("detected");
    assert!(
        detected.iter().any(|e| e["cause"] == "keyspace"),
        "{detected:?}"
    );
    assert_eq!(assert_whole(&redis, "inspection"), 20);
    let finished = &watcher.events("recovery_finished")[1];
    let signals: Vec<&str> = detected
        .iter()
        .filter_map(|e| e["message"].as_str())
        .collect();
    println!(
        "drill 4 {policy} {kind:?}: {written} KiB of filler: {evicted} keys evicted; detected by \
         {signals:?}, repaired {repaired_after:?} after the eviction (created {}, updated {})",
        finished["created"], finished["updated"]
    );
    assert!(repaired_after < 5 * SECOND, "{repaired_after:?}");
    let check = setup.warden(&["check", "--json"]);
    assert_eq!(check.code, 4, "{}", check.stdout);
    assert!(check.stdout.contains(policy), "{}", check.stdout);
}

#[test]
fn drill4_an_evicted_scheduler_hash_is_detected_and_repaired() {
    eviction_drill(Evicted::SchedulerHash);
}

#[test]
fn drill4_an_evicted_next_job_hash_is_detected_and_repaired() {
    eviction_drill(Evicted::NextJobHash);
}

// ---------------------------------------------------------------------------
// Drill 5: source database hiccups

const PG_ROWS: u32 = 400;

/// `PG_ROWS` rows on PostgreSQL, each with a 500-byte payload so that the
/// result streams in many network writes, and a config whose query sleeps
/// `per_row` for each row.
fn pg_source(
    db: &Database,
    redis: &RedisServer,
    source_url: &str,
    per_row: &str,
    extra: &str,
) -> Setup {
    support::run_sql(
        &db.url,
        &format!(
            "CREATE TABLE inspection_tasks (id INTEGER PRIMARY KEY, name TEXT, cron TEXT, payload TEXT,
               enabled BOOLEAN NOT NULL DEFAULT TRUE);
             INSERT INTO inspection_tasks (id, name, cron, payload)
             SELECT i, 'task-' || i, (i % 60) || ' 3 * * *', json_build_object('pad', repeat('p', 500))::text
             FROM generate_series(1, {PG_ROWS}) AS i;"
        ),
    );
    Setup::new(
        redis,
        &format!(
            "[redis]\nurl = \"{{redis}}\"\n[source]\nurl = \"{source_url}\"\n\
             query = \"SELECT t.id, t.name, t.cron, t.payload FROM inspection_tasks t \
             CROSS JOIN LATERAL (SELECT pg_sleep({per_row} + 0 * t.id)) s WHERE t.enabled\"\n\
             [recovery]\nprune_orphans = true\nbackoff_min = \"200ms\"\nbackoff_max = \"1s\"\n{extra}"
        ),
    )
}

/// The warden's own one-line error among the client library's warnings.
fn error_line(stderr: &str) -> &str {
    stderr
        .lines()
        .find(|l| l.starts_with("bullmq-warden:"))
        .unwrap_or(stderr)
}

fn psql(url: &str, sql: &str) -> String {
    let output = Command::new("psql")
        .args([url, "-At", "-c", sql])
        .output()
        .expect("psql (Debian package postgresql-client)");
    assert!(
        output.status.success(),
        "psql: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// Members of the repeat set, watched from another thread until `stop`:
/// the fewest and the most seen, so that a removal or creation in between
/// cannot hide.
fn watch_count(redis: &RedisServer, stop: Arc<AtomicBool>) -> thread::JoinHandle<(u64, u64)> {
    let mut conn = redis_conn(redis);
    thread::spawn(move || {
        let (mut low, mut high) = (u64::MAX, 0);
        loop {
            // One sample after `stop` is set: the state the test stopped at
            // counts too, however late this thread last ran before it.
            let stopping = stop.load(SeqCst);
            let n: u64 = query(&mut conn, &["ZCARD", "bull:inspection:repeat"]);
            low = low.min(n);
            high = high.max(n);
            if stopping {
                return (low, high);
            }
            thread::sleep(Duration::from_millis(5));
        }
    })
}

/// Schedulers in place for every row, one of them lost, and the repeat set
/// watched: the setting in which a partial read would act.
fn in_sync_but_one(redis: &RedisServer, fast_setup: &Setup) {
    let run = fast_setup.warden(&["recover", "--json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(redis.zcard("bull:inspection:repeat"), u64::from(PG_ROWS));
    redis.redis(&["ZREM", "bull:inspection:repeat", "inspection:7"]);
}

#[test]
fn drill5_a_connection_killed_mid_read_makes_the_watcher_act_on_nothing() {
    let db = Database::postgres();
    let redis = RedisServer::start();
    // 400 rows × 5 ms: a read of about 2 s.
    let setup = pg_source(
        &db,
        &redis,
        &db.url,
        "0.005",
        "[watch]\ninfo_interval = \"200ms\"\ndrift_interval = \"60s\"\ndebounce_quiet = \"300ms\"\n[http]\nlisten = \"\"\n",
    );
    let fast = Setup::new(
        &redis,
        &format!("[redis]\nurl = \"{{redis}}\"\n[source]\nurl = \"{}\"\nquery = \"SELECT id, name, cron, payload FROM inspection_tasks WHERE enabled\"\n", db.url),
    );
    in_sync_but_one(&redis, &fast);
    let stop = Arc::new(AtomicBool::new(false));
    let counts = watch_count(&redis, stop.clone());
    // The start-up comparison is the read that is killed.
    let watcher = Watcher::start(&setup);
    let active = format!(
        "SELECT pid FROM pg_stat_activity WHERE datname = '{}' AND state = 'active' \
         AND query LIKE '%pg_sleep%' AND pid <> pg_backend_pid()",
        db.name
    );
    let mut backend = String::new();
    assert!(
        wait_until(20 * SECOND, || {
            backend = psql(&db.url, &active);
            !backend.is_empty()
        }),
        "{}",
        watcher.log()
    );
    thread::sleep(SECOND);
    let terminated = psql(&db.url, &format!("SELECT pg_terminate_backend({backend})"));
    assert_eq!(terminated, "t");
    assert!(
        watcher.wait_for("recovery_failed", 1, 10 * SECOND),
        "{}",
        watcher.log()
    );
    let failed = watcher.events("recovery_failed")[0].to_string();
    // The next attempt reads every row and repairs the lost one only.
    assert!(
        watcher.wait_for("recovery_finished", 1, 20 * SECOND),
        "{}",
        watcher.log()
    );
    stop.store(true, SeqCst);
    let (low, high) = counts.join().expect("counter");
    let finished = &watcher.events("recovery_finished")[0];
    println!(
        "drill 5 pg_terminate_backend mid-read: repeat set between {low} and {high} of {PG_ROWS}; {failed}; then {finished}"
    );
    assert_eq!((low, high), (u64::from(PG_ROWS) - 1, u64::from(PG_ROWS)));
    assert_eq!(finished["removed"], 0);
    assert_eq!(finished["created"], 1);
    assert!(failed.contains("terminating connection"), "{failed}");
    assert_eq!(assert_whole(&redis, "inspection"), PG_ROWS as usize);
}

#[test]
fn drill5_a_statement_timeout_fails_the_whole_read() {
    let db = Database::postgres();
    let redis = RedisServer::start();
    let setup = pg_source(&db, &redis, &db.url, "0.005", "");
    let fast = Setup::new(
        &redis,
        &format!("[redis]\nurl = \"{{redis}}\"\n[source]\nurl = \"{}\"\nquery = \"SELECT id, name, cron, payload FROM inspection_tasks WHERE enabled\"\n", db.url),
    );
    in_sync_but_one(&redis, &fast);
    psql(
        &db.url,
        &format!("ALTER DATABASE {} SET statement_timeout = '700ms'", db.name),
    );
    let before = redis.zmembers("bull:inspection:repeat");
    let run = setup.warden(&["recover", "--json"]);
    println!(
        "drill 5 statement_timeout: recover exit {}: {}",
        run.code,
        error_line(&run.stderr)
    );
    assert_eq!(run.code, 6, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("statement timeout"), "{}", run.stderr);
    assert_eq!(
        redis.zmembers("bull:inspection:repeat"),
        before,
        "acted on a timed-out read"
    );
    psql(
        &db.url,
        &format!("ALTER DATABASE {} RESET statement_timeout", db.name),
    );
    let (code, report) = setup.recover();
    assert_eq!(code, 0, "{report}");
    assert_eq!(
        (report["created"].as_u64(), report["removed"].as_u64()),
        (Some(1), Some(0))
    );
}

#[test]
fn drill5_a_read_cut_short_without_an_error_fails_the_whole_read() {
    let db = Database::postgres();
    let redis = RedisServer::start();
    let proxy = Proxy::in_front_of(&db.url);
    // Without TLS, whose close_notify would catch the cut by itself: the
    // database protocol alone must tell a whole result from a cut one.
    let through_proxy = proxy.url_for(&db.url);
    let setup = pg_source(&db, &redis, &through_proxy, "0", "");
    let fast = Setup::new(
        &redis,
        &format!("[redis]\nurl = \"{{redis}}\"\n[source]\nurl = \"{}\"\nquery = \"SELECT id, name, cron, payload FROM inspection_tasks WHERE enabled\"\n", db.url),
    );
    in_sync_but_one(&redis, &fast);
    // The whole result is about 220 KB; connections are closed after 60 KB.
    proxy.cut_replies_after(60 * 1024);
    let before = redis.zmembers("bull:inspection:repeat");
    let run = setup.warden(&["recover", "--json"]);
    let cut = proxy.replies_cut();
    println!(
        "drill 5 read cut short ({cut} connections cut): recover exit {}: {}",
        run.code,
        error_line(&run.stderr)
    );
    assert!(cut >= 1, "no read was cut");
    assert_eq!(run.code, 6, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("broke off"), "{}", run.stderr);
    assert_eq!(
        redis.zmembers("bull:inspection:repeat"),
        before,
        "acted on a partial read"
    );
    proxy.cut_replies_after(0);
    let (code, report) = setup.recover();
    assert_eq!(code, 0, "{report}");
    assert_eq!(
        (report["created"].as_u64(), report["removed"].as_u64()),
        (Some(1), Some(0))
    );
}

// ---------------------------------------------------------------------------
// Drill 7: a queue written by a BullMQ the warden does not know

const VERSION_ROWS: u32 = 5;

fn version_setup(redis: &RedisServer, listen: &str) -> Setup {
    let setup = Setup::sqlite(
        redis,
        &format!(
            "[watch]\ninfo_interval = \"200ms\"\ndrift_interval = \"1s\"\ndebounce_quiet = \"200ms\"\n\
             [http]\nlisten = \"{listen}\"\n"
        ),
    );
    support::sqlite_rows(&setup, VERSION_ROWS, "inspection");
    setup
}

#[test]
fn drill7_a_queue_set_up_by_an_unverified_bullmq_major_is_reported_and_left_alone() {
    let redis = RedisServer::start();
    let listen = support::free_local_addr();
    let setup = version_setup(&redis, &listen);
    let run = setup.warden(&["recover", "--json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    // A BullMQ 7 application set the queue up; then a scheduler was lost.
    redis.redis(&["HSET", "bull:inspection:meta", "version", "bullmq:7.0.0"]);
    redis.redis(&["ZREM", "bull:inspection:repeat", "inspection:3"]);
    let mut watcher = Watcher::start(&setup);
    let base = format!("http://{listen}");
    assert!(
        watcher.wait_for("bullmq_version_unverified", 1, Duration::from_secs(15)),
        "{}",
        watcher.log()
    );
    // Several drift checks pass; nothing is written to the queue.
    thread::sleep(Duration::from_secs(4));
    assert_eq!(
        redis.zcard("bull:inspection:repeat"),
        u64::from(VERSION_ROWS) - 1
    );
    assert_eq!(watcher.count("recovery_started"), 0, "{}", watcher.log());
    let (status, body, _) = get(&base, "/readyz");
    assert_eq!(status, 503, "{body}");
    let ready: serde_json::Value = serde_json::from_str(&body).expect("readyz JSON");
    assert_eq!(
        ready["unverifiedBullmq"]["inspection"], "bullmq:7.0.0",
        "{body}"
    );
    let (_, page, _) = get(&base, "/metrics");
    let withheld = metric(&page, "bullmq_warden_withheld_queues");
    assert_eq!(withheld, Some(1.0), "{page}");
    let check = setup.warden(&["check", "--json"]);
    assert_eq!(check.code, 4, "{}", check.stdout);
    let findings = check.json()["findings"].clone();
    let version_error = findings.as_array().into_iter().flatten().any(|f| {
        f["check"] == "bullmq-version"
            && f["severity"] == "error"
            && f["message"]
                .as_str()
                .is_some_and(|m| m.contains("bullmq:7.0.0"))
    });
    assert!(version_error, "{findings}");
    // `recover` leaves the queue alone too, and says so.
    let refused = setup.warden(&["recover"]);
    assert_eq!(refused.code, 1, "{}\n{}", refused.stdout, refused.stderr);
    assert!(
        refused.stdout.contains("withheld      queue inspection"),
        "{}",
        refused.stdout
    );
    assert_eq!(
        redis.zcard("bull:inspection:repeat"),
        u64::from(VERSION_ROWS) - 1
    );
    // An operator opts in: the scheduler comes back.
    let allowed = setup.warden_env(
        &["recover", "--json"],
        &[("BULLMQ_WARDEN__RECOVERY__ALLOW_UNVERIFIED_BULLMQ", "true")],
    );
    assert_eq!(allowed.code, 0, "{}", allowed.stderr);
    assert_eq!(
        redis.zcard("bull:inspection:repeat"),
        u64::from(VERSION_ROWS)
    );
    // Back to a verified version: the watcher says so and is ready again.
    redis.redis(&["HSET", "bull:inspection:meta", "version", "bullmq:6.7.0"]);
    assert!(
        wait_until(Duration::from_secs(10), || get(&base, "/readyz").0 == 200),
        "{}",
        watcher.log()
    );
    watcher.terminate();
}

#[test]
fn drill7_a_flush_gets_the_queues_bullmq_version_back() {
    let redis = RedisServer::start();
    let listen = support::free_local_addr();
    let setup = version_setup(&redis, &listen);
    // Real BullMQ 5 sets the queue up and records its version.
    support::node(5, "counts", &redis, "inspection", &[], None);
    let version = redis.redis(&["HGET", "bull:inspection:meta", "version"]);
    assert!(version.starts_with("bullmq:5."), "{version:?}");
    let mut watcher = Watcher::start(&setup);
    assert!(
        wait_until(Duration::from_secs(15), || {
            redis.zcard("bull:inspection:repeat") == u64::from(VERSION_ROWS)
        }),
        "{}",
        watcher.log()
    );
    // Let a comparison see the version, then lose everything.
    assert!(watcher.wait_for("recovery_finished", 1, Duration::from_secs(10)));
    thread::sleep(Duration::from_millis(1500));
    redis.redis(&["FLUSHALL"]);
    assert!(
        wait_until(Duration::from_secs(15), || {
            redis.zcard("bull:inspection:repeat") == u64::from(VERSION_ROWS)
                && redis.redis(&["HGET", "bull:inspection:meta", "version"]) == version
        }),
        "meta version now {:?}\n{}",
        redis.redis(&["HGET", "bull:inspection:meta", "version"]),
        watcher.log()
    );
    assert_whole(&redis, "inspection");
    assert!(
        watcher.count("bullmq_version_restored") >= 1,
        "{}",
        watcher.log()
    );
    watcher.terminate();
}
