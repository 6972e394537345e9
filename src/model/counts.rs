//! Job counts per queue, as BullMQ reports them.

use serde::Serialize;

/// Job counts as BullMQ's `getJobCounts()` reports them, plus the scheduler count.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct JobCounts {
    pub(crate) waiting: u64,
    pub(crate) active: u64,
    pub(crate) completed: u64,
    pub(crate) failed: u64,
    pub(crate) delayed: u64,
    pub(crate) prioritized: u64,
    pub(crate) paused: u64,
    #[serde(rename = "waiting-children")]
    pub(crate) waiting_children: u64,
    /// Members of the `repeat` set, as `getJobSchedulersCount()` counts them.
    pub(crate) repeatable: u64,
}

impl JobCounts {
    /// The job states under BullMQ's own names, as `exportPrometheusMetrics` labels them.
    pub(crate) fn by_state(&self) -> [(&'static str, u64); 8] {
        [
            ("active", self.active),
            ("completed", self.completed),
            ("delayed", self.delayed),
            ("failed", self.failed),
            ("paused", self.paused),
            ("prioritized", self.prioritized),
            ("waiting", self.waiting),
            ("waiting-children", self.waiting_children),
        ]
    }
}
