//! The watcher itself: its build, its config, its signals (detections by
//! cause, the keyspace subscription) and the standard process metrics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::register;
use crate::model::Cause;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct CauseLabels {
    pub(crate) cause: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    version: &'static str,
    revision: &'static str,
}

pub(crate) struct WatcherMetrics {
    pub(crate) detections: Family<CauseLabels, Counter>,
    pub(crate) keyspace_notifications_active: Gauge,
    pub(crate) config_reload_successful: Gauge,
}

impl WatcherMetrics {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let build_info: Family<VersionLabels, Gauge> = register(
            registry,
            "bullmq_warden_build_info",
            "bullmq-warden version and git revision, always 1",
            Family::default(),
        );
        build_info
            .get_or_create(&VersionLabels {
                version: env!("CARGO_PKG_VERSION"),
                // Set by build.rs: the git commit, or "unknown".
                revision: env!("BULLMQ_WARDEN_REVISION"),
            })
            .set(1);
        registry.register_collector(Box::new(crate::report::process_metrics::ProcessCollector));
        let detections: Family<CauseLabels, Counter> = register(
            registry,
            "bullmq_warden_detections",
            "Signals that may mean schedulers were lost, by cause",
            Family::default(),
        );
        // Counters exist from the start, so that increase() sees their first change.
        for cause in Cause::detected() {
            let _ = detections.get_or_create(&CauseLabels {
                cause: cause.as_str(),
            });
        }
        let config_reload_successful: Gauge = register(
            registry,
            "bullmq_warden_config_last_reload_successful",
            "Whether the last reload of the config file succeeded (1 until one fails)",
            Gauge::default(),
        );
        // The process runs on a config that loaded.
        config_reload_successful.set(1);
        Self {
            detections,
            keyspace_notifications_active: register(
                registry,
                "bullmq_warden_keyspace_notifications_active",
                "Whether the keyspace notifications the watcher needs are on and subscribed",
                Gauge::default(),
            ),
            config_reload_successful,
        }
    }
}
