//! The recovery loop: turns triggers into reconcile attempts — debounced,
//! single-flight, retried with backoff — in the style of a Kubernetes
//! controller: [`Reconcile::reconcile`] does one attempt, the pure
//! [`error_policy`] decides the wait after a failure, and this loop only
//! keeps time.
//!
//! Every signal leads to the same decision: compare rows and Redis; restore
//! only what still differs. When to look depends on the signal. A loss Redis
//! itself shows (a restart, a failover, a flush, a deleted scheduler key) is
//! looked at once, if Redis had been calm: waiting would only add missed runs.
//! Anything else — and a loss while Redis is still changing — waits until
//! signals have been quiet for the debounce window, so a scheduler the
//! application removed while disabling its row in that window is left alone,
//! and a flapping Redis gets one more recovery once it settles. Triggers that
//! arrive during a cycle wait in the channel and make up one follow-up cycle.

use std::collections::BTreeSet;
use std::future::Future;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::{sleep, sleep_until, Instant};
use tokio_util::sync::CancellationToken;

use super::debounce::Debounce;
use super::error::RecoveryError;
use super::policy::{error_policy, naming_cause, Timing};
use crate::backoff::{full_jitter, Backoff};
use crate::clock::now_ms;
use crate::model::{Cause, Trigger};
use crate::report::events::{LeaseBusy, LeaseLost, Observer, RecoveryFailed, SourceRecheck};

/// One attempt's question: why look, and what the loop knows so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Request {
    /// The cause that names the cycle.
    pub(crate) trigger: Cause,
    /// Only periodic checks asked: drift is confirmed before acting on it.
    pub(crate) only_periodic: bool,
    /// The cycle before this one saw drift and asked to look again.
    pub(crate) seen_before: bool,
    /// When the loss began, as far as the signals tell (epoch ms).
    pub(crate) since_ms: u64,
    /// 1 for the first attempt of a cycle.
    pub(crate) attempt: u32,
    /// The cycle started without a quiet window, for a loss Redis showed:
    /// the desired set kept in memory may stand in for reading the rows.
    pub(crate) at_once: bool,
    /// A change of the rows was signalled in this cycle: they must be read.
    pub(crate) rows_changed: bool,
}

/// How an attempt ended, when it did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Nothing left to do (in sync, restored, or reported only).
    Done,
    /// Drift seen for the first time by a periodic check: look again after
    /// the debounce window before acting.
    ConfirmLater,
    /// The source could not be read and the snapshot stood in for it:
    /// Redis is whole as far as the snapshot knows, and the source is read
    /// again after a backoff, or at the next signal.
    SourceOwed,
}

/// One reconcile attempt over the real world (or a test's).
pub(crate) trait Reconcile: Send {
    /// The loop's timing now (a config reload may change it).
    fn timing(&self) -> Timing;

    /// Compares and, where needed, restores, once.
    fn reconcile(
        &mut self,
        request: Request,
    ) -> impl Future<Output = Result<Outcome, RecoveryError>> + Send;

    /// The queues the attempts look after, for the failure report.
    fn queues(&self) -> Vec<String>;
}

pub(crate) struct Controller<R> {
    reconciler: R,
    observer: Observer,
    /// True while Redis loads its dataset: attempts wait instead of failing.
    redis_loading: watch::Receiver<bool>,
    /// When the loop last heard of a loss Redis showed, or ended a cycle
    /// for one: another loss within a quiet window of it means Redis keeps
    /// changing.
    last_loss_at: Option<Instant>,
}

/// The triggers that make up one cycle.
struct Batch {
    causes: BTreeSet<Cause>,
    since_ms: u64,
    at_once: bool,
    /// One of the triggers showed a loss in Redis itself.
    saw_a_loss: bool,
}

impl Batch {
    fn new(first: &Trigger) -> Self {
        Self {
            causes: BTreeSet::from([first.cause]),
            since_ms: first.since_ms,
            at_once: false,
            saw_a_loss: first.shows_loss,
        }
    }

    fn add(&mut self, trigger: &Trigger) {
        self.causes.insert(trigger.cause);
        self.since_ms = self.since_ms.min(trigger.since_ms);
        self.saw_a_loss |= trigger.shows_loss;
    }

    /// Goes at once, with the triggers already waiting: they are signals
    /// of the same loss.
    fn go_at_once(mut self, triggers: &mut mpsc::Receiver<Trigger>) -> Self {
        while let Ok(trigger) = triggers.try_recv() {
            self.add(&trigger);
        }
        self.at_once = true;
        self
    }
}

/// How a cycle ended.
enum CycleEnd {
    Done,
    ConfirmLater,
    SourceOwed,
    Stopped,
}

impl<R: Reconcile> Controller<R> {
    pub(crate) fn new(
        reconciler: R,
        observer: Observer,
        redis_loading: watch::Receiver<bool>,
    ) -> Self {
        Self {
            reconciler,
            observer,
            redis_loading,
            last_loss_at: None,
        }
    }

    /// Runs until `shutdown` or until every trigger sender is gone.
    pub(crate) async fn run(
        mut self,
        mut triggers: mpsc::Receiver<Trigger>,
        shutdown: CancellationToken,
    ) {
        let mut confirm = false;
        // While the source is owed a comparison: when to read it again, and
        // the backoff that spaces those reads.
        let timing = self.reconciler.timing();
        let mut owed = Backoff::new(timing.backoff_min, timing.backoff_max);
        let mut recheck: Option<Instant> = None;
        loop {
            let first = if confirm {
                Trigger::new(Cause::Drift, now_ms())
            } else {
                tokio::select! {
                    trigger = triggers.recv() => match trigger {
                        Some(trigger) => trigger,
                        None => return,
                    },
                    _ = sleep_until(recheck.unwrap_or_else(Instant::now)), if recheck.is_some() => {
                        Trigger::new(Cause::Drift, now_ms())
                    }
                    _ = shutdown.cancelled() => return,
                }
            };
            recheck = None;
            let Some(batch) = self.gather(first, &mut triggers, &shutdown).await else {
                return;
            };
            let end = self.cycle(&batch, confirm, &shutdown).await;
            if batch.saw_a_loss {
                self.last_loss_at = Some(Instant::now());
            }
            confirm = matches!(end, CycleEnd::ConfirmLater);
            match end {
                CycleEnd::Done => owed.reset(),
                CycleEnd::ConfirmLater => {}
                CycleEnd::SourceOwed => {
                    let wait = full_jitter(owed.fail());
                    self.observer.emit(SourceRecheck { retry_in: wait });
                    recheck = Some(Instant::now() + wait);
                }
                CycleEnd::Stopped => return,
            }
            // The comparison held every row and scheduler; an idle sidecar
            // should not keep that peak.
            crate::memory::release_after_comparison();
        }
    }

    /// Lets the debounce window pass, taking the triggers that come in it.
    /// A start-up, an operator's request and a loss after a calm spell go at
    /// once, with whatever triggers are already waiting. `None` on shutdown.
    async fn gather(
        &mut self,
        first: Trigger,
        triggers: &mut mpsc::Receiver<Trigger>,
        shutdown: &CancellationToken,
    ) -> Option<Batch> {
        let mut batch = Batch::new(&first);
        let timing = self.reconciler.timing();
        if matches!(first.cause, Cause::Startup | Cause::Manual) {
            return Some(batch);
        }
        let calm = timing.at_once && self.redis_was_calm(timing.debounce_quiet);
        if first.shows_loss {
            self.last_loss_at = Some(Instant::now());
            if calm {
                return Some(batch.go_at_once(triggers));
            }
        }
        let mut window = Debounce::open(
            &first,
            Instant::now(),
            timing.debounce_quiet,
            timing.debounce_max,
        );
        loop {
            tokio::select! {
                trigger = triggers.recv() => {
                    let trigger = trigger?;
                    batch.add(&trigger);
                    if trigger.shows_loss {
                        self.last_loss_at = Some(Instant::now());
                        // A loss in a window that a change of the rows or a
                        // reconnect opened is no less urgent.
                        if calm {
                            return Some(batch.go_at_once(triggers));
                        }
                    }
                    window.observe(&trigger, Instant::now());
                }
                _ = sleep_until(window.deadline()) => return Some(batch),
                _ = shutdown.cancelled() => return None,
            }
        }
    }

    /// No loss was heard of, and no cycle for one ended, within the last
    /// quiet window.
    fn redis_was_calm(&self, quiet: Duration) -> bool {
        self.last_loss_at.is_none_or(|at| at.elapsed() >= quiet)
    }

    /// Attempts until one succeeds or the watcher stops, waiting as the
    /// error policy says between attempts.
    async fn cycle(
        &mut self,
        batch: &Batch,
        seen_before: bool,
        shutdown: &CancellationToken,
    ) -> CycleEnd {
        let trigger = naming_cause(&batch.causes);
        let only_periodic = batch.causes.iter().all(|c| *c == Cause::Drift);
        let timing = self.reconciler.timing();
        let mut backoff = Backoff::new(timing.backoff_min, timing.backoff_max);
        loop {
            if !self.wait_while_loading(shutdown).await {
                return CycleEnd::Stopped;
            }
            let request = Request {
                trigger,
                only_periodic,
                seen_before,
                since_ms: batch.since_ms,
                attempt: backoff.failures() + 1,
                at_once: batch.at_once,
                rows_changed: batch.causes.contains(&Cause::SourceChange),
            };
            let error = match self.reconciler.reconcile(request).await {
                Ok(Outcome::Done) => return CycleEnd::Done,
                Ok(Outcome::ConfirmLater) => return CycleEnd::ConfirmLater,
                Ok(Outcome::SourceOwed) => return CycleEnd::SourceOwed,
                Err(error) => error,
            };
            let retry = error_policy(&error, &mut backoff, &self.reconciler.timing());
            match retry.ceiling {
                None => self.observer.emit(LeaseBusy {
                    recheck_in: retry.wait,
                }),
                Some(ceiling) => {
                    self.report_failure(trigger, &error, &backoff, ceiling, retry.wait)
                }
            }
            if !pause(retry.wait, shutdown).await {
                return CycleEnd::Stopped;
            }
        }
    }

    fn report_failure(
        &self,
        trigger: Cause,
        error: &RecoveryError,
        backoff: &Backoff,
        ceiling: Duration,
        retry_in: Duration,
    ) {
        if let RecoveryError::Restore(crate::restore::RestoreError::LeaseLost(reason)) = error {
            self.observer.emit(LeaseLost { reason });
        }
        self.observer.emit(RecoveryFailed {
            trigger,
            queues: &self.reconciler.queues(),
            attempt: backoff.failures(),
            reason: error.reason(),
            error: error.to_string(),
            backoff: ceiling,
            retry_in,
        });
    }

    /// Waits while Redis loads its dataset; `false` when the watcher stops.
    async fn wait_while_loading(&mut self, shutdown: &CancellationToken) -> bool {
        while *self.redis_loading.borrow() {
            tokio::select! {
                changed = self.redis_loading.changed() => if changed.is_err() { return true },
                _ = shutdown.cancelled() => return false,
            }
        }
        true
    }
}

/// Sleeps unless the watcher stops first; `false` when it stopped.
async fn pause(duration: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = sleep(duration) => true,
        _ = shutdown.cancelled() => false,
    }
}

/// The loop in process, against a scripted reconciler and paused time: each
/// decision about when to look is checked in milliseconds of real time.
#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};

    use tokio::task::JoinHandle;

    use super::*;
    use crate::report::metrics::Metrics;

    const QUIET: Duration = Duration::from_millis(200);

    type Script = Vec<(Duration, Result<Outcome, RecoveryError>)>;

    /// Answers each attempt from its script (how long it takes, how it
    /// ends), then `Done`; records when each attempt started and what it asked.
    struct Scripted {
        script: VecDeque<(Duration, Result<Outcome, RecoveryError>)>,
        calls: Arc<Mutex<Vec<(Instant, Request)>>>,
    }

    impl Reconcile for Scripted {
        fn timing(&self) -> Timing {
            Timing {
                debounce_quiet: QUIET,
                debounce_max: Duration::from_secs(10),
                backoff_min: Duration::from_millis(500),
                backoff_max: Duration::from_secs(4),
                at_once: true,
            }
        }

        async fn reconcile(&mut self, request: Request) -> Result<Outcome, RecoveryError> {
            self.calls
                .lock()
                .expect("calls")
                .push((Instant::now(), request));
            let (takes, result) = self
                .script
                .pop_front()
                .unwrap_or((Duration::ZERO, Ok(Outcome::Done)));
            sleep(takes).await;
            result
        }

        fn queues(&self) -> Vec<String> {
            vec!["q".into()]
        }
    }

    struct Running {
        triggers: mpsc::Sender<Trigger>,
        calls: Arc<Mutex<Vec<(Instant, Request)>>>,
        loading: watch::Sender<bool>,
        observer: Observer,
        stop: CancellationToken,
        task: JoinHandle<()>,
        started: Instant,
    }

    impl Running {
        fn start(script: Script) -> Self {
            let calls = Arc::new(Mutex::new(Vec::new()));
            let reconciler = Scripted {
                script: script.into(),
                calls: calls.clone(),
            };
            let observer = Observer::new(Arc::new(Metrics::new()));
            let (loading, loading_rx) = watch::channel(false);
            let (triggers, receiver) = mpsc::channel(16);
            let stop = CancellationToken::new();
            let controller = Controller::new(reconciler, observer.clone(), loading_rx);
            let task = tokio::spawn(controller.run(receiver, stop.clone()));
            Self {
                triggers,
                calls,
                loading,
                observer,
                stop,
                task,
                started: Instant::now(),
            }
        }

        async fn send(&self, cause: Cause, since_ms: u64) {
            let trigger = Trigger::new(cause, since_ms).about("q");
            self.triggers.send(trigger).await.expect("loop runs");
        }

        /// Each attempt: milliseconds after the start, and its request.
        fn calls(&self) -> Vec<(u128, Request)> {
            let calls = self.calls.lock().expect("calls");
            calls
                .iter()
                .map(|(at, request)| ((*at - self.started).as_millis(), request.clone()))
                .collect()
        }

        fn metric(&self, line_start: &str) -> Option<f64> {
            let text = self.observer.metrics().encode_prometheus();
            text.lines()
                .find(|line| line.starts_with(line_start))
                .and_then(|line| line.rsplit(' ').next())
                .and_then(|value| value.parse().ok())
        }

        async fn stop(self) {
            self.stop.cancel();
            self.task.await.expect("loop ends cleanly");
        }
    }

    fn failed() -> (Duration, Result<Outcome, RecoveryError>) {
        (Duration::ZERO, Err(RecoveryError::Other("boom".into())))
    }

    #[tokio::test(start_paused = true)]
    async fn a_loss_after_a_calm_spell_is_repaired_at_once_with_what_is_waiting() {
        let running = Running::start(vec![]);
        // Two signals of one loss, queued before the loop looks.
        running.send(Cause::Keyspace, 900).await;
        running.send(Cause::Flush, 800).await;
        sleep(Duration::from_secs(1)).await;
        let calls = running.calls();
        assert_eq!(calls.len(), 1, "one cycle for both: {calls:?}");
        let (at, request) = &calls[0];
        assert_eq!(*at, 0, "no quiet window");
        assert!(request.at_once);
        assert_eq!(request.trigger, Cause::Flush, "the flush names the cycle");
        assert_eq!(request.since_ms, 800, "the earliest start of the loss");
        running.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn ambiguous_signals_wait_for_the_quiet_window() {
        let running = Running::start(vec![]);
        // A keyspace event that shows no loss by itself: a member removed
        // from a scheduler set, as the application's removeJobScheduler does.
        let causes = [
            Cause::Reconnect,
            Cause::Drift,
            Cause::SourceChange,
            Cause::Keyspace,
        ];
        for cause in causes {
            running.send(cause, 1).await;
            sleep(Duration::from_secs(1)).await;
        }
        let calls = running.calls();
        let at: Vec<u128> = calls.iter().map(|(at, _)| *at).collect();
        // A change of the rows waits only its short window (500 ms, or the
        // quiet window when shorter).
        assert_eq!(at, vec![200, 1200, 2200, 3200], "{calls:?}");
        assert!(calls.iter().all(|(_, r)| !r.at_once));
        running.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_loss_in_a_window_the_rows_opened_goes_at_once_and_reads_them() {
        let running = Running::start(vec![]);
        running.send(Cause::SourceChange, 1).await;
        sleep(Duration::from_millis(100)).await;
        running.send(Cause::Restart, 2).await;
        sleep(Duration::from_secs(1)).await;
        let calls = running.calls();
        assert_eq!(calls.len(), 1, "{calls:?}");
        let (at, request) = &calls[0];
        assert_eq!(*at, 100);
        assert!(request.at_once && request.rows_changed, "{request:?}");
        assert_eq!(request.trigger, Cause::Restart);
        running.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn news_right_after_a_repair_restarts_the_quiet_window_and_echoes_do_not() {
        let running = Running::start(vec![]);
        running.send(Cause::Flush, 1_000).await;
        sleep(Duration::from_millis(100)).await;
        // Redis changes again right after the repair: not calm, so wait.
        running.send(Cause::Flush, 1_100).await;
        sleep(Duration::from_millis(150)).await;
        // Another deletion: Redis is still changing, so the window restarts.
        running.send(Cause::Keyspace, 900).await;
        sleep(Duration::from_millis(150)).await;
        // A reconnect only echoes what is known: the window does not move.
        running.send(Cause::Reconnect, 2_000).await;
        sleep(Duration::from_secs(1)).await;
        let calls = running.calls();
        assert_eq!(calls.len(), 2, "{calls:?}");
        let (at, request) = &calls[1];
        assert_eq!(*at, 450, "quiet 200 ms after the keyspace event");
        assert!(!request.at_once);
        assert_eq!(request.trigger, Cause::Flush, "the loss names the cycle");
        assert_eq!(request.since_ms, 900, "the earliest start of the loss");
        assert!(!request.only_periodic);
        running.stop().await;
    }

    /// The bound on recoveries for a flapping Redis: the first loss at once,
    /// then one cycle per burst, at most one per `debounce_max` while it lasts.
    #[tokio::test(start_paused = true)]
    async fn a_flapping_redis_gets_the_first_repair_at_once_and_one_when_it_settles() {
        let takes = || (Duration::from_millis(100), Ok(Outcome::Done));
        let running = Running::start(vec![takes(), takes(), takes(), takes()]);
        for _ in 0..5 {
            running.send(Cause::Restart, 1).await;
            sleep(Duration::from_millis(150)).await;
        }
        sleep(Duration::from_secs(2)).await;
        let calls = running.calls();
        let at: Vec<u128> = calls.iter().map(|(at, _)| *at).collect();
        assert_eq!(at, vec![0, 800], "quiet 200 ms after the fifth: {calls:?}");
        // A flap that goes on for 25 s: cycles at most every `debounce_max`
        // (10 s) after the first.
        let running = Running::start((0..8).map(|_| takes()).collect());
        for _ in 0..(25_000 / 150) {
            running.send(Cause::Restart, 1).await;
            sleep(Duration::from_millis(150)).await;
        }
        sleep(Duration::from_secs(1)).await;
        let cycles = running.calls().len();
        assert!(
            (3..=4).contains(&cycles),
            "1 + ceil(25 / 10) at most: {cycles}"
        );
        running.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_start_or_an_operator_goes_at_once() {
        let running = Running::start(vec![]);
        running.send(Cause::Startup, 1).await;
        sleep(Duration::from_millis(50)).await;
        running.send(Cause::Manual, 2).await;
        sleep(Duration::from_millis(50)).await;
        let at: Vec<u128> = running.calls().into_iter().map(|(at, _)| at).collect();
        assert_eq!(at, vec![0, 50]);
        running.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn failures_back_off_under_a_growing_ceiling_and_a_new_cycle_starts_over() {
        let running = Running::start(vec![failed(), failed(), failed()]);
        running.send(Cause::Restart, 1).await;
        sleep(Duration::from_secs(10)).await;
        let calls = running.calls();
        assert_eq!(calls.len(), 4, "three failures and a success: {calls:?}");
        let attempts: Vec<u32> = calls.iter().map(|(_, r)| r.attempt).collect();
        assert_eq!(attempts, vec![1, 2, 3, 4]);
        for (pair, ceiling) in calls.windows(2).zip([500, 1000, 2000]) {
            let gap = pair[1].0 - pair[0].0;
            assert!(
                gap <= ceiling,
                "waited {gap} ms under a {ceiling} ms ceiling"
            );
        }
        let failures = r#"bullmq_warden_recovery_failures_total{reason="other"}"#;
        assert_eq!(running.metric(failures), Some(3.0));
        running.send(Cause::Flush, 2).await;
        sleep(Duration::from_secs(1)).await;
        let calls = running.calls();
        assert_eq!(calls.last().map(|(_, r)| r.attempt), Some(1), "{calls:?}");
        running.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_lease_is_rechecked_without_backing_off() {
        let busy = || (Duration::ZERO, Err(RecoveryError::LeaseBusy));
        let running = Running::start(vec![busy(), busy()]);
        running.send(Cause::Flush, 1).await;
        sleep(Duration::from_secs(5)).await;
        let calls = running.calls();
        let at: Vec<u128> = calls.iter().map(|(at, _)| *at).collect();
        assert_eq!(at, vec![0, 500, 1000], "re-checked every 500 ms");
        assert!(calls.iter().all(|(_, r)| r.attempt == 1), "{calls:?}");
        let failures = r#"bullmq_warden_recovery_failures_total{reason="lease_busy"}"#;
        assert_eq!(running.metric(failures), Some(0.0));
        running.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn triggers_during_a_recovery_make_one_follow_up() {
        let slow = (Duration::from_secs(2), Ok(Outcome::Done));
        let running = Running::start(vec![slow]);
        running.send(Cause::Flush, 1).await;
        sleep(Duration::from_millis(500)).await;
        for cause in [Cause::Keyspace, Cause::Flush, Cause::Reconnect] {
            running.send(cause, 2).await;
            sleep(Duration::from_millis(100)).await;
        }
        sleep(Duration::from_secs(5)).await;
        let calls = running.calls();
        let at: Vec<u128> = calls.iter().map(|(at, _)| *at).collect();
        // The first ends at 2000; the three waiting triggers make one
        // cycle, a quiet window after it: Redis changed during the repair.
        assert_eq!(at, vec![0, 2200], "{calls:?}");
        running.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn drift_seen_by_a_periodic_check_is_confirmed_after_the_window() {
        let running = Running::start(vec![(Duration::ZERO, Ok(Outcome::ConfirmLater))]);
        running.send(Cause::Drift, 1).await;
        sleep(Duration::from_secs(2)).await;
        let calls = running.calls();
        assert_eq!(calls.len(), 2, "{calls:?}");
        assert_eq!((calls[0].0, calls[0].1.seen_before), (200, false));
        assert_eq!((calls[1].0, calls[1].1.seen_before), (400, true));
        assert!(calls.iter().all(|(_, r)| r.only_periodic));
        running.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_source_owed_is_read_again_after_a_backoff_or_at_the_next_signal() {
        let owed = || (Duration::ZERO, Ok(Outcome::SourceOwed));
        let running = Running::start(vec![owed(), owed(), owed()]);
        running.send(Cause::Flush, 1).await;
        sleep(Duration::from_secs(5)).await;
        let calls = running.calls();
        assert_eq!(calls.len(), 4, "three owed, then done: {calls:?}");
        assert_eq!(calls[0].0, 0, "the loss, at once");
        assert_eq!(
            calls[1].1.trigger,
            Cause::Drift,
            "a re-read is a drift check"
        );
        // Each re-read waits a jittered backoff under 500 ms, then 1 s, and
        // a debounce window (a drift check, which waits out the window).
        assert!(calls[1].0 - calls[0].0 <= 500 + 200, "{calls:?}");
        assert!(calls[2].0 - calls[1].0 <= 1000 + 200, "{calls:?}");
        assert!(calls[3].0 - calls[2].0 <= 2000 + 200, "{calls:?}");
        let failures = r#"bullmq_warden_recovery_consecutive_failures"#;
        assert_eq!(running.metric(failures), Some(0.0), "no failure counted");
        // Done: nothing is owed any more.
        sleep(Duration::from_secs(10)).await;
        assert_eq!(running.calls().len(), 4);
        running.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_is_attempted_while_redis_loads() {
        let running = Running::start(vec![]);
        running.loading.send_replace(true);
        running.send(Cause::Restart, 1).await;
        sleep(Duration::from_secs(3)).await;
        assert!(running.calls().is_empty());
        running.loading.send_replace(false);
        sleep(Duration::from_millis(10)).await;
        let at: Vec<u128> = running.calls().into_iter().map(|(at, _)| at).collect();
        assert_eq!(at, vec![3000]);
        running.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_during_a_backoff_ends_the_loop_at_once() {
        let running = Running::start(vec![failed(), failed()]);
        running.send(Cause::Restart, 1).await;
        sleep(Duration::from_millis(250)).await;
        let stopping = Instant::now();
        running.stop().await;
        assert!(stopping.elapsed() < Duration::from_millis(1));
    }
}
