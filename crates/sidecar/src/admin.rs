//! The admin listener: `/healthz`, `/readyz`, `/metrics`, `/endpoints`,
//! `/sessions` and `/drain`. It serves every endpoint until the process exits, drains
//! included: probes and scrapes matter most while a pod is going away.
//!
//! Who gets an answer ([`Access`]):
//!
//! * `/healthz`, `/readyz`, `/metrics`: anyone (the kubelet's probes, the
//!   scraper); they tell about this pod only, and change nothing.
//! * `/drain` changes what this pod does: only this pod itself (a connection
//!   from this pod's own address, as `kubectl port-forward` makes), or a
//!   caller with the drain token (STICKYD_DRAIN_TOKEN) in `Authorization:
//!   Bearer`, which is how the kubelet's preStop `httpGet` calls it.
//! * `/sessions` and `/endpoints` tell about this pod's sessions and about
//!   other pods: only this pod itself, or a peer that proves it is one: with
//!   keys, a signed [`crate::peer::PEER`] proof; without, a connection from
//!   the address of a pod in the endpoint view.
//!
//! Anyone else gets 403, changes nothing, and is counted
//! (`stickyd_admin_refused_total{endpoint}`). At most
//! [`MAX_CONNECTIONS`] admin connections are served at once; one more is
//! answered 503 and closed.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::config::NewSessions;
use crate::drain::{self, DrainParams};
use crate::endpoints::ViewJson;
use crate::peer::{self, Purpose};
use crate::proxy::{app_reachable, Shared};

/// State the admin endpoints read.
pub struct Admin {
    pub shared: Arc<Shared>,
    pub registry: Registry,
    pub started: Instant,
    degraded_logged: std::sync::atomic::AtomicBool,
}

impl Admin {
    pub fn new(shared: Arc<Shared>, registry: Registry, started: Instant) -> Admin {
        Admin {
            shared,
            registry,
            started,
            degraded_logged: Default::default(),
        }
    }

    /// Ready: not draining, the endpoint view synced (or STICKYD_SYNC_TIMEOUT
    /// passed: degraded mode), and the app answers a TCP connect.
    pub async fn readiness(&self) -> Result<&'static str, &'static str> {
        let s = &self.shared;
        if s.stopping() {
            return Err("stopping\n");
        }
        let synced = s.store.load().synced;
        let degraded = !synced && self.started.elapsed() >= s.cfg.sync_timeout;
        if !synced && !degraded {
            return Err("waiting for the first endpoint sync\n");
        }
        if degraded && !self.degraded_logged.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                timeout = ?s.cfg.sync_timeout,
                "endpoints not synced within STICKYD_SYNC_TIMEOUT; ready in degraded mode (serving locally, pins kept)"
            );
        }
        if !app_reachable(s.cfg.upstream, Duration::from_secs(1)).await {
            return Err("the app in this pod does not accept connections\n");
        }
        Ok(if degraded {
            "ready (degraded: endpoints not synced)\n"
        } else {
            "ready\n"
        })
    }
}

/// Admin connections served at once; one more is answered 503 and closed.
/// Probes, scrapes, the drain and the peers' refreshers need a handful.
pub const MAX_CONNECTIONS: usize = 64;

/// Who may have an answer from an admin endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Access {
    /// Anyone: probes and metrics.
    Anyone,
    /// This pod itself, or the drain token.
    Drain,
    /// This pod itself, or a verified peer.
    Peers,
}

/// Where an admin connection comes from.
#[derive(Clone, Copy, Debug)]
pub struct Caller {
    /// The connection's local address: this pod's, as the caller reached it.
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

impl Caller {
    /// A connection from this pod itself: from the address it reached, so
    /// from inside this pod's network namespace (the kernel drops a packet
    /// from outside that bears one of its own addresses as its source).
    pub fn is_this_pod(&self) -> bool {
        self.local.ip().to_canonical() == self.remote.ip().to_canonical()
    }

    fn ip(&self) -> IpAddr {
        self.remote.ip().to_canonical()
    }
}

fn access(path: &str) -> Access {
    match path {
        drain::PATH => Access::Drain,
        crate::placement::PATH | "/endpoints" => Access::Peers,
        _ => Access::Anyone,
    }
}

impl Admin {
    /// May `caller` have an answer from `path`, with the request's `headers`?
    fn allows(&self, path: &str, caller: &Caller, headers: &http::HeaderMap) -> bool {
        let s = &self.shared;
        match access(path) {
            Access::Anyone => true,
            _ if caller.is_this_pod() => true,
            Access::Drain => s.cfg.drain_token.as_ref().is_some_and(|token| {
                headers
                    .get_all(http::header::AUTHORIZATION)
                    .iter()
                    .any(|v| token.authorizes(v.as_bytes()))
            }),
            Access::Peers => {
                let codec = s.codec.load();
                if codec.keys.is_empty() {
                    // Without keys: a pod of the view, by its address.
                    let ip = caller.ip();
                    s.store.load().peers().iter().any(|p| p.addr.ip().to_canonical() == ip)
                } else {
                    let now = s.clock.unix_now();
                    headers.get_all(peer::PEER).iter().any(|v| {
                        peer::verify(&codec.keys, Purpose::Sessions, v.as_bytes(), &s.cfg.pod_name, now).is_ok()
                    })
                }
            }
        }
    }
}

type AdminBody = Full<Bytes>;

fn reply(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<AdminBody> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

async fn route(admin: &Admin, caller: &Caller, req: Request<Incoming>) -> Response<AdminBody> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET only\n");
    }
    let path = req.uri().path();
    if !admin.allows(path, caller, req.headers()) {
        let endpoint = match access(path) {
            Access::Drain => "drain",
            _ if path == crate::placement::PATH => "sessions",
            _ => "endpoints",
        };
        admin.shared.metrics.admin_refused(endpoint);
        tracing::warn!(remote = %caller.remote, path, "admin request refused: not this pod, its drain token or a verified peer");
        let why = match access(path) {
            Access::Drain => "stickyd: /drain answers this pod itself, or a caller with the drain token (STICKYD_DRAIN_TOKEN) as Authorization: Bearer\n",
            _ => "stickyd: this endpoint answers this pod itself and its verified peers only\n",
        };
        return reply(StatusCode::FORBIDDEN, "text/plain", why);
    }
    match path {
        drain::PATH => match DrainParams::parse_query(req.uri().query()) {
            Ok(params) => {
                let s = &admin.shared;
                let params = params.bounded(s.cfg.drain_max);
                s.metrics.draining.set(1);
                let outcome = s.drain.run(params, s.sessions.clone()).await;
                match serde_json::to_vec(&outcome) {
                    Ok(b) => reply(StatusCode::OK, "application/json", b),
                    Err(_) => reply(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", "encoding failed\n"),
                }
            }
            Err(e) => reply(StatusCode::BAD_REQUEST, "text/plain", format!("stickyd: {e}\n")),
        },
        "/healthz" => reply(StatusCode::OK, "text/plain", "ok\n"),
        // This pod's active sessions, for its peers' least-sessions
        // placement: the count as of the last sweep (one atomic load; the
        // placement refresher sweeps every second).
        crate::placement::PATH => {
            let n = admin.shared.sessions.count();
            reply(StatusCode::OK, "text/plain", format!("{n}\n"))
        }
        "/readyz" => match admin.readiness().await {
            Ok(msg) => reply(StatusCode::OK, "text/plain", msg),
            Err(msg) => reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", msg),
        },
        "/metrics" => {
            let s = &admin.shared;
            let active = s.sessions.active(tokio::time::Instant::now());
            s.metrics.sessions_active.set(active as i64);
            let (elapsed, max) = s.drain.progress().unwrap_or_default();
            s.metrics.drain_elapsed.set(elapsed.as_secs_f64());
            s.metrics.drain_max.set(max.as_secs_f64());
            let mut out = String::new();
            match prometheus_client::encoding::text::encode(&mut out, &admin.registry) {
                Ok(()) => reply(
                    StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    out,
                ),
                Err(_) => reply(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", "encoding failed\n"),
            }
        }
        "/endpoints" => {
            let s = &admin.shared;
            let view = s.store.load();
            let sessions = (s.cfg.new_sessions == NewSessions::LeastSessions).then(|| {
                let mut known = s.loads.known(&view, tokio::time::Instant::now());
                known.insert(&s.cfg.pod_name, s.sessions.count() as u64);
                known
            });
            let json = ViewJson {
                synced: view.synced,
                generation: view.generation,
                this_pod: &s.cfg.pod_name,
                peers: view.peers(),
                sessions,
            };
            match serde_json::to_vec_pretty(&json) {
                Ok(b) => reply(StatusCode::OK, "application/json", b),
                Err(_) => reply(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", "encoding failed\n"),
            }
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found; try /healthz /readyz /metrics /endpoints /sessions /drain\n",
        ),
    }
}

/// The answer to a connection over [`MAX_CONNECTIONS`], written at once.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\ncontent-length: 48\r\nretry-after: 1\r\nconnection: close\r\n\r\nstickyd: too many admin connections; retry soon\n";

/// Serves the admin endpoints for as long as the process runs.
pub async fn serve(listener: TcpListener, admin: Arc<Admin>) {
    let places = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, remote) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(place) = places.clone().try_acquire_owned() else {
            admin.shared.metrics.admin_refused("connection");
            // A fresh socket takes these few bytes at once; if not, the
            // close alone tells the caller.
            let _ = stream.try_write(BUSY);
            continue;
        };
        let Ok(local) = stream.local_addr() else {
            continue;
        };
        let caller = Caller { local, remote };
        let admin = admin.clone();
        tokio::spawn(async move {
            let _place = place;
            let svc = service_fn(move |req| {
                let admin = admin.clone();
                async move { Ok::<_, Infallible>(route(&admin, &caller, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(5))
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
