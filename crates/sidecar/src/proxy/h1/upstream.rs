//! Upstream connections of the HTTP/1.1 path: plain TCP streams that hold
//! no buffer while idle. A client connection keeps the ones its requests
//! used (its app connection and up to eight to peers, within a budget for
//! all client connections), so that its next request needs no lookup; the
//! others, and those of a client connection that ends, go to a shared idle
//! pool, bounded per address and in all, that serves the next requests.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use futures_util::FutureExt;
use tokio::io::Interest;
use tokio::net::TcpStream;

use crate::proxy::Connector;

/// Idle connections the shared pool keeps per upstream address...
const POOL_PER_ADDR: usize = 64;
/// ...and in all.
const POOL_TOTAL: usize = 512;

/// One connection to an upstream (the app or a peer's sidecar).
pub struct Upstream {
    pub addr: SocketAddr,
    pub stream: TcpStream,
    /// Opened for the request at hand (not reused).
    pub fresh: bool,
    /// When its last exchange ended.
    /// (tokio's clock: a paused test clock drives the idle limit.)
    pub used: tokio::time::Instant,
}

impl Upstream {
    /// Opens a connection with `connector`, within `timeout`; once more
    /// after a refusal when `again` ([`Connector::connect_again`]).
    pub async fn dial(
        connector: &Connector,
        addr: SocketAddr,
        timeout: Duration,
        again: bool,
    ) -> std::io::Result<Upstream> {
        let stream = connector.connect_again(addr, timeout, again).await?;
        Ok(Upstream {
            addr,
            stream,
            fresh: true,
            used: tokio::time::Instant::now(),
        })
    }

    /// May an idle connection be written into? Not when it sat idle for
    /// `idle` or more (the other side may be closing it just now), nor when
    /// it is readable: an idle HTTP/1.1 connection has nothing to say but
    /// its end. Asks the runtime's readiness, no system call.
    pub fn usable(&self, idle: Duration) -> bool {
        if self.used.elapsed() >= idle {
            return false;
        }
        match self.stream.ready(Interest::READABLE).now_or_never() {
            Some(Ok(r)) => !(r.is_readable() || r.is_read_closed() || r.is_error()),
            Some(Err(_)) => false,
            None => true,
        }
    }
}

/// Idle upstream connections shared by client connections.
#[derive(Default)]
pub struct Pool {
    idle: Mutex<HashMap<SocketAddr, Vec<Upstream>>>,
}

impl Pool {
    /// The most recently used idle connection to `addr` that is usable.
    pub fn take(&self, addr: SocketAddr, idle: Duration) -> Option<Upstream> {
        let mut map = self.idle.lock().ok()?;
        let list = map.get_mut(&addr)?;
        while let Some(mut u) = list.pop() {
            if u.usable(idle) {
                u.fresh = false;
                return Some(u);
            }
        }
        None
    }

    /// Keeps `u` for later, if there is room.
    pub fn put(&self, u: Upstream) {
        let Ok(mut map) = self.idle.lock() else {
            return;
        };
        let total: usize = map.values().map(Vec::len).sum();
        let list = map.entry(u.addr).or_default();
        if list.len() < POOL_PER_ADDR && total < POOL_TOTAL {
            list.push(u);
        }
    }

    /// Closes every idle connection to an address not in `keep`.
    pub fn retain(&self, keep: impl Fn(&SocketAddr) -> bool) {
        if let Ok(mut map) = self.idle.lock() {
            map.retain(|addr, _| keep(addr));
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.idle.lock().unwrap().values().map(Vec::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    #[tokio::test]
    async fn idle_connections_are_checked_before_reuse() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let pool = Pool::default();
        let a = Upstream::dial(&Connector::Tcp, addr, Duration::from_secs(1), false)
            .await
            .unwrap();
        let (mut server_a, _) = l.accept().await.unwrap();
        let b = Upstream::dial(&Connector::Tcp, addr, Duration::from_secs(1), false)
            .await
            .unwrap();
        let (_server_b, _) = l.accept().await.unwrap();
        // The other side closes a: once a is readable, its end has arrived.
        server_a.shutdown().await.unwrap();
        drop(server_a);
        a.stream.readable().await.unwrap();
        pool.put(a);
        pool.put(b);
        assert_eq!(pool.len(), 2);
        // b, the newer, first; then a, closed by the other side, is not.
        let mut got = pool.take(addr, Duration::from_secs(60)).unwrap();
        assert!(!got.fresh);
        assert!(pool.take(addr, Duration::from_secs(60)).is_none());
        // Idle for the whole limit, on tokio's clock: not reused.
        tokio::time::pause();
        got.used = tokio::time::Instant::now();
        pool.put(got);
        tokio::time::advance(Duration::from_millis(59_999)).await;
        let got = pool.take(addr, Duration::from_secs(60)).expect("within the limit");
        pool.put(got);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(pool.take(addr, Duration::from_secs(60)).is_none());
        assert_eq!(pool.len(), 0);
    }

    #[tokio::test]
    async fn the_pool_is_bounded() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let pool = Pool::default();
        let mut servers = Vec::new();
        for _ in 0..POOL_PER_ADDR + 3 {
            pool.put(
                Upstream::dial(&Connector::Tcp, addr, Duration::from_secs(1), false)
                    .await
                    .unwrap(),
            );
            servers.push(l.accept().await.unwrap());
        }
        assert_eq!(pool.len(), POOL_PER_ADDR);
        pool.retain(|a| *a != addr);
        assert_eq!(pool.len(), 0);
    }
}
