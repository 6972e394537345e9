//! Redis's own accounting of a benchmark run (script time, main-thread CPU)
//! over an admin connection to the benchmark's `redis-server`, which the
//! test harness starts.

use std::time::Duration;

use crate::support::RedisServer;

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
    /// A connection of its own, separate from every measured client.
    pub fn connect(redis: &RedisServer) -> Self {
        Self(
            redis
                .connect()
                .expect("admin connection to the benchmark's Redis"),
        )
    }

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

    /// Zeroes `INFO commandstats` only (keys and scripts stay) and returns
    /// the CPU time so far, read before the reset so that this read is not
    /// counted among the commands that follow.
    pub fn reset_stats(&mut self) -> Duration {
        let cpu = self.cpu_time();
        let () = self.query(redis::cmd("CONFIG").arg("RESETSTAT"));
        cpu
    }

    /// Every command's calls and time since the last reset, from `INFO
    /// commandstats`. The `INFO` that reads them is not among them: Redis
    /// counts a command once it has run.
    pub fn commandstats(&mut self) -> CommandStats {
        let stats: String = self.query(redis::cmd("INFO").arg("commandstats"));
        CommandStats::parse(&stats)
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

    /// Main-thread CPU time of the server since it started (`INFO cpu`).
    pub fn cpu_time(&mut self) -> Duration {
        let info: String = self.query(redis::cmd("INFO").arg("cpu"));
        main_thread_cpu(&info)
    }
}

/// One command's line of `INFO commandstats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommandStat {
    pub calls: u64,
    /// Time Redis spent executing it, µs.
    pub usec: u64,
}

/// `INFO commandstats` by command name, lower case, without the `cmdstat_`
/// prefix; a subcommand reads `config|get` (Redis 7).
#[derive(Debug, Clone, Default)]
pub struct CommandStats(pub std::collections::BTreeMap<String, CommandStat>);

impl CommandStats {
    /// Parses lines such as `cmdstat_evalsha:calls=3,usec=120,usec_per_call=40.00,…`.
    pub fn parse(commandstats: &str) -> Self {
        let stats = commandstats
            .lines()
            .filter_map(|line| line.trim().strip_prefix("cmdstat_")?.split_once(':'))
            .map(|(command, fields)| {
                let number = |key| {
                    info_field(fields, ',', key)
                        .and_then(|value| value.parse::<u64>().ok())
                        .unwrap_or_default()
                };
                let stat = CommandStat {
                    calls: number("calls"),
                    usec: number("usec"),
                };
                (command.to_ascii_lowercase(), stat)
            })
            .collect();
        Self(stats)
    }

    /// One command's line; zero when it did not run.
    pub fn get(&self, command: &str) -> CommandStat {
        self.0.get(command).copied().unwrap_or_default()
    }

    /// Time spent executing scripts: the `usec` of `SCRIPT_COMMANDS`.
    pub fn script_time(&self) -> Duration {
        let micros = SCRIPT_COMMANDS
            .iter()
            .map(|name| self.get(name.trim_start_matches("cmdstat_")).usec)
            .sum();
        Duration::from_micros(micros)
    }
}

/// Sums `usec` over the script commands of an `INFO commandstats` reply.
fn script_time(commandstats: &str) -> Duration {
    CommandStats::parse(commandstats).script_time()
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
