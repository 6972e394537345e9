//! With Sentinel: follows the primary. When the sentinels name another
//! primary, the watcher reconnects there and compares rows and Redis at once —
//! a replica promoted without the schedulers is a loss like any other.

use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::clock::now_ms;
use crate::config::RedisConfig;
use crate::model::Cause;
use crate::model::Trigger;
use crate::report::events::{Event, Observer};
use crate::store::target;
use crate::store::{BullmqStore, SharedStore};

pub struct PrimaryFollower {
    pub config: RedisConfig,
    pub store: SharedStore,
    pub observer: Observer,
    pub triggers: mpsc::Sender<Trigger>,
    pub moved: watch::Sender<u64>,
    pub interval: Duration,
}

impl PrimaryFollower {
    pub async fn run(self, shutdown: CancellationToken) {
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => self.check().await,
                _ = shutdown.cancelled() => return,
            }
        }
    }

    async fn check(&self) {
        let Ok(url) = target::resolve(&self.config).await else {
            // No sentinel answers: the poll reports Redis itself.
            return;
        };
        let current = self.store.get();
        if current.is_at(&url) {
            return;
        }
        match BullmqStore::connect_url(&url, &self.config.prefix).await {
            Ok(store) => {
                let detail = format!(
                    "the sentinels moved the primary from {} to {}",
                    current.redacted_url(),
                    store.redacted_url()
                );
                self.store.replace(store);
                self.moved.send_modify(|generation| *generation += 1);
                self.observer.emit(Event::Detected {
                    cause: Cause::Failover,
                    queue: None,
                    detail,
                });
                let _ = self
                    .triggers
                    .try_send(Trigger::new(Cause::Failover, now_ms()));
            }
            Err(error) => tracing::warn!(
                event = "primary_unreachable",
                "the sentinels name a new primary, but it does not answer yet: {error}"
            ),
        }
    }
}
