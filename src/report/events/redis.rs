//! The Redis server: whether it answers, loads, and keeps what BullMQ needs.

use std::sync::atomic::Ordering;

use super::{InternalEvent, Observer};
use crate::report::metrics::redis::PolicyLabels;

/// Redis settings that decide whether schedulers survive a restart.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Persistence {
    pub(crate) aof: bool,
    pub(crate) rdb: bool,
    pub(crate) appendfsync: String,
    pub(crate) noeviction: bool,
}

/// A Redis setting that puts schedulers at risk for as long as it lasts. Its
/// gauge carries it from one poll to the next; the log tells when it starts
/// and when it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Condition {
    /// Neither AOF nor RDB snapshots: a restart loses every scheduler.
    NoPersistence,
    /// maxmemory-policy is not noeviction: Redis may evict schedulers.
    Eviction,
}

impl Condition {
    /// The conditions that hold under `settings`.
    pub(crate) fn of(settings: &Persistence) -> Vec<Condition> {
        let mut holding = Vec::new();
        if !settings.aof && !settings.rdb {
            holding.push(Condition::NoPersistence);
        }
        if !settings.noeviction {
            holding.push(Condition::Eviction);
        }
        holding
    }

    fn as_str(self) -> &'static str {
        match self {
            Condition::NoPersistence => "no_persistence",
            Condition::Eviction => "eviction_policy",
        }
    }
}

/// A standing condition started (`holds`) or ended.
pub(crate) struct RedisCondition {
    pub(crate) condition: Condition,
    pub(crate) holds: bool,
}

impl InternalEvent for RedisCondition {
    fn emit(self, _: &Observer) {
        let (condition, holds) = (self.condition.as_str(), self.holds);
        match (self.condition, holds) {
            (Condition::NoPersistence, true) => tracing::warn!(
                event = "redis_condition",
                condition,
                holds,
                "Redis has neither AOF nor RDB: a restart loses every scheduler"
            ),
            (Condition::NoPersistence, false) => tracing::info!(
                event = "redis_condition",
                condition,
                holds,
                "Redis persists again (AOF or RDB is on)"
            ),
            (Condition::Eviction, true) => tracing::warn!(
                event = "redis_condition",
                condition,
                holds,
                "maxmemory-policy is not noeviction: Redis may evict schedulers"
            ),
            (Condition::Eviction, false) => tracing::info!(
                event = "redis_condition",
                condition,
                holds,
                "maxmemory-policy is noeviction again"
            ),
        }
    }
}

/// Redis answers (again).
pub(crate) struct RedisUp;

impl InternalEvent for RedisUp {
    fn emit(self, observer: &Observer) {
        tracing::info!(event = "redis_up", "Redis answers");
        set_up(observer, true);
    }
}

/// Redis does not answer.
pub(crate) struct RedisDown {
    pub(crate) error: String,
}

impl InternalEvent for RedisDown {
    fn emit(self, observer: &Observer) {
        tracing::error!(event = "redis_down", "{}", self.error);
        set_up(observer, false);
    }
}

fn set_up(observer: &Observer, up: bool) {
    observer.metrics().redis.up.set(i64::from(up));
    observer.health().redis_up.store(up, Ordering::Relaxed);
}

/// Redis started or finished loading its dataset.
pub(crate) struct RedisLoading {
    pub(crate) loading: bool,
}

impl InternalEvent for RedisLoading {
    fn emit(self, observer: &Observer) {
        let loading = self.loading;
        tracing::info!(
            event = "redis_loading",
            loading,
            "Redis loading state changed"
        );
        observer.metrics().redis.loading.set(i64::from(loading));
    }
}

/// The persistence settings as read; `None` while CONFIG is refused.
pub(crate) struct PersistenceRead(pub Option<Persistence>);

impl InternalEvent for PersistenceRead {
    fn emit(self, observer: &Observer) {
        let m = &observer.metrics().redis;
        m.appendfsync.clear();
        let Some(p) = self.0 else {
            m.config_readable.set(0);
            m.aof_enabled.forget();
            m.rdb_save_configured.forget();
            m.noeviction.forget();
            return;
        };
        m.config_readable.set(1);
        m.aof_enabled.set_known(i64::from(p.aof));
        m.rdb_save_configured.set_known(i64::from(p.rdb));
        m.noeviction.set_known(i64::from(p.noeviction));
        if !p.appendfsync.is_empty() {
            m.appendfsync
                .get_or_create(&PolicyLabels {
                    policy: p.appendfsync,
                })
                .set(1);
        }
    }
}

/// Redis's memory use, from each poll's INFO.
pub(crate) struct RedisMemory {
    pub(crate) used: u64,
    pub(crate) max: u64,
}

impl InternalEvent for RedisMemory {
    fn emit(self, observer: &Observer) {
        let m = &observer.metrics().redis;
        m.used_memory
            .set(i64::try_from(self.used).unwrap_or(i64::MAX));
        m.maxmemory.set(i64::try_from(self.max).unwrap_or(i64::MAX));
    }
}

/// The sentinels name a new primary that does not answer yet.
pub(crate) struct PrimaryUnreachable {
    pub(crate) error: String,
}

impl InternalEvent for PrimaryUnreachable {
    fn emit(self, _: &Observer) {
        tracing::warn!(
            event = "primary_unreachable",
            "the sentinels name a new primary, but it does not answer yet: {}",
            self.error
        );
    }
}
