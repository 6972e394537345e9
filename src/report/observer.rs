//! The one place events go through: each writes its log line and changes its
//! metrics and the health flags `/readyz` reports, so that logs, metrics and
//! health never disagree about what happened.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::latest::LatestStatus;
use super::metrics::Metrics;

/// One observable event: its log line and its metric change, together.
pub(crate) trait InternalEvent {
    fn emit(self, observer: &Observer);
}

/// An event that only writes a log line: emitted through an observer like
/// any other, or logged where there is none yet (the command line before
/// the watcher starts).
pub(crate) trait LogEvent {
    fn log(self);
}

impl<T: LogEvent> InternalEvent for T {
    fn emit(self, _: &Observer) {
        self.log();
    }
}

/// What `/readyz` reports, kept by the same events that set the metrics.
#[derive(Debug, Default)]
pub(crate) struct Health {
    pub(crate) redis_up: AtomicBool,
    pub(crate) source_up: AtomicBool,
    /// Rows and Redis have been compared at least once.
    pub(crate) synced: AtomicBool,
    /// A watch on the rows (`data_version`, the change probe or `LISTEN`)
    /// answers, so a change of the rows is signalled within seconds: the
    /// rows last read are current unless such a signal is pending.
    pub(crate) rows_watched: AtomicBool,
    /// Queues left unwritten for their BullMQ version, with that version.
    pub(crate) withheld: std::sync::Mutex<std::collections::BTreeMap<String, String>>,
}

impl Health {
    pub(crate) fn ready(&self) -> bool {
        self.redis_up.load(Ordering::Relaxed)
            && self.source_up.load(Ordering::Relaxed)
            && self.synced.load(Ordering::Relaxed)
            && self.withheld.lock().map(|w| w.is_empty()).unwrap_or(true)
    }
}

/// Emits events; cheap to clone, shared by every part of the watcher.
#[derive(Clone)]
pub(crate) struct Observer {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    latest: Arc<LatestStatus>,
}

impl Observer {
    pub(crate) fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            metrics,
            health: Arc::default(),
            latest: Arc::default(),
        }
    }

    pub(crate) fn emit(&self, event: impl InternalEvent) {
        event.emit(self);
    }

    /// The status the API serves, kept by the poll and every comparison.
    pub(crate) fn latest_status(&self) -> &LatestStatus {
        &self.latest
    }

    pub(crate) fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub(crate) fn health(&self) -> &Health {
        &self.health
    }
}
