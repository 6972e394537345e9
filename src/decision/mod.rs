//! Decision: when to look, and what to do about what was seen — the debounce
//! window, single-flight attempts, the error policy's backoff, and the
//! reconciler that compares and restores under the lease.

mod controller;
pub mod debounce;
mod error;
mod policy;
mod recovery;

pub use controller::{Controller, Outcome, Reconcile, Request};
pub use error::RecoveryError;
pub use policy::Timing;
pub use recovery::{Context, Recovery};
