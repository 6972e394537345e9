//! A comparison's outcome, published: the desired and drift gauges of every
//! queue, and the drift `GET /api/bullmq/status` serves.

use std::collections::BTreeMap;

use crate::model::Cause;
use crate::plan::Plan;
use crate::report::events::Observer;
use crate::warden::{Drift, QueueStatus};

/// Whether the plan's writes were all made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Settled<'a> {
    /// Only compared: what the plan found is what Redis holds.
    No,
    /// Every write succeeded, but in the queues withheld from writing
    /// (`except`): nothing is missing or differs any more, and with `pruned`
    /// the orphans are gone too.
    Written {
        pruned: bool,
        except: &'a BTreeMap<String, String>,
    },
}

/// In the lasting heap (`memory::lasting`): a new queue's series and the
/// latest drift stay after the comparison that made them.
pub(crate) fn publish_comparison(observer: &Observer, whole: &Plan, settled: Settled<'_>) {
    crate::memory::lasting(|| publish(observer, whole, settled));
}

fn publish(observer: &Observer, whole: &Plan, settled: Settled<'_>) {
    let triggers = Cause::ALL.map(Cause::as_str);
    let mut latest = BTreeMap::new();
    for (queue, plan) in &whole.queues {
        observer.metrics().register_queue(queue, &triggers);
        let invalid = whole
            .invalid
            .iter()
            .filter(|i| i.queue.as_deref() == Some(queue))
            .count();
        let written =
            matches!(settled, Settled::Written { except, .. } if !except.contains_key(queue));
        let pruned = written && matches!(settled, Settled::Written { pruned: true, .. });
        let drift = Drift {
            missing: if written { 0 } else { plan.create.len() },
            mismatched: if written { 0 } else { plan.update.len() },
            orphaned: if pruned { 0 } else { plan.orphaned.len() },
            invalid,
        };
        observer
            .metrics()
            .queues
            .set_drift(queue, plan.desired, plan.legacy, &drift);
        let status = QueueStatus {
            desired: plan.desired,
            legacy: plan.legacy,
            drift,
            ..Default::default()
        };
        latest.insert(queue.clone(), status);
    }
    observer.latest_status().record_comparison(latest);
}
