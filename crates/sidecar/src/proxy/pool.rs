//! The shared pool of HTTP/1.1 connections for what hyper's codec sends
//! (HTTP/2 clients' streams, upgrades when the app speaks h2c), bounded per
//! upstream as HAProxy's server `maxconn`: at most
//! STICKYD_UPSTREAM_MAX_CONNECTIONS connections to the app, and to each
//! peer. A request takes a turn first (a semaphore permit, granted in the
//! order asked), then an idle connection or a new one; a request that finds
//! every turn taken waits in that queue up to STICKYD_QUEUE_TIMEOUT. A turn
//! and its connection are given back when the response body is done with
//! ([`Checkin`]), the connection first, so that the next in line finds it.
//!
//! Every connection is either idle in the list or in the hands of a request
//! holding a turn, and one is opened only when none is idle: there are never
//! more connections than turns. So a spike of 10,000 streams opens no more
//! than the limit, where one connection per stream would overflow the app's
//! accept queue.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::h1::upstream::Upstream;

/// The slots kept for upstreams with nothing idle and no request in hand,
/// past which they are forgotten (peers come and go with their pods).
const KEEP_EMPTY_SLOTS: usize = 64;

/// The bounded pools of every upstream address.
pub struct BoundedPool {
    max: usize,
    queue_timeout: Duration,
    idle_timeout: Duration,
    slots: Mutex<HashMap<SocketAddr, Arc<Slot>>>,
}

/// One upstream's turns and idle connections.
struct Slot {
    turns: Arc<Semaphore>,
    idle: Mutex<Vec<Upstream>>,
}

/// A request's turn at an upstream: held until its response is done with.
pub struct Turn {
    slot: Arc<Slot>,
    permit: OwnedSemaphorePermit,
}

/// A turn and the connection its request used, given back (connection
/// first) when this drops: once the response body has ended, or the client
/// went away from it.
pub struct Checkin {
    slot: Arc<Slot>,
    conn: Option<Upstream>,
    _permit: OwnedSemaphorePermit,
}

impl BoundedPool {
    /// `max` connections per upstream; a request waits for a turn up to
    /// `queue_timeout`; an idle connection is reused within `idle_timeout`.
    pub fn new(max: usize, queue_timeout: Duration, idle_timeout: Duration) -> BoundedPool {
        BoundedPool {
            max: max.max(1),
            queue_timeout,
            idle_timeout,
            slots: Mutex::new(HashMap::new()),
        }
    }

    fn slot(&self, addr: SocketAddr) -> Arc<Slot> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = slots.get(&addr) {
            return s.clone();
        }
        if slots.len() >= KEEP_EMPTY_SLOTS {
            // A turn (and so a request or a response body) holds its slot.
            slots.retain(|_, s| Arc::strong_count(s) > 1 || !s.is_empty());
        }
        let s = Arc::new(Slot {
            turns: Arc::new(Semaphore::new(self.max)),
            idle: Mutex::new(Vec::new()),
        });
        slots.insert(addr, s.clone());
        s
    }

    /// Waits for a turn at `addr` (first come, first served), and takes
    /// the most recently used idle connection that is still open. None:
    /// no turn within STICKYD_QUEUE_TIMEOUT.
    pub async fn checkout(&self, addr: SocketAddr) -> Option<(Turn, Option<Upstream>)> {
        let slot = self.slot(addr);
        let permit = match slot.turns.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => tokio::time::timeout(self.queue_timeout, slot.turns.clone().acquire_owned())
                .await
                .ok()?
                .ok()?,
        };
        let conn = slot.take(self.idle_timeout);
        Some((Turn { slot, permit }, conn))
    }

    /// The upstreams it keeps slots for.
    #[cfg(test)]
    fn slots(&self) -> usize {
        self.slots.lock().unwrap().len()
    }

    /// Turns taken at `addr`.
    #[cfg(test)]
    fn in_use(&self, addr: SocketAddr) -> usize {
        let slot = self.slot(addr);
        self.max - slot.turns.available_permits()
    }
}

impl Slot {
    fn take(&self, idle_timeout: Duration) -> Option<Upstream> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(mut u) = idle.pop() {
            if u.usable(idle_timeout) {
                u.fresh = false;
                return Some(u);
            }
        }
        None
    }

    fn is_empty(&self) -> bool {
        self.idle.lock().map(|i| i.is_empty()).unwrap_or(true)
    }
}

impl Turn {
    /// The turn with the connection its request went out on, to be given
    /// back together.
    pub fn checkin(self, conn: Upstream) -> Checkin {
        Checkin {
            slot: self.slot,
            conn: Some(conn),
            _permit: self.permit,
        }
    }
}

impl Drop for Checkin {
    fn drop(&mut self) {
        // The connection goes back before the turn (a field, dropped after
        // this): the next in line finds it.
        if let Some(mut conn) = self.conn.take() {
            conn.used = tokio::time::Instant::now();
            let mut idle = self.slot.idle.lock().unwrap_or_else(|e| e.into_inner());
            idle.push(conn);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::Connector;
    use tokio::net::TcpListener;

    async fn conn(addr: SocketAddr) -> Upstream {
        Upstream::dial(&Connector::Tcp, addr, Duration::from_secs(1), false)
            .await
            .unwrap()
    }

    /// The turns are the bound: the next request waits until one is given
    /// back, gets the connection given back with it, and gives up after the
    /// queue timeout when none is.
    #[tokio::test]
    async fn requests_past_the_limit_wait_for_a_turn_and_its_connection() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let _accepting = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = l.accept().await {
                held.push(s);
            }
        });
        let pool = BoundedPool::new(2, Duration::from_millis(300), Duration::from_secs(60));
        let (a, none) = pool.checkout(addr).await.unwrap();
        assert!(none.is_none(), "nothing idle yet");
        let (b, _) = pool.checkout(addr).await.unwrap();
        assert_eq!(pool.in_use(addr), 2);
        // Full: the third waits out the queue timeout.
        let started = tokio::time::Instant::now();
        assert!(pool.checkout(addr).await.is_none());
        assert!(started.elapsed() >= Duration::from_millis(300));
        // A waiter gets the turn, and the connection, given back.
        let waiting = pool.checkout(addr);
        tokio::pin!(waiting);
        assert!(futures_util::poll!(waiting.as_mut()).is_pending());
        drop(a.checkin(conn(addr).await));
        let (c, got) = waiting.await.unwrap();
        let got = got.expect("the connection came back with the turn");
        assert!(!got.fresh);
        assert_eq!(pool.in_use(addr), 2);
        drop((b, c));
        assert_eq!(pool.in_use(addr), 0);
    }

    /// A connection the other side closed, or one idle too long, is not
    /// handed out again.
    #[tokio::test]
    async fn closed_and_stale_connections_are_not_reused() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let pool = BoundedPool::new(4, Duration::from_millis(100), Duration::from_secs(60));
        let (turn, _) = pool.checkout(addr).await.unwrap();
        let c = conn(addr).await;
        let (server, _) = l.accept().await.unwrap();
        drop(server);
        // Its end has arrived: readable.
        c.stream.readable().await.unwrap();
        drop(turn.checkin(c));
        assert!(
            pool.checkout(addr).await.unwrap().1.is_none(),
            "a closed connection was handed out"
        );

        let pool = BoundedPool::new(4, Duration::from_millis(100), Duration::from_millis(50));
        let (turn, _) = pool.checkout(addr).await.unwrap();
        let c = conn(addr).await;
        let _server = l.accept().await.unwrap();
        drop(turn.checkin(c));
        let (turn, c) = pool.checkout(addr).await.unwrap();
        let c = c.expect("reused within the idle timeout");
        drop(turn.checkin(c));
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert!(pool.checkout(addr).await.unwrap().1.is_none(), "idle past the timeout");
    }

    /// Slots of upstreams with nothing idle and no turn taken are forgotten
    /// once there are many (peers come and go); one whose turn is taken,
    /// or that holds an idle connection, is kept.
    #[tokio::test]
    async fn slots_of_gone_upstreams_are_forgotten_and_busy_ones_kept() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let idle_addr = l.local_addr().unwrap();
        let pool = BoundedPool::new(1, Duration::from_millis(50), Duration::from_secs(60));
        // More busy upstreams than the slots kept empty.
        let mut held = Vec::new();
        for port in 1..=KEEP_EMPTY_SLOTS as u16 + 6 {
            held.push(pool.checkout(SocketAddr::from(([127, 0, 0, 2], port))).await.unwrap().0);
        }
        let busy: SocketAddr = "127.0.0.2:1".parse().unwrap();
        let (turn, _) = pool.checkout(idle_addr).await.unwrap();
        let _server = {
            let c = conn(idle_addr).await;
            let accepted = l.accept().await.unwrap();
            drop(turn.checkin(c));
            accepted
        };
        for port in 1..=200u16 {
            let gone = SocketAddr::from(([127, 0, 0, 3], port));
            drop(pool.checkout(gone).await.unwrap());
        }
        assert!(pool.slots() <= KEEP_EMPTY_SLOTS + 8, "{} slots", pool.slots());
        // Still one turn, taken: the next waits out the queue.
        assert!(pool.checkout(busy).await.is_none(), "the busy slot was forgotten");
        drop(held);
        let (_turn, c) = pool.checkout(idle_addr).await.unwrap();
        assert!(c.is_some(), "the idle connection was forgotten");
    }
}
