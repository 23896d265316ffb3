//! App-header affinity on real processes (`STICKYD_AFFINITY=app-header`):
//! the app names its sessions in a header of its own, as an MCP server does
//! with `Mcp-Session-Id`, and its clients echo only that header. stickyd
//! prefixes the value with its token on the way out and takes it off on the
//! way in. Over HTTP/1.1 and h2c, to an HTTP/1.1 or an h2c app, served
//! locally and forwarded; event streams through it; sessions the app ends
//! (also in app-cookie mode, by deleting its cookie); and the drain that
//! ends on `ended`.
//!
//! Addresses: 127.0.176.x to 127.0.182.x.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::*;
use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use stickyd::affinity::{Codec, CookieState, Keys, Lifetimes, SessionId};
use tokio::net::TcpListener;
use tokio::sync::Notify;

const HEADER: &str = "mcp-session-id";
const KEY: &str = "an-app-header-test-key-32-bytes!";

/// Does `token` (signed with [`KEY`]) name `pod`?
fn names(token: &str, pod: &str) -> bool {
    let codec = Codec::new(Keys::parse(KEY).unwrap(), Lifetimes::default());
    matches!(codec.decode(token, stickyd::affinity::unix_now()), CookieState::Valid(s) if s.id == SessionId::for_pod(pod))
}

/// An app that keeps its sessions in memory and names them in
/// `Mcp-Session-Id`, as an MCP server of Streamable HTTP does: a POST
/// without it starts a session; a request with a session it knows is served
/// (`count` goes up by one) and answered with the header again; one it does
/// not know gets `404 Session not found`; a DELETE ends the session. A GET
/// asking for `text/event-stream` opens an event stream: its first event at
/// once (naming the pod and the request's `Last-Event-ID`), its second and
/// last when the test says so ([`HeaderApp::release`]).
struct HeaderApp {
    addr: SocketAddr,
    /// Every value of the session header the app received.
    seen: Arc<Mutex<Vec<String>>>,
    release: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for HeaderApp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl HeaderApp {
    async fn start(pod: &str, ip: &str) -> HeaderApp {
        let listener = TcpListener::bind((ip, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let release = Arc::new(Notify::new());
        let sessions: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
        let (pod, seen2, release2) = (pod.to_string(), seen.clone(), release.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (pod, seen, release, sessions) = (pod.clone(), seen2.clone(), release2.clone(), sessions.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let answer = serve(&pod, &req, &seen, &release, &sessions);
                        async move { Ok::<_, Infallible>(answer) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        HeaderApp {
            addr,
            seen,
            release,
            task,
        }
    }

    /// The second event of every open event stream goes, and they end.
    fn release(&self) {
        self.release.notify_waiters();
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

fn serve(
    pod: &str,
    req: &Request<Incoming>,
    seen: &Mutex<Vec<String>>,
    release: &Arc<Notify>,
    sessions: &Mutex<HashMap<String, u32>>,
) -> Response<Body> {
    let id = req.headers().get(HEADER).map(|v| v.to_str().unwrap().to_string());
    let mark = req
        .headers()
        .get("x-stickyd-session")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let not_found = || {
        Response::builder()
            .status(404)
            .body(full("Session not found\n"))
            .unwrap()
    };
    let Some(id) = id else {
        if req.method() != Method::POST {
            return Response::builder().status(400).body(full("no session\n")).unwrap();
        }
        let id = format!("{pod}-{:016x}", fastrand::u64(..));
        sessions.lock().unwrap().insert(id.clone(), 0);
        return Response::builder()
            .header(HEADER, id)
            .header("content-type", "text/plain")
            .body(full(format!("pod={pod} count=0 session={mark}\n")))
            .unwrap();
    };
    seen.lock().unwrap().push(id.clone());
    if req.method() == Method::DELETE {
        return match sessions.lock().unwrap().remove(&id) {
            Some(_) => Response::builder().body(full(format!("pod={pod} deleted\n"))).unwrap(),
            None => not_found(),
        };
    }
    let count = match sessions.lock().unwrap().get_mut(&id) {
        Some(n) => {
            *n += 1;
            *n
        }
        None => return not_found(),
    };
    let wants_stream = req
        .headers()
        .get("accept")
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    if req.method() == Method::GET && wants_stream {
        let last = req
            .headers()
            .get("last-event-id")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let (tx, body) = fed_body();
        let first = format!("id: 1\ndata: pod={pod} last-event-id={last}\n\n");
        tx.send(http_body::Frame::data(Bytes::from(first))).unwrap();
        let release = release.clone();
        let released = Box::pin(async move { release.notified_owned().await });
        tokio::spawn(async move {
            released.await;
            let _ = tx.send(http_body::Frame::data(Bytes::from_static(b"id: 2\ndata: two\n\n")));
        });
        return Response::builder()
            .header(HEADER, id)
            .header("content-type", "text/event-stream")
            .body(body)
            .unwrap();
    }
    Response::builder()
        .header(HEADER, id)
        .body(full(format!("pod={pod} count={count} session={mark}\n")))
        .unwrap()
}

/// `n` pods on 127.0.`net`.1.., each a [`HeaderApp`] behind a sidecar in
/// app-header mode, all in each other's (static) view.
async fn pods(net: u8, n: usize, extra: &[(&str, String)]) -> (Vec<HeaderApp>, Vec<Stickyd>) {
    let (pods, view) = static_pods(net, n);
    let (mut apps, mut sidecars) = (Vec::new(), Vec::new());
    for (name, ip, listen) in &pods {
        let app = HeaderApp::start(name, ip).await;
        let mut env = vec![
            ("STICKYD_ENDPOINTS", view.clone()),
            ("STICKYD_AFFINITY", "app-header".to_string()),
            ("STICKYD_APP_HEADER", "Mcp-Session-Id".to_string()),
            ("STICKYD_COOKIE_SECRET", KEY.to_string()),
            ("STICKYD_DRAIN_TOKEN", DRAIN_TOKEN.to_string()),
        ];
        env.extend(extra.iter().cloned());
        sidecars.push(Stickyd::start(name, *listen, app.addr, &env).await);
        apps.push(app);
    }
    (apps, sidecars)
}

const DRAIN_TOKEN: &str = "app-header-drain-token-0123456789";

/// The session header of a response.
fn header_of(r: &Resp) -> String {
    r.headers
        .get(HEADER)
        .unwrap_or_else(|| panic!("no {HEADER}: {r:?}"))
        .to_str()
        .unwrap()
        .to_string()
}

/// The token and the app's value of `TOKEN~VALUE`.
fn split(v: &str) -> (&str, &str) {
    v.split_once('~').unwrap_or_else(|| panic!("no prefix in {v}"))
}

/// The sum of every series of `name` whose labels contain `labels`.
fn sum_of(metrics: &str, name: &str, labels: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Sessions named by the app through random sidecars: each one's requests
/// reach the pod that named it, the app only ever sees its own values, and
/// a DELETE ends the session there.
async fn sessions_through_random_sidecars(net: u8, proto: Proto, app_protocol: &str) {
    let extra = [("STICKYD_UPSTREAM_PROTOCOL", app_protocol.to_string())];
    let (apps, sidecars) = pods(net, 3, &extra).await;
    let random = || sidecars[fastrand::usize(..sidecars.len())].listen;
    let mut first_pods = HashMap::new();
    for i in 0..12 {
        // initialize: no header; the app names the session, stickyd prefixes it.
        let r = fresh_method(random(), proto, "POST", "/mcp", &[]).await;
        assert_eq!((r.status, r.field("session")), (200, "new"), "{r:?}");
        let pod = r.pod().to_string();
        let mut echoed = header_of(&r);
        let (token, own) = split(&echoed);
        let own = own.to_string();
        assert!(names(token, &pod), "{token} names {pod}");
        assert!(own.starts_with(&pod), "{own}");
        assert_eq!(r.headers["cache-control"], "private");
        assert!(r.headers.get("set-cookie").is_none(), "{r:?}");
        *first_pods.entry(pod.clone()).or_insert(0) += 1;
        for k in 1..=6 {
            let method = if k % 3 == 0 { "GET" } else { "POST" };
            let r = fresh_method(random(), proto, method, "/mcp", &[(HEADER, echoed.clone())]).await;
            assert_eq!(r.status, 200, "session {i}, call {k}: {r:?}");
            assert_eq!(
                (r.pod(), r.field("count"), r.field("session")),
                (pod.as_str(), k.to_string().as_str(), "pinned"),
                "session {i}: {r:?}"
            );
            // The app answers with its header again: prefixed again, one token, its pod's.
            echoed = header_of(&r);
            let (token, again) = split(&echoed);
            assert!(names(token, &pod) && again == own, "{echoed}");
        }
        // The DELETE that ends it reaches its pod, which forgets it: the
        // next request of it gets the app's 404, as the app made it.
        let r = fresh_method(random(), proto, "DELETE", "/mcp", &[(HEADER, echoed.clone())]).await;
        assert_eq!((r.status, r.pod()), (200, pod.as_str()), "{r:?}");
        let r = fresh_method(random(), proto, "POST", "/mcp", &[(HEADER, echoed.clone())]).await;
        assert_eq!((r.status, r.body.as_str()), (404, "Session not found\n"), "{r:?}");
        assert!(r.headers.get(HEADER).is_none(), "{r:?}");
    }
    assert!(first_pods.len() >= 2, "{first_pods:?}");
    let mut forwarded = 0.0;
    let mut ended = 0.0;
    for s in &sidecars {
        let m = s.metrics().await;
        forwarded += sum_of(&m, "stickyd_requests_total", "decision=\"forwarded\"");
        ended += sample_or_zero(&m, "stickyd_sessions_ended_total");
        assert_eq!(sample_or_zero(&m, "stickyd_sessions_active"), 0.0, "{}: {m}", s.pod);
    }
    assert!(forwarded > 0.0, "no request was forwarded");
    assert_eq!(ended, 12.0);
    // The apps never saw a prefix.
    let mut values = 0;
    for app in &apps {
        for v in app.seen() {
            assert!(!v.contains('~'), "the app saw the prefix: {v}");
            values += 1;
        }
    }
    assert_eq!(values, 12 * 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_the_app_names_stay_on_its_pod_over_http1_and_h2c_to_either_app() {
    sessions_through_random_sidecars(176, Proto::H1, "http1").await;
    sessions_through_random_sidecars(177, Proto::H2c, "http1").await;
    sessions_through_random_sidecars(178, Proto::H1, "h2c").await;
    sessions_through_random_sidecars(179, Proto::H2c, "h2c").await;
}

/// A request on a fresh connection whose response body is read as it comes.
struct Stream {
    status: u16,
    body: Incoming,
    _conn: tokio::task::JoinHandle<()>,
}

impl Stream {
    async fn open(addr: SocketAddr, proto: Proto, headers: &[(&str, String)]) -> Stream {
        let io = TokioIo::new(tokio::net::TcpStream::connect(addr).await.unwrap());
        let mut b = Request::get("/mcp")
            .header("host", "mcp.example")
            .header("accept", "text/event-stream");
        for (k, v) in headers {
            b = b.header(*k, v.as_str());
        }
        let req = b.body(empty()).unwrap();
        let (resp, conn) = match proto {
            Proto::H1 => {
                let (mut send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
                let conn = tokio::spawn(async move {
                    let _ = conn.await;
                });
                (send.send_request(req).await.unwrap(), conn)
            }
            Proto::H2c => {
                let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                    .await
                    .unwrap();
                let conn = tokio::spawn(async move {
                    let _ = conn.await;
                });
                (send.send_request(req).await.unwrap(), conn)
            }
        };
        Stream {
            status: resp.status().as_u16(),
            body: resp.into_body(),
            _conn: conn,
        }
    }

    /// The text until the end of the next event (a blank line); None: the
    /// stream ended.
    async fn next_event(&mut self) -> Option<String> {
        let mut text = String::new();
        while !text.ends_with("\n\n") {
            let frame = tokio::time::timeout(Duration::from_secs(20), self.body.frame())
                .await
                .expect("an event in time")?
                .expect("the stream is whole");
            if let Ok(data) = frame.into_data() {
                text.push_str(std::str::from_utf8(&data).unwrap());
            }
        }
        Some(text)
    }
}

/// A session's event stream, and its resumption with `Last-Event-ID`,
/// reach the session's pod through another pod's sidecar; each event comes
/// as the app sends it, and a stream silent for longer than
/// STICKYD_BODY_READ_TIMEOUT and STICKYD_SESSION_ACTIVE_WINDOW is neither
/// cut nor counted idle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_stream_is_unbuffered_untimed_and_keeps_its_session_active() {
    let extra = [
        ("STICKYD_BODY_READ_TIMEOUT", "300ms".to_string()),
        ("STICKYD_SESSION_ACTIVE_WINDOW", "1s".to_string()),
    ];
    let (apps, sidecars) = pods(180, 2, &extra).await;
    for (proto, last) in [(Proto::H1, ""), (Proto::H2c, "41")] {
        // The session starts on pod-1.
        let r = fresh_method(sidecars[1].listen, proto, "POST", "/mcp", &[]).await;
        assert_eq!(r.pod(), "pod-1", "{r:?}");
        let session = header_of(&r);
        // Its stream, entering at pod-0: forwarded to pod-1.
        let mut headers = vec![(HEADER, session.clone())];
        if !last.is_empty() {
            headers.push(("last-event-id", last.to_string()));
        }
        let mut stream = Stream::open(sidecars[0].listen, proto, &headers).await;
        assert_eq!(stream.status, 200);
        // The first event arrives while the app holds back the second.
        let first = stream.next_event().await.unwrap();
        assert!(
            first.contains(&format!("data: pod=pod-1 last-event-id={last}\n")),
            "{first:?}"
        );
        // Silent for three body timeouts, past the active window.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let m = sidecars[1].metrics().await;
        assert_eq!(sample_or_zero(&m, "stickyd_sessions_active"), 1.0, "{m}");
        apps[1].release();
        let second = stream.next_event().await.unwrap();
        assert_eq!(second, "id: 2\ndata: two\n\n");
        assert_eq!(stream.next_event().await, None);
        // Done with: the session is seen at the stream's end, and goes
        // idle a window later.
        eventually(Duration::from_secs(10), "the session idle after its stream", || async {
            let m = sidecars[1].metrics().await;
            (sample_or_zero(&m, "stickyd_sessions_active") == 0.0, m)
        })
        .await;
        for s in &sidecars {
            let m = s.metrics().await;
            assert_eq!(sum_of(&m, "stickyd_body_timeouts_total", ""), 0.0, "{m}");
        }
    }
    assert!(apps[1].seen().iter().all(|v| !v.contains('~')));
}

/// The drain of a pod whose sessions are named by the app: its sessions
/// keep reaching it while new ones go to its peer, an open stream holds the
/// drain, and the drain answers `ended` as soon as the last session is
/// deleted, long before `idle`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_ends_on_ended_once_the_apps_sessions_end() {
    let (apps, sidecars) = pods(181, 2, &[]).await;
    let (entry, draining) = (sidecars[0].listen, &sidecars[1]);
    let mut sessions = Vec::new();
    for _ in 0..3 {
        let r = fresh_method(draining.listen, Proto::H1, "POST", "/mcp", &[]).await;
        assert_eq!(r.pod(), "pod-1", "{r:?}");
        sessions.push(header_of(&r));
    }
    let mut stream = Stream::open(entry, Proto::H2c, &[(HEADER, sessions[0].clone())]).await;
    assert!(stream.next_event().await.unwrap().contains("pod=pod-1"));

    let admin = draining.admin;
    let drain = tokio::spawn(async move {
        let auth = ("authorization", format!("Bearer {DRAIN_TOKEN}"));
        let (status, text) = fresh_get_with(None, admin, "/drain?idle=60s&max=90s", &[(auth.0, auth.1.as_str())])
            .await
            .expect("the drain answers");
        let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
        (status, serde_json::from_str::<serde_json::Value>(&body).unwrap())
    });
    eventually(Duration::from_secs(10), "pod-1 draining", || async {
        let m = draining.metrics().await;
        (sample_or_zero(&m, "stickyd_draining") == 1.0, m)
    })
    .await;
    // A new session entering the draining pod goes to its peer.
    let r = fresh_method(draining.listen, Proto::H1, "POST", "/mcp", &[]).await;
    assert_eq!((r.pod(), r.field("session")), ("pod-0", "new"), "{r:?}");
    assert!(names(split(&header_of(&r)).0, "pod-0"));
    // Its own sessions keep reaching it, from either side.
    for (s, at) in sessions.iter().zip([entry, draining.listen, entry]) {
        let r = fresh_method(at, Proto::H2c, "POST", "/mcp", &[(HEADER, s.clone())]).await;
        assert_eq!((r.status, r.pod()), (200, "pod-1"), "{r:?}");
    }
    let active = || async { sample_or_zero(&draining.metrics().await, "stickyd_sessions_active") };
    assert_eq!(active().await, 3.0);
    // Each DELETE takes its session out of the count at once.
    for (s, left) in sessions[1..].iter().zip([2.0, 1.0]) {
        let r = fresh_method(entry, Proto::H1, "DELETE", "/mcp", &[(HEADER, s.clone())]).await;
        assert_eq!((r.status, r.pod()), (200, "pod-1"), "{r:?}");
        assert_eq!(active().await, left);
    }
    // The stream is still open: the drain waits for it.
    assert!(!drain.is_finished());
    apps[1].release();
    assert_eq!(stream.next_event().await.unwrap(), "id: 2\ndata: two\n\n");
    assert_eq!(stream.next_event().await, None);
    assert!(!drain.is_finished(), "the last session has not ended yet");
    let r = fresh_method(entry, Proto::H2c, "DELETE", "/mcp", &[(HEADER, sessions[0].clone())]).await;
    assert_eq!((r.status, r.pod()), (200, "pod-1"), "{r:?}");
    assert_eq!(active().await, 0.0);
    let (status, outcome) = tokio::time::timeout(Duration::from_secs(20), drain)
        .await
        .expect("the drain ends well before idle=60s")
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(outcome["reason"], "ended", "{outcome}");
    assert_eq!(outcome["sessions_ended"], 3, "{outcome}");
    assert!(outcome["waited_seconds"].as_f64().unwrap() < 30.0, "{outcome}");
}

/// In app-cookie mode the app ends a session by deleting its cookie: the
/// session leaves the table at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_cookie_the_app_deletes_ends_its_session() {
    let listener = TcpListener::bind(("127.0.182.1", 0)).await.unwrap();
    let app = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = service_fn(|req: Request<Incoming>| async move {
                    let set = match req.uri().path() {
                        "/login" => Some(format!("sid=s{:x}; Path=/; HttpOnly", fastrand::u32(..))),
                        "/logout" => Some("sid=; Path=/; Max-Age=0".to_string()),
                        _ => None,
                    };
                    let mut b = Response::builder();
                    if let Some(v) = set {
                        b = b.header("set-cookie", v);
                    }
                    Ok::<_, Infallible>(b.body(full("pod=pod-0\n")).unwrap())
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    let listen = addr_on("127.0.182.1");
    let env = [
        ("STICKYD_ENDPOINTS", format!("static:pod-0={listen}")),
        ("STICKYD_AFFINITY", "app-cookie".to_string()),
        ("STICKYD_APP_COOKIE", "sid".to_string()),
    ];
    let s = Stickyd::start("pod-0", listen, app, &env).await;
    let active = || async { sample_or_zero(&s.metrics().await, "stickyd_sessions_active") };
    let mut sessions = Vec::new();
    for _ in 0..2 {
        let r = fresh(listen, Proto::H1, "/login", &[]).await;
        let set = r.headers["set-cookie"].to_str().unwrap().to_string();
        sessions.push(set.split(';').next().unwrap().to_string());
    }
    assert_eq!(active().await, 2.0);
    let r = fresh(listen, Proto::H2c, "/page", &[("cookie", sessions[0].clone())]).await;
    assert_eq!(r.status, 200);
    assert_eq!(active().await, 2.0);
    // Logging out: the app deletes its cookie; the deletion goes to the
    // browser as the app wrote it, and the session is over at once.
    for (cookie, left) in sessions.iter().zip([1.0, 0.0]) {
        let r = fresh(listen, Proto::H1, "/logout", &[("cookie", cookie.clone())]).await;
        assert_eq!(r.headers["set-cookie"], "sid=; Path=/; Max-Age=0");
        assert_eq!(active().await, left);
    }
    assert_eq!(sample_or_zero(&s.metrics().await, "stickyd_sessions_ended_total"), 2.0);
    task.abort();
}
