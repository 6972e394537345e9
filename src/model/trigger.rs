//! Why the watcher looks at the schedulers: the causes a signal can name.

/// Why the watcher looked (again) at the schedulers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Cause {
    /// A Redis restart: new run_id, or uptime going backwards.
    Restart,
    /// A scheduler set, or the delayed set its next jobs wait in, emptied
    /// without a restart (FLUSHALL, FLUSHDB, DEL, eviction).
    Flush,
    /// A role or replication id change.
    Failover,
    /// A keyspace notification about a scheduler key.
    Keyspace,
    /// The connection to Redis came back; notifications may have been missed.
    Reconnect,
    /// The source database's rows changed (a notification, the change
    /// probe's answer, SQLite's data version), or the watch on them came
    /// back after a lost connection.
    SourceChange,
    /// The watcher started.
    Startup,
    /// The periodic full comparison of rows and Redis.
    Drift,
    /// An operator asked (HTTP API).
    Manual,
}

impl Cause {
    pub(crate) const ALL: [Cause; 9] = [
        Cause::Restart,
        Cause::Flush,
        Cause::Failover,
        Cause::Keyspace,
        Cause::Reconnect,
        Cause::SourceChange,
        Cause::Startup,
        Cause::Drift,
        Cause::Manual,
    ];

    /// The causes a detection can have: all but `Manual`, which only
    /// triggers recoveries (an operator's request is no sign of a loss).
    pub(crate) fn detected() -> impl Iterator<Item = Cause> {
        Cause::ALL.into_iter().filter(|c| *c != Cause::Manual)
    }

    /// Whether a signal of this cause always shows a loss in Redis itself.
    /// A keyspace event does only for some keys and events (the keyspace
    /// watcher says which); the others are requests to look.
    pub(crate) fn shows_loss(self) -> bool {
        matches!(self, Cause::Restart | Cause::Flush | Cause::Failover)
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Cause::Restart => "restart",
            Cause::Flush => "flush",
            Cause::Failover => "failover",
            Cause::Keyspace => "keyspace",
            Cause::Reconnect => "reconnect",
            Cause::SourceChange => "source_change",
            Cause::Startup => "startup",
            Cause::Drift => "drift",
            Cause::Manual => "manual",
        }
    }
}

/// A signal that the schedulers may need a look.
#[derive(Debug, Clone)]
pub(crate) struct Trigger {
    pub(crate) cause: Cause,
    /// Best estimate of when a loss began (epoch ms): the last moment the
    /// watcher saw Redis intact. Used to find runs missed during the outage.
    pub(crate) since_ms: u64,
    /// The queue the signal is about, when it names one.
    pub(crate) queue: Option<String>,
    /// Redis itself shows a loss: a restart, a failover, an emptied set, a
    /// deleted scheduler set, a broken scheduler. Nothing an application
    /// does while changing its schedulers looks like this (unlike a removed
    /// member of the scheduler set), so the repair need not wait.
    pub(crate) shows_loss: bool,
}

impl Trigger {
    pub(crate) fn new(cause: Cause, since_ms: u64) -> Self {
        Self {
            cause,
            since_ms,
            queue: None,
            shows_loss: cause.shows_loss(),
        }
    }

    /// The same signal about `queue`.
    pub(crate) fn about(self, queue: &str) -> Self {
        Self {
            queue: Some(queue.to_owned()),
            ..self
        }
    }
}
