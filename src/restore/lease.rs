//! A lease in Redis so that one writer of several restores the schedulers:
//! the watchers of several sidecars, and `recover` from the CLI or the HTTP API.
//!
//! `SET key token NX PX ttl` takes it; renewal and release only act when the
//! key still holds this writer's token, so a writer whose lease expired can
//! never extend or delete another's. A lease can still be lost while held (it
//! expired while Redis did not answer, or someone deleted or overwrote it);
//! from then on another writer may be at work, so the holder must stop
//! writing: [`Held`] finds out both from its renewals and when asked.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::time::{sleep, Instant};
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::store::{SharedStore, StoreError};

// Sent with EVAL, not EVALSHA: they run a few times per recovery, and
// recoveries follow restarts and flushes, when Redis's script cache is empty
// and every EVALSHA would first be refused.
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

/// How often a writer waiting for the lease tries again.
const RETRY_EVERY: Duration = Duration::from_millis(200);

/// Another writer kept the lease for as long as this one would wait.
#[derive(Debug, thiserror::Error)]
#[error(
    "the recovery lease {key} is held by {holder}: another bullmq-warden is restoring \
     schedulers; gave up after waiting {waited:?} (config key recovery.lease_wait)"
)]
pub(crate) struct LeaseBusy {
    key: String,
    holder: String,
    waited: Duration,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum LeaseError {
    #[error(transparent)]
    Busy(#[from] LeaseBusy),
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Clone)]
pub(crate) struct Lease {
    store: SharedStore,
    key: String,
    token: String,
    ttl: Duration,
}

impl Lease {
    /// The lease key lives under the BullMQ prefix so that it follows the
    /// queues' hash tag on a cluster. The token names host and process, so
    /// that an operator told who holds the lease can find that writer.
    pub(crate) fn new(store: SharedStore, ttl: Duration) -> Self {
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

    /// Takes the lease if nobody holds it; `None` when another writer does.
    pub(crate) async fn try_acquire(&self) -> Result<Option<Held>, StoreError> {
        Ok(self.acquire().await?.then(|| Held::start(self.clone())))
    }

    /// Takes the lease, waiting up to `wait` for another writer to finish.
    pub(crate) async fn acquire_within(&self, wait: Duration) -> Result<Held, LeaseError> {
        let deadline = Instant::now() + wait;
        loop {
            if let Some(held) = self.try_acquire().await? {
                return Ok(held);
            }
            let now = Instant::now();
            if now < deadline {
                sleep(RETRY_EVERY.min(deadline - now)).await;
                continue;
            }
            // Released since the last try: try again rather than blame nobody.
            if let Some(holder) = self.holder().await? {
                return Err(LeaseBusy {
                    key: self.key.clone(),
                    holder,
                    waited: wait,
                }
                .into());
            }
        }
    }

    async fn acquire(&self) -> Result<bool, StoreError> {
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
        if reply.is_some() {
            return Ok(true);
        }
        // A SET whose reply timed out (Redis hung, the network partitioned)
        // may still have run once Redis answered: the key then holds this
        // writer's own token, and waiting for it to expire would hold every
        // recovery back for a whole ttl behind a writer that is not writing.
        self.renew().await
    }

    /// The token of whoever holds the lease now.
    async fn holder(&self) -> Result<Option<String>, StoreError> {
        let store = self.store.get();
        redis::cmd("GET")
            .arg(&self.key)
            .query_async(&mut store.raw())
            .await
            .map_err(|e| store.error(e))
    }

    /// Extends the lease; `false` when it was lost (expired or taken over).
    async fn renew(&self) -> Result<bool, StoreError> {
        let store = self.store.get();
        let renewed: i64 = redis::cmd("EVAL")
            .arg(RENEW)
            .arg(1)
            .arg(&self.key)
            .arg(&self.token)
            .arg(self.ttl_ms())
            .query_async(&mut store.raw())
            .await
            .map_err(|e| store.error(e))?;
        Ok(renewed == 1)
    }

    async fn release(&self) -> Result<(), StoreError> {
        let store = self.store.get();
        let _: i64 = redis::cmd("EVAL")
            .arg(RELEASE)
            .arg(1)
            .arg(&self.key)
            .arg(&self.token)
            .query_async(&mut store.raw())
            .await
            .map_err(|e| store.error(e))?;
        Ok(())
    }

    /// Why the lease is not ours, given who holds it now.
    fn lost_because(&self, holder: Option<&str>) -> String {
        match holder {
            Some(other) => format!("the recovery lease {} was taken over by {other}", self.key),
            None => format!("the recovery lease {} expired or was deleted", self.key),
        }
    }

    fn ttl_ms(&self) -> u64 {
        u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX)
    }
}

/// A lease this writer holds, renewed every third of its lifetime until it is
/// released or dropped. Once lost it stays lost: a writer must take a new
/// lease (and compare again) before writing any more.
pub(crate) struct Held {
    lease: Lease,
    lost: Arc<OnceLock<String>>,
    _renewal: DropGuard,
}

impl Held {
    fn start(lease: Lease) -> Self {
        let lost = Arc::new(OnceLock::new());
        let stop = CancellationToken::new();
        tokio::spawn(keep_renewed(lease.clone(), lost.clone(), stop.clone()));
        Self {
            lease,
            lost,
            _renewal: stop.drop_guard(),
        }
    }

    /// Why the lease was lost, once it was.
    pub(crate) fn lost(&self) -> Option<&str> {
        self.lost.get().map(String::as_str)
    }

    /// Asks Redis whether the lease is still this writer's: one GET, cheap
    /// enough to ask every few hundred writes, so that a lease deleted or
    /// taken over is noticed within a bounded number of writes rather than at
    /// the next renewal. A failed read decides nothing: the renewals give up
    /// once the lease cannot have outlived its ttl.
    pub(crate) async fn confirm(&self) -> Option<&str> {
        if self.lost().is_none() {
            match self.lease.holder().await {
                Ok(Some(holder)) if holder == self.lease.token => {}
                Ok(holder) => {
                    let _ = self.lost.set(self.lease.lost_because(holder.as_deref()));
                }
                Err(_) => {}
            }
        }
        self.lost()
    }

    /// Stops renewing and deletes the lease if it is still this writer's.
    pub(crate) async fn release(self) -> Result<(), StoreError> {
        let Self {
            lease,
            _renewal: renewal,
            ..
        } = self;
        drop(renewal);
        lease.release().await
    }
}

/// Renews until `stop`; records the loss when a renewal finds the lease gone
/// or another's, or when none has succeeded for a whole ttl.
async fn keep_renewed(lease: Lease, lost: Arc<OnceLock<String>>, stop: CancellationToken) {
    let every = lease.ttl / 3;
    let mut renewed_at = Instant::now();
    loop {
        tokio::select! {
            _ = sleep(every) => {}
            _ = stop.cancelled() => return,
        }
        let asked_at = Instant::now();
        let reason = match lease.renew().await {
            Ok(true) => {
                renewed_at = asked_at;
                continue;
            }
            Ok(false) => {
                let holder = lease.holder().await.ok().flatten();
                lease.lost_because(holder.as_deref())
            }
            Err(error) if renewed_at.elapsed() >= lease.ttl => format!(
                "the recovery lease {} could not be renewed for {:?}: {error}",
                lease.key, lease.ttl
            ),
            Err(_) => continue,
        };
        let _ = lost.set(reason);
        return;
    }
}
