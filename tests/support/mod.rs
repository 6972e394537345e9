//! Shared test harness: real `redis-server` processes, real databases, real
//! Node BullMQ, and the real `bullmq-warden` binary.
#![allow(dead_code)] // each test file uses a different part of the harness

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A `redis-server` of the test's own, without persistence, killed on drop.
pub struct RedisServer {
    port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// The extra arguments it was started with, kept for `start_again`.
    extra: Vec<String>,
}

impl RedisServer {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts with extra `redis-server` arguments, e.g. `["--maxmemory-policy", "allkeys-lru"]`.
    pub fn start_with(extra: &[&str]) -> Self {
        // A port picked free can be taken before redis-server binds it: retry.
        for _ in 0..5 {
            let mut server = Self {
                port: free_port(),
                child: None,
                dir: tempfile::tempdir().expect("temp dir"),
                extra: extra.iter().map(|a| a.to_string()).collect(),
            };
            if server.spawn() {
                return server;
            }
        }
        panic!("could not start redis-server");
    }

    fn spawn(&mut self) -> bool {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(["--dir", &self.dir.path().display().to_string()])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (apt-get install redis-server)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.cli(&["PING"]).map(|o| o == "PONG").unwrap_or(false) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.stop();
        false
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A handle on a server someone else started (it is not stopped on drop).
    pub fn attach(url: &str) -> Self {
        let port = url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("redis://host:port");
        Self {
            port,
            child: None,
            dir: tempfile::tempdir().expect("temp dir"),
            extra: Vec::new(),
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Runs `redis-cli` against this server and returns its trimmed output.
    pub fn cli(&self, args: &[&str]) -> Option<String> {
        let output = Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "--raw"])
            .args(args)
            .output()
            .ok()?;
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }

    /// Like `cli`, but panics when the command cannot be run.
    pub fn redis(&self, args: &[&str]) -> String {
        self.cli(args)
            .unwrap_or_else(|| panic!("redis-cli {args:?} failed"))
    }

    pub fn zcard(&self, key: &str) -> u64 {
        self.redis(&["ZCARD", key]).parse().expect("ZCARD reply")
    }

    pub fn zmembers(&self, key: &str) -> Vec<String> {
        let out = self.redis(&["ZRANGE", key, "0", "-1"]);
        out.lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// Starts the server again on the same port and with the same
    /// arguments, empty (no persistence).
    pub fn start_again(&mut self) {
        self.stop();
        for _ in 0..50 {
            if self.spawn() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("redis-server did not come back on port {}", self.port);
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

pub fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// Runs a command of the Node BullMQ driver (`tests/node/bullmq-driver.mjs`).
pub fn node(
    major: u8,
    command: &str,
    redis: &RedisServer,
    queue: &str,
    args: &[&str],
    stdin: Option<&Value>,
) -> Value {
    let driver = repo_path("tests/node/bullmq-driver.mjs");
    assert!(
        repo_path("tests/node/node_modules/bullmq6").exists(),
        "Node packages missing: run `npm ci --prefix tests/node` (scripts/test does)"
    );
    let mut child = Command::new("node")
        .arg(&driver)
        .arg(command)
        .args([
            "--major",
            &major.to_string(),
            "--redis",
            &redis.url(),
            "--queue",
            queue,
        ])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node must be installed");
    {
        use std::io::Write;
        let mut pipe = child.stdin.take().expect("stdin");
        if let Some(input) = stdin {
            pipe.write_all(input.to_string().as_bytes())
                .expect("write stdin");
        }
    }
    let output = child.wait_with_output().expect("node output");
    assert!(
        output.status.success(),
        "node driver {command} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "node driver {command} printed no JSON ({e}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

/// A config file and an SQLite source in a temp dir, for running the binary.
pub struct Setup {
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
}

impl Setup {
    /// Writes `config_toml` (with `{redis}` and `{dir}` substituted).
    pub fn new(redis: &RedisServer, config_toml: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let text = config_toml
            .replace("{redis}", &redis.url())
            .replace("{dir}", &dir.path().display().to_string());
        let config_path = dir.path().join("warden.toml");
        std::fs::write(&config_path, text).expect("write config");
        Self { dir, config_path }
    }

    /// A config over an SQLite file `tasks.db` in the temp dir.
    pub fn sqlite(redis: &RedisServer, extra_toml: &str) -> Self {
        Self::new(
            redis,
            &format!(
                "[redis]\nurl = \"{{redis}}\"\n[source]\nurl = \"sqlite://{{dir}}/tasks.db\"\n{extra_toml}"
            ),
        )
    }

    pub fn sqlite_url(&self) -> String {
        format!("sqlite://{}/tasks.db?mode=rwc", self.dir.path().display())
    }

    /// Runs SQL against the SQLite source (creating it when needed).
    pub fn sql(&self, sql: &str) {
        run_sql(&self.sqlite_url(), sql);
    }

    pub fn warden(&self, args: &[&str]) -> Run {
        self.warden_env(args, &[])
    }

    pub fn warden_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let output = Command::new(env!("CARGO_BIN_EXE_bullmq-warden"))
            .arg("--config")
            .arg(&self.config_path)
            .args(args)
            .envs(env.iter().copied())
            .env_remove("BULLMQ_WARDEN_CONFIG")
            .env("RUST_LOG", "warn")
            .output()
            .expect("run bullmq-warden");
        Run::from(output)
    }

    /// `recover --json` and its parsed report.
    pub fn recover(&self) -> (i32, Value) {
        let run = self.warden(&["recover", "--json"]);
        (run.code, run.json())
    }
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(output: Output) -> Self {
        Self {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

impl Run {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}); exit {}; stdout: {}; stderr: {}",
                self.code, self.stdout, self.stderr
            )
        })
    }
}

/// Executes SQL statements on any supported database URL.
pub fn run_sql(url: &str, sql: &str) {
    let url = url.to_owned();
    let sql = sql.to_owned();
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(async {
                use sqlx::{AssertSqlSafe, Connection};
                macro_rules! execute {
                    ($connection:ty) => {{
                        let mut conn = <$connection>::connect(&url)
                            .await
                            .unwrap_or_else(|e| panic!("connect {url}: {e}"));
                        sqlx::raw_sql(AssertSqlSafe(sql))
                            .execute(&mut conn)
                            .await
                            .unwrap_or_else(|e| panic!("sql on {url}: {e}"));
                    }};
                }
                if url.starts_with("sqlite:") {
                    execute!(sqlx::SqliteConnection)
                } else if url.starts_with("postgres") {
                    execute!(sqlx::PgConnection)
                } else {
                    execute!(sqlx::MySqlConnection)
                }
            })
    })
    .join()
    .expect("sql thread");
}

/// The manual's table, as each database spells it.
pub const TASKS_TABLE_SQLITE: &str = "CREATE TABLE inspection_tasks (
    id INTEGER PRIMARY KEY, name TEXT, cron TEXT, every_ms INTEGER, tz TEXT,
    payload TEXT, opts TEXT, queue TEXT, enabled BOOLEAN NOT NULL DEFAULT 1);";

/// Polls `check` until it holds or `timeout` passes.
/// `n` enabled cron rows for `queue` in the SQLite source (the tasks table
/// created first), made by SQLite itself: a daily run at 03:00–03:59.
pub fn sqlite_rows(setup: &Setup, n: u32, queue: &str) {
    setup.sql(TASKS_TABLE_SQLITE);
    setup.sql(&format!(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {n})
         INSERT INTO inspection_tasks (id, name, cron, queue)
         SELECT i, 'task-' || i, (i % 60) || ' 3 * * *', '{queue}' FROM n;"
    ));
}

pub fn wait_until(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    check()
}

/// A running `bullmq-warden watch`, its JSON log lines collected as they come.
pub struct Watcher {
    child: Child,
    lines: std::sync::Arc<std::sync::Mutex<Vec<Value>>>,
}

impl Watcher {
    pub fn start(setup: &Setup) -> Self {
        Self::start_env(setup, &[])
    }

    pub fn start_env(setup: &Setup, env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_bullmq-warden"))
            .arg("--config")
            .arg(&setup.config_path)
            .args(["--log-format", "json", "watch"])
            .envs(env.iter().copied())
            .env_remove("BULLMQ_WARDEN_CONFIG")
            .env("RUST_LOG", "info,bullmq_warden=debug")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start bullmq-warden watch");
        let stderr = child.stderr.take().expect("stderr");
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                let value = serde_json::from_str(&line).unwrap_or(Value::String(line));
                sink.lock().expect("log lines").push(value);
            }
        });
        Self { child, lines }
    }

    /// Log events named `event` (the `event` field of the structured log).
    pub fn events(&self, event: &str) -> Vec<Value> {
        self.lines
            .lock()
            .expect("log lines")
            .iter()
            .filter(|line| line["event"] == event)
            .cloned()
            .collect()
    }

    pub fn count(&self, event: &str) -> usize {
        self.events(event).len()
    }

    /// Waits until at least `n` events named `event` were logged.
    pub fn wait_for(&self, event: &str, n: usize, timeout: Duration) -> bool {
        wait_until(timeout, || self.count(event) >= n)
    }

    pub fn log(&self) -> String {
        self.lines
            .lock()
            .expect("log lines")
            .iter()
            .map(|l| l.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The process id, to read its descriptors and memory under /proc.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends a signal (`HUP`, `TERM`, …) without waiting for anything.
    pub fn signal(&self, name: &str) {
        let _ = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status();
    }

    /// SIGTERM, then the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Settings that make a watcher react in test time.
pub const FAST_WATCH: &str = "[watch]\ninfo_interval = \"200ms\"\ndrift_interval = \"2s\"\n\
debounce_quiet = \"500ms\"\ndebounce_max = \"4s\"\n[http]\nlisten = \"\"\n";

/// Recovery settings for tests: quick retries, a short lease.
pub const FAST_RECOVERY: &str =
    "backoff_min = \"100ms\"\nbackoff_max = \"2s\"\nlease_ttl = \"3s\"\n";

fn server_url(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_owned())
}

/// A throwaway database on the shared PostgreSQL or MariaDB server (named by
/// `BULLMQ_WARDEN_TEST_POSTGRES_URL` / `BULLMQ_WARDEN_TEST_MYSQL_URL`), dropped
/// when the test ends.
pub struct Database {
    pub admin_url: String,
    pub name: String,
    pub url: String,
}

impl Database {
    pub fn create(admin_url: String) -> Self {
        let name = format!(
            "warden_{}_{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos()
        );
        run_sql(&admin_url, &format!("CREATE DATABASE {name}"));
        let (base, _) = admin_url.rsplit_once('/').expect("URL with a database");
        let url = format!("{base}/{name}");
        Self {
            admin_url,
            name,
            url,
        }
    }

    pub fn postgres() -> Self {
        Self::create(server_url(
            "BULLMQ_WARDEN_TEST_POSTGRES_URL",
            "postgres://warden:warden@127.0.0.1:5432/postgres",
        ))
    }

    pub fn mariadb() -> Self {
        Self::create(server_url(
            "BULLMQ_WARDEN_TEST_MYSQL_URL",
            "mysql://warden:warden@127.0.0.1:3306/mysql",
        ))
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        // Never panic while unwinding from a failed assertion.
        let _ = std::panic::catch_unwind(move || {
            run_sql(&admin_url, &format!("DROP DATABASE IF EXISTS {name}"))
        });
    }
}

/// A plain HTTP request for API tests: (status, body).
pub fn http(method: &str, url: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let url = url.to_owned();
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(async {
                let mut request = reqwest::Client::new().request(method, &url);
                for (name, value) in headers {
                    request = request.header(name, value);
                }
                match request.send().await {
                    Ok(response) => {
                        let status = response.status().as_u16();
                        (status, response.text().await.unwrap_or_default())
                    }
                    Err(e) => (0, e.to_string()),
                }
            })
    })
    .join()
    .expect("http thread")
}

/// A one-route HTTP server on a free loopback port for the warden to call
/// (a webhook, an application): `answer` gets each request's head and body
/// and returns the whole response to write back.
pub fn http_endpoint(
    mut answer: impl FnMut(String, Vec<u8>) -> String + Send + 'static,
) -> std::net::SocketAddr {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an endpoint");
    let addr = listener.local_addr().expect("endpoint address");
    std::thread::spawn(move || {
        for mut stream in listener.incoming().map_while(Result::ok) {
            let mut reader = BufReader::new(stream.try_clone().expect("clone the stream"));
            let mut head = String::new();
            let mut length = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = value.trim().parse().unwrap_or(0);
                }
                head.push_str(&line);
            }
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            let _ = stream.write_all(answer(head, body).as_bytes());
        }
    });
    addr
}

/// Watch settings that react in test time, with the API on `addr`; the
/// `[recovery]` section is open last, for more of its keys.
pub fn fast_watch_with_api(addr: &str) -> String {
    format!(
        "[watch]\ninfo_interval = \"200ms\"\ndrift_interval = \"2s\"\ndebounce_quiet = \"300ms\"\n\
         [http]\nlisten = \"{addr}\"\n[recovery]\n"
    )
}

/// Waits until the watcher at `base` (`http://addr`) says it is ready.
pub fn wait_until_ready(base: &str, watcher: &Watcher, timeout: Duration) {
    assert!(
        wait_until(timeout, || http("GET", &format!("{base}/readyz"), &[]).0
            == 200),
        "not ready within {timeout:?}:\n{}",
        watcher.log()
    );
}

pub fn free_local_addr() -> String {
    format!("127.0.0.1:{}", free_port())
}

/// One primary, one replica and three sentinels watching them as `mymaster`.
pub struct SentinelGroup {
    pub primary: RedisServer,
    pub replica: RedisServer,
    sentinels: Vec<(u16, Child)>,
    _dir: tempfile::TempDir,
}

impl SentinelGroup {
    /// `replica_args` go to the replica, e.g. `["--replica-read-only", "no"]`.
    pub fn start(replica_args: &[&str]) -> Self {
        let primary = RedisServer::start();
        let primary_port = primary.port().to_string();
        let mut args = vec!["--replicaof", "127.0.0.1", primary_port.as_str()];
        args.extend_from_slice(replica_args);
        let replica = RedisServer::start_with(&args);
        assert!(
            wait_until(Duration::from_secs(10), || replica
                .redis(&["INFO", "replication"])
                .contains("master_link_status:up")),
            "replica did not sync"
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let mut sentinels = Vec::new();
        for index in 0..3 {
            let port = free_port();
            let conf = dir.path().join(format!("sentinel-{index}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {}\n\
                     sentinel monitor mymaster 127.0.0.1 {} 2\n\
                     sentinel down-after-milliseconds mymaster 1000\n\
                     sentinel failover-timeout mymaster 5000\n",
                    dir.path().display(),
                    primary.port()
                ),
            )
            .expect("sentinel config");
            let child = Command::new("redis-server")
                .arg(&conf)
                .arg("--sentinel")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server --sentinel");
            sentinels.push((port, child));
        }
        let group = Self {
            primary,
            replica,
            sentinels,
            _dir: dir,
        };
        let replica_port = group.replica.port().to_string();
        assert!(
            wait_until(Duration::from_secs(30), || group.sentinels.iter().all(
                |(port, _)| {
                    sentinel_cli(*port, &["SENTINEL", "REPLICAS", "mymaster"])
                        .contains(&replica_port)
                }
            )),
            "sentinels did not discover the replica"
        );
        group
    }

    pub fn sentinel_urls(&self) -> Vec<String> {
        self.sentinels
            .iter()
            .map(|(port, _)| format!("redis://127.0.0.1:{port}"))
            .collect()
    }

    /// Promotes the replica and waits until every sentinel names it.
    pub fn failover(&self) {
        let port = self.sentinels[0].0;
        let replica_port = self.replica.port().to_string();
        assert!(
            wait_until(Duration::from_secs(20), || {
                sentinel_cli(port, &["SENTINEL", "FAILOVER", "mymaster"]);
                wait_until(Duration::from_secs(3), || {
                    sentinel_cli(port, &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", "mymaster"])
                        .contains(&replica_port)
                })
            }),
            "failover did not happen"
        );
        assert!(wait_until(Duration::from_secs(20), || self
            .sentinels
            .iter()
            .all(|(p, _)| {
                sentinel_cli(*p, &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", "mymaster"])
                    .contains(&replica_port)
            })));
        assert!(wait_until(Duration::from_secs(10), || self
            .replica
            .redis(&["ROLE"])
            .starts_with("master")));
    }
}

impl Drop for SentinelGroup {
    fn drop(&mut self) {
        for (_, child) in &mut self.sentinels {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn sentinel_cli(port: u16, args: &[&str]) -> String {
    Command::new("redis-cli")
        .args(["-p", &port.to_string(), "--raw"])
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// A Redis Cluster of three primaries with a replica each, made with
/// `redis-cli --cluster create`.
pub struct ClusterGroup {
    pub nodes: Vec<RedisServer>,
}

impl ClusterGroup {
    pub fn start() -> Self {
        let nodes: Vec<RedisServer> = (0..6)
            .map(|_| {
                RedisServer::start_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "2000",
                ])
            })
            .collect();
        let addresses: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            created.status.success(),
            "cluster create: {}",
            String::from_utf8_lossy(&created.stdout)
        );
        let group = Self { nodes };
        assert!(
            wait_until(Duration::from_secs(30), || group.nodes.iter().all(|n| n
                .redis(&["CLUSTER", "INFO"])
                .contains("cluster_state:ok"))),
            "cluster did not become ok"
        );
        group
    }

    pub fn seed_urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .take(3)
            .map(|n| format!("redis://127.0.0.1:{}", n.port()))
            .collect()
    }

    /// `redis-cli -c` against the cluster: follows redirects to the key's node.
    pub fn cli(&self, args: &[&str]) -> String {
        let output = Command::new("redis-cli")
            .args(["-c", "-p", &self.nodes[0].port().to_string(), "--raw"])
            .args(args)
            .output()
            .expect("redis-cli -c");
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// The node that serves `key` now.
    pub fn owner_of(&self, key: &str) -> &RedisServer {
        let slot: u16 = self
            .cli(&["CLUSTER", "KEYSLOT", key])
            .parse()
            .expect("slot");
        self.nodes
            .iter()
            .find(|n| {
                n.redis(&["ROLE"]).starts_with("master")
                    && n.redis(&["CLUSTER", "NODES"]).lines().any(|line| {
                        line.contains("myself")
                            && line.split_whitespace().skip(8).any(|range| {
                                let (lo, hi) = range.split_once('-').unwrap_or((range, range));
                                matches!((lo.parse::<u16>(), hi.parse::<u16>()), (Ok(lo), Ok(hi)) if lo <= slot && slot <= hi)
                            })
                    })
            })
            .expect("a primary serves the slot")
    }

    /// FLUSHALL on every primary.
    pub fn flush_all(&self) {
        for node in &self.nodes {
            if node.redis(&["ROLE"]).starts_with("master") {
                node.redis(&["FLUSHALL"]);
            }
        }
    }

    /// Promotes the replica of the node serving `key` (CLUSTER FAILOVER).
    pub fn fail_over_owner_of(&self, key: &str) -> &RedisServer {
        let owner = self.owner_of(key);
        let owner_id = owner.redis(&["CLUSTER", "MYID"]);
        let replica = self
            .nodes
            .iter()
            .find(|n| {
                n.redis(&["ROLE"]).starts_with("slave")
                    && n.redis(&["CLUSTER", "NODES"])
                        .lines()
                        .any(|l| l.contains("myself") && l.contains(&owner_id))
            })
            .expect("the owner has a replica");
        assert!(
            wait_until(Duration::from_secs(10), || replica
                .redis(&["INFO", "replication"])
                .contains("master_link_status:up")),
            "replica in sync"
        );
        replica.redis(&["CLUSTER", "FAILOVER"]);
        assert!(
            wait_until(Duration::from_secs(20), || replica
                .redis(&["ROLE"])
                .starts_with("master")),
            "replica promoted"
        );
        replica
    }
}

/// PromQL words that are never metric names although no `(` follows them
/// (aggregations, operators, modifiers, literals).
pub const PROMQL_NON_METRIC_WORDS: &[&str] = &[
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "atan2",
    "inf",
    "nan",
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
    "group_left",
    "group_right",
];

/// Runs a command-line tool from the repository root; a missing tool fails
/// the test with the Debian package that brings it.
pub fn run_tool(tool: &str, package: &str, args: &[&str]) -> Output {
    Command::new(tool)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap_or_else(|e| panic!("{}", missing_tool(tool, package, &e)))
}

pub fn missing_tool(tool: &str, package: &str, error: &std::io::Error) -> String {
    format!(
        "cannot run `{tool}` ({error}). The tests need it: install the Debian package \
         `{package}` (apt-get install {package}), or run scripts/ensure-services, which installs it"
    )
}

/// A tool's stdout and stderr together.
pub fn text_of(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Panics with the tool's output unless it succeeded; returns the output.
pub fn assert_success(what: &str, output: &Output) -> String {
    let text = text_of(output);
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{text}",
        output.status
    );
    text
}

/// PromQL keywords followed by a parenthesised list of label names.
pub const PROMQL_LABEL_LIST_KEYWORDS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// Index just past the `close` matching the delimiter at `start` of a PromQL
/// expression, stepping over quoted strings.
pub fn promql_skip_enclosed(chars: &[char], start: usize, close: char) -> usize {
    let mut i = start + 1;
    while i < chars.len() {
        match chars[i] {
            c if c == close => return i + 1,
            '"' | '\'' | '`' => i = promql_skip_string(chars, i),
            _ => i += 1,
        }
    }
    i
}

/// Index just past the PromQL string literal that starts at `start`.
pub fn promql_skip_string(chars: &[char], start: usize) -> usize {
    let quote = chars[start];
    let mut i = start + 1;
    while i < chars.len() {
        match chars[i] {
            '\\' if quote != '`' => i += 2,
            c if c == quote => return i + 1,
            _ => i += 1,
        }
    }
    i
}
