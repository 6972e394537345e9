//! Recoveries: how often and why they ran, how they ended, what they
//! restored, and the state of the retry loop and the lease.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use super::{register, FloatGauge, QueueLabels};
use crate::model::FailureReason;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RecoveryLabels {
    pub(crate) queue: String,
    pub(crate) trigger: &'static str,
    pub(crate) result: &'static str,
}

/// Where a recovery's desired schedulers came from.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RowsLabels {
    pub(crate) source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ReasonLabels {
    pub(crate) reason: &'static str,
}

pub(crate) struct RecoveryMetrics {
    pub(crate) recoveries: Family<RecoveryLabels, Counter>,
    pub(crate) failures: Family<ReasonLabels, Counter>,
    pub(crate) restores: Family<RowsLabels, Counter>,
    pub(crate) duration: Histogram,
    pub(crate) schedulers_restored: Family<QueueLabels, Counter>,
    pub(crate) catchup_jobs: Family<QueueLabels, Counter>,
    pub(crate) last_success: Gauge,
    pub(crate) consecutive_failures: Gauge,
    pub(crate) backoff_seconds: FloatGauge,
    pub(crate) lease_held: Gauge,
    pub(crate) auto_enabled: Gauge,
}

impl RecoveryMetrics {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            recoveries: register(
                registry,
                "bullmq_warden_recoveries",
                "Recoveries per queue, by trigger and result",
                Family::default(),
            ),
            failures: register(
                registry,
                "bullmq_warden_recovery_failures",
                "Failed recovery attempts, by reason",
                Family::default(),
            ),
            restores: register(
                registry,
                "bullmq_warden_restores",
                "Recoveries that wrote, by where the desired schedulers came from",
                Family::default(),
            ),
            duration: register(
                registry,
                "bullmq_warden_recovery_duration_seconds",
                "Time to apply a recovery",
                Histogram::new(exponential_buckets(0.005, 2.0, 16)),
            ),
            schedulers_restored: register(
                registry,
                "bullmq_warden_schedulers_restored",
                "Schedulers created or repaired by recoveries",
                Family::default(),
            ),
            catchup_jobs: register(
                registry,
                "bullmq_warden_catchup_jobs",
                "Catch-up jobs enqueued for runs missed during an outage",
                Family::default(),
            ),
            last_success: register(
                registry,
                "bullmq_warden_last_recovery_success_timestamp_seconds",
                "When the last recovery succeeded",
                Gauge::default(),
            ),
            consecutive_failures: register(
                registry,
                "bullmq_warden_recovery_consecutive_failures",
                "Failed recovery attempts since the last success",
                Gauge::default(),
            ),
            backoff_seconds: register(
                registry,
                "bullmq_warden_recovery_backoff_seconds",
                "Current delay before the next recovery attempt (0: none)",
                FloatGauge::default(),
            ),
            lease_held: register(
                registry,
                "bullmq_warden_lease_held",
                "Whether this sidecar holds the recovery lease",
                Gauge::default(),
            ),
            auto_enabled: register(
                registry,
                "bullmq_warden_auto_recovery_enabled",
                "Whether the watcher restores schedulers by itself",
                Gauge::default(),
            ),
        };
        // Counters exist from the start, so that increase() sees their first change.
        for source in ["database", "kept", "snapshot"] {
            let _ = metrics.restores.get_or_create(&RowsLabels { source });
        }
        for reason in FailureReason::ALL {
            let _ = metrics.failures.get_or_create(&ReasonLabels {
                reason: reason.as_str(),
            });
        }
        metrics
    }

    /// Creates a queue's labelled counters at zero.
    pub(super) fn register_queue(&self, queue: &str, triggers: &[&'static str]) {
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
}
