//! The `static:` endpoint source: a fixed list of peers, all ready.

use std::net::SocketAddr;

use super::{EndpointStore, Peer, PeerState};

/// Installs a fixed list of `(pod name, sidecar address)` as a synced view.
pub fn install(store: &EndpointStore, peers: &[(String, SocketAddr)]) {
    store.replace(
        peers
            .iter()
            .map(|(name, addr)| Peer::new(name.clone(), *addr, PeerState::Ready))
            .collect(),
        true,
    );
}
