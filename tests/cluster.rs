//! Redis Cluster: a hash-tagged prefix keeps each queue on one slot; the
//! watcher subscribes on every primary and follows the topology.

mod support;

use std::time::Duration;

use serde_json::json;
use support::{node, ClusterGroup, RedisServer, Setup, Watcher, FAST_RECOVERY, TASKS_TABLE_SQLITE};

const SECOND: Duration = Duration::from_secs(1);
const REPEAT: &str = "{bull}:inspection:repeat";

fn setup(cluster: &ClusterGroup, any_node: &RedisServer) -> Setup {
    setup_with_drift(cluster, any_node, "2s")
}

fn setup_with_drift(cluster: &ClusterGroup, any_node: &RedisServer, drift: &str) -> Setup {
    let seeds: Vec<String> = cluster
        .seed_urls()
        .iter()
        .map(|u| format!("\"{u}\""))
        .collect();
    let setup = Setup::new(
        any_node,
        &format!(
            "[redis]\nprefix = \"{{bull}}\"\ncluster_nodes = [{}]\n[source]\nurl = \"sqlite://{{dir}}/tasks.db\"\n\
             [watch]\ninfo_interval = \"200ms\"\ndrift_interval = \"{drift}\"\ndebounce_quiet = \"500ms\"\n\
             [http]\nlisten = \"\"\n[recovery]\n{FAST_RECOVERY}",
            seeds.join(", ")
        ),
    );
    setup.sql(TASKS_TABLE_SQLITE);
    setup.sql(
        "INSERT INTO inspection_tasks (id, name, cron, every_ms, payload) VALUES
         (1, 'hourly', '0 * * * *', NULL, NULL), (2, 'tick', NULL, 1000, '{\"n\":1}')",
    );
    setup
}

fn node_cluster(cluster: &ClusterGroup, command: &str, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["--prefix", "{bull}", "--cluster"];
    all.extend_from_slice(args);
    node(6, command, &cluster.nodes[0], "inspection", &all, None)
}

#[test]
fn recover_on_a_cluster_writes_what_bullmq_reads_and_a_worker_runs_it() {
    let cluster = ClusterGroup::start();
    let setup = setup(&cluster, &cluster.nodes[0]);
    let (code, report) = setup.recover();
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["created"], 2);
    let schedulers = node_cluster(&cluster, "schedulers", &[]);
    assert_eq!(schedulers["count"], 2, "{schedulers}");
    let (_, again) = setup.recover();
    assert_eq!(again["unchanged"], 2, "{again}");
    let status = setup.warden(&["status", "--json"]).json();
    assert_eq!(status["queues"]["inspection"]["repeatable"], 2);
    let ran = node_cluster(
        &cluster,
        "worker",
        &[
            "--until-runs",
            "2",
            "--scheduler",
            "inspection:2",
            "--timeout-ms",
            "20000",
        ],
    );
    assert!(ran["runs"].as_u64().unwrap_or(0) >= 2, "{ran}");
    assert_eq!(ran["jobs"][0]["data"], json!({"n": 1}));
}

#[test]
fn the_watcher_restores_losses_on_a_cluster_and_follows_a_failover() {
    let cluster = ClusterGroup::start();
    let setup = setup(&cluster, &cluster.nodes[0]);
    let watcher = Watcher::start(&setup);
    assert!(
        watcher.wait_for("recovery_finished", 1, 15 * SECOND),
        "{}",
        watcher.log()
    );
    std::thread::sleep(Duration::from_millis(600));

    // A deletion on the primary serving the queue's slot arrives as a keyspace event.
    cluster.cli(&["DEL", REPEAT]);
    assert!(
        watcher.wait_for("recovery_finished", 2, 10 * SECOND),
        "{}",
        watcher.log()
    );
    assert!(watcher
        .events("detected")
        .iter()
        .any(|e| e["cause"] == "keyspace"));
    assert_eq!(cluster.cli(&["ZCARD", REPEAT]), "2");

    cluster.flush_all();
    assert!(
        watcher.wait_for("recovery_finished", 3, 10 * SECOND),
        "{}",
        watcher.log()
    );
    assert_eq!(cluster.cli(&["ZCARD", REPEAT]), "2");

    // After the slot's primary changes, deletions there are still seen.
    cluster.fail_over_owner_of(REPEAT);
    assert!(
        watcher.wait_for("keyspace_notifications", 2, 15 * SECOND),
        "re-subscribed: {}",
        watcher.log()
    );
    std::thread::sleep(SECOND);
    let before = watcher.count("recovery_finished");
    cluster.cli(&["DEL", REPEAT]);
    assert!(
        watcher.wait_for("recovery_finished", before + 1, 10 * SECOND),
        "{}",
        watcher.log()
    );
    assert_eq!(cluster.cli(&["ZCARD", REPEAT]), "2");
}

fn reconnects(watcher: &Watcher) -> usize {
    watcher
        .events("detected")
        .iter()
        .filter(|e| e["cause"] == "reconnect")
        .count()
}

/// A primary that restarts empty comes back while the other nodes still flag
/// it as failing; the watcher must subscribe there again as soon as the
/// cluster is whole, not at the next periodic listing (`drift_interval`).
#[test]
fn a_primary_that_restarts_empty_is_subscribed_again_within_seconds() {
    let mut cluster = ClusterGroup::start();
    // Periodic checks out of the way: only a subscription can see the ZREM below.
    let setup = setup_with_drift(&cluster, &cluster.nodes[0], "120s");
    let watcher = Watcher::start(&setup);
    assert!(
        watcher.wait_for("recovery_finished", 1, 15 * SECOND),
        "{}",
        watcher.log()
    );
    let owner = cluster.owner_of(REPEAT).port();
    let index = cluster
        .nodes
        .iter()
        .position(|n| n.port() == owner)
        .expect("the owner is one of the nodes");
    // Down for longer than cluster-node-timeout (2 s), so that the others
    // flag it as failed; its replica is told not to take over, so that it
    // comes back as the slot's primary, empty.
    for node in &cluster.nodes {
        node.redis(&["CONFIG", "SET", "cluster-replica-no-failover", "yes"]);
    }
    let reconnects_before = reconnects(&watcher);
    cluster.nodes[index].stop();
    assert!(
        support::wait_until(15 * SECOND, || cluster
            .nodes
            .iter()
            .filter(|n| n.port() != owner)
            .all(|n| n.redis(&["CLUSTER", "INFO"]).contains("cluster_state:fail"))),
        "the others flag the stopped primary as failed"
    );
    cluster.nodes[index].start_again();
    assert!(
        watcher.wait_for("recovery_finished", 2, 20 * SECOND),
        "restored after the restart: {}",
        watcher.log()
    );
    assert!(
        support::wait_until(20 * SECOND, || cluster
            .nodes
            .iter()
            .all(|n| n.redis(&["CLUSTER", "INFO"]).contains("cluster_state:ok"))),
        "the cluster is ok again"
    );
    let ok_at = std::time::Instant::now();
    // While the cluster was down the subscription was retried on a backoff,
    // not re-established over no server and counted as a reconnect each time
    // (that spin made about ten a second). A few are real: each time the
    // converging cluster changes its list of primaries the subscription is
    // made again, and the poll's own connection comes back once; on a loaded
    // machine the cluster takes longer to settle and changes it more often.
    let during_outage = reconnects(&watcher) - reconnects_before;
    assert!(
        during_outage <= 6,
        "{during_outage} reconnects while the primary was down: {}",
        watcher.log()
    );
    let restarted = &cluster.nodes[index];
    let subscribed = support::wait_until(10 * SECOND, || {
        restarted
            .redis(&["PUBSUB", "NUMPAT"])
            .parse::<u64>()
            .unwrap_or(0)
            > 0
    });
    let took = ok_at.elapsed();
    assert!(
        subscribed,
        "no keyspace subscription on the restarted primary 10 s after the cluster was ok: {}",
        watcher.log()
    );
    eprintln!("drill: subscribed again {took:?} after the cluster was ok");
    assert!(
        took <= 2 * SECOND,
        "subscribed {took:?} after the cluster was ok"
    );
    // And its events arrive: a member removed there (one the poll cannot
    // see, the set is not emptied) is a keyspace detection.
    let before = watcher.count("detected");
    cluster.cli(&["ZADD", REPEAT, "1", "drill:extra"]);
    cluster.cli(&["ZREM", REPEAT, "drill:extra"]);
    assert!(
        support::wait_until(5 * SECOND, || watcher
            .events("detected")
            .iter()
            .skip(before)
            .any(|e| e["cause"] == "keyspace")),
        "{}",
        watcher.log()
    );
}

#[test]
fn a_cluster_prefix_without_a_hash_tag_is_refused() {
    let redis = RedisServer::start();
    let setup = Setup::new(
        &redis,
        "[redis]\ncluster_nodes = [\"{redis}\"]\n[source]\nurl = \"sqlite://{dir}/t.db\"\n",
    );
    let run = setup.warden(&["status"]);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("redis.prefix"), "{}", run.stderr);
}
