//! Signals: the ways the watcher notices that Redis may have lost schedulers —
//! keyspace notifications, the INFO/count poll, Sentinel failovers and config
//! reloads. Each turns what it sees into a [`Trigger`](crate::model::Trigger).

pub mod flushes;
pub mod keyspace;
pub mod poll;
pub(crate) mod reload;
pub mod sentinel;
