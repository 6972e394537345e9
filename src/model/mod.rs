//! Plain data that every step shares and no step owns: schedulers as Redis
//! holds them and as the database wants them, job counts, and the causes a
//! signal names. Nothing here does I/O or reads the clock, so the plan that
//! compares them is a pure function of them and of the time it is given.

mod bullmq_version;
mod counts;
mod desired;
mod failure;
mod stored;
mod template;
mod trigger;

pub(crate) use bullmq_version::VersionCheck;
pub use counts::JobCounts;
pub use desired::{DesiredScheduler, InvalidRow, Schedule};
pub(crate) use failure::FailureReason;
pub(crate) use stored::{scheduler_job_id, NextJobState, PROMOTION_MARGIN_MS};
pub use stored::{NextJobFacts, QueueSchedulers, SchedulerFields, StoredScheduler};
pub use template::IdTemplate;
pub(crate) use trigger::{Cause, Trigger};
