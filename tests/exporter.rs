//! What every Prometheus exporter serves: the standard process metrics and a
//! build_info that names the version and the git revision.

mod support;

#[path = "../build/revision.rs"]
mod revision;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use support::{http, RedisServer, Setup, Watcher, TASKS_TABLE_SQLITE};

/// The value of the series that starts with `series ` in a metrics text.
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no series {series} in:\n{text}"))
}

fn metrics_of_a_running_watcher() -> String {
    let redis = RedisServer::start();
    let addr = support::free_local_addr();
    let setup = Setup::sqlite(&redis, &format!("[http]\nlisten = \"{addr}\"\n"));
    setup.sql(TASKS_TABLE_SQLITE);
    let watcher = Watcher::start(&setup);
    let url = format!("http://{addr}/metrics");
    let mut text = String::new();
    assert!(
        support::wait_until(Duration::from_secs(10), || {
            text = http("GET", &url, &[]).1;
            text.contains("bullmq_warden_redis_up 1")
        }),
        "{}",
        watcher.log()
    );
    text
}

#[test]
fn metrics_carry_process_figures_and_the_build_revision() {
    let text = metrics_of_a_running_watcher();
    let resident = value(&text, "process_resident_memory_bytes");
    assert!((1e6..1e9).contains(&resident), "resident {resident}");
    assert!(value(&text, "process_virtual_memory_bytes") >= resident);
    let cpu = value(&text, "process_cpu_seconds_total");
    assert!((0.0..600.0).contains(&cpu), "cpu {cpu}");
    assert!(
        text.contains("# TYPE process_cpu_seconds_total counter"),
        "{text}"
    );
    let open = value(&text, "process_open_fds");
    let max = value(&text, "process_max_fds");
    assert!(open >= 4.0 && open < max, "open {open}, max {max}");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let started = value(&text, "process_start_time_seconds");
    assert!(
        started <= now + 1.0 && started > now - 120.0,
        "started {started}, now {now}"
    );

    let head = revision::git(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")),
        &["rev-parse", "HEAD"],
    )
    .expect("the tests run in a git checkout");
    let expected = format!(
        "bullmq_warden_build_info{{version=\"{}\",revision=\"{head}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    assert!(text.contains(&expected), "{expected} in:\n{text}");
}

#[test]
fn the_revision_comes_from_the_variable_then_git_then_unknown() {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    assert_eq!(revision::revision(Some(" 0123abc\n"), repo), "0123abc");
    let head = revision::revision(None, repo);
    assert_eq!(head.len(), 40, "{head}");
    assert!(head.bytes().all(|b| b.is_ascii_hexdigit()), "{head}");
    assert_eq!(
        revision::revision(Some(""), repo),
        head,
        "empty counts as unset"
    );
    let outside = tempfile::tempdir().unwrap();
    assert_eq!(revision::revision(None, outside.path()), "unknown");
}
