//! bullmq-warden: keeps BullMQ's job schedulers in Redis in line with the task
//! rows of a SQL database, and restores them when Redis loses data.
//!
//! The modules follow the data, in the order it flows (docs/ARCHITECTURE.md
//! has the picture and says where a new signal, metric, source or strategy
//! goes):
//!
//! ```text
//! signal ──▶ model::Trigger ──▶ decision ──▶ plan ──▶ restore ──▶ report
//!                                  ▲           ▲
//!                       source + desired     store (reads)
//! ```
//!
//! - `model`: plain data every step shares (schedulers as stored and as
//!   desired, job counts, causes and triggers, the id template); `clock`: the
//!   wall clock; `backoff`: the one retry pacing.
//! - `config`: the TOML file and its environment overrides.
//! - `source`: task rows from SQLite, PostgreSQL or MySQL; `desired`: rows
//!   judged and turned into the schedulers they ask for.
//! - `store`: BullMQ's data in Redis, written only through BullMQ's scripts.
//! - `signal`: keyspace notifications, the INFO poll, Sentinel, reloads.
//! - `decision`: debounce, single flight, the error policy, the reconciler.
//! - `plan`: what Redis needs to match the rows (pure).
//! - `restore`: carrying a plan out, the lease, catch-up, the webhook.
//! - `report`: events with their log lines and metrics; the served status.
//! - `watch`: the sidecar, wiring signals to the decision loop and HTTP.
//! - `warden`: the recovery manual's operations (status, recover, remove);
//!   `audit`: the `check` command; `http`: `/metrics`, health, the REST API;
//!   `cli`: the command line.
//! - `logging`, `text`, `memory`: log output, escaping, the allocator.
//!
//! Modules are private; what the binary, the property tests and the scale
//! benchmark need is re-exported below.

#![warn(unreachable_pub)]

mod audit;
mod backoff;
mod cli;
mod clock;
mod config;
mod decision;
mod desired;
mod export;
mod http;
mod journal;
mod logging;
mod memory;
mod model;
mod plan;
mod report;
mod restore;
mod signal;
mod source;
mod store;
mod text;
mod warden;
mod watch;

/// The binary's entry points.
pub use cli::main;
pub use memory::tune_allocator;

/// Rows, the config and the plan, public for the properties over generated
/// input (`tests/bad_input.rs`): no I/O is needed to drive them.
pub use config::{Config, ConfigError};
pub use desired::{DesiredSet, RowRules};
pub use model::{
    DesiredScheduler, IdTemplate, InvalidRow, JobCounts, NextJobFacts, QueueSchedulers, Schedule,
    SchedulerFields, StoredScheduler,
};
pub use plan::{protected_ids, Difference, QueuePlan, Update};
pub use source::{ColumnValue, SourceRow};

/// The Redis adapter, for the scale benchmark's fixtures.
pub use store::{BullmqStore, Polled, StoreError};
