//! When a scheduler that left Redis is a removal, and when it is a loss.
//!
//! Redis shows the same end state for very different causes, so the journal
//! records a removal only with evidence of how it came about:
//!
//! - **removed**: BullMQ's `removeJobScheduler` deletes the set member and
//!   the hash with `ZREM` and `DEL`, which Redis announces (a `del`
//!   keyspace event on `repeat:<id>`), while the queue's meta hash stays. So a
//!   scheduler is removed from the journal when such an event arrived since
//!   the last read, and an atomic read shows its member and hash gone and
//!   the meta hash present.
//! - **obliterated**: `queue.obliterate()` deletes every key of the queue
//!   with commands Redis announces (`del` on each scheduler hash, `zrem` on
//!   the repeat set), the meta hash among them. A queue is forgotten when the
//!   deletion of every recorded scheduler's hash and a change of the set were
//!   announced, and an atomic read shows the meta hash, the repeat set and
//!   every recorded hash gone. Requiring every hash keeps one removal followed
//!   by a flush from passing for an obliteration.
//! - everything else is a **loss**: a flush, a restart or failover to an
//!   empty server, an eviction, the deletion of a repeat set or of a hash
//!   alone. Flushes and restarts announce no key; an eviction is announced
//!   as `evicted`, not `del`; a deleted set leaves its hashes, a deleted
//!   hash its member. Evidence is dropped whenever notifications may have
//!   been missed or a flush was reported (`Notes::reset`).

use std::collections::{BTreeMap, BTreeSet};

use super::read::{Absence, QueueRead};
use super::store::Changes;
use super::Definition;

/// What keyspace notifications showed of a queue since its last read.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Evidence {
    /// Scheduler hashes deleted with `DEL` (by `removeJobScheduler`,
    /// `obliterate`, or an upsert rewriting the hash).
    pub(crate) hashes_deleted: BTreeSet<String>,
    /// Members removed from the repeat set, or the set deleted, by a command.
    pub(crate) set_touched: bool,
}

impl Evidence {
    /// Whether it could support a removal or an obliteration.
    pub(crate) fn any(&self) -> bool {
        !self.hashes_deleted.is_empty() || self.set_touched
    }
}

/// The recorded schedulers of a queue that are not in its set now: the ones
/// an absence read must look at.
pub(crate) fn candidates(recorded: &BTreeMap<String, Definition>, read: &QueueRead) -> Vec<String> {
    recorded
        .keys()
        .filter(|id| !read.members.contains(*id))
        .cloned()
        .collect()
}

/// The journal changes one read of `queue` calls for.
pub(crate) fn judge(
    queue: &str,
    recorded: &BTreeMap<String, Definition>,
    read: &QueueRead,
    absence: Option<&Absence>,
    evidence: &Evidence,
) -> Changes {
    let mut changes = Changes {
        record: read
            .definitions
            .values()
            .filter(|d| recorded.get(&d.id) != Some(*d))
            .cloned()
            .collect(),
        ..Changes::default()
    };
    let Some(absence) = absence else {
        return changes;
    };
    let missing = candidates(recorded, read);
    let obliterated = evidence.set_touched
        && recorded
            .keys()
            .all(|id| evidence.hashes_deleted.contains(id))
        && !absence.meta_exists
        && !absence.set_exists
        && read.members.is_empty()
        && !recorded.is_empty()
        && missing.iter().all(|id| absence.gone.contains(id));
    if obliterated {
        changes.forget.push(queue.to_owned());
        return changes;
    }
    if absence.meta_exists {
        changes.remove = missing
            .into_iter()
            .filter(|id| absence.gone.contains(id) && evidence.hashes_deleted.contains(id))
            .map(|id| (queue.to_owned(), id))
            .collect();
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn definition(id: &str) -> Definition {
        Definition {
            queue: "q".into(),
            id: id.into(),
            name: Some(id.into()),
            pattern: Some("0 3 * * *".into()),
            ..Definition::default()
        }
    }

    fn recorded(ids: &[&str]) -> BTreeMap<String, Definition> {
        ids.iter()
            .map(|id| (id.to_string(), definition(id)))
            .collect()
    }

    fn read(ids: &[&str]) -> QueueRead {
        QueueRead {
            definitions: recorded(ids),
            members: ids.iter().map(|id| id.to_string()).collect(),
            legacy: Vec::new(),
        }
    }

    fn absence(meta: bool, set: bool, gone: &[&str]) -> Absence {
        Absence {
            meta_exists: meta,
            set_exists: set,
            gone: gone.iter().map(|id| id.to_string()).collect(),
        }
    }

    fn deleted(ids: &[&str], set_touched: bool) -> Evidence {
        Evidence {
            hashes_deleted: ids.iter().map(|id| id.to_string()).collect(),
            set_touched,
        }
    }

    #[test]
    fn new_and_changed_definitions_are_recorded_and_equal_ones_are_not() {
        let mut changed = read(&["a", "b", "c"]);
        changed.definitions.get_mut("b").expect("b").tz = Some("UTC".into());
        let changes = judge(
            "q",
            &recorded(&["a", "b"]),
            &changed,
            None,
            &Evidence::default(),
        );
        let ids: Vec<&str> = changes.record.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(ids, ["b", "c"]);
    }

    #[test]
    fn remove_job_scheduler_on_a_healthy_queue_is_a_removal() {
        let changes = judge(
            "q",
            &recorded(&["a", "b"]),
            &read(&["a"]),
            Some(&absence(true, true, &["b"])),
            &deleted(&["b"], true),
        );
        assert_eq!(changes.remove, [("q".to_string(), "b".to_string())]);
        assert!(changes.forget.is_empty());
    }

    #[test]
    fn the_last_scheduler_removed_leaves_the_meta_hash_and_is_a_removal() {
        let changes = judge(
            "q",
            &recorded(&["a"]),
            &read(&[]),
            Some(&absence(true, false, &["a"])),
            &deleted(&["a"], true),
        );
        assert_eq!(changes.remove.len(), 1);
    }

    #[test]
    fn a_flush_or_restart_is_a_loss_even_with_stale_evidence() {
        // No meta hash and no event on the set: flushed or restarted empty.
        let changes = judge(
            "q",
            &recorded(&["a", "b"]),
            &read(&[]),
            Some(&absence(false, false, &["a", "b"])),
            &deleted(&["a"], false),
        );
        assert!(changes.is_empty(), "{changes:?}");
    }

    #[test]
    fn a_deleted_set_or_hash_is_a_loss() {
        // DEL of the set: the hashes survive.
        let set_deleted = judge(
            "q",
            &recorded(&["a", "b"]),
            &read(&[]),
            Some(&absence(true, false, &[])),
            &deleted(&[], true),
        );
        assert!(set_deleted.is_empty(), "{set_deleted:?}");
        // A removal without the hash's deletion announced (an eviction).
        let evicted = judge(
            "q",
            &recorded(&["a", "b"]),
            &read(&["a"]),
            Some(&absence(true, true, &["b"])),
            &deleted(&[], true),
        );
        assert!(evicted.is_empty(), "{evicted:?}");
    }

    #[test]
    fn one_removal_then_a_flush_is_no_obliteration() {
        let changes = judge(
            "q",
            &recorded(&["a", "b"]),
            &read(&[]),
            Some(&absence(false, false, &["a", "b"])),
            &deleted(&["b"], true),
        );
        assert!(changes.is_empty(), "{changes:?}");
    }

    #[test]
    fn obliterate_forgets_the_queue() {
        let changes = judge(
            "q",
            &recorded(&["a", "b"]),
            &read(&[]),
            Some(&absence(false, false, &["a", "b"])),
            &deleted(&["a", "b"], true),
        );
        assert_eq!(changes.forget, ["q"]);
    }

    #[test]
    fn without_an_absence_read_nothing_is_removed() {
        let changes = judge(
            "q",
            &recorded(&["a", "b"]),
            &read(&["a"]),
            None,
            &deleted(&["b"], true),
        );
        assert!(changes.is_empty(), "{changes:?}");
    }
}
