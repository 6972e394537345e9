//! The wall clock, read in one place.
//!
//! BullMQ keeps run times as epoch milliseconds, so the watcher's notion of
//! "now" is the same number. Only the edges read it (a signal's time, a read's
//! time); the plan is given `now` as an argument, so tests decide what time it is.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch; 0 if the clock is before it.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or_default()
}
