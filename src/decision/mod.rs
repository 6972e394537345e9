//! Decision: when to look, and what to do about what was seen — debounce,
//! single-flight, retries with backoff, and the lease that lets one sidecar of
//! several act.

mod controller;
pub mod debounce;

pub use controller::{publish_drift, Controller, OwnWrites, RestoredCounts, SharedQueues};
