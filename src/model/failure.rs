//! Why a recovery attempt failed, as few reasons as alerts and dashboards
//! need to tell apart.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FailureReason {
    LeaseBusy,
    RedisDown,
    Timeout,
    Source,
    /// Redis refused writes over `maxmemory` under `noeviction`.
    RedisOom,
    Redis,
    Other,
    LeaseLost,
    WritesFailed,
    Webhook,
    WebhookIncomplete,
}

impl FailureReason {
    pub(crate) const ALL: [FailureReason; 11] = [
        FailureReason::LeaseBusy,
        FailureReason::RedisDown,
        FailureReason::Timeout,
        FailureReason::Source,
        FailureReason::RedisOom,
        FailureReason::Redis,
        FailureReason::Other,
        FailureReason::LeaseLost,
        FailureReason::WritesFailed,
        FailureReason::Webhook,
        FailureReason::WebhookIncomplete,
    ];

    /// The `reason` label of `bullmq_warden_recovery_failures_total`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            FailureReason::LeaseBusy => "lease_busy",
            FailureReason::RedisDown => "redis_down",
            FailureReason::Timeout => "timeout",
            FailureReason::Source => "source",
            FailureReason::RedisOom => "redis_oom",
            FailureReason::Redis => "redis",
            FailureReason::Other => "other",
            FailureReason::LeaseLost => "lease_lost",
            FailureReason::WritesFailed => "writes_failed",
            FailureReason::Webhook => "webhook",
            FailureReason::WebhookIncomplete => "webhook_incomplete",
        }
    }
}
