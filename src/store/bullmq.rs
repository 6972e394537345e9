//! Access to BullMQ's data in Redis.
//!
//! Every write goes through `bullmq-official`, which runs BullMQ's own Lua
//! scripts, so what is restored is exactly what Node BullMQ would have written.
//! Scheduler hashes are read here in pipelined batches with BullMQ's key names:
//! the crate reads them one round trip per scheduler, far too slow for a drift
//! check over 100,000 schedulers.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use bullmq::options::RedisConnectionOptions;
use bullmq::redis_connection::{AnyConnection, RedisConnection};
use bullmq::{Queue, QueueKeys, QueueOptions};
use tokio::sync::Mutex;

use crate::config::{redact_url, RedisConfig};
use crate::model::{
    scheduler_job_id, JobCounts, NextJobFacts, QueueSchedulers, SchedulerFields, StoredScheduler,
    PROMOTION_MARGIN_MS,
};
use crate::model::{DesiredScheduler, Schedule};

/// How long connecting may take before Redis counts as unreachable.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Schedulers read per pipeline; bounds memory and how long Redis is kept busy.
const READ_BATCH: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot connect to Redis at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("Redis at {url}: {reason}")]
    Command { url: String, reason: String },
}

/// The servers to subscribe on, each with its redacted URL.
pub(crate) struct Primaries {
    pub(crate) clients: Vec<(String, redis::Client)>,
    /// False while a cluster primary is flagged as failing and so left out.
    pub(crate) whole: bool,
}

/// What one poll read.
#[derive(Debug, Default)]
pub struct Polled {
    pub info: String,
    pub counts: BTreeMap<String, JobCounts>,
    /// Per queue, the schedulers whose next run is more than
    /// `PROMOTION_MARGIN_MS` away: each has a job in the delayed set, so an
    /// empty delayed set beside them means their next jobs were lost.
    pub runs_far_ahead: BTreeMap<String, u64>,
}

#[derive(Clone)]
pub struct BullmqStore {
    connection: RedisConnection,
    prefix: String,
    url: String,
    /// Seed nodes when this is a Redis Cluster; empty for one server.
    cluster_nodes: Vec<String>,
    redacted_url: String,
    password: Option<String>,
    queues: Arc<Mutex<HashMap<String, Queue>>>,
}

/// The store in use, replaced when Sentinel moves the primary elsewhere.
#[derive(Clone)]
pub(crate) struct SharedStore(Arc<std::sync::RwLock<BullmqStore>>);

impl SharedStore {
    pub(crate) fn new(store: BullmqStore) -> Self {
        Self(Arc::new(std::sync::RwLock::new(store)))
    }

    /// The current store (a cheap clone; connections are shared).
    pub(crate) fn get(&self) -> BullmqStore {
        match self.0.read() {
            Ok(store) => store.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub(crate) fn replace(&self, store: BullmqStore) {
        match self.0.write() {
            Ok(mut current) => *current = store,
            Err(poisoned) => *poisoned.into_inner() = store,
        }
    }
}

impl BullmqStore {
    /// Connects to the configured Redis, to the primary the sentinels name, or
    /// to a Redis Cluster.
    pub(crate) async fn connect(config: &RedisConfig) -> Result<Self, StoreError> {
        if !config.cluster_nodes.is_empty() {
            return Self::connect_cluster(config).await;
        }
        let url = super::target::resolve(config)
            .await
            .map_err(|e| StoreError::Unreachable {
                url: redact_url(&config.url),
                reason: e.to_string(),
            })?;
        Self::connect_url(&url, &config.prefix).await
    }

    /// Connects to the server at `url` (already resolved).
    pub async fn connect_url(url: &str, prefix: &str) -> Result<Self, StoreError> {
        let redacted_url = redact_url(url);
        let password = url::Url::parse(url)
            .ok()
            .and_then(|u| u.password().map(str::to_owned));
        let unreachable = |reason: String| StoreError::Unreachable {
            url: redacted_url.clone(),
            reason: scrub(&reason, password.as_deref()),
        };
        // BullMQ's managed connection keeps retrying a refused first connection
        // for about 40 s; one plain attempt with a deadline answers at once.
        let probe_config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(CONNECT_TIMEOUT));
        redis::Client::open(url)
            .map_err(|e| unreachable(e.to_string()))?
            .get_multiplexed_async_connection_with_config(&probe_config)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let options = RedisConnectionOptions {
            url: url.to_owned(),
            ..RedisConnectionOptions::default()
        };
        let connection = crate::memory::lasting_while(RedisConnection::new_managed_only(&options))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        Ok(Self {
            connection,
            prefix: prefix.to_owned(),
            url: url.to_owned(),
            cluster_nodes: Vec::new(),
            redacted_url,
            password,
            queues: Arc::default(),
        })
    }

    async fn connect_cluster(config: &RedisConfig) -> Result<Self, StoreError> {
        let seeds = config.cluster_nodes.join(",");
        let redacted_url = config
            .cluster_nodes
            .iter()
            .map(|n| redact_url(n))
            .collect::<Vec<_>>()
            .join(",");
        let password = config
            .cluster_nodes
            .iter()
            .find_map(|n| url::Url::parse(n).ok()?.password().map(str::to_owned));
        let first = url::Url::parse(&config.cluster_nodes[0]).ok();
        let options = RedisConnectionOptions {
            cluster_nodes: config.cluster_nodes.clone(),
            username: first
                .as_ref()
                .map(|u| u.username().to_owned())
                .filter(|u| !u.is_empty()),
            password: password.clone(),
            ..RedisConnectionOptions::default()
        };
        let connection = crate::memory::lasting_while(RedisConnection::new_managed_only(&options))
            .await
            .map_err(|e| StoreError::Unreachable {
                url: redacted_url.clone(),
                reason: scrub(&e.to_string(), password.as_deref()),
            })?;
        Ok(Self {
            connection,
            prefix: config.prefix.clone(),
            url: seeds,
            cluster_nodes: config.cluster_nodes.clone(),
            redacted_url,
            password,
            queues: Arc::default(),
        })
    }

    pub(crate) fn redacted_url(&self) -> &str {
        &self.redacted_url
    }

    /// One client per server that holds BullMQ data, with its URL: the server
    /// itself, or every primary of a cluster (keyspace notifications are
    /// node-local); and whether that is every primary (see `cluster_primaries`).
    pub(crate) async fn primary_clients(&self) -> Result<Primaries, StoreError> {
        let Some(seed) = self.cluster_nodes.first() else {
            return Ok(Primaries {
                clients: vec![(self.redacted_url.clone(), self.client()?)],
                whole: true,
            });
        };
        let nodes: String = redis::cmd("CLUSTER")
            .arg("NODES")
            .query_async(&mut self.raw())
            .await
            .map_err(|e| self.error(e))?;
        let (addresses, whole) = super::target::cluster_primaries(&nodes);
        let clients = addresses
            .into_iter()
            .map(|(host, port)| {
                let url = super::target::with_address(seed, &host, port);
                let client = redis::Client::open(url.as_str()).map_err(|e| self.error(e))?;
                Ok((redact_url(&url), client))
            })
            .collect::<Result<_, StoreError>>()?;
        Ok(Primaries { clients, whole })
    }

    /// Whether this store talks to the server at `url`.
    pub(crate) fn is_at(&self, url: &str) -> bool {
        self.url == url
    }

    /// A separate client for the same server.
    fn client(&self) -> Result<redis::Client, StoreError> {
        redis::Client::open(self.url.as_str()).map_err(|e| self.error(e))
    }

    pub(crate) fn is_cluster(&self) -> bool {
        !self.cluster_nodes.is_empty()
    }

    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    /// One bounded step of finding the queues under the prefix that have a
    /// scheduler set: up to `steps` `SCAN`s of 1,000 keys from `cursor`.
    /// Returns the queues found and the cursor to go on from (0: the
    /// keyspace was covered). A cluster spreads its keys over its primaries,
    /// which this does not walk: there, it finds nothing.
    pub(crate) async fn discover_queues(
        &self,
        mut cursor: u64,
        steps: usize,
    ) -> Result<(Vec<String>, u64), StoreError> {
        if self.is_cluster() {
            return Ok((Vec::new(), 0));
        }
        let pattern = format!("{}:*:repeat", self.prefix);
        let mut conn = self.raw();
        let mut queues = Vec::new();
        for _ in 0..steps {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .arg("TYPE")
                .arg("zset")
                .query_async(&mut conn)
                .await
                .map_err(|e| self.error(e))?;
            queues.extend(keys.iter().filter_map(|key| {
                let queue = key.strip_prefix(&self.prefix)?.strip_prefix(':')?;
                queue.strip_suffix(":repeat").map(str::to_owned)
            }));
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        Ok((queues, cursor))
    }

    /// A connection for commands outside BullMQ's API (INFO, CONFIG, …).
    pub(crate) fn raw(&self) -> AnyConnection {
        self.connection.connection()
    }

    /// A connection of its own for one comparison's reads, closed when its
    /// last clone is dropped. A connection keeps the buffers its largest
    /// pipeline grew for as long as it lives: on the shared one, every
    /// drift check over 100,000 schedulers left half a megabyte of them
    /// behind, in allocator pages that then stayed resident. A cluster's
    /// reads keep to the shared connection, which knows the slot map.
    pub(crate) async fn reads_connection(&self) -> Result<AnyConnection, StoreError> {
        if self.is_cluster() {
            return Ok(self.raw());
        }
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(CONNECT_TIMEOUT))
            .set_number_of_retries(0);
        redis::aio::ConnectionManager::new_with_config(self.client()?, config)
            .await
            .map(AnyConnection::Single)
            .map_err(|e| self.error(e))
    }

    /// Turns a client error into one line that names the server, never the password.
    pub(crate) fn error(&self, error: impl std::fmt::Display) -> StoreError {
        StoreError::Command {
            url: self.redacted_url.clone(),
            reason: scrub(&error.to_string(), self.password.as_deref()),
        }
    }

    pub(crate) fn keys(&self, queue: &str) -> QueueKeys {
        QueueKeys::new(queue, Some(&self.prefix))
    }

    async fn queue(&self, name: &str) -> Result<Queue, StoreError> {
        let mut queues = self.queues.lock().await;
        if let Some(queue) = queues.get(name) {
            return Ok(queue.clone());
        }
        let options = QueueOptions {
            prefix: self.prefix.clone(),
            ..QueueOptions::default()
        };
        let queue = Queue::with_connection(name, self.connection.clone(), options);
        let queue = crate::memory::lasting_while(queue)
            .await
            .map_err(|e| self.error(e))?;
        queues.insert(name.to_owned(), queue.clone());
        Ok(queue)
    }

    /// BullMQ's job counts for many queues in one round trip: the commands
    /// of `getJobCounts()` and `getJobSchedulersCount()`, on BullMQ's key names.
    pub(crate) async fn job_counts(
        &self,
        queues: &[String],
    ) -> Result<BTreeMap<String, JobCounts>, StoreError> {
        let mut pipe = redis::pipe();
        self.add_count_commands(&mut pipe, queues);
        let replies: Vec<u64> = pipe
            .query_async(&mut self.raw())
            .await
            .map_err(|e| self.error(e))?;
        Ok(counts_from_replies(queues, &replies))
    }

    /// A plain connection to the server, besides BullMQ's managed one, for
    /// the watcher's poll: the managed connection reconnects with a backoff
    /// that cannot be tuned, so after a restart it may take a second to
    /// notice that Redis is back; the poll dials again on every tick instead.
    /// `None` for a cluster, where the poll uses the cluster connection.
    pub async fn dedicated_connection(
        &self,
        timeout: std::time::Duration,
    ) -> Result<Option<redis::aio::MultiplexedConnection>, StoreError> {
        if self.is_cluster() {
            return Ok(None);
        }
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout));
        self.client()?
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map(Some)
            .map_err(|e| self.error(e))
    }

    /// `INFO` (the sections the watcher reads) and the job counts of every
    /// queue in one round trip on `connection`; for a queue whose delayed
    /// set is empty beside schedulers, a second one asks how many of them
    /// must have their next job there.
    ///
    /// The second question is asked only then because it is the one costly
    /// read of the poll: Redis answers each poll from cold caches (it idles
    /// in between), where a `ZCOUNT` over a 10,000-member set walks the
    /// skiplist four times, ~20 µs, while the counts are O(1), ~2 µs each.
    pub async fn poll(
        &self,
        connection: &mut impl redis::aio::ConnectionLike,
        queues: &[String],
    ) -> Result<Polled, StoreError> {
        let mut pipe = redis::pipe();
        pipe.cmd("INFO")
            .arg("server")
            .arg("persistence")
            .arg("memory")
            .arg("replication");
        self.add_count_commands(&mut pipe, queues);
        let (info, replies): (String, Vec<u64>) = pipe
            .query_async::<Vec<redis::Value>>(connection)
            .await
            .and_then(|values| {
                let mut values = values.into_iter();
                let info: String =
                    redis::from_redis_value(values.next().unwrap_or(redis::Value::Nil))?;
                let counts: Vec<u64> = values
                    .map(redis::from_redis_value)
                    .collect::<Result<_, _>>()?;
                Ok((info, counts))
            })
            .map_err(|e| self.error(e))?;
        let counts = counts_from_replies(queues, &replies);
        let runs_far_ahead = self.runs_far_ahead(connection, &counts).await?;
        Ok(Polled {
            info,
            counts,
            runs_far_ahead,
        })
    }

    /// For the queues whose delayed set is empty while their scheduler set
    /// is not, the schedulers whose next run is more than
    /// `PROMOTION_MARGIN_MS` away; no round trip when there are none.
    async fn runs_far_ahead(
        &self,
        connection: &mut impl redis::aio::ConnectionLike,
        counts: &BTreeMap<String, JobCounts>,
    ) -> Result<BTreeMap<String, u64>, StoreError> {
        let suspect: Vec<&String> = counts
            .iter()
            .filter(|(_, c)| c.delayed == 0 && c.repeatable > 0)
            .map(|(queue, _)| queue)
            .collect();
        if suspect.is_empty() {
            return Ok(BTreeMap::new());
        }
        let beyond_margin = crate::clock::now_ms().saturating_add(PROMOTION_MARGIN_MS);
        let mut pipe = redis::pipe();
        for queue in &suspect {
            pipe.cmd("ZCOUNT")
                .arg(self.keys(queue).repeat())
                .arg(format!("({beyond_margin}"))
                .arg("+inf");
        }
        let far: Vec<u64> = pipe
            .query_async(connection)
            .await
            .map_err(|e| self.error(e))?;
        Ok(suspect.into_iter().cloned().zip(far).collect())
    }

    fn add_count_commands(&self, pipe: &mut redis::Pipeline, queues: &[String]) {
        for queue in queues {
            let keys = self.keys(queue);
            pipe.cmd("LLEN").arg(keys.wait());
            pipe.cmd("LLEN").arg(keys.active());
            pipe.cmd("ZCARD").arg(keys.completed());
            pipe.cmd("ZCARD").arg(keys.failed());
            pipe.cmd("ZCARD").arg(keys.delayed());
            pipe.cmd("ZCARD").arg(keys.prioritized());
            pipe.cmd("LLEN").arg(keys.paused());
            pipe.cmd("ZCARD").arg(keys.waiting_children());
            pipe.cmd("ZCARD").arg(keys.repeat());
        }
    }

    /// Reads every scheduler of a queue: the `repeat` set, then each hash
    /// (but those `skips` names: known to match their rows), next-run job
    /// and that job's place in the delayed set, in pipelined batches.
    pub(crate) async fn read_schedulers(
        &self,
        mut conn: AnyConnection,
        queue: &str,
        skips: impl Fn(&str) -> bool,
    ) -> Result<QueueSchedulers, StoreError> {
        let keys = self.keys(queue);
        let (members, bullmq_version) = self.read_repeat_set(&mut conn, &keys).await?;
        let mut result = QueueSchedulers {
            bullmq_version,
            ..QueueSchedulers::default()
        };
        let owned: Vec<(String, u64)> = members
            .into_iter()
            .filter_map(|(id, score)| {
                if is_legacy_repeatable(&id) {
                    result.legacy += 1;
                    None
                } else {
                    Some((id, score as u64))
                }
            })
            .collect();
        for batch in owned.chunks(READ_BATCH) {
            let read = self.read_batch(&mut conn, &keys, batch, &skips).await?;
            for ((id, next_ms), reply) in batch.iter().zip(read) {
                result
                    .schedulers
                    .insert(id.clone(), stored_scheduler(*next_ms, reply));
            }
        }
        Ok(result)
    }

    /// The `repeat` set's members with their scores (next runs), and the
    /// BullMQ version the queue's meta hash records, in one round trip.
    async fn read_repeat_set(
        &self,
        conn: &mut AnyConnection,
        keys: &QueueKeys,
    ) -> Result<(Vec<(String, f64)>, Option<String>), StoreError> {
        redis::pipe()
            .cmd("ZRANGE")
            .arg(keys.repeat())
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES")
            .cmd("HGET")
            .arg(keys.meta())
            .arg("version")
            .query_async(conn)
            .await
            .map_err(|e| self.error(e))
    }

    /// One round trip for a batch of schedulers: each hash `skips` does not
    /// name (`None` for the others), then for all of them at once whether
    /// their next jobs exist (one `EXISTS` counting them) and where those
    /// jobs are in the delayed set (a `ZMSCORE`). Four commands per
    /// scheduler cost Redis about four times what one does; this is at most
    /// one per scheduler and two per batch. Only a batch whose next jobs are
    /// not all in place asks again (`recheck`).
    async fn read_batch(
        &self,
        conn: &mut AnyConnection,
        keys: &QueueKeys,
        batch: &[(String, u64)],
        skips: impl Fn(&str) -> bool,
    ) -> Result<Vec<SchedulerReply>, StoreError> {
        let repeat_key = keys.repeat();
        let job_ids: Vec<String> = batch
            .iter()
            .map(|(id, next_ms)| scheduler_job_id(id, *next_ms))
            .collect();
        let read: Vec<bool> = batch.iter().map(|(id, _)| !skips(id)).collect();
        let mut pipe = redis::pipe();
        for ((id, _), _) in batch.iter().zip(&read).filter(|(_, read)| **read) {
            pipe.cmd("HMGET")
                .arg(format!("{repeat_key}:{id}"))
                .arg(&SchedulerFields::NAMES[..]);
        }
        let job_keys: Vec<String> = job_ids.iter().map(|job| keys.job_key(job)).collect();
        pipe.cmd("EXISTS").arg(&job_keys);
        pipe.cmd("ZMSCORE").arg(keys.delayed()).arg(&job_ids);
        let values: Vec<redis::Value> = pipe.query_async(conn).await.map_err(|e| self.error(e))?;
        let BatchReplies {
            hashes,
            existing,
            in_delayed,
        } = self.decode_batch(values, &read)?;
        let (exists, scores) =
            match existing == batch.len() && in_delayed.iter().all(Option::is_some) {
                // Every next job where BullMQ puts it: the schedulers stand as listed.
                true => (
                    vec![true; batch.len()],
                    batch
                        .iter()
                        .map(|(_, next_ms)| Some(*next_ms as f64))
                        .collect(),
                ),
                false => {
                    self.recheck(conn, &repeat_key, batch, &job_keys, existing)
                        .await?
                }
            };
        Ok(hashes
            .into_iter()
            .zip(exists)
            .zip(in_delayed.into_iter().zip(scores))
            .map(|((hash, exists), (delayed, score))| (hash, exists, delayed, score))
            .collect())
    }

    /// Decodes a batch read's answers: the hashes (one answer each where
    /// `read` is set), then the count of next jobs and their delayed scores.
    fn decode_batch(
        &self,
        mut values: Vec<redis::Value>,
        read: &[bool],
    ) -> Result<BatchReplies, StoreError> {
        let hashes_read = read.iter().filter(|read| **read).count();
        if values.len() != hashes_read + 2 {
            return Err(self.error("a batch read got an answer of the wrong length"));
        }
        let tail = values.split_off(hashes_read);
        let decode = |e| self.error(e);
        let mut hashes = values.into_iter().map(redis::from_redis_value);
        let hashes: Vec<Option<Vec<Option<String>>>> = read
            .iter()
            .map(|read| read.then(|| hashes.next()).flatten().transpose())
            .collect::<Result<_, _>>()
            .map_err(decode)?;
        let [existing, in_delayed]: [redis::Value; 2] = tail
            .try_into()
            .map_err(|_| self.error("a batch read got an answer of the wrong length"))?;
        let existing: usize = redis::from_redis_value(existing).map_err(decode)?;
        let in_delayed: Vec<Option<f64>> = redis::from_redis_value(in_delayed).map_err(decode)?;
        Ok(BatchReplies {
            hashes,
            existing,
            in_delayed,
        })
    }

    /// The slow path of a batch read whose next jobs are not all in place:
    /// which jobs exist (key by key, unless the count said all), and where
    /// the schedulers are now — read after the jobs, so a score that moved
    /// meanwhile shows a Worker moved the scheduler on (`moved_on`).
    async fn recheck(
        &self,
        conn: &mut AnyConnection,
        repeat_key: &str,
        batch: &[(String, u64)],
        job_keys: &[String],
        existing: usize,
    ) -> Result<(Vec<bool>, Vec<Option<f64>>), StoreError> {
        let all_exist = existing == batch.len();
        let mut pipe = redis::pipe();
        if !all_exist {
            for key in job_keys {
                pipe.cmd("EXISTS").arg(key);
            }
        }
        pipe.cmd("ZMSCORE")
            .arg(repeat_key)
            .arg(batch.iter().map(|(id, _)| id).collect::<Vec<_>>());
        let mut values: Vec<redis::Value> =
            pipe.query_async(conn).await.map_err(|e| self.error(e))?;
        let scores = values
            .pop()
            .ok_or_else(|| self.error("a batch read got an answer of the wrong length"))?;
        let scores: Vec<Option<f64>> =
            redis::from_redis_value(scores).map_err(|e| self.error(e))?;
        let exists: Vec<bool> = match all_exist {
            true => vec![true; batch.len()],
            false => values
                .into_iter()
                .map(redis::from_redis_value)
                .collect::<Result<_, _>>()
                .map_err(|e| self.error(e))?,
        };
        if exists.len() != batch.len() || scores.len() != batch.len() {
            return Err(self.error("a batch read got an answer of the wrong length"));
        }
        Ok((exists, scores))
    }

    /// Puts back the BullMQ version a queue's meta hash recorded before a
    /// loss: BullMQ's scripts recreate the hash without it. Only where the
    /// field is still missing, so a version BullMQ wrote meanwhile wins.
    pub(crate) async fn restore_version(
        &self,
        queue: &str,
        version: &str,
    ) -> Result<bool, StoreError> {
        redis::cmd("HSETNX")
            .arg(self.keys(queue).meta())
            .arg("version")
            .arg(version)
            .query_async(&mut self.raw())
            .await
            .map_err(|e| self.error(e))
    }

    /// Creates or replaces a scheduler with BullMQ's own `upsertJobScheduler`.
    ///
    /// When the scheduler set lost a member but its next job survived (a DEL of
    /// the `repeat` key), BullMQ refuses the upsert: the job id for the next run
    /// is taken. That orphaned job is removed with BullMQ's `removeJob` — it
    /// belongs to no scheduler any more — and the upsert is tried once more.
    pub(crate) async fn upsert(&self, scheduler: &DesiredScheduler) -> Result<(), StoreError> {
        let queue = self.queue(&scheduler.queue).await?;
        match upsert_with(&queue, scheduler).await {
            Err(bullmq::Error::Script { code, .. }) if code == SCHEDULER_JOB_ID_COLLISION => {
                self.remove_orphaned_next_job(&queue, scheduler).await?;
                upsert_with(&queue, scheduler)
                    .await
                    .map_err(|e| self.error(e))
            }
            other => other.map_err(|e| self.error(e)),
        }
    }

    /// `upsert` for a scheduler whose next run's job survived it: removes that
    /// job first, sparing BullMQ's refused attempt. A job already due is left
    /// to run — it is that run, not a duplicate — and the upsert picks the
    /// run after it. A scheduler's job has no children, so BullMQ's child
    /// handling is skipped.
    pub(crate) async fn upsert_after_orphan(
        &self,
        scheduler: &DesiredScheduler,
        orphan: &NextRunJob,
    ) -> Result<(), StoreError> {
        if orphan.run_at_ms > crate::clock::now_ms() {
            let queue = self.queue(&scheduler.queue).await?;
            queue
                .remove_without_children(&orphan.job_id)
                .await
                .map_err(|e| self.error(e))?;
        }
        self.upsert(scheduler).await
    }

    /// `upsert` for a scheduler whose next job is stranded (see
    /// `NextJobState::Stranded`). BullMQ neither re-queues such a job nor replaces
    /// it while the scheduler points at it, so the scheduler is removed with
    /// `removeJobScheduler` (which leaves the stranded job, as it is in no
    /// set), the job with `removeJob`, and the scheduler created afresh. Its
    /// iteration count starts again, which matters only with a `limit`.
    pub(crate) async fn replace_stranded(
        &self,
        scheduler: &DesiredScheduler,
        stranded_job_id: &str,
    ) -> Result<(), StoreError> {
        let queue = self.queue(&scheduler.queue).await?;
        queue
            .remove_job_scheduler(&scheduler.scheduler_id)
            .await
            .map_err(|e| self.error(e))?;
        queue
            .remove_without_children(stranded_job_id)
            .await
            .map_err(|e| self.error(e))?;
        self.upsert(scheduler).await
    }

    async fn remove_orphaned_next_job(
        &self,
        queue: &Queue,
        scheduler: &DesiredScheduler,
    ) -> Result<(), StoreError> {
        let mut next_runs = NextRuns::new(crate::clock::now_ms());
        if let Some(orphan) = next_runs.job_of(scheduler) {
            queue
                .remove_without_children(&orphan.job_id)
                .await
                .map_err(|e| self.error(e))?;
        }
        Ok(())
    }

    /// For each of `missing` (schedulers absent from the `repeat` set of
    /// `queue`), the job an upsert now would create, when it already exists:
    /// the set lost its members while the delayed jobs survived. One `ZCARD`
    /// when the delayed set is empty, as after a flush or a restart.
    pub(crate) async fn orphaned_next_jobs(
        &self,
        queue: &str,
        missing: &[DesiredScheduler],
    ) -> Result<Vec<Option<NextRunJob>>, StoreError> {
        let keys = self.keys(queue);
        let mut conn = self.raw();
        let delayed: u64 = redis::cmd("ZCARD")
            .arg(keys.delayed())
            .query_async(&mut conn)
            .await
            .map_err(|e| self.error(e))?;
        if delayed == 0 {
            return Ok(vec![None; missing.len()]);
        }
        let mut next_runs = NextRuns::new(crate::clock::now_ms());
        let mut found = Vec::with_capacity(missing.len());
        for batch in missing.chunks(READ_BATCH) {
            let jobs: Vec<Option<NextRunJob>> = batch.iter().map(|s| next_runs.job_of(s)).collect();
            let mut pipe = redis::pipe();
            for job in jobs.iter().flatten() {
                pipe.cmd("EXISTS").arg(keys.job_key(&job.job_id));
            }
            let mut exists = pipe
                .query_async::<Vec<bool>>(&mut conn)
                .await
                .map_err(|e| self.error(e))?
                .into_iter();
            found.extend(jobs.into_iter().map(|job| {
                let job = job?;
                exists.next().unwrap_or(false).then_some(job)
            }));
        }
        Ok(found)
    }

    /// Adds one job now with BullMQ's add script; a known `job_id` adds nothing.
    pub(crate) async fn add_job(
        &self,
        queue: &str,
        name: &str,
        data: serde_json::Value,
        opts: bullmq::JobOptions,
        job_id: &str,
    ) -> Result<(), StoreError> {
        self.queue(queue)
            .await?
            .add(name, data)
            .options(opts)
            .job_id(job_id)
            .await
            .map(drop)
            .map_err(|e| self.error(e))
    }

    /// Removes a scheduler and its next job with BullMQ's `removeJobScheduler`.
    pub(crate) async fn remove(&self, queue: &str, scheduler_id: &str) -> Result<bool, StoreError> {
        self.queue(queue)
            .await?
            .remove_job_scheduler(scheduler_id)
            .await
            .map_err(|e| self.error(e))
    }
}

/// BullMQ's script error for "the next run's job id already exists".
const SCHEDULER_JOB_ID_COLLISION: i64 = -10;

async fn upsert_with(queue: &Queue, scheduler: &DesiredScheduler) -> Result<(), bullmq::Error> {
    let (pattern, every) = match &scheduler.schedule {
        Schedule::Pattern(p) => (Some(p.clone()), None),
        Schedule::EveryMs(ms) => (None, Some(*ms)),
    };
    let repeat = bullmq::job_scheduler::RepeatOptions {
        pattern,
        every,
        tz: scheduler.tz.clone(),
        start_date: scheduler.start_date,
        end_date: scheduler.end_date,
        limit: scheduler.limit,
        offset: scheduler.offset,
        ..Default::default()
    };
    queue
        .upsert_job_scheduler(
            &scheduler.scheduler_id,
            repeat,
            Some(&scheduler.name),
            Some(scheduler.data_value()),
            Some(crate::desired::job_options_of(scheduler)),
        )
        .await
        .map(drop)
}

/// The job BullMQ creates for a scheduler's next run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NextRunJob {
    pub(crate) job_id: String,
    pub(crate) run_at_ms: u64,
}

/// Next runs of cron schedulers created at one instant. Parsing a pattern
/// costs far more than the write it precedes, and thousands of rows share a
/// handful of patterns, so each (pattern, time zone, start) is computed once.
struct NextRuns {
    now_ms: u64,
    computed: HashMap<(String, Option<String>, Option<u64>), Option<u64>>,
}

impl NextRuns {
    fn new(now_ms: u64) -> Self {
        Self {
            now_ms,
            computed: HashMap::new(),
        }
    }

    /// The job of `scheduler`'s next run; `None` for interval schedulers and
    /// patterns that never fire.
    fn job_of(&mut self, scheduler: &DesiredScheduler) -> Option<NextRunJob> {
        let Schedule::Pattern(pattern) = &scheduler.schedule else {
            return None;
        };
        let key = (pattern.clone(), scheduler.tz.clone(), scheduler.start_date);
        let now_ms = self.now_ms;
        let run_at_ms = *self.computed.entry(key).or_insert_with(|| {
            bullmq::job_scheduler::next_cron_millis(
                pattern,
                now_ms,
                scheduler.tz.as_deref(),
                scheduler.start_date,
            )
            .ok()
            .flatten()
        });
        let run_at_ms = run_at_ms?;
        Some(NextRunJob {
            job_id: scheduler_job_id(&scheduler.scheduler_id, run_at_ms),
            run_at_ms,
        })
    }
}

/// Commands per queue in `add_count_commands`.
const COUNT_COMMANDS: usize = 9;

fn counts_from_replies(queues: &[String], replies: &[u64]) -> BTreeMap<String, JobCounts> {
    queues
        .iter()
        .zip(replies.chunks(COUNT_COMMANDS))
        .map(|(queue, r)| {
            let at = |i: usize| r.get(i).copied().unwrap_or_default();
            let counts = JobCounts {
                waiting: at(0),
                active: at(1),
                completed: at(2),
                failed: at(3),
                delayed: at(4),
                prioritized: at(5),
                paused: at(6),
                waiting_children: at(7),
                repeatable: at(8),
            };
            (queue.clone(), counts)
        })
        .collect()
}

/// A batch read's first answers, decoded.
struct BatchReplies {
    /// Per scheduler, its hash fields (`None`: not read).
    hashes: Vec<Option<Vec<Option<String>>>>,
    /// How many of the batch's next jobs exist.
    existing: usize,
    /// Per scheduler, its next job's score in the delayed set.
    in_delayed: Vec<Option<f64>>,
}

/// One scheduler's replies: its hash fields, whether its next job exists,
/// that job's score in the delayed set, and the scheduler's score again.
/// A scheduler's hash fields (`None`: not read), whether its next job
/// exists, its score in the delayed set, and its score in the repeat set now.
type SchedulerReply = (Option<Vec<Option<String>>>, bool, Option<f64>, Option<f64>);

/// A scheduler as read: its hash only when it was read and exists (HMGET
/// answers nil for every field of a missing hash), its next job as found
/// unless a Worker moved the scheduler on meanwhile (`moved_on`).
fn stored_scheduler(
    next_ms: u64,
    (values, exists, delayed_score, score_now): SchedulerReply,
) -> StoredScheduler {
    let matches_row = values.is_none();
    let hash = values
        .filter(|v| v.iter().any(Option::is_some))
        .map(|values| {
            SchedulerFields::NAMES
                .iter()
                .zip(values)
                .filter_map(|(name, value)| Some((*name, value?)))
                .collect()
        });
    StoredScheduler {
        next_ms,
        hash,
        matches_row,
        next_job: moved_on(next_ms, score_now).unwrap_or(NextJobFacts {
            exists,
            in_delayed: delayed_score.is_some(),
        }),
    }
}

/// A scheduler whose score changed between the listing and the read of its
/// next job was moved on by a Worker in between: BullMQ queues the next run
/// when it takes the current one, then (with `removeOnComplete`) deletes the
/// finished job. The job read is then the old one, gone for a good reason, and
/// the scheduler counts as queued; one removed meanwhile is left to the next
/// comparison.
fn moved_on(listed_ms: u64, score_now: Option<f64>) -> Option<NextJobFacts> {
    let unchanged = score_now.is_some_and(|score| score as u64 == listed_ms);
    (!unchanged).then_some(NextJobFacts::QUEUED)
}

/// BullMQ 5's legacy repeatable jobs use an md5 hex digest as the set member.
fn is_legacy_repeatable(member: &str) -> bool {
    member.len() == 32 && member.bytes().all(|b| b.is_ascii_hexdigit())
}

fn scrub(text: &str, secret: Option<&str>) -> String {
    let line = crate::text::collapse_whitespace(text);
    match secret {
        Some(secret) if !secret.is_empty() => line.replace(secret, "***"),
        _ => line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_members_are_md5_digests() {
        assert!(is_legacy_repeatable("0123456789abcdef0123456789abcdef"));
        assert!(!is_legacy_repeatable("inspection:1"));
    }

    #[test]
    fn secrets_are_scrubbed_from_messages() {
        assert_eq!(
            scrub("auth hunter2\nfailed", Some("hunter2")),
            "auth *** failed"
        );
    }
}
