//! The journal file: an SQLite database the warden owns, one row per
//! scheduler it last saw defined, so it holds current definitions, never a
//! history. Every change of a read is written in one transaction with
//! `synchronous = FULL` under SQLite's rollback journal: a warden killed at
//! any moment leaves the file as it was before or after that transaction,
//! never with a scheduler lost or invented.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqliteSynchronous};
use sqlx::{ConnectOptions, Connection, Row};

use super::Definition;

#[derive(Debug, thiserror::Error)]
pub(crate) enum JournalError {
    #[error("cannot open the journal {path}: {reason}")]
    Open { path: PathBuf, reason: String },
    #[error("cannot read the journal {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("cannot write the journal {path}: {reason}")]
    Write { path: PathBuf, reason: String },
}

impl JournalError {
    /// `read` or `write`, for the metric's label.
    pub(crate) fn operation(&self) -> &'static str {
        match self {
            JournalError::Open { .. } | JournalError::Read { .. } => "read",
            JournalError::Write { .. } => "write",
        }
    }
}

/// The table, in the row contract's column names, so that the journal reads
/// back as rows (`JOURNAL_QUERY`). `"limit"` is quoted: it is an SQL keyword.
const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS schedulers (
    queue TEXT NOT NULL,
    id TEXT NOT NULL,
    name TEXT,
    pattern TEXT,
    every_ms INTEGER,
    tz TEXT,
    data TEXT,
    opts TEXT,
    start_date INTEGER,
    end_date INTEGER,
    \"limit\" INTEGER,
    repeat_offset INTEGER,
    recorded_at_ms INTEGER NOT NULL,
    PRIMARY KEY (queue, id)
)";

/// How the source reads the journal back: every recorded scheduler, its id
/// as the row id (the scheduler id template is `{id}` in journal mode).
pub(crate) const JOURNAL_QUERY: &str =
    "SELECT queue, id, name, pattern, every_ms, tz, data, opts, \
     start_date, end_date, \"limit\", repeat_offset FROM schedulers";

/// What one read of a queue changes in the journal.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Changes {
    /// New or changed definitions.
    pub(crate) record: Vec<Definition>,
    /// Schedulers the application removed: (queue, id).
    pub(crate) remove: Vec<(String, String)>,
    /// Queues the application obliterated.
    pub(crate) forget: Vec<String>,
}

impl Changes {
    pub(crate) fn is_empty(&self) -> bool {
        self.record.is_empty() && self.remove.is_empty() && self.forget.is_empty()
    }
}

/// The recorder's read-write connection to the journal file.
pub(crate) struct JournalFile {
    path: PathBuf,
    connection: SqliteConnection,
}

/// Every definition in the journal, by queue and scheduler id.
pub(crate) type Recorded = BTreeMap<String, BTreeMap<String, Definition>>;

impl JournalFile {
    /// Opens the file, creating it and its table when missing.
    pub(crate) async fn open(path: &Path) -> Result<Self, JournalError> {
        let open_error = |e: &dyn std::fmt::Display| JournalError::Open {
            path: path.to_owned(),
            reason: crate::text::collapse_whitespace(&e.to_string()),
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.is_dir() {
                return Err(open_error(&format!(
                    "directory {} does not exist",
                    dir.display()
                )));
            }
        }
        let options = SqliteConnectOptions::from_str("sqlite://")
            .map_err(|e| open_error(&e))?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Delete)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(5))
            .log_statements(tracing::log::LevelFilter::Trace)
            // Recording 100,000 schedulers at start may take over a second:
            // no warning, as the journal's events say what it did.
            .log_slow_statements(tracing::log::LevelFilter::Debug, Duration::from_secs(1));
        let mut connection = options.connect().await.map_err(|e| open_error(&e))?;
        sqlx::query(SCHEMA)
            .execute(&mut connection)
            .await
            .map_err(|e| open_error(&e))?;
        Ok(Self {
            path: path.to_owned(),
            connection,
        })
    }

    /// Every recorded definition.
    pub(crate) async fn load(&mut self) -> Result<Recorded, JournalError> {
        let rows = sqlx::query(JOURNAL_QUERY)
            .fetch_all(&mut self.connection)
            .await
            .map_err(|e| JournalError::Read {
                path: self.path.clone(),
                reason: crate::text::collapse_whitespace(&e.to_string()),
            })?;
        let mut recorded = Recorded::new();
        for row in rows {
            let number = |column: &str| {
                row.try_get::<Option<i64>, _>(column)
                    .ok()
                    .flatten()
                    .and_then(|n| u64::try_from(n).ok())
            };
            let text = |column: &str| row.try_get::<Option<String>, _>(column).ok().flatten();
            let definition = Definition {
                queue: text("queue").unwrap_or_default(),
                id: text("id").unwrap_or_default(),
                name: text("name"),
                pattern: text("pattern"),
                every_ms: number("every_ms"),
                tz: text("tz"),
                data: text("data"),
                opts: text("opts"),
                start_date: number("start_date"),
                end_date: number("end_date"),
                limit: number("limit"),
                offset: number("repeat_offset"),
            };
            recorded
                .entry(definition.queue.clone())
                .or_default()
                .insert(definition.id.clone(), definition);
        }
        Ok(recorded)
    }

    /// Writes `changes` in one transaction: all of them or none.
    pub(crate) async fn apply(
        &mut self,
        changes: &Changes,
        now_ms: u64,
    ) -> Result<(), JournalError> {
        let write_error = |e: sqlx::Error| JournalError::Write {
            path: self.path.clone(),
            reason: crate::text::collapse_whitespace(&e.to_string()),
        };
        let mut tx = self.connection.begin().await.map_err(write_error)?;
        for queue in &changes.forget {
            sqlx::query("DELETE FROM schedulers WHERE queue = ?")
                .bind(queue)
                .execute(&mut *tx)
                .await
                .map_err(write_error)?;
        }
        for (queue, id) in &changes.remove {
            sqlx::query("DELETE FROM schedulers WHERE queue = ? AND id = ?")
                .bind(queue)
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(write_error)?;
        }
        let as_i64 = |n: Option<u64>| n.and_then(|n| i64::try_from(n).ok());
        for d in &changes.record {
            sqlx::query(
                "INSERT OR REPLACE INTO schedulers (queue, id, name, pattern, every_ms, tz, data, \
                 opts, start_date, end_date, \"limit\", repeat_offset, recorded_at_ms) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(&d.queue)
            .bind(&d.id)
            .bind(&d.name)
            .bind(&d.pattern)
            .bind(as_i64(d.every_ms))
            .bind(&d.tz)
            .bind(&d.data)
            .bind(&d.opts)
            .bind(as_i64(d.start_date))
            .bind(as_i64(d.end_date))
            .bind(as_i64(d.limit))
            .bind(as_i64(d.offset))
            .bind(as_i64(Some(now_ms)))
            .execute(&mut *tx)
            .await
            .map_err(write_error)?;
        }
        tx.commit().await.map_err(write_error)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

/// Opens the journal read-write once: creates the file with its table when
/// it does not exist yet, and rolls back a transaction a killed warden left
/// (SQLite's hot journal), so that the source can then open it read-only.
pub(crate) async fn ensure_exists(path: &Path) -> Result<(), JournalError> {
    let file = JournalFile::open(path).await?;
    file.connection
        .close()
        .await
        .map_err(|e| JournalError::Open {
            path: path.to_owned(),
            reason: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn definition(queue: &str, id: &str) -> Definition {
        Definition {
            queue: queue.into(),
            id: id.into(),
            name: Some("n".into()),
            pattern: Some("0 3 * * *".into()),
            data: Some(r#"{"a":"ä"}"#.into()),
            limit: Some(3),
            ..Definition::default()
        }
    }

    #[tokio::test]
    async fn changes_are_recorded_removed_and_forgotten() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("journal.db");
        let mut file = JournalFile::open(&path).await.expect("open");
        let record = Changes {
            record: vec![
                definition("a", "1"),
                definition("a", "2"),
                definition("b", "1"),
            ],
            ..Changes::default()
        };
        file.apply(&record, 1).await.expect("write");
        let removal = Changes {
            remove: vec![("a".into(), "2".into())],
            forget: vec!["b".into()],
            ..Changes::default()
        };
        file.apply(&removal, 2).await.expect("write");
        drop(file);
        let mut again = JournalFile::open(&path).await.expect("reopen");
        let recorded = again.load().await.expect("load");
        assert_eq!(recorded.len(), 1);
        assert_eq!(recorded["a"].len(), 1);
        assert_eq!(recorded["a"]["1"], definition("a", "1"));
    }
}
