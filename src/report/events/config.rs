//! Reloads of the config file.

use super::{InternalEvent, Observer};

/// The config file was read again (`trigger`: `SIGHUP` or `file changed`);
/// `applied` keys took effect, `needs_restart` keys did not.
pub(crate) struct ConfigReloaded<'a> {
    pub(crate) trigger: &'a str,
    pub(crate) applied: &'a [&'static str],
    pub(crate) needs_restart: &'a [&'static str],
    pub(crate) auto_recovery: bool,
}

impl InternalEvent for ConfigReloaded<'_> {
    fn emit(self, observer: &Observer) {
        let applied = self.applied.join(", ");
        if self.needs_restart.is_empty() {
            tracing::info!(
                event = "config_reloaded",
                trigger = self.trigger,
                applied = applied.as_str(),
                "config reloaded"
            );
        } else {
            tracing::warn!(
                event = "config_reloaded",
                trigger = self.trigger,
                applied = applied.as_str(),
                needs_restart = self.needs_restart.join(", ").as_str(),
                "config reloaded; the keys in needs_restart keep their running values until a restart"
            );
        }
        let m = observer.metrics();
        m.recovery.auto_enabled.set(i64::from(self.auto_recovery));
        m.watcher.config_reload_successful.set(1);
    }
}

/// The new config did not load; the running one stays in force.
pub(crate) struct ConfigReloadFailed<'a> {
    pub(crate) trigger: &'a str,
    pub(crate) reason: String,
}

impl InternalEvent for ConfigReloadFailed<'_> {
    fn emit(self, observer: &Observer) {
        tracing::error!(
            event = "config_reload_failed",
            trigger = self.trigger,
            "{}; the running config stays in force",
            self.reason
        );
        observer.metrics().watcher.config_reload_successful.set(0);
    }
}
