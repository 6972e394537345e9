//! Why one reconcile attempt did not finish, typed so that the retry policy
//! and the failure counter can tell the reasons apart.

use std::time::Duration;

use crate::model::FailureReason;
use crate::restore::RestoreError;
use crate::source::SourceError;
use crate::store::StoreError;
use crate::warden::WardenError;

#[derive(Debug, thiserror::Error)]
pub(crate) enum RecoveryError {
    /// Another sidecar holds the lease: not a failure, a reason to wait.
    #[error("another bullmq-warden holds the recovery lease")]
    LeaseBusy,
    /// The poll sees Redis down: commands would only wait out the client's
    /// reconnect attempts.
    #[error("Redis at {url} does not answer")]
    RedisDown { url: String },
    #[error("comparing rows and Redis took longer than {}s", .0.as_secs())]
    CompareTimeout(Duration),
    #[error(transparent)]
    Source(SourceError),
    #[error(transparent)]
    Redis(StoreError),
    /// A config reload made the rest of the attempt impossible.
    #[error("{0}")]
    Other(String),
    #[error(transparent)]
    Restore(#[from] RestoreError),
    #[error(
        "the application accepted the webhook but {missing} schedulers are still missing and {mismatched} differ"
    )]
    WebhookIncomplete { missing: usize, mismatched: usize },
}

impl From<WardenError> for RecoveryError {
    fn from(error: WardenError) -> Self {
        match error {
            WardenError::Source(e) => RecoveryError::Source(e),
            WardenError::Store(e) => RecoveryError::Redis(e),
            WardenError::LeaseBusy(_) => RecoveryError::LeaseBusy,
            WardenError::Config(e) => RecoveryError::Other(e.to_string()),
        }
    }
}

impl RecoveryError {
    /// The reason failures of this kind are counted under.
    pub(crate) fn reason(&self) -> FailureReason {
        match self {
            RecoveryError::LeaseBusy => FailureReason::LeaseBusy,
            RecoveryError::RedisDown { .. } => FailureReason::RedisDown,
            RecoveryError::CompareTimeout(_) => FailureReason::Timeout,
            RecoveryError::Source(_) => FailureReason::Source,
            RecoveryError::Redis(e) if is_oom(&e.to_string()) => FailureReason::RedisOom,
            RecoveryError::Redis(_) => FailureReason::Redis,
            RecoveryError::Other(_) => FailureReason::Other,
            RecoveryError::Restore(RestoreError::LeaseLost(_)) => FailureReason::LeaseLost,
            RecoveryError::Restore(RestoreError::WritesFailed { reason, .. }) if is_oom(reason) => {
                FailureReason::RedisOom
            }
            RecoveryError::Restore(RestoreError::WritesFailed { .. }) => {
                FailureReason::WritesFailed
            }
            RecoveryError::Restore(RestoreError::Webhook(_)) => FailureReason::Webhook,
            RecoveryError::WebhookIncomplete { .. } => FailureReason::WebhookIncomplete,
        }
    }
}

/// Redis refuses writes over `maxmemory` under `noeviction` with an error
/// that starts `OOM command not allowed`.
fn is_oom(reason: &str) -> bool {
    reason.contains("OOM command not allowed")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_oom_refusal_is_its_own_reason() {
        let refused = RecoveryError::Restore(RestoreError::WritesFailed {
            failed: 3,
            total: 10,
            scheduler_id: "inspection:1".into(),
            reason: "Redis at redis://127.0.0.1:6379: OOM command not allowed when used memory > 'maxmemory'.".into(),
        });
        assert_eq!(refused.reason(), FailureReason::RedisOom);
        let other = RecoveryError::Restore(RestoreError::WritesFailed {
            failed: 1,
            total: 1,
            scheduler_id: "inspection:1".into(),
            reason: "NOSCRIPT".into(),
        });
        assert_eq!(other.reason(), FailureReason::WritesFailed);
    }
}
