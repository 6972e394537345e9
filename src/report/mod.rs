//! Report: every observable event as a log line and a metric change, the
//! metrics registry, and the status the HTTP API serves from the latest look.

pub(crate) mod comparison;
pub(crate) mod events;
pub(crate) mod latest;
pub(crate) mod metrics;
mod observer;
pub(crate) mod process_metrics;
