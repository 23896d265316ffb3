//! The endpoint view: which pods' sidecars exist, where, and in what state.
//!
//! The data path reads an immutable [`View`] through an [`EndpointStore`]
//! (an `ArcSwap`): a lock-free load per request. Sources build a whole new
//! view and swap it in atomically.

pub mod fixed;
pub mod kubernetes;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use serde::Serialize;
use tokio::sync::watch;

use crate::affinity::SessionId;

/// A pod's state in the view, from its EndpointSlice conditions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerState {
    /// `ready`: takes new and existing sessions.
    Ready,
    /// `serving && terminating`: keeps its existing sessions, takes no new ones.
    Draining,
}

impl PeerState {
    pub fn as_str(self) -> &'static str {
        match self {
            PeerState::Ready => "ready",
            PeerState::Draining => "draining",
        }
    }
}

/// One pod's sidecar.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Peer {
    pub name: String,
    #[serde(serialize_with = "ser_id")]
    pub id: SessionId,
    pub addr: SocketAddr,
    pub state: PeerState,
}

fn ser_id<S: serde::Serializer>(id: &SessionId, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&id.encode())
}

impl Peer {
    pub fn new(name: impl Into<String>, addr: SocketAddr, state: PeerState) -> Peer {
        let name = name.into();
        Peer {
            id: SessionId::for_pod(&name),
            name,
            addr,
            state,
        }
    }
}

/// An immutable snapshot of the peers.
#[derive(Debug, Default)]
pub struct View {
    /// False until the source has listed the peers once. Until then no
    /// decision may destroy a pin on a guess.
    pub synced: bool,
    /// Increases with every swap.
    pub generation: u64,
    peers: Vec<Peer>,
    by_id: HashMap<SessionId, usize, IdHash>,
}

/// Hashes a [`SessionId`] by its first 8 bytes. The ids are SHA-256 output,
/// already uniform; the map holds only the view's pods (a client's cookie
/// is looked up, never inserted), so a chosen id cannot degrade it. Two
/// lookups per request, each far cheaper than SipHash.
#[derive(Clone, Copy, Debug, Default)]
pub struct IdHash;

impl std::hash::BuildHasher for IdHash {
    type Hasher = IdHasher;
    fn build_hasher(&self) -> IdHasher {
        IdHasher(0)
    }
}

#[derive(Debug)]
pub struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // SessionId hashes as one slice of its bytes (after a length).
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = self.0.rotate_left(29) ^ u64::from_le_bytes(word);
        }
    }

    fn write_usize(&mut self, _len: usize) {}
}

impl View {
    /// Builds a view. Peers are sorted by name; a later duplicate name is dropped.
    pub fn new(mut peers: Vec<Peer>, synced: bool, generation: u64) -> View {
        peers.sort_by(|a, b| a.name.cmp(&b.name));
        peers.dedup_by(|a, b| a.name == b.name);
        let by_id = peers.iter().enumerate().map(|(i, p)| (p.id, i)).collect();
        View {
            synced,
            generation,
            peers,
            by_id,
        }
    }

    /// A view that has not been synced yet.
    pub fn unsynced() -> View {
        View::new(Vec::new(), false, 0)
    }

    pub fn get(&self, id: &SessionId) -> Option<&Peer> {
        self.by_id.get(id).map(|&i| &self.peers[i])
    }

    pub fn peers(&self) -> &[Peer] {
        &self.peers
    }

    pub fn len(&self) -> usize {
        self.peers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// Is `addr` the address of a member's sidecar?
    pub fn is_member_addr(&self, addr: &SocketAddr) -> bool {
        self.peers.iter().any(|p| p.addr == *addr)
    }

    /// A ready peer other than `except`, chosen by `pick` (0..n), to take a
    /// new session while `except` drains.
    pub fn ready_peer_except(&self, except: &SessionId, pick: usize) -> Option<&Peer> {
        let n = self
            .peers
            .iter()
            .filter(|p| p.state == PeerState::Ready && p.id != *except)
            .count();
        if n == 0 {
            return None;
        }
        self.peers
            .iter()
            .filter(|p| p.state == PeerState::Ready && p.id != *except)
            .nth(pick % n)
    }

    pub fn count(&self, state: PeerState) -> usize {
        self.peers.iter().filter(|p| p.state == state).count()
    }
}

/// The JSON shape of `/endpoints`.
#[derive(Serialize)]
pub struct ViewJson<'a> {
    pub synced: bool,
    pub generation: u64,
    pub this_pod: &'a str,
    pub peers: &'a [Peer],
}

/// Where the data path reads the current view from.
#[derive(Clone)]
pub struct EndpointStore {
    inner: Arc<ArcSwap<View>>,
    /// The generation of each view swapped in, for those who wait on changes.
    changes: Arc<watch::Sender<u64>>,
}

impl Default for EndpointStore {
    fn default() -> Self {
        EndpointStore::new(View::unsynced())
    }
}

impl EndpointStore {
    pub fn new(view: View) -> EndpointStore {
        let generation = view.generation;
        EndpointStore {
            inner: Arc::new(ArcSwap::from_pointee(view)),
            changes: Arc::new(watch::channel(generation).0),
        }
    }

    /// Tells of every view swapped in (its generation).
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Waits until the view is synced, or `deadline`. True: synced.
    pub async fn synced_by(&self, deadline: tokio::time::Instant) -> bool {
        let mut changes = self.changes();
        loop {
            if self.inner.load().synced {
                return true;
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return self.inner.load().synced,
            }
        }
    }

    /// A lock-free read of the current snapshot.
    pub fn load(&self) -> arc_swap::Guard<Arc<View>> {
        self.inner.load()
    }

    pub fn load_full(&self) -> Arc<View> {
        self.inner.load_full()
    }

    /// Replaces the whole view; the generation is set to the previous one + 1.
    pub fn replace(&self, peers: Vec<Peer>, synced: bool) {
        let generation = self.inner.load().generation + 1;
        self.inner.store(Arc::new(View::new(peers, synced, generation)));
        self.changes.send_replace(generation);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn view_lookup_and_swap() {
        let store = EndpointStore::default();
        assert!(!store.load().synced);
        store.replace(
            vec![
                Peer::new("b", a(2), PeerState::Ready),
                Peer::new("a", a(1), PeerState::Draining),
                Peer::new("b", a(3), PeerState::Ready),
            ],
            true,
        );
        let v = store.load();
        assert!(v.synced);
        assert_eq!(v.generation, 1);
        assert_eq!(v.len(), 2);
        assert_eq!(v.peers()[0].name, "a");
        assert_eq!(v.get(&SessionId::for_pod("b")).unwrap().addr, a(2));
        assert!(v.get(&SessionId::for_pod("c")).is_none());
        assert!(v.is_member_addr(&a(1)));
        assert_eq!(v.count(PeerState::Draining), 1);
        assert_eq!(v.ready_peer_except(&SessionId::for_pod("a"), 7).unwrap().name, "b");
        assert!(v.ready_peer_except(&SessionId::for_pod("b"), 0).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_for_the_first_sync() {
        use tokio::time::{Duration, Instant};
        let store = EndpointStore::default();
        let mut changes = store.changes();
        // Not synced by the deadline.
        let t = Instant::now();
        assert!(!store.synced_by(t + Duration::from_secs(2)).await);
        assert_eq!(t.elapsed(), Duration::from_secs(2));
        // An unsynced swap does not end the wait; the synced one does, at once.
        let waiter = tokio::spawn({
            let store = store.clone();
            async move {
                let t = Instant::now();
                (store.synced_by(t + Duration::from_secs(10)).await, t.elapsed())
            }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        store.replace(vec![], false);
        tokio::time::sleep(Duration::from_secs(1)).await;
        store.replace(vec![Peer::new("a", a(1), PeerState::Ready)], true);
        assert_eq!(waiter.await.unwrap(), (true, Duration::from_secs(2)));
        assert!(changes.has_changed().unwrap());
        assert_eq!(*changes.borrow_and_update(), 2);
        // Synced already: no wait.
        let t = Instant::now();
        assert!(store.synced_by(t).await);
    }
}
