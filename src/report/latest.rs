//! What `GET /api/bullmq/status` serves: the counts of the watcher's latest
//! poll and the drift of its latest comparison.
//!
//! A comparison reads every row and every scheduler; running one per request
//! let a handful of clients multiply the sidecar's memory and slow a recovery
//! down. The watcher compares anyway (every drift check, every recovery), so
//! the route serves what it found, with its age, and holds one entry per queue.

use std::collections::BTreeMap;
use std::sync::RwLock;

use serde::Serialize;

use crate::clock::now_ms;
use crate::model::JobCounts;
use crate::warden::{QueueStatus, StatusReport};

/// The status of `status --json`, with when it was read.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ServedStatus {
    #[serde(flatten)]
    pub(crate) report: StatusReport,
    /// When rows and Redis were last compared, or brought in line by a
    /// recovery (epoch milliseconds): where `desired`, `legacy` and `drift`
    /// come from.
    pub(crate) compared_at: u64,
    /// When the job counts were polled (epoch milliseconds).
    pub(crate) polled_at: u64,
    /// Milliseconds since `comparedAt`; at most about one
    /// `watch.drift_interval` while the source and Redis answer.
    pub(crate) age_ms: u64,
}

/// Why there is no status to serve.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum NotServed {
    #[error("rows and Redis have not been compared yet")]
    NotCompared,
    #[error("queue {0:?} was compared but not polled yet; ask again in a moment")]
    NotPolled(String),
    #[error("queue {0:?} is not watched: no row names it and it is not source.queue")]
    UnknownQueue(String),
}

#[derive(Default)]
struct Board {
    counts: BTreeMap<String, JobCounts>,
    polled_at: Option<u64>,
    /// Per queue, everything but the counts.
    compared: BTreeMap<String, QueueStatus>,
    compared_at: Option<u64>,
}

/// Written by the poll and by every comparison, read by the API.
#[derive(Default)]
pub(crate) struct LatestStatus {
    board: RwLock<Board>,
    /// Woken by every poll: a comparison that found a new queue is followed
    /// by a poll that counts it within `watch.info_interval`.
    polled: tokio::sync::Notify,
}

impl LatestStatus {
    /// Takes the counts of one poll, in place of the previous poll's.
    pub(crate) fn record_poll(&self, counts: &BTreeMap<String, JobCounts>) {
        if let Ok(mut board) = self.board.write() {
            board.counts.clone_from(counts);
            board.polled_at = Some(now_ms());
        }
        self.polled.notify_waiters();
    }

    /// Like `served`, but a queue compared and not polled yet is waited for,
    /// for at most two polls (of at most `wait` each).
    pub(crate) async fn served_after_poll(
        &self,
        only_queue: Option<&str>,
        wait: std::time::Duration,
    ) -> Result<ServedStatus, NotServed> {
        for _ in 0..2 {
            match self.served(only_queue) {
                Err(NotServed::NotPolled(_)) => {
                    let _ = tokio::time::timeout(wait, self.polled.notified()).await;
                }
                other => return other,
            }
        }
        self.served(only_queue)
    }

    /// Takes the rows and drift of one comparison (the counts of each
    /// `QueueStatus` are not used), in place of the previous one.
    pub(crate) fn record_comparison(&self, queues: BTreeMap<String, QueueStatus>) {
        if let Ok(mut board) = self.board.write() {
            board.compared = queues;
            board.compared_at = Some(now_ms());
        }
    }

    /// The status of every compared queue, or of `only_queue`.
    pub(crate) fn served(&self, only_queue: Option<&str>) -> Result<ServedStatus, NotServed> {
        let board = self.board.read().map_err(|_| NotServed::NotCompared)?;
        let (Some(compared_at), Some(polled_at)) = (board.compared_at, board.polled_at) else {
            return Err(NotServed::NotCompared);
        };
        if let Some(only) = only_queue {
            if !board.compared.contains_key(only) {
                return Err(NotServed::UnknownQueue(only.to_owned()));
            }
        }
        let mut report = StatusReport::default();
        for (queue, compared) in &board.compared {
            if only_queue.is_some_and(|only| only != queue) {
                continue;
            }
            let counts = board
                .counts
                .get(queue)
                .ok_or_else(|| NotServed::NotPolled(queue.clone()))?;
            let status = QueueStatus {
                counts: counts.clone(),
                ..compared.clone()
            };
            report.queues.insert(queue.clone(), status);
        }
        Ok(ServedStatus {
            report,
            compared_at,
            polled_at,
            age_ms: now_ms().saturating_sub(compared_at),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compared(desired: usize) -> QueueStatus {
        QueueStatus {
            desired,
            ..QueueStatus::default()
        }
    }

    #[test]
    fn serves_only_after_a_comparison_and_a_poll_of_each_queue() {
        let latest = LatestStatus::default();
        assert_eq!(latest.served(None).unwrap_err(), NotServed::NotCompared);
        let counts = |waiting| JobCounts {
            waiting,
            ..JobCounts::default()
        };
        latest.record_poll(&BTreeMap::from([("a".to_owned(), counts(1))]));
        assert_eq!(latest.served(None).unwrap_err(), NotServed::NotCompared);
        latest.record_comparison(BTreeMap::from([
            ("a".to_owned(), compared(2)),
            ("b".to_owned(), compared(3)),
        ]));
        assert_eq!(
            latest.served(None).unwrap_err(),
            NotServed::NotPolled("b".into())
        );
        let only_a = latest.served(Some("a")).unwrap();
        assert_eq!(only_a.report.queues["a"].counts.waiting, 1);
        assert_eq!(only_a.report.queues["a"].desired, 2);
        assert_eq!(
            latest.served(Some("c")).unwrap_err(),
            NotServed::UnknownQueue("c".into())
        );
        latest.record_poll(&BTreeMap::from([
            ("a".to_owned(), counts(4)),
            ("b".to_owned(), counts(5)),
        ]));
        let all = latest.served(None).unwrap();
        assert_eq!(all.report.queues.len(), 2);
        assert_eq!(all.report.queues["b"].counts.waiting, 5);
        assert!(all.age_ms < 60_000);
    }
}
