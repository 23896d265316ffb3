//! The fixed endpoint sources: `static:` (a list in the environment) and
//! `file:` (a list in a file, re-read when it changes). Every listed peer is
//! ready.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::{EndpointStore, Peer, PeerState};
use crate::config::parse_peer_list;
use crate::metrics::Metrics;

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

fn read(path: &PathBuf) -> Result<Vec<(String, SocketAddr)>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    parse_peer_list(&text)
}

/// Installs the file's list, then re-reads it whenever it changes (polled
/// every `every`). A file that fails to parse keeps the last good view.
pub fn watch_file(
    path: PathBuf,
    store: EndpointStore,
    metrics: Arc<Metrics>,
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    let stamp = |p: &PathBuf| std::fs::metadata(p).ok().map(|m| (m.modified().ok(), m.len()));
    let mut last_list = None;
    let mut last_stamp: Option<(Option<SystemTime>, u64)> = None;
    let mut apply = move |path: &PathBuf| match read(path) {
        Ok(list) if Some(&list) != last_list.as_ref() => {
            let before = store.load_full();
            install(&store, &list);
            let view = store.load();
            let left = before.peers().iter().filter(|p| view.get(&p.id).is_none());
            metrics.observe_view(&view, left.map(|p| p.name.as_str()));
            tracing::info!(peers = list.len(), path = %path.display(), "endpoint file loaded");
            last_list = Some(list);
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, path = %path.display(), "endpoint file not loaded; keeping the last view"),
    };
    apply(&path);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            let s = stamp(&path);
            if s != last_stamp {
                last_stamp = s;
                apply(&path);
            }
        }
    })
}
