//! The Redis server's own state as `INFO` and `CONFIG GET` report it, and what
//! this account may run: read by the poll every second and by `check`.

use std::collections::HashMap;

use super::{BullmqStore, StoreError};

/// The persistence-related settings, as far as the server lets us read them.
#[derive(Debug, Clone, Default)]
pub(crate) struct RedisSettings {
    /// `None` when CONFIG GET is refused.
    pub(crate) config: Option<HashMap<String, String>>,
    pub(crate) info: HashMap<String, String>,
}

impl RedisSettings {
    pub(crate) async fn read(store: &BullmqStore) -> Result<Self, StoreError> {
        let mut conn = store.raw();
        let info_text: String = redis::cmd("INFO")
            .arg("server")
            .arg("persistence")
            .arg("memory")
            .arg("replication")
            .query_async(&mut conn)
            .await
            .map_err(|e| store.error(e))?;
        if may_run(&mut conn, &["config", "get", "appendonly"]).await == Some(false) {
            return Ok(Self {
                config: None,
                info: parse_info(&info_text),
            });
        }
        let mut config = HashMap::new();
        for key in ["appendonly", "appendfsync", "save", "maxmemory-policy"] {
            let reply: Result<Vec<String>, _> = redis::cmd("CONFIG")
                .arg("GET")
                .arg(key)
                .query_async(&mut conn)
                .await;
            match reply {
                Ok(pair) => {
                    if let [name, value] = pair.as_slice() {
                        config.insert(name.clone(), value.clone());
                    }
                }
                Err(_) => {
                    return Ok(Self {
                        config: None,
                        info: parse_info(&info_text),
                    })
                }
            }
        }
        Ok(Self {
            config: Some(config),
            info: parse_info(&info_text),
        })
    }
}

/// Asks Redis whether this account may run `command` (`["config", "get",
/// "save"]`), without running it: a refused command is written to the ACL
/// log, and the least-privilege account is refused CONFIG on every poll.
/// `None` when Redis cannot tell (before 7.0, or the command is renamed).
pub(crate) async fn may_run(
    conn: &mut impl redis::aio::ConnectionLike,
    command: &[&str],
) -> Option<bool> {
    let verdict: redis::RedisResult<i64> = redis::Script::new(ACL_CHECK)
        .arg(command)
        .invoke_async(conn)
        .await;
    verdict.ok().map(|v| v == 1)
}

const ACL_CHECK: &str = "return redis.acl_check_cmd(unpack(ARGV)) and 1 or 0";

/// `INFO` text as key/value pairs.
pub(crate) fn parse_info(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.trim_end().split_once(':'))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}
