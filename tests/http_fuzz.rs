//! Schemathesis, a schema-driven HTTP fuzzer, against the real `watch` server:
//! it reads the served OpenAPI document, sends requests generated from it
//! (valid ones and malformed ones, with and without the token) and checks
//! that no answer is a 5xx and every answer is one the document describes.

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use support::{http, RedisServer, Setup, Watcher, FAST_RECOVERY, TASKS_TABLE_SQLITE};

const TOKEN: &str = "fuzzing-token-0123456789";

/// The virtualenv scripts/ensure-services fills from tests/fuzz/requirements.txt.
fn schemathesis() -> PathBuf {
    let tools = std::env::var_os("BULLMQ_WARDEN_TOOLS")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("bullmq-warden"))
        })
        .or_else(|| std::env::var_os("HOME").map(|d| PathBuf::from(d).join(".cache/bullmq-warden")))
        .expect("HOME is set");
    let venv = tools.join("schemathesis");
    let wanted = std::fs::read_to_string(support::repo_path("tests/fuzz/requirements.txt"))
        .expect("tests/fuzz/requirements.txt");
    let installed =
        std::fs::read_to_string(venv.join("installed-requirements.txt")).unwrap_or_default();
    assert!(
        wanted == installed,
        "schemathesis is not installed at {} with the pins of tests/fuzz/requirements.txt: \
         run scripts/ensure-services",
        venv.display()
    );
    venv.join("bin/schemathesis")
}

#[test]
fn the_api_answers_every_generated_request_as_its_schema_says() {
    let schemathesis = schemathesis();
    let redis = RedisServer::start();
    let addr = support::free_local_addr();
    let setup = Setup::sqlite(
        &redis,
        &format!("{}{FAST_RECOVERY}", support::fast_watch_with_api(&addr)),
    );
    setup.sql(TASKS_TABLE_SQLITE);
    // A valid row, one in another queue, and an invalid one: every part of
    // the answers has something in it.
    setup.sql(
        "INSERT INTO inspection_tasks (id, name, cron, every_ms, queue) VALUES
         (1, 'a', '0 * * * *', NULL, NULL), (2, 'b', NULL, 60000, 'mail'),
         (3, 'c', 'not a cron', NULL, NULL);",
    );
    let watcher = Watcher::start_env(&setup, &[("BULLMQ_WARDEN_API_TOKEN", TOKEN)]);
    let base = format!("http://{addr}");
    let authorization = format!("Bearer {TOKEN}");
    assert!(
        support::wait_until(Duration::from_secs(15), || http(
            "GET",
            &format!("{base}/api/bullmq/status"),
            &[("Authorization", &authorization)]
        )
        .0 == 200),
        "{}",
        watcher.log()
    );
    let report = setup.dir.path().join("schemathesis.json");
    let run = Command::new(&schemathesis)
        .arg("run")
        .arg(format!("{base}/api/bullmq/openapi.json"))
        .args(["--url", &base])
        .args(["--header", &format!("Authorization: {authorization}")])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,\
             response_headers_conformance,response_schema_conformance,ignored_auth",
        ])
        .args(["--phases", "examples,coverage,fuzzing"])
        .args(["--max-examples", "300"])
        .args(["--request-timeout", "10"])
        .args(["--report", "json", "--report-json-path"])
        .arg(&report)
        .env("NO_COLOR", "1")
        // Its cache and reports stay out of the repository.
        .current_dir(setup.dir.path())
        .output()
        .expect("run schemathesis");
    let output = support::text_of(&run);
    println!("{output}");
    assert!(
        run.status.success(),
        "schemathesis found failures:\n{output}\nwatcher log:\n{}",
        watcher.log()
    );
}
