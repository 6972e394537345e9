//! Configuration: a TOML file, overridden key by key from the environment.
//!
//! Every key has a default so that a bare `bullmq-warden` runs against a local Redis.
//! Unknown keys are rejected so that a typo never silently falls back to a default.

mod statement;
mod validate;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Environment variable naming the config file when `--config` is not given.
pub(crate) const CONFIG_PATH_ENV: &str = "BULLMQ_WARDEN_CONFIG";

/// Prefix of per-key overrides: `BULLMQ_WARDEN__<SECTION>__<KEY>`.
pub(crate) const ENV_OVERRIDE_PREFIX: &str = "BULLMQ_WARDEN__";

/// `[source] scheduler_id` when the file sets none.
pub(crate) const DEFAULT_SCHEDULER_ID: &str = "inspection:{id}";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("config file {path}: {reason}")]
    Parse { path: String, reason: String },
    #[error("config key {key}: {reason}")]
    Invalid { key: String, reason: String },
    #[error("environment variable {var}: {reason}")]
    Env { var: String, reason: String },
    #[error("environment variable {var} (config key {key}): {reason}")]
    EnvInvalid {
        var: String,
        key: String,
        reason: String,
    },
}

/// A secret (a bearer token) with where it came from, so that errors can
/// name the source without ever showing the value.
pub(crate) struct Secret {
    pub(crate) value: String,
    pub(crate) origin: String,
}

/// Why a secret could not be had; `origin` names the variable or the file.
#[derive(Debug)]
pub(crate) struct SecretError {
    pub(crate) origin: String,
    pub(crate) reason: String,
}

/// The secret in the environment variable `var`, else in the file that the
/// config key `file_key` names, trimmed. An empty one is an error wherever it
/// comes from: a blank token would let a request without one through, or
/// send a bare `Bearer` header.
pub(crate) fn read_secret(
    var: &str,
    file_key: &str,
    file: Option<&Path>,
) -> Result<Option<Secret>, SecretError> {
    let (text, origin) = match (std::env::var_os(var), file) {
        (Some(value), _) => {
            let origin = format!("environment variable {var}");
            match value.into_string() {
                Ok(text) => (text, origin),
                Err(_) => {
                    return Err(SecretError {
                        origin,
                        reason: "is not UTF-8".into(),
                    })
                }
            }
        }
        (None, Some(path)) => {
            let origin = format!("{file_key} {}", path.display());
            match std::fs::read_to_string(path) {
                Ok(text) => (text, origin),
                Err(error) => {
                    return Err(SecretError {
                        origin,
                        reason: format!("cannot be read: {error}"),
                    })
                }
            }
        }
        (None, None) => return Ok(None),
    };
    match text.trim() {
        "" => Err(SecretError {
            origin,
            reason: "is empty; set a random token (e.g. `openssl rand -hex 32`) or unset it".into(),
        }),
        value => Ok(Some(Secret {
            value: value.to_owned(),
            origin,
        })),
    }
}

/// Where the running config comes from — its file, the environment and the
/// command line's overrides — so that a reload reads it the same way as the
/// start did.
#[derive(Debug, Clone, Default)]
pub(crate) struct ConfigOrigin {
    /// `--config` or `BULLMQ_WARDEN_CONFIG`.
    pub(crate) path: Option<PathBuf>,
    /// `watch --listen` or `BULLMQ_WARDEN_LISTEN`, over `[http] listen`.
    pub(crate) listen: Option<String>,
}

impl ConfigOrigin {
    /// The file (if any) with the environment's overrides, then the command line's.
    pub(crate) fn load(&self) -> Result<Config, ConfigError> {
        let mut config = Config::load(self.path.as_deref(), std::env::vars())?;
        if let Some(listen) = &self.listen {
            config.set_listen(listen.clone())?;
        }
        Ok(config)
    }
}

impl ConfigError {
    /// Serde's own messages quote the value they could not take (`invalid
    /// type: string "redis://app:secret@…", expected a sequence`), and so
    /// may a value given to the wrong key: every URL in the reason is redacted.
    fn without_url_secrets(self) -> Self {
        match self {
            ConfigError::Read { path, reason } => ConfigError::Read {
                path,
                reason: redact_urls_in(&reason),
            },
            ConfigError::Parse { path, reason } => ConfigError::Parse {
                path,
                reason: redact_urls_in(&reason),
            },
            ConfigError::Invalid { key, reason } => ConfigError::Invalid {
                key,
                reason: redact_urls_in(&reason),
            },
            ConfigError::Env { var, reason } => ConfigError::Env {
                var,
                reason: redact_urls_in(&reason),
            },
            ConfigError::EnvInvalid { var, key, reason } => ConfigError::EnvInvalid {
                var,
                key,
                reason: redact_urls_in(&reason),
            },
        }
    }
}

/// `text` with every `scheme://…` word passed through [`redact_url`]. A word
/// ends at whitespace or a quote, which is how messages delimit values.
fn redact_urls_in(text: &str) -> String {
    let is_delimiter = |c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '`');
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let start = rest[..at].rfind(is_delimiter).map_or(0, |i| i + 1);
        let end = rest[at..].find(is_delimiter).map_or(rest.len(), |i| at + i);
        out.push_str(&rest[..start]);
        out.push_str(&redact_url(&rest[start..end]));
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub(crate) redis: RedisConfig,
    pub(crate) source: SourceConfig,
    pub(crate) recovery: RecoveryConfig,
    pub(crate) watch: WatchConfig,
    pub(crate) http: HttpConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RedisConfig {
    /// `redis://` or `rediss://`, with `user:password@` for ACL users.
    pub(crate) url: String,
    /// BullMQ key prefix, used verbatim (`{bull}` on a cluster).
    pub(crate) prefix: String,
    /// Sentinel URLs; when set, the primary's address comes from them and
    /// `url` supplies only the credentials and database.
    pub(crate) sentinels: Vec<String>,
    /// The primary's name in Sentinel (`sentinel monitor <name> …`).
    pub(crate) master_name: Option<String>,
    /// Seed nodes of a Redis Cluster (with their credentials); when set, `url`
    /// is not used and `prefix` must carry a hash tag such as `{bull}`.
    pub(crate) cluster_nodes: Vec<String>,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379/0".into(),
            prefix: "bull".into(),
            sentinels: Vec::new(),
            master_name: None,
            cluster_nodes: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct SourceConfig {
    /// `sqlite://…`, `postgres://…` or `mysql://…`; or `journal:///…`, the
    /// warden's own record of the schedulers it sees in Redis.
    pub(crate) url: String,
    /// Custom query; `None` selects the enabled rows of `inspection_tasks`.
    pub(crate) query: Option<String>,
    /// Queue for rows that have no `queue` column (or a NULL one).
    pub(crate) queue: String,
    /// Scheduler id template over the row's columns, e.g. `inspection:{id}`.
    pub(crate) scheduler_id: String,
    /// SQL file that creates and fills a new SQLite source; ignored when the
    /// database file already exists. Meant for demos and first trials.
    pub(crate) sqlite_seed: Option<PathBuf>,
    /// A row with a text value larger than this (data, opts or any other
    /// column) is invalid: one huge payload would be parsed and held on
    /// every comparison.
    pub(crate) max_value_bytes: usize,
    /// How long one attempt to connect to the source (and begin its read)
    /// may take before the database counts as unreachable: a recovery that
    /// cannot read its rows learns it quickly and says why.
    #[serde(with = "duration_text")]
    pub(crate) connect_timeout: Duration,
    /// Where the last desired set read from the source is kept across
    /// restarts; `None`: next to an SQLite file, else in memory only.
    pub(crate) snapshot_file: Option<PathBuf>,
    /// PostgreSQL: a channel the task table's trigger sends `NOTIFY` on when
    /// rows change; the watcher listens and compares within moments.
    pub(crate) notify_channel: Option<String>,
    /// Any database: one cheap statement (such as `SELECT count(*),
    /// max(updated_at) FROM …`) whose answer changes when the rows do.
    pub(crate) change_query: Option<String>,
    /// How often `change_query` runs.
    #[serde(with = "duration_text")]
    pub(crate) change_interval: Duration,
    /// Journal mode: the queues to record and restore; empty: every queue
    /// under the prefix.
    pub(crate) queues: Vec<String>,
}

impl Default for SourceConfig {
    fn default() -> Self {
        Self {
            url: "sqlite://bullmq-warden.db".into(),
            query: None,
            queue: "inspection".into(),
            scheduler_id: DEFAULT_SCHEDULER_ID.into(),
            sqlite_seed: None,
            max_value_bytes: 1024 * 1024,
            connect_timeout: Duration::from_secs(2),
            snapshot_file: None,
            notify_channel: None,
            change_query: None,
            change_interval: Duration::from_secs(2),
            queues: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RecoveryConfig {
    /// Remove schedulers under the id template's prefix that no row wants.
    pub(crate) prune_orphans: bool,
    /// Upserts kept in flight at once. Redis runs one script at a time, so a
    /// few dozen keep it busy while other clients still get a turn quickly.
    pub(crate) concurrency: usize,
    /// Whether `watch` restores schedulers by itself (off: it only reports).
    pub(crate) auto: bool,
    pub(crate) strategy: Strategy,
    /// What happens to cron runs missed while the schedulers were gone.
    pub(crate) catchup: Catchup,
    /// Missed runs older than this are never caught up.
    #[serde(with = "duration_text")]
    pub(crate) catchup_window: Duration,
    /// First retry delay; doubles per failed attempt, with full jitter.
    #[serde(with = "duration_text")]
    pub(crate) backoff_min: Duration,
    #[serde(with = "duration_text")]
    pub(crate) backoff_max: Duration,
    /// How long the recovery lease lasts unless renewed.
    #[serde(with = "duration_text")]
    pub(crate) lease_ttl: Duration,
    /// How long `recover` (CLI or HTTP) waits for another writer's lease
    /// before it gives up.
    #[serde(with = "duration_text")]
    pub(crate) lease_wait: Duration,
    /// A loss found while the source cannot be read is restored from the
    /// last desired set read, when it is younger than this; zero: never.
    #[serde(with = "duration_text")]
    pub(crate) snapshot_max_age: Duration,
    /// The application's recover endpoint, for `strategy = "webhook"`.
    pub(crate) webhook_url: Option<String>,
    /// Extra request headers for the webhook.
    pub(crate) webhook_headers: BTreeMap<String, String>,
    /// File holding a bearer token for the webhook (the environment variable
    /// BULLMQ_WARDEN_WEBHOOK_TOKEN takes precedence).
    pub(crate) webhook_token_file: Option<PathBuf>,
    #[serde(with = "duration_text")]
    pub(crate) webhook_timeout: Duration,
    /// Write to queues whose meta hash names a BullMQ major version the
    /// warden was not verified against (only 5 and 6 are).
    pub(crate) allow_unverified_bullmq: bool,
}

impl Default for RecoveryConfig {
    fn default() -> Self {
        Self {
            prune_orphans: false,
            concurrency: 24,
            auto: true,
            strategy: Strategy::Native,
            catchup: Catchup::Skip,
            catchup_window: Duration::from_secs(3600),
            backoff_min: Duration::from_millis(500),
            backoff_max: Duration::from_secs(60),
            lease_ttl: Duration::from_secs(30),
            lease_wait: Duration::from_secs(30),
            snapshot_max_age: Duration::from_secs(24 * 3600),
            webhook_url: None,
            webhook_headers: BTreeMap::new(),
            webhook_token_file: None,
            webhook_timeout: Duration::from_secs(30),
            allow_unverified_bullmq: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Strategy {
    /// The sidecar writes the schedulers itself, through BullMQ's scripts.
    Native,
    /// The sidecar asks the application to recover (POST to `webhook_url`).
    Webhook,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Catchup {
    /// Restored cron schedulers wait for their next run.
    Skip,
    /// One immediate job for each cron scheduler that missed a run in the window.
    FireOnce,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct WatchConfig {
    /// How often INFO and the queue counts are polled.
    #[serde(with = "duration_text")]
    pub(crate) info_interval: Duration,
    /// How often rows and schedulers are compared in full.
    #[serde(with = "duration_text")]
    pub(crate) drift_interval: Duration,
    /// Set notify-keyspace-events when flags are missing (needs CONFIG SET).
    pub(crate) manage_keyspace_config: bool,
    /// A recovery waits until signals have been quiet this long…
    #[serde(with = "duration_text")]
    pub(crate) debounce_quiet: Duration,
    /// …but never longer than this after the first signal.
    #[serde(with = "duration_text")]
    pub(crate) debounce_max: Duration,
}

impl Default for WatchConfig {
    fn default() -> Self {
        Self {
            info_interval: Duration::from_secs(1),
            drift_interval: Duration::from_secs(30),
            manage_keyspace_config: true,
            debounce_quiet: Duration::from_secs(2),
            debounce_max: Duration::from_secs(15),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct HttpConfig {
    /// Address of the admin and API server; empty to serve nothing.
    pub(crate) listen: String,
    /// File holding the bearer token for mutating routes (the environment
    /// variable BULLMQ_WARDEN_API_TOKEN takes precedence).
    pub(crate) token_file: Option<PathBuf>,
    /// With a token configured, `GET /api/bullmq/status` needs it too: the
    /// status names every queue and how many schedulers it should hold.
    pub(crate) status_requires_token: bool,
    /// A request's headers must arrive within this time from its first byte,
    /// or the connection is closed: a half-sent request holds no slot for long.
    #[serde(with = "duration_text")]
    pub(crate) header_read_timeout: Duration,
    /// A connection with no request under way is closed after this time.
    #[serde(with = "duration_text")]
    pub(crate) idle_timeout: Duration,
    /// Connections served at once; further ones wait until one closes, so
    /// that clients can never take every file descriptor of the process.
    pub(crate) max_connections: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9464".into(),
            token_file: None,
            status_requires_token: true,
            header_read_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(60),
            max_connections: 128,
        }
    }
}

/// The longest `recovery.lease_wait`; an HTTP client or a script would
/// rather hear that the lease is busy than hang.
const MAX_LEASE_WAIT: Duration = Duration::from_secs(600);

/// Durations written as `500ms`, `2s`, `15m` or `1h`.
mod duration_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        super::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("duration {text:?} needs a unit (ms, s, m or h)"))?;
    let (number, unit) = text.split_at(split);
    let value: u64 = number
        .parse()
        .map_err(|_| format!("duration {text:?} must start with a whole number"))?;
    match unit.trim() {
        "ms" => Ok(Duration::from_millis(value)),
        "s" => Ok(Duration::from_secs(value)),
        "m" => Ok(Duration::from_secs(value * 60)),
        "h" => Ok(Duration::from_secs(value * 3600)),
        other => Err(format!(
            "duration {text:?} has unknown unit {other:?} (ms, s, m or h)"
        )),
    }
}

impl Config {
    /// Loads the file (if any), applies environment overrides, then validates.
    /// No error shows a URL's secrets, whichever message quoted the value.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        Self::load_unscrubbed(path, env).map_err(ConfigError::without_url_secrets)
    }

    fn load_unscrubbed(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let file = match path {
            Some(path) => read_table(path)?,
            None => toml::Table::new(),
        };
        let overrides = env_overrides(env)?;
        let mut table = file.clone();
        for (key, (_, value)) in &overrides {
            set_key(&mut table, key, value.clone());
        }
        let config = match deserialize(table) {
            Ok(config) => config,
            Err(reason) => return Err(blame(path, file, &overrides, reason)),
        };
        config.validate().map_err(|error| match error {
            ConfigError::Invalid { key, reason } => match overrides.get(&key) {
                Some((var, _)) => ConfigError::EnvInvalid {
                    var: var.clone(),
                    key,
                    reason,
                },
                None => ConfigError::Invalid { key, reason },
            },
            other => other,
        })?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.redis.validate()?;
        self.source.validate()?;
        if self.recovery.prune_orphans && crate::journal::is_journal(&self.source.url) {
            return Err(ConfigError::Invalid {
                key: "recovery.prune_orphans".into(),
                reason: "cannot be used with a journal:// source: the journal learns the \
                         schedulers from Redis, so none is ever an orphan to remove"
                    .into(),
            });
        }
        self.recovery.validate(&self.id_template())?;
        self.watch.validate()?;
        self.http.validate()?;
        self.validate_listen("http.listen")
    }

    /// Replaces `[http] listen` with the `--listen` flag's address.
    pub(crate) fn set_listen(&mut self, listen: String) -> Result<(), ConfigError> {
        self.http.listen = listen;
        self.validate_listen("--listen")
    }

    fn validate_listen(&self, key: &str) -> Result<(), ConfigError> {
        if !self.http.listen.is_empty() && self.http.listen.parse::<std::net::SocketAddr>().is_err()
        {
            return Err(ConfigError::Invalid {
                key: key.into(),
                reason: format!(
                    "{:?} is not an address such as 127.0.0.1:9464",
                    self.http.listen
                ),
            });
        }
        Ok(())
    }

    /// The validated scheduler id template.
    pub(crate) fn id_template(&self) -> crate::model::IdTemplate {
        crate::model::IdTemplate::parse(self.source.effective_scheduler_id())
            .expect("validated when the config was loaded")
    }
}

fn read_table(path: &Path) -> Result<toml::Table, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    text.parse::<toml::Table>().map_err(|e| ConfigError::Parse {
        path: path.display().to_string(),
        reason: parse_error_without_source(&e, &text),
    })
}

/// The parser's message with the line and column, but without the snippet of
/// the file it would quote: that line may hold a password or a token.
fn parse_error_without_source(error: &toml::de::Error, text: &str) -> String {
    let place = error.span().map(|span| {
        let before = text.get(..span.start).unwrap_or(text);
        let line = before.matches('\n').count() + 1;
        let column = before.len() - before.rfind('\n').map_or(0, |at| at + 1) + 1;
        format!("line {line}, column {column}: ")
    });
    format!(
        "{}{}",
        place.unwrap_or_default(),
        crate::text::collapse_whitespace(error.message())
    )
}

fn deserialize(table: toml::Table) -> Result<Config, String> {
    Config::deserialize(toml::Value::Table(table))
        .map_err(|e| crate::text::collapse_whitespace(&e.to_string()))
}

/// Names whoever set the value that did not deserialize: the file when it
/// fails on its own, else the first override that makes it fail. An operator
/// who set `BULLMQ_WARDEN__WATCH__DRIFT_INTERVAL=30` looks for that variable,
/// not in a config file that never mentions the key.
fn blame(
    path: Option<&Path>,
    file: toml::Table,
    overrides: &EnvOverrides,
    reason: String,
) -> ConfigError {
    let file_error = deserialize(file.clone()).err();
    if let (Some(path), Some(reason)) = (path, file_error) {
        return ConfigError::Parse {
            path: path.display().to_string(),
            reason,
        };
    }
    let mut table = file;
    for (key, (var, value)) in overrides {
        set_key(&mut table, key, value.clone());
        if let Err(reason) = deserialize(table.clone()) {
            return ConfigError::Env {
                var: var.clone(),
                reason,
            };
        }
    }
    ConfigError::Parse {
        path: path.map_or_else(|| "(defaults)".to_owned(), |p| p.display().to_string()),
        reason,
    }
}

/// Overrides by config key (`watch.drift_interval`): the variable that set
/// it and the value.
type EnvOverrides = BTreeMap<String, (String, toml::Value)>;

/// `BULLMQ_WARDEN__REDIS__URL=…` sets `[redis] url`. Values that read as TOML
/// booleans or numbers are taken as such; anything else is a string. An
/// empty variable counts as unset, as it does for most tools: a manifest
/// that blanks a variable means "no value", not "the empty string".
fn env_overrides(
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<EnvOverrides, ConfigError> {
    let mut overrides = EnvOverrides::new();
    let mut vars: Vec<(String, String)> = env
        .into_iter()
        .filter(|(k, v)| k.starts_with(ENV_OVERRIDE_PREFIX) && !v.is_empty())
        .collect();
    vars.sort();
    for (var, raw) in vars {
        let path = &var[ENV_OVERRIDE_PREFIX.len()..];
        let (section, key) = path.split_once("__").ok_or_else(|| ConfigError::Env {
            var: var.clone(),
            reason: "expected BULLMQ_WARDEN__<SECTION>__<KEY>".into(),
        })?;
        let key = format!(
            "{}.{}",
            section.to_ascii_lowercase(),
            key.to_ascii_lowercase()
        );
        overrides.insert(key, (var, scalar_from_env(&raw)));
    }
    Ok(overrides)
}

/// Sets `section.key`. A section the file made something else than a table
/// (`redis = 1`) is left as it is: deserializing then blames the file.
fn set_key(table: &mut toml::Table, dotted: &str, value: toml::Value) {
    let (section, key) = dotted.split_once('.').unwrap_or((dotted, ""));
    let entry = table
        .entry(section)
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    if let Some(section_table) = entry.as_table_mut() {
        section_table.insert(key.to_owned(), value);
    }
}

fn scalar_from_env(raw: &str) -> toml::Value {
    let parsed = format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"));
    match parsed {
        Some(
            v @ (toml::Value::Boolean(_)
            | toml::Value::Integer(_)
            | toml::Value::Float(_)
            | toml::Value::Array(_)),
        ) => v,
        Some(toml::Value::String(s)) if raw.trim_start().starts_with(['"', '\'']) => {
            toml::Value::String(s)
        }
        _ => toml::Value::String(raw.to_owned()),
    }
}

/// Replaces the secrets of a URL with `***` — the password, and query
/// parameters that carry one (`?password=`, a webhook's `?key=`) — so URLs can
/// be logged and shown. Text that does not parse as a URL is reduced to its scheme.
pub(crate) fn redact_url(raw: &str) -> String {
    let Ok(mut parsed) = url::Url::parse(raw) else {
        let scheme = raw.split(':').next().unwrap_or_default();
        return format!("{scheme}:(unparsable URL)");
    };
    if parsed.password().is_some() {
        // Only fails for URLs that cannot carry credentials at all.
        let _ = parsed.set_password(Some("***"));
    }
    if parsed
        .query_pairs()
        .any(|(name, _)| is_secret_parameter(&name))
    {
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(name, value)| {
                let value = if is_secret_parameter(&name) {
                    "***".to_owned()
                } else {
                    value.into_owned()
                };
                (name.into_owned(), value)
            })
            .collect();
        parsed.query_pairs_mut().clear().extend_pairs(pairs);
    }
    parsed.to_string()
}

/// Query parameter names that hold credentials in the URLs people write:
/// libpq's `password`/`sslpassword`, `pass`, `pwd`, API `key`s, `token`s,
/// `secret`s, signatures and `auth` values.
fn is_secret_parameter(name: &str) -> bool {
    const MARKERS: [&str; 8] = [
        "pass",
        "pwd",
        "token",
        "key",
        "secret",
        "auth",
        "sig",
        "credential",
    ];
    let name = name.to_ascii_lowercase();
    MARKERS.iter().any(|marker| name.contains(marker))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_str(toml_text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("warden.toml");
        std::fs::write(&path, toml_text).unwrap();
        Config::load(
            Some(&path),
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[test]
    fn defaults_point_at_a_local_redis_and_sqlite() {
        let config = Config::load(None, Vec::new()).unwrap();
        assert_eq!(config.redis.url, "redis://127.0.0.1:6379/0");
        assert_eq!(config.redis.prefix, "bull");
        assert!(config.source.url.starts_with("sqlite:"));
        assert!(!config.recovery.prune_orphans);
    }

    #[test]
    fn environment_overrides_file_values_with_types() {
        let config = load_str(
            "[redis]\nurl = \"redis://10.0.0.1:6379\"\n",
            &[
                ("BULLMQ_WARDEN__REDIS__URL", "redis://127.0.0.1:7000/2"),
                ("BULLMQ_WARDEN__RECOVERY__PRUNE_ORPHANS", "true"),
                ("BULLMQ_WARDEN__RECOVERY__CONCURRENCY", "8"),
                ("UNRELATED", "x"),
            ],
        )
        .unwrap();
        assert_eq!(config.redis.url, "redis://127.0.0.1:7000/2");
        assert!(config.recovery.prune_orphans);
        assert_eq!(config.recovery.concurrency, 8);
    }

    #[test]
    fn unknown_key_is_named() {
        let err = load_str("[redis]\nurll = \"x\"\n", &[]).unwrap_err();
        assert!(err.to_string().contains("urll"), "{err}");
    }

    #[test]
    fn invalid_values_name_the_key() {
        let err = load_str("[redis]\nurl = \"http://x\"\n", &[]).unwrap_err();
        assert!(err.to_string().starts_with("config key redis.url"), "{err}");
        let err = load_str("[recovery]\nconcurrency = 0\n", &[]).unwrap_err();
        assert!(err.to_string().contains("recovery.concurrency"), "{err}");
        let err = load_str("[source]\nscheduler_id = \"x:{id\"\n", &[]).unwrap_err();
        assert!(err.to_string().contains("source.scheduler_id"), "{err}");
    }

    #[test]
    fn pruning_needs_a_literal_prefix() {
        let err = load_str(
            "[source]\nscheduler_id = \"{id}\"\n[recovery]\nprune_orphans = true\n",
            &[],
        )
        .unwrap_err();
        assert!(err.to_string().contains("recovery.prune_orphans"), "{err}");
    }

    #[test]
    fn errors_in_overrides_name_the_variable_and_empty_ones_are_unset() {
        let var = "BULLMQ_WARDEN__WATCH__DRIFT_INTERVAL";
        let err = load_str("", &[(var, "30")]).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("environment variable {var}: ")),
            "{err}"
        );
        assert!(!err.contains("warden.toml"), "{err}");
        let err = load_str("", &[(var, "10ms")]).unwrap_err().to_string();
        assert_eq!(
            err,
            format!("environment variable {var} (config key watch.drift_interval): must be at least 50ms")
        );
        let err = load_str("[watch]\ndrift_interval = 30\n", &[(var, "")])
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("config file "), "{err}");
        let config = load_str(
            "[redis]\nurl = \"redis://10.0.0.1:6379\"\n",
            &[
                ("BULLMQ_WARDEN__REDIS__URL", ""),
                ("BULLMQ_WARDEN__HTTP__TOKEN_FILE", ""),
            ],
        )
        .unwrap();
        assert_eq!(config.redis.url, "redis://10.0.0.1:6379");
        assert_eq!(config.http.token_file, None);
    }

    #[test]
    fn malformed_env_override_is_named() {
        let err = Config::load(None, vec![("BULLMQ_WARDEN__URL".into(), "x".into())]).unwrap_err();
        assert!(err.to_string().contains("BULLMQ_WARDEN__URL"), "{err}");
    }

    #[test]
    fn durations_take_units_and_bad_ones_name_the_key() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("1d").is_err());
        let config = load_str("[watch]\ndebounce_quiet = \"1s\"\n", &[]).unwrap();
        assert_eq!(config.watch.debounce_quiet, Duration::from_secs(1));
        let err = load_str("[watch]\ndebounce_quiet = \"soon\"\n", &[]).unwrap_err();
        assert!(err.to_string().contains("debounce_quiet"), "{err}");
        let err = load_str("[recovery]\nstrategy = \"webhook\"\n", &[]).unwrap_err();
        assert!(err.to_string().contains("recovery.webhook_url"), "{err}");
        let err = load_str("[recovery]\nlease_wait = \"11m\"\n", &[]).unwrap_err();
        assert!(err.to_string().contains("recovery.lease_wait"), "{err}");
        let config = load_str("[recovery]\nlease_wait = \"0s\"\n", &[]).unwrap();
        assert_eq!(config.recovery.lease_wait, Duration::ZERO);
    }

    #[test]
    fn http_limits_are_validated_by_key() {
        let config = Config::load(None, Vec::new()).unwrap();
        assert!(config.http.status_requires_token);
        assert_eq!(config.http.header_read_timeout, Duration::from_secs(5));
        for (toml_text, key) in [
            ("header_read_timeout = \"0s\"", "http.header_read_timeout"),
            ("idle_timeout = \"10ms\"", "http.idle_timeout"),
            ("max_connections = 0", "http.max_connections"),
        ] {
            let err = load_str(&format!("[http]\n{toml_text}\n"), &[]).unwrap_err();
            assert!(
                err.to_string().starts_with(&format!("config key {key}")),
                "{err}"
            );
        }
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("redis://app:s3cret@redis:6379/0"),
            "redis://app:***@redis:6379/0"
        );
        assert_eq!(
            redact_url("postgres://u:p@db/tasks"),
            "postgres://u:***@db/tasks"
        );
        assert_eq!(redact_url("redis://redis:6379"), "redis://redis:6379");
        assert!(!redact_url("redis://u:pw@[bad").contains("pw"));
    }

    #[test]
    fn secrets_in_query_strings_are_redacted() {
        for (url, secret) in [
            ("postgres://db/tasks?user=u&password=hunter2", "hunter2"),
            (
                "postgres://db/tasks?sslpassword=hunter2&sslmode=require",
                "hunter2",
            ),
            ("mysql://db/t?pwd=hunter2", "hunter2"),
            ("https://app/hook?key=k-123", "k-123"),
            ("https://app/hook?api_key=k-123&x=1", "k-123"),
            ("https://app/hook?access_token=t-1", "t-1"),
            ("https://app/hook?Secret=s-1", "s-1"),
            ("redis://u:pw@h:6379/0?pass=pw2", "pw2"),
        ] {
            let shown = redact_url(url);
            assert!(!shown.contains(secret), "{url} -> {shown}");
            assert!(shown.contains("***"), "{url} -> {shown}");
        }
        assert_eq!(
            redact_url("postgres://db/tasks?sslmode=require"),
            "postgres://db/tasks?sslmode=require"
        );
    }

    #[test]
    fn a_toml_syntax_error_never_quotes_the_line() {
        let err = load_str(
            "[redis]\nprefix = \"bull\"\nurl = \"redis://u:hunter2@h:6379\n",
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(!err.contains("hunter2"), "{err}");
        assert!(err.contains("line 3"), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }

    #[test]
    fn password_never_appears_in_url_errors() {
        let err = load_str("[source]\nurl = \"oracle://u:hunter2@db\"\n", &[]).unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn change_watch_keys_are_checked_and_named() {
        let error = |toml_text: &str| load_str(toml_text, &[]).unwrap_err().to_string();
        let notify = "[source]\nurl = \"sqlite://t.db\"\nnotify_channel = \"tasks\"\n";
        assert!(error(notify).contains("source.notify_channel"));
        let quoted = "[source]\nurl = \"postgres://db/t\"\nnotify_channel = \"a\\\"b\"\n";
        assert!(error(quoted).contains("source.notify_channel"));
        let two = "[source]\nchange_query = \"SELECT 1; DELETE FROM t\"\n";
        assert!(error(two).contains("source.change_query"));
        let fast = "[source]\nchange_interval = \"10ms\"\n";
        assert!(error(fast).contains("source.change_interval"));
        let fine = "[source]\nurl = \"postgres://db/t\"\nnotify_channel = \"tasks\"\n\
                    change_query = \"SELECT count(*) FROM t;\"\nchange_interval = \"1s\"\n";
        let config = load_str(fine, &[]).expect("valid change watch");
        assert_eq!(config.source.change_interval, Duration::from_secs(1));
        assert_eq!(config.source.notify_channel.as_deref(), Some("tasks"));
    }
}
