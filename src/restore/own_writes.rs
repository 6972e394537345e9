//! A flag raised while a restore writes, for the keyspace watcher.

use std::sync::Arc;

use tokio::sync::watch;

/// Tells the keyspace watcher while a recovery writes, so that it can stop
/// listening: nearly every notification then would be the echo of those
/// writes, and reading them took CPU from the writes and from Redis.
#[derive(Clone)]
pub(crate) struct OwnWrites(Arc<watch::Sender<bool>>);

impl OwnWrites {
    /// The flag and a receiver for the keyspace watcher.
    pub(crate) fn new() -> (Self, watch::Receiver<bool>) {
        let (sender, receiver) = watch::channel(false);
        (Self(Arc::new(sender)), receiver)
    }

    /// Raises the flag until the returned guard is dropped, also when the
    /// writes are abandoned at shutdown.
    pub(crate) fn begin(&self) -> OwnWritesGuard<'_> {
        self.0.send_replace(true);
        OwnWritesGuard(self)
    }
}

pub(crate) struct OwnWritesGuard<'a>(&'a OwnWrites);

impl Drop for OwnWritesGuard<'_> {
    fn drop(&mut self) {
        self.0 .0.send_replace(false);
    }
}
