//! What the watcher sees of the Redis server: whether it answers, its
//! restarts, flushes and failovers, and the settings schedulers depend on.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::{register, Gauges, OptionalGauge};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct PolicyLabels {
    pub(crate) policy: String,
}

pub(crate) struct RedisMetrics {
    pub(crate) up: Gauge,
    pub(crate) restarts: Counter,
    pub(crate) flushes: Counter,
    pub(crate) failovers: Counter,
    pub(crate) last_restart: Gauge,
    pub(crate) loading: Gauge,
    pub(crate) aof_enabled: OptionalGauge,
    pub(crate) rdb_save_configured: OptionalGauge,
    pub(crate) appendfsync: Gauges<PolicyLabels>,
    pub(crate) noeviction: OptionalGauge,
    pub(crate) config_readable: Gauge,
    pub(crate) used_memory: Gauge,
    pub(crate) maxmemory: Gauge,
}

impl RedisMetrics {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let mut optional = |name: &str, help: &str| {
            OptionalGauge(register(registry, name, help, Family::default()))
        };
        let aof_enabled = optional(
            "bullmq_warden_redis_aof_enabled",
            "Whether appendonly is on (absent while CONFIG is refused)",
        );
        let rdb_save_configured = optional(
            "bullmq_warden_redis_rdb_save_configured",
            "Whether RDB snapshots are configured (absent while CONFIG is refused)",
        );
        let noeviction = optional(
            "bullmq_warden_redis_maxmemory_policy_noeviction",
            "Whether maxmemory-policy is noeviction, as BullMQ requires (absent while CONFIG is refused)",
        );
        let mut gauge = |name: &str, help: &str| register(registry, name, help, Gauge::default());
        let up = gauge(
            "bullmq_warden_redis_up",
            "Whether Redis answers the sidecar",
        );
        let last_restart = gauge(
            "bullmq_warden_redis_last_restart_timestamp_seconds",
            "When the last Redis restart was seen",
        );
        let loading = gauge(
            "bullmq_warden_redis_loading",
            "Whether Redis is loading its dataset",
        );
        let config_readable = gauge(
            "bullmq_warden_redis_config_readable",
            "Whether CONFIG GET is allowed (persistence gauges are unknown otherwise)",
        );
        let used_memory = gauge("bullmq_warden_redis_used_memory_bytes", "Redis used_memory");
        let maxmemory = gauge(
            "bullmq_warden_redis_maxmemory_bytes",
            "Redis maxmemory (0: no limit)",
        );
        let mut counter =
            |name: &str, help: &str| register(registry, name, help, Counter::default());
        Self {
            restarts: counter(
                "bullmq_warden_redis_restarts",
                "Redis restarts seen (new run_id or falling uptime)",
            ),
            flushes: counter(
                "bullmq_warden_redis_flushes",
                "Scheduler sets emptied without a restart (FLUSHALL, FLUSHDB, DEL)",
            ),
            failovers: counter(
                "bullmq_warden_redis_failovers",
                "Role or replication id changes seen",
            ),
            appendfsync: register(
                registry,
                "bullmq_warden_redis_appendfsync",
                "The appendfsync policy in force (1 for the current one)",
                Gauges::default(),
            ),
            up,
            last_restart,
            loading,
            aof_enabled,
            rdb_save_configured,
            noeviction,
            config_readable,
            used_memory,
            maxmemory,
        }
    }
}
