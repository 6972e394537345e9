//! The debounce window between the first signal of a loss and the decision.
//!
//! One loss raises several signals: a deleted `repeat` set is a keyspace event
//! at once and an emptied set at the next poll; a restart is followed by the
//! reconnect of the poll and of the notification subscription, and maybe by a
//! periodic drift check. Those echoes must not push the decision back, or a
//! single loss waits two windows. What does push it back is Redis still
//! changing: another restart, another flush, another deletion — a flapping
//! server gets one recovery once it settles.
//!
//! A change of the rows is no sign of Redis changing: it never pushes the
//! decision back, and a window it opens waits only [`SOURCE_CHANGE_QUIET`] —
//! enough to gather a burst of edits into one comparison, short enough that
//! an edited row reaches Redis within a few seconds. Redis news in that window
//! restarts the full quiet window as usual.

use std::collections::BTreeSet;
use std::time::Duration;

use tokio::time::Instant;

use crate::model::Cause;

use crate::model::Trigger;

/// The quiet window of a cycle opened by a change of the rows (or the
/// configured `debounce_quiet`, when that is shorter).
pub(crate) const SOURCE_CHANGE_QUIET: Duration = Duration::from_millis(500);

pub(crate) struct Debounce {
    quiet: Duration,
    quiet_deadline: Instant,
    hard_deadline: Instant,
    /// Queues whose scheduler keys keyspace notifications reported lost in
    /// this window: the poll's later "set emptied" for them is the same loss.
    deleted: BTreeSet<String>,
}

impl Debounce {
    /// Opens the window with its first signal.
    pub(crate) fn open(first: &Trigger, at: Instant, quiet: Duration, max: Duration) -> Self {
        let first_quiet = match first.cause {
            Cause::SourceChange => quiet.min(SOURCE_CHANGE_QUIET),
            _ => quiet,
        };
        let mut window = Self {
            quiet,
            quiet_deadline: at + first_quiet,
            hard_deadline: at + max,
            deleted: BTreeSet::new(),
        };
        window.remember(first);
        window
    }

    /// When the decision is due: once signals have been quiet for the window,
    /// and never later than the maximum delay after the first one.
    pub(crate) fn deadline(&self) -> Instant {
        self.quiet_deadline.min(self.hard_deadline)
    }

    /// Takes a later signal; one that shows Redis still changing restarts the
    /// quiet window, an echo of what is already known does not.
    pub(crate) fn observe(&mut self, trigger: &Trigger, at: Instant) {
        if self.is_news(trigger) {
            self.quiet_deadline = at + self.quiet;
        }
        self.remember(trigger);
    }

    fn is_news(&self, trigger: &Trigger) -> bool {
        match trigger.cause {
            // Each of these is seen once per event: a new run_id, another
            // role, another deletion.
            Cause::Restart | Cause::Failover | Cause::Keyspace => true,
            Cause::Flush => trigger
                .queue
                .as_ref()
                .is_none_or(|queue| !self.deleted.contains(queue)),
            // Observations of a state already signalled, or requests to look;
            // a change of the rows says nothing about Redis settling.
            Cause::Reconnect
            | Cause::SourceChange
            | Cause::Drift
            | Cause::Startup
            | Cause::Manual => false,
        }
    }

    fn remember(&mut self, trigger: &Trigger) {
        if let (Cause::Keyspace, Some(queue)) = (trigger.cause, &trigger.queue) {
            self.deleted.insert(queue.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUIET: Duration = Duration::from_secs(2);
    const MAX: Duration = Duration::from_secs(15);

    fn signal(cause: Cause, queue: Option<&str>) -> Trigger {
        Trigger {
            cause,
            since_ms: 0,
            queue: queue.map(str::to_owned),
            shows_loss: cause.shows_loss(),
        }
    }

    fn after(start: Instant, ms: u64) -> Instant {
        start + Duration::from_millis(ms)
    }

    #[test]
    fn echoes_of_one_restart_do_not_push_the_decision_back() {
        let start = Instant::now();
        let mut window = Debounce::open(&signal(Cause::Restart, None), start, QUIET, MAX);
        window.observe(&signal(Cause::Reconnect, None), after(start, 1500));
        window.observe(&signal(Cause::Drift, None), after(start, 1900));
        assert_eq!(window.deadline(), after(start, 2000));
    }

    #[test]
    fn the_poll_seeing_a_set_keyspace_reported_deleted_is_an_echo() {
        let start = Instant::now();
        let mut window = Debounce::open(&signal(Cause::Keyspace, Some("mail")), start, QUIET, MAX);
        window.observe(&signal(Cause::Flush, Some("mail")), after(start, 1200));
        assert_eq!(window.deadline(), after(start, 2000));
        window.observe(&signal(Cause::Flush, Some("billing")), after(start, 1300));
        assert_eq!(window.deadline(), after(start, 3300));
    }

    #[test]
    fn a_flapping_redis_restarts_the_quiet_window_up_to_the_maximum() {
        let start = Instant::now();
        let mut window = Debounce::open(&signal(Cause::Restart, None), start, QUIET, MAX);
        window.observe(&signal(Cause::Restart, None), after(start, 1000));
        assert_eq!(window.deadline(), after(start, 3000));
        for second in 2..20 {
            window.observe(&signal(Cause::Restart, None), after(start, second * 1000));
        }
        assert_eq!(window.deadline(), after(start, 15_000));
    }

    #[test]
    fn a_change_of_the_rows_waits_a_short_window_and_pushes_nothing_back() {
        let start = Instant::now();
        let mut window = Debounce::open(&signal(Cause::SourceChange, None), start, QUIET, MAX);
        assert_eq!(window.deadline(), after(start, 500));
        window.observe(&signal(Cause::SourceChange, None), after(start, 400));
        assert_eq!(window.deadline(), after(start, 500));
        // Redis news in the window waits the full quiet window.
        window.observe(&signal(Cause::Restart, None), after(start, 450));
        assert_eq!(window.deadline(), after(start, 2450));
        // A change of the rows within a Redis window does not push it back.
        let mut window = Debounce::open(&signal(Cause::Restart, None), start, QUIET, MAX);
        window.observe(&signal(Cause::SourceChange, None), after(start, 1900));
        assert_eq!(window.deadline(), after(start, 2000));
        // A configured quiet window shorter than the source change's is kept.
        let short = Duration::from_millis(200);
        let window = Debounce::open(&signal(Cause::SourceChange, None), start, short, MAX);
        assert_eq!(window.deadline(), after(start, 200));
    }

    #[test]
    fn further_deletions_count_as_news() {
        let start = Instant::now();
        let mut window = Debounce::open(&signal(Cause::Keyspace, Some("mail")), start, QUIET, MAX);
        window.observe(&signal(Cause::Keyspace, Some("mail")), after(start, 1800));
        assert_eq!(window.deadline(), after(start, 3800));
    }
}
