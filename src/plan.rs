//! Compares what the database wants with what Redis holds and plans the changes.
//!
//! Pure: no I/O, so every decision the sidecar makes about drift can be tested
//! and printed (`recover --dry-run`) before anything is written.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use serde_json::Value;

use crate::model::{
    scheduler_job_id, NextJobState, QueueSchedulers, SchedulerFields, StoredScheduler,
};
use crate::model::{DesiredScheduler, InvalidRow, Schedule};
use crate::model::{IdTemplate, VersionCheck};

/// One way a stored scheduler can differ from its row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Difference {
    /// The scheduler hash is gone; only the set member is left.
    SchedulerHash,
    /// The next run's job is gone or stranded: the scheduler never fires again.
    NextJob,
    Name,
    Pattern,
    Every,
    Tz,
    Data,
    Opts,
    StartDate,
    EndDate,
    Limit,
}

impl Difference {
    /// The name printed by `recover` and in its JSON report.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Difference::SchedulerHash => "scheduler hash",
            Difference::NextJob => "next job",
            Difference::Name => "name",
            Difference::Pattern => "pattern",
            Difference::Every => "every",
            Difference::Tz => "tz",
            Difference::Data => "data",
            Difference::Opts => "opts",
            Difference::StartDate => "start_date",
            Difference::EndDate => "end_date",
            Difference::Limit => "limit",
        }
    }

    /// Whether the scheduler stopped firing (as opposed to firing with
    /// outdated fields): such a scheduler may have missed runs.
    pub(crate) fn stops_runs(self) -> bool {
        matches!(self, Difference::SchedulerHash | Difference::NextJob)
    }
}

impl Serialize for Difference {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// A scheduler whose stored form differs from its row.
#[derive(Debug, Clone)]
pub struct Update {
    pub scheduler: DesiredScheduler,
    /// Which fields differ, field by field and then the next job.
    pub differs: Vec<Difference>,
    /// The id of a next job that BullMQ would refuse to replace, which the
    /// write must remove first (see `NextJobState::Stranded`).
    pub stranded_job_id: Option<String>,
}

/// What one queue needs.
#[derive(Debug, Clone, Default)]
pub struct QueuePlan {
    /// Valid rows that want a scheduler in this queue.
    pub desired: usize,
    pub create: Vec<DesiredScheduler>,
    pub update: Vec<Update>,
    pub unchanged: Vec<String>,
    /// Schedulers under the template's prefix that no row wants.
    pub orphaned: Vec<String>,
    pub legacy: usize,
    /// The BullMQ version the queue's meta hash records (`bullmq:6.7.0`).
    pub bullmq_version: Option<String>,
}

impl QueuePlan {
    /// Redis held schedulers of the id template's for this queue.
    pub(crate) fn holds_schedulers(&self) -> bool {
        !(self.unchanged.is_empty() && self.update.is_empty() && self.orphaned.is_empty())
    }

    /// Sorts one queue's rows against what Redis held for it at `now_ms`.
    pub fn new(
        queue: &str,
        rows: Vec<DesiredScheduler>,
        in_redis: &QueueSchedulers,
        protected: &Protected,
        template: &IdTemplate,
        now_ms: u64,
    ) -> Self {
        if in_redis.schedulers.is_empty() {
            return Self::all_missing(rows, in_redis);
        }
        let wanted_ids: std::collections::HashSet<&str> =
            rows.iter().map(|s| s.scheduler_id.as_str()).collect();
        let orphaned = in_redis
            .schedulers
            .keys()
            .filter(|id| {
                template.may_have_rendered(id)
                    && !wanted_ids.contains(id.as_str())
                    && !protected
                        .get(queue)
                        .is_some_and(|ids| ids.contains(id.as_str()))
            })
            .cloned()
            .collect();
        drop(wanted_ids);
        let mut plan = QueuePlan {
            desired: rows.len(),
            legacy: in_redis.legacy,
            bullmq_version: in_redis.bullmq_version.clone(),
            orphaned,
            ..QueuePlan::default()
        };
        for scheduler in rows {
            match in_redis.schedulers.get(&scheduler.scheduler_id) {
                None => plan.create.push(scheduler),
                Some(actual) => {
                    let next_job = NextJobState::judge(actual.next_job, actual.next_ms, now_ms);
                    let differs = differences(&scheduler, actual, next_job);
                    if differs.is_empty() {
                        plan.unchanged.push(scheduler.scheduler_id);
                    } else {
                        let stranded_job_id = (next_job == NextJobState::Stranded)
                            .then(|| scheduler_job_id(&scheduler.scheduler_id, actual.next_ms));
                        plan.update.push(Update {
                            scheduler,
                            differs,
                            stranded_job_id,
                        });
                    }
                }
            }
        }
        plan
    }

    /// After a flush or a restart every row is a create: the rows are
    /// handed over as they are, with no lookups and no copy.
    fn all_missing(rows: Vec<DesiredScheduler>, in_redis: &QueueSchedulers) -> Self {
        QueuePlan {
            desired: rows.len(),
            legacy: in_redis.legacy,
            bullmq_version: in_redis.bullmq_version.clone(),
            create: rows,
            ..QueuePlan::default()
        }
    }
}

/// The schedulers of invalid rows: a row that is broken today may be fixed
/// tomorrow, so its scheduler is never reported as an orphan or pruned.
pub fn protected_ids(invalid: &[InvalidRow]) -> Protected {
    let mut protected = Protected::new();
    for row in invalid {
        if let (Some(queue), Some(id)) = (&row.queue, &row.scheduler_id) {
            protected
                .entry(queue.clone())
                .or_default()
                .insert(id.clone());
        }
    }
    protected
}

/// Scheduler ids of invalid rows, by queue.
pub(crate) type Protected = BTreeMap<String, BTreeSet<String>>;

/// What the whole source needs.
#[derive(Debug, Clone, Default)]
pub(crate) struct Plan {
    pub(crate) queues: BTreeMap<String, QueuePlan>,
    pub(crate) invalid: Vec<InvalidRow>,
}

impl Plan {
    pub(crate) fn missing(&self) -> usize {
        self.queues.values().map(|q| q.create.len()).sum()
    }

    pub(crate) fn mismatched(&self) -> usize {
        self.queues.values().map(|q| q.update.len()).sum()
    }

    pub(crate) fn is_in_sync(&self) -> bool {
        self.missing() == 0 && self.mismatched() == 0
    }

    pub(crate) fn orphaned(&self) -> usize {
        self.queues.values().map(|q| q.orphaned.len()).sum()
    }

    /// In sync, and with `prune` no orphan left either: what a recovery
    /// would leave.
    pub(crate) fn is_settled(&self, prune: bool) -> bool {
        self.is_in_sync() && (!prune || self.orphaned() == 0)
    }

    /// Queues written by a BullMQ major the warden was not verified
    /// against, with the version their meta hash records.
    pub(crate) fn unverified_queues(&self) -> BTreeMap<String, String> {
        self.queues
            .iter()
            .filter_map(
                |(queue, plan)| match VersionCheck::of(plan.bullmq_version.as_deref()) {
                    VersionCheck::Unverified(version) => Some((queue.clone(), version)),
                    VersionCheck::Absent | VersionCheck::Verified => None,
                },
            )
            .collect()
    }

    /// The plan without the `withheld` queues: what may be written while
    /// they wait for an operator.
    pub(crate) fn without(&self, withheld: &BTreeMap<String, String>) -> Plan {
        Plan {
            queues: self
                .queues
                .iter()
                .filter(|(queue, _)| !withheld.contains_key(*queue))
                .map(|(queue, plan)| (queue.clone(), plan.clone()))
                .collect(),
            invalid: self.invalid.clone(),
        }
    }
}

/// The ways `have`, whose next job is `next_job`, differs from `want`.
fn differences(
    want: &DesiredScheduler,
    have: &StoredScheduler,
    next_job: NextJobState,
) -> Vec<Difference> {
    if have.matches_row {
        return match next_job {
            NextJobState::Queued => Vec::new(),
            NextJobState::Missing | NextJobState::Stranded => vec![Difference::NextJob],
        };
    }
    let Some(hash) = &have.hash else {
        return match next_job {
            NextJobState::Queued => vec![Difference::SchedulerHash],
            NextJobState::Missing | NextJobState::Stranded => {
                vec![Difference::SchedulerHash, Difference::NextJob]
            }
        };
    };
    field_differences(want, hash, next_job)
}

/// `differences` for a scheduler whose hash was read: each field compared
/// as BullMQ stores it (numbers as text, `data` and `opts` as JSON).
fn field_differences(
    want: &DesiredScheduler,
    hash: &SchedulerFields,
    next_job: NextJobState,
) -> Vec<Difference> {
    let field = |name: &str| hash.get(name);
    let number = |name: &str| {
        field(name)
            .and_then(|v| v.parse::<f64>().ok())
            .map(|v| v as u64)
    };
    let (pattern, every) = match &want.schedule {
        Schedule::Pattern(p) => (Some(p.as_str()), None),
        Schedule::EveryMs(ms) => (None, Some(*ms)),
    };
    let checks = [
        (Difference::Name, field("name") != Some(want.name.as_str())),
        (Difference::Pattern, field("pattern") != pattern),
        (Difference::Every, number("every") != every),
        (Difference::Tz, field("tz") != want.tz.as_deref()),
        (
            Difference::Data,
            !json_equal(&stored_json(hash, "data"), &want.data_value()),
        ),
        (
            Difference::Opts,
            !json_equal(
                &stored_json(hash, "opts"),
                &Value::Object(want.opts_value()),
            ),
        ),
        (
            Difference::StartDate,
            number("startDate") != want.start_date,
        ),
        (Difference::EndDate, number("endDate") != want.end_date),
        (Difference::Limit, number("limit") != want.limit),
        (Difference::NextJob, next_job != NextJobState::Queued),
    ];
    checks
        .into_iter()
        .filter_map(|(difference, differs)| differs.then_some(difference))
        .collect()
}

/// BullMQ leaves `data` and `opts` out of the hash when they are `{}`.
fn stored_json(hash: &SchedulerFields, field: &str) -> Value {
    hash.get(field)
        .and_then(|text| serde_json::from_str(text).ok())
        .unwrap_or_else(|| Value::Object(Default::default()))
}

/// JSON equality where `3` and `3.0` are the same number, as they are once Lua's
/// cjson has re-encoded a value.
fn json_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| json_equal(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|other| json_equal(v, other)))
        }
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::NextJobFacts;

    fn desired(id: &str, schedule: Schedule) -> DesiredScheduler {
        DesiredScheduler {
            row_id: id.into(),
            queue: "q".into(),
            scheduler_id: format!("t:{id}"),
            name: "job".into(),
            schedule,
            tz: None,
            data: r#"{"a":1}"#.into(),
            opts: r#"{"attempts":3}"#.into(),
            start_date: None,
            end_date: None,
            limit: None,
            offset: None,
        }
    }

    fn stored(fields: &[(&str, &str)]) -> StoredScheduler {
        StoredScheduler {
            next_ms: NEXT_RUN_MS,
            hash: Some(fields.iter().copied().collect()),
            matches_row: false,
            next_job: NextJobFacts::QUEUED,
        }
    }

    /// The stored schedulers' next run, an hour after `NOW_MS`.
    const NEXT_RUN_MS: u64 = 1_700_003_600_000;
    const NOW_MS: u64 = 1_700_000_000_000;

    fn plan(rows: Vec<DesiredScheduler>, redis: Vec<(&str, StoredScheduler)>) -> QueuePlan {
        plan_at(NOW_MS, rows, redis)
    }

    fn plan_at(
        now_ms: u64,
        rows: Vec<DesiredScheduler>,
        redis: Vec<(&str, StoredScheduler)>,
    ) -> QueuePlan {
        let invalid = vec![InvalidRow {
            id: "9".into(),
            queue: Some("q".into()),
            scheduler_id: Some("t:9".into()),
            reason: "bad".into(),
        }];
        let in_redis = QueueSchedulers {
            schedulers: redis.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
            legacy: 1,
            bullmq_version: None,
        };
        let template = IdTemplate::parse("t:{id}").unwrap();
        QueuePlan::new(
            "q",
            rows,
            &in_redis,
            &protected_ids(&invalid),
            &template,
            now_ms,
        )
    }

    #[test]
    fn a_queue_redis_holds_nothing_of_makes_every_row_a_create_in_order() {
        let rows = vec![
            desired("2", Schedule::EveryMs(1000)),
            desired("1", Schedule::Pattern("* * * * *".into())),
        ];
        let queue = plan(rows.clone(), vec![]);
        assert_eq!(queue.create, rows);
        assert_eq!((queue.desired, queue.legacy), (2, 1));
        assert!(queue.update.is_empty() && queue.unchanged.is_empty());
        assert!(queue.orphaned.is_empty());
    }

    #[test]
    fn sorts_rows_into_create_update_unchanged_and_orphans() {
        let same = stored(&[
            ("name", "job"),
            ("pattern", "* * * * *"),
            ("data", r#"{"a":1.0}"#),
            ("opts", r#"{"attempts":3}"#),
            ("ic", "4"),
        ]);
        let changed = stored(&[("name", "job"), ("every", "500"), ("data", r#"{"a":1}"#)]);
        let queue = plan(
            vec![
                desired("1", Schedule::Pattern("* * * * *".into())),
                desired("2", Schedule::EveryMs(1000)),
                desired("3", Schedule::EveryMs(1000)),
            ],
            vec![
                ("t:1", same),
                ("t:2", changed),
                ("t:8", stored(&[("name", "old")])),
                ("t:9", stored(&[("name", "kept for invalid row")])),
                ("app-made", stored(&[("name", "not ours")])),
            ],
        );
        assert_eq!(queue.unchanged, vec!["t:1"]);
        assert_eq!(queue.update.len(), 1);
        assert_eq!(
            queue.update[0].differs,
            vec![Difference::Every, Difference::Opts]
        );
        assert_eq!(queue.create.len(), 1);
        assert_eq!(queue.create[0].scheduler_id, "t:3");
        assert_eq!(queue.orphaned, vec!["t:8"]);
        assert_eq!(queue.legacy, 1);
    }

    #[test]
    fn a_scheduler_without_its_next_job_needs_repair() {
        let mut broken = stored(&[
            ("name", "job"),
            ("every", "1000"),
            ("data", r#"{"a":1}"#),
            ("opts", r#"{"attempts":3}"#),
        ]);
        broken.next_job = NextJobFacts {
            exists: false,
            in_delayed: false,
        };
        let queue = plan(
            vec![desired("1", Schedule::EveryMs(1000))],
            vec![("t:1", broken.clone())],
        );
        assert_eq!(queue.update[0].differs, vec![Difference::NextJob]);
        assert_eq!(queue.update[0].stranded_job_id, None);
        broken.next_job = NextJobFacts {
            exists: true,
            in_delayed: false,
        };
        let queue = plan(
            vec![desired("1", Schedule::EveryMs(1000))],
            vec![("t:1", broken.clone())],
        );
        assert_eq!(queue.update[0].differs, vec![Difference::NextJob]);
        assert_eq!(
            queue.update[0].stranded_job_id.as_deref(),
            Some("repeat:t:1:1700003600000")
        );
        // Within a minute of its run, a job out of the delayed set may be a
        // worker's already: that is the run happening, not a stranded job.
        let queue = plan_at(
            NEXT_RUN_MS - 30_000,
            vec![desired("1", Schedule::EveryMs(1000))],
            vec![("t:1", broken)],
        );
        assert!(queue.update.is_empty(), "{:?}", queue.update);
        let gone = StoredScheduler {
            next_ms: NEXT_RUN_MS,
            hash: None,
            matches_row: false,
            next_job: NextJobFacts::QUEUED,
        };
        let queue = plan(
            vec![desired("1", Schedule::EveryMs(1000))],
            vec![("t:1", gone)],
        );
        assert_eq!(queue.update[0].differs, vec![Difference::SchedulerHash]);
    }
}
