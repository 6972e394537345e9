//! Restore: carrying a plan out in Redis through BullMQ's own scripts (or
//! asking the application to, by webhook), under a lease, with catch-up runs
//! for what an outage missed.

pub mod catchup;
pub mod lease;
pub mod native;
pub mod webhook;
