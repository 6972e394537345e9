//! With Sentinel: follows the primary. When the sentinels name another
//! primary, the watcher reconnects there and compares rows and Redis at once —
//! a replica promoted without the schedulers is a loss like any other.

use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::Context;
use crate::config::RedisConfig;
use crate::model::Cause;
use crate::report::events::PrimaryUnreachable;
use crate::store::target;
use crate::store::BullmqStore;

pub(crate) struct PrimaryFollower {
    pub(crate) ctx: Context,
    pub(crate) config: RedisConfig,
    pub(crate) moved: watch::Sender<u64>,
    pub(crate) interval: Duration,
}

impl PrimaryFollower {
    pub(crate) async fn run(self, shutdown: CancellationToken) {
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
        let current = self.ctx.store.get();
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
                self.ctx.store.replace(store);
                self.moved.send_modify(|generation| *generation += 1);
                self.ctx.signals.raise_now(Cause::Failover, None, detail);
            }
            Err(error) => self.ctx.observer.emit(PrimaryUnreachable {
                error: error.to_string(),
            }),
        }
    }
}
