//! Plain data that every step shares and no step owns: schedulers as Redis
//! holds them and as the database wants them, job counts, and the causes a
//! signal names. Nothing here does I/O or reads the clock, so the plan that
//! compares them is a pure function of them and of the time it is given.

mod counts;
mod desired;
mod failure;
mod stored;
mod template;
mod trigger;

pub use counts::JobCounts;
pub use desired::DesiredScheduler;
pub use desired::InvalidRow;
pub use desired::Schedule;
pub(crate) use failure::FailureReason;
pub use stored::NextJobFacts;
pub use stored::QueueSchedulers;
pub use stored::SchedulerFields;
pub use stored::StoredScheduler;
pub(crate) use stored::PROMOTION_MARGIN_MS;
pub(crate) use stored::{scheduler_job_id, NextJobState};
pub use template::IdTemplate;
pub(crate) use trigger::{Cause, Trigger};
