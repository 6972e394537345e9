//! Configuration: a TOML file, overridden key by key from the environment.
//!
//! Every key has a default so that a bare `bullmq-warden` runs against a local Redis.
//! Unknown keys are rejected so that a typo never silently falls back to a default.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Environment variable naming the config file when `--config` is not given.
pub const CONFIG_PATH_ENV: &str = "BULLMQ_WARDEN_CONFIG";

/// Prefix of per-key overrides: `BULLMQ_WARDEN__<SECTION>__<KEY>`.
pub const ENV_OVERRIDE_PREFIX: &str = "BULLMQ_WARDEN__";

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
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub redis: RedisConfig,
    pub source: SourceConfig,
    pub recovery: RecoveryConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// `redis://` or `rediss://`, with `user:password@` for ACL users.
    pub url: String,
    /// BullMQ key prefix, used verbatim (`{bull}` on a cluster).
    pub prefix: String,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379/0".into(),
            prefix: "bull".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SourceConfig {
    /// `sqlite://…`, `postgres://…` or `mysql://…`.
    pub url: String,
    /// Custom query; `None` selects the enabled rows of `inspection_tasks`.
    pub query: Option<String>,
    /// Queue for rows that have no `queue` column (or a NULL one).
    pub queue: String,
    /// Scheduler id template over the row's columns, e.g. `inspection:{id}`.
    pub scheduler_id: String,
    /// SQL file that creates and fills a new SQLite source; ignored when the
    /// database file already exists. Meant for demos and first trials.
    pub sqlite_seed: Option<PathBuf>,
}

impl Default for SourceConfig {
    fn default() -> Self {
        Self {
            url: "sqlite://bullmq-warden.db".into(),
            query: None,
            queue: "inspection".into(),
            scheduler_id: "inspection:{id}".into(),
            sqlite_seed: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecoveryConfig {
    /// Remove schedulers under the id template's prefix that no row wants.
    pub prune_orphans: bool,
    /// Upserts kept in flight at once. Redis runs one script at a time, so a
    /// few dozen keep it busy while other clients still get a turn quickly.
    pub concurrency: usize,
}

impl Default for RecoveryConfig {
    fn default() -> Self {
        Self {
            prune_orphans: false,
            concurrency: 24,
        }
    }
}

impl Config {
    /// Loads the file (if any), applies environment overrides, then validates.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut table = match path {
            Some(path) => read_table(path)?,
            None => toml::Table::new(),
        };
        apply_env_overrides(&mut table, env)?;
        let origin = path.map_or_else(|| "(defaults)".to_owned(), |p| p.display().to_string());
        let config: Config =
            Config::deserialize(toml::Value::Table(table)).map_err(|e| ConfigError::Parse {
                path: origin,
                reason: one_line(&e.to_string()),
            })?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, reason: String| ConfigError::Invalid {
            key: key.into(),
            reason,
        };
        let redis_url = url::Url::parse(&self.redis.url)
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
                    redact_url(&self.redis.url)
                ),
            ));
        }
        if self.redis.prefix.is_empty() || self.redis.prefix.contains(':') {
            return Err(invalid(
                "redis.prefix",
                "must be non-empty and contain no ':'".into(),
            ));
        }
        let scheme = self.source.url.split(':').next().unwrap_or_default();
        if !matches!(
            scheme,
            "sqlite" | "postgres" | "postgresql" | "mysql" | "mariadb"
        ) {
            return Err(invalid(
                "source.url",
                format!(
                    "must start with sqlite:, postgres:, mysql: or mariadb:, got {}",
                    redact_url(&self.source.url)
                ),
            ));
        }
        if self.source.queue.trim().is_empty() {
            return Err(invalid("source.queue", "must not be empty".into()));
        }
        crate::template::IdTemplate::parse(&self.source.scheduler_id)
            .map_err(|reason| invalid("source.scheduler_id", reason))?;
        if self.recovery.prune_orphans && self.id_template().literal_prefix().is_empty() {
            return Err(invalid(
                "recovery.prune_orphans",
                "needs source.scheduler_id to start with literal text (such as \"inspection:\"), \
                 or it would treat every scheduler in the queue as its own"
                    .into(),
            ));
        }
        if self.recovery.concurrency == 0 || self.recovery.concurrency > 4096 {
            return Err(invalid(
                "recovery.concurrency",
                "must be between 1 and 4096".into(),
            ));
        }
        Ok(())
    }

    /// The validated scheduler id template.
    pub fn id_template(&self) -> crate::template::IdTemplate {
        crate::template::IdTemplate::parse(&self.source.scheduler_id)
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
        reason: one_line(&e.to_string()),
    })
}

/// `BULLMQ_WARDEN__REDIS__URL=…` sets `[redis] url`. Values that read as TOML
/// booleans or numbers are taken as such; anything else is a string.
fn apply_env_overrides(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    let overrides: BTreeMap<String, String> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with(ENV_OVERRIDE_PREFIX))
        .collect();
    for (var, raw) in overrides {
        let path = &var[ENV_OVERRIDE_PREFIX.len()..];
        let (section, key) = path.split_once("__").ok_or_else(|| ConfigError::Env {
            var: var.clone(),
            reason: "expected BULLMQ_WARDEN__<SECTION>__<KEY>".into(),
        })?;
        let section_table = table
            .entry(section.to_ascii_lowercase())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .ok_or_else(|| ConfigError::Env {
                var: var.clone(),
                reason: format!("[{}] is not a table", section.to_ascii_lowercase()),
            })?;
        section_table.insert(key.to_ascii_lowercase(), scalar_from_env(&raw));
    }
    Ok(())
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

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Replaces the password of a URL with `***`, so URLs can be logged and shown.
/// Text that does not parse as a URL is reduced to its scheme.
pub fn redact_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                // Only fails for URLs that cannot carry credentials at all.
                let _ = parsed.set_password(Some("***"));
            }
            parsed.to_string()
        }
        Err(_) => {
            let scheme = raw.split(':').next().unwrap_or_default();
            format!("{scheme}:(unparsable URL)")
        }
    }
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
    fn malformed_env_override_is_named() {
        let err = Config::load(None, vec![("BULLMQ_WARDEN__URL".into(), "x".into())]).unwrap_err();
        assert!(err.to_string().contains("BULLMQ_WARDEN__URL"), "{err}");
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
    fn password_never_appears_in_url_errors() {
        let err = load_str("[source]\nurl = \"oracle://u:hunter2@db\"\n", &[]).unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }
}
