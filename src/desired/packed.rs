//! A desired set held between reads at a small fraction of its size.
//!
//! The watcher keeps the rows of its last read so that a loss can be
//! repaired at once, or while the source is down. As `DesiredScheduler`s,
//! 100,000 rows take about 40 MiB — the whole idle budget of the sidecar
//! and more. Packed, each queue's schedulers are a few LZ4 blocks of a plain
//! length-prefixed encoding, about 25 bytes a scheduler for typical rows; a
//! block is unpacked only when a repair or the snapshot file needs it, a
//! thousand schedulers at a time.

use std::collections::BTreeMap;
use std::ops::Range;

use crate::model::{DesiredScheduler, Schedule};

/// Schedulers per block: big enough for LZ4 to find the repeats between
/// rows, small enough that unpacking one block costs little memory.
const BLOCK_SCHEDULERS: usize = 1000;

/// The schedulers of every queue, packed.
///
/// Three allocations whatever the number of queues: held for hours between
/// reads, many small ones would each pin an allocator page among the read's
/// freed memory, and the sidecar would not return to its idle size.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct PackedQueues {
    /// Each queue's name followed by its blocks.
    bytes: Box<[u8]>,
    /// In name order.
    queues: Box<[PackedQueue]>,
    /// Where each block is in `bytes`, queue after queue.
    blocks: Box<[Range<usize>]>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct PackedQueue {
    /// In `bytes`.
    name: Range<usize>,
    /// In `blocks`.
    blocks: Range<usize>,
    /// Schedulers in those blocks: what an unpacked queue is sized for, so
    /// that it is not copied over as it grows before a repair can start.
    schedulers: usize,
}

/// A block that does not decode: memory was corrupted, or a bug wrote it.
#[derive(Debug, thiserror::Error)]
#[error("a packed block of queue {queue:?} does not decode: {reason}")]
pub(crate) struct UnpackError {
    queue: String,
    reason: String,
}

impl PackedQueues {
    /// Packs `queues` without taking them over: the caller goes on using them.
    pub(crate) fn pack(queues: &BTreeMap<String, Vec<DesiredScheduler>>) -> Self {
        let mut encoded = Vec::new();
        let mut bytes = Vec::new();
        let mut blocks = Vec::new();
        let mut packed = Vec::with_capacity(queues.len());
        for (queue, schedulers) in queues {
            let name = bytes.len()..bytes.len() + queue.len();
            bytes.extend_from_slice(queue.as_bytes());
            let first = blocks.len();
            for chunk in schedulers.chunks(BLOCK_SCHEDULERS) {
                encoded.clear();
                chunk.iter().for_each(|s| encode(s, &mut encoded));
                let start = bytes.len();
                bytes.extend(lz4_flex::block::compress_prepend_size(&encoded));
                blocks.push(start..bytes.len());
            }
            let blocks = first..blocks.len();
            packed.push(PackedQueue {
                name,
                blocks,
                schedulers: schedulers.len(),
            });
        }
        Self {
            bytes: bytes.into_boxed_slice(),
            queues: packed.into_boxed_slice(),
            blocks: blocks.into_boxed_slice(),
        }
    }

    /// Whether packing `queues` would give exactly this set. Each block is
    /// encoded again and compared with the one held, decompressed: a drift
    /// check whose read changed nothing then keeps the set it has, skipping
    /// the compression and the new allocation of the whole set.
    pub(crate) fn packs(&self, queues: &BTreeMap<String, Vec<DesiredScheduler>>) -> bool {
        let mut encoded = Vec::new();
        let mut held = Vec::new();
        queues.len() == self.queues.len()
            && queues
                .iter()
                .zip(&self.queues)
                .all(|((queue, schedulers), packed)| {
                    let blocks = &self.blocks[packed.blocks.clone()];
                    self.name_of(packed) == queue
                        && schedulers.chunks(BLOCK_SCHEDULERS).len() == blocks.len()
                        && schedulers
                            .chunks(BLOCK_SCHEDULERS)
                            .zip(blocks)
                            .all(|(chunk, range)| {
                                encoded.clear();
                                chunk.iter().for_each(|s| encode(s, &mut encoded));
                                self.block_is(range, &encoded, &mut held)
                            })
                })
    }

    /// Whether the block at `range` decompresses to `encoded`; `held` is
    /// scratch space for it.
    fn block_is(&self, range: &Range<usize>, encoded: &[u8], held: &mut Vec<u8>) -> bool {
        let Some(block) = self.bytes.get(range.clone()) else {
            return false;
        };
        match lz4_flex::block::uncompressed_size(block) {
            Ok((size, compressed)) if size == encoded.len() => {
                held.resize(size, 0);
                matches!(lz4_flex::block::decompress_into(compressed, held), Ok(n) if n == size)
                    && held.as_slice() == encoded
            }
            _ => false,
        }
    }

    /// The queues, in order, without unpacking them.
    pub(crate) fn queue_names(&self) -> impl Iterator<Item = &str> {
        self.queues.iter().map(|q| self.name_of(q))
    }

    fn name_of(&self, queue: &PackedQueue) -> &str {
        // Written from a `&str` by `pack`.
        std::str::from_utf8(&self.bytes[queue.name.clone()]).unwrap_or_default()
    }

    /// The schedulers of `queue` that `keep` accepts, unpacked.
    pub(crate) fn unpack_queue(
        &self,
        queue: &str,
        keep: impl Fn(&DesiredScheduler) -> bool,
    ) -> Result<Vec<DesiredScheduler>, UnpackError> {
        let fail = |reason: String| UnpackError {
            queue: queue.to_owned(),
            reason,
        };
        let (found, count) = self
            .queues
            .binary_search_by(|q| self.name_of(q).cmp(queue))
            .map(|at| (self.queues[at].blocks.clone(), self.queues[at].schedulers))
            .unwrap_or_default();
        let mut schedulers = Vec::with_capacity(count);
        for range in &self.blocks[found] {
            let block = self
                .bytes
                .get(range.clone())
                .ok_or_else(|| fail("out of bounds".into()))?;
            let bytes = lz4_flex::block::decompress_size_prepended(block)
                .map_err(|e| fail(e.to_string()))?;
            let mut reader = Reader(&bytes);
            while !reader.0.is_empty() {
                let scheduler =
                    decode(&mut reader, queue).ok_or_else(|| fail("cut short".into()))?;
                if keep(&scheduler) {
                    schedulers.push(scheduler);
                }
            }
        }
        Ok(schedulers)
    }

    /// Every queue's schedulers that `keep` accepts, unpacked.
    pub(crate) fn unpack(
        &self,
        keep: impl Fn(&DesiredScheduler) -> bool,
    ) -> Result<BTreeMap<String, Vec<DesiredScheduler>>, UnpackError> {
        self.queue_names()
            .map(|queue| Ok((queue.to_owned(), self.unpack_queue(queue, &keep)?)))
            .collect()
    }

    /// The bytes held.
    #[cfg(test)]
    fn packed_bytes(&self) -> usize {
        self.bytes.len()
    }
}

/// Field tags of the optional parts, one bit each in a scheduler's flag byte.
const PATTERN: u8 = 1;
const TZ: u8 = 2;
const START: u8 = 4;
const END: u8 = 8;
const LIMIT: u8 = 16;
const OFFSET: u8 = 32;

fn encode(s: &DesiredScheduler, out: &mut Vec<u8>) {
    let optional = [
        (START, s.start_date),
        (END, s.end_date),
        (LIMIT, s.limit),
        (OFFSET, s.offset),
    ];
    let mut flags = optional
        .iter()
        .filter(|(_, v)| v.is_some())
        .fold(0, |f, (bit, _)| f | bit);
    if matches!(s.schedule, Schedule::Pattern(_)) {
        flags |= PATTERN;
    }
    if s.tz.is_some() {
        flags |= TZ;
    }
    out.push(flags);
    for text in [&s.row_id, &s.scheduler_id, &s.name, &s.data, &s.opts] {
        put_text(out, text);
    }
    match &s.schedule {
        Schedule::Pattern(pattern) => put_text(out, pattern),
        Schedule::EveryMs(every) => put_number(out, *every),
    }
    if let Some(tz) = &s.tz {
        put_text(out, tz);
    }
    optional
        .iter()
        .filter_map(|(_, v)| *v)
        .for_each(|v| put_number(out, v));
}

fn decode(reader: &mut Reader<'_>, queue: &str) -> Option<DesiredScheduler> {
    let flags = reader.byte()?;
    let [row_id, scheduler_id, name, data, opts] = [(); 5].map(|()| reader.text());
    let schedule = match flags & PATTERN {
        0 => Schedule::EveryMs(reader.number()?),
        _ => Schedule::Pattern(reader.text()?),
    };
    let tz = match flags & TZ {
        0 => None,
        _ => Some(reader.text()?),
    };
    let mut optional = |bit: u8| match flags & bit {
        0 => Some(None),
        _ => reader.number().map(Some),
    };
    Some(DesiredScheduler {
        row_id: row_id?,
        queue: queue.to_owned(),
        scheduler_id: scheduler_id?,
        name: name?,
        schedule,
        tz,
        data: data?,
        opts: opts?,
        start_date: optional(START)?,
        end_date: optional(END)?,
        limit: optional(LIMIT)?,
        offset: optional(OFFSET)?,
    })
}

/// LEB128: seven bits a byte, low bits first.
fn put_number(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn put_text(out: &mut Vec<u8>, text: &str) {
    put_number(out, text.len() as u64);
    out.extend_from_slice(text.as_bytes());
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&first, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(first)
    }

    fn number(&mut self) -> Option<u64> {
        let mut n = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.byte()?;
            n |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                return Some(n);
            }
        }
        None
    }

    fn text(&mut self) -> Option<String> {
        let len = usize::try_from(self.number()?).ok()?;
        if len > self.0.len() {
            return None;
        }
        let (text, rest) = self.0.split_at(len);
        self.0 = rest;
        String::from_utf8(text.to_vec()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varied(id: usize) -> DesiredScheduler {
        let schedule = match id % 2 {
            0 => Schedule::Pattern(format!("{} 3 * * *", id % 60)),
            _ => Schedule::EveryMs(1 + id as u64 * 977),
        };
        let mut s = DesiredScheduler::example(&id.to_string(), schedule);
        s.tz = id.is_multiple_of(3).then(|| "Europe/Berlin".into());
        s.data = format!("{{\"host\":\"host-{id:06}\",\"note\":\"ünïcode\"}}");
        s.start_date = id.is_multiple_of(5).then_some(u64::MAX);
        s.end_date = id.is_multiple_of(7).then_some(4_000_000_000_000);
        s.limit = id.is_multiple_of(11).then_some(0);
        s.offset = id.is_multiple_of(13).then_some(127);
        s
    }

    #[test]
    fn every_field_comes_back_in_order_across_blocks() {
        let queues = BTreeMap::from([
            ("q".to_owned(), (0..2_500).map(varied).collect::<Vec<_>>()),
            ("empty".to_owned(), Vec::new()),
        ]);
        let packed = PackedQueues::pack(&queues);
        assert_eq!(packed.unpack(|_| true).unwrap(), queues);
        assert_eq!(PackedQueues::pack(&queues), packed, "deterministic");
        let even = packed
            .unpack_queue("q", |s| s.row_id.ends_with('0'))
            .unwrap();
        assert_eq!(even.len(), 250);
        assert!(packed.unpack_queue("absent", |_| true).unwrap().is_empty());
    }

    #[test]
    fn a_small_queue_unpacks_into_a_vector_of_its_own_size() {
        let queues = BTreeMap::from([
            ("big".to_owned(), (0..1_500).map(varied).collect::<Vec<_>>()),
            ("small".to_owned(), (0..3).map(varied).collect::<Vec<_>>()),
        ]);
        let packed = PackedQueues::pack(&queues);
        let small = packed.unpack_queue("small", |_| true).unwrap();
        assert_eq!((small.len(), small.capacity()), (3, 3));
        assert_eq!(
            packed.unpack_queue("big", |_| true).unwrap().capacity(),
            1_500
        );
    }

    #[test]
    fn a_set_packs_the_same_only_for_the_same_schedulers_in_order() {
        let queues = BTreeMap::from([
            ("q".to_owned(), (0..2_500).map(varied).collect::<Vec<_>>()),
            ("empty".to_owned(), Vec::new()),
        ]);
        let packed = PackedQueues::pack(&queues);
        assert!(packed.packs(&queues));
        type Change = dyn Fn(&mut BTreeMap<String, Vec<DesiredScheduler>>);
        let changes: [&Change; 6] = [
            &|q| q.get_mut("q").unwrap()[2_400].data.push(' '),
            &|q| q.get_mut("q").unwrap()[6].tz = None,
            &|q| q.get_mut("q").unwrap().swap(0, 1),
            &|q| drop(q.get_mut("q").unwrap().pop()),
            &|q| q.get_mut("empty").unwrap().push(varied(1)),
            &|q| drop(q.insert("another".to_owned(), Vec::new())),
        ];
        for (i, change) in changes.iter().enumerate() {
            let mut changed = queues.clone();
            change(&mut changed);
            assert!(!packed.packs(&changed), "change {i} went unnoticed");
        }
    }

    #[test]
    fn rows_alike_pack_to_a_small_fraction() {
        let queues = BTreeMap::from([("q".to_owned(), (0..10_000).map(varied).collect())]);
        let bytes = PackedQueues::pack(&queues).packed_bytes();
        assert!(bytes < 10_000 * 40, "{bytes} bytes for 10,000 schedulers");
    }

    #[test]
    fn a_damaged_block_is_an_error_not_a_panic() {
        let queues = BTreeMap::from([("q".to_owned(), (0..10).map(varied).collect())]);
        let mut packed = PackedQueues::pack(&queues);
        let mut blocks = packed.blocks.to_vec();
        blocks[0].end = blocks[0].start + blocks[0].len() / 2;
        packed.blocks = blocks.into_boxed_slice();
        let error = packed.unpack(|_| true).unwrap_err();
        assert!(error.to_string().contains("queue \"q\""), "{error}");
    }
}
