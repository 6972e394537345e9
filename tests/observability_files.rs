//! Checks the monitoring files that ship with bullmq-warden: the Grafana
//! dashboard, the Prometheus alerting rules and their unit tests, the example
//! Alertmanager configuration, the runbook and the metrics contract.
//!
//! Rules and configs are checked with the real tools (`promtool` from the
//! Debian package `prometheus`, `amtool` from `prometheus-alertmanager`;
//! `scripts/ensure-services` installs both). A missing tool fails the test: it
//! is never skipped.
//!
//! Every metric name in a dashboard or alert query must be in the table of
//! `docs/metrics.md`, so renaming a metric in one place and not the others fails.
//!
//! Alerts and dashboard are rendered from the jsonnet mixin in `mixin/` by
//! `scripts/render-mixin` (`jsonnet`, Debian package `jsonnet`); the committed
//! files must be exactly what it renders.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Output;

use serde_json::Value;

const RULES: &str = "alerts/bullmq-warden.rules.yml";
const RULE_TESTS: &str = "alerts/tests";
const ALERTMANAGER: &str = "alerts/alertmanager.example.yml";
const DASHBOARD: &str = "dashboards/bullmq-warden.json";
const METRICS_DOC: &str = "docs/metrics.md";
const RUNBOOK: &str = "docs/runbook.md";
const DATASOURCE_UID: &str = "${datasource}";
const RENDER_MIXIN: &str = "scripts/render-mixin";
/// The files `scripts/render-mixin` writes, relative to the repository.
const RENDERED: &[&str] = &[
    RULES,
    DASHBOARD,
    "deploy/kubernetes/base/prometheusrule.yaml",
];
/// The label matchers every dashboard query carries, so that the `job` and
/// `instance` variables pick one sidecar (and so one Redis).
const SIDECAR_MATCHERS: &str = r#"job=~"$job", instance=~"$instance""#;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(relative: &str) -> String {
    let path = repo().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

// ---------------------------------------------------------------------------
// External tools

/// Runs a tool from the repository root; a missing tool fails loudly, naming
/// the package to install.
fn promtool(args: &[&str]) -> Output {
    support::run_tool("promtool", "prometheus", args)
}

fn amtool(args: &[&str]) -> Output {
    support::run_tool("amtool", "prometheus-alertmanager", args)
}

fn jsonnet(args: &[&str]) -> Output {
    support::run_tool("jsonnet", "jsonnet", args)
}

/// `_config.runbookURLPattern` of the mixin, split at its `%s`.
fn runbook_url_parts() -> (String, String) {
    let output = jsonnet(&[
        "-S",
        "-e",
        "(import 'mixin/mixin.libsonnet')._config.runbookURLPattern",
    ]);
    let pattern = support::assert_success("jsonnet: the mixin's runbookURLPattern", &output);
    let pattern = pattern.trim();
    let (before, after) = pattern
        .split_once("%s")
        .unwrap_or_else(|| panic!("mixin: runbookURLPattern {pattern:?} has no %s"));
    (before.to_owned(), after.to_owned())
}

/// The runbook anchor a URL made from the mixin's runbookURLPattern names.
fn runbook_anchor<'a>(url: &'a str, (before, after): &(String, String)) -> Option<&'a str> {
    url.strip_prefix(before.as_str())?
        .strip_suffix(after.as_str())
}

// ---------------------------------------------------------------------------
// PromQL: metric names

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// The metric names a PromQL expression selects. Label matchers, ranges,
/// strings, label lists, function names, keywords, numbers and Grafana
/// variables are skipped.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i = support::promql_skip_string(&chars, i);
        } else if c == '{' {
            i = support::promql_skip_enclosed(&chars, i, '}');
        } else if c == '[' {
            i = support::promql_skip_enclosed(&chars, i, ']');
        } else if c == '#' {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '$' {
            // Grafana variable: $name or ${name}.
            i += 1;
            if i < chars.len() && chars[i] == '{' {
                i = support::promql_skip_enclosed(&chars, i, '}');
            } else {
                while i < chars.len() && is_ident_char(chars[i]) {
                    i += 1;
                }
            }
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            // Numbers and durations: 0.95, 1e3, 5m, 0x1f.
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if is_ident_start(c) {
            let start = i;
            while i < chars.len() && is_ident_char(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let lower = word.to_ascii_lowercase();
            let mut next = i;
            while next < chars.len() && chars[next].is_whitespace() {
                next += 1;
            }
            let call = chars.get(next) == Some(&'(');
            if support::PROMQL_LABEL_LIST_KEYWORDS.contains(&lower.as_str()) {
                if call {
                    i = support::promql_skip_enclosed(&chars, next, ')');
                }
            } else if !call && !support::PROMQL_NON_METRIC_WORDS.contains(&lower.as_str()) {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

#[test]
fn metric_names_are_found_in_promql() {
    let names = |expr: &str| metric_names(expr).into_iter().collect::<Vec<_>>();
    assert_eq!(
        names(
            r#"histogram_quantile(0.99, sum by (le) (rate(x_seconds_bucket{instance=~"$instance", q="a}b"}[$__rate_interval])))"#
        ),
        vec!["x_seconds_bucket"]
    );
    assert_eq!(
        names("a > 0 and on (job, queue) b == 0 or ignoring(kind) group_left (c) d unless e offset 5m"),
        vec!["a", "b", "d", "e"]
    );
    assert_eq!(
        names(r#"sum without (trigger, result) (increase(c_total{result="failure"}[1h])) > 1e3"#),
        vec!["c_total"]
    );
    assert_eq!(
        names(
            r#"label_replace(up{job=~".*x.*"}, "dst", "$1", "src", "(.*)") * on() group_left vector(1)"#
        ),
        vec!["up"]
    );
    assert_eq!(
        names("absent_over_time(build_info[10m])"),
        vec!["build_info"]
    );
    assert_eq!(
        names("sum(rate(a_sum[5m])) / SUM(rate(a_count[5m]))"),
        vec!["a_count", "a_sum"]
    );
}

// ---------------------------------------------------------------------------
// The metrics contract

/// `docs/metrics.md`: metric name → type, from every table row `| `name` | type | … |`.
fn contract() -> BTreeMap<String, String> {
    let mut metrics = BTreeMap::new();
    for line in read(METRICS_DOC).lines() {
        let Some(row) = line.trim().strip_prefix("| `") else {
            continue;
        };
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let name = cells[0].trim_end_matches('`');
        let kind = cells.get(1).copied().unwrap_or_default();
        assert!(
            ["gauge", "counter", "histogram"].contains(&kind),
            "{METRICS_DOC}: metric {name} has type {kind:?}, expected gauge, counter or histogram"
        );
        assert!(
            metrics.insert(name.to_owned(), kind.to_owned()).is_none(),
            "{METRICS_DOC}: metric {name} is listed twice"
        );
    }
    assert!(
        metrics.len() >= 30,
        "{METRICS_DOC}: found only {} metrics in its tables; is the table format intact?",
        metrics.len()
    );
    metrics
}

/// The contract metric a series name belongs to (`X_bucket` → histogram `X`).
fn contract_metric<'a>(name: &str, contract: &'a BTreeMap<String, String>) -> Option<&'a str> {
    if let Some((key, _)) = contract.get_key_value(name) {
        return Some(key);
    }
    ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
        let base = name.strip_suffix(suffix)?;
        let (key, kind) = contract.get_key_value(base)?;
        (kind == "histogram").then_some(key.as_str())
    })
}

// ---------------------------------------------------------------------------
// The alerting rules (a small reader for the file's own layout; its count is
// cross-checked against promtool's)

#[derive(Debug, Default)]
struct Alert {
    name: String,
    expr: String,
    for_: Option<String>,
    severity: String,
    summary: String,
    description: String,
    runbook_url: String,
}

fn unquote(value: &str) -> String {
    let value = value.trim();
    if value.len() >= 2 && value.starts_with('"') && value.ends_with('"') {
        value[1..value.len() - 1]
            .replace("\\\"", "\"")
            .replace("\\\\", "\\")
    } else if value.len() >= 2 && value.starts_with('\'') && value.ends_with('\'') {
        value[1..value.len() - 1].replace("''", "'")
    } else {
        value.to_owned()
    }
}

fn indent_of(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

fn alerts() -> Vec<Alert> {
    let text = read(RULES);
    let lines: Vec<&str> = text.lines().collect();
    let mut alerts: Vec<Alert> = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let trimmed = line.trim();
        i += 1;
        if trimmed.starts_with('#') {
            continue;
        }
        if let Some(name) = trimmed.strip_prefix("- alert:") {
            alerts.push(Alert {
                name: unquote(name),
                ..Alert::default()
            });
            continue;
        }
        assert!(
            !trimmed.starts_with("- record:"),
            "{RULES}: recording rules are not expected here"
        );
        let Some(alert) = alerts.last_mut() else {
            continue;
        };
        let Some((key, value)) = trimmed.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match key {
            "expr" if ["|", "|-", ">", ">-"].contains(&value) => {
                let mut block = Vec::new();
                while i < lines.len()
                    && (lines[i].trim().is_empty() || indent_of(lines[i]) > indent_of(line))
                {
                    block.push(lines[i].trim());
                    i += 1;
                }
                alert.expr = block.join("\n").trim().to_owned();
            }
            "expr" => alert.expr = unquote(value),
            "for" => alert.for_ = Some(unquote(value)),
            "severity" => alert.severity = unquote(value),
            "summary" => alert.summary = unquote(value),
            "description" => alert.description = unquote(value),
            "runbook_url" => alert.runbook_url = unquote(value),
            _ => {}
        }
    }
    alerts
}

// ---------------------------------------------------------------------------
// The dashboard

fn dashboard() -> Value {
    serde_json::from_str(&read(DASHBOARD))
        .unwrap_or_else(|e| panic!("{DASHBOARD} is not JSON: {e}"))
}

/// Every panel, including those inside collapsed rows.
fn all_panels(dashboard: &Value) -> Vec<&Value> {
    let mut panels = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels is an array") {
        panels.push(panel);
        if let Some(inner) = panel["panels"].as_array() {
            panels.extend(inner);
        }
    }
    panels
}

/// (where, PromQL) for every query in the dashboard: panel targets,
/// annotation queries and the metric of each `label_values(metric, label)` variable.
fn dashboard_queries(dashboard: &Value) -> Vec<(String, String)> {
    let mut queries = Vec::new();
    for panel in all_panels(dashboard) {
        let title = panel["title"].as_str().unwrap_or("?");
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                queries.push((format!("panel {title:?}"), expr.to_owned()));
            }
        }
    }
    for annotation in dashboard["annotations"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if let Some(expr) = annotation["expr"].as_str() {
            let name = annotation["name"].as_str().unwrap_or("?");
            queries.push((format!("annotation {name:?}"), expr.to_owned()));
        }
    }
    for variable in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if let Some(query) = variable_query(variable) {
            if let Some(args) = query
                .trim()
                .strip_prefix("label_values(")
                .and_then(|rest| rest.strip_suffix(')'))
            {
                let metric = args.rsplit_once(',').map_or(args, |(metric, _)| metric);
                let name = variable["name"].as_str().unwrap_or("?");
                queries.push((format!("variable {name:?}"), metric.trim().to_owned()));
            }
        }
    }
    queries
}

fn variable_query(variable: &Value) -> Option<&str> {
    variable["query"]
        .as_str()
        .or_else(|| variable["query"]["query"].as_str())
}

fn variable<'a>(dashboard: &'a Value, name: &str) -> &'a Value {
    dashboard["templating"]["list"]
        .as_array()
        .expect("templating.list is an array")
        .iter()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("{DASHBOARD}: no template variable {name:?}"))
}

fn assert_uses_datasource_variable(what: &str, datasource: &Value) {
    assert_eq!(
        datasource["uid"], DATASOURCE_UID,
        "{DASHBOARD}: {what} must use the data source variable, got {datasource}"
    );
    assert_eq!(
        datasource["type"], "prometheus",
        "{DASHBOARD}: {what} must be a prometheus data source, got {datasource}"
    );
}

// ---------------------------------------------------------------------------
// Markdown anchors, as GitHub renders them

fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

fn anchors(markdown: &str) -> BTreeSet<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut anchors = BTreeSet::new();
    let mut in_code = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
        }
        if in_code || !line.starts_with('#') {
            continue;
        }
        let base = slug(line.trim_start_matches('#'));
        let count = seen.entry(base.clone()).or_default();
        anchors.insert(if *count == 0 {
            base.clone()
        } else {
            format!("{base}-{count}")
        });
        *count += 1;
    }
    anchors
}

// ---------------------------------------------------------------------------
// The tests

#[test]
fn alert_rules_pass_promtool_and_their_unit_tests() {
    let check = promtool(&["check", "rules", RULES]);
    let text = support::assert_success(&format!("promtool check rules {RULES}"), &check);
    let alerts = alerts();
    assert!(
        text.contains(&format!("SUCCESS: {} rules found", alerts.len())),
        "promtool counted a different number of rules than the {} alerts read from {RULES}:\n{text}",
        alerts.len()
    );

    let mut test_files: Vec<String> = std::fs::read_dir(repo().join(RULE_TESTS))
        .unwrap_or_else(|e| panic!("cannot list {RULE_TESTS}: {e}"))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yml"))
        .map(|path| {
            format!(
                "{RULE_TESTS}/{}",
                path.file_name().unwrap().to_string_lossy()
            )
        })
        .collect();
    test_files.sort();
    assert!(!test_files.is_empty(), "no promtool tests in {RULE_TESTS}");
    let mut args = vec!["test", "rules"];
    args.extend(test_files.iter().map(String::as_str));
    support::assert_success("promtool test rules", &promtool(&args));

    // Every alert has a case where it fires and one where it does not.
    let mut fires = BTreeSet::new();
    let mut stays_quiet = BTreeSet::new();
    for file in &test_files {
        let text = read(file);
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        for (i, line) in lines.iter().enumerate() {
            let Some(name) = line.strip_prefix("alertname:") else {
                continue;
            };
            let name = unquote(name);
            let expected = lines[i + 1..]
                .iter()
                .find_map(|l| l.strip_prefix("exp_alerts:"))
                .unwrap_or_else(|| panic!("{file}: alertname {name} has no exp_alerts"))
                .trim();
            if expected == "[]" {
                stays_quiet.insert(name);
            } else {
                fires.insert(name);
            }
        }
    }
    for alert in &alerts {
        assert!(
            fires.contains(&alert.name),
            "{RULE_TESTS}: no test case where {} fires",
            alert.name
        );
        assert!(
            stays_quiet.contains(&alert.name),
            "{RULE_TESTS}: no test case where {} does not fire",
            alert.name
        );
    }
    let known: BTreeSet<&str> = alerts.iter().map(|a| a.name.as_str()).collect();
    for name in fires.iter().chain(&stays_quiet) {
        assert!(
            known.contains(name.as_str()),
            "{RULE_TESTS}: tests an alert {name} that {RULES} does not define"
        );
    }
}

#[test]
fn every_alert_is_labelled_annotated_and_has_a_runbook_section() {
    let alerts = alerts();
    assert!(alerts.len() >= 9, "only {} alerts in {RULES}", alerts.len());
    let pattern = runbook_url_parts();
    assert!(
        pattern.0.starts_with("https://") && pattern.0.ends_with("docs/runbook.md#"),
        "mixin: runbookURLPattern must be an absolute link to docs/runbook.md#%s by default, got {pattern:?}"
    );
    let runbook = read(RUNBOOK);
    let anchors = anchors(&runbook);
    let mut names = BTreeSet::new();
    for alert in &alerts {
        let name = &alert.name;
        assert!(
            names.insert(name.clone()),
            "{RULES}: alert {name} is defined twice"
        );
        assert!(!alert.expr.is_empty(), "{RULES}: {name} has no expr");
        assert!(
            ["critical", "warning", "info"].contains(&alert.severity.as_str()),
            "{RULES}: {name} has severity {:?}; expected critical, warning or info",
            alert.severity
        );
        assert!(!alert.summary.is_empty(), "{RULES}: {name} has no summary");
        assert!(
            !alert.description.is_empty(),
            "{RULES}: {name} has no description"
        );
        let anchor = runbook_anchor(&alert.runbook_url, &pattern).unwrap_or_else(|| {
            panic!(
                "{RULES}: {name} runbook_url {:?} is not made from the mixin's runbookURLPattern {pattern:?}",
                alert.runbook_url
            )
        });
        assert_eq!(
            anchor,
            name.to_lowercase(),
            "{RULES}: {name}'s runbook anchor should be its lower-cased name"
        );
        assert!(
            anchors.contains(anchor),
            "{RUNBOOK}: no section for {name} (anchor #{anchor})"
        );
        if let Some(duration) = &alert.for_ {
            assert!(
                duration.ends_with(['s', 'm', 'h']),
                "{RULES}: {name} has for: {duration:?}"
            );
        }
    }
    assert!(
        alerts.iter().any(|a| a.severity == "critical"),
        "{RULES}: no critical alert, so nothing would page"
    );

    // Links inside the runbook point at sections that exist.
    for (i, _) in runbook.match_indices("](#") {
        let rest = &runbook[i + 3..];
        let anchor = &rest[..rest.find(')').expect("link is closed")];
        assert!(
            anchors.contains(anchor),
            "{RUNBOOK}: link to missing section #{anchor}"
        );
    }
    // The commands a person needs are spelled out.
    for needle in [
        "bullmq-warden status",
        "bullmq-warden recover --dry-run",
        "bullmq-warden recover",
        "bullmq-warden check",
        "bullmq-warden remove-schedulers --queue",
        "CONFIG SET appendonly yes",
        "CONFIG SET appendfsync everysec",
        "CONFIG SET save",
        "CONFIG SET maxmemory-policy noeviction",
        "CONFIG SET notify-keyspace-events",
        "INFO persistence",
    ] {
        assert!(
            runbook.contains(needle),
            "{RUNBOOK} does not mention `{needle}`"
        );
    }
}

#[test]
fn alertmanager_example_is_valid_and_routes_by_severity() {
    support::assert_success(
        &format!("amtool check-config {ALERTMANAGER}"),
        &amtool(&["check-config", ALERTMANAGER]),
    );
    let config_flag = format!("--config.file={ALERTMANAGER}");
    for alert in alerts() {
        let receiver = if alert.severity == "critical" {
            "pager"
        } else {
            "default"
        };
        let verify = format!("--verify.receivers={receiver}");
        let alertname = format!("alertname={}", alert.name);
        let severity = format!("severity={}", alert.severity);
        let output = amtool(&[
            "config",
            "routes",
            "test",
            &config_flag,
            &verify,
            &alertname,
            &severity,
            "queue=inspection",
        ]);
        support::assert_success(
            &format!("routing {} ({}) to {receiver}", alert.name, alert.severity),
            &output,
        );
    }
    // Grouped and inhibited per Redis (tests/alerting_e2e.rs runs the
    // inhibition in a real Alertmanager).
    let config = read(ALERTMANAGER);
    for needle in [
        "inhibit_rules:",
        "group_by: [alertname, job, instance]",
        "equal: [job, instance, queue]",
    ] {
        assert!(config.contains(needle), "{ALERTMANAGER} lacks {needle}");
    }
    assert!(
        !config.contains("equal: [queue]"),
        "{ALERTMANAGER}: an inhibition by queue alone lets one Redis silence another"
    );
}

#[test]
fn dashboard_is_well_formed_and_its_queries_parse() {
    let dashboard = dashboard();
    let schema = dashboard["schemaVersion"].as_u64().expect("schemaVersion");
    assert!(schema >= 36, "{DASHBOARD}: schemaVersion {schema} < 36");

    let datasource = variable(&dashboard, "datasource");
    assert_eq!(
        datasource["type"], "datasource",
        "{DASHBOARD}: datasource variable type"
    );
    assert_eq!(
        datasource["query"], "prometheus",
        "{DASHBOARD}: datasource variable plugin"
    );
    // job, then instance narrowed by job, then queue narrowed by both.
    for (name, query) in [
        (
            "job",
            "label_values(bullmq_warden_build_info, job)".to_owned(),
        ),
        (
            "instance",
            r#"label_values(bullmq_warden_build_info{job=~"$job"}, instance)"#.to_owned(),
        ),
        (
            "queue",
            format!("label_values(bullmq_job_count{{{SIDECAR_MATCHERS}}}, queue)"),
        ),
    ] {
        let variable = variable(&dashboard, name);
        assert_eq!(
            variable["type"], "query",
            "{DASHBOARD}: {name} variable type"
        );
        assert_eq!(
            variable["multi"], true,
            "{DASHBOARD}: {name} variable must be multi-value"
        );
        assert_eq!(
            variable_query(variable),
            Some(query.as_str()),
            "{DASHBOARD}: {name} variable query"
        );
    }
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        if variable["type"] == "query" {
            assert_uses_datasource_variable(
                &format!("variable {}", variable["name"]),
                &variable["datasource"],
            );
        }
    }

    let mut ids = BTreeSet::new();
    let mut panels = 0;
    for panel in all_panels(&dashboard) {
        let title = panel["title"].as_str().unwrap_or_default();
        assert!(
            !title.is_empty(),
            "{DASHBOARD}: a panel has no title: {panel}"
        );
        let id = panel["id"]
            .as_u64()
            .unwrap_or_else(|| panic!("{DASHBOARD}: {title:?} has no id"));
        assert!(ids.insert(id), "{DASHBOARD}: panel id {id} is used twice");
        for key in ["h", "w", "x", "y"] {
            assert!(
                panel["gridPos"][key].is_u64(),
                "{DASHBOARD}: {title:?} has no gridPos.{key}"
            );
        }
        if panel["type"] == "row" {
            continue;
        }
        panels += 1;
        assert_uses_datasource_variable(&format!("panel {title:?}"), &panel["datasource"]);
        let targets = panel["targets"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        assert!(
            !targets.is_empty(),
            "{DASHBOARD}: panel {title:?} has no targets"
        );
        for target in targets {
            let expr = target["expr"].as_str().unwrap_or_default();
            assert!(
                !expr.trim().is_empty(),
                "{DASHBOARD}: panel {title:?} has an empty query"
            );
            assert!(
                expr.contains(SIDECAR_MATCHERS),
                "{DASHBOARD}: panel {title:?} queries {expr:?} without {SIDECAR_MATCHERS}"
            );
            assert_uses_datasource_variable(
                &format!("a target of {title:?}"),
                &target["datasource"],
            );
        }
    }
    assert!(panels >= 20, "{DASHBOARD}: only {panels} panels");
    let titles: String = all_panels(&dashboard)
        .iter()
        .filter(|p| p["type"] == "row")
        .map(|p| format!("{}\n", p["title"].as_str().unwrap_or_default()))
        .collect();
    for row in [
        "Queues",
        "Redis",
        "Recovery",
        "persistence",
        "Sidecar health",
    ] {
        assert!(
            titles.contains(row),
            "{DASHBOARD}: no row titled like {row:?}:\n{titles}"
        );
    }

    // Let promtool parse every query, as recording rules with the Grafana
    // variables replaced by values Prometheus understands.
    let rules: Vec<Value> = dashboard_queries(&dashboard)
        .into_iter()
        .enumerate()
        .map(|(i, (_, expr))| {
            let expr = expr
                .replace("$__rate_interval", "5m")
                .replace("$__interval", "1m")
                .replace("$__range", "1h")
                .replace("$instance", ".*")
                .replace("$job", ".*")
                .replace("$queue", ".*");
            serde_json::json!({"record": format!("dashboard_query_{i}"), "expr": expr})
        })
        .collect();
    let file = serde_json::json!({"groups": [{"name": "dashboard", "rules": rules}]});
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("dashboard-queries.yml");
    // JSON is valid YAML.
    std::fs::write(&path, file.to_string()).expect("write the queries");
    let path_text = path.to_string_lossy().into_owned();
    support::assert_success(
        "promtool check rules on the dashboard's queries",
        &promtool(&["check", "rules", &path_text]),
    );
}

/// The "last restart" and "last recovery" stats. Their gauges are 0 until
/// the first event; the panels must show "never" then, not a date in 1970.
/// promtool evaluates each panel's query over a sidecar that has seen the
/// event and one that has not.
#[test]
fn dashboard_timestamps_say_never_before_the_first_event() {
    let dashboard = dashboard();
    let stats: Vec<&Value> = all_panels(&dashboard)
        .into_iter()
        .filter(|p| p["fieldConfig"]["defaults"]["unit"] == "dateTimeFromNow")
        .collect();
    let titles: Vec<&str> = stats.iter().filter_map(|p| p["title"].as_str()).collect();
    assert_eq!(
        titles,
        ["Last Redis restart", "Last successful recovery"],
        "{DASHBOARD}: the date panels"
    );
    let mut series = Vec::new();
    let mut tests = Vec::new();
    for panel in &stats {
        let title = panel["title"].as_str().unwrap_or_default();
        assert_eq!(
            panel["fieldConfig"]["defaults"]["noValue"], "never",
            "{DASHBOARD}: {title:?} must say \"never\" when there is no value"
        );
        let expr = panel["targets"][0]["expr"]
            .as_str()
            .unwrap_or_default()
            .replace("$job", ".*")
            .replace("$instance", ".*");
        for metric in metric_names(&expr) {
            for (instance, values) in [("fresh", "0x10"), ("seen", "1700000000x10")] {
                series.push(serde_json::json!({
                    "series": format!("{metric}{{job=\"bullmq-warden\", instance=\"{instance}\"}}"),
                    "values": values,
                }));
            }
        }
        // Only the sidecar that saw the event has a value, in milliseconds.
        tests.push(serde_json::json!({
            "expr": format!("count({expr})"), "eval_time": "5m",
            "exp_samples": [{"labels": "{}", "value": 1}],
        }));
        tests.push(serde_json::json!({
            "expr": format!("max({expr})"), "eval_time": "5m",
            "exp_samples": [{"labels": "{}", "value": 1_700_000_000_000_i64}],
        }));
    }
    let file = serde_json::json!({
        "rule_files": [],
        "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": series, "promql_expr_test": tests}],
    });
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("dashboard-dates.yml");
    std::fs::write(&path, file.to_string()).expect("write the promtool test");
    support::assert_success(
        "promtool test rules on the dashboard's date panels",
        &promtool(&["test", "rules", &path.to_string_lossy()]),
    );
}

/// Panels an alert is about link to its runbook section, through the
/// mixin's runbookURLPattern, and every alert has such a panel.
#[test]
fn dashboard_panels_link_to_the_runbook() {
    let dashboard = dashboard();
    let pattern = runbook_url_parts();
    let anchors = anchors(&read(RUNBOOK));
    let mut linked = BTreeSet::new();
    let dashboard_links = dashboard["links"].as_array().into_iter().flatten();
    let panel_links = all_panels(&dashboard)
        .into_iter()
        .flat_map(|p| p["links"].as_array().into_iter().flatten());
    for link in dashboard_links.chain(panel_links) {
        let url = link["url"].as_str().unwrap_or_default();
        let anchor = runbook_anchor(url, &pattern).unwrap_or_else(|| {
            panic!("{DASHBOARD}: link {url:?} is not made from the runbookURLPattern {pattern:?}")
        });
        assert!(
            anchors.contains(anchor),
            "{DASHBOARD}: link {url:?} names no section of {RUNBOOK}"
        );
        assert_eq!(link["targetBlank"], true, "{DASHBOARD}: {link}");
        linked.insert(anchor.to_owned());
    }
    for alert in alerts() {
        assert!(
            linked.contains(&alert.name.to_lowercase()),
            "{DASHBOARD}: no panel links to the runbook of {}",
            alert.name
        );
    }
}

/// The committed alerts, dashboard and PrometheusRule are what the mixin
/// renders now; `_config` overrides reach every runbook link.
#[test]
fn rendered_mixin_files_are_not_stale() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let out = dir.path().join("default");
    let out_text = out.to_string_lossy().into_owned();
    support::assert_success(
        &format!("{RENDER_MIXIN} --output-dir"),
        &support::run_tool("bash", "bash", &[RENDER_MIXIN, "--output-dir", &out_text]),
    );
    for file in RENDERED {
        let rendered = std::fs::read_to_string(out.join(file))
            .unwrap_or_else(|e| panic!("{RENDER_MIXIN} wrote no {file}: {e}"));
        assert!(
            rendered == read(file),
            "{file} is stale: run {RENDER_MIXIN} and commit the result (edit mixin/, not {file})"
        );
    }
    support::assert_success(
        &format!("{RENDER_MIXIN} --check"),
        &support::run_tool("bash", "bash", &[RENDER_MIXIN, "--check"]),
    );

    let moved = dir.path().join("moved");
    let moved_text = moved.to_string_lossy().into_owned();
    let config = r#"{runbookURLPattern: "https://wiki.example.com/runbook/%s"}"#;
    support::assert_success(
        &format!("{RENDER_MIXIN} --config"),
        &support::run_tool(
            "bash",
            "bash",
            &[
                RENDER_MIXIN,
                "--output-dir",
                &moved_text,
                "--config",
                config,
            ],
        ),
    );
    let (default, _) = runbook_url_parts();
    let rules = std::fs::read_to_string(moved.join(RULES)).expect("rendered rules");
    let dashboard = std::fs::read_to_string(moved.join(DASHBOARD)).expect("rendered dashboard");
    assert_eq!(
        rules
            .matches("runbook_url: \"https://wiki.example.com/runbook/")
            .count(),
        alerts().len(),
        "{RENDER_MIXIN} --config: not every runbook_url moved:\n{rules}"
    );
    for (file, text) in [(RULES, &rules), (DASHBOARD, &dashboard)] {
        assert!(
            !text.contains(&default),
            "{RENDER_MIXIN} --config: {file} still links to {default}"
        );
    }
    assert!(dashboard.contains("https://wiki.example.com/runbook/bullmqscheduleslost"));
}

#[test]
fn dashboard_and_alerts_use_only_contract_metrics() {
    let contract = contract();
    let mut queries = dashboard_queries(&dashboard());
    queries.extend(
        alerts()
            .into_iter()
            .map(|alert| (format!("alert {}", alert.name), alert.expr)),
    );
    assert!(queries.len() > 40, "only {} queries found", queries.len());

    let mut unknown = Vec::new();
    let mut used = BTreeSet::new();
    for (place, expr) in &queries {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "{place}: no metric found in {expr:?}");
        for name in names {
            match contract_metric(&name, &contract) {
                Some(metric) => {
                    used.insert(metric.to_owned());
                }
                None => unknown.push(format!("{place}: {name}")),
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "metrics not in the contract ({METRICS_DOC}):\n  {}",
        unknown.join("\n  ")
    );
    let unused: Vec<&String> = contract.keys().filter(|m| !used.contains(*m)).collect();
    assert!(
        unused.is_empty(),
        "metrics of the contract that neither the dashboard nor the alerts show: {unused:?}"
    );
}

/// `docs/metrics.md`: metric name → the text of its table row.
fn contract_rows() -> BTreeMap<String, String> {
    read(METRICS_DOC)
        .lines()
        .filter_map(|line| {
            let row = line.trim().strip_prefix("| `")?;
            let name = row.split('`').next()?;
            Some((name.to_owned(), line.to_owned()))
        })
        .collect()
}

/// Labels whose values the sidecar chooses from a fixed set; each value must
/// be named in its metric's row. Queue names, versions and bucket bounds are
/// not: they come from the rows, the build and the histogram.
const ENUMERATED_LABELS: [&str; 6] = ["cause", "trigger", "result", "kind", "state", "policy"];

/// `name{a="x",b="y"} 1` → (name, [(a, x), (b, y)]).
fn parse_sample(line: &str) -> (&str, Vec<(&str, &str)>) {
    let series = line.rsplit_once(' ').map_or(line, |(series, _)| series);
    let Some((name, labels)) = series.split_once('{') else {
        return (series, Vec::new());
    };
    let labels = labels
        .trim_end_matches('}')
        .split("\",")
        .filter_map(|pair| {
            let (key, value) = pair.split_once("=\"")?;
            Some((key, value.trim_end_matches('"')))
        })
        .collect();
    (name, labels)
}

#[test]
fn the_exported_metrics_and_their_label_values_are_the_documented_ones() {
    use support::{free_local_addr, http, RedisServer, Setup, Watcher};
    let redis = RedisServer::start();
    let setup = Setup::sqlite(&redis, support::FAST_WATCH);
    setup.sql(support::TASKS_TABLE_SQLITE);
    setup.sql("INSERT INTO inspection_tasks (id, cron) VALUES (1, '0 * * * *');");
    let addr = free_local_addr();
    let watcher = Watcher::start_env(&setup, &[("BULLMQ_WARDEN__HTTP__LISTEN", addr.as_str())]);
    assert!(
        watcher.wait_for("recovery_finished", 1, std::time::Duration::from_secs(10)),
        "{}",
        watcher.log()
    );
    let url = format!("http://{addr}/metrics");
    // The persistence settings are read by the first poll.
    assert!(support::wait_until(
        std::time::Duration::from_secs(5),
        || {
            http("GET", &url, &[])
                .1
                .contains("bullmq_warden_redis_appendfsync{")
        }
    ));
    let (_, text) = http("GET", &url, &[]);
    let contract = contract();
    let rows = contract_rows();
    let mut problems = Vec::new();
    let mut exported = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, ""));
            exported.insert(name.to_owned());
            if contract.get(name).map(String::as_str) != Some(kind) {
                problems.push(format!(
                    "{name} ({kind}) is not in the contract as a {kind}"
                ));
            }
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, labels) = parse_sample(line);
        let Some(metric) = contract_metric(series, &contract) else {
            continue; // reported by its TYPE line
        };
        for (label, value) in labels {
            let row = &rows[metric];
            if ENUMERATED_LABELS.contains(&label) && !row.contains(&format!("`{value}`")) {
                problems.push(format!("{metric}: {label}=\"{value}\" is not listed"));
            }
        }
    }
    for name in contract.keys().filter(|name| *name != "up") {
        if !exported.contains(name) {
            problems.push(format!("{name} is documented but not exported"));
        }
    }
    problems.dedup();
    assert!(
        problems.is_empty(),
        "{METRICS_DOC} and /metrics disagree:\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn renamed_metrics_would_be_caught() {
    let contract = contract();
    assert_eq!(
        contract_metric("bullmq_warden_recovery_duration_seconds_bucket", &contract),
        Some("bullmq_warden_recovery_duration_seconds")
    );
    assert_eq!(contract_metric("bullmq_job_counts", &contract), None);
    assert_eq!(
        contract_metric("bullmq_warden_redis_up_bucket", &contract),
        None
    );
    assert_eq!(
        contract_metric("bullmq_warden_redis_restarts", &contract),
        None
    );
}
