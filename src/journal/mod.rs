//! The journal: the job schedulers an application defines only in Redis,
//! kept by the warden itself so that they can be restored after Redis loses
//! them (`[source] url = "journal:///…"`).
//!
//! Three concerns, one file each: the file and its writes (`store.rs`), what
//! Redis holds of a queue's schedulers (`read.rs`), and the rules that turn
//! a read and the keyspace evidence into recorded changes (`rules.rs`), run
//! by the recorder (`record.rs`). The journal is read back as a source of rows
//! like any task table (`source/`), so restoring from it takes the same path.

pub(crate) mod read;
pub(crate) mod record;
pub(crate) mod rules;
pub(crate) mod store;

use std::path::PathBuf;

pub(crate) use record::{Notes, Recorder};

/// The URL scheme of a journal source.
pub(crate) const SCHEME: &str = "journal";

/// One scheduler's definition as BullMQ stores it in `repeat:<id>`: what
/// `upsertJobScheduler` needs to create it again.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Definition {
    pub(crate) queue: String,
    pub(crate) id: String,
    pub(crate) name: Option<String>,
    pub(crate) pattern: Option<String>,
    pub(crate) every_ms: Option<u64>,
    pub(crate) tz: Option<String>,
    /// JSON text, as serde_json writes it (Lua's cjson escapes `/`; the
    /// journal and exports hold the plain form).
    pub(crate) data: Option<String>,
    pub(crate) opts: Option<String>,
    pub(crate) start_date: Option<u64>,
    pub(crate) end_date: Option<u64>,
    pub(crate) limit: Option<u64>,
    /// An interval scheduler's `offset` (where its runs fall within `every`).
    pub(crate) offset: Option<u64>,
}

impl Definition {
    /// A definition from the fields of a scheduler hash; `None` when the
    /// hash holds no schedule (neither `pattern` nor `every`), as a hash
    /// caught half-written or damaged would.
    pub(crate) fn from_hash(queue: &str, id: &str, fields: &[(String, String)]) -> Option<Self> {
        let field = |name: &str| {
            fields
                .iter()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.clone())
                .filter(|value| !value.is_empty())
        };
        let number = |name: &str| {
            field(name)
                .and_then(|v| v.parse::<f64>().ok())
                .filter(|v| v.is_finite() && *v >= 0.0)
                .map(|v| v as u64)
        };
        let definition = Self {
            queue: queue.to_owned(),
            id: id.to_owned(),
            name: field("name"),
            pattern: field("pattern"),
            every_ms: number("every"),
            tz: field("tz"),
            data: field("data").map(|text| plain_json(&text)),
            opts: field("opts").map(|text| plain_json(&text)),
            start_date: number("startDate"),
            end_date: number("endDate"),
            limit: number("limit"),
            offset: number("offset").filter(|offset| *offset > 0),
        };
        (definition.pattern.is_some() || definition.every_ms.is_some()).then_some(definition)
    }
}

/// JSON text in serde_json's form (no `\/`, non-ASCII as is); text that is
/// not JSON is kept as it is, for the row checks to report.
fn plain_json(text: &str) -> String {
    serde_json::from_str::<serde_json::Value>(text)
        .map(|value| value.to_string())
        .unwrap_or_else(|_| text.to_owned())
}

/// The file a `journal://` URL names: `journal:///var/lib/j.db` is
/// `/var/lib/j.db`, `journal://j.db` and `journal:j.db` are relative.
pub(crate) fn path_of(url: &str) -> PathBuf {
    let rest = url
        .strip_prefix("journal://")
        .or_else(|| url.strip_prefix("journal:"))
        .unwrap_or_default();
    PathBuf::from(rest.split('?').next().unwrap_or_default())
}

/// Whether a source URL names a journal.
pub(crate) fn is_journal(url: &str) -> bool {
    url.split(':').next() == Some(SCHEME)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_of_journal_urls() {
        assert_eq!(
            path_of("journal:///var/lib/j.db"),
            PathBuf::from("/var/lib/j.db")
        );
        assert_eq!(path_of("journal://j.db"), PathBuf::from("j.db"));
        assert!(is_journal("journal:///x"));
        assert!(!is_journal("sqlite://x"));
    }

    #[test]
    fn a_hash_becomes_a_definition_in_plain_json() {
        let fields: Vec<(String, String)> = [
            ("name", "disk"),
            ("pattern", "0 3 * * *"),
            ("tz", "Europe/Berlin"),
            ("data", r#"{"path":"\/var","city":"Zürich"}"#),
            ("limit", "5"),
            ("ic", "2"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let definition = Definition::from_hash("q", "a", &fields).expect("has a pattern");
        assert_eq!(
            definition.data.as_deref(),
            Some(r#"{"city":"Zürich","path":"/var"}"#)
        );
        assert_eq!(definition.limit, Some(5));
        assert_eq!(definition.every_ms, None);
        assert!(Definition::from_hash("q", "a", &fields[..1]).is_none());
    }
}
