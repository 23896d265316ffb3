//! What the data path shares across connections: the configuration, the
//! endpoint view, the codec, the pools, the drain state and the counters.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::header::HeaderValue;
use prometheus_client::metrics::counter::Counter;

use super::token::Carrier;
use super::upstream::Pools;
use super::{Clock, Connector};
use crate::affinity::{Codec, CookieState, Lifetimes, SessionId, Sid};
use crate::config::{Config, NewSessions};
use crate::drain::Drain;
use crate::endpoints::{EndpointStore, IdHash, Peer, PeerState, View};
use crate::metrics::{DecisionLabels, Metrics};
use crate::peer::{self, Purpose};
use crate::placement::{PeerLoads, Sample};
use crate::route::{self, Decision, Hops, Load, SessionMark, ThisPod};
use crate::sessions::SessionTracker;

/// `requests_total{decision="forwarded"}` counters by pod and session mark,
/// for one view generation.
#[derive(Default)]
struct ForwardCounts {
    generation: u64,
    by_id: HashMap<SessionId, [Option<Counter>; 4], IdHash>,
}

/// Everything the data path shares across connections.
pub struct Shared {
    pub cfg: Config,
    pub store: EndpointStore,
    pub metrics: Arc<Metrics>,
    /// Swapped when the secret file changes.
    pub codec: ArcSwap<Codec>,
    /// Where the session token travels (STICKYD_AFFINITY).
    pub(super) carrier: Carrier,
    pub me: SessionId,
    /// Set on SIGTERM: this pod is stopping. It takes no new sessions and
    /// closes keep-alive connections.
    pub stopping: AtomicBool,
    /// The session-aware drain (`/drain`).
    pub drain: Arc<Drain>,
    /// The sessions pinned here, seen lately.
    pub sessions: Arc<SessionTracker>,
    /// The wall time of the session token's times.
    pub clock: Clock,
    /// Opens the data path's own upstream connections.
    pub connector: Connector,
    /// The peers' active sessions as last learned (least-sessions placement).
    pub loads: PeerLoads,
    /// When this sidecar started: the wait for the first sync ends at this
    /// plus STICKYD_SYNC_TIMEOUT.
    pub(super) started: tokio::time::Instant,
    pub(super) pools: Pools,
    /// Idle upstream connections of the HTTP/1.1 path, shared by client
    /// connections.
    pub(super) idle: super::h1::upstream::Pool,
    pub(super) app_authority: http::uri::Authority,
    pick: AtomicUsize,
    /// `requests_total{decision="local",target_pod=<this pod>}` by mark, so
    /// the local path counts without a label allocation.
    local_counts: [Counter; 4],
    /// App connections bound to client connections.
    pub(super) bound_apps: Arc<AtomicUsize>,
    /// Peer connections bound to client connections.
    pub(super) bound_peers: Arc<AtomicUsize>,
    /// How long a connection to a peer may sit idle and still be reused.
    pub(super) peer_idle: Duration,
    forward_counts: ArcSwap<ForwardCounts>,
}

pub(super) fn authority(addr: SocketAddr) -> http::uri::Authority {
    addr.to_string().parse().expect("a socket address is a valid authority")
}

impl Shared {
    pub fn new(cfg: Config, store: EndpointStore, metrics: Arc<Metrics>) -> Shared {
        let codec = Codec::new(
            cfg.cookie.keys.clone(),
            Lifetimes {
                max_lifetime: cfg.cookie.max_lifetime,
                idle_timeout: cfg.cookie.idle_timeout,
            },
        );
        // A peer closes its idle connections when it stops, at the end of its
        // drain; during the drain it answers with `Connection: close`. A pooled
        // connection to a peer idle for longer than half the drain is never
        // reused, so a request is never written into a connection that a
        // stopping peer is closing. Likewise for the peer's header read
        // timeout, which closes idle keep-alive connections.
        let mut peer_idle = cfg.pool_idle_timeout.min(cfg.header_read_timeout / 2);
        if !cfg.drain.is_zero() {
            peer_idle = peer_idle.min((cfg.drain / 2).max(Duration::from_millis(100)));
        }
        let local_counts = [
            SessionMark::New,
            SessionMark::Pinned,
            SessionMark::Repinned,
            SessionMark::Unsynced,
        ]
        .map(|m| {
            metrics
                .requests
                .get_or_create(&DecisionLabels {
                    decision: "local",
                    session: m.as_str(),
                    target_pod: cfg.pod_name.clone(),
                })
                .clone()
        });
        Shared {
            me: SessionId::for_pod(&cfg.pod_name),
            pools: Pools::new(&cfg, peer_idle),
            idle: Default::default(),
            peer_idle,
            app_authority: authority(cfg.upstream),
            codec: ArcSwap::from_pointee(codec),
            carrier: Carrier::new(&cfg),
            stopping: AtomicBool::new(false),
            drain: Arc::default(),
            sessions: Arc::new(SessionTracker::new(cfg.session_active_window)),
            clock: Clock::System,
            connector: Connector::Tcp,
            loads: PeerLoads::default(),
            started: tokio::time::Instant::now(),
            pick: AtomicUsize::new(0),
            forward_counts: ArcSwap::default(),
            bound_apps: Arc::default(),
            bound_peers: Arc::default(),
            local_counts,
            cfg,
            store,
            metrics,
        }
    }

    /// This pod as the decision sees it: leaving once it stops (SIGTERM),
    /// its session drain was asked for, or its endpoint drains in the view
    /// (serving and terminating).
    pub(super) fn this_pod(&self, view: &View) -> ThisPod<'_> {
        let leaving = self.stopping()
            || self.drain.requested()
            || view.get(&self.me).is_some_and(|p| p.state == PeerState::Draining);
        ThisPod {
            name: &self.cfg.pod_name,
            id: self.me,
            leaving,
        }
    }

    /// SIGTERM came: this pod is stopping.
    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    /// The view to decide a request on. Before the first sync, a session
    /// pinned to another pod waits for the view (until STICKYD_SYNC_TIMEOUT
    /// after start) rather than be served by an app that does not know it: a
    /// connection can reach a sidecar before it is ready, as when the
    /// ingress retries a connection to an address a new pod has just taken.
    pub(super) async fn view_for(&self, cookie: &CookieState) -> Arc<View> {
        let view = self.store.load_full();
        let pinned_elsewhere = matches!(cookie, CookieState::Valid(s) if s.id != self.me);
        if view.synced || !pinned_elsewhere {
            return view;
        }
        self.store.synced_by(self.started + self.cfg.sync_timeout).await;
        self.store.load_full()
    }

    /// The session's own id: the token's, or a fresh one for a new session.
    pub(super) fn sid(&self, cookie: &CookieState, mark: SessionMark) -> Sid {
        match cookie {
            CookieState::Valid(s) if mark != SessionMark::New => s.sid.unwrap_or_else(Sid::random),
            _ => Sid::random(),
        }
    }

    /// The app ended session `sid` (a response served here said so): it
    /// leaves the session table now, and a drain waiting for the sessions
    /// here looks again.
    pub(super) fn end_session(&self, sid: Sid) {
        if self.sessions.end(sid) {
            self.metrics.sessions_ended.inc();
            self.drain.wake();
        }
    }

    /// A token naming this pod for session `sid`, issued `now`. It keeps the
    /// session's creation time while the session stays on this pod (signed
    /// tokens), else the session begins now.
    pub(super) fn token(&self, cookie: &CookieState, sid: Sid, now: u64) -> String {
        let created = match cookie {
            CookieState::Valid(s) if s.id == self.me && s.created > 0 => s.created,
            _ => now,
        };
        self.codec.load().encode(self.me, sid, created, now)
    }

    /// The routing decision for a request that arrived with `hops` markers,
    /// with what least-sessions placement knows of the load when it starts
    /// a new session here; counts where such a session was placed.
    pub(super) fn decide<'v>(&self, cookie: &CookieState, view: &'v View, hops: Hops, pick: usize) -> Decision<'v> {
        let me = self.this_pod(view);
        let sample = self.sample_for_new(cookie, hops, &me, view);
        let load = sample.as_ref().map(|(here, (sampled, n))| Load {
            here: *here,
            sampled: &sampled[..*n],
        });
        let decision = route::decide(cookie, view, &me, hops, self.cfg.on_missing, pick, load.as_ref());
        self.count_placement(&decision, hops);
        decision
    }

    /// With least-sessions placement, for a request that starts a new
    /// session here (no valid token, no hop marker, this pod not draining,
    /// the view synced): this pod's active sessions and the peers sampled.
    fn sample_for_new(&self, cookie: &CookieState, hops: Hops, me: &ThisPod<'_>, view: &View) -> Option<(u64, Sample)> {
        let new = !matches!(cookie, CookieState::Valid(_));
        if self.cfg.new_sessions != NewSessions::LeastSessions || !new || hops > 0 || me.leaving || !view.synced {
            return None;
        }
        let now = tokio::time::Instant::now();
        let sample = self.loads.sample(view, &self.me, now, |n| fastrand::usize(..n));
        Some((self.sessions.count() as u64, sample))
    }

    /// Counts where a new session that entered here was placed
    /// (`stickyd_new_sessions_total{placed}`).
    fn count_placement(&self, decision: &Decision<'_>, hops: Hops) {
        if hops > 0 {
            return;
        }
        let counter = match decision {
            Decision::Local {
                mark: SessionMark::New, ..
            } => &self.metrics.new_sessions_local,
            Decision::Forward {
                mark: SessionMark::New, ..
            } => &self.metrics.new_sessions_peer,
            _ => return,
        };
        counter.inc();
    }

    /// Reads the hop markers (every `x-stickyd-hop` value) of a request that
    /// arrived at `now` (Unix seconds). With keys, a marker that does not
    /// verify is counted (`stickyd_hop_refused_total`) and taken as none.
    pub(super) fn read_hops<'a>(&self, values: impl Iterator<Item = &'a [u8]>, now: u64) -> peer::Marked<'a> {
        let codec = self.codec.load();
        let marked = peer::read_hops(values, &codec.keys, &self.cfg.pod_name, now);
        if let Some(why) = marked.refused {
            self.metrics.hop_refused(why.label());
            tracing::debug!(reason = why.label(), "a hop marker did not verify; taken as no marker");
        }
        marked
    }

    /// The hop marker of a request forwarded to `to` at `now` (Unix
    /// seconds): signed with the first key, or this pod's name without keys.
    pub(super) fn hop_marker(&self, to: &Peer, now: u64) -> HeaderValue {
        let v = peer::sign(&self.codec.load().keys, Purpose::Hop, &self.cfg.pod_name, &to.name, now);
        HeaderValue::try_from(v).expect("pod names, digits and base64url are valid in a header value")
    }

    /// The count a response served here tells the peer that forwarded the
    /// request (least-sessions placement): only in answer to a verified hop
    /// marker, which needs keys. (A client that sends a marker of its own
    /// learns nothing.)
    pub(super) fn count_for_peer(&self, hop_verified: bool) -> Option<u64> {
        (self.cfg.new_sessions == NewSessions::LeastSessions && hop_verified).then(|| self.sessions.count() as u64)
    }

    /// Records the count a peer's response carried.
    pub(super) fn learn_count(&self, peer: &Peer, value: Option<&[u8]>) {
        if let Some(count) = value.and_then(crate::placement::parse_count) {
            self.loads.record(peer.id, count, tokio::time::Instant::now());
        }
    }

    /// A number that changes with each request, to spread picks over peers.
    pub(super) fn next_pick(&self) -> usize {
        self.pick.fetch_add(1, Ordering::Relaxed)
    }

    pub(super) fn count_local(&self, mark: SessionMark) {
        self.local_counts[mark as usize].inc();
    }

    /// Counts a forwarded request through a cache of the current view's
    /// counters, so that a forward costs no label allocation or hashing.
    pub(super) fn count_forwarded(&self, peer: &Peer, generation: u64, mark: SessionMark) {
        let i = mark as usize;
        let cache = self.forward_counts.load();
        let current = cache.generation == generation;
        if current {
            if let Some(Some(c)) = cache.by_id.get(&peer.id).map(|cs| &cs[i]) {
                c.inc();
                return;
            }
        }
        let counter = self
            .metrics
            .requests
            .get_or_create(&DecisionLabels {
                decision: "forwarded",
                session: mark.as_str(),
                target_pod: peer.name.clone(),
            })
            .clone();
        counter.inc();
        // Remembered for this view only: the series of a pod that leaves the
        // view is removed (Metrics::observe_view).
        if generation >= cache.generation {
            let mut by_id = if current {
                cache.by_id.clone()
            } else {
                HashMap::default()
            };
            by_id.entry(peer.id).or_default()[i] = Some(counter);
            self.forward_counts.store(Arc::new(ForwardCounts { generation, by_id }));
        }
    }

    pub(super) fn count(&self, decision: &'static str, mark: Option<SessionMark>, target: &str) {
        self.metrics
            .requests
            .get_or_create(&DecisionLabels {
                decision,
                session: mark.map(SessionMark::as_str).unwrap_or("none"),
                target_pod: target.to_string(),
            })
            .inc();
    }
}
