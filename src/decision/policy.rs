//! The decisions of the recovery loop, as pure functions of what it knows:
//! which cause names a cycle, what a comparison calls for, and how long to
//! wait after a failed attempt. The loop and the reconciler only carry them out.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::backoff::{full_jitter, Backoff};
use crate::config::Config;
use crate::model::Cause;
use crate::plan::Plan;

use super::error::RecoveryError;

/// The loop's timing, read from the config at each use (a reload changes it).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    pub(crate) debounce_quiet: Duration,
    pub(crate) debounce_max: Duration,
    pub(crate) backoff_min: Duration,
    pub(crate) backoff_max: Duration,
    /// A loss Redis shows may be repaired at once. Not with a journal
    /// source: telling the application's removal or obliteration from a
    /// loss takes the keyspace notifications of the whole change, which a
    /// repair at once would outrun (restoring an obliterated queue).
    pub(crate) at_once: bool,
}

impl From<&Config> for Timing {
    fn from(config: &Config) -> Self {
        Self {
            debounce_quiet: config.watch.debounce_quiet,
            debounce_max: config.watch.debounce_max,
            backoff_min: config.recovery.backoff_min,
            backoff_max: config.recovery.backoff_max,
            at_once: !crate::journal::is_journal(&config.source.url),
        }
    }
}

/// The cause that names a cycle started by `causes`: the most telling one,
/// a loss before a reconnect before a change of the rows before a routine
/// check. A loss in Redis names a cycle that also saw the rows change: the
/// recovery is mostly its doing.
pub(crate) fn naming_cause(causes: &BTreeSet<Cause>) -> Cause {
    causes
        .iter()
        .copied()
        .min_by_key(|cause| precedence(*cause))
        .unwrap_or(Cause::Drift)
}

fn precedence(cause: Cause) -> u8 {
    match cause {
        Cause::Restart => 0,
        Cause::Flush => 1,
        Cause::Failover => 2,
        Cause::Keyspace => 3,
        Cause::Reconnect => 4,
        Cause::SourceChange => 5,
        Cause::Startup => 6,
        Cause::Drift => 7,
        Cause::Manual => 8,
    }
}

/// What a comparison calls for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    InSync,
    /// Drift that only a periodic check saw, for the first time: it may be
    /// the application mid-change, so look again after the debounce window.
    ConfirmLater,
    /// Drift, but automatic recovery is off: report it, write nothing.
    ReportOnly,
    Restore,
}

/// How a comparison is judged.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Judging {
    /// Nothing but periodic checks asked.
    pub(crate) only_periodic: bool,
    /// The cycle before this one already saw the drift.
    pub(crate) seen_before: bool,
    /// `[recovery] auto`.
    pub(crate) auto: bool,
    /// `[recovery] prune_orphans`: orphans are drift to repair.
    pub(crate) prune: bool,
}

/// Judges a comparison. A change of the rows is a signal of its own, not a
/// periodic check, and acts in its first cycle.
pub(crate) fn verdict(plan: &Plan, judging: Judging) -> Verdict {
    let Judging {
        only_periodic,
        seen_before,
        auto,
        prune,
    } = judging;
    if plan.is_settled(prune) {
        Verdict::InSync
    } else if only_periodic && !seen_before {
        Verdict::ConfirmLater
    } else if !auto {
        Verdict::ReportOnly
    } else {
        Verdict::Restore
    }
}

/// How the loop goes on after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Retry {
    /// How long to wait before the next attempt.
    pub(crate) wait: Duration,
    /// The backoff ceiling the wait was drawn under; `None` when the attempt
    /// did not fail but was deferred (another sidecar holds the lease).
    pub(crate) ceiling: Option<Duration>,
}

/// The error policy: a busy lease is re-checked after the debounce window
/// (at least 500 ms) without counting as a failure; anything else counts and
/// waits a fully jittered exponential delay.
pub(crate) fn error_policy(error: &RecoveryError, backoff: &mut Backoff, timing: &Timing) -> Retry {
    match error {
        RecoveryError::LeaseBusy => Retry {
            wait: timing.debounce_quiet.max(Duration::from_millis(500)),
            ceiling: None,
        },
        _ => {
            let ceiling = backoff.fail();
            Retry {
                wait: full_jitter(ceiling),
                ceiling: Some(ceiling),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::QueuePlan;

    fn timing() -> Timing {
        Timing {
            debounce_quiet: Duration::from_millis(200),
            debounce_max: Duration::from_secs(10),
            backoff_min: Duration::from_millis(500),
            backoff_max: Duration::from_secs(4),
            at_once: true,
        }
    }

    fn orphans_only() -> Plan {
        let mut plan = Plan::default();
        let queue = QueuePlan {
            orphaned: vec!["x".into()],
            ..QueuePlan::default()
        };
        plan.queues.insert("q".into(), queue);
        plan
    }

    fn judging(only_periodic: bool, seen_before: bool, auto: bool, prune: bool) -> Judging {
        Judging {
            only_periodic,
            seen_before,
            auto,
            prune,
        }
    }

    #[test]
    fn orphans_are_drift_to_repair_only_when_pruning() {
        assert_eq!(
            verdict(&orphans_only(), judging(false, false, true, false)),
            Verdict::InSync
        );
        assert_eq!(
            verdict(&orphans_only(), judging(false, false, true, true)),
            Verdict::Restore
        );
        // A periodic check sees them twice before acting, like other drift.
        assert_eq!(
            verdict(&orphans_only(), judging(true, false, true, true)),
            Verdict::ConfirmLater
        );
    }

    #[test]
    fn a_loss_names_the_cycle_whatever_else_came_with_it() {
        let causes = BTreeSet::from([Cause::Drift, Cause::Reconnect, Cause::Flush]);
        assert_eq!(naming_cause(&causes), Cause::Flush);
        let causes = BTreeSet::from([Cause::Manual, Cause::Restart]);
        assert_eq!(naming_cause(&causes), Cause::Restart);
        assert_eq!(naming_cause(&BTreeSet::new()), Cause::Drift);
        let causes = BTreeSet::from([Cause::Drift, Cause::SourceChange]);
        assert_eq!(naming_cause(&causes), Cause::SourceChange);
        let causes = BTreeSet::from([Cause::SourceChange, Cause::Keyspace]);
        assert_eq!(naming_cause(&causes), Cause::Keyspace);
    }

    #[test]
    fn drift_seen_only_by_a_periodic_check_is_confirmed_before_acting() {
        let in_sync = Plan::default();
        assert_eq!(
            verdict(&in_sync, judging(true, false, true, false)),
            Verdict::InSync
        );
        let mut missing = Plan::default();
        missing.queues.insert(
            "q".into(),
            QueuePlan {
                create: vec![crate::model::DesiredScheduler::example(
                    "1",
                    crate::model::Schedule::EveryMs(1000),
                )],
                ..QueuePlan::default()
            },
        );
        assert_eq!(
            verdict(&missing, judging(true, false, true, false)),
            Verdict::ConfirmLater
        );
        assert_eq!(
            verdict(&missing, judging(true, true, true, false)),
            Verdict::Restore
        );
        assert_eq!(
            verdict(&missing, judging(false, false, true, false)),
            Verdict::Restore
        );
        assert_eq!(
            verdict(&missing, judging(false, false, false, false)),
            Verdict::ReportOnly
        );
        // Orphans alone are not drift to restore.
        assert_eq!(
            verdict(&orphans_only(), judging(false, false, true, false)),
            Verdict::InSync
        );
    }

    #[test]
    fn a_busy_lease_is_rechecked_without_counting_as_a_failure() {
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(4));
        let retry = error_policy(&RecoveryError::LeaseBusy, &mut backoff, &timing());
        assert_eq!(retry.wait, Duration::from_millis(500));
        assert_eq!(retry.ceiling, None);
        assert_eq!(backoff.failures(), 0);
    }

    #[test]
    fn failures_back_off_exponentially_with_the_wait_under_the_ceiling() {
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(4));
        let error = RecoveryError::Other("boom".into());
        let ceilings: Vec<u128> = (0..5)
            .map(|_| {
                let retry = error_policy(&error, &mut backoff, &timing());
                let ceiling = retry.ceiling.expect("a failure has a ceiling");
                assert!(retry.wait <= ceiling);
                ceiling.as_millis()
            })
            .collect();
        assert_eq!(ceilings, vec![500, 1000, 2000, 4000, 4000]);
    }
}
