//! Redis: where BullMQ keeps its data, read in pipelined batches and written
//! only through BullMQ's own scripts.

mod bullmq;
pub(crate) mod settings;
pub(crate) mod target;
pub(crate) mod verified;

pub use bullmq::BullmqStore;
pub use bullmq::Polled;
pub use bullmq::StoreError;
pub(crate) use bullmq::{NextRunJob, SharedStore};
