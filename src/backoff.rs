//! Exponential backoff with full jitter: the one pacing for every retry loop
//! (recovery attempts, connecting to Redis, re-subscribing to notifications).
//!
//! The ceiling doubles from `min` to `max` with each failure in a row; the
//! wait is drawn uniformly below it, so that sidecars that failed together do
//! not retry together.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

#[derive(Debug)]
pub(crate) struct Backoff {
    builder: ExponentialBuilder,
    delays: ExponentialBackoff,
    /// Failures since the last success.
    failures: u32,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        let builder = ExponentialBuilder::default()
            .with_min_delay(min)
            .with_max_delay(max.max(min))
            .with_factor(2.0)
            .without_max_times();
        Self {
            delays: builder.build(),
            builder,
            failures: 0,
        }
    }

    /// Failures since the last success (or since the start).
    pub(crate) fn failures(&self) -> u32 {
        self.failures
    }

    /// Counts a failure and returns the ceiling of the wait that follows it:
    /// `min`, then doubling, at most `max`.
    pub(crate) fn fail(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        // Without a limit on attempts the builder never runs dry.
        self.delays.next().unwrap_or_default()
    }

    /// After a success: the next failure waits `min` again.
    pub(crate) fn reset(&mut self) {
        self.failures = 0;
        self.delays = self.builder.build();
    }
}

/// Uniform in `[0, ceiling]`: spreads retries of many sidecars apart.
pub(crate) fn full_jitter(ceiling: Duration) -> Duration {
    let ceiling_ms = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(fastrand::u64(0..=ceiling_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ceiling_doubles_up_to_the_cap_and_starts_over_after_a_reset() {
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(4));
        let ms: Vec<u128> = (0..6).map(|_| backoff.fail().as_millis()).collect();
        assert_eq!(ms, vec![500, 1000, 2000, 4000, 4000, 4000]);
        assert_eq!(backoff.failures(), 6);
        backoff.reset();
        assert_eq!(backoff.fail(), Duration::from_millis(500));
    }

    #[test]
    fn the_ceiling_stays_at_the_cap_however_long_it_fails() {
        let max = Duration::from_secs(30);
        let mut backoff = Backoff::new(Duration::from_millis(500), max);
        let last = (0..200).map(|_| backoff.fail()).last();
        assert_eq!(last, Some(max));
    }

    #[test]
    fn full_jitter_stays_under_the_ceiling() {
        for _ in 0..1000 {
            assert!(full_jitter(Duration::from_millis(500)) <= Duration::from_millis(500));
        }
        assert_eq!(full_jitter(Duration::ZERO), Duration::ZERO);
    }
}
