//! The database's side of noticing that rows changed: one long-lived
//! connection that reads SQLite's `data_version` or runs the configured
//! change probe, and PostgreSQL's `LISTEN`. What a change means and when to
//! look again is the signal's business (`signal::source_change`).
//!
//! Both keep their own connection rather than one of the pool's: the pool
//! closes idle connections within seconds, and SQLite's `data_version` is
//! only meaningful on one connection over time (it changes when *another*
//! connection commits, which is every write the application makes).

use std::str::FromStr;
use std::time::Duration;

use sqlx::mysql::{MySqlConnectOptions, MySqlConnection};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgListener};
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::{AssertSqlSafe, ConnectOptions, Connection, Row};

use super::{decode_row, one_line, SourceError, SourceRow};
use crate::config::{redact_url, SourceConfig};

/// How long opening the watching connection may take.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// How long one look (a version read or the change probe) may take: a
/// database that does not answer within it counts as lost.
const LOOK_TIMEOUT: Duration = Duration::from_secs(10);

/// The connection that watches the rows.
pub(crate) struct Watching {
    conn: Conn,
    /// The source URL, password redacted, for errors.
    url: String,
}

enum Conn {
    Sqlite(SqliteConnection),
    Postgres(PgConnection),
    MySql(MySqlConnection),
}

impl Watching {
    /// Opens the connection, read-only where the database allows it.
    pub(crate) async fn open(config: &SourceConfig) -> Result<Self, SourceError> {
        let url = redact_url(&config.url);
        let connect_error = |e: sqlx::Error| SourceError::Connect {
            url: url.clone(),
            reason: one_line(&e),
        };
        let scheme = config.url.split(':').next().unwrap_or_default();
        // Statements run every few hundred milliseconds: never above trace.
        let trace = tracing::log::LevelFilter::Trace;
        let opening = async {
            Ok(match scheme {
                "sqlite" => Conn::Sqlite(
                    SqliteConnectOptions::from_str(&config.url)?
                        .read_only(true)
                        .pragma("query_only", "ON")
                        .log_statements(trace)
                        .connect()
                        .await?,
                ),
                "postgres" | "postgresql" => Conn::Postgres(
                    PgConnectOptions::from_str(&config.url)?
                        .log_statements(trace)
                        .connect()
                        .await?,
                ),
                _ => Conn::MySql(
                    MySqlConnectOptions::from_str(&config.url.replacen("mariadb:", "mysql:", 1))?
                        .log_statements(trace)
                        .connect()
                        .await?,
                ),
            })
        };
        let conn = tokio::time::timeout(OPEN_TIMEOUT, opening)
            .await
            .map_err(|_| connect_error(sqlx::Error::PoolTimedOut))?
            .map_err(connect_error)?;
        Ok(Self { conn, url })
    }

    /// SQLite's `data_version`: it changes whenever another connection
    /// commits to the file. `None` on other databases.
    pub(crate) async fn data_version(&mut self) -> Result<Option<i64>, SourceError> {
        let url = self.url.as_str();
        let Conn::Sqlite(conn) = &mut self.conn else {
            return Ok(None);
        };
        let read = sqlx::query("PRAGMA data_version").fetch_one(&mut *conn);
        let row = within_look_timeout(read, url).await?;
        row.try_get::<i64, _>(0)
            .map(Some)
            .map_err(|e| query_error(url, &e))
    }

    /// The first row the change probe returns (`None` for no row), read in
    /// a read-only transaction where the database has one.
    pub(crate) async fn probe(&mut self, query: &str) -> Result<Option<SourceRow>, SourceError> {
        let url = self.url.as_str();
        macro_rules! first_row {
            ($conn:expr, $begin:expr, $db:ty) => {{
                let mut tx = within_look_timeout($conn.begin_with($begin), url).await?;
                let read = sqlx::query(AssertSqlSafe(query)).fetch_optional(&mut *tx);
                let row = within_look_timeout(read, url).await?;
                let row = row.map(|row| decode_row::<$db>(&row));
                within_look_timeout(tx.rollback(), url).await?;
                Ok(row)
            }};
        }
        match &mut self.conn {
            // Opened read-only: no statement can write.
            Conn::Sqlite(conn) => {
                let read = sqlx::query(AssertSqlSafe(query)).fetch_optional(&mut *conn);
                let row = within_look_timeout(read, url).await?;
                Ok(row.map(|row| decode_row::<sqlx::Sqlite>(&row)))
            }
            Conn::Postgres(conn) => first_row!(conn, "START TRANSACTION READ ONLY", sqlx::Postgres),
            Conn::MySql(conn) => first_row!(conn, "START TRANSACTION READ ONLY", sqlx::MySql),
        }
    }

    pub(crate) async fn close(self) {
        let _ = match self.conn {
            Conn::Sqlite(conn) => conn.close().await,
            Conn::Postgres(conn) => conn.close().await,
            Conn::MySql(conn) => conn.close().await,
        };
    }
}

/// A PostgreSQL connection that listens on `[source] notify_channel`.
pub(crate) struct Notifications {
    listener: PgListener,
    url: String,
}

impl Notifications {
    /// Connects and runs `LISTEN <channel>`.
    pub(crate) async fn listen(config: &SourceConfig, channel: &str) -> Result<Self, SourceError> {
        let url = redact_url(&config.url);
        let connect_error = |e: sqlx::Error| SourceError::Connect {
            url: url.clone(),
            reason: one_line(&e),
        };
        let opening = async {
            let mut listener = PgListener::connect(&config.url).await?;
            // A lost connection ends this listener; the caller listens anew
            // and treats that as a change, since notifications were missed.
            listener.eager_reconnect(false);
            listener.listen(channel).await?;
            Ok(listener)
        };
        let listener = tokio::time::timeout(OPEN_TIMEOUT, opening)
            .await
            .map_err(|_| connect_error(sqlx::Error::PoolTimedOut))?
            .map_err(connect_error)?;
        Ok(Self { listener, url })
    }

    /// Waits for the next notification and takes those already buffered
    /// with it; returns how many arrived. An error means the connection is
    /// lost and notifications may have been missed.
    pub(crate) async fn next(&mut self) -> Result<usize, SourceError> {
        let lost = |reason: String| SourceError::Connect {
            url: self.url.clone(),
            reason,
        };
        match self.listener.try_recv().await {
            Ok(Some(_)) => {}
            Ok(None) => return Err(lost("the listening connection was closed".into())),
            Err(e) => return Err(lost(one_line(&e))),
        }
        let mut arrived = 1;
        while self.listener.next_buffered().is_some() {
            arrived += 1;
        }
        Ok(arrived)
    }
}

async fn within_look_timeout<T>(
    look: impl std::future::Future<Output = Result<T, sqlx::Error>>,
    url: &str,
) -> Result<T, SourceError> {
    match tokio::time::timeout(LOOK_TIMEOUT, look).await {
        Ok(outcome) => outcome.map_err(|e| query_error(url, &e)),
        Err(_) => Err(SourceError::Connect {
            url: url.to_owned(),
            reason: format!("no answer within {LOOK_TIMEOUT:?}"),
        }),
    }
}

/// The database's own error is about the probe; anything else means the
/// connection is gone.
fn query_error(url: &str, error: &sqlx::Error) -> SourceError {
    match error {
        sqlx::Error::Database(_) | sqlx::Error::ColumnDecode { .. } => SourceError::Query {
            url: url.to_owned(),
            reason: one_line(error),
        },
        _ => SourceError::Connect {
            url: url.to_owned(),
            reason: one_line(error),
        },
    }
}
