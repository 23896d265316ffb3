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
//!
//! The pool keeps to [`STEADY_TURNS`] turns while they keep coming back:
//! requests that the app answers quickly wait for one of those rather than
//! opening more connections, which costs the proxy and the app more work
//! per request for the same answers (BENCHMARKS.md, "HTTP/2 clients"). When
//! no turn has come back for [`STALL`] (long polls, event streams and slow
//! requests hold them all), each waiting request grants one more, up to the
//! limit; turns beyond the steady ones are retired as they come back to an
//! empty queue.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::h1::upstream::Upstream;

/// The slots kept for upstreams with nothing idle and no request in hand,
/// past which they are forgotten (peers come and go with their pods).
const KEEP_EMPTY_SLOTS: usize = 64;

/// The turns a pool keeps to while they keep coming back (fewer when the
/// limit is lower).
pub const STEADY_TURNS: usize = 64;

/// How long every turn may be held with none coming back before the
/// requests waiting for one grant themselves more.
pub const STALL: Duration = Duration::from_millis(100);

/// The bounded pools of every upstream address.
pub struct BoundedPool {
    max: usize,
    steady: usize,
    queue_timeout: Duration,
    idle_timeout: Duration,
    slots: Mutex<HashMap<SocketAddr, Arc<Slot>>>,
}

/// One upstream's turns and idle connections.
struct Slot {
    turns: Arc<Semaphore>,
    idle: Mutex<Vec<Upstream>>,
    /// The steady turns: the granted ones never go below.
    steady: usize,
    /// The most it may grant.
    max: usize,
    flow: Mutex<Flow>,
}

/// How many turns a slot has, and whether they come back.
struct Flow {
    /// Turns in existence (the semaphore's permits, taken or not).
    granted: usize,
    /// Requests waiting for a turn.
    waiting: usize,
    /// When a turn last came back (or the slot began).
    last_back: Instant,
}

/// A request's turn at an upstream: held until its response is done with.
pub struct Turn {
    slot: Arc<Slot>,
    permit: Option<OwnedSemaphorePermit>,
}

/// A turn and the connection its request used, given back (connection
/// first) when this drops: once the response body has ended, or the client
/// went away from it.
pub struct Checkin {
    slot: Arc<Slot>,
    conn: Option<Upstream>,
    permit: Option<OwnedSemaphorePermit>,
}

impl BoundedPool {
    /// `max` connections per upstream; a request waits for a turn up to
    /// `queue_timeout`; an idle connection is reused within `idle_timeout`.
    pub fn new(max: usize, queue_timeout: Duration, idle_timeout: Duration) -> BoundedPool {
        let max = max.max(1);
        BoundedPool {
            max,
            steady: max.min(STEADY_TURNS),
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
        let steady = self.steady;
        let s = Arc::new(Slot {
            turns: Arc::new(Semaphore::new(steady)),
            idle: Mutex::new(Vec::new()),
            steady,
            max: self.max,
            flow: Mutex::new(Flow {
                granted: steady,
                waiting: 0,
                last_back: Instant::now(),
            }),
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
            Err(_) => slot.wait(self.queue_timeout).await?,
        };
        let conn = slot.take(self.idle_timeout);
        Some((
            Turn {
                slot,
                permit: Some(permit),
            },
            conn,
        ))
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
        slot.granted() - slot.turns.available_permits()
    }

    /// Turns in existence at `addr`.
    #[cfg(test)]
    fn granted(&self, addr: SocketAddr) -> usize {
        self.slot(addr).granted()
    }
}

/// A request counted among those waiting while it waits.
struct Waiting<'a>(&'a Slot);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.flow().waiting -= 1;
    }
}

impl Slot {
    fn flow(&self) -> std::sync::MutexGuard<'_, Flow> {
        self.flow.lock().unwrap_or_else(|e| e.into_inner())
    }

    #[cfg(test)]
    fn granted(&self) -> usize {
        self.flow().granted
    }

    /// Waits in line for a turn, up to `queue_timeout`; every [`STALL`]
    /// without a turn coming back, grants one more (up to the limit).
    async fn wait(&self, queue_timeout: Duration) -> Option<OwnedSemaphorePermit> {
        self.flow().waiting += 1;
        let _waiting = Waiting(self);
        let deadline = Instant::now() + queue_timeout;
        let acquire = self.turns.clone().acquire_owned();
        let tick = tokio::time::sleep_until(deadline.min(Instant::now() + STALL));
        tokio::pin!(acquire, tick);
        loop {
            tokio::select! {
                biased;
                permit = &mut acquire => return permit.ok(),
                () = &mut tick => {
                    let now = Instant::now();
                    if now >= deadline {
                        return None;
                    }
                    self.grow_if_stalled(now);
                    tick.as_mut().reset(deadline.min(now + STALL));
                }
            }
        }
    }

    /// One more turn, when none has come back for [`STALL`] and the limit
    /// allows; it goes to the first in line.
    fn grow_if_stalled(&self, now: Instant) {
        let mut flow = self.flow();
        if flow.granted < self.max && now.duration_since(flow.last_back) >= STALL {
            flow.granted += 1;
            self.turns.add_permits(1);
        }
    }

    /// A turn comes back: to the next in line, or retired when it is one
    /// beyond the steady ones and nobody waits.
    fn give_back(&self, permit: OwnedSemaphorePermit, now: Instant) {
        let mut flow = self.flow();
        flow.last_back = now;
        if flow.granted > self.steady && flow.waiting == 0 {
            flow.granted -= 1;
            permit.forget();
        } else {
            drop(flow);
            drop(permit);
        }
    }

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
    pub fn checkin(mut self, conn: Upstream) -> Checkin {
        Checkin {
            slot: self.slot.clone(),
            conn: Some(conn),
            permit: self.permit.take(),
        }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        if let Some(p) = self.permit.take() {
            self.slot.give_back(p, Instant::now());
        }
    }
}

impl Drop for Checkin {
    fn drop(&mut self) {
        // The connection goes back before the turn: the next in line finds
        // it.
        let now = Instant::now();
        if let Some(mut conn) = self.conn.take() {
            conn.used = now;
            let mut idle = self.slot.idle.lock().unwrap_or_else(|e| e.into_inner());
            idle.push(conn);
        }
        if let Some(p) = self.permit.take() {
            self.slot.give_back(p, now);
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

    /// A pool of `max` turns keeping to `steady` while they come back.
    fn elastic(max: usize, steady: usize, queue_timeout: Duration) -> BoundedPool {
        let mut pool = BoundedPool::new(max, queue_timeout, Duration::from_secs(60));
        pool.steady = steady;
        pool
    }

    const ADDR: ([u8; 4], u16) = ([127, 0, 0, 9], 9);

    /// Turns that are all held, none coming back (long polls, event
    /// streams), grow one per waiting request each STALL, up to the limit;
    /// past it a request waits out the queue. Given back with nobody
    /// waiting, the turns beyond the steady ones are retired.
    #[tokio::test(start_paused = true)]
    async fn turns_held_with_none_coming_back_grow_up_to_the_limit() {
        let addr = SocketAddr::from(ADDR);
        let pool = elastic(4, 2, Duration::from_secs(5));
        let mut held = vec![
            pool.checkout(addr).await.unwrap().0,
            pool.checkout(addr).await.unwrap().0,
        ];
        assert_eq!(pool.granted(addr), 2);
        let started = Instant::now();
        for granted in [3, 4] {
            held.push(pool.checkout(addr).await.expect("a turn after a stall").0);
            assert_eq!(pool.granted(addr), granted);
        }
        // Each waited one stall: the first since the slot began, the second
        // since the first was granted (no turn came back in between).
        assert_eq!(started.elapsed(), STALL * 2);
        let started = Instant::now();
        assert!(pool.checkout(addr).await.is_none(), "past the limit");
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        assert_eq!(pool.granted(addr), 4);
        drop(held);
        assert_eq!(pool.granted(addr), 2, "the extra turns were not retired");
        assert_eq!(pool.in_use(addr), 0);
    }

    /// Turns that keep coming back are the only ones: requests wait for
    /// them in line, and no more are granted however long the line.
    #[tokio::test(start_paused = true)]
    async fn turns_that_come_back_are_not_added_to() {
        let addr = SocketAddr::from(ADDR);
        let pool = Arc::new(elastic(4, 1, Duration::from_secs(5)));
        let mut turn = pool.checkout(addr).await.unwrap().0;
        let waiters: Vec<_> = (0..5)
            .map(|_| {
                let pool = pool.clone();
                tokio::spawn(async move { pool.checkout(addr).await.map(|(t, _)| t) })
            })
            .collect();
        tokio::task::yield_now().await;
        for w in waiters {
            // Each holds its turn 60 ms (less than a stall), then the next
            // in line takes it.
            tokio::time::sleep(Duration::from_millis(60)).await;
            drop(turn);
            turn = w.await.unwrap().expect("a turn");
            assert_eq!(pool.granted(addr), 1);
        }
        drop(turn);
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
