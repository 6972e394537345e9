//! Turns source rows into the job schedulers that should exist, row by row.
//!
//! Validation follows what BullMQ itself will accept and how it will read the
//! values (the same cron parser, time zones and job options as the upsert), so a
//! row that passes here restores, and a row that fails is reported with its id
//! instead of failing the whole recovery.

pub(crate) mod packed;
pub(crate) mod snapshot;

use std::collections::{BTreeMap, HashMap};

use bullmq::types::{BackoffStrategy, KeepJobs, RemoveOnFinish};
use bullmq::JobOptions;
use serde_json::{Map, Value};

use crate::model::IdTemplate;
use crate::model::{DesiredScheduler, InvalidRow, Schedule};
use crate::source::{ColumnValue, SourceRow};

/// What a row is judged against, beyond its own values.
pub struct RowRules<'a> {
    /// Queue for rows without a `queue` column (or a NULL one).
    pub default_queue: &'a str,
    pub template: &'a IdTemplate,
    /// Decides which end dates are already past.
    pub now_ms: u64,
    /// A larger text value makes the row invalid: one oversized payload
    /// would otherwise be parsed and held on every comparison.
    pub max_value_bytes: usize,
}

/// Everything the source asks for, split into usable and rejected rows.
#[derive(Debug, Default)]
pub struct DesiredSet {
    /// Valid rows by queue (queues named only by invalid rows included).
    by_queue: BTreeMap<String, Vec<DesiredScheduler>>,
    pub(crate) invalid: Vec<InvalidRow>,
    /// Verdicts on (pattern, time zone) pairs: thousands of rows share a few
    /// patterns, and parsing each row's pattern dominated reading the source.
    cron_checks: CronChecks,
}

/// Cached results of `validate_cron` for rows without a start date.
type CronChecks = HashMap<(String, Option<String>), Result<(), String>>;

impl DesiredSet {
    /// Validates every row.
    #[cfg(test)]
    pub(crate) fn from_rows(rows: &[SourceRow], rules: &RowRules) -> Self {
        let mut set = DesiredSet::default();
        for row in rows {
            set.add(row, rules);
        }
        set.finish()
    }

    /// Validates one row, so rows can be taken as the database streams them.
    pub fn add(&mut self, row: &SourceRow, rules: &RowRules) {
        match desired_from_row(row, rules, &mut self.cron_checks) {
            Ok(scheduler) => match self.by_queue.get_mut(&scheduler.queue) {
                Some(rows) => rows.push(scheduler),
                None => {
                    self.by_queue
                        .insert(scheduler.queue.clone(), vec![scheduler]);
                }
            },
            Err(mut invalid) => {
                invalid.reason = one_line(invalid.reason);
                if let Some(queue) = &invalid.queue {
                    if !self.by_queue.contains_key(queue) {
                        self.by_queue.insert(queue.clone(), Vec::new());
                    }
                }
                self.invalid.push(invalid);
            }
        }
    }

    /// Checks what only the whole set shows (duplicate ids).
    pub fn finish(mut self) -> Self {
        for rows in self.by_queue.values_mut() {
            self.invalid
                .extend(reject_duplicate_ids(rows).into_iter().map(|mut invalid| {
                    invalid.reason = one_line(invalid.reason);
                    invalid
                }));
        }
        self
    }

    /// The valid rows, queue by queue.
    #[cfg(test)]
    pub(crate) fn schedulers(&self) -> impl Iterator<Item = &DesiredScheduler> {
        self.by_queue.values().flatten()
    }

    /// The valid rows grouped by queue (every queue an invalid row names
    /// included), and the invalid rows.
    pub fn into_queues(self) -> (BTreeMap<String, Vec<DesiredScheduler>>, Vec<InvalidRow>) {
        (self.by_queue, self.invalid)
    }
}

/// A reason is read on one line of a report, a log or a terminal; values
/// quoted in it (a cron parser's message, a row id) may hold line breaks.
fn one_line(reason: String) -> String {
    match crate::text::printable(&reason) {
        std::borrow::Cow::Borrowed(_) => reason,
        std::borrow::Cow::Owned(escaped) => escaped,
    }
}

/// Two rows naming one scheduler cannot both win; neither is applied, so the
/// conflict is visible instead of settled by row order. Removes them from
/// `rows` and returns them as invalid rows.
fn reject_duplicate_ids(rows: &mut Vec<DesiredScheduler>) -> Vec<InvalidRow> {
    let mut rows_by_id: HashMap<&str, Vec<&str>> = HashMap::with_capacity(rows.len());
    for s in rows.iter() {
        rows_by_id
            .entry(&s.scheduler_id)
            .or_default()
            .push(&s.row_id);
    }
    let duplicated: HashMap<String, Vec<String>> = rows_by_id
        .into_iter()
        .filter(|(_, ids)| ids.len() > 1)
        .map(|(id, rows)| (id.to_owned(), rows.into_iter().map(str::to_owned).collect()))
        .collect();
    if duplicated.is_empty() {
        return Vec::new();
    }
    let mut invalid = Vec::new();
    rows.retain(|s| {
        let Some(row_ids) = duplicated.get(&s.scheduler_id) else {
            return true;
        };
        let others: Vec<&str> = row_ids
            .iter()
            .filter(|id| **id != s.row_id)
            .map(String::as_str)
            .collect();
        invalid.push(InvalidRow {
            id: s.row_id.clone(),
            queue: Some(s.queue.clone()),
            scheduler_id: Some(s.scheduler_id.clone()),
            reason: format!(
                "duplicate scheduler id {:?} (also row {})",
                s.scheduler_id,
                others.join(", ")
            ),
        });
        false
    });
    invalid
}

/// Judges one row; every rejection carries the row's id, queue and (when it
/// renders) scheduler id, so the report names what the row would have been.
fn desired_from_row(
    row: &SourceRow,
    rules: &RowRules,
    cron_checks: &mut CronChecks,
) -> Result<DesiredScheduler, InvalidRow> {
    let row_id = row.id_text();
    let queue = queue_of(row, rules.default_queue);
    let lookup = |column: &str| -> Option<std::borrow::Cow<'_, str>> {
        if column == "queue" {
            return Some(std::borrow::Cow::Borrowed(queue.as_str()));
        }
        row.get(column).and_then(ColumnValue::as_text)
    };
    // Rendered even for a row that is rejected: its scheduler in Redis is
    // then kept, not taken for an orphan.
    let scheduler_id = rules.template.render(lookup).ok();
    let invalid = |reason: String| InvalidRow {
        id: shortened(&row_id),
        queue: Some(queue.clone()),
        scheduler_id: scheduler_id.clone(),
        reason,
    };
    check_size_id_and_queue(row, &queue, rules.max_value_bytes).map_err(&invalid)?;
    let scheduler_id = rules
        .template
        .render(lookup)
        .map_err(|reason| invalid(format!("scheduler id template: {reason}")))?;
    let name = optional_text(row, "name").unwrap_or_else(|| scheduler_id.clone());
    let tz = time_zone(row).map_err(&invalid)?;
    let (start_date, end_date) = active_dates(row, rules.now_ms).map_err(&invalid)?;
    let schedule =
        schedule(row, tz.as_deref(), start_date, rules.now_ms, cron_checks).map_err(&invalid)?;
    let limit = repeat_limit(row).map_err(&invalid)?;
    let offset = repeat_offset(row, &schedule).map_err(&invalid)?;
    let data = job_data(row).map_err(&invalid)?;
    let opts = job_opts(row).map_err(&invalid)?;
    Ok(DesiredScheduler {
        row_id,
        queue,
        scheduler_id,
        name,
        schedule,
        tz,
        data,
        opts,
        start_date,
        end_date,
        limit,
        offset,
    })
}

fn queue_of(row: &SourceRow, default_queue: &str) -> String {
    match row.get("queue") {
        Some(value) => value.as_text().map(|t| t.into_owned()).unwrap_or_default(),
        None => default_queue.to_owned(),
    }
}

/// What makes a row unusable before its scheduler id is even rendered.
fn check_size_id_and_queue(
    row: &SourceRow,
    queue: &str,
    max_value_bytes: usize,
) -> Result<(), String> {
    if let Some(reason) = oversized_value(row, max_value_bytes) {
        return Err(reason);
    }
    if row.get("id").is_none() {
        return Err("row has no id column (or it is NULL)".into());
    }
    if queue.trim().is_empty() || queue.contains(':') {
        return Err(format!(
            "queue {queue:?} is not a valid BullMQ queue name (empty or contains ':')"
        ));
    }
    Ok(())
}

fn time_zone(row: &SourceRow) -> Result<Option<String>, String> {
    let tz = optional_text(row, "tz");
    if let Some(tz) = &tz {
        tz.parse::<chrono_tz::Tz>()
            .map_err(|_| format!("unknown time zone {tz:?}"))?;
    }
    Ok(tz)
}

/// The start and end dates, refused where BullMQ would refuse the scheduler
/// (an end already past) or where it could never run.
fn active_dates(row: &SourceRow, now_ms: u64) -> Result<(Option<u64>, Option<u64>), String> {
    let start_date = date_column(row, "start_date")?;
    let end_date = date_column(row, "end_date")?;
    if let Some(end) = end_date {
        if end <= now_ms {
            return Err(format!(
                "end_date {end} is in the past; BullMQ would refuse the scheduler"
            ));
        }
        if start_date.is_some_and(|start| start >= end) {
            return Err("start_date is not before end_date".into());
        }
    }
    Ok((start_date, end_date))
}

fn repeat_limit(row: &SourceRow) -> Result<Option<u64>, String> {
    // `repeat_limit` is the default table's name for it (`limit` is an SQL keyword).
    let limit_column = match row.get("limit") {
        Some(_) => "limit",
        None => "repeat_limit",
    };
    positive_integer(row, limit_column)
}

/// BullMQ keeps an offset for interval schedulers only; 0 is none.
fn repeat_offset(row: &SourceRow, schedule: &Schedule) -> Result<Option<u64>, String> {
    match schedule {
        Schedule::EveryMs(_) => {
            Ok(non_negative_integer(row, "repeat_offset")?.filter(|offset| *offset > 0))
        }
        Schedule::Pattern(_) => Ok(None),
    }
}

fn job_data(row: &SourceRow) -> Result<String, String> {
    match optional_text_any(row, &["data", "payload"]) {
        Some(text) => Ok(serde_json::from_str::<Value>(&text)
            .map_err(|e| format!("data is not JSON: {e}"))?
            .to_string()),
        None => Ok("{}".to_owned()),
    }
}

fn job_opts(row: &SourceRow) -> Result<String, String> {
    match optional_text(row, "opts") {
        Some(text) => {
            let value = serde_json::from_str::<Value>(&text)
                .map_err(|e| format!("opts is not JSON: {e}"))?;
            let normalized = normalize_opts(&value).map_err(|reason| format!("opts: {reason}"))?;
            Ok(Value::Object(normalized).to_string())
        }
        None => Ok("{}".to_owned()),
    }
}

fn schedule(
    row: &SourceRow,
    tz: Option<&str>,
    start_date: Option<u64>,
    now_ms: u64,
    cron_checks: &mut CronChecks,
) -> Result<Schedule, String> {
    let pattern = optional_text_any(row, &["pattern", "cron"]).filter(|p| !p.trim().is_empty());
    let every = positive_integer(row, "every_ms")?;
    match (pattern, every) {
        (Some(_), Some(_)) => {
            Err("both a cron pattern and every_ms are set; BullMQ takes one".into())
        }
        (None, None) => Err("neither a cron pattern nor every_ms is set".into()),
        (None, Some(every)) => Ok(Schedule::EveryMs(every)),
        (Some(pattern), None) => {
            if start_date.is_some() {
                // The first run depends on the date: nothing to share.
                validate_cron(&pattern, tz, start_date, now_ms)?;
            } else {
                let key = (pattern.clone(), tz.map(str::to_owned));
                cron_checks
                    .entry(key)
                    .or_insert_with(|| validate_cron(&pattern, tz, None, now_ms))
                    .clone()?;
            }
            Ok(Schedule::Pattern(pattern))
        }
    }
}

/// The aliases Node's cron-parser understands besides field lists.
const CRON_ALIASES: [&str; 6] = [
    "@yearly",
    "@annually",
    "@monthly",
    "@weekly",
    "@daily",
    "@hourly",
];

/// BullMQ in Node reads patterns with cron-parser: 5 or 6 fields, `L` and `#`
/// allowed, no `W` and no `H`. The Rust port computes the first run with
/// croner, so a pattern must also satisfy croner and fire at least once.
fn validate_cron(
    pattern: &str,
    tz: Option<&str>,
    start_date: Option<u64>,
    now_ms: u64,
) -> Result<(), String> {
    let trimmed = pattern.trim();
    if !CRON_ALIASES.contains(&trimmed) {
        let fields: Vec<&str> = trimmed.split_whitespace().collect();
        if !(5..=6).contains(&fields.len()) {
            return Err(format!(
                "cron pattern {pattern:?} has {} fields; BullMQ takes 5 or 6",
                fields.len()
            ));
        }
        // The day-of-month field (third from the end of the last five) is where
        // croner accepts `W`, which Node's cron-parser rejects.
        let day_of_month = fields[fields.len() - 3];
        if day_of_month.to_ascii_uppercase().contains('W') {
            return Err(format!(
                "cron pattern {pattern:?} uses W (nearest weekday), which BullMQ's parser rejects"
            ));
        }
        let uses_hash_token = fields.iter().flat_map(|f| f.split(',')).any(|element| {
            let head = element.split('/').next().unwrap_or_default();
            head.eq_ignore_ascii_case("H") || head.to_ascii_uppercase().starts_with("H(")
        });
        if uses_hash_token {
            return Err(format!(
                "cron pattern {pattern:?} uses H, which BullMQ's parser rejects"
            ));
        }
    }
    match bullmq::job_scheduler::next_cron_millis(trimmed, now_ms, tz, start_date) {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(format!("cron pattern {pattern:?} never fires")),
        Err(e) => Err(format!(
            "cron pattern {pattern:?}: {}",
            cron_cause(&e.to_string(), trimmed)
        )),
    }
}

/// The parser's cause alone: BullMQ wraps croner's message in two clauses
/// that repeat what the reason already says (`invalid configuration: invalid
/// cron pattern '61 * * * *': Component error: …`).
fn cron_cause<'m>(message: &'m str, pattern: &str) -> &'m str {
    let message = message
        .strip_prefix("invalid configuration: ")
        .unwrap_or(message);
    let message = message
        .strip_prefix(&format!("invalid cron pattern '{pattern}': "))
        .unwrap_or(message);
    ["Component error: ", "Invalid pattern: "]
        .iter()
        .find_map(|category| message.strip_prefix(category))
        .unwrap_or(message)
}

/// Job option keys that survive into BullMQ's scheduler template through the
/// Rust port; anything else would be silently dropped, so it is rejected.
const SUPPORTED_OPTS: [&str; 5] = [
    "attempts",
    "backoff",
    "priority",
    "removeOnComplete",
    "removeOnFail",
];

/// Validates `opts` and returns it in the form BullMQ stores it, so that the
/// desired and stored forms can be compared field by field.
fn normalize_opts(value: &Value) -> Result<Map<String, Value>, String> {
    let object = value
        .as_object()
        .ok_or_else(|| "must be a JSON object".to_owned())?;
    let mut normalized = BTreeMap::new();
    for (key, value) in object {
        let stored = match key.as_str() {
            "attempts" => Some(Value::from(u64_value(value, key)?)),
            "priority" => match u64_value(value, key)? {
                0 => None,
                p if p > 2_097_152 => {
                    return Err(format!("priority {p} is above BullMQ's maximum 2097152"))
                }
                p => Some(Value::from(p)),
            },
            "backoff" => Some(normalize_backoff(value)?),
            "removeOnComplete" | "removeOnFail" => Some(normalize_keep(value, key)?),
            other => {
                return Err(format!(
                    "unsupported key {other:?} (supported: {})",
                    SUPPORTED_OPTS.join(", ")
                ))
            }
        };
        if let Some(stored) = stored {
            normalized.insert(key.clone(), stored);
        }
    }
    Ok(normalized.into_iter().collect())
}

fn normalize_backoff(value: &Value) -> Result<Value, String> {
    if let Some(delay) = value.as_u64() {
        return Ok(serde_json::json!({"type": "fixed", "delay": delay}));
    }
    let object = value
        .as_object()
        .ok_or_else(|| "backoff must be a number or {type, delay}".to_owned())?;
    if let Some(key) = object
        .keys()
        .find(|k| !matches!(k.as_str(), "type" | "delay"))
    {
        return Err(format!("backoff.{key:?} is not supported (type, delay)"));
    }
    let kind = object
        .get("type")
        .and_then(Value::as_str)
        .ok_or_else(|| "backoff.type must be a string".to_owned())?;
    let delay = match object.get("delay") {
        Some(d) => u64_value(d, "backoff.delay")?,
        None => 0,
    };
    if !matches!(kind, "fixed" | "exponential") && delay != 0 {
        return Err(format!(
            "backoff.delay is not kept for the custom backoff type {kind:?}; set it to 0 or leave it out"
        ));
    }
    Ok(serde_json::json!({"type": kind, "delay": delay}))
}

fn normalize_keep(value: &Value, key: &str) -> Result<Value, String> {
    match value {
        Value::Bool(_) => Ok(value.clone()),
        Value::Number(_) => Ok(Value::from(u64_value(value, key)?)),
        Value::Object(object) => {
            let mut out = Map::new();
            for (field, v) in object {
                if !matches!(field.as_str(), "age" | "count" | "limit") {
                    return Err(format!(
                        "{key}.{field:?} is not supported (age, count, limit)"
                    ));
                }
                out.insert(field.clone(), Value::from(u64_value(v, key)?));
            }
            Ok(Value::Object(out))
        }
        _ => Err(format!(
            "{key} must be a boolean, a count or {{age, count, limit}}"
        )),
    }
}

fn u64_value(value: &Value, key: &str) -> Result<u64, String> {
    value
        .as_u64()
        .ok_or_else(|| format!("{key} must be a non-negative integer, not {value}"))
}

/// BullMQ's `JobOptions` for a scheduler's jobs.
pub(crate) fn job_options_of(scheduler: &DesiredScheduler) -> JobOptions {
    job_options(&scheduler.opts_value())
}

/// BullMQ's `JobOptions` for a normalized `opts` map.
fn job_options(opts: &Map<String, Value>) -> JobOptions {
    let mut job = JobOptions::default();
    for (key, value) in opts {
        match key.as_str() {
            "attempts" => job.attempts = value.as_u64().map(|v| v.min(u32::MAX.into()) as u32),
            "priority" => job.priority = value.as_u64().map(|v| v.min(u32::MAX.into()) as u32),
            "backoff" => job.backoff = backoff_strategy(value),
            "removeOnComplete" => job.remove_on_complete = remove_on_finish(value),
            "removeOnFail" => job.remove_on_fail = remove_on_finish(value),
            _ => {}
        }
    }
    job
}

fn backoff_strategy(value: &Value) -> Option<BackoffStrategy> {
    let delay = value.get("delay").and_then(Value::as_u64).unwrap_or(0);
    match value.get("type").and_then(Value::as_str)? {
        "fixed" => Some(BackoffStrategy::Fixed(delay)),
        "exponential" => Some(BackoffStrategy::Exponential(delay)),
        custom => Some(BackoffStrategy::Custom(custom.to_owned())),
    }
}

fn remove_on_finish(value: &Value) -> Option<RemoveOnFinish> {
    match value {
        Value::Bool(b) => Some(RemoveOnFinish::Bool(*b)),
        Value::Number(n) => n.as_u64().map(|c| RemoveOnFinish::Count(c as usize)),
        Value::Object(o) => Some(RemoveOnFinish::Options(KeepJobs {
            age: o.get("age").and_then(Value::as_u64),
            count: o.get("count").and_then(Value::as_u64).map(|c| c as usize),
            limit: o.get("limit").and_then(Value::as_u64).map(|c| c as usize),
        })),
        _ => None,
    }
}

/// The first text value over `max` bytes, named with its column.
fn oversized_value(row: &SourceRow, max: usize) -> Option<String> {
    row.columns.iter().find_map(|(column, value)| match value {
        ColumnValue::Text(text) if text.len() > max => Some(format!(
            "column {column:?} holds {} bytes, over source.max_value_bytes ({max})",
            text.len()
        )),
        _ => None,
    })
}

/// An oversized id is reported by its beginning.
fn shortened(id: &str) -> String {
    const SHOWN: usize = 64;
    match id.char_indices().nth(SHOWN) {
        Some((end, _)) => format!("{}…", &id[..end]),
        None => id.to_owned(),
    }
}

fn optional_text(row: &SourceRow, column: &str) -> Option<String> {
    row.get(column)
        .and_then(ColumnValue::as_text)
        .map(|t| t.into_owned())
}

fn optional_text_any(row: &SourceRow, columns: &[&str]) -> Option<String> {
    columns.iter().find_map(|c| optional_text(row, c))
}

/// A column holding 0 or more, as BullMQ's `repeat.offset`.
fn non_negative_integer(row: &SourceRow, column: &str) -> Result<Option<u64>, String> {
    integer_at_least(row, column, 0, "a non-negative")
}

fn positive_integer(row: &SourceRow, column: &str) -> Result<Option<u64>, String> {
    integer_at_least(row, column, 1, "a positive")
}

/// A whole number of at least `min` (integer, whole float or digits), or
/// an error saying the column must be `what` integer.
fn integer_at_least(
    row: &SourceRow,
    column: &str,
    min: u64,
    what: &str,
) -> Result<Option<u64>, String> {
    let Some(value) = row.get(column) else {
        return Ok(None);
    };
    let parsed = match value {
        ColumnValue::Int(i) => u64::try_from(*i).ok(),
        ColumnValue::Float(f) if f.fract() == 0.0 && *f >= 0.0 => Some(*f as u64),
        ColumnValue::Text(t) => t.trim().parse::<u64>().ok(),
        _ => None,
    };
    match parsed {
        Some(n) if n >= min => Ok(Some(n)),
        _ => Err(format!(
            "{column} must be {what} integer, not {:?}",
            value.as_text().unwrap_or_default()
        )),
    }
}

/// Dates as epoch milliseconds, RFC 3339, `YYYY-MM-DD HH:MM:SS` (UTC) or `YYYY-MM-DD`.
fn date_column(row: &SourceRow, column: &str) -> Result<Option<u64>, String> {
    let Some(value) = row.get(column) else {
        return Ok(None);
    };
    let bad = || {
        format!(
            "{column} {:?} is not epoch milliseconds or an ISO date",
            value.as_text().unwrap_or_default()
        )
    };
    let millis = match value {
        ColumnValue::Int(i) => *i,
        ColumnValue::Text(text) => parse_date_text(text.trim()).ok_or_else(bad)?,
        _ => return Err(bad()),
    };
    u64::try_from(millis).map(Some).map_err(|_| bad())
}

fn parse_date_text(text: &str) -> Option<i64> {
    if let Ok(ms) = text.parse::<i64>() {
        return Some(ms);
    }
    if let Ok(dt) = chrono::DateTime::parse_from_rfc3339(text) {
        return Some(dt.timestamp_millis());
    }
    for format in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"] {
        if let Ok(dt) = chrono::NaiveDateTime::parse_from_str(text, format) {
            return Some(dt.and_utc().timestamp_millis());
        }
    }
    chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|dt| dt.and_utc().timestamp_millis())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_790_000_000_000;

    fn row(columns: &[(&str, ColumnValue)]) -> SourceRow {
        SourceRow {
            columns: columns
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        }
    }

    fn text(s: &str) -> ColumnValue {
        ColumnValue::Text(s.into())
    }

    fn desired(rows: &[SourceRow]) -> DesiredSet {
        let template = IdTemplate::parse("inspection:{id}").unwrap();
        DesiredSet::from_rows(rows, &rules(&template))
    }

    fn rules(template: &IdTemplate) -> RowRules<'_> {
        RowRules {
            default_queue: "inspection",
            template,
            now_ms: NOW,
            max_value_bytes: 1024,
        }
    }

    #[test]
    fn an_oversized_value_makes_its_row_invalid_and_no_other() {
        let big = "x".repeat(1025);
        let set = desired(&[
            row(&[
                ("id", ColumnValue::Int(1)),
                ("cron", text("0 * * * *")),
                ("payload", text(&format!("\"{big}\""))),
            ]),
            row(&[("id", ColumnValue::Int(2)), ("cron", text("0 * * * *"))]),
        ]);
        assert_eq!(set.schedulers().count(), 1);
        assert_eq!(set.invalid[0].id, "1");
        assert!(
            set.invalid[0].reason.contains("source.max_value_bytes"),
            "{}",
            set.invalid[0].reason
        );
    }

    fn reason_for(columns: &[(&str, ColumnValue)]) -> String {
        let mut all = vec![("id", ColumnValue::Int(7))];
        all.extend_from_slice(columns);
        let set = desired(&[row(&all)]);
        assert_eq!(
            set.schedulers().count(),
            0,
            "{:?}",
            set.schedulers().collect::<Vec<_>>()
        );
        assert_eq!(set.invalid[0].id, "7");
        set.invalid[0].reason.clone()
    }

    #[test]
    fn a_complete_row_becomes_a_scheduler() {
        let set = desired(&[row(&[
            ("id", ColumnValue::Int(1)),
            ("name", text("daily-report")),
            ("cron", text("0 30 9 * * 1-5")),
            ("tz", text("Europe/Berlin")),
            ("payload", text(r#"{"site":"Zürich"}"#)),
            (
                "opts",
                text(
                    r#"{"attempts":3,"backoff":{"type":"exponential","delay":1000},"priority":0}"#,
                ),
            ),
            ("start_date", text("2026-01-01")),
            ("limit", ColumnValue::Int(10)),
        ])]);
        assert!(set.invalid.is_empty(), "{:?}", set.invalid);
        let s = set.schedulers().next().unwrap();
        assert_eq!(s.scheduler_id, "inspection:1");
        assert_eq!(s.queue, "inspection");
        assert_eq!(s.name, "daily-report");
        assert_eq!(s.schedule, Schedule::Pattern("0 30 9 * * 1-5".into()));
        assert_eq!(s.data, r#"{"site":"Zürich"}"#);
        assert_eq!(
            s.opts_value().len(),
            2,
            "priority 0 is not stored: {}",
            s.opts
        );
        assert_eq!(s.start_date, Some(1_767_225_600_000));
        assert_eq!(s.limit, Some(10));
    }

    #[test]
    fn repeat_limit_and_an_interval_schedulers_offset_are_read() {
        let every = |offset: ColumnValue| {
            desired(&[row(&[
                ("id", ColumnValue::Int(1)),
                ("every_ms", ColumnValue::Int(60_000)),
                ("repeat_limit", ColumnValue::Int(4)),
                ("repeat_offset", offset),
            ])])
        };
        let set = every(ColumnValue::Int(1234));
        let s = set.schedulers().next().expect("valid");
        assert_eq!((s.limit, s.offset), (Some(4), Some(1234)));
        let zero = every(ColumnValue::Int(0));
        assert_eq!(zero.schedulers().next().expect("valid").offset, None);
        let cron = desired(&[row(&[
            ("id", ColumnValue::Int(1)),
            ("cron", text("0 3 * * *")),
            ("repeat_offset", ColumnValue::Int(5)),
        ])]);
        assert_eq!(cron.schedulers().next().expect("valid").offset, None);
        assert!(reason_for(&[
            ("every_ms", ColumnValue::Int(1000)),
            ("repeat_offset", ColumnValue::Int(-1)),
        ])
        .contains("repeat_offset"));
    }

    #[test]
    fn defaults_fill_name_queue_and_data() {
        let set = desired(&[row(&[
            ("id", text("abc")),
            ("every_ms", ColumnValue::Int(5000)),
            ("queue", ColumnValue::Null),
        ])]);
        let s = set.schedulers().next().unwrap();
        assert_eq!(s.name, "inspection:abc");
        assert_eq!(s.queue, "inspection");
        assert_eq!(s.schedule, Schedule::EveryMs(5000));
        assert_eq!(s.data, "{}");
    }

    #[test]
    fn a_cron_reason_names_the_pattern_once() {
        let reason = reason_for(&[("cron", text("61 * * * *"))]);
        assert!(
            reason.starts_with("cron pattern \"61 * * * *\": "),
            "{reason}"
        );
        assert_eq!(reason.matches("61 * * * *").count(), 1, "{reason}");
        for clause in [
            "invalid configuration",
            "invalid cron pattern",
            "Component error",
        ] {
            assert!(!reason.contains(clause), "{reason}");
        }
    }

    #[test]
    fn every_kind_of_bad_row_names_its_reason() {
        assert!(reason_for(&[("cron", text("* * *"))]).contains("3 fields"));
        assert!(reason_for(&[("cron", text("0 0 15W * *"))]).contains("W"));
        assert!(reason_for(&[("cron", text("H * * * *"))]).contains("H"));
        assert!(reason_for(&[("cron", text("61 * * * *"))]).contains("cron pattern"));
        assert!(
            reason_for(&[("cron", text("* * * * *")), ("tz", text("Mars/Olympus"))])
                .contains("time zone")
        );
        assert!(
            reason_for(&[("cron", text("* * * * *")), ("payload", text("{nope"))])
                .contains("data is not JSON")
        );
        assert!(
            reason_for(&[("cron", text("* * * * *")), ("opts", text("[1"))])
                .contains("opts is not JSON")
        );
        assert!(reason_for(&[
            ("cron", text("* * * * *")),
            ("opts", text(r#"{"lifo":true}"#))
        ])
        .contains("lifo"));
        assert!(reason_for(&[
            ("cron", text("* * * * *")),
            ("every_ms", ColumnValue::Int(5))
        ])
        .contains("both"));
        assert!(reason_for(&[]).contains("neither"));
        assert!(reason_for(&[("every_ms", ColumnValue::Int(-5))]).contains("every_ms"));
        assert!(reason_for(&[
            ("every_ms", ColumnValue::Int(5)),
            ("end_date", ColumnValue::Int(5))
        ])
        .contains("past"));
        assert!(
            reason_for(&[("every_ms", ColumnValue::Int(5)), ("queue", text("a:b"))])
                .contains("queue")
        );
    }

    #[test]
    fn a_shared_pattern_is_judged_once_for_every_row() {
        let rows: Vec<SourceRow> = (1..=3)
            .map(|id| row(&[("id", ColumnValue::Int(id)), ("cron", text("0 0 * *"))]))
            .chain([row(&[
                ("id", ColumnValue::Int(4)),
                ("cron", text("0 0 * * *")),
            ])])
            .collect();
        let set = desired(&rows);
        assert_eq!(set.invalid.len(), 3, "{:?}", set.invalid);
        assert!(set.invalid.iter().all(|i| i.reason.contains("4 fields")));
        assert_eq!(set.schedulers().count(), 1);
    }

    #[test]
    fn six_field_patterns_and_aliases_are_accepted() {
        for pattern in ["*/5 * * * * *", "0 0 L * *", "0 0 * * 5#2", "@daily"] {
            let set = desired(&[row(&[("id", ColumnValue::Int(1)), ("cron", text(pattern))])]);
            assert!(set.invalid.is_empty(), "{pattern}: {:?}", set.invalid);
        }
    }

    #[test]
    fn duplicate_ids_reject_every_row_involved() {
        let template = IdTemplate::parse("job:{name}").unwrap();
        let rows = [
            row(&[
                ("id", ColumnValue::Int(1)),
                ("name", text("a")),
                ("every_ms", ColumnValue::Int(9)),
            ]),
            row(&[
                ("id", ColumnValue::Int(2)),
                ("name", text("a")),
                ("every_ms", ColumnValue::Int(9)),
            ]),
            row(&[
                ("id", ColumnValue::Int(3)),
                ("name", text("b")),
                ("every_ms", ColumnValue::Int(9)),
            ]),
        ];
        let rules = RowRules {
            default_queue: "q",
            ..rules(&template)
        };
        let set = DesiredSet::from_rows(&rows, &rules);
        assert_eq!(set.schedulers().count(), 1);
        assert_eq!(set.invalid.len(), 2);
        assert!(
            set.invalid[0].reason.contains("also row 2"),
            "{:?}",
            set.invalid
        );
    }

    #[test]
    fn job_options_follow_the_normalized_opts() {
        let opts = normalize_opts(&serde_json::json!({
            "attempts": 5, "backoff": 2000, "removeOnComplete": {"age": 3600, "count": 10},
            "removeOnFail": 50, "priority": 3
        }))
        .unwrap();
        assert_eq!(
            opts["backoff"],
            serde_json::json!({"type": "fixed", "delay": 2000})
        );
        let job = job_options(&opts);
        assert_eq!(job.attempts, Some(5));
        assert_eq!(job.priority, Some(3));
        assert!(matches!(job.backoff, Some(BackoffStrategy::Fixed(2000))));
        assert!(matches!(
            job.remove_on_fail,
            Some(RemoveOnFinish::Count(50))
        ));
    }
}
