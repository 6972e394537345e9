//! Prometheus metrics: one registry, typed label sets, values set from the
//! watcher's polls so that a scrape only encodes what is cached.

use std::fmt::Write as _;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::model::JobCounts;
use crate::warden::Drift;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabels {
    pub queue: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub queue: String,
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DriftLabels {
    pub queue: String,
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CauseLabels {
    pub cause: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RecoveryLabels {
    pub queue: String,
    pub trigger: &'static str,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabels {
    pub policy: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabels {
    pub version: &'static str,
    pub revision: &'static str,
}

type Gauges<L> = Family<L, Gauge>;

/// A gauge without labels that is left out while its value is unknown
/// (`set_known`, `forget`).
#[derive(Clone, Default)]
pub struct OptionalGauge(Family<Vec<(String, String)>, Gauge>);

impl OptionalGauge {
    pub fn set_known(&self, value: i64) {
        self.0.get_or_create(&Vec::new()).set(value);
    }

    pub fn forget(&self) {
        self.0.clear();
    }
}
type FloatGauge = Gauge<f64, std::sync::atomic::AtomicU64>;

/// Every metric the sidecar exports; names are listed in docs/metrics.md.
pub struct Metrics {
    registry: Registry,
    pub job_count: Gauges<StateLabels>,
    pub job_schedulers: Gauges<QueueLabels>,
    pub desired_schedulers: Gauges<QueueLabels>,
    pub drift_schedulers: Gauges<DriftLabels>,
    pub legacy_repeatables: Gauges<QueueLabels>,
    pub redis_up: Gauge,
    pub redis_restarts: Counter,
    pub redis_flushes: Counter,
    pub redis_failovers: Counter,
    pub redis_last_restart: Gauge,
    pub redis_loading: Gauge,
    pub redis_aof_enabled: OptionalGauge,
    pub redis_rdb_save_configured: OptionalGauge,
    pub redis_appendfsync: Gauges<PolicyLabels>,
    pub redis_noeviction: OptionalGauge,
    pub redis_config_readable: Gauge,
    pub keyspace_notifications_active: Gauge,
    pub redis_used_memory: Gauge,
    pub redis_maxmemory: Gauge,
    pub detections: Family<CauseLabels, Counter>,
    pub recoveries: Family<RecoveryLabels, Counter>,
    pub recovery_duration: Histogram,
    pub schedulers_restored: Family<QueueLabels, Counter>,
    pub catchup_jobs: Family<QueueLabels, Counter>,
    pub last_recovery_success: Gauge,
    pub consecutive_failures: Gauge,
    pub backoff_seconds: FloatGauge,
    pub lease_held: Gauge,
    pub auto_recovery_enabled: Gauge,
    pub config_reload_successful: Gauge,
    pub source_up: Gauge,
    pub source_query_duration: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        macro_rules! register {
            ($name:literal, $help:literal, $metric:expr) => {{
                let metric = $metric;
                registry.register($name, $help, metric.clone());
                metric
            }};
        }
        let build_info: Family<VersionLabels, Gauge> = Family::default();
        build_info
            .get_or_create(&VersionLabels {
                version: env!("CARGO_PKG_VERSION"),
                // Set by build.rs: the git commit, or "unknown".
                revision: env!("BULLMQ_WARDEN_REVISION"),
            })
            .set(1);
        registry.register(
            "bullmq_warden_build_info",
            "bullmq-warden version and git revision, always 1",
            build_info,
        );
        registry.register_collector(Box::new(crate::report::process_metrics::ProcessCollector));
        Self {
            job_count: register!(
                "bullmq_job_count",
                "Number of jobs in the queue by state",
                Gauges::<StateLabels>::default()
            ),
            job_schedulers: register!(
                "bullmq_job_schedulers",
                "Job schedulers in Redis (members of the repeat set)",
                Gauges::<QueueLabels>::default()
            ),
            desired_schedulers: register!(
                "bullmq_warden_desired_schedulers",
                "Valid enabled rows that want a job scheduler",
                Gauges::<QueueLabels>::default()
            ),
            drift_schedulers: register!(
                "bullmq_warden_drift_schedulers",
                "Schedulers that differ between the rows and Redis, by kind",
                Gauges::<DriftLabels>::default()
            ),
            legacy_repeatables: register!(
                "bullmq_warden_legacy_repeatables",
                "Legacy repeatable jobs (BullMQ 5 queue.add with repeat), never touched",
                Gauges::<QueueLabels>::default()
            ),
            redis_up: register!(
                "bullmq_warden_redis_up",
                "Whether Redis answers the sidecar",
                Gauge::default()
            ),
            redis_restarts: register!(
                "bullmq_warden_redis_restarts",
                "Redis restarts seen (new run_id or falling uptime)",
                Counter::default()
            ),
            redis_flushes: register!(
                "bullmq_warden_redis_flushes",
                "Scheduler sets emptied without a restart (FLUSHALL, FLUSHDB, DEL)",
                Counter::default()
            ),
            redis_failovers: register!(
                "bullmq_warden_redis_failovers",
                "Role or replication id changes seen",
                Counter::default()
            ),
            redis_last_restart: register!(
                "bullmq_warden_redis_last_restart_timestamp_seconds",
                "When the last Redis restart was seen",
                Gauge::default()
            ),
            redis_loading: register!(
                "bullmq_warden_redis_loading",
                "Whether Redis is loading its dataset",
                Gauge::default()
            ),
            redis_aof_enabled: OptionalGauge(register!(
                "bullmq_warden_redis_aof_enabled",
                "Whether appendonly is on (absent while CONFIG is refused)",
                Family::<Vec<(String, String)>, Gauge>::default()
            )),
            redis_rdb_save_configured: OptionalGauge(register!(
                "bullmq_warden_redis_rdb_save_configured",
                "Whether RDB snapshots are configured (absent while CONFIG is refused)",
                Family::<Vec<(String, String)>, Gauge>::default()
            )),
            redis_appendfsync: register!(
                "bullmq_warden_redis_appendfsync",
                "The appendfsync policy in force (1 for the current one)",
                Gauges::<PolicyLabels>::default()
            ),
            redis_noeviction: OptionalGauge(register!(
                "bullmq_warden_redis_maxmemory_policy_noeviction",
                "Whether maxmemory-policy is noeviction, as BullMQ requires (absent while CONFIG is refused)",
                Family::<Vec<(String, String)>, Gauge>::default()
            )),
            redis_config_readable: register!(
                "bullmq_warden_redis_config_readable",
                "Whether CONFIG GET is allowed (persistence gauges are unknown otherwise)",
                Gauge::default()
            ),
            keyspace_notifications_active: register!(
                "bullmq_warden_keyspace_notifications_active",
                "Whether the keyspace notifications the watcher needs are on and subscribed",
                Gauge::default()
            ),
            redis_used_memory: register!(
                "bullmq_warden_redis_used_memory_bytes",
                "Redis used_memory",
                Gauge::default()
            ),
            redis_maxmemory: register!(
                "bullmq_warden_redis_maxmemory_bytes",
                "Redis maxmemory (0: no limit)",
                Gauge::default()
            ),
            detections: register!(
                "bullmq_warden_detections",
                "Signals that may mean schedulers were lost, by cause",
                Family::<CauseLabels, Counter>::default()
            ),
            recoveries: register!(
                "bullmq_warden_recoveries",
                "Recoveries per queue, by trigger and result",
                Family::<RecoveryLabels, Counter>::default()
            ),
            recovery_duration: register!(
                "bullmq_warden_recovery_duration_seconds",
                "Time to apply a recovery",
                Histogram::new(exponential_buckets(0.005, 2.0, 16))
            ),
            schedulers_restored: register!(
                "bullmq_warden_schedulers_restored",
                "Schedulers created or repaired by recoveries",
                Family::<QueueLabels, Counter>::default()
            ),
            catchup_jobs: register!(
                "bullmq_warden_catchup_jobs",
                "Catch-up jobs enqueued for runs missed during an outage",
                Family::<QueueLabels, Counter>::default()
            ),
            last_recovery_success: register!(
                "bullmq_warden_last_recovery_success_timestamp_seconds",
                "When the last recovery succeeded",
                Gauge::default()
            ),
            consecutive_failures: register!(
                "bullmq_warden_recovery_consecutive_failures",
                "Failed recovery attempts since the last success",
                Gauge::default()
            ),
            backoff_seconds: register!(
                "bullmq_warden_recovery_backoff_seconds",
                "Current delay before the next recovery attempt (0: none)",
                FloatGauge::default()
            ),
            lease_held: register!(
                "bullmq_warden_lease_held",
                "Whether this sidecar holds the recovery lease",
                Gauge::default()
            ),
            auto_recovery_enabled: register!(
                "bullmq_warden_auto_recovery_enabled",
                "Whether the watcher restores schedulers by itself",
                Gauge::default()
            ),
            config_reload_successful: register!(
                "bullmq_warden_config_last_reload_successful",
                "Whether the last reload of the config file succeeded (1 until one fails)",
                {
                    // The process runs on a config that loaded.
                    let loaded = Gauge::default();
                    loaded.set(1);
                    loaded
                }
            ),
            source_up: register!(
                "bullmq_warden_source_up",
                "Whether the source database answered the last query",
                Gauge::default()
            ),
            source_query_duration: register!(
                "bullmq_warden_source_query_duration_seconds",
                "Time the source query takes",
                Histogram::new(exponential_buckets(0.001, 2.0, 16))
            ),
            registry,
        }
    }

    /// Creates a queue's labelled counters at zero, so that `increase()` sees
    /// their first change.
    pub fn register_queue(&self, queue: &str, triggers: &[&'static str]) {
        let labels = QueueLabels {
            queue: queue.to_owned(),
        };
        let _ = self.schedulers_restored.get_or_create(&labels);
        let _ = self.catchup_jobs.get_or_create(&labels);
        for trigger in triggers {
            for result in ["success", "failure"] {
                let _ = self.recoveries.get_or_create(&RecoveryLabels {
                    queue: queue.to_owned(),
                    trigger,
                    result,
                });
            }
        }
    }

    /// Sets the rows-versus-Redis gauges of a queue.
    pub fn set_drift(&self, queue: &str, desired: usize, legacy: usize, drift: &Drift) {
        let labels = QueueLabels {
            queue: queue.to_owned(),
        };
        self.desired_schedulers
            .get_or_create(&labels)
            .set(gauge_value(desired as u64));
        self.legacy_repeatables
            .get_or_create(&labels)
            .set(gauge_value(legacy as u64));
        for (kind, value) in [
            ("missing", drift.missing),
            ("mismatched", drift.mismatched),
            ("orphaned", drift.orphaned),
            ("invalid", drift.invalid),
        ] {
            self.drift_schedulers
                .get_or_create(&DriftLabels {
                    queue: queue.to_owned(),
                    kind,
                })
                .set(gauge_value(value as u64));
        }
    }

    /// Sets `bullmq_job_count` and `bullmq_job_schedulers` for a queue.
    pub fn set_job_counts(&self, queue: &str, counts: &JobCounts) {
        for (state, value) in counts.by_state() {
            self.job_count
                .get_or_create(&StateLabels {
                    queue: queue.to_owned(),
                    state,
                })
                .set(gauge_value(value));
        }
        self.job_schedulers
            .get_or_create(&QueueLabels {
                queue: queue.to_owned(),
            })
            .set(gauge_value(counts.repeatable));
    }

    /// OpenMetrics text, as prometheus-client writes it.
    pub fn encode_openmetrics(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }

    /// The classic Prometheus text format (0.0.4), for scrapers that do not ask
    /// for OpenMetrics: counters' TYPE and HELP name the `_total` series, and
    /// the OpenMetrics-only lines go.
    pub fn encode_prometheus(&self) -> String {
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
        metrics.redis_restarts.inc();
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
        metrics.set_job_counts("mail", &JobCounts::default());
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
