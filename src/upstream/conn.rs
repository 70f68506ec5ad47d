//! Upstream connections and the pool of idle ones.
//!
//! Plain TCP is a tokio socket; TLS comes from Pingora's connector (rustls,
//! the provider's CAs, SNI). The pool is a map of stacks behind one mutex:
//! returning a connection is a push, with no task spawned to watch it; a
//! connection the server closed while idle is noticed when it is taken
//! (one non-blocking read) or, failing that, by the stale-connection retry.

use pingora_core::protocols::Stream as PingoraStream;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Idle connections kept per upstream (address, TLS name, CAs).
const MAX_IDLE_PER_UPSTREAM: usize = 128;

pub enum Conn {
    Plain(TcpStream),
    Tls(PingoraStream),
}

/// Which idle connections can carry a request: same address, same TLS
/// name and trust (a connection verified for one host is not reused for
/// another that resolves alike).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    addr: SocketAddr,
    tls: Option<(String, usize)>,
}

impl PoolKey {
    pub fn new(
        addr: SocketAddr,
        tls_name: Option<&str>,
        ca: Option<&Arc<pingora_core::protocols::tls::CaType>>,
    ) -> Self {
        PoolKey {
            addr,
            tls: tls_name.map(|name| {
                (
                    name.to_string(),
                    ca.map_or(0, |c| Arc::as_ptr(c) as *const () as usize),
                )
            }),
        }
    }
}

pub struct IdlePool {
    idle: Mutex<HashMap<PoolKey, Vec<(Instant, Conn)>>>,
    /// How long a connection may sit idle before it is closed.
    max_idle: Duration,
}

impl IdlePool {
    pub fn new(max_idle: Duration) -> Self {
        IdlePool {
            idle: Mutex::new(HashMap::new()),
            max_idle,
        }
    }

    /// The most recently returned connection that is still open.
    pub fn take(&self, key: &PoolKey) -> Option<Conn> {
        let mut closed = Vec::new();
        let found = {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            let stack = idle.get_mut(key)?;
            let mut found = None;
            while let Some((since, mut conn)) = stack.pop() {
                if since.elapsed() < self.max_idle && conn.looks_open() {
                    found = Some(conn);
                    break;
                }
                closed.push(conn);
            }
            found
        };
        drop(closed); // closed outside the lock
        found
    }

    /// Keep `conn` for the next request to `key`.
    pub fn put(&self, key: PoolKey, conn: Conn) {
        let now = Instant::now();
        let expired = {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            let stack = idle.entry(key).or_default();
            // Drop the expired ones and any over the cap.
            let stale = self
                .expired(stack, now)
                .max((stack.len() + 1).saturating_sub(MAX_IDLE_PER_UPSTREAM));
            let expired: Vec<_> = stack.drain(..stale).collect();
            stack.push((now, conn));
            expired
        };
        drop(expired);
    }

    /// Close every connection idle for `max_idle` or longer: without
    /// traffic to an upstream, nothing else would (a connection the server
    /// closed would sit in CLOSE_WAIT until the next request).
    pub fn sweep(&self) -> usize {
        let now = Instant::now();
        let expired: Vec<Conn> = {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            let mut expired = Vec::new();
            for stack in idle.values_mut() {
                let n = self.expired(stack, now);
                expired.extend(stack.drain(..n).map(|(_, conn)| conn));
            }
            idle.retain(|_, stack| !stack.is_empty());
            expired
        };
        expired.len()
    }

    /// How many connections at the bottom of `stack` have expired: it
    /// holds the oldest first, so the expired ones are a prefix.
    fn expired(&self, stack: &[(Instant, Conn)], now: Instant) -> usize {
        stack
            .iter()
            .take_while(|(since, _)| now.duration_since(*since) >= self.max_idle)
            .count()
    }

    /// How often `sweep` should run: half the idle time, within 1-30 s.
    pub fn sweep_interval(&self) -> Duration {
        (self.max_idle / 2).clamp(Duration::from_secs(1), Duration::from_secs(30))
    }

    /// Idle connections held (for tests).
    pub fn idle_count(&self) -> usize {
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.values().map(Vec::len).sum()
    }
}

impl Conn {
    /// An idle connection is open when a read would block: EOF, an error
    /// or unexpected bytes all mean it cannot carry a request.
    fn looks_open(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        let mut byte = [0u8; 1];
        let mut buf = ReadBuf::new(&mut byte);
        matches!(Pin::new(self).poll_read(&mut cx, &mut buf), Poll::Pending)
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, b),
            Conn::Tls(s) => Pin::new(s).poll_write(cx, b),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Conn::Tls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Plain(s) => s.is_write_vectored(),
            Conn::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    async fn pair(listener: &TcpListener) -> (Conn, TcpStream) {
        let addr = listener.local_addr().unwrap();
        let client = TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (Conn::Plain(client), server)
    }

    #[tokio::test]
    async fn the_pool_hands_back_open_connections_newest_first_and_drops_closed_ones() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let key = PoolKey::new(listener.local_addr().unwrap(), None, None);
        let pool = IdlePool::new(Duration::from_secs(60));
        let (a, a_server) = pair(&listener).await;
        let (b, _b_server) = pair(&listener).await;
        let b_port = match &b {
            Conn::Plain(s) => s.local_addr().unwrap().port(),
            Conn::Tls(_) => unreachable!(),
        };
        pool.put(key.clone(), a);
        pool.put(key.clone(), b);
        assert_eq!(pool.idle_count(), 2);
        // Newest first.
        match pool.take(&key) {
            Some(Conn::Plain(s)) => assert_eq!(s.local_addr().unwrap().port(), b_port),
            _ => panic!("expected the newest connection"),
        }
        // The server closes `a` while it idles: it is not handed out.
        drop(a_server);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(pool.take(&key).is_none());
        assert_eq!(pool.idle_count(), 0);
        // Another upstream's key finds nothing.
        let other = PoolKey::new("127.0.0.1:1".parse().unwrap(), None, None);
        assert!(pool.take(&other).is_none());
    }

    #[tokio::test]
    async fn idle_connections_expire_and_the_pool_is_capped() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let key = PoolKey::new(listener.local_addr().unwrap(), None, None);
        let pool = IdlePool::new(Duration::from_millis(30));
        let (a, _a_server) = pair(&listener).await;
        pool.put(key.clone(), a);
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert!(pool.take(&key).is_none(), "idle past max_idle");

        // A sweep closes expired connections with no request to trigger it.
        let (b, _b_server) = pair(&listener).await;
        pool.put(key.clone(), b);
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(pool.idle_count(), 1);
        assert_eq!(pool.sweep(), 1);
        assert_eq!(pool.idle_count(), 0);

        let pool = IdlePool::new(Duration::from_secs(60));
        let mut servers = Vec::new();
        for _ in 0..MAX_IDLE_PER_UPSTREAM + 3 {
            let (c, s) = pair(&listener).await;
            servers.push(s);
            pool.put(key.clone(), c);
        }
        assert_eq!(pool.idle_count(), MAX_IDLE_PER_UPSTREAM);
    }

    #[tokio::test]
    async fn unexpected_bytes_make_an_idle_connection_unusable() {
        use tokio::io::AsyncWriteExt;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let key = PoolKey::new(listener.local_addr().unwrap(), None, None);
        let pool = IdlePool::new(Duration::from_secs(60));
        let (a, mut a_server) = pair(&listener).await;
        pool.put(key.clone(), a);
        // A response nobody asked for would be read as the next answer.
        a_server
            .write_all(b"HTTP/1.1 200 OK\r\n\r\n")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(pool.take(&key).is_none());
    }
}
