//! The source database: whether it answers and how long its query takes,
//! and the snapshot of its last answer that recoveries fall back on.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use super::register;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct OperationLabels {
    pub(crate) operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ChangeLabels {
    pub(crate) change: &'static str,
}

pub(crate) struct SourceMetrics {
    pub(crate) up: Gauge,
    /// Journal mode: schedulers recorded, removed, and queues forgotten.
    pub(crate) journal_changes: Family<ChangeLabels, Counter>,
    /// Journal mode: reads of Redis or the file, and writes, that failed.
    pub(crate) journal_errors: Family<OperationLabels, Counter>,
    pub(crate) query_duration: Histogram,
    pub(crate) snapshot_timestamp: Gauge,
    pub(crate) snapshot_errors: Family<OperationLabels, Counter>,
}

impl SourceMetrics {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            up: register(
                registry,
                "bullmq_warden_source_up",
                "Whether the source database answered the last query",
                Gauge::default(),
            ),
            query_duration: register(
                registry,
                "bullmq_warden_source_query_duration_seconds",
                "Time the source query takes",
                Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            ),
            snapshot_timestamp: register(
                registry,
                "bullmq_warden_source_snapshot_timestamp_seconds",
                "When the rows of the kept snapshot were read from the source (0: none)",
                Gauge::default(),
            ),
            snapshot_errors: register(
                registry,
                "bullmq_warden_source_snapshot_errors",
                "Snapshot files that could not be read or written, by operation",
                Family::default(),
            ),
            journal_changes: register(
                registry,
                "bullmq_warden_journal_changes",
                "Journal mode: schedulers recorded or removed, and queues forgotten, by change",
                Family::default(),
            ),
            journal_errors: register(
                registry,
                "bullmq_warden_journal_errors",
                "Journal mode: failed reads (of Redis or the journal file) and writes of the journal",
                Family::default(),
            ),
        };
        for operation in ["read", "write"] {
            let _ = metrics
                .snapshot_errors
                .get_or_create(&OperationLabels { operation });
            let _ = metrics
                .journal_errors
                .get_or_create(&OperationLabels { operation });
        }
        for change in ["recorded", "removed", "forgotten"] {
            let _ = metrics
                .journal_changes
                .get_or_create(&ChangeLabels { change });
        }
        metrics
    }
}
