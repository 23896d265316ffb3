//! One client connection's state: its X-Forwarded-For entry, and the
//! upstream connections bound to it.
//!
//! HTTP/1.1 requests on one client connection come one after another, so
//! they reuse the connection's own app connection and its own connections to
//! peers without a pool checkout; the lock around them is never contended.
//! Bindings are budgeted ([`MAX_BOUND`], [`MAX_BOUND_PEERS`]); beyond the
//! budget, requests go through the shared pools.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use http::HeaderValue;
use hyper::client::conn::http1;

use super::body::Reclaimable;
use super::headers;

/// At most this many app connections are bound to client connections; the
/// requests of further client connections go through the shared pool, so idle
/// clients cannot pin an app connection each.
pub const MAX_BOUND: usize = 128;
/// At most this many connections to peers are bound to client connections
/// (beyond, the shared pool)...
pub const MAX_BOUND_PEERS: usize = 256;
/// ...and at most this many to one client connection (the least recently used
/// one is closed to make room).
pub const MAX_PEERS_PER_CONN: usize = 8;

pin_project_lite::pin_project! {
    /// [`ConnInfo::guard`]'s future.
    pub(super) struct Guarded<'c, F, A> {
        #[pin]
        send: F,
        #[pin]
        abandon: A,
        timer: Option<Pin<Box<tokio::time::Sleep>>>,
        conn: &'c ConnInfo,
    }
}

impl<F: Future, A: Future<Output = ()>> Future for Guarded<'_, F, A> {
    /// None: abandoned.
    type Output = Result<Option<F::Output>, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let out = if let Poll::Ready(v) = this.send.poll(cx) {
            Ok(Some(v))
        } else if this.abandon.poll(cx).is_ready() {
            Ok(None)
        } else {
            match this.timer.as_mut().map(|t| t.as_mut().poll(cx)) {
                Some(Poll::Ready(())) | None => Err(Elapsed),
                Some(Poll::Pending) => return Poll::Pending,
            }
        };
        // The timer goes back to the connection for its next request.
        if let (Some(t), Ok(mut b)) = (this.timer.take(), this.conn.bound.lock()) {
            b.deadline.get_or_insert(t);
        }
        Poll::Ready(out)
    }
}

/// The per-connection facts and state a request needs.
pub struct ConnInfo {
    pub remote: SocketAddr,
    /// The client's X-Forwarded-For entry, formatted once.
    pub(super) forwarded_for: HeaderValue,
    bound: Mutex<Bound>,
    /// The connection spoke HTTP/2 (it gets GOAWAY when the drain starts).
    h2: AtomicBool,
}

#[derive(Default)]
struct Bound {
    /// Connections to peers' sidecars, at most [`MAX_PEERS_PER_CONN`].
    peers: Vec<BoundPeer>,
    /// The response timer, reset for each request: moving a registered
    /// timer later is one atomic store, where a new timer per request is a
    /// timer-wheel insert that also wakes the I/O driver.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

struct BoundPeer {
    addr: SocketAddr,
    sender: http1::SendRequest<Reclaimable>,
    used: tokio::time::Instant,
    _place: Place,
}

/// One of a bounded number of places for bound connections; given back on drop.
pub(super) struct Place(Arc<AtomicUsize>);

impl Place {
    pub(super) fn take(count: &Arc<AtomicUsize>, max: usize) -> Option<Place> {
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1))
            .ok()
            .map(|_| Place(count.clone()))
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The deadline of a request passed.
pub(super) struct Elapsed;

/// A connection to a peer bound to a client connection, taken for one request:
/// the open sender if there is one, and the place it holds.
pub(super) struct PeerBinding {
    pub sender: Option<http1::SendRequest<Reclaimable>>,
    pub place: Place,
}

impl ConnInfo {
    pub fn new(remote: SocketAddr) -> ConnInfo {
        ConnInfo {
            remote,
            forwarded_for: headers::forwarded_for_value(remote.ip()),
            bound: Default::default(),
            h2: AtomicBool::new(false),
        }
    }

    pub fn is_h2(&self) -> bool {
        self.h2.load(Ordering::Relaxed)
    }

    pub(super) fn mark_h2(&self) {
        self.h2.store(true, Ordering::Relaxed);
    }

    /// This connection's bound connection to the peer at `addr` (if it is
    /// open and was used within `idle`), and the place it holds; or a free
    /// place to bind a new one. None: use the shared pool.
    pub(super) fn take_peer(&self, count: &Arc<AtomicUsize>, idle: Duration, addr: SocketAddr) -> Option<PeerBinding> {
        let mut b = self.bound.lock().ok()?;
        if let Some(i) = b.peers.iter().position(|p| p.addr == addr) {
            let p = b.peers.swap_remove(i);
            // A connection idle for longer than the peer keeps it open is
            // not written into: it may be closing just now.
            let usable = p.used.elapsed() < idle && !p.sender.is_closed();
            return Some(PeerBinding {
                sender: usable.then_some(p.sender),
                place: p._place,
            });
        }
        if b.peers.len() >= MAX_PEERS_PER_CONN {
            let oldest = (0..b.peers.len()).min_by_key(|&i| b.peers[i].used)?;
            return Some(PeerBinding {
                sender: None,
                place: b.peers.swap_remove(oldest)._place,
            });
        }
        drop(b);
        Place::take(count, MAX_BOUND_PEERS).map(|place| PeerBinding { sender: None, place })
    }

    pub(super) fn put_peer(&self, addr: SocketAddr, sender: http1::SendRequest<Reclaimable>, place: Place) {
        if let Ok(mut b) = self.bound.lock() {
            b.peers.push(BoundPeer {
                addr,
                sender,
                used: tokio::time::Instant::now(),
                _place: place,
            });
        }
    }

    /// Runs `send` until it ends, `abandon` ends (None) or `limit` passes,
    /// on this connection's reusable timer when it is free (HTTP/2 streams
    /// running at once get timers of their own). One future that holds
    /// `send` in place: an `async fn` would hold it twice, as its argument
    /// and pinned, and each HTTP/2 stream's task holds this.
    pub(super) fn guard<F: Future, A: Future<Output = ()>>(
        &self,
        limit: Duration,
        abandon: A,
        send: F,
    ) -> Guarded<'_, F, A> {
        let taken = self.bound.lock().ok().and_then(|mut b| b.deadline.take());
        let deadline = tokio::time::Instant::now() + limit;
        let timer = match taken {
            Some(mut t) => {
                t.as_mut().reset(deadline);
                t
            }
            None => Box::pin(tokio::time::sleep_until(deadline)),
        };
        Guarded {
            send,
            abandon,
            timer: Some(timer),
            conn: self,
        }
    }
}
