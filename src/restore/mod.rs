//! Restore: carrying a plan out — in Redis through BullMQ's own scripts, or
//! by asking the application (webhook) — under a lease, with catch-up runs
//! for what an outage missed.
//!
//! A new strategy implements [`Restore`] and is chosen in
//! `decision::recovery` by `[recovery] strategy`.

pub(crate) mod catchup;
pub(crate) mod lease;
pub(crate) mod native;
mod own_writes;
pub(crate) mod webhook;

use futures::future::BoxFuture;

use crate::model::Cause;
use crate::plan::Plan;
use lease::Held;
pub(crate) use native::RecoverReport;
pub(crate) use own_writes::OwnWrites;

/// A way to bring Redis in line with a plan.
pub(crate) trait Restore: Send + Sync {
    /// Carries out `plan`, writing only while `lease` is held.
    fn restore<'a>(
        &'a self,
        plan: &'a Plan,
        trigger: Cause,
        lease: &'a Held,
    ) -> BoxFuture<'a, Result<Restored, RestoreError>>;
}

/// What a strategy did.
#[derive(Debug)]
pub(crate) enum Restored {
    /// The writes were made here; the report says which.
    Written(RecoverReport),
    /// Someone else (the application) was asked to write: only a new
    /// comparison can tell whether it did.
    Requested,
}

/// Why a restore did not finish.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RestoreError {
    /// The lease was lost while writing, so the writes stopped: another
    /// sidecar may be writing now.
    #[error("{0}")]
    LeaseLost(String),
    #[error("{failed} of {total} writes failed, first: {scheduler_id}: {reason}")]
    WritesFailed {
        failed: usize,
        total: usize,
        scheduler_id: String,
        reason: String,
    },
    #[error(transparent)]
    Webhook(#[from] webhook::WebhookError),
}
