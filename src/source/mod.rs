//! The SQL source of truth: reads task rows from SQLite, PostgreSQL or MySQL/MariaDB.
//!
//! Rows are read as loosely typed columns; turning them into schedulers (and
//! rejecting bad ones row by row) is `desired`'s job, so that one broken row
//! never hides the others. Each database gets its own typed driver rather than
//! sqlx's `Any` driver, which fails a whole query on a column type it does not
//! map (SQLite BOOLEAN, PostgreSQL jsonb or timestamptz, …).

pub(crate) mod change;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::{Duration, Instant};

use sqlx::mysql::{MySql, MySqlConnectOptions};
use sqlx::pool::PoolOptions;
use sqlx::postgres::{PgConnectOptions, Postgres};
use sqlx::sqlite::{Sqlite, SqliteConnectOptions};
use sqlx::{
    AssertSqlSafe, Column, ConnectOptions, Connection, Database, Decode, Pool, Row, SqlSafeStr,
    Transaction, Type, ValueRef,
};

use crate::config::{redact_url, SourceConfig};

/// The manual's `InspectionTask` table: the enabled rows are the schedules.
pub(crate) const DEFAULT_QUERY: &str = "SELECT id, name, cron, every_ms, tz, payload, opts, queue \
                                 FROM inspection_tasks WHERE enabled";

/// Columns the default table may have beyond the manual's: BullMQ's repeat
/// options `export` writes. Selected by the default query only where the
/// table has them, so that an older table reads as before.
const OPTIONAL_DEFAULT_COLUMNS: [&str; 4] =
    ["start_date", "end_date", "repeat_limit", "repeat_offset"];

/// Finds the default table's columns without reading a row.
const DEFAULT_TABLE_PROBE: &str = "SELECT * FROM inspection_tasks WHERE 1 = 0";

/// What `fetch` runs.
#[derive(Debug, Clone)]
enum Query {
    /// `[source] query`.
    Custom(String),
    /// The default table, with whichever optional columns it has.
    DefaultTable,
    /// The journal's own table (journal mode).
    Journal(String),
}

impl Query {
    fn of(config: &SourceConfig) -> Self {
        if crate::journal::is_journal(&config.url) {
            return Query::Journal(journal_query(&config.queues));
        }
        match &config.query {
            Some(query) => Query::Custom(query.clone()),
            None => Query::DefaultTable,
        }
    }
}

/// The journal's rows, of `queues` only when it names some.
fn journal_query(queues: &[String]) -> String {
    let base = crate::journal::store::JOURNAL_QUERY;
    if queues.is_empty() {
        return base.to_owned();
    }
    let quoted: Vec<String> = queues
        .iter()
        .map(|q| format!("'{}'", q.replace('\'', "''")))
        .collect();
    format!("{base} WHERE queue IN ({})", quoted.join(", "))
}

/// The default query over a table that has `columns` (lower case).
fn default_query_for(columns: &[String]) -> String {
    let extra: Vec<&str> = OPTIONAL_DEFAULT_COLUMNS
        .into_iter()
        .filter(|c| columns.iter().any(|have| have == c))
        .collect();
    if extra.is_empty() {
        return DEFAULT_QUERY.to_owned();
    }
    DEFAULT_QUERY.replacen(" FROM", &format!(", {} FROM", extra.join(", ")), 1)
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum SourceError {
    #[error("cannot connect to the source database {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("source query failed on {url}: {reason}")]
    Query { url: String, reason: String },
    /// The connection was made and the query ran, then the stream of rows
    /// ended without the database's own end of result: the read as a whole
    /// is discarded, so a cut read never counts rows as gone.
    #[error(
        "the read from the source database {url} broke off: {reason}; none of its rows were used"
    )]
    ReadBrokeOff { url: String, reason: String },
    /// Checked once per read, on the first row: without these columns every
    /// row would fail with the same reason, which would not say what to alias.
    #[error(
        "source query on {url} lacks the required columns {missing} (found: {found}); name them with AS"
    )]
    Columns {
        url: String,
        missing: String,
        found: String,
    },
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

/// How each read reaches the database.
enum Backend {
    /// SQLite is opened for each read and closed at its end, not pooled: a
    /// connection is a thread of its own, and what that thread allocated
    /// for the rows (about 29 MiB at 100,000) is given back only when it
    /// exits. Opening the file costs about a millisecond per read.
    Sqlite(Box<SqliteConnectOptions>),
    Postgres(Pool<Postgres>),
    MySql(Pool<MySql>),
}

pub(crate) struct Source {
    backend: Backend,
    /// Replaced by a config reload (`set_query`).
    query: std::sync::RwLock<Query>,
    redacted_url: String,
    /// `[source] connect_timeout`: bounds each connection attempt and the
    /// start of each read.
    connect_timeout: Duration,
}

impl Source {
    /// Connects and checks that the database answers, so that a wrong URL or
    /// a missing SQLite file is reported at start rather than at the first loss.
    pub(crate) async fn connect(config: &SourceConfig) -> Result<Self, SourceError> {
        Self::open(config, true).await
    }

    /// Prepares the pool without connecting: the watcher starts even while the
    /// database is down, and reports it through its metrics and logs.
    pub(crate) async fn connect_lazy(config: &SourceConfig) -> Result<Self, SourceError> {
        Self::open(config, false).await
    }

    async fn open(config: &SourceConfig, check: bool) -> Result<Self, SourceError> {
        let redacted_url = redact_url(&config.url);
        let connect_error = |e: sqlx::Error| SourceError::Connect {
            url: redacted_url.clone(),
            reason: one_line(&e),
        };
        let scheme = config.url.split(':').next().unwrap_or_default();
        let timeout = config.connect_timeout;
        let backend = match scheme {
            "sqlite" | "journal" => {
                let options = if scheme == crate::journal::SCHEME {
                    journal_options(&config.url, &redacted_url).await?
                } else {
                    if let Some(seed) = &config.sqlite_seed {
                        seed_new_sqlite(&config.url, seed).await?;
                    }
                    SqliteConnectOptions::from_str(&config.url).map_err(connect_error)?
                };
                // The sidecar only reads its source; SQLite has no read-only
                // transaction, so the file is opened read-only (`mode=ro`,
                // which no statement can undo, unlike `query_only`).
                let options = options.read_only(true).pragma("query_only", "ON");
                if check {
                    probe(&options, timeout).await.map_err(connect_error)?;
                }
                Backend::Sqlite(Box::new(quiet(options)))
            }
            "postgres" | "postgresql" => {
                let options = PgConnectOptions::from_str(&config.url).map_err(connect_error)?;
                if check {
                    probe(&options, timeout).await.map_err(connect_error)?;
                }
                Backend::Postgres(pool_options(timeout).connect_lazy_with(quiet(options)))
            }
            _ => {
                let url = config.url.replacen("mariadb:", "mysql:", 1);
                let options = MySqlConnectOptions::from_str(&url).map_err(connect_error)?;
                if check {
                    probe(&options, timeout).await.map_err(connect_error)?;
                }
                Backend::MySql(pool_options(timeout).connect_lazy_with(quiet(options)))
            }
        };
        Ok(Self {
            backend,
            query: std::sync::RwLock::new(Query::of(config)),
            redacted_url,
            connect_timeout: timeout,
        })
    }

    /// The query the next `fetch` runs (`None`: the default query).
    /// A journal's query never changes (the config allows none).
    pub(crate) fn set_query(&self, query: Option<&str>) {
        let mut current = self.query.write().unwrap_or_else(|e| e.into_inner());
        if matches!(*current, Query::Journal(_)) {
            return;
        }
        *current = match query {
            Some(query) => Query::Custom(query.to_owned()),
            None => Query::DefaultTable,
        };
    }

    /// The URL with its password redacted.
    pub(crate) fn redacted_url(&self) -> &str {
        &self.redacted_url
    }

    /// Runs the source query inside a read-only transaction where the database
    /// has one, handing each row to `each` as it arrives (100,000 rows are never
    /// held at once); returns how long the query took.
    pub(crate) async fn fetch(
        &self,
        mut each: impl FnMut(SourceRow),
    ) -> Result<Duration, SourceError> {
        use futures::TryStreamExt;
        let started = Instant::now();
        let query = self.query.read().unwrap_or_else(|e| e.into_inner()).clone();
        // One arm per database: each has its own row type.
        macro_rules! read_only {
            ($tx:expr, $db:ty) => {{
                let mut tx = $tx;
                let query = match &query {
                    Query::Custom(text) | Query::Journal(text) => text.clone(),
                    Query::DefaultTable => {
                        use sqlx::{Executor, Statement};
                        let probe = AssertSqlSafe(DEFAULT_TABLE_PROBE).into_sql_str();
                        match (&mut *tx).prepare(probe).await {
                            Ok(statement) => default_query_for(&column_names(statement.columns())),
                            // The read then fails with the database's own reason.
                            Err(_) => DEFAULT_QUERY.to_owned(),
                        }
                    }
                };
                let mut rows = sqlx::query(AssertSqlSafe(query.as_str())).fetch(&mut *tx);
                let mut first = true;
                while let Some(row) = rows.try_next().await.map_err(|e| self.read_error(e))? {
                    if std::mem::take(&mut first) {
                        self.check_columns(row.columns().iter().map(|c| c.name()))?;
                    }
                    each(decode_row::<$db>(&row));
                }
            }};
        }
        // Dropping a transaction rolls it back: nothing was meant to be written.
        match &self.backend {
            Backend::Sqlite(options) => {
                let mut conn = connect_within(&**options, self.connect_timeout)
                    .await
                    .map_err(|e| self.unreachable_error(e))?;
                let read = async {
                    read_only!(conn.begin().await.map_err(|e| self.error(e))?, Sqlite);
                    Ok::<_, SourceError>(())
                }
                .await;
                // Ends the connection's thread, so that what it allocated
                // is free by the time the caller releases memory.
                let _ = conn.close().await;
                read?;
            }
            Backend::Postgres(pool) => read_only!(self.begin(pool, READ_ONLY).await?, Postgres),
            Backend::MySql(pool) => read_only!(self.begin(pool, READ_ONLY).await?, MySql),
        }
        Ok(started.elapsed())
    }

    /// A transaction on a pooled connection, within `connect_timeout`.
    async fn begin<DB: Database>(
        &self,
        pool: &Pool<DB>,
        statement: &'static str,
    ) -> Result<Transaction<'static, DB>, SourceError>
    where
        <DB::Connection as Connection>::Options: ConnectOptions<Connection = DB::Connection>,
    {
        // A database that refuses connections (stopped, restarting) looks
        // to the pool like one starting up: it retries until the timeout,
        // also after finding its idle connection dead. One direct attempt
        // first fails at once instead, so a loss waits milliseconds, not
        // connect_timeout, before the snapshot stands in; it costs one
        // connection per read of the rows.
        let options = pool.connect_options();
        probe(&*options, self.connect_timeout)
            .await
            .map_err(|e| self.unreachable_error(e))?;
        let begin = pool.begin_with(statement);
        match tokio::time::timeout(self.connect_timeout, begin).await {
            Ok(Ok(tx)) => Ok(tx),
            Ok(Err(sqlx::Error::PoolTimedOut)) | Err(_) => {
                // The pool only says it timed out; one direct attempt says why.
                let options = pool.connect_options();
                let reason = probe(&*options, self.connect_timeout).await.err();
                Err(self.unreachable_error(reason.unwrap_or(sqlx::Error::PoolTimedOut)))
            }
            Ok(Err(error)) => Err(self.error(error)),
        }
    }

    /// A connection that failed or timed out, named with the key that bounds it.
    fn unreachable_error(&self, error: sqlx::Error) -> SourceError {
        let reason = match error {
            sqlx::Error::PoolTimedOut => format!(
                "no answer within source.connect_timeout ({} ms)",
                self.connect_timeout.as_millis()
            ),
            other => return self.error(other),
        };
        SourceError::Connect {
            url: self.redacted_url.clone(),
            reason,
        }
    }

    fn check_columns<'c>(&self, names: impl Iterator<Item = &'c str>) -> Result<(), SourceError> {
        let found: Vec<String> = names.map(str::to_ascii_lowercase).collect();
        match missing_columns(&found) {
            None => Ok(()),
            Some(missing) => Err(SourceError::Columns {
                url: self.redacted_url.clone(),
                missing,
                found: found.join(", "),
            }),
        }
    }

    /// An error while rows arrive: the database's own error is about the
    /// query; anything else means the connection broke in the middle.
    fn read_error(&self, error: sqlx::Error) -> SourceError {
        match error {
            sqlx::Error::Database(_) | sqlx::Error::ColumnDecode { .. } => self.error(error),
            other => SourceError::ReadBrokeOff {
                url: self.redacted_url.clone(),
                reason: one_line(&other),
            },
        }
    }

    /// A database's own error means the query is wrong; anything else means
    /// the database could not be reached.
    fn error(&self, error: sqlx::Error) -> SourceError {
        match error {
            sqlx::Error::Database(_) | sqlx::Error::ColumnDecode { .. } => SourceError::Query {
                url: self.redacted_url.clone(),
                reason: one_line(&error),
            },
            other => SourceError::Connect {
                url: self.redacted_url.clone(),
                reason: one_line(&other),
            },
        }
    }

    pub(crate) async fn close(&self) {
        match &self.backend {
            Backend::Sqlite(_) => {}
            Backend::Postgres(pool) => pool.close().await,
            Backend::MySql(pool) => pool.close().await,
        }
    }
}

/// Column names in lower case: the default table's, found by preparing
/// `DEFAULT_TABLE_PROBE` (which reads no row); a table that cannot be
/// prepared leaves the plain default query.
fn column_names<C: Column>(columns: &[C]) -> Vec<String> {
    columns
        .iter()
        .map(|c| c.name().to_ascii_lowercase())
        .collect()
}

/// The journal file, created when missing so that it opens read-only.
async fn journal_options(
    url: &str,
    redacted_url: &str,
) -> Result<SqliteConnectOptions, SourceError> {
    let path = crate::journal::path_of(url);
    crate::journal::store::ensure_exists(&path)
        .await
        .map_err(|e| SourceError::Connect {
            url: redacted_url.to_owned(),
            reason: e.to_string(),
        })?;
    Ok(SqliteConnectOptions::new().filename(path))
}

/// Begins the read of PostgreSQL and MySQL sources: nothing is meant to be written.
const READ_ONLY: &str = "START TRANSACTION READ ONLY";

/// How long a pooled connection may sit unused before it is closed.
const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(2);

/// One direct connection: unlike the pool, it reports why a database is
/// unreachable (refused, unknown host, bad password) instead of a pool timeout.
async fn probe<O>(options: &O, timeout: Duration) -> Result<(), sqlx::Error>
where
    O: ConnectOptions,
    O::Connection: Sized,
{
    sqlx::Connection::close(connect_within(options, timeout).await?).await
}

/// A direct connection, or `PoolTimedOut` when it takes longer than `timeout`.
async fn connect_within<O>(options: &O, timeout: Duration) -> Result<O::Connection, sqlx::Error>
where
    O: ConnectOptions,
    O::Connection: Sized,
{
    tokio::time::timeout(timeout, options.connect())
        .await
        .map_err(|_| sqlx::Error::PoolTimedOut)?
}

/// The source is read once per drift check or recovery. Between reads an idle
/// connection would only hold memory here and a connection slot on the
/// database server, so it is closed soon after.
fn pool_options<DB: Database>(connect_timeout: Duration) -> PoolOptions<DB> {
    PoolOptions::new()
        .max_connections(2)
        .min_connections(0)
        .idle_timeout(IDLE_CONNECTION_TIMEOUT)
        .acquire_timeout(connect_timeout)
}

/// Statements at debug level, as the source query runs every drift check;
/// a read of 100,000 rows that takes over a second is no warning (sqlx's
/// default for slow statements): the read's duration is a metric of its own.
fn quiet<O: ConnectOptions>(options: O) -> O {
    options
        .log_statements(tracing::log::LevelFilter::Debug)
        .log_slow_statements(tracing::log::LevelFilter::Debug, Duration::from_secs(1))
}

/// Each column as the value the database returned. The column types a task
/// table plausibly uses are tried, most specific first; dates become RFC 3339
/// text and JSON columns their JSON text.
pub(super) fn decode_row<DB: DecodeColumns>(row: &DB::Row) -> SourceRow {
    let columns = row
        .columns()
        .iter()
        .enumerate()
        .map(|(index, column)| {
            (
                column.name().to_ascii_lowercase(),
                DB::decode_column(row, index),
            )
        })
        .collect();
    SourceRow { columns }
}

/// A database that decodes every column type a source row can hold: the
/// bounds are stated once, here, for every database that meets them.
pub(super) trait DecodeColumns: Database {
    /// NULL, and a type no decoder takes, read as `ColumnValue::Null`.
    fn decode_column(row: &Self::Row, index: usize) -> ColumnValue;
}

impl<DB: Database> DecodeColumns for DB
where
    usize: sqlx::ColumnIndex<DB::Row>,
    for<'r> i64: Decode<'r, DB> + Type<DB>,
    for<'r> i32: Decode<'r, DB> + Type<DB>,
    for<'r> i16: Decode<'r, DB> + Type<DB>,
    for<'r> f64: Decode<'r, DB> + Type<DB>,
    for<'r> f32: Decode<'r, DB> + Type<DB>,
    for<'r> bool: Decode<'r, DB> + Type<DB>,
    for<'r> String: Decode<'r, DB> + Type<DB>,
    for<'r> serde_json::Value: Decode<'r, DB> + Type<DB>,
    for<'r> chrono::DateTime<chrono::Utc>: Decode<'r, DB> + Type<DB>,
    for<'r> chrono::NaiveDateTime: Decode<'r, DB> + Type<DB>,
    for<'r> chrono::NaiveDate: Decode<'r, DB> + Type<DB>,
    for<'r> Vec<u8>: Decode<'r, DB> + Type<DB>,
{
    fn decode_column(row: &DB::Row, index: usize) -> ColumnValue {
        // The value's own type picks the decoder: trying each in turn would
        // build (and format) an error for every mismatch, on every column of
        // every row.
        let type_info = match row.try_get_raw(index) {
            Ok(raw) if !raw.is_null() => raw.type_info().into_owned(),
            _ => return ColumnValue::Null,
        };
        macro_rules! attempt {
            ($ty:ty, $convert:expr) => {
                if <$ty as Type<DB>>::compatible(&type_info) {
                    if let Ok(value) = row.try_get::<Option<$ty>, _>(index) {
                        return value.map_or(ColumnValue::Null, $convert);
                    }
                }
            };
        }
        attempt!(i64, ColumnValue::Int);
        attempt!(i32, |v| ColumnValue::Int(v.into()));
        attempt!(i16, |v| ColumnValue::Int(v.into()));
        attempt!(bool, ColumnValue::Bool);
        attempt!(String, ColumnValue::Text);
        attempt!(f64, ColumnValue::Float);
        attempt!(f32, |v| ColumnValue::Float(v.into()));
        attempt!(serde_json::Value, |v| ColumnValue::Text(v.to_string()));
        attempt!(chrono::DateTime<chrono::Utc>, |v| ColumnValue::Text(
            v.to_rfc3339()
        ));
        attempt!(chrono::NaiveDateTime, |v| ColumnValue::Text(
            v.format("%Y-%m-%d %H:%M:%S%.f").to_string()
        ));
        attempt!(chrono::NaiveDate, |v| ColumnValue::Text(v.to_string()));
        attempt!(Vec<u8>, |bytes| ColumnValue::Text(
            String::from_utf8_lossy(&bytes).into_owned()
        ));
        ColumnValue::Null
    }
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
    let options = SqliteConnectOptions::new()
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
pub(crate) fn sqlite_path(url: &str) -> PathBuf {
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

/// The columns every row needs, as one phrase, when `found` (lower case)
/// lacks some: `id`, and a schedule (`pattern` or `cron`, or `every_ms`).
fn missing_columns(found: &[String]) -> Option<String> {
    let has = |name: &str| found.iter().any(|f| f == name);
    let mut missing = Vec::new();
    if !has("id") {
        missing.push("id");
    }
    if !["pattern", "cron", "every_ms"].iter().any(|c| has(c)) {
        missing.push("pattern, cron or every_ms");
    }
    (!missing.is_empty()).then(|| missing.join(" and "))
}

pub(super) fn one_line(error: &impl std::fmt::Display) -> String {
    crate::text::collapse_whitespace(&error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_columns_are_named() {
        let cols = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        assert_eq!(missing_columns(&cols(&["id", "cron"])), None);
        assert_eq!(missing_columns(&cols(&["id", "every_ms"])), None);
        assert_eq!(
            missing_columns(&cols(&["task_id", "cron"])).as_deref(),
            Some("id")
        );
        assert_eq!(
            missing_columns(&cols(&["task_id", "expr"])).as_deref(),
            Some("id and pattern, cron or every_ms")
        );
    }

    #[test]
    fn the_default_query_takes_the_optional_columns_the_table_has() {
        let cols = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        assert_eq!(default_query_for(&cols(&["id", "cron"])), DEFAULT_QUERY);
        assert_eq!(
            default_query_for(&cols(&["id", "cron", "repeat_limit", "start_date"])),
            "SELECT id, name, cron, every_ms, tz, payload, opts, queue, start_date, repeat_limit \
             FROM inspection_tasks WHERE enabled"
        );
    }

    #[test]
    fn the_journal_query_names_the_configured_queues() {
        assert!(!journal_query(&[]).contains("WHERE"));
        assert!(
            journal_query(&["a".into(), "o'b".into()]).ends_with("WHERE queue IN ('a', 'o''b')")
        );
    }

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
