//! The recovery loop's decisions and their outcomes, and the lease.

use std::time::Duration;

use super::{InternalEvent, Observer};
use crate::model::{Cause, FailureReason};
use crate::report::metrics::recovery::{ReasonLabels, RecoveryLabels, RowsLabels};
use crate::report::metrics::QueueLabels;
use crate::restore::native::Action;
use crate::restore::RecoverReport;

/// Whether the watcher restores by itself (`[recovery] auto`), at start.
pub(crate) struct RecoveryMode {
    pub(crate) auto: bool,
}

impl InternalEvent for RecoveryMode {
    fn emit(self, observer: &Observer) {
        let auto = self.auto;
        tracing::info!(
            event = "recovery_mode",
            auto,
            "{}",
            if auto {
                "schedulers are restored automatically"
            } else {
                "drift is reported only (recovery.auto = false)"
            }
        );
        observer
            .metrics()
            .recovery
            .auto_enabled
            .set(i64::from(auto));
    }
}

/// The rows and Redis differ after the debounce window; `acting` is false
/// when automatic recovery is off.
pub(crate) struct DriftConfirmed {
    pub(crate) trigger: Cause,
    pub(crate) missing: usize,
    pub(crate) mismatched: usize,
    /// Orphans to prune (0 unless `prune_orphans` is on).
    pub(crate) orphaned: usize,
    pub(crate) acting: bool,
}

impl InternalEvent for DriftConfirmed {
    fn emit(self, _: &Observer) {
        tracing::warn!(
            event = "drift_confirmed",
            trigger = self.trigger.as_str(),
            missing = self.missing,
            mismatched = self.mismatched,
            orphaned = self.orphaned,
            decision = if self.acting {
                "recover"
            } else {
                "report only (recovery.auto = false)"
            },
            "schedulers differ from their rows"
        );
    }
}

pub(crate) struct RecoveryStarted {
    pub(crate) trigger: Cause,
    pub(crate) attempt: u32,
    /// The cycle did not wait for the quiet window: a loss Redis showed.
    pub(crate) at_once: bool,
}

impl InternalEvent for RecoveryStarted {
    fn emit(self, _: &Observer) {
        tracing::info!(
            event = "recovery_started",
            trigger = self.trigger.as_str(),
            attempt = self.attempt,
            at_once = self.at_once,
            "restoring schedulers"
        );
    }
}

pub(crate) struct RecoveryFinished<'a> {
    pub(crate) trigger: Cause,
    pub(crate) report: &'a RecoverReport,
    pub(crate) duration: Duration,
    /// Where the desired schedulers came from: `database`, `kept` or
    /// `snapshot`.
    pub(crate) rows: &'static str,
}

impl InternalEvent for RecoveryFinished<'_> {
    fn emit(self, observer: &Observer) {
        let report = self.report;
        tracing::info!(
            event = "recovery_finished",
            trigger = self.trigger.as_str(),
            created = report.created,
            updated = report.updated,
            unchanged = report.unchanged,
            removed = report.removed,
            invalid = report.invalid.len(),
            duration_ms = self.duration.as_millis() as u64,
            rows = self.rows,
            "schedulers restored"
        );
        let m = &observer.metrics().recovery;
        m.restores
            .get_or_create(&RowsLabels { source: self.rows })
            .inc();
        let mut per_queue: std::collections::BTreeMap<&str, u64> = Default::default();
        for change in &report.changes {
            if matches!(change.action, Action::Create | Action::Update) {
                *per_queue.entry(&change.queue).or_default() += 1;
            }
        }
        for (queue, restored) in per_queue {
            m.recoveries
                .get_or_create(&RecoveryLabels {
                    queue: queue.to_owned(),
                    trigger: self.trigger.as_str(),
                    result: "success",
                })
                .inc();
            m.schedulers_restored
                .get_or_create(&QueueLabels {
                    queue: queue.to_owned(),
                })
                .inc_by(restored);
        }
        m.duration.observe(self.duration.as_secs_f64());
        let now_s = crate::clock::now_ms() / 1000;
        m.last_success.set(i64::try_from(now_s).unwrap_or(i64::MAX));
        m.consecutive_failures.set(0);
        m.backoff_seconds.set(0.0);
    }
}

pub(crate) struct RecoveryFailed<'a> {
    pub(crate) trigger: Cause,
    /// The queues the failed cycle was looking after.
    pub(crate) queues: &'a [String],
    pub(crate) attempt: u32,
    pub(crate) reason: FailureReason,
    pub(crate) error: String,
    /// The exponential ceiling for this retry…
    pub(crate) backoff: Duration,
    /// …and the jittered delay actually waited.
    pub(crate) retry_in: Duration,
}

impl InternalEvent for RecoveryFailed<'_> {
    fn emit(self, observer: &Observer) {
        tracing::error!(
            event = "recovery_failed",
            trigger = self.trigger.as_str(),
            attempt = self.attempt,
            reason = self.reason.as_str(),
            backoff_ms = self.backoff.as_millis() as u64,
            retry_in_ms = self.retry_in.as_millis() as u64,
            "{}",
            self.error
        );
        let m = &observer.metrics().recovery;
        for queue in self.queues {
            m.recoveries
                .get_or_create(&RecoveryLabels {
                    queue: queue.clone(),
                    trigger: self.trigger.as_str(),
                    result: "failure",
                })
                .inc();
        }
        m.failures
            .get_or_create(&ReasonLabels {
                reason: self.reason.as_str(),
            })
            .inc();
        m.consecutive_failures.set(i64::from(self.attempt));
        m.backoff_seconds.set(self.retry_in.as_secs_f64());
    }
}

/// Another sidecar holds the lease; this one re-checks afterwards.
pub(crate) struct LeaseBusy {
    pub(crate) recheck_in: Duration,
}

impl InternalEvent for LeaseBusy {
    fn emit(self, _: &Observer) {
        tracing::info!(
            event = "lease_busy",
            recheck_in_ms = self.recheck_in.as_millis() as u64,
            "another bullmq-warden is recovering; re-checking afterwards"
        );
    }
}

/// This sidecar took the lease.
pub(crate) struct LeaseHeld;

impl InternalEvent for LeaseHeld {
    fn emit(self, observer: &Observer) {
        tracing::debug!(event = "lease", held = true, "recovery lease");
        observer.metrics().recovery.lease_held.set(1);
    }
}

/// This sidecar gave the lease back; a failed release leaves it to expire.
pub(crate) struct LeaseReleased {
    pub(crate) error: Option<String>,
}

impl InternalEvent for LeaseReleased {
    fn emit(self, observer: &Observer) {
        match self.error {
            None => tracing::debug!(event = "lease", held = false, "recovery lease"),
            Some(error) => tracing::warn!(
                event = "lease_release_failed",
                "{error}; the lease expires by itself after lease_ttl"
            ),
        }
        observer.metrics().recovery.lease_held.set(0);
    }
}

/// The lease was lost during a recovery, which stopped writing; the attempt
/// counts as failed and is retried.
pub(crate) struct LeaseLost<'a> {
    pub(crate) reason: &'a str,
}

impl InternalEvent for LeaseLost<'_> {
    fn emit(self, observer: &Observer) {
        tracing::warn!(event = "lease_lost", "{}", self.reason);
        observer.metrics().recovery.lease_held.set(0);
    }
}

pub(crate) struct CatchupFired<'a> {
    pub(crate) queue: &'a str,
    pub(crate) scheduler_id: &'a str,
    pub(crate) job_id: &'a str,
}

impl InternalEvent for CatchupFired<'_> {
    fn emit(self, observer: &Observer) {
        tracing::info!(
            event = "catchup_fired",
            queue = self.queue,
            scheduler_id = self.scheduler_id,
            job_id = self.job_id,
            "enqueued one job for runs missed during the outage"
        );
        observer
            .metrics()
            .recovery
            .catchup_jobs
            .get_or_create(&QueueLabels {
                queue: self.queue.to_owned(),
            })
            .inc();
    }
}

pub(crate) struct CatchupFailed<'a> {
    pub(crate) scheduler_id: &'a str,
    pub(crate) error: String,
}

impl InternalEvent for CatchupFailed<'_> {
    fn emit(self, _: &Observer) {
        tracing::error!(
            event = "catchup_failed",
            scheduler_id = self.scheduler_id,
            "{}",
            self.error
        );
    }
}

/// A queue's meta hash names a BullMQ major version the warden was not
/// verified against (`holds`), or no longer does. Unless `allowed`, the
/// warden writes nothing there.
pub(crate) struct BullmqVersionUnverified<'a> {
    pub(crate) queue: &'a str,
    pub(crate) version: &'a str,
    pub(crate) holds: bool,
    pub(crate) allowed: bool,
}

impl InternalEvent for BullmqVersionUnverified<'_> {
    fn emit(self, observer: &Observer) {
        let (queue, version) = (self.queue, self.version);
        match (self.holds, self.allowed) {
            (true, false) => tracing::error!(
                event = "bullmq_version_unverified",
                queue,
                version,
                "queue {queue} was set up by {version}, a BullMQ major version bullmq-warden \
                 was not verified against (5 and 6 are): nothing is written there; set \
                 [recovery] allow_unverified_bullmq = true to write anyway"
            ),
            (true, true) => tracing::warn!(
                event = "bullmq_version_unverified",
                queue,
                version,
                "queue {queue} was set up by {version}, a BullMQ major version bullmq-warden \
                 was not verified against; writing anyway (allow_unverified_bullmq)"
            ),
            (false, _) => tracing::info!(
                event = "bullmq_version_unverified",
                queue,
                version,
                holds = false,
                "queue {queue} no longer records an unverified BullMQ version"
            ),
        }
        let Ok(mut withheld) = observer.health().withheld.lock() else {
            return;
        };
        match self.holds && !self.allowed {
            true => withheld.insert(queue.to_owned(), version.to_owned()),
            false => withheld.remove(queue),
        };
        let count = i64::try_from(withheld.len()).unwrap_or(i64::MAX);
        observer.metrics().queues.withheld.set(count);
    }
}

/// The BullMQ version a queue's meta hash lost with the rest of its data
/// was written back after the restore.
pub(crate) struct BullmqVersionRestored<'a> {
    pub(crate) queue: &'a str,
    pub(crate) version: &'a str,
    pub(crate) error: Option<String>,
}

impl InternalEvent for BullmqVersionRestored<'_> {
    fn emit(self, _: &Observer) {
        let (queue, version) = (self.queue, self.version);
        match self.error {
            None => tracing::info!(
                event = "bullmq_version_restored",
                queue,
                version,
                "wrote the queue's BullMQ version back into its meta hash"
            ),
            Some(error) => tracing::warn!(
                event = "bullmq_version_restored",
                queue,
                version,
                "could not write the queue's BullMQ version back: {error}"
            ),
        }
    }
}

/// A loss was restored from the snapshot because the source could not be
/// read; the real source is compared as soon as it answers.
pub(crate) struct RestoredFromSnapshot<'a> {
    /// How old the snapshot's rows are.
    pub(crate) age: Duration,
    pub(crate) report: &'a RecoverReport,
    /// Why the source could not be read.
    pub(crate) source_error: &'a str,
}

impl InternalEvent for RestoredFromSnapshot<'_> {
    fn emit(self, _: &Observer) {
        tracing::warn!(
            event = "restored_from_snapshot",
            snapshot_age_ms = self.age.as_millis() as u64,
            created = self.report.created,
            updated = self.report.updated,
            "restored from the last rows read, as the source cannot be read ({}); nothing was removed",
            self.source_error
        );
    }
}

/// The rows came from the snapshot: the source is read again after
/// `retry_in`, or at the next signal, whichever comes first.
pub(crate) struct SourceRecheck {
    pub(crate) retry_in: Duration,
}

impl InternalEvent for SourceRecheck {
    fn emit(self, observer: &Observer) {
        tracing::info!(
            event = "source_recheck",
            retry_in_ms = self.retry_in.as_millis() as u64,
            "compared with the snapshot; reading the source again"
        );
        observer
            .metrics()
            .recovery
            .backoff_seconds
            .set(self.retry_in.as_secs_f64());
    }
}

/// Whether the watcher knows of drift it means to repair: `/readyz` reports
/// `synced: false` until it is repaired.
pub(crate) struct SyncState {
    pub(crate) synced: bool,
}

impl InternalEvent for SyncState {
    fn emit(self, observer: &Observer) {
        tracing::debug!(event = "sync_state", synced = self.synced, "sync state");
        observer
            .health()
            .synced
            .store(self.synced, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A scheduler under the id template's prefix that no enabled row wants
/// (the row was disabled, deleted or moved to another queue), while
/// `prune_orphans` is off: it keeps firing. Emitted when it is first seen,
/// and (`holds` false) when it is gone, not on every comparison.
pub(crate) struct OrphanFound<'a> {
    pub(crate) queue: &'a str,
    pub(crate) scheduler_id: &'a str,
    pub(crate) holds: bool,
}

impl InternalEvent for OrphanFound<'_> {
    fn emit(self, _: &Observer) {
        let (queue, scheduler_id) = (self.queue, self.scheduler_id);
        if self.holds {
            tracing::warn!(
                event = "orphan_found",
                queue,
                scheduler_id,
                "scheduler {scheduler_id} of queue {queue} has no enabled row and keeps firing; \
                 set [recovery] prune_orphans = true to remove such schedulers"
            );
        } else {
            tracing::info!(
                event = "orphan_found",
                queue,
                scheduler_id,
                holds = false,
                "scheduler {scheduler_id} of queue {queue} is no longer an orphan"
            );
        }
    }
}
