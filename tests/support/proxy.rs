//! A TCP proxy on loopback between the warden and a server (Redis or a
//! source database), which a test or benchmark turns into the network
//! failure it needs:
//!
//! - forwarding, the default, optionally slowed by a delay each way
//!   (`delay_each_way`: a slow link);
//! - `blackhole(true)`: forwarding stops without closing anything (a
//!   partition, or a server that hangs): bytes wait in the kernel's buffers,
//!   new connections are still accepted, no side sees an error;
//! - `go_down(how)`: every open connection is closed, and new ones are
//!   refused (`Outage::Refused`: nothing listens, as when the server is
//!   stopped) or accepted and closed at once (`Outage::Closed`: as behind a
//!   balancer whose server is gone); `come_back()` forwards again on the
//!   same address;
//! - `cut_replies_after(bytes)`: a PostgreSQL connection is closed at the
//!   first message boundary past that many bytes from the server (a read cut
//!   short without an error message).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How long a pump waits in one read before it looks at the proxy's state.
const READ_TICK: Duration = Duration::from_millis(50);

/// How a proxy that went down treats new connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outage {
    /// Refused: nothing listens on the proxy's port.
    Refused,
    /// Accepted and closed at once, before a byte passes.
    Closed,
}

pub struct Proxy {
    /// Where clients connect: the proxy's own address on loopback.
    pub addr: SocketAddr,
    upstream: SocketAddr,
    shared: Arc<Shared>,
    /// The thread that accepts connections; none while down.
    acceptor: Mutex<Option<JoinHandle<()>>>,
}

#[derive(Default)]
struct Shared {
    blackholed: AtomicBool,
    /// Set by `go_down` until `come_back`: nothing is forwarded.
    down: AtomicBool,
    /// With `down`: the accepting thread ends, closing the port.
    refusing: AtomicBool,
    /// Set for good when the proxy is dropped.
    stopped: AtomicBool,
    accepted: AtomicUsize,
    /// Connections whose two directions have not both ended.
    open: AtomicUsize,
    /// Server-to-client bytes after which a connection is closed; 0: never.
    cut_after: AtomicUsize,
    /// Connections closed by `cut_after`.
    cut: AtomicUsize,
    /// Milliseconds each direction holds what it read before passing it on:
    /// a slow network, twice this per round trip.
    delay_ms: AtomicUsize,
    /// Both sockets of every open connection, so that `go_down` can close
    /// them at once rather than when their pumps next look.
    connections: Mutex<HashMap<usize, [TcpStream; 2]>>,
    next_id: AtomicUsize,
}

impl Shared {
    /// Whether the pumps must stop and close their connections.
    fn closing(&self) -> bool {
        self.down.load(SeqCst) || self.stopped.load(SeqCst)
    }

    fn forget(&self, id: usize) {
        if let Ok(mut connections) = self.connections.lock() {
            connections.remove(&id);
        }
    }

    fn close_all(&self) {
        let drained: Vec<[TcpStream; 2]> = match self.connections.lock() {
            Ok(mut connections) => connections.drain().map(|(_, pair)| pair).collect(),
            Err(_) => Vec::new(),
        };
        for pair in drained {
            for stream in pair {
                let _ = stream.shutdown(Shutdown::Both);
            }
        }
    }
}

impl Proxy {
    /// A proxy in front of `upstream`, forwarding.
    pub fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy listens");
        let addr = listener.local_addr().expect("proxy address");
        let shared = Arc::new(Shared::default());
        let acceptor = spawn_acceptor(listener, upstream, shared.clone());
        Self {
            addr,
            upstream,
            shared,
            acceptor: Mutex::new(Some(acceptor)),
        }
    }

    /// A proxy in front of the server a database URL names
    /// (`postgres://user@host:port/db`; PostgreSQL's port when it has none).
    pub fn in_front_of(url: &str) -> Self {
        let parsed = url::Url::parse(url).unwrap_or_else(|e| panic!("{url}: {e}"));
        let host = parsed.host_str().expect("a database URL with a host");
        let port = parsed.port().unwrap_or(5432);
        let upstream = (host, port)
            .to_socket_addrs()
            .ok()
            .and_then(|mut addrs| addrs.next())
            .unwrap_or_else(|| panic!("cannot resolve {host}:{port}"));
        Self::start(upstream)
    }

    /// `url` with the proxy's address in place of the server's, and, for
    /// PostgreSQL, without TLS: a cut must reach the database protocol
    /// itself, not TLS's close_notify, and the benchmark measures no TLS.
    pub fn url_for(&self, url: &str) -> String {
        let mut parsed = url::Url::parse(url).unwrap_or_else(|e| panic!("{url}: {e}"));
        parsed
            .set_ip_host(self.addr.ip())
            .expect("a URL that can take a host");
        parsed
            .set_port(Some(self.addr.port()))
            .expect("a URL that can take a port");
        if parsed.scheme().starts_with("postgres") {
            parsed.query_pairs_mut().append_pair("sslmode", "disable");
        }
        parsed.to_string()
    }

    /// Stops (or resumes) forwarding without closing anything. Bytes read
    /// as the partition begins wait for it to end.
    pub fn blackhole(&self, on: bool) {
        self.shared.blackholed.store(on, SeqCst);
    }

    /// Closes every open connection, and refuses or closes new ones as
    /// `how` says, as a server that went away would; returns once nothing
    /// is open (and, for `Outage::Refused`, the port refuses connections).
    pub fn go_down(&self, how: Outage) {
        let Ok(mut acceptor) = self.acceptor.lock() else {
            panic!("the proxy's state is poisoned");
        };
        if self.shared.down.load(SeqCst) {
            return;
        }
        self.shared.refusing.store(how == Outage::Refused, SeqCst);
        self.shared.down.store(true, SeqCst);
        if how == Outage::Refused {
            if let Some(handle) = acceptor.take() {
                // Wakes the accepting thread, which sees the flags and drops
                // the listener: from then on connections are refused.
                let _ = TcpStream::connect(self.addr);
                handle.join().expect("the proxy's accepting thread ended");
            }
        }
        self.shared.close_all();
        // A connection accepted as the flag was set closes at its pumps'
        // next look.
        let deadline = Instant::now() + 2 * READ_TICK + Duration::from_secs(1);
        while self.open() > 0 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Forwards again, on the same address, after `go_down`.
    pub fn come_back(&self) {
        let Ok(mut acceptor) = self.acceptor.lock() else {
            panic!("the proxy's state is poisoned");
        };
        if acceptor.is_some() {
            self.shared.down.store(false, SeqCst);
            return;
        }
        // The port was free a moment ago; something else may have taken it
        // meanwhile, if rarely.
        let deadline = Instant::now() + Duration::from_secs(5);
        let listener = loop {
            match TcpListener::bind(self.addr) {
                Ok(listener) => break listener,
                Err(e) if Instant::now() >= deadline => {
                    panic!("the proxy cannot listen on {} again: {e}", self.addr)
                }
                Err(_) => thread::sleep(Duration::from_millis(20)),
            }
        };
        self.shared.refusing.store(false, SeqCst);
        self.shared.down.store(false, SeqCst);
        *acceptor = Some(spawn_acceptor(listener, self.upstream, self.shared.clone()));
    }

    pub fn delay_each_way(&self, delay: Duration) {
        let millis = usize::try_from(delay.as_millis()).unwrap_or(usize::MAX);
        self.shared.delay_ms.store(millis, SeqCst);
    }

    /// Closes each connection at the first PostgreSQL message boundary past
    /// `bytes` from the server, so that the client gets whole messages only,
    /// as if the server had nothing more to say; 0 turns it off.
    pub fn cut_replies_after(&self, bytes: usize) {
        self.shared.cut_after.store(bytes, SeqCst);
    }

    /// Connections closed by `cut_replies_after`.
    pub fn replies_cut(&self) -> usize {
        self.shared.cut.load(SeqCst)
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.shared.accepted.load(SeqCst)
    }

    /// Connections whose two directions have not both ended.
    pub fn open(&self) -> usize {
        self.shared.open.load(SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stopped.store(true, SeqCst);
        // Wakes the accepting thread so that it sees the flag.
        let _ = TcpStream::connect(self.addr);
        self.shared.close_all();
    }
}

fn spawn_acceptor(
    listener: TcpListener,
    upstream: SocketAddr,
    shared: Arc<Shared>,
) -> JoinHandle<()> {
    thread::spawn(move || {
        for client in listener.incoming() {
            let down = shared.down.load(SeqCst);
            if shared.stopped.load(SeqCst) || (down && shared.refusing.load(SeqCst)) {
                return;
            }
            let Ok(client) = client else { continue };
            if down {
                let _ = client.shutdown(Shutdown::Both);
                continue;
            }
            shared.accepted.fetch_add(1, SeqCst);
            let Ok(server) = TcpStream::connect(upstream) else {
                continue;
            };
            let (Ok(client_copy), Ok(server_copy)) = (client.try_clone(), server.try_clone())
            else {
                continue;
            };
            let id = shared.next_id.fetch_add(1, SeqCst);
            {
                let Ok(mut connections) = shared.connections.lock() else {
                    return;
                };
                // `go_down` sets the flag before it closes what is listed.
                if shared.closing() {
                    continue;
                }
                connections.insert(id, [client_copy, server_copy]);
                shared.open.fetch_add(1, SeqCst);
            }
            let ended = Arc::new(AtomicUsize::new(0));
            for (from, to, from_server) in [
                (client.try_clone(), server.try_clone(), false),
                (Ok(server), Ok(client), true),
            ] {
                let shared = shared.clone();
                let ended = ended.clone();
                thread::spawn(move || {
                    if let (Ok(from), Ok(to)) = (from, to) {
                        pump(from, to, from_server, &shared);
                    }
                    if ended.fetch_add(1, SeqCst) == 1 {
                        shared.forget(id);
                        shared.open.fetch_sub(1, SeqCst);
                    }
                });
            }
        }
    })
}

/// Copies one direction until either side closes, the proxy goes down or
/// stops, or the byte budget of a server-to-client direction is spent.
fn pump(mut from: TcpStream, mut to: TcpStream, from_server: bool, shared: &Shared) {
    let _ = from.set_read_timeout(Some(READ_TICK));
    let mut buffer = [0u8; 16 * 1024];
    let mut carried = 0usize;
    let mut framing = Framing::default();
    let closed_by_proxy = loop {
        if shared.closing() {
            break true;
        }
        if shared.blackholed.load(SeqCst) {
            thread::sleep(Duration::from_millis(20));
            continue;
        }
        let n = match from.read(&mut buffer) {
            Ok(0) => break false,
            // Bytes read as the partition began wait for it to end.
            Ok(n) => {
                while shared.blackholed.load(SeqCst) && !shared.closing() {
                    thread::sleep(Duration::from_millis(20));
                }
                if shared.closing() {
                    break true;
                }
                n
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(_) => break false,
        };
        // Whatever arrived meanwhile is read next time and held once: the
        // delay is per trip, not per command, as on a slow link.
        let delay = shared.delay_ms.load(SeqCst);
        if delay > 0 {
            thread::sleep(Duration::from_millis(delay as u64));
        }
        let budget = shared.cut_after.load(SeqCst);
        let ends = match from_server {
            true => framing.message_ends(&buffer[..n]),
            false => Vec::new(),
        };
        // The first message end past the budget.
        let cut_at = ends.into_iter().find(|end| carried + end > budget);
        if let (true, Some(end)) = (budget > 0, cut_at) {
            let _ = to.write_all(&buffer[..end]);
            shared.cut.fetch_add(1, SeqCst);
            break true;
        }
        if to.write_all(&buffer[..n]).is_err() {
            break false;
        }
        carried += n;
    };
    match closed_by_proxy {
        true => {
            let _ = to.shutdown(Shutdown::Both);
            let _ = from.shutdown(Shutdown::Both);
        }
        // One side finished: pass that on, and let the other direction end
        // by itself.
        false => {
            let _ = to.shutdown(Shutdown::Write);
        }
    }
}

/// Where PostgreSQL's server messages end in a byte stream: each is a type
/// byte and a 4-byte big-endian length that counts itself.
#[derive(Default)]
struct Framing {
    header: Vec<u8>,
    left: usize,
}

impl Framing {
    /// Offsets in `chunk` just past the end of a message.
    fn message_ends(&mut self, chunk: &[u8]) -> Vec<usize> {
        let mut ends = Vec::new();
        let mut at = 0;
        while at < chunk.len() {
            if self.left > 0 {
                let take = self.left.min(chunk.len() - at);
                self.left -= take;
                at += take;
            } else {
                self.header.push(chunk[at]);
                at += 1;
                if self.header.len() < 5 {
                    continue;
                }
                let length = u32::from_be_bytes([
                    self.header[1],
                    self.header[2],
                    self.header[3],
                    self.header[4],
                ]);
                self.left = (length as usize).saturating_sub(4);
                self.header.clear();
            }
            if self.left == 0 && self.header.is_empty() {
                ends.push(at);
            }
        }
        ends
    }
}
