//! Each section's checks, run when the config is loaded and reloaded. A
//! failed check names its key and says what is allowed, in one line.

use std::time::Duration;

use super::{
    redact_url, statement, ConfigError, HttpConfig, RecoveryConfig, RedisConfig, SourceConfig,
    Strategy, WatchConfig, DEFAULT_SCHEDULER_ID, MAX_LEASE_WAIT,
};
use crate::model::IdTemplate;

fn invalid(key: &str, reason: String) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        reason,
    }
}

impl RedisConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        self.validate_url()?;
        self.validate_sentinels()?;
        self.validate_cluster()?;
        if self.prefix.is_empty() || self.prefix.contains(':') {
            return Err(invalid(
                "redis.prefix",
                "must be non-empty and contain no ':'".into(),
            ));
        }
        Ok(())
    }

    fn validate_url(&self) -> Result<(), ConfigError> {
        let redis_url = url::Url::parse(&self.url)
            .map_err(|e| invalid("redis.url", format!("not a URL ({e})")))?;
        if !matches!(
            redis_url.scheme(),
            "redis" | "rediss" | "unix" | "redis+unix"
        ) {
            return Err(invalid(
                "redis.url",
                format!(
                    "scheme must be redis, rediss or unix, not {:?} in {}",
                    redis_url.scheme(),
                    redact_url(&self.url)
                ),
            ));
        }
        Ok(())
    }

    fn validate_sentinels(&self) -> Result<(), ConfigError> {
        if !self.sentinels.is_empty() && self.master_name.is_none() {
            return Err(invalid(
                "redis.master_name",
                "is required with redis.sentinels".into(),
            ));
        }
        for sentinel in &self.sentinels {
            if !sentinel.starts_with("redis://") && !sentinel.starts_with("rediss://") {
                return Err(invalid(
                    "redis.sentinels",
                    format!("{} is not a redis:// URL", redact_url(sentinel)),
                ));
            }
        }
        Ok(())
    }

    fn validate_cluster(&self) -> Result<(), ConfigError> {
        if self.cluster_nodes.is_empty() {
            return Ok(());
        }
        if !self.sentinels.is_empty() {
            return Err(invalid(
                "redis.cluster_nodes",
                "cannot be combined with redis.sentinels".into(),
            ));
        }
        let tagged = self
            .prefix
            .split_once('{')
            .is_some_and(|(_, rest)| rest.find('}').is_some_and(|end| end > 0));
        if !tagged {
            return Err(invalid(
                "redis.prefix",
                format!(
                    "{:?} needs a hash tag such as \"{{bull}}\" on a cluster, so that each queue's keys share a slot",
                    self.prefix
                ),
            ));
        }
        Ok(())
    }
}

impl SourceConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let scheme = self.url.split(':').next().unwrap_or_default();
        if !matches!(
            scheme,
            "sqlite" | "postgres" | "postgresql" | "mysql" | "mariadb" | "journal"
        ) {
            return Err(invalid(
                "source.url",
                format!(
                    "must start with sqlite:, postgres:, mysql:, mariadb: or journal:, got {}",
                    redact_url(&self.url)
                ),
            ));
        }
        self.validate_journal(scheme)?;
        if self
            .query
            .as_deref()
            .is_some_and(statement::more_than_one_statement)
        {
            return Err(invalid(
                "source.query",
                "must be a single statement (a second one after ';' could write)".into(),
            ));
        }
        self.validate_change_watch(scheme)?;
        if self.max_value_bytes == 0 {
            return Err(invalid(
                "source.max_value_bytes",
                "must be at least 1 (bytes)".into(),
            ));
        }
        if self.connect_timeout < Duration::from_millis(100)
            || self.connect_timeout > Duration::from_secs(60)
        {
            return Err(invalid(
                "source.connect_timeout",
                "must be between 100ms and 60s".into(),
            ));
        }
        if self.queue.trim().is_empty() {
            return Err(invalid("source.queue", "must not be empty".into()));
        }
        crate::model::IdTemplate::parse(self.effective_scheduler_id())
            .map_err(|reason| invalid("source.scheduler_id", reason))?;
        Ok(())
    }
}

impl SourceConfig {
    /// Journal mode reads its own table, with the scheduler id as the row
    /// id: the keys that shape a task table's read do not apply, and
    /// `queues` names BullMQ queues.
    fn validate_journal(&self, scheme: &str) -> Result<(), ConfigError> {
        let journal = scheme == crate::journal::SCHEME;
        if !journal {
            if !self.queues.is_empty() {
                return Err(invalid(
                    "source.queues",
                    "applies only to a journal:// source.url".into(),
                ));
            }
            return Ok(());
        }
        if crate::journal::path_of(&self.url).as_os_str().is_empty() {
            return Err(invalid(
                "source.url",
                "journal: needs a file, such as journal:///var/lib/bullmq-warden/journal.db".into(),
            ));
        }
        let not_for_journal = [
            ("source.query", self.query.is_some()),
            ("source.sqlite_seed", self.sqlite_seed.is_some()),
            ("source.notify_channel", self.notify_channel.is_some()),
            ("source.change_query", self.change_query.is_some()),
            (
                "source.scheduler_id",
                !matches!(self.scheduler_id.as_str(), DEFAULT_SCHEDULER_ID | "{id}"),
            ),
        ];
        if let Some((key, _)) = not_for_journal.iter().find(|(_, set)| *set) {
            return Err(invalid(
                key,
                "does not apply to a journal:// source (it reads its own table, by scheduler id)"
                    .into(),
            ));
        }
        if let Some(queue) = self
            .queues
            .iter()
            .find(|q| q.trim().is_empty() || q.contains(':'))
        {
            return Err(invalid(
                "source.queues",
                format!("{queue:?} is not a BullMQ queue name (empty or contains ':')"),
            ));
        }
        Ok(())
    }

    /// The scheduler id template in force: `{id}` for a journal, whose rows
    /// carry the scheduler ids themselves.
    pub(crate) fn effective_scheduler_id(&self) -> &str {
        match crate::journal::is_journal(&self.url) {
            true => "{id}",
            false => &self.scheduler_id,
        }
    }

    /// The keys that notice a change of the rows: a LISTEN channel needs
    /// PostgreSQL; the change probe runs like the query and is paced like
    /// the other intervals.
    fn validate_change_watch(&self, scheme: &str) -> Result<(), ConfigError> {
        if let Some(channel) = &self.notify_channel {
            if !matches!(scheme, "postgres" | "postgresql") {
                return Err(invalid(
                    "source.notify_channel",
                    "needs a postgres:// source.url (LISTEN/NOTIFY is PostgreSQL's)".into(),
                ));
            }
            let valid = !channel.is_empty()
                && channel.len() <= 63
                && !channel.contains('"')
                && !channel.chars().any(char::is_control);
            if !valid {
                return Err(invalid(
                    "source.notify_channel",
                    "must be 1 to 63 bytes without quotes or control characters".into(),
                ));
            }
        }
        if let Some(query) = &self.change_query {
            if query.trim().is_empty() {
                return Err(invalid("source.change_query", "must not be empty".into()));
            }
            if statement::more_than_one_statement(query) {
                return Err(invalid(
                    "source.change_query",
                    "must be a single statement (a second one after ';' could write)".into(),
                ));
            }
        }
        if self.change_interval < Duration::from_millis(50) {
            return Err(invalid(
                "source.change_interval",
                "must be at least 50ms".into(),
            ));
        }
        Ok(())
    }
}

impl RecoveryConfig {
    /// `template` is the source's scheduler id template, which pruning needs.
    pub(super) fn validate(&self, template: &IdTemplate) -> Result<(), ConfigError> {
        if self.prune_orphans && template.literal_prefix().is_empty() {
            return Err(invalid(
                "recovery.prune_orphans",
                "needs source.scheduler_id to start with literal text (such as \"inspection:\"), \
                 or it would treat every scheduler in the queue as its own"
                    .into(),
            ));
        }
        if self.concurrency == 0 || self.concurrency > 4096 {
            return Err(invalid(
                "recovery.concurrency",
                "must be between 1 and 4096".into(),
            ));
        }
        if self.strategy == Strategy::Webhook {
            let url = self.webhook_url.as_deref().unwrap_or_default();
            let parsed = url::Url::parse(url).map_err(|_| {
                invalid(
                    "recovery.webhook_url",
                    "strategy = \"webhook\" needs an http(s) URL".into(),
                )
            })?;
            if !matches!(parsed.scheme(), "http" | "https") {
                return Err(invalid(
                    "recovery.webhook_url",
                    format!("must be http or https, not {}", redact_url(url)),
                ));
            }
        }
        if self.backoff_min.is_zero() || self.backoff_min > self.backoff_max {
            return Err(invalid(
                "recovery.backoff_min",
                "must be above zero and at most recovery.backoff_max".into(),
            ));
        }
        if self.lease_ttl < Duration::from_secs(1) {
            return Err(invalid("recovery.lease_ttl", "must be at least 1s".into()));
        }
        if self.lease_wait > MAX_LEASE_WAIT {
            return Err(invalid(
                "recovery.lease_wait",
                "must be at most 10m: a caller waiting longer is better told to retry".into(),
            ));
        }
        Ok(())
    }
}

impl WatchConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        for (key, value) in [
            ("watch.info_interval", self.info_interval),
            ("watch.drift_interval", self.drift_interval),
        ] {
            if value < Duration::from_millis(50) {
                return Err(invalid(key, "must be at least 50ms".into()));
            }
        }
        if self.debounce_quiet > self.debounce_max {
            return Err(invalid(
                "watch.debounce_quiet",
                "must not exceed watch.debounce_max".into(),
            ));
        }
        Ok(())
    }
}

impl HttpConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        for (key, value) in [
            ("http.header_read_timeout", self.header_read_timeout),
            ("http.idle_timeout", self.idle_timeout),
        ] {
            if value < Duration::from_millis(100) {
                return Err(invalid(key, "must be at least 100ms".into()));
            }
        }
        if self.max_connections == 0 || self.max_connections > 65_536 {
            return Err(invalid(
                "http.max_connections",
                "must be between 1 and 65536".into(),
            ));
        }
        Ok(())
    }
}
