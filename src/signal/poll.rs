//! The periodic poll: INFO and every queue's counts in one round trip.
//!
//! It catches what keyspace notifications cannot: restarts (a new run_id or a
//! falling uptime), failovers (role or replication id), FLUSHALL/FLUSHDB (no
//! per-key event; a scheduler set drops to zero), a delayed set emptied under
//! schedulers that need it (watched here rather than by notification: every
//! delayed job of every queue would be an event) and a lost connection. It
//! also keeps the metrics current, so a scrape costs the same for 1 queue or
//! 1,000.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use std::sync::Arc;

use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use super::Context;
use super::RestoredCounts;
use crate::clock::now_ms;
use crate::model::Cause;
use crate::report::events::{
    Condition, Persistence, PersistenceRead, RedisCondition, RedisDown, RedisLoading, RedisMemory,
    RedisUp,
};
use crate::store::settings::{parse_info, RedisSettings};
use crate::store::{BullmqStore, Polled};

/// Who Redis is: a change means a restart or a failover.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Identity {
    run_id: String,
    uptime_s: u64,
    role: String,
    replid: String,
}

impl Identity {
    fn from_info(info: &HashMap<String, String>) -> Self {
        let text = |k: &str| info.get(k).cloned().unwrap_or_default();
        Self {
            run_id: text("run_id"),
            uptime_s: info
                .get("uptime_in_seconds")
                .and_then(|v| v.parse().ok())
                .unwrap_or_default(),
            role: text("role"),
            replid: text("master_replid"),
        }
    }
}

/// Polls in a row that must see a delayed set empty beside schedulers that
/// need it before that is reported. The two counts are read one after the
/// other, not atomically, so a poll that reads them while a queue is being
/// filled (a recovery, the application adding schedulers) can see the
/// scheduler but not yet its job; a real loss is still there at the next poll.
const STRANDED_AFTER_POLLS: u32 = 2;

pub(crate) struct Poller {
    pub(crate) ctx: Context,
    pub(crate) restored: RestoredCounts,
    /// Woken when Redis may have changed under the watcher (the keyspace
    /// subscription dropped, a flush was reported): the poll looks at once.
    pub(crate) poll_now: Arc<Notify>,
    pub(crate) loading: watch::Sender<bool>,
    pub(crate) interval: Duration,
    /// How often persistence settings are read again.
    pub(crate) settings_interval: Duration,
}

/// What earlier polls saw, to compare the next one with.
#[derive(Default)]
struct Seen {
    /// The server the identity below belongs to; Sentinel may move us.
    server: String,
    identity: Option<Identity>,
    repeat_counts: BTreeMap<String, u64>,
    /// Per queue, how many polls in a row saw its delayed set empty beside
    /// schedulers that need it.
    stranded_polls: BTreeMap<String, u32>,
    /// When the last poll succeeded (epoch ms): where an outage begins.
    last_ok_ms: Option<u64>,
    down: bool,
    settings_read_at: Option<Instant>,
    /// Standing conditions of the server's settings, as last read.
    conditions: Vec<Condition>,
    /// The poll's own connection to a single server; `None` until dialled
    /// (again) and for a cluster.
    connection: Option<redis::aio::MultiplexedConnection>,
}

impl Seen {
    /// Another server (Sentinel moved the primary): its run_id is not a
    /// restart, nor its counts a flush; the follower reports the failover.
    fn start_over(&mut self, server: &str) {
        self.server = server.to_owned();
        self.identity = None;
        self.repeat_counts.clear();
        self.stranded_polls.clear();
        self.connection = None;
        self.conditions.clear();
    }
}

impl Poller {
    /// Polls every `interval`, and ten times as often while Redis is away, so
    /// that a restarted server is seen within a fraction of the interval.
    pub(crate) async fn run(self, shutdown: CancellationToken) {
        let mut seen = Seen::default();
        loop {
            let started = tokio::time::Instant::now();
            self.poll_once(&mut seen).await;
            let pause = if seen.down {
                (self.interval / 10).max(Duration::from_millis(20))
            } else {
                self.interval
            };
            tokio::select! {
                _ = tokio::time::sleep_until(started + pause) => {}
                _ = self.poll_now.notified() => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    async fn poll_once(&self, seen: &mut Seen) {
        let queues: Vec<String> = self
            .ctx
            .queues
            .read()
            .map(|q| q.clone())
            .unwrap_or_default();
        let store = self.ctx.store.get();
        if store.redacted_url() != seen.server {
            seen.start_over(store.redacted_url());
        }
        let polled = match self.poll_redis(seen, &store, &queues).await {
            Ok(polled) => polled,
            Err(error) => return self.went_down(seen, error),
        };
        let info = parse_info(&polled.info);
        let since_ms = seen.last_ok_ms.unwrap_or_else(now_ms);
        self.came_back_up(seen, since_ms);
        let restarted = self.observe_identity(seen, Identity::from_info(&info), since_ms);
        self.observe_loading(&info);
        self.observe_counts(seen, &polled, restarted, since_ms);
        self.observe_memory(&info);
        let settings_due = seen
            .settings_read_at
            .is_none_or(|at| at.elapsed() >= self.settings_interval);
        if restarted || settings_due {
            self.read_settings(seen).await;
        }
        seen.last_ok_ms = Some(now_ms());
    }

    /// INFO and every queue's counts in one round trip, on the poll's own
    /// connection where there is one; `Err` says why Redis did not answer.
    async fn poll_redis(
        &self,
        seen: &mut Seen,
        store: &BullmqStore,
        queues: &[String],
    ) -> Result<Polled, String> {
        let deadline = self.interval.max(Duration::from_secs(2));
        let polled = tokio::time::timeout(deadline, async {
            if seen.connection.is_none() {
                seen.connection = store.dedicated_connection(deadline).await?;
            }
            match seen.connection.as_mut() {
                Some(connection) => store.poll(connection, queues).await,
                None => store.poll(&mut store.raw(), queues).await,
            }
        })
        .await;
        match polled {
            Ok(Ok(result)) => Ok(result),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err(format!(
                "Redis at {} did not answer the poll in time",
                store.redacted_url()
            )),
        }
    }

    fn went_down(&self, seen: &mut Seen, error: String) {
        seen.connection = None;
        if !seen.down {
            seen.down = true;
            self.ctx.observer.emit(RedisDown { error });
        }
    }

    /// The first good poll after `went_down`: whatever happened while Redis
    /// was away, since `since_ms`, is looked at.
    fn came_back_up(&self, seen: &mut Seen, since_ms: u64) {
        if seen.down {
            seen.down = false;
            self.ctx.observer.emit(RedisUp);
            self.ctx.signals.raise(
                Cause::Reconnect,
                &[],
                since_ms,
                "connection to Redis restored".into(),
            );
        }
    }

    /// Returns whether Redis restarted since the last poll. A new `run_id`
    /// whose server started after the last good poll is a restart; one that
    /// was up before is another server answering: a failover.
    fn observe_identity(&self, seen: &mut Seen, now: Identity, since_ms: u64) -> bool {
        let Some(before) = seen.identity.replace(now.clone()) else {
            return false;
        };
        let seconds_since_last_poll = now_ms().saturating_sub(since_ms) / 1000 + 1;
        let new_server = now.run_id != before.run_id;
        let started_since = now.uptime_s <= seconds_since_last_poll;
        let restarted = if new_server {
            started_since
        } else {
            now.uptime_s < before.uptime_s
        };
        if restarted {
            self.ctx.signals.raise(
                Cause::Restart,
                &[],
                since_ms,
                format!(
                    "Redis restarted (run_id {} → {}, uptime {}s → {}s)",
                    short(&before.run_id),
                    short(&now.run_id),
                    before.uptime_s,
                    now.uptime_s
                ),
            );
            return true;
        }
        if new_server || now.role != before.role || now.replid != before.replid {
            self.ctx.signals.raise(
                Cause::Failover,
                &[],
                since_ms,
                format!(
                    "another Redis answers: run_id {} → {}, role {} → {}, replication id {} → {}",
                    short(&before.run_id),
                    short(&now.run_id),
                    before.role,
                    now.role,
                    short(&before.replid),
                    short(&now.replid)
                ),
            );
        }
        false
    }

    fn observe_loading(&self, info: &HashMap<String, String>) {
        let loading = info.get("loading").is_some_and(|v| v == "1");
        if *self.loading.borrow() != loading {
            self.ctx.observer.emit(RedisLoading { loading });
            let _ = self.loading.send(loading);
        }
    }

    fn observe_memory(&self, info: &HashMap<String, String>) {
        let number = |k: &str| {
            info.get(k)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or_default()
        };
        self.ctx.observer.emit(RedisMemory {
            used: number("used_memory"),
            max: number("maxmemory"),
        });
    }

    /// Finds sets emptied without a restart: a scheduler set, or the
    /// delayed set that holds the schedulers' next jobs (a restart empties
    /// both and is reported as such). Each is reported once.
    fn observe_counts(&self, seen: &mut Seen, polled: &Polled, restarted: bool, since_ms: u64) {
        let mut emptied = Vec::new();
        let mut stranded = Vec::new();
        self.ctx
            .observer
            .latest_status()
            .record_poll(&polled.counts);
        let restored = self
            .restored
            .lock()
            .map(|mut r| std::mem::take(&mut *r))
            .unwrap_or_default();
        for (queue, count) in &polled.counts {
            self.ctx
                .observer
                .metrics()
                .queues
                .set_job_counts(queue, count);
            let polled_before = seen.repeat_counts.insert(queue.clone(), count.repeatable);
            let before = polled_before.max(restored.get(queue).copied());
            if before.is_some_and(|b| b > 0) && count.repeatable == 0 {
                emptied.push(queue.clone());
            }
            let waiting = polled.runs_far_ahead.get(queue).copied().unwrap_or(0);
            if count.delayed == 0 && waiting > 0 {
                let polls = seen.stranded_polls.entry(queue.clone()).or_default();
                *polls += 1;
                if *polls == STRANDED_AFTER_POLLS {
                    stranded.push((queue.clone(), waiting));
                }
            } else {
                seen.stranded_polls.remove(queue);
            }
        }
        if restarted {
            return;
        }
        self.report_flush(&emptied, &stranded, since_ms);
    }

    /// One flush, however many queues it emptied: FLUSHALL is one event, and
    /// `redis_flushes_total` counts events. Each queue still gets its trigger.
    fn report_flush(&self, emptied: &[String], stranded: &[(String, u64)], since_ms: u64) {
        let mut details = Vec::new();
        if !emptied.is_empty() {
            details.push(format!(
                "the scheduler set of {} is empty (FLUSHALL, FLUSHDB or DEL)",
                emptied.join(", ")
            ));
        }
        for (queue, waiting) in stranded {
            details.push(format!(
                "the delayed set of {queue} is empty, yet {waiting} schedulers wait for runs over a minute away: their next jobs were deleted or evicted"
            ));
        }
        let queues: Vec<&str> = emptied
            .iter()
            .chain(stranded.iter().map(|(queue, _)| queue))
            .map(String::as_str)
            .collect();
        if queues.is_empty() {
            return;
        }
        self.ctx
            .signals
            .raise(Cause::Flush, &queues, since_ms, details.join("; "));
    }

    async fn read_settings(&self, seen: &mut Seen) {
        seen.settings_read_at = Some(Instant::now());
        let Ok(settings) = RedisSettings::read(&self.ctx.store.get()).await else {
            return;
        };
        let persistence = settings.config.map(|config| {
            let get = |k: &str| config.get(k).cloned().unwrap_or_default();
            Persistence {
                aof: get("appendonly") == "yes",
                rdb: !get("save").trim().is_empty(),
                appendfsync: get("appendfsync"),
                noeviction: get("maxmemory-policy") == "noeviction",
            }
        });
        // Refused CONFIG leaves the conditions unknown: kept as they were.
        if let Some(settings) = &persistence {
            let now = Condition::of(settings);
            for (condition, holds) in changes(&seen.conditions, &now) {
                self.ctx.observer.emit(RedisCondition { condition, holds });
            }
            seen.conditions = now;
        }
        self.ctx.observer.emit(PersistenceRead(persistence));
    }
}

/// The conditions that started (`true`) or ended (`false`) between two reads.
fn changes(before: &[Condition], now: &[Condition]) -> Vec<(Condition, bool)> {
    let started = now
        .iter()
        .filter(|c| !before.contains(c))
        .map(|c| (*c, true));
    let ended = before
        .iter()
        .filter(|c| !now.contains(c))
        .map(|c| (*c, false));
    started.chain(ended).collect()
}

fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}
