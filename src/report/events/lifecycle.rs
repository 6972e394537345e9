//! The watcher's own life: start, stop, and the config it runs on.

use super::LogEvent;

/// No config file was named: the built-in defaults apply.
pub(crate) struct ConfigDefaults<'a> {
    pub(crate) redis_url: &'a str,
    pub(crate) source_url: &'a str,
    pub(crate) path_variable: &'a str,
}

impl LogEvent for ConfigDefaults<'_> {
    fn log(self) {
        tracing::warn!(
            event = "config_defaults",
            "no config file: built-in defaults apply (Redis {}, source {}) with BULLMQ_WARDEN__* \
             overrides; name a file with --config FILE or {}",
            self.redis_url,
            self.source_url,
            self.path_variable,
        );
    }
}

/// SIGTERM or Ctrl-C.
pub(crate) struct ShutdownRequested;

impl LogEvent for ShutdownRequested {
    fn log(self) {
        tracing::info!(event = "signal", "shutdown requested");
    }
}

pub(crate) struct WatchStarted<'a> {
    pub(crate) redis: &'a str,
    pub(crate) source: &'a str,
}

impl LogEvent for WatchStarted<'_> {
    fn log(self) {
        tracing::info!(
            event = "watch_started",
            redis = self.redis,
            source = self.source,
            "watching"
        );
    }
}

pub(crate) struct WatchStopping;

impl LogEvent for WatchStopping {
    fn log(self) {
        tracing::info!(
            event = "watch_stopping",
            "stopping: no new triggers are taken"
        );
    }
}

/// A recovery was still running when the shutdown grace period ended.
pub(crate) struct RecoveryAbandoned;

impl LogEvent for RecoveryAbandoned {
    fn log(self) {
        tracing::warn!(
            event = "recovery_abandoned",
            "a recovery did not finish in time; its lease expires by itself"
        );
    }
}

pub(crate) struct WatchStopped;

impl LogEvent for WatchStopped {
    fn log(self) {
        tracing::info!(event = "watch_stopped", "stopped");
    }
}
