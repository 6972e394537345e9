//! Recovery benchmark: how long restoring N job schedulers into an empty Redis
//! takes with bullmq-warden, compared with the manual's `recoverTasks` in Node
//! BullMQ 6, with Redis's own script time, and with the latency another client
//! of the same Redis sees meanwhile.
//!
//! `cargo bench --bench recover` prints one Markdown table; `bench/README.md`
//! explains the columns, the environment variables and the targets.

// The crate root is `bench/recover.rs`, so its modules are named by path:
// its own under `recover/`, those shared by the benchmarks (each using only
// part of them) under `shared/`, and the test harness, which starts the
// servers and the binary, under `tests/support/`.
#[allow(dead_code)]
#[path = "shared/machine.rs"]
mod machine;
#[path = "recover/probe.rs"]
mod probe;
#[allow(dead_code)]
#[path = "shared/redis_admin.rs"]
mod redis_admin;
#[path = "recover/report.rs"]
mod report;
#[path = "recover/runs.rs"]
mod runs;
#[path = "recover/settings.rs"]
mod settings;
#[path = "../tests/support/mod.rs"]
mod support;
#[allow(dead_code)]
#[path = "shared/timed.rs"]
mod timed;
#[allow(dead_code)]
#[path = "shared/workload.rs"]
mod workload;

use machine::{cores, load_average};
use std::time::{Duration, Instant};

use redis_admin::Admin;
use report::Row;
use runs::{Inputs, Measurement, Method};
use settings::Settings;
use support::RedisServer;

/// Repeats of one method stop once they have taken this long, so that the
/// minute-long Node baseline at 100,000 runs once while fast runs get repeats.
const REPEAT_BUDGET: Duration = Duration::from_secs(20);

fn main() {
    let settings = Settings::from_env();
    assert!(!settings.sizes.is_empty(), "BENCH_SIZES selects no size");
    check_node_packages();
    if settings.smoke {
        eprintln!(
            "[bench] smoke run (N={:?}); measure with `cargo bench --bench recover`",
            settings.sizes
        );
    }
    let load_before = load_average();
    warn_if_busy(load_before);
    let started = Instant::now();
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().expect("temp dir for the inputs");
    let mut rows = Vec::new();
    for &n in &settings.sizes {
        eprintln!("[bench] N={n}: writing the SQLite source and the Node input");
        let inputs = Inputs::prepare(dir.path(), n, &redis);
        for method in settings.methods(n) {
            rows.push(run(&redis, method, &inputs, settings.repeats));
        }
    }
    eprintln!("[bench] done in {:.0} s", started.elapsed().as_secs_f64());
    println!("{}\n", describe_setup(&redis, load_before));
    report::print_table(&rows);
    report::print_sweep_summary(&rows, settings.sweep_size);
}

/// Runs `method` up to `repeats` times (within `REPEAT_BUDGET`) and keeps the
/// median run by apply time: one run is easily thrown off on a small machine.
fn run(redis: &RedisServer, method: Method, inputs: &Inputs, repeats: usize) -> Row {
    let started = Instant::now();
    let mut measured: Vec<Measurement> = Vec::new();
    while measured.len() < repeats && (measured.is_empty() || started.elapsed() < REPEAT_BUDGET) {
        eprint!(
            "[bench] N={} {method} run {} ... ",
            inputs.n,
            measured.len() + 1
        );
        let m = runs::measure(redis, method, inputs);
        eprintln!(
            "wall {:.3} s, apply {:.3} s, redis scripts {:.3} s",
            m.wall.as_secs_f64(),
            m.apply.as_secs_f64(),
            m.redis.script.as_secs_f64()
        );
        measured.push(m);
    }
    measured.sort_by_key(|m| m.apply);
    Row {
        n: inputs.n,
        method,
        runs: measured.len(),
        measured: measured[(measured.len() - 1) / 2],
    }
}

/// The baseline needs the pinned BullMQ packages; say how to get them.
fn check_node_packages() {
    assert!(
        support::node_packages_installed(),
        "Node packages missing: run `npm ci --prefix tests/node` first"
    );
}

/// The facts the numbers depend on, printed above the table.
fn describe_setup(redis: &RedisServer, load_before: Option<f64>) -> String {
    let node = std::process::Command::new("node")
        .arg("--version")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .unwrap_or_default();
    let load = load_before.map_or_else(|| "unknown".to_owned(), |l| format!("{l:.2}"));
    format!(
        "{} cores, Redis {} on loopback, Node {node} with BullMQ 6; load average before the run {load}",
        cores(),
        Admin::connect(redis).version(),
    )
}

/// Other busy processes (a build, say) take CPU from Redis and the clients
/// and skew every number; say so rather than print a quietly wrong table.
fn warn_if_busy(load: Option<f64>) {
    let cores = cores();
    if let Some(load) = load.filter(|&load| load > cores as f64 * 0.5) {
        eprintln!(
            "[bench] warning: load average {load:.1} on {cores} cores before starting; \
             other processes will skew the numbers"
        );
    }
}
