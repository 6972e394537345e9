//! The HTTP server.

use super::LogEvent;

pub(crate) struct HttpListening<'a> {
    pub(crate) addr: &'a str,
}

impl LogEvent for HttpListening<'_> {
    fn log(self) {
        tracing::info!(
            event = "http_listening",
            addr = self.addr,
            "serving /metrics and the API"
        );
    }
}

/// Every HTTP connection slot is taken: new connections wait for one.
pub(crate) struct HttpConnectionsFull {
    pub(crate) limit: usize,
}

impl LogEvent for HttpConnectionsFull {
    fn log(self) {
        tracing::warn!(
            event = "http_connections_full",
            limit = self.limit,
            "all http.max_connections are open; new connections wait until one closes"
        );
    }
}

/// The HTTP listener could not take a connection.
pub(crate) struct HttpAcceptFailed {
    pub(crate) error: String,
}

impl LogEvent for HttpAcceptFailed {
    fn log(self) {
        tracing::error!(event = "http_accept_failed", "{}", self.error);
    }
}
