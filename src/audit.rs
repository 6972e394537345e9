//! `check`: what would make schedules vanish or fail to come back.
//!
//! Reads the Redis persistence settings BullMQ depends on, the versions, and the
//! drift between rows and Redis. Managed Redis services often forbid CONFIG;
//! that becomes a warning, never a crash.

use std::collections::HashMap;

use serde::Serialize;

use crate::plan::Plan;
use crate::store::settings::RedisSettings;
use crate::warden::Warden;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Severity {
    Info,
    Warning,
    Error,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Finding {
    pub(crate) severity: Severity,
    /// Short stable name, e.g. `eviction-policy`.
    pub(crate) check: &'static str,
    pub(crate) message: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Audit {
    pub(crate) findings: Vec<Finding>,
}

impl Audit {
    pub(crate) fn has_errors(&self) -> bool {
        self.findings.iter().any(|f| f.severity == Severity::Error)
    }

    fn push(&mut self, severity: Severity, check: &'static str, message: impl Into<String>) {
        self.findings.push(Finding {
            severity,
            check,
            message: message.into(),
        });
    }
}

/// Judges Redis settings the way BullMQ's documentation does.
pub(crate) fn audit_settings(settings: &RedisSettings, audit: &mut Audit) {
    audit_version(&settings.info, audit);
    let Some(config) = &settings.config else {
        audit_from_info(&settings.info, audit);
        return;
    };
    let get = |key: &str| config.get(key).map(String::as_str).unwrap_or_default();
    let aof = get("appendonly") == "yes";
    audit_persistence(aof, get("save"), audit);
    if aof {
        audit_appendfsync(get("appendfsync"), audit);
    }
    audit_policy(get("maxmemory-policy"), audit);
}

fn audit_version(info: &HashMap<String, String>, audit: &mut Audit) {
    let version = info.get("redis_version").cloned().unwrap_or_default();
    let numeric: Vec<u32> = version.split('.').filter_map(|p| p.parse().ok()).collect();
    if numeric.as_slice() < [6, 2].as_slice() {
        audit.push(
            Severity::Error,
            "redis-version",
            format!("Redis {version} is older than 6.2, which BullMQ's scripts need"),
        );
    } else {
        audit.push(Severity::Info, "redis-version", format!("Redis {version}"));
    }
}

/// `save` is the RDB snapshot schedule, empty when there is none.
fn audit_persistence(aof: bool, save: &str, audit: &mut Audit) {
    let rdb = !save.trim().is_empty();
    match (aof, rdb) {
        (false, false) => audit.push(
            Severity::Error,
            "persistence",
            "neither AOF (appendonly no) nor RDB snapshots (save \"\") are on: a restart loses every scheduler",
        ),
        (false, true) => audit.push(
            Severity::Warning,
            "persistence",
            format!(
                "AOF is off: a restart loses schedulers changed since the last RDB snapshot (save \"{save}\"); BullMQ recommends appendonly yes"
            ),
        ),
        (true, _) => audit.push(
            Severity::Info,
            "persistence",
            format!("AOF is on (appendonly yes){}", if rdb { ", and RDB snapshots" } else { "" }),
        ),
    }
}

fn audit_appendfsync(fsync: &str, audit: &mut Audit) {
    if fsync == "no" {
        audit.push(
            Severity::Warning,
            "appendfsync",
            "appendfsync no: the OS decides when the AOF reaches disk; use everysec or always",
        );
    } else {
        audit.push(
            Severity::Info,
            "appendfsync",
            format!("appendfsync {fsync}"),
        );
    }
}

fn audit_policy(policy: &str, audit: &mut Audit) {
    if policy == "noeviction" {
        audit.push(
            Severity::Info,
            "eviction-policy",
            "maxmemory-policy is noeviction, as BullMQ requires",
        );
    } else {
        audit.push(
            Severity::Error,
            "eviction-policy",
            format!("maxmemory-policy is {policy}; BullMQ requires noeviction, or Redis may evict schedulers"),
        );
    }
}

/// What `INFO` tells of the settings when CONFIG GET is not granted (the
/// least-privilege ACL, managed Redis): whether AOF is on and the eviction
/// policy. What only CONFIG shows is named in one warning.
fn audit_from_info(info: &HashMap<String, String>, audit: &mut Audit) {
    let mut unverified = Vec::new();
    match info.get("aof_enabled").map(String::as_str) {
        Some("1") => {
            audit.push(
                Severity::Info,
                "persistence",
                "AOF is on (INFO aof_enabled:1)",
            );
            unverified.push("appendfsync (how often the AOF reaches disk)");
        }
        Some(_) => {
            audit.push(
                Severity::Warning,
                "persistence",
                "AOF is off (INFO aof_enabled:0): unless RDB snapshots are configured, a restart loses every scheduler; BullMQ recommends appendonly yes",
            );
            unverified.push("save (whether RDB snapshots are configured)");
        }
        None => unverified.push("appendonly and save (whether Redis persists at all)"),
    }
    match info.get("maxmemory_policy") {
        Some(policy) => audit_policy(policy, audit),
        None => unverified.push("maxmemory-policy (must be noeviction)"),
    }
    audit.push(
        Severity::Warning,
        "config-access",
        format!(
            "CONFIG GET is not granted (least-privilege ACL or managed Redis), so INFO was read instead; not verified: {}",
            unverified.join(", ")
        ),
    );
}

/// Runs every check; connection failures become findings, not errors.
pub(crate) async fn run(warden: &Warden) -> Audit {
    let mut audit = Audit::default();
    audit_redis(warden, &mut audit).await;
    match warden.snapshot(None).await {
        Ok(snapshot) => {
            let allowed = warden.config().recovery.allow_unverified_bullmq;
            audit_plan(&snapshot.plan, allowed, &mut audit);
        }
        Err(e) => audit.push(Severity::Error, "source", e.to_string()),
    }
    audit
}

async fn audit_redis(warden: &Warden, audit: &mut Audit) {
    let store = warden.store();
    match RedisSettings::read(&store).await {
        Ok(settings) => {
            audit.push(
                Severity::Info,
                "redis",
                format!("{} answers", store.redacted_url()),
            );
            audit_settings(&settings, audit);
        }
        Err(e) => audit.push(Severity::Error, "redis", e.to_string()),
    }
}

/// What the rows and Redis show together; `allowed` is whether the warden
/// may write to queues of an unverified BullMQ version.
fn audit_plan(plan: &Plan, allowed: bool, audit: &mut Audit) {
    let valid: usize = plan.queues.values().map(|q| q.desired).sum();
    audit.push(
        Severity::Info,
        "source",
        format!(
            "the source query answered: {valid} valid rows, {} invalid",
            plan.invalid.len()
        ),
    );
    audit_drift(plan, audit);
    audit_invalid_rows(plan, audit);
    audit_orphans(plan, audit);
    audit_bullmq_versions(plan, allowed, audit);
    audit_legacy_repeatables(plan, audit);
}

fn audit_drift(plan: &Plan, audit: &mut Audit) {
    if plan.missing() > 0 || plan.mismatched() > 0 {
        audit.push(
            Severity::Error,
            "drift",
            format!(
                "{} schedulers missing and {} differ from their rows; run `bullmq-warden recover`",
                plan.missing(),
                plan.mismatched()
            ),
        );
    } else {
        audit.push(
            Severity::Info,
            "drift",
            format!(
                "{} schedulers in place",
                plan.queues.values().map(|q| q.desired).sum::<usize>()
            ),
        );
    }
}

fn audit_invalid_rows(plan: &Plan, audit: &mut Audit) {
    if plan.invalid.is_empty() {
        audit.push(Severity::Info, "invalid-row", "every row is valid");
    }
    for invalid in &plan.invalid {
        audit.push(
            Severity::Warning,
            "invalid-row",
            format!("row {}: {}", invalid.id, invalid.reason),
        );
    }
}

fn audit_orphans(plan: &Plan, audit: &mut Audit) {
    let orphaned: usize = plan.queues.values().map(|q| q.orphaned.len()).sum();
    if orphaned == 0 {
        audit.push(
            Severity::Info,
            "orphans",
            "no scheduler under the id template's prefix lacks its row",
        );
    } else {
        audit.push(
            Severity::Warning,
            "orphans",
            format!("{orphaned} schedulers under the id template's prefix have no row (prune with recovery.prune_orphans)"),
        );
    }
}

fn audit_legacy_repeatables(plan: &Plan, audit: &mut Audit) {
    let legacy: usize = plan.queues.values().map(|q| q.legacy).sum();
    if legacy == 0 {
        audit.push(
            Severity::Info,
            "legacy-repeatable",
            "no legacy repeatable jobs",
        );
    } else {
        audit.push(
            Severity::Warning,
            "legacy-repeatable",
            format!(
                "{legacy} legacy repeatable jobs (BullMQ 5 queue.add with repeat) are left untouched; \
                 source.scheduler_id must name the schedulers the application itself creates"
            ),
        );
    }
}

/// Queues set up by a BullMQ major version the warden was not verified
/// against: an error while the warden leaves them alone, a warning once an
/// operator let it write there.
fn audit_bullmq_versions(plan: &Plan, allowed: bool, audit: &mut Audit) {
    let unverified = plan.unverified_queues();
    if unverified.is_empty() {
        audit.push(
            Severity::Info,
            "bullmq-version",
            "every queue was set up by BullMQ 5 or 6, or records no version",
        );
    }
    for (queue, version) in unverified {
        let (severity, consequence) = match allowed {
            false => (
                Severity::Error,
                "nothing is written there; set [recovery] allow_unverified_bullmq = true to write anyway",
            ),
            true => (
                Severity::Warning,
                "written anyway (recovery.allow_unverified_bullmq)",
            ),
        };
        audit.push(
            severity,
            "bullmq-version",
            format!(
                "queue {queue} was set up by {version}, a BullMQ major version bullmq-warden \
                 was not verified against (5 and 6 are): {consequence}"
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::settings::parse_info;

    fn settings(pairs: &[(&str, &str)]) -> RedisSettings {
        RedisSettings {
            config: Some(
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            info: parse_info("# Server\r\nredis_version:7.0.15\r\n"),
        }
    }

    fn checks(settings: &RedisSettings) -> Vec<(&'static str, Severity)> {
        let mut audit = Audit::default();
        audit_settings(settings, &mut audit);
        audit
            .findings
            .iter()
            .filter(|f| f.severity != Severity::Info)
            .map(|f| (f.check, f.severity))
            .collect()
    }

    #[test]
    fn safe_settings_have_no_findings() {
        let safe = settings(&[
            ("appendonly", "yes"),
            ("appendfsync", "everysec"),
            ("save", "3600 1"),
            ("maxmemory-policy", "noeviction"),
        ]);
        assert!(checks(&safe).is_empty());
    }

    #[test]
    fn unsafe_settings_are_named() {
        let bare = settings(&[
            ("appendonly", "no"),
            ("save", ""),
            ("maxmemory-policy", "allkeys-lru"),
        ]);
        assert_eq!(
            checks(&bare),
            vec![
                ("persistence", Severity::Error),
                ("eviction-policy", Severity::Error)
            ]
        );
    }

    #[test]
    fn without_config_info_shows_aof_and_the_eviction_policy() {
        let info = |text: &str| RedisSettings {
            config: None,
            info: parse_info(&format!("redis_version:7.0.15\r\n{text}")),
        };
        let safe = info("aof_enabled:1\r\nmaxmemory_policy:noeviction\r\n");
        assert_eq!(checks(&safe), vec![("config-access", Severity::Warning)]);
        let bare = info("aof_enabled:0\r\nmaxmemory_policy:allkeys-lru\r\n");
        assert_eq!(
            checks(&bare),
            vec![
                ("persistence", Severity::Warning),
                ("eviction-policy", Severity::Error),
                ("config-access", Severity::Warning)
            ]
        );
        let mut audit = Audit::default();
        audit_settings(&safe, &mut audit);
        let access = audit.findings.last().map(|f| f.message.as_str());
        assert!(
            access.is_some_and(|m| m.contains("not granted") && m.contains("appendfsync")),
            "{access:?}"
        );
    }

    #[test]
    fn forbidden_config_is_a_warning() {
        let managed = RedisSettings {
            config: None,
            info: parse_info("redis_version:7.2.4"),
        };
        assert_eq!(checks(&managed), vec![("config-access", Severity::Warning)]);
    }
}
