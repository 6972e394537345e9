//! HTTP around the watcher: requests to its API, a one-route endpoint for it
//! to call (a webhook, an application), and settings that open its API on a
//! free port.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use super::process::{block_on, free_port, wait_until};
use super::warden::Watcher;

/// A plain HTTP request for API tests: (status, body).
pub fn http(method: &str, url: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let url = url.to_owned();
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    block_on(move || async move {
        let mut request = reqwest::Client::new().request(method, &url);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        match request.send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                (status, response.text().await.unwrap_or_default())
            }
            Err(e) => (0, e.to_string()),
        }
    })
}

/// A one-route HTTP server on a free loopback port for the warden to call
/// (a webhook, an application): `answer` gets each request's head and body
/// and returns the whole response to write back.
pub fn http_endpoint(
    mut answer: impl FnMut(String, Vec<u8>) -> String + Send + 'static,
) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an endpoint");
    let addr = listener.local_addr().expect("endpoint address");
    std::thread::spawn(move || {
        for mut stream in listener.incoming().map_while(Result::ok) {
            let (head, body) = read_request(&stream);
            let _ = stream.write_all(answer(head, body).as_bytes());
        }
    });
    addr
}

/// A request's head (request line and headers) and its body of
/// `Content-Length` bytes.
fn read_request(stream: &TcpStream) -> (String, Vec<u8>) {
    let mut reader = BufReader::new(stream.try_clone().expect("clone the stream"));
    let mut head = String::new();
    let mut length = 0;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = value.trim().parse().unwrap_or(0);
        }
        head.push_str(&line);
    }
    let mut body = vec![0; length];
    let _ = reader.read_exact(&mut body);
    (head, body)
}

/// Watch settings that react in test time, with the API on `addr`; the
/// `[recovery]` section is open last, for more of its keys.
pub fn fast_watch_with_api(addr: &str) -> String {
    format!(
        "[watch]\ninfo_interval = \"200ms\"\ndrift_interval = \"2s\"\ndebounce_quiet = \"300ms\"\n\
         [http]\nlisten = \"{addr}\"\n[recovery]\n"
    )
}

/// Waits until the watcher at `base` (`http://addr`) says it is ready.
pub fn wait_until_ready(base: &str, watcher: &Watcher, timeout: Duration) {
    assert!(
        wait_until(timeout, || http("GET", &format!("{base}/readyz"), &[]).0
            == 200),
        "not ready within {timeout:?}:\n{}",
        watcher.log()
    );
}

/// `127.0.0.1:<a free port>`, for the watcher's API to listen on.
pub fn free_local_addr() -> String {
    format!("127.0.0.1:{}", free_port())
}
