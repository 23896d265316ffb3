//! A Kubernetes apiserver double for `discovery.k8s.io/v1` EndpointSlices,
//! served over plain HTTP on loopback, in the test process.
//!
//! It follows the API conventions that a list/watch client depends on:
//! - every write takes the next `resourceVersion` from one global counter and
//!   is appended to an event log; lists carry `metadata.resourceVersion`, and
//!   every object carries its own;
//! - `watch=true` answers a chunked stream of JSON events, one per line,
//!   starting after the given `resourceVersion` (or with synthetic ADDED
//!   events for the current objects when it is unset or "0"), and ends
//!   cleanly after `timeoutSeconds`;
//! - `allowWatchBookmarks=true` adds a BOOKMARK event every bookmark interval;
//! - a watch that resumes from a version older than the compaction point gets
//!   an ERROR event with a 410 Expired `Status`;
//! - `labelSelector` filters lists and watches (equality-based: `k=v`, `k==v`,
//!   `k!=v`, `k`, `!k`); an object that stops matching is a DELETED event for
//!   the watch, one that starts matching an ADDED event.
//!
//! The test controls it directly: [`ApiServer::set_slice`],
//! [`ApiServer::delete_slice`], [`ApiServer::compact`],
//! [`ApiServer::trim_history`] (forget old writes),
//! [`ApiServer::fail_with`] (5xx for a while), [`ApiServer::drop_watches`]
//! (open watches break mid-stream), [`ApiServer::stop`] and
//! [`ApiServer::start`] (stop accepting and close every connection; listen
//! again on the same port).
//!
//! Not modelled: pagination (`limit` is ignored, as servers may), set-based
//! selectors, field selectors, authentication, other resources.
#![allow(dead_code)]

pub mod fleet;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::{AbortHandle, JoinHandle};

type Body = BoxBody<Bytes, std::io::Error>;

const API_VERSION: &str = "discovery.k8s.io/v1";
const KIND: &str = "EndpointSlice";
const PREFIX: &str = "/apis/discovery.k8s.io/v1";

/// One write, as a watch sees it.
#[derive(Clone)]
struct Entry {
    rv: u64,
    namespace: String,
    kind: &'static str,
    object: Value,
    /// The object before a MODIFIED, to tell a watch with a label selector
    /// that an object started or stopped matching.
    prev: Option<Value>,
}

struct State {
    /// The last resourceVersion handed out.
    rv: u64,
    /// Watches may not resume from a version older than this.
    compacted: u64,
    /// The last write dropped from the log by `trim_history`: an open watch
    /// that has not streamed past it has missed writes.
    trimmed: u64,
    objects: BTreeMap<(String, String), Value>,
    log: Vec<Entry>,
    fail: Option<(StatusCode, Instant)>,
    requests: Vec<String>,
    lists: u64,
    watches: u64,
}

struct Shared {
    state: Mutex<State>,
    /// The rv of the last log entry, for open watches to wake up.
    written: watch::Sender<u64>,
    /// Bumped by `drop_watches`: open watches break.
    drops: watch::Sender<u64>,
    conns: Mutex<Vec<AbortHandle>>,
    bookmark_interval: Duration,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The double. Dropping it stops it.
pub struct ApiServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Mutex<Option<JoinHandle<()>>>,
}

impl ApiServer {
    /// Starts a double on a free port of 127.0.0.1, with a BOOKMARK every second.
    pub async fn spawn() -> ApiServer {
        ApiServer::with_bookmarks(Duration::from_secs(1)).await
    }

    pub async fn with_bookmarks(bookmark_interval: Duration) -> ApiServer {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the apiserver double");
        ApiServer::serve(listener, bookmark_interval)
    }

    /// Starts a double on a listener the caller has already bound, for
    /// example inside a network namespace (a socket keeps the namespace it
    /// was created in). Must be called within a Tokio runtime. Such a double
    /// is not restarted with [`ApiServer::start`], which binds again in the
    /// caller's own namespace.
    pub fn on_listener(listener: std::net::TcpListener, bookmark_interval: Duration) -> ApiServer {
        listener
            .set_nonblocking(true)
            .expect("a non-blocking listener for the apiserver double");
        let listener = TcpListener::from_std(listener).expect("the apiserver double's listener");
        ApiServer::serve(listener, bookmark_interval)
    }

    fn serve(listener: TcpListener, bookmark_interval: Duration) -> ApiServer {
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                rv: 1000,
                compacted: 0,
                trimmed: 0,
                objects: BTreeMap::new(),
                log: Vec::new(),
                fail: None,
                requests: Vec::new(),
                lists: 0,
                watches: 0,
            }),
            written: watch::channel(0).0,
            drops: watch::channel(0).0,
            conns: Mutex::new(Vec::new()),
            bookmark_interval,
        });
        let server = ApiServer {
            addr,
            shared,
            acceptor: Mutex::new(None),
        };
        server.accept_on(listener);
        server
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kube client for the double, with no credentials, built as the
    /// endpoint source builds its own.
    pub fn client(&self) -> kube::Client {
        let config = kube::Config::new(self.url().parse().expect("the double's URL"));
        stickyd::endpoints::kubernetes::client(config).expect("a kube client for the double")
    }

    /// Writes a kubeconfig that points at the double into `dir`.
    pub fn write_kubeconfig(&self, dir: &Path) -> PathBuf {
        let path = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: double\n  cluster:\n    server: {}\n\
             contexts:\n- name: double\n  context:\n    cluster: double\n    user: nobody\n\
             current-context: double\nusers:\n- name: nobody\n  user: {{}}\n",
            self.url()
        );
        std::fs::write(&path, text).expect("write the kubeconfig");
        path
    }

    fn accept_on(&self, listener: TcpListener) {
        let shared = self.shared.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let conn_shared = shared.clone();
                let conn = tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let shared = conn_shared.clone();
                        async move { Ok::<_, Infallible>(handle(&shared, req)) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
                let mut conns = shared.conns.lock().unwrap_or_else(|e| e.into_inner());
                conns.retain(|c| !c.is_finished());
                conns.push(conn.abort_handle());
            }
        });
        *self.acceptor.lock().unwrap() = Some(task);
    }

    /// Goes down: stops accepting, and closes every open connection.
    pub fn stop(&self) {
        if let Some(task) = self.acceptor.lock().unwrap().take() {
            task.abort();
        }
        for conn in self.shared.conns.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            conn.abort();
        }
    }

    /// Comes back on the same port.
    pub async fn start(&self) {
        self.stop();
        let deadline = Instant::now() + Duration::from_secs(5);
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("rebind {}: {e}", self.addr),
            }
        };
        self.accept_on(listener);
    }

    /// Creates or replaces an EndpointSlice. Fills in the namespace,
    /// `apiVersion`, `kind`, a uid and the new resourceVersion. Returns it.
    pub fn set_slice(&self, namespace: &str, mut slice: Value) -> u64 {
        let name = slice["metadata"]["name"]
            .as_str()
            .expect("an EndpointSlice needs metadata.name")
            .to_string();
        let mut st = self.shared.state();
        st.rv += 1;
        let rv = st.rv;
        slice["apiVersion"] = json!(API_VERSION);
        slice["kind"] = json!(KIND);
        let meta = &mut slice["metadata"];
        meta["namespace"] = json!(namespace);
        meta["resourceVersion"] = json!(rv.to_string());
        if meta.get("uid").is_none() {
            meta["uid"] = json!(format!("uid-{namespace}-{name}"));
        }
        let prev = st.objects.insert((namespace.to_string(), name), slice.clone());
        let kind = if prev.is_some() { "MODIFIED" } else { "ADDED" };
        st.log.push(Entry {
            rv,
            namespace: namespace.to_string(),
            kind,
            object: slice,
            prev,
        });
        drop(st);
        self.shared.written.send_replace(rv);
        rv
    }

    /// Deletes an EndpointSlice; the DELETED event carries the deletion's
    /// resourceVersion. Returns whether it existed.
    pub fn delete_slice(&self, namespace: &str, name: &str) -> bool {
        let mut st = self.shared.state();
        let Some(mut object) = st.objects.remove(&(namespace.to_string(), name.to_string())) else {
            return false;
        };
        st.rv += 1;
        let rv = st.rv;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        st.log.push(Entry {
            rv,
            namespace: namespace.to_string(),
            kind: "DELETED",
            object,
            prev: None,
        });
        drop(st);
        self.shared.written.send_replace(rv);
        true
    }

    /// Compacts the history, as etcd does after other resources have been
    /// written: the global version moves on, and a watch that resumes from
    /// any version seen so far gets 410 Gone. Open watches keep streaming.
    pub fn compact(&self) {
        let mut st = self.shared.state();
        st.rv += 1;
        st.compacted = st.rv;
    }

    /// Forgets all but the last `keep` writes, as etcd's compaction does
    /// for a busy resource, so that a long run of writes keeps the log
    /// bounded: a watch that resumes from a forgotten version, or an open
    /// one that has not streamed past it, gets an ERROR event with a 410
    /// Expired `Status`.
    pub fn trim_history(&self, keep: usize) {
        let mut st = self.shared.state();
        let n = st.log.len();
        if n <= keep {
            return;
        }
        let last = st.log[n - keep - 1].rv;
        st.log.drain(..n - keep);
        st.trimmed = last;
        st.compacted = st.compacted.max(last);
    }

    /// Every request (list and watch) answers `status` with a `Status` body
    /// for `duration`. Open watches are not affected.
    pub fn fail_with(&self, status: u16, duration: Duration) {
        let status = StatusCode::from_u16(status).expect("an HTTP status");
        self.shared.state().fail = Some((status, Instant::now() + duration));
    }

    /// Breaks every open watch mid-stream (the chunked body ends without its
    /// last chunk).
    pub fn drop_watches(&self) {
        self.shared.drops.send_modify(|g| *g += 1);
    }

    /// The last resourceVersion handed out.
    pub fn resource_version(&self) -> u64 {
        self.shared.state().rv
    }

    /// Successful list requests served.
    pub fn lists(&self) -> u64 {
        self.shared.state().lists
    }

    /// Watch requests answered with a stream (including 410s).
    pub fn watches(&self) -> u64 {
        self.shared.state().watches
    }

    /// Every request's method and URI, in order.
    pub fn requests(&self) -> Vec<String> {
        self.shared.state().requests.clone()
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Builds an EndpointSlice of `service` with one port and IPv4 or IPv6
/// endpoints `(pod, address, ready, serving, terminating)`.
pub fn slice(service: &str, name: &str, port: (&str, u16), endpoints: &[(&str, &str, bool, bool, bool)]) -> Value {
    let family = if endpoints.iter().any(|e| e.1.contains(':')) {
        "IPv6"
    } else {
        "IPv4"
    };
    json!({
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/service-name": service,
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
            },
        },
        "addressType": family,
        "ports": [{"name": port.0, "port": port.1, "protocol": "TCP"}],
        "endpoints": endpoints.iter().map(|(pod, addr, ready, serving, terminating)| json!({
            "addresses": [addr],
            "conditions": {"ready": ready, "serving": serving, "terminating": terminating},
            "targetRef": {"kind": "Pod", "namespace": "", "name": pod},
        })).collect::<Vec<_>>(),
    })
}

fn full(status: StatusCode, body: Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())).map_err(|e| match e {}).boxed())
        .unwrap()
}

fn status(code: StatusCode, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code.as_u16(),
    })
}

fn handle(shared: &Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let query = parse_query(req.uri().query().unwrap_or(""));
    {
        let mut st = shared.state();
        st.requests.push(format!("{} {}", req.method(), req.uri()));
        if let Some((code, until)) = st.fail {
            if Instant::now() < until {
                let reason = if code == StatusCode::SERVICE_UNAVAILABLE {
                    "ServiceUnavailable"
                } else {
                    "InternalError"
                };
                return full(code, status(code, reason, "the apiserver double is failing on purpose"));
            }
            st.fail = None;
        }
    }
    if req.method() != hyper::Method::GET {
        let code = StatusCode::METHOD_NOT_ALLOWED;
        return full(
            code,
            status(code, "MethodNotAllowed", "the double only lists and watches"),
        );
    }
    // /apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices or
    // /apis/discovery.k8s.io/v1/endpointslices
    let rest = path.strip_prefix(PREFIX).unwrap_or("");
    let namespace = match rest.split('/').collect::<Vec<_>>().as_slice() {
        ["", "namespaces", ns, "endpointslices"] => Some(ns.to_string()),
        ["", "endpointslices"] => None,
        _ => {
            let code = StatusCode::NOT_FOUND;
            return full(
                code,
                status(code, "NotFound", &format!("the server could not find {path}")),
            );
        }
    };
    let selector = match query.get("labelSelector").map(|s| Selector::parse(s)) {
        Some(Err(e)) => {
            let code = StatusCode::BAD_REQUEST;
            return full(code, status(code, "BadRequest", &e));
        }
        Some(Ok(s)) => s,
        None => Selector::default(),
    };
    if query.get("watch").is_some_and(|w| w == "true" || w == "1") {
        watch(shared, namespace, selector, &query)
    } else {
        list(shared, namespace.as_deref(), &selector)
    }
}

fn in_scope(namespace: Option<&str>, selector: &Selector, entry_ns: &str, object: &Value) -> bool {
    namespace.is_none_or(|ns| ns == entry_ns) && selector.matches(&object["metadata"]["labels"])
}

fn list(shared: &Shared, namespace: Option<&str>, selector: &Selector) -> Response<Body> {
    let mut st = shared.state();
    st.lists += 1;
    let items: Vec<Value> = st
        .objects
        .iter()
        .filter(|((ns, _), obj)| in_scope(namespace, selector, ns, obj))
        .map(|(_, obj)| obj.clone())
        .collect();
    let body = json!({
        "kind": "EndpointSliceList",
        "apiVersion": API_VERSION,
        "metadata": {"resourceVersion": st.rv.to_string()},
        "items": items,
    });
    full(StatusCode::OK, body)
}

fn line(kind: &str, object: &Value) -> Bytes {
    let mut text = json!({"type": kind, "object": object}).to_string();
    text.push('\n');
    Bytes::from(text)
}

fn bookmark(rv: u64) -> Bytes {
    line(
        "BOOKMARK",
        &json!({"kind": KIND, "apiVersion": API_VERSION, "metadata": {"resourceVersion": rv.to_string()}}),
    )
}

/// The event a watch sees for a log entry, if any.
fn event_for(entry: &Entry, namespace: Option<&str>, selector: &Selector) -> Option<&'static str> {
    let now = in_scope(namespace, selector, &entry.namespace, &entry.object);
    let before = entry
        .prev
        .as_ref()
        .is_some_and(|p| in_scope(namespace, selector, &entry.namespace, p));
    match (entry.kind, before, now) {
        ("MODIFIED", true, true) => Some("MODIFIED"),
        ("MODIFIED", false, true) => Some("ADDED"),
        ("MODIFIED", true, false) => Some("DELETED"),
        ("ADDED", _, true) => Some("ADDED"),
        ("DELETED", _, true) => Some("DELETED"),
        _ => None,
    }
}

type Chunk = Result<Frame<Bytes>, std::io::Error>;

fn watch(
    shared: &Arc<Shared>,
    namespace: Option<String>,
    selector: Selector,
    query: &BTreeMap<String, String>,
) -> Response<Body> {
    let bookmarks = query.get("allowWatchBookmarks").is_some_and(|b| b == "true");
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map(Duration::from_secs);
    let (tx, rx) = mpsc::channel::<Chunk>(64);
    let mut st = shared.state();
    st.watches += 1;
    let from = query.get("resourceVersion").map(String::as_str).unwrap_or("");
    let mut initial = Vec::new();
    let pos = match from {
        "" | "0" => {
            for ((ns, _), obj) in &st.objects {
                if in_scope(namespace.as_deref(), &selector, ns, obj) {
                    initial.push(line("ADDED", obj));
                }
            }
            st.rv
        }
        v => match v.parse::<u64>() {
            Ok(v) if v < st.compacted => {
                let expired = expired(v, st.compacted);
                drop(st);
                let events = futures_util::stream::iter([Ok::<_, std::io::Error>(Frame::data(expired))]);
                return stream_response(StreamBody::new(events).boxed());
            }
            Ok(v) => v,
            Err(_) => {
                let code = StatusCode::BAD_REQUEST;
                return full(
                    code,
                    status(code, "BadRequest", &format!("invalid resourceVersion {v:?}")),
                );
            }
        },
    };
    drop(st);
    // Subscribed before the response goes out: a drop right after the
    // client sees the headers still breaks this watch.
    let drops = shared.drops.subscribe();
    let shared = shared.clone();
    tokio::spawn(async move {
        for chunk in initial {
            if tx.send(Ok(Frame::data(chunk))).await.is_err() {
                return;
            }
        }
        let watch = Watch {
            pos,
            namespace,
            selector,
            bookmarks,
            timeout,
        };
        stream_events(shared, tx, drops, watch).await;
    });
    let body = StreamBody::new(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    }));
    stream_response(body.boxed())
}

/// The ERROR event of a watch from a version older than `compacted`.
fn expired(from: u64, compacted: u64) -> Bytes {
    let code = StatusCode::GONE;
    let status = status(
        code,
        "Expired",
        &format!("too old resource version: {from} ({compacted})"),
    );
    line("ERROR", &status)
}

fn stream_response(body: Body) -> Response<Body> {
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .header("transfer-encoding", "chunked")
        .body(body)
        .unwrap()
}

/// An open watch.
struct Watch {
    /// Every log entry up to here has been sent (or filtered out).
    pos: u64,
    namespace: Option<String>,
    selector: Selector,
    bookmarks: bool,
    timeout: Option<Duration>,
}

async fn stream_events(shared: Arc<Shared>, tx: mpsc::Sender<Chunk>, mut drops: watch::Receiver<u64>, w: Watch) {
    let Watch {
        mut pos,
        namespace,
        selector,
        bookmarks,
        timeout,
    } = w;
    let mut written = shared.written.subscribe();
    let deadline = tokio::time::Instant::now() + timeout.unwrap_or(Duration::from_secs(3600));
    let mut tick = tokio::time::interval(shared.bookmark_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.reset();
    loop {
        written.mark_unchanged();
        let behind = {
            let st = shared.state();
            (pos < st.trimmed).then(|| expired(pos, st.compacted))
        };
        if let Some(expired) = behind {
            let _ = tx.send(Ok(Frame::data(expired))).await;
            return;
        }
        let pending: Vec<(u64, Bytes)> = {
            let st = shared.state();
            let first = st.log.partition_point(|e| e.rv <= pos);
            st.log[first..]
                .iter()
                .map(|e| {
                    let ev = event_for(e, namespace.as_deref(), &selector).map(|k| line(k, &e.object));
                    (e.rv, ev)
                })
                .filter_map(|(rv, ev)| {
                    pos = pos.max(rv);
                    ev.map(|ev| (rv, ev))
                })
                .collect()
        };
        for (_, chunk) in pending {
            if tx.send(Ok(Frame::data(chunk))).await.is_err() {
                return;
            }
        }
        tokio::select! {
            _ = written.changed() => {}
            _ = drops.changed() => {
                let _ = tx.send(Err(std::io::Error::other("watch dropped by the test"))).await;
                return;
            }
            _ = tick.tick(), if bookmarks => {
                if tx.send(Ok(Frame::data(bookmark(pos)))).await.is_err() {
                    return;
                }
            }
            _ = tokio::time::sleep_until(deadline) => return,
            _ = tx.closed() => return,
        }
    }
}

/// An equality-based label selector.
#[derive(Default, Debug)]
struct Selector {
    reqs: Vec<Req>,
}

#[derive(Debug)]
enum Req {
    Eq(String, String),
    Ne(String, String),
    Exists(String),
    Absent(String),
}

impl Selector {
    fn parse(s: &str) -> Result<Selector, String> {
        let mut reqs = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let req = if let Some((k, v)) = part.split_once("!=") {
                Req::Ne(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = part.split_once("==") {
                Req::Eq(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = part.split_once('=') {
                Req::Eq(k.trim().into(), v.trim().into())
            } else if let Some(k) = part.strip_prefix('!') {
                Req::Absent(k.trim().into())
            } else if part.contains(' ') || part.contains('(') {
                return Err(format!("unsupported label selector {part:?}"));
            } else {
                Req::Exists(part.into())
            };
            reqs.push(req);
        }
        Ok(Selector { reqs })
    }

    fn matches(&self, labels: &Value) -> bool {
        let get = |k: &str| labels.get(k).and_then(Value::as_str);
        self.reqs.iter().all(|r| match r {
            Req::Eq(k, v) => get(k) == Some(v.as_str()),
            Req::Ne(k, v) => get(k) != Some(v.as_str()),
            Req::Exists(k) => get(k).is_some(),
            Req::Absent(k) => get(k).is_none(),
        })
    }
}

fn parse_query(q: &str) -> BTreeMap<String, String> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                match (
                    bytes.get(i + 1).and_then(|&b| hex(b)),
                    bytes.get(i + 2).and_then(|&b| hex(b)),
                ) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
