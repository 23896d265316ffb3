//! Header affinity and app-cookie affinity on real processes: `stickyd`
//! sidecars in front of real apps, clients that enter through a random
//! sidecar on a fresh connection for every request, as kube-proxy spreads
//! new connections. Over HTTP/1.1 (the lean path), h2c (hyper's path) and
//! gRPC (a real grpcio client and server), and what a gRPC caller gets when
//! stickyd answers itself. Addresses: 127.0.150.0/22 and 127.0.154.x to
//! 127.0.156.x.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::*;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use stickyd::affinity::{Codec, CookieState, Keys, Lifetimes, SessionId};
use tokio::net::TcpListener;

const KEY: &str = "an-affinity-test-key-of-32-bytes";
const HEADER: &str = "x-stickyd-affinity";

fn signed() -> Codec {
    Codec::new(Keys::parse(KEY).unwrap(), Lifetimes::default())
}

/// The pod a signed token names, if it is valid.
fn names(token: &str, pod: &str) -> bool {
    matches!(signed().decode(token, stickyd::affinity::unix_now()), CookieState::Valid(s) if s.id == SessionId::for_pod(pod))
}

/// Sidecars on 127.0.`net`.1.., in front of the apps at `apps`, with the
/// peers in a watched file and signed tokens (also mcp.rs's).
pub(crate) struct Sidecars {
    pub(crate) list: Vec<Stickyd>,
    file: PathBuf,
}

impl Sidecars {
    pub(crate) async fn start(net: u8, apps: &[SocketAddr], extra: &[(&str, String)]) -> Sidecars {
        let file = temp_path("affinity-peers");
        let addrs: Vec<(String, SocketAddr)> = (0..apps.len())
            .map(|i| (format!("pod-{i}"), addr_on(&format!("127.0.{net}.{}", i + 1))))
            .collect();
        let peers: Vec<(&str, SocketAddr)> = addrs.iter().map(|(n, a)| (n.as_str(), *a)).collect();
        write_peers(&file, &peers);
        let mut env = vec![
            ("STICKYD_ENDPOINTS", format!("file:{}", file.display())),
            ("STICKYD_COOKIE_SECRET", KEY.to_string()),
        ];
        env.extend(extra.iter().cloned());
        let mut list = Vec::new();
        for ((name, addr), app) in addrs.iter().zip(apps) {
            list.push(Stickyd::start(name, *addr, *app, &env).await);
        }
        Sidecars { list, file }
    }

    fn random(&self) -> SocketAddr {
        self.list[fastrand::usize(..self.list.len())].listen
    }

    /// Leaves only `keep` in every remaining sidecar's view.
    pub(crate) async fn only(&self, keep: &[usize]) {
        let peers: Vec<(String, SocketAddr)> = keep
            .iter()
            .map(|&i| (self.list[i].pod.clone(), self.list[i].listen))
            .collect();
        let list: Vec<(&str, SocketAddr)> = peers.iter().map(|(n, a)| (n.as_str(), *a)).collect();
        write_peers(&self.file, &list);
        let names: Vec<&str> = peers.iter().map(|(n, _)| n.as_str()).collect();
        for &i in keep {
            wait_for_view(&self.list[i], &names).await;
        }
    }
}

fn header_of(r: &Resp, name: &str) -> Option<String> {
    r.headers.get(name).map(|v| v.to_str().unwrap().to_string())
}

/// stickyd's own cookie, or any cookie not the app's, in a response.
fn foreign_cookies(r: &Resp, app_cookie: &str) -> Vec<String> {
    r.headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .filter(|v| !v.starts_with(&format!("{app_cookie}=")))
        .collect()
}

/// A client that keeps no cookie and echoes the affinity header: every
/// request on a fresh connection to a random sidecar.
async fn header_sessions(s: &Sidecars, proto: Proto, sessions: usize, reqs: usize, echo: bool) -> Vec<Vec<Resp>> {
    let mut all = Vec::new();
    for _ in 0..sessions {
        let mut token: Option<String> = None;
        let mut got = Vec::new();
        for _ in 0..reqs {
            let h: Vec<(&str, String)> = token.iter().map(|t| (HEADER, t.clone())).collect();
            let r = fresh(s.random(), proto, "/", &h).await;
            assert_eq!(r.status, 200, "{r:?}");
            if let Some(t) = header_of(&r, HEADER).filter(|_| echo) {
                token = Some(t);
            }
            got.push(r);
        }
        all.push(got);
    }
    all
}

async fn a_cookieless_client_that_echoes_the_header_stays_on_one_pod(net: u8, proto: Proto) {
    let apps = [
        App::start("pod-0", &format!("127.0.{net}.101")).await,
        App::start("pod-1", &format!("127.0.{net}.102")).await,
        App::start("pod-2", &format!("127.0.{net}.103")).await,
    ];
    let addrs: Vec<SocketAddr> = apps.iter().map(|a| a.addr).collect();
    let s = Sidecars::start(net, &addrs, &[("STICKYD_AFFINITY", "header".to_string())]).await;
    let sessions = header_sessions(&s, proto, 24, 8, true).await;
    let mut first_pods = HashMap::new();
    for (i, got) in sessions.iter().enumerate() {
        let pod = got[0].pod().to_string();
        *first_pods.entry(pod.clone()).or_insert(0) += 1;
        let pods: Vec<&str> = got.iter().map(Resp::pod).collect();
        assert!(pods.iter().all(|p| *p == pod), "session {i} moved: {pods:?}");
        // The first response carries the token, signed, naming its pod; the
        // pinned ones carry none, and no response carries stickyd's cookie.
        let token = header_of(&got[0], HEADER).expect("the new session's token");
        assert_eq!(token.split('.').count(), 5, "a signed value: {token}");
        assert!(names(&token, &pod), "{token} names {pod}");
        assert_eq!(got[0].field("session"), "new");
        for r in &got[1..] {
            assert_eq!(r.field("session"), "pinned", "{r:?}");
            assert_eq!(header_of(r, HEADER), None, "{r:?}");
        }
        for r in got {
            assert_eq!(foreign_cookies(r, "app"), Vec::<String>::new(), "{r:?}");
            assert!(header_of(r, "cache-control").as_deref() == Some("private") || header_of(r, HEADER).is_none());
        }
    }
    assert!(first_pods.len() >= 2, "new sessions spread: {first_pods:?}");
    // The requests came through every sidecar: most were forwarded.
    let mut forwarded = 0u64;
    for sc in &s.list {
        forwarded += sc
            .metrics()
            .await
            .lines()
            .filter(|l| l.starts_with("stickyd_requests_total{decision=\"forwarded\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum::<u64>();
    }
    assert!(forwarded >= 60, "forwarded {forwarded} of 192");
    // The apps saw the token as it was sent, never the hop marker.
    for app in &apps {
        for seen in app.seen() {
            assert!(seen.headers.get("x-stickyd-hop").is_none());
        }
    }
    // For contrast: the same client that drops the header is a new session
    // wherever it lands.
    let forgetful = header_sessions(&s, proto, 8, 8, false).await;
    let moved = forgetful
        .iter()
        .filter(|got| got.iter().any(|r| r.pod() != got[0].pod()))
        .count();
    assert!(moved >= 6, "{moved} of 8 forgetful sessions moved");
    assert!(forgetful.iter().flatten().all(|r| r.field("session") == "new"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_affinity_over_http1_and_h2c_through_random_sidecars() {
    // HTTP/1.1 takes the lean path, h2c hyper's.
    a_cookieless_client_that_echoes_the_header_stays_on_one_pod(150, Proto::H1).await;
    a_cookieless_client_that_echoes_the_header_stays_on_one_pod(151, Proto::H2c).await;
}

/// `cookie,header`: both carriers emitted with one value, either accepted,
/// the header first; a repin re-issues both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_and_header_accepts_either_and_emits_both() {
    let apps = [
        App::start("pod-0", "127.0.152.101").await,
        App::start("pod-1", "127.0.152.102").await,
    ];
    let addrs: Vec<SocketAddr> = apps.iter().map(|a| a.addr).collect();
    let s = Sidecars::start(152, &addrs, &[("STICKYD_AFFINITY", "cookie,header".to_string())]).await;
    let (a, b) = (s.list[0].listen, s.list[1].listen);
    for proto in [Proto::H1, Proto::H2c] {
        let r = fresh(a, proto, "/", &[]).await;
        assert_eq!(r.pod(), "pod-0");
        let token = header_of(&r, HEADER).expect("header");
        assert_eq!(
            r.sticky_cookie().as_deref(),
            Some(token.as_str()),
            "one value in both: {r:?}"
        );
        assert!(names(&token, "pod-0"));
        let via_cookie = fresh(b, proto, "/", &[("cookie", format!("stickyd={token}"))]).await;
        assert_eq!((via_cookie.pod(), via_cookie.field("session")), ("pod-0", "pinned"));
        let via_header = fresh(b, proto, "/", &[(HEADER, token.clone())]).await;
        assert_eq!((via_header.pod(), via_header.field("session")), ("pod-0", "pinned"));
        // A session of pod-1 in the header beats pod-0's cookie.
        let other = header_of(&fresh(b, proto, "/", &[]).await, HEADER).unwrap();
        let both = fresh(
            a,
            proto,
            "/",
            &[("cookie", format!("stickyd={token}")), (HEADER, other.clone())],
        )
        .await;
        assert_eq!(both.pod(), "pod-1", "{both:?}");
        // A bad header and a good cookie: the cookie decides.
        let r = fresh(
            b,
            proto,
            "/",
            &[("cookie", format!("stickyd={token}")), (HEADER, "forged".into())],
        )
        .await;
        assert_eq!(r.pod(), "pod-0", "{r:?}");
    }
    // pod-0 goes: its session is repinned to pod-1, both carriers re-issued.
    let token = header_of(&fresh(a, Proto::H1, "/", &[]).await, HEADER).unwrap();
    s.only(&[1]).await;
    for proto in [Proto::H1, Proto::H2c] {
        let r = fresh(b, proto, "/", &[(HEADER, token.clone())]).await;
        assert_eq!((r.pod(), r.field("session")), ("pod-1", "repinned"), "{r:?}");
        let new = header_of(&r, HEADER).expect("re-issued header");
        assert!(names(&new, "pod-1"), "{new}");
        assert_eq!(r.sticky_cookie(), Some(new));
    }
}

fn python_grpc() -> bool {
    let ok = std::process::Command::new("python3")
        .args(["-c", "import grpc"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        crate::missing_tool(
            "the gRPC tests",
            "python3 cannot import grpc (python3 -m pip install grpcio)",
        );
    }
    ok
}

const GRPC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/grpc/affinity.py");

/// A grpcio server as the app of a pod; stopped (stdin closed, then
/// killed) when dropped.
struct GrpcApp {
    addr: SocketAddr,
    child: std::process::Child,
}

impl GrpcApp {
    fn start(pod: &str, ip: &str) -> GrpcApp {
        use std::io::BufRead;
        let addr = addr_on(ip);
        let mut child = std::process::Command::new("python3")
            .args([GRPC, "serve", pod, &addr.to_string()])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "the gRPC app did not start");
        GrpcApp { addr, child }
    }
}

impl Drop for GrpcApp {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One call of `method` through the sidecar at `target` by the grpcio
/// client, on a fresh channel: the gRPC status code name and details.
async fn grpc_status(target: SocketAddr, method: &str) -> (String, String) {
    let mut cmd = std::process::Command::new("timeout");
    cmd.args(["60", "python3", GRPC, "status", &target.to_string(), method]);
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    (
        v["code"].as_str().unwrap().to_string(),
        v["details"].as_str().unwrap().to_string(),
    )
}

/// A gRPC caller reads `grpc-status`, not the HTTP status: where stickyd
/// answers itself, a grpcio client gets the code that says why, with
/// stickyd's message. A pod whose app is gone is UNAVAILABLE (try another),
/// an app that took longer than STICKYD_RESPONSE_TIMEOUT is
/// DEADLINE_EXCEEDED, and a call shed at the memory budget (its stream
/// refused with REFUSED_STREAM) is UNAVAILABLE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_callers_get_the_grpc_status_of_stickyds_own_answers() {
    if !python_grpc() {
        return;
    }
    let app = GrpcApp::start("pod-0", "127.0.156.101");
    fn grpc(extra: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
        let mut env = vec![
            ("STICKYD_ENDPOINTS", format!("static:pod-0={}", addr_on("127.0.156.1"))),
            ("STICKYD_UPSTREAM_PROTOCOL", "h2c".to_string()),
        ];
        env.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
        env
    }
    // Served: OK, the premise of the rest.
    let s = Stickyd::start(
        "pod-0",
        addr_on("127.0.156.1"),
        app.addr,
        &grpc(&[("STICKYD_RESPONSE_TIMEOUT", "1")]),
    )
    .await;
    let (code, details) = grpc_status(s.listen, "Who").await;
    assert_eq!(code, "OK", "{details}");
    // The app answers after 3 s, past STICKYD_RESPONSE_TIMEOUT.
    let (code, details) = grpc_status(s.listen, "Slow").await;
    assert_eq!(code, "DEADLINE_EXCEEDED", "{details}");
    assert!(details.contains("STICKYD_RESPONSE_TIMEOUT"), "{details}");
    drop(s);
    // The app in this pod is gone and no peer can take the call.
    let gone = addr_on("127.0.156.102");
    let s = Stickyd::start("pod-0", addr_on("127.0.156.1"), gone, &grpc(&[])).await;
    let (code, details) = grpc_status(s.listen, "Who").await;
    assert_eq!(code, "UNAVAILABLE", "{details}");
    assert!(details.contains("could not reach the app in this pod"), "{details}");
    drop(s);
    // A memory limit whose buffer budget holds the client's HTTP/2
    // connection and nothing more: the call is shed.
    let s = Stickyd::start(
        "pod-0",
        addr_on("127.0.156.1"),
        app.addr,
        &grpc(&[("STICKYD_MEMORY_LIMIT", "15Mi")]),
    )
    .await;
    // The stream is refused with REFUSED_STREAM, which gRPC retries by
    // itself (nothing of the call was processed) and, refused again, ends
    // as UNAVAILABLE: try another pod.
    let (code, details) = grpc_status(s.listen, "Who").await;
    assert_eq!(code, "UNAVAILABLE", "{details}");
    assert!(details.contains("error code 7"), "not REFUSED_STREAM: {details}");
    let m = s.metrics().await;
    assert!(sample_or_zero(&m, "stickyd_shed_total{kind=\"stream\"}") >= 1.0, "{m}");
    assert_eq!(sample_or_zero(&m, "stickyd_shed_total{kind=\"request\"}"), 0.0, "{m}");
}

/// Runs the grpcio client: `n` calls, each on a fresh channel, round robin
/// over `targets`. One JSON object per call.
async fn grpc_calls(n: usize, targets: &[SocketAddr], mode: &str) -> Vec<serde_json::Value> {
    let list: Vec<String> = targets.iter().map(ToString::to_string).collect();
    // Bounded by coreutils' timeout, whatever happens to this test.
    let mut cmd = std::process::Command::new("timeout");
    cmd.args([
        "60",
        "python3",
        GRPC,
        "call",
        &n.to_string(),
        &list.join(","),
        HEADER,
        mode,
    ]);
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_header_affinity_through_two_sidecars() {
    if !python_grpc() {
        return;
    }
    let apps = [
        GrpcApp::start("pod-0", "127.0.153.101"),
        GrpcApp::start("pod-1", "127.0.153.102"),
    ];
    let addrs: Vec<SocketAddr> = apps.iter().map(|a| a.addr).collect();
    let s = Sidecars::start(
        153,
        &addrs,
        &[
            ("STICKYD_AFFINITY", "header".to_string()),
            ("STICKYD_UPSTREAM_PROTOCOL", "h2c".to_string()),
        ],
    )
    .await;
    let entries = [s.list[0].listen, s.list[1].listen];
    // Every call on a fresh channel, alternating the sidecars: the token
    // comes back as initial metadata and goes out as request metadata.
    let calls = grpc_calls(12, &entries, "echo").await;
    assert_eq!(calls.len(), 12);
    let pod = calls[0]["pod"].as_str().unwrap().to_string();
    assert_eq!(pod, "pod-0", "the first call is served by its entry");
    let token = calls[0]["initial"].as_str().expect("the token in the initial metadata");
    assert!(names(token, "pod-0"), "{token}");
    assert!(calls[0]["trailing"].is_null(), "never in the trailers: {:?}", calls[0]);
    assert_eq!(calls[0]["session"], "new");
    for (i, c) in calls.iter().enumerate().skip(1) {
        assert_eq!(c["pod"], "pod-0", "call {i}: {c}");
        assert_eq!(c["session"], "pinned", "call {i}: {c}");
    }
    // Without the echo, each call is a new session where it lands.
    let calls = grpc_calls(6, &entries, "forget").await;
    let pods: Vec<&str> = calls.iter().map(|c| c["pod"].as_str().unwrap()).collect();
    assert_eq!(pods, ["pod-0", "pod-1", "pod-0", "pod-1", "pod-0", "pod-1"]);
    assert!(calls.iter().all(|c| c["session"] == "new"));
    // A new session handed on by a draining pod (row 12): the token comes
    // back from the peer's sidecar on the forwarded path, in the initial
    // metadata.
    let admin = s.list[0].admin;
    // From the pod itself, which needs no drain token.
    let drain = tokio::spawn(async move {
        request_from(
            admin.ip(),
            "GET",
            &format!("http://{admin}/drain?idle=30s&max=30s"),
            &[],
            empty(),
        )
        .await
    });
    let calls = eventually(Duration::from_secs(5), "a new session handed on", || async {
        let calls = grpc_calls(4, &entries[..1], "echo").await;
        (calls[0]["pod"] == "pod-1", calls)
    })
    .await;
    drain.abort();
    assert_eq!(calls[0]["pod"], "pod-1", "{calls:?}");
    let token = calls[0]["initial"].as_str().expect("the peer's token, forwarded");
    assert!(names(token, "pod-1"), "{token}");
    for c in &calls[1..] {
        assert_eq!(
            (c["pod"].as_str(), c["session"].as_str()),
            (Some("pod-1"), Some("pinned")),
            "{c}"
        );
    }
}

/// An app with sessions of its own in memory, as many are: a request
/// without `JSESSIONID` gets a new one (`Max-Age`, `Secure`, `HttpOnly`,
/// `Path=/`); it answers `pod=NAME known=0|1 session=MARK` and records the
/// Cookie fields it received.
struct SessionApp {
    addr: SocketAddr,
    cookies: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for SessionApp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

const APP_COOKIE: &str = "JSESSIONID";
const APP_ATTRIBUTES: &str = "Max-Age=3600; Path=/; Secure; HttpOnly";

impl SessionApp {
    async fn start(pod: &str, ip: &str) -> SessionApp {
        let listener = TcpListener::bind((ip, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cookies: Arc<Mutex<Vec<String>>> = Arc::default();
        let known: Arc<Mutex<std::collections::HashSet<String>>> = Arc::default();
        let (pod, c2) = (pod.to_string(), cookies.clone());
        let task = tokio::spawn(async move {
            let mut n = 0u64;
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                n += 1;
                let (pod, cookies, known) = (pod.clone(), c2.clone(), known.clone());
                let conn = n;
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let (pod, cookies, known) = (pod.clone(), cookies.clone(), known.clone());
                        async move {
                            let fields: Vec<String> = req
                                .headers()
                                .get_all("cookie")
                                .iter()
                                .map(|v| v.to_str().unwrap().to_string())
                                .collect();
                            cookies.lock().unwrap().extend(fields.iter().cloned());
                            let value = fields
                                .iter()
                                .flat_map(|f| f.split(';'))
                                .find_map(|p| p.trim().strip_prefix(&format!("{APP_COOKIE}=")).map(str::to_string));
                            let session = req
                                .headers()
                                .get("x-stickyd-session")
                                .map(|v| v.to_str().unwrap().to_string())
                                .unwrap_or_default();
                            let mut b = Response::builder();
                            let is_known = value.as_ref().is_some_and(|v| known.lock().unwrap().contains(v));
                            if value.is_none() {
                                let v = format!("{pod}-{conn}-{}", fastrand::u32(..));
                                known.lock().unwrap().insert(v.clone());
                                b = b.header("set-cookie", format!("{APP_COOKIE}={v}; {APP_ATTRIBUTES}"));
                            }
                            b = b.header("set-cookie", "theme=dark; Path=/");
                            let body = format!("pod={pod} known={} session={session}\n", u8::from(is_known));
                            Ok::<_, Infallible>(b.body(full(body)).unwrap())
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        SessionApp { addr, cookies, task }
    }

    fn cookies(&self) -> Vec<String> {
        self.cookies.lock().unwrap().clone()
    }
}

/// A browser: keeps every cookie it is set, sends them back in one Cookie
/// field, in the order first set.
#[derive(Default)]
struct Jar(BTreeMap<usize, (String, String)>);

impl Jar {
    fn take(&mut self, r: &Resp) {
        for v in r.headers.get_all("set-cookie") {
            let pair = v.to_str().unwrap().split(';').next().unwrap().to_string();
            let (name, value) = pair.split_once('=').unwrap();
            let at = self.0.iter().find(|(_, (n, _))| n == name).map(|(k, _)| *k);
            let at = at.unwrap_or(self.0.len());
            self.0.insert(at, (name.to_string(), value.to_string()));
        }
    }

    fn header(&self) -> Vec<(&'static str, String)> {
        if self.0.is_empty() {
            return vec![];
        }
        let all: Vec<String> = self.0.values().map(|(n, v)| format!("{n}={v}")).collect();
        vec![("cookie", format!("a=1; {}; z=2", all.join("; ")))]
    }
}

/// The response's Set-Cookie of the app's cookie.
fn app_set_cookie(r: &Resp) -> String {
    r.headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .find(|v| v.starts_with(&format!("{APP_COOKIE}=")))
        .unwrap_or_else(|| panic!("no {APP_COOKIE} set: {r:?}"))
}

/// The app's value and stickyd's token in `TOKEN~VALUE`.
fn split(v: &str) -> (&str, &str) {
    v.split_once('~').unwrap_or_else(|| panic!("no prefix in {v}"))
}

/// `n` pods of [`SessionApp`] on 127.0.`net`, in app-cookie mode.
async fn app_cookie_pods(net: u8, n: u8, extra: &[(&str, String)]) -> (Vec<SessionApp>, Sidecars) {
    let mut apps = Vec::new();
    for i in 0..n {
        apps.push(SessionApp::start(&format!("pod-{i}"), &format!("127.0.{net}.{}", 101 + i)).await);
    }
    let addrs: Vec<SocketAddr> = apps.iter().map(|a| a.addr).collect();
    let mut env = vec![
        ("STICKYD_AFFINITY", "app-cookie".to_string()),
        ("STICKYD_APP_COOKIE", APP_COOKIE.to_string()),
    ];
    env.extend(extra.iter().cloned());
    let s = Sidecars::start(net, &addrs, &env).await;
    (apps, s)
}

async fn app_cookie_sessions(net: u8, proto: Proto) {
    let (apps, s) = app_cookie_pods(net, 3, &[]).await;
    let mut values = Vec::new();
    let mut first_pods = HashMap::new();
    for i in 0..24 {
        let mut jar = Jar::default();
        let mut pods = Vec::new();
        for k in 0..8 {
            let r = fresh(s.random(), proto, "/", &jar.header()).await;
            assert_eq!(r.status, 200, "{r:?}");
            let set: Vec<String> = r
                .headers
                .get_all("set-cookie")
                .iter()
                .map(|v| v.to_str().unwrap().to_string())
                .collect();
            if k == 0 {
                // The app's own cookie, the token before its value, its own
                // attributes exactly; stickyd adds no cookie of its own.
                assert_eq!(set.len(), 2, "{set:?}");
                let ours = set[0].strip_prefix(&format!("{APP_COOKIE}=")).unwrap();
                let (value, attributes) = ours.split_once("; ").unwrap();
                assert_eq!(attributes, APP_ATTRIBUTES);
                let (token, own) = split(value);
                assert!(names(token, r.pod()), "{token} names {}", r.pod());
                assert!(own.starts_with(r.pod()), "{own}");
                assert_eq!(set[1], "theme=dark; Path=/");
                assert_eq!(r.headers["cache-control"], "private");
                values.push(own.to_string());
                *first_pods.entry(r.pod().to_string()).or_insert(0) += 1;
            } else {
                assert_eq!(
                    set,
                    ["theme=dark; Path=/"],
                    "pinned: nothing but the app's other cookie"
                );
                assert_eq!(
                    (r.field("known"), r.field("session")),
                    ("1", "pinned"),
                    "session {i}: {r:?}"
                );
            }
            assert!(r.headers.get(HEADER).is_none());
            jar.take(&r);
            pods.push(r.pod().to_string());
        }
        assert!(pods.iter().all(|p| *p == pods[0]), "session {i} moved: {pods:?}");
    }
    assert!(first_pods.len() >= 2, "{first_pods:?}");
    // The apps never saw a prefix, and the other cookies came as they were
    // sent, in order.
    let mut seen_values = 0;
    for app in &apps {
        for field in app.cookies() {
            assert!(!field.contains('~'), "the app saw the prefix: {field}");
            let parts: Vec<&str> = field.split("; ").collect();
            assert_eq!(parts[0], "a=1", "{field}");
            assert_eq!(parts[parts.len() - 1], "z=2", "{field}");
            let v = parts[1]
                .strip_prefix(&format!("{APP_COOKIE}="))
                .expect("the app's cookie second");
            assert!(values.iter().any(|own| own == v), "{v}");
            assert_eq!(parts[2], "theme=dark");
            seen_values += 1;
        }
    }
    assert_eq!(seen_values, 24 * 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_cookie_over_http1_and_h2c_keeps_the_apps_cookie_and_hides_the_prefix() {
    app_cookie_sessions(154, Proto::H1).await;
    app_cookie_sessions(155, Proto::H2c).await;
}

/// A value without a prefix is a new session served where it lands, its
/// value re-issued with a token; a session whose pod is gone is repinned
/// with its old value, the app's own value kept whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_cookie_without_a_prefix_and_after_its_pod_is_gone_is_reissued_with_its_value() {
    let (apps, s) = app_cookie_pods(156, 2, &[("STICKYD_COOKIE_SECURE", "true".to_string())]).await;
    let (a, b) = (s.list[0].listen, s.list[1].listen);
    for proto in [Proto::H1, Proto::H2c] {
        for plain in ["legacy-1".to_string(), format!("{}!~v", "f".repeat(12)), "a~b".into()] {
            let r = fresh(b, proto, "/", &[("cookie", format!("{APP_COOKIE}={plain}"))]).await;
            assert_eq!((r.pod(), r.field("session")), ("pod-1", "new"), "{r:?}");
            let set = app_set_cookie(&r);
            let value = set
                .strip_prefix(&format!("{APP_COOKIE}="))
                .unwrap()
                .split(';')
                .next()
                .unwrap();
            let (token, own) = split(value);
            assert_eq!(own, plain, "the app's value whole: {set}");
            assert!(names(token, "pod-1"));
            assert!(
                set.contains("Secure") && set.contains("HttpOnly") && set.contains("Path=/"),
                "{set}"
            );
            // It now stays on pod-1, from either entry.
            let again = fresh(a, proto, "/", &[("cookie", format!("{APP_COOKIE}={value}"))]).await;
            assert_eq!((again.pod(), again.field("session")), ("pod-1", "pinned"), "{again:?}");
        }
        // A forged token is taken off before the app all the same.
        let forged = format!(
            "{}.AAAAAAAA.1.1.{}~mine",
            SessionId::for_pod("pod-0").encode(),
            "A".repeat(22)
        );
        let r = fresh(a, proto, "/", &[("cookie", format!("{APP_COOKIE}={forged}"))]).await;
        assert_eq!((r.pod(), r.field("session")), ("pod-0", "new"), "{r:?}");
    }
    assert!(apps[0].cookies().iter().any(|c| c == &format!("{APP_COOKIE}=mine")));
    // A session of pod-0; then pod-0 goes. The app keeps no shared store,
    // so pod-1's app does not know the value; it is re-issued with it all
    // the same (stickyd cannot invent the app's value), pinned to pod-1.
    let r = fresh(a, Proto::H1, "/", &[]).await;
    let set = app_set_cookie(&r);
    let value = set
        .strip_prefix(&format!("{APP_COOKIE}="))
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let (_, own) = split(&value);
    let own = own.to_string();
    s.only(&[1]).await;
    for proto in [Proto::H1, Proto::H2c] {
        let r = fresh(b, proto, "/", &[("cookie", format!("x=1; {APP_COOKIE}={value}"))]).await;
        assert_eq!((r.pod(), r.field("session")), ("pod-1", "repinned"), "{r:?}");
        let set = app_set_cookie(&r);
        let new = set
            .strip_prefix(&format!("{APP_COOKIE}="))
            .unwrap()
            .split(';')
            .next()
            .unwrap();
        let (token, again) = split(new);
        assert_eq!(again, own);
        assert!(names(token, "pod-1"), "{set}");
        let next = fresh(b, proto, "/", &[("cookie", format!("{APP_COOKIE}={new}"))]).await;
        assert_eq!((next.pod(), next.field("session")), ("pod-1", "pinned"));
    }
    assert!(apps[1]
        .cookies()
        .iter()
        .any(|c| c == &format!("x=1; {APP_COOKIE}={own}")));
}
