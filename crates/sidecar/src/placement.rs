//! Least-sessions placement (STICKYD_NEW_SESSIONS=least-sessions): what
//! this sidecar knows of its peers' active sessions, and the two random
//! ready peers sampled for each new session (the power of two choices).
//! The decision itself is [`route::decide`](crate::route::decide), given
//! this pod's count and the sampled peers' ([`route::Load`]).
//!
//! Counts come from two channels, neither a listener of its own, and both
//! signed with the session keys, which placement needs (config):
//!
//! * every response to a forwarded request whose hop marker verified
//!   carries the serving sidecar's count in [`HEADER`]; the forwarding
//!   sidecar records it and strips it before the client;
//! * for peers nothing is forwarded to (a pod just added), a refresher asks
//!   the peers' admin port (`GET /sessions`, on the port of this pod's
//!   STICKYD_ADMIN_LISTEN, with a signed [`crate::peer::PEER`] proof), each
//!   at most once per [`REFRESH_EVERY`], at most [`REFRESH_PER_TICK`] peers a
//!   tick: first those a placement sampled and found unknown, then the
//!   others in turn.
//!
//! A count older than [`FRESH_FOR`] is unknown: the decision leaves that peer
//! out, and with no peer count known a new session stays here.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, HOST};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::time::Instant;

use crate::affinity::SessionId;
use crate::endpoints::{IdHash, PeerState, View};
use crate::peer::Purpose;
use crate::proxy::Shared;

/// The serving sidecar's active sessions, on responses to forwarded requests.
pub const HEADER: HeaderName = HeaderName::from_static(crate::names::SESSIONS);
/// The admin path that answers this pod's active sessions, as a number.
pub const PATH: &str = "/sessions";
/// A peer's count older than this is unknown.
pub const FRESH_FOR: Duration = Duration::from_secs(3);
/// The refresher's period; a peer whose count is younger is not asked.
pub const REFRESH_EVERY: Duration = Duration::from_secs(1);
/// Peers asked per refresher tick at most.
pub const REFRESH_PER_TICK: usize = 8;
/// Peers sampled for each new session.
pub const SAMPLED: usize = 2;
/// Sampled peers with an unknown count remembered for the refresher at most.
const WANTED: usize = 32;

/// The peers sampled for one new session, with their counts.
pub type Sample = ([(SessionId, Option<u64>); SAMPLED], usize);

/// The last count learned from each peer, and when.
#[derive(Default)]
pub struct PeerLoads {
    counts: Mutex<HashMap<SessionId, (u64, Instant), IdHash>>,
    /// Sampled with an unknown count: the refresher asks these first.
    wanted: Mutex<Vec<SessionId>>,
}

impl PeerLoads {
    /// `peer` had `count` active sessions at `at`.
    pub fn record(&self, peer: SessionId, count: u64, at: Instant) {
        if let Ok(mut m) = self.counts.lock() {
            match m.get_mut(&peer) {
                Some(seen) if seen.1 > at => {}
                Some(seen) => *seen = (count, at),
                None => {
                    m.insert(peer, (count, at));
                }
            }
        }
    }

    /// The peer's count, unless unknown: never learned, or older than
    /// [`FRESH_FOR`] at `now`.
    pub fn get(&self, peer: &SessionId, now: Instant) -> Option<u64> {
        self.younger_than(peer, now, FRESH_FOR)
    }

    fn younger_than(&self, peer: &SessionId, now: Instant, age: Duration) -> Option<u64> {
        let m = self.counts.lock().ok()?;
        let (count, at) = m.get(peer)?;
        (now.saturating_duration_since(*at) < age).then_some(*count)
    }

    /// Asks the refresher for `peer`'s count.
    fn want(&self, peer: SessionId) {
        if let Ok(mut w) = self.wanted.lock() {
            if w.len() < WANTED && !w.contains(&peer) {
                w.push(peer);
            }
        }
    }

    fn take_wanted(&self) -> Vec<SessionId> {
        self.wanted
            .lock()
            .map(|mut w| std::mem::take(&mut *w))
            .unwrap_or_default()
    }

    /// The known counts of the peers in `view`, by name.
    pub fn known<'v>(&self, view: &'v View, now: Instant) -> std::collections::BTreeMap<&'v str, u64> {
        view.peers()
            .iter()
            .filter_map(|p| Some((p.name.as_str(), self.get(&p.id, now)?)))
            .collect()
    }

    /// Forgets the peers that left `view`.
    fn retain_view(&self, view: &View) {
        if let Ok(mut m) = self.counts.lock() {
            m.retain(|id, _| view.get(id).is_some());
        }
    }

    /// Samples up to [`SAMPLED`] distinct ready peers of `view` other than
    /// `me`, by `rand(n)` (a number below `n`), with their counts at `now`.
    /// A sampled peer with an unknown count is handed to the refresher.
    pub fn sample(&self, view: &View, me: &SessionId, now: Instant, mut rand: impl FnMut(usize) -> usize) -> Sample {
        let mine_ready = view.get(me).is_some_and(|p| p.state == PeerState::Ready);
        let n = view.count(PeerState::Ready) - usize::from(mine_ready);
        let mut out = [(*me, None); SAMPLED];
        let mut len = 0;
        let mut picked = [0usize; SAMPLED];
        for slot in 0..SAMPLED.min(n) {
            // The k-th of the peers not picked yet, in index order.
            let mut k = rand(n - slot);
            let mut sorted = picked;
            sorted[..slot].sort_unstable();
            for &p in &sorted[..slot] {
                if k >= p {
                    k += 1;
                }
            }
            picked[slot] = k;
            let Some(peer) = view.ready_peer_except(me, k) else {
                break;
            };
            let count = self.get(&peer.id, now);
            if count.is_none() {
                self.want(peer.id);
            }
            out[len] = (peer.id, count);
            len += 1;
        }
        (out, len)
    }
}

/// A count as a header value or an admin answer: decimal digits.
pub fn parse_count(raw: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(raw).ok()?.trim();
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Asks the admin port at `addr` for its count, with the signed peer proof
/// `proof` ([`crate::peer::PEER`]).
async fn fetch(addr: SocketAddr, timeout: Duration, proof: HeaderValue) -> Option<u64> {
    let ask = async {
        let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        let _ = stream.set_nodelay(true);
        let (mut send, conn) = hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
            .await
            .ok()?;
        let conn = tokio::spawn(conn);
        let mut req = Request::get(PATH)
            .header(HOST, addr.to_string())
            .body(Empty::new())
            .ok()?;
        req.headers_mut().insert(crate::peer::PEER, proof);
        let resp = send.send_request(req).await.ok()?;
        let ok = resp.status() == StatusCode::OK;
        let body = resp.into_body().collect().await.ok()?.to_bytes();
        drop(send);
        conn.abort();
        if !ok || body.len() > 32 {
            return None;
        }
        parse_count(&body)
    };
    tokio::time::timeout(timeout, ask).await.ok().flatten()
}

/// The refresher, for as long as the sidecar runs: every [`REFRESH_EVERY`],
/// sweeps this pod's session table (so that its own count, read with one
/// atomic load per new session, forgets expired sessions within a second),
/// forgets peers that left the view, and asks the admin port of up to
/// [`REFRESH_PER_TICK`] ready peers whose count is not fresh.
pub async fn refresh(shared: Arc<Shared>) {
    let admin_port = shared.cfg.admin_listen.port();
    let timeout = shared.cfg.connect_timeout.min(REFRESH_EVERY);
    let mut tick = tokio::time::interval(REFRESH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut cursor = 0usize;
    loop {
        tick.tick().await;
        let now = Instant::now();
        shared.sessions.active(now);
        let view = shared.store.load_full();
        if !view.synced {
            continue;
        }
        shared.loads.retain_view(&view);
        let stale = |id: &SessionId| {
            view.get(id)
                .filter(|p| p.state == PeerState::Ready && p.id != shared.me)
                .filter(|p| shared.loads.younger_than(&p.id, now, REFRESH_EVERY).is_none())
                .map(|p| (p.id, SocketAddr::new(p.addr.ip(), admin_port), p.name.clone()))
        };
        let mut ask: Vec<(SessionId, SocketAddr, String)> = Vec::new();
        for id in shared.loads.take_wanted() {
            if ask.len() < REFRESH_PER_TICK {
                ask.extend(stale(&id).filter(|a| !ask.contains(a)));
            }
        }
        let keys = shared.codec.load().keys.clone();
        let unix = shared.clock.unix_now();
        let ready = view.count(PeerState::Ready);
        for _ in 0..ready {
            if ask.len() >= REFRESH_PER_TICK {
                break;
            }
            cursor = cursor.wrapping_add(1);
            if let Some(p) = view.ready_peer_except(&shared.me, cursor) {
                ask.extend(stale(&p.id).filter(|a| !ask.contains(a)));
            }
        }
        let answers = futures_util::future::join_all(ask.into_iter().map(|(id, addr, name)| {
            // Least-sessions runs with keys only (config): the proof is signed.
            let proof = crate::peer::sign(&keys, Purpose::Sessions, &shared.cfg.pod_name, &name, unix);
            let proof =
                HeaderValue::try_from(proof).expect("pod names, digits and base64url are valid in a header value");
            async move {
                let count = fetch(addr, timeout, proof).await;
                if count.is_none() {
                    tracing::debug!(%addr, "no session count from the peer's admin port");
                }
                (id, count)
            }
        }))
        .await;
        let at = Instant::now();
        for (id, count) in answers {
            if let Some(c) = count {
                shared.loads.record(id, c, at);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoints::Peer;

    fn addr(n: u8) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, n], 8080))
    }

    fn id(pod: &str) -> SessionId {
        SessionId::for_pod(pod)
    }

    #[tokio::test(start_paused = true)]
    async fn a_count_older_than_fresh_for_is_unknown() {
        let loads = PeerLoads::default();
        let t0 = Instant::now();
        assert_eq!(loads.get(&id("pod-b"), t0), None, "never learned");
        loads.record(id("pod-b"), 42, t0);
        assert_eq!(loads.get(&id("pod-b"), Instant::now()), Some(42));
        tokio::time::advance(FRESH_FOR - Duration::from_millis(1)).await;
        assert_eq!(loads.get(&id("pod-b"), Instant::now()), Some(42));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(loads.get(&id("pod-b"), Instant::now()), None, "stale");
        // Learned again: known again. An older answer arriving late does
        // not replace a newer one.
        let t1 = Instant::now();
        loads.record(id("pod-b"), 7, t1);
        loads.record(id("pod-b"), 99, t0);
        assert_eq!(loads.get(&id("pod-b"), Instant::now()), Some(7));
        assert_eq!(loads.get(&id("pod-c"), Instant::now()), None);
        // The refresher skips a count younger than its period.
        assert_eq!(loads.younger_than(&id("pod-b"), Instant::now(), REFRESH_EVERY), Some(7));
        tokio::time::advance(REFRESH_EVERY).await;
        assert_eq!(loads.younger_than(&id("pod-b"), Instant::now(), REFRESH_EVERY), None);
        assert_eq!(loads.get(&id("pod-b"), Instant::now()), Some(7));
    }

    #[test]
    fn samples_two_distinct_ready_peers_never_this_pod_or_a_draining_one() {
        let view = View::new(
            vec![
                Peer::new("pod-a", addr(1), PeerState::Ready),
                Peer::new("pod-b", addr(2), PeerState::Ready),
                Peer::new("pod-c", addr(3), PeerState::Draining),
                Peer::new("pod-d", addr(4), PeerState::Ready),
                Peer::new("pod-e", addr(5), PeerState::Ready),
            ],
            true,
            1,
        );
        let loads = PeerLoads::default();
        let now = Instant::now();
        loads.record(id("pod-d"), 5, now);
        let mut seen = std::collections::BTreeMap::new();
        for r in 0..200u64 {
            let mut rng = fastrand::Rng::with_seed(r);
            let (s, n) = loads.sample(&view, &id("pod-a"), now, |n| rng.usize(..n));
            assert_eq!(n, 2);
            assert_ne!(s[0].0, s[1].0, "distinct");
            for (peer, count) in &s[..n] {
                let p = view.get(peer).unwrap();
                assert!(p.name != "pod-a" && p.name != "pod-c", "{}", p.name);
                assert_eq!(*count, (p.name == "pod-d").then_some(5));
                *seen.entry(p.name.clone()).or_insert(0) += 1;
            }
        }
        // Each of the three ready peers is in about 2/3 of the 200 samples.
        assert_eq!(seen.keys().cloned().collect::<Vec<_>>(), ["pod-b", "pod-d", "pod-e"]);
        assert!(seen.values().all(|n| (100..=170).contains(n)), "{seen:?}");
        // The unknown ones were handed to the refresher.
        let mut wanted = loads.take_wanted();
        wanted.sort_by_key(|w| view.get(w).unwrap().name.clone());
        assert_eq!(wanted, [id("pod-b"), id("pod-e")]);
        // One ready peer: one sampled; none: none.
        let two = View::new(
            vec![
                Peer::new("pod-a", addr(1), PeerState::Ready),
                Peer::new("pod-b", addr(2), PeerState::Ready),
            ],
            true,
            1,
        );
        let (s, n) = loads.sample(&two, &id("pod-a"), now, |n| n - 1);
        assert_eq!((n, s[0].0), (1, id("pod-b")));
        let alone = View::new(vec![Peer::new("pod-a", addr(1), PeerState::Ready)], true, 1);
        assert_eq!(loads.sample(&alone, &id("pod-a"), now, |_| 0).1, 0);
        assert_eq!(loads.sample(&View::unsynced(), &id("pod-a"), now, |_| 0).1, 0);
    }

    #[test]
    fn forgets_peers_that_left_the_view() {
        let loads = PeerLoads::default();
        let now = Instant::now();
        loads.record(id("pod-b"), 1, now);
        loads.record(id("pod-gone"), 2, now);
        loads.retain_view(&View::new(vec![Peer::new("pod-b", addr(2), PeerState::Ready)], true, 1));
        assert_eq!(loads.get(&id("pod-b"), now), Some(1));
        assert_eq!(loads.get(&id("pod-gone"), now), None);
        let view = View::new(
            vec![
                Peer::new("pod-b", addr(2), PeerState::Ready),
                Peer::new("pod-c", addr(3), PeerState::Ready),
            ],
            true,
            1,
        );
        assert_eq!(loads.known(&view, now).into_iter().collect::<Vec<_>>(), [("pod-b", 1)]);
    }

    #[test]
    fn counts_are_decimal_digits() {
        assert_eq!(parse_count(b"0"), Some(0));
        assert_eq!(parse_count(b" 300\n"), Some(300));
        for bad in [
            &b""[..],
            b"-1",
            b"+1",
            b"1e3",
            b"abc",
            b"3 4",
            b"99999999999999999999999",
        ] {
            assert_eq!(parse_count(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
