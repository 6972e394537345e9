//! The benchmark's own `redis-server` (never a shared one: every run starts
//! with FLUSHALL), and the admin commands the measurements need.

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::process::ChildGuard;

/// A `redis-server` on a free loopback port, without persistence, killed on drop.
pub struct RedisServer {
    port: u16,
    // Declared before the data dir so the server stops before its dir is removed.
    process: ChildGuard,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts a server; retries because a port found free can be taken before
    /// `redis-server` binds it.
    pub fn start() -> Self {
        for _ in 0..5 {
            if let Some(server) = Self::try_start(free_port()) {
                return server;
            }
        }
        panic!("could not start redis-server (is it installed?)");
    }

    fn try_start(port: u16) -> Option<Self> {
        let dir = tempfile::tempdir().expect("temp dir for redis-server");
        let mut server = Self {
            port,
            process: spawn_server(port, dir.path()),
            dir,
        };
        // Dropping a server that never answered stops its process.
        server.wait_until_ready().then_some(server)
    }

    /// Kills the server (everything in memory is gone, as nothing is
    /// persisted) and starts it again, empty, on the same port; returns the
    /// moment it answers again.
    pub fn restart(&mut self) -> Instant {
        self.process.kill();
        self.process = spawn_server(self.port, self.dir.path());
        assert!(
            self.wait_until_ready(),
            "redis-server did not come back on port {}",
            self.port
        );
        Instant::now()
    }

    /// `redis://127.0.0.1:<port>/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// A new connection of its own; used for admin commands and by the probe.
    pub fn connect(&self) -> redis::RedisResult<redis::Connection> {
        redis::Client::open(self.url())?.get_connection()
    }

    /// An admin connection, separate from every measured client.
    pub fn admin(&self) -> Admin {
        Admin(
            self.connect()
                .expect("admin connection to the benchmark's Redis"),
        )
    }

    /// True once the server answers PING; false if it exited (its port was
    /// taken after all: a PING would then reach someone else's server) or never answered.
    fn wait_until_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.process.exit_status().is_some() {
                return false;
            }
            let pong = self
                .connect()
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
            if pong.is_ok() {
                return self.process.exit_status().is_none();
            }
            // Short: a restart's measurements start when it answers.
            std::thread::sleep(Duration::from_millis(2));
        }
        false
    }
}

fn spawn_server(port: u16, dir: &std::path::Path) -> ChildGuard {
    let mut command = Command::new("redis-server");
    command
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    ChildGuard::spawn(&mut command, "redis-server")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free loopback port")
}

/// Redis's own accounting of one run.
#[derive(Debug, Clone, Copy, Default)]
pub struct RedisUsage {
    /// Time spent executing scripts (EVAL, EVALSHA and their read-only and
    /// function variants), from `INFO commandstats`. Commands that scripts call
    /// are counted there too, but their time is already inside the script's.
    pub script: Duration,
    /// Main-thread CPU time of the server over the run (`INFO cpu`): scripts plus
    /// reading, parsing and answering every command of every client.
    pub cpu: Duration,
}

/// Commands whose time is script execution.
const SCRIPT_COMMANDS: [&str; 6] = [
    "cmdstat_eval",
    "cmdstat_evalsha",
    "cmdstat_eval_ro",
    "cmdstat_evalsha_ro",
    "cmdstat_fcall",
    "cmdstat_fcall_ro",
];

/// An admin connection to the benchmark's Redis.
pub struct Admin(redis::Connection);

impl Admin {
    fn query<T: redis::FromRedisValue>(&mut self, command: &mut redis::Cmd) -> T {
        command
            .query(&mut self.0)
            .unwrap_or_else(|e| panic!("admin command failed: {e}"))
    }

    /// Empties Redis as a restart without persistence would: no keys and no
    /// cached scripts, so every run loads BullMQ's scripts like a real recovery
    /// does and no run profits from the one before. Zeroes `INFO commandstats`
    /// and returns the CPU time so far, against which `usage` measures the run.
    pub fn reset(&mut self) -> Duration {
        let () = self.query(&mut redis::cmd("FLUSHALL"));
        let () = self.query(redis::cmd("SCRIPT").arg("FLUSH"));
        let () = self.query(redis::cmd("CONFIG").arg("RESETSTAT"));
        self.cpu_time()
    }

    /// What Redis spent since `reset` returned `cpu_at_reset`.
    pub fn usage(&mut self, cpu_at_reset: Duration) -> RedisUsage {
        let stats: String = self.query(redis::cmd("INFO").arg("commandstats"));
        RedisUsage {
            script: script_time(&stats),
            cpu: self.cpu_time().saturating_sub(cpu_at_reset),
        }
    }

    /// `redis_version` from `INFO server`.
    pub fn version(&mut self) -> String {
        let info: String = self.query(redis::cmd("INFO").arg("server"));
        info.lines()
            .find_map(|line| line.trim().strip_prefix("redis_version:"))
            .unwrap_or("?")
            .to_owned()
    }

    pub fn zcard(&mut self, key: &str) -> u64 {
        self.query(redis::cmd("ZCARD").arg(key))
    }

    pub fn llen(&mut self, key: &str) -> u64 {
        self.query(redis::cmd("LLEN").arg(key))
    }

    fn cpu_time(&mut self) -> Duration {
        let info: String = self.query(redis::cmd("INFO").arg("cpu"));
        main_thread_cpu(&info)
    }
}

/// Sums `usec` over the script commands of an `INFO commandstats` reply,
/// whose lines read `cmdstat_evalsha:calls=3,usec=120,usec_per_call=40.00,…`.
fn script_time(commandstats: &str) -> Duration {
    let micros: u64 = commandstats
        .lines()
        .filter_map(|line| line.trim().split_once(':'))
        .filter(|(command, _)| SCRIPT_COMMANDS.contains(command))
        .filter_map(|(_, fields)| info_field(fields, ',', "usec"))
        .filter_map(|usec| usec.parse::<u64>().ok())
        .sum();
    Duration::from_micros(micros)
}

/// User plus system CPU of Redis's main thread (the one that runs commands).
/// Servers before 6.2 only report the whole process, which is then used.
fn main_thread_cpu(info_cpu: &str) -> Duration {
    let seconds = |key: &str| {
        info_cpu
            .lines()
            .find_map(|line| line.trim().strip_prefix(key)?.strip_prefix(':'))
            .and_then(|value| value.parse::<f64>().ok())
    };
    let main_thread = seconds("used_cpu_user_main_thread")
        .zip(seconds("used_cpu_sys_main_thread"))
        .map(|(user, sys)| user + sys);
    let total = main_thread.unwrap_or_else(|| {
        seconds("used_cpu_user").unwrap_or_default() + seconds("used_cpu_sys").unwrap_or_default()
    });
    Duration::from_secs_f64(total)
}

fn info_field<'a>(fields: &'a str, separator: char, key: &str) -> Option<&'a str> {
    fields
        .split(separator)
        .find_map(|field| field.strip_prefix(key)?.strip_prefix('='))
}
