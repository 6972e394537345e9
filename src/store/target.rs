//! Where the Redis primary is: the configured URL, or — with Sentinel — the
//! address the sentinels name for `master_name`, with the URL's credentials
//! and database.

use crate::config::{redact_url, RedisConfig};

#[derive(Debug, thiserror::Error)]
pub(crate) enum TargetError {
    #[error("no sentinel of {sentinels} knows a primary named {name:?}: {reason}")]
    NoPrimary {
        sentinels: String,
        name: String,
        reason: String,
    },
}

/// The URL to connect to now.
pub(crate) async fn resolve(config: &RedisConfig) -> Result<String, TargetError> {
    let Some(name) = config
        .master_name
        .as_deref()
        .filter(|_| !config.sentinels.is_empty())
    else {
        return Ok(config.url.clone());
    };
    let mut last_error = String::from("no sentinel configured");
    for sentinel in &config.sentinels {
        match primary_address(sentinel, name).await {
            Ok((host, port)) => return Ok(with_address(&config.url, &host, port)),
            Err(reason) => last_error = format!("{}: {reason}", redact_url(sentinel)),
        }
    }
    Err(TargetError::NoPrimary {
        sentinels: config
            .sentinels
            .iter()
            .map(|s| redact_url(s))
            .collect::<Vec<_>>()
            .join(", "),
        name: name.to_owned(),
        reason: last_error,
    })
}

async fn primary_address(sentinel: &str, name: &str) -> Result<(String, u16), String> {
    let client = redis::Client::open(sentinel).map_err(|e| e.to_string())?;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(std::time::Duration::from_secs(2)))
        .set_response_timeout(Some(std::time::Duration::from_secs(2)));
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(|e| e.to_string())?;
    let reply: Option<(String, String)> = redis::cmd("SENTINEL")
        .arg("get-master-addr-by-name")
        .arg(name)
        .query_async(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
    let (host, port) = reply.ok_or_else(|| format!("unknown primary {name:?}"))?;
    let port = port
        .parse()
        .map_err(|_| format!("sentinel answered a bad port {port:?}"))?;
    Ok((host, port))
}

/// `url` with its host and port replaced, keeping scheme, credentials and path.
pub(crate) fn with_address(url: &str, host: &str, port: u16) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            let _ = parsed.set_host(Some(host));
            let _ = parsed.set_port(Some(port));
            parsed.to_string()
        }
        Err(_) => format!("redis://{host}:{port}/0"),
    }
}

/// The primaries in a `CLUSTER NODES` reply, as `host:port` pairs, and
/// whether that is all of them: a primary flagged as failing (`fail`, or
/// `fail?` while the others have not agreed yet) is left out, but its slots
/// still need a subscription once it answers again.
pub(crate) fn cluster_primaries(nodes: &str) -> (Vec<(String, u16)>, bool) {
    let mut whole = true;
    let mut primaries: Vec<(String, u16)> = nodes
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let flags = fields.get(2)?;
            if !flags.split(',').any(|f| f == "master") {
                return None;
            }
            if flags.contains("fail") || flags.contains("noaddr") {
                whole = false;
                return None;
            }
            // `ip:port@cport[,hostname]`
            let address = fields.get(1)?.split('@').next()?;
            let (host, port) = address.rsplit_once(':')?;
            Some((host.to_owned(), port.parse().ok()?))
        })
        .collect();
    primaries.sort();
    (primaries, whole)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_primaries_are_read_from_cluster_nodes() {
        let nodes = "a1 127.0.0.1:7001@17001 master - 0 0 1 connected 0-5460\n\
                     b2 127.0.0.1:7004@17004 slave a1 0 0 1 connected\n\
                     c3 127.0.0.1:7000@17000 myself,master - 0 0 2 connected 5461-10922\n\
                     d4 127.0.0.1:7002@17002 master,fail - 0 0 3 disconnected";
        assert_eq!(
            cluster_primaries(nodes),
            (
                vec![
                    ("127.0.0.1".to_owned(), 7000),
                    ("127.0.0.1".to_owned(), 7001)
                ],
                false
            )
        );
        let healthy = "a1 127.0.0.1:7001@17001 master - 0 0 1 connected 0-5460\n\
                       c3 127.0.0.1:7000@17000 myself,master - 0 0 2 connected 5461-16383";
        assert!(cluster_primaries(healthy).1);
        let suspected = "a1 127.0.0.1:7001@17001 master,fail? - 0 0 1 connected 0-5460";
        assert_eq!(cluster_primaries(suspected), (Vec::new(), false));
    }

    #[test]
    fn the_primary_address_keeps_credentials_and_database() {
        assert_eq!(
            with_address("redis://app:pw@placeholder:6379/2", "10.1.2.3", 6390),
            "redis://app:pw@10.1.2.3:6390/2"
        );
    }
}
