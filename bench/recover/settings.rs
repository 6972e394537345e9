//! What to run: sizes, methods and the concurrency sweep, from the environment.

use crate::runs::Method;

const DEFAULT_SIZES: [usize; 3] = [1_000, 10_000, 100_000];
const DEFAULT_SWEEP_SIZE: usize = 10_000;
const DEFAULT_SWEEP: [usize; 4] = [8, 24, 64, 256];
const DEFAULT_REPEATS: usize = 3;

/// `cargo test --benches` (and `--all-targets`) runs this bench without
/// `--bench`; it then only checks, in seconds, that every method still works.
const SMOKE_SIZE: usize = 200;

#[derive(Debug)]
pub struct Settings {
    /// Scheduler counts, each with its own Node baseline.
    pub sizes: Vec<usize>,
    /// Also time Node with all upserts in flight at once.
    pub node_parallel: bool,
    /// The size at which `[recovery] concurrency` values are compared.
    pub sweep_size: usize,
    pub sweep: Vec<usize>,
    /// Runs per method and size; the table shows the median one.
    pub repeats: usize,
    /// A quick check rather than a measurement.
    pub smoke: bool,
}

impl Settings {
    /// `BENCH_SIZES=1000,10000`, `BENCH_SWEEP_SIZE=10000`,
    /// `BENCH_CONCURRENCIES=8,24,64,256` (empty: no sweep), `BENCH_REPEATS=3`,
    /// `BENCH_NODE_PARALLEL=0`.
    pub fn from_env() -> Self {
        if !std::env::args().any(|arg| arg == "--bench") {
            return Self {
                sizes: vec![SMOKE_SIZE],
                node_parallel: true,
                sweep_size: SMOKE_SIZE,
                sweep: vec![8],
                repeats: 1,
                smoke: true,
            };
        }
        Self {
            sizes: list_env("BENCH_SIZES", &DEFAULT_SIZES),
            node_parallel: std::env::var("BENCH_NODE_PARALLEL").map_or(true, |v| v != "0"),
            sweep_size: number_env("BENCH_SWEEP_SIZE", DEFAULT_SWEEP_SIZE),
            sweep: list_env("BENCH_CONCURRENCIES", &DEFAULT_SWEEP),
            repeats: number_env("BENCH_REPEATS", DEFAULT_REPEATS),
            smoke: false,
        }
    }

    /// The runs at size `n`, baseline first: the other rows are compared with it.
    pub fn methods(&self, n: usize) -> Vec<Method> {
        let mut methods = vec![Method::NodeSequential];
        if self.node_parallel {
            methods.push(Method::NodeParallel);
        }
        methods.push(Method::Warden { concurrency: None });
        if n == self.sweep_size {
            methods.extend(self.sweep.iter().map(|&c| Method::Warden {
                concurrency: Some(c),
            }));
        }
        methods
    }
}

/// One positive integer; the default when unset or empty.
fn number_env(name: &str, default: usize) -> usize {
    list_env(name, &[default])
        .first()
        .copied()
        .unwrap_or(default)
}

/// A comma-separated list of positive integers (`_` allowed as in `10_000`).
fn list_env(name: &str, default: &[usize]) -> Vec<usize> {
    let Ok(raw) = std::env::var(name) else {
        return default.to_vec();
    };
    raw.split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(|item| match item.replace('_', "").parse::<usize>() {
            Ok(value) if value > 0 => value,
            _ => panic!("{name}: {item:?} is not a positive integer (in {raw:?})"),
        })
        .collect()
}
