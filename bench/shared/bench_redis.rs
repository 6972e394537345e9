//! The benchmark's own redis-server, as the loss benchmarks use it: one
//! connection to cause losses and count, one for Redis's own accounting, both
//! made again after a restart; and the wait until every scheduler is back.

use std::time::{Duration, Instant};

use crate::redis_admin::Admin;
use crate::support::RedisServer;

pub struct Redis {
    pub server: RedisServer,
    pub connection: redis::Connection,
    /// Reads Redis's own accounting, on a connection of its own.
    pub admin: Admin,
}

impl Redis {
    pub fn start() -> Self {
        let server = RedisServer::start();
        let connection = server.connect().expect("connect to the benchmark's Redis");
        let admin = Admin::connect(&server);
        Self {
            server,
            connection,
            admin,
        }
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    /// Kills the server and starts it again, empty; returns when it answers.
    pub fn restart(&mut self) -> Instant {
        let answering = self.server.start_again();
        self.connection = self
            .server
            .connect()
            .expect("connect to the restarted Redis");
        self.admin = Admin::connect(&self.server);
        answering
    }

    pub fn cmd(&mut self, args: &[&str]) {
        let mut command = redis::cmd(args[0]);
        command.arg(&args[1..]);
        let () = command
            .query(&mut self.connection)
            .unwrap_or_else(|e| panic!("{args:?} failed: {e}"));
    }

    pub fn zcard(&mut self, key: &str) -> usize {
        redis::cmd("ZCARD")
            .arg(key)
            .query(&mut self.connection)
            .unwrap_or(0)
    }
}

/// Waits until `n` schedulers are in `repeat` and their next jobs in
/// `delayed` (`ZCARD` of both every 5 ms over one connection); returns when.
pub fn wait_restored(
    redis: &mut Redis,
    (repeat, delayed): (&str, &str),
    n: usize,
    timeout: Duration,
) -> Instant {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if redis.zcard(repeat) == n && redis.zcard(delayed) >= n {
            return Instant::now();
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("the schedulers did not come back within {timeout:?}");
}
