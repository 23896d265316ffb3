//! Upstream connections: dialling, sending a prepared request over a bound
//! connection or a shared pool, and the one error type of both upstreams
//! (the app in this pod, and peers' sidecars).
//!
//! One rule decides what a failure leaves in hand, for both upstreams and
//! every way of sending ([`settle`]): a request that never left, or a safe
//! request (GET, HEAD, OPTIONS) that a peer's connection closed on before any
//! byte of the answer, with a body nobody read, comes back whole and may be
//! served elsewhere. Anything else that went out is never replayed.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body;
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper::upgrade::OnUpgrade;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::sync::oneshot;

use super::body::Source;
use super::body::{Reclaimable, Watch};
use super::conn::{ConnInfo, Elapsed, PeerBinding};
use super::h1::client;
use super::h1::upstream::Upstream;
use super::pool::{BoundedPool, Turn};
use super::Connector;
use crate::config::Config;

/// Which upstream a request was sent to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// The app in this pod.
    App,
    /// A peer's sidecar.
    Peer,
}

/// How sending to an upstream failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// No connection: refused, connect timeout, or closed twice before the
    /// request could be written.
    Connect,
    /// The connection closed before any byte of the response.
    Closed,
    /// No response headers within STICKYD_RESPONSE_TIMEOUT.
    Timeout,
    /// The peer left the endpoint view while the request waited for its
    /// answer (a pod that died dark: no RST, nothing answers).
    Gone,
    /// Any other failure once the request was written.
    Io,
    /// Never sent: every connection to the upstream stayed busy for
    /// STICKYD_QUEUE_TIMEOUT (a shed, answered 503).
    Queue,
}

/// An upstream failure: which upstream, how, and whether the request can be
/// sent elsewhere (nothing of it reached the upstream, and it is in hand).
#[derive(Debug)]
pub struct UpstreamError {
    pub target: Target,
    pub kind: Kind,
    pub replayable: bool,
    detail: String,
}

impl std::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.metric_label(), self.detail)
    }
}

impl UpstreamError {
    pub fn new(target: Target, kind: Kind, replayable: bool, detail: impl ToString) -> UpstreamError {
        UpstreamError {
            target,
            kind,
            replayable,
            detail: detail.to_string(),
        }
    }

    /// The status the client gets when no other place can take the request.
    pub fn status(&self) -> StatusCode {
        match self.kind {
            Kind::Timeout => StatusCode::GATEWAY_TIMEOUT,
            Kind::Queue => StatusCode::SERVICE_UNAVAILABLE,
            Kind::Connect | Kind::Closed | Kind::Gone | Kind::Io => StatusCode::BAD_GATEWAY,
        }
    }

    /// The `kind` label of `stickyd_upstream_errors_total`.
    pub fn metric_label(&self) -> &'static str {
        match (self.target, self.kind) {
            (Target::App, Kind::Connect) => "app_connect",
            (Target::App, Kind::Timeout) => "app_timeout",
            (Target::App, Kind::Queue) => "app_queue",
            (Target::Peer, Kind::Queue) => "peer_queue",
            (Target::App, Kind::Closed | Kind::Gone | Kind::Io) => "app_io",
            (Target::Peer, Kind::Connect) => "peer_connect",
            (Target::Peer, Kind::Closed) => "peer_closed",
            (Target::Peer, Kind::Timeout) => "peer_timeout",
            (Target::Peer, Kind::Gone) => "peer_gone",
            (Target::Peer, Kind::Io) => "peer_io",
        }
    }

    /// The body of stickyd's answer.
    pub fn message(&self) -> &'static str {
        match (self.target, self.kind) {
            (Target::App, Kind::Timeout) => "stickyd: the app did not answer in time (STICKYD_RESPONSE_TIMEOUT)\n",
            (Target::App, _) => "stickyd: could not reach the app in this pod\n",
            (Target::Peer, Kind::Timeout) => {
                "stickyd: the peer pod did not answer in time (STICKYD_RESPONSE_TIMEOUT)\n"
            }
            (Target::Peer, Kind::Gone) => "stickyd: the peer pod went away while handling the request\n",
            (Target::Peer, _) => "stickyd: the peer pod failed while handling the request\n",
        }
    }
}

/// A failed send: the error, and the request whole when it is replayable.
pub struct Failure {
    pub error: UpstreamError,
    pub request: Option<Request<Incoming>>,
    /// The client's request body stalled (STICKYD_BODY_READ_TIMEOUT): the
    /// upstream failed because the body was cut, the client's fault.
    pub stalled: bool,
}

/// The shared pools, for what is not bound to a client connection: HTTP/2
/// to the app or a peer (hyper's pool: one multiplexed connection each),
/// and HTTP/1.1 for hyper's codec, bounded per upstream ([`BoundedPool`]).
pub struct Pools {
    /// The app, when it speaks h2c.
    pub app_h2: Client<Dialer, Reclaimable>,
    pub peers_h2: Client<Dialer, Reclaimable>,
    /// The app when it speaks HTTP/1.1, and peers over HTTP/1.1.
    pub h1: BoundedPool,
    /// Peers' connections are reused within this (the app's within
    /// STICKYD_POOL_IDLE_TIMEOUT).
    pub h1_peers: BoundedPool,
}

/// Dials where a pooled HTTP/2 request's target says, or always the app
/// (`to`): a request to the app carries the client's Host as its
/// `:authority` (an HTTP/2 server may refuse a `Host` field that differs
/// from it, as nginx does with 400), so its target does not say where the
/// app is.
#[derive(Clone)]
pub struct Dialer {
    inner: HttpConnector,
    to: Option<Uri>,
}

impl tower_service::Service<Uri> for Dialer {
    type Response = TokioIo<tokio::net::TcpStream>;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, target: Uri) -> Self::Future {
        let connecting = self.inner.call(self.to.clone().unwrap_or(target));
        Box::pin(async move { connecting.await.map_err(Into::into) })
    }
}

fn dialer(cfg: &Config, to: Option<Uri>) -> Dialer {
    let mut c = HttpConnector::new();
    c.set_nodelay(true);
    c.set_connect_timeout(Some(cfg.connect_timeout));
    c.enforce_http(true);
    Dialer { inner: c, to }
}

fn h2_client(cfg: &Config, idle: Duration, to: Option<Uri>) -> Client<Dialer, Reclaimable> {
    let mut b = Client::builder(TokioExecutor::new());
    // The idle timeout only works with a timer.
    b.pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .pool_idle_timeout(idle)
        // Never let a client's Host turn into a destination: the URI names
        // the exact upstream, and the original Host header is sent as it is.
        .set_host(false)
        .http2_only(true);
    b.build(dialer(cfg, to))
}

impl Pools {
    pub fn new(cfg: &Config, peer_idle: Duration) -> Pools {
        let bounded = |idle| BoundedPool::new(cfg.upstream_max_connections, cfg.queue_timeout, idle);
        Pools {
            app_h2: h2_client(
                cfg,
                cfg.pool_idle_timeout,
                Uri::try_from(format!("http://{}", cfg.upstream)).ok(),
            ),
            peers_h2: h2_client(cfg, peer_idle, None),
            h1: bounded(cfg.pool_idle_timeout),
            h1_peers: bounded(peer_idle),
        }
    }
}

/// The most an upstream HTTP/1.1 connection of hyper's codec buffers of a
/// response (HAProxy's `tune.bufsize`).
const UPSTREAM_READ_BUFFER: usize = 16 << 10;

/// Opens an HTTP/1.1 connection to `addr` and runs it on a task of its own;
/// once more after a refusal when `again` ([`Connector::connect_again`]).
async fn dial<B>(
    connector: &Connector,
    addr: SocketAddr,
    timeout: Duration,
    again: bool,
) -> Result<http1::SendRequest<B>, String>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = connector
        .connect_again(addr, timeout, again)
        .await
        .map_err(|e| e.to_string())?;
    let (sender, conn) = http1::Builder::new()
        // hyper's read buffer grows to 400 KiB on a busy connection; a
        // response head past 16 KiB is refused (502) as nginx and HAProxy
        // refuse one past their buffer.
        .max_buf_size(UPSTREAM_READ_BUFFER)
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

/// How a request went on a connection of a client connection's own.
enum Bound<B> {
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
    connector: &Connector,
    addr: SocketAddr,
    connect_timeout: Duration,
    again: bool,
    mut req: Request<B>,
) -> Bound<B>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut sender = sender;
    for _ in 0..2 {
        let mut s = match sender.take() {
            Some(s) => s,
            None => match dial(connector, addr, connect_timeout, again).await {
                Ok(s) => s,
                Err(why) => return Bound::Unsent(req, why),
            },
        };
        if s.ready().await.is_err() {
            continue;
        }
        match s.try_send_request(req).await {
            Ok(resp) => return Bound::Answered(resp, s),
            Err(mut e) => match e.take_message() {
                Some(back) => req = back,
                None => return Bound::Failed(e.into_error()),
            },
        }
    }
    Bound::Unsent(req, "the connection closed twice before the request was sent".into())
}

/// A send over a connection of ours as [`Sent`]; `keep` takes the
/// connection of an answered one.
fn sent(bound: Bound<Reclaimable>, keep: impl FnOnce(http1::SendRequest<Reclaimable>)) -> Sent {
    match bound {
        Bound::Answered(resp, sender) => {
            keep(sender);
            Sent::Answered(resp.map(Source::Hyper))
        }
        Bound::Unsent(req, why) => unsent(req, why),
        Bound::Failed(e) => Sent::Failed {
            error: Box::new(e),
            connect: false,
        },
    }
}

/// Where and how a new connection is opened.
struct Dial<'a> {
    connector: &'a Connector,
    addr: SocketAddr,
    timeout: Duration,
    /// Once more after a refusal (the app).
    again: bool,
}

/// Sends `req` with stickyd's HTTP/1.1 client over `idle` (a pooled
/// connection) or a new one, holding `turn` until the response body ends. A
/// request that a kept connection turned out closed for, nothing written,
/// goes once more on a new one; a written one never does.
async fn send_pooled(idle: Option<Upstream>, dial: Dial<'_>, turn: Turn, mut req: Request<Reclaimable>) -> Sent {
    let mut idle = idle;
    loop {
        let up = match idle.take() {
            Some(u) => u,
            // Boxed: a rare step, whose state would size every stream's.
            None => match Box::pin(Upstream::dial(dial.connector, dial.addr, dial.timeout, dial.again)).await {
                Ok(u) => u,
                Err(e) => return unsent(req, e.to_string()),
            },
        };
        let fresh = up.fresh;
        match client::exchange(up, req).await {
            Ok(resp) => return Sent::Answered(resp.map(|b| Source::H1(b.holding(turn)))),
            Err(client::Failed::Unsent(back, _)) if !fresh => req = *back,
            Err(client::Failed::Unsent(back, e)) => return unsent(*back, e.to_string()),
            Err(client::Failed::Closed(e)) | Err(client::Failed::Io(e)) => {
                return Sent::Failed {
                    error: Box::new(e),
                    connect: false,
                }
            }
        }
    }
}

/// How a send ended, whichever way it went.
enum Sent {
    Answered(Response<Source>),
    /// Never written; the request is whole.
    Unsent(Request<Incoming>, String),
    /// Failed with the request gone into the connection or the pool.
    Failed {
        error: Box<dyn std::error::Error + Send + Sync>,
        connect: bool,
    },
    /// Given up on: the upstream left the endpoint view first.
    Abandoned,
    /// No turn at the upstream within STICKYD_QUEUE_TIMEOUT: never sent.
    Queued,
}

/// What is kept to rebuild a request that failed inside a pool or after it
/// was written: its head, and its body if the body is never read; and
/// whether its body stalled.
struct Keep {
    head: Option<Head>,
    body: Option<oneshot::Receiver<Incoming>>,
    upgrade: Option<OnUpgrade>,
    stalled: Option<Arc<AtomicBool>>,
}

impl Keep {
    /// Takes the client side of an upgrade out of `req`, to put it back into
    /// a request that comes back.
    fn new<B>(req: &mut Request<B>, head: bool) -> Keep {
        Keep {
            head: head.then(|| Head::of(req)),
            body: None,
            upgrade: req.extensions_mut().remove::<OnUpgrade>(),
            stalled: None,
        }
    }

    fn restore(&mut self, mut req: Request<Incoming>) -> Request<Incoming> {
        if let Some(u) = self.upgrade.take() {
            req.extensions_mut().insert(u);
        }
        req
    }

    /// The request again, if its head was kept and its body was never read.
    async fn rebuild(&mut self) -> Option<Request<Incoming>> {
        let head = self.head.take()?;
        let body = self.body.take()?.await.ok()?;
        Some(self.restore(head.with_body(body)))
    }
}

/// How an attempt ended without any byte of an answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Unanswered {
    /// The request never went out: no connection, or connections that
    /// closed before it could be written.
    Unsent,
    /// It went out, and the connection closed (or reset) before any byte
    /// of the answer.
    Closed,
    /// It went out, and the peer left the endpoint view before answering.
    Gone,
}

/// The one replay rule, for both codecs: the failure's kind, and whether
/// the request may be sent elsewhere. `safe`: a GET, HEAD or OPTIONS;
/// `whole`: nothing of its body was read, so it is in hand as it came.
pub(super) fn replay(target: Target, how: Unanswered, safe: bool, whole: bool) -> (Kind, bool) {
    match how {
        // Nothing reached the upstream.
        Unanswered::Unsent if whole => (Kind::Connect, true),
        Unanswered::Unsent => (Kind::Io, false),
        // A peer that closes an idle connection just as a request is
        // written into it: a safe request whose body never left may go
        // elsewhere, as browsers retry it (RFC 9110 §9.2.2). What the app
        // in this pod closed on may have been acted on.
        Unanswered::Closed if target == Target::Peer && safe && whole => (Kind::Closed, true),
        Unanswered::Closed => (Kind::Io, false),
        // As a closed connection; a pod that died dark answers nobody, so
        // the kind says so either way.
        Unanswered::Gone => (Kind::Gone, safe && whole),
    }
}

/// What a send's end leaves for the caller, by [`replay`]. (An answered
/// send needs nothing more: [`Outbound::run`] hands its response on itself.)
async fn settle(target: Target, sent: Result<Sent, Elapsed>, mut keep: Keep) -> Result<Response<Source>, Failure> {
    let stalled = keep.stalled.as_ref().is_some_and(|s| s.load(Ordering::Acquire));
    let fail = |kind, replayable, detail: &dyn std::fmt::Display, request| Failure {
        error: UpstreamError::new(target, kind, replayable, detail),
        request,
        stalled,
    };
    if stalled && !matches!(sent, Ok(Sent::Answered(_))) {
        return Err(fail(Kind::Io, false, &"the request body stalled", None));
    }
    let safe = keep.head.as_ref().is_some_and(|h| safe(&h.method));
    let (how, detail): (Unanswered, Box<dyn std::fmt::Display + Send>) = match sent {
        Ok(Sent::Answered(resp)) => return Ok(resp),
        Err(Elapsed) => return Err(fail(Kind::Timeout, false, &"no response headers in time", None)),
        Ok(Sent::Unsent(req, why)) => {
            let req = keep.restore(req);
            let (kind, replayable) = replay(target, Unanswered::Unsent, safe, true);
            return Err(fail(kind, replayable, &why, Some(req)));
        }
        Ok(Sent::Failed { error, connect: true }) => (Unanswered::Unsent, Box::new(DisplayError(error))),
        Ok(Sent::Failed { error, connect: false }) if closed_before_response(&*error) => {
            (Unanswered::Closed, Box::new(DisplayError(error)))
        }
        Ok(Sent::Failed { error, .. }) => return Err(fail(Kind::Io, false, &DisplayError(error), None)),
        Ok(Sent::Abandoned) => (Unanswered::Gone, Box::new("it left the endpoint view before answering")),
        // Nothing went out; the answer is a shed, not a failure of the
        // upstream, and the session stays where it is.
        Ok(Sent::Queued) => {
            return Err(fail(
                Kind::Queue,
                false,
                &"every connection busy for STICKYD_QUEUE_TIMEOUT",
                None,
            ))
        }
    };
    // The request again, if its head was kept and its body never read.
    let req = keep.rebuild().await;
    match replay(target, how, safe, req.is_some()) {
        (kind, true) => Err(fail(kind, true, &detail, req)),
        (kind, false) => Err(fail(kind, false, &detail, None)),
    }
}

/// A boxed error, shown as itself.
struct DisplayError(Box<dyn std::error::Error + Send + Sync>);

impl std::fmt::Display for DisplayError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// May a request that went out be sent again elsewhere, should its
/// connection close before any byte of the answer?
fn safe(m: &Method) -> bool {
    matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS)
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

/// The head of a request, kept to send it elsewhere should its upstream fail.
pub(super) struct Head {
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

/// The request with a body that comes back if it is never read, under
/// `limit` (STICKYD_BODY_READ_TIMEOUT) when it has one and a body to wait
/// for.
fn reclaimable(req: Request<Incoming>, keep: &mut Keep, limit: Option<&BodyLimit<'_>>) -> Request<Reclaimable> {
    let (parts, body) = req.into_parts();
    let watch = limit.filter(|_| !body.is_end_stream()).map(|l| {
        let (watch, stalled) = Watch::request(l.limit, l.metrics.clone());
        keep.stalled = Some(stalled);
        watch
    });
    let (body, back) = Reclaimable::new(body, watch);
    keep.body = Some(back);
    Request::from_parts(parts, body)
}

/// A request never written, with its own body again if the body was never
/// read; else a failure that never replays it.
fn unsent(req: Request<Reclaimable>, why: String) -> Sent {
    let (parts, body) = req.into_parts();
    match body.into_inner() {
        Some(b) => Sent::Unsent(Request::from_parts(parts, b), why),
        None => Sent::Failed {
            error: why.into(),
            connect: false,
        },
    }
}

/// STICKYD_BODY_READ_TIMEOUT for a request body, and where a stall is
/// counted.
pub(super) struct BodyLimit<'a> {
    pub limit: Duration,
    pub metrics: &'a Arc<crate::metrics::Metrics>,
}

/// How a request reaches its upstream.
pub(super) enum Via<'a> {
    /// The client connection's own connection to the peer at this address.
    BoundPeer(SocketAddr, PeerBinding),
    /// A turn at the upstream at this address, in a bounded pool of HTTP/1.1
    /// connections.
    Bounded(&'a BoundedPool, SocketAddr),
    /// A shared HTTP/2 pool.
    Pool(&'a Client<Dialer, Reclaimable>),
    /// A new HTTP/1.1 connection of hyper's client to this address, for an
    /// upgrade, which takes it for good.
    Upgrade(SocketAddr),
}

/// An answer: the response, and the client side of an upgrade it agreed to.
pub(super) struct Answer {
    pub resp: Response<Source>,
    pub upgrade: Option<OnUpgrade>,
}

/// Where and how to send, and within what.
pub(super) struct Outbound<'a> {
    pub target: Target,
    pub via: Via<'a>,
    pub conn: &'a ConnInfo,
    pub connector: &'a Connector,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    /// The request body's idle limit; None for a stream.
    pub body: Option<BodyLimit<'a>>,
}

impl Outbound<'_> {
    /// Sends a request whose head is ready for this upstream and target form,
    /// until its response headers, the response timeout, or `abandon`.
    /// Upgrades (the client side in the request's extensions) come back
    /// with the response; the request comes back on a replayable failure.
    pub async fn run(self, mut req: Request<Incoming>, abandon: impl Future<Output = ()>) -> Result<Answer, Failure> {
        let Outbound {
            target,
            via,
            conn,
            connector,
            connect_timeout,
            response_timeout,
            body,
        } = self;
        // A peer's bound connection replays only safe requests (the head is
        // kept for those); a pool may hand a request back whatever it is.
        let keep_head = match via {
            Via::BoundPeer(..) => safe(req.method()),
            Via::Bounded(..) | Via::Pool(_) | Via::Upgrade(_) => true,
        };
        let mut keep = Keep::new(&mut req, keep_head);
        let req = reclaimable(req, &mut keep, body.as_ref());
        // The HTTP/1.1 exchanges are boxed: every stream's state is as
        // large as its largest await, and an h2c app's streams never use
        // them (BENCHMARKS.md, "HTTP/2 clients").
        let sent = conn
            .guard(response_timeout, abandon, async {
                match via {
                    Via::BoundPeer(addr, binding) => {
                        let bound =
                            Box::pin(send_bound(binding.sender, connector, addr, connect_timeout, false, req)).await;
                        sent(bound, |s| conn.put_peer(addr, s, binding.place))
                    }
                    Via::Bounded(pool, addr) => {
                        let Some((turn, idle)) = pool.checkout(addr).await else {
                            return Sent::Queued;
                        };
                        let dial = Dial {
                            connector,
                            addr,
                            timeout: connect_timeout,
                            again: target == Target::App,
                        };
                        Box::pin(send_pooled(idle, dial, turn, req)).await
                    }
                    Via::Upgrade(addr) => {
                        let bound = Box::pin(send_bound(None, connector, addr, connect_timeout, false, req)).await;
                        sent(bound, drop)
                    }
                    Via::Pool(client) => match client.request(req).await {
                        Ok(resp) => Sent::Answered(resp.map(Source::Hyper)),
                        Err(e) => Sent::Failed {
                            connect: e.is_connect(),
                            error: Box::new(e),
                        },
                    },
                }
            })
            .await
            .map(|s| s.unwrap_or(Sent::Abandoned));
        let mut keep = keep;
        match sent {
            Ok(Sent::Answered(resp)) => Ok(Answer {
                resp,
                upgrade: keep.upgrade.take(),
            }),
            // Boxed: only a failure pays for what settling it takes.
            failed => Box::pin(settle(target, failed, keep))
                .await
                .map(|resp| Answer { resp, upgrade: None }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_replay_rule() {
        use Unanswered::*;
        for target in [Target::App, Target::Peer] {
            for safe in [false, true] {
                // Never sent: whole, it goes elsewhere; else nothing does.
                assert_eq!(replay(target, Unsent, safe, true), (Kind::Connect, true));
                assert_eq!(replay(target, Unsent, safe, false), (Kind::Io, false));
                // A part of its body went: never again.
                assert_eq!(replay(target, Closed, safe, false), (Kind::Io, false));
                assert_eq!(replay(target, Gone, safe, false), (Kind::Gone, false));
            }
            // Unsafe methods may have been acted on.
            assert_eq!(replay(target, Closed, false, true), (Kind::Io, false));
            assert_eq!(replay(target, Gone, false, true), (Kind::Gone, false));
            assert_eq!(replay(target, Gone, true, true), (Kind::Gone, true));
        }
        // The keep-alive race with a peer: a safe request goes elsewhere.
        assert_eq!(replay(Target::Peer, Closed, true, true), (Kind::Closed, true));
        // The app in this pod closed on it: it may have been acted on.
        assert_eq!(replay(Target::App, Closed, true, true), (Kind::Io, false));
    }
}
