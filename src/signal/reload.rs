//! Config reload without a restart: on SIGHUP, and when the config file's
//! content changes (a mounted ConfigMap is updated by a symlink swap, which
//! file-change notifications on the file itself miss, so the content is
//! compared every few seconds).
//!
//! Keys that only decide what the next comparison or recovery does take
//! effect at once; keys that shaped connections, listeners or tasks at start
//! keep their running values, and the reload says which of them changed.

use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio_util::sync::CancellationToken;

use super::Signals;
use crate::clock::now_ms;
use crate::config::{Config, ConfigOrigin};
use crate::model::Cause;
use crate::model::Trigger;
use crate::report::events::{ConfigReloadFailed, ConfigReloaded, Observer};
use crate::warden::Warden;

/// How often the file's content is compared with the last one read.
const FILE_CHECK: Duration = Duration::from_secs(2);

/// Calls `$each!(section, key)` for every key a reload puts in force.
macro_rules! live_keys {
    ($each:ident) => {
        $each!(source, query);
        $each!(source, queue);
        $each!(source, scheduler_id);
        $each!(source, max_value_bytes);
        $each!(recovery, auto);
        $each!(recovery, prune_orphans);
        $each!(recovery, concurrency);
        $each!(recovery, catchup);
        $each!(recovery, catchup_window);
        $each!(recovery, backoff_min);
        $each!(recovery, backoff_max);
        $each!(recovery, lease_wait);
        $each!(recovery, allow_unverified_bullmq);
        $each!(recovery, snapshot_max_age);
        $each!(watch, debounce_quiet);
        $each!(watch, debounce_max);
    };
}

/// Keys read once at start (connections, listener, webhook client, task
/// intervals); a change is reported and waits for a restart.
macro_rules! restart_keys {
    ($each:ident) => {
        $each!(redis, url);
        $each!(redis, prefix);
        $each!(redis, sentinels);
        $each!(redis, master_name);
        $each!(redis, cluster_nodes);
        $each!(source, connect_timeout);
        $each!(source, snapshot_file);
        $each!(source, url);
        $each!(source, sqlite_seed);
        $each!(source, notify_channel);
        $each!(source, change_query);
        $each!(source, change_interval);
        $each!(source, queues);
        $each!(recovery, strategy);
        $each!(recovery, webhook_url);
        $each!(recovery, webhook_headers);
        $each!(recovery, webhook_token_file);
        $each!(recovery, webhook_timeout);
        $each!(recovery, lease_ttl);
        $each!(watch, info_interval);
        $each!(watch, drift_interval);
        $each!(watch, manage_keyspace_config);
    };
}

/// What a reload changes: the config to put in force (the running one with
/// the new values of the live keys) and the names of the keys that differ.
pub(crate) struct Changes {
    pub(crate) config: Config,
    pub(crate) applied: Vec<&'static str>,
    pub(crate) needs_restart: Vec<&'static str>,
}

/// Compares the running config with a newly loaded one. Values are compared
/// through their `Debug` text, which every config type has.
pub(crate) fn changes(running: &Config, loaded: &Config) -> Changes {
    let mut config = running.clone();
    let mut applied = Vec::new();
    let mut needs_restart = Vec::new();
    macro_rules! differs {
        ($section:ident, $key:ident) => {
            format!("{:?}", running.$section.$key) != format!("{:?}", loaded.$section.$key)
        };
    }
    macro_rules! apply {
        ($section:ident, $key:ident) => {
            if differs!($section, $key) {
                config.$section.$key = loaded.$section.$key.clone();
                applied.push(concat!(stringify!($section), ".", stringify!($key)));
            }
        };
    }
    macro_rules! report {
        ($section:ident, $key:ident) => {
            if differs!($section, $key) {
                needs_restart.push(concat!(stringify!($section), ".", stringify!($key)));
            }
        };
    }
    live_keys!(apply);
    restart_keys!(report);
    // Keys not listed above (the [http] section among them) are read at start.
    if format!("{:?}", running.http) != format!("{:?}", loaded.http) {
        needs_restart.push("http");
    }
    Changes {
        config,
        applied,
        needs_restart,
    }
}

/// Takes SIGHUP over from its default (ending the process) as early as
/// possible; a SIGHUP before the reloader runs is handled when it starts.
pub(crate) fn catch_hangup() -> std::io::Result<Signal> {
    signal(SignalKind::hangup())
}

pub(crate) struct Reloader {
    /// The file, the environment and the command line's overrides, read
    /// again as at start. Without a file, SIGHUP re-reads the defaults and
    /// the environment, which cannot have changed.
    pub(crate) origin: ConfigOrigin,
    pub(crate) warden: Arc<Warden>,
    pub(crate) observer: Observer,
    /// A comparison right after a reload puts new source or recovery keys
    /// to work without waiting for the next drift check.
    pub(crate) signals: Signals,
}

impl Reloader {
    pub(crate) async fn run(self, hangup: std::io::Result<Signal>, shutdown: CancellationToken) {
        let mut hangup = match hangup {
            Ok(hangup) => Some(hangup),
            Err(error) => {
                self.observer.emit(ConfigReloadFailed {
                    trigger: "SIGHUP",
                    reason: format!("cannot handle SIGHUP: {error}"),
                });
                None
            }
        };
        let mut last = self.read_file();
        let mut ticker = tokio::time::interval(FILE_CHECK);
        loop {
            let trigger = tokio::select! {
                Some(()) = async { hangup.as_mut()?.recv().await } => "SIGHUP",
                _ = ticker.tick() => {
                    let now = self.read_file();
                    if now == last {
                        continue;
                    }
                    last = now;
                    "file changed"
                }
                _ = shutdown.cancelled() => return,
            };
            self.reload(trigger);
        }
    }

    /// The file's bytes (or why it cannot be read), to notice any change.
    fn read_file(&self) -> Option<Result<Vec<u8>, String>> {
        let path = self.origin.path.as_ref()?;
        Some(std::fs::read(path).map_err(|e| e.to_string()))
    }

    fn reload(&self, trigger: &'static str) {
        let loaded = match self.origin.load() {
            Ok(loaded) => loaded,
            Err(error) => {
                return self.observer.emit(ConfigReloadFailed {
                    trigger,
                    reason: error.to_string(),
                })
            }
        };
        let changes = changes(&self.warden.config(), &loaded);
        let auto_recovery = changes.config.recovery.auto;
        if !changes.applied.is_empty() {
            self.warden.replace_config(changes.config);
            self.signals.nudge(Trigger::new(Cause::Drift, now_ms()));
        }
        self.observer.emit(ConfigReloaded {
            trigger,
            applied: &changes.applied,
            needs_restart: &changes.needs_restart,
            auto_recovery,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_keys_are_applied_and_the_others_wait_for_a_restart() {
        let running = Config::default();
        let mut loaded = Config::default();
        loaded.recovery.prune_orphans = true;
        loaded.source.queue = "mail".into();
        loaded.redis.url = "redis://10.0.0.1:6379/0".into();
        loaded.http.listen = "0.0.0.0:9464".into();
        let changes = changes(&running, &loaded);
        assert_eq!(changes.applied, ["source.queue", "recovery.prune_orphans"]);
        assert_eq!(changes.needs_restart, ["redis.url", "http"]);
        assert!(changes.config.recovery.prune_orphans);
        assert_eq!(changes.config.source.queue, "mail");
        assert_eq!(changes.config.redis.url, running.redis.url);
        assert_eq!(changes.config.http.listen, running.http.listen);
    }
}
