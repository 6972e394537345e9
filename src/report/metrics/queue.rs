//! Per-queue gauges: BullMQ's own job counts, and what the rows want
//! compared with what Redis holds.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::{gauge_value, register, Gauges, QueueLabels};
use crate::model::JobCounts;
use crate::warden::Drift;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct StateLabels {
    pub(crate) queue: String,
    pub(crate) state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct DriftLabels {
    pub(crate) queue: String,
    pub(crate) kind: &'static str,
}

pub(crate) struct QueueMetrics {
    job_count: Gauges<StateLabels>,
    job_schedulers: Gauges<QueueLabels>,
    desired_schedulers: Gauges<QueueLabels>,
    drift_schedulers: Gauges<DriftLabels>,
    legacy_repeatables: Gauges<QueueLabels>,
    /// Queues left unwritten for the BullMQ version that set them up.
    pub(crate) withheld: Gauge,
}

impl QueueMetrics {
    pub(super) fn register(registry: &mut Registry) -> Self {
        Self {
            job_count: register(
                registry,
                "bullmq_job_count",
                "Number of jobs in the queue by state",
                Gauges::default(),
            ),
            job_schedulers: register(
                registry,
                "bullmq_job_schedulers",
                "Job schedulers in Redis (members of the repeat set)",
                Gauges::default(),
            ),
            desired_schedulers: register(
                registry,
                "bullmq_warden_desired_schedulers",
                "Valid enabled rows that want a job scheduler",
                Gauges::default(),
            ),
            drift_schedulers: register(
                registry,
                "bullmq_warden_drift_schedulers",
                "Schedulers that differ between the rows and Redis, by kind",
                Gauges::default(),
            ),
            legacy_repeatables: register(
                registry,
                "bullmq_warden_legacy_repeatables",
                "Legacy repeatable jobs (BullMQ 5 queue.add with repeat), never touched",
                Gauges::default(),
            ),
            withheld: register(
                registry,
                "bullmq_warden_withheld_queues",
                "Queues left unwritten because their meta hash names a BullMQ major version the warden was not verified against",
                Gauge::default(),
            ),
        }
    }

    /// Sets the rows-versus-Redis gauges of a queue.
    pub(crate) fn set_drift(&self, queue: &str, desired: usize, legacy: usize, drift: &Drift) {
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

    /// Sets `bullmq_job_count` and `bullmq_job_schedulers` for a queue; a
    /// new queue's series are made in the lasting heap (`memory::lasting`).
    pub(crate) fn set_job_counts(&self, queue: &str, counts: &JobCounts) {
        crate::memory::lasting(|| self.set_counts(queue, counts));
    }

    fn set_counts(&self, queue: &str, counts: &JobCounts) {
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
}
