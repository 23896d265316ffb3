//! The endpoint view: which pods' sidecars exist, where, and in what state.
//!
//! The data path reads an immutable [`View`] through an [`EndpointStore`]
//! (an `ArcSwap`): a lock-free load per request. Sources swap in a whole new
//! view atomically, and every swap is announced on [`EndpointStore::changes`].
//!
//! A view's peers are a [`PeerSet`]: persistent structures (an RRB vector
//! sorted by name, and a hash array mapped trie by id, from `imbl`) of shared
//! `Arc<Peer>`s. A copy of a set costs O(1), and a copy changed in one peer
//! shares everything else with the original: a source that knows what
//! changed (the Kubernetes source) builds each new view from the previous one
//! in O(log n) per changed pod, whatever the number of pods, and the `Peer`s
//! of the pods that did not change (their `SessionId`, a SHA-256 of the
//! name, included) are the same allocations from one view to the next.
//! Dropping an old view, which the last request holding it does, frees only
//! what it did not share.

pub mod fixed;
pub mod kubernetes;
mod slices;

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use imbl::shared_ptr::DefaultSharedPtr;
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

type Sorted = imbl::Vector<Arc<Peer>>;
type ById = imbl::GenericHashMap<SessionId, Arc<Peer>, IdHash, DefaultSharedPtr>;

/// The peers of a view: one per pod name, in name order, also found by id.
/// Cloning is O(1); a clone shares every peer and every tree node it does
/// not change.
#[derive(Clone, Default)]
pub struct PeerSet {
    /// Every peer, sorted by name; no two have the same name.
    sorted: Sorted,
    /// The ready peers, sorted by name.
    ready: Sorted,
    by_id: ById,
}

fn position(v: &Sorted, name: &str) -> Result<usize, usize> {
    v.binary_search_by(|p| p.name.as_str().cmp(name))
}

fn deref_peer(p: &Arc<Peer>) -> &Peer {
    p
}

/// The peers of a [`PeerSet`] in name order.
pub type Peers<'a> = std::iter::Map<imbl::vector::Iter<'a, Arc<Peer>, DefaultSharedPtr>, fn(&Arc<Peer>) -> &Peer>;

impl PeerSet {
    /// A set of `peers`; of several with the same name, the first is kept.
    pub fn from_peers(mut peers: Vec<Peer>) -> PeerSet {
        // A stable sort: the first of equal names stays first, and dedup
        // keeps the first of each run.
        peers.sort_by(|a, b| a.name.cmp(&b.name));
        peers.dedup_by(|later, first| later.name == first.name);
        let sorted: Sorted = peers.into_iter().map(Arc::new).collect();
        let ready = sorted.iter().filter(|p| p.state == PeerState::Ready).cloned().collect();
        let by_id = sorted.iter().map(|p| (p.id, p.clone())).collect();
        PeerSet { sorted, ready, by_id }
    }

    pub fn len(&self) -> usize {
        self.sorted.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sorted.is_empty()
    }

    /// The peers in name order.
    pub fn iter(&self) -> Peers<'_> {
        self.sorted.iter().map(deref_peer as fn(&Arc<Peer>) -> &Peer)
    }

    pub fn get(&self, id: &SessionId) -> Option<&Peer> {
        self.by_id.get(id).map(|p| &**p)
    }

    /// The peer named `name`, shared.
    pub fn by_name(&self, name: &str) -> Option<&Arc<Peer>> {
        position(&self.sorted, name).ok().map(|i| &self.sorted[i])
    }

    /// Adds `peer`, or replaces the peer of the same name; returns the
    /// replaced one. O(log n).
    pub fn insert(&mut self, peer: Arc<Peer>) -> Option<Arc<Peer>> {
        let old = match position(&self.sorted, &peer.name) {
            Ok(i) => Some(self.sorted.set(i, peer.clone())),
            Err(i) => {
                self.sorted.insert(i, peer.clone());
                None
            }
        };
        let was_ready = old.as_ref().is_some_and(|p| p.state == PeerState::Ready);
        match (
            was_ready,
            peer.state == PeerState::Ready,
            position(&self.ready, &peer.name),
        ) {
            (true, true, Ok(j)) => {
                self.ready.set(j, peer.clone());
            }
            (true, false, Ok(j)) => {
                self.ready.remove(j);
            }
            (false, true, Err(j)) => self.ready.insert(j, peer.clone()),
            _ => {}
        }
        if let Some(old) = old.as_ref().filter(|old| old.id != peer.id) {
            self.forget_id(old);
        }
        self.by_id.insert(peer.id, peer);
        old
    }

    /// Removes the peer named `name`; returns it. O(log n).
    pub fn remove(&mut self, name: &str) -> Option<Arc<Peer>> {
        let old = self.sorted.remove(position(&self.sorted, name).ok()?);
        if old.state == PeerState::Ready {
            if let Ok(j) = position(&self.ready, name) {
                self.ready.remove(j);
            }
        }
        self.forget_id(&old);
        Some(old)
    }

    /// Drops `old` from the id map, unless the id now names another peer.
    fn forget_id(&mut self, old: &Arc<Peer>) {
        if self.by_id.get(&old.id).is_some_and(|p| Arc::ptr_eq(p, old)) {
            self.by_id.remove(&old.id);
        }
    }

    /// The `pick`-th (modulo their number) ready peer in name order, leaving
    /// out the one whose id is `except`. O(log n).
    fn ready_peer_except(&self, except: &SessionId, pick: usize) -> Option<&Peer> {
        let skip = self
            .get(except)
            .filter(|p| p.state == PeerState::Ready)
            .and_then(|p| position(&self.ready, &p.name).ok());
        let n = self.ready.len() - usize::from(skip.is_some());
        if n == 0 {
            return None;
        }
        let mut k = pick % n;
        if skip.is_some_and(|s| k >= s) {
            k += 1;
        }
        self.ready.get(k).map(|p| &**p)
    }
}

impl std::ops::Index<usize> for PeerSet {
    type Output = Peer;
    fn index(&self, i: usize) -> &Peer {
        &self.sorted[i]
    }
}

impl<'a> IntoIterator for &'a PeerSet {
    type Item = &'a Peer;
    type IntoIter = Peers<'a>;
    fn into_iter(self) -> Peers<'a> {
        self.iter()
    }
}

impl std::fmt::Debug for PeerSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl Serialize for PeerSet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter())
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
    peers: PeerSet,
}

impl View {
    /// Builds a view. Peers are sorted by name; a later duplicate name is dropped.
    pub fn new(peers: Vec<Peer>, synced: bool, generation: u64) -> View {
        View::of(PeerSet::from_peers(peers), synced, generation)
    }

    /// A view of a set of peers.
    pub fn of(peers: PeerSet, synced: bool, generation: u64) -> View {
        View {
            synced,
            generation,
            peers,
        }
    }

    /// A view that has not been synced yet.
    pub fn unsynced() -> View {
        View::new(Vec::new(), false, 0)
    }

    pub fn get(&self, id: &SessionId) -> Option<&Peer> {
        self.peers.get(id)
    }

    /// The peers in name order.
    pub fn peers(&self) -> &PeerSet {
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
    /// new session while `except` drains: the `pick % n`-th of the n ready
    /// peers other than `except`, in name order.
    pub fn ready_peer_except(&self, except: &SessionId, pick: usize) -> Option<&Peer> {
        self.peers.ready_peer_except(except, pick)
    }

    /// How many peers are in `state`. O(1).
    pub fn count(&self, state: PeerState) -> usize {
        match state {
            PeerState::Ready => self.peers.ready.len(),
            PeerState::Draining => self.peers.len() - self.peers.ready.len(),
        }
    }
}

/// The JSON shape of `/endpoints`.
#[derive(Serialize)]
pub struct ViewJson<'a> {
    pub synced: bool,
    pub generation: u64,
    pub this_pod: &'a str,
    pub peers: &'a PeerSet,
    /// With least-sessions placement: the active sessions of this pod and
    /// of each peer whose count is known (learned within 3 s), by name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sessions: Option<std::collections::BTreeMap<&'a str, u64>>,
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
        self.publish(PeerSet::from_peers(peers), synced);
    }

    /// Swaps in a view of `peers` (typically the previous view's set with a
    /// few peers changed); the generation is set to the previous one + 1.
    /// Returns the new view.
    pub fn publish(&self, peers: PeerSet, synced: bool) -> Arc<View> {
        let generation = self.inner.load().generation + 1;
        let view = Arc::new(View::of(peers, synced, generation));
        self.inner.store(view.clone());
        self.changes.send_replace(generation);
        view
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

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
        assert_eq!(v.count(PeerState::Ready), 1);
        assert_eq!(v.ready_peer_except(&SessionId::for_pod("a"), 7).unwrap().name, "b");
        assert!(v.ready_peer_except(&SessionId::for_pod("b"), 0).is_none());
        let json = serde_json::to_value(v.peers()).unwrap();
        assert_eq!(json[1]["name"], "b");
        assert_eq!(json[1]["id"], SessionId::for_pod("b").encode());
    }

    #[test]
    fn a_published_set_shares_what_did_not_change() {
        let store = EndpointStore::default();
        let mut changes = store.changes();
        store.replace(
            (0..100)
                .map(|i| Peer::new(format!("p{i:03}"), a(i), PeerState::Ready))
                .collect(),
            true,
        );
        let before = store.load_full();
        let mut set = before.peers().clone();
        set.insert(Arc::new(Peer::new("p050", a(999), PeerState::Draining)));
        set.remove("p007");
        let after = store.publish(set, true);
        assert_eq!(after.generation, 2);
        assert_eq!(*changes.borrow_and_update(), 2, "every swap is announced");
        assert!(Arc::ptr_eq(&after, &store.load_full()));
        assert_eq!(before.len(), 100, "the old view is untouched");
        assert_eq!(after.len(), 99);
        assert_eq!(after.count(PeerState::Ready), 98);
        for p in before.peers() {
            match p.name.as_str() {
                "p007" => assert!(after.get(&p.id).is_none()),
                "p050" => assert_eq!(after.get(&p.id).unwrap().addr, a(999)),
                _ => assert!(std::ptr::eq(p, after.get(&p.id).unwrap()), "{} was copied", p.name),
            }
        }
    }

    /// The naive definition the set's index arithmetic must agree with.
    fn ready_peer_except_naive<'a>(peers: &'a [Peer], except: &SessionId, pick: usize) -> Option<&'a Peer> {
        let n = peers
            .iter()
            .filter(|p| p.state == PeerState::Ready && p.id != *except)
            .count();
        if n == 0 {
            return None;
        }
        peers
            .iter()
            .filter(|p| p.state == PeerState::Ready && p.id != *except)
            .nth(pick % n)
    }

    proptest! {
        /// Any sequence of inserts and removals leaves the set equal to a
        /// plain map by name, with the id map and the ready list in step.
        #[test]
        fn a_set_changed_in_place_matches_a_map(
            ops in proptest::collection::vec((0u16..40, any::<bool>(), 0u8..3), 1..120),
            pick in any::<usize>(),
        ) {
            let mut set = PeerSet::default();
            let mut model: BTreeMap<String, Peer> = BTreeMap::new();
            for (n, insert, state) in ops {
                let name = format!("pod-{n}");
                if insert && state > 0 {
                    let state = if state == 1 { PeerState::Ready } else { PeerState::Draining };
                    let peer = Peer::new(name.clone(), a(n), state);
                    let old = set.insert(Arc::new(peer.clone()));
                    prop_assert_eq!(old.map(|p| (*p).clone()), model.insert(name, peer));
                } else {
                    prop_assert_eq!(set.remove(&name).map(|p| (*p).clone()), model.remove(&name));
                }
                let want: Vec<Peer> = model.values().cloned().collect();
                let got: Vec<Peer> = set.iter().cloned().collect();
                prop_assert_eq!(&got, &want);
                prop_assert_eq!(set.by_id.len(), want.len());
                for p in &want {
                    prop_assert_eq!(set.get(&p.id), Some(p));
                    prop_assert!(Arc::ptr_eq(set.by_name(&p.name).unwrap(), set.by_id.get(&p.id).unwrap()));
                }
                let view = View::of(set.clone(), true, 1);
                let ready = want.iter().filter(|p| p.state == PeerState::Ready).count();
                prop_assert_eq!(view.count(PeerState::Ready), ready);
                prop_assert_eq!(view.count(PeerState::Draining), want.len() - ready);
                for except in want.iter().map(|p| p.id).chain([SessionId::for_pod("nobody")]) {
                    prop_assert_eq!(
                        view.ready_peer_except(&except, pick),
                        ready_peer_except_naive(&want, &except, pick)
                    );
                }
            }
        }
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
