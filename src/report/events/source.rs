//! The source database and its rows.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{InternalEvent, LogEvent, Observer};

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
        // Only a completed comparison reports its query time.
        observer.health().synced.store(true, Ordering::Relaxed);
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

/// The watch on the rows (SQLite's data version, the change probe, or
/// PostgreSQL's LISTEN) started or came back (`active`), or was lost. Emitted
/// when that changes, not on every failed attempt.
pub(crate) struct SourceWatch<'a> {
    /// `data_version`, `change_query` or `notify_channel`.
    pub(crate) how: &'a str,
    pub(crate) active: bool,
    pub(crate) detail: String,
}

impl LogEvent for SourceWatch<'_> {
    fn log(self) {
        let (how, active) = (self.how, self.active);
        if active {
            tracing::info!(event = "source_watch", how, active, "{}", self.detail);
        } else {
            tracing::warn!(event = "source_watch", how, active, "{}", self.detail);
        }
    }
}
