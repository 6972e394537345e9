//! Job counts per queue, as BullMQ reports them.

use serde::Serialize;

/// Job counts as BullMQ's `getJobCounts()` reports them, plus the scheduler count.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct JobCounts {
    pub waiting: u64,
    pub active: u64,
    pub completed: u64,
    pub failed: u64,
    pub delayed: u64,
    pub prioritized: u64,
    pub paused: u64,
    #[serde(rename = "waiting-children")]
    pub waiting_children: u64,
    /// Members of the `repeat` set, as `getJobSchedulersCount()` counts them.
    pub repeatable: u64,
}

impl JobCounts {
    /// The job states under BullMQ's own names, as `exportPrometheusMetrics` labels them.
    pub fn by_state(&self) -> [(&'static str, u64); 8] {
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
