//! What the signal sources notice.

use super::{InternalEvent, Observer};
use crate::model::Cause;
use crate::report::metrics::watcher::CauseLabels;

/// A signal that schedulers may have been lost.
pub(crate) struct Detected<'a> {
    pub(crate) cause: Cause,
    pub(crate) queue: Option<&'a str>,
    pub(crate) detail: String,
}

impl InternalEvent for Detected<'_> {
    fn emit(self, observer: &Observer) {
        let cause = self.cause.as_str();
        // Every start compares, and rows change as the application edits
        // them; neither is a sign of a loss.
        if matches!(self.cause, Cause::Startup | Cause::SourceChange) {
            tracing::info!(
                event = "detected",
                cause,
                queue = self.queue.unwrap_or(""),
                "{}",
                self.detail
            );
        } else {
            tracing::warn!(
                event = "detected",
                cause,
                queue = self.queue.unwrap_or(""),
                "{}",
                self.detail
            );
        }
        let m = observer.metrics();
        m.watcher
            .detections
            .get_or_create(&CauseLabels { cause })
            .inc();
        match self.cause {
            Cause::Restart => {
                m.redis.restarts.inc();
                let now_s = crate::clock::now_ms() / 1000;
                m.redis
                    .last_restart
                    .set(i64::try_from(now_s).unwrap_or(i64::MAX));
            }
            Cause::Flush => {
                m.redis.flushes.inc();
            }
            Cause::Failover => {
                m.redis.failovers.inc();
            }
            _ => {}
        }
    }
}

/// The keyspace subscription became active or was lost.
pub(crate) struct KeyspaceNotifications {
    pub(crate) active: bool,
    pub(crate) detail: String,
}

impl InternalEvent for KeyspaceNotifications {
    fn emit(self, observer: &Observer) {
        let active = self.active;
        if active {
            tracing::info!(event = "keyspace_notifications", active, "{}", self.detail);
        } else {
            tracing::warn!(event = "keyspace_notifications", active, "{}", self.detail);
        }
        observer
            .metrics()
            .watcher
            .keyspace_notifications_active
            .set(i64::from(active));
    }
}

/// The keyspace subscription paused (or resumed) around the watcher's own
/// writes, whose echoes it would otherwise read.
pub(crate) struct KeyspacePaused {
    pub(crate) paused: bool,
}

impl InternalEvent for KeyspacePaused {
    fn emit(self, _: &Observer) {
        tracing::debug!(
            event = "keyspace_paused",
            paused = self.paused,
            "own writes"
        );
    }
}

/// A database was flushed; the poll compares the counts and reports it.
pub(crate) struct FlushNoticed;

impl InternalEvent for FlushNoticed {
    fn emit(self, _: &Observer) {
        tracing::debug!(event = "flush_notice", "a database was flushed");
    }
}
