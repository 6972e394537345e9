//! bullmq-warden: keeps BullMQ's job schedulers in Redis in line with the task
//! rows of a SQL database, and restores them when Redis loses data.
//!
//! The modules follow the data, in the order it flows (docs/ARCHITECTURE.md
//! has the picture):
//!
//! ```text
//! signal ──▶ trigger ──▶ decision ──▶ plan ──▶ restore ──▶ report
//! (watch)    (model)     (decision)   (plan)   (restore)   (report)
//!               ▲                       ▲
//!            source + desired        store (reads)
//! ```
//!
//! - [`model`]: plain data every step shares (schedulers as stored and as
//!   desired, job counts, causes and triggers); [`clock`]: the wall clock.
//! - [`config`]: the TOML file and its environment overrides.
//! - [`source`]: reading task rows from SQLite, PostgreSQL or MySQL;
//!   [`desired`]: rows judged and turned into the schedulers they ask for.
//! - [`store`]: BullMQ's data in Redis, written only through BullMQ's scripts.
//! - [`signal`]: keyspace notifications, the INFO poll, Sentinel, reloads.
//! - [`decision`]: debounce, single-flight, backoff and the recovery loop.
//! - [`plan`]: what Redis needs to match the rows (pure).
//! - [`restore`]: carrying a plan out, the lease, catch-up, the webhook.
//! - [`report`]: events with their log lines and metrics; the served status.
//! - [`watch`]: the sidecar, wiring signals to the decision loop and HTTP.
//! - [`warden`]: the recovery manual's operations (status, recover, remove),
//!   [`audit`]: the `check` command, [`http`]: `/metrics`, health, REST API,
//!   [`cli`]: the command line.
//! - `logging`, `text`, [`memory`]: log output, escaping, the allocator.

pub mod audit;
pub mod backoff;
pub mod cli;
pub mod clock;
pub mod config;
pub mod decision;
pub mod desired;
pub mod http;
mod logging;
pub mod memory;
pub mod model;
pub mod plan;
pub mod report;
pub mod restore;
pub mod signal;
pub mod source;
pub mod store;
mod text;
pub mod warden;
pub mod watch;
