//! Turns signals into recoveries: debounced, single-flight, retried with
//! exponential backoff and full jitter, and guarded by a lease in Redis so that
//! one sidecar of several does the work.
//!
//! Every signal leads to the same decision: once signals have been quiet for
//! the debounce window, compare rows and Redis; restore only what still
//! differs. A scheduler the application removed while disabling its row in that
//! window is therefore left alone, and a flapping Redis gets one recovery once
//! it settles.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use backon::BackoffBuilder;
use tokio::sync::{mpsc, watch, Mutex};
use tokio::time::{sleep, sleep_until, Instant};
use tokio_util::sync::CancellationToken;

use super::debounce::Debounce;
use crate::clock::now_ms;
use crate::config::{Catchup, Config, Strategy};
use crate::model::{Cause, DesiredScheduler, Trigger};
use crate::plan::Plan;
use crate::report::events::{Event, Observer};
use crate::restore::catchup;
use crate::restore::lease::{Held, Lease};
use crate::restore::native::apply;
use crate::restore::webhook::Webhook;
use crate::warden::{Snapshot, Warden, WardenError};

/// A comparison that takes longer is abandoned and retried: something hangs.
const COMPARE_TIMEOUT: Duration = Duration::from_secs(60);

/// The queues the watcher looks at, refreshed from every comparison.
pub type SharedQueues = Arc<std::sync::RwLock<Vec<String>>>;

/// Queues a recovery just filled, with how many schedulers they hold now. The
/// poll takes them as its previous counts, so a flush right after a recovery
/// (before the poll saw the filled set) is still seen as a flush.
pub type RestoredCounts = Arc<std::sync::Mutex<BTreeMap<String, u64>>>;

/// Why one attempt did not finish the job.
enum AttemptError {
    /// Another sidecar holds the lease.
    LeaseBusy,
    /// The lease was lost while writing, so the writes stopped: another
    /// sidecar may be writing now.
    LeaseLost(String),
    Failed(String),
}

impl From<WardenError> for AttemptError {
    fn from(error: WardenError) -> Self {
        AttemptError::Failed(error.to_string())
    }
}

pub struct Controller {
    warden: Arc<Warden>,
    observer: Observer,
    /// The warden's config as of the current trigger or attempt: a reload
    /// takes effect at the next one.
    config: Arc<Config>,
    lease: Lease,
    webhook: Option<Webhook>,
    queues: SharedQueues,
    restored: RestoredCounts,
    /// Serialises recoveries with the HTTP API's `recover`.
    apply_lock: Arc<Mutex<()>>,
    redis_loading: watch::Receiver<bool>,
    /// Re-queues a drift check, so drift must persist through the window.
    retrigger: mpsc::Sender<Trigger>,
    /// When periodic checks first saw unexplained drift.
    drift_seen: bool,
    own_writes: OwnWrites,
    /// The invalid rows of the last comparison and their reasons, so that
    /// each is logged once per change instead of every drift check.
    invalid_seen: std::sync::Mutex<InvalidRows>,
}

/// Invalid rows by (queue, row id), with their reasons.
type InvalidRows = std::collections::HashMap<(Option<String>, String), String>;

/// Tells the keyspace watcher while a recovery writes, so that it can stop
/// listening: nearly every notification then would be the echo of those
/// writes, and reading them took CPU from the writes and from Redis.
#[derive(Clone)]
pub struct OwnWrites(Arc<watch::Sender<bool>>);

impl OwnWrites {
    /// The flag and a receiver for the keyspace watcher.
    pub fn new() -> (Self, watch::Receiver<bool>) {
        let (sender, receiver) = watch::channel(false);
        (Self(Arc::new(sender)), receiver)
    }

    /// Raises the flag until the returned guard is dropped, also when the
    /// writes are abandoned at shutdown.
    fn begin(&self) -> OwnWritesGuard<'_> {
        self.0.send_replace(true);
        OwnWritesGuard(self)
    }
}

struct OwnWritesGuard<'a>(&'a OwnWrites);

impl Drop for OwnWritesGuard<'_> {
    fn drop(&mut self) {
        self.0 .0.send_replace(false);
    }
}

impl Controller {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        warden: Arc<Warden>,
        observer: Observer,
        webhook: Option<Webhook>,
        queues: SharedQueues,
        restored: RestoredCounts,
        apply_lock: Arc<Mutex<()>>,
        redis_loading: watch::Receiver<bool>,
        retrigger: mpsc::Sender<Trigger>,
        own_writes: OwnWrites,
    ) -> Self {
        let config = warden.config();
        let lease = Lease::new(warden.shared_store().clone(), config.recovery.lease_ttl);
        let metrics = observer.metrics();
        metrics
            .auto_recovery_enabled
            .set(i64::from(config.recovery.auto));
        // Counters exist from the start, so that increase() sees their first change.
        for cause in Cause::detected() {
            let _ = metrics
                .detections
                .get_or_create(&crate::report::metrics::CauseLabels {
                    cause: cause.as_str(),
                });
        }
        Self {
            warden,
            observer,
            config,
            lease,
            webhook,
            queues,
            restored,
            apply_lock,
            redis_loading,
            retrigger,
            drift_seen: false,
            own_writes,
            invalid_seen: std::sync::Mutex::default(),
        }
    }

    /// Runs until `shutdown`: waits for a trigger, lets the debounce window
    /// pass, then runs one cycle. Triggers that arrive during a cycle wait in
    /// the channel and make up one follow-up cycle.
    pub async fn run(mut self, mut triggers: mpsc::Receiver<Trigger>, shutdown: CancellationToken) {
        loop {
            let first = tokio::select! {
                trigger = triggers.recv() => match trigger {
                    Some(trigger) => trigger,
                    None => return,
                },
                _ = shutdown.cancelled() => return,
            };
            self.config = self.warden.config();
            let mut causes = BTreeSet::from([first.cause]);
            let mut since_ms = first.since_ms;
            if !matches!(first.cause, Cause::Startup | Cause::Manual) {
                let mut window = Debounce::open(
                    &first,
                    Instant::now(),
                    self.config.watch.debounce_quiet,
                    self.config.watch.debounce_max,
                );
                loop {
                    tokio::select! {
                        trigger = triggers.recv() => match trigger {
                            Some(trigger) => {
                                causes.insert(trigger.cause);
                                since_ms = since_ms.min(trigger.since_ms);
                                window.observe(&trigger, Instant::now());
                            }
                            None => return,
                        },
                        _ = sleep_until(window.deadline()) => break,
                        _ = shutdown.cancelled() => return,
                    }
                }
            }
            self.cycle(&causes, since_ms, &shutdown).await;
            // The comparison held every row and scheduler; an idle sidecar
            // should not keep that peak.
            crate::memory::release_after_comparison();
        }
    }

    /// Compares and, while anything differs, recovers — retrying with backoff
    /// until rows and Redis agree or the watcher stops.
    async fn cycle(
        &mut self,
        causes: &BTreeSet<Cause>,
        since_ms: u64,
        shutdown: &CancellationToken,
    ) {
        // The most telling cause names the cycle (restart before drift, …).
        let trigger = causes.iter().next().copied().unwrap_or(Cause::Drift);
        let only_periodic = causes.iter().all(|c| *c == Cause::Drift);
        let mut delays = backon::ExponentialBuilder::default()
            .with_min_delay(self.config.recovery.backoff_min)
            .with_max_delay(self.config.recovery.backoff_max)
            .with_factor(2.0)
            .without_max_times()
            .build();
        let mut failures = 0u32;
        loop {
            self.config = self.warden.config();
            if !self.wait_while_loading(shutdown).await {
                return;
            }
            let error = match self
                .attempt(trigger, only_periodic, since_ms, failures + 1)
                .await
            {
                Ok(()) => return,
                Err(AttemptError::LeaseBusy) => {
                    let recheck = self
                        .config
                        .watch
                        .debounce_quiet
                        .max(Duration::from_millis(500));
                    self.observer.emit(Event::LeaseBusy {
                        recheck_in: recheck,
                    });
                    if !pause(recheck, shutdown).await {
                        return;
                    }
                    continue;
                }
                Err(AttemptError::LeaseLost(reason)) => {
                    self.observer.emit(Event::LeaseLost { reason: &reason });
                    reason
                }
                Err(AttemptError::Failed(error)) => error,
            };
            failures += 1;
            let ceiling = delays.next().unwrap_or(self.config.recovery.backoff_max);
            let retry_in = full_jitter(ceiling);
            let queues = self.queues.read().map(|q| q.clone()).unwrap_or_default();
            self.observer.emit(Event::RecoveryFailed {
                trigger,
                queues: &queues,
                attempt: failures,
                error,
                backoff: ceiling,
                retry_in,
            });
            if !pause(retry_in, shutdown).await {
                return;
            }
        }
    }

    /// One attempt: take the lease (when acting), compare once, restore what
    /// differs. Comparing under the lease means a sidecar that waited for
    /// another one sees its work instead of redoing it.
    async fn attempt(
        &mut self,
        trigger: Cause,
        only_periodic: bool,
        since_ms: u64,
        attempt: u32,
    ) -> Result<(), AttemptError> {
        let _serialised = self.apply_lock.clone().lock_owned().await;
        if !self.config.recovery.auto {
            return self
                .compare_and_recover(trigger, only_periodic, since_ms, attempt, None)
                .await;
        }
        self.redis_answers()?;
        let Some(lease) = self.lease.try_acquire().await.map_err(WardenError::from)? else {
            return Err(AttemptError::LeaseBusy);
        };
        self.observer.emit(Event::LeaseHeld(true));
        let outcome = self
            .compare_and_recover(trigger, only_periodic, since_ms, attempt, Some(&lease))
            .await;
        if let Err(error) = lease.release().await {
            tracing::warn!(event = "lease_release_failed", "{error}");
        }
        self.observer.emit(Event::LeaseHeld(false));
        outcome
    }

    /// Acts on what differs only with `lease` (automatic recovery is on).
    async fn compare_and_recover(
        &mut self,
        trigger: Cause,
        only_periodic: bool,
        since_ms: u64,
        attempt: u32,
        lease: Option<&Held>,
    ) -> Result<(), AttemptError> {
        let snapshot = self.compare().await?;
        if snapshot.plan.is_in_sync() {
            self.drift_seen = false;
            return Ok(());
        }
        if only_periodic && !self.drift_seen {
            // First sight of drift without any signal: confirm after the window.
            self.drift_seen = true;
            self.observer.emit(Event::Detected {
                cause: Cause::Drift,
                queue: None,
                detail: format!(
                    "{} schedulers missing and {} differing from their rows",
                    snapshot.plan.missing(),
                    snapshot.plan.mismatched()
                ),
            });
            let _ = self
                .retrigger
                .try_send(Trigger::new(Cause::Drift, now_ms()));
            return Ok(());
        }
        self.observer.emit(Event::DriftConfirmed {
            trigger,
            missing: snapshot.plan.missing(),
            mismatched: snapshot.plan.mismatched(),
            acting: self.config.recovery.auto,
        });
        let Some(lease) = lease else {
            return Ok(());
        };
        self.recover(trigger, since_ms, attempt, snapshot, lease)
            .await?;
        self.drift_seen = false;
        Ok(())
    }

    /// While the poller sees Redis down, commands would only wait out the
    /// client's reconnect attempts: fail at once and let the backoff pace retries.
    fn redis_answers(&self) -> Result<(), AttemptError> {
        if self.observer.health().redis_up.load(Ordering::Relaxed) {
            Ok(())
        } else {
            Err(AttemptError::Failed(format!(
                "Redis at {} does not answer",
                self.warden.store().redacted_url()
            )))
        }
    }

    /// Reads rows and Redis, publishes drift and the queue list.
    async fn compare(&self) -> Result<Snapshot, AttemptError> {
        self.redis_answers()?;
        let snapshot = match tokio::time::timeout(COMPARE_TIMEOUT, self.warden.snapshot(None)).await
        {
            Ok(Ok(snapshot)) => snapshot,
            Err(_) => {
                return Err(AttemptError::Failed(format!(
                    "comparing rows and Redis took longer than {}s",
                    COMPARE_TIMEOUT.as_secs()
                )))
            }
            Ok(Err(error)) => {
                if let WardenError::Source(e) = &error {
                    self.observer
                        .emit(Event::SourceUp(false, Some(e.to_string()), None));
                }
                return Err(error.into());
            }
        };
        self.observer
            .emit(Event::SourceUp(true, None, Some(snapshot.source_elapsed)));
        publish_drift(&self.observer, &snapshot);
        self.report_invalid_rows(&snapshot.plan.invalid);
        if let Ok(mut queues) = self.queues.write() {
            *queues = snapshot.plan.queues.keys().cloned().collect();
        }
        Ok(snapshot)
    }

    /// Emits the rows that are newly invalid or invalid for another reason;
    /// forgets the ones that are valid again.
    fn report_invalid_rows(&self, invalid: &[crate::model::InvalidRow]) {
        let Ok(mut seen) = self.invalid_seen.lock() else {
            return;
        };
        let before = std::mem::take(&mut *seen);
        for row in invalid {
            let key = (row.queue.clone(), row.id.clone());
            if before.get(&key) != Some(&row.reason) {
                self.observer.emit(Event::RowInvalid {
                    queue: row.queue.as_deref(),
                    id: &row.id,
                    reason: &row.reason,
                });
            }
            seen.insert(key, row.reason.clone());
        }
    }

    /// Restores what `snapshot` found missing or different, while `lease`
    /// stays this sidecar's.
    async fn recover(
        &self,
        trigger: Cause,
        since_ms: u64,
        attempt: u32,
        snapshot: Snapshot,
        lease: &Held,
    ) -> Result<(), AttemptError> {
        self.observer
            .emit(Event::RecoveryStarted { trigger, attempt });
        let started = std::time::Instant::now();
        let report = match (&self.config.recovery.strategy, &self.webhook) {
            (Strategy::Webhook, Some(webhook)) => {
                webhook
                    .call(trigger, snapshot.plan.missing(), snapshot.plan.mismatched())
                    .await
                    .map_err(|e| AttemptError::Failed(e.to_string()))?;
                let after = self.compare().await?;
                if !after.plan.is_in_sync() {
                    return Err(AttemptError::Failed(format!(
                        "the application accepted the webhook but {} schedulers are still missing and {} differ",
                        after.plan.missing(),
                        after.plan.mismatched()
                    )));
                }
                // The application did the writes: the report is the plan it
                // was asked to carry out (the dry run's report), now done.
                let mut report =
                    apply(&self.warden.store(), &snapshot.plan, false, 1, true, None).await;
                report.dry_run = false;
                report.recovered_tasks = report.created + report.updated;
                report
            }
            _ => {
                let _writing = self.own_writes.begin();
                let report = apply(
                    &self.warden.store(),
                    &snapshot.plan,
                    self.config.recovery.prune_orphans,
                    self.config.recovery.concurrency,
                    false,
                    Some(lease),
                )
                .await;
                if let Some(reason) = report.stopped {
                    return Err(AttemptError::LeaseLost(reason));
                }
                if let Some(failure) = report.failed.first() {
                    return Err(AttemptError::Failed(format!(
                        "{} of {} writes failed, first: {}: {}",
                        report.failed.len(),
                        report.changes.len(),
                        failure.scheduler_id,
                        failure.reason
                    )));
                }
                report
            }
        };
        self.observer.emit(Event::RecoveryFinished {
            trigger,
            report: &report,
            duration: started.elapsed(),
        });
        if let Ok(mut restored) = self.restored.lock() {
            for (queue, plan) in &snapshot.plan.queues {
                if plan.desired > 0 {
                    restored.insert(queue.clone(), plan.desired as u64);
                }
            }
        }
        // Every planned write succeeded.
        publish_plan(
            &self.observer,
            &snapshot.plan,
            true,
            self.config.recovery.prune_orphans,
        );
        // Catch-up jobs are writes too: none once the lease is gone.
        if self.config.recovery.catchup == Catchup::FireOnce && lease.confirm().await.is_none() {
            self.catch_up(&snapshot.plan, since_ms).await;
        }
        Ok(())
    }

    /// Fires one job per lost cron scheduler that had a run due during the outage.
    async fn catch_up(&self, plan: &Plan, since_ms: u64) {
        let now = now_ms();
        let window_ms =
            u64::try_from(self.config.recovery.catchup_window.as_millis()).unwrap_or(u64::MAX);
        let from = since_ms.max(now.saturating_sub(window_ms));
        let lost: Vec<&DesiredScheduler> = plan
            .queues
            .values()
            .flat_map(|q| {
                q.create.iter().chain(
                    q.update
                        .iter()
                        .filter(|u| u.differs.iter().any(|d| d.stops_runs()))
                        .map(|u| &u.scheduler),
                )
            })
            .collect();
        for scheduler in lost {
            if !catchup::missed_a_run(scheduler, from, now) {
                continue;
            }
            let job_id = catchup::catchup_job_id(&scheduler.scheduler_id, since_ms);
            match catchup::fire(&self.warden.store(), scheduler, &job_id).await {
                Ok(()) => self.observer.emit(Event::CatchupFired {
                    queue: &scheduler.queue,
                    scheduler_id: &scheduler.scheduler_id,
                    job_id: &job_id,
                }),
                Err(error) => tracing::error!(
                    event = "catchup_failed",
                    scheduler_id = scheduler.scheduler_id.as_str(),
                    "{error}"
                ),
            }
        }
    }

    /// Waits while Redis loads its dataset; `false` when the watcher stops.
    async fn wait_while_loading(&mut self, shutdown: &CancellationToken) -> bool {
        while *self.redis_loading.borrow() {
            tokio::select! {
                changed = self.redis_loading.changed() => if changed.is_err() { return true },
                _ = shutdown.cancelled() => return false,
            }
        }
        true
    }
}

/// Publishes the desired and drift gauges of every queue in a comparison,
/// and the drift `GET /api/bullmq/status` serves.
pub fn publish_drift(observer: &Observer, snapshot: &Snapshot) {
    publish_plan(observer, &snapshot.plan, false, false);
}

/// With `settled`, the plan's writes all succeeded: nothing is missing or
/// differs any more, and with `pruned` the orphans are gone too.
fn publish_plan(observer: &Observer, whole: &Plan, settled: bool, pruned: bool) {
    let triggers = Cause::ALL.map(Cause::as_str);
    let mut latest = BTreeMap::new();
    for (queue, plan) in &whole.queues {
        observer.metrics().register_queue(queue, &triggers);
        let invalid = whole
            .invalid
            .iter()
            .filter(|i| i.queue.as_deref() == Some(queue))
            .count();
        let (missing, mismatched) = if settled {
            (0, 0)
        } else {
            (plan.create.len(), plan.update.len())
        };
        let drift = crate::warden::Drift {
            missing,
            mismatched,
            orphaned: if settled && pruned {
                0
            } else {
                plan.orphaned.len()
            },
            invalid,
        };
        observer
            .metrics()
            .set_drift(queue, plan.desired, plan.legacy, &drift);
        let status = crate::warden::QueueStatus {
            desired: plan.desired,
            legacy: plan.legacy,
            drift,
            ..Default::default()
        };
        latest.insert(queue.clone(), status);
    }
    observer.latest_status().record_comparison(latest);
}

/// Uniform in `[0, ceiling]`: spreads retries of many sidecars apart.
fn full_jitter(ceiling: Duration) -> Duration {
    let ceiling_ms = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(fastrand::u64(0..=ceiling_ms))
}

/// Sleeps unless the watcher stops first; `false` when it stopped.
async fn pause(duration: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = sleep(duration) => true,
        _ = shutdown.cancelled() => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_jitter_stays_under_the_ceiling() {
        for _ in 0..1000 {
            assert!(full_jitter(Duration::from_millis(500)) <= Duration::from_millis(500));
        }
        assert_eq!(full_jitter(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let delays: Vec<Duration> = backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(500))
            .with_max_delay(Duration::from_secs(4))
            .with_factor(2.0)
            .without_max_times()
            .build()
            .take(6)
            .collect();
        let ms: Vec<u128> = delays.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, vec![500, 1000, 2000, 4000, 4000, 4000]);
    }
}
