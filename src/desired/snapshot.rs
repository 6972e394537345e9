//! The last desired set the source gave, kept so that a loss found while the
//! source cannot be read is still restored: in memory, and in a file
//! (`[source] snapshot_file`) so that a restarted sidecar has it too.
//!
//! The file is JSON with a `version` field (see docs/runbook.md); it is
//! written whole to a temporary file, synced and renamed over the old one, so
//! a crash leaves either the old snapshot or the new one, never half of one.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::ser::{Error as _, SerializeMap as _};
use serde::{Deserialize, Serialize, Serializer};

use super::packed::{PackedQueues, UnpackError};
use crate::model::{DesiredScheduler, InvalidRow, Schedule};

/// The format this sidecar writes and reads.
pub(crate) const FORMAT_VERSION: u32 = 1;

/// Scheduler ids of invalid rows, by queue: never pruned, so kept too.
pub(crate) type ProtectedIds = BTreeMap<String, BTreeSet<String>>;

/// One successful read of the source, judged.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DesiredSnapshot {
    /// When the source gave these rows (epoch ms).
    pub(crate) taken_at_ms: u64,
    /// `[source] scheduler_id` at the time: a snapshot made under another
    /// template names other schedulers and is not used.
    pub(crate) template: String,
    /// Packed: it is held for as long as the sidecar runs. Shared, so a read
    /// that changed nothing keeps the set before (`Kept::pack`).
    pub(crate) queues: Arc<PackedQueues>,
    pub(crate) protected: ProtectedIds,
    /// The invalid rows of the read, for a restore from memory to report
    /// as a read would. Not written to the file: a snapshot restored from
    /// there is no comparison with the rows.
    pub(crate) invalid: Vec<InvalidRow>,
}

impl DesiredSnapshot {
    /// Whether `other` asks for the same schedulers (whatever its time).
    fn same_set(&self, other: &DesiredSnapshot) -> bool {
        self.template == other.template
            && (Arc::ptr_eq(&self.queues, &other.queues) || self.queues == other.queues)
            && self.protected == other.protected
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum SnapshotError {
    #[error(
        "cannot read the snapshot file {path} (source.snapshot_file): {reason}; it is ignored"
    )]
    Read { path: PathBuf, reason: String },
    #[error("the snapshot file {path} (source.snapshot_file) is not a usable snapshot: {reason}; it is ignored")]
    Format { path: PathBuf, reason: String },
    #[error("cannot write the snapshot file {path} (source.snapshot_file): {reason}")]
    Write { path: PathBuf, reason: String },
    #[error("the rows kept in memory cannot be used: {0}")]
    Unpack(#[from] UnpackError),
}

impl SnapshotError {
    /// `read` or `write`, the label its metric is counted under.
    pub(crate) fn operation(&self) -> &'static str {
        match self {
            SnapshotError::Read { .. }
            | SnapshotError::Format { .. }
            | SnapshotError::Unpack(_) => "read",
            SnapshotError::Write { .. } => "write",
        }
    }
}

/// The snapshot in memory and where it is persisted.
pub(crate) struct Kept {
    current: Option<Arc<DesiredSnapshot>>,
    /// `current` came from a read of this process, not from the file.
    read_here: bool,
    path: Option<PathBuf>,
    /// The time of the snapshot last written to the file.
    persisted_ms: Option<u64>,
}

impl Kept {
    /// Loads the file at `path`, if there is one. A file that cannot be read
    /// or was made under another id template is ignored, with the reason.
    pub(crate) fn load(path: Option<PathBuf>, template: &str) -> (Self, Option<SnapshotError>) {
        let mut kept = Kept {
            current: None,
            read_here: false,
            path,
            persisted_ms: None,
        };
        let Some(path) = &kept.path else {
            return (kept, None);
        };
        match read_file(path) {
            Ok(None) => (kept, None),
            Ok(Some(snapshot)) if snapshot.template != template => {
                let reason = format!(
                    "it was made for source.scheduler_id {:?}, not {template:?}",
                    snapshot.template
                );
                let error = SnapshotError::Format {
                    path: path.clone(),
                    reason,
                };
                (kept, Some(error))
            }
            Ok(Some(snapshot)) => {
                kept.persisted_ms = Some(snapshot.taken_at_ms);
                kept.current = Some(Arc::new(snapshot));
                (kept, None)
            }
            Err(error) => (kept, Some(error)),
        }
    }

    /// The snapshot, when it is younger than `max_age` at `now_ms`.
    pub(crate) fn usable(
        &self,
        max_age: std::time::Duration,
        template: &str,
        now_ms: u64,
    ) -> Option<Arc<DesiredSnapshot>> {
        let current = self.current.as_ref()?;
        let max_age_ms = u64::try_from(max_age.as_millis()).unwrap_or(u64::MAX);
        let age = now_ms.saturating_sub(current.taken_at_ms);
        (age < max_age_ms && current.template == template).then(|| current.clone())
    }

    /// The desired set this process last read from the source, under
    /// `template`: what the rows ask for now, as long as no change of them
    /// has been signalled since.
    pub(crate) fn last_read(&self, template: &str) -> Option<Arc<DesiredSnapshot>> {
        let current = self.current.as_ref()?;
        (self.read_here && current.template == template).then(|| current.clone())
    }

    /// `queues` packed: the set kept now when they are the same schedulers,
    /// so an unchanged read allocates nothing of the set's size.
    pub(crate) fn pack(
        &self,
        queues: &BTreeMap<String, Vec<DesiredScheduler>>,
    ) -> Arc<PackedQueues> {
        match &self.current {
            Some(current) if current.queues.packs(queues) => current.queues.clone(),
            _ => Arc::new(PackedQueues::pack(queues)),
        }
    }

    /// Keeps `fresh` in place of the snapshot before; returns it with the
    /// path to write it to when the file should be rewritten: the set
    /// changed, or the file's time lags by more than `refresh_ms` (so that a
    /// restarted sidecar does not judge an unchanged set older than it is).
    pub(crate) fn offer(
        &mut self,
        fresh: DesiredSnapshot,
        refresh_ms: u64,
    ) -> Option<(PathBuf, Arc<DesiredSnapshot>)> {
        let changed = self.current.as_ref().is_none_or(|c| !c.same_set(&fresh));
        let lags = self
            .persisted_ms
            .is_none_or(|at| fresh.taken_at_ms.saturating_sub(at) > refresh_ms);
        let fresh = Arc::new(fresh);
        self.current = Some(fresh.clone());
        self.read_here = true;
        let path = self.path.clone()?;
        (changed || lags).then_some((path, fresh))
    }

    /// Records that the snapshot taken at `taken_at_ms` is in the file.
    pub(crate) fn persisted(&mut self, taken_at_ms: u64) {
        self.persisted_ms = Some(taken_at_ms);
    }

    /// When the kept snapshot was read from the source (epoch ms).
    pub(crate) fn taken_at_ms(&self) -> Option<u64> {
        self.current.as_ref().map(|c| c.taken_at_ms)
    }
}

/// The file as read: version 1 (the version is checked before).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct FileV1 {
    taken_at_ms: u64,
    scheduler_id_template: String,
    /// Per queue, the schedulers its valid rows ask for.
    queues: BTreeMap<String, Vec<FileScheduler>>,
    /// Per queue, the scheduler ids of invalid rows.
    protected: ProtectedIds,
}

/// The file as written: `FileV1`'s fields, with the queues unpacked one at
/// a time while they are written instead of all at once.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FileV1Out<'a> {
    version: u32,
    taken_at_ms: u64,
    scheduler_id_template: &'a str,
    queues: Unpacking<'a>,
    protected: &'a ProtectedIds,
}

struct Unpacking<'a>(&'a PackedQueues);

impl Serialize for Unpacking<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        for queue in self.0.queue_names() {
            let rows = self
                .0
                .unpack_queue(queue, |_| true)
                .map_err(S::Error::custom)?;
            let rows: Vec<FileScheduler> = rows.into_iter().map(FileScheduler::from).collect();
            map.serialize_entry(queue, &rows)?;
        }
        map.end()
    }
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct FileScheduler {
    row_id: String,
    scheduler_id: String,
    name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pattern: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    every_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tz: Option<String>,
    /// Job data and options, as the JSON text BullMQ stores.
    data: String,
    opts: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    start_date: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    end_date: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    limit: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    offset: Option<u64>,
}

impl From<DesiredScheduler> for FileScheduler {
    fn from(s: DesiredScheduler) -> Self {
        let (pattern, every_ms) = match s.schedule {
            Schedule::Pattern(pattern) => (Some(pattern), None),
            Schedule::EveryMs(every) => (None, Some(every)),
        };
        Self {
            row_id: s.row_id,
            scheduler_id: s.scheduler_id,
            name: s.name,
            pattern,
            every_ms,
            tz: s.tz,
            data: s.data,
            opts: s.opts,
            start_date: s.start_date,
            end_date: s.end_date,
            limit: s.limit,
            offset: s.offset,
        }
    }
}

impl FileScheduler {
    fn into_desired(self, queue: &str) -> Result<DesiredScheduler, String> {
        let schedule = match (self.pattern, self.every_ms) {
            (Some(pattern), None) => Schedule::Pattern(pattern),
            (None, Some(every)) => Schedule::EveryMs(every),
            _ => {
                return Err(format!(
                    "scheduler {:?} has both or neither of pattern and everyMs",
                    self.scheduler_id
                ))
            }
        };
        for (what, text) in [("data", &self.data), ("opts", &self.opts)] {
            if serde_json::from_str::<serde_json::Value>(text).is_err() {
                return Err(format!(
                    "scheduler {:?} has {what} that is not JSON",
                    self.scheduler_id
                ));
            }
        }
        Ok(DesiredScheduler {
            row_id: self.row_id,
            queue: queue.to_owned(),
            scheduler_id: self.scheduler_id,
            name: self.name,
            schedule,
            tz: self.tz,
            data: self.data,
            opts: self.opts,
            start_date: self.start_date,
            end_date: self.end_date,
            limit: self.limit,
            offset: self.offset,
        })
    }
}

/// Writes `snapshot` to `path` atomically: a temporary file beside it,
/// synced, renamed over the old one, and the directory synced.
pub(crate) fn write_file(path: &Path, snapshot: &DesiredSnapshot) -> Result<(), SnapshotError> {
    let error = |e: std::io::Error| SnapshotError::Write {
        path: path.to_owned(),
        reason: e.to_string(),
    };
    let file = FileV1Out {
        version: FORMAT_VERSION,
        taken_at_ms: snapshot.taken_at_ms,
        scheduler_id_template: &snapshot.template,
        queues: Unpacking(&snapshot.queues),
        protected: &snapshot.protected,
    };
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = PathBuf::from(temporary);
    let mut out = std::io::BufWriter::new(std::fs::File::create(&temporary).map_err(error)?);
    serde_json::to_writer(&mut out, &file).map_err(|e| error(e.into()))?;
    out.flush().map_err(error)?;
    let written = out.into_inner().map_err(|e| error(e.into_error()))?;
    written.sync_all().map_err(error)?;
    drop(written);
    std::fs::rename(&temporary, path).map_err(error)?;
    let directory = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    std::fs::File::open(directory)
        .and_then(|d| d.sync_all())
        .map_err(error)
}

/// The snapshot in the file at `path`; `None` when there is no file.
fn read_file(path: &Path) -> Result<Option<DesiredSnapshot>, SnapshotError> {
    let text = match std::fs::read(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(SnapshotError::Read {
                path: path.to_owned(),
                reason: e.to_string(),
            })
        }
    };
    let format = |reason: String| SnapshotError::Format {
        path: path.to_owned(),
        reason,
    };
    let value: serde_json::Value =
        serde_json::from_slice(&text).map_err(|e| format(format!("not JSON ({e})")))?;
    let version = value.get("version").and_then(serde_json::Value::as_u64);
    if version != Some(u64::from(FORMAT_VERSION)) {
        return Err(format(format!(
            "its version is {}, this sidecar reads {FORMAT_VERSION}",
            version.map_or_else(|| "missing".to_owned(), |v| v.to_string())
        )));
    }
    let file: FileV1 = serde_json::from_value(value).map_err(|e| format(e.to_string()))?;
    let mut queues = BTreeMap::new();
    for (queue, rows) in file.queues {
        let rows = rows
            .into_iter()
            .map(|row| row.into_desired(&queue))
            .collect::<Result<Vec<_>, _>>()
            .map_err(format)?;
        queues.insert(queue, rows);
    }
    Ok(Some(DesiredSnapshot {
        taken_at_ms: file.taken_at_ms,
        template: file.scheduler_id_template,
        queues: Arc::new(PackedQueues::pack(&queues)),
        protected: file.protected,
        invalid: Vec::new(),
    }))
}

/// Where the snapshot is kept when `[source] snapshot_file` is not set:
/// beside an SQLite source's file; nowhere (memory only) for other sources.
pub(crate) fn default_path(source_url: &str) -> Option<PathBuf> {
    if !source_url.starts_with("sqlite:") {
        return None;
    }
    let file = crate::source::sqlite_path(source_url);
    if file.as_os_str().is_empty() {
        return None;
    }
    let mut name = file.into_os_string();
    name.push(".snapshot.json");
    Some(PathBuf::from(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scheduler(id: &str, schedule: Schedule) -> DesiredScheduler {
        DesiredScheduler {
            row_id: id.into(),
            queue: "q".into(),
            scheduler_id: format!("t:{id}"),
            name: "n".into(),
            schedule,
            tz: Some("Europe/Berlin".into()),
            data: "{\"a\":1}".into(),
            opts: "{}".into(),
            start_date: None,
            end_date: Some(4_000_000_000_000),
            limit: Some(3),
            offset: None,
        }
    }

    fn snapshot(taken_at_ms: u64) -> DesiredSnapshot {
        DesiredSnapshot {
            taken_at_ms,
            template: "t:{id}".into(),
            queues: Arc::new(PackedQueues::pack(&BTreeMap::from([(
                "q".to_owned(),
                vec![
                    scheduler("1", Schedule::Pattern("0 3 * * *".into())),
                    scheduler("2", Schedule::EveryMs(60_000)),
                ],
            )]))),
            protected: BTreeMap::from([("q".to_owned(), BTreeSet::from(["t:9".to_owned()]))]),
            invalid: Vec::new(),
        }
    }

    #[test]
    fn a_written_snapshot_reads_back_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        write_file(&path, &snapshot(5)).unwrap();
        assert_eq!(read_file(&path).unwrap(), Some(snapshot(5)));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("{\"version\":1,"), "{text}");
        assert!(!dir.path().join("s.json.tmp").exists());
    }

    #[test]
    fn a_corrupt_or_foreign_file_is_ignored_with_its_reason() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        std::fs::write(&path, "{\"version\":1,\"takenAtMs\":").unwrap();
        let (kept, error) = Kept::load(Some(path.clone()), "t:{id}");
        assert!(kept.taken_at_ms().is_none());
        assert!(error.unwrap().to_string().contains("not JSON"));
        std::fs::write(&path, "{\"version\":7}").unwrap();
        let (_, error) = Kept::load(Some(path.clone()), "t:{id}");
        assert!(error.unwrap().to_string().contains("version is 7"));
        write_file(&path, &snapshot(5)).unwrap();
        let (kept, error) = Kept::load(Some(path), "other:{id}");
        assert!(kept.taken_at_ms().is_none());
        assert!(error.unwrap().to_string().contains("other:{id}"));
    }

    #[test]
    fn the_file_is_rewritten_when_the_set_changes_or_its_time_lags() {
        let (mut kept, _) = Kept::load(Some(PathBuf::from("unused")), "t:{id}");
        assert!(kept.offer(snapshot(1_000), 500).is_some(), "first");
        kept.persisted(1_000);
        assert!(kept.offer(snapshot(1_400), 500).is_none(), "same, recent");
        assert!(kept.offer(snapshot(1_600), 500).is_some(), "same, lagging");
        kept.persisted(1_600);
        let mut changed = snapshot(1_700);
        changed.protected.clear();
        assert!(kept.offer(changed, 500).is_some(), "changed");
        let hour = std::time::Duration::from_secs(3600);
        assert!(kept.usable(hour, "t:{id}", 1_800).is_some());
        assert!(kept.usable(hour, "t:{id}", 1_700 + 3_600_000).is_none());
        assert!(kept
            .usable(std::time::Duration::ZERO, "t:{id}", 1_700)
            .is_none());
        assert!(kept.usable(hour, "x:{id}", 1_800).is_none());
    }

    #[test]
    fn a_read_that_changed_nothing_keeps_the_packed_set_it_has() {
        let (mut kept, _) = Kept::load(None, "t:{id}");
        let queues = snapshot(1_000).queues.unpack(|_| true).unwrap();
        let first = kept.pack(&queues);
        assert!(
            !Arc::ptr_eq(&first, &kept.pack(&queues)),
            "nothing kept yet"
        );
        kept.offer(
            DesiredSnapshot {
                queues: first.clone(),
                ..snapshot(1_000)
            },
            500,
        );
        assert!(Arc::ptr_eq(&first, &kept.pack(&queues)));
        let mut changed = queues.clone();
        changed.get_mut("q").unwrap()[1].name.push('!');
        let repacked = kept.pack(&changed);
        assert!(!Arc::ptr_eq(&first, &repacked));
        assert_eq!(repacked.unpack(|_| true).unwrap(), changed);
    }

    #[test]
    fn sqlite_sources_keep_it_beside_their_file() {
        assert_eq!(
            default_path("sqlite:///var/lib/w/tasks.db?mode=ro"),
            Some(PathBuf::from("/var/lib/w/tasks.db.snapshot.json"))
        );
        assert_eq!(default_path("sqlite::memory:"), None);
        assert_eq!(default_path("postgres://h/db"), None);
    }
}
