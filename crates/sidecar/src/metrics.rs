//! Prometheus metrics, exposed on the admin listener's `/metrics`.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::endpoints::{PeerState, View};
use crate::limits::{BufferBudget, Limits};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    /// local, forwarded, rejected
    pub decision: &'static str,
    /// new, pinned, repinned, unsynced, none
    pub session: &'static str,
    /// The pod that served (or would have served) the request.
    pub target_pod: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    /// The admin endpoint (drain, sessions, endpoints), or `connection`: a
    /// connection over the admin listener's cap.
    pub endpoint: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabels {
    /// request, response
    pub direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub state: &'static str,
}

/// All of stickyd's metrics.
pub struct Metrics {
    /// `stickyd_requests_total{decision,session,target_pod}`
    pub requests: Family<DecisionLabels, Counter>,
    /// `stickyd_forward_duration_seconds`: time to the peer's response headers.
    pub forward_duration: Histogram,
    /// `stickyd_upstream_duration_seconds`: time to the app's response headers.
    pub upstream_duration: Histogram,
    /// `stickyd_upstream_errors_total{kind}`
    pub upstream_errors: Family<KindLabels, Counter>,
    /// `stickyd_rejected_requests_total{kind}`: requests refused before routing.
    pub bad_requests: Family<KindLabels, Counter>,
    /// `stickyd_endpoints{state}`
    pub endpoints: Family<StateLabels, Gauge>,
    /// `stickyd_endpoints_synced`: 1 once the source listed the peers.
    pub endpoints_synced: Gauge,
    /// `stickyd_endpoints_updates_total`: views swapped in.
    pub endpoints_updates: Counter,
    /// `stickyd_kubernetes_watch_errors_total`: failed list/watch attempts.
    pub kube_watch_errors: Counter,
    /// `stickyd_connections_open`
    pub connections_open: Gauge,
    /// `stickyd_connections_refused_total`: over STICKYD_MAX_CONNECTIONS.
    pub connections_refused: Counter,
    /// `stickyd_sessions_active`: distinct sessions pinned here seen within
    /// STICKYD_SESSION_ACTIVE_WINDOW (set at each scrape).
    pub sessions_active: Gauge,
    /// `stickyd_sessions_ended_total`: sessions pinned here that the app
    /// ended (a DELETE in app-header mode, its cookie deleted in app-cookie
    /// mode), each leaving the session table at once.
    pub sessions_ended: Counter,
    /// `stickyd_draining`: 1 once a drain was asked for (`/drain`) or SIGTERM came.
    pub draining: Gauge,
    /// `stickyd_drain_elapsed_seconds`: how long the drain has run (its
    /// whole length once it answered; 0 when none), set at each scrape.
    pub drain_elapsed: Gauge<f64, AtomicU64>,
    /// `stickyd_drain_max_seconds`: the running drain's `max` (0 when none).
    pub drain_max: Gauge<f64, AtomicU64>,
    /// `stickyd_info{service,version}`: always 1; names the Service whose
    /// pods are this sidecar's peers (empty without one), for joins.
    pub info: Family<InfoLabels, Gauge>,
    /// `stickyd_key_reloads_total{kind}`: secret file re-reads (ok, error).
    pub key_reloads: Family<KindLabels, Counter>,
    /// `stickyd_memory_limit_bytes`: the memory limit in use (0: none).
    pub memory_limit_bytes: Gauge,
    /// `stickyd_buffer_bytes`: bytes held from the buffer budget, read from
    /// it at each scrape.
    pub buffer_bytes: BufferGauge,
    /// `stickyd_shed_total{kind}`: work refused at the budget or the
    /// upstream queue. Count through the `shed_*` counters.
    pub shed: Family<KindLabels, Counter>,
    /// `stickyd_shed_total{kind="connection"}`: a new client connection
    /// refused because the budget was used up.
    pub shed_connection: Counter,
    /// `stickyd_shed_total{kind="request"}`: a request already read answered
    /// 503 because the budget was used up.
    pub shed_request: Counter,
    /// `stickyd_shed_total{kind="stream"}`: an HTTP/2 stream refused
    /// (RST_STREAM REFUSED_STREAM, which clients retry) at the budget.
    pub shed_stream: Counter,
    /// `stickyd_shed_total{kind="queue"}`: a request that waited
    /// STICKYD_QUEUE_TIMEOUT for a connection to its upstream, answered 503.
    pub shed_queue: Counter,
    /// `stickyd_new_sessions_total{placed}`: new sessions that entered here,
    /// by where they were placed. Count through [`Metrics::new_sessions_local`]
    /// and [`Metrics::new_sessions_peer`].
    pub new_sessions: Family<PlacedLabels, Counter>,
    /// `stickyd_new_sessions_total{placed="local"}`: served here.
    pub new_sessions_local: Counter,
    /// `stickyd_new_sessions_total{placed="peer"}`: handed to a peer (this
    /// pod drains, or a peer had fewer active sessions).
    pub new_sessions_peer: Counter,
    /// `stickyd_admin_refused_total{endpoint}`: admin requests refused (403)
    /// because the caller is not allowed there, and admin connections closed
    /// over the cap (`endpoint="connection"`).
    pub admin_refused: Family<EndpointLabels, Counter>,
    /// `stickyd_hop_refused_total{reason}`: hop markers that did not verify
    /// (with keys), each counted as no marker.
    pub hop_refused: Family<ReasonLabels, Counter>,
    /// `stickyd_body_timeouts_total{direction}`: bodies that went
    /// STICKYD_BODY_READ_TIMEOUT without a byte.
    pub body_timeouts: Family<DirectionLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InfoLabels {
    pub service: String,
    pub version: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PlacedLabels {
    /// local, peer
    pub placed: &'static str,
}

/// A gauge of the bytes in use in a [`BufferBudget`], read when scraped (0
/// until a budget is attached). Clones share the budget.
#[derive(Clone, Debug, Default)]
pub struct BufferGauge(Arc<ArcSwapOption<BufferBudget>>);

impl BufferGauge {
    /// Reports `budget` from now on.
    pub fn attach(&self, budget: Arc<BufferBudget>) {
        self.0.store(Some(budget));
    }

    /// The bytes the attached budget holds now.
    pub fn get(&self) -> u64 {
        self.0.load().as_ref().map_or(0, |b| b.used() as u64)
    }
}

impl EncodeMetric for BufferGauge {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_gauge(&self.get())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Gauge
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let shed = Family::<KindLabels, Counter>::default();
        let shed_connection = shed.get_or_create(&KindLabels { kind: "connection" }).clone();
        let shed_request = shed.get_or_create(&KindLabels { kind: "request" }).clone();
        let shed_stream = shed.get_or_create(&KindLabels { kind: "stream" }).clone();
        let shed_queue = shed.get_or_create(&KindLabels { kind: "queue" }).clone();
        let new_sessions = Family::<PlacedLabels, Counter>::default();
        let new_sessions_local = new_sessions.get_or_create(&PlacedLabels { placed: "local" }).clone();
        let new_sessions_peer = new_sessions.get_or_create(&PlacedLabels { placed: "peer" }).clone();
        Metrics {
            requests: Family::default(),
            forward_duration: Histogram::new(exponential_buckets(0.0001, 2.5, 14)),
            upstream_duration: Histogram::new(exponential_buckets(0.0001, 2.5, 14)),
            upstream_errors: Family::default(),
            bad_requests: Family::default(),
            endpoints: Family::default(),
            endpoints_synced: Gauge::default(),
            endpoints_updates: Counter::default(),
            kube_watch_errors: Counter::default(),
            connections_open: Gauge::default(),
            connections_refused: Counter::default(),
            key_reloads: Family::default(),
            sessions_active: Gauge::default(),
            sessions_ended: Counter::default(),
            draining: Gauge::default(),
            drain_elapsed: Gauge::default(),
            drain_max: Gauge::default(),
            info: Family::default(),
            memory_limit_bytes: Gauge::default(),
            buffer_bytes: BufferGauge::default(),
            shed,
            shed_connection,
            shed_request,
            shed_stream,
            shed_queue,
            new_sessions,
            new_sessions_local,
            new_sessions_peer,
            admin_refused: Family::default(),
            hop_refused: Family::default(),
            body_timeouts: Family::default(),
        }
    }
}

impl Metrics {
    /// Registers every metric under the `stickyd_` prefix.
    pub fn registry(&self) -> Registry {
        let mut r = Registry::with_prefix("stickyd");
        r.register(
            "requests",
            "Requests by routing decision, session outcome and target pod",
            self.requests.clone(),
        );
        r.register(
            "forward_duration_seconds",
            "Time from forwarding a request to a peer's sidecar to its response headers",
            self.forward_duration.clone(),
        );
        r.register(
            "upstream_duration_seconds",
            "Time from sending a request to the app in this pod to its response headers",
            self.upstream_duration.clone(),
        );
        r.register(
            "upstream_errors",
            "Failures talking to the app or a peer, by kind",
            self.upstream_errors.clone(),
        );
        r.register(
            "bad_requests",
            "Requests refused before routing, by kind",
            self.bad_requests.clone(),
        );
        r.register(
            "endpoints",
            "Peers in the endpoint view, by state",
            self.endpoints.clone(),
        );
        r.register(
            "endpoints_synced",
            "1 once the endpoint source has listed the peers",
            self.endpoints_synced.clone(),
        );
        r.register(
            "endpoints_updates",
            "Endpoint views swapped in",
            self.endpoints_updates.clone(),
        );
        r.register(
            "kubernetes_watch_errors",
            "Failed Kubernetes list or watch attempts (the last good view is kept)",
            self.kube_watch_errors.clone(),
        );
        r.register(
            "connections_open",
            "Open client connections",
            self.connections_open.clone(),
        );
        r.register(
            "connections_refused",
            "Client connections closed at once because STICKYD_MAX_CONNECTIONS was reached",
            self.connections_refused.clone(),
        );
        r.register(
            "sessions_active",
            "Distinct sessions pinned to this pod seen within STICKYD_SESSION_ACTIVE_WINDOW",
            self.sessions_active.clone(),
        );
        r.register(
            "sessions_ended",
            "Sessions pinned to this pod that the app ended (a DELETE in app-header mode, its cookie deleted in \
             app-cookie mode)",
            self.sessions_ended.clone(),
        );
        r.register(
            "draining",
            "1 while this pod drains: a drain was asked for on /drain, or SIGTERM came",
            self.draining.clone(),
        );
        r.register(
            "drain_elapsed_seconds",
            "How long the drain asked for on /drain has run (its whole length once it answered); 0 when none",
            self.drain_elapsed.clone(),
        );
        r.register(
            "drain_max_seconds",
            "The max of the drain asked for on /drain; 0 when none",
            self.drain_max.clone(),
        );
        r.register(
            "info",
            "Always 1: the Service whose pods are this sidecar's peers (empty without one), and the version",
            self.info.clone(),
        );
        r.register(
            "key_reloads",
            "Re-reads of STICKYD_COOKIE_SECRET_FILE, by outcome",
            self.key_reloads.clone(),
        );
        r.register(
            "memory_limit_bytes",
            "The memory limit stickyd sizes itself for (STICKYD_MEMORY_LIMIT or the cgroup's); 0 when none is known",
            self.memory_limit_bytes.clone(),
        );
        r.register(
            "buffer_bytes",
            "Bytes of buffers held from the buffer budget",
            self.buffer_bytes.clone(),
        );
        r.register(
            "shed",
            "Work refused because the memory budget was used up: new connections, and requests already read (503)",
            self.shed.clone(),
        );
        r.register(
            "new_sessions",
            "New sessions that entered at this pod, by where they were placed (STICKYD_NEW_SESSIONS)",
            self.new_sessions.clone(),
        );
        r.register(
            "admin_refused",
            "Admin requests refused (403) to a caller that is not this pod, its kubelet (drain token) or a verified peer; and admin connections over the cap",
            self.admin_refused.clone(),
        );
        r.register(
            "hop_refused",
            "Hop markers that did not verify against the session keys, each taken as no marker, by reason",
            self.hop_refused.clone(),
        );
        r.register(
            "body_timeouts",
            "Request and response bodies cut after STICKYD_BODY_READ_TIMEOUT without a byte",
            self.body_timeouts.clone(),
        );
        r
    }

    /// Reports the limits in force: the memory limit and the buffer budget.
    /// Sets `stickyd_info`: `service` is STICKYD_SERVICE (empty without one).
    pub fn set_info(&self, service: &str) {
        let labels = InfoLabels {
            service: service.to_string(),
            version: env!("CARGO_PKG_VERSION"),
        };
        self.info.get_or_create(&labels).set(1);
    }

    pub fn observe_limits(&self, limits: &Limits) {
        let limit = limits.memory_limit().unwrap_or(0);
        self.memory_limit_bytes.set(i64::try_from(limit).unwrap_or(i64::MAX));
        self.buffer_bytes.attach(limits.buffers.clone());
    }

    /// Updates the endpoint gauges from a view that was just swapped in, and
    /// removes the per-pod series of `left`, the pods that left the view with
    /// it, so that a sidecar that lives through many rollouts keeps a bounded
    /// set of series. O(1) plus the pods that left.
    pub fn observe_view<'a>(&self, view: &View, left: impl IntoIterator<Item = &'a str>) {
        for s in [PeerState::Ready, PeerState::Draining] {
            self.endpoints
                .get_or_create(&StateLabels { state: s.as_str() })
                .set(view.count(s) as i64);
        }
        self.endpoints_synced.set(view.synced as i64);
        self.endpoints_updates.inc();
        // ("local" series name this pod, which stays while it runs.)
        for gone in left.into_iter().filter(|name| view.peers().by_name(name).is_none()) {
            for decision in ["forwarded", "rejected"] {
                for session in ["new", "pinned", "repinned", "unsynced", "none"] {
                    self.requests.remove(&DecisionLabels {
                        decision,
                        session,
                        target_pod: gone.to_string(),
                    });
                }
            }
        }
    }

    pub fn upstream_error(&self, kind: &'static str) {
        self.upstream_errors.get_or_create(&KindLabels { kind }).inc();
    }

    pub fn bad_request(&self, kind: &'static str) {
        self.bad_requests.get_or_create(&KindLabels { kind }).inc();
    }

    pub fn admin_refused(&self, endpoint: &'static str) {
        self.admin_refused.get_or_create(&EndpointLabels { endpoint }).inc();
    }

    pub fn hop_refused(&self, reason: &'static str) {
        self.hop_refused.get_or_create(&ReasonLabels { reason }).inc();
    }

    pub fn body_timeout(&self, direction: &'static str) {
        self.body_timeouts.get_or_create(&DirectionLabels { direction }).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scrape(m: &Metrics) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &m.registry()).unwrap();
        out
    }

    fn value<'a>(text: &'a str, series: &str) -> Option<&'a str> {
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
    }

    /// Scrapes `m` and checks each series' value.
    fn assert_series(m: &Metrics, expected: &[(&str, &str)]) -> String {
        let text = scrape(m);
        for (series, v) in expected {
            assert_eq!(value(&text, series), Some(*v), "{series} in {text}");
        }
        text
    }

    const CONNECTION: &str = "stickyd_shed_total{kind=\"connection\"}";
    const REQUEST: &str = "stickyd_shed_total{kind=\"request\"}";
    const STREAM: &str = "stickyd_shed_total{kind=\"stream\"}";
    const QUEUE: &str = "stickyd_shed_total{kind=\"queue\"}";

    #[test]
    fn limits_and_shedding() {
        let m = Metrics::default();
        // Every kind of shedding is there from the start, at 0.
        let text = assert_series(
            &m,
            &[
                ("stickyd_memory_limit_bytes", "0"),
                ("stickyd_buffer_bytes", "0"),
                (CONNECTION, "0"),
                (REQUEST, "0"),
                (STREAM, "0"),
                (QUEUE, "0"),
            ],
        );
        assert!(text.contains("# TYPE stickyd_buffer_bytes gauge"), "{text}");

        let limits = Limits::resolve(Some(128 << 20), None, None);
        m.observe_limits(&limits);
        let lease = limits.buffers.try_take(4096).unwrap();
        m.shed_connection.inc();
        m.shed_request.inc();
        m.shed_request.inc();
        m.shed_stream.inc();
        m.shed_queue.inc();
        m.shed_queue.inc();
        m.shed_queue.inc();
        assert_series(
            &m,
            &[
                ("stickyd_memory_limit_bytes", "134217728"),
                ("stickyd_buffer_bytes", "4096"),
                (CONNECTION, "1"),
                (REQUEST, "2"),
                (STREAM, "1"),
                (QUEUE, "3"),
            ],
        );
        drop(lease);
        assert_eq!(value(&scrape(&m), "stickyd_buffer_bytes"), Some("0"));
    }

    #[test]
    fn new_sessions_by_placement() {
        let m = Metrics::default();
        let local = "stickyd_new_sessions_total{placed=\"local\"}";
        let peer = "stickyd_new_sessions_total{placed=\"peer\"}";
        assert_series(&m, &[(local, "0"), (peer, "0")]);
        m.new_sessions_local.inc();
        m.new_sessions_peer.inc();
        m.new_sessions_peer.inc();
        assert_series(&m, &[(local, "1"), (peer, "2")]);
    }
}
