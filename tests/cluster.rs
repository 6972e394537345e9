//! Redis Cluster: a hash-tagged prefix keeps each queue on one slot; the
//! watcher subscribes on every primary and follows the topology.

mod support;

use std::time::Duration;

use serde_json::json;
use support::{node, ClusterGroup, RedisServer, Setup, Watcher, FAST_RECOVERY, TASKS_TABLE_SQLITE};

const SECOND: Duration = Duration::from_secs(1);
const REPEAT: &str = "{bull}:inspection:repeat";

fn setup(cluster: &ClusterGroup, any_node: &RedisServer) -> Setup {
    let seeds: Vec<String> = cluster
        .seed_urls()
        .iter()
        .map(|u| format!("\"{u}\""))
        .collect();
    let setup = Setup::new(
        any_node,
        &format!(
            "[redis]\nprefix = \"{{bull}}\"\ncluster_nodes = [{}]\n[source]\nurl = \"sqlite://{{dir}}/tasks.db\"\n\
             [watch]\ninfo_interval = \"200ms\"\ndrift_interval = \"2s\"\ndebounce_quiet = \"500ms\"\n\
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
