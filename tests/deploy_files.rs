//! Checks the deployment files under `deploy/`: the kustomize base and its
//! example overlay, the PrometheusRule generated from the alert rules, the
//! systemd unit, the compose file and the Dockerfile.
//!
//! They are checked with the real tools: `kubectl kustomize` (Debian package
//! `kubernetes-client`; Debian 12 ships kubectl 1.20, whose kustomize v2 the
//! files are written for, and newer kubectl renders them too),
//! `systemd-analyze` (`systemd`), `docker-compose` (`docker-compose`, which
//! validates a compose file without a Docker engine), `promtool`
//! (`prometheus`) and `redis-server` (`redis-server`). `scripts/ensure-services`
//! installs them. A missing tool fails the test: it is never skipped.
//!
//! The rendered manifests are turned into JSON by kubectl itself
//! (`kubectl annotate --local -o json`, which needs no cluster), so no YAML
//! parser is needed here. The pod's configuration is then run for real: the
//! binary loads the ConfigMap's TOML with the environment the pod would give
//! it, and Redis starts from the rendered redis.conf with the container's own
//! command line.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{free_port, ChildGuard};

const BASE: &str = "deploy/kubernetes/base";
const OVERLAY: &str = "deploy/kubernetes/overlays/example";
const STANDALONE: &str = "deploy/kubernetes/overlays/standalone";
const PROMETHEUS_RULE: &str = "deploy/kubernetes/base/prometheusrule.yaml";
const RENDER_RULE: &str = "scripts/render-prometheus-rule";
const RULES: &str = "alerts/bullmq-warden.rules.yml";
const UNIT: &str = "deploy/systemd/bullmq-warden.service";
const COMPOSE: &str = "deploy/compose/compose.yaml";
const COMPOSE_PROMETHEUS: &str = "deploy/compose/prometheus.yml";
const DOCKERFILE: &str = "deploy/docker/Dockerfile";
const DOCKERIGNORE: &str = "deploy/docker/Dockerfile.dockerignore";
/// Configuration files for the other deployment methods; each must load.
const OTHER_CONFIGS: &[&str] = &[
    "deploy/compose/warden.toml",
    "deploy/compose/warden-standalone.toml",
    "deploy/systemd/warden.toml",
];
const BIN: &str = env!("CARGO_BIN_EXE_bullmq-warden");

const SIDECAR: &str = "bullmq-warden";
const REDIS: &str = "redis";
const TOKEN_ENV: &str = "BULLMQ_WARDEN_API_TOKEN";
const SOURCE_URL_ENV: &str = "BULLMQ_WARDEN__SOURCE__URL";
const REDIS_URL_ENV: &str = "BULLMQ_WARDEN__REDIS__URL";
const CONFIG_ENV: &str = "BULLMQ_WARDEN_CONFIG";
/// The exit codes of README.md's table.
const EXIT_CONFIG: i32 = 2;
const EXIT_REDIS_UNREACHABLE: i32 = 5;

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
fn kubectl(args: &[&str]) -> Output {
    support::run_tool("kubectl", "kubernetes-client", args)
}

fn promtool(args: &[&str]) -> Output {
    support::run_tool("promtool", "prometheus", args)
}

// ---------------------------------------------------------------------------
// Rendered manifests

/// The objects `kubectl kustomize DIR` renders, as JSON.
fn render(dir: &str) -> Vec<Value> {
    let output = kubectl(&["kustomize", dir]);
    support::assert_success(&format!("kubectl kustomize {dir}"), &output);
    let scratch = tempfile::tempdir().expect("temporary directory");
    let yaml = scratch.path().join("rendered.yaml");
    std::fs::write(&yaml, &output.stdout).expect("write the rendered manifests");
    // kubectl converts its own YAML to JSON offline; the annotation is only
    // there because `annotate` is the command that offers --local.
    let yaml_text = yaml.to_string_lossy().into_owned();
    let output = kubectl(&[
        "annotate",
        "--local",
        "-f",
        &yaml_text,
        "-o",
        "json",
        "bullmq-warden.test/rendered=true",
    ]);
    let json = support::assert_success(&format!("kubectl annotate --local ({dir})"), &output);
    let mut objects = Vec::new();
    let stdout = String::from_utf8_lossy(&output.stdout);
    for value in serde_json::Deserializer::from_str(&stdout).into_iter::<Value>() {
        let value =
            value.unwrap_or_else(|e| panic!("{dir}: kubectl printed no JSON ({e}):\n{json}"));
        match value["kind"].as_str() {
            Some("List") => objects.extend(value["items"].as_array().cloned().unwrap_or_default()),
            _ => objects.push(value),
        }
    }
    assert!(!objects.is_empty(), "{dir} renders nothing");
    objects
}

fn kinds(objects: &[Value]) -> BTreeSet<String> {
    objects
        .iter()
        .filter_map(|o| o["kind"].as_str().map(str::to_owned))
        .collect()
}

fn all_of<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

fn one_of<'a>(dir: &str, objects: &'a [Value], kind: &str) -> &'a Value {
    let found = all_of(objects, kind);
    assert_eq!(
        found.len(),
        1,
        "{dir}: expected one {kind}, found {}",
        found.len()
    );
    found[0]
}

fn named<'a>(dir: &str, objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("{dir}: no {kind} named {name} (generated names carry a hash)"))
}

fn name_of(object: &Value) -> &str {
    object["metadata"]["name"].as_str().unwrap_or("?")
}

fn container<'a>(dir: &str, pod_spec: &'a Value, name: &str) -> &'a Value {
    pod_spec["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("{dir}: the StatefulSet's pod has no container {name}"))
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect()
}

/// `data` and `stringData` of a Secret, decoded.
fn secret_data(secret: &Value) -> BTreeMap<String, String> {
    let mut data = BTreeMap::new();
    for (key, value) in secret["data"].as_object().into_iter().flatten() {
        let encoded = value.as_str().unwrap_or_default();
        let decoded = base64_decode(encoded)
            .unwrap_or_else(|| panic!("Secret {}: {key} is not base64", name_of(secret)));
        data.insert(
            key.clone(),
            String::from_utf8(decoded).expect("UTF-8 secret"),
        );
    }
    for (key, value) in secret["stringData"].as_object().into_iter().flatten() {
        data.insert(key.clone(), value.as_str().unwrap_or_default().to_owned());
    }
    data
}

fn base64_decode(text: &str) -> Option<Vec<u8>> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits = 0u32;
    let mut count = 0;
    let mut out = Vec::new();
    for byte in text
        .bytes()
        .filter(|b| !b.is_ascii_whitespace() && *b != b'=')
    {
        let value = ALPHABET.iter().position(|&a| a == byte)? as u32;
        bits = (bits << 6) | value;
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
            bits &= (1 << count) - 1;
        }
    }
    Some(out)
}

/// The environment Kubernetes would give a container: literal values and
/// references to keys of the rendered Secrets and ConfigMaps. A reference to
/// a missing object or key fails, as the kubelet would refuse to start it.
fn pod_env(dir: &str, objects: &[Value], container: &Value) -> Vec<(String, String)> {
    let mut env = Vec::new();
    for entry in container["env"].as_array().into_iter().flatten() {
        let name = entry["name"].as_str().expect("env name").to_owned();
        if let Some(value) = entry["value"].as_str() {
            env.push((name, value.to_owned()));
            continue;
        }
        let from = &entry["valueFrom"];
        let (kind, reference) = if from["secretKeyRef"].is_object() {
            ("Secret", &from["secretKeyRef"])
        } else if from["configMapKeyRef"].is_object() {
            ("ConfigMap", &from["configMapKeyRef"])
        } else {
            continue; // fieldRef / resourceFieldRef: filled in by Kubernetes
        };
        let object_name = reference["name"].as_str().unwrap_or_default();
        let key = reference["key"].as_str().unwrap_or_default();
        let object = named(dir, objects, kind, object_name);
        let data = if kind == "Secret" {
            secret_data(object)
        } else {
            object["data"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                .collect()
        };
        let value = data.get(key).unwrap_or_else(|| {
            panic!("{dir}: env {name} refers to key {key} of {kind} {object_name}, which has no such key")
        });
        env.push((name, value.clone()));
    }
    env
}

/// The file a container sees at `path`, from the ConfigMap mounted over its directory.
fn mounted_file(
    dir: &str,
    objects: &[Value],
    pod_spec: &Value,
    container: &Value,
    path: &str,
) -> String {
    let (directory, file) = path.rsplit_once('/').expect("absolute path");
    let mount = container["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["mountPath"].as_str().map(|p| p.trim_end_matches('/')) == Some(directory))
        .unwrap_or_else(|| {
            panic!(
                "{dir}: container {} mounts nothing at {directory} (for {path})",
                container["name"]
            )
        });
    let volume = pod_spec["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["name"] == mount["name"])
        .unwrap_or_else(|| panic!("{dir}: no volume {}", mount["name"]));
    let config_map = volume["configMap"]["name"]
        .as_str()
        .unwrap_or_else(|| panic!("{dir}: volume {} is not a ConfigMap", mount["name"]));
    named(dir, objects, "ConfigMap", config_map)["data"][file]
        .as_str()
        .unwrap_or_else(|| panic!("{dir}: ConfigMap {config_map} has no key {file} (for {path})"))
        .to_owned()
}

/// A setting of a container: its own securityContext first, the pod's otherwise.
fn security<'a>(pod_spec: &'a Value, container: &'a Value, key: &str) -> &'a Value {
    let own = &container["securityContext"][key];
    if own.is_null() {
        &pod_spec["securityContext"][key]
    } else {
        own
    }
}

fn assert_hardened(dir: &str, pod_spec: &Value, container: &Value) {
    let name = container["name"].as_str().unwrap_or("?");
    assert_eq!(
        container["securityContext"]["readOnlyRootFilesystem"], true,
        "{dir}: container {name} needs readOnlyRootFilesystem: true"
    );
    assert_eq!(
        security(pod_spec, container, "runAsNonRoot"),
        true,
        "{dir}: container {name} needs runAsNonRoot: true"
    );
    let user = security(pod_spec, container, "runAsUser");
    assert!(
        user.is_null() || user.as_u64().is_some_and(|uid| uid > 0),
        "{dir}: container {name} runs as user {user}"
    );
    assert_eq!(
        container["securityContext"]["allowPrivilegeEscalation"], false,
        "{dir}: container {name} needs allowPrivilegeEscalation: false"
    );
    let capabilities = &container["securityContext"]["capabilities"];
    assert!(
        strings(&capabilities["drop"]).iter().any(|c| c == "ALL"),
        "{dir}: container {name} must drop ALL capabilities: {capabilities}"
    );
    assert!(
        strings(&capabilities["add"]).is_empty(),
        "{dir}: container {name} adds capabilities: {capabilities}"
    );
    for bound in ["requests", "limits"] {
        for resource in ["cpu", "memory"] {
            assert!(
                container["resources"][bound][resource].is_string(),
                "{dir}: container {name} has no resources.{bound}.{resource}"
            );
        }
    }
}

/// The port number a probe or endpoint names, resolving a named port.
fn port_number(dir: &str, container: &Value, port: &Value) -> u64 {
    if let Some(number) = port.as_u64() {
        return number;
    }
    let wanted = port.as_str().unwrap_or_default();
    container["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == wanted)
        .and_then(|p| p["containerPort"].as_u64())
        .unwrap_or_else(|| {
            panic!(
                "{dir}: container {} has no port named {wanted:?}",
                container["name"]
            )
        })
}

/// Whether `selector` (matchLabels or a plain map) selects `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    let selector = if selector["matchLabels"].is_object() {
        &selector["matchLabels"]
    } else {
        selector
    };
    let Some(wanted) = selector.as_object() else {
        return false;
    };
    !wanted.is_empty() && wanted.iter().all(|(k, v)| &labels[k] == v)
}

/// Memory quantities as Kubernetes writes them: 1Gi, 512Mi, 1G, 1073741824.
fn bytes_of(quantity: &str) -> u64 {
    let split = quantity
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(quantity.len());
    let (number, unit) = quantity.split_at(split);
    let number: u64 = number
        .parse()
        .unwrap_or_else(|_| panic!("quantity {quantity:?}"));
    let factor: u64 = match unit {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        other => panic!("quantity {quantity:?}: unit {other:?} not handled here"),
    };
    number * factor
}

/// Alert names, in order, of a rules file written as alerts/ writes them.
fn alert_names(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("- alert:"))
        .map(|name| name.trim().trim_matches('"').to_owned())
        .collect()
}

/// `key value` directives of a redis.conf (last one wins, as in Redis).
fn redis_directives(conf: &str) -> BTreeMap<String, String> {
    conf.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once(char::is_whitespace))
        .map(|(k, v)| {
            (
                k.to_ascii_lowercase(),
                v.trim().trim_matches('"').to_owned(),
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------
// The pod, as rendered

/// What one rendering says about the Redis pod, checked along the way.
struct Pod {
    dir: &'static str,
    objects: Vec<Value>,
    statefulset: Value,
}

impl Pod {
    fn spec(&self) -> &Value {
        &self.statefulset["spec"]["template"]["spec"]
    }

    fn labels(&self) -> &Value {
        &self.statefulset["spec"]["template"]["metadata"]["labels"]
    }

    fn sidecar(&self) -> &Value {
        container(self.dir, self.spec(), SIDECAR)
    }

    fn redis(&self) -> &Value {
        container(self.dir, self.spec(), REDIS)
    }

    /// The `--config` file the sidecar is started with, as mounted.
    fn warden_toml(&self) -> String {
        let args = strings(&self.sidecar()["args"]);
        let path = args
            .iter()
            .position(|a| a == "--config")
            .and_then(|i| args.get(i + 1))
            .unwrap_or_else(|| {
                panic!(
                    "{}: the sidecar's args have no --config: {args:?}",
                    self.dir
                )
            });
        mounted_file(self.dir, &self.objects, self.spec(), self.sidecar(), path)
    }

    /// The redis.conf the redis container is started with, as mounted.
    fn redis_conf(&self) -> String {
        let command = self.redis_command();
        let path = command
            .split_whitespace()
            .find(|word| word.ends_with(".conf"))
            .unwrap_or_else(|| {
                panic!(
                    "{}: redis is started without a .conf file: {command}",
                    self.dir
                )
            });
        mounted_file(self.dir, &self.objects, self.spec(), self.redis(), path)
    }

    fn redis_command(&self) -> String {
        let redis = self.redis();
        let mut words = strings(&redis["command"]);
        words.extend(strings(&redis["args"]));
        words.join(" ")
    }

    fn env(&self, container: &Value) -> Vec<(String, String)> {
        pod_env(self.dir, &self.objects, container)
    }
}

fn pod(dir: &'static str) -> Pod {
    let objects = render(dir);
    let statefulset = one_of(dir, &objects, "StatefulSet").clone();
    Pod {
        dir,
        objects,
        statefulset,
    }
}

/// Every check on one rendering; the base and the overlay must both pass.
fn check_rendering(pod: &Pod) {
    let dir = pod.dir;
    let kinds = kinds(&pod.objects);
    for kind in [
        "StatefulSet",
        "Service",
        "PodMonitor",
        "PrometheusRule",
        "NetworkPolicy",
        "ConfigMap",
        "Secret",
    ] {
        assert!(kinds.contains(kind), "{dir}: no {kind} among {kinds:?}");
    }

    // The StatefulSet: one Redis, both containers, a governing headless Service.
    let spec = &pod.statefulset["spec"];
    assert_eq!(
        spec["replicas"], 1,
        "{dir}: one standalone Redis per StatefulSet (see deploy/README.md for Sentinel and Cluster)"
    );
    let names: Vec<String> = pod.spec()["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(names, [REDIS, SIDECAR], "{dir}: the pod's containers");
    assert!(
        selects(&spec["selector"], pod.labels()),
        "{dir}: the StatefulSet's selector does not select its own pod"
    );
    let governing = named(
        dir,
        &pod.objects,
        "Service",
        spec["serviceName"].as_str().unwrap_or("?"),
    );
    assert_eq!(
        governing["spec"]["clusterIP"], "None",
        "{dir}: the StatefulSet's serviceName must be a headless Service"
    );
    assert!(
        pod.statefulset["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]
            ["storage"]
            .is_string(),
        "{dir}: Redis needs a persistent volume for its AOF"
    );

    // Both containers: non-root, read-only, no capabilities, bounded.
    assert_hardened(dir, pod.spec(), pod.sidecar());
    assert_hardened(dir, pod.spec(), pod.redis());

    // The sidecar's configuration, also for commands run with kubectl exec.
    assert_config_env_matches_args(dir, pod.sidecar());
    let toml_text = pod.warden_toml();
    let config: toml::Table = toml_text
        .parse()
        .unwrap_or_else(|e| panic!("{dir}: the sidecar's TOML does not parse: {e}\n{toml_text}"));
    let env: BTreeMap<String, String> = pod.env(pod.sidecar()).into_iter().collect();
    let setting = |section: &str, key: &str| -> Option<String> {
        let var = format!(
            "BULLMQ_WARDEN__{}__{}",
            section.to_uppercase(),
            key.to_uppercase()
        );
        env.get(&var).cloned().or_else(|| {
            config
                .get(section)
                .and_then(|s| s.get(key))
                .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
        })
    };
    assert_eq!(
        setting("redis", "url").as_deref(),
        Some("redis://127.0.0.1:6379/0"),
        "{dir}: the sidecar must use the Redis of its own pod"
    );
    let redis_port = port_number(dir, pod.redis(), &pod.redis()["ports"][0]["containerPort"]);
    assert_eq!(redis_port, 6379, "{dir}: the redis container's port");
    assert_eq!(
        setting("watch", "manage_keyspace_config").as_deref(),
        Some("false"),
        "{dir}: redis.conf sets the keyspace notifications, so the sidecar must not CONFIG SET them"
    );
    let listen = setting("http", "listen").unwrap_or_default();
    let listen: std::net::SocketAddr = listen
        .parse()
        .unwrap_or_else(|_| panic!("{dir}: [http] listen {listen:?} is not an address"));
    assert!(
        listen.ip().is_unspecified(),
        "{dir}: the sidecar must listen on all addresses for Prometheus, not {listen}"
    );

    // The API token comes from the Secret; so does the database URL.
    for var in [TOKEN_ENV, SOURCE_URL_ENV] {
        let entry = env_entry(pod.sidecar(), var)
            .unwrap_or_else(|| panic!("{dir}: the sidecar has no env {var}"));
        let reference = &entry["valueFrom"]["secretKeyRef"];
        assert!(
            reference.is_object(),
            "{dir}: env {var} must come from a Secret: {entry}"
        );
        assert_ne!(
            reference["optional"], true,
            "{dir}: env {var} must not be optional"
        );
        let secret = named(
            dir,
            &pod.objects,
            "Secret",
            reference["name"].as_str().unwrap_or("?"),
        );
        assert!(
            secret_data(secret).contains_key(reference["key"].as_str().unwrap_or("?")),
            "{dir}: Secret {} has no key {}",
            name_of(secret),
            reference["key"]
        );
    }

    // Probes on the port the sidecar listens on.
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        let get = &pod.sidecar()[probe]["httpGet"];
        assert_eq!(get["path"], path, "{dir}: the sidecar's {probe} path");
        assert_eq!(
            port_number(dir, pod.sidecar(), &get["port"]),
            u64::from(listen.port()),
            "{dir}: the sidecar's {probe} port differs from [http] listen"
        );
    }
    let sidecar_ports: Vec<u64> = pod.sidecar()["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["containerPort"].as_u64())
        .collect();
    assert!(
        sidecar_ports.contains(&u64::from(listen.port())),
        "{dir}: the sidecar declares ports {sidecar_ports:?}, not {}",
        listen.port()
    );

    // Redis as BullMQ advises, with the keyspace notifications the sidecar needs.
    let conf = redis_directives(&pod.redis_conf());
    for (key, value) in [
        ("appendonly", "yes"),
        ("appendfsync", "everysec"),
        ("maxmemory-policy", "noeviction"),
    ] {
        assert_eq!(
            conf.get(key).map(String::as_str),
            Some(value),
            "{dir}: redis.conf must set {key} {value}"
        );
    }
    let flags = conf
        .get("notify-keyspace-events")
        .cloned()
        .unwrap_or_default();
    let covered =
        |flag: char| flags.contains(flag) || ("gzxe".contains(flag) && flags.contains('A'));
    assert!(
        "Kgzxe".chars().all(covered),
        "{dir}: redis.conf's notify-keyspace-events {flags:?} lacks some of Kgzxe"
    );

    // Services: whatever selects the pod publishes it even while not ready,
    // because the pod's readiness follows the source database.
    let selecting: Vec<&Value> = all_of(&pod.objects, "Service")
        .into_iter()
        .filter(|s| selects(&s["spec"]["selector"], pod.labels()))
        .collect();
    assert!(
        selecting.iter().any(|s| s["spec"]["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|p| p["port"] == 6379)),
        "{dir}: no Service offers the pod's Redis on 6379"
    );
    for service in &selecting {
        assert_eq!(
            service["spec"]["publishNotReadyAddresses"],
            true,
            "{dir}: Service {} must publish not-ready addresses, or a database outage \
             (sidecar not ready) would take Redis away from BullMQ",
            name_of(service)
        );
    }

    // Prometheus scrapes the sidecar's port by name.
    let monitor = one_of(dir, &pod.objects, "PodMonitor");
    assert!(
        selects(&monitor["spec"]["selector"], pod.labels()),
        "{dir}: the PodMonitor does not select the Redis pod"
    );
    let endpoint = &monitor["spec"]["podMetricsEndpoints"][0];
    assert_eq!(
        port_number(dir, pod.sidecar(), &endpoint["port"]),
        u64::from(listen.port()),
        "{dir}: the PodMonitor scrapes another port"
    );
    assert_eq!(endpoint["path"], "/metrics", "{dir}: the PodMonitor's path");
    // Without jobLabel the job is <namespace>/<PodMonitor name>, which
    // BullMQWardenDown matches with up{job=~".*bullmq-warden.*"}.
    assert!(
        monitor["spec"]["jobLabel"].is_null() && name_of(monitor).contains("bullmq-warden"),
        "{dir}: the scrape job must contain \"bullmq-warden\" for BullMQWardenDown"
    );

    // The NetworkPolicy covers the pod and admits Redis clients and Prometheus.
    let policy = one_of(dir, &pod.objects, "NetworkPolicy");
    assert!(
        selects(&policy["spec"]["podSelector"], pod.labels()),
        "{dir}: the NetworkPolicy does not select the Redis pod"
    );
    assert!(
        strings(&policy["spec"]["policyTypes"]).contains(&"Ingress".to_owned()),
        "{dir}: the NetworkPolicy must restrict ingress"
    );
    let admitted: BTreeSet<u64> = policy["spec"]["ingress"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|rule| rule["ports"].as_array().cloned().unwrap_or_default())
        .filter_map(|p| p["port"].as_u64())
        .collect();
    for port in [6379, u64::from(listen.port())] {
        assert!(
            admitted.contains(&port),
            "{dir}: the NetworkPolicy admits nobody on port {port}"
        );
    }

    // The PrometheusRule carries every alert of alerts/.
    let rule = one_of(dir, &pod.objects, "PrometheusRule");
    assert_eq!(rule["apiVersion"], "monitoring.coreos.com/v1");
    let rendered_alerts: Vec<String> = rule["spec"]["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
        .filter_map(|r| r["alert"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(
        rendered_alerts,
        alert_names(&read(RULES)),
        "{dir}: the PrometheusRule's alerts differ from {RULES}"
    );
}

/// `kubectl exec … bullmq-warden status` passes no `--config`: the
/// container's BULLMQ_WARDEN_CONFIG must name the file `watch` is given.
fn assert_config_env_matches_args(dir: &str, container: &Value) {
    let args = strings(&container["args"]);
    let config = args
        .iter()
        .position(|a| a == "--config")
        .and_then(|i| args.get(i + 1))
        .unwrap_or_else(|| panic!("{dir}: the warden's args have no --config: {args:?}"));
    let env = env_entry(container, CONFIG_ENV)
        .unwrap_or_else(|| panic!("{dir}: the warden's container has no env {CONFIG_ENV}"));
    assert_eq!(
        env["value"].as_str(),
        Some(config.as_str()),
        "{dir}: {CONFIG_ENV} must name the --config file"
    );
}

#[test]
fn kustomize_base_and_example_overlay_render_a_hardened_redis_pod_with_its_sidecar() {
    let base = pod(BASE);
    check_rendering(&base);
    let overlay = pod(OVERLAY);
    check_rendering(&overlay);

    // What the overlay is for: a namespace, an image, resources, a source URL.
    for object in &overlay.objects {
        assert_eq!(
            object["metadata"]["namespace"],
            "jobs",
            "{OVERLAY}: {} {} is not in the overlay's namespace",
            object["kind"],
            name_of(object)
        );
    }
    let image = |pod: &Pod| {
        pod.sidecar()["image"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    assert_ne!(image(&overlay), image(&base), "{OVERLAY}: sets no image");
    assert!(
        image(&overlay).contains('/') && image(&overlay).contains(':'),
        "{OVERLAY}: the image {} should name a registry and a tag",
        image(&overlay)
    );
    let source: BTreeMap<String, String> = overlay.env(overlay.sidecar()).into_iter().collect();
    let url = url::Url::parse(&source[SOURCE_URL_ENV])
        .unwrap_or_else(|e| panic!("{OVERLAY}: the database URL does not parse: {e}"));
    assert!(
        url.scheme() == "postgres" && url.host_str().is_some_and(|h| !h.is_empty()),
        "{OVERLAY}: the example's source should be a PostgreSQL server, not {}",
        url.scheme()
    );
}

// ---------------------------------------------------------------------------
// The pod's configuration, run for real

/// Runs the binary with the pod's TOML (written to a file) and environment.
fn warden(pod: &Pod, scratch: &Path, args: &[&str], extra_env: &[(&str, &str)]) -> Command {
    let config = scratch.join("warden.toml");
    std::fs::write(&config, pod.warden_toml()).expect("write the ConfigMap's TOML");
    let mut command = Command::new(BIN);
    command
        .current_dir(scratch)
        .env_clear()
        .envs(std::env::vars().filter(|(k, _)| k == "PATH"))
        .envs(pod.env(pod.sidecar()))
        .envs(extra_env.iter().copied())
        .arg("--config")
        .arg(&config)
        .args(args);
    command
}

/// The entry named `name` in a container's `env`.
fn env_entry<'a>(container: &'a Value, name: &str) -> Option<&'a Value> {
    container["env"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["name"] == name)
}

fn exit_code(output: &Output) -> Option<i32> {
    output.status.code()
}

#[test]
fn the_binary_accepts_the_pods_configuration() {
    // With an unreachable Redis, `status` exits 5 after the configuration
    // (file and environment) loaded, and 2 when it did not: so 5 means the
    // ConfigMap, its keys and the Secret's values are all accepted.
    let unreachable = [("BULLMQ_WARDEN__REDIS__URL", "redis://127.0.0.1:1/0")];
    let overlay = pod(OVERLAY);
    let scratch = tempfile::tempdir().expect("temporary directory");
    let output = warden(&overlay, scratch.path(), &["status"], &unreachable)
        .output()
        .expect("run bullmq-warden");
    assert_eq!(
        exit_code(&output),
        Some(EXIT_REDIS_UNREACHABLE),
        "{OVERLAY}: `bullmq-warden status` with the pod's configuration should get as far as \
         Redis (exit 5); exit 2 is a configuration error:\n{}",
        support::text_of(&output)
    );
    assert!(
        support::text_of(&output).contains("127.0.0.1:1"),
        "{}",
        support::text_of(&output)
    );

    // The base's placeholders fail closed, naming the key to fill in. The file
    // is parsed (unknown keys rejected) before values are validated, and the
    // [redis] keys are checked before source.url, so this error also means
    // that the base's TOML parsed and its [redis] settings were accepted.
    let base = pod(BASE);
    let output = warden(&base, scratch.path(), &["status"], &unreachable)
        .output()
        .expect("run bullmq-warden");
    assert_eq!(
        exit_code(&output),
        Some(EXIT_CONFIG),
        "{BASE}: the placeholder database URL should be a configuration error:\n{}",
        support::text_of(&output)
    );
    assert!(
        support::text_of(&output).contains("source.url"),
        "{}",
        support::text_of(&output)
    );

    // The compose and systemd configurations load too.
    for file in OTHER_CONFIGS {
        let output = Command::new(BIN)
            .env_clear()
            .env("BULLMQ_WARDEN__REDIS__URL", "redis://127.0.0.1:1/0")
            .env(SOURCE_URL_ENV, "postgres://warden:secret@127.0.0.1:1/app")
            .arg("--config")
            .arg(repo().join(file))
            .arg("status")
            .output()
            .expect("run bullmq-warden");
        assert_eq!(
            exit_code(&output),
            Some(EXIT_REDIS_UNREACHABLE),
            "{file}: expected Redis unreachable (5), not a configuration error:\n{}",
            support::text_of(&output)
        );
    }
}

#[test]
fn standalone_overlay_runs_the_warden_alone_against_an_external_redis() {
    let objects = render(STANDALONE);
    let kinds = kinds(&objects);
    for kind in [
        "Deployment",
        "Service",
        "PodMonitor",
        "NetworkPolicy",
        "ConfigMap",
        "Secret",
    ] {
        assert!(
            kinds.contains(kind),
            "{STANDALONE}: no {kind} among {kinds:?}"
        );
    }
    assert!(
        !kinds.contains("StatefulSet"),
        "{STANDALONE}: runs no Redis of its own"
    );
    let deployment = one_of(STANDALONE, &objects, "Deployment");
    let spec = &deployment["spec"]["template"]["spec"];
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    assert!(selects(&deployment["spec"]["selector"], labels));
    let warden = container(STANDALONE, spec, SIDECAR);
    assert_eq!(
        spec["containers"].as_array().map(Vec::len),
        Some(1),
        "{STANDALONE}: the warden is the pod's only container"
    );
    assert_hardened(STANDALONE, spec, warden);
    assert_config_env_matches_args(STANDALONE, warden);

    // Redis, the database and the token come from the Secret; Redis is not
    // in the pod.
    let env: BTreeMap<String, String> = pod_env(STANDALONE, &objects, warden).into_iter().collect();
    for var in [REDIS_URL_ENV, SOURCE_URL_ENV, TOKEN_ENV] {
        let entry = env_entry(warden, var).unwrap_or_else(|| panic!("{STANDALONE}: no env {var}"));
        assert!(
            entry["valueFrom"]["secretKeyRef"].is_object(),
            "{STANDALONE}: env {var} must come from a Secret: {entry}"
        );
    }
    let redis = url::Url::parse(&env[REDIS_URL_ENV]).expect("the Redis URL parses");
    assert!(
        redis
            .host_str()
            .is_some_and(|h| h != "127.0.0.1" && h != "localhost"),
        "{STANDALONE}: the Redis URL should name a server outside the pod: {redis}"
    );

    // Prometheus finds it: PodMonitor and Service select the pod's port.
    let monitor = one_of(STANDALONE, &objects, "PodMonitor");
    assert!(selects(&monitor["spec"]["selector"], labels));
    let endpoint = &monitor["spec"]["podMetricsEndpoints"][0];
    assert_eq!(port_number(STANDALONE, warden, &endpoint["port"]), 9464);
    assert!(
        monitor["spec"]["jobLabel"].is_null() && name_of(monitor).contains("bullmq-warden"),
        "{STANDALONE}: the scrape job must contain \"bullmq-warden\" for BullMQWardenDown"
    );
    let service = one_of(STANDALONE, &objects, "Service");
    assert!(selects(&service["spec"]["selector"], labels));
    let policy = one_of(STANDALONE, &objects, "NetworkPolicy");
    assert!(selects(&policy["spec"]["podSelector"], labels));

    // The binary accepts the ConfigMap and the Secret: with the Redis URL
    // pointed at a closed port, status gets as far as Redis (exit 5).
    let args = strings(&warden["args"]);
    let path = &args[args.iter().position(|a| a == "--config").unwrap() + 1];
    let toml_text = mounted_file(STANDALONE, &objects, spec, warden, path);
    let scratch = tempfile::tempdir().expect("temporary directory");
    let config = scratch.path().join("warden.toml");
    std::fs::write(&config, toml_text).expect("write the ConfigMap's TOML");
    let output = Command::new(BIN)
        .current_dir(scratch.path())
        .env_clear()
        .envs(env.iter())
        .env(REDIS_URL_ENV, "redis://127.0.0.1:1/0")
        .env(CONFIG_ENV, &config)
        .arg("status")
        .output()
        .expect("run bullmq-warden");
    assert_eq!(
        exit_code(&output),
        Some(EXIT_REDIS_UNREACHABLE),
        "{STANDALONE}: `bullmq-warden status` (config from {CONFIG_ENV}, as under kubectl \
         exec) should get as far as Redis; exit 2 is a configuration error:\n{}",
        support::text_of(&output)
    );
}

/// `GET path` on 127.0.0.1:port: (status, body), or None when nothing answers.
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((status, body))
}

/// Waits until `check` holds; on a timeout the test fails with the log of
/// the process it waited for.
fn wait_for(what: &str, timeout: Duration, log: &Path, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        if start.elapsed() > timeout {
            let log_text = std::fs::read_to_string(log).unwrap_or_default();
            panic!(
                "timed out waiting for {what}; {}:\n{log_text}",
                log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A file for a child's output, to show when it misbehaves.
fn log_file(path: &Path) -> (Stdio, Stdio) {
    let file = std::fs::File::create(path).expect("create a log file");
    let copy = file.try_clone().expect("clone the log file");
    (Stdio::from(file), Stdio::from(copy))
}

fn redis_cli(port: u16, args: &[&str]) -> String {
    let port = port.to_string();
    let mut all = vec!["-p", port.as_str()];
    all.extend_from_slice(args);
    let output = support::run_tool("redis-cli", "redis-tools", &all);
    support::assert_success(&format!("redis-cli {args:?}"), &output)
        .trim()
        .to_owned()
}

#[test]
fn the_pod_runs_redis_and_the_sidecar_as_configured() {
    let pod = pod(OVERLAY);
    let scratch = tempfile::tempdir().expect("temporary directory");
    let dir = scratch.path();

    // Redis from the rendered redis.conf and the container's own command line
    // (whose maxmemory follows the memory limit). Only what cannot exist here
    // changes: the data directory, and the port and address (appended, so
    // they override the file).
    let redis_port = free_port();
    let data = dir.join("data");
    std::fs::create_dir(&data).expect("data directory");
    let conf = pod
        .redis_conf()
        .lines()
        .map(|line| {
            if line.trim_start().starts_with("dir ") {
                format!("dir {}", data.display())
            } else {
                line.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let conf_path = dir.join("redis.conf");
    std::fs::write(&conf_path, conf).expect("write redis.conf");
    let command = pod.redis_command();
    let script = command
        .strip_prefix("sh -c ")
        .unwrap_or_else(|| panic!("{OVERLAY}: expected redis to start through `sh -c`: {command}"));
    let mounted = script
        .split_whitespace()
        .find(|w| w.ends_with(".conf"))
        .expect("a .conf path");
    let script = format!(
        "{} --port {redis_port} --bind 127.0.0.1 --logfile ''",
        script.replace(mounted, &conf_path.to_string_lossy())
    );
    let limit = bytes_of(
        pod.redis()["resources"]["limits"]["memory"]
            .as_str()
            .expect("memory limit"),
    );
    let mut redis_env = pod.env(pod.redis());
    redis_env.push(("MEMORY_LIMIT".into(), limit.to_string())); // resourceFieldRef limits.memory
    let redis_log = dir.join("redis.log");
    let (stdout, stderr) = log_file(&redis_log);
    let redis = Command::new("sh")
        .arg("-c")
        .arg(&script)
        .envs(redis_env)
        .current_dir(dir)
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .unwrap_or_else(|e| panic!("{}", support::missing_tool("sh", "dash", &e)));
    let mut redis = ChildGuard::new(redis, "redis-server");
    // redis-server itself must exist: fail with the package name if not.
    support::run_tool("redis-server", "redis-server", &["--version"]);
    wait_for(
        "redis-server from the rendered redis.conf",
        Duration::from_secs(10),
        &redis_log,
        || {
            if let Some(status) = redis.exit_status() {
                let log = std::fs::read_to_string(&redis_log).unwrap_or_default();
                panic!("redis-server refused the rendered redis.conf ({status}):\n{log}");
            }
            TcpStream::connect(("127.0.0.1", redis_port)).is_ok()
        },
    );
    let config_get = |key: &str| {
        let reply = redis_cli(redis_port, &["CONFIG", "GET", key]);
        reply.lines().nth(1).unwrap_or_default().to_owned()
    };
    assert_eq!(config_get("appendonly"), "yes");
    assert_eq!(config_get("appendfsync"), "everysec");
    assert_eq!(config_get("maxmemory-policy"), "noeviction");
    let maxmemory: u64 = config_get("maxmemory").parse().expect("maxmemory");
    assert!(
        maxmemory > 0 && maxmemory < limit,
        "maxmemory {maxmemory} must be set below the container's memory limit {limit}, so that \
         Redis refuses writes before it is killed"
    );

    // The sidecar with the pod's TOML and environment, on a free port of all
    // addresses, an SQLite source seeded from examples/ instead of PostgreSQL.
    let http_port = free_port();
    let listen = format!("0.0.0.0:{http_port}");
    let redis_url = format!("redis://127.0.0.1:{redis_port}/0");
    let source_url = format!("sqlite://{}", dir.join("tasks.db").display());
    let seed = repo().join("examples/tasks.sql");
    let seed = seed.to_string_lossy();
    let overrides = [
        ("BULLMQ_WARDEN__REDIS__URL", redis_url.as_str()),
        (SOURCE_URL_ENV, source_url.as_str()),
        ("BULLMQ_WARDEN__SOURCE__SQLITE_SEED", &*seed),
        ("BULLMQ_WARDEN__HTTP__LISTEN", listen.as_str()),
        ("BULLMQ_WARDEN__WATCH__DRIFT_INTERVAL", "1s"),
    ];

    // With the Secret's placeholder token the sidecar refuses to serve on
    // 0.0.0.0: the example must not ship a token that works.
    let mut refused = warden(&pod, dir, &["watch"], &overrides)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run bullmq-warden watch");
    let start = Instant::now();
    while refused.try_wait().expect("poll").is_none() {
        if start.elapsed() > Duration::from_secs(10) {
            let _ = refused.kill();
            panic!("bullmq-warden watch served on {listen} with the shipped placeholder token");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = refused.wait_with_output().expect("output");
    assert!(!output.status.success(), "{}", support::text_of(&output));
    assert!(
        support::text_of(&output).contains("placeholder"),
        "{}",
        support::text_of(&output)
    );

    // With a real token, the probes and the metrics answer.
    let mut overrides = overrides.to_vec();
    overrides.push((TOKEN_ENV, "0f3c9a7e5b2d4c6e8a1f3b5d7c9e2a4b"));
    let watch_log = dir.join("watch.log");
    let (stdout, stderr) = log_file(&watch_log);
    let watcher = warden(&pod, dir, &["watch"], &overrides)
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .expect("run bullmq-warden watch");
    let mut watcher = ChildGuard::new(watcher, "bullmq-warden watch");
    let probe = |path: &str| http_get(http_port, path).map(|(status, _)| status);
    wait_for("/healthz", Duration::from_secs(15), &watch_log, || {
        probe("/healthz") == Some(200)
    });
    wait_for("/readyz", Duration::from_secs(30), &watch_log, || {
        probe("/readyz") == Some(200)
    });
    wait_for(
        "keyspace notifications from redis.conf alone (no CONFIG SET)",
        Duration::from_secs(15),
        &watch_log,
        || {
            http_get(http_port, "/metrics").is_some_and(|(_, body)| {
                body.lines().any(|l| {
                    l.starts_with("bullmq_warden_keyspace_notifications_active")
                        && l.ends_with(" 1")
                })
            })
        },
    );
    assert_eq!(
        config_get("notify-keyspace-events")
            .chars()
            .collect::<BTreeSet<_>>(),
        "Kgzxe".chars().collect::<BTreeSet<_>>(),
        "the sidecar changed notify-keyspace-events although manage_keyspace_config = false"
    );

    // The warden's own audit of this Redis finds nothing to complain about.
    let output = warden(&pod, dir, &["check", "--json"], &overrides)
        .output()
        .expect("run bullmq-warden check");
    let audit: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "check --json printed no JSON ({e}):\n{}",
            support::text_of(&output)
        )
    });
    let complaints: Vec<&Value> = audit["findings"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|f| f["severity"] != "info")
        .collect();
    assert!(
        output.status.success() && complaints.is_empty(),
        "bullmq-warden check on the pod's Redis and configuration: {complaints:#?}\n{}",
        support::text_of(&output)
    );

    // SIGTERM (what the kubelet sends) stops it cleanly.
    let pid = watcher.id().to_string();
    support::assert_success(
        "kill -TERM",
        &support::run_tool("kill", "procps", &["-TERM", &pid]),
    );
    let start = Instant::now();
    let status = loop {
        if let Some(status) = watcher.exit_status() {
            break status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(25),
            "bullmq-warden did not stop within 25s of SIGTERM (terminationGracePeriodSeconds)"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "bullmq-warden exited {status} on SIGTERM");
}

// ---------------------------------------------------------------------------
// The PrometheusRule

#[test]
fn prometheus_rule_is_generated_from_the_alert_rules_and_not_stale() {
    let output = support::run_tool("bash", "bash", &[RENDER_RULE, "--stdout"]);
    support::assert_success(&format!("{RENDER_RULE} --stdout"), &output);
    let generated = String::from_utf8_lossy(&output.stdout);
    let committed = read(PROMETHEUS_RULE);
    assert!(
        generated == committed,
        "{PROMETHEUS_RULE} is stale: run {RENDER_RULE} and commit the result.\n--- generated:\n{generated}"
    );
    let check = support::run_tool("bash", "bash", &[RENDER_RULE, "--check"]);
    support::assert_success(&format!("{RENDER_RULE} --check"), &check);

    // Its spec is a valid rule file with every alert of alerts/.
    let spec = committed
        .split_once("\nspec:\n")
        .unwrap_or_else(|| panic!("{PROMETHEUS_RULE}: no spec"))
        .1;
    let groups: String = spec
        .lines()
        .map(|line| format!("{}\n", line.strip_prefix("  ").unwrap_or(line)))
        .collect();
    let scratch = tempfile::tempdir().expect("temporary directory");
    let path = scratch.path().join("spec.rules.yml");
    std::fs::write(&path, &groups).expect("write the spec");
    let text = support::assert_success(
        "promtool check rules on the PrometheusRule's spec",
        &promtool(&["check", "rules", &path.to_string_lossy()]),
    );
    let alerts = alert_names(&read(RULES));
    assert!(
        text.contains(&format!("SUCCESS: {} rules found", alerts.len())),
        "promtool found a different number of rules than the {} alerts of {RULES}:\n{text}",
        alerts.len()
    );

    // The runbook links can point elsewhere, and only they change.
    let output = support::run_tool(
        "bash",
        "bash",
        &[
            RENDER_RULE,
            "--stdout",
            "--runbook-url-prefix",
            "https://wiki.example.com/runbook",
        ],
    );
    let moved = String::from_utf8_lossy(&output.stdout).into_owned();
    support::assert_success("--runbook-url-prefix", &output);
    assert_eq!(
        moved.matches("https://wiki.example.com/runbook#").count(),
        alerts.len()
    );
    // The committed links, up to the anchor, are those of the mixin's runbookURLPattern.
    let default = committed
        .split_once("runbook_url: \"")
        .and_then(|(_, url)| url.split_once('#'))
        .map(|(prefix, _)| format!("{prefix}#"))
        .unwrap_or_else(|| panic!("{PROMETHEUS_RULE}: no runbook_url"));
    assert_eq!(
        moved.replace("https://wiki.example.com/runbook#", &default),
        committed
    );
}

// ---------------------------------------------------------------------------
// systemd, compose, Docker

#[test]
fn systemd_unit_verifies_and_is_hardened() {
    let unit = read(UNIT);
    let directives: BTreeMap<&str, Vec<&str>> = unit
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .fold(BTreeMap::new(), |mut map, (k, v)| {
            map.entry(k).or_default().push(v);
            map
        });
    let value = |key: &str| directives.get(key).and_then(|v| v.last().copied());
    assert_eq!(
        value("ExecStart"),
        Some("/usr/local/bin/bullmq-warden --config /etc/bullmq-warden/warden.toml watch")
    );
    assert_eq!(
        value("ExecReload"),
        Some("/bin/kill -HUP $MAINPID"),
        "{UNIT}: systemctl reload sends the SIGHUP that reloads the config"
    );
    for (key, expected) in [
        ("DynamicUser", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("NoNewPrivileges", "yes"),
        ("PrivateTmp", "yes"),
        ("CapabilityBoundingSet", ""),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("Restart", "on-failure"),
    ] {
        assert_eq!(value(key), Some(expected), "{UNIT}: {key}");
    }
    assert!(
        directives["SystemCallFilter"].contains(&"@system-service"),
        "{UNIT}: SystemCallFilter=@system-service"
    );
    assert!(
        value("MemoryMax").is_some_and(|v| !v.is_empty()),
        "{UNIT}: MemoryMax"
    );
    assert!(
        value("EnvironmentFile").is_some_and(|v| v.starts_with('/')),
        "{UNIT}: EnvironmentFile for the secrets"
    );

    // `systemd-analyze verify` checks that ExecStart's binary exists and is
    // executable, and /usr/local/bin/bullmq-warden is not installed here. So
    // the unit is verified as a copy whose ExecStart names the binary this
    // test was built with; nothing else changes. verify exits 0 even for
    // unknown keys or bad values (it only warns), so any output fails.
    let scratch = tempfile::tempdir().expect("temporary directory");
    let copy = scratch.path().join("bullmq-warden.service");
    let patched = unit.replace(
        "ExecStart=/usr/local/bin/bullmq-warden ",
        &format!("ExecStart={BIN} "),
    );
    assert_ne!(patched, unit, "{UNIT}: ExecStart not found");
    std::fs::write(&copy, patched).expect("write the unit");
    let copy = copy.to_string_lossy().into_owned();
    let output = support::run_tool("systemd-analyze", "systemd", &["verify", &copy]);
    let text = support::text_of(&output);
    assert!(
        output.status.success() && text.trim().is_empty(),
        "systemd-analyze verify {UNIT} ({}):\n{text}",
        output.status
    );
    // The hardening, as systemd itself scores it: at most 2.0 ("OK").
    let output = support::run_tool(
        "systemd-analyze",
        "systemd",
        &["security", "--offline=yes", "--threshold=20", &copy],
    );
    let text = support::text_of(&output);
    assert!(
        output.status.success(),
        "systemd-analyze security scores {UNIT} above 2.0:\n{}",
        text.lines()
            .filter(|l| l.contains('✗') || l.contains("Overall"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn compose_file_is_valid_and_runs_redis_as_bullmq_advises() {
    // docker-compose (v1, Debian's package) validates and resolves the file
    // without talking to a Docker engine; -q prints nothing unless wrong, and
    // warnings (an unset variable, say) count as wrong here.
    for profile in [
        &[][..],
        &["--profile", "monitoring"][..],
        &["--profile", "standalone"][..],
    ] {
        let mut args = vec!["-f", COMPOSE];
        args.extend_from_slice(profile);
        args.extend(["config", "-q"]);
        let output = support::run_tool("docker-compose", "docker-compose", &args);
        let text = support::text_of(&output);
        assert!(
            output.status.success() && text.trim().is_empty(),
            "docker-compose {} ({}):\n{text}",
            args.join(" "),
            output.status
        );
    }
    let output = support::run_tool(
        "docker-compose",
        "docker-compose",
        &[
            "-f",
            COMPOSE,
            "--profile",
            "monitoring",
            "--profile",
            "standalone",
            "config",
            "--services",
        ],
    );
    let services = support::assert_success("docker-compose config --services", &output);
    for service in [
        "redis",
        "bullmq-warden",
        "prometheus",
        "bullmq-warden-standalone",
    ] {
        assert!(
            services.lines().any(|l| l.trim() == service),
            "{COMPOSE}: no service {service}:\n{services}"
        );
    }

    let compose = read(COMPOSE);
    for setting in [
        "--appendonly",
        "--appendfsync",
        "everysec",
        "--maxmemory-policy",
        "noeviction",
        "--notify-keyspace-events",
        "Kgzxe",
    ] {
        assert!(
            compose.contains(setting),
            "{COMPOSE}: redis lacks {setting}"
        );
    }
    assert!(
        compose.contains(&format!("{REDIS_URL_ENV}: ${{REDIS_URL")),
        "{COMPOSE}: the standalone warden takes its Redis from REDIS_URL"
    );
    assert!(
        compose.contains(&format!("dockerfile: {DOCKERFILE}")),
        "{COMPOSE}: bullmq-warden must be built from {DOCKERFILE}"
    );

    // Prometheus' configuration is valid with the rules mounted where it
    // expects them.
    let prometheus = read(COMPOSE_PROMETHEUS);
    let mounted = "/etc/prometheus/rules/bullmq-warden.rules.yml";
    assert!(
        compose.contains(&format!("../../{RULES}:{mounted}")),
        "{COMPOSE}: Prometheus does not get {RULES} at {mounted}"
    );
    let scratch = tempfile::tempdir().expect("temporary directory");
    let config = scratch.path().join("prometheus.yml");
    std::fs::write(
        &config,
        prometheus.replace(mounted, &repo().join(RULES).to_string_lossy()),
    )
    .expect("write prometheus.yml");
    support::assert_success(
        &format!("promtool check config {COMPOSE_PROMETHEUS}"),
        &promtool(&["check", "config", &config.to_string_lossy()]),
    );
}

#[test]
fn dockerfile_builds_in_one_stage_and_runs_non_root_in_another() {
    // No Docker engine here, so the Dockerfile is checked as text.
    let dockerfile = read(DOCKERFILE);
    let instructions: Vec<(String, String)> = dockerfile
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .fold(Vec::<String>::new(), |mut joined, line| {
            // Join continuation lines.
            match joined.last_mut() {
                Some(last) if last.ends_with('\\') => {
                    last.pop();
                    last.push(' ');
                    last.push_str(line);
                }
                _ => joined.push(line.to_owned()),
            }
            joined
        })
        .into_iter()
        .map(|l| match l.split_once(char::is_whitespace) {
            Some((op, rest)) => (op.to_ascii_uppercase(), rest.trim().to_owned()),
            None => (l.to_ascii_uppercase(), String::new()),
        })
        .collect();
    let stages: Vec<usize> = instructions
        .iter()
        .enumerate()
        .filter(|(_, (op, _))| op == "FROM")
        .map(|(i, _)| i)
        .collect();
    assert!(stages.len() >= 2, "{DOCKERFILE}: not a multi-stage build");
    let last = &instructions[*stages.last().unwrap()..];
    let user = last
        .iter()
        .rev()
        .find(|(op, _)| op == "USER")
        .map(|(_, rest)| rest.clone())
        .unwrap_or_else(|| panic!("{DOCKERFILE}: the runtime stage sets no USER"));
    let uid = user.split(':').next().unwrap_or_default();
    assert!(
        uid != "0" && uid != "root",
        "{DOCKERFILE}: the runtime stage runs as {user}"
    );
    for (op, rest) in last {
        assert!(
            op != "RUN",
            "{DOCKERFILE}: the runtime stage runs {rest}; keep it minimal"
        );
    }
    assert!(
        last.iter()
            .any(|(op, rest)| op == "ENTRYPOINT" && rest.contains("/usr/local/bin/bullmq-warden")),
        "{DOCKERFILE}: ENTRYPOINT should be /usr/local/bin/bullmq-warden"
    );
    assert!(
        instructions
            .iter()
            .any(|(op, rest)| op == "RUN" && rest.contains("cargo build --release --locked")),
        "{DOCKERFILE}: builds with cargo build --release --locked"
    );

    check_release_metadata(&instructions, &stages);

    // Every file copied from the build context exists, and the ignore file
    // lets it through.
    let ignore = read(DOCKERIGNORE);
    let allowed: Vec<&str> = ignore
        .lines()
        .filter_map(|l| l.trim().strip_prefix('!'))
        .map(|l| l.trim_end_matches('/'))
        .collect();
    assert!(
        ignore.lines().any(|l| l.trim() == "*"),
        "{DOCKERIGNORE}: should exclude everything but what the build needs (target/ above all)"
    );
    for (op, rest) in &instructions {
        if op != "COPY" || rest.starts_with("--from") {
            continue;
        }
        let words: Vec<&str> = rest
            .split_whitespace()
            .filter(|w| !w.starts_with("--"))
            .collect();
        for source in &words[..words.len() - 1] {
            assert!(
                repo().join(source).exists(),
                "{DOCKERFILE}: COPY {source}: no such file in the repository"
            );
            assert!(
                allowed.contains(source),
                "{DOCKERIGNORE}: {source} is copied but not let through (!{source})"
            );
        }
    }
}

/// Base images pinned by digest, OCI labels from build arguments, the
/// revision handed to the build, and the config path for `exec`.
fn check_release_metadata(instructions: &[(String, String)], stages: &[usize]) {
    let args: BTreeMap<&str, &str> = instructions[..stages[0]]
        .iter()
        .filter(|(op, _)| op == "ARG")
        .filter_map(|(_, rest)| rest.split_once('='))
        .collect();
    for &stage in stages {
        let image = instructions[stage]
            .1
            .split_whitespace()
            .next()
            .unwrap_or_default();
        let resolved = match image.strip_prefix("${").and_then(|i| i.strip_suffix('}')) {
            Some(arg) => args.get(arg).copied().unwrap_or_default(),
            None => image,
        };
        let digest = resolved
            .split_once("@sha256:")
            .map(|(_, d)| d)
            .unwrap_or_default();
        assert!(
            digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit()),
            "{DOCKERFILE}: FROM {image} ({resolved}) is not pinned by an @sha256: digest"
        );
    }
    let last = &instructions[*stages.last().unwrap()..];
    let declared: Vec<&str> = last
        .iter()
        .filter(|(op, _)| op == "ARG")
        .filter_map(|(_, rest)| rest.split('=').next())
        .collect();
    let labels: String = last
        .iter()
        .filter(|(op, _)| op == "LABEL")
        .map(|(_, rest)| rest.as_str())
        .collect();
    for (label, value) in [
        ("version", "\"${VERSION}\""),
        ("revision", "\"${REVISION}\""),
        ("source", "\"https://"),
        ("licenses", "\"MIT\""),
    ] {
        let key = format!("org.opencontainers.image.{label}={value}");
        assert!(labels.contains(&key), "{DOCKERFILE}: no label {key}");
    }
    for arg in ["VERSION", "REVISION"] {
        assert!(
            declared.contains(&arg),
            "{DOCKERFILE}: the runtime stage declares no ARG {arg} for its labels"
        );
    }
    assert!(
        instructions.iter().any(|(op, rest)| op == "RUN"
            && rest.contains("BULLMQ_WARDEN_REVISION=\"${REVISION}\" cargo build")),
        "{DOCKERFILE}: the build must hand REVISION to build.rs as BULLMQ_WARDEN_REVISION"
    );
    assert!(
        last.iter().any(|(op, rest)| op == "ENV"
            && rest == &format!("{CONFIG_ENV}=/etc/bullmq-warden/warden.toml")),
        "{DOCKERFILE}: the image should set {CONFIG_ENV} to where the deployments mount the config"
    );
}
