//! Another client of the same Redis, standing in for the application's workers:
//! what latency does it see while a restore runs?
//!
//! The probe sends one cheap O(1) command at a time on its own connection and
//! thread (a closed loop: the next command leaves when the previous answer is
//! back, and no sooner than `PROBE_INTERVAL` after the previous one left) and
//! times each. The command is `ZCARD` of the queue's `repeat` set,
//! which costs Redis what a `GET` does and also tells how far the restore has
//! got. That progress marks the samples taken while schedulers were being
//! written, so process start-up and the source read (when Redis is idle) do not
//! dilute the percentiles.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::support::RedisServer;

/// The shortest time between two probes. Unpaced, the probe would itself be
/// a load: tens of thousands of commands a second while Redis is idle, which
/// would swamp Redis's CPU time for the slow Node baseline.
const PROBE_INTERVAL: Duration = Duration::from_micros(250);

/// One probe command: its round-trip time and the `repeat` set's size it saw.
#[derive(Debug, Clone, Copy)]
struct Sample {
    latency: Duration,
    schedulers: u64,
}

/// Latency percentiles over the probes that overlapped the writes.
#[derive(Debug, Clone, Copy)]
pub struct Latency {
    pub probes: usize,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

/// A running probe; stop it with `finish`. Dropping it also stops the thread.
pub struct LatencyProbe {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<Sample>>>,
}

impl LatencyProbe {
    /// Connects (before returning, so connecting is never timed) and starts probing `repeat_key`.
    pub fn start(redis: &RedisServer, repeat_key: &str) -> Self {
        let mut conn = redis.connect().expect("probe connection");
        let key = repeat_key.to_owned();
        let stop = Arc::new(AtomicBool::new(false));
        let stop_flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("latency-probe".into())
            .spawn(move || probe_until(&stop_flag, &mut conn, &key))
            .expect("spawn the probe thread");
        Self {
            stop,
            thread: Some(thread),
        }
    }

    /// False once the probe has given up, i.e. Redis stopped answering.
    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Stops probing and summarises the probes sent while the `repeat` set grew
    /// from empty to `total`; `None` when no probe overlapped the writes.
    pub fn finish(mut self, total: u64) -> Option<Latency> {
        self.stop.store(true, Ordering::Relaxed);
        let samples = self
            .thread
            .take()
            .expect("the probe runs until finished")
            .join()
            .unwrap_or_else(|_| panic!("the latency probe failed (see its message above)"));
        summarize(during_writes(&samples, total))
    }
}

impl Drop for LatencyProbe {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Sends a probe, waits for its answer, and sends the next one no sooner than
/// `PROBE_INTERVAL` after the previous one left (at once if that answer was late).
fn probe_until(stop: &AtomicBool, conn: &mut redis::Connection, key: &str) -> Vec<Sample> {
    let mut samples = Vec::with_capacity(1 << 16);
    let mut zcard = redis::cmd("ZCARD");
    zcard.arg(key);
    while !stop.load(Ordering::Relaxed) {
        let sent = Instant::now();
        let schedulers: u64 = zcard
            .query(conn)
            .unwrap_or_else(|e| panic!("probe ZCARD failed: {e}"));
        let latency = sent.elapsed();
        samples.push(Sample {
            latency,
            schedulers,
        });
        if let Some(pause) = PROBE_INTERVAL.checked_sub(latency) {
            std::thread::sleep(pause);
        }
    }
    samples
}

/// The latencies of probes that overlapped the writes: answered after the first
/// scheduler existed, and sent before the last one did (the previous probe, which
/// came back just before this one left, still saw fewer than `total`).
fn during_writes(samples: &[Sample], total: u64) -> Vec<Duration> {
    let mut seen_before = 0;
    let mut latencies = Vec::new();
    for sample in samples {
        if sample.schedulers > 0 && seen_before < total {
            latencies.push(sample.latency);
        }
        seen_before = sample.schedulers;
    }
    latencies
}

fn summarize(mut latencies: Vec<Duration>) -> Option<Latency> {
    if latencies.is_empty() {
        return None;
    }
    latencies.sort_unstable();
    Some(Latency {
        probes: latencies.len(),
        p50: percentile(&latencies, 0.50),
        p99: percentile(&latencies, 0.99),
        max: *latencies.last().expect("not empty"),
    })
}

/// Nearest-rank percentile of sorted, non-empty values.
fn percentile(sorted: &[Duration], quantile: f64) -> Duration {
    let rank = (quantile * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}
