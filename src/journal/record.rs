//! The recorder: keeps the journal equal to the schedulers Redis holds,
//! except where Redis lost them (see `rules.rs`).
//!
//! It reads a queue when keyspace notifications show its scheduler keys
//! change (`Notes`, fed by the keyspace watcher), and every queue at start
//! and before every comparison (`settle`, called by the reconciler's read),
//! so that what the application just did is in the journal before the
//! journal is compared with Redis.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, Notify};
use tokio_util::sync::CancellationToken;

use super::read::{read_absence, read_queue};
use super::rules::{candidates, judge, Evidence};
use super::store::{Changes, JournalError, JournalFile, Recorded};
use crate::report::events::{JournalFailed, JournalRecorded, Observer};
use crate::store::BullmqStore;

/// How long after a notification the queue is read: the commands of one
/// application call (an upsert, a removal, an obliteration) arrive together.
const SETTLE_DELAY: Duration = Duration::from_millis(200);

/// What keyspace notifications showed since the queues were last read.
#[derive(Clone, Default)]
pub(crate) struct Notes {
    pending: Arc<std::sync::Mutex<BTreeMap<String, Evidence>>>,
    wake: Arc<Notify>,
    /// Bumped by every `reset`: a read that began before one must not
    /// remove anything on the evidence it took.
    resets: Arc<std::sync::atomic::AtomicU64>,
}

impl Notes {
    /// A notification on `<queue>:repeat` or `<queue>:repeat:<id>` (the key
    /// after the prefix and its `:`); other keys are ignored.
    pub(crate) fn keyspace(&self, key: &str, event: &str) {
        let Some((queue, rest)) = key.split_once(':') else {
            return;
        };
        let hash_id = match rest {
            "repeat" => None,
            _ => match rest.strip_prefix("repeat:") {
                Some(id) if !is_job_key(id) => Some(id),
                _ => return,
            },
        };
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let evidence = pending.entry(queue.to_owned()).or_default();
        match (hash_id, event) {
            (Some(id), "del") => {
                evidence.hashes_deleted.insert(id.to_owned());
            }
            (None, "del" | "zrem") => evidence.set_touched = true,
            _ => {}
        }
        drop(pending);
        self.wake.notify_one();
    }

    /// Notifications may have been missed (a new subscription) or Redis was
    /// flushed: no evidence gathered so far may support a removal.
    pub(crate) fn reset(&self) {
        self.resets
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        for evidence in pending.values_mut() {
            *evidence = Evidence::default();
        }
    }

    fn take(&self) -> BTreeMap<String, Evidence> {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn resets(&self) -> u64 {
        self.resets.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// A key under `repeat:` that is one of a scheduler's jobs
/// (`repeat:<id>:<13 digits>`) or belongs to one (`…:lock`, `…:logs`).
fn is_job_key(id: &str) -> bool {
    let millis = |part: &str| part.len() == 13 && part.bytes().all(|b| b.is_ascii_digit());
    let mut parts = id.rsplit(':');
    let (last, before) = (parts.next().unwrap_or_default(), parts.next());
    (before.is_some() && millis(last)) || before.is_some_and(millis)
}

/// The journal file and the copy of it in memory.
struct State {
    file: JournalFile,
    recorded: Recorded,
}

pub(crate) struct Recorder {
    state: Mutex<State>,
    notes: Notes,
    observer: Observer,
    /// `[source] queues`: only these are recorded; empty: every queue.
    only: BTreeSet<String>,
}

impl Recorder {
    /// Opens (or creates) the journal at `path` and loads it.
    pub(crate) async fn open(
        path: &Path,
        only: &[String],
        observer: Observer,
    ) -> Result<Self, JournalError> {
        let mut file = JournalFile::open(path).await?;
        let recorded = file.load().await?;
        Ok(Self {
            state: Mutex::new(State { file, recorded }),
            notes: Notes::default(),
            observer,
            only: only.iter().cloned().collect(),
        })
    }

    /// Where the keyspace watcher sends what it sees.
    pub(crate) fn notes(&self) -> Notes {
        self.notes.clone()
    }

    /// Reads the queues notifications pointed at, and with `everything` also
    /// every recorded queue and `more`; records what changed.
    pub(crate) async fn settle(&self, store: &BullmqStore, everything: bool, more: &[String]) {
        let mut state = self.state.lock().await;
        let resets = self.notes.resets();
        let mut queues = self.notes.take();
        if everything {
            let known = state.recorded.keys().chain(more).chain(&self.only);
            for queue in known {
                queues.entry(queue.clone()).or_default();
            }
        }
        for (queue, evidence) in queues {
            if !self.only.is_empty() && !self.only.contains(&queue) {
                continue;
            }
            if let Err(error) = self
                .settle_queue(&mut state, store, &queue, &evidence, resets)
                .await
            {
                self.observer.emit(JournalFailed { error: &error });
            }
        }
    }

    async fn settle_queue(
        &self,
        state: &mut State,
        store: &BullmqStore,
        queue: &str,
        evidence: &Evidence,
        resets: u64,
    ) -> Result<(), JournalError> {
        let read_error = |e: crate::store::StoreError| JournalError::Read {
            path: state.file.path().to_owned(),
            reason: e.to_string(),
        };
        let read = read_queue(store, queue).await.map_err(read_error)?;
        let empty = BTreeMap::new();
        let recorded = state.recorded.get(queue).unwrap_or(&empty);
        let missing = candidates(recorded, &read);
        let absence = match evidence.any() && !missing.is_empty() {
            true => Some(
                read_absence(store, queue, &missing)
                    .await
                    .map_err(read_error)?,
            ),
            false => None,
        };
        let mut changes = judge(queue, recorded, &read, absence.as_ref(), evidence);
        // A flush or a gap in the notifications since the evidence was taken:
        // what looked like a removal may be that loss.
        if self.notes.resets() != resets {
            changes.remove.clear();
            changes.forget.clear();
        }
        if changes.is_empty() {
            return Ok(());
        }
        state.file.apply(&changes, crate::clock::now_ms()).await?;
        apply_in_memory(&mut state.recorded, &changes);
        self.observer.emit(JournalRecorded {
            queue,
            recorded: changes.record.len(),
            removed: changes.remove.len(),
            forgotten: !changes.forget.is_empty(),
        });
        Ok(())
    }

    /// Reads the queues that notifications point at, shortly after they
    /// arrive, until `shutdown`.
    pub(crate) async fn run(
        self: Arc<Self>,
        store: crate::store::SharedStore,
        shutdown: CancellationToken,
    ) {
        loop {
            tokio::select! {
                _ = self.notes.wake.notified() => {}
                _ = shutdown.cancelled() => return,
            }
            tokio::select! {
                _ = tokio::time::sleep(SETTLE_DELAY) => {}
                _ = shutdown.cancelled() => return,
            }
            self.settle(&store.get(), false, &[]).await;
        }
    }
}

fn apply_in_memory(recorded: &mut Recorded, changes: &Changes) {
    for queue in &changes.forget {
        recorded.remove(queue);
    }
    for (queue, id) in &changes.remove {
        if let Some(schedulers) = recorded.get_mut(queue) {
            schedulers.remove(id);
            if schedulers.is_empty() {
                recorded.remove(queue);
            }
        }
    }
    for definition in &changes.record {
        recorded
            .entry(definition.queue.clone())
            .or_default()
            .insert(definition.id.clone(), definition.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_gather_evidence_per_queue_and_reset_drops_it() {
        let notes = Notes::default();
        notes.keyspace("mail:repeat:daily", "del");
        notes.keyspace("mail:repeat", "zrem");
        notes.keyspace("mail:repeat:daily:1767225600000", "del");
        notes.keyspace("mail:wait", "del");
        notes.keyspace("other:repeat", "zadd");
        {
            let pending = notes.pending.lock().expect("lock");
            let mail = &pending["mail"];
            assert!(mail.set_touched);
            assert_eq!(mail.hashes_deleted.len(), 1);
            assert!(!pending["other"].any());
            assert!(!pending.contains_key("mail:wait"));
        }
        notes.reset();
        let taken = notes.take();
        assert_eq!(taken.len(), 2, "queues stay pending for a read");
        assert!(taken.values().all(|e| !e.any()));
    }
}
