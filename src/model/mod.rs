//! Plain data that every step shares and no step owns: schedulers as Redis
//! holds them and as the database wants them, job counts, and the causes a
//! signal names. Nothing here does I/O or reads the clock, so the plan that
//! compares them is a pure function of them and of the time it is given.

mod counts;
mod desired;
mod failure;
mod stored;
mod trigger;

pub use counts::JobCounts;
pub use desired::{DesiredScheduler, InvalidRow, Schedule};
pub use failure::FailureReason;
pub(crate) use stored::PROMOTION_MARGIN_MS;
pub use stored::{
    scheduler_job_id, NextJobFacts, NextJobState, QueueSchedulers, SchedulerFields, StoredScheduler,
};
pub use trigger::{Cause, Trigger};
