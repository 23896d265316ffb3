//! Shared pieces of the whole-proxy tests: a recording app, real stickyd
//! processes, a random load balancer standing in for kube-proxy, and a small
//! HTTP client with a cookie jar.
//!
//! Time: a test of a duration (a timeout, a session window) runs in process
//! on tokio's paused clock (`timing.rs`); the process-level tests assert
//! outcomes, and wait for them with [`eventually`], whose bound is a hang
//! guard, never a measure. Ports: see [`SIDECAR_PORT`].
#![allow(dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

pub type Body = http_body_util::combinators::BoxBody<Bytes, hyper::Error>;

pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// Polls `probe` until it reports success (`(true, seen)`) and returns
/// what it saw; panics after `within` with what it saw last. `within` is a
/// hang guard, never a measure: no test asserts how long a wait took.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut probe: F) -> T
where
    T: std::fmt::Debug,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = (bool, T)>,
{
    let deadline = Instant::now() + within;
    loop {
        let (ok, seen) = probe().await;
        if ok {
            return seen;
        }
        if Instant::now() > deadline {
            panic!("{what}: not within {within:?}; last seen {seen:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The value of one series (`name{labels}`, exactly as exposed) in an
/// OpenMetrics text, if it is there.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .split(' ')
            .next()?
            .parse()
            .ok()
    })
}

/// [`sample`], where an absent series counts as 0 (a counter or a labelled
/// series that was never touched is not exposed).
pub fn sample_or_zero(text: &str, series: &str) -> f64 {
    sample(text, series).unwrap_or(0.0)
}

/// A `stickyd` cookie that names `pod` in the bare form (a pod id and
/// nothing else), as an unsigned sidecar accepts it.
pub fn cookie_for(pod: &str) -> String {
    format!("stickyd={}", stickyd::affinity::SessionId::for_pod(pod).encode())
}

/// What the app saw of one request.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    /// The request target as it arrived (origin-form `/p?q`, or absolute).
    pub target: String,
    /// The address of the connection it came on.
    pub remote: SocketAddr,
    pub headers: HeaderMap,
    pub body_bytes: u64,
}

/// A test app: answers `pod=<name> session=<x-stickyd-session>` and records
/// every request it receives.
pub struct App {
    pub pod: String,
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// The paths of the requests whose heads arrived, before their bodies.
    started: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for App {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl App {
    pub async fn start(pod: &str, ip: &str) -> App {
        let listener = TcpListener::bind((ip, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let started: Arc<Mutex<Vec<String>>> = Arc::default();
        let pod_s = pod.to_string();
        let (seen2, started2) = (seen.clone(), started.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, remote)) = listener.accept().await else {
                    continue;
                };
                let pod = pod_s.clone();
                let (seen, started) = (seen2.clone(), started2.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        started.lock().unwrap().push(req.uri().path().to_string());
                        app_handle(pod.clone(), seen.clone(), remote, req)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .with_upgrades()
                        .await;
                });
            }
        });
        App {
            pod: pod.to_string(),
            addr,
            seen,
            started,
            task,
        }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// The paths of the requests whose heads reached the app, bodies read
    /// or not ([`App::seen`] records a request once its body is read).
    pub fn started(&self) -> Vec<String> {
        self.started.lock().unwrap().clone()
    }

    /// Stops the app and waits until its port refuses connections (the
    /// listener closes with its task, a moment after the abort).
    pub async fn stop_and_wait(self) {
        let addr = self.addr;
        drop(self);
        eventually(Duration::from_secs(10), "the app's port refuses", || async {
            let refused = tokio::net::TcpStream::connect(addr).await.is_err();
            (refused, refused)
        })
        .await;
    }

    pub fn stop(&self) {
        self.task.abort();
    }
}

async fn app_handle(
    pod: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    remote: SocketAddr,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    let target = req.uri().to_string();
    let session = req
        .headers()
        .get("x-stickyd-session")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_string();
    if path == "/ws" {
        // WebSocket echo that prefixes every message with the pod name.
        let key = req.headers().get("sec-websocket-key").cloned();
        let on_upgrade = hyper::upgrade::on(&mut req);
        seen.lock().unwrap().push(Seen {
            method: req.method().to_string(),
            path: path.clone(),
            target: target.clone(),
            remote,
            headers: req.headers().clone(),
            body_bytes: 0,
        });
        let pod2 = pod.clone();
        tokio::spawn(async move {
            use futures_util::{SinkExt, StreamExt};
            let Ok(up) = on_upgrade.await else { return };
            let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                TokioIo::new(up),
                tokio_tungstenite::tungstenite::protocol::Role::Server,
                None,
            )
            .await;
            while let Some(Ok(msg)) = ws.next().await {
                if msg.is_text() {
                    let t = format!("{pod2}:{}", msg.into_text().unwrap());
                    if ws.send(tokio_tungstenite::tungstenite::Message::text(t)).await.is_err() {
                        break;
                    }
                } else if msg.is_close() {
                    break;
                }
            }
        });
        let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.unwrap().as_bytes());
        let resp = Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-accept", accept)
            .body(empty())
            .unwrap();
        return Ok(resp);
    }
    let method = req.method().to_string();
    let headers = req.headers().clone();
    if path == "/slow" {
        tokio::time::sleep(Duration::from_millis(3000)).await;
    }
    // Stream the body, counting bytes, never holding it whole.
    let mut body = req.into_body();
    let mut n = 0u64;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Some(d) = f.data_ref() {
                    n += d.len() as u64;
                }
            }
            Err(_) => break,
        }
    }
    seen.lock().unwrap().push(Seen {
        method,
        path: path.clone(),
        target,
        remote,
        headers,
        body_bytes: n,
    });
    let mut b = Response::builder()
        .header("content-type", "text/plain")
        .header("set-cookie", "app=1; Path=/")
        .header("x-stickyd-session", "leak")
        .header("x-stickyd-hop", "leak");
    if path == "/cacheable" {
        b = b.header("cache-control", "public, max-age=60");
    }
    Ok(b.body(full(format!("pod={pod} session={session} bytes={n}\n")))
        .unwrap())
}

/// A real `stickyd run` process.
pub struct Stickyd {
    pub pod: String,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub child: Child,
    pub log: PathBuf,
}

impl Drop for Stickyd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The stickyd binary under test: this build's, or another one named by
/// STICKYDTEST_OTHER_BIN (to see a test fail against an earlier build).
pub fn bin() -> &'static str {
    static OTHER: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    OTHER
        .get_or_init(|| std::env::var("STICKYDTEST_OTHER_BIN").ok().filter(|b| !b.is_empty()))
        .as_deref()
        .unwrap_or(env!("CARGO_BIN_EXE_stickyd"))
}

static SEQ: AtomicU64 = AtomicU64::new(0);

pub fn temp_path(name: &str) -> PathBuf {
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("stickyd-test-{}-{n}-{name}", std::process::id()))
}

impl Stickyd {
    /// Starts `stickyd run` for `pod` on `listen`, with `app` as upstream and
    /// `extra` env, and waits until `/healthz` answers. The admin listener
    /// binds port 0 on `listen`'s address; its address is read back from the
    /// `stickyd listening` log line.
    pub async fn start(pod: &str, listen: SocketAddr, app: SocketAddr, extra: &[(&str, String)]) -> Stickyd {
        let log = temp_path(&format!("{pod}.log"));
        let mut cmd = Command::new(bin());
        cmd.arg("run")
            .env_clear()
            .env("STICKYD_POD_NAME", pod)
            .env("STICKYD_LISTEN", listen.to_string())
            .env("STICKYD_ADMIN_LISTEN", SocketAddr::new(listen.ip(), 0).to_string())
            .env("STICKYD_UPSTREAM", format!("http://{app}"))
            .env("STICKYD_WORKER_THREADS", "1")
            .env("STICKYD_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn stickyd");
        let admin = eventually(Duration::from_secs(10), &format!("stickyd {pod} listening"), || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(status) = child.try_wait().unwrap() {
                panic!("stickyd {pod} exited with {status}: {text}");
            }
            let admin = logged_admin(&text);
            std::future::ready((admin.is_some(), admin))
        })
        .await
        .unwrap();
        let s = Stickyd {
            pod: pod.into(),
            listen,
            admin,
            child,
            log,
        };
        eventually(Duration::from_secs(10), &format!("stickyd {pod} /healthz"), || async {
            let r = get(&format!("http://{admin}/healthz"), &[]).await;
            (matches!(&r, Ok(r) if r.status == 200), format!("{r:?}"))
        })
        .await;
        s
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Peak resident memory (VmHWM) in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap()
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }

    pub async fn metrics(&self) -> String {
        get(&format!("http://{}/metrics", self.admin), &[]).await.unwrap().body
    }
}

/// The admin address a `stickyd listening` log line names, in the text or
/// the JSON log format.
pub fn logged_admin(log: &str) -> Option<SocketAddr> {
    let line = log.lines().find(|l| l.contains("stickyd listening"))?;
    let (_, rest) = line.split_once("admin=").or_else(|| line.split_once("\"admin\":\""))?;
    rest.split(|c: char| c.is_whitespace() || c == '"' || c == ',')
        .next()?
        .parse()
        .ok()
}

/// The port every sidecar of the process-level tests listens on, as the
/// pods of a Deployment share one: each test owns its loopback addresses
/// (the `Addresses:` line of each test file), so a constant port on them is
/// free by construction, where a port found free and then reused could be
/// taken in between. It is below the ephemeral range (32768 and up), so no
/// port-0 listener and no outgoing connection takes it. Apps and other
/// helpers bind port 0 and read their port back; admin listeners likewise
/// ([`Stickyd::start`]).
pub const SIDECAR_PORT: u16 = 4140;

/// The admin port of tests whose pods must share one, as least-sessions
/// placement needs (a sidecar asks its peers' admin port, on its own port
/// number); free on a test's own addresses for the reason [`SIDECAR_PORT`] is.
pub const SHARED_ADMIN_PORT: u16 = 4141;

/// The sidecar address on `ip` ([`SIDECAR_PORT`]).
pub fn addr_on(ip: &str) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), SIDECAR_PORT)
}

/// `n` pods, `pod-0`.. on 127.0.`net`.1..: each one's name, address and
/// sidecar address ([`addr_on`]), and the static view that lists them all
/// (`STICKYD_ENDPOINTS`).
pub fn static_pods(net: u8, n: usize) -> (Vec<(String, String, SocketAddr)>, String) {
    let pods: Vec<(String, String, SocketAddr)> = (0..n)
        .map(|i| {
            let ip = format!("127.0.{net}.{}", i + 1);
            let listen = addr_on(&ip);
            (format!("pod-{i}"), ip, listen)
        })
        .collect();
    let list = pods
        .iter()
        .map(|(name, _, listen)| format!("{name}={listen}"))
        .collect::<Vec<_>>()
        .join(",");
    (pods, format!("static:{list}"))
}

/// One pod on `ip`: a recording app and its sidecar, alone in its view.
pub async fn one_pod(ip: &str, extra: &[(&str, String)]) -> (App, Stickyd) {
    let app = App::start("pod-0", ip).await;
    let listen = addr_on(ip);
    let mut env = vec![("STICKYD_ENDPOINTS", format!("static:pod-0={listen}"))];
    env.extend(extra.iter().cloned());
    let s = Stickyd::start("pod-0", listen, app.addr, &env).await;
    (app, s)
}

/// A simple response.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: String,
}

impl Resp {
    /// `pod=` of the demo body.
    pub fn pod(&self) -> &str {
        self.field("pod")
    }

    pub fn field(&self, name: &str) -> &str {
        self.body
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(name).and_then(|r| r.strip_prefix('=')))
            .unwrap_or("")
    }

    /// The value stickyd's Set-Cookie gives the `stickyd` cookie, if any.
    pub fn sticky_cookie(&self) -> Option<String> {
        self.headers
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(|v| v.strip_prefix("stickyd="))
            .map(|v| v.split(';').next().unwrap().to_string())
    }
}

fn client() -> Client<HttpConnector, Body> {
    static C: std::sync::OnceLock<Client<HttpConnector, Body>> = std::sync::OnceLock::new();
    C.get_or_init(|| Client::builder(TokioExecutor::new()).build_http())
        .clone()
}

pub async fn request(method: &str, url: &str, headers: &[(&str, &str)], body: Body) -> Result<Resp, String> {
    send(client(), method, url, headers, body).await
}

/// A request on a fresh connection from `from`. From the address of a
/// sidecar's own pod, it is a connection from inside that pod (as `kubectl
/// port-forward` makes), which the admin port answers in full.
pub async fn request_from(
    from: std::net::IpAddr,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Body,
) -> Result<Resp, String> {
    let mut connector = HttpConnector::new();
    connector.set_local_address(Some(from));
    let one: Client<HttpConnector, Body> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build(connector);
    send(one, method, url, headers, body).await
}

/// A GET of an admin path of `s` from inside its pod ([`request_from`]).
pub async fn admin_get(s: &Stickyd, path: &str) -> Result<Resp, String> {
    request_from(s.admin.ip(), "GET", &format!("http://{}{path}", s.admin), &[], empty()).await
}

async fn send(
    client: Client<HttpConnector, Body>,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Body,
) -> Result<Resp, String> {
    let mut b = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let resp = tokio::time::timeout(Duration::from_secs(20), client.request(b.body(body).unwrap()))
        .await
        .map_err(|_| "timeout".to_string())?
        .map_err(|e| format!("{e:?}"))?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok(Resp {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

pub async fn get(url: &str, headers: &[(&str, &str)]) -> Result<Resp, String> {
    request("GET", url, headers, empty()).await
}

/// The protocol of a client connection.
#[derive(Clone, Copy, Debug)]
pub enum Proto {
    H1,
    H2c,
}

/// One request on a fresh connection, in `proto` (HTTP/1.1 takes the
/// sidecar's own codec, h2c hyper's).
pub async fn fresh(addr: SocketAddr, proto: Proto, path: &str, headers: &[(&str, String)]) -> Resp {
    fresh_method(addr, proto, "GET", path, headers).await
}

/// [`fresh`], with another method (no body).
pub async fn fresh_method(
    addr: SocketAddr,
    proto: Proto,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
) -> Resp {
    let stream = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
        .await
        .expect("connect in time")
        .expect("connect");
    let mut b = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "shop.example");
    for (k, v) in headers {
        b = b.header(*k, v.as_str());
    }
    let req = b.body(empty()).unwrap();
    let io = TokioIo::new(stream);
    let exchange = async {
        let resp = match proto {
            Proto::H1 => {
                let (mut send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
                tokio::spawn(conn);
                send.send_request(req).await.unwrap()
            }
            Proto::H2c => {
                let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                    .await
                    .unwrap();
                tokio::spawn(conn);
                let resp = send.send_request(req).await.unwrap();
                assert_eq!(resp.version(), http::Version::HTTP_2);
                resp
            }
        };
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        Resp {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    };
    tokio::time::timeout(Duration::from_secs(20), exchange)
        .await
        .expect("an answer in time")
}

/// A random load balancer: every request goes to a backend picked at
/// random, as kube-proxy does behind an ExternalName Service whose upstream
/// connections are reused across sessions.
pub struct RandomLb {
    pub addr: SocketAddr,
    pub backends: Arc<Mutex<Vec<SocketAddr>>>,
    pub picks: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RandomLb {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RandomLb {
    pub async fn start(backends: Vec<SocketAddr>) -> RandomLb {
        RandomLb::start_on("127.0.0.1", backends).await
    }

    /// A random load balancer listening on `ip`.
    pub async fn start_on(ip: &str, backends: Vec<SocketAddr>) -> RandomLb {
        let listener = TcpListener::bind((ip, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let backends = Arc::new(Mutex::new(backends));
        let picks = Arc::new(AtomicUsize::new(0));
        let b2 = backends.clone();
        let p2 = picks.clone();
        let task = tokio::spawn(async move {
            let upstream: Client<HttpConnector, Incoming> = Client::builder(TokioExecutor::new()).build_http();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let backends = b2.clone();
                let picks = p2.clone();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |mut req: Request<Incoming>| {
                        let list = backends.lock().unwrap().clone();
                        let target = list[fastrand::usize(..list.len())];
                        picks.fetch_add(1, Ordering::Relaxed);
                        let pq = req
                            .uri()
                            .path_and_query()
                            .map(|p| p.as_str().to_string())
                            .unwrap_or("/".into());
                        *req.uri_mut() = format!("http://{target}{pq}").parse().unwrap();
                        let upstream = upstream.clone();
                        async move {
                            Ok::<_, Infallible>(match upstream.request(req).await {
                                Ok(r) => r.map(|b| b.boxed()),
                                Err(_) => Response::builder()
                                    .status(502)
                                    .body(full("lb: backend down\n"))
                                    .unwrap(),
                            })
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        RandomLb {
            addr,
            backends,
            picks,
            task,
        }
    }

    pub fn set_backends(&self, list: Vec<SocketAddr>) {
        *self.backends.lock().unwrap() = list;
    }
}

/// One pod: an app and its stickyd sidecar on 127.0.0.N.
pub struct Pod {
    pub name: String,
    pub app: App,
    pub sidecar: Stickyd,
}

/// Writes a peer list file for `STICKYD_ENDPOINTS=file:`.
pub fn write_peers(path: &PathBuf, peers: &[(&str, SocketAddr)]) {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).unwrap();
    for (n, a) in peers {
        writeln!(f, "{n}={a}").unwrap();
    }
    f.sync_all().unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Polls `/endpoints` on a sidecar until it lists exactly `names`.
pub async fn wait_for_view(s: &Stickyd, names: &[&str]) {
    let mut want: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    want.sort();
    wait_for_endpoints(s, &format!("a view of {want:?}"), |v| {
        let mut have: Vec<String> = v["peers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap().to_string())
            .collect();
        have.sort();
        have == want
    })
    .await;
}

/// Polls `/endpoints` on a sidecar (5 s at most, a hang guard) until `done`
/// holds of its JSON.
pub async fn wait_for_endpoints(s: &Stickyd, what: &str, done: impl FnMut(&serde_json::Value) -> bool) {
    let done = std::cell::RefCell::new(done);
    eventually(Duration::from_secs(5), &format!("{}: {what}", s.pod), || async {
        let body = admin_get(s, "/endpoints").await.unwrap().body;
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        ((done.borrow_mut())(&v), v)
    })
    .await;
}

/// A browser-like session: keeps the `stickyd` cookie it is given.
#[derive(Default, Clone)]
pub struct Session {
    pub cookie: Option<String>,
    pub pods: Vec<String>,
}

impl Session {
    pub async fn get(&mut self, url: &str) -> Result<Resp, String> {
        let cookie = self.cookie.as_ref().map(|c| format!("stickyd={c}"));
        let headers: Vec<(&str, &str)> = cookie.iter().map(|c| ("cookie", c.as_str())).collect();
        let r = get(url, &headers).await?;
        if let Some(c) = r.sticky_cookie() {
            self.cookie = Some(c);
        }
        self.pods.push(r.pod().to_string());
        Ok(r)
    }

    /// How many times the serving pod changed.
    pub fn moves(&self) -> usize {
        self.pods.windows(2).filter(|w| w[0] != w[1]).count()
    }
}

/// Counts how many sessions ended up on each pod.
pub fn tally(sessions: &[Session]) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for s in sessions {
        *m.entry(s.pods.last().cloned().unwrap_or_default()).or_insert(0) += 1;
    }
    m
}

/// A recording app on a runtime of its own, so that killing it closes every
/// connection it has, pooled ones included, as a crashed process would.
pub struct KillableApp {
    pub addr: SocketAddr,
    parts: Option<(App, tokio::runtime::Runtime)>,
}

impl KillableApp {
    pub fn start(pod: &str, ip: &str) -> KillableApp {
        let (pod, ip) = (pod.to_string(), ip.to_string());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            let app = rt.block_on(App::start(&pod, &ip));
            KillableApp {
                addr: app.addr,
                parts: Some((app, rt)),
            }
        })
        .join()
        .unwrap()
    }

    /// Stops the app and waits until its runtime is down: when this
    /// returns, its listener refuses connections and every connection it had
    /// is closed. (Shut down in the background, the listener could still
    /// accept for a moment, and a request meant to find the app gone would
    /// find it closing instead.)
    pub fn kill(&mut self) {
        if let Some((app, rt)) = self.parts.take() {
            std::thread::spawn(move || {
                drop(app);
                rt.shutdown_timeout(Duration::from_secs(5));
            })
            .join()
            .unwrap();
        }
    }
}

impl Drop for KillableApp {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One HTTP/1.1 request on a fresh TCP connection (`Connection: close`), as
/// a probe or `curl` makes it: a closed listener shows, where a pooled
/// client would hide it. Returns the status and the whole response text.
pub async fn fresh_get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    fresh_get_with(None, addr, path, &[]).await
}

/// [`fresh_get`] from the address `from` (as [`request_from`]) with extra
/// header lines.
pub async fn fresh_get_with(
    from: Option<std::net::IpAddr>,
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(u16, String), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(|e| format!("socket: {e}"))?;
    if let Some(ip) = from {
        socket
            .bind(SocketAddr::new(ip, 0))
            .map_err(|e| format!("bind {ip}: {e}"))?;
    }
    let mut s = tokio::time::timeout(Duration::from_secs(2), socket.connect(addr))
        .await
        .map_err(|_| "connect timeout".to_string())?
        .map_err(|e| format!("connect: {e}"))?;
    let extra: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
    let req = format!("GET {path} HTTP/1.1\r\nHost: probe\r\n{extra}Connection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.map_err(|e| format!("write: {e}"))?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut out))
        .await
        .map_err(|_| "read timeout".to_string())?
        .map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("not an HTTP response: {text:?}"))?;
    Ok((status, text))
}

/// Reads one HTTP/1.x message from `s`: its head, lower-cased, and its
/// Content-Length body (none without one). None when the connection ended
/// first.
pub async fn read_message(s: &mut tokio::net::TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let head = read_head(s, &mut buf).await?;
    let len = content_length(&head);
    while buf.len() < len {
        if read_more(s, &mut buf).await? == 0 {
            return None;
        }
    }
    buf.truncate(len);
    Some((head, buf))
}

/// The Content-Length of a head as [`read_head`] returns it (0 without
/// one).
pub fn content_length(head: &str) -> usize {
    head.lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Reads from `s` into `buf` until it holds a whole head; returns the head,
/// lower-cased, and leaves what came after it in `buf`. None when the
/// connection ended first.
pub async fn read_head(s: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            buf.drain(..end + 4);
            return Some(head);
        }
        if read_more(s, buf).await? == 0 {
            return None;
        }
    }
}

/// Appends what `s` has to `buf`: how many bytes (0: the end), None on an
/// error.
pub async fn read_more(s: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> Option<usize> {
    use tokio::io::AsyncReadExt;
    let mut chunk = [0u8; 4096];
    let n = s.read(&mut chunk).await.ok()?;
    buf.extend_from_slice(&chunk[..n]);
    Some(n)
}

/// A hand-written upstream on `ip`, for what a well-behaved app never
/// sends: `serve` gets every connection it accepts, on a task of its own.
pub struct RawApp {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RawApp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RawApp {
    pub async fn start<F, Fut>(ip: &str, serve: F) -> RawApp
    where
        F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let l = TcpListener::bind((ip, 0)).await.unwrap();
        let addr = l.local_addr().unwrap();
        let task = tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                tokio::spawn(serve(s));
            }
        });
        RawApp { addr, task }
    }
}

/// Serves one connection of a hand-written app (a [`RawApp`]'s) with hyper,
/// HTTP/1.1 or h2c as `h2` says, each request answered by `answer`.
pub async fn serve_hyper<F, Fut>(stream: tokio::net::TcpStream, h2: bool, answer: F)
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<Body>> + Send + 'static,
{
    let svc = service_fn(move |req| {
        let answered = answer(req);
        async move { Ok::<_, Infallible>(answered.await) }
    });
    let io = TokioIo::new(stream);
    if h2 {
        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(io, svc)
            .await;
    } else {
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(io, svc)
            .await;
    }
}

/// An HTTP/2 connection with prior knowledge (h2c) to `addr`, its
/// connection task spawned.
pub async fn h2c(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<Body> {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    // Each frame goes out as it is written, never held for an ACK (Nagle).
    stream.set_nodelay(true).unwrap();
    let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

/// A request body fed by hand: each frame sent goes out as it comes; the
/// body ends when the sender is dropped.
pub fn fed_body() -> (tokio::sync::mpsc::UnboundedSender<http_body::Frame<Bytes>>, Body) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let frames = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx).map(|f| f.map(Ok)));
    (tx, http_body_util::StreamBody::new(frames).boxed())
}

/// The lines `out` prints, as they come, from a thread of their own (a
/// child's stdout, read while the test goes on). The channel closes when
/// `out` ends.
pub fn line_channel(out: impl std::io::Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}
