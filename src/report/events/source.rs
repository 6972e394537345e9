//! The source database and its rows.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{InternalEvent, Observer};
use crate::desired::snapshot::SnapshotError;
use crate::report::metrics::source::OperationLabels;

/// The source answered a whole comparison's read.
pub(crate) struct SourceRead {
    pub(crate) took: Duration,
}

impl InternalEvent for SourceRead {
    fn emit(self, observer: &Observer) {
        tracing::debug!(event = "source_up", "source database answered");
        let m = &observer.metrics().source;
        m.up.set(1);
        m.query_duration.observe(self.took.as_secs_f64());
        observer.health().source_up.store(true, Ordering::Relaxed);
    }
}

/// The source could not be read.
pub(crate) struct SourceDown {
    pub(crate) error: String,
}

impl InternalEvent for SourceDown {
    fn emit(self, observer: &Observer) {
        tracing::error!(event = "source_down", "{}", self.error);
        observer.metrics().source.up.set(0);
        observer.health().source_up.store(false, Ordering::Relaxed);
    }
}

/// A row that cannot become a scheduler: emitted when it first shows up and
/// when its reason changes, not on every comparison.
pub(crate) struct RowInvalid<'a> {
    pub(crate) queue: Option<&'a str>,
    pub(crate) id: &'a str,
    pub(crate) reason: &'a str,
}

impl InternalEvent for RowInvalid<'_> {
    fn emit(self, _: &Observer) {
        tracing::warn!(
            event = "row_invalid",
            queue = self.queue.unwrap_or(""),
            id = self.id,
            "{}",
            self.reason
        );
    }
}

/// The desired set of a successful read is kept: the snapshot a recovery
/// falls back on while the source cannot be read.
pub(crate) struct SnapshotKept<'a> {
    pub(crate) taken_at_ms: u64,
    /// The file it was written to this time (only when it changed, or the
    /// file's copy had grown old).
    pub(crate) written_to: Option<&'a std::path::Path>,
    /// Read from the file at start rather than from the source.
    pub(crate) loaded: bool,
}

impl InternalEvent for SnapshotKept<'_> {
    fn emit(self, observer: &Observer) {
        let path = self.written_to.map(|p| p.display().to_string());
        if self.loaded {
            tracing::info!(
                event = "snapshot_loaded",
                taken_at_ms = self.taken_at_ms,
                path = path.as_deref().unwrap_or(""),
                "the last desired set read from the source is at hand"
            );
        } else {
            tracing::debug!(
                event = "snapshot_kept",
                taken_at_ms = self.taken_at_ms,
                written_to = path.as_deref().unwrap_or(""),
                "kept the desired set of this read"
            );
        }
        let seconds = i64::try_from(self.taken_at_ms / 1000).unwrap_or(i64::MAX);
        observer.metrics().source.snapshot_timestamp.set(seconds);
    }
}

/// A snapshot file that could not be read (and is ignored) or written.
pub(crate) struct SnapshotFailed<'a> {
    pub(crate) error: &'a SnapshotError,
}

impl InternalEvent for SnapshotFailed<'_> {
    fn emit(self, observer: &Observer) {
        let operation = self.error.operation();
        tracing::warn!(event = "snapshot_failed", operation, "{}", self.error);
        observer
            .metrics()
            .source
            .snapshot_errors
            .get_or_create(&OperationLabels { operation })
            .inc();
    }
}

/// The watch on the rows (SQLite's data version, the change probe, or
/// PostgreSQL's LISTEN) started or came back (`active`), or was lost. Emitted
/// when that changes, not on every failed attempt.
pub(crate) struct SourceWatch<'a> {
    /// `data_version`, `change_query` or `notify_channel`.
    pub(crate) how: &'a str,
    pub(crate) active: bool,
    pub(crate) detail: String,
}

impl InternalEvent for SourceWatch<'_> {
    fn emit(self, observer: &Observer) {
        let (how, active) = (self.how, self.active);
        if active {
            tracing::info!(event = "source_watch", how, active, "{}", self.detail);
        } else {
            tracing::warn!(event = "source_watch", how, active, "{}", self.detail);
        }
        observer
            .health()
            .rows_watched
            .store(active, Ordering::Relaxed);
    }
}
