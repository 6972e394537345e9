//! Schedulers as the database wants them, and rows that cannot be one.

use serde::Serialize;
use serde_json::{Map, Value};

/// How often a scheduler fires.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Schedule {
    Pattern(String),
    EveryMs(u64),
}

/// A job scheduler as the database says it should be.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DesiredScheduler {
    pub row_id: String,
    pub queue: String,
    pub scheduler_id: String,
    pub name: String,
    pub schedule: Schedule,
    pub tz: Option<String>,
    /// Job data as JSON text: kept as text because 100,000 parsed values
    /// would cost several times the memory.
    pub data: String,
    /// Job options as JSON text, in the form BullMQ stores them in the
    /// scheduler hash (text for the same reason as `data`).
    pub opts: String,
    pub start_date: Option<u64>,
    pub end_date: Option<u64>,
    pub limit: Option<u64>,
    /// Interval schedulers: BullMQ's `repeat.offset`, where the runs fall
    /// within each `every`. Given, a scheduler created again keeps its run
    /// times instead of running at once. Used when writing, not compared.
    pub offset: Option<u64>,
}

/// A row that cannot become a scheduler, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct InvalidRow {
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// The scheduler id the row would have had, when it could be rendered.
    #[serde(skip)]
    pub scheduler_id: Option<String>,
    pub reason: String,
}

impl DesiredScheduler {
    /// The job data as a JSON value, for writing.
    pub(crate) fn data_value(&self) -> Value {
        // The text was produced from a parsed value, so it parses.
        serde_json::from_str(&self.data).unwrap_or_else(|_| Value::Object(Map::new()))
    }

    /// The job options as a JSON object.
    pub(crate) fn opts_value(&self) -> Map<String, Value> {
        serde_json::from_str(&self.opts).unwrap_or_default()
    }
}

#[cfg(test)]
impl DesiredScheduler {
    /// A scheduler of queue `q` for row `id`, with empty data and options.
    pub(crate) fn example(id: &str, schedule: Schedule) -> Self {
        Self {
            row_id: id.into(),
            queue: "q".into(),
            scheduler_id: format!("t:{id}"),
            name: "n".into(),
            schedule,
            tz: None,
            data: "{}".into(),
            opts: "{}".into(),
            start_date: None,
            end_date: None,
            limit: None,
            offset: None,
        }
    }
}
