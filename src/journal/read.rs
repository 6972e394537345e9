//! What Redis holds of one queue's job schedulers, read for the journal: the
//! whole definitions (every hash field the row contract carries), and the
//! facts the removal rules need, read atomically (`MULTI`) so that they
//! describe one moment.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::Definition;
use crate::store::{BullmqStore, StoreError};

/// Hashes read per pipeline.
const READ_BATCH: usize = 500;

/// One queue as Redis holds it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct QueueRead {
    /// Every job scheduler with a readable definition.
    pub(crate) definitions: BTreeMap<String, Definition>,
    /// Every member of the repeat set that is a job scheduler.
    pub(crate) members: BTreeSet<String>,
    /// Legacy repeatable jobs (md5 members): not job schedulers, never recorded.
    pub(crate) legacy: Vec<String>,
}

/// What one atomic read says of schedulers missing from a queue's set.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Absence {
    /// The queue's meta hash exists: the queue was not flushed, restarted
    /// empty or obliterated.
    pub(crate) meta_exists: bool,
    /// The repeat set exists (has members).
    pub(crate) set_exists: bool,
    /// Of the ids asked about, those neither in the set nor with a hash.
    pub(crate) gone: BTreeSet<String>,
}

/// Reads every job scheduler of `queue`.
pub(crate) async fn read_queue(store: &BullmqStore, queue: &str) -> Result<QueueRead, StoreError> {
    let keys = store.keys(queue);
    let mut conn = store.raw();
    let members: Vec<String> = redis::cmd("ZRANGE")
        .arg(keys.repeat())
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await
        .map_err(|e| store.error(e))?;
    let mut read = QueueRead::default();
    for member in members {
        if is_legacy(&member) {
            read.legacy.push(member);
        } else {
            read.members.insert(member);
        }
    }
    let repeat_key = keys.repeat();
    let ids: Vec<&String> = read.members.iter().collect();
    for batch in ids.chunks(READ_BATCH) {
        let mut pipe = redis::pipe();
        for id in batch {
            pipe.cmd("HGETALL").arg(format!("{repeat_key}:{id}"));
        }
        let hashes: Vec<HashMap<String, String>> = pipe
            .query_async(&mut conn)
            .await
            .map_err(|e| store.error(e))?;
        for (id, hash) in batch.iter().zip(hashes) {
            let fields: Vec<(String, String)> = hash.into_iter().collect();
            if let Some(definition) = Definition::from_hash(queue, id, &fields) {
                read.definitions.insert((*id).clone(), definition);
            }
        }
    }
    Ok(read)
}

/// Answers, in one script, whether the meta hash and the repeat set exist
/// and, for each id, whether it is in the set and has a hash: Redis runs a
/// script whole, so the answers describe one moment. A script rather than
/// `MULTI`, which the least-privilege ACL does not grant; it reads only the
/// queue's own keys, so on a cluster they share the prefix's slot.
const ABSENCE_SCRIPT: &str = r"
local out = {redis.call('EXISTS', KEYS[1]), redis.call('EXISTS', KEYS[2])}
for i, id in ipairs(ARGV) do
  out[#out + 1] = redis.call('ZSCORE', KEYS[2], id) and 1 or 0
  out[#out + 1] = redis.call('EXISTS', KEYS[i + 2])
end
return out
";

/// Asks whether the queue's meta hash and repeat set exist and which of
/// `ids` have neither a set member nor a hash, at one moment.
pub(crate) async fn read_absence(
    store: &BullmqStore,
    queue: &str,
    ids: &[String],
) -> Result<Absence, StoreError> {
    let keys = store.keys(queue);
    let repeat_key = keys.repeat();
    let script = redis::Script::new(ABSENCE_SCRIPT);
    let mut invocation = script.prepare_invoke();
    invocation.key(keys.meta()).key(&repeat_key);
    for id in ids {
        invocation.key(format!("{repeat_key}:{id}"));
        invocation.arg(id);
    }
    let replies: Vec<i64> = invocation
        .invoke_async(&mut store.raw())
        .await
        .map_err(|e| store.error(e))?;
    let at = |index: usize| replies.get(index).is_none_or(|n| *n != 0);
    let mut absence = Absence {
        meta_exists: at(0),
        set_exists: at(1),
        gone: BTreeSet::new(),
    };
    for (index, id) in ids.iter().enumerate() {
        if !at(2 + 2 * index) && !at(3 + 2 * index) {
            absence.gone.insert(id.clone());
        }
    }
    Ok(absence)
}

/// Every queue under the prefix that has a scheduler set: the whole keyspace
/// scanned, for `export`.
pub(crate) async fn all_queues(store: &BullmqStore) -> Result<BTreeSet<String>, StoreError> {
    let mut queues = BTreeSet::new();
    let mut cursor = 0;
    loop {
        let (found, next) = store.discover_queues(cursor, 64).await?;
        queues.extend(found);
        if next == 0 {
            return Ok(queues);
        }
        cursor = next;
    }
}

/// BullMQ 5's legacy repeatable jobs use an md5 hex digest as the set member.
pub(crate) fn is_legacy(member: &str) -> bool {
    member.len() == 32 && member.bytes().all(|b| b.is_ascii_hexdigit())
}
