//! The reconciler over the real world: reads the rows, then compares them
//! with Redis under the recovery lease and restores what differs, with the
//! strategy the config names. While the source cannot be read, the last rows
//! it gave (the snapshot) stand in for it, for restoring only. One
//! [`Context`] holds what it shares with the rest of the watcher.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;

use super::controller::{Outcome, Reconcile, Request};
use super::error::RecoveryError;
use super::policy::{verdict, Judging, Timing, Verdict};
use crate::clock::now_ms;
use crate::config::{Catchup, Config, Strategy};
use crate::desired::snapshot::{self, DesiredSnapshot, Kept, SnapshotError};
use crate::model::{Cause, DesiredScheduler, InvalidRow};
use crate::plan::Plan;
use crate::report::comparison::{publish_comparison, Settled};
use crate::report::events::{
    BullmqVersionRestored, BullmqVersionUnverified, CatchupFailed, CatchupFired, Detected,
    DriftConfirmed, LeaseHeld, LeaseReleased, Observer, OrphanFound, RecoveryFinished,
    RecoveryMode, RecoveryStarted, RestoredFromSnapshot, RowInvalid, SnapshotFailed, SnapshotKept,
    SourceDown, SourceRead, SyncState,
};
use crate::restore::catchup;
use crate::restore::lease::{Held, Lease};
use crate::restore::native::Native;
use crate::restore::webhook::Webhook;
use crate::restore::{OwnWrites, RecoverReport, Restore, Restored};
use crate::signal::{RestoredCounts, SharedQueues};
use crate::warden::{writable, Desired, Snapshot, Warden, WardenError};

/// A comparison that takes longer is abandoned and retried: something hangs.
const COMPARE_TIMEOUT: Duration = Duration::from_secs(60);

/// What the reconciler shares with the rest of the watcher.
pub(crate) struct Context {
    pub(crate) warden: Arc<Warden>,
    pub(crate) observer: Observer,
    /// Set when `[recovery] strategy = "webhook"`.
    pub(crate) webhook: Option<Webhook>,
    /// The queues the signal sources watch, refreshed from every comparison.
    pub(crate) queues: SharedQueues,
    /// Queues a recovery just filled, for the poll's flush detection.
    pub(crate) restored: RestoredCounts,
    /// Serialises recoveries with the HTTP API's `recover`.
    pub(crate) apply_lock: Arc<Mutex<()>>,
    /// Raised while restoring, so the keyspace watcher ignores the echoes.
    pub(crate) own_writes: OwnWrites,
}

/// The reconciler: one per watcher.
pub(crate) struct Recovery {
    ctx: Context,
    lease: Lease,
    /// The invalid rows of the last comparison and their reasons, so that
    /// each is logged once per change instead of every drift check.
    invalid_seen: HashMap<(Option<String>, String), String>,
    /// The last desired set the source gave, for when it cannot be read.
    kept: Kept,
    /// The BullMQ version each queue's meta hash last recorded, to put back
    /// after a loss.
    known_versions: BTreeMap<String, String>,
    /// Queues last seen with a BullMQ version the warden was not verified
    /// against, so that each is reported once.
    unverified_seen: BTreeMap<String, String>,
    /// Orphans already warned about, by (queue, scheduler id).
    orphans_seen: BTreeSet<(String, String)>,
}

/// Where a comparison's desired schedulers came from.
enum Rows {
    /// Read from the source just now.
    Source,
    /// The last read of this process, kept ready in memory: a loss Redis
    /// showed is repaired at once, without waiting for the source, while a
    /// live watch on the rows has signalled no change since that read.
    Kept,
    /// The source could not be read (`error`); the kept snapshot, `age` old,
    /// stands in for it. Nothing is removed on its word.
    Snapshot { age: Duration, error: String },
}

impl Rows {
    fn label(&self) -> &'static str {
        match self {
            Rows::Source => "database",
            Rows::Kept => "kept",
            Rows::Snapshot { .. } => "snapshot",
        }
    }
}

impl Recovery {
    pub(crate) fn new(ctx: Context) -> Self {
        let config = ctx.warden.config();
        let lease = Lease::new(ctx.warden.shared_store().clone(), config.recovery.lease_ttl);
        ctx.observer.emit(RecoveryMode {
            auto: config.recovery.auto,
        });
        let path = config
            .source
            .snapshot_file
            .clone()
            .or_else(|| snapshot::default_path(&config.source.url));
        let (kept, error) = Kept::load(path.clone(), &config.source.scheduler_id);
        if let Some(error) = error {
            ctx.observer.emit(SnapshotFailed { error: &error });
        }
        if let Some(taken_at_ms) = kept.taken_at_ms() {
            ctx.observer.emit(SnapshotKept {
                taken_at_ms,
                written_to: path.as_deref(),
                loaded: true,
            });
        }
        Self {
            ctx,
            lease,
            invalid_seen: HashMap::new(),
            kept,
            known_versions: BTreeMap::new(),
            unverified_seen: BTreeMap::new(),
            orphans_seen: BTreeSet::new(),
        }
    }

    /// Acts on what differs only with `lease` (automatic recovery is on).
    async fn compare_and_act(
        &mut self,
        config: &Config,
        request: &Request,
        (desired, rows): (Desired, Rows),
        lease: Option<&Held>,
    ) -> Result<Outcome, RecoveryError> {
        let snapshot = self.compare(desired, &rows).await?;
        // Queues withheld for their BullMQ version are reported, not acted on.
        let (plan, _) = writable(&snapshot.plan, &config.recovery);
        let plan = plan.as_ref();
        let done = match rows {
            Rows::Source | Rows::Kept => Outcome::Done,
            Rows::Snapshot { .. } => Outcome::SourceOwed,
        };
        let auto = config.recovery.auto;
        let judging = Judging {
            only_periodic: request.only_periodic,
            seen_before: request.seen_before,
            auto,
            prune: config.recovery.prune_orphans,
        };
        let judged = verdict(plan, judging);
        // Drift is "to repair" until a recovery writes it away.
        self.ctx.observer.emit(SyncState {
            synced: judged == Verdict::InSync || !auto,
        });
        match judged {
            Verdict::InSync => return Ok(done),
            Verdict::ConfirmLater => {
                self.ctx.observer.emit(Detected {
                    cause: Cause::Drift,
                    queue: None,
                    detail: format!(
                        "{} schedulers missing and {} differing from their rows",
                        plan.missing(),
                        plan.mismatched()
                    ),
                });
                return Ok(Outcome::ConfirmLater);
            }
            Verdict::ReportOnly | Verdict::Restore => {}
        }
        self.ctx.observer.emit(DriftConfirmed {
            trigger: request.trigger,
            missing: plan.missing(),
            mismatched: plan.mismatched(),
            orphaned: if config.recovery.prune_orphans {
                plan.orphaned()
            } else {
                0
            },
            acting: auto,
        });
        if let Some(lease) = lease {
            self.recover(config, request, &snapshot.plan, &rows, lease)
                .await?;
        }
        Ok(done)
    }

    /// While the poller sees Redis down, commands would only wait out the
    /// client's reconnect attempts: fail at once and let the backoff pace retries.
    fn redis_answers(&self) -> Result<(), RecoveryError> {
        if self.ctx.observer.health().redis_up.load(Ordering::Relaxed) {
            Ok(())
        } else {
            Err(RecoveryError::RedisDown {
                url: self.ctx.warden.store().redacted_url().to_owned(),
            })
        }
    }

    /// Reads the rows, keeping what they ask for as the snapshot. When the
    /// source cannot be read, the snapshot stands in for it if it is younger
    /// than `[recovery] snapshot_max_age`.
    async fn read_rows(&mut self, config: &Config) -> Result<(Desired, Rows), RecoveryError> {
        let read = tokio::time::timeout(COMPARE_TIMEOUT, self.ctx.warden.read_desired()).await;
        let error = match read {
            Ok(Ok(desired)) => {
                self.ctx.observer.emit(SourceRead {
                    took: desired.source_elapsed,
                });
                self.keep(config, &desired).await;
                return Ok((desired, Rows::Source));
            }
            Ok(Err(WardenError::Source(error))) => RecoveryError::Source(error),
            Ok(Err(other)) => return Err(other.into()),
            Err(_) => RecoveryError::CompareTimeout(COMPARE_TIMEOUT),
        };
        self.ctx.observer.emit(SourceDown {
            error: error.to_string(),
        });
        let now = now_ms();
        let template = &config.source.scheduler_id;
        let Some(kept) = self
            .kept
            .usable(config.recovery.snapshot_max_age, template, now)
        else {
            return Err(error);
        };
        let Some(desired) = self.unpacked(&kept, now) else {
            return Err(error);
        };
        let rows = Rows::Snapshot {
            age: Duration::from_millis(now.saturating_sub(kept.taken_at_ms)),
            error: error.to_string(),
        };
        Ok((desired, rows))
    }

    /// The rows as last read, when a loss Redis showed may be repaired
    /// from them at once: they came from this process's last read, no change
    /// of them came with the signals, and a watch on them answers.
    fn ready_rows(&self, config: &Config, request: &Request) -> Option<(Desired, Rows)> {
        let watched = self
            .ctx
            .observer
            .health()
            .rows_watched
            .load(Ordering::Relaxed);
        if !request.at_once || request.rows_changed || !watched {
            return None;
        }
        let kept = self.kept.last_read(&config.source.scheduler_id)?;
        let mut desired = self.unpacked(&kept, now_ms())?;
        desired.invalid = kept.invalid.clone();
        Some((desired, Rows::Kept))
    }

    /// The kept set as a read would have given it at `now_ms`; rows whose
    /// end date passed since are left out, as a read now would reject them.
    /// `None`, reported, if it does not unpack.
    fn unpacked(&self, kept: &DesiredSnapshot, now_ms: u64) -> Option<Desired> {
        let live = |s: &DesiredScheduler| s.end_date.is_none_or(|end| end > now_ms);
        match kept.queues.unpack(live) {
            Ok(by_queue) => Some(Desired {
                by_queue,
                invalid: Vec::new(),
                protected: kept.protected.clone(),
                source_elapsed: Duration::ZERO,
            }),
            Err(error) => {
                let error = SnapshotError::from(error);
                self.ctx.observer.emit(SnapshotFailed { error: &error });
                None
            }
        }
    }

    /// Keeps the desired set of a successful read, ready for the next loss,
    /// and writes it to the snapshot file (unless `snapshot_max_age` is 0)
    /// when it changed or the file's copy has aged.
    async fn keep(&mut self, config: &Config, desired: &Desired) {
        let fresh = DesiredSnapshot {
            taken_at_ms: now_ms(),
            template: config.source.scheduler_id.clone(),
            queues: self.kept.pack(&desired.by_queue),
            protected: desired.protected.clone(),
            invalid: desired.invalid.clone(),
        };
        let taken_at_ms = fresh.taken_at_ms;
        // A tenth of the age limit, at most an hour: a restarted sidecar
        // judges the file's snapshot at most that much older than it is.
        let refresh = (config.recovery.snapshot_max_age / 10).min(Duration::from_secs(3600));
        let refresh_ms = u64::try_from(refresh.as_millis()).unwrap_or(u64::MAX);
        let offered = self.kept.offer(fresh, refresh_ms);
        if config.recovery.snapshot_max_age.is_zero() {
            return;
        }
        let Some((path, fresh)) = offered else {
            self.ctx.observer.emit(SnapshotKept {
                taken_at_ms,
                written_to: None,
                loaded: false,
            });
            return;
        };
        let target = path.clone();
        let written = tokio::task::spawn_blocking(move || snapshot::write_file(&target, &fresh))
            .await
            .unwrap_or_else(|e| {
                Err(SnapshotError::Write {
                    path: path.clone(),
                    reason: e.to_string(),
                })
            });
        match written {
            Ok(()) => {
                self.kept.persisted(taken_at_ms);
                self.ctx.observer.emit(SnapshotKept {
                    taken_at_ms,
                    written_to: Some(&path),
                    loaded: false,
                });
            }
            Err(error) => self.ctx.observer.emit(SnapshotFailed { error: &error }),
        }
    }

    /// Reads Redis and plans against `desired`; publishes drift and the
    /// queue list when the rows came from the source.
    async fn compare(&mut self, desired: Desired, rows: &Rows) -> Result<Snapshot, RecoveryError> {
        self.redis_answers()?;
        let mut snapshot =
            tokio::time::timeout(COMPARE_TIMEOUT, self.ctx.warden.plan(desired, None))
                .await
                .map_err(|_| RecoveryError::CompareTimeout(COMPARE_TIMEOUT))??;
        if let Ok(mut queues) = self.ctx.queues.write() {
            // Not rebuilt when the same: small allocations made amid a
            // comparison's and kept after it hold allocator pages resident.
            if !queues.iter().eq(snapshot.plan.queues.keys()) {
                *queues = snapshot.plan.queues.keys().cloned().collect();
            }
        }
        // Redis's side is current whatever the rows came from.
        let allowed = self.ctx.warden.config().recovery.allow_unverified_bullmq;
        self.track_versions(&snapshot.plan, allowed);
        match rows {
            Rows::Source | Rows::Kept => {
                publish_comparison(&self.ctx.observer, &snapshot.plan, Settled::No);
                self.report_invalid_rows(&snapshot.plan.invalid);
                let prune = self.ctx.warden.config().recovery.prune_orphans;
                self.report_orphans(&snapshot.plan, prune);
            }
            // The snapshot's word never removes a scheduler.
            Rows::Snapshot { .. } => {
                for queue in snapshot.plan.queues.values_mut() {
                    queue.orphaned.clear();
                }
            }
        }
        Ok(snapshot)
    }

    /// Warns once about each orphan while pruning is off (pruning removes
    /// them instead, and the recovery reports that); says when one is gone.
    fn report_orphans(&mut self, plan: &Plan, prune: bool) {
        let now: BTreeSet<(String, String)> = match prune {
            true => BTreeSet::new(),
            false => plan
                .queues
                .iter()
                .flat_map(|(queue, q)| q.orphaned.iter().map(move |id| (queue.clone(), id.clone())))
                .collect(),
        };
        for (queue, scheduler_id) in now.difference(&self.orphans_seen) {
            self.ctx.observer.emit(OrphanFound {
                queue,
                scheduler_id,
                holds: true,
            });
        }
        for (queue, scheduler_id) in self.orphans_seen.difference(&now) {
            self.ctx.observer.emit(OrphanFound {
                queue,
                scheduler_id,
                holds: false,
            });
        }
        self.orphans_seen = now;
    }

    /// Emits the rows that are newly invalid or invalid for another reason;
    /// forgets the ones that are valid again.
    fn report_invalid_rows(&mut self, invalid: &[InvalidRow]) {
        let before = std::mem::take(&mut self.invalid_seen);
        for row in invalid {
            let key = (row.queue.clone(), row.id.clone());
            if before.get(&key) != Some(&row.reason) {
                self.ctx.observer.emit(RowInvalid {
                    queue: row.queue.as_deref(),
                    id: &row.id,
                    reason: &row.reason,
                });
            }
            self.invalid_seen.insert(key, row.reason.clone());
        }
    }

    /// Restores what `snapshot` found missing or different, while `lease`
    /// stays this sidecar's.
    async fn recover(
        &mut self,
        config: &Config,
        request: &Request,
        compared: &Plan,
        rows: &Rows,
        lease: &Held,
    ) -> Result<(), RecoveryError> {
        self.ctx.observer.emit(RecoveryStarted {
            trigger: request.trigger,
            attempt: request.attempt,
            at_once: request.at_once,
        });
        let started = std::time::Instant::now();
        let (plan, withheld) = writable(compared, &config.recovery);
        let plan = plan.as_ref();
        let report = self.restore(config, plan, request.trigger, lease).await?;
        self.ctx.observer.emit(RecoveryFinished {
            trigger: request.trigger,
            report: &report,
            duration: started.elapsed(),
            rows: rows.label(),
        });
        self.ctx.observer.emit(SyncState { synced: true });
        if let Rows::Snapshot { age, error } = rows {
            self.ctx.observer.emit(RestoredFromSnapshot {
                age: *age,
                report: &report,
                source_error: error,
            });
        }
        if let Ok(mut restored) = self.ctx.restored.lock() {
            for (queue, queue_plan) in &plan.queues {
                if queue_plan.desired > 0 {
                    restored.insert(queue.clone(), queue_plan.desired as u64);
                }
            }
        }
        // Every planned write succeeded.
        if let Rows::Source | Rows::Kept = rows {
            let settled = Settled::Written {
                pruned: config.recovery.prune_orphans,
                except: &withheld,
            };
            publish_comparison(&self.ctx.observer, compared, settled);
        }
        self.put_back_versions(plan).await;
        // Catch-up jobs are writes too: none once the lease is gone.
        if config.recovery.catchup == Catchup::FireOnce && lease.confirm().await.is_none() {
            self.catch_up(config, plan, request.since_ms).await;
        }
        Ok(())
    }

    /// Carries the plan out with the configured strategy; a strategy that
    /// asked someone else to write is judged by comparing again.
    async fn restore(
        &mut self,
        config: &Config,
        plan: &Plan,
        trigger: Cause,
        lease: &Held,
    ) -> Result<RecoverReport, RecoveryError> {
        let native;
        let strategy: &dyn Restore = match (&config.recovery.strategy, &self.ctx.webhook) {
            (Strategy::Webhook, Some(webhook)) => webhook,
            _ => {
                native = Native {
                    store: self.ctx.warden.store(),
                    options: (&config.recovery).into(),
                    own_writes: &self.ctx.own_writes,
                };
                &native
            }
        };
        match strategy.restore(plan, trigger, lease).await? {
            Restored::Written(report) => Ok(report),
            Restored::Requested => {
                let (desired, rows) = self.read_rows(config).await?;
                let after = self.compare(desired, &rows).await?;
                if !after.plan.is_in_sync() {
                    return Err(RecoveryError::WebhookIncomplete {
                        missing: after.plan.missing(),
                        mismatched: after.plan.mismatched(),
                    });
                }
                Ok(RecoverReport::done_elsewhere(plan, false))
            }
        }
    }

    /// Writes back the BullMQ version of queues whose meta hash lost it with
    /// the rest of their data, as the last comparison before the loss saw it.
    async fn put_back_versions(&self, restored: &Plan) {
        let store = self.ctx.warden.store();
        for (queue, plan) in &restored.queues {
            let (None, Some(version)) = (&plan.bullmq_version, self.known_versions.get(queue))
            else {
                continue;
            };
            let written = store.restore_version(queue, version).await;
            self.ctx.observer.emit(BullmqVersionRestored {
                queue,
                version,
                error: written.err().map(|e| e.to_string()),
            });
        }
    }

    /// Remembers each queue's recorded BullMQ version, and reports queues
    /// whose version the warden was not verified against when that starts
    /// and when it ends.
    fn track_versions(&mut self, plan: &Plan, allowed: bool) {
        for (queue, queue_plan) in &plan.queues {
            if let Some(version) = &queue_plan.bullmq_version {
                self.known_versions.insert(queue.clone(), version.clone());
            }
        }
        let now = plan.unverified_queues();
        for (queue, version) in &now {
            if self.unverified_seen.get(queue) != Some(version) {
                self.ctx.observer.emit(BullmqVersionUnverified {
                    queue,
                    version,
                    holds: true,
                    allowed,
                });
            }
        }
        for (queue, version) in &self.unverified_seen {
            if !now.contains_key(queue) {
                self.ctx.observer.emit(BullmqVersionUnverified {
                    queue,
                    version,
                    holds: false,
                    allowed,
                });
            }
        }
        self.unverified_seen = now;
    }

    /// Fires one job per lost cron scheduler that had a run due during the outage.
    async fn catch_up(&self, config: &Config, plan: &Plan, since_ms: u64) {
        let now = now_ms();
        let window_ms =
            u64::try_from(config.recovery.catchup_window.as_millis()).unwrap_or(u64::MAX);
        let from = since_ms.max(now.saturating_sub(window_ms));
        for scheduler in stopped_schedulers(plan) {
            if !catchup::missed_a_run(scheduler, from, now) {
                continue;
            }
            let job_id = catchup::catchup_job_id(&scheduler.scheduler_id, since_ms);
            match catchup::fire(&self.ctx.warden.store(), scheduler, &job_id).await {
                Ok(()) => self.ctx.observer.emit(CatchupFired {
                    queue: &scheduler.queue,
                    scheduler_id: &scheduler.scheduler_id,
                    job_id: &job_id,
                }),
                Err(error) => self.ctx.observer.emit(CatchupFailed {
                    scheduler_id: &scheduler.scheduler_id,
                    error: error.to_string(),
                }),
            }
        }
    }
}

/// The schedulers the plan restores that had stopped firing: created, or
/// updated because their hash or next job was gone. Only these missed runs.
fn stopped_schedulers(plan: &Plan) -> impl Iterator<Item = &DesiredScheduler> {
    plan.queues.values().flat_map(|q| {
        let broken = q
            .update
            .iter()
            .filter(|u| u.differs.iter().any(|d| d.stops_runs()))
            .map(|u| &u.scheduler);
        q.create.iter().chain(broken)
    })
}

impl Reconcile for Recovery {
    fn timing(&self) -> Timing {
        Timing::from(&*self.ctx.warden.config())
    }

    /// One attempt: read the rows, take the lease (when acting), read Redis
    /// and restore what differs. The rows are read before the lease is
    /// taken, so a slow source never holds it; Redis is read under it, so a
    /// sidecar that waited for another one sees its work instead of redoing it.
    async fn reconcile(&mut self, request: Request) -> Result<Outcome, RecoveryError> {
        let config = self.ctx.warden.config();
        let _serialised = self.ctx.apply_lock.clone().lock_owned().await;
        self.redis_answers()?;
        let rows = match self.ready_rows(&config, &request) {
            Some(ready) => ready,
            None => self.read_rows(&config).await?,
        };
        if !config.recovery.auto {
            return self.compare_and_act(&config, &request, rows, None).await;
        }
        let lease = self
            .lease
            .try_acquire()
            .await
            .map_err(|e| RecoveryError::from(WardenError::from(e)))?
            .ok_or(RecoveryError::LeaseBusy)?;
        self.ctx.observer.emit(LeaseHeld);
        let outcome = self
            .compare_and_act(&config, &request, rows, Some(&lease))
            .await;
        let released = lease.release().await;
        self.ctx.observer.emit(LeaseReleased {
            error: released.err().map(|e| e.to_string()),
        });
        outcome
    }

    fn queues(&self) -> Vec<String> {
        self.ctx
            .queues
            .read()
            .map(|q| q.clone())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Schedule;
    use crate::plan::{Difference, QueuePlan, Update};

    fn scheduler(id: &str) -> DesiredScheduler {
        DesiredScheduler {
            row_id: id.into(),
            queue: "q".into(),
            scheduler_id: format!("t:{id}"),
            name: "n".into(),
            schedule: Schedule::Pattern("* * * * *".into()),
            tz: None,
            data: "{}".into(),
            opts: "{}".into(),
            start_date: None,
            end_date: None,
            limit: None,
            offset: None,
        }
    }

    #[test]
    fn catch_up_looks_only_at_schedulers_that_stopped_firing() {
        let update = |id: &str, differs: Vec<Difference>| Update {
            scheduler: scheduler(id),
            differs,
            stranded_job_id: None,
        };
        let mut plan = Plan::default();
        plan.queues.insert(
            "q".into(),
            QueuePlan {
                create: vec![scheduler("1")],
                update: vec![
                    update("2", vec![Difference::NextJob]),
                    update("3", vec![Difference::Pattern]),
                    update("4", vec![Difference::SchedulerHash]),
                ],
                ..QueuePlan::default()
            },
        );
        let ids: Vec<&str> = stopped_schedulers(&plan)
            .map(|s| s.scheduler_id.as_str())
            .collect();
        assert_eq!(ids, vec!["t:1", "t:2", "t:4"]);
    }
}
