//! bullmq-warden: keeps BullMQ's job schedulers in Redis in line with the task
//! rows of a SQL database, and restores them when Redis loses data.
//!
//! Layout, one module per concern:
//! - [`config`]: the TOML file and its environment overrides;
//! - [`source`]: reading task rows from SQLite, PostgreSQL or MySQL;
//! - [`template`] and [`desired`]: rows turned into the schedulers they ask for;
//! - [`bullmq_store`]: BullMQ's data in Redis, written only through BullMQ's scripts;
//! - [`reconcile`]: the plan that brings Redis in line with the rows;
//! - [`apply`]: carrying the plan out;
//! - [`warden`]: the recovery manual's operations (status, recover, remove);
//! - [`audit`]: the `check` command's findings;
//! - [`events`] and [`metrics`]: every observable event, its log line and its metric;
//! - `process_metrics`: the standard `process_*` metrics, read from procfs;
//! - [`watch`]: the sidecar's signal sources (keyspace notifications, INFO poll);
//! - [`recovery`]: debounce, single-flight, backoff, lease and catch-up;
//! - [`http`]: `/metrics`, health and the REST API;
//! - [`cli`]: the command line;
//! - `logging`: log output, with values from outside kept to one line;
//! - `text`: escaping text from outside for a terminal or a log line;
//! - [`memory`]: the allocator and when it returns memory to the system.

pub mod apply;
pub mod audit;
pub mod bullmq_store;
pub mod cli;
pub mod config;
pub mod desired;
pub mod events;
pub mod http;
mod logging;
pub mod memory;
pub mod metrics;
mod process_metrics;
pub mod reconcile;
pub mod recovery;
pub mod redis_target;
pub mod source;
pub mod template;
mod text;
pub mod warden;
pub mod watch;
