//! The HTTP server's bounds, with real sockets: a header-read timeout, an
//! idle timeout and a connection limit.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{http, RedisServer, Setup, Watcher, TASKS_TABLE_SQLITE};

const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: warden\r\n\r\n";

/// A watcher whose `[http]` section has `http_keys`; returns it with its address.
fn watcher(redis: &RedisServer, http_keys: &str) -> (Watcher, Setup, String) {
    let addr = support::free_local_addr();
    let setup = Setup::sqlite(
        redis,
        &format!("[http]\nlisten = \"{addr}\"\n{http_keys}\n"),
    );
    setup.sql(TASKS_TABLE_SQLITE);
    let watcher = Watcher::start(&setup);
    assert!(
        support::wait_until(Duration::from_secs(10), || http(
            "GET",
            &format!("http://{addr}/healthz"),
            &[]
        )
        .0 == 200),
        "{}",
        watcher.log()
    );
    (watcher, setup, addr)
}

/// How long until the server closes `stream`; `None` when it is still open
/// after `within`.
fn closed_after(stream: &mut TcpStream, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    stream.set_read_timeout(Some(within)).expect("read timeout");
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Some(started.elapsed()),
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return None
            }
            Err(_) => return Some(started.elapsed()),
        }
    }
}

/// Reads one `/healthz` answer off a keep-alive connection.
fn read_healthz(stream: &mut TcpStream) -> String {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("read timeout");
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    while !answer.ends_with(b"ok\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}

#[test]
fn half_sent_headers_are_dropped_after_the_header_read_timeout() {
    let redis = RedisServer::start();
    let (_watcher, _setup, addr) = watcher(
        &redis,
        "header_read_timeout = \"500ms\"\nidle_timeout = \"10s\"",
    );
    let mut stream = TcpStream::connect(&addr).unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: warden\r\n")
        .unwrap();
    let closed = closed_after(&mut stream, Duration::from_secs(5))
        .expect("a half-sent request must not hold its connection");
    assert!(
        closed >= Duration::from_millis(400),
        "closed after {closed:?}"
    );
}

#[test]
fn idle_connections_are_closed_after_the_idle_timeout() {
    let redis = RedisServer::start();
    let (_watcher, _setup, addr) = watcher(
        &redis,
        "header_read_timeout = \"10s\"\nidle_timeout = \"700ms\"",
    );
    // One that never sends anything…
    let mut silent = TcpStream::connect(&addr).unwrap();
    // …and a keep-alive one after its answer.
    let mut kept = TcpStream::connect(&addr).unwrap();
    kept.write_all(HEALTHZ).unwrap();
    assert!(read_healthz(&mut kept).starts_with("HTTP/1.1 200"));
    for stream in [&mut silent, &mut kept] {
        let closed = closed_after(stream, Duration::from_secs(5))
            .expect("an idle connection must be closed");
        assert!(closed < Duration::from_secs(3), "closed after {closed:?}");
    }
}

#[test]
fn connections_beyond_the_limit_wait_for_a_free_slot() {
    let redis = RedisServer::start();
    let (_watcher, _setup, addr) = watcher(&redis, "max_connections = 3\nidle_timeout = \"30s\"");
    let mut held: Vec<TcpStream> = (0..3)
        .map(|_| {
            let mut stream = TcpStream::connect(&addr).unwrap();
            stream.write_all(HEALTHZ).unwrap();
            assert!(read_healthz(&mut stream).starts_with("HTTP/1.1 200"));
            stream
        })
        .collect();
    let mut waiting = TcpStream::connect(&addr).unwrap();
    waiting.write_all(HEALTHZ).unwrap();
    waiting
        .set_read_timeout(Some(Duration::from_millis(800)))
        .unwrap();
    let mut buf = [0u8; 64];
    assert!(
        waiting.read(&mut buf).is_err(),
        "a fourth connection was served while three were open"
    );
    held.pop();
    assert!(read_healthz(&mut waiting).starts_with("HTTP/1.1 200"));
    drop(held);
    drop(waiting);
    assert_eq!(http("GET", &format!("http://{addr}/healthz"), &[]).0, 200);
}

/// Under `ulimit -n 128`, 140 idle clients (more than the descriptors left,
/// fewer than the listen backlog holds) take at most `max_connections`
/// descriptors: Redis and the source can still be reached, nothing fails to
/// open a file, and the server answers as soon as the clients leave.
#[test]
fn many_idle_clients_cannot_use_up_the_file_descriptors() {
    let redis = RedisServer::start();
    let addr = support::free_local_addr();
    let setup = Setup::sqlite(
        &redis,
        &format!(
            "[watch]\ninfo_interval = \"200ms\"\ndrift_interval = \"1s\"\ndebounce_quiet = \"200ms\"\n\
             [http]\nlisten = \"{addr}\"\nmax_connections = 16\n"
        ),
    );
    setup.sql(TASKS_TABLE_SQLITE);
    setup.sql("INSERT INTO inspection_tasks (id, name, cron) VALUES (1, 'a', '0 * * * *');");
    let log = setup.dir.path().join("watch.log");
    let mut child = Command::new("sh")
        .arg("-c")
        .arg("ulimit -n 128 && exec \"$@\"")
        .arg("sh")
        .arg(env!("CARGO_BIN_EXE_bullmq-warden"))
        .arg("--config")
        .arg(&setup.config_path)
        .args(["--log-format", "json", "watch"])
        .env_remove("BULLMQ_WARDEN_CONFIG")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let base = format!("http://{addr}");
    assert!(support::wait_until(Duration::from_secs(10), || http(
        "GET",
        &format!("{base}/readyz"),
        &[]
    )
    .0 == 200));
    let open_fds = || {
        std::fs::read_dir(format!("/proc/{}/fd", child.id()))
            .unwrap()
            .count()
    };
    let at_rest = open_fds();
    let clients: Vec<TcpStream> = (0..140)
        .map(|_| TcpStream::connect(&addr).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let under_load = open_fds();
    // Redis loses its schedulers while the clients hold on: the watcher still
    // talks to Redis and the source and restores them.
    redis.redis(&["DEL", "bull:inspection:repeat"]);
    assert!(support::wait_until(Duration::from_secs(10), || redis
        .zcard("bull:inspection:repeat")
        == 1));
    drop(clients);
    let healthz = http("GET", &format!("{base}/healthz"), &[]);
    let _ = child.kill();
    let _ = child.wait();
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(
        under_load <= at_rest + 16 + 8,
        "{under_load} descriptors open with 140 clients, {at_rest} at rest"
    );
    assert!(!log.contains("Too many open files"), "{log}");
    assert_eq!(healthz.0, 200, "{log}");
}

/// SIGTERM closes idle keep-alive connections at once instead of waiting for
/// their idle timeout, and the watcher exits cleanly.
#[test]
fn shutdown_does_not_wait_for_idle_connections() {
    let redis = RedisServer::start();
    let (mut watcher, _setup, addr) = watcher(&redis, "idle_timeout = \"1h\"");
    let mut kept = TcpStream::connect(&addr).unwrap();
    kept.write_all(HEALTHZ).unwrap();
    assert!(read_healthz(&mut kept).starts_with("HTTP/1.1 200"));
    let _silent = TcpStream::connect(&addr).unwrap();
    let started = Instant::now();
    assert_eq!(watcher.terminate(), Some(0), "{}", watcher.log());
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(closed_after(&mut kept, Duration::from_secs(1)).is_some());
}
