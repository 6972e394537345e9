//! `export`: prints the job schedulers now in Redis as rows of the default
//! task table (`inspection_tasks`), so that an application that defines its
//! schedulers only in code can start a table, and have them restored from
//! it, in two commands.
//!
//! Each scheduler is checked the way `recover` will read its row (the same
//! row rules, with the scheduler id as the row id): what would not come back
//! the same — a legacy repeatable job, job options outside the row contract,
//! an end date already past — is left out and named with the reason.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::desired::{DesiredSet, RowRules};
use crate::journal::read::{all_queues, read_queue};
use crate::journal::Definition;
use crate::model::IdTemplate;
use crate::source::{ColumnValue, SourceRow};
use crate::store::{BullmqStore, StoreError};

/// The default table's text keys hold at most this many characters.
const MAX_KEY_CHARS: usize = 255;

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Format {
    /// `CREATE TABLE IF NOT EXISTS inspection_tasks` and one `INSERT` per
    /// scheduler, accepted by SQLite, PostgreSQL and MySQL/MariaDB.
    Sql,
    /// A JSON array of rows.
    Json,
    /// CSV with a header line (RFC 4180 quoting).
    Csv,
}

/// One row of the default table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Row {
    pub(crate) id: String,
    pub(crate) queue: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) cron: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) every_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) tz: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) payload: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) opts: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) start_date: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) end_date: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) repeat_limit: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) repeat_offset: Option<u64>,
}

/// A scheduler that cannot be a row, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LeftOut {
    pub(crate) queue: String,
    pub(crate) id: String,
    pub(crate) reason: String,
}

/// What `export` found.
#[derive(Debug, Default)]
pub(crate) struct Exported {
    pub(crate) rows: Vec<Row>,
    pub(crate) left_out: Vec<LeftOut>,
}

/// Reads the schedulers of `only_queue`, or of every queue under the prefix.
pub(crate) async fn collect(
    store: &BullmqStore,
    only_queue: Option<&str>,
    max_value_bytes: usize,
) -> Result<Exported, StoreError> {
    let queues = match only_queue {
        Some(queue) => [queue.to_owned()].into(),
        None => all_queues(store).await?,
    };
    let mut exported = Exported::default();
    for queue in queues {
        let read = read_queue(store, &queue).await?;
        for member in &read.legacy {
            exported.left_out.push(LeftOut {
                queue: queue.clone(),
                id: member.clone(),
                reason: "a legacy repeatable job (BullMQ 5's queue.add with repeat), \
                         not a job scheduler"
                    .into(),
            });
        }
        for id in read
            .members
            .iter()
            .filter(|id| !read.definitions.contains_key(*id))
        {
            exported.left_out.push(LeftOut {
                queue: queue.clone(),
                id: id.clone(),
                reason: "its hash holds no pattern or every (gone or damaged)".into(),
            });
        }
        let definitions: Vec<Definition> = read.definitions.into_values().collect();
        judge(definitions, max_value_bytes, &mut exported);
    }
    Ok(exported)
}

/// Keeps the definitions `recover` would read back as the same scheduler.
fn judge(definitions: Vec<Definition>, max_value_bytes: usize, exported: &mut Exported) {
    let template = IdTemplate::parse("{id}").expect("a valid template");
    let now_ms = crate::clock::now_ms();
    let mut set = DesiredSet::default();
    let mut rows = BTreeMap::new();
    for definition in definitions {
        let row = row_of(definition);
        let too_long = [("id", &row.id), ("queue", &row.queue)]
            .into_iter()
            .find(|(_, value)| value.chars().count() > MAX_KEY_CHARS);
        if let Some((column, _)) = too_long {
            exported.left_out.push(LeftOut {
                queue: row.queue.clone(),
                id: row.id.clone(),
                reason: format!(
                    "the {column} is longer than the table's {MAX_KEY_CHARS} characters"
                ),
            });
            continue;
        }
        let rules = RowRules {
            default_queue: &row.queue,
            template: &template,
            now_ms,
            max_value_bytes,
        };
        set.add(&source_row(&row), &rules);
        rows.insert((row.queue.clone(), row.id.clone()), row);
    }
    let (_, invalid) = set.finish().into_queues();
    for invalid in invalid {
        let queue = invalid.queue.clone().unwrap_or_default();
        let id = invalid.scheduler_id.clone().unwrap_or(invalid.id);
        rows.remove(&(queue.clone(), id.clone()));
        exported.left_out.push(LeftOut {
            queue,
            id,
            reason: invalid.reason,
        });
    }
    exported.rows.extend(rows.into_values());
}

fn row_of(d: Definition) -> Row {
    Row {
        id: d.id,
        queue: d.queue,
        name: d.name,
        cron: d.pattern,
        every_ms: d.every_ms,
        tz: d.tz,
        payload: d.data,
        opts: d.opts,
        start_date: d.start_date,
        end_date: d.end_date,
        repeat_limit: d.limit,
        repeat_offset: d.offset,
    }
}

/// The row as the source would read it from the table.
fn source_row(row: &Row) -> SourceRow {
    let text = |v: &Option<String>| v.clone().map_or(ColumnValue::Null, ColumnValue::Text);
    let int = |v: Option<u64>| {
        v.and_then(|n| i64::try_from(n).ok())
            .map_or(ColumnValue::Null, ColumnValue::Int)
    };
    let columns = [
        ("id", ColumnValue::Text(row.id.clone())),
        ("queue", ColumnValue::Text(row.queue.clone())),
        ("name", text(&row.name)),
        ("cron", text(&row.cron)),
        ("every_ms", int(row.every_ms)),
        ("tz", text(&row.tz)),
        ("payload", text(&row.payload)),
        ("opts", text(&row.opts)),
        ("start_date", int(row.start_date)),
        ("end_date", int(row.end_date)),
        ("repeat_limit", int(row.repeat_limit)),
        ("repeat_offset", int(row.repeat_offset)),
    ];
    SourceRow {
        columns: columns
            .into_iter()
            .map(|(name, value)| (name.to_owned(), value))
            .collect(),
    }
}

/// The column names, in table order.
const COLUMNS: [&str; 12] = [
    "id",
    "queue",
    "name",
    "cron",
    "every_ms",
    "tz",
    "payload",
    "opts",
    "start_date",
    "end_date",
    "repeat_limit",
    "repeat_offset",
];

/// A row's values in `COLUMNS` order: text or a number, `None` for NULL.
fn values(row: &Row) -> [Option<Value<'_>>; 12] {
    fn text(v: &Option<String>) -> Option<Value<'_>> {
        v.as_deref().map(Value::Text)
    }
    let int = |v: Option<u64>| v.map(Value::Int);
    [
        Some(Value::Text(&row.id)),
        Some(Value::Text(&row.queue)),
        text(&row.name),
        text(&row.cron),
        int(row.every_ms),
        text(&row.tz),
        text(&row.payload),
        text(&row.opts),
        int(row.start_date),
        int(row.end_date),
        int(row.repeat_limit),
        int(row.repeat_offset),
    ]
}

enum Value<'a> {
    Text(&'a str),
    Int(u64),
}

/// The whole output in `format`.
pub(crate) fn render(rows: &[Row], format: Format) -> String {
    match format {
        Format::Sql => sql(rows),
        Format::Json => serde_json::to_string_pretty(rows).unwrap_or_else(|_| "[]".into()) + "\n",
        Format::Csv => csv(rows),
    }
}

/// The table and its rows. MySQL reads `\` in a string literal as an escape
/// where SQLite and PostgreSQL read it as itself; the first statement,
/// which only MySQL runs (`/*!…*/` is a comment elsewhere), makes MySQL
/// read it as itself too, so the same literals load the same text in all
/// three.
fn sql(rows: &[Row]) -> String {
    let mut out = String::from(
        "-- Job schedulers exported by bullmq-warden, as rows of its default table.\n\
         -- Read them with [source] scheduler_id = \"{id}\": the id column holds the scheduler id.\n\
         /*!40101 SET SESSION sql_mode = CONCAT_WS(',', NULLIF(@@SESSION.sql_mode, ''), 'NO_BACKSLASH_ESCAPES') */;\n\
         CREATE TABLE IF NOT EXISTS inspection_tasks (\n  \
           id VARCHAR(255) NOT NULL,\n  \
           queue VARCHAR(255) NOT NULL,\n  \
           name TEXT,\n  \
           cron TEXT,\n  \
           every_ms BIGINT,\n  \
           tz TEXT,\n  \
           payload TEXT,\n  \
           opts TEXT,\n  \
           start_date BIGINT,\n  \
           end_date BIGINT,\n  \
           repeat_limit BIGINT,\n  \
           repeat_offset BIGINT,\n  \
           enabled BOOLEAN NOT NULL DEFAULT TRUE,\n  \
           PRIMARY KEY (queue, id)\n\
         );\n",
    );
    for row in rows {
        let literals: Vec<String> = values(row)
            .iter()
            .map(|value| match value {
                None => "NULL".to_owned(),
                Some(Value::Int(n)) => n.to_string(),
                Some(Value::Text(text)) => format!("'{}'", text.replace('\'', "''")),
            })
            .collect();
        let _ = writeln!(
            out,
            "INSERT INTO inspection_tasks ({}, enabled) VALUES ({}, TRUE);",
            COLUMNS.join(", "),
            literals.join(", ")
        );
    }
    out
}

fn csv(rows: &[Row]) -> String {
    let mut out = COLUMNS.join(",") + "\n";
    for row in rows {
        let fields: Vec<String> = values(row)
            .iter()
            .map(|value| match value {
                None => String::new(),
                Some(Value::Int(n)) => n.to_string(),
                Some(Value::Text(text)) => csv_field(text),
            })
            .collect();
        out.push_str(&fields.join(","));
        out.push('\n');
    }
    out
}

/// Quoted when it holds a comma, a quote, a line break or leading or
/// trailing space; quotes doubled.
fn csv_field(text: &str) -> String {
    let plain = !text.contains([',', '"', '\n', '\r']) && text.trim() == text && !text.is_empty();
    match plain {
        true => text.to_owned(),
        false => format!("\"{}\"", text.replace('"', "\"\"")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn definition(id: &str) -> Definition {
        Definition {
            queue: "mail".into(),
            id: id.into(),
            name: Some("digest".into()),
            pattern: Some("0 3 * * *".into()),
            tz: Some("Europe/Berlin".into()),
            data: Some(r#"{"to":"O'Brien","note":"a\"b"}"#.into()),
            limit: Some(5),
            ..Definition::default()
        }
    }

    #[test]
    fn rows_that_would_not_come_back_the_same_are_left_out() {
        let mut unsupported = definition("b");
        unsupported.opts = Some(r#"{"lifo":true}"#.into());
        let mut no_schedule_left = definition("c");
        no_schedule_left.end_date = Some(1);
        let mut exported = Exported::default();
        judge(
            vec![definition("a"), unsupported, no_schedule_left],
            1 << 20,
            &mut exported,
        );
        let ids: Vec<&str> = exported.rows.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["a"]);
        let left: Vec<(&str, bool)> = exported
            .left_out
            .iter()
            .map(|l| (l.id.as_str(), !l.reason.is_empty()))
            .collect();
        assert_eq!(left, [("b", true), ("c", true)]);
        assert!(
            exported.left_out[0].reason.contains("lifo"),
            "{:?}",
            exported.left_out
        );
    }

    #[test]
    fn sql_quotes_text_and_writes_nulls() {
        let mut exported = Exported::default();
        judge(vec![definition("a")], 1 << 20, &mut exported);
        let text = sql(&exported.rows);
        assert!(text.contains("CREATE TABLE IF NOT EXISTS inspection_tasks"));
        assert!(
            text.contains(r#"'{"to":"O''Brien","note":"a\"b"}'"#),
            "{text}"
        );
        assert!(
            text.contains("'mail', 'digest', '0 3 * * *', NULL, 'Europe/Berlin'"),
            "{text}"
        );
    }

    #[test]
    fn csv_fields_are_quoted_where_needed() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field(r#"{"a":1}"#), r#""{""a"":1}""#);
        assert_eq!(csv_field(""), "\"\"");
    }
}
