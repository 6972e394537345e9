//! A lease in Redis so that one sidecar of several restores the schedulers.
//!
//! `SET key token NX PX ttl` takes it; renewal and release only act when the
//! key still holds this sidecar's token, so a sidecar whose lease expired can
//! never extend or delete another's.

use std::time::Duration;

use crate::bullmq_store::{SharedStore, StoreError};

const RENEW: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"#;

const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#;

#[derive(Clone)]
pub struct Lease {
    store: SharedStore,
    key: String,
    token: String,
    ttl: Duration,
}

impl Lease {
    /// The lease key lives under the BullMQ prefix so that it follows the
    /// queues' hash tag on a cluster.
    pub fn new(store: SharedStore, ttl: Duration) -> Self {
        let key = format!("{}:bullmq-warden:recovery-lease", store.get().prefix());
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "host".into());
        let token = format!("{host}:{}:{:016x}", std::process::id(), fastrand::u64(..));
        Self {
            store,
            key,
            token,
            ttl,
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Takes the lease if nobody holds it; `false` when another sidecar does.
    pub async fn acquire(&self) -> Result<bool, StoreError> {
        let store = self.store.get();
        let reply: Option<String> = redis::cmd("SET")
            .arg(&self.key)
            .arg(&self.token)
            .arg("NX")
            .arg("PX")
            .arg(self.ttl_ms())
            .query_async(&mut store.raw())
            .await
            .map_err(|e| store.error(e))?;
        Ok(reply.is_some())
    }

    /// Extends the lease; `false` when it was lost (expired or taken over).
    pub async fn renew(&self) -> Result<bool, StoreError> {
        let store = self.store.get();
        let renewed: i64 = redis::Script::new(RENEW)
            .key(&self.key)
            .arg(&self.token)
            .arg(self.ttl_ms())
            .invoke_async(&mut store.raw())
            .await
            .map_err(|e| store.error(e))?;
        Ok(renewed == 1)
    }

    pub async fn release(&self) -> Result<(), StoreError> {
        let store = self.store.get();
        let _: i64 = redis::Script::new(RELEASE)
            .key(&self.key)
            .arg(&self.token)
            .invoke_async(&mut store.raw())
            .await
            .map_err(|e| store.error(e))?;
        Ok(())
    }

    fn ttl_ms(&self) -> u64 {
        u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX)
    }
}
