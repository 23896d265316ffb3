//! Durations on tokio's paused clock, in process: the response, connect
//! and header read timeouts, and the session token's idle window and
//! absolute lifetime. Sidecars ([`Sidecar::start_with`], on listeners
//! handed over already bound), apps and clients share one current-thread
//! runtime whose clock stands still ([`hold_still`]): sockets work at their
//! own pace, and time moves only when a test advances it. So a test says
//! "nothing yet at 999 ms, the answer at 1 s", and no test reads the wall
//! clock. The session token reads its times from a [`Clock`] that follows
//! tokio's; a black-holed peer is a [`Connector`] whose dial never ends.
//!
//! Addresses: 127.0.173.x and 127.0.174.x.

use crate::common;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use crate::common::{cookie_for, App, RawApp};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body::Frame;
use http_body_util::BodyExt;
use stickyd::affinity::SessionId;
use stickyd::config::Config;
use stickyd::proxy::{Clock, Connector};
use stickyd::sidecar::{Parts, Sidecar};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::{advance, Instant};
use tokio_tungstenite::tungstenite::Message;

/// Keeps tokio's paused clock from advancing by itself while it lives: a
/// blocking task in flight stops a paused runtime's auto-advance, so a
/// runtime waiting for a socket waits for the socket, not for its next
/// timer. Time moves only by [`advance`].
struct Still(#[allow(dead_code)] std::sync::mpsc::Sender<()>);

fn hold_still() -> Still {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    tokio::task::spawn_blocking(move || {
        let _ = rx.recv();
    });
    Still(tx)
}

/// Awaits `f`, failing after `limit` of real time: a hang guard only (the
/// runtime's own timers do not run while the clock stands still).
async fn real_bound<F: Future>(what: &str, f: F) -> F::Output {
    const LIMIT: Duration = Duration::from_secs(20);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        std::thread::sleep(LIMIT);
        let _ = tx.send(());
    });
    tokio::select! {
        biased;
        out = f => out,
        _ = rx => panic!("{what}: nothing after {LIMIT:?} of real time"),
    }
}

/// Lets the sidecar act on what it has read: round trips through its admin
/// listener, on the same runtime, after whatever was sent before.
async fn settle(s: &Sidecar) {
    for _ in 0..3 {
        let (status, _) = real_bound("/healthz", common::fresh_get(s.admin, "/healthz"))
            .await
            .unwrap();
        assert_eq!(status, 200);
    }
}

/// A sidecar for `pod` in this process, on `listener`, with `app` as its
/// upstream, `peers` (`name=addr,...`) beside itself in a static view, and
/// `extra` configuration.
async fn sidecar(
    pod: &str,
    listener: TcpListener,
    app: SocketAddr,
    peers: &str,
    extra: &[(&str, &str)],
    clock: Clock,
    connector: Connector,
) -> Sidecar {
    let listen = listener.local_addr().unwrap();
    let admin = TcpListener::bind((listen.ip(), 0)).await.unwrap();
    let mut endpoints = format!("static:{pod}={listen}");
    if !peers.is_empty() {
        endpoints = format!("{endpoints},{peers}");
    }
    let mut env: HashMap<String, String> = [
        ("STICKYD_POD_NAME", pod.to_string()),
        ("STICKYD_LISTEN", listen.to_string()),
        ("STICKYD_ADMIN_LISTEN", admin.local_addr().unwrap().to_string()),
        ("STICKYD_UPSTREAM", format!("http://{app}")),
        ("STICKYD_ENDPOINTS", endpoints),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    for (k, v) in extra {
        env.insert(k.to_string(), v.to_string());
    }
    let cfg = Config::from_env(&env).unwrap();
    let parts = Parts {
        proxy: listener,
        admin,
        clock,
        connector,
    };
    Sidecar::start_with(cfg, parts).await.unwrap()
}

async fn bound(ip: &str) -> TcpListener {
    TcpListener::bind((ip, 0)).await.unwrap()
}

/// One sidecar alone in its view, over a recording app on the same address.
async fn alone(ip: &str, extra: &[(&str, &str)], clock: Clock) -> (App, Sidecar) {
    let app = App::start("pod-0", ip).await;
    let s = sidecar("pod-0", bound(ip).await, app.addr, "", extra, clock, Connector::Tcp).await;
    (app, s)
}

/// `pod-0` and `pod-1`, each in the other's view, over `apps`: their
/// listeners are bound first, so each knows the other's address.
async fn pair(ips: [&str; 2], apps: [SocketAddr; 2], extra: &[(&str, &str)]) -> (Sidecar, Sidecar) {
    let (l0, l1) = (bound(ips[0]).await, bound(ips[1]).await);
    let (a0, a1) = (l0.local_addr().unwrap(), l1.local_addr().unwrap());
    let s0 = sidecar(
        "pod-0",
        l0,
        apps[0],
        &format!("pod-1={a1}"),
        extra,
        Clock::System,
        Connector::Tcp,
    )
    .await;
    let s1 = sidecar(
        "pod-1",
        l1,
        apps[1],
        &format!("pod-0={a0}"),
        extra,
        Clock::System,
        Connector::Tcp,
    )
    .await;
    (s0, s1)
}

/// A response read to its end (`Connection: close`), head as it came.
#[derive(Debug)]
struct Reply {
    status: u16,
    head: String,
    body: String,
}

impl Reply {
    fn parse(raw: &[u8]) -> Reply {
        let text = String::from_utf8_lossy(raw).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        Reply {
            status: head.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0),
            head: head.to_string(),
            body: body.to_string(),
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    fn field(&self, name: &str) -> &str {
        self.body
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(name).and_then(|r| r.strip_prefix('=')))
            .unwrap_or("")
    }

    fn sticky_cookie(&self) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            let v = v.trim().strip_prefix("stickyd=")?;
            k.eq_ignore_ascii_case("set-cookie")
                .then(|| v.split(';').next().unwrap().to_string())
        })
    }
}

/// Sends `method path` with `headers` and `body` on a fresh connection,
/// written before this returns; the answer is read by the task returned.
async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[String],
    body: &str,
) -> tokio::task::JoinHandle<Reply> {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n");
    for h in headers {
        req.push_str(&format!("{h}\r\n"));
    }
    if !body.is_empty() {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    req.push_str(body);
    open(addr, req.as_bytes()).await.1
}

/// Writes `first` on a fresh connection, which stays open for more (the
/// half returned); the answer is read to its end by the task returned.
async fn open(addr: SocketAddr, first: &[u8]) -> (OwnedWriteHalf, tokio::task::JoinHandle<Reply>) {
    let (r, w) = connect(addr, first).await;
    (w, read_rest(r, Vec::new()))
}

/// A fresh connection to `addr`, `first` written on it.
async fn connect(addr: SocketAddr, first: &[u8]) -> (OwnedReadHalf, OwnedWriteHalf) {
    let c = TcpStream::connect(addr).await.unwrap();
    // Each write goes out as it is made (no Nagle: a test's clock does
    // not wait for an ACK).
    c.set_nodelay(true).unwrap();
    let (r, mut w) = c.into_split();
    w.write_all(first).await.unwrap();
    (r, w)
}

/// Reads from `r` until what came ends with `end`; returns all that came.
async fn read_until(r: &mut OwnedReadHalf, end: &[u8]) -> Vec<u8> {
    let mut got = Vec::new();
    while !got.ends_with(end) {
        let mut b = [0u8; 1024];
        let n = real_bound("the answer so far", r.read(&mut b)).await.unwrap();
        assert!(n > 0, "ended after {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&b[..n]);
    }
    got
}

/// Reads the rest of an answer, after `got`, to its end, on a task.
fn read_rest(mut r: OwnedReadHalf, got: Vec<u8>) -> tokio::task::JoinHandle<Reply> {
    tokio::spawn(async move {
        let mut raw = got;
        let _ = r.read_to_end(&mut raw).await;
        Reply::parse(&raw)
    })
}

/// One exchange, at the clock's current time.
async fn call(addr: SocketAddr, path: &str, headers: &[String]) -> Reply {
    let answer = send(addr, "GET", path, headers, "").await;
    real_bound(path, answer).await.unwrap()
}

/// An upstream that answers `pod=<name>` at once, except requests for
/// `/slow...`, which it reads and never answers (the connection held open),
/// reporting each.
struct Holder {
    addr: SocketAddr,
    held: mpsc::UnboundedReceiver<String>,
}

impl Holder {
    async fn start(name: &str, ip: &str) -> Holder {
        let l = bound(ip).await;
        let addr = l.local_addr().unwrap();
        let (tx, held) = mpsc::unbounded_channel();
        let name = name.to_string();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let (tx, name) = (tx.clone(), name.clone());
                tokio::spawn(async move {
                    while let Some((head, _)) = common::read_message(&mut s).await {
                        let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
                        if path.starts_with("/slow") {
                            let _ = tx.send(path);
                            std::future::pending::<()>().await;
                        }
                        let body = format!("pod={name}\n");
                        let resp = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len());
                        if s.write_all(resp.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Holder { addr, held }
    }

    async fn holds(&mut self) -> String {
        real_bound("the upstream holds a request", self.held.recv())
            .await
            .unwrap()
    }
}

/// STICKYD_RESPONSE_TIMEOUT=1: a request whose upstream sent no response
/// head is answered 504 when the second ends, not a millisecond before;
/// from the app in this pod and from a peer alike. The next request is
/// served.
#[tokio::test(start_paused = true)]
async fn the_response_timeout_answers_504_as_it_ends_locally_and_from_a_peer() {
    let _still = hold_still();
    let mut app = Holder::start("pod-0", "127.0.173.1").await;
    let mut peer = Holder::start("pod-9", "127.0.173.2").await;
    let s = sidecar(
        "pod-0",
        bound("127.0.173.1").await,
        app.addr,
        &format!("pod-9={}", peer.addr),
        &[("STICKYD_RESPONSE_TIMEOUT", "1")],
        Clock::System,
        Connector::Tcp,
    )
    .await;
    for (cookie, holder, message) in [
        (
            vec![],
            &mut app,
            "the app did not answer in time (STICKYD_RESPONSE_TIMEOUT)",
        ),
        (
            vec![format!("Cookie: {}", cookie_for("pod-9"))],
            &mut peer,
            "the peer pod did not answer in time (STICKYD_RESPONSE_TIMEOUT)",
        ),
    ] {
        let answer = send(s.listen, "GET", "/slow", &cookie, "").await;
        assert_eq!(holder.holds().await, "/slow");
        advance(Duration::from_millis(999)).await;
        settle(&s).await;
        assert!(!answer.is_finished(), "answered before the response timeout ended");
        advance(Duration::from_millis(1)).await;
        let r = real_bound("the 504", answer).await.unwrap();
        assert_eq!(r.status, 504, "{r:?}");
        assert!(r.body.contains(message), "{r:?}");
        let fast = call(s.listen, "/fast", &cookie).await;
        assert_eq!(fast.status, 200, "{fast:?}");
    }
    let m = common::fresh_get(s.admin, "/metrics").await.unwrap().1;
    assert!(m.contains("kind=\"app_timeout\""), "{m}");
    assert!(m.contains("kind=\"peer_timeout\""), "{m}");
}

/// A black-holed peer (its connect never completes): the request is served
/// here and repinned (row 14) when STICKYD_CONNECT_TIMEOUT ends, 0.2 s as
/// set or 1 s by default, its body whole.
#[tokio::test(start_paused = true)]
async fn a_black_holed_peer_repins_as_the_connect_timeout_ends() {
    let _still = hold_still();
    let hole: SocketAddr = "127.0.173.19:9".parse().unwrap();
    let (dials, mut dialled) = mpsc::unbounded_channel();
    let connector = Connector::with(move |addr: SocketAddr| {
        let dials = dials.clone();
        async move {
            if addr == hole {
                let _ = dials.send(addr);
                std::future::pending::<()>().await;
            }
            TcpStream::connect(addr).await
        }
    });
    let app = App::start("pod-0", "127.0.173.11").await;
    let peers = format!("pod-9={hole}");
    let fast = sidecar(
        "pod-0",
        bound("127.0.173.11").await,
        app.addr,
        &peers,
        &[("STICKYD_CONNECT_TIMEOUT", "0.2")],
        Clock::System,
        connector.clone(),
    )
    .await;
    let dflt = sidecar(
        "pod-2",
        bound("127.0.173.12").await,
        app.addr,
        &peers,
        &[],
        Clock::System,
        connector,
    )
    .await;
    let body = "a body that must survive the repin";
    for (s, pod, timeout) in [(&fast, "pod-0", 200), (&dflt, "pod-2", 1000)] {
        let answer = send(
            s.listen,
            "POST",
            "/up",
            &[format!("Cookie: {}", cookie_for("pod-9"))],
            body,
        )
        .await;
        assert_eq!(real_bound("a dial of the hole", dialled.recv()).await, Some(hole));
        advance(Duration::from_millis(timeout - 1)).await;
        settle(s).await;
        assert!(
            !answer.is_finished(),
            "{pod}: answered before the connect timeout ended"
        );
        advance(Duration::from_millis(1)).await;
        let r = real_bound("the repinned answer", answer).await.unwrap();
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.field("pod"), "pod-0", "the app behind both sidecars");
        assert_eq!(r.field("session"), "repinned");
        assert_eq!(r.field("bytes"), body.len().to_string());
        // The new cookie names the pod that repinned it (ID.SID).
        assert_eq!(
            r.sticky_cookie().as_deref().and_then(|c| c.split('.').next()),
            Some(SessionId::for_pod(pod).encode().as_str()),
            "{r:?}"
        );
        let m = common::fresh_get(s.admin, "/metrics").await.unwrap().1;
        assert!(m.contains("kind=\"peer_connect\""), "{m}");
    }
}

/// A WebSocket idle for longer than STICKYD_RESPONSE_TIMEOUT and
/// STICKYD_BODY_READ_TIMEOUT between its messages (1.3 s, then 2.6 s, of
/// 1 s timeouts) is not cut, here or through a peer: an upgraded
/// connection is a stream.
#[tokio::test(start_paused = true)]
async fn a_websocket_outlives_the_response_timeout() {
    let _still = hold_still();
    let app0 = App::start("pod-0", "127.0.173.21").await;
    let app1 = App::start("pod-1", "127.0.173.22").await;
    let extra = [("STICKYD_RESPONSE_TIMEOUT", "1"), ("STICKYD_BODY_READ_TIMEOUT", "1")];
    let (s0, _s1) = pair(["127.0.173.21", "127.0.173.22"], [app0.addr, app1.addr], &extra).await;
    let a0 = s0.listen;
    let mut sockets = Vec::new();
    for (cookie, pod) in [(None, "pod-0"), (Some(cookie_for("pod-1")), "pod-1")] {
        let mut req =
            tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(format!("ws://{a0}/ws"))
                .unwrap();
        if let Some(c) = cookie {
            req.headers_mut().insert("cookie", c.parse().unwrap());
        }
        let (ws, resp) = real_bound("the upgrade", tokio_tungstenite::connect_async(req))
            .await
            .unwrap();
        assert_eq!(resp.status(), 101);
        sockets.push((ws, pod));
    }
    for (round, idle_before) in [(0, 0), (1, 1300), (2, 2600)] {
        advance(Duration::from_millis(idle_before)).await;
        settle(&s0).await;
        for (ws, pod) in sockets.iter_mut() {
            ws.send(Message::text(format!("m{round}"))).await.unwrap();
            let reply = real_bound("a reply", ws.next()).await.expect("open").expect("a frame");
            assert_eq!(reply.into_text().unwrap().as_str(), format!("{pod}:m{round}"));
        }
    }
    for (mut ws, _) in sockets {
        ws.close(None).await.unwrap();
    }
}

/// An app whose response head comes at once and whose body then trickles,
/// six parts 500 ms apart.
async fn trickling_app(ip: &str) -> (SocketAddr, mpsc::UnboundedReceiver<()>) {
    let l = bound(ip).await;
    let addr = l.local_addr().unwrap();
    let (tx, served) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                if common::read_message(&mut s).await.is_none() {
                    return;
                }
                let _ = tx.send(());
                let head = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
                if s.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                for i in 0..6 {
                    if i > 0 {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    let part = format!("part{i}\n");
                    if s.write_all(format!("{:x}\r\n{part}\r\n", part.len()).as_bytes())
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                let _ = s.write_all(b"0\r\n\r\n").await;
            });
        }
    });
    (addr, served)
}

/// A streamed response whose head came at once and whose body takes 2.5 s,
/// two and a half times STICKYD_RESPONSE_TIMEOUT, is not cut, here or
/// through a peer; nor by STICKYD_BODY_READ_TIMEOUT, as its parts come
/// every 500 ms of the 1 s. Each request reaches its app once.
#[tokio::test(start_paused = true)]
async fn a_streamed_response_outlives_the_response_timeout() {
    let _still = hold_still();
    let (app0, mut served0) = trickling_app("127.0.173.31").await;
    let (app1, mut served1) = trickling_app("127.0.173.32").await;
    let extra = [("STICKYD_RESPONSE_TIMEOUT", "1"), ("STICKYD_BODY_READ_TIMEOUT", "1")];
    let (s0, _s1) = pair(["127.0.173.31", "127.0.173.32"], [app0, app1], &extra).await;
    let a0 = s0.listen;
    for (cookie, served) in [
        (vec![], &mut served0),
        (vec![format!("Cookie: {}", cookie_for("pod-1"))], &mut served1),
    ] {
        let start = Instant::now();
        let answer = send(a0, "GET", "/stream", &cookie, "").await;
        real_bound("the app got the request", served.recv()).await.unwrap();
        // Time goes on in steps until the whole body is through.
        for _ in 0..40 {
            if answer.is_finished() {
                break;
            }
            advance(Duration::from_millis(100)).await;
            settle(&s0).await;
        }
        let r = real_bound("the whole body", answer).await.unwrap();
        assert_eq!(r.status, 200, "{r:?}");
        let parts: Vec<&str> = r.body.lines().filter(|l| l.starts_with("part")).collect();
        assert_eq!(parts, ["part0", "part1", "part2", "part3", "part4", "part5"], "{r:?}");
        assert!(r.body.ends_with("0\r\n\r\n"), "the body ended properly: {r:?}");
        assert!(start.elapsed() >= Duration::from_millis(2500), "{:?}", start.elapsed());
        assert!(served.try_recv().is_err(), "a second request reached the app");
    }
}

/// STICKYD_HEADER_READ_TIMEOUT=1 against slowloris: a keep-alive
/// connection's next head, trickling in a line every 200 ms, is cut when
/// the second ends and never reaches the app; a connection that never sends
/// a byte is cut then too; other clients are served meanwhile.
#[tokio::test(start_paused = true)]
async fn the_header_read_timeout_cuts_slow_and_silent_connections_as_it_ends() {
    let _still = hold_still();
    let (app, s) = alone("127.0.173.41", &[("STICKYD_HEADER_READ_TIMEOUT", "1")], Clock::System).await;
    let mut silent = TcpStream::connect(s.listen).await.unwrap();
    let mut slow = TcpStream::connect(s.listen).await.unwrap();
    slow.write_all(b"GET /first HTTP/1.1\r\nHost: t\r\n\r\n").await.unwrap();
    let (head, _) = real_bound("/first", common::read_message(&mut slow)).await.unwrap();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    // The next head starts now, and trickles.
    slow.write_all(b"GET /loris HTTP/1.1\r\nHost: t\r\n").await.unwrap();
    for i in 0..4 {
        advance(Duration::from_millis(200)).await;
        slow.write_all(format!("X-{i}: a\r\n").as_bytes()).await.unwrap();
    }
    advance(Duration::from_millis(199)).await;
    settle(&s).await;
    let open = |c: &TcpStream| {
        let mut b = [0u8; 64];
        matches!(c.try_read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    };
    assert!(open(&slow), "the slow head was cut before the timeout ended");
    assert!(open(&silent), "the silent connection was cut before the timeout ended");
    // Meanwhile, a normal client is served.
    assert_eq!(call(s.listen, "/", &[]).await.status, 200);
    advance(Duration::from_millis(1)).await;
    for (name, c) in [("slow", &mut slow), ("silent", &mut silent)] {
        let mut rest = Vec::new();
        // The end of the connection (a 408 before it is fine).
        let _ = real_bound(name, c.read_to_end(&mut rest)).await;
        let text = String::from_utf8_lossy(&rest);
        assert!(rest.is_empty() || text.starts_with("HTTP/1.1 408"), "{name}: {text}");
    }
    assert!(app.seen().iter().all(|seen| seen.path != "/loris"));
}

/// `ID.SID.CREATED.REFRESHED.MAC` → (created, refreshed), base 36.
fn times(value: &str) -> (u64, u64) {
    let p: Vec<&str> = value.split('.').collect();
    assert_eq!(p.len(), 5, "{value}");
    (
        u64::from_str_radix(p[2], 36).unwrap(),
        u64::from_str_radix(p[3], 36).unwrap(),
    )
}

const K1: &str = "timing-test-key-one-0123456789abcd";
/// The token clock's start, at a whole second.
const T0: u64 = 1_800_000_000;

async fn with_cookie(s: &Sidecar, value: &str) -> Reply {
    call(s.listen, "/", &[format!("Cookie: stickyd={value}")]).await
}

/// STICKYD_SESSION_IDLE_TIMEOUT=4, second by second on the token's clock:
/// no Set-Cookie for 1 s, a refresh (same session, same creation time,
/// `Cache-Control: private`) from 2 s, half the window, and a new session
/// at 4 s; the refreshed cookie lives 4 s from its refresh.
#[tokio::test(start_paused = true)]
async fn the_idle_timeout_refreshes_from_half_the_window_and_expires_at_its_end() {
    let _still = hold_still();
    let extra = [("STICKYD_COOKIE_SECRET", K1), ("STICKYD_SESSION_IDLE_TIMEOUT", "4")];
    let (_app, s) = alone("127.0.173.51", &extra, Clock::following_tokio(T0)).await;
    let first = call(s.listen, "/", &[]).await;
    assert_eq!(first.field("session"), "new");
    let c0 = first.sticky_cookie().unwrap();
    assert_eq!(times(&c0), (T0, T0));

    advance(Duration::from_secs(1)).await;
    let r = with_cookie(&s, &c0).await;
    assert_eq!(
        (r.field("session"), r.sticky_cookie()),
        ("pinned", None),
        "at 1 s: {r:?}"
    );

    advance(Duration::from_secs(1)).await;
    let r = with_cookie(&s, &c0).await;
    assert_eq!(r.field("session"), "pinned", "at 2 s: {r:?}");
    let c1 = r.sticky_cookie().expect("a refresh at half the window");
    assert_eq!(times(&c1), (T0, T0 + 2), "a refresh keeps the creation time");
    assert!(r.header("cache-control").unwrap().contains("private"), "{r:?}");

    advance(Duration::from_secs(1)).await;
    let r = with_cookie(&s, &c0).await;
    assert_eq!(r.field("session"), "pinned", "at 3 s: {r:?}");
    assert!(r.sticky_cookie().is_some(), "past half the window, a refresh: {r:?}");

    advance(Duration::from_secs(1)).await;
    let r = with_cookie(&s, &c0).await;
    assert_eq!(r.field("session"), "new", "at 4 s the first cookie expired: {r:?}");
    assert_eq!(times(&r.sticky_cookie().expect("a new cookie")).0, T0 + 4);
    let r = with_cookie(&s, &c1).await;
    assert_eq!(r.field("session"), "pinned", "refreshed at 2 s, it lives: {r:?}");

    advance(Duration::from_secs(2)).await;
    let r = with_cookie(&s, &c1).await;
    assert_eq!(r.field("session"), "new", "at 6 s the refreshed cookie expired: {r:?}");
}

/// STICKYD_SESSION_MAX_LIFETIME=3 with an idle timeout of 2: a session
/// refreshed every second still ends at 3 s; refreshes never move the
/// creation time.
#[tokio::test(start_paused = true)]
async fn the_max_lifetime_ends_a_session_that_keeps_refreshing() {
    let _still = hold_still();
    let extra = [
        ("STICKYD_COOKIE_SECRET", K1),
        ("STICKYD_SESSION_MAX_LIFETIME", "3"),
        ("STICKYD_SESSION_IDLE_TIMEOUT", "2"),
    ];
    let (_app, s) = alone("127.0.173.61", &extra, Clock::following_tokio(T0)).await;
    let mut cookie = call(s.listen, "/", &[]).await.sticky_cookie().unwrap();
    for at in 1..=2 {
        advance(Duration::from_secs(1)).await;
        let r = with_cookie(&s, &cookie).await;
        assert_eq!(r.field("session"), "pinned", "at {at} s: {r:?}");
        cookie = r.sticky_cookie().expect("a refresh every second");
        assert_eq!(times(&cookie), (T0, T0 + at));
    }
    advance(Duration::from_secs(1)).await;
    let r = with_cookie(&s, &cookie).await;
    assert_eq!(r.field("session"), "new", "at 3 s the session ended: {r:?}");
    assert_eq!(times(&r.sticky_cookie().unwrap()).0, T0 + 3);
}

/// What the body-timeout app saw: a request's path, and what became of it.
type Events = mpsc::UnboundedReceiver<(String, String)>;

/// An app of raw bytes for the body timeouts, reporting what becomes of
/// each request. By path:
/// - `/upload`: reads a Content-Length body (after a 100 to `Expect:
///   100-continue`), reporting `reading`, then `got N` and answering
///   `got=N`, or `closed after N` when the connection ends first;
/// - `/stall`: a head of Content-Length 100 and 10 bytes of it, then
///   nothing; `/stall-chunked`, the same chunked; each reports `closed`
///   when its connection ends;
/// - `/sse`, `/grpc`: a stream of that type, close-delimited: `part1`, 3 s
///   of silence, `part2`, the end.
async fn body_app(ip: &str) -> (RawApp, Events) {
    let (tx, events) = mpsc::unbounded_channel();
    let app = RawApp::start(ip, move |mut s| {
        let tx = tx.clone();
        async move {
            let mut buf = Vec::new();
            let Some(head) = common::read_head(&mut s, &mut buf).await else {
                return;
            };
            let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
            let report = |what: String| {
                let _ = tx.send((path.clone(), what));
            };
            // Answer, then close; or (a stalled response) answer and hold.
            let (answer, hold) = match path.as_str() {
                "/upload" => {
                    if head.contains("expect: 100-continue") {
                        let _ = s.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await;
                    }
                    report("reading".into());
                    let len = common::content_length(&head);
                    while buf.len() < len {
                        if !matches!(common::read_more(&mut s, &mut buf).await, Some(1..)) {
                            report(format!("closed after {}", buf.len()));
                            return;
                        }
                    }
                    report(format!("got {len}"));
                    let body = format!("got={len}\n");
                    let head = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    (head + &body, false)
                }
                "/stall" => ("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789".into(), true),
                "/stall-chunked" => (
                    "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\na\r\n0123456789\r\n".into(),
                    true,
                ),
                "/sse" | "/grpc" => {
                    let ct = if path == "/sse" {
                        "text/event-stream"
                    } else {
                        "application/grpc"
                    };
                    let head = format!("HTTP/1.1 200 OK\r\nContent-Type: {ct}\r\nConnection: close\r\n\r\npart1\n");
                    if s.write_all(head.as_bytes()).await.is_err() {
                        return;
                    }
                    report("part1".into());
                    tokio::time::sleep(Duration::from_secs(3)).await;
                    let _ = s.write_all(b"part2\n").await;
                    let _ = s.shutdown().await;
                    return;
                }
                _ => return,
            };
            if s.write_all(answer.as_bytes()).await.is_err() || !hold {
                return;
            }
            // A stalled response: hold the connection until it is closed.
            while matches!(common::read_more(&mut s, &mut buf).await, Some(1..)) {}
            report("closed".into());
        }
    })
    .await;
    (app, events)
}

/// `pod-0` and `pod-1` on `ips`, each in the other's view, over
/// [`body_app`]s that report to the events returned (`pod-0`'s first),
/// with STICKYD_BODY_READ_TIMEOUT=1.
async fn body_pods(ips: [&str; 2]) -> (Sidecar, Sidecar, [Events; 2], [RawApp; 2]) {
    let (app0, events0) = body_app(ips[0]).await;
    let (app1, events1) = body_app(ips[1]).await;
    let extra = [("STICKYD_BODY_READ_TIMEOUT", "1")];
    let (s0, s1) = pair(ips, [app0.addr, app1.addr], &extra).await;
    (s0, s1, [events0, events1], [app0, app1])
}

/// The next thing the body app reports.
async fn event(events: &mut Events) -> (String, String) {
    real_bound("the app's report", events.recv())
        .await
        .expect("the app runs")
}

/// `stickyd_body_timeouts_total{direction}` of `s`.
async fn body_timeouts(s: &Sidecar, direction: &str) -> u64 {
    let m = common::fresh_get(s.admin, "/metrics").await.unwrap().1;
    let line = format!("stickyd_body_timeouts_total{{direction=\"{direction}\"}} ");
    m.lines()
        .find_map(|l| l.strip_prefix(line.as_str()))
        .map_or(0, |v| v.trim().parse().unwrap())
}

/// Moves the clock to 1 ms short of the 1 s limit (once `sidecars` have
/// acted on what came before), checks that `answer` has not ended, then
/// to the limit.
async fn to_the_limit<T>(sidecars: [&Sidecar; 2], answer: &tokio::task::JoinHandle<T>, what: &str) {
    for s in sidecars {
        settle(s).await;
    }
    advance(Duration::from_millis(999)).await;
    for s in sidecars {
        settle(s).await;
    }
    assert!(!answer.is_finished(), "{what}: cut before the timeout ended");
    advance(Duration::from_millis(1)).await;
}

/// Advances the clock in steps of 100 ms until `answer` has ended (at most
/// `limit`), letting `s` act after each.
async fn advance_until<T>(s: &Sidecar, answer: &tokio::task::JoinHandle<T>, limit: Duration) {
    let mut waited = Duration::ZERO;
    while !answer.is_finished() && waited < limit {
        advance(Duration::from_millis(100)).await;
        settle(s).await;
        waited += Duration::from_millis(100);
    }
}

/// STICKYD_BODY_READ_TIMEOUT=1 on the HTTP/1.1 path: a request body that
/// sent 10 of its 100 bytes gets 408 when the second ends, not a
/// millisecond before, and the app's connection is closed; here, through a
/// peer, and after a 100 Continue. An upload whose bytes come every 600 ms
/// is never cut, nor a gRPC request silent for 3 s. Counted by direction.
#[tokio::test(start_paused = true)]
async fn a_request_body_that_stalls_gets_408_as_the_body_read_timeout_ends() {
    let _still = hold_still();
    let (s0, s1, mut events, _apps) = body_pods(["127.0.174.1", "127.0.174.2"]).await;
    let to_peer = format!("Cookie: {}\r\n", cookie_for("pod-1"));
    for (extra_head, peer) in [
        ("", false),
        (to_peer.as_str(), true),
        ("Expect: 100-continue\r\n", false),
    ] {
        let events = &mut events[usize::from(peer)];
        let continues = !extra_head.is_empty() && extra_head.starts_with("Expect");
        let sent = if continues { "" } else { "0123456789" };
        let head = format!("POST /upload HTTP/1.1\r\nHost: t\r\n{extra_head}Content-Length: 100\r\n\r\n{sent}");
        let (mut r, _w) = connect(s0.listen, head.as_bytes()).await;
        assert_eq!(event(events).await, ("/upload".into(), "reading".into()));
        // The 100 has come through: the body's wait has begun.
        let got = if continues {
            read_until(&mut r, b"\r\n\r\n").await
        } else {
            Vec::new()
        };
        let answer = read_rest(r, got);
        to_the_limit([&s0, &s1], &answer, extra_head).await;
        let r = real_bound("the 408", answer).await.unwrap();
        // After a 100 Continue, the 408 follows it.
        let (status, text) = if continues {
            assert_eq!(r.status, 100, "{r:?}");
            (r.body.get(9..12).unwrap_or("").to_string(), r.body.clone())
        } else {
            (r.status.to_string(), format!("{}\r\n\r\n{}", r.head, r.body))
        };
        assert_eq!(status, "408", "{extra_head:?}: {r:?}");
        assert!(text.contains("STICKYD_BODY_READ_TIMEOUT"), "{r:?}");
        assert!(text.to_ascii_lowercase().contains("connection: close"), "{r:?}");
        let closed = format!("closed after {}", sent.len());
        assert_eq!(event(events).await, ("/upload".into(), closed), "{extra_head:?}");
    }
    assert_eq!(body_timeouts(&s0, "request").await, 3);
    assert_eq!(body_timeouts(&s0, "response").await, 0);

    // Slow but steady: 3 bytes every 600 ms, 5.4 s in all.
    let head = b"POST /upload HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: 30\r\n\r\n";
    let (mut w, answer) = open(s0.listen, head).await;
    assert_eq!(event(&mut events[0]).await.1, "reading");
    for _ in 0..10 {
        advance(Duration::from_millis(600)).await;
        settle(&s0).await;
        assert!(!answer.is_finished());
        w.write_all(b"abc").await.unwrap();
        // Taken in before the clock moves on.
        settle(&s0).await;
    }
    let r = real_bound("the slow upload's answer", answer).await.unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "got=30\n"), "{r:?}");
    assert_eq!(event(&mut events[0]).await.1, "got 30");

    // A gRPC request is a stream: silent for 3 s, not cut.
    let head = "POST /upload HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Type: application/grpc\r\n\
                Content-Length: 20\r\n\r\n0123456789";
    let (mut w, answer) = open(s0.listen, head.as_bytes()).await;
    assert_eq!(event(&mut events[0]).await.1, "reading");
    advance(Duration::from_secs(3)).await;
    settle(&s0).await;
    assert!(!answer.is_finished(), "a gRPC request was cut");
    w.write_all(b"0123456789").await.unwrap();
    let r = real_bound("the gRPC request's answer", answer).await.unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "got=20\n"), "{r:?}");
    assert_eq!(body_timeouts(&s0, "request").await, 3);
}

/// STICKYD_BODY_READ_TIMEOUT=1 on the HTTP/1.1 path: a response body that
/// sent 10 of its 100 bytes, or a chunk and then nothing (decoded for an
/// HTTP/1.0 client), ends the client's connection when the second ends,
/// not a millisecond before, and the app's connection is closed; here and
/// through a peer. Server-Sent Events and a gRPC response silent for 3 s
/// are not cut.
#[tokio::test(start_paused = true)]
async fn a_response_body_that_stalls_closes_both_connections_as_the_body_read_timeout_ends() {
    let _still = hold_still();
    let (s0, s1, mut events, _apps) = body_pods(["127.0.174.11", "127.0.174.12"]).await;
    let to_peer = format!("Cookie: {}\r\n", cookie_for("pod-1"));
    for (request, peer) in [
        ("GET /stall HTTP/1.1\r\nHost: t\r\n\r\n".to_string(), false),
        (format!("GET /stall HTTP/1.1\r\nHost: t\r\n{to_peer}\r\n"), true),
        ("GET /stall-chunked HTTP/1.0\r\nHost: t\r\n\r\n".to_string(), false),
    ] {
        let events = &mut events[usize::from(peer)];
        let (mut r, _w) = connect(s0.listen, request.as_bytes()).await;
        // The part sent has come through: the wait for the rest has begun.
        let got = read_until(&mut r, b"0123456789").await;
        let answer = read_rest(r, got);
        to_the_limit([&s0, &s1], &answer, &request).await;
        let r = real_bound("the end of the connection", answer).await.unwrap();
        assert_eq!((r.status, r.body.as_str()), (200, "0123456789"), "{request:?}: {r:?}");
        assert_eq!(event(events).await.1, "closed", "{request:?}");
    }
    assert_eq!(body_timeouts(&s0, "response").await, 3);
    assert_eq!(body_timeouts(&s0, "request").await, 0);

    for path in ["/sse", "/grpc"] {
        let answer = send(s0.listen, "GET", path, &[], "").await;
        assert_eq!(event(&mut events[0]).await, (path.into(), "part1".into()));
        advance_until(&s0, &answer, Duration::from_secs(10)).await;
        let r = real_bound("the whole stream", answer).await.unwrap();
        assert_eq!((r.status, r.body.as_str()), (200, "part1\npart2\n"), "{path}: {r:?}");
    }
    assert_eq!(body_timeouts(&s0, "response").await, 3);
}

/// The same over HTTP/2 (hyper's path), here and through a peer's sidecar:
/// a request body that stalls gets 408 on its stream when the second ends,
/// not before, and the app's connection is closed; a response body that
/// stalls resets its stream. A steady upload, a gRPC request silent for
/// 3 s and Server-Sent Events are not cut.
#[tokio::test(start_paused = true)]
async fn over_http2_a_stalled_request_gets_408_and_a_stalled_response_is_reset() {
    let _still = hold_still();
    let (s0, s1, mut events, _apps) = body_pods(["127.0.174.21", "127.0.174.22"]).await;
    let mut h2 = common::h2c(s0.listen).await;
    let post = |cookie: Option<String>, content_type: &str, len: usize| {
        let (tx, body) = common::fed_body();
        let mut b = http::Request::post("/upload")
            .header("host", "t")
            .header("content-length", len)
            .header("content-type", content_type);
        if let Some(c) = cookie {
            b = b.header("cookie", c);
        }
        (tx, b.body(body).unwrap())
    };
    for (cookie, pod) in [(None, 0), (Some(cookie_for("pod-1")), 1)] {
        let events = &mut events[pod];
        let (tx, req) = post(cookie, "text/plain", 100);
        tx.send(Frame::data(Bytes::from_static(b"0123456789"))).unwrap();
        let answer = tokio::spawn(h2.send_request(req));
        assert_eq!(event(events).await.1, "reading");
        to_the_limit([&s0, &s1], &answer, "over HTTP/2").await;
        let resp = real_bound("the 408", answer).await.unwrap().unwrap();
        assert_eq!(resp.status(), 408);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert!(String::from_utf8_lossy(&body).contains("STICKYD_BODY_READ_TIMEOUT"));
        assert_eq!(event(events).await.1, "closed after 10");
        drop(tx);
    }
    assert_eq!(body_timeouts(&s0, "request").await, 2);

    // A stalled response: its stream is reset, the app's connection closed.
    let req = http::Request::get("/stall")
        .header("host", "t")
        .body(common::empty())
        .unwrap();
    let resp = real_bound("the head", h2.send_request(req)).await.unwrap();
    let mut body = resp.into_body();
    let first = real_bound("a frame", body.frame()).await.unwrap().unwrap();
    assert_eq!(first.into_data().unwrap(), "0123456789");
    let next = tokio::spawn(async move { body.frame().await.map(|f| f.is_err()) });
    to_the_limit([&s0, &s1], &next, "a response over HTTP/2").await;
    assert_eq!(real_bound("the reset", next).await.unwrap(), Some(true));
    assert_eq!(event(&mut events[0]).await, ("/stall".into(), "closed".into()));
    assert_eq!(body_timeouts(&s0, "response").await, 1);

    // Steady: 3 bytes every 600 ms.
    let (tx, req) = post(None, "text/plain", 30);
    let answer = tokio::spawn(h2.send_request(req));
    assert_eq!(event(&mut events[0]).await.1, "reading");
    for _ in 0..10 {
        advance(Duration::from_millis(600)).await;
        settle(&s0).await;
        tx.send(Frame::data(Bytes::from_static(b"abc"))).unwrap();
        settle(&s0).await;
    }
    let resp = real_bound("the slow upload's answer", answer).await.unwrap().unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "got=30\n");
    assert_eq!(event(&mut events[0]).await.1, "got 30");

    // A gRPC request, silent for 3 s.
    let (tx, req) = post(None, "application/grpc", 20);
    tx.send(Frame::data(Bytes::from_static(b"0123456789"))).unwrap();
    let answer = tokio::spawn(h2.send_request(req));
    assert_eq!(event(&mut events[0]).await.1, "reading");
    advance(Duration::from_secs(3)).await;
    settle(&s0).await;
    assert!(!answer.is_finished(), "a gRPC request was cut");
    tx.send(Frame::data(Bytes::from_static(b"0123456789"))).unwrap();
    let resp = real_bound("the gRPC request's answer", answer).await.unwrap().unwrap();
    assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "got=20\n");
    assert_eq!(event(&mut events[0]).await.1, "got 20");

    // Server-Sent Events, silent for 3 s.
    let req = http::Request::get("/sse")
        .header("host", "t")
        .body(common::empty())
        .unwrap();
    let resp = real_bound("the stream's head", h2.send_request(req)).await.unwrap();
    let answer = tokio::spawn(resp.into_body().collect());
    assert_eq!(event(&mut events[0]).await.1, "part1");
    advance_until(&s0, &answer, Duration::from_secs(10)).await;
    let all = real_bound("the whole stream", answer)
        .await
        .unwrap()
        .unwrap()
        .to_bytes();
    assert_eq!(all, "part1\npart2\n");
    assert_eq!(body_timeouts(&s0, "request").await, 2);
    assert_eq!(body_timeouts(&s0, "response").await, 1);
}
