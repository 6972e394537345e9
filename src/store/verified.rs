//! Which scheduler hashes the drift check need not read again.
//!
//! A drift check used to read every scheduler's hash, 10,000 `HMGET`s every
//! 30 s, to find the few that differ from their rows. What changes a hash is
//! rare and visible: BullMQ's upsert deletes it and writes it anew in one
//! script (a `del` keyspace notification on `<queue>:repeat:<id>`), and a
//! deletion, expiry or eviction is a notification too; a Worker moving a
//! scheduler on only counts its iterations (`HINCRBY`, no notification, and no
//! field the comparison reads). So while the keyspace subscription is live, a
//! hash that matched its row and has had no notification since still matches
//! it, as long as the row is the same: its read is skipped.
//!
//! Everything learned is forgotten whenever notifications may have been
//! missed — the subscription (re)made, lost, or paused while the warden writes
//! — and every [`FULL_READ_EVERY`] regardless, which also covers a hash edited
//! by hand with `HSET` (a class of notification the watcher does not ask for).

use std::collections::{HashMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::model::DesiredScheduler;

/// How long what was learned is trusted at most.
pub(crate) const FULL_READ_EVERY: Duration = Duration::from_secs(300);

/// Fewer rewrites than this never make `rewritten` forget all: below it the
/// sets are small, and a few notifications should not void a read.
const FORGET_AFTER_REWRITES: usize = 1024;

/// Shared by the keyspace watcher, which reports rewrites and gaps, and the
/// comparisons, which skip and confirm reads.
#[derive(Default)]
pub(crate) struct VerifiedDefinitions {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The keyspace subscription is live: rewrites are reported.
    live: bool,
    /// Counts the moments notifications may have been missed: a read begun
    /// before one of them confirms nothing.
    epoch: u64,
    /// When what is known was first learned; all is forgotten after
    /// `FULL_READ_EVERY`.
    since: Option<Instant>,
    /// Per scheduler, its `key` and the `fingerprint` of the row its hash
    /// matched, folded into one number: 9 bytes a scheduler where a map
    /// from key to fingerprint takes 17.
    matched: HashSet<u64>,
    /// Schedulers whose hash was rewritten, deleted, expired or evicted
    /// since it was last read, or was found not to match its row.
    rewritten: HashSet<u64>,
}

/// What a comparison may skip in one queue, and what it needs to confirm
/// the reads it made.
pub(crate) struct ReadPlan {
    epoch: u64,
    skip: HashSet<String>,
    /// Of the rows whose hashes are read: `key` and `matched(key, fingerprint)`.
    read: HashMap<String, (u64, u64)>,
}

impl ReadPlan {
    /// Whether the hash of scheduler `id` need not be read.
    pub(crate) fn skips(&self, id: &str) -> bool {
        self.skip.contains(id)
    }
}

impl VerifiedDefinitions {
    /// The keyspace subscription became live (`true`) or stopped (`false`):
    /// either way notifications may have been missed, so nothing known is
    /// trusted any more.
    pub(crate) fn watching(&self, live: bool) {
        let mut state = self.lock();
        state.live = live;
        state.forget();
    }

    /// A notification on the hash of scheduler `id` of `queue`. Once most
    /// of what is known was rewritten (a recovery writes every scheduler
    /// after a flush), all of it is forgotten: the next comparison reads
    /// every hash anyway, and until then neither set holds its megabyte.
    pub(crate) fn rewritten(&self, queue: &str, id: &str) {
        let mut state = self.lock();
        state.rewritten.insert(key(queue, id));
        let rewritten = state.rewritten.len();
        if rewritten >= FORGET_AFTER_REWRITES && 2 * rewritten > state.matched.len() {
            state.forget();
        }
    }

    /// Which hashes of `queue` need no read: those that matched the same row
    /// and have had no notification since. The others are read, so their
    /// notifications are consumed here.
    pub(crate) fn plan_read(&self, queue: &str, rows: &[DesiredScheduler]) -> ReadPlan {
        let mut state = self.lock();
        if state
            .since
            .is_some_and(|at| at.elapsed() >= FULL_READ_EVERY)
        {
            state.forget();
        }
        let mut plan = ReadPlan {
            epoch: state.epoch,
            skip: HashSet::new(),
            read: HashMap::new(),
        };
        // Nothing is learned without notifications (a one-shot command, a
        // Redis without the flags): no fingerprints to take.
        if !state.live {
            return plan;
        }
        for row in rows {
            let key = key(queue, &row.scheduler_id);
            let matched = matched(key, fingerprint(row));
            let same_row = state.matched.contains(&matched);
            if same_row && !state.rewritten.remove(&key) {
                plan.skip.insert(row.scheduler_id.clone());
            } else {
                state.rewritten.remove(&key);
                plan.read.insert(row.scheduler_id.clone(), (key, matched));
            }
        }
        state.shrink_consumed();
        plan
    }

    /// Records that the hashes of the schedulers `matching` (ids in the
    /// queue `plan` is for) were found equal to their rows by the read `plan` was made
    /// for, and that the other hashes it read were not: those are read
    /// again until they match. Nothing when notifications may have been
    /// missed since the read began (all was forgotten then anyway).
    pub(crate) fn confirm<'i>(&self, plan: &ReadPlan, matching: impl Iterator<Item = &'i String>) {
        let mut state = self.lock();
        if !state.live || state.epoch != plan.epoch {
            return;
        }
        state.since.get_or_insert_with(Instant::now);
        let matching: HashSet<&String> = matching.collect();
        for (id, &(key, matched)) in &plan.read {
            if matching.contains(id) {
                state.matched.insert(matched);
            } else {
                // Entries for other rows of this scheduler may linger in
                // `matched`; the hash is read until it matches one again.
                state.rewritten.insert(key);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // What the map holds is only ever a reason to skip a read: a
        // poisoned one is still a set of whole entries.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl State {
    /// Gives back what `rewritten` grew to hold once reads have consumed
    /// most of it. A recovery's own writes notify every scheduler it wrote,
    /// so the set swells to the size of the installation (1.2 MB at
    /// 100,000) and would keep that table for the life of the process.
    fn shrink_consumed(&mut self) {
        let left = self.rewritten.len();
        if self.rewritten.capacity() > 4 * left.max(16) {
            self.rewritten.shrink_to(2 * left);
        }
    }

    fn forget(&mut self) {
        self.epoch += 1;
        self.since = None;
        self.matched = HashSet::new();
        self.rewritten = HashSet::new();
    }
}

/// 64 bits per scheduler instead of its names: 100,000 schedulers cost a few
/// MB, and a collision (odds about 1 in 10^9 at that size) only skips a read
/// the next full read makes up for.
fn key(queue: &str, id: &str) -> u64 {
    let mut hasher = DefaultHasher::new();
    (queue, id).hash(&mut hasher);
    hasher.finish()
}

/// What a row asks of its scheduler's hash.
fn fingerprint(row: &DesiredScheduler) -> u64 {
    let mut hasher = DefaultHasher::new();
    row.hash(&mut hasher);
    hasher.finish()
}

/// Scheduler `key` matched a row with `fingerprint`. An entry for an older
/// row of the same scheduler is never looked up again and goes with the
/// next forgetting.
fn matched(key: u64, fingerprint: u64) -> u64 {
    let mut hasher = DefaultHasher::new();
    (key, fingerprint).hash(&mut hasher);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Schedule;

    fn row(id: &str, every: u64) -> DesiredScheduler {
        DesiredScheduler {
            scheduler_id: id.into(),
            ..DesiredScheduler::example(id, Schedule::EveryMs(every))
        }
    }

    fn learned(rows: &[DesiredScheduler]) -> VerifiedDefinitions {
        let verified = VerifiedDefinitions::default();
        verified.watching(true);
        let plan = verified.plan_read("q", rows);
        verified.confirm(&plan, ids(rows).iter());
        verified
    }

    fn ids(rows: &[DesiredScheduler]) -> Vec<String> {
        rows.iter().map(|r| r.scheduler_id.clone()).collect()
    }

    #[test]
    fn a_hash_that_matched_the_same_row_is_not_read_again() {
        let rows = [row("a", 1000), row("b", 1000)];
        let verified = learned(&rows);
        let plan = verified.plan_read("q", &rows);
        assert!(plan.skips("a") && plan.skips("b"));
        // Another queue with the same ids knows nothing.
        assert!(!verified.plan_read("other", &rows).skips("a"));
    }

    #[test]
    fn a_changed_row_or_a_rewritten_hash_is_read_once_more() {
        let rows = [row("a", 1000), row("b", 1000)];
        let verified = learned(&rows);
        verified.rewritten("q", "b");
        let changed = [row("a", 2000), row("b", 1000)];
        let plan = verified.plan_read("q", &changed);
        assert!(!plan.skips("a") && !plan.skips("b"));
        // The rewrite was consumed by that read; b matched before, so once
        // that read confirms it, it is skipped again.
        verified.confirm(&plan, ids(&changed[1..]).iter());
        assert!(verified.plan_read("q", &changed).skips("b"));
    }

    #[test]
    fn a_hash_read_and_found_different_is_read_until_it_matches() {
        let rows = [row("a", 1000)];
        let verified = learned(&rows);
        verified.rewritten("q", "a");
        let plan = verified.plan_read("q", &rows);
        assert!(!plan.skips("a"));
        verified.confirm(&plan, std::iter::empty());
        assert!(!verified.plan_read("q", &rows).skips("a"));
    }

    #[test]
    fn a_row_changed_and_changed_back_is_read_if_its_hash_differed_meanwhile() {
        let rows = [row("a", 1000)];
        let verified = learned(&rows);
        let changed = [row("a", 2000)];
        let plan = verified.plan_read("q", &changed);
        assert!(!plan.skips("a"));
        // The hash matched neither: it was rewritten in a way the read saw.
        verified.confirm(&plan, std::iter::empty());
        assert!(!verified.plan_read("q", &rows).skips("a"));
    }

    #[test]
    fn a_gap_in_the_notifications_forgets_everything_and_voids_reads_begun_before() {
        let rows = [row("a", 1000)];
        let verified = learned(&rows);
        let plan = verified.plan_read("q", &rows);
        verified.watching(false);
        assert!(!verified.plan_read("q", &rows).skips("a"), "not live");
        verified.watching(true);
        verified.confirm(&plan, ids(&rows).iter());
        assert!(
            !verified.plan_read("q", &rows).skips("a"),
            "a read begun before the gap confirms nothing"
        );
    }

    #[test]
    fn notifications_consumed_by_a_read_give_their_memory_back() {
        let rows: Vec<DesiredScheduler> = (0..10_000).map(|i| row(&i.to_string(), 1000)).collect();
        let verified = learned(&rows);
        for r in &rows {
            verified.rewritten("q", &r.scheduler_id);
        }
        verified.rewritten("other", "left");
        verified.plan_read("q", &rows);
        let state = verified.lock();
        assert_eq!(state.rewritten.len(), 1);
        assert!(
            state.rewritten.capacity() < 100,
            "{}",
            state.rewritten.capacity()
        );
    }

    #[test]
    fn once_most_hashes_were_rewritten_all_is_forgotten_and_let_go() {
        let rows: Vec<DesiredScheduler> = (0..4_000).map(|i| row(&i.to_string(), 1000)).collect();
        let verified = learned(&rows);
        let read_before = verified.plan_read("q", &rows);
        for r in &rows[..1_999] {
            verified.rewritten("q", &r.scheduler_id);
        }
        assert!(verified.plan_read("q", &rows[3_000..]).skips("3000"));
        verified.rewritten("q", "1999");
        verified.rewritten("q", "2000");
        assert!(!verified.plan_read("q", &rows).skips("3000"));
        verified.confirm(&read_before, ids(&rows).iter());
        assert!(
            !verified.plan_read("q", &rows).skips("3000"),
            "a read begun before confirms nothing"
        );
        let state = verified.lock();
        assert_eq!(state.matched.capacity(), 0);
        assert_eq!(state.rewritten.capacity(), 0);
    }

    #[test]
    fn without_a_live_subscription_every_hash_is_read() {
        let verified = VerifiedDefinitions::default();
        let rows = [row("a", 1000)];
        let plan = verified.plan_read("q", &rows);
        verified.confirm(&plan, ids(&rows).iter());
        assert!(!verified.plan_read("q", &rows).skips("a"));
    }
}
