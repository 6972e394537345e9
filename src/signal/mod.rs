//! Signals: the ways the watcher notices that Redis may have lost schedulers —
//! keyspace notifications, the INFO/count poll, Sentinel failovers, config
//! reloads and the periodic check — or that the rows changed (`source_change`). Each raises a [`Trigger`] through
//! [`Signals`], the one place a detection is logged, counted and handed to
//! the decision loop.
//!
//! A new signal source is a module here that takes a [`Signals`] and calls
//! [`Signals::raise`] when it sees a possible loss.

pub(crate) mod flushes;
pub(crate) mod keyspace;
pub(crate) mod poll;
pub(crate) mod reload;
pub(crate) mod sentinel;
pub(crate) mod source_change;

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::clock::now_ms;
use crate::model::{Cause, Trigger};
use crate::report::events::{Detected, Observer};
use crate::store::SharedStore;

/// The queues the watcher looks at, refreshed from every comparison.
pub(crate) type SharedQueues = Arc<std::sync::RwLock<Vec<String>>>;

/// Queues a recovery just filled, with how many schedulers they hold now. The
/// poll takes them as its previous counts, so a flush right after a recovery
/// (before the poll saw the filled set) is still seen as a flush.
pub(crate) type RestoredCounts = Arc<std::sync::Mutex<BTreeMap<String, u64>>>;

/// What every signal source shares: where Redis is, where events and
/// detections go, and which queues to look at.
#[derive(Clone)]
pub(crate) struct Context {
    /// Replaced when Sentinel moves the primary.
    pub(crate) store: SharedStore,
    pub(crate) observer: Observer,
    pub(crate) signals: Signals,
    pub(crate) queues: SharedQueues,
}

/// Triggers queued before the decision loop takes them; a full queue already
/// holds triggers enough for one more cycle, so more are dropped.
const QUEUED_TRIGGERS: usize = 1024;

/// Where every signal source sends what it noticed.
#[derive(Clone)]
pub(crate) struct Signals {
    triggers: mpsc::Sender<Trigger>,
    observer: Observer,
}

impl Signals {
    /// The sending side, and the receiver the decision loop reads.
    pub(crate) fn channel(observer: Observer) -> (Self, mpsc::Receiver<Trigger>) {
        let (triggers, receiver) = mpsc::channel(QUEUED_TRIGGERS);
        (Self { triggers, observer }, receiver)
    }

    /// A detection: logged and counted once, then one trigger per queue it
    /// names (or one for all queues when it names none).
    pub(crate) fn raise(&self, cause: Cause, queues: &[&str], since_ms: u64, detail: String) {
        self.raise_trigger(Trigger::new(cause, since_ms), queues, detail);
    }

    /// `raise` for a trigger the caller made: one that says itself whether
    /// it shows a loss.
    pub(crate) fn raise_trigger(&self, trigger: Trigger, queues: &[&str], detail: String) {
        self.observer.emit(Detected {
            cause: trigger.cause,
            queue: match queues {
                [only] => Some(*only),
                _ => None,
            },
            detail,
        });
        if queues.is_empty() {
            self.nudge(trigger.clone());
        }
        for queue in queues {
            self.nudge(trigger.clone().about(queue));
        }
    }

    /// A detection that happened just now.
    pub(crate) fn raise_now(&self, cause: Cause, queue: Option<&str>, detail: String) {
        let queues: &[&str] = match &queue {
            Some(queue) => std::slice::from_ref(queue),
            None => &[],
        };
        self.raise(cause, queues, now_ms(), detail);
    }

    /// A trigger that is not a detection of its own: a periodic check, a
    /// reload, or a repeat of a detection already logged.
    pub(crate) fn nudge(&self, trigger: Trigger) {
        let _ = self.triggers.try_send(trigger);
    }
}
