//! The admin listener: `/healthz`, `/readyz`, `/metrics`, `/endpoints`,
//! `/sessions` and `/drain`. It serves every endpoint until the process exits, drains
//! included: probes and scrapes matter most while a pod is going away.

use std::convert::Infallible;
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

use crate::config::NewSessions;
use crate::drain::{self, DrainParams};
use crate::endpoints::ViewJson;
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
        if s.draining.load(Ordering::Relaxed) {
            return Err("draining\n");
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

type AdminBody = Full<Bytes>;

fn reply(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<AdminBody> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

async fn route(admin: &Admin, req: Request<Incoming>) -> Response<AdminBody> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET only\n");
    }
    match req.uri().path() {
        drain::PATH => match DrainParams::parse_query(req.uri().query()) {
            Ok(params) => {
                let s = &admin.shared;
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

/// Serves the admin endpoints for as long as the process runs.
pub async fn serve(listener: TcpListener, admin: Arc<Admin>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let admin = admin.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let admin = admin.clone();
                async move { Ok::<_, Infallible>(route(&admin, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(5))
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
