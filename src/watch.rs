//! `watch`: the sidecar's main loop.
//!
//! Four signal sources feed one recovery controller: keyspace notifications
//! (deletions within milliseconds), the INFO/count poll (restarts, flushes,
//! failovers, lost connections), the watch on the rows (changes within
//! seconds) and a periodic full comparison. The HTTP server
//! shares the same `Warden`, metrics and apply lock.

use crate::store::verified::VerifiedDefinitions;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch, Mutex};
use tokio_util::sync::CancellationToken;

use crate::backoff::{full_jitter, Backoff};
use crate::clock::now_ms;
use crate::config::Config;
use crate::decision::{Context, Controller, Recovery};
use crate::http;
use crate::model::{Cause, Trigger};
use crate::report::events::{
    HttpListening, Observer, RecoveryAbandoned, RedisDown, RedisUp, WatchStarted, WatchStopped,
    WatchStopping,
};
use crate::report::metrics::Metrics;
use crate::restore::webhook::Webhook;
use crate::restore::OwnWrites;
use crate::signal::{
    keyspace, poll, reload, sentinel, source_change, Context as SignalContext, RestoredCounts,
    Signals,
};
use crate::source::Source;
use crate::store::BullmqStore;
use crate::warden::Warden;

#[derive(Debug, thiserror::Error)]
pub(crate) enum WatchError {
    #[error(transparent)]
    Http(#[from] http::HttpError),
    #[error(transparent)]
    Webhook(#[from] crate::restore::webhook::WebhookError),
    #[error(transparent)]
    Source(#[from] crate::source::SourceError),
    #[error(transparent)]
    Journal(#[from] crate::journal::store::JournalError),
}

/// How long a recovery in progress may take to finish after SIGTERM.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

/// Runs the watcher until `shutdown` is cancelled. Fails only on problems a
/// restart cannot fix (configuration, port in use); Redis or the database
/// being down is reported and waited out.
pub(crate) async fn run(
    config: Config,
    origin: crate::config::ConfigOrigin,
    shutdown: CancellationToken,
) -> Result<(), WatchError> {
    let hangup = reload::catch_hangup();
    let observer = Observer::new(Arc::new(Metrics::new()));
    let webhook = Webhook::from_config(&config.recovery)?;
    let apply_lock = Arc::new(Mutex::new(()));
    let mut tasks = tokio::task::JoinSet::new();
    let started = start_up(&mut tasks, &config, &observer, &apply_lock, &shutdown).await?;
    let Some((warden, journal)) = started else {
        while tasks.join_next().await.is_some() {}
        return Ok(());
    };
    let (controller, triggers, ctx, wiring) =
        wire_recovery(&config, &warden, &observer, webhook, apply_lock, journal);
    // The controller finishes a recovery in progress before it stops, so it
    // gets its own token, cancelled after the signal sources have stopped.
    let controller_stop = CancellationToken::new();
    let controller_task = tokio::spawn(controller.run(triggers, controller_stop.clone()));
    start_signals(&mut tasks, &config, &ctx, wiring, &shutdown);
    tasks.spawn(
        reload::Reloader {
            origin,
            warden: warden.clone(),
            observer: observer.clone(),
            signals: ctx.signals.clone(),
        }
        .run(hangup, shutdown.clone()),
    );
    // The manual's start-up health check, acted upon.
    ctx.signals.raise_now(
        Cause::Startup,
        None,
        "watcher started: comparing rows and Redis".into(),
    );
    shutdown.cancelled().await;
    shut_down(tasks, controller_stop, controller_task, &warden, &observer).await;
    Ok(())
}

/// Serves HTTP, then connects to Redis for as long as it takes, then opens
/// the journal where there is one: metrics and health answer from the start,
/// Redis or not. `None` when the watcher is stopped before Redis answers.
async fn start_up(
    tasks: &mut tokio::task::JoinSet<()>,
    config: &Config,
    observer: &Observer,
    apply_lock: &Arc<Mutex<()>>,
    shutdown: &CancellationToken,
) -> Result<Option<(Arc<Warden>, Option<crate::journal::Notes>)>, WatchError> {
    let source = Source::connect_lazy(&config.source).await?;
    let connected: http::WardenSlot = Arc::default();
    if let Some(server) = http_server(config, &connected, observer, apply_lock, shutdown).await? {
        tasks.spawn(server);
    }
    let Some(store) = connect_redis(config, observer, shutdown).await else {
        return Ok(None);
    };
    observer.emit(WatchStarted {
        redis: store.redacted_url(),
        source: source.redacted_url(),
    });
    let warden = Arc::new(Warden::from_parts(config.clone(), store, source));
    let journal = start_recorder(tasks, config, &warden, observer, shutdown).await?;
    let _ = connected.set(warden.clone());
    Ok(Some((warden, journal)))
}

/// The recovery controller, the triggers it reads, and what the signal
/// sources share with it and with each other.
fn wire_recovery(
    config: &Config,
    warden: &Arc<Warden>,
    observer: &Observer,
    webhook: Option<Webhook>,
    apply_lock: Arc<Mutex<()>>,
    journal: Option<crate::journal::Notes>,
) -> (
    Controller<Recovery>,
    mpsc::Receiver<Trigger>,
    SignalContext,
    Wiring,
) {
    let (signals, triggers) = Signals::channel(observer.clone());
    let ctx = SignalContext {
        store: warden.shared_store().clone(),
        observer: observer.clone(),
        signals,
        queues: Arc::new(std::sync::RwLock::new(vec![config.source.queue.clone()])),
    };
    let restored: RestoredCounts = Arc::default();
    let (loading_tx, loading_rx) = watch::channel(false);
    let (own_writes, own_writes_rx) = OwnWrites::new();
    let recovery = Recovery::new(Context {
        warden: warden.clone(),
        observer: observer.clone(),
        webhook,
        queues: ctx.queues.clone(),
        restored: restored.clone(),
        apply_lock,
        own_writes,
    });
    let controller = Controller::new(recovery, observer.clone(), loading_rx);
    let wiring = Wiring {
        restored,
        loading: loading_tx,
        own_writes: own_writes_rx,
        verified: warden.verified_definitions(),
        journal,
    };
    (controller, triggers, ctx, wiring)
}

/// Stops the signal sources first, then gives a recovery in progress
/// `SHUTDOWN_GRACE` to finish before the connections close.
async fn shut_down(
    mut tasks: tokio::task::JoinSet<()>,
    controller_stop: CancellationToken,
    controller_task: tokio::task::JoinHandle<()>,
    warden: &Warden,
    observer: &Observer,
) {
    observer.emit(WatchStopping);
    while tasks.join_next().await.is_some() {}
    controller_stop.cancel();
    if tokio::time::timeout(SHUTDOWN_GRACE, controller_task)
        .await
        .is_err()
    {
        observer.emit(RecoveryAbandoned);
    }
    warden.close().await;
    observer.emit(WatchStopped);
}

/// The HTTP server's task, when `[http] listen` names an address; binding
/// happens here, so that a port in use fails the start.
async fn http_server(
    config: &Config,
    connected: &http::WardenSlot,
    observer: &Observer,
    apply_lock: &Arc<Mutex<()>>,
    shutdown: &CancellationToken,
) -> Result<Option<impl std::future::Future<Output = ()> + use<>>, WatchError> {
    let token = http::api_token(&config.http)?;
    if config.http.listen.is_empty() {
        return Ok(None);
    }
    let listener = http::bind(&config.http, token.as_ref()).await?;
    observer.emit(HttpListening {
        addr: &config.http.listen,
    });
    Ok(Some(http::serve(
        listener,
        config.http.clone(),
        connected.clone(),
        observer.clone(),
        token.map(http::ApiToken::into_secret),
        apply_lock.clone(),
        shutdown.clone(),
    )))
}

/// What the signal sources tell each other and the recovery loop.
struct Wiring {
    /// Queues a recovery just filled, for the poll's flush detection.
    restored: RestoredCounts,
    /// Set by the poll while Redis loads; the loop waits meanwhile.
    loading: watch::Sender<bool>,
    /// Raised while a recovery writes; the keyspace subscription pauses.
    own_writes: watch::Receiver<bool>,
    /// Told by the keyspace subscription which scheduler hashes changed.
    verified: Arc<VerifiedDefinitions>,
    /// Journal mode: the recorder's notes, fed by the keyspace watcher.
    journal: Option<crate::journal::Notes>,
}

/// Journal mode: opens the journal for recording, lets the warden record
/// before each read of it, and starts the task that records what keyspace
/// notifications point at. Returns where those notifications go.
async fn start_recorder(
    tasks: &mut tokio::task::JoinSet<()>,
    config: &Config,
    warden: &Arc<Warden>,
    observer: &Observer,
    shutdown: &CancellationToken,
) -> Result<Option<crate::journal::Notes>, WatchError> {
    if !crate::journal::is_journal(&config.source.url) {
        return Ok(None);
    }
    let path = crate::journal::path_of(&config.source.url);
    let recorder =
        crate::journal::Recorder::open(&path, &config.source.queues, observer.clone()).await?;
    let recorder = Arc::new(recorder);
    warden.set_recorder(recorder.clone());
    let notes = recorder.notes();
    tasks.spawn(recorder.run(warden.shared_store().clone(), shutdown.clone()));
    Ok(Some(notes))
}

/// Starts the signal sources: Sentinel (when configured), the poll, the
/// keyspace subscription, the watch on the rows and the periodic drift check.
fn start_signals(
    tasks: &mut tokio::task::JoinSet<()>,
    config: &Config,
    ctx: &SignalContext,
    wiring: Wiring,
    shutdown: &CancellationToken,
) {
    let poll_now = Arc::new(tokio::sync::Notify::new());
    let (moved_tx, moved_rx) = watch::channel(0u64);
    if !config.redis.sentinels.is_empty() {
        let follower = sentinel::PrimaryFollower {
            ctx: ctx.clone(),
            config: config.redis.clone(),
            moved: moved_tx,
            interval: config.watch.info_interval,
        };
        tasks.spawn(follower.run(shutdown.clone()));
    }
    let poller = poll::Poller {
        ctx: ctx.clone(),
        restored: wiring.restored,
        poll_now: poll_now.clone(),
        loading: wiring.loading,
        interval: config.watch.info_interval,
        settings_interval: config.watch.drift_interval,
    };
    tasks.spawn(poller.run(shutdown.clone()));
    let keyspace = keyspace::KeyspaceWatcher {
        ctx: ctx.clone(),
        moved: moved_rx,
        db: redis_db(&config.redis.url),
        prefix: config.redis.prefix.clone(),
        manage_config: config.watch.manage_keyspace_config,
        backoff_min: config.recovery.backoff_min,
        backoff_max: config.recovery.backoff_max,
        topology_interval: config.watch.drift_interval,
        poll_now,
        own_writes: wiring.own_writes,
        verified: wiring.verified,
        journal: wiring.journal,
    };
    tasks.spawn(keyspace.run(shutdown.clone()));
    let rows = source_change::SourceChangeWatcher {
        ctx: ctx.clone(),
        config: config.source.clone(),
        backoff_min: config.recovery.backoff_min,
        backoff_max: config.recovery.backoff_max,
    };
    tasks.spawn(rows.run(shutdown.clone()));
    tasks.spawn(periodic_drift_checks(
        ctx.signals.clone(),
        config.watch.drift_interval,
        shutdown.clone(),
    ));
}

/// Connects to Redis, retrying with backoff for as long as it takes; `None`
/// when the watcher is stopped first.
async fn connect_redis(
    config: &Config,
    observer: &Observer,
    shutdown: &CancellationToken,
) -> Option<BullmqStore> {
    let mut backoff = Backoff::new(config.recovery.backoff_min, config.recovery.backoff_max);
    loop {
        match BullmqStore::connect(&config.redis).await {
            Ok(store) => {
                observer.emit(RedisUp);
                return Some(store);
            }
            Err(error) => {
                observer.emit(RedisDown {
                    error: error.to_string(),
                });
                let delay = full_jitter(backoff.fail());
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.cancelled() => return None,
                }
            }
        }
    }
}

async fn periodic_drift_checks(signals: Signals, every: Duration, shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                signals.nudge(Trigger::new(Cause::Drift, now_ms()));
            }
            _ = shutdown.cancelled() => return,
        }
    }
}

/// The database number in `redis://host/<db>`; keyspace channels name it.
fn redis_db(url: &str) -> u32 {
    url::Url::parse(url)
        .ok()
        .and_then(|u| u.path().trim_start_matches('/').parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_number_comes_from_the_url_path() {
        assert_eq!(redis_db("redis://127.0.0.1:6379/3"), 3);
        assert_eq!(redis_db("redis://127.0.0.1:6379"), 0);
        assert_eq!(redis_db("rediss://u:p@h/0"), 0);
    }
}
