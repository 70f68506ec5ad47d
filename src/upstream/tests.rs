//! The client against raw sockets: a scripted server per test that writes
//! exactly the bytes a provider (or a broken one) would.

use super::*;
use crate::protocol::error::Origin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Regression: an unresolvable host came back as the gateway's own
/// error, so the route no longer fell back to its next target.
#[tokio::test]
async fn an_unresolvable_host_is_a_transport_failure() {
    let client = UpstreamClient::new(&TimeoutsConfig::default());
    let e = client.resolve("nothing.invalid", 443).await.unwrap_err();
    assert_eq!((e.status, e.origin), (502, Origin::Transport));
}

/// A server that runs `script` on each accepted connection with the
/// connection's number; counts connections.
struct Scripted {
    endpoint: Endpoint,
    connections: Arc<AtomicUsize>,
}

impl Scripted {
    async fn start<F, Fut>(script: F) -> Scripted
    where
        F: Fn(usize, tokio::net::TcpStream) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(AtomicUsize::new(0));
        let count = connections.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let n = count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(script(n, socket));
            }
        });
        Scripted {
            endpoint: Endpoint {
                tls: false,
                host: "127.0.0.1".into(),
                port,
                path: "/v1/chat/completions".into(),
            },
            connections,
        }
    }

    /// A `{}` request to this server through `client`.
    async fn send(&self, client: &UpstreamClient) -> Result<Exchange, ApiError> {
        client.send(&outgoing(&self.endpoint, b"{}"), "mock").await
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// Read one request (head and content-length body); `None` at EOF.
async fn read_request(socket: &mut tokio::net::TcpStream) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .map_or(0, |v| v.trim().parse().unwrap());
            if buf.len() >= end + 4 + length {
                return Some(buf);
            }
        }
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn client() -> UpstreamClient {
    let t = TimeoutsConfig {
        read_ms: 300,
        first_byte_ms: 300,
        ..TimeoutsConfig::default()
    };
    UpstreamClient::new(&t)
}

fn outgoing<'a>(ep: &'a Endpoint, body: &'static [u8]) -> Outgoing<'a> {
    Outgoing {
        endpoint: ep,
        ca: None,
        headers: &[],
        extra_headers: &[],
        body: Bytes::from_static(body),
        stream: false,
        request_id: "req_test",
    }
}

async fn body_of(ex: &mut Exchange) -> Result<Vec<u8>, ApiError> {
    ex.read_all("mock", 1 << 20).await
}

const OK_JSON: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}";

/// The race a pool cannot see coming: the server closes a kept-alive
/// connection just as the next request goes out on it. Nothing was
/// answered, so the request goes out again on a new connection.
#[tokio::test]
async fn a_pooled_connection_closed_under_the_request_is_retried_on_a_new_one() {
    let server = Scripted::start(|n, mut s| async move {
        let mut answered = 0;
        while read_request(&mut s).await.is_some() {
            if n == 0 && answered == 1 {
                return; // the second request on connection 0: closed unanswered
            }
            s.write_all(OK_JSON).await.unwrap();
            answered += 1;
        }
    })
    .await;
    let client = client();
    let out = outgoing(&server.endpoint, b"{\"a\":1}");
    for round in 0..3 {
        let mut ex = client.send(&out, "mock").await.unwrap();
        assert_eq!(body_of(&mut ex).await.unwrap(), b"{}", "round {round}");
        client.finish(ex);
        assert_eq!(client.idle_connections(), 1);
    }
    assert_eq!(server.connections(), 2);
}

/// A connection the server closed while it idled is not handed out.
#[tokio::test]
async fn a_connection_closed_while_idle_is_not_reused() {
    let server = Scripted::start(|_, mut s| async move {
        read_request(&mut s).await;
        s.write_all(OK_JSON).await.unwrap();
    })
    .await;
    let client = client();
    let out = outgoing(&server.endpoint, b"{}");
    for round in 0..2 {
        let mut ex = client.send(&out, "mock").await.unwrap();
        assert_eq!(body_of(&mut ex).await.unwrap(), b"{}", "round {round}");
        client.finish(ex);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(server.connections(), 2);
}

#[tokio::test]
async fn a_kept_alive_connection_carries_every_request_and_sees_the_whole_request() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let server = Scripted::start(move |_, mut s| {
        let log = log.clone();
        async move {
            while let Some(req) = read_request(&mut s).await {
                log.lock().unwrap().push(req);
                s.write_all(OK_JSON).await.unwrap();
            }
        }
    })
    .await;
    let client = client();
    let body: &'static [u8] = Box::leak(vec![b'x'; 100_000].into_boxed_slice());
    let out = outgoing(&server.endpoint, body);
    for _ in 0..5 {
        let mut ex = client.send(&out, "mock").await.unwrap();
        assert_eq!(ex.status(), 200);
        body_of(&mut ex).await.unwrap();
        client.finish(ex);
    }
    assert_eq!(server.connections(), 1);
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 5);
    let req = &seen[0];
    assert!(req.starts_with(b"POST /v1/chat/completions HTTP/1.1\r\n"));
    assert!(req.ends_with(body), "the 100 KB body arrives whole");
}

#[tokio::test]
async fn every_chunk_that_arrived_together_comes_out_as_one_piece() {
    let server = Scripted::start(|_, mut s| async move {
        read_request(&mut s).await;
        let mut reply =
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
                .to_vec();
        for i in 0..20 {
            let event = format!("data: {{\"n\":{i}}}\n\n");
            reply.extend_from_slice(format!("{:x}\r\n{event}\r\n", event.len()).as_bytes());
        }
        s.write_all(&reply).await.unwrap();
        // The end arrives later, split mid-framing.
        tokio::time::sleep(Duration::from_millis(20)).await;
        s.write_all(b"6\r\nlast\n\n\r").await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        s.write_all(b"\n0\r\n\r\n").await.unwrap();
        read_request(&mut s).await;
    })
    .await;
    let client = client();
    let mut ex = server.send(&client).await.unwrap();
    let first = ex.read("mock").await.unwrap().unwrap();
    let text = String::from_utf8(first.to_vec()).unwrap();
    assert_eq!(text.matches("data: ").count(), 20, "{text}");
    let mut rest = Vec::new();
    while let Some(piece) = ex.read("mock").await.unwrap() {
        rest.extend_from_slice(&piece);
    }
    assert_eq!(rest, b"last\n\n");
    client.finish(ex);
    assert_eq!(
        client.idle_connections(),
        1,
        "a chunked body read to its end is reusable"
    );
}

#[tokio::test]
async fn a_body_ended_by_close_is_read_and_not_pooled() {
    let server = Scripted::start(|_, mut s| async move {
        read_request(&mut s).await;
        s.write_all(b"HTTP/1.1 200 OK\r\n\r\nuntil the end")
            .await
            .unwrap();
    })
    .await;
    let client = client();
    let mut ex = server.send(&client).await.unwrap();
    assert_eq!(body_of(&mut ex).await.unwrap(), b"until the end");
    client.finish(ex);
    assert_eq!(client.idle_connections(), 0);
}

#[tokio::test]
async fn broken_answers_are_transport_errors() {
    // What each connection answers, and what the client must say.
    let scripts: [(&'static [u8], u16, &str); 4] = [
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort",
            502,
            "closed the connection before the body ended",
        ),
        (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
            502,
            "malformed chunked body",
        ),
        (b"NOT HTTP AT ALL\r\n\r\n", 502, "malformed response head"),
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nslow",
            504,
            "upstream read timed out",
        ),
    ];
    for (reply, status, says) in scripts {
        let server = Scripted::start(move |_, mut s| async move {
            read_request(&mut s).await;
            s.write_all(reply).await.unwrap();
            if says.contains("timed out") {
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        })
        .await;
        let client = client();
        let result = async {
            let mut ex = server.send(&client).await?;
            body_of(&mut ex).await
        }
        .await;
        let e = result.unwrap_err();
        assert_eq!(e.status, status, "{}", e.message);
        assert!(e.message.contains(says), "{}", e.message);
        assert_eq!(e.origin, Origin::Transport);
        assert_eq!(client.idle_connections(), 0);
    }
}

#[tokio::test]
async fn a_silent_upstream_times_out_at_first_byte_and_nothing_is_resent() {
    let server = Scripted::start(|_, mut s| async move {
        read_request(&mut s).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
    })
    .await;
    let client = client();
    let e = server.send(&client).await.err().unwrap();
    assert_eq!(e.status, 504, "{}", e.message);
    assert!(
        e.message.contains("upstream read timed out"),
        "{}",
        e.message
    );
    assert_eq!(
        server.connections(),
        1,
        "a request that may have been processed is not resent"
    );
}

#[tokio::test]
async fn interim_answers_are_skipped_and_leftover_bytes_spoil_the_connection() {
    let server = Scripted::start(|_, mut s| async move {
        read_request(&mut s).await;
        s.write_all(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}EXTRA",
        )
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
    })
    .await;
    let client = client();
    let mut ex = server.send(&client).await.unwrap();
    assert_eq!(ex.status(), 200);
    assert_eq!(body_of(&mut ex).await.unwrap(), b"{}");
    client.finish(ex);
    assert_eq!(
        client.idle_connections(),
        0,
        "bytes nobody asked for: not reused"
    );
}

#[tokio::test]
async fn a_refused_connection_is_a_connect_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let ep = Endpoint {
        tls: false,
        host: "127.0.0.1".into(),
        port,
        path: "/".into(),
    };
    let e = client()
        .send(&outgoing(&ep, b"{}"), "mock")
        .await
        .err()
        .unwrap();
    assert_eq!(e.status, 502);
    assert!(
        e.message.starts_with("upstream connect error (mock)"),
        "{}",
        e.message
    );
}
