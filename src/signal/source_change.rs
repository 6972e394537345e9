//! Changes of the rows, noticed within seconds rather than at the next drift
//! check: PostgreSQL's `LISTEN` on `[source] notify_channel`, the change
//! probe `[source] change_query` every `change_interval` on any database,
//! and on SQLite, without any configuration, the file's `data_version`.
//!
//! A change is a request to compare, raised as [`Cause::SourceChange`]; the
//! decision loop treats it like every other signal. A watch that was lost
//! and comes back is a change too: the rows may have changed unseen.

use std::time::{Duration, Instant};

use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use super::Context;
use crate::backoff::Backoff;
use crate::clock::now_ms;
use crate::config::SourceConfig;
use crate::model::{Cause, Trigger};
use crate::report::events::SourceWatch;
use crate::source::change::{Notifications, Watching};
use crate::source::{SourceError, SourceRow};

/// How often SQLite's `data_version` is read: one cheap pragma on an open
/// connection, often enough that an edit reaches Redis within a second or two.
const DATA_VERSION_INTERVAL: Duration = Duration::from_millis(500);

/// At most one detection log line per watch per this long; every change
/// still counts as a trigger.
const DETECTION_LOG_INTERVAL: Duration = Duration::from_secs(1);

pub(crate) struct SourceChangeWatcher {
    pub(crate) ctx: Context,
    pub(crate) config: SourceConfig,
    pub(crate) backoff_min: Duration,
    pub(crate) backoff_max: Duration,
}

/// What one kind of look saw last.
enum Baseline<T> {
    /// Nothing read yet since the watcher started.
    Starting,
    Seen(T),
    /// The last look failed: changes may go unseen meanwhile.
    Failing,
}

/// What a new reading tells.
#[derive(Debug, PartialEq, Eq)]
enum Reading {
    /// The first reading: the start-up comparison covers what came before.
    First,
    Same,
    Changed,
    /// The first reading after a failure.
    Back,
}

impl<T: PartialEq> Baseline<T> {
    fn take(&mut self, seen: T) -> Reading {
        let reading = match &*self {
            Baseline::Starting => Reading::First,
            Baseline::Seen(last) if *last == seen => Reading::Same,
            Baseline::Seen(_) => Reading::Changed,
            Baseline::Failing => Reading::Back,
        };
        *self = Baseline::Seen(seen);
        reading
    }

    /// Notes a failed look; `true` when the look was not failing before.
    fn fail(&mut self) -> bool {
        !matches!(
            std::mem::replace(self, Baseline::Failing),
            Baseline::Failing
        )
    }
}

/// The state of the polling watch: its connection and what each look saw.
struct Poll {
    watching: Option<Watching>,
    retry_at: Instant,
    backoff: Backoff,
    version: Baseline<i64>,
    answer: Baseline<Option<SourceRow>>,
    last_logged: Option<Instant>,
}

#[derive(Clone, Copy)]
enum Look {
    DataVersion,
    ChangeQuery,
}

impl Look {
    fn name(self) -> &'static str {
        match self {
            Look::DataVersion => "data_version",
            Look::ChangeQuery => "change_query",
        }
    }
}

impl SourceChangeWatcher {
    /// Polls (SQLite, or a change query) and listens (a notify channel) as
    /// configured, until shutdown.
    pub(crate) async fn run(self, shutdown: CancellationToken) {
        let sqlite = self.config.url.starts_with("sqlite:");
        let poll = async {
            if sqlite || self.config.change_query.is_some() {
                self.poll(sqlite, &shutdown).await;
            }
        };
        let listen = async {
            if let Some(channel) = &self.config.notify_channel {
                self.listen(channel, &shutdown).await;
            }
        };
        tokio::join!(poll, listen);
    }

    /// Reads SQLite's data version and runs the change probe, each at its
    /// own pace, on one connection kept open.
    async fn poll(&self, sqlite: bool, shutdown: &CancellationToken) {
        let mut state = Poll {
            watching: None,
            retry_at: Instant::now(),
            backoff: Backoff::new(self.backoff_min, self.backoff_max),
            version: Baseline::Starting,
            answer: Baseline::Starting,
            last_logged: None,
        };
        let mut versions = tokio::time::interval(DATA_VERSION_INTERVAL);
        let mut probes = tokio::time::interval(self.config.change_interval);
        versions.set_missed_tick_behavior(MissedTickBehavior::Delay);
        probes.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let probing = self.config.change_query.is_some();
        loop {
            let look = tokio::select! {
                _ = versions.tick(), if sqlite => Look::DataVersion,
                _ = probes.tick(), if probing => Look::ChangeQuery,
                _ = shutdown.cancelled() => break,
            };
            // A database that does not answer must not hold up shutdown.
            tokio::select! {
                () = self.look(&mut state, look) => {}
                _ = shutdown.cancelled() => break,
            }
        }
        if let Some(watching) = state.watching.take() {
            watching.close().await;
        }
    }

    /// One look: opens the connection when needed, reads, and raises a
    /// change when the reading says so.
    async fn look(&self, state: &mut Poll, look: Look) {
        if state.watching.is_none() {
            if Instant::now() < state.retry_at {
                return;
            }
            match Watching::open(&self.config).await {
                Ok(watching) => {
                    state.backoff.reset();
                    state.watching = Some(watching);
                }
                Err(error) => return self.poll_failed(state, look, &error),
            }
        }
        let Some(watching) = state.watching.as_mut() else {
            return;
        };
        let reading = match look {
            Look::DataVersion => watching
                .data_version()
                .await
                .map(|version| state.version.take(version.unwrap_or_default())),
            Look::ChangeQuery => {
                let query = self.config.change_query.as_deref().unwrap_or_default();
                watching
                    .probe(query)
                    .await
                    .map(|row| state.answer.take(row))
            }
        };
        match reading {
            Ok(reading) => self.on_reading(state, look, reading),
            Err(error) => self.poll_failed(state, look, &error),
        }
    }

    fn on_reading(&self, state: &mut Poll, look: Look, reading: Reading) {
        let how = look.name();
        let detail = match (reading, look) {
            (Reading::Same, _) => return,
            (Reading::First, Look::DataVersion) => {
                format!("watching the SQLite file's data_version every {DATA_VERSION_INTERVAL:?}")
            }
            (Reading::First, Look::ChangeQuery) => format!(
                "running source.change_query every {:?}",
                self.config.change_interval
            ),
            (Reading::Changed, _) => {
                return self.announce(&mut state.last_logged, format!("the rows changed ({how})"))
            }
            (Reading::Back, _) => {
                self.announce(
                    &mut state.last_logged,
                    format!("{how} answers again; the rows may have changed meanwhile"),
                );
                format!("{how} answers again")
            }
        };
        self.ctx.observer.emit(SourceWatch {
            how,
            active: true,
            detail,
        });
    }

    /// A failed look. A connection error closes the connection, which is
    /// opened again after a backoff; a query error keeps it (the data
    /// version may still be read) and is reported once.
    fn poll_failed(&self, state: &mut Poll, look: Look, error: &SourceError) {
        let newly = match look {
            Look::DataVersion => state.version.fail(),
            Look::ChangeQuery => state.answer.fail(),
        };
        if !matches!(error, SourceError::Query { .. }) {
            // SQLite's data version is per connection: its baseline goes
            // with the connection.
            state.watching = None;
            state.version.fail();
            state.retry_at = Instant::now() + state.backoff.fail();
        }
        if newly {
            self.ctx.observer.emit(SourceWatch {
                how: look.name(),
                active: false,
                detail: format!("{error}; changes of the rows wait for the drift check"),
            });
        }
    }

    /// Listens on the notify channel, and listens again after every lost
    /// connection.
    async fn listen(&self, channel: &str, shutdown: &CancellationToken) {
        let mut backoff = Backoff::new(self.backoff_min, self.backoff_max);
        let mut baseline: Baseline<()> = Baseline::Starting;
        let mut last_logged = None;
        loop {
            let listening = tokio::select! {
                listening = Notifications::listen(&self.config, channel) => listening,
                _ = shutdown.cancelled() => return,
            };
            let error = match listening {
                Ok(notifications) => {
                    backoff.reset();
                    self.listening(channel, baseline.take(()), &mut last_logged);
                    match self
                        .notifications(notifications, &mut last_logged, shutdown)
                        .await
                    {
                        Some(error) => error,
                        None => return,
                    }
                }
                Err(error) => error,
            };
            if baseline.fail() {
                self.ctx.observer.emit(SourceWatch {
                    how: "notify_channel",
                    active: false,
                    detail: format!("LISTEN {channel:?} lost: {error}; listening again"),
                });
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff.fail()) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// Reports a listening connection; one that came back is a change.
    fn listening(&self, channel: &str, reading: Reading, last_logged: &mut Option<Instant>) {
        if reading == Reading::Back {
            self.announce(
                last_logged,
                format!("LISTEN {channel:?} re-established; notifications may have been missed"),
            );
        }
        self.ctx.observer.emit(SourceWatch {
            how: "notify_channel",
            active: true,
            detail: format!("listening on {channel:?}"),
        });
    }

    /// Raises a change per notification until the connection is lost (the
    /// error) or shutdown (`None`).
    async fn notifications(
        &self,
        mut notifications: Notifications,
        last_logged: &mut Option<Instant>,
        shutdown: &CancellationToken,
    ) -> Option<SourceError> {
        loop {
            let arrived = tokio::select! {
                arrived = notifications.next() => arrived,
                _ = shutdown.cancelled() => return None,
            };
            match arrived {
                Ok(count) => self.announce(
                    last_logged,
                    format!("{count} notification(s) on the notify channel"),
                ),
                Err(error) => return Some(error),
            }
        }
    }

    /// A change of the rows: a detection at most once per
    /// `DETECTION_LOG_INTERVAL`, a trigger every time.
    fn announce(&self, last_logged: &mut Option<Instant>, detail: String) {
        let now = Instant::now();
        if last_logged.is_none_or(|at| now.duration_since(at) >= DETECTION_LOG_INTERVAL) {
            *last_logged = Some(now);
            self.ctx
                .signals
                .raise(Cause::SourceChange, &[], now_ms(), detail);
        } else {
            self.ctx
                .signals
                .nudge(Trigger::new(Cause::SourceChange, now_ms()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reading_is_a_change_when_it_differs_or_follows_a_failure() {
        let mut baseline = Baseline::Starting;
        assert_eq!(baseline.take(1), Reading::First);
        assert_eq!(baseline.take(1), Reading::Same);
        assert_eq!(baseline.take(2), Reading::Changed);
        assert!(baseline.fail());
        assert!(!baseline.fail());
        assert_eq!(baseline.take(2), Reading::Back);
        assert_eq!(baseline.take(2), Reading::Same);
    }
}
