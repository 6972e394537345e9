//! Shared test harness: real `redis-server` processes, real databases, real
//! Node BullMQ, and the real `bullmq-warden` binary. Test files include it
//! with `mod support;`; the benchmarks include it too (by path), so that they
//! start servers and the binary through the same code.
//!
//! - `process`: child processes killed on drop, free ports, waiting
//! - `proxy`: a TCP proxy that forwards, hangs, goes down and comes back
//! - `redis_server`: one `redis-server` of the test's own
//! - `topology`: Sentinel and Cluster groups of such servers
//! - `source`: SQL on any database, the tasks table, throwaway databases
//! - `warden`: the binary with a config and an SQLite source, and `watch`
//! - `http`: requests to the watcher's API and an endpoint for it to call
//! - `node`: the pinned Node BullMQ driver
//! - `tools`: repository files and command-line tools
//! - `promql`: reading PromQL in the alert rules
// Each test file and benchmark uses a different part of the harness, so
// most items and re-exports go unused in any one of them.
#![allow(dead_code, unused_imports)]

mod http;
mod node;
mod process;
mod promql;
mod proxy;
mod redis_server;
mod source;
mod tools;
mod topology;
mod warden;

pub use self::http::{fast_watch_with_api, free_local_addr, http, http_endpoint, wait_until_ready};
pub use self::node::{
    app_schedulers, comparable_schedulers, node, node_driver, node_packages_installed, END_2040,
    START_2030,
};
pub use self::process::{block_on, free_port, rss_kib, time_until, wait_until, ChildGuard};
pub use self::promql::{
    promql_skip_enclosed, promql_skip_string, PROMQL_LABEL_LIST_KEYWORDS, PROMQL_NON_METRIC_WORDS,
};
pub use self::proxy::{Outage, Proxy};
pub use self::redis_server::{redis_cli, RedisServer};
pub use self::source::{run_sql, sqlite_rows, Database, NOTIFY_TRIGGER_SQL, TASKS_TABLE_SQLITE};
pub use self::tools::{assert_success, missing_tool, repo_path, run_tool, text_of};
pub use self::topology::{ClusterGroup, SentinelGroup};
pub use self::warden::{
    warden_command, watch_command, Run, Setup, Watcher, FAST_RECOVERY, FAST_WATCH,
};
