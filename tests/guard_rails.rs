//! Guard rails against careless and hostile input: tokens that would switch
//! authentication off, secrets that would leak into errors, a webhook that
//! would follow a redirect elsewhere, a source query that would write, rows
//! too large to hold, and values that would steer a terminal or forge a log line.

mod support;

use std::io::Read;
use std::net::TcpListener;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use support::{RedisServer, Setup, Watcher, FAST_RECOVERY, FAST_WATCH, TASKS_TABLE_SQLITE};

const SECOND: Duration = Duration::from_secs(1);
const TOKEN_ENV: &str = "BULLMQ_WARDEN_API_TOKEN";

/// `watch` until it exits or `limit` passes; `None` when it was still serving.
fn watch_exit(setup: &Setup, env: &[(&str, &str)], limit: Duration) -> (Option<i32>, String) {
    let mut child = support::warden_command(&setup.config_path)
        .arg("watch")
        .env_remove(TOKEN_ENV)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start bullmq-warden watch");
    let started = Instant::now();
    let code = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break status.code();
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(25));
    };
    let mut stderr = String::new();
    let _ = child
        .stderr
        .take()
        .map(|mut e| e.read_to_string(&mut stderr));
    (code, stderr)
}

/// Fast watch settings with the API on `addr`; `[http]` comes last, so more
/// `[http]` keys can follow.
fn listen_on(addr: &str) -> String {
    FAST_WATCH.replace("listen = \"\"", &format!("listen = \"{addr}\""))
}

#[test]
fn an_empty_api_token_is_a_configuration_error_wherever_it_comes_from() {
    let redis = RedisServer::start();
    let setup = Setup::sqlite(&redis, &listen_on("127.0.0.1:0"));
    setup.sql(TASKS_TABLE_SQLITE);
    let token_file = setup.dir.path().join("api-token");
    std::fs::write(&token_file, " \n\t\n").unwrap();
    let from_file = Setup::sqlite(
        &redis,
        &format!(
            "{}token_file = \"{}\"\n",
            listen_on("0.0.0.0:0"),
            token_file.display()
        ),
    );
    let (code, stderr) = watch_exit(&from_file, &[], 5 * SECOND);
    assert_eq!(
        code,
        Some(2),
        "an empty token_file must not open the API: {stderr}"
    );
    assert!(stderr.contains("http.token_file"), "{stderr}");
    assert!(stderr.contains("empty"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");

    let (code, stderr) = watch_exit(&setup, &[(TOKEN_ENV, "   ")], 5 * SECOND);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains(TOKEN_ENV), "{stderr}");
}

#[test]
fn an_empty_webhook_token_is_a_configuration_error() {
    let redis = RedisServer::start();
    let setup = webhook_setup(&redis, "http://127.0.0.1:9/api/bullmq/recover");
    let (code, stderr) = watch_exit(
        &setup,
        &[("BULLMQ_WARDEN_WEBHOOK_TOKEN", " \n")],
        5 * SECOND,
    );
    assert_eq!(
        code,
        Some(2),
        "a blank webhook token must not start: {stderr}"
    );
    assert!(stderr.contains("BULLMQ_WARDEN_WEBHOOK_TOKEN"), "{stderr}");
    assert!(stderr.contains("empty"), "{stderr}");
}

#[test]
fn a_placeholder_token_is_refused_on_an_address_other_hosts_reach() {
    let redis = RedisServer::start();
    let setup = Setup::sqlite(&redis, &listen_on("0.0.0.0:0"));
    setup.sql(TASKS_TABLE_SQLITE);
    for (token, why) in [
        ("CHANGE-ME-openssl-rand-hex-32", "placeholder"),
        ("change-me-please-a-long-one", "placeholder"),
        ("short-token", "too short"),
    ] {
        let (code, stderr) = watch_exit(&setup, &[(TOKEN_ENV, token)], 5 * SECOND);
        assert_eq!(code, Some(2), "{token}: {stderr}");
        assert!(stderr.contains(why), "{token}: {stderr}");
        assert!(
            !stderr.contains(token),
            "the token is never shown: {stderr}"
        );
    }
    // On loopback only this host can call the API: a short token is the
    // operator's choice there.
    let local = Setup::sqlite(&redis, &listen_on("127.0.0.1:0"));
    let (code, stderr) = watch_exit(&local, &[(TOKEN_ENV, "dev")], 2 * SECOND);
    assert_eq!(
        code, None,
        "a loopback API with a short token serves: {stderr}"
    );
}

#[test]
fn the_shipped_compose_token_does_not_work() {
    let compose = std::fs::read_to_string(support::repo_path("deploy/compose/compose.yaml"))
        .expect("compose file");
    let default = compose
        .lines()
        .find_map(|line| {
            line.trim()
                .strip_prefix("BULLMQ_WARDEN_API_TOKEN: ${BULLMQ_WARDEN_API_TOKEN:-")
                .and_then(|rest| rest.strip_suffix('}'))
        })
        .expect("compose.yaml sets BULLMQ_WARDEN_API_TOKEN with a default");
    let redis = RedisServer::start();
    let setup = Setup::sqlite(&redis, &listen_on("0.0.0.0:0"));
    setup.sql(TASKS_TABLE_SQLITE);
    let (code, stderr) = watch_exit(&setup, &[(TOKEN_ENV, default)], 5 * SECOND);
    assert_eq!(
        code,
        Some(2),
        "compose's default token {default:?} must be refused: {stderr}"
    );
}

#[test]
fn a_toml_error_never_quotes_a_line_that_may_hold_a_password() {
    let redis = RedisServer::start();
    let setup = Setup::new(
        &redis,
        "[redis]\nurl = \"redis://app:hunter2@127.0.0.1:6379/0\n[source]\nurl = \"sqlite://x.db\"\n",
    );
    let run = setup.warden(&["status"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(!run.stderr.contains("hunter2"), "{}", run.stderr);
    assert!(run.stderr.contains("warden.toml: line 2"), "{}", run.stderr);
    assert_eq!(run.stderr.trim().lines().count(), 1, "{}", run.stderr);
}

#[test]
fn secrets_in_query_strings_are_masked_in_errors() {
    let redis = RedisServer::start();
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let setup = Setup::new(
        &redis,
        &format!(
            "[redis]\nurl = \"{{redis}}\"\n[source]\n\
             url = \"postgres://warden@127.0.0.1:{closed}/tasks?password=hunter2&sslpassword=hunter3\"\n"
        ),
    );
    let run = setup.warden(&["status"]);
    assert_eq!(run.code, 6, "{}", run.stderr);
    assert!(!run.stderr.contains("hunter"), "{}", run.stderr);
    assert!(run.stderr.contains("password=***"), "{}", run.stderr);
}

/// An HTTP endpoint that answers every request with `answer` and sends each
/// request's head to the returned channel.
fn http_endpoint(answer: String) -> (u16, mpsc::Receiver<String>) {
    let (heads, received) = mpsc::channel();
    let addr = support::http_endpoint(move |head, _body| {
        let _ = heads.send(head);
        answer.clone()
    });
    (addr.port(), received)
}

fn webhook_setup(redis: &RedisServer, url: &str) -> Setup {
    let setup = Setup::sqlite(
        redis,
        &format!(
            "{FAST_WATCH}[recovery]\n{FAST_RECOVERY}strategy = \"webhook\"\nwebhook_url = \"{url}\"\n\
             webhook_headers = {{ \"X-Api-Key\" = \"k-123\" }}\n"
        ),
    );
    setup.sql(TASKS_TABLE_SQLITE);
    setup.sql("INSERT INTO inspection_tasks (id, name, cron) VALUES (1, 'a', '0 * * * *')");
    setup
}

#[test]
fn the_webhook_follows_no_redirect_to_another_address() {
    let (elsewhere, stolen) =
        http_endpoint("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}".to_owned());
    let (app, asked) = http_endpoint(format!(
        "HTTP/1.1 307 Temporary Redirect\r\nlocation: http://127.0.0.1:{elsewhere}/steal\r\n\
         content-length: 0\r\nconnection: close\r\n\r\n"
    ));
    let redis = RedisServer::start();
    let setup = webhook_setup(
        &redis,
        &format!("http://127.0.0.1:{app}/api/bullmq/recover"),
    );
    let watcher = Watcher::start_env(&setup, &[("BULLMQ_WARDEN_WEBHOOK_TOKEN", "hook-secret")]);
    assert!(
        watcher.wait_for("recovery_failed", 1, 15 * SECOND),
        "{}",
        watcher.log()
    );
    assert!(
        asked.recv_timeout(SECOND).is_ok(),
        "the application was asked"
    );
    let failed = watcher.events("recovery_failed")[0].to_string();
    assert!(failed.contains("redirects are not followed"), "{failed}");
    if let Ok(head) = stolen.recv_timeout(SECOND) {
        panic!("the webhook followed a redirect to another address:\n{head}");
    }
}

#[test]
fn a_webhook_failure_names_its_cause_and_masks_the_url_key() {
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let redis = RedisServer::start();
    let setup = webhook_setup(
        &redis,
        &format!("http://127.0.0.1:{closed}/api/bullmq/recover?key=k-secret"),
    );
    let watcher = Watcher::start(&setup);
    assert!(
        watcher.wait_for("recovery_failed", 1, 15 * SECOND),
        "{}",
        watcher.log()
    );
    let failed = watcher.events("recovery_failed")[0].to_string();
    assert!(
        failed.to_ascii_lowercase().contains("connection refused"),
        "{failed}"
    );
    assert!(!watcher.log().contains("k-secret"), "{}", watcher.log());
    assert!(failed.contains("key=***"), "{failed}");
}

#[test]
fn a_source_query_of_several_statements_is_refused_and_writes_nothing() {
    let redis = RedisServer::start();
    let setup = Setup::sqlite(
        &redis,
        "query = \"PRAGMA query_only = OFF; DELETE FROM inspection_tasks; \
         SELECT id, name, cron FROM inspection_tasks\"\n",
    );
    setup.sql(TASKS_TABLE_SQLITE);
    setup.sql("INSERT INTO inspection_tasks (id, name, cron) VALUES (1, 'a', '0 * * * *')");
    let run = setup.warden(&["recover"]);
    assert_eq!(run.code, 2, "{}{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("source.query"), "{}", run.stderr);
    let count = Setup::sqlite(&redis, "query = \"SELECT count(*) AS id, 'x' AS name, '0 * * * *' AS cron FROM inspection_tasks\"\n");
    std::fs::copy(
        setup.dir.path().join("tasks.db"),
        count.dir.path().join("tasks.db"),
    )
    .unwrap();
    let run = count.warden(&["recover", "--dry-run", "--json", "--changes"]);
    assert_eq!(
        run.json()["changes"][0]["rowId"],
        "1",
        "the row is still there"
    );
}

#[test]
fn a_row_over_the_size_cap_is_skipped_and_the_others_restored() {
    let redis = RedisServer::start();
    let setup = Setup::sqlite(&redis, "");
    setup.sql(TASKS_TABLE_SQLITE);
    let big = "x".repeat(2 * 1024 * 1024);
    setup.sql(&format!(
        "INSERT INTO inspection_tasks (id, name, cron, payload) VALUES \
         (1, 'big', '0 * * * *', '\"{big}\"'), (2, 'small', '0 * * * *', '{{}}')"
    ));
    let run = setup.warden(&["recover", "--json"]);
    assert_eq!(run.code, 3, "{}", run.stderr);
    let report = run.json();
    assert_eq!(report["created"], 1, "{report}");
    assert_eq!(report["invalid"][0]["id"], "1", "{report}");
    let reason = report["invalid"][0]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("source.max_value_bytes"), "{reason}");
    assert!(reason.len() < 200, "the reason does not quote the value");

    let raised = [("BULLMQ_WARDEN__SOURCE__MAX_VALUE_BYTES", "4194304")];
    let run = setup.warden_env(&["recover", "--json"], &raised);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.json()["created"], 1);
}

#[test]
fn row_values_cannot_steer_the_terminal_or_forge_output_lines() {
    let redis = RedisServer::start();
    let setup = Setup::sqlite(&redis, "query = \"SELECT id, name, cron FROM labelled\"\n");
    setup.sql("CREATE TABLE labelled (id TEXT, name TEXT, cron TEXT)");
    setup.sql(
        "INSERT INTO labelled (id, name, cron) VALUES \
         ('x' || char(10) || 'created       forged' || char(27) || '[2J', 'a', '0 * * * *'), \
         ('y' || char(13), 'b', 'not a cron')",
    );
    let run = setup.warden(&["recover", "--changes"]);
    assert_eq!(run.code, 3, "{}{}", run.stdout, run.stderr);
    assert!(!run.stdout.contains('\x1b'), "{:?}", run.stdout);
    assert!(!run.stdout.contains('\r'), "{:?}", run.stdout);
    assert!(
        !run.stdout
            .lines()
            .any(|l| l.starts_with("created       forged")),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("x\\ncreated"), "{}", run.stdout);
}

#[test]
fn a_queue_name_cannot_forge_a_plain_log_line() {
    let redis = RedisServer::start();
    let setup = Setup::sqlite(&redis, FAST_WATCH);
    setup.sql(TASKS_TABLE_SQLITE);
    setup.sql(
        "INSERT INTO inspection_tasks (id, name, cron, queue) VALUES \
         (1, 'a', '0 * * * *', 'evil' || char(10) || 'FORGED line')",
    );
    let log = setup.dir.path().join("watch.log");
    let mut child = support::warden_command(&setup.config_path)
        .args(["--log-format", "plain", "watch"])
        .env("RUST_LOG", "info")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let key = "bull:evil\nFORGED line:repeat";
    let restored = support::wait_until(10 * SECOND, || redis.zcard(key) == 1);
    redis.redis(&["DEL", key]);
    let detected = support::wait_until(10 * SECOND, || {
        std::fs::read_to_string(&log).is_ok_and(|text| text.contains("evil\\nFORGED"))
    });
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(restored && detected, "{text}");
    assert!(
        !text.lines().any(|line| line.starts_with("FORGED")),
        "a value started a log line of its own:\n{text}"
    );
}
