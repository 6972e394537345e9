//! Redis: where BullMQ keeps its data, read in pipelined batches and written
//! only through BullMQ's own scripts.

mod bullmq;
pub mod settings;
pub mod target;

pub use bullmq::{BullmqStore, NextRunJob, Polled, Primaries, SharedStore, StoreError};
