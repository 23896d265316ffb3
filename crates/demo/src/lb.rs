//! A random load balancer: kube-proxy behind an ExternalName Service, as the
//! ingress sees it.
//!
//! The ingress holds pooled connections to the one name it knows and reuses
//! them across sessions, and kube-proxy spreads them over the pods, so in
//! effect every request lands on a pod picked at random. This proxy does
//! exactly that, per request, with bodies streamed both ways and HTTP/1.1
//! upgrades spliced through. The backend list can change at run time.
//!
//! Paths under `/_demo/` are not proxied: they control the demo cluster
//! (list, kill and add pods) through a [`ControlRequest`] channel.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

use stickyd_sidecar::proxy::headers;

/// Names the backend the load balancer picked (the pod kube-proxy chose,
/// which is not always the pod that served the request).
pub const LB_BACKEND: HeaderName = HeaderName::from_static("x-demo-lb-backend");

/// One backend: a pod's address as the Service sees it.
#[derive(Debug)]
pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
    /// Requests sent to it.
    pub picks: AtomicU64,
}

impl Backend {
    pub fn new(name: impl Into<String>, addr: SocketAddr) -> Arc<Backend> {
        Arc::new(Backend {
            name: name.into(),
            addr,
            picks: AtomicU64::new(0),
        })
    }
}

/// The backend list, swapped whole.
#[derive(Clone, Default)]
pub struct Backends {
    inner: Arc<ArcSwap<Vec<Arc<Backend>>>>,
}

impl Backends {
    pub fn new(list: Vec<Arc<Backend>>) -> Backends {
        Backends {
            inner: Arc::new(ArcSwap::from_pointee(list)),
        }
    }

    pub fn load(&self) -> Arc<Vec<Arc<Backend>>> {
        self.inner.load_full()
    }

    pub fn set(&self, list: Vec<Arc<Backend>>) {
        self.inner.store(Arc::new(list));
    }

    /// Adds `b` (replacing a backend of the same name).
    pub fn add(&self, b: Arc<Backend>) {
        let mut list: Vec<Arc<Backend>> = self.load().iter().filter(|x| x.name != b.name).cloned().collect();
        list.push(b);
        self.set(list);
    }

    /// Removes the backend named `name`; true if it was there.
    pub fn remove(&self, name: &str) -> bool {
        let cur = self.load();
        let list: Vec<Arc<Backend>> = cur.iter().filter(|x| x.name != name).cloned().collect();
        let removed = list.len() != cur.len();
        self.set(list);
        removed
    }

    fn pick(&self) -> Option<Arc<Backend>> {
        let list = self.inner.load();
        if list.is_empty() {
            return None;
        }
        Some(list[fastrand::usize(..list.len())].clone())
    }
}

/// What a `/_demo/` request asks the cluster to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlOp {
    /// `GET /_demo/pods`: the pods, as JSON.
    Pods,
    /// `POST /_demo/kill?pod=NAME`: stop that pod (the oldest when no name
    /// is given) and take it out of the load balancer and of every view.
    Kill(Option<String>),
    /// `POST /_demo/add`: start a new pod and add it everywhere.
    Add,
    /// `POST /_demo/drain?pod=NAME`: the kubelet's preStop for that pod: its
    /// peers see it draining and the load balancer sends it nothing new;
    /// its sidecar serves its sessions until they go idle, then the pod
    /// goes.
    Drain(String),
}

/// A control request with its reply channel.
#[derive(Debug)]
pub struct ControlRequest {
    pub op: ControlOp,
    pub reply: oneshot::Sender<ControlReply>,
}

/// The answer to a control request.
#[derive(Debug, Clone)]
pub struct ControlReply {
    pub status: StatusCode,
    pub body: serde_json::Value,
}

/// Counters of the load balancer.
#[derive(Debug, Default)]
pub struct LbStats {
    pub requests: AtomicU64,
    pub errors: AtomicU64,
}

type LbBody = Either<Incoming, Full<Bytes>>;

struct Lb {
    backends: Backends,
    client: Client<HttpConnector, Incoming>,
    control: Option<mpsc::Sender<ControlRequest>>,
    stats: Arc<LbStats>,
}

fn small(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<LbBody> {
    let mut r = Response::new(Either::Right(Full::new(body.into())));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn json(status: StatusCode, v: &serde_json::Value) -> Response<LbBody> {
    let mut b = serde_json::to_vec(v).unwrap_or_default();
    b.push(b'\n');
    small(status, "application/json", b)
}

fn query_param(uri: &Uri, name: &str) -> Option<String> {
    uri.query()?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
        .filter(|v| !v.is_empty())
}

async fn control(lb: &Lb, req: Request<Incoming>) -> Response<LbBody> {
    let op = match (req.method(), req.uri().path()) {
        (&Method::GET, "/_demo/pods") => ControlOp::Pods,
        (&Method::POST, "/_demo/kill") => ControlOp::Kill(query_param(req.uri(), "pod")),
        (&Method::POST, "/_demo/add") => ControlOp::Add,
        (&Method::POST, "/_demo/drain") => match query_param(req.uri(), "pod") {
            Some(pod) => ControlOp::Drain(pod),
            None => {
                return json(
                    StatusCode::BAD_REQUEST,
                    &serde_json::json!({"error": "POST /_demo/drain?pod=NAME: name the pod"}),
                )
            }
        },
        _ => {
            return json(
                StatusCode::NOT_FOUND,
                &serde_json::json!({"error": "GET /_demo/pods, POST /_demo/kill?pod=NAME, POST /_demo/add, POST /_demo/drain?pod=NAME"}),
            )
        }
    };
    let Some(tx) = &lb.control else {
        return json(
            StatusCode::NOT_IMPLEMENTED,
            &serde_json::json!({"error": "this load balancer has no cluster to control"}),
        );
    };
    let (reply, rx) = oneshot::channel();
    if tx.send(ControlRequest { op, reply }).await.is_err() {
        return json(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({"error": "the demo cluster is shutting down"}),
        );
    }
    match tokio::time::timeout(Duration::from_secs(30), rx).await {
        Ok(Ok(r)) => json(r.status, &r.body),
        _ => json(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({"error": "the demo cluster did not answer"}),
        ),
    }
}

async fn proxy(lb: Arc<Lb>, mut req: Request<Incoming>) -> Result<Response<LbBody>, Infallible> {
    if req.uri().path().starts_with("/_demo/") {
        return Ok(control(&lb, req).await);
    }
    lb.stats.requests.fetch_add(1, Ordering::Relaxed);
    let Some(backend) = lb.backends.pick() else {
        lb.stats.errors.fetch_add(1, Ordering::Relaxed);
        return Ok(small(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "lb: no backends\n",
        ));
    };
    backend.picks.fetch_add(1, Ordering::Relaxed);

    let upgrade = headers::is_upgrade(req.headers());
    let client_upgrade = if upgrade {
        req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>()
    } else {
        None
    };
    headers::strip_hop_by_hop(req.headers_mut(), upgrade);
    let pq = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let Ok(uri) = format!("http://{}{pq}", backend.addr).parse::<Uri>() else {
        return Ok(small(StatusCode::BAD_REQUEST, "text/plain", "lb: bad request target\n"));
    };
    *req.uri_mut() = uri;
    *req.version_mut() = http::Version::HTTP_11;

    match lb.client.request(req).await {
        Ok(mut resp) => {
            let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
            if switching {
                if let Some(client) = client_upgrade {
                    let upstream = hyper::upgrade::on(&mut resp);
                    tokio::spawn(async move {
                        if let (Ok(c), Ok(u)) = tokio::join!(client, upstream) {
                            let _ = tokio::io::copy_bidirectional(&mut TokioIo::new(c), &mut TokioIo::new(u)).await;
                        }
                    });
                }
            }
            headers::strip_hop_by_hop(resp.headers_mut(), switching);
            if let Ok(v) = HeaderValue::from_str(&backend.name) {
                resp.headers_mut().insert(LB_BACKEND, v);
            }
            Ok(resp.map(Either::Left))
        }
        Err(e) => {
            lb.stats.errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(backend = %backend.name, error = %e, "lb: backend failed");
            Ok(small(
                StatusCode::BAD_GATEWAY,
                "text/plain",
                format!("lb: backend {} failed\n", backend.name),
            ))
        }
    }
}

/// Serves the load balancer on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    backends: Backends,
    control: Option<mpsc::Sender<ControlRequest>>,
    stats: Arc<LbStats>,
    shutdown: impl Future<Output = ()>,
) {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(2)));
    let client = Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .set_host(false)
        .build(connector);
    let lb = Arc::new(Lb {
        backends,
        client,
        control,
        stats,
    });
    super::serve::serve(listener, "lb", move |req| proxy(lb.clone(), req), shutdown).await;
}

/// The requests each backend got, as `(name, picks)`.
pub fn picks(backends: &Backends) -> Vec<(String, u64)> {
    backends
        .load()
        .iter()
        .map(|b| (b.name.clone(), b.picks.load(Ordering::Relaxed)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(p: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], p))
    }

    #[test]
    fn backends_add_remove_pick() {
        let b = Backends::default();
        assert!(b.pick().is_none());
        b.add(Backend::new("a", a(1)));
        b.add(Backend::new("b", a(2)));
        b.add(Backend::new("a", a(3)));
        let names: Vec<String> = b.load().iter().map(|x| x.name.clone()).collect();
        assert_eq!(names, ["b", "a"]);
        assert_eq!(b.load()[1].addr, a(3));
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            seen.insert(b.pick().unwrap().name.clone());
        }
        assert_eq!(seen.len(), 2, "both backends get picked");
        assert!(b.remove("b"));
        assert!(!b.remove("b"));
        assert_eq!(b.pick().unwrap().name, "a");
    }

    #[test]
    fn query_params() {
        let u: Uri = "/_demo/kill?x=1&pod=pod-2".parse().unwrap();
        assert_eq!(query_param(&u, "pod").as_deref(), Some("pod-2"));
        let u: Uri = "/_demo/kill?pod=".parse().unwrap();
        assert_eq!(query_param(&u, "pod"), None);
        let u: Uri = "/_demo/kill".parse().unwrap();
        assert_eq!(query_param(&u, "pod"), None);
    }
}
