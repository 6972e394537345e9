//! Journal mode: what the recorder wrote to the journal, and what failed.

use super::{InternalEvent, Observer};
use crate::journal::store::JournalError;
use crate::report::metrics::source::{ChangeLabels, OperationLabels};

/// One read of a queue changed the journal.
pub(crate) struct JournalRecorded<'a> {
    pub(crate) queue: &'a str,
    /// New or changed definitions written.
    pub(crate) recorded: usize,
    /// Schedulers the application removed (`removeJobScheduler`).
    pub(crate) removed: usize,
    /// The application obliterated the queue: all of it left the journal.
    pub(crate) forgotten: bool,
}

impl InternalEvent for JournalRecorded<'_> {
    fn emit(self, observer: &Observer) {
        tracing::info!(
            event = "journal_recorded",
            queue = self.queue,
            recorded = self.recorded,
            removed = self.removed,
            forgotten = self.forgotten,
            "journal updated from Redis"
        );
        let changes = &observer.metrics().source.journal_changes;
        let count = |change| changes.get_or_create(&ChangeLabels { change });
        count("recorded").inc_by(self.recorded as u64);
        count("removed").inc_by(self.removed as u64);
        if self.forgotten {
            count("forgotten").inc();
        }
    }
}

/// A read for the journal or a write to it failed; the journal keeps what
/// it held, and the next read tries again.
pub(crate) struct JournalFailed<'a> {
    pub(crate) error: &'a JournalError,
}

impl InternalEvent for JournalFailed<'_> {
    fn emit(self, observer: &Observer) {
        let operation = self.error.operation();
        tracing::warn!(event = "journal_failed", operation, "{}", self.error);
        observer
            .metrics()
            .source
            .journal_errors
            .get_or_create(&OperationLabels { operation })
            .inc();
    }
}
