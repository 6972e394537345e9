//! Schedulers as Redis holds them: what a read found, nothing decided yet.

use std::collections::BTreeMap;

/// One scheduler as Redis holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredScheduler {
    /// Score in the `repeat` set: the next run, epoch milliseconds.
    pub next_ms: u64,
    /// The compared fields of `repeat:<id>`; `None` when the hash is gone,
    /// or was not read (`matches_row`).
    pub hash: Option<SchedulerFields>,
    /// The hash was not read: it matched this scheduler's row at an earlier
    /// read and no notification about it came since (see `store::verified`).
    pub matches_row: bool,
    /// What Redis holds of the job for the next run (`repeat:<id>:<next>`);
    /// whether that run will happen is the plan's judgement
    /// ([`NextJobState::judge`]), as it depends on the time.
    pub next_job: NextJobFacts,
}

/// What one read found of a scheduler's next job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NextJobFacts {
    /// The job hash exists.
    pub exists: bool,
    /// The job is in the queue's delayed set.
    pub in_delayed: bool,
}

impl NextJobFacts {
    /// A next job that is where BullMQ puts it.
    pub const QUEUED: NextJobFacts = NextJobFacts {
        exists: true,
        in_delayed: true,
    };
}

/// Whether a scheduler's next run will happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NextJobState {
    /// In the delayed set, or due and possibly already taken from it.
    Queued,
    /// Gone: the scheduler never fires again.
    Missing,
    /// Its hash survives but the delayed set lost it (the set was deleted or
    /// evicted): nothing would ever move it on, so the scheduler never fires
    /// again, and BullMQ refuses to replace it while the scheduler points at it.
    Stranded,
}

impl NextJobState {
    /// Judges a next job by what Redis holds. A job due within
    /// `PROMOTION_MARGIN_MS` may already have left the delayed set, as the
    /// workers' clocks and ours differ; only one further away must be in it.
    pub(crate) fn judge(facts: NextJobFacts, next_ms: u64, now_ms: u64) -> Self {
        match (facts.exists, facts.in_delayed) {
            (false, _) => NextJobState::Missing,
            (true, false) if next_ms > now_ms.saturating_add(PROMOTION_MARGIN_MS) => {
                NextJobState::Stranded
            }
            (true, _) => NextJobState::Queued,
        }
    }
}

/// How far ahead a next run must be before its job has to be in the delayed set.
pub(crate) const PROMOTION_MARGIN_MS: u64 = 60_000;

/// The id BullMQ gives the job of a scheduler's run at `run_at_ms`.
pub(crate) fn scheduler_job_id(scheduler_id: &str, run_at_ms: u64) -> String {
    format!("repeat:{scheduler_id}:{run_at_ms}")
}

/// The fields of a scheduler hash (`repeat:<id>`) that decide whether it
/// matches its row; only these are read, to keep 100,000 of them small.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SchedulerFields {
    values: [Option<String>; 9],
}

impl SchedulerFields {
    /// Hash field names, in BullMQ's spelling.
    pub(crate) const NAMES: [&'static str; 9] = [
        "name",
        "pattern",
        "every",
        "tz",
        "data",
        "opts",
        "startDate",
        "endDate",
        "limit",
    ];

    pub fn get(&self, name: &str) -> Option<&str> {
        let index = Self::NAMES.iter().position(|n| *n == name)?;
        self.values[index].as_deref()
    }
}

impl<K: AsRef<str>, V: Into<String>> FromIterator<(K, V)> for SchedulerFields {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(pairs: I) -> Self {
        let mut fields = Self::default();
        for (name, value) in pairs {
            if let Some(index) = Self::NAMES.iter().position(|n| *n == name.as_ref()) {
                fields.values[index] = Some(value.into());
            }
        }
        fields
    }
}

/// The schedulers of one queue.
#[derive(Debug, Default, Clone)]
pub struct QueueSchedulers {
    pub schedulers: BTreeMap<String, StoredScheduler>,
    /// Legacy repeatable jobs (BullMQ 5 `queue.add(…, {repeat})`), counted, never touched.
    pub legacy: usize,
    /// The `version` field of the queue's meta hash (`bullmq:6.7.0`), as the
    /// BullMQ that last set the queue up wrote it; `None` when absent.
    pub bullmq_version: Option<String>,
}
