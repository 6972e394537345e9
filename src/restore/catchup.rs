//! `catchup = "fire_once"`: one immediate job for each restored cron scheduler
//! that had a run due while it was gone.
//!
//! Interval (`every`) schedulers need nothing: BullMQ runs a newly created one
//! at once. What the watcher cannot know: a loss that happened while it was not
//! running, or before its first poll, has no known start and gets no catch-up.

use crate::model::{DesiredScheduler, Schedule};
use crate::store::{BullmqStore, StoreError};

/// Whether a cron scheduler had a run due in `[from_ms, until_ms)`.
pub(crate) fn missed_a_run(scheduler: &DesiredScheduler, from_ms: u64, until_ms: u64) -> bool {
    let Schedule::Pattern(pattern) = &scheduler.schedule else {
        return false;
    };
    if from_ms >= until_ms {
        return false;
    }
    // next_cron_millis looks strictly after its reference, so start 1 ms early.
    let next = bullmq::job_scheduler::next_cron_millis(
        pattern,
        from_ms.saturating_sub(1),
        scheduler.tz.as_deref(),
        scheduler.start_date,
    );
    matches!(next, Ok(Some(at)) if at < until_ms && scheduler.end_date.is_none_or(|end| at <= end))
}

/// The job id is derived from the scheduler and the outage, so a second
/// attempt for the same outage adds nothing (BullMQ ignores a known job id).
pub(crate) fn catchup_job_id(scheduler_id: &str, outage_since_ms: u64) -> String {
    // BullMQ refuses ':' in custom job ids.
    let safe: String = scheduler_id
        .chars()
        .map(|c| if c == ':' { '_' } else { c })
        .collect();
    format!("warden-catchup-{safe}-{outage_since_ms}")
}

/// Enqueues the catch-up job of one scheduler.
pub(crate) async fn fire(
    store: &BullmqStore,
    scheduler: &DesiredScheduler,
    job_id: &str,
) -> Result<(), StoreError> {
    store
        .add_job(
            &scheduler.queue,
            &scheduler.name,
            scheduler.data_value(),
            crate::desired::job_options_of(scheduler),
            job_id,
        )
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cron(pattern: &str) -> DesiredScheduler {
        DesiredScheduler::example("1", Schedule::Pattern(pattern.into()))
    }

    const HOUR: u64 = 3_600_000;
    // 2026-01-01T00:00:00Z
    const T0: u64 = 1_767_225_600_000;

    #[test]
    fn a_run_inside_the_outage_was_missed() {
        let hourly = cron("0 * * * *");
        assert!(missed_a_run(&hourly, T0 + 10, T0 + HOUR + 10));
        assert!(!missed_a_run(&hourly, T0 + 10, T0 + HOUR - 10));
        assert!(
            missed_a_run(&hourly, T0, T0 + 1),
            "a run exactly at the start counts"
        );
    }

    #[test]
    fn interval_schedulers_never_need_a_catchup_job() {
        let mut every = cron("* * * * *");
        every.schedule = Schedule::EveryMs(1000);
        assert!(!missed_a_run(&every, T0, T0 + HOUR));
    }

    #[test]
    fn catchup_ids_are_stable_and_colon_free() {
        assert_eq!(
            catchup_job_id("inspection:7", 42),
            "warden-catchup-inspection_7-42"
        );
    }
}
