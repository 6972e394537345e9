//! Carries out a plan against Redis with many upserts in flight, but a bounded number.
//!
//! Redis runs one script at a time and serves its clients in turns, so a few
//! dozen requests in flight keep it fully busy while other clients of the same
//! Redis still get answered quickly; thousands would only queue up in front of them.
//!
//! Writes go out only while the recovery lease is this writer's: once it is
//! lost another writer may be at work, and two writers racing over the same
//! schedulers make BullMQ refuse each other's upserts.

use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use serde::Serialize;

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
pub enum Action {
    Create,
    Update,
    Remove,
    /// An orphan that is reported but kept (pruning is off).
    Keep,
}

/// One scheduler the plan touches (or would touch, in a dry run).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Change {
    pub queue: String,
    pub scheduler_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub row_id: Option<String>,
    pub action: Action,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<String>)]
    pub differs: Vec<Difference>,
    /// Not written: the writes stopped first (the report's `stopped` says why).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub not_done: bool,
}

/// A write that Redis refused or that could not be sent.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Failure {
    pub id: String,
    pub scheduler_id: String,
    pub reason: String,
}

/// The manual's `recoverTasks()` result, with the detail an operator needs.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecoverReport {
    pub success: bool,
    pub dry_run: bool,
    /// Schedulers written: created plus updated.
    pub recovered_tasks: usize,
    pub created: usize,
    pub updated: usize,
    pub unchanged: usize,
    pub removed: usize,
    /// Orphans found; removed only when pruning is on.
    pub orphaned: usize,
    pub legacy: usize,
    pub invalid: Vec<InvalidRow>,
    pub failed: Vec<Failure>,
    pub changes: Vec<Change>,
    /// Why the writes stopped before the plan was carried out: the recovery
    /// lease was lost. The changes marked `notDone` were not written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped: Option<String>,
    pub duration_ms: u64,
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

/// Applies `plan`: creates and updates always, removes orphans only when
/// `prune`. A real run writes only while it holds `lease` (a dry run writes
/// nothing and needs none).
pub async fn apply(
    store: &BullmqStore,
    plan: &Plan,
    prune: bool,
    concurrency: usize,
    dry_run: bool,
    lease: Option<&Held>,
) -> RecoverReport {
    let started = Instant::now();
    let mut report = RecoverReport {
        dry_run,
        invalid: plan.invalid.clone(),
        ..RecoverReport::default()
    };
    let mut writes = Vec::new();
    for (queue, queue_plan) in &plan.queues {
        report.unchanged += queue_plan.unchanged.len();
        report.orphaned += queue_plan.orphaned.len();
        report.legacy += queue_plan.legacy;
        // Unknown (a failed read) means the upsert finds out for itself.
        let mut orphaned_next_jobs = match dry_run || queue_plan.create.is_empty() {
            true => Vec::new(),
            false => store
                .orphaned_next_jobs(queue, &queue_plan.create)
                .await
                .unwrap_or_default(),
        };
        for (index, scheduler) in queue_plan.create.iter().enumerate() {
            report
                .changes
                .push(change(scheduler, Action::Create, Vec::new()));
            writes.push(
                match orphaned_next_jobs.get_mut(index).and_then(Option::take) {
                    Some(orphan) => Write::UpsertAfterOrphan(scheduler, orphan),
                    None => Write::Upsert(scheduler),
                },
            );
        }
        for update in &queue_plan.update {
            report.changes.push(change(
                &update.scheduler,
                Action::Update,
                update.differs.clone(),
            ));
            writes.push(match &update.stranded_job_id {
                Some(job_id) => Write::ReplaceStranded(&update.scheduler, job_id),
                None => Write::Upsert(&update.scheduler),
            });
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
            if prune {
                writes.push(Write::Remove {
                    queue,
                    scheduler_id,
                });
            }
        }
    }
    if dry_run {
        for c in &report.changes {
            match c.action {
                Action::Create => report.created += 1,
                Action::Update => report.updated += 1,
                Action::Remove => report.removed += 1,
                Action::Keep => {}
            }
        }
        report.success = true;
        report.duration_ms = millis(started.elapsed());
        return report;
    }
    // A hand-rolled window over FuturesUnordered: at most `concurrency` writes
    // in flight, refilled as each one finishes — until the lease is lost;
    // the writes in flight then finish (each is one atomic script).
    let mut failed_ids = std::collections::HashSet::new();
    let mut queued = writes.into_iter().peekable();
    let mut started_writes = 0usize;
    let mut in_flight = FuturesUnordered::new();
    loop {
        while in_flight.len() < concurrency && report.stopped.is_none() {
            if queued.peek().is_none() {
                break;
            }
            report.stopped = lease_lost(lease, started_writes).await;
            if report.stopped.is_none() {
                if let Some(write) = queued.next() {
                    started_writes += 1;
                    in_flight.push(carry_out(store, write));
                }
            }
        }
        let Some((row_id, scheduler_id, result)) = in_flight.next().await else {
            break;
        };
        match result {
            Ok(removed) => report.removed += usize::from(removed),
            Err(error) => {
                failed_ids.insert(scheduler_id);
                report.failed.push(Failure {
                    id: row_id.to_owned(),
                    scheduler_id: scheduler_id.to_owned(),
                    reason: error.to_string(),
                });
            }
        }
    }
    let not_done: std::collections::HashSet<(&str, &str)> = queued.map(Write::target).collect();
    for c in &mut report.changes {
        c.not_done = not_done.contains(&(c.queue.as_str(), c.scheduler_id.as_str()));
        if c.not_done || failed_ids.contains(c.scheduler_id.as_str()) {
            continue;
        }
        match c.action {
            Action::Create => report.created += 1,
            Action::Update => report.updated += 1,
            Action::Remove | Action::Keep => {}
        }
    }
    report.recovered_tasks = report.created + report.updated;
    report.success = report.failed.is_empty() && report.stopped.is_none();
    report.duration_ms = millis(started.elapsed());
    report
}

/// Why the lease is no longer ours, if it is not: asks Redis before the
/// first write and every `LEASE_CHECK_EVERY` writes, and hears from the
/// renewals in between.
async fn lease_lost(lease: Option<&Held>, started_writes: usize) -> Option<String> {
    let lease = lease?;
    let reason = if started_writes.is_multiple_of(LEASE_CHECK_EVERY) {
        lease.confirm().await
    } else {
        lease.lost()
    };
    reason.map(|reason| format!("{reason}; stopped writing after {started_writes} writes"))
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
