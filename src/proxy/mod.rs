//! The data path: every request's life, in named phases.
//!
//! 1. **screen**: refuse what a sidecar must never do (CONNECT, absolute-form
//!    targets naming another host).
//! 2. **decide**: read the cookie and the hop marker, load the endpoint view
//!    (lock-free) and call [`route::decide`].
//! 3. **forward** to a peer's sidecar, or **serve locally** with the app.
//! 4. **respond**: add Set-Cookie beside the app's own, strip stickyd's
//!    headers, mark the response private when it sets the cookie.

pub mod body;
pub mod headers;
pub mod listener;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::header::{HeaderValue, CONNECTION, HOST, SET_COOKIE};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prometheus_client::metrics::counter::Counter;

use crate::affinity::{self, Codec, CookieState, Lifetimes, SessionId};
use crate::config::{Config, UpstreamProtocol};
use crate::endpoints::{EndpointStore, IdHash, Peer, PeerState};
use crate::metrics::{DecisionLabels, Metrics};
use crate::route::{self, Decision, SessionMark, ThisPod};

use body::{Reclaimable, ResponseBody};
use headers::{Found, HOP, SESSION};
use tokio::sync::oneshot;

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
    pub me: SessionId,
    /// Set on SIGTERM: take no new sessions, close keep-alive connections.
    pub draining: AtomicBool,
    app: Client<HttpConnector, Incoming>,
    peers_h1: Client<HttpConnector, Reclaimable>,
    peers_h2: Client<HttpConnector, Reclaimable>,
    app_authority: http::uri::Authority,
    pick: AtomicUsize,
    /// `requests_total{decision="local",target_pod=<this pod>}` by mark, so
    /// the local path counts without a label allocation.
    local_counts: [prometheus_client::metrics::counter::Counter; 4],
    /// App connections bound to client connections (at most [`MAX_BOUND`]).
    bound_apps: Arc<AtomicUsize>,
    /// Peer connections bound to client connections (at most [`MAX_BOUND_PEERS`]).
    bound_peers: Arc<AtomicUsize>,
    /// How long a connection to a peer may sit idle and still be reused.
    peer_idle: Duration,
    /// The hop marker's value: this pod's name.
    hop_value: HeaderValue,
    forward_counts: ArcSwap<ForwardCounts>,
}

fn connector(cfg: &Config) -> HttpConnector {
    let mut c = HttpConnector::new();
    c.set_nodelay(true);
    c.set_connect_timeout(Some(cfg.connect_timeout));
    c.enforce_http(true);
    c
}

fn client<B>(cfg: &Config, h2: bool, idle: Duration) -> Client<HttpConnector, B>
where
    B: http_body::Body + Send + 'static + Unpin,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut b = Client::builder(TokioExecutor::new());
    // The idle timeout only works with a timer.
    b.pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .pool_idle_timeout(idle)
        .pool_max_idle_per_host(1024)
        // Never let a client's Host turn into a destination: the URI names
        // the exact peer, and the original Host header is sent as it is.
        .set_host(false);
    if h2 {
        b.http2_only(true);
    }
    b.build(connector(cfg))
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
        Shared {
            me: SessionId::for_pod(&cfg.pod_name),
            app: client(
                &cfg,
                cfg.upstream_protocol == UpstreamProtocol::H2c,
                cfg.pool_idle_timeout,
            ),
            peers_h1: client(&cfg, false, peer_idle),
            peers_h2: client(&cfg, true, peer_idle),
            peer_idle,
            hop_value: HeaderValue::from_str(&cfg.pod_name).expect("STICKYD_POD_NAME is a DNS label"),
            app_authority: authority(cfg.upstream),
            codec: ArcSwap::from_pointee(codec),
            draining: AtomicBool::new(false),
            pick: AtomicUsize::new(0),
            forward_counts: ArcSwap::default(),
            bound_apps: Arc::default(),
            bound_peers: Arc::default(),
            local_counts: [
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
            }),
            cfg,
            store,
            metrics,
        }
    }

    fn this_pod(&self, view: &crate::endpoints::View) -> ThisPod<'_> {
        let draining =
            self.draining.load(Ordering::Relaxed) || view.get(&self.me).is_some_and(|p| p.state == PeerState::Draining);
        ThisPod {
            name: &self.cfg.pod_name,
            id: self.me,
            draining,
        }
    }

    /// Counts a forwarded request through a cache of the current view's
    /// counters, so that a forward costs no label allocation or hashing.
    fn count_forwarded(&self, target: &Target<'_>) {
        let i = target.mark as usize;
        let cache = self.forward_counts.load();
        let current = cache.generation == target.generation;
        if current {
            if let Some(Some(c)) = cache.by_id.get(&target.peer.id).map(|cs| &cs[i]) {
                c.inc();
                return;
            }
        }
        let counter = self
            .metrics
            .requests
            .get_or_create(&DecisionLabels {
                decision: "forwarded",
                session: target.mark.as_str(),
                target_pod: target.peer.name.clone(),
            })
            .clone();
        counter.inc();
        // Remembered for this view only: the series of a pod that leaves the
        // view is removed (Metrics::observe_view).
        if target.generation >= cache.generation {
            let mut by_id = if current {
                cache.by_id.clone()
            } else {
                HashMap::default()
            };
            by_id.entry(target.peer.id).or_default()[i] = Some(counter);
            self.forward_counts.store(Arc::new(ForwardCounts {
                generation: target.generation,
                by_id,
            }));
        }
    }

    fn count(&self, decision: &'static str, mark: Option<SessionMark>, target: &str) {
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

fn authority(addr: SocketAddr) -> http::uri::Authority {
    addr.to_string().parse().expect("a socket address is a valid authority")
}

/// A response of stickyd's own, with a short explanation.
fn own_response(status: StatusCode, msg: &'static str) -> Response<ResponseBody> {
    let mut r = Response::new(body::text(msg));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r.headers_mut()
        .insert(http::header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// The per-connection facts and state a request needs.
pub struct ConnInfo {
    pub remote: SocketAddr,
    /// The client's X-Forwarded-For entry, formatted once.
    forwarded_for: HeaderValue,
    /// Upstream connections bound to this client connection. HTTP/1
    /// requests on one connection come one at a time, so they reuse these
    /// without a pool checkout; the lock is never contended.
    bound: std::sync::Mutex<Bound>,
    /// This connection's place among the [`MAX_BOUND`] app bindings, if any.
    app_place: std::sync::OnceLock<Place>,
    /// The connection spoke HTTP/2 (it gets GOAWAY when the drain starts).
    h2: AtomicBool,
}

#[derive(Default)]
struct Bound {
    app: Option<http1::SendRequest<Incoming>>,
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
    used: Instant,
    _place: Place,
}

/// One of a bounded number of places for bound connections; given back on drop.
struct Place(Arc<AtomicUsize>);

impl Place {
    fn take(count: &Arc<AtomicUsize>, max: usize) -> Option<Place> {
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

/// The deadline of a request passed.
struct Elapsed;

impl ConnInfo {
    pub fn new(remote: SocketAddr) -> ConnInfo {
        ConnInfo {
            remote,
            forwarded_for: headers::forwarded_for_value(remote.ip()),
            bound: Default::default(),
            app_place: std::sync::OnceLock::new(),
            h2: AtomicBool::new(false),
        }
    }

    pub fn is_h2(&self) -> bool {
        self.h2.load(Ordering::Relaxed)
    }

    /// Takes one of the app binding places for this connection, if it has
    /// none and one is free.
    fn bind_app(&self, shared: &Shared) -> bool {
        if self.app_place.get().is_some() {
            return true;
        }
        match Place::take(&shared.bound_apps, MAX_BOUND) {
            Some(place) => {
                let _ = self.app_place.set(place);
                true
            }
            None => false,
        }
    }

    fn take_app(&self) -> Option<http1::SendRequest<Incoming>> {
        self.bound.lock().ok()?.app.take().filter(|s| !s.is_closed())
    }

    fn put_app(&self, sender: http1::SendRequest<Incoming>) {
        if let Ok(mut b) = self.bound.lock() {
            b.app = Some(sender);
        }
    }

    /// This connection's bound connection to the peer at `addr` (if it is
    /// open and was used within `idle`), and the place it holds; or a free
    /// place to bind a new one. None: use the shared pool.
    fn take_peer(&self, shared: &Shared, addr: SocketAddr) -> Option<(Option<http1::SendRequest<Reclaimable>>, Place)> {
        let mut b = self.bound.lock().ok()?;
        if let Some(i) = b.peers.iter().position(|p| p.addr == addr) {
            let p = b.peers.swap_remove(i);
            // A connection idle for longer than the peer keeps it open is
            // not written into: it may be closing just now.
            let usable = p.used.elapsed() < shared.peer_idle && !p.sender.is_closed();
            return Some((usable.then_some(p.sender), p._place));
        }
        if b.peers.len() >= MAX_PEERS_PER_CONN {
            let oldest = (0..b.peers.len()).min_by_key(|&i| b.peers[i].used)?;
            return Some((None, b.peers.swap_remove(oldest)._place));
        }
        drop(b);
        Place::take(&shared.bound_peers, MAX_BOUND_PEERS).map(|place| (None, place))
    }

    fn put_peer(&self, addr: SocketAddr, sender: http1::SendRequest<Reclaimable>, place: Place) {
        if let Ok(mut b) = self.bound.lock() {
            b.peers.push(BoundPeer {
                addr,
                sender,
                used: Instant::now(),
                _place: place,
            });
        }
    }

    /// Runs `f` for at most `limit`, on this connection's reusable timer when
    /// it is free (HTTP/2 streams running at once get timers of their own).
    async fn within<F: Future>(&self, limit: Duration, f: F) -> Result<F::Output, Elapsed> {
        let taken = self.bound.lock().ok().and_then(|mut b| b.deadline.take());
        let deadline = tokio::time::Instant::now() + limit;
        let mut timer = match taken {
            Some(mut t) => {
                t.as_mut().reset(deadline);
                t
            }
            None => Box::pin(tokio::time::sleep_until(deadline)),
        };
        let mut f = std::pin::pin!(f);
        let out = std::future::poll_fn(|cx| {
            if let Poll::Ready(v) = f.as_mut().poll(cx) {
                return Poll::Ready(Ok(v));
            }
            timer.as_mut().poll(cx).map(|()| Err(Elapsed))
        })
        .await;
        if let Ok(mut b) = self.bound.lock() {
            b.deadline.get_or_insert(timer);
        }
        out
    }
}

/// Why the app could not be asked.
enum AppError {
    Connect(String),
    Io(hyper::Error),
    Pooled(hyper_util::client::legacy::Error),
}

/// Opens an HTTP/1.1 connection to `addr` and runs it on a task of its own.
async fn dial<B>(addr: SocketAddr, timeout: Duration) -> Result<http1::SendRequest<B>, String>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| "connect timeout".to_string())?
        .map_err(|e| e.to_string())?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "upstream connection ended");
        }
    });
    Ok(sender)
}

/// How a request went on an HTTP/1.1 connection of a client connection's own.
enum Sent<B> {
    /// Answered; the connection can serve the next request.
    Answered(Response<Incoming>, http1::SendRequest<B>),
    /// Never written: no connection could be opened, or connections closed
    /// twice before it went out. The request comes back, and why.
    Unsent(Request<B>, String),
    /// Written, then the connection failed.
    Failed(hyper::Error),
}

/// Sends `req` over `sender`, or over a fresh connection to `addr` when there
/// is none or it turned out closed. A request that was not written to a
/// connection that turned out dead is sent again on a fresh one; a written
/// request never is.
async fn send_bound<B>(
    sender: Option<http1::SendRequest<B>>,
    addr: SocketAddr,
    connect_timeout: Duration,
    mut req: Request<B>,
) -> Sent<B>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut sender = sender;
    for _ in 0..2 {
        let mut s = match sender.take() {
            Some(s) => s,
            None => match dial(addr, connect_timeout).await {
                Ok(s) => s,
                Err(why) => return Sent::Unsent(req, why),
            },
        };
        if s.ready().await.is_err() {
            continue;
        }
        match s.try_send_request(req).await {
            Ok(resp) => return Sent::Answered(resp, s),
            Err(mut e) => match e.take_message() {
                Some(back) => req = back,
                None => return Sent::Failed(e.into_error()),
            },
        }
    }
    Sent::Unsent(req, "the connection closed twice before the request was sent".into())
}

impl Shared {
    /// Sends a request to the app over the connection bound to `conn`.
    async fn send_app(&self, conn: &ConnInfo, req: Request<Incoming>) -> Result<Response<Incoming>, AppError> {
        match send_bound(conn.take_app(), self.cfg.upstream, self.cfg.connect_timeout, req).await {
            Sent::Answered(resp, sender) => {
                conn.put_app(sender);
                Ok(resp)
            }
            Sent::Unsent(_, why) => Err(AppError::Connect(why)),
            Sent::Failed(e) => Err(AppError::Io(e)),
        }
    }
}

/// Handles one request.
pub async fn handle(shared: Arc<Shared>, conn: Arc<ConnInfo>, req: Request<Incoming>) -> Response<ResponseBody> {
    let draining = shared.draining.load(Ordering::Relaxed);
    let h1 = req.version() <= Version::HTTP_11;
    if !h1 {
        conn.h2.store(true, Ordering::Relaxed);
    }
    let mut resp = handle_inner(&shared, &conn, req).await;
    if draining && h1 && resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        // Tell keep-alive clients to move on while this pod drains.
        resp.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

async fn handle_inner(shared: &Shared, conn: &ConnInfo, req: Request<Incoming>) -> Response<ResponseBody> {
    // Phase 1: screen.
    if req.method() == Method::CONNECT {
        shared.metrics.bad_request("connect");
        return own_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "stickyd: CONNECT is not allowed; this is not a forward proxy\n",
        );
    }
    if req.version() <= Version::HTTP_11 && req.uri().authority().is_some() {
        shared.metrics.bad_request("absolute_form");
        return own_response(
            StatusCode::BAD_REQUEST,
            "stickyd: absolute-form request targets are not accepted; this is not a forward proxy\n",
        );
    }
    if req
        .uri()
        .path_and_query()
        .is_none_or(|pq| !pq.as_str().starts_with('/'))
        && req.method() != Method::OPTIONS
    {
        shared.metrics.bad_request("target");
        return own_response(StatusCode::BAD_REQUEST, "stickyd: the request target must be a path\n");
    }

    // The listener's buffer limit catches most oversized heads; this catches
    // the rest, whatever the read sizes were.
    let head_bytes: usize = req
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum::<usize>()
        + req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if head_bytes > shared.cfg.max_header_bytes {
        shared.metrics.bad_request("header_too_large");
        return own_response(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "stickyd: request header fields too large (STICKYD_MAX_HEADER_BYTES)\n",
        );
    }

    // Phase 2: decide.
    let found = Found::scan(req.headers());
    let hop = found.hop();
    let now = affinity::unix_now();
    let codec = shared.codec.load();
    let cookie = affinity::read_cookie(req.headers(), &shared.cfg.cookie.name, &codec, now);
    drop(codec);
    // Held (one reference count) while a forward to one of its pods runs.
    let view = shared.store.load_full();
    let me = shared.this_pod(&view);
    let pick = shared.pick.fetch_add(1, Ordering::Relaxed);
    let decision = route::decide(&cookie, &view, &me, hop, shared.cfg.on_missing, pick);
    tracing::debug!(
        method = %req.method(),
        path = req.uri().path(),
        cookie = cookie_label(&cookie),
        hop,
        decision = ?decision,
        "route"
    );

    let session = SessionFacts { cookie, now };
    match decision {
        Decision::Reject => {
            shared.count("rejected", None, "");
            own_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "stickyd: the pod this session is pinned to is gone (STICKYD_ON_MISSING=reject)\n",
            )
        }
        Decision::Local { mark, set_cookie } => {
            drop(view);
            serve_local(shared, conn, req, found, mark, set_cookie, &session).await
        }
        Decision::Forward { peer, mark } => {
            let target = Target {
                peer,
                generation: view.generation,
                mark,
            };
            forward(shared, conn, req, found, &target, &session).await
        }
    }
}

/// The peer a request is forwarded to, and why.
struct Target<'a> {
    peer: &'a Peer,
    /// The generation of the view the decision was made on.
    generation: u64,
    mark: SessionMark,
}

/// What serving a request locally needs to know of its session.
struct SessionFacts {
    cookie: CookieState,
    now: u64,
}

fn cookie_label(c: &CookieState) -> &'static str {
    match c {
        CookieState::Absent => "absent",
        CookieState::Invalid => "invalid",
        CookieState::Valid(_) => "valid",
    }
}

/// Prepares the request head for the next hop, whichever it is: client
/// copies of stickyd's headers and hop-by-hop headers out, X-Forwarded-For
/// in, a Host header for HTTP/2 requests (from their :authority).
fn prepare_head<B>(req: &mut Request<B>, conn: &ConnInfo, found: Found, upgrade: bool) -> Option<()> {
    let headers = req.headers_mut();
    headers::strip_own_found(headers, found);
    headers::strip_found(headers, found, upgrade);
    headers::append_forwarded_for_found(headers, found, &conn.forwarded_for);
    if !req.headers().contains_key(HOST) {
        if let Some(a) = req.uri().authority() {
            let v = HeaderValue::from_str(a.as_str()).ok()?;
            req.headers_mut().insert(HOST, v);
        }
    }
    Some(())
}

/// Points the request at the next hop: origin-form for a connection of our
/// own, absolute-form naming `authority` for the pooled client (which picks
/// the connection by it and sends origin-form). The original Host is kept.
fn set_target<B>(req: &mut Request<B>, authority: Option<http::uri::Authority>, to_h2: bool) -> Option<()> {
    let mut parts = std::mem::take(req.uri_mut()).into_parts();
    parts.scheme = authority.as_ref().map(|_| http::uri::Scheme::HTTP);
    parts.authority = authority;
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    *req.uri_mut() = Uri::from_parts(parts).ok()?;
    if to_h2 {
        // HTTP/2 carries the authority itself; a Host header beside it is
        // allowed but must match, so leave it.
        *req.version_mut() = Version::HTTP_2;
    } else if req.version() == Version::HTTP_2 {
        *req.version_mut() = Version::HTTP_11;
    }
    Some(())
}

fn invalid_target(shared: &Shared) -> Response<ResponseBody> {
    shared.metrics.bad_request("target");
    own_response(StatusCode::BAD_REQUEST, "stickyd: the request target is invalid\n")
}

async fn serve_local(
    shared: &Shared,
    conn: &ConnInfo,
    mut req: Request<Incoming>,
    found: Found,
    mark: SessionMark,
    set_cookie: bool,
    session: &SessionFacts,
) -> Response<ResponseBody> {
    let upgrade = req.version() <= Version::HTTP_11 && found.is_upgrade(req.headers());
    let https = found.https(req.headers());
    if prepare_head(&mut req, conn, found, upgrade).is_none() {
        return invalid_target(shared);
    }
    send_local(shared, conn, req, upgrade, https, mark, set_cookie, session).await
}

/// Sends a prepared request to the app in this pod and answers with its
/// response, adding the session cookie when asked.
#[allow(clippy::too_many_arguments)]
async fn send_local(
    shared: &Shared,
    conn: &ConnInfo,
    mut req: Request<Incoming>,
    upgrade: bool,
    https: bool,
    mark: SessionMark,
    set_cookie: bool,
    session: &SessionFacts,
) -> Response<ResponseBody> {
    let to_h2 = shared.cfg.upstream_protocol == UpstreamProtocol::H2c;
    // HTTP/1.1 requests (upgrades aside) use the app connection bound to this
    // client connection; HTTP/2 streams and upgrades use the pool.
    let bound = !to_h2 && !upgrade && req.version() <= Version::HTTP_11 && conn.bind_app(shared);
    let authority = (!bound).then(|| shared.app_authority.clone());
    if set_target(&mut req, authority, to_h2).is_none() {
        return invalid_target(shared);
    }
    req.headers_mut()
        .insert(SESSION, HeaderValue::from_static(mark.as_str()));
    let client_upgrade = if upgrade { upgrade_of(&mut req) } else { None };

    let started = Instant::now();
    let result = if bound {
        conn.within(shared.cfg.response_timeout, shared.send_app(conn, req))
            .await
    } else {
        let pooled = async {
            shared.app.request(req).await.map_err(|e| {
                if e.is_connect() {
                    AppError::Connect(e.to_string())
                } else {
                    AppError::Pooled(e)
                }
            })
        };
        conn.within(shared.cfg.response_timeout, pooled).await
    };
    shared
        .metrics
        .upstream_duration
        .observe(started.elapsed().as_secs_f64());
    shared.local_counts[mark as usize].inc();
    let resp = match result {
        Err(Elapsed) => {
            shared.metrics.upstream_error("app_timeout");
            return own_response(
                StatusCode::GATEWAY_TIMEOUT,
                "stickyd: the app did not answer in time (STICKYD_RESPONSE_TIMEOUT)\n",
            );
        }
        Ok(Err(e)) => {
            let (kind, msg) = match &e {
                AppError::Connect(m) => ("app_connect", m.clone()),
                AppError::Io(e) => ("app_io", e.to_string()),
                AppError::Pooled(e) => ("app_io", e.to_string()),
            };
            shared.metrics.upstream_error(kind);
            tracing::warn!(error = %msg, kind, "the app in this pod failed");
            return own_response(
                StatusCode::BAD_GATEWAY,
                "stickyd: could not reach the app in this pod\n",
            );
        }
        Ok(Ok(r)) => r,
    };
    let mut resp = from_upstream(resp, client_upgrade);
    if set_cookie {
        let created = match &session.cookie {
            CookieState::Valid(s) if s.id == shared.me && s.created > 0 => s.created,
            _ => session.now,
        };
        let value = shared.codec.load().encode(shared.me, created, session.now);
        let header = affinity::set_cookie(&shared.cfg.cookie, value, https);
        resp.headers_mut().append(SET_COOKIE, header);
        headers::mark_private(resp.headers_mut());
    }
    resp
}

/// Serves locally a request whose forwarding failed before any of it
/// reached the peer (connection refused, timed out, or closed unused), as
/// `STICKYD_ON_MISSING` says. `req` is already prepared for a peer.
#[allow(clippy::too_many_arguments)]
async fn fall_back(
    shared: &Shared,
    conn: &ConnInfo,
    mut req: Request<Incoming>,
    https: bool,
    target: &Target<'_>,
    session: &SessionFacts,
) -> Response<ResponseBody> {
    let (peer_name, mark) = (&target.peer.name, target.mark);
    req.headers_mut().remove(HOP);
    match route::after_connect_failure(shared.cfg.on_missing) {
        Decision::Local { mark: m, set_cookie } => {
            let m = if mark == SessionMark::New { SessionMark::New } else { m };
            Box::pin(send_local(shared, conn, req, false, https, m, set_cookie, session)).await
        }
        _ => {
            shared.count("rejected", None, peer_name);
            own_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "stickyd: the pod this session is pinned to is unreachable (STICKYD_ON_MISSING=reject)\n",
            )
        }
    }
}

/// May a request that failed after it was written be served here instead?
/// The keep-alive race: a peer that stops closes an idle connection just as
/// a request is written into it. A safe request (GET, HEAD, OPTIONS) whose
/// body never left and that got no response byte may be, as browsers retry
/// it (RFC 9110 §9.2.2). Anything else that went out is never replayed.
fn safe_method(m: &Method) -> bool {
    matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS)
}

#[allow(clippy::too_many_arguments)]
async fn forward(
    shared: &Shared,
    conn: &ConnInfo,
    req: Request<Incoming>,
    found: Found,
    target: &Target<'_>,
    session: &SessionFacts,
) -> Response<ResponseBody> {
    let to_h2 = req.version() == Version::HTTP_2;
    let upgrade = !to_h2 && found.is_upgrade(req.headers());
    if !to_h2 && !upgrade {
        if let Some((sender, place)) = conn.take_peer(shared, target.peer.addr) {
            return forward_bound(shared, conn, req, found, sender, place, target, session).await;
        }
    }
    forward_pooled(shared, conn, req, found, upgrade, target, session).await
}

/// Forwards an HTTP/1.1 request over this client connection's own
/// connection to the peer.
#[allow(clippy::too_many_arguments)]
async fn forward_bound(
    shared: &Shared,
    conn: &ConnInfo,
    mut req: Request<Incoming>,
    found: Found,
    sender: Option<http1::SendRequest<Reclaimable>>,
    place: Place,
    target: &Target<'_>,
    session: &SessionFacts,
) -> Response<ResponseBody> {
    let (peer_addr, peer_name) = (target.peer.addr, &target.peer.name);
    let https = found.https(req.headers());
    if prepare_head(&mut req, conn, found, false).is_none() || set_target(&mut req, None, false).is_none() {
        return invalid_target(shared);
    }
    let (req, reclaim) = to_peer(shared, req);
    // The head, kept to serve a safe request here should the peer close the
    // connection before answering.
    let retry_head = safe_method(req.method()).then(|| Head::of(&req));

    let started = Instant::now();
    let sent = conn
        .within(
            shared.cfg.response_timeout,
            send_bound(sender, peer_addr, shared.cfg.connect_timeout, req),
        )
        .await;
    shared.metrics.forward_duration.observe(started.elapsed().as_secs_f64());
    match sent {
        Err(Elapsed) => peer_timeout(shared),
        Ok(Sent::Answered(resp, sender)) => {
            conn.put_peer(peer_addr, sender, place);
            shared.count_forwarded(target);
            from_upstream(resp, None)
        }
        Ok(Sent::Failed(e)) => {
            let Some(head) = retry_head.filter(|_| closed_before_response(&e)) else {
                return peer_failed(shared, peer_name, &e);
            };
            shared.metrics.upstream_error("peer_closed");
            tracing::info!(peer = %peer_name, addr = %peer_addr, error = %e, "peer closed the connection unanswered; serving locally");
            // The body comes back only if it was never polled: nothing of it left.
            let Ok(body) = reclaim.await else {
                return body_gone(shared);
            };
            fall_back(shared, conn, head.with_body(body), https, target, session).await
        }
        Ok(Sent::Unsent(req, error)) => {
            // Nothing reached the peer: serve here, body and all.
            shared.metrics.upstream_error("peer_connect");
            tracing::info!(peer = %peer_name, addr = %peer_addr, %error, "peer unreachable; serving locally");
            let (parts, body) = req.into_parts();
            let Some(body) = body.into_inner() else {
                return body_gone(shared);
            };
            fall_back(shared, conn, Request::from_parts(parts, body), https, target, session).await
        }
    }
}

/// Forwards a request through the shared pool: HTTP/2, upgrades, and
/// HTTP/1.1 beyond the bound connections.
#[allow(clippy::too_many_arguments)]
async fn forward_pooled(
    shared: &Shared,
    conn: &ConnInfo,
    mut req: Request<Incoming>,
    found: Found,
    upgrade: bool,
    target: &Target<'_>,
    session: &SessionFacts,
) -> Response<ResponseBody> {
    let (peer_addr, peer_name) = (target.peer.addr, &target.peer.name);
    // Keep what serving locally needs, should the peer refuse the connection.
    let to_h2 = req.version() == Version::HTTP_2;
    let fallback_head = Head::of(&req);
    if prepare_head(&mut req, conn, found, upgrade).is_none()
        || set_target(&mut req, Some(authority(peer_addr)), to_h2).is_none()
    {
        return invalid_target(shared);
    }
    let client_upgrade = if upgrade { upgrade_of(&mut req) } else { None };
    let (req, reclaim) = to_peer(shared, req);

    let started = Instant::now();
    let fut = if to_h2 {
        shared.peers_h2.request(req)
    } else {
        shared.peers_h1.request(req)
    };
    let result = conn.within(shared.cfg.response_timeout, fut).await;
    shared.metrics.forward_duration.observe(started.elapsed().as_secs_f64());
    match result {
        Ok(Ok(resp)) => {
            shared.count_forwarded(target);
            from_upstream(resp, client_upgrade)
        }
        Ok(Err(e)) => {
            let refused = e.is_connect();
            let safe_retry = !refused && safe_method(&fallback_head.method) && closed_before_response(&e);
            if !refused && !safe_retry {
                return peer_failed(shared, peer_name, &e);
            }
            shared
                .metrics
                .upstream_error(if refused { "peer_connect" } else { "peer_closed" });
            tracing::info!(peer = %peer_name, addr = %peer_addr, error = %e, "peer unreachable; serving locally");
            // The body comes back only if it was never polled: nothing of it left.
            let Ok(body) = reclaim.await else {
                return body_gone(shared);
            };
            let mut req = fallback_head.with_body(body);
            let found = Found::scan(req.headers());
            let https = found.https(req.headers());
            let upgrade = req.version() <= Version::HTTP_11 && found.is_upgrade(req.headers());
            if prepare_head(&mut req, conn, found, upgrade).is_none() {
                return invalid_target(shared);
            }
            fall_back(shared, conn, req, https, target, session).await
        }
        Err(Elapsed) => peer_timeout(shared),
    }
}

/// Did the connection close (or reset) before any byte of the response?
fn closed_before_response(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(h) = err.downcast_ref::<hyper::Error>() {
            if h.is_incomplete_message() {
                return true;
            }
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
            );
        }
        cur = err.source();
    }
    false
}

/// Takes the client side of an HTTP/1.1 upgrade out of an upgrade request.
fn upgrade_of<B>(req: &mut Request<B>) -> Option<hyper::upgrade::OnUpgrade> {
    req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>()
}

/// The head of a request, kept to serve it here should forwarding fail.
struct Head {
    method: Method,
    uri: Uri,
    version: Version,
    headers: http::HeaderMap,
}

impl Head {
    fn of<B>(req: &Request<B>) -> Head {
        Head {
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            headers: req.headers().clone(),
        }
    }

    fn with_body<B>(self, body: B) -> Request<B> {
        let mut req = Request::new(body);
        *req.method_mut() = self.method;
        *req.uri_mut() = self.uri;
        *req.version_mut() = self.version;
        *req.headers_mut() = self.headers;
        req
    }
}

/// An upstream's response, for the client: joined with the client's
/// upgraded connection on a 101, hop-by-hop and stickyd's headers out.
fn from_upstream(
    mut resp: Response<Incoming>,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
) -> Response<ResponseBody> {
    let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    if switching {
        splice_upgrade(client_upgrade, &mut resp);
    }
    headers::finish_response(resp.headers_mut(), switching);
    resp.map(http_body_util::Either::Left)
}

/// Marks a request prepared for a peer with the hop marker, and wraps its
/// body so that it comes back if it is never sent.
fn to_peer(shared: &Shared, req: Request<Incoming>) -> (Request<Reclaimable>, oneshot::Receiver<Incoming>) {
    let (parts, body) = req.into_parts();
    let (body, reclaim) = Reclaimable::new(body);
    let mut req = Request::from_parts(parts, body);
    req.headers_mut().insert(HOP, shared.hop_value.clone());
    (req, reclaim)
}

fn peer_timeout(shared: &Shared) -> Response<ResponseBody> {
    shared.metrics.upstream_error("peer_timeout");
    own_response(
        StatusCode::GATEWAY_TIMEOUT,
        "stickyd: the peer pod did not answer in time (STICKYD_RESPONSE_TIMEOUT)\n",
    )
}

fn peer_failed(shared: &Shared, peer: &str, error: &dyn std::fmt::Display) -> Response<ResponseBody> {
    shared.metrics.upstream_error("peer_io");
    tracing::warn!(%peer, %error, "forwarding to peer failed after the request was sent");
    own_response(
        StatusCode::BAD_GATEWAY,
        "stickyd: the peer pod failed while handling the request\n",
    )
}

/// The request's body was polled, so it cannot be served here any more.
fn body_gone(shared: &Shared) -> Response<ResponseBody> {
    shared.metrics.upstream_error("peer_io");
    own_response(StatusCode::BAD_GATEWAY, "stickyd: the peer pod failed\n")
}

/// Joins the client's upgraded connection with the upstream's once both
/// sides have switched protocols.
fn splice_upgrade(client: Option<hyper::upgrade::OnUpgrade>, resp: &mut Response<Incoming>) {
    let Some(client) = client else {
        return;
    };
    let upstream = hyper::upgrade::on(resp);
    tokio::spawn(async move {
        let (client, upstream) = match tokio::join!(client, upstream) {
            (Ok(c), Ok(u)) => (c, u),
            (c, u) => {
                tracing::debug!(client_ok = c.is_ok(), upstream_ok = u.is_ok(), "upgrade failed");
                return;
            }
        };
        let mut client = TokioIo::new(client);
        let mut upstream = TokioIo::new(upstream);
        if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
            tracing::debug!(error = %e, "upgraded connection closed");
        }
    });
}

/// How long the app has had to become reachable.
pub async fn app_reachable(addr: SocketAddr, timeout: Duration) -> bool {
    matches!(
        tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await,
        Ok(Ok(_))
    )
}
