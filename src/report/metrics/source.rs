//! The source database: whether it answers and how long its query takes.

use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use super::register;

pub(crate) struct SourceMetrics {
    pub(crate) up: Gauge,
    pub(crate) query_duration: Histogram,
}

impl SourceMetrics {
    pub(super) fn register(registry: &mut Registry) -> Self {
        Self {
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
        }
    }
}
