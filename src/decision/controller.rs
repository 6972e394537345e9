//! The recovery loop: turns triggers into reconcile attempts — debounced,
//! single-flight, retried with backoff — in the style of a Kubernetes
//! controller: [`Reconcile::reconcile`] does one attempt, the pure
//! [`error_policy`] decides the wait after a failure, and this loop only
//! keeps time.
//!
//! Every signal leads to the same decision: once signals have been quiet for
//! the debounce window, compare rows and Redis; restore only what still
//! differs. A scheduler the application removed while disabling its row in that
//! window is therefore left alone, and a flapping Redis gets one recovery once
//! it settles. Triggers that arrive during a cycle wait in the channel and make
//! up one follow-up cycle.

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
}

/// The triggers that make up one cycle.
struct Batch {
    causes: BTreeSet<Cause>,
    since_ms: u64,
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
    /// A start-up or an operator's request goes at once. `None` on shutdown.
    async fn gather(
        &self,
        first: Trigger,
        triggers: &mut mpsc::Receiver<Trigger>,
        shutdown: &CancellationToken,
    ) -> Option<Batch> {
        let mut batch = Batch {
            causes: BTreeSet::from([first.cause]),
            since_ms: first.since_ms,
        };
        if matches!(first.cause, Cause::Startup | Cause::Manual) {
            return Some(batch);
        }
        let timing = self.reconciler.timing();
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
                    batch.causes.insert(trigger.cause);
                    batch.since_ms = batch.since_ms.min(trigger.since_ms);
                    window.observe(&trigger, Instant::now());
                }
                _ = sleep_until(window.deadline()) => return Some(batch),
                _ = shutdown.cancelled() => return None,
            }
        }
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
            let trigger = Trigger {
                cause,
                since_ms,
                queue: Some("q".into()),
            };
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
    async fn news_restarts_the_quiet_window_and_echoes_do_not() {
        let running = Running::start(vec![]);
        running.send(Cause::Flush, 1_000).await;
        sleep(Duration::from_millis(150)).await;
        // Another deletion: Redis is still changing, so the window restarts.
        running.send(Cause::Keyspace, 900).await;
        sleep(Duration::from_millis(150)).await;
        // A reconnect only echoes what is known: the window does not move.
        running.send(Cause::Reconnect, 2_000).await;
        sleep(Duration::from_secs(1)).await;
        let calls = running.calls();
        assert_eq!(calls.len(), 1, "{calls:?}");
        let (at, request) = &calls[0];
        assert_eq!(*at, 350, "quiet 200 ms after the keyspace event");
        assert_eq!(request.trigger, Cause::Flush, "the loss names the cycle");
        assert_eq!(request.since_ms, 900, "the earliest start of the loss");
        assert!(!request.only_periodic);
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
        assert_eq!(at, vec![200, 700, 1200], "re-checked every 500 ms");
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
        // The first ends at 2200; the three waiting triggers make one
        // cycle, a quiet window after it.
        assert_eq!(at, vec![200, 2400], "{calls:?}");
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
        assert_eq!(calls[0].0, 200, "the loss, after the window");
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
