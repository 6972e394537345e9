//! Prometheus metrics: one registry, grouped by concern. Each group
//! registers its own metrics and is changed only by the events of its
//! concern (`report::events`); values are set as things happen, so that a
//! scrape only encodes what is cached. Names are listed in docs/metrics.md.

pub(crate) mod queue;
pub(crate) mod recovery;
pub(crate) mod redis;
pub(crate) mod source;
pub(crate) mod watcher;

use std::fmt::Write as _;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Metric, Registry};

pub(crate) use queue::QueueMetrics;
pub(crate) use recovery::RecoveryMetrics;
pub(crate) use redis::RedisMetrics;
pub(crate) use source::SourceMetrics;
pub(crate) use watcher::WatcherMetrics;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct QueueLabels {
    pub(crate) queue: String,
}

type Gauges<L> = Family<L, Gauge>;
type FloatGauge = Gauge<f64, std::sync::atomic::AtomicU64>;

/// A gauge without labels that is left out while its value is unknown
/// (`set_known`, `forget`).
#[derive(Clone, Default)]
pub(crate) struct OptionalGauge(Family<Vec<(String, String)>, Gauge>);

impl OptionalGauge {
    pub(crate) fn set_known(&self, value: i64) {
        self.0.get_or_create(&Vec::new()).set(value);
    }

    pub(crate) fn forget(&self) {
        self.0.clear();
    }
}

/// Registers `metric` under `name` and hands it back for the group to keep.
fn register<M: Metric + Clone>(registry: &mut Registry, name: &str, help: &str, metric: M) -> M {
    registry.register(name, help, metric.clone());
    metric
}

/// Every metric the sidecar exports.
pub(crate) struct Metrics {
    registry: Registry,
    pub(crate) queues: QueueMetrics,
    pub(crate) redis: RedisMetrics,
    pub(crate) recovery: RecoveryMetrics,
    pub(crate) source: SourceMetrics,
    pub(crate) watcher: WatcherMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let mut registry = Registry::default();
        Self {
            queues: QueueMetrics::register(&mut registry),
            redis: RedisMetrics::register(&mut registry),
            recovery: RecoveryMetrics::register(&mut registry),
            source: SourceMetrics::register(&mut registry),
            watcher: WatcherMetrics::register(&mut registry),
            registry,
        }
    }

    /// Creates a queue's labelled counters at zero, so that `increase()` sees
    /// their first change.
    pub(crate) fn register_queue(&self, queue: &str, triggers: &[&'static str]) {
        self.recovery.register_queue(queue, triggers);
    }

    /// OpenMetrics text, as prometheus-client writes it.
    pub(crate) fn encode_openmetrics(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }

    /// The classic Prometheus text format (0.0.4), for scrapers that do not ask
    /// for OpenMetrics: counters' TYPE and HELP name the `_total` series, and
    /// the OpenMetrics-only lines go.
    pub(crate) fn encode_prometheus(&self) -> String {
        let open = self.encode_openmetrics();
        let counters: std::collections::HashSet<&str> = open
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.strip_suffix(" counter"))
            .collect();
        let mut text = String::with_capacity(open.len());
        for line in open.lines() {
            if line == "# EOF" || line.starts_with("# UNIT ") {
                continue;
            }
            let renamed = ["# TYPE ", "# HELP "].iter().find_map(|marker| {
                let rest = line.strip_prefix(marker)?;
                let (name, tail) = rest.split_once(' ')?;
                counters
                    .contains(name)
                    .then(|| format!("{marker}{name}_total {tail}"))
            });
            let _ = writeln!(text, "{}", renamed.as_deref().unwrap_or(line));
        }
        text
    }
}

fn gauge_value(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text_names_counter_series_and_drops_eof() {
        let metrics = Metrics::new();
        metrics.redis.restarts.inc();
        let text = metrics.encode_prometheus();
        assert!(
            text.contains("# TYPE bullmq_warden_redis_restarts_total counter"),
            "{text}"
        );
        assert!(
            text.contains("bullmq_warden_redis_restarts_total 1"),
            "{text}"
        );
        assert!(!text.contains("# EOF"));
        assert!(metrics.encode_openmetrics().ends_with("# EOF\n"));
    }

    #[test]
    fn every_state_of_a_queue_is_exported() {
        let metrics = Metrics::new();
        metrics
            .queues
            .set_job_counts("mail", &crate::model::JobCounts::default());
        let text = metrics.encode_prometheus();
        for state in [
            "active",
            "completed",
            "delayed",
            "failed",
            "paused",
            "prioritized",
            "waiting",
            "waiting-children",
        ] {
            assert!(
                text.contains(&format!(
                    "bullmq_job_count{{queue=\"mail\",state=\"{state}\"}} 0"
                )),
                "{state}: {text}"
            );
        }
        assert!(text.contains("bullmq_warden_build_info{version="));
    }
}
