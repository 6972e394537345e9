//! Everything the watcher notices, decides and does: one type per event,
//! grouped by concern. Each event's `emit` writes its structured log line
//! (`event = "…"`) and its metric change; every log line of the watcher comes
//! from one of these.
//!
//! A new event is a struct in the file of its concern implementing
//! [`InternalEvent`] (or [`LogEvent`] when it changes no metric); its metrics
//! live in the matching group of [`metrics`](super::metrics).

mod config;
mod http;
mod journal;
mod lifecycle;
mod recovery;
mod redis;
mod signal;
mod source;

pub(crate) use super::observer::{InternalEvent, LogEvent, Observer};
pub(crate) use config::{ConfigReloadFailed, ConfigReloaded};
pub(crate) use http::{HttpAcceptFailed, HttpConnectionsFull, HttpListening};
pub(crate) use journal::{JournalFailed, JournalRecorded};
pub(crate) use lifecycle::{
    ConfigDefaults, RecoveryAbandoned, ShutdownRequested, WatchStarted, WatchStopped, WatchStopping,
};
pub(crate) use recovery::{
    BullmqVersionRestored, BullmqVersionUnverified, CatchupFailed, CatchupFired, DriftConfirmed,
    LeaseBusy, LeaseHeld, LeaseLost, LeaseReleased, OrphanFound, RecoveryFailed, RecoveryFinished,
    RecoveryMode, RecoveryStarted, RestoredFromSnapshot, SourceRecheck, SyncState,
};
pub(crate) use redis::{
    Condition, Persistence, PersistenceRead, PrimaryUnreachable, RedisCondition, RedisDown,
    RedisLoading, RedisMemory, RedisUp,
};
pub(crate) use signal::{Detected, FlushNoticed, KeyspaceNotifications, KeyspacePaused};
pub(crate) use source::{
    RowInvalid, SnapshotFailed, SnapshotKept, SourceDown, SourceRead, SourceWatch,
};
