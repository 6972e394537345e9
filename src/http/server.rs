//! The accept loop under the router: a bounded number of connections, each
//! closed when its request headers take too long or when it sits idle.
//!
//! `axum::serve` has neither bound: half-sent headers were held for as long as
//! the client liked, and a few hundred idle sockets used up the process's file
//! descriptors, so that Redis and the database could not be reached either.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower_service::Service;

use crate::config::HttpConfig;
use crate::report::events::{HttpAcceptFailed, HttpConnectionsFull, Observer};

/// Where a connection stands; its deadline follows from it.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// No request under way since this moment.
    Idle(Instant),
    /// The first bytes of a request arrived at this moment; its headers have not.
    ReadingHead(Instant),
    /// A request is being answered: no deadline (a recovery may take a while).
    Busy,
}

#[derive(Clone, Copy)]
struct Limits {
    header_read: Duration,
    idle: Duration,
}

/// Serves `router` on `listener` until `shutdown`, then lets the requests in
/// flight finish. At most `max_connections` are open at once; while that many
/// are, the next ones wait in the listen backlog (they hold no descriptor of
/// this process) and are served as soon as one closes.
pub(super) async fn serve(
    listener: TcpListener,
    router: Router,
    config: &HttpConfig,
    observer: Observer,
    shutdown: CancellationToken,
) {
    let limits = Limits {
        header_read: config.header_read_timeout,
        idle: config.idle_timeout,
    };
    let slots = Arc::new(Semaphore::new(config.max_connections));
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        if slots.available_permits() == 0 {
            observer.emit(HttpConnectionsFull {
                limit: config.max_connections,
            });
        }
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            _ = shutdown.cancelled() => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of descriptors or a connection reset before it was
                    // taken: pause instead of spinning on the same error.
                    observer.emit(HttpAcceptFailed { error: error.to_string() });
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let router = router.clone();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            serve_connection(stream, router, limits, shutdown).await;
            drop(slot);
        });
    }
    while connections.join_next().await.is_some() {}
}

/// One connection, HTTP/1.1 with keep-alive, until the client closes it, a
/// deadline passes or the server stops.
async fn serve_connection(
    stream: TcpStream,
    router: Router,
    limits: Limits,
    shutdown: CancellationToken,
) {
    let (phase, mut phase_rx) = watch::channel(Phase::Idle(Instant::now()));
    let phase = Arc::new(phase);
    let io = TokioIo::new(Watched {
        inner: stream,
        phase: phase.clone(),
    });
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let mut router = router.clone();
        let phase = phase.clone();
        async move {
            phase.send_replace(Phase::Busy);
            let response = router.call(request).await;
            phase.send_replace(Phase::Idle(Instant::now()));
            response
        }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(io, service);
    tokio::pin!(connection);
    let mut stopping = false;
    loop {
        tokio::select! {
            _ = connection.as_mut() => return,
            _ = shutdown.cancelled(), if !stopping => {
                // Closes the connection once the request under way is answered.
                connection.as_mut().graceful_shutdown();
                stopping = true;
            }
            // Dropping the connection closes the socket.
            _ = expired(&mut phase_rx, limits) => return,
        }
    }
}

/// Resolves once the connection has been idle, or reading one request's
/// headers, for longer than allowed.
async fn expired(phase: &mut watch::Receiver<Phase>, limits: Limits) {
    loop {
        let current = *phase.borrow_and_update();
        let deadline = match current {
            Phase::Idle(since) => Some(since + limits.idle),
            Phase::ReadingHead(since) => Some(since + limits.header_read),
            Phase::Busy => None,
        };
        let changed = async {
            match deadline {
                Some(deadline) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(deadline) => false,
                        changed = phase.changed() => changed.is_ok(),
                    }
                }
                None => phase.changed().await.is_ok(),
            }
        };
        if !changed.await {
            return;
        }
    }
}

/// The socket, noting when the first bytes of a request arrive on an idle
/// connection: from then on its headers have `header_read_timeout`.
struct Watched {
    inner: TcpStream,
    phase: Arc<watch::Sender<Phase>>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before && matches!(*self.phase.borrow(), Phase::Idle(_)) {
            self.phase.send_replace(Phase::ReadingHead(Instant::now()));
        }
        result
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
