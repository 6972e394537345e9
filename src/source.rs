//! The SQL source of truth: reads task rows from SQLite, PostgreSQL or MySQL/MariaDB.
//!
//! Rows are read as loosely typed columns; turning them into schedulers (and
//! rejecting bad ones row by row) is `desired`'s job, so that one broken row
//! never hides the others.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::{AssertSqlSafe, Column, ConnectOptions, Row};

use crate::config::{redact_url, SourceConfig};

/// The manual's `InspectionTask` table: the enabled rows are the schedules.
pub const DEFAULT_QUERY: &str = "SELECT id, name, cron, every_ms, tz, payload, opts, queue \
                                 FROM inspection_tasks WHERE enabled";

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot connect to the source database {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("source query failed on {url}: {reason}")]
    Query { url: String, reason: String },
    #[error("cannot seed the SQLite source from {path}: {reason}")]
    Seed { path: PathBuf, reason: String },
}

/// One column value as the database returned it.
#[derive(Debug, Clone, PartialEq)]
pub enum ColumnValue {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
}

impl ColumnValue {
    /// The value as text, the way it reads in an id or a message.
    pub fn as_text(&self) -> Option<std::borrow::Cow<'_, str>> {
        use std::borrow::Cow;
        match self {
            ColumnValue::Null => None,
            ColumnValue::Bool(b) => Some(Cow::Owned(b.to_string())),
            ColumnValue::Int(i) => Some(Cow::Owned(i.to_string())),
            ColumnValue::Float(f) => Some(Cow::Owned(f.to_string())),
            ColumnValue::Text(s) => Some(Cow::Borrowed(s)),
        }
    }
}

/// A row of the source query, columns keyed by lower-case name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SourceRow {
    pub columns: BTreeMap<String, ColumnValue>,
}

impl SourceRow {
    pub fn get(&self, column: &str) -> Option<&ColumnValue> {
        self.columns
            .get(column)
            .filter(|v| !matches!(v, ColumnValue::Null))
    }

    /// The row's `id` as text, for messages; `"?"` when it has none.
    pub fn id_text(&self) -> String {
        self.get("id")
            .and_then(|v| v.as_text().map(|t| t.into_owned()))
            .unwrap_or_else(|| "?".into())
    }
}

/// The rows and how long the query took.
#[derive(Debug)]
pub struct Fetched {
    pub rows: Vec<SourceRow>,
    pub elapsed: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Sqlite,
    Postgres,
    MySql,
}

pub struct Source {
    pool: sqlx::AnyPool,
    backend: Backend,
    query: String,
    redacted_url: String,
}

impl Source {
    /// Connects lazily-checked: the first query surfaces an unreachable database,
    /// but a missing SQLite file or bad URL is reported here.
    pub async fn connect(config: &SourceConfig) -> Result<Self, SourceError> {
        sqlx::any::install_default_drivers();
        let redacted_url = redact_url(&config.url);
        let connect_error = |reason: String| SourceError::Connect {
            url: redacted_url.clone(),
            reason,
        };
        let backend = match config.url.split(':').next().unwrap_or_default() {
            "sqlite" => Backend::Sqlite,
            "postgres" | "postgresql" => Backend::Postgres,
            _ => Backend::MySql,
        };
        let url = match backend {
            // sqlx's Any driver only knows the mysql scheme.
            Backend::MySql => config.url.replacen("mariadb:", "mysql:", 1),
            _ => config.url.clone(),
        };
        if backend == Backend::Sqlite {
            if let Some(seed) = &config.sqlite_seed {
                seed_new_sqlite(&url, seed).await?;
            }
        }
        let options: AnyConnectOptions = url
            .parse::<AnyConnectOptions>()
            .map_err(|e| connect_error(one_line(&e)))?
            .log_statements(tracing::log::LevelFilter::Debug);
        let pool = AnyPoolOptions::new()
            .max_connections(2)
            .min_connections(0)
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    // The sidecar only reads its source; SQLite has no read-only
                    // transaction, so the connection itself is made read-only.
                    if backend == Backend::Sqlite {
                        sqlx::query("PRAGMA query_only = ON").execute(conn).await?;
                    }
                    Ok(())
                })
            })
            .connect_lazy_with(options);
        let source = Self {
            pool,
            backend,
            query: config
                .query
                .clone()
                .unwrap_or_else(|| DEFAULT_QUERY.to_owned()),
            redacted_url,
        };
        source.ping().await?;
        Ok(source)
    }

    /// The URL with its password redacted.
    pub fn redacted_url(&self) -> &str {
        &self.redacted_url
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> Result<(), SourceError> {
        let mut conn = self.pool.acquire().await.map_err(|e| SourceError::Connect {
            url: self.redacted_url.clone(),
            reason: one_line(&e),
        })?;
        sqlx::query("SELECT 1")
            .execute(&mut *conn)
            .await
            .map_err(|e| SourceError::Connect {
                url: self.redacted_url.clone(),
                reason: one_line(&e),
            })?;
        Ok(())
    }

    /// Runs the source query inside a read-only transaction where the database has one.
    pub async fn fetch(&self) -> Result<Fetched, SourceError> {
        let started = Instant::now();
        let query_error = |e: sqlx::Error| SourceError::Query {
            url: self.redacted_url.clone(),
            reason: one_line(&e),
        };
        let mut tx = match self.backend {
            Backend::Sqlite => self.pool.begin().await,
            Backend::Postgres | Backend::MySql => {
                self.pool.begin_with("START TRANSACTION READ ONLY").await
            }
        }
        .map_err(|e| match e {
            sqlx::Error::Database(_) => query_error(e),
            other => SourceError::Connect {
                url: self.redacted_url.clone(),
                reason: one_line(&other),
            },
        })?;
        let rows = sqlx::query(AssertSqlSafe(self.query.as_str()))
            .fetch_all(&mut *tx)
            .await
            .map_err(query_error)?;
        tx.rollback().await.map_err(query_error)?;
        let rows = rows.iter().map(decode_row).collect();
        Ok(Fetched {
            rows,
            elapsed: started.elapsed(),
        })
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

fn decode_row(row: &AnyRow) -> SourceRow {
    let columns = row
        .columns()
        .iter()
        .enumerate()
        .map(|(index, column)| (column.name().to_ascii_lowercase(), decode_value(row, index)))
        .collect();
    SourceRow { columns }
}

/// The Any driver reports each value with its own type; try them in turn.
fn decode_value(row: &AnyRow, index: usize) -> ColumnValue {
    if let Ok(v) = row.try_get::<Option<i64>, _>(index) {
        return v.map_or(ColumnValue::Null, ColumnValue::Int);
    }
    if let Ok(v) = row.try_get::<Option<String>, _>(index) {
        return v.map_or(ColumnValue::Null, ColumnValue::Text);
    }
    if let Ok(v) = row.try_get::<Option<bool>, _>(index) {
        return v.map_or(ColumnValue::Null, ColumnValue::Bool);
    }
    if let Ok(v) = row.try_get::<Option<f64>, _>(index) {
        return v.map_or(ColumnValue::Null, ColumnValue::Float);
    }
    if let Ok(v) = row.try_get::<Option<i32>, _>(index) {
        return v.map_or(ColumnValue::Null, |i| ColumnValue::Int(i.into()));
    }
    if let Ok(v) = row.try_get::<Option<i16>, _>(index) {
        return v.map_or(ColumnValue::Null, |i| ColumnValue::Int(i.into()));
    }
    if let Ok(v) = row.try_get::<Option<f32>, _>(index) {
        return v.map_or(ColumnValue::Null, |f| ColumnValue::Float(f.into()));
    }
    if let Ok(v) = row.try_get::<Option<Vec<u8>>, _>(index) {
        return v.map_or(ColumnValue::Null, |bytes| {
            ColumnValue::Text(String::from_utf8_lossy(&bytes).into_owned())
        });
    }
    ColumnValue::Null
}

/// Creates the SQLite file from `seed` when it does not exist yet.
async fn seed_new_sqlite(url: &str, seed: &std::path::Path) -> Result<(), SourceError> {
    let seed_error = |reason: String| SourceError::Seed {
        path: seed.to_owned(),
        reason,
    };
    let path = sqlite_path(url);
    if path.as_os_str().is_empty() || path.exists() {
        return Ok(());
    }
    let sql = std::fs::read_to_string(seed).map_err(|e| seed_error(e.to_string()))?;
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true);
    let mut conn = options
        .connect()
        .await
        .map_err(|e| seed_error(one_line(&e)))?;
    let outcome = sqlx::raw_sql(AssertSqlSafe(sql)).execute(&mut conn).await;
    if let Err(e) = outcome {
        drop(conn);
        // A half-seeded file would be taken as the real source next time.
        let _ = std::fs::remove_file(&path);
        return Err(seed_error(one_line(&e)));
    }
    sqlx::Connection::close(conn)
        .await
        .map_err(|e| seed_error(one_line(&e)))
}

/// The file behind `sqlite://path?opts` or `sqlite:path`; empty for in-memory databases.
fn sqlite_path(url: &str) -> PathBuf {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or_default();
    let path = rest.split('?').next().unwrap_or_default();
    if path == ":memory:" {
        PathBuf::new()
    } else {
        PathBuf::from(path)
    }
}

fn one_line(error: &impl std::fmt::Display) -> String {
    error
        .to_string()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_paths() {
        assert_eq!(sqlite_path("sqlite://tasks.db"), PathBuf::from("tasks.db"));
        assert_eq!(
            sqlite_path("sqlite:///var/lib/t.db?mode=ro"),
            PathBuf::from("/var/lib/t.db")
        );
        assert_eq!(sqlite_path("sqlite::memory:"), PathBuf::new());
    }
}
