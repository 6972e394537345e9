//! Redis topologies of several servers: a Sentinel group (primary, replica,
//! three sentinels) and a Redis Cluster (three primaries with a replica each).

use std::process::{Command, Stdio};
use std::time::Duration;

use super::process::{free_port, wait_until, ChildGuard};
use super::redis_server::{redis_cli, RedisServer};

/// One primary, one replica and three sentinels watching them as `mymaster`.
pub struct SentinelGroup {
    // Declared first: the sentinels stop before the servers they watch.
    sentinels: Vec<(u16, ChildGuard)>,
    pub primary: RedisServer,
    pub replica: RedisServer,
    _dir: tempfile::TempDir,
}

impl SentinelGroup {
    /// `replica_args` go to the replica, e.g. `["--replica-read-only", "no"]`.
    pub fn start(replica_args: &[&str]) -> Self {
        let primary = RedisServer::start();
        let replica = start_replica(&primary, replica_args);
        let dir = tempfile::tempdir().expect("temp dir");
        let sentinels = (0..3)
            .map(|index| start_sentinel(&dir, index, primary.port()))
            .collect();
        let group = Self {
            sentinels,
            primary,
            replica,
            _dir: dir,
        };
        let replica_port = group.replica.port().to_string();
        let knows_replica = |port: u16| {
            sentinel_cli(port, &["SENTINEL", "REPLICAS", "mymaster"]).contains(&replica_port)
        };
        assert!(
            wait_until(Duration::from_secs(30), || group
                .sentinels
                .iter()
                .all(|(port, _)| knows_replica(*port))),
            "sentinels did not discover the replica"
        );
        group
    }

    pub fn sentinel_urls(&self) -> Vec<String> {
        self.sentinels
            .iter()
            .map(|(port, _)| format!("redis://127.0.0.1:{port}"))
            .collect()
    }

    /// Promotes the replica and waits until every sentinel names it.
    pub fn failover(&self) {
        let port = self.sentinels[0].0;
        let replica_port = self.replica.port().to_string();
        let names_replica = |port: u16| {
            sentinel_cli(port, &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", "mymaster"])
                .contains(&replica_port)
        };
        assert!(
            wait_until(Duration::from_secs(20), || {
                sentinel_cli(port, &["SENTINEL", "FAILOVER", "mymaster"]);
                wait_until(Duration::from_secs(3), || names_replica(port))
            }),
            "failover did not happen"
        );
        assert!(wait_until(Duration::from_secs(20), || self
            .sentinels
            .iter()
            .all(|(port, _)| names_replica(*port))));
        assert!(wait_until(Duration::from_secs(10), || self
            .replica
            .redis(&["ROLE"])
            .starts_with("master")));
    }
}

/// A replica of `primary`, once it has synced.
fn start_replica(primary: &RedisServer, extra: &[&str]) -> RedisServer {
    let primary_port = primary.port().to_string();
    let mut args = vec!["--replicaof", "127.0.0.1", primary_port.as_str()];
    args.extend_from_slice(extra);
    let replica = RedisServer::start_with(&args);
    assert!(
        wait_until(Duration::from_secs(10), || replica
            .redis(&["INFO", "replication"])
            .contains("master_link_status:up")),
        "replica did not sync"
    );
    replica
}

/// Sentinel number `index`, its config in `dir`, watching the primary on
/// `primary_port`; returns its port and process.
fn start_sentinel(dir: &tempfile::TempDir, index: usize, primary_port: u16) -> (u16, ChildGuard) {
    let port = free_port();
    let conf = dir.path().join(format!("sentinel-{index}.conf"));
    std::fs::write(
        &conf,
        format!(
            "port {port}\nbind 127.0.0.1\ndir {}\n\
             sentinel monitor mymaster 127.0.0.1 {primary_port} 2\n\
             sentinel down-after-milliseconds mymaster 1000\n\
             sentinel failover-timeout mymaster 5000\n",
            dir.path().display(),
        ),
    )
    .expect("sentinel config");
    let mut command = Command::new("redis-server");
    command
        .arg(&conf)
        .arg("--sentinel")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let process = ChildGuard::spawn(&mut command, "redis-server --sentinel");
    (port, process)
}

/// A sentinel's reply, empty when it does not answer.
fn sentinel_cli(port: u16, args: &[&str]) -> String {
    redis_cli(port, args).unwrap_or_default()
}

/// A Redis Cluster of three primaries with a replica each, made with
/// `redis-cli --cluster create`.
pub struct ClusterGroup {
    pub nodes: Vec<RedisServer>,
}

impl ClusterGroup {
    pub fn start() -> Self {
        let nodes: Vec<RedisServer> = (0..6)
            .map(|_| {
                RedisServer::start_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "2000",
                ])
            })
            .collect();
        let addresses: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            created.status.success(),
            "cluster create: {}",
            String::from_utf8_lossy(&created.stdout)
        );
        let group = Self { nodes };
        assert!(
            wait_until(Duration::from_secs(30), || group.nodes.iter().all(|n| n
                .redis(&["CLUSTER", "INFO"])
                .contains("cluster_state:ok"))),
            "cluster did not become ok"
        );
        group
    }

    pub fn seed_urls(&self) -> Vec<String> {
        self.nodes.iter().take(3).map(RedisServer::url).collect()
    }

    /// `redis-cli -c` against the cluster: follows redirects to the key's node.
    pub fn cli(&self, args: &[&str]) -> String {
        let output = Command::new("redis-cli")
            .args(["-c", "-p", &self.nodes[0].port().to_string(), "--raw"])
            .args(args)
            .output()
            .expect("redis-cli -c");
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// The node that serves `key` now.
    pub fn owner_of(&self, key: &str) -> &RedisServer {
        let slot: u16 = self
            .cli(&["CLUSTER", "KEYSLOT", key])
            .parse()
            .expect("slot");
        self.primaries()
            .find(|n| serves_slot(n, slot))
            .expect("a primary serves the slot")
    }

    /// FLUSHALL on every primary.
    pub fn flush_all(&self) {
        for node in self.primaries() {
            node.redis(&["FLUSHALL"]);
        }
    }

    /// Promotes the replica of the node serving `key` (CLUSTER FAILOVER).
    pub fn fail_over_owner_of(&self, key: &str) -> &RedisServer {
        let owner_id = self.owner_of(key).redis(&["CLUSTER", "MYID"]);
        let replica = self
            .nodes
            .iter()
            .find(|n| {
                n.redis(&["ROLE"]).starts_with("slave")
                    && n.redis(&["CLUSTER", "NODES"])
                        .lines()
                        .any(|l| l.contains("myself") && l.contains(&owner_id))
            })
            .expect("the owner has a replica");
        assert!(
            wait_until(Duration::from_secs(10), || replica
                .redis(&["INFO", "replication"])
                .contains("master_link_status:up")),
            "replica in sync"
        );
        replica.redis(&["CLUSTER", "FAILOVER"]);
        assert!(
            wait_until(Duration::from_secs(20), || replica
                .redis(&["ROLE"])
                .starts_with("master")),
            "replica promoted"
        );
        replica
    }

    /// The nodes that are primaries now.
    fn primaries(&self) -> impl Iterator<Item = &RedisServer> {
        self.nodes
            .iter()
            .filter(|n| n.redis(&["ROLE"]).starts_with("master"))
    }
}

/// Whether `node`'s own line of `CLUSTER NODES` lists a range holding `slot`.
fn serves_slot(node: &RedisServer, slot: u16) -> bool {
    let nodes = node.redis(&["CLUSTER", "NODES"]);
    let Some(own) = nodes.lines().find(|line| line.contains("myself")) else {
        return false;
    };
    own.split_whitespace().skip(8).any(|range| {
        let (lo, hi) = range.split_once('-').unwrap_or((range, range));
        matches!(
            (lo.parse::<u16>(), hi.parse::<u16>()),
            (Ok(lo), Ok(hi)) if lo <= slot && slot <= hi
        )
    })
}
