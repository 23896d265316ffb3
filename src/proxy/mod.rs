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

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::header::{HeaderValue, CONNECTION, HOST, SET_COOKIE};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use crate::affinity::{self, Codec, CookieState, Lifetimes, SessionId};
use crate::config::{Config, UpstreamProtocol};
use crate::endpoints::{EndpointStore, PeerState};
use crate::metrics::{DecisionLabels, Metrics};
use crate::route::{self, Decision, SessionMark, ThisPod};

use body::{Reclaimable, ResponseBody};
use headers::{HOP, SESSION};

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
    bound: Arc<AtomicUsize>,
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
            app_authority: authority(cfg.upstream),
            codec: ArcSwap::from_pointee(codec),
            draining: AtomicBool::new(false),
            pick: AtomicUsize::new(0),
            bound: Arc::default(),
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
    /// The upstream HTTP/1.1 connection to the app bound to this client
    /// connection: HTTP/1 requests on one connection come one at a time, so
    /// they reuse it without a pool checkout. Never contended.
    app: std::sync::Mutex<Option<http1::SendRequest<Incoming>>>,
    /// The count of bound places this connection holds one of, if any.
    bound: std::sync::OnceLock<Arc<AtomicUsize>>,
    /// The connection spoke HTTP/2 (it gets GOAWAY when the drain starts).
    h2: AtomicBool,
}

/// At most this many app connections are bound to client connections; the
/// requests of further client connections go through the shared pool, so idle
/// clients cannot pin an app connection each.
pub const MAX_BOUND: usize = 128;

impl ConnInfo {
    pub fn new(remote: SocketAddr) -> ConnInfo {
        ConnInfo {
            remote,
            app: std::sync::Mutex::new(None),
            bound: std::sync::OnceLock::new(),
            h2: AtomicBool::new(false),
        }
    }

    pub fn is_h2(&self) -> bool {
        self.h2.load(Ordering::Relaxed)
    }

    /// Takes one of the bound places for this connection, if it has none and
    /// one is free.
    fn bind(&self, shared: &Shared) -> bool {
        if self.bound.get().is_some() {
            return true;
        }
        let taken = shared
            .bound
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_BOUND).then_some(n + 1)
            })
            .is_ok();
        if taken {
            let _ = self.bound.set(shared.bound.clone());
        }
        taken
    }

    fn take_app(&self) -> Option<http1::SendRequest<Incoming>> {
        self.app.lock().ok()?.take().filter(|s| !s.is_closed())
    }

    fn put_app(&self, sender: http1::SendRequest<Incoming>) {
        if let Ok(mut slot) = self.app.lock() {
            *slot = Some(sender);
        }
    }
}

impl Drop for ConnInfo {
    fn drop(&mut self) {
        if let Some(count) = self.bound.get() {
            count.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Why the app could not be asked.
enum AppError {
    Connect(String),
    Io(hyper::Error),
    Pooled(hyper_util::client::legacy::Error),
}

impl Shared {
    async fn connect_app(&self) -> Result<http1::SendRequest<Incoming>, AppError> {
        let stream = tokio::time::timeout(
            self.cfg.connect_timeout,
            tokio::net::TcpStream::connect(self.cfg.upstream),
        )
        .await
        .map_err(|_| AppError::Connect("connect timeout".into()))?
        .map_err(|e| AppError::Connect(e.to_string()))?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(AppError::Io)?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "app connection ended");
            }
        });
        Ok(sender)
    }

    /// Sends a request to the app over the connection bound to `conn`,
    /// opening one when there is none or it closed. A request that was not
    /// written to a connection that turned out dead is sent again on a fresh
    /// one; a written request never is.
    async fn send_bound(&self, conn: &ConnInfo, req: Request<Incoming>) -> Result<Response<Incoming>, AppError> {
        let mut req = req;
        for attempt in 0..2 {
            let mut sender = match conn.take_app() {
                Some(s) if attempt == 0 => s,
                _ => self.connect_app().await?,
            };
            if sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    conn.put_app(sender);
                    return Ok(resp);
                }
                Err(mut e) => match e.take_message() {
                    Some(back) => req = back,
                    None => return Err(AppError::Io(e.into_error())),
                },
            }
        }
        Err(AppError::Connect(
            "the app closed the connection twice before the request was sent".into(),
        ))
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
    headers::strip_own(resp.headers_mut());
    if draining && h1 && resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        // Tell keep-alive clients to move on while this pod drains.
        resp.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

async fn handle_inner(shared: &Shared, conn: &ConnInfo, mut req: Request<Incoming>) -> Response<ResponseBody> {
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
    let hop = req.headers().contains_key(HOP);
    let now = affinity::unix_now();
    let codec = shared.codec.load();
    let cookie = affinity::read_cookie(req.headers(), &shared.cfg.cookie.name, &codec, now);
    drop(codec);
    let view = shared.store.load();
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

    // Client copies of stickyd's headers are never passed on.
    req.headers_mut().remove(HOP);
    req.headers_mut().remove(SESSION);

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
            serve_local(shared, conn, req, mark, set_cookie, &cookie, now).await
        }
        Decision::Forward { peer, mark } => {
            let peer_addr = peer.addr;
            let peer_name = peer.name.clone();
            drop(view);
            forward(shared, conn, req, peer_addr, peer_name, mark, &cookie, now).await
        }
    }
}

fn cookie_label(c: &CookieState) -> &'static str {
    match c {
        CookieState::Absent => "absent",
        CookieState::Invalid => "invalid",
        CookieState::Valid(_) => "valid",
    }
}

/// Prepares the request head for the next hop: hop-by-hop headers out,
/// X-Forwarded-For in, the URI pointed at `authority`. The original
/// Host is kept (HTTP/2 requests get one from their :authority).
fn rewrite_request<B>(
    req: &mut Request<B>,
    conn: &ConnInfo,
    authority: http::uri::Authority,
    to_h2: bool,
) -> Option<()> {
    let upgrade = req.version() <= Version::HTTP_11 && headers::is_upgrade(req.headers());
    headers::strip_hop_by_hop(req.headers_mut(), upgrade);
    headers::append_forwarded_for(req.headers_mut(), conn.remote.ip());
    if !req.headers().contains_key(HOST) {
        if let Some(a) = req.uri().authority() {
            let v = HeaderValue::from_str(a.as_str()).ok()?;
            req.headers_mut().insert(HOST, v);
        }
    }
    let mut parts = std::mem::take(req.uri_mut()).into_parts();
    parts.scheme = Some(http::uri::Scheme::HTTP);
    parts.authority = Some(authority);
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

#[allow(clippy::too_many_arguments)]
async fn serve_local(
    shared: &Shared,
    conn: &ConnInfo,
    mut req: Request<Incoming>,
    mark: SessionMark,
    set_cookie: bool,
    cookie: &CookieState,
    now: u64,
) -> Response<ResponseBody> {
    let https = headers::forwarded_https(req.headers());
    let to_h2 = shared.cfg.upstream_protocol == UpstreamProtocol::H2c;
    if rewrite_request(&mut req, conn, shared.app_authority.clone(), to_h2).is_none() {
        shared.metrics.bad_request("target");
        return own_response(StatusCode::BAD_REQUEST, "stickyd: the request target is invalid\n");
    }
    req.headers_mut()
        .insert(SESSION, HeaderValue::from_static(mark.as_str()));
    let client_upgrade = upgrade_of(&mut req);
    // HTTP/1.1 requests (upgrades aside) use the app connection bound to this
    // client connection; HTTP/2 streams and upgrades use the pool.
    let bound = !to_h2 && client_upgrade.is_none() && req.version() <= Version::HTTP_11 && conn.bind(shared);

    let started = Instant::now();
    let result = if bound {
        tokio::time::timeout(shared.cfg.response_timeout, shared.send_bound(conn, req)).await
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
        tokio::time::timeout(shared.cfg.response_timeout, pooled).await
    };
    shared
        .metrics
        .upstream_duration
        .observe(started.elapsed().as_secs_f64());
    shared.local_counts[mark as usize].inc();
    let mut resp = match result {
        Err(_) => {
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
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        splice_upgrade(client_upgrade, &mut resp);
    }
    let mut resp = resp.map(http_body_util::Either::Left);
    finish_response(&mut resp);
    if set_cookie {
        let created = match cookie {
            CookieState::Valid(s) if s.id == shared.me && s.created > 0 => s.created,
            _ => now,
        };
        let value = shared.codec.load().encode(shared.me, created, now);
        let header = affinity::set_cookie(&shared.cfg.cookie, value, https);
        resp.headers_mut().append(SET_COOKIE, header);
        headers::mark_private(resp.headers_mut());
    }
    resp
}

#[allow(clippy::too_many_arguments)]
async fn forward(
    shared: &Shared,
    conn: &ConnInfo,
    mut req: Request<Incoming>,
    peer_addr: SocketAddr,
    peer_name: String,
    mark: SessionMark,
    cookie: &CookieState,
    now: u64,
) -> Response<ResponseBody> {
    // Keep what serving locally needs, should the peer refuse the connection.
    let to_h2 = req.version() == Version::HTTP_2;
    let fallback_head = (
        req.method().clone(),
        req.uri().clone(),
        req.version(),
        req.headers().clone(),
    );
    if rewrite_request(&mut req, conn, authority(peer_addr), to_h2).is_none() {
        shared.metrics.bad_request("target");
        return own_response(StatusCode::BAD_REQUEST, "stickyd: the request target is invalid\n");
    }
    if let Ok(v) = HeaderValue::from_str(&shared.cfg.pod_name) {
        req.headers_mut().insert(HOP, v);
    }
    let client_upgrade = upgrade_of(&mut req);
    let (parts, body) = req.into_parts();
    let (body, reclaim) = Reclaimable::new(body);
    let req = Request::from_parts(parts, body);

    let started = Instant::now();
    let fut = if to_h2 {
        shared.peers_h2.request(req)
    } else {
        shared.peers_h1.request(req)
    };
    let result = tokio::time::timeout(shared.cfg.response_timeout, fut).await;
    shared.metrics.forward_duration.observe(started.elapsed().as_secs_f64());
    match result {
        Ok(Ok(mut resp)) => {
            shared.count("forwarded", Some(mark), &peer_name);
            if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                splice_upgrade(client_upgrade, &mut resp);
            }
            let mut resp = resp.map(http_body_util::Either::Left);
            finish_response(&mut resp);
            resp
        }
        Ok(Err(e)) => {
            let refused = e.is_connect();
            // The keep-alive race: a peer that stops closes an idle
            // connection just as a request is written into it. A safe request
            // (GET, HEAD, OPTIONS) whose body never left and that got no
            // response byte may be served here instead, as browsers retry it
            // (RFC 9110 §9.2.2). Anything else that went out is never replayed.
            let safe_retry = !refused
                && matches!(fallback_head.0.as_str(), "GET" | "HEAD" | "OPTIONS")
                && closed_before_response(&e);
            if !refused && !safe_retry {
                shared.metrics.upstream_error("peer_io");
                tracing::warn!(peer = %peer_name, error = %e, "forwarding to peer failed after the request was sent");
                return own_response(
                    StatusCode::BAD_GATEWAY,
                    "stickyd: the peer pod failed while handling the request\n",
                );
            }
            shared
                .metrics
                .upstream_error(if refused { "peer_connect" } else { "peer_closed" });
            tracing::info!(peer = %peer_name, addr = %peer_addr, error = %e, "peer unreachable; serving locally");
            // The body comes back only if it was never polled: nothing of it left.
            let Ok(body) = reclaim.await else {
                shared.metrics.upstream_error("peer_io");
                return own_response(StatusCode::BAD_GATEWAY, "stickyd: the peer pod failed\n");
            };
            let (method, uri, version, hdrs) = fallback_head;
            let mut req = Request::new(body);
            *req.method_mut() = method;
            *req.uri_mut() = uri;
            *req.version_mut() = version;
            *req.headers_mut() = hdrs;
            req.headers_mut().remove(HOP);
            req.headers_mut().remove(SESSION);
            match route::after_connect_failure(shared.cfg.on_missing) {
                Decision::Local { mark: m, set_cookie } => {
                    let m = if mark == SessionMark::New { SessionMark::New } else { m };
                    Box::pin(serve_local(shared, conn, req, m, set_cookie, cookie, now)).await
                }
                _ => {
                    shared.count("rejected", None, &peer_name);
                    own_response(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "stickyd: the pod this session is pinned to is unreachable (STICKYD_ON_MISSING=reject)\n",
                    )
                }
            }
        }
        Err(_) => {
            shared.metrics.upstream_error("peer_timeout");
            own_response(
                StatusCode::GATEWAY_TIMEOUT,
                "stickyd: the peer pod did not answer in time (STICKYD_RESPONSE_TIMEOUT)\n",
            )
        }
    }
}

/// Did the connection close (or reset) before any byte of the response?
fn closed_before_response(e: &hyper_util::client::legacy::Error) -> bool {
    let mut src = std::error::Error::source(e);
    while let Some(err) = src {
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
        src = err.source();
    }
    false
}

/// Takes the client side of an HTTP/1.1 upgrade out of the request, if any.
fn upgrade_of<B>(req: &mut Request<B>) -> Option<hyper::upgrade::OnUpgrade> {
    if req.version() <= Version::HTTP_11 && headers::is_upgrade(req.headers()) {
        req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>()
    } else {
        None
    }
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

/// Response head for the client: hop-by-hop headers out.
fn finish_response(resp: &mut Response<ResponseBody>) {
    let upgrade = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    headers::strip_hop_by_hop(resp.headers_mut(), upgrade);
}

/// How long the app has had to become reachable.
pub async fn app_reachable(addr: SocketAddr, timeout: Duration) -> bool {
    matches!(
        tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await,
        Ok(Ok(_))
    )
}
