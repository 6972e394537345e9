//! End to end with the real monitoring stack: a private `redis-server`, the
//! `bullmq-warden watch` sidecar, Prometheus (`/usr/bin/prometheus`, Debian
//! package `prometheus`) scraping it and evaluating the shipped alert rules,
//! and Alertmanager (`/usr/bin/prometheus-alertmanager`, Debian package
//! `prometheus-alertmanager`) running the shipped example configuration and
//! notifying a webhook receiver inside this test. `scripts/ensure-services`
//! installs both packages; a missing binary fails the test, it is never skipped.
//!
//! What is copied, and how it differs from the shipped files:
//! * every `alerts/*.rules.yml`, with each `for:` rewritten to a second so the
//!   test runs in seconds (every other line is kept as is);
//! * `alerts/alertmanager.example.yml`, with `group_wait` / `group_interval` set
//!   to one second and its webhook URLs pointed at the test's receiver (routing,
//!   grouping and inhibition are the example's own).
//!
//! The scenario:
//! 1. rows in SQLite (cron, every-second cron, `every_ms`, two queues);
//!    `bullmq-warden recover` puts their schedulers in Redis;
//! 2. a watcher with `[recovery] auto = false` is scraped; the loss alert stays
//!    quiet while Redis holds the schedulers;
//! 3. `FLUSHALL`: `BullMQSchedulesLost` fires in Prometheus, Alertmanager pages
//!    the webhook's critical receiver, and inhibits `BullMQSchedulersMissing`;
//! 4. the watcher is replaced, on the same address, by one with automatic
//!    recovery and `catchup = "fire_once"`: it restores at start-up, a second
//!    `FLUSHALL` is restored with a catch-up job, and the page resolves. This
//!    phase exists so that the metrics that only appear after a recovery
//!    (`bullmq_warden_schedulers_restored_total`, `bullmq_warden_catchup_jobs_total`)
//!    have series: the CLI's `recover` does not touch the watcher's metrics;
//! 5. every PromQL expression of `dashboards/*.json` (panel targets,
//!    annotations, `label_values` variables; Grafana variables substituted) and
//!    of the loaded alert rules evaluates without error, and every series
//!    selector in them (metric name with its label matchers) returns series.
//!    The expressions are read from the files, so a renamed metric or label
//!    value fails here.
//!
//! A second test posts alerts of two Redis servers with a queue of the same
//! name straight to Alertmanager (example configuration) and checks that one
//! Redis's loss alert inhibits only that Redis's drift alert.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{
    free_local_addr, repo_path, RedisServer, Setup, Watcher, FAST_RECOVERY, TASKS_TABLE_SQLITE,
};

const SECOND: Duration = Duration::from_secs(1);
/// What every `for:` of the alert rules becomes.
const SHORT_FOR: &str = "1s";
/// What `group_wait` and `group_interval` of the Alertmanager example become.
const SHORT_GROUPING: &str = "1s";
/// The scrape job; the rules expect its name to contain "bullmq-warden".
const JOB: &str = "bullmq-warden";
const LOST: &str = "BullMQSchedulesLost";
const MISSING: &str = "BullMQSchedulersMissing";
/// The queues the rows below name (the default queue and `reports`).
const QUEUES: [&str; 2] = ["inspection", "reports"];

/// Watch settings that react in test time. Phase 2 waits longer for quiet
/// after a signal, so that an outage the watcher judges after the window
/// spans a whole second and the every-second cron row misses a run (which
/// `fire_once` catches up).
fn watch_toml(debounce_quiet: &str, listen: &str) -> String {
    format!(
        "[watch]\ninfo_interval = \"200ms\"\ndrift_interval = \"2s\"\n\
         debounce_quiet = \"{debounce_quiet}\"\ndebounce_max = \"4s\"\n\
         [http]\nlisten = \"{listen}\"\n"
    )
}

// ---------------------------------------------------------------------------
// Small HTTP client with timeouts (`support::http` has none, and every wait
// here must be bounded). HTTP/1.0: no chunking, the server closes the connection.

/// GET `target` (path and query) from `addr`; the status and the body.
fn http_get(addr: &str, target: &str) -> Result<(u16, String), String> {
    http_request(addr, "GET", target, None)
}

/// One request to `addr`, with a JSON body if given; the status and the body.
fn http_request(
    addr: &str,
    method: &str,
    target: &str,
    json: Option<&str>,
) -> Result<(u16, String), String> {
    let socket: std::net::SocketAddr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
    let mut stream = TcpStream::connect_timeout(&socket, 2 * SECOND)
        .map_err(|e| format!("connect {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(10 * SECOND))
        .and_then(|()| stream.set_write_timeout(Some(2 * SECOND)))
        .map_err(|e| e.to_string())?;
    let body = json.unwrap_or_default();
    let content = if json.is_some() {
        format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        )
    } else {
        String::new()
    };
    write!(
        stream,
        "{method} {target} HTTP/1.0\r\nHost: {addr}\r\n{content}\r\n{body}"
    )
    .map_err(|e| format!("send to {addr}: {e}"))?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .map_err(|e| format!("read from {addr}{target}: {e}"))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("{addr}{target}: no HTTP response: {text:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("{addr}{target}: bad status line in {head:?}"))?;
    Ok((status, body.to_owned()))
}

fn get_json(addr: &str, path: &str, params: &[(&str, &str)]) -> Value {
    let query = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params)
        .finish();
    let target = if query.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{query}")
    };
    let (status, body) = http_get(addr, &target).unwrap_or_else(|e| panic!("{e}"));
    serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("GET {addr}{target}: HTTP {status}, not JSON ({e}): {body}"))
}

/// Polls `check` every 200 ms until it gives a value; panics with `what` and
/// the last observation after `timeout`.
fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match check() {
            Ok(value) => return value,
            Err(last) if Instant::now() >= deadline => {
                panic!("timed out after {timeout:?} waiting for {what}; last seen: {last}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

// ---------------------------------------------------------------------------
// Child processes: killed on drop (also when a test panics), logs kept

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Prometheus or Alertmanager on a free port of 127.0.0.1, its output in a file.
struct Daemon {
    name: &'static str,
    child: Child,
    addr: String,
    log: PathBuf,
}

impl Daemon {
    /// Starts `program` with the arguments `args(listen_address)` and waits
    /// for `/-/ready`. A port taken between picking and binding is retried.
    fn start(
        name: &'static str,
        program: &str,
        package: &str,
        dir: &Path,
        args: impl Fn(&str) -> Vec<String>,
    ) -> Self {
        for attempt in 1..=3 {
            let addr = free_local_addr();
            let log = dir.join(format!("{name}-{attempt}.log"));
            let out = File::create(&log).expect("log file");
            let err = out.try_clone().expect("log file");
            let child = Command::new(program)
                .args(args(&addr))
                .stdin(Stdio::null())
                .stdout(Stdio::from(out))
                .stderr(Stdio::from(err))
                .spawn()
                .unwrap_or_else(|e| {
                    panic!(
                        "cannot run {program} ({e}): install the Debian package `{package}` \
                         (apt-get install {package}), or run scripts/ensure-services"
                    )
                });
            let mut daemon = Daemon {
                name,
                child,
                addr,
                log,
            };
            let deadline = Instant::now() + 20 * SECOND;
            loop {
                if matches!(http_get(&daemon.addr, "/-/ready"), Ok((200, _))) {
                    return daemon;
                }
                if let Ok(Some(status)) = daemon.child.try_wait() {
                    eprintln!(
                        "{name} exited ({status}) on attempt {attempt}:\n{}",
                        tail(&daemon.log_text(), 20)
                    );
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{name} not ready after 20s:\n{}",
                    tail(&daemon.log_text(), 40)
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        panic!("{name} did not start (see its log above)");
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- {} log ({}) ---\n{}",
                self.name,
                self.log.display(),
                tail(&self.log_text(), 60)
            );
        }
    }
}

/// A watcher whose log is printed when the test fails.
struct LoggedWatcher {
    name: &'static str,
    watcher: Watcher,
}

impl LoggedWatcher {
    fn start(name: &'static str, setup: &Setup) -> Self {
        let watcher = Watcher::start(setup);
        assert!(
            watcher.wait_for("http_listening", 1, 15 * SECOND),
            "{name} does not serve HTTP:\n{}",
            tail(&watcher.log(), 40)
        );
        Self { name, watcher }
    }
}

impl Drop for LoggedWatcher {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- {} log ---\n{}",
                self.name,
                tail(&self.watcher.log(), 60)
            );
        }
        // The inner Watcher kills the process when it is dropped right after.
    }
}

// ---------------------------------------------------------------------------
// The webhook receiver Alertmanager notifies

#[derive(Debug, Clone)]
struct Post {
    path: String,
    body: String,
}

impl Post {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    /// Queues of the notification's alerts named `alertname` in `status`.
    fn queues_with(&self, alertname: &str, status: &str) -> BTreeSet<String> {
        let json = self.json();
        json["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| a["labels"]["alertname"] == alertname && a["status"] == status)
            .map(|a| a["labels"]["queue"].as_str().unwrap_or_default().to_owned())
            .collect()
    }
}

/// Records every POST and answers 200; stops accepting on drop.
struct WebhookReceiver {
    port: u16,
    posts: Arc<Mutex<Vec<Post>>>,
    stop: Arc<AtomicBool>,
}

impl WebhookReceiver {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the webhook receiver");
        let port = listener.local_addr().expect("local address").port();
        let posts = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (sink, stopped) = (posts.clone(), stop.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                let sink = sink.clone();
                std::thread::spawn(move || {
                    if let Some(post) = Self::answer(stream) {
                        sink.lock().expect("posts").push(post);
                    }
                });
            }
        });
        Self { port, posts, stop }
    }

    fn answer(mut stream: TcpStream) -> Option<Post> {
        stream.set_read_timeout(Some(5 * SECOND)).ok()?;
        let mut reader = BufReader::new(stream.try_clone().ok()?);
        let mut request_line = String::new();
        reader.read_line(&mut request_line).ok()?;
        let mut words = request_line.split_whitespace();
        let method = words.next()?.to_owned();
        let path = words.next()?.to_owned();
        let mut length = 0;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).ok()?;
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((key, value)) = line.split_once(':') {
                if key.trim().eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().ok()?;
                }
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).ok()?;
        stream
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .ok()?;
        (method == "POST").then(|| Post {
            path,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }

    fn posts(&self) -> Vec<Post> {
        self.posts.lock().expect("posts").clone()
    }

    fn summary(&self) -> String {
        self.posts()
            .iter()
            .map(|p| format!("{} {}", p.path, p.body))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- webhook posts ---\n{}", self.summary());
        }
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so that it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

// ---------------------------------------------------------------------------
// The shipped files, adapted for the test

/// The rule file with every `for:` set to `SHORT_FOR`, line by line; the
/// number of lines rewritten.
fn rules_with_short_for(text: &str) -> (String, usize) {
    let mut rewritten = 0;
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("for:") {
            let indent = &line[..line.len() - trimmed.len()];
            out.push_str(&format!("{indent}for: {SHORT_FOR}\n"));
            rewritten += 1;
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    (out, rewritten)
}

/// The Alertmanager example with short grouping waits and every webhook URL
/// pointed at `127.0.0.1:<port>` (paths kept, so receivers stay apart).
fn alertmanager_config(example: &str, port: u16) -> String {
    let mut urls = 0;
    let mut out = String::with_capacity(example.len());
    for line in example.lines() {
        let trimmed = line.trim_start();
        let indent = &line[..line.len() - trimmed.len()];
        let key = trimmed.trim_start_matches("- ");
        let item = if trimmed.starts_with("- ") { "- " } else { "" };
        let replaced = if key.starts_with("group_wait:") {
            Some(format!("{indent}{item}group_wait: {SHORT_GROUPING}"))
        } else if key.starts_with("group_interval:") {
            Some(format!("{indent}{item}group_interval: {SHORT_GROUPING}"))
        } else if let Some(value) = key.strip_prefix("url:") {
            let mut url = url::Url::parse(value.trim().trim_matches(['"', '\'']))
                .unwrap_or_else(|e| panic!("alertmanager example: bad url {value:?}: {e}"));
            url.set_host(Some("127.0.0.1")).expect("host");
            url.set_port(Some(port)).expect("port");
            urls += 1;
            Some(format!("{indent}{item}url: {url}"))
        } else {
            None
        };
        out.push_str(replaced.as_deref().unwrap_or(line));
        out.push('\n');
    }
    assert!(
        urls > 0,
        "alerts/alertmanager.example.yml has no webhook `url:`; this test expects webhook receivers"
    );
    out
}

fn files_in(dir: &str, suffix: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo_path(dir))
        .unwrap_or_else(|e| panic!("cannot list {dir}: {e}"))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().ends_with(suffix))
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no {suffix} files in {dir}");
    files
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

// ---------------------------------------------------------------------------
// Grafana: the queries of a dashboard, variables substituted

/// The value each dashboard variable takes in the test: a query variable's
/// "All" value (how Grafana sends "All" when `allValue` is set, inside a
/// regex matcher), and a one-minute window for the interval variables (with
/// a 1s scrape interval, Grafana's `$__rate_interval` is at most that).
fn dashboard_variables(dashboard: &Value, file: &str) -> BTreeMap<String, String> {
    let mut values: BTreeMap<String, String> = [
        ("__rate_interval", "1m"),
        ("__interval", "1m"),
        ("__range", "1h"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for variable in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if variable["type"] != "query" {
            continue;
        }
        let name = variable["name"].as_str().expect("variable name");
        let all = variable["allValue"].as_str().unwrap_or_else(|| {
            panic!("{file}: variable {name} has no allValue; say here what to substitute for it")
        });
        assert!(
            variable["includeAll"] == true,
            "{file}: variable {name} has no All option"
        );
        values.insert(name.to_owned(), all.to_owned());
    }
    values
}

/// Replaces `$name`, `${name}` and `${name:format}`; an unknown variable panics.
fn substitute(expr: &str, values: &BTreeMap<String, String>, place: &str) -> String {
    let mut out = String::with_capacity(expr.len());
    let mut rest = expr;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let (name, len) = if let Some(braced) = after.strip_prefix('{') {
            let end = braced
                .find('}')
                .unwrap_or_else(|| panic!("{place}: unclosed ${{ in {expr}"));
            let inner = &braced[..end];
            (inner.split(':').next().unwrap_or(inner), end + 2)
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            (&after[..end], end)
        };
        let value = values.get(name).unwrap_or_else(|| {
            panic!("{place}: uses ${name}, which this test has no value for: {expr}")
        });
        out.push_str(value);
        rest = &after[len..];
    }
    out.push_str(rest);
    out
}

/// (where, PromQL) pairs.
type Queries = Vec<(String, String)>;

/// `label_values(metric, label)` of the template variables, as (metric, label).
type LabelValues = Vec<(String, String)>;

/// (where, PromQL) for the panel targets (rows' inner panels too) and
/// annotations of a dashboard, variables substituted, plus the metric of
/// each `label_values(metric, label)` variable with its label.
fn dashboard_queries(path: &Path) -> (Queries, LabelValues) {
    let file = path
        .strip_prefix(repo_path(""))
        .unwrap_or(path)
        .display()
        .to_string();
    let dashboard: Value =
        serde_json::from_str(&read(path)).unwrap_or_else(|e| panic!("{file} is not JSON: {e}"));
    let values = dashboard_variables(&dashboard, &file);
    let mut queries = Vec::new();
    let mut panels: Vec<&Value> = dashboard["panels"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    while let Some(panel) = panels.pop() {
        panels.extend(panel["panels"].as_array().into_iter().flatten());
        let title = panel["title"].as_str().unwrap_or("?");
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                let place = format!("{file} panel {title:?}");
                queries.push((place.clone(), substitute(expr, &values, &place)));
            }
        }
    }
    for annotation in dashboard["annotations"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if let Some(expr) = annotation["expr"].as_str() {
            let place = format!("{file} annotation {:?}", annotation["name"]);
            queries.push((place.clone(), substitute(expr, &values, &place)));
        }
    }
    let mut label_values = Vec::new();
    for variable in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let query = variable["query"]
            .as_str()
            .or_else(|| variable["query"]["query"].as_str())
            .unwrap_or_default();
        if let Some(args) = query
            .trim()
            .strip_prefix("label_values(")
            .and_then(|rest| rest.strip_suffix(')'))
        {
            let (metric, label) = args
                .rsplit_once(',')
                .unwrap_or_else(|| panic!("{file}: {query} names no label"));
            let place = format!("{file} variable {:?}", variable["name"]);
            label_values.push((
                substitute(metric.trim(), &values, &place),
                label.trim().to_owned(),
            ));
        }
    }
    (queries, label_values)
}

// ---------------------------------------------------------------------------
// PromQL: the series selectors of an expression

/// Every series selector of an expression, as written: `name`, `name{…}` or
/// `{…}`. Functions, keywords, label lists, ranges, strings and numbers are
/// skipped. (`tests/observability_files.rs` checks the names against
/// docs/metrics.md; this keeps the matchers too, so that they can be queried.)
fn selectors(expr: &str) -> Vec<String> {
    let chars: Vec<char> = expr.chars().collect();
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut found = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if matches!(c, '"' | '\'' | '`') {
            i = support::promql_skip_enclosed(&chars, i, c);
        } else if c == '[' {
            i = support::promql_skip_enclosed(&chars, i, ']');
        } else if c == '{' {
            let end = support::promql_skip_enclosed(&chars, i, '}');
            found.push(chars[i..end].iter().collect());
            i = end;
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len() && ident(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let lower = word.to_ascii_lowercase();
            let mut next = i;
            while next < chars.len() && chars[next].is_whitespace() {
                next += 1;
            }
            match chars.get(next) {
                Some('(') if support::PROMQL_LABEL_LIST_KEYWORDS.contains(&lower.as_str()) => {
                    i = support::promql_skip_enclosed(&chars, next, ')')
                }
                Some('(') => {} // a function or an aggregation
                _ if support::PROMQL_NON_METRIC_WORDS.contains(&lower.as_str()) => {}
                Some('{') => {
                    let end = support::promql_skip_enclosed(&chars, next, '}');
                    found.push(format!(
                        "{word}{}",
                        chars[next..end].iter().collect::<String>()
                    ));
                    i = end;
                }
                _ => found.push(word),
            }
        } else {
            i += 1;
        }
    }
    found
}

#[test]
fn selectors_keep_matchers_and_skip_everything_else() {
    assert_eq!(
        selectors(
            r#"histogram_quantile(0.99, sum by (le) (rate(x_bucket{instance=~".*", q="a}b"}[1m])))"#
        ),
        vec![r#"x_bucket{instance=~".*", q="a}b"}"#]
    );
    assert_eq!(
        selectors("a > 0 and on (job, queue) b == 0 or ignoring(kind) group_left (c) d unless e offset 5m"),
        vec!["a", "b", "d", "e"]
    );
    assert_eq!(
        selectors(
            r#"sum without (trigger, result) (increase(c_total{result="failure"}[1h])) > 1e3"#
        ),
        vec![r#"c_total{result="failure"}"#]
    );
    assert_eq!(
        selectors(r#"absent_over_time(build_info[10m]) or {__name__="up"} * 1000"#),
        vec!["build_info", r#"{__name__="up"}"#]
    );
    assert_eq!(
        selectors("sum(rate(a_sum[5m])) / SUM(rate(a_count[5m]))"),
        vec!["a_sum", "a_count"]
    );
}

#[test]
fn only_for_durations_and_alertmanager_timings_are_rewritten() {
    let (rules, n) = rules_with_short_for(
        "# `for:` durations\ngroups:\n  - rules:\n      - alert: A\n        for: 2m\n        expr: x\n",
    );
    assert_eq!(n, 1);
    assert_eq!(
        rules,
        "# `for:` durations\ngroups:\n  - rules:\n      - alert: A\n        for: 1s\n        expr: x\n"
    );
    let am = alertmanager_config(
        "route:\n  group_wait: 30s\n  group_interval: 5m\nreceivers:\n  - name: p\n    webhook_configs:\n      - url: http://127.0.0.1:9099/page\n",
        4242,
    );
    assert_eq!(
        am,
        "route:\n  group_wait: 1s\n  group_interval: 1s\nreceivers:\n  - name: p\n    webhook_configs:\n      - url: http://127.0.0.1:4242/page\n"
    );
}

// ---------------------------------------------------------------------------
// Prometheus and Alertmanager APIs

fn prom_query(prom: &str, expr: &str) -> Value {
    get_json(prom, "/api/v1/query", &[("query", expr)])
}

/// The result vector of a query that must succeed.
fn series(prom: &str, expr: &str) -> Result<Vec<Value>, String> {
    let answer = prom_query(prom, expr);
    if answer["status"] != "success" {
        return Err(format!("{expr}: {answer}"));
    }
    Ok(answer["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default())
}

/// Alerts Prometheus holds (pending or firing) named `alertname`.
fn prom_alerts(prom: &str, alertname: &str) -> Vec<Value> {
    get_json(prom, "/api/v1/alerts", &[])["data"]["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["labels"]["alertname"] == alertname)
        .cloned()
        .collect()
}

fn rule_groups(prom: &str) -> Vec<Value> {
    get_json(prom, "/api/v1/rules", &[])["data"]["groups"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Waits until the rule group that holds `alertname` was evaluated twice
/// more, so that its state reflects what was scraped before this call.
fn wait_for_two_evaluations(prom: &str, alertname: &str) {
    let last_evaluation = || {
        rule_groups(prom)
            .into_iter()
            .find(|g| {
                g["rules"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|r| r["name"] == alertname)
            })
            .map(|g| g["lastEvaluation"].to_string())
            .unwrap_or_else(|| panic!("no rule group holds {alertname}"))
    };
    let mut seen = vec![last_evaluation()];
    wait_for(
        &format!("two evaluations of the group of {alertname}"),
        10 * SECOND,
        || {
            let now = last_evaluation();
            if seen.last() != Some(&now) {
                seen.push(now);
            }
            if seen.len() >= 3 {
                Ok(())
            } else {
                Err(format!("{seen:?}"))
            }
        },
    );
}

/// The `bullmq_job_schedulers` values of a watcher's own `/metrics`, by queue.
fn watcher_scheduler_counts(addr: &str) -> BTreeMap<String, f64> {
    let Ok((200, text)) = http_get(addr, "/metrics") else {
        return BTreeMap::new();
    };
    text.lines()
        .filter_map(|line| line.strip_prefix("bullmq_job_schedulers{queue=\""))
        .filter_map(|rest| {
            let (queue, value) = rest.split_once("\"} ")?;
            Some((queue.to_owned(), value.trim().parse().ok()?))
        })
        .collect()
}

/// Alertmanager with `config`, its data and log under `dir`, clustering off.
fn start_alertmanager(dir: &Path, config: &Path) -> Daemon {
    let storage = dir.join("alertmanager-data");
    Daemon::start(
        "alertmanager",
        "prometheus-alertmanager",
        "prometheus-alertmanager",
        dir,
        |addr| {
            vec![
                format!("--config.file={}", config.display()),
                format!("--storage.path={}", storage.display()),
                format!("--web.listen-address={addr}"),
                "--cluster.listen-address=".into(),
                "--log.level=warn".into(),
            ]
        },
    )
}

// ---------------------------------------------------------------------------
// The tests

#[test]
fn lost_schedules_page_through_alertmanager_and_every_dashboard_and_alert_query_has_series() {
    let began = Instant::now();
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let watcher_addr = free_local_addr();

    // 1. Rows, and their schedulers in Redis by the CLI.
    let setup = Setup::sqlite(
        &redis,
        &format!(
            "[recovery]\nauto = false\n{FAST_RECOVERY}{}",
            watch_toml("500ms", &watcher_addr)
        ),
    );
    setup.sql(TASKS_TABLE_SQLITE);
    setup.sql(
        "INSERT INTO inspection_tasks (id, name, cron, every_ms, payload, queue) VALUES
         (1, 'each-second', '* * * * * *', NULL, '{\"n\":1}', NULL),
         (2, 'nightly', '0 30 2 * * *', NULL, NULL, NULL),
         (3, 'beat', NULL, 60000, NULL, NULL),
         (4, 'report', '0 0 * * MON', NULL, NULL, 'reports');",
    );
    let (code, report) = setup.recover();
    assert_eq!(code, 0, "bullmq-warden recover: {report}");
    assert_eq!(report["created"], 4, "{report}");

    // 2. The webhook receiver, Alertmanager, the watcher, Prometheus.
    let receiver = WebhookReceiver::start();
    let am_config = dir.path().join("alertmanager.yml");
    std::fs::write(
        &am_config,
        alertmanager_config(
            &read(&repo_path("alerts/alertmanager.example.yml")),
            receiver.port,
        ),
    )
    .expect("write the Alertmanager config");
    let alertmanager = start_alertmanager(dir.path(), &am_config);

    let mut rule_files = Vec::new();
    let mut alert_names_in_files = BTreeSet::new();
    for file in files_in("alerts", ".rules.yml") {
        let text = read(&file);
        let (short, rewritten) = rules_with_short_for(&text);
        assert!(rewritten > 0, "{}: no `for:` to shorten", file.display());
        alert_names_in_files.extend(text.lines().filter_map(|l| {
            l.trim()
                .strip_prefix("- alert:")
                .map(|n| n.trim().trim_matches(['"', '\'']).to_owned())
        }));
        let copy = dir.path().join(file.file_name().expect("file name"));
        std::fs::write(&copy, short).expect("write the rules copy");
        rule_files.push(copy);
    }

    let mut watcher = LoggedWatcher::start("watcher (auto = false)", &setup);

    let prom_config = dir.path().join("prometheus.yml");
    let rule_list: String = rule_files
        .iter()
        .map(|f| format!("  - {:?}\n", f.display().to_string()))
        .collect();
    std::fs::write(
        &prom_config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             alerting:\n  alertmanagers:\n    - static_configs:\n        - targets: [\"{}\"]\n\
             rule_files:\n{rule_list}\
             scrape_configs:\n  - job_name: {JOB}\n    static_configs:\n      - targets: [\"{watcher_addr}\"]\n",
            alertmanager.addr
        ),
    )
    .expect("write the Prometheus config");
    let tsdb = dir.path().join("prometheus-data");
    let prometheus = Daemon::start(
        "prometheus",
        "prometheus",
        "prometheus",
        dir.path(),
        |addr| {
            vec![
                format!("--config.file={}", prom_config.display()),
                format!("--storage.tsdb.path={}", tsdb.display()),
                format!("--web.listen-address={addr}"),
                "--log.level=warn".into(),
            ]
        },
    );
    let prom = prometheus.addr.as_str();

    // The rules Prometheus loaded are those of the files, shortened.
    let groups = rule_groups(prom);
    let loaded: BTreeSet<String> = groups
        .iter()
        .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
        .filter(|r| r["type"] == "alerting")
        .map(|r| {
            let duration = r["duration"].as_f64().unwrap_or(f64::MAX);
            assert!(
                duration <= 1.0,
                "rule {} kept for: {duration}s; the rewrite missed it",
                r["name"]
            );
            r["name"].as_str().unwrap_or_default().to_owned()
        })
        .collect();
    assert_eq!(
        loaded, alert_names_in_files,
        "Prometheus loaded other alerts than the files define"
    );
    assert!(loaded.contains(LOST), "no {LOST} alert in alerts/");

    // 3. Scraped, the schedulers in Redis seen, and the loss alert quiet.
    wait_for(
        "Prometheus to scrape the watcher (up == 1)",
        20 * SECOND,
        || {
            let up = series(prom, &format!("up{{job=\"{JOB}\"}} == 1"))?;
            (up.len() == 1).then_some(()).ok_or(format!("{up:?}"))
        },
    );
    wait_for(
        "Prometheus to see the schedulers of both queues",
        20 * SECOND,
        || {
            let both = series(
                prom,
                "bullmq_warden_desired_schedulers > 0 and bullmq_job_schedulers > 0",
            )?;
            (both.len() == QUEUES.len())
                .then_some(())
                .ok_or(format!("{both:?}"))
        },
    );
    wait_for_two_evaluations(prom, LOST);
    assert_eq!(
        prom_alerts(prom, LOST),
        Vec::<Value>::new(),
        "{LOST} is active although Redis holds every scheduler"
    );
    let active = get_json(&alertmanager.addr, "/api/v2/alerts", &[]);
    assert!(
        !active.to_string().contains(LOST),
        "Alertmanager has {LOST} before the flush: {active}"
    );
    let quiet_until = receiver.posts().len();
    let ready_at = began.elapsed();

    // 4. FLUSHALL: the alert fires and pages.
    assert_eq!(redis.redis(&["FLUSHALL"]), "OK");
    let flushed = Instant::now();
    let firing = wait_for(
        &format!("{LOST} firing in Prometheus for every queue"),
        30 * SECOND,
        || {
            let alerts = prom_alerts(prom, LOST);
            let queues: BTreeSet<&str> = alerts
                .iter()
                .filter(|a| a["state"] == "firing")
                .filter_map(|a| a["labels"]["queue"].as_str())
                .collect();
            (queues == BTreeSet::from(QUEUES))
                .then(|| alerts.clone())
                .ok_or(format!("{alerts:?}"))
        },
    );
    for alert in &firing {
        assert_eq!(alert["labels"]["severity"], "critical", "{alert}");
        assert_eq!(alert["labels"]["job"], JOB, "{alert}");
    }
    let fired_after = flushed.elapsed();
    let page = wait_for(
        &format!("a firing {LOST} notification for every queue at the webhook"),
        30 * SECOND,
        || {
            let posts = receiver.posts();
            let lost: Vec<&Post> = posts[quiet_until..]
                .iter()
                .filter(|p| !p.queues_with(LOST, "firing").is_empty())
                .collect();
            let queues: BTreeSet<String> = lost
                .iter()
                .flat_map(|p| p.queues_with(LOST, "firing"))
                .collect();
            (queues.len() == QUEUES.len())
                .then(|| lost[0].clone())
                .ok_or_else(|| receiver.summary())
        },
    );
    let paged_after = flushed.elapsed();
    assert!(page.body.contains(LOST), "{}", page.body);
    assert!(page.body.contains("\"status\":\"firing\""), "{}", page.body);
    assert_eq!(
        page.path, "/page",
        "critical alerts go to the example's pager receiver: {}",
        page.body
    );
    assert_eq!(page.json()["receiver"], "pager", "{}", page.body);
    // The example's inhibition: a queue without schedulers says what the
    // drift alert would.
    if loaded.contains(MISSING) {
        wait_for(
            &format!("Alertmanager to inhibit {MISSING} by {LOST}"),
            20 * SECOND,
            || {
                let alerts = get_json(&alertmanager.addr, "/api/v2/alerts", &[]);
                let inhibited: BTreeSet<&str> = alerts
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|a| a["labels"]["alertname"] == MISSING)
                    .filter(|a| {
                        a["status"]["inhibitedBy"]
                            .as_array()
                            .is_some_and(|by| !by.is_empty())
                    })
                    .filter_map(|a| a["labels"]["queue"].as_str())
                    .collect();
                (inhibited == BTreeSet::from(QUEUES))
                    .then_some(())
                    .ok_or(alerts.to_string())
            },
        );
    }

    // 5. Automatic recovery with catch-up, on the same address.
    assert_eq!(
        watcher.watcher.terminate(),
        Some(0),
        "the first watcher did not stop cleanly"
    );
    drop(watcher);
    let auto = Setup::new(
        &redis,
        &format!(
            "[redis]\nurl = \"{{redis}}\"\n[source]\nurl = \"sqlite://{}/tasks.db\"\n\
             [recovery]\nauto = true\ncatchup = \"fire_once\"\n{FAST_RECOVERY}{}",
            setup.dir.path().display(),
            watch_toml("1200ms", &watcher_addr)
        ),
    );
    let watcher = LoggedWatcher::start("watcher (auto = true)", &auto);
    assert!(
        watcher
            .watcher
            .wait_for("recovery_finished", 1, 15 * SECOND),
        "the start-up recovery did not finish"
    );
    wait_for(
        "the automatic watcher to count the restored schedulers",
        10 * SECOND,
        || {
            let counts = watcher_scheduler_counts(&watcher_addr);
            QUEUES
                .iter()
                .all(|q| counts.get(*q).is_some_and(|n| *n > 0.0))
                .then_some(())
                .ok_or(format!("{counts:?}"))
        },
    );
    // A flush is repaired at once; writes held back for 1.2 s make the
    // outage span a whole second, so the every-second cron row misses a run.
    // Both in one pipeline: Redis runs them before it reads anyone else's.
    let mut admin = redis.connect().expect("admin connection");
    let () = redis::pipe()
        .cmd("FLUSHALL")
        .ignore()
        .cmd("CLIENT")
        .arg("PAUSE")
        .arg(1200)
        .arg("WRITE")
        .ignore()
        .query(&mut admin)
        .expect("FLUSHALL, then CLIENT PAUSE");
    assert!(
        watcher.watcher.wait_for("catchup_fired", 1, 20 * SECOND)
            && watcher
                .watcher
                .wait_for("recovery_finished", 2, 20 * SECOND),
        "no catch-up after the second flush"
    );
    for metric in [
        "bullmq_warden_catchup_jobs_total",
        "bullmq_warden_schedulers_restored_total",
        "bullmq_warden_detections_total{cause=\"flush\"}",
    ] {
        wait_for(
            &format!("Prometheus to scrape {metric}"),
            10 * SECOND,
            || {
                let found = series(prom, metric)?;
                (!found.is_empty()).then_some(()).ok_or("none".into())
            },
        );
    }
    wait_for(
        &format!("a resolved {LOST} notification for every queue"),
        30 * SECOND,
        || {
            let queues: BTreeSet<String> = receiver.posts()[quiet_until..]
                .iter()
                .flat_map(|p| p.queues_with(LOST, "resolved"))
                .collect();
            (queues.len() == QUEUES.len())
                .then_some(())
                .ok_or_else(|| receiver.summary())
        },
    );

    // 6. Every query of the dashboards and the rules evaluates and has series.
    let mut queries: Queries = Vec::new();
    let mut label_values: LabelValues = Vec::new();
    for file in files_in("dashboards", ".json") {
        let (exprs, variables) = dashboard_queries(&file);
        assert!(!exprs.is_empty(), "{}: no queries", file.display());
        queries.extend(exprs);
        label_values.extend(variables);
    }
    for group in rule_groups(prom) {
        for rule in group["rules"].as_array().into_iter().flatten() {
            assert_eq!(
                rule["health"], "ok",
                "rule {} does not evaluate: {}",
                rule["name"], rule["lastError"]
            );
            queries.push((
                format!("{} alert {}", group["file"], rule["name"]),
                rule["query"].as_str().expect("rule query").to_owned(),
            ));
        }
    }
    let mut problems = Vec::new();
    let mut wanted: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (place, expr) in &queries {
        let answer = prom_query(prom, expr);
        if answer["status"] != "success" {
            problems.push(format!(
                "{place}: {expr}\n    Prometheus: {} {}",
                answer["errorType"], answer["error"]
            ));
        }
        let found = selectors(expr);
        if found.is_empty() {
            problems.push(format!("{place}: no series selector found in {expr}"));
        }
        for selector in found {
            wanted.entry(selector).or_default().push(place.clone());
        }
    }
    for (selector, places) in &wanted {
        match series(prom, selector) {
            Ok(found) if !found.is_empty() => {}
            Ok(_) => problems.push(format!(
                "{selector} returns no series (used by {})",
                places.join(", ")
            )),
            Err(error) => problems.push(format!("{selector} fails: {error}")),
        }
    }
    for (metric, label) in &label_values {
        let answer = get_json(
            prom,
            &format!("/api/v1/label/{label}/values"),
            &[("match[]", metric)],
        );
        if answer["data"].as_array().is_none_or(|v| v.is_empty()) {
            problems.push(format!(
                "dashboard variable label_values({metric}, {label}) is empty: {answer}"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "{} of {} queries and {} selectors failed in Prometheus:\n  {}",
        problems.len(),
        queries.len(),
        wanted.len(),
        problems.join("\n  ")
    );
    eprintln!(
        "alerting e2e: stack ready after {ready_at:?}; {LOST} firing {fired_after:?} and paged \
         {paged_after:?} after FLUSHALL; {} queries and {} selectors checked; total {:?}",
        queries.len(),
        wanted.len(),
        began.elapsed()
    );
    drop(watcher);
    drop(prometheus);
    drop(alertmanager);
}

/// Alerts of one Redis, as Prometheus would send them: the sidecar's target
/// labels (`job`, `instance`) name the Redis, and the queue is `inspection`.
fn alert_of(alertname: &str, instance: &str, severity: &str) -> Value {
    serde_json::json!({
        "labels": {
            "alertname": alertname,
            "job": JOB,
            "instance": instance,
            "queue": QUEUES[0],
            "severity": severity,
        },
        "annotations": {"summary": format!("{alertname} on {instance}")},
    })
}

/// Alertmanager's view of the alert named `alertname` from `instance`.
fn am_alert(alerts: &Value, alertname: &str, instance: &str) -> Option<Value> {
    alerts
        .as_array()?
        .iter()
        .find(|a| a["labels"]["alertname"] == alertname && a["labels"]["instance"] == instance)
        .cloned()
}

fn inhibited(alert: &Value) -> bool {
    alert["status"]["inhibitedBy"]
        .as_array()
        .is_some_and(|by| !by.is_empty())
}

/// Two Redis servers, each with a queue named `inspection`: the first lost
/// every scheduler of it, the second misses a few. The example configuration
/// must silence the drift alert of the first Redis only, and page the second's.
#[test]
fn one_redis_losing_its_schedules_does_not_silence_another_redis() {
    const A: &str = "redis-a:9464";
    const B: &str = "redis-b:9464";
    let dir = tempfile::tempdir().expect("temp dir");
    let receiver = WebhookReceiver::start();
    let config = dir.path().join("alertmanager.yml");
    std::fs::write(
        &config,
        alertmanager_config(
            &read(&repo_path("alerts/alertmanager.example.yml")),
            receiver.port,
        ),
    )
    .expect("write the Alertmanager config");
    let alertmanager = start_alertmanager(dir.path(), &config);

    let alerts = serde_json::json!([
        alert_of(LOST, A, "critical"),
        alert_of(MISSING, A, "critical"),
        alert_of(MISSING, B, "critical"),
    ]);
    let (status, body) = http_request(
        &alertmanager.addr,
        "POST",
        "/api/v2/alerts",
        Some(&alerts.to_string()),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(status, 200, "POST /api/v2/alerts: {body}");

    // Once A's drift alert is inhibited, the inhibitor knows the loss alert,
    // so B's state below is its final one.
    let seen = wait_for(
        &format!("Alertmanager to inhibit {MISSING} of {A} by its {LOST}"),
        20 * SECOND,
        || {
            let alerts = get_json(&alertmanager.addr, "/api/v2/alerts", &[]);
            am_alert(&alerts, MISSING, A)
                .is_some_and(|a| inhibited(&a))
                .then(|| alerts.clone())
                .ok_or(alerts.to_string())
        },
    );
    let other = am_alert(&seen, MISSING, B)
        .unwrap_or_else(|| panic!("Alertmanager lost {MISSING} of {B}: {seen}"));
    assert!(
        !inhibited(&other) && other["status"]["state"] == "active",
        "{MISSING} of {B} was silenced by the other Redis's {LOST}: {other}"
    );
    let lost = am_alert(&seen, LOST, A).expect("the loss alert");
    assert_eq!(lost["status"]["state"], "active", "{lost}");

    // The pager hears of B's missing schedulers, and never of A's.
    let instances_with = |alertname: &str| -> BTreeSet<String> {
        receiver
            .posts()
            .iter()
            .flat_map(|p| p.json()["alerts"].as_array().cloned().unwrap_or_default())
            .filter(|a| a["labels"]["alertname"] == alertname)
            .filter_map(|a| a["labels"]["instance"].as_str().map(str::to_owned))
            .collect()
    };
    wait_for(
        &format!("pages for {LOST} of {A} and {MISSING} of {B}"),
        20 * SECOND,
        || {
            (instances_with(LOST).contains(A) && instances_with(MISSING).contains(B))
                .then_some(())
                .ok_or_else(|| receiver.summary())
        },
    );
    assert_eq!(
        instances_with(MISSING),
        BTreeSet::from([B.to_owned()]),
        "{MISSING} of {A} was paged although its {LOST} inhibits it:\n{}",
        receiver.summary()
    );
    drop(alertmanager);
}
