//! What one endpoint change costs the view of a large Service, built four
//! ways, and what a lookup costs in each (the data path makes two per
//! request). Run in release:
//!
//! ```text
//! cargo run --release --example view_update [PODS] [ROUNDS]
//! ```
//!
//! - `persistent`: the view's [`PeerSet`] (imbl's RRB vector and HAMT of
//!   `Arc<Peer>`), cloned and changed in one peer, as the Kubernetes source
//!   does;
//! - `std Arc clone`: a `Vec<Arc<Peer>>` sorted by name and a
//!   `HashMap<SessionId, Arc<Peer>>`, both cloned and then patched;
//! - `std Peer clone`: a `Vec<Peer>` and a `HashMap<SessionId, usize>`
//!   (the view's former layout) cloned and patched;
//! - `rebuild`: every `Peer` made again (each name hashed), sorted, and the
//!   id map built, into the former layout: a full recompute, without the
//!   merging of the slices.
//!
//! Each update is one pod leaving and, on the next, coming back (a
//! readiness flip); the old view is dropped after each swap.

use std::collections::HashMap;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use stickyd::affinity::SessionId;
use stickyd::endpoints::{IdHash, Peer, PeerState, View};

fn peers(n: usize) -> Vec<Peer> {
    (0..n)
        .map(|i| {
            let addr = SocketAddr::new(
                IpAddr::V4(Ipv4Addr::new(127, 1, (i / 250) as u8, (i % 250 + 1) as u8)),
                8080,
            );
            Peer::new(format!("pod-{i:05}"), addr, PeerState::Ready)
        })
        .collect()
}

fn time(rounds: usize, mut f: impl FnMut(usize)) -> Duration {
    let start = Instant::now();
    for i in 0..rounds {
        f(i);
    }
    start.elapsed() / rounds as u32
}

struct StdArc {
    sorted: Vec<Arc<Peer>>,
    by_id: HashMap<SessionId, Arc<Peer>, IdHash>,
}

struct StdPeer {
    sorted: Vec<Peer>,
    by_id: HashMap<SessionId, usize, IdHash>,
}

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().expect("a number")).collect();
    let n = args.first().copied().unwrap_or(5000);
    let rounds = args.get(1).copied().unwrap_or(2000);
    let all = peers(n);
    let flipped = all[n / 2].clone();
    let ids: Vec<SessionId> = all.iter().map(|p| p.id).collect();

    // persistent
    let mut view = Arc::new(View::new(all.clone(), true, 0));
    let persistent = time(rounds, |i| {
        let mut set = view.peers().clone();
        if i % 2 == 0 {
            set.remove(&flipped.name);
        } else {
            set.insert(Arc::new(Peer::new(flipped.name.clone(), flipped.addr, flipped.state)));
        }
        view = Arc::new(View::of(set, true, i as u64));
    });
    let persistent_get = time(rounds * 100, |i| {
        black_box(view.get(&ids[i % n]));
    });

    // std, Arc<Peer>
    let sorted: Vec<Arc<Peer>> = all.iter().cloned().map(Arc::new).collect();
    let by_id = sorted.iter().map(|p| (p.id, p.clone())).collect();
    let mut v = Arc::new(StdArc { sorted, by_id });
    let std_arc = time(rounds, |i| {
        let (mut sorted, mut by_id) = (v.sorted.clone(), v.by_id.clone());
        let at = sorted.binary_search_by(|p| p.name.cmp(&flipped.name));
        match at {
            Ok(j) if i % 2 == 0 => {
                sorted.remove(j);
                by_id.remove(&flipped.id);
            }
            Err(j) => {
                let p = Arc::new(Peer::new(flipped.name.clone(), flipped.addr, flipped.state));
                by_id.insert(p.id, p.clone());
                sorted.insert(j, p);
            }
            Ok(_) => {}
        }
        v = Arc::new(StdArc { sorted, by_id });
    });
    let std_arc_get = time(rounds * 100, |i| {
        black_box(v.by_id.get(&ids[i % n]));
    });

    // std, Peer (the former layout)
    let sorted = all.clone();
    let by_id = sorted.iter().enumerate().map(|(i, p)| (p.id, i)).collect();
    let mut w = Arc::new(StdPeer { sorted, by_id });
    let std_peer = time(rounds, |i| {
        let mut sorted = w.sorted.clone();
        match sorted.binary_search_by(|p| p.name.cmp(&flipped.name)) {
            Ok(j) if i % 2 == 0 => {
                sorted.remove(j);
            }
            Err(j) => sorted.insert(j, Peer::new(flipped.name.clone(), flipped.addr, flipped.state)),
            Ok(_) => {}
        }
        // Indices after the change moved: the id map is built again.
        let by_id = sorted.iter().enumerate().map(|(i, p)| (p.id, i)).collect();
        w = Arc::new(StdPeer { sorted, by_id });
    });
    let std_peer_get = time(rounds * 100, |i| {
        black_box(w.by_id.get(&ids[i % n]).map(|&j| &w.sorted[j]));
    });

    // rebuild, into the former layout
    let rebuild_rounds = (rounds / 20).max(10);
    let mut rebuilt = w.clone();
    let rebuild = time(rebuild_rounds, |i| {
        let mut sorted: Vec<Peer> = all
            .iter()
            .filter(|p| i % 2 == 1 || p.name != flipped.name)
            .map(|p| Peer::new(p.name.clone(), p.addr, p.state))
            .collect();
        sorted.sort_by(|a, b| a.name.cmp(&b.name));
        let by_id = sorted.iter().enumerate().map(|(i, p)| (p.id, i)).collect();
        rebuilt = Arc::new(StdPeer { sorted, by_id });
    });
    black_box((&view, &v, &w, &rebuilt));

    println!(
        "{n} peers, one pod leaving or coming back per update; {rounds} updates, {} lookups",
        rounds * 100
    );
    println!("| layout | per update | per lookup |");
    println!("|---|---:|---:|");
    for (name, update, get) in [
        ("persistent (imbl, `Arc<Peer>`)", persistent, Some(persistent_get)),
        (
            "std `Vec<Arc<Peer>>` + `HashMap`, cloned and patched",
            std_arc,
            Some(std_arc_get),
        ),
        (
            "std `Vec<Peer>` + `HashMap<_, usize>`, cloned and patched",
            std_peer,
            Some(std_peer_get),
        ),
        ("rebuild: every `Peer` made again", rebuild, None),
    ] {
        let get = get.map_or("".to_string(), |g| format!("{:.1} ns", g.as_secs_f64() * 1e9));
        println!("| {name} | {:.1} µs | {get} |", update.as_secs_f64() * 1e6);
    }
}
