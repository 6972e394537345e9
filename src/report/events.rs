//! Everything the watcher notices, decides and does, as one event type.
//!
//! Each event writes its structured log line and its metric change in one
//! place, so that logs and metrics can never disagree about what happened.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::model::Cause;
use crate::report::metrics::{CauseLabels, Metrics, PolicyLabels, QueueLabels, RecoveryLabels};
use crate::restore::native::RecoverReport;

/// Redis settings that decide whether schedulers survive a restart.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Persistence {
    pub aof: bool,
    pub rdb: bool,
    pub appendfsync: String,
    pub noeviction: bool,
}

/// A Redis setting that puts schedulers at risk for as long as it lasts. Its
/// gauge carries it from one poll to the next; the log tells when it starts
/// and when it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Condition {
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

#[derive(Debug)]
pub enum Event<'a> {
    /// A standing condition started (`holds`) or ended.
    RedisCondition {
        condition: Condition,
        holds: bool,
    },
    /// A signal that schedulers may have been lost.
    Detected {
        cause: Cause,
        queue: Option<&'a str>,
        detail: String,
    },
    /// The rows and Redis differ after the debounce window; `acting` is false
    /// when automatic recovery is off.
    DriftConfirmed {
        trigger: Cause,
        missing: usize,
        mismatched: usize,
        acting: bool,
    },
    RecoveryStarted {
        trigger: Cause,
        attempt: u32,
    },
    RecoveryFinished {
        trigger: Cause,
        report: &'a RecoverReport,
        duration: Duration,
    },
    RecoveryFailed {
        trigger: Cause,
        /// The queues the failed cycle was looking after.
        queues: &'a [String],
        attempt: u32,
        error: String,
        /// The exponential ceiling for this retry…
        backoff: Duration,
        /// …and the jittered delay actually waited.
        retry_in: Duration,
    },
    /// A row that cannot become a scheduler: emitted when it first shows up
    /// and when its reason changes, not on every comparison.
    RowInvalid {
        queue: Option<&'a str>,
        id: &'a str,
        reason: &'a str,
    },
    /// Another sidecar holds the lease; this one re-checks afterwards.
    LeaseBusy {
        recheck_in: Duration,
    },
    LeaseHeld(bool),
    /// The lease was lost during a recovery, which stopped writing; the
    /// attempt counts as failed and is retried.
    LeaseLost {
        reason: &'a str,
    },
    CatchupFired {
        queue: &'a str,
        scheduler_id: &'a str,
        job_id: &'a str,
    },
    RedisUp(bool, Option<String>),
    RedisLoading(bool),
    SourceUp(bool, Option<String>, Option<Duration>),
    KeyspaceNotifications {
        active: bool,
        detail: String,
    },
    PersistenceRead(Option<Persistence>),
    Memory {
        used: u64,
        max: u64,
    },
    /// Every HTTP connection slot is taken: new connections wait for one.
    HttpConnectionsFull {
        limit: usize,
    },
    /// The HTTP listener could not take a connection.
    HttpAcceptFailed(String),
    /// The config file was read again (`trigger`: `SIGHUP` or `file
    /// changed`); `applied` keys took effect, `needs_restart` keys did not.
    ConfigReloaded {
        trigger: &'a str,
        applied: &'a [&'static str],
        needs_restart: &'a [&'static str],
        auto_recovery: bool,
    },
    /// The new config did not load; the running one stays in force.
    ConfigReloadFailed {
        trigger: &'a str,
        reason: String,
    },
}

/// What `/readyz` reports, kept by the same events that set the metrics.
#[derive(Debug, Default)]
pub struct Health {
    pub redis_up: AtomicBool,
    pub source_up: AtomicBool,
    /// Rows and Redis have been compared at least once.
    pub synced: AtomicBool,
}

impl Health {
    pub fn ready(&self) -> bool {
        self.redis_up.load(Ordering::Relaxed)
            && self.source_up.load(Ordering::Relaxed)
            && self.synced.load(Ordering::Relaxed)
    }
}

/// Emits events: one log line and the matching metric change each.
#[derive(Clone)]
pub struct Observer {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    latest: Arc<crate::report::latest::LatestStatus>,
}

impl Observer {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            metrics,
            health: Arc::default(),
            latest: Arc::default(),
        }
    }

    /// The status the API serves, kept by the poll and every comparison.
    pub(crate) fn latest_status(&self) -> &crate::report::latest::LatestStatus {
        &self.latest
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn health(&self) -> &Health {
        &self.health
    }

    pub fn emit(&self, event: Event<'_>) {
        let m = &self.metrics;
        match event {
            Event::RedisCondition { condition, holds } => {
                let name = condition.as_str();
                match (condition, holds) {
                    (Condition::NoPersistence, true) => tracing::warn!(
                        event = "redis_condition",
                        condition = name,
                        holds,
                        "Redis has neither AOF nor RDB: a restart loses every scheduler"
                    ),
                    (Condition::NoPersistence, false) => tracing::info!(
                        event = "redis_condition",
                        condition = name,
                        holds,
                        "Redis persists again (AOF or RDB is on)"
                    ),
                    (Condition::Eviction, true) => tracing::warn!(
                        event = "redis_condition",
                        condition = name,
                        holds,
                        "maxmemory-policy is not noeviction: Redis may evict schedulers"
                    ),
                    (Condition::Eviction, false) => tracing::info!(
                        event = "redis_condition",
                        condition = name,
                        holds,
                        "maxmemory-policy is noeviction again"
                    ),
                }
            }
            Event::Detected {
                cause,
                queue,
                detail,
            } => {
                // Every start compares; that alone is no sign of a loss.
                if cause == Cause::Startup {
                    tracing::info!(event = "detected", cause = cause.as_str(), "{detail}");
                } else {
                    tracing::warn!(
                        event = "detected",
                        cause = cause.as_str(),
                        queue = queue.unwrap_or(""),
                        "{detail}"
                    );
                }
                m.detections
                    .get_or_create(&CauseLabels {
                        cause: cause.as_str(),
                    })
                    .inc();
                let now = crate::clock::now_ms() as f64 / 1000.0;
                match cause {
                    Cause::Restart => {
                        m.redis_restarts.inc();
                        m.redis_last_restart.set(now as i64);
                    }
                    Cause::Flush => {
                        m.redis_flushes.inc();
                    }
                    Cause::Failover => {
                        m.redis_failovers.inc();
                    }
                    _ => {}
                }
            }
            Event::DriftConfirmed {
                trigger,
                missing,
                mismatched,
                acting,
            } => {
                tracing::warn!(
                    event = "drift_confirmed",
                    trigger = trigger.as_str(),
                    missing,
                    mismatched,
                    decision = if acting {
                        "recover"
                    } else {
                        "report only (recovery.auto = false)"
                    },
                    "schedulers differ from their rows"
                );
            }
            Event::RecoveryStarted { trigger, attempt } => {
                tracing::info!(
                    event = "recovery_started",
                    trigger = trigger.as_str(),
                    attempt,
                    "restoring schedulers"
                );
            }
            Event::RecoveryFinished {
                trigger,
                report,
                duration,
            } => {
                tracing::info!(
                    event = "recovery_finished",
                    trigger = trigger.as_str(),
                    created = report.created,
                    updated = report.updated,
                    unchanged = report.unchanged,
                    removed = report.removed,
                    invalid = report.invalid.len(),
                    duration_ms = duration.as_millis() as u64,
                    "schedulers restored"
                );
                let mut per_queue: std::collections::BTreeMap<&str, u64> = Default::default();
                for change in &report.changes {
                    if matches!(
                        change.action,
                        crate::restore::native::Action::Create
                            | crate::restore::native::Action::Update
                    ) {
                        *per_queue.entry(&change.queue).or_default() += 1;
                    }
                }
                for (queue, restored) in per_queue {
                    m.recoveries
                        .get_or_create(&RecoveryLabels {
                            queue: queue.to_owned(),
                            trigger: trigger.as_str(),
                            result: "success",
                        })
                        .inc();
                    m.schedulers_restored
                        .get_or_create(&QueueLabels {
                            queue: queue.to_owned(),
                        })
                        .inc_by(restored);
                }
                m.recovery_duration.observe(duration.as_secs_f64());
                m.last_recovery_success
                    .set((crate::clock::now_ms() / 1000) as i64);
                m.consecutive_failures.set(0);
                m.backoff_seconds.set(0.0);
            }
            Event::RecoveryFailed {
                trigger,
                queues,
                attempt,
                error,
                backoff,
                retry_in,
            } => {
                tracing::error!(
                    event = "recovery_failed",
                    trigger = trigger.as_str(),
                    attempt,
                    backoff_ms = backoff.as_millis() as u64,
                    retry_in_ms = retry_in.as_millis() as u64,
                    "{error}"
                );
                for queue in queues {
                    m.recoveries
                        .get_or_create(&RecoveryLabels {
                            queue: queue.clone(),
                            trigger: trigger.as_str(),
                            result: "failure",
                        })
                        .inc();
                }
                m.consecutive_failures.set(i64::from(attempt));
                m.backoff_seconds.set(retry_in.as_secs_f64());
            }
            Event::RowInvalid { queue, id, reason } => {
                tracing::warn!(
                    event = "row_invalid",
                    queue = queue.unwrap_or(""),
                    id,
                    "{reason}"
                );
            }
            Event::LeaseBusy { recheck_in } => {
                tracing::info!(
                    event = "lease_busy",
                    recheck_in_ms = recheck_in.as_millis() as u64,
                    "another bullmq-warden is recovering; re-checking afterwards"
                );
            }
            Event::LeaseHeld(held) => {
                tracing::debug!(event = "lease", held, "recovery lease");
                m.lease_held.set(i64::from(held));
            }
            Event::LeaseLost { reason } => {
                tracing::warn!(event = "lease_lost", "{reason}");
                m.lease_held.set(0);
            }
            Event::CatchupFired {
                queue,
                scheduler_id,
                job_id,
            } => {
                tracing::info!(
                    event = "catchup_fired",
                    queue,
                    scheduler_id,
                    job_id,
                    "enqueued one job for runs missed during the outage"
                );
                m.catchup_jobs
                    .get_or_create(&QueueLabels {
                        queue: queue.to_owned(),
                    })
                    .inc();
            }
            Event::RedisUp(up, error) => {
                if up {
                    tracing::info!(event = "redis_up", "Redis answers");
                } else {
                    tracing::error!(
                        event = "redis_down",
                        "{}",
                        error.unwrap_or_else(|| "Redis does not answer".into())
                    );
                }
                m.redis_up.set(i64::from(up));
                self.health.redis_up.store(up, Ordering::Relaxed);
            }
            Event::RedisLoading(loading) => {
                tracing::info!(
                    event = "redis_loading",
                    loading,
                    "Redis loading state changed"
                );
                m.redis_loading.set(i64::from(loading));
            }
            Event::SourceUp(up, error, took) => {
                if up {
                    tracing::debug!(event = "source_up", "source database answered");
                } else {
                    tracing::error!(
                        event = "source_down",
                        "{}",
                        error.unwrap_or_else(|| "source database does not answer".into())
                    );
                }
                m.source_up.set(i64::from(up));
                self.health.source_up.store(up, Ordering::Relaxed);
                if let Some(took) = took {
                    // Only a completed comparison reports its query time.
                    self.health.synced.store(true, Ordering::Relaxed);
                    m.source_query_duration.observe(took.as_secs_f64());
                }
            }
            Event::KeyspaceNotifications { active, detail } => {
                if active {
                    tracing::info!(event = "keyspace_notifications", active, "{detail}");
                } else {
                    tracing::warn!(event = "keyspace_notifications", active, "{detail}");
                }
                m.keyspace_notifications_active.set(i64::from(active));
            }
            Event::PersistenceRead(settings) => match settings {
                Some(p) => {
                    m.redis_config_readable.set(1);
                    m.redis_aof_enabled.set_known(i64::from(p.aof));
                    m.redis_rdb_save_configured.set_known(i64::from(p.rdb));
                    m.redis_noeviction.set_known(i64::from(p.noeviction));
                    m.redis_appendfsync.clear();
                    if !p.appendfsync.is_empty() {
                        m.redis_appendfsync
                            .get_or_create(&PolicyLabels {
                                policy: p.appendfsync,
                            })
                            .set(1);
                    }
                }
                None => {
                    m.redis_config_readable.set(0);
                    m.redis_aof_enabled.forget();
                    m.redis_rdb_save_configured.forget();
                    m.redis_noeviction.forget();
                    m.redis_appendfsync.clear();
                }
            },
            Event::ConfigReloaded {
                trigger,
                applied,
                needs_restart,
                auto_recovery,
            } => {
                let applied_keys = applied.join(", ");
                if needs_restart.is_empty() {
                    tracing::info!(
                        event = "config_reloaded",
                        trigger,
                        applied = applied_keys.as_str(),
                        "config reloaded"
                    );
                } else {
                    tracing::warn!(
                        event = "config_reloaded",
                        trigger,
                        applied = applied_keys.as_str(),
                        needs_restart = needs_restart.join(", ").as_str(),
                        "config reloaded; the keys in needs_restart keep their running values until a restart"
                    );
                }
                m.auto_recovery_enabled.set(i64::from(auto_recovery));
                m.config_reload_successful.set(1);
            }
            Event::ConfigReloadFailed { trigger, reason } => {
                tracing::error!(
                    event = "config_reload_failed",
                    trigger,
                    "{reason}; the running config stays in force"
                );
                m.config_reload_successful.set(0);
            }
            Event::Memory { used, max } => {
                m.redis_used_memory
                    .set(i64::try_from(used).unwrap_or(i64::MAX));
                m.redis_maxmemory
                    .set(i64::try_from(max).unwrap_or(i64::MAX));
            }
            Event::HttpConnectionsFull { limit } => {
                tracing::warn!(
                    event = "http_connections_full",
                    limit,
                    "all http.max_connections are open; new connections wait until one closes"
                );
            }
            Event::HttpAcceptFailed(error) => {
                tracing::error!(event = "http_accept_failed", "{error}");
            }
        }
    }
}
