//! Properties over what outsiders write — source rows and the config file
//! with its environment overrides — on generated input, 10,000 cases each:
//! nothing panics, every rejection is one line that names its row or key and
//! shows no password, and a row never changes the fate of another scheduler.

use std::collections::BTreeMap;

use bullmq_warden::{
    protected_ids, ColumnValue, Config, DesiredScheduler, DesiredSet, IdTemplate, NextJobFacts,
    QueuePlan, QueueSchedulers, RowRules, SourceRow, StoredScheduler,
};
use proptest::prelude::*;

const CASES: u32 = 10_000;
const NOW: u64 = 1_790_000_000_000;
const DEFAULT_QUEUE: &str = "inspection";
/// A valid row beside every generated one; its scheduler must come out the same.
const BYSTANDER: &str = "bystander";
/// A scheduler in Redis that no template of the warden renders.
const FOREIGN: &str = "app:foreign";

const COLUMNS: [&str; 15] = [
    "id",
    "name",
    "cron",
    "pattern",
    "every_ms",
    "tz",
    "payload",
    "data",
    "opts",
    "queue",
    "start_date",
    "end_date",
    "limit",
    "enabled",
    "extra",
];

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(serde_json::Value::from),
        ".{0,12}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            prop::collection::btree_map(
                prop_oneof![
                    Just("attempts".to_owned()),
                    Just("backoff".to_owned()),
                    Just("priority".to_owned()),
                    Just("removeOnComplete".to_owned()),
                    Just("removeOnFail".to_owned()),
                    Just("delay".to_owned()),
                    Just("type".to_owned()),
                    Just("age".to_owned()),
                    Just("count".to_owned()),
                    "[a-z]{1,6}",
                ],
                inner,
                0..4
            )
            .prop_map(|map| serde_json::Value::Object(map.into_iter().collect())),
        ]
    })
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        // Any characters, control and bidirectional marks included.
        any::<String>(),
        "[\\x00-\\x1f\\x7f\u{202e}a-z:{}]{0,12}",
        json_value().prop_map(|v| v.to_string()),
        prop::sample::select(vec![
            "0 * * * *",
            "*/5 * * * * *",
            "0 0 L * *",
            "0 9 * * 1#2",
            "@daily",
            "61 * * * *",
            "0 0 ? * W",
            "H * * * *",
            "",
            "Europe/Berlin",
            "Mars/Olympus",
            "2026-01-01",
            "2099-12-31 23:59:59",
            "2001-02-03T04:05:06Z",
            "not a date",
            "-5",
            "18446744073709551616",
        ])
        .prop_map(str::to_owned),
    ]
}

fn column_value() -> impl Strategy<Value = ColumnValue> {
    prop_oneof![
        Just(ColumnValue::Null),
        any::<bool>().prop_map(ColumnValue::Bool),
        any::<i64>().prop_map(ColumnValue::Int),
        (-10i64..100_000).prop_map(ColumnValue::Int),
        any::<f64>().prop_map(ColumnValue::Float),
        text().prop_map(ColumnValue::Text),
    ]
}

fn row() -> impl Strategy<Value = SourceRow> {
    prop::collection::btree_map(
        prop::sample::select(COLUMNS.to_vec()),
        column_value(),
        0..10,
    )
    .prop_map(|columns| SourceRow {
        columns: columns
            .into_iter()
            .map(|(name, value)| (name.to_owned(), value))
            // The bystander's id belongs to the bystander alone; two rows
            // with one id are rejected together, by design.
            .filter(|(name, value)| {
                !(name == "id" && value.as_text().as_deref() == Some(BYSTANDER))
            })
            .collect(),
    })
}

fn bystander() -> SourceRow {
    SourceRow {
        columns: BTreeMap::from([
            ("id".to_owned(), ColumnValue::Text(BYSTANDER.to_owned())),
            ("cron".to_owned(), ColumnValue::Text("0 * * * *".to_owned())),
            (
                "payload".to_owned(),
                ColumnValue::Text("{\"a\":1}".to_owned()),
            ),
        ]),
    }
}

fn judge(rows: &[SourceRow], template: &IdTemplate) -> DesiredSet {
    let rules = RowRules {
        default_queue: DEFAULT_QUEUE,
        template,
        now_ms: NOW,
        max_value_bytes: 64,
    };
    let mut set = DesiredSet::default();
    for row in rows {
        set.add(row, &rules);
    }
    set.finish()
}

/// Redis as the plan sees it: a foreign scheduler, and the scheduler the
/// generated row would have, as if it had been restored before.
fn in_redis(own_id: Option<&str>) -> QueueSchedulers {
    let stored = || StoredScheduler {
        next_ms: NOW + 60_000,
        hash: None,
        matches_row: false,
        next_job: NextJobFacts::QUEUED,
    };
    let mut schedulers = BTreeMap::from([(FOREIGN.to_owned(), stored())]);
    if let Some(id) = own_id {
        schedulers.insert(id.to_owned(), stored());
    }
    QueueSchedulers {
        schedulers,
        legacy: 0,
        bullmq_version: None,
    }
}

fn bystander_alone(template: &IdTemplate) -> DesiredScheduler {
    let (queues, invalid) = judge(&[bystander()], template).into_queues();
    assert!(invalid.is_empty());
    queues[DEFAULT_QUEUE][0].clone()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: CASES, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn a_row_is_judged_alone_and_a_rejection_is_one_line_naming_it(generated in row()) {
        let template = IdTemplate::parse("inspection:{id}").expect("template");
        let expected_bystander = bystander_alone(&template);
        let (queues, invalid) = judge(&[bystander(), generated.clone()], &template).into_queues();

        // The bystander comes out exactly as it does alone.
        let bystander_now = queues[DEFAULT_QUEUE]
            .iter()
            .find(|s| s.row_id == BYSTANDER)
            .expect("the bystander stays valid");
        prop_assert_eq!(bystander_now, &expected_bystander);

        let id = generated.id_text();
        match invalid.as_slice() {
            [] => {
                let own: Vec<&DesiredScheduler> =
                    queues.values().flatten().filter(|s| s.row_id != BYSTANDER).collect();
                prop_assert_eq!(own.len(), 1);
                prop_assert_eq!(&own[0].row_id, &id);
                prop_assert_eq!(&own[0].scheduler_id, &format!("inspection:{id}"));
            }
            [rejected] => {
                let named = rejected.id == id
                    || (rejected.id.ends_with('…')
                        && id.starts_with(rejected.id.trim_end_matches('…')));
                prop_assert!(named, "{:?} does not name row {:?}", rejected.id, id);
                prop_assert!(
                    !rejected.reason.contains(['\n', '\r']),
                    "not one line: {:?}", rejected.reason
                );
                prop_assert!(!rejected.reason.is_empty());
                prop_assert!(rejected.reason.len() <= 600, "{} bytes", rejected.reason.len());
            }
            more => prop_assert!(false, "one row, {} rejections: {:?}", more.len(), more),
        }

        // The plan touches no scheduler but the row's own: the foreign one is
        // never an orphan, and a rejected row's scheduler (when it has an id
        // to name one) is kept.
        let protected = protected_ids(&invalid);
        let has_id = generated.get("id").is_some();
        let own_id = format!("inspection:{id}");
        let own_queue = generated
            .get("queue")
            .and_then(ColumnValue::as_text)
            .map_or_else(|| DEFAULT_QUEUE.to_owned(), |q| q.into_owned());
        for (queue, rows) in queues {
            let own_here = has_id && queue == own_queue;
            let stored = in_redis(own_here.then_some(own_id.as_str()));
            let plan = QueuePlan::new(&queue, rows, &stored, &protected, &template, NOW);
            prop_assert!(!plan.orphaned.iter().any(|o| o == FOREIGN));
            if !invalid.is_empty() {
                prop_assert!(!plan.orphaned.contains(&own_id), "a rejected row's scheduler is removed");
            }
            let written: Vec<&str> = plan
                .create
                .iter()
                .map(|s| s.scheduler_id.as_str())
                .chain(plan.update.iter().map(|u| u.scheduler.scheduler_id.as_str()))
                .collect();
            for scheduler_id in written {
                prop_assert!(
                    scheduler_id == own_id || scheduler_id == "inspection:bystander",
                    "writes {}", scheduler_id
                );
            }
        }
    }
}

const SECTIONS: [&str; 6] = ["redis", "source", "recovery", "watch", "http", "extra"];
const KEYS: [&str; 22] = [
    "url",
    "prefix",
    "sentinels",
    "master_name",
    "cluster_nodes",
    "query",
    "queue",
    "scheduler_id",
    "max_value_bytes",
    "prune_orphans",
    "concurrency",
    "strategy",
    "catchup",
    "backoff_min",
    "backoff_max",
    "lease_ttl",
    "webhook_url",
    "webhook_headers",
    "drift_interval",
    "debounce_quiet",
    "listen",
    "token_file",
];
const PASSWORD: &str = "hunter2";

fn config_value() -> impl Strategy<Value = toml::Value> {
    let scalar = prop_oneof![
        any::<bool>().prop_map(toml::Value::Boolean),
        any::<i64>().prop_map(toml::Value::Integer),
        any::<f64>().prop_map(toml::Value::Float),
        text().prop_map(toml::Value::String),
        prop::sample::select(vec![
            "redis://app:hunter2@127.0.0.1:6379/0",
            "rediss://app:hunter2@[::1",
            "postgres://u:hunter2@db/tasks?sslmode=require",
            "mysql://u@db/t?password=hunter2",
            "oracle://u:hunter2@db",
            "https://app/hook?key=hunter2",
            "ftp://u:hunter2@x",
            "500ms",
            "0s",
            "2h",
            "10",
            "{bull}",
            "0.0.0.0:9464",
            "inspection:{id}",
            "webhook",
            "fire_once",
        ])
        .prop_map(|s| toml::Value::String(s.to_owned())),
    ];
    scalar.prop_recursive(2, 8, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(toml::Value::Array),
            prop::collection::btree_map("[A-Za-z-]{1,8}", inner, 0..3)
                .prop_map(|m| toml::Value::Table(m.into_iter().collect())),
        ]
    })
}

fn config_text() -> impl Strategy<Value = String> {
    let document = prop::collection::btree_map(
        prop::sample::select(SECTIONS.to_vec()),
        prop::collection::btree_map(prop::sample::select(KEYS.to_vec()), config_value(), 0..4),
        0..4,
    )
    .prop_map(|sections| {
        let table: toml::Table = sections
            .into_iter()
            .map(|(section, keys)| {
                let keys: toml::Table = keys.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
                (section.to_owned(), toml::Value::Table(keys))
            })
            .collect();
        toml::to_string(&table).unwrap_or_default()
    });
    prop_oneof![
        4 => document,
        // Text that is not TOML at all, or a URL line left unclosed.
        1 => any::<String>(),
        1 => Just("[redis]\nurl = \"redis://u:hunter2@h:6379\n".to_owned()),
    ]
}

fn env_overrides() -> impl Strategy<Value = Vec<(String, String)>> {
    prop::collection::vec(
        (
            prop_oneof![
                (
                    prop::sample::select(SECTIONS.to_vec()),
                    prop::sample::select(KEYS.to_vec())
                )
                    .prop_map(|(s, k)| format!(
                        "BULLMQ_WARDEN__{}__{}",
                        s.to_uppercase(),
                        k.to_uppercase()
                    )),
                "BULLMQ_WARDEN__[A-Z_]{0,12}",
            ],
            prop_oneof![
                text(),
                Just("redis://app:hunter2@127.0.0.1:6379/0".to_owned()),
                Just("[1, 2".to_owned()),
                Just("true".to_owned()),
            ],
        ),
        0..3,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: CASES, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn a_config_is_loaded_or_refused_in_one_line_without_its_passwords(
        text in config_text(),
        env in env_overrides(),
    ) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("warden.toml");
        std::fs::write(&path, &text).expect("write config");
        if let Err(error) = Config::load(Some(&path), env) {
            let message = error.to_string();
            prop_assert!(!message.contains(['\n', '\r']), "not one line: {:?}", message);
            prop_assert!(!message.contains(PASSWORD), "shows a password: {}", message);
        }
    }
}
