//! Keyspace notifications for the scheduler keys: deletions seen within
//! milliseconds. Notifications are fire-and-forget, so every (re)subscription
//! is itself a signal to compare rows and Redis again.

use crate::store::verified::VerifiedDefinitions;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use std::sync::Arc;

use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use super::flushes::{FlushNotice, FlushTracking};
use super::Context;
use crate::backoff::Backoff;
use crate::clock::now_ms;
use crate::model::Cause;
use crate::model::Trigger;
use crate::report::events::{FlushNoticed, KeyspaceNotifications, KeyspacePaused};

/// Flags the watcher needs: keyspace channel (K), generic commands such as DEL
/// (g), sorted sets (z), expirations (x) and evictions (e).
const NEEDED_FLAGS: &str = "Kgzxe";

/// Events on scheduler keys that can mean a scheduler is gone.
const LOSS_EVENTS: [&str; 8] = [
    "del",
    "zrem",
    "zremrangebyscore",
    "zremrangebyrank",
    "zpopmin",
    "zpopmax",
    "expired",
    "evicted",
];

/// At most one detection log line per queue per this long; every event still
/// counts as a trigger.
const DETECTION_LOG_INTERVAL: Duration = Duration::from_secs(1);

/// How long the check of a scheduler whose hash was deleted may take; it
/// holds up the next notification meanwhile.
const SCHEDULER_CHECK_TIMEOUT: Duration = Duration::from_secs(1);

/// How long the probe key's notifications may take. They are published while
/// the write runs, so they arrive within milliseconds when they arrive at all.
const PROBE_WAIT: Duration = Duration::from_secs(2);

/// How often a cluster's primaries are listed while one is left out for
/// failing, so that its return is subscribed within about this long.
const CLUSTER_RELIST_INTERVAL: Duration = Duration::from_millis(500);

/// How long the probe key lives. Not a single millisecond: Redis deletes a
/// key whose expiry has passed by the time PEXPIRE runs, publishing `del`
/// instead of `expire`, and on a busy server that millisecond can pass.
const PROBE_TTL_MS: u64 = 20;

/// The notifications the probe's writes cause, with the flag each one needs:
/// `ZADD` (z), `PEXPIRE` (g) and the key expiring (x). Evictions (e) cannot
/// be provoked.
const PROBE_EVENTS: [(&str, char); 3] = [("zadd", 'z'), ("expire", 'g'), ("expired", 'x')];

pub(crate) struct KeyspaceWatcher {
    pub(crate) ctx: Context,
    /// Bumped when Sentinel moves the primary: subscribe there instead.
    pub(crate) moved: watch::Receiver<u64>,
    pub(crate) db: u32,
    pub(crate) prefix: String,
    pub(crate) manage_config: bool,
    pub(crate) backoff_min: Duration,
    pub(crate) backoff_max: Duration,
    /// How often a cluster's primaries are listed again.
    pub(crate) topology_interval: Duration,
    /// Tells the poll to look at once when a subscription drops or a flush
    /// is reported.
    pub(crate) poll_now: Arc<Notify>,
    /// True while a recovery writes. The subscription is paused meanwhile:
    /// the notifications would be the echo of those writes, and reading them
    /// slowed a 100,000-scheduler restore by a third on two cores. A
    /// deletion by someone else in those moments is still found by the poll
    /// (an emptied set) or by the next drift check.
    pub(crate) own_writes: watch::Receiver<bool>,
    /// Told of every notification on a scheduler hash, and of every moment
    /// notifications may have been missed, so that drift checks skip only
    /// the reads that cannot have changed.
    pub(crate) verified: Arc<VerifiedDefinitions>,
    /// Journal mode: where every notification on scheduler keys goes, as the
    /// recorder's cue to read the queue and its evidence of removals.
    pub(crate) journal: Option<crate::journal::Notes>,
}

/// What is known of the server's notification flags.
enum Flags {
    /// CONFIG GET showed them sufficient, or CONFIG SET made them so.
    Known(String),
    /// CONFIG GET is not granted (the least-privilege ACL): only a probe tells.
    Unreadable(String),
}

/// A key under the prefix that is written once per session when the flags
/// cannot be read, to see whether its notifications arrive. Under the prefix
/// because the ACL grants no other key; BullMQ writes no `<queue>:probe`, and
/// the name ends in neither `repeat` nor `repeat:<id>`, so its notifications
/// never look like a scheduler's.
struct Probe {
    key: String,
    channel: String,
    /// Why the flags were not read, per server.
    unreadable: Vec<String>,
    seen: Vec<&'static str>,
}

impl Probe {
    fn new(db: u32, prefix: &str, unreadable: Vec<String>) -> Self {
        Self {
            key: format!("{prefix}:bullmq-warden:probe"),
            channel: Self::channel(db, prefix),
            unreadable,
            seen: Vec::new(),
        }
    }

    fn channel(db: u32, prefix: &str) -> String {
        format!("__keyspace@{db}__:{prefix}:bullmq-warden:probe")
    }

    /// Writes the key so that each of `PROBE_EVENTS` is published once.
    async fn write(&self, store: &crate::store::BullmqStore) -> Result<(), String> {
        let mut conn = store.raw();
        redis::pipe()
            .cmd("ZADD")
            .arg(&self.key)
            .arg(0)
            .arg("probe")
            .ignore()
            .cmd("PEXPIRE")
            .arg(&self.key)
            .arg(PROBE_TTL_MS)
            .ignore()
            .query_async::<()>(&mut conn)
            .await
            .map_err(|e| store.error(e).to_string())?;
        tokio::time::sleep(Duration::from_millis(3 * PROBE_TTL_MS)).await;
        // Reading an expired key deletes it and publishes `expired`.
        redis::cmd("EXISTS")
            .arg(&self.key)
            .query_async::<()>(&mut conn)
            .await
            .map_err(|e| store.error(e).to_string())
    }

    /// Notes a notification; `true` once every probed one has arrived.
    fn observe(&mut self, event: &str) -> bool {
        if let Some((name, _)) = PROBE_EVENTS.iter().find(|(name, _)| *name == event) {
            if !self.seen.contains(name) {
                self.seen.push(name);
            }
        }
        self.seen.len() == PROBE_EVENTS.len()
    }

    /// The flags whose notifications did not arrive.
    fn missing(&self) -> String {
        PROBE_EVENTS
            .iter()
            .filter(|(name, _)| !self.seen.contains(name))
            .map(|(_, flag)| *flag)
            .collect()
    }

    fn detail(&self, outcome: &str) -> String {
        format!(
            "{}; {outcome} for the probe key {}",
            self.unreadable.join("; "),
            self.key
        )
    }
}

/// The subscriptions of one session and what setting them up found.
#[derive(Default)]
struct Session {
    subscriptions: Vec<redis::aio::PubSubSink>,
    streams: Vec<futures::stream::BoxStream<'static, Notice>>,
    /// Tracking lasts as long as its connection: kept until the session ends.
    trackings: Vec<FlushTracking>,
    details: Vec<String>,
    /// Servers whose flags are known to lack what is needed.
    problems: Vec<String>,
    /// Servers whose flags could not be read.
    unreadable: Vec<String>,
}

impl Session {
    /// Subscribes to `patterns` on one server, and to `probe_channel` when
    /// given; `Err` names the server and why.
    async fn listen_on(
        &mut self,
        url: &str,
        client: &redis::Client,
        patterns: &[String],
        probe_channel: Option<&str>,
    ) -> Result<(), String> {
        let (mut subscription, messages) = match client.get_async_pubsub().await {
            Ok(pubsub) => pubsub.split(),
            Err(e) => return Err(format!("{url}: {e}")),
        };
        subscription
            .psubscribe(patterns)
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        // Subscribed as a pattern without wildcards: its permission in
        // the ACL is then the literal name.
        if let Some(probe_channel) = probe_channel {
            subscription
                .psubscribe(probe_channel)
                .await
                .map_err(|e| format!("{url}: {e}"))?;
        }
        self.subscriptions.push(subscription);
        // A closed subscription ends the session, so it is subscribed again.
        self.streams.push(
            messages
                .map(Notice::Keyspace)
                .chain(futures::stream::once(async { Notice::Closed }))
                .boxed(),
        );
        Ok(())
    }

    /// Tracks flushes on one server; where it cannot, the detail says why
    /// and the poll alone notices them.
    async fn track_flushes(&mut self, url: &str, client: &redis::Client) {
        match FlushTracking::start(client).await {
            Ok((tracking, notices)) => {
                self.trackings.push(tracking);
                self.details.push("flushes tracked".into());
                self.streams.push(
                    notices
                        .map(|notice| match notice {
                            FlushNotice::Flushed => Notice::Flushed,
                            FlushNotice::Closed => Notice::Closed,
                        })
                        .boxed(),
                );
            }
            Err(problem) => self.details.push(format!("{url}: {problem}")),
        }
    }
}

/// A session once subscribed: what its loop waits on, and what it keeps
/// from one notice to the next.
struct Listening {
    store: crate::store::BullmqStore,
    session: Session,
    /// Unsubscribed while a recovery writes, subscribed again after.
    patterns: [String; 2],
    /// Stripped from a channel's name to leave the key under the prefix.
    channel_prefix: String,
    /// The primaries subscribed, by URL: another list ends the session.
    subscribed: Vec<String>,
    messages: futures::stream::SelectAll<futures::stream::BoxStream<'static, Notice>>,
    /// Written where the flags could not be read; given up at `probe_deadline`.
    probe: Option<Probe>,
    probe_deadline: tokio::time::Instant,
    topology: tokio::time::Interval,
    /// When each queue's detection was last logged.
    last_logged: HashMap<String, Instant>,
}

/// What a session's connections report.
enum Notice {
    Keyspace(redis::Msg),
    Flushed,
    Closed,
}

impl KeyspaceWatcher {
    /// Reports whether notifications flow; what was learned from them before
    /// is forgotten either way (some may have been missed).
    fn announce(&self, state: KeyspaceNotifications) {
        self.verified.watching(state.active);
        self.ctx.observer.emit(state);
    }

    /// Subscribes, and subscribes again after every lost connection.
    pub(crate) async fn run(mut self, shutdown: CancellationToken) {
        let mut backoff = Backoff::new(self.backoff_min, self.backoff_max);
        let mut first = true;
        loop {
            let mut established = false;
            let error = self.session(first, &mut established, &shutdown).await;
            if shutdown.is_cancelled() {
                return;
            }
            // Only failures in a row back off further: after a restart the
            // subscription is back within `backoff_min`, however many came before.
            if established {
                backoff.reset();
            }
            self.poll_now.notify_one();
            first = false;
            self.announce(KeyspaceNotifications {
                active: false,
                detail: format!("keyspace subscription lost: {error}"),
            });
            let delay = backoff.fail();
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// One subscription per primary, until a connection drops or the cluster
    /// topology changes (the returned reason), or shutdown. `established` tells
    /// whether every subscription was made before the session ended.
    async fn session(
        &mut self,
        first: bool,
        established: &mut bool,
        shutdown: &CancellationToken,
    ) -> String {
        let mut listening = match self.open_session(first).await {
            Ok(listening) => listening,
            Err(reason) => return reason,
        };
        *established = true;
        loop {
            let notice = match self.next_notice(&mut listening, shutdown).await {
                Ok(notice) => notice,
                Err(reason) => return reason,
            };
            if let Err(reason) = self.on_notice(notice, &mut listening).await {
                return reason;
            }
        }
    }

    /// Subscribes on every primary and reports whether notifications flow;
    /// `Err` is why the session could not start.
    async fn open_session(&mut self, first: bool) -> Result<Listening, String> {
        let store = self.ctx.store.get();
        let (primaries, whole) = match store.primary_clients().await {
            Ok(listed) if listed.clients.is_empty() => {
                // A subscription on no server would end at once and count as
                // a reconnect, over and over while the cluster is down.
                return Err("no cluster primary answers yet".into());
            }
            Ok(listed) => (listed.clients, listed.whole),
            Err(e) => return Err(e.to_string()),
        };
        self.moved.borrow_and_update();
        let channel_prefix = format!("__keyspace@{}__:{}:", self.db, self.prefix);
        let patterns = [
            format!("{channel_prefix}*:repeat"),
            format!("{channel_prefix}*:repeat:*"),
        ];
        let mut session = self.subscribe(&primaries, &patterns).await?;
        // Whatever came before this subscription may have been missed.
        if let Some(journal) = &self.journal {
            journal.reset();
        }
        let probe = self.report_flags(&store, &mut session).await;
        if !first {
            self.ctx.signals.raise_now(
                Cause::Reconnect,
                None,
                "keyspace subscription re-established; notifications may have been missed".into(),
            );
        }
        let subscribed = primaries.into_iter().map(|(url, _)| url).collect();
        let topology = self.relisting(whole);
        let probe_deadline = tokio::time::Instant::now() + PROBE_WAIT;
        let messages = futures::stream::select_all(std::mem::take(&mut session.streams));
        Ok(Listening {
            store,
            session,
            patterns,
            channel_prefix,
            subscribed,
            messages,
            probe,
            probe_deadline,
            topology,
            last_logged: HashMap::new(),
        })
    }

    /// Waits for the next notice, meanwhile pausing around a recovery's
    /// writes, giving up on a probe that went unanswered and following the
    /// cluster's primaries; `Err` ends the session with its reason (empty on
    /// shutdown).
    async fn next_notice(
        &mut self,
        listening: &mut Listening,
        shutdown: &CancellationToken,
    ) -> Result<Notice, String> {
        loop {
            tokio::select! {
                notice = listening.messages.next() => return Ok(notice.unwrap_or(Notice::Closed)),
                // Without Sentinel the sender is gone and this branch never matches.
                Ok(()) = self.moved.changed() => return Err("the primary moved".into()),
                Ok(()) = self.own_writes.changed() => {
                    let writing = *self.own_writes.borrow_and_update();
                    self.pause_while_writing(&mut listening.session, &listening.patterns, writing)
                        .await?;
                }
                _ = tokio::time::sleep_until(listening.probe_deadline), if listening.probe.is_some() => {
                    if let Some(probe) = listening.probe.take() {
                        self.probe_failed(&probe);
                    }
                }
                _ = listening.topology.tick(), if listening.store.is_cluster() => {
                    if let Ok(now) = listening.store.primary_clients().await {
                        if now.clients.iter().map(|(url, _)| url).ne(listening.subscribed.iter()) {
                            return Err("the cluster's primaries changed".into());
                        }
                    }
                }
                _ = shutdown.cancelled() => return Err(String::new()),
            }
        }
    }

    /// Acts on one notice; `Err` ends the session with its reason.
    async fn on_notice(&self, notice: Notice, listening: &mut Listening) -> Result<(), String> {
        let message = match notice {
            Notice::Keyspace(message) => message,
            Notice::Closed => return Err("connection closed".into()),
            Notice::Flushed => {
                if let Some(journal) = &self.journal {
                    journal.reset();
                }
                // The poll compares the counts and reports the flush.
                self.ctx.observer.emit(FlushNoticed);
                self.poll_now.notify_one();
                return Ok(());
            }
        };
        let event: String = message.get_payload().unwrap_or_default();
        if self.probe_answered(listening.probe.as_mut(), message.get_channel_name(), &event) {
            listening.probe = None;
        }
        if let Some(key) = message
            .get_channel_name()
            .strip_prefix(&listening.channel_prefix)
        {
            if let Some(journal) = &self.journal {
                journal.keyspace(key, &event);
            }
            self.on_event(key, &event, &mut listening.last_logged).await;
        }
        Ok(())
    }

    /// When to list a cluster's primaries again. While a primary is left out
    /// for failing, its slots have no subscription: list again soon, not only
    /// every `topology_interval`.
    fn relisting(&self, whole: bool) -> tokio::time::Interval {
        let every = match whole {
            true => self.topology_interval,
            false => CLUSTER_RELIST_INTERVAL.min(self.topology_interval),
        };
        tokio::time::interval_at(tokio::time::Instant::now() + every, every)
    }

    /// Pauses the subscription while a recovery writes, resumes it after:
    /// the notifications then would only echo those writes.
    async fn pause_while_writing(
        &self,
        session: &mut Session,
        patterns: &[String],
        writing: bool,
    ) -> Result<(), String> {
        for subscription in &mut session.subscriptions {
            let outcome = match writing {
                true => subscription.punsubscribe(patterns).await,
                false => subscription.psubscribe(patterns).await,
            };
            outcome.map_err(|e| format!("cannot resume or pause the subscription: {e}"))?;
        }
        self.verified.watching(!writing);
        self.ctx.observer.emit(KeyspacePaused { paused: writing });
        Ok(())
    }

    /// Whether `event` on `channel` is the probe's answer: notifications arrive.
    fn probe_answered(&self, probe: Option<&mut Probe>, channel: &str, event: &str) -> bool {
        let Some(pending) = probe else {
            return false;
        };
        if channel != pending.channel || !pending.observe(event) {
            return false;
        }
        self.announce(KeyspaceNotifications {
            active: true,
            detail: pending.detail("notifications arrived"),
        });
        true
    }

    /// Subscribes to `patterns` on every primary, and to the probe key where
    /// the flags cannot be read; tracks flushes where the server allows it.
    async fn subscribe(
        &self,
        primaries: &[(String, redis::Client)],
        patterns: &[String],
    ) -> Result<Session, String> {
        let mut session = Session::default();
        let probe_channel = Probe::channel(self.db, &self.prefix);
        for (url, client) in primaries {
            let mut probed = false;
            match self.ensure_config(client).await {
                Ok(Flags::Known(detail)) => session.details.push(detail),
                Ok(Flags::Unreadable(reason)) => {
                    probed = true;
                    session.unreadable.push(format!("{url}: {reason}"));
                }
                Err(problem) => session.problems.push(format!("{url}: {problem}")),
            }
            let probe = probed.then_some(probe_channel.as_str());
            session.listen_on(url, client, patterns, probe).await?;
            session.track_flushes(url, client).await;
        }
        Ok(session)
    }

    /// Reports whether notifications flow. Where the flags could not be read
    /// the answer waits for the probe, which is returned once written.
    async fn report_flags(
        &self,
        store: &crate::store::BullmqStore,
        session: &mut Session,
    ) -> Option<Probe> {
        if !session.problems.is_empty() {
            self.announce(KeyspaceNotifications {
                active: false,
                detail: format!("{}; relying on polling alone", session.problems.join("; ")),
            });
            return None;
        }
        if session.unreadable.is_empty() {
            self.announce(KeyspaceNotifications {
                active: true,
                detail: session.details.join("; "),
            });
            return None;
        }
        let mut unreadable = std::mem::take(&mut session.unreadable);
        unreadable.extend(session.details.iter().cloned());
        let probe = Probe::new(self.db, &self.prefix, unreadable);
        match probe.write(store).await {
            Ok(()) => Some(probe),
            Err(e) => {
                self.announce(KeyspaceNotifications {
                    active: false,
                    detail: probe.detail(&format!("cannot write ({e}); relying on polling alone")),
                });
                None
            }
        }
    }

    fn probe_failed(&self, probe: &Probe) {
        self.announce(KeyspaceNotifications {
            active: false,
            detail: probe.detail(&format!(
                "no notification needing the flags {:?} arrived within {PROBE_WAIT:?} \
                 (set notify-keyspace-events {NEEDED_FLAGS} in the Redis configuration); \
                 relying on polling alone",
                probe.missing()
            )),
        });
    }

    /// Turns a notification on `<prefix>:<key>` into a trigger when it may
    /// mean a watched queue lost schedulers.
    async fn on_event(&self, key: &str, event: &str, last_logged: &mut HashMap<String, Instant>) {
        let (queue, broken, shows_loss) = match classify(key, event) {
            KeyEvent::Ignore => return,
            KeyEvent::Loss(queue) => (queue, None, false),
            KeyEvent::ShownLoss(queue) => (queue, None, true),
            KeyEvent::SchedulerHash { queue, id } => (queue, Some(id), true),
        };
        let watched = self
            .ctx
            .queues
            .read()
            .map(|queues| queues.iter().any(|q| q == queue))
            .unwrap_or(false);
        if !watched {
            return;
        }
        let mut detail = format!("{event} on {}:{key}", self.prefix);
        if let Some(id) = broken {
            self.verified.rewritten(queue, id);
            match self.check_scheduler(queue, id).await {
                Some(why) => detail = format!("{detail}: {why}"),
                None => return,
            }
        }
        let now = Instant::now();
        let log = last_logged
            .get(queue)
            .is_none_or(|at| now.duration_since(*at) >= DETECTION_LOG_INTERVAL);
        let trigger = Trigger {
            shows_loss,
            ..Trigger::new(Cause::Keyspace, now_ms())
        };
        if log {
            last_logged.insert(queue.to_owned(), now);
            self.ctx.signals.raise_trigger(trigger, &[queue], detail);
        } else {
            self.ctx.signals.nudge(trigger.about(queue));
        }
    }

    /// Whether the scheduler `id` of `queue` is broken after an event on its
    /// hash, and how: the hash gone while the id is still in the repeat set,
    /// or the reverse. `None` when both agree (BullMQ rewrote the hash, or
    /// removed the scheduler whole).
    ///
    /// One pipelined round trip, sent after the notification arrived. Redis
    /// runs a script or a MULTI block whole before any other client's
    /// command, and publishes its notifications as it runs, so this read
    /// comes after the script that deleted the hash has finished — an
    /// upsert's delete-and-rewrite reads as the rewritten hash. A read that
    /// fails counts as broken: the comparison then decides.
    async fn check_scheduler(&self, queue: &str, id: &str) -> Option<String> {
        let store = self.ctx.store.get();
        let mut conn = store.raw();
        let mut pipe = redis::pipe();
        pipe.cmd("EXISTS")
            .arg(format!("{}:{queue}:repeat:{id}", self.prefix))
            .cmd("ZSCORE")
            .arg(format!("{}:{queue}:repeat", self.prefix))
            .arg(id);
        let read = pipe.query_async::<(bool, Option<f64>)>(&mut conn);
        match tokio::time::timeout(SCHEDULER_CHECK_TIMEOUT, read).await {
            Ok(Ok((true, None))) => Some("the hash is back but the id left the repeat set".into()),
            Ok(Ok((false, Some(_)))) => {
                Some("the hash is gone but the id is still in the repeat set".into())
            }
            Ok(Ok(_)) => None,
            Ok(Err(e)) => Some(format!("cannot check the scheduler ({})", store.error(e))),
            Err(_) => Some(format!(
                "cannot check the scheduler (no answer within {SCHEDULER_CHECK_TIMEOUT:?})"
            )),
        }
    }

    /// Makes sure the needed notification flags are on; `Err` says why they
    /// are not (missing and not allowed, or not to be managed).
    async fn ensure_config(&self, client: &redis::Client) -> Result<Flags, String> {
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| e.to_string())?;
        let flags = match read_flags(&mut conn).await {
            Ok(flags) => flags,
            Err(unreadable) => return Ok(Flags::Unreadable(unreadable)),
        };
        let missing = missing_flags(&flags);
        if missing.is_empty() {
            return Ok(Flags::Known(format!(
                "notify-keyspace-events {flags:?} covers scheduler keys"
            )));
        }
        if !self.manage_config {
            return Err(format!(
                "notify-keyspace-events {flags:?} lacks {missing:?} and watch.manage_keyspace_config is off"
            ));
        }
        add_flags(&mut conn, &flags, &missing)
            .await
            .map(Flags::Known)
    }
}

/// The server's notify-keyspace-events; `Err` says why it cannot be read.
/// CONFIG GET is asked about first: a refused command would be written to
/// the ACL log.
async fn read_flags(conn: &mut redis::aio::MultiplexedConnection) -> Result<String, String> {
    let read = ["config", "get", "notify-keyspace-events"];
    if crate::store::settings::may_run(conn, &read).await == Some(false) {
        return Err("cannot read notify-keyspace-events: CONFIG GET is not granted".into());
    }
    let reply: Result<Vec<String>, _> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("notify-keyspace-events")
        .query_async(conn)
        .await;
    match reply {
        Ok(current) => Ok(current.get(1).cloned().unwrap_or_default()),
        Err(e) => Err(format!("cannot read notify-keyspace-events ({e})")),
    }
}

/// Adds the `missing` flags to `flags` with CONFIG SET; the detail to report,
/// or why they could not be added.
async fn add_flags(
    conn: &mut redis::aio::MultiplexedConnection,
    flags: &str,
    missing: &str,
) -> Result<String, String> {
    let wanted = format!("{flags}{missing}");
    let write = ["config", "set", "notify-keyspace-events", wanted.as_str()];
    if crate::store::settings::may_run(conn, &write).await == Some(false) {
        return Err(format!(
            "notify-keyspace-events {flags:?} lacks {missing:?} and CONFIG SET is not granted"
        ));
    }
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("notify-keyspace-events")
        .arg(&wanted)
        .query_async::<()>(conn)
        .await
        .map_err(|e| {
            format!("notify-keyspace-events lacks {missing:?} and CONFIG SET failed ({e})")
        })?;
    Ok(format!("set notify-keyspace-events to {wanted:?}"))
}

/// The flags of `NEEDED_FLAGS` that `flags` lacks (`A` stands for most classes).
fn missing_flags(flags: &str) -> String {
    let expanded = flags.replace('A', "g$lshzxetd");
    NEEDED_FLAGS
        .chars()
        .filter(|f| !expanded.contains(*f))
        .collect()
}

/// What an event on a key under `<queue>:repeat` calls for.
#[derive(Debug, PartialEq, Eq)]
enum KeyEvent<'k> {
    /// No possible loss.
    Ignore,
    /// A possible loss in `queue`: look at once.
    Loss(&'k str),
    /// A loss in `queue` that no change of the application's looks like:
    /// the whole scheduler set gone, or a next job evicted.
    ShownLoss(&'k str),
    /// The scheduler hash `<queue>:repeat:<id>` was deleted, expired or
    /// evicted: a loss only if the scheduler is now broken.
    SchedulerHash { queue: &'k str, id: &'k str },
}

/// Sorts an event on `<queue>:repeat…` (the key without the prefix).
///
/// - `<queue>:repeat`, the set of scheduler ids: every removal is a loss.
/// - `<queue>:repeat:<id>:<13 digits>`, a scheduler's job (its id is
///   `repeat:<id>:<millis>`): these come and go with every run, so only
///   their eviction counts — it is never routine, and a next job evicted
///   from under its scheduler leaves a scheduler that never fires again.
/// - `<queue>:repeat:<id>:<13 digits>:<word>`, a job's lock, logs or
///   dependencies: never a loss (a lock expires whenever a worker stops).
/// - anything else, `<queue>:repeat:<id>`, is the scheduler hash; the id may
///   itself contain `:` (`inspection:1`). BullMQ's own upsert deletes and
///   rewrites it in one script, so its `del` is no loss in itself: the
///   scheduler is checked first (`check_scheduler`). A scheduler id that
///   itself ends in `:<13 digits>` reads as a job; its hash's loss is
///   found by the drift check.
fn classify<'k>(key: &'k str, event: &str) -> KeyEvent<'k> {
    if !LOSS_EVENTS.contains(&event) {
        return KeyEvent::Ignore;
    }
    let Some((queue, rest)) = key.split_once(':') else {
        return KeyEvent::Ignore;
    };
    if rest == "repeat" {
        // BullMQ removes one scheduler with ZREM; only Redis, or someone
        // by hand, takes the whole set.
        return match event {
            "del" | "expired" | "evicted" => KeyEvent::ShownLoss(queue),
            _ => KeyEvent::Loss(queue),
        };
    }
    let Some(id) = rest.strip_prefix("repeat:") else {
        return KeyEvent::Ignore;
    };
    let millis = |part: &str| part.len() == 13 && part.bytes().all(|b| b.is_ascii_digit());
    let mut parts = id.rsplit(':');
    let (last, before) = (parts.next().unwrap_or_default(), parts.next());
    let is_job = before.is_some() && millis(last);
    let is_job_part = before.is_some_and(millis)
        && parts.next().is_some()
        && last.bytes().all(|b| b.is_ascii_alphabetic());
    match (is_job, is_job_part) {
        (true, _) if event == "evicted" => KeyEvent::ShownLoss(queue),
        (true, _) | (_, true) => KeyEvent::Ignore,
        _ if matches!(event, "del" | "expired" | "evicted") => {
            KeyEvent::SchedulerHash { queue, id }
        }
        _ => KeyEvent::Ignore,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_are_checked_with_the_a_alias() {
        assert_eq!(missing_flags(""), "Kgzxe");
        assert_eq!(missing_flags("KA"), "");
        assert_eq!(missing_flags("Egx"), "Kze");
    }

    #[test]
    fn only_losses_on_scheduler_keys_count() {
        use KeyEvent::*;
        assert_eq!(classify("mail:repeat", "del"), ShownLoss("mail"));
        assert_eq!(classify("mail:repeat", "zrem"), Loss("mail"));
        assert_eq!(classify("mail:repeat", "zadd"), Ignore);
        assert_eq!(classify("mail:delayed", "del"), Ignore);
        assert_eq!(classify("mail:wait", "del"), Ignore);
        assert_eq!(classify("mail:repeat:inspection:1", "hset"), Ignore);
    }

    #[test]
    fn the_scheduler_hash_is_checked_and_its_jobs_and_locks_are_not_losses() {
        use KeyEvent::*;
        let hash = SchedulerHash {
            queue: "mail",
            id: "inspection:1",
        };
        for event in ["del", "expired", "evicted"] {
            assert_eq!(classify("mail:repeat:inspection:1", event), hash);
        }
        let plain = SchedulerHash {
            queue: "mail",
            id: "nightly",
        };
        assert_eq!(classify("mail:repeat:nightly", "del"), plain);
        let job = "mail:repeat:inspection:1:1796169635000";
        assert_eq!(classify(job, "del"), Ignore);
        assert_eq!(classify(job, "expired"), Ignore);
        assert_eq!(classify(job, "evicted"), ShownLoss("mail"));
        for part in ["lock", "logs", "dependencies"] {
            let key = format!("{job}:{part}");
            for event in ["del", "expired", "evicted"] {
                assert_eq!(classify(&key, event), Ignore, "{key} {event}");
            }
        }
        // A scheduler id with a short number is no job.
        let numbered = SchedulerHash {
            queue: "mail",
            id: "invoice:2024",
        };
        assert_eq!(classify("mail:repeat:invoice:2024", "del"), numbered);
    }
}
