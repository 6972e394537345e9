//! FLUSHALL and FLUSHDB as they happen.
//!
//! A flush sends no keyspace event, but Redis tells every client that tracks
//! keys for client-side caching that its whole cache is void: an invalidation
//! without key names. A connection that turns tracking on and never reads a
//! key receives exactly those messages and nothing else, so it costs Redis
//! nothing in between and turns a flush into an immediate poll instead of one
//! up to a poll interval later. Tracking needs RESP3 (Redis 6 or later) and
//! `CLIENT TRACKING`; without them the poll alone sees flushes.

use futures::stream::BoxStream;
use futures::StreamExt;
use redis::aio::MultiplexedConnection;
use redis::{ProtocolVersion, PushKind, Value};

/// What the tracking connection reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FlushNotice {
    /// A database of this server was flushed.
    Flushed,
    /// The tracking connection closed.
    Closed,
}

/// A connection that tracks flushes; dropping it stops the tracking.
pub(crate) struct FlushTracking {
    /// Kept open for as long as the notices are wanted.
    _connection: MultiplexedConnection,
}

impl FlushTracking {
    /// Opens a RESP3 connection to the server of `client` and turns tracking
    /// on; `Err` says why flushes will not be reported.
    pub(crate) async fn start(
        client: &redis::Client,
    ) -> Result<(Self, BoxStream<'static, FlushNotice>), String> {
        let info = client.get_connection_info().clone();
        let resp3 = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let client = redis::Client::open(info.set_redis_settings(resp3))
            .map_err(|e| format!("flush tracking: {e}"))?;
        let (sender, receiver) = futures::channel::mpsc::unbounded();
        let config = redis::AsyncConnectionConfig::new().set_push_sender(sender);
        let mut connection = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| format!("flush tracking needs RESP3 (Redis 6 or later): {e}"))?;
        redis::cmd("CLIENT")
            .arg("TRACKING")
            .arg("ON")
            .query_async::<()>(&mut connection)
            .await
            .map_err(|e| {
                format!("CLIENT TRACKING ON failed ({e}); flushes are seen by the poll")
            })?;
        let notices = receiver
            .filter_map(|push| async move { notice(&push.kind, &push.data) })
            .boxed();
        Ok((
            Self {
                _connection: connection,
            },
            notices,
        ))
    }
}

/// An invalidation whose key list is null is a flush; one naming keys cannot
/// arrive (nothing is read on this connection) and is ignored.
fn notice(kind: &PushKind, data: &[Value]) -> Option<FlushNotice> {
    match kind {
        PushKind::Invalidate if matches!(data.first(), None | Some(Value::Nil)) => {
            Some(FlushNotice::Flushed)
        }
        PushKind::Disconnection => Some(FlushNotice::Closed),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_keyless_invalidation_is_a_flush() {
        assert_eq!(
            notice(&PushKind::Invalidate, &[Value::Nil]),
            Some(FlushNotice::Flushed)
        );
        assert_eq!(
            notice(
                &PushKind::Invalidate,
                &[Value::Array(vec![Value::BulkString(b"k".to_vec())])]
            ),
            None
        );
        assert_eq!(
            notice(&PushKind::Disconnection, &[]),
            Some(FlushNotice::Closed)
        );
        assert_eq!(notice(&PushKind::Message, &[]), None);
    }
}
