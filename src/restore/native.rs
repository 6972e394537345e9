//! Carries out a plan against Redis with many upserts in flight, but a bounded number.
//!
//! Redis runs one script at a time and serves its clients in turns, so a few
//! dozen requests in flight keep it fully busy while other clients of the same
//! Redis still get answered quickly; thousands would only queue up in front of them.
//!
//! Writes go out only while the recovery lease is this writer's: once it is
//! lost another writer may be at work, and two writers racing over the same
//! schedulers make BullMQ refuse each other's upserts.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use futures::future::{BoxFuture, FutureExt};
use futures::stream::{FuturesUnordered, StreamExt};
use serde::Serialize;

use super::{OwnWrites, Restore, RestoreError, Restored};
use crate::config::RecoveryConfig;
use crate::model::Cause;
use crate::model::{DesiredScheduler, InvalidRow};
use crate::plan::{Difference, Plan};
use crate::restore::lease::Held;
use crate::store::{BullmqStore, NextRunJob};

/// Writes started between two checks that the lease is still ours: a lost
/// lease stops the writer within this many writes (plus those in flight),
/// for one GET per this many scripts.
const LEASE_CHECK_EVERY: usize = 128;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Action {
    Create,
    Update,
    Remove,
    /// An orphan that is reported but kept (pruning is off).
    Keep,
}

/// One scheduler the plan touches (or would touch, in a dry run).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Change {
    pub(crate) queue: String,
    pub(crate) scheduler_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) row_id: Option<String>,
    pub(crate) action: Action,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<String>)]
    pub(crate) differs: Vec<Difference>,
    /// Not written: the writes stopped first (the report's `stopped` says why).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub(crate) not_done: bool,
}

/// A queue whose writes wait for an operator.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub(crate) struct WithheldQueue {
    pub(crate) queue: String,
    /// As the queue's meta hash records it, e.g. `bullmq:7.0.0`.
    pub(crate) version: String,
}

impl RecoverReport {
    /// Marks `withheld` queues as not written: the report is no success.
    pub(crate) fn withholding(mut self, withheld: &BTreeMap<String, String>) -> Self {
        self.withheld = withheld
            .iter()
            .map(|(queue, version)| WithheldQueue {
                queue: queue.clone(),
                version: version.clone(),
            })
            .collect();
        self.success &= self.withheld.is_empty();
        self
    }
}

/// A write that Redis refused or that could not be sent.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Failure {
    pub(crate) id: String,
    pub(crate) scheduler_id: String,
    pub(crate) reason: String,
}

/// The manual's `recoverTasks()` result, with the detail an operator needs.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RecoverReport {
    pub(crate) success: bool,
    pub(crate) dry_run: bool,
    /// Schedulers written: created plus updated.
    pub(crate) recovered_tasks: usize,
    pub(crate) created: usize,
    pub(crate) updated: usize,
    pub(crate) unchanged: usize,
    pub(crate) removed: usize,
    /// Orphans found; removed only when pruning is on.
    pub(crate) orphaned: usize,
    pub(crate) legacy: usize,
    pub(crate) invalid: Vec<InvalidRow>,
    pub(crate) failed: Vec<Failure>,
    pub(crate) changes: Vec<Change>,
    /// Why the writes stopped before the plan was carried out: the recovery
    /// lease was lost. The changes marked `notDone` were not written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) stopped: Option<String>,
    /// Queues left unwritten because their meta hash names a BullMQ major
    /// version the warden was not verified against (see
    /// `[recovery] allow_unverified_bullmq`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) withheld: Vec<WithheldQueue>,
    pub(crate) duration_ms: u64,
}

enum Write<'a> {
    Upsert(&'a DesiredScheduler),
    /// A create whose next run's job survived the loss of its scheduler.
    UpsertAfterOrphan(&'a DesiredScheduler, NextRunJob),
    /// An update whose next job is in Redis but in no queue any more.
    ReplaceStranded(&'a DesiredScheduler, &'a str),
    Remove {
        queue: &'a str,
        scheduler_id: &'a str,
    },
}

impl<'a> Write<'a> {
    /// The queue and scheduler the write is about.
    fn target(self) -> (&'a str, &'a str) {
        match self {
            Write::Upsert(s) | Write::UpsertAfterOrphan(s, _) | Write::ReplaceStranded(s, _) => {
                (&s.queue, &s.scheduler_id)
            }
            Write::Remove {
                queue,
                scheduler_id,
            } => (queue, scheduler_id),
        }
    }
}

/// How a plan is carried out.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WriteOptions {
    /// Remove orphans too (`[recovery] prune_orphans`).
    pub(crate) prune: bool,
    /// Writes in flight at once (`[recovery] concurrency`).
    pub(crate) concurrency: usize,
}

impl From<&RecoveryConfig> for WriteOptions {
    fn from(recovery: &RecoveryConfig) -> Self {
        Self {
            prune: recovery.prune_orphans,
            concurrency: recovery.concurrency,
        }
    }
}

impl RecoverReport {
    /// What carrying out `plan` does, before anything is written: the dry
    /// run's report.
    pub(crate) fn planned(plan: &Plan, prune: bool) -> Self {
        let mut report = Self::listing(plan, prune);
        report.dry_run = true;
        report.count_changes(|_| true);
        report.success = true;
        report
    }

    /// `plan` carried out by someone else — the application, asked by the
    /// webhook — and found done by the comparison after it.
    pub(crate) fn done_elsewhere(plan: &Plan, prune: bool) -> Self {
        let mut report = Self::planned(plan, prune);
        report.dry_run = false;
        report.recovered_tasks = report.created + report.updated;
        report
    }

    /// Every change the plan makes, nothing counted as done yet.
    fn listing(plan: &Plan, prune: bool) -> Self {
        let mut report = RecoverReport {
            invalid: plan.invalid.clone(),
            ..RecoverReport::default()
        };
        for (queue, queue_plan) in &plan.queues {
            report.unchanged += queue_plan.unchanged.len();
            report.orphaned += queue_plan.orphaned.len();
            report.legacy += queue_plan.legacy;
            for scheduler in &queue_plan.create {
                report
                    .changes
                    .push(change(scheduler, Action::Create, Vec::new()));
            }
            for update in &queue_plan.update {
                let differs = update.differs.clone();
                report
                    .changes
                    .push(change(&update.scheduler, Action::Update, differs));
            }
            for scheduler_id in &queue_plan.orphaned {
                report.changes.push(Change {
                    queue: queue.clone(),
                    scheduler_id: scheduler_id.clone(),
                    row_id: None,
                    action: if prune { Action::Remove } else { Action::Keep },
                    differs: Vec::new(),
                    not_done: false,
                });
            }
        }
        report
    }

    /// Counts the creates and updates among the changes `done` accepts
    /// (removals are counted as Redis confirms them, or all in a dry run).
    fn count_changes(&mut self, done: impl Fn(&Change) -> bool) {
        for c in self.changes.iter().filter(|c| done(c)) {
            match c.action {
                Action::Create => self.created += 1,
                Action::Update => self.updated += 1,
                Action::Remove if self.dry_run => self.removed += 1,
                Action::Remove | Action::Keep => {}
            }
        }
    }
}

/// The native strategy: writes through BullMQ's scripts from here.
pub(crate) struct Native<'a> {
    pub(crate) store: BullmqStore,
    pub(crate) options: WriteOptions,
    /// Raised while writing, so the keyspace watcher ignores the echoes.
    pub(crate) own_writes: &'a OwnWrites,
}

impl Restore for Native<'_> {
    fn restore<'a>(
        &'a self,
        plan: &'a Plan,
        _trigger: Cause,
        lease: &'a Held,
    ) -> BoxFuture<'a, Result<Restored, RestoreError>> {
        Box::pin(async move {
            let _writing = self.own_writes.begin();
            let report = apply(&self.store, plan, self.options, lease).await;
            if let Some(reason) = report.stopped {
                return Err(RestoreError::LeaseLost(reason));
            }
            if let Some(failure) = report.failed.first() {
                return Err(RestoreError::WritesFailed {
                    failed: report.failed.len(),
                    total: report.changes.len(),
                    scheduler_id: failure.scheduler_id.clone(),
                    reason: failure.reason.clone(),
                });
            }
            Ok(Restored::Written(report))
        })
    }
}

/// Carries out `plan` — creates and updates always, removals of orphans only
/// with `options.prune` — while `lease` stays this writer's.
pub(crate) async fn apply(
    store: &BullmqStore,
    plan: &Plan,
    options: WriteOptions,
    lease: &Held,
) -> RecoverReport {
    let started = Instant::now();
    let mut report = RecoverReport::listing(plan, options.prune);
    let writes = writes_for(store, plan, options.prune).await;
    let outcome = write_all(store, writes, options.concurrency, lease).await;
    report.removed = outcome.removed;
    report.stopped = outcome.stopped;
    let failed_ids: HashSet<&str> = outcome
        .failed
        .iter()
        .map(|f| f.scheduler_id.as_str())
        .collect();
    for c in &mut report.changes {
        c.not_done = outcome
            .not_done
            .contains(&(c.queue.clone(), c.scheduler_id.clone()));
    }
    report.count_changes(|c| !c.not_done && !failed_ids.contains(c.scheduler_id.as_str()));
    report.failed = outcome.failed;
    report.recovered_tasks = report.created + report.updated;
    report.success = report.failed.is_empty() && report.stopped.is_none();
    report.duration_ms = millis(started.elapsed());
    report
}

/// The writes `plan` needs, in the order of its changes. A create whose next
/// run's job survived the loss of its scheduler is written so that BullMQ
/// takes that job over instead of refusing it.
async fn writes_for<'a>(store: &BullmqStore, plan: &'a Plan, prune: bool) -> Vec<Write<'a>> {
    let mut writes = Vec::new();
    for (queue, queue_plan) in &plan.queues {
        // Unknown (a failed read) means the upsert finds out for itself.
        let mut orphaned_next_jobs = match queue_plan.create.is_empty() {
            true => Vec::new(),
            false => store
                .orphaned_next_jobs(queue, &queue_plan.create)
                .await
                .unwrap_or_default(),
        };
        for (index, scheduler) in queue_plan.create.iter().enumerate() {
            writes.push(
                match orphaned_next_jobs.get_mut(index).and_then(Option::take) {
                    Some(orphan) => Write::UpsertAfterOrphan(scheduler, orphan),
                    None => Write::Upsert(scheduler),
                },
            );
        }
        for update in &queue_plan.update {
            writes.push(match &update.stranded_job_id {
                Some(job_id) => Write::ReplaceStranded(&update.scheduler, job_id),
                None => Write::Upsert(&update.scheduler),
            });
        }
        if prune {
            writes.extend(
                queue_plan
                    .orphaned
                    .iter()
                    .map(|scheduler_id| Write::Remove {
                        queue,
                        scheduler_id,
                    }),
            );
        }
    }
    writes
}

/// What the writes did.
struct WriteOutcome {
    failed: Vec<Failure>,
    removed: usize,
    /// (queue, scheduler id) of the writes never started.
    not_done: HashSet<(String, String)>,
    stopped: Option<String>,
}

/// A window over FuturesUnordered: at most `concurrency` writes in flight,
/// refilled as each one finishes — until the lease is lost; the writes in
/// flight then finish (each is one atomic script).
async fn write_all(
    store: &BullmqStore,
    writes: Vec<Write<'_>>,
    concurrency: usize,
    lease: &Held,
) -> WriteOutcome {
    let mut outcome = WriteOutcome {
        failed: Vec::new(),
        removed: 0,
        not_done: HashSet::new(),
        stopped: None,
    };
    let mut queued = writes.into_iter().peekable();
    let mut started_writes = 0usize;
    let mut in_flight = FuturesUnordered::new();
    let mut check = None;
    if queued.peek().is_some() {
        lease.confirm().await;
    }
    loop {
        while in_flight.len() < concurrency && outcome.stopped.is_none() {
            outcome.stopped = lease
                .lost()
                .map(|reason| format!("{reason}; stopped writing after {started_writes} writes"));
            let Some(write) = queued.next_if(|_| outcome.stopped.is_none()) else {
                break;
            };
            started_writes += 1;
            if check.is_none() && started_writes.is_multiple_of(LEASE_CHECK_EVERY) {
                check = Some(Box::pin(lease.confirm().map(drop)) as BoxFuture<'_, ()>);
            }
            in_flight.push(carry_out(store, write));
        }
        tokio::select! {
            biased;
            () = settle(&mut check) => {}
            finished = in_flight.next() => {
                let Some((row_id, scheduler_id, result)) = finished else {
                    break;
                };
                match result {
                    Ok(removed) => outcome.removed += usize::from(removed),
                    Err(error) => outcome.failed.push(Failure {
                        id: row_id.to_owned(),
                        scheduler_id: scheduler_id.to_owned(),
                        reason: error.to_string(),
                    }),
                }
            }
        }
    }
    outcome.not_done = queued
        .map(Write::target)
        .map(|(queue, id)| (queue.to_owned(), id.to_owned()))
        .collect();
    outcome
}

/// Waits for the lease check in flight, if there is one, and clears it.
///
/// The check — one GET, asked before the first write and every
/// `LEASE_CHECK_EVERY` writes — goes out beside the writes rather than in
/// their way: awaited in turn, it would wait behind the scripts in flight
/// while no new write went out, and Redis would run dry once per check. A
/// check that finds the lease lost records it in `Held`, and the writer stops
/// at its next write; the renewals report a loss the same way in between.
async fn settle(check: &mut Option<BoxFuture<'_, ()>>) {
    match check {
        Some(pending) => {
            pending.await;
            *check = None;
        }
        None => std::future::pending().await,
    }
}

/// One write; returns the row id, the scheduler id, and whether it removed one.
async fn carry_out<'a>(
    store: &BullmqStore,
    write: Write<'a>,
) -> (&'a str, &'a str, Result<bool, crate::store::StoreError>) {
    match write {
        Write::Upsert(scheduler) => {
            let result = store.upsert(scheduler).await.map(|()| false);
            (&scheduler.row_id, &scheduler.scheduler_id, result)
        }
        Write::UpsertAfterOrphan(scheduler, orphan) => {
            let result = store
                .upsert_after_orphan(scheduler, &orphan)
                .await
                .map(|()| false);
            (&scheduler.row_id, &scheduler.scheduler_id, result)
        }
        Write::ReplaceStranded(scheduler, job_id) => {
            let result = store
                .replace_stranded(scheduler, job_id)
                .await
                .map(|()| false);
            (&scheduler.row_id, &scheduler.scheduler_id, result)
        }
        Write::Remove {
            queue,
            scheduler_id,
        } => ("", scheduler_id, store.remove(queue, scheduler_id).await),
    }
}

fn change(scheduler: &DesiredScheduler, action: Action, differs: Vec<Difference>) -> Change {
    Change {
        queue: scheduler.queue.clone(),
        scheduler_id: scheduler.scheduler_id.clone(),
        row_id: Some(scheduler.row_id.clone()),
        action,
        differs,
        not_done: false,
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
