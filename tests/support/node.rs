//! Node BullMQ: the pinned BullMQ 5 and 6 packages under `tests/node`, driven
//! through `tests/node/bullmq-driver.mjs`, one command per run.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::{json, Value};

use super::redis_server::RedisServer;
use super::tools::repo_path;

/// The driver script.
pub fn node_driver() -> PathBuf {
    repo_path("tests/node/bullmq-driver.mjs")
}

/// Whether `npm ci --prefix tests/node` has installed the pinned packages.
pub fn node_packages_installed() -> bool {
    repo_path("tests/node/node_modules/bullmq6").exists()
}

/// Runs a command of the Node BullMQ driver and returns the JSON it printed.
pub fn node(
    major: u8,
    command: &str,
    redis: &RedisServer,
    queue: &str,
    args: &[&str],
    stdin: Option<&Value>,
) -> Value {
    assert!(
        node_packages_installed(),
        "Node packages missing: run `npm ci --prefix tests/node` (scripts/test does)"
    );
    let mut child = Command::new("node")
        .arg(node_driver())
        .arg(command)
        .args(["--major", &major.to_string(), "--redis", &redis.url()])
        .args(["--queue", queue])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node must be installed");
    {
        let mut pipe = child.stdin.take().expect("stdin");
        if let Some(input) = stdin {
            pipe.write_all(input.to_string().as_bytes())
                .expect("write stdin");
        }
    }
    let output = child.wait_with_output().expect("node output");
    assert!(
        output.status.success(),
        "node driver {command} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "node driver {command} printed no JSON ({e}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

/// The `schedulers` of a driver's `getJobSchedulers()` answer, sorted by key,
/// each without the fields `volatile` picks for it (fields that legitimately
/// differ between two creations, such as the iteration count).
pub fn comparable_schedulers(
    listed: &Value,
    volatile: impl Fn(&Value) -> &'static [&'static str],
) -> Vec<Value> {
    let mut entries: Vec<Value> = listed["schedulers"]
        .as_array()
        .expect("schedulers array")
        .iter()
        .map(|s| {
            let drop = volatile(s);
            let mut s = s.clone();
            let object = s.as_object_mut().expect("scheduler object");
            for field in drop {
                object.remove(*field);
            }
            s
        })
        .collect();
    entries.sort_by_key(|s| s["key"].as_str().unwrap_or_default().to_owned());
    entries
}

/// 2030-01-01 and 2040-01-01 (UTC).
pub const START_2030: u64 = 1_893_456_000_000;
pub const END_2040: u64 = 2_208_988_800_000;

/// What an application defines in code at start-up: cron with and
/// without a time zone, six fields, every, limit, start and
/// end dates, non-ASCII data with quotes and backslashes, job options.
pub fn app_schedulers() -> Value {
    json!([
        {"id": "nightly", "name": "backup", "repeat": {"pattern": "0 3 * * *"},
         "data": {"target": "s3://bucket/path", "quote": "it's \"quoted\"", "dir": "C:\\tmp\\n"}},
        {"id": "berlin", "name": "report", "repeat": {"pattern": "0 7 * * MON", "tz": "Europe/Berlin"},
         "data": {"城市": "上海", "note": "naïve ✓"}},
        {"id": "seconds", "name": "tick", "repeat": {"pattern": "30 15 4 * * *"}},
        {"id": "beat", "name": "beat", "repeat": {"every": 600000}, "data": {"beat": true}},
        {"id": "limited", "name": "limited", "repeat": {"pattern": "0 0 1 * *", "limit": 12},
         "opts": {"priority": 3}},
        {"id": "later", "name": "later",
         "repeat": {"pattern": "15 10 * * *", "tz": "UTC", "startDate": START_2030, "endDate": END_2040}},
        {"id": "retrying", "name": "retrying", "repeat": {"pattern": "0 0 * * SUN"},
         "opts": {"attempts": 5, "backoff": {"type": "exponential", "delay": 2000},
                  "removeOnComplete": 100, "removeOnFail": {"age": 86400}}}
    ])
}
