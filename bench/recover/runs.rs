//! One measured restore: empty Redis, run one method over the same N
//! schedulers, collect the timings, then check that all N are in place.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::probe::{Latency, LatencyProbe};
use crate::redis_admin::{Admin, RedisUsage};
use crate::support::{node_driver, warden_command, RedisServer};
use crate::timed::{run_timed, Finished};
use crate::workload::{self, PREFIX, QUEUE, SCHEDULER_ID_TEMPLATE};

/// Generous: 100,000 sequential upserts in Node take about a minute.
const RUN_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// How the schedulers get into Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// The manual's `recoverTasks`: BullMQ 6's `upsertJobScheduler`, one after another.
    NodeSequential,
    /// The same upserts all started at once (`Promise.all`).
    NodeParallel,
    /// `bullmq-warden recover`; `Some(c)` overrides `[recovery] concurrency`.
    Warden { concurrency: Option<usize> },
}

impl Method {
    pub fn is_warden(self) -> bool {
        matches!(self, Method::Warden { .. })
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Method::NodeSequential => f.write_str("node bullmq6 sequential"),
            Method::NodeParallel => f.write_str("node bullmq6 --parallel"),
            Method::Warden { concurrency: None } => f.write_str("bullmq-warden (default)"),
            Method::Warden {
                concurrency: Some(c),
            } => write!(f, "bullmq-warden c={c}"),
        }
    }
}

/// What one restore cost.
#[derive(Debug, Clone, Copy)]
pub struct Measurement {
    /// The whole process, start to exit.
    pub wall: Duration,
    /// Writing the schedulers only: the driver's `elapsedMs`, or the report's
    /// `durationMs` (after the source read and the plan).
    pub apply: Duration,
    pub redis: RedisUsage,
    /// The other client's latency while schedulers were written.
    pub latency: Option<Latency>,
}

/// The same N schedulers in both input forms, plus bullmq-warden's config.
pub struct Inputs {
    pub n: usize,
    node_input: PathBuf,
    warden_config: PathBuf,
}

impl Inputs {
    /// Writes the inputs for `n` schedulers into `dir`.
    pub fn prepare(dir: &Path, n: usize, redis: &RedisServer) -> Self {
        let tasks = workload::tasks(n);
        let node_input = dir.join(format!("schedulers-{n}.json"));
        workload::write_node_input(&tasks, &node_input);
        let sqlite = dir.join(format!("tasks-{n}.db"));
        workload::write_sqlite_source(&tasks, &sqlite);
        let warden_config = dir.join(format!("warden-{n}.toml"));
        write_warden_config(&warden_config, redis, &sqlite);
        Self {
            n,
            node_input,
            warden_config,
        }
    }
}

fn write_warden_config(path: &Path, redis: &RedisServer, sqlite: &Path) {
    let quoted = |text: &str| toml::Value::from(text).to_string();
    let config = format!(
        "[redis]\nurl = {}\nprefix = {}\n\n[source]\nurl = {}\nqueue = {}\nscheduler_id = {}\n",
        quoted(&redis.url()),
        quoted(PREFIX),
        quoted(&format!("sqlite://{}", sqlite.display())),
        quoted(QUEUE),
        quoted(SCHEDULER_ID_TEMPLATE),
    );
    std::fs::write(path, config).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// Restores `inputs` with `method` into an emptied Redis and measures it.
/// Panics, naming the method, when the run fails or leaves Redis incomplete.
pub fn measure(redis: &RedisServer, method: Method, inputs: &Inputs) -> Measurement {
    let what = format!("{method} (N={})", inputs.n);
    let (command, stdin) = command_for(method, inputs, redis);
    let mut admin = Admin::connect(redis);
    let cpu_at_reset = admin.reset();
    let probe = LatencyProbe::start(redis, &queue_key("repeat"));
    let finished = run_timed(command, stdin, &what, RUN_TIMEOUT, || probe.is_running());
    let latency = probe.finish(inputs.n as u64);
    let usage = admin.usage(cpu_at_reset);
    if !finished.status.success() {
        panic!(
            "{what} failed ({}):\n{}",
            finished.status,
            finished.stderr_tail()
        );
    }
    let apply = match method {
        Method::Warden { .. } => warden_apply_time(&finished, inputs.n, &what),
        _ => node_apply_time(&finished, &what),
    };
    verify_restored(&mut admin, inputs.n, &what);
    Measurement {
        wall: finished.wall,
        apply,
        redis: usage,
        latency,
    }
}

/// The process to start, and the file to feed it on stdin.
fn command_for<'a>(
    method: Method,
    inputs: &'a Inputs,
    redis: &RedisServer,
) -> (Command, Option<&'a Path>) {
    match method {
        Method::NodeSequential => (node_command(redis, false), Some(&inputs.node_input)),
        Method::NodeParallel => (node_command(redis, true), Some(&inputs.node_input)),
        Method::Warden { concurrency } => {
            (recover_command(&inputs.warden_config, concurrency), None)
        }
    }
}

/// Every scheduler and the job for its next run must be in Redis: a fast
/// restore that lost some would be no result at all. The next job is delayed,
/// unless its time had come by the time the script ran (BullMQ then puts it in
/// the wait list: Node `--parallel` at 100,000 computes many next runs seconds
/// before it writes them, and a `*/5` pattern may come due meanwhile).
fn verify_restored(admin: &mut Admin, n: usize, what: &str) {
    let schedulers = admin.zcard(&queue_key("repeat"));
    let delayed = admin.zcard(&queue_key("delayed"));
    let waiting = admin.llen(&queue_key("wait"));
    if (schedulers, delayed + waiting) != (n as u64, n as u64) {
        panic!(
            "{what} left {schedulers} schedulers and {} next jobs ({delayed} delayed, \
             {waiting} waiting) in Redis, expected {n} of each",
            delayed + waiting
        );
    }
}

fn queue_key(suffix: &str) -> String {
    format!("{PREFIX}:{QUEUE}:{suffix}")
}

fn node_command(redis: &RedisServer, parallel: bool) -> Command {
    let mut command = Command::new("node");
    command
        .arg(node_driver())
        .args(["upsert-schedulers", "--major", "6", "--redis", &redis.url()])
        .args(["--prefix", PREFIX, "--queue", QUEUE]);
    if parallel {
        command.arg("--parallel");
    }
    command
}

fn recover_command(config: &Path, concurrency: Option<usize>) -> Command {
    let mut command = warden_command(config);
    command.args(["recover", "--json"]);
    // Only the benchmark's config applies: drop overrides from the caller's environment.
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("BULLMQ_WARDEN") {
            command.env_remove(name);
        }
    }
    command.env("RUST_LOG", "warn");
    if let Some(concurrency) = concurrency {
        command.env(
            "BULLMQ_WARDEN__RECOVERY__CONCURRENCY",
            concurrency.to_string(),
        );
    }
    command
}

/// The driver's own timing of the upserts: `{"upserted": n, "elapsedMs": ms}`.
fn node_apply_time(finished: &Finished, what: &str) -> Duration {
    let output = parse_json(finished, what);
    let millis = output["elapsedMs"]
        .as_f64()
        .unwrap_or_else(|| panic!("{what}: no elapsedMs in {output}"));
    Duration::from_secs_f64(millis / 1000.0)
}

/// The report's `durationMs`, once the report says all `n` were created.
fn warden_apply_time(finished: &Finished, n: usize, what: &str) -> Duration {
    let report = parse_json(finished, what);
    let created = report["created"].as_u64().unwrap_or_default();
    if report["success"] != true || created != n as u64 {
        panic!(
            "{what}: report says success={} created={created} (expected {n}), failed={}",
            report["success"], report["failed"]
        );
    }
    let millis = report["durationMs"]
        .as_u64()
        .unwrap_or_else(|| panic!("{what}: no durationMs in the report"));
    Duration::from_millis(millis)
}

fn parse_json(finished: &Finished, what: &str) -> Value {
    serde_json::from_str(&finished.stdout).unwrap_or_else(|e| {
        panic!(
            "{what} printed no JSON ({e}); stderr:\n{}",
            finished.stderr_tail()
        )
    })
}
