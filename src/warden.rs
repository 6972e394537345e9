//! The recovery manual's operations — checkQueueStatus, recoverTasks and
//! removeAllRepeatableTasks — over one Redis and one source database.
//!
//! The CLI, the HTTP API and the watcher all call these, so each operation
//! behaves the same whichever way it is started.

use crate::store::verified::{ReadPlan, VerifiedDefinitions};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use futures::future::try_join_all;
use serde::Serialize;

use crate::clock::now_ms;
use crate::config::{Config, ConfigError};
use crate::desired::{DesiredSet, RowRules};
use crate::journal::Recorder;
use crate::model::IdTemplate;
use crate::model::JobCounts;
use crate::model::{DesiredScheduler, InvalidRow};
use crate::plan::{protected_ids, Plan, Protected, QueuePlan};
use crate::restore::lease::{Lease, LeaseBusy, LeaseError};
use crate::restore::native::{apply, RecoverReport};
use crate::source::{Source, SourceError};
use crate::store::{BullmqStore, SharedStore, StoreError};

#[derive(Debug, thiserror::Error)]
pub(crate) enum WardenError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    LeaseBusy(#[from] LeaseBusy),
}

impl From<LeaseError> for WardenError {
    fn from(error: LeaseError) -> Self {
        match error {
            LeaseError::Busy(busy) => WardenError::LeaseBusy(busy),
            LeaseError::Store(error) => WardenError::Store(error),
        }
    }
}

/// Drift between the rows and Redis for one queue.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub(crate) struct Drift {
    pub(crate) missing: usize,
    pub(crate) mismatched: usize,
    pub(crate) orphaned: usize,
    pub(crate) invalid: usize,
}

/// One queue in `status`: BullMQ's counts, the rows, and the drift between them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub(crate) struct QueueStatus {
    #[serde(flatten)]
    pub(crate) counts: JobCounts,
    /// Valid rows that want a scheduler in this queue.
    pub(crate) desired: usize,
    /// Legacy repeatable jobs (BullMQ 5), never touched.
    pub(crate) legacy: usize,
    pub(crate) drift: Drift,
}

#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub(crate) struct StatusReport {
    pub(crate) queues: BTreeMap<String, QueueStatus>,
}

/// What the source asks for, before Redis is read.
pub(crate) struct Desired {
    /// Valid rows by queue.
    pub(crate) by_queue: BTreeMap<String, Vec<DesiredScheduler>>,
    pub(crate) invalid: Vec<InvalidRow>,
    /// The schedulers of invalid rows: never orphans.
    pub(crate) protected: Protected,
    /// How long the source query took.
    pub(crate) source_elapsed: std::time::Duration,
}

impl Desired {
    /// Narrows to one queue, which is read even when no row names it.
    fn keep_only(&mut self, queue: &str) {
        self.by_queue.entry(queue.to_owned()).or_default();
        self.by_queue.retain(|name, _| name == queue);
        self.invalid.retain(|i| i.queue.as_deref() == Some(queue));
        self.protected.retain(|name, _| name == queue);
    }
}

/// What the source asks for compared with Redis.
pub(crate) struct Snapshot {
    pub(crate) plan: Plan,
}

pub(crate) struct Warden {
    /// Swapped whole by a config reload, so an operation that took it reads
    /// one consistent config from start to end.
    live: std::sync::RwLock<Live>,
    store: SharedStore,
    source: Source,
    /// Queues found in Redis under the prefix, with the scan's cursor: a
    /// queue whose rows were all disabled or deleted is still compared, so
    /// its schedulers are reported (and pruned) instead of forgotten.
    discovered: tokio::sync::Mutex<Discovered>,
    /// Scheduler hashes known to match their rows, whose reads a comparison
    /// skips; fed by the watcher's keyspace subscription.
    verified: Arc<VerifiedDefinitions>,
    /// Journal mode, in the watcher: records what Redis holds before each
    /// read of the journal.
    recorder: std::sync::OnceLock<Arc<Recorder>>,
}

/// What the incremental scan for queues has found so far.
#[derive(Default)]
struct Discovered {
    cursor: u64,
    queues: BTreeSet<String>,
    /// When the last full pass over the keyspace ended.
    swept_at: Option<std::time::Instant>,
}

/// `SCAN` steps of 1,000 keys per comparison: bounds what one comparison
/// costs Redis; the cursor goes on from there at the next one.
const DISCOVERY_STEPS: usize = 64;

/// The pause between two full passes. A pass visits every key of the
/// database (about 0.8 ms of Redis time per 1,000 keys), while what it finds
/// is rare: a queue with schedulers that no row names and no comparison of
/// this process saw before (those are remembered).
const DISCOVERY_PAUSE: std::time::Duration = std::time::Duration::from_secs(300);

/// The config in force and the id template made from it.
#[derive(Clone)]
struct Live {
    config: Arc<Config>,
    template: Arc<IdTemplate>,
}

impl Warden {
    pub(crate) async fn connect(config: Config) -> Result<Self, WardenError> {
        let store = BullmqStore::connect(&config.redis).await?;
        let source = Source::connect(&config.source).await?;
        Ok(Self::from_parts(config, store, source))
    }

    pub(crate) fn from_parts(config: Config, store: BullmqStore, source: Source) -> Self {
        Self {
            live: std::sync::RwLock::new(Live {
                template: Arc::new(config.id_template()),
                config: Arc::new(config),
            }),
            store: SharedStore::new(store),
            source,
            discovered: tokio::sync::Mutex::default(),
            verified: Arc::default(),
            recorder: std::sync::OnceLock::new(),
        }
    }

    /// What the keyspace watcher tells about rewritten scheduler hashes.
    pub(crate) fn verified_definitions(&self) -> Arc<VerifiedDefinitions> {
        self.verified.clone()
    }

    /// The queues under the prefix that have a scheduler set, as far as the
    /// scan has got: never forgotten once found. A failed scan step leaves
    /// what is known.
    async fn discovered_queues(&self) -> BTreeSet<String> {
        let mut discovered = self.discovered.lock().await;
        let resting = discovered.cursor == 0
            && discovered
                .swept_at
                .is_some_and(|at| at.elapsed() < DISCOVERY_PAUSE);
        if resting {
            return discovered.queues.clone();
        }
        let cursor = discovered.cursor;
        if let Ok((found, next)) = self.store().discover_queues(cursor, DISCOVERY_STEPS).await {
            discovered.queues.extend(found);
            discovered.cursor = next;
            if next == 0 {
                discovered.swept_at = Some(std::time::Instant::now());
            }
        }
        discovered.queues.clone()
    }

    /// Remembers the queues a comparison found schedulers in or meant to
    /// write, so that they stay compared when their last row goes, between
    /// discovery passes.
    async fn remember_queues(&self, plan: &Plan) {
        let seen = plan
            .queues
            .iter()
            .filter(|(_, q)| q.desired > 0 || q.holds_schedulers());
        let mut discovered = self.discovered.lock().await;
        discovered
            .queues
            .extend(seen.map(|(queue, _)| queue.clone()));
    }

    /// The config in force now (a reload may replace it).
    pub(crate) fn config(&self) -> Arc<Config> {
        self.live().config
    }

    fn live(&self) -> Live {
        // A poisoned lock still holds a whole, validated config.
        self.live.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Puts a reloaded config in force for the operations that start after
    /// this; the source query with it.
    pub(crate) fn replace_config(&self, config: Config) {
        self.source.set_query(config.source.query.as_deref());
        let live = Live {
            template: Arc::new(config.id_template()),
            config: Arc::new(config),
        };
        *self.live.write().unwrap_or_else(|e| e.into_inner()) = live;
    }

    /// The store in use now.
    pub(crate) fn store(&self) -> BullmqStore {
        self.store.get()
    }

    /// The handle the Sentinel follower swaps stores through.
    pub(crate) fn shared_store(&self) -> &SharedStore {
        &self.store
    }

    /// Reads the rows and the schedulers of every queue they name (plus the
    /// default queue, and `only_queue` when given) and plans the difference.
    pub(crate) async fn snapshot(&self, only_queue: Option<&str>) -> Result<Snapshot, WardenError> {
        let desired = self.read_desired().await?;
        self.plan(desired, only_queue).await
    }

    /// Journal mode: the recorder that keeps the journal, set once by the
    /// watcher (the one-shot commands read the journal as it is).
    pub(crate) fn set_recorder(&self, recorder: Arc<Recorder>) {
        let _ = self.recorder.set(recorder);
    }

    /// Reads and judges the rows: what every queue should hold. In journal
    /// mode the watcher first records what Redis holds now, every queue
    /// under the prefix, so that what the application just added or removed
    /// is in the journal before it is compared.
    pub(crate) async fn read_desired(&self) -> Result<Desired, WardenError> {
        if let Some(recorder) = self.recorder.get() {
            let discovered: Vec<String> = self.discovered_queues().await.into_iter().collect();
            recorder.settle(&self.store(), true, &discovered).await;
        }
        let Live { config, template } = self.live();
        let mut desired = DesiredSet::default();
        let rules = RowRules {
            default_queue: &config.source.queue,
            template: &template,
            now_ms: now_ms(),
            max_value_bytes: config.source.max_value_bytes,
        };
        let source_elapsed = self.source.fetch(|row| desired.add(&row, &rules)).await?;
        let (by_queue, invalid) = desired.finish().into_queues();
        Ok(Desired {
            protected: protected_ids(&invalid),
            by_queue,
            invalid,
            source_elapsed,
        })
    }

    /// Reads the schedulers of every queue `desired` names (plus the default
    /// queue, and `only_queue` when given) and plans the difference. Each
    /// queue is planned as soon as it is read, so only a few queues'
    /// schedulers are held at a time.
    pub(crate) async fn plan(
        &self,
        mut desired: Desired,
        only_queue: Option<&str>,
    ) -> Result<Snapshot, WardenError> {
        let Live { config, template } = self.live();
        self.add_queues_to_read(&config, &mut desired.by_queue)
            .await;
        if let Some(only) = only_queue {
            desired.keep_only(only);
        }
        let Desired {
            by_queue,
            invalid,
            protected,
            source_elapsed: _,
        } = desired;
        let queues = self.plan_queues(by_queue, &protected, &template).await?;
        let plan = Plan { queues, invalid };
        self.remember_queues(&plan).await;
        Ok(Snapshot { plan })
    }

    /// Adds the queues read though no row names them: the default queue, and
    /// those with a scheduler set under the prefix, which stay compared once
    /// their last row goes. A journal reads only the queues it keeps.
    async fn add_queues_to_read(
        &self,
        config: &Config,
        by_queue: &mut BTreeMap<String, Vec<DesiredScheduler>>,
    ) {
        let journal = crate::journal::is_journal(&config.source.url);
        // A journal's queues are the ones it recorded: no default queue.
        if !journal {
            by_queue.entry(config.source.queue.clone()).or_default();
        }
        for queue in self.discovered_queues().await {
            by_queue.entry(queue).or_default();
        }
        let only = &config.source.queues;
        if journal && !only.is_empty() {
            by_queue.retain(|queue, _| only.contains(queue));
        }
    }

    /// Reads and plans the queues a few at a time: each read holds up to a
    /// thousand replies.
    async fn plan_queues(
        &self,
        by_queue: BTreeMap<String, Vec<DesiredScheduler>>,
        protected: &Protected,
        template: &IdTemplate,
    ) -> Result<BTreeMap<String, QueuePlan>, WardenError> {
        const QUEUES_AT_ONCE: usize = 8;
        let store = self.store();
        let connection = store.reads_connection().await?;
        let mut queues = BTreeMap::new();
        let mut pending = by_queue.into_iter().peekable();
        while pending.peek().is_some() {
            let chunk: Vec<(String, Vec<DesiredScheduler>)> =
                pending.by_ref().take(QUEUES_AT_ONCE).collect();
            let read_plans: Vec<ReadPlan> = chunk
                .iter()
                .map(|(queue, rows)| self.verified.plan_read(queue, rows))
                .collect();
            let reads = chunk.iter().zip(&read_plans).map(|((queue, _), read)| {
                store.read_schedulers(connection.clone(), queue, |id| read.skips(id))
            });
            let stored = try_join_all(reads).await?;
            for (((queue, rows), in_redis), read) in chunk.into_iter().zip(stored).zip(read_plans) {
                let plan = QueuePlan::new(&queue, rows, &in_redis, protected, template, now_ms());
                self.verified.confirm(&read, plan.unchanged.iter());
                queues.insert(queue, plan);
            }
        }
        Ok(queues)
    }

    /// checkQueueStatus: BullMQ's job counts per queue, with rows and drift.
    pub(crate) async fn status(
        &self,
        only_queue: Option<&str>,
    ) -> Result<StatusReport, WardenError> {
        let snapshot = self.snapshot(only_queue).await?;
        let names: Vec<String> = snapshot.plan.queues.keys().cloned().collect();
        let counts = self.store().job_counts(&names).await?;
        let mut report = StatusReport::default();
        for (name, counts) in counts {
            let name = &name;
            let plan = &snapshot.plan.queues[name];
            let invalid = snapshot
                .plan
                .invalid
                .iter()
                .filter(|i| i.queue.as_deref() == Some(name.as_str()))
                .count();
            report.queues.insert(
                name.clone(),
                QueueStatus {
                    counts,
                    desired: plan.desired,
                    legacy: plan.legacy,
                    drift: Drift {
                        missing: plan.create.len(),
                        mismatched: plan.update.len(),
                        orphaned: plan.orphaned.len(),
                        invalid,
                    },
                },
            );
        }
        Ok(report)
    }

    /// recoverTasks: brings Redis in line with the rows; idempotent.
    ///
    /// Writes under the same lease as the watchers' recoveries, waiting up to
    /// `recovery.lease_wait` for it, and compares only once it holds it, so
    /// that it sees what the writer before it did. A dry run takes no lease.
    pub(crate) async fn recover(
        &self,
        only_queue: Option<&str>,
        dry_run: bool,
    ) -> Result<RecoverReport, WardenError> {
        let config = self.config();
        let recovery = &config.recovery;
        if dry_run {
            let snapshot = self.snapshot(only_queue).await?;
            let (plan, withheld) = writable(&snapshot.plan, recovery);
            return Ok(RecoverReport::planned(&plan, recovery.prune_orphans).withholding(&withheld));
        }
        let lease = Lease::new(self.store.clone(), recovery.lease_ttl)
            .acquire_within(recovery.lease_wait)
            .await?;
        let outcome = match self.snapshot(only_queue).await {
            Ok(snapshot) => {
                let (plan, withheld) = writable(&snapshot.plan, recovery);
                let report = apply(&self.store(), &plan, recovery.into(), &lease).await;
                Ok(report.withholding(&withheld))
            }
            Err(error) => Err(error),
        };
        // A release that fails leaves the lease to expire after its ttl.
        let _ = lease.release().await;
        outcome
    }

    /// removeAllRepeatableTasks: removes the queue's job schedulers through
    /// BullMQ — the ones under the id template's prefix, or with `all` every
    /// job scheduler. Legacy repeatable jobs are left alone.
    pub(crate) async fn remove_schedulers(
        &self,
        queue: &str,
        all: bool,
    ) -> Result<usize, WardenError> {
        let store = self.store();
        let template = self.live().template;
        let stored = store.read_schedulers(store.raw(), queue, |_| false).await?;
        let mut removed = 0;
        for id in stored.schedulers.keys() {
            if (all || template.may_have_rendered(id)) && store.remove(queue, id).await? {
                removed += 1;
            }
        }
        Ok(removed)
    }

    pub(crate) async fn close(&self) {
        self.source.close().await;
    }
}

/// The part of `plan` that may be written, and the queues withheld from it:
/// those a BullMQ major the warden was not verified against set up, unless
/// `[recovery] allow_unverified_bullmq` lets it write there.
pub(crate) fn writable<'p>(
    plan: &'p Plan,
    recovery: &crate::config::RecoveryConfig,
) -> (std::borrow::Cow<'p, Plan>, BTreeMap<String, String>) {
    let withheld = match recovery.allow_unverified_bullmq {
        true => BTreeMap::new(),
        false => plan.unverified_queues(),
    };
    match withheld.is_empty() {
        true => (std::borrow::Cow::Borrowed(plan), withheld),
        false => (std::borrow::Cow::Owned(plan.without(&withheld)), withheld),
    }
}
