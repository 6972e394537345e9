//! Decision: when to look, and what to do about what was seen — the debounce
//! window, single-flight attempts, the error policy's backoff, and the
//! reconciler that compares and restores under the lease.

mod controller;
pub(crate) mod debounce;
mod error;
mod policy;
mod recovery;

pub(crate) use controller::Controller;
pub(crate) use recovery::{Context, Recovery};
