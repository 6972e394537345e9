//! The recovery manual's operations — checkQueueStatus, recoverTasks and
//! removeAllRepeatableTasks — over one Redis and one source database.
//!
//! The CLI, the HTTP API and the watcher all call these, so each operation
//! behaves the same whichever way it is started.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use futures::future::try_join_all;
use serde::Serialize;

use crate::apply::{apply, RecoverReport};
use crate::bullmq_store::{BullmqStore, JobCounts, QueueSchedulers, SharedStore, StoreError};
use crate::config::{Config, ConfigError};
use crate::desired::DesiredSet;
use crate::reconcile::Plan;
use crate::source::{Source, SourceError};
use crate::template::IdTemplate;

#[derive(Debug, thiserror::Error)]
pub enum WardenError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Drift between the rows and Redis for one queue.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Drift {
    pub missing: usize,
    pub mismatched: usize,
    pub orphaned: usize,
    pub invalid: usize,
}

/// One queue in `status`: BullMQ's counts, the rows, and the drift between them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct QueueStatus {
    #[serde(flatten)]
    pub counts: JobCounts,
    /// Valid rows that want a scheduler in this queue.
    pub desired: usize,
    /// Legacy repeatable jobs (BullMQ 5), never touched.
    pub legacy: usize,
    pub drift: Drift,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct StatusReport {
    pub queues: BTreeMap<String, QueueStatus>,
}

/// What the source asks for compared with Redis.
pub struct Snapshot {
    pub desired: DesiredSet,
    pub plan: Plan,
    /// How long the source query took.
    pub source_elapsed: std::time::Duration,
}

pub struct Warden {
    config: Config,
    template: IdTemplate,
    store: SharedStore,
    source: Source,
}

impl Warden {
    pub async fn connect(config: Config) -> Result<Self, WardenError> {
        let store = BullmqStore::connect(&config.redis).await?;
        let source = Source::connect(&config.source).await?;
        Ok(Self::from_parts(config, store, source))
    }

    pub fn from_parts(config: Config, store: BullmqStore, source: Source) -> Self {
        Self {
            template: config.id_template(),
            config,
            store: SharedStore::new(store),
            source,
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The store in use now.
    pub fn store(&self) -> BullmqStore {
        self.store.get()
    }

    /// The handle the Sentinel follower swaps stores through.
    pub fn shared_store(&self) -> &SharedStore {
        &self.store
    }

    pub fn source(&self) -> &Source {
        &self.source
    }

    /// Reads the rows and the schedulers of every queue they name (plus the
    /// default queue, and `only_queue` when given) and plans the difference.
    pub async fn snapshot(&self, only_queue: Option<&str>) -> Result<Snapshot, WardenError> {
        let fetched = self.source.fetch().await?;
        let desired = DesiredSet::from_rows(
            &fetched.rows,
            &self.config.source.queue,
            &self.template,
            now_ms(),
        );
        let mut queues = desired.queues();
        queues.push(self.config.source.queue.clone());
        queues.extend(only_queue.map(str::to_owned));
        queues.sort();
        queues.dedup();
        if let Some(only) = only_queue {
            queues.retain(|q| q == only);
        }
        let stored = self.read_queues(&queues).await?;
        let mut plan = Plan::new(&desired, &stored, &self.template);
        if let Some(only) = only_queue {
            plan = plan.only_queue(only);
        }
        Ok(Snapshot {
            desired,
            plan,
            source_elapsed: fetched.elapsed,
        })
    }

    async fn read_queues(
        &self,
        queues: &[String],
    ) -> Result<BTreeMap<String, QueueSchedulers>, WardenError> {
        let store = self.store();
        let read = queues.iter().map(|queue| {
            let store = store.clone();
            async move {
                let schedulers = store.read_schedulers(queue).await?;
                Ok::<_, StoreError>((queue.clone(), schedulers))
            }
        });
        Ok(try_join_all(read).await?.into_iter().collect())
    }

    /// checkQueueStatus: BullMQ's job counts per queue, with rows and drift.
    pub async fn status(&self, only_queue: Option<&str>) -> Result<StatusReport, WardenError> {
        let snapshot = self.snapshot(only_queue).await?;
        let names: Vec<String> = snapshot.plan.queues.keys().cloned().collect();
        let counts = self.store().job_counts(&names).await?;
        let mut report = StatusReport::default();
        for (name, counts) in counts {
            let name = &name;
            let plan = &snapshot.plan.queues[name];
            let desired = snapshot
                .desired
                .schedulers
                .iter()
                .filter(|s| &s.queue == name)
                .count();
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
                    desired,
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
    pub async fn recover(
        &self,
        only_queue: Option<&str>,
        dry_run: bool,
    ) -> Result<RecoverReport, WardenError> {
        let snapshot = self.snapshot(only_queue).await?;
        Ok(apply(
            &self.store(),
            &snapshot.plan,
            self.config.recovery.prune_orphans,
            self.config.recovery.concurrency,
            dry_run,
        )
        .await)
    }

    /// removeAllRepeatableTasks: removes the queue's job schedulers through
    /// BullMQ — the ones under the id template's prefix, or with `all` every
    /// job scheduler. Legacy repeatable jobs are left alone.
    pub async fn remove_schedulers(&self, queue: &str, all: bool) -> Result<usize, WardenError> {
        let store = self.store();
        let stored = store.read_schedulers(queue).await?;
        let mut removed = 0;
        for id in stored.schedulers.keys() {
            if (all || self.template.may_have_rendered(id)) && store.remove(queue, id).await? {
                removed += 1;
            }
        }
        Ok(removed)
    }

    pub async fn close(&self) {
        self.source.close().await;
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or_default()
}
