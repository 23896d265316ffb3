//! Faults get a defined outcome, proven on real processes: the app down, a
//! peer dying dark, mid-response or overloaded, SIGTERM's drain, and a
//! rolling restart with zero failed requests. (The slow app, the
//! black-holed peer and long-lived streams against the timeouts are
//! durations: `timing.rs`, on tokio's paused clock.)
//!
//! Addresses: 127.0.110.x to 127.0.115.x.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;
use http_body_util::BodyExt;
use stickyd::affinity::SessionId;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Reads one request head (and a Content-Length body) from `s`. Returns
/// false when the connection ended first.
async fn read_request(s: &mut TcpStream) -> bool {
    read_message(s).await.is_some()
}

/// A hand-written server on `ip`: for every connection, reads one request
/// and runs `respond` on the stream. Counts the requests it read.
struct Fake {
    addr: SocketAddr,
    requests: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Fake {
    async fn start<F, Fut>(ip: &str, respond: F) -> Fake
    where
        F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let l = TcpListener::bind((ip, 0)).await.unwrap();
        let addr = l.local_addr().unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let r2 = requests.clone();
        let respond = Arc::new(respond);
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = l.accept().await else { continue };
                let r = r2.clone();
                let respond = respond.clone();
                tokio::spawn(async move {
                    if read_request(&mut s).await {
                        r.fetch_add(1, Ordering::SeqCst);
                        respond(s).await;
                    }
                });
            }
        });
        Fake { addr, requests, task }
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

/// A response whose head is sent at once and whose body then trickles:
/// `parts` chunks `gap` apart.
async fn trickle(mut s: TcpStream, parts: usize, gap: Duration) {
    let head = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
    if s.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    for i in 0..parts {
        let part = format!("part{i}\n");
        let chunk = format!("{:x}\r\n{part}\r\n", part.len());
        if s.write_all(chunk.as_bytes()).await.is_err() {
            return;
        }
        tokio::time::sleep(gap).await;
    }
    let _ = s.write_all(b"0\r\n\r\n").await;
}

fn plain_client() -> hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, Body> {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http()
}

/// Polls `/readyz` until it answers `want`.
async fn wait_ready(s: &Stickyd, want: u16) {
    let what = format!("{} /readyz answering {want}", s.pod);
    eventually(Duration::from_secs(10), &what, || async {
        let r = get(&format!("http://{}/readyz", s.admin), &[]).await;
        (matches!(&r, Ok(r) if r.status == want), format!("{r:?}"))
    })
    .await;
}

/// Waits for the process to exit; returns its status.
async fn wait_exit(s: &mut Stickyd, within: Duration) -> std::process::ExitStatus {
    let what = format!("{} exiting", s.pod);
    let status = eventually(within, &what, || {
        let st = s.child.try_wait().unwrap();
        std::future::ready((st.is_some(), st))
    })
    .await;
    status.unwrap()
}

/// The app is down (never started, or gone): 502 with a body saying stickyd
/// could not reach the app, and /readyz fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_down_is_502_with_a_reason_and_readyz_fails() {
    // Never started: nothing listens on the upstream port.
    let nothing = addr_on("127.0.110.2");
    let listen = addr_on("127.0.110.1");
    let s = Stickyd::start(
        "pod-0",
        listen,
        nothing,
        &[("STICKYD_ENDPOINTS", format!("static:pod-0={listen}"))],
    )
    .await;
    let r = get(&format!("http://{listen}/"), &[]).await.unwrap();
    assert_eq!(r.status, 502, "{r:?}");
    assert_eq!(r.body, "stickyd: could not reach the app in this pod\n");
    assert_eq!(r.headers.get("cache-control").unwrap(), "no-store");
    wait_ready(&s, 503).await;
    let ready = get(&format!("http://{}/readyz", s.admin), &[]).await.unwrap();
    assert!(ready.body.contains("app"), "{ready:?}");
    assert!(s.metrics().await.contains("kind=\"app_connect\""));

    // Up, then gone.
    let mut app = KillableApp::start("pod-1", "127.0.110.3");
    let listen = addr_on("127.0.110.3");
    let s = Stickyd::start(
        "pod-1",
        listen,
        app.addr,
        &[("STICKYD_ENDPOINTS", format!("static:pod-1={listen}"))],
    )
    .await;
    wait_ready(&s, 200).await;
    assert_eq!(get(&format!("http://{listen}/"), &[]).await.unwrap().status, 200);
    app.kill();
    // The pooled connection to the app dies with it: the next request may
    // be the one that finds out (502 either way), never a hang.
    let r = eventually(Duration::from_secs(5), "502 once the app is gone", || async {
        let r = get(&format!("http://{listen}/"), &[]).await.unwrap();
        (r.status == 502, r)
    })
    .await;
    assert!(r.body.contains("could not reach the app"), "{r:?}");
    wait_ready(&s, 503).await;
}

/// A peer that died dark (no RST: its requests are never answered) leaves
/// the view once the control plane notices. Its requests in flight do not
/// wait out STICKYD_RESPONSE_TIMEOUT: a GET that got no byte back is served
/// here and repinned (as in the keep-alive close race), a POST, which the
/// peer may have acted on, gets 502 at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_flight_to_a_peer_that_leaves_the_view_are_not_left_hanging() {
    // Reads the request, then never answers, holding the connection open.
    let dark = Fake::start("127.0.114.9", |s: TcpStream| async move {
        tokio::time::sleep(Duration::from_secs(120)).await;
        drop(s);
    })
    .await;
    let app = App::start("pod-0", "127.0.114.1").await;
    let listen = addr_on("127.0.114.1");
    let peers = temp_path("peers");
    write_peers(&peers, &[("pod-0", listen), ("pod-9", dark.addr)]);
    let s = Stickyd::start(
        "pod-0",
        listen,
        app.addr,
        &[("STICKYD_ENDPOINTS", format!("file:{}", peers.display()))],
    )
    .await;
    wait_for_view(&s, &["pod-0", "pod-9"]).await;
    let url = format!("http://{listen}/work");
    let get = tokio::spawn({
        let url = url.clone();
        async move { request("GET", &url, &[("cookie", &cookie_for("pod-9"))], empty()).await }
    });
    let post = tokio::spawn({
        let url = url.clone();
        async move { request("POST", &url, &[("cookie", &cookie_for("pod-9"))], full("order #1")).await }
    });
    eventually(Duration::from_secs(10), "the requests reaching the peer", || {
        std::future::ready((dark.requests() >= 2, dark.requests()))
    })
    .await;
    assert!(!get.is_finished() && !post.is_finished());
    // The control plane notices: pod-9 leaves the view.
    write_peers(&peers, &[("pod-0", listen)]);
    let r = get.await.unwrap().expect("the GET is answered");
    assert_eq!(
        (r.status, r.pod(), r.field("session")),
        (200, "pod-0", "repinned"),
        "{r:?} {}",
        s.log_text()
    );
    assert!(r
        .sticky_cookie()
        .is_some_and(|c| c.starts_with(&SessionId::for_pod("pod-0").encode())));
    let r = post.await.unwrap().expect("the POST is answered");
    assert_eq!(r.status, 502, "{r:?}");
    assert!(r.body.contains("went away"), "{r:?} {}", s.log_text());
    // The POST was never replayed here.
    assert!(app.seen().iter().all(|seen| seen.method == "GET"), "{:?}", app.seen());
    let m = s.metrics().await;
    assert!(m.contains("kind=\"peer_gone\""), "{m}");
}

/// A peer dies in the middle of its response body: the client sees the
/// connection end (an incomplete body), never a hang; the request is not
/// replayed anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_dying_mid_response_ends_the_client_connection() {
    // The peer sends the head and part of a 100 kB body, then closes.
    let peer = Fake::start("127.0.113.9", |mut s: TcpStream| async move {
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n").await;
        let _ = s.write_all(&[b'x'; 1000]).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    })
    .await;
    // A second one that dies before its head: 502, never replayed.
    let early = Fake::start("127.0.113.8", |s: TcpStream| async move { drop(s) }).await;
    let app = App::start("pod-0", "127.0.113.1").await;
    let listen = addr_on("127.0.113.1");
    let _s = Stickyd::start(
        "pod-0",
        listen,
        app.addr,
        &[(
            "STICKYD_ENDPOINTS",
            format!("static:pod-0={listen},pod-9={},pod-8={}", peer.addr, early.addr),
        )],
    )
    .await;
    let client = plain_client();
    let req = http::Request::get(format!("http://{listen}/big"))
        .header("cookie", cookie_for("pod-9"))
        .body(empty())
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(5), client.request(req))
        .await
        .expect("head in time")
        .expect("head");
    assert_eq!(resp.status(), 200);
    let body = tokio::time::timeout(Duration::from_secs(5), resp.into_body().collect())
        .await
        .expect("the body ends: no hang");
    assert!(body.is_err(), "a truncated body must not look complete");

    let r = request(
        "POST",
        &format!("http://{listen}/once"),
        &[("cookie", &cookie_for("pod-8"))],
        full("once"),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 502, "{r:?}");
    assert_eq!(peer.requests(), 1);
    assert_eq!(early.requests(), 1, "never replayed");
    assert!(app.seen().is_empty(), "never replayed locally");
}

/// A real peer sidecar killed (SIGKILL) while its response streams through
/// another sidecar: the client's body ends with an error, never a hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_peer_sidecar_mid_stream_ends_the_client_connection() {
    let app0 = App::start("pod-0", "127.0.113.11").await;
    let app1 = Fake::start("127.0.113.12", |s| trickle(s, 40, Duration::from_millis(100))).await;
    let l0 = addr_on("127.0.113.11");
    let l1 = addr_on("127.0.113.12");
    let env = [("STICKYD_ENDPOINTS", format!("static:pod-0={l0},pod-1={l1}"))];
    let _s0 = Stickyd::start("pod-0", l0, app0.addr, &env).await;
    let mut s1 = Stickyd::start("pod-1", l1, app1.addr, &env).await;
    let client = plain_client();
    let req = http::Request::get(format!("http://{l0}/stream"))
        .header("cookie", cookie_for("pod-1"))
        .body(empty())
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(5), client.request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let first = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(first.data_ref().is_some());
    s1.child.kill().unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match body.frame().await {
                None => return Ok(()),
                Some(Err(e)) => return Err(e),
                Some(Ok(_)) => {}
            }
        }
    })
    .await
    .expect("the body ends: no hang");
    assert!(outcome.is_err(), "a cut stream must not end like a complete one");
    assert!(app0.seen().is_empty(), "never replayed locally");
    // pod-0 keeps serving.
    assert_eq!(get(&format!("http://{l0}/"), &[]).await.unwrap().status, 200);
}

/// An overloaded peer that answers 503 only once all eight requests are in
/// (they go out together, none waits for another): stickyd passes each 503
/// on, makes exactly one attempt per request (no retry storm), replays
/// nothing locally.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overloaded_peer_503_is_passed_on_once() {
    let all_in = Arc::new(tokio::sync::Barrier::new(8));
    let peer = Fake::start("127.0.114.19", move |mut s: TcpStream| {
        let all_in = all_in.clone();
        async move {
            all_in.wait().await;
            let body = "overloaded\n";
            let head = format!(
                "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = s.write_all(head.as_bytes()).await;
        }
    })
    .await;
    let app = App::start("pod-0", "127.0.114.11").await;
    let listen = addr_on("127.0.114.11");
    let s = Stickyd::start(
        "pod-0",
        listen,
        app.addr,
        &[(
            "STICKYD_ENDPOINTS",
            format!("static:pod-0={listen},pod-9={}", peer.addr),
        )],
    )
    .await;
    let cookie = cookie_for("pod-9");
    let results = futures_util::future::join_all((0..8).map(|i| {
        let url = format!("http://{listen}/r{i}");
        let cookie = cookie.clone();
        async move {
            if i % 2 == 0 {
                request("POST", &url, &[("cookie", &cookie)], full(format!("body-{i}"))).await
            } else {
                get(&url, &[("cookie", &cookie)]).await
            }
        }
    }))
    .await;
    for r in &results {
        let r = r.as_ref().unwrap();
        assert_eq!(r.status, 503, "{r:?}");
        assert_eq!(r.body, "overloaded\n");
        assert_eq!(r.headers.get("retry-after").unwrap(), "1");
        assert!(r.sticky_cookie().is_none(), "a passed-on 503 does not repin");
    }
    assert_eq!(peer.requests(), 8, "exactly one attempt per request");
    assert!(app.seen().is_empty(), "nothing replayed locally");
    let m = s.metrics().await;
    assert!(!m.contains("kind=\"peer_io\""), "{m}");
}

/// Zero-loss rolling restart: three pods behind a random load balancer,
/// a steady stream of sessions, each pod restarted in turn the way
/// Kubernetes does it: out of the load balancer and out of its peers' views
/// (its endpoint leaves the Service), SIGTERM, exit 0, a new sidecar with
/// the same name and address, back in once ready. No request fails, and no
/// session pinned to a pod that stays moves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_loses_no_request_and_moves_no_staying_session() {
    let failures = rolling_restart(false).await;
    assert!(failures.is_empty(), "{} failed requests: {failures:?}", failures.len());
}

/// The restart, with peers either dropping the restarting pod from their
/// views before its SIGTERM (`keep_in_view` false), or keeping it listed
/// while it drains and stops (true: its pinned sessions are forwarded to it
/// until it stops accepting, as with a terminating endpoint). Returns the
/// failed requests; asserts everything else.
async fn rolling_restart(keep_in_view: bool) -> Vec<String> {
    const SESSIONS: usize = 12;
    let peers_file = temp_path("drain-peers");
    let names = ["pod-0", "pod-1", "pod-2"];
    // Each variant on addresses of its own: they run at once.
    let base = if keep_in_view { 30 } else { 0 };
    let addrs: Vec<SocketAddr> = (1..=3).map(|i| addr_on(&format!("127.0.115.{}", base + i))).collect();
    let list: Vec<(&str, SocketAddr)> = names.iter().copied().zip(addrs.iter().copied()).collect();
    write_peers(&peers_file, &list);
    let env = vec![
        ("STICKYD_ENDPOINTS", format!("file:{}", peers_file.display())),
        ("STICKYD_DRAIN_SECONDS", "1".to_string()),
        ("STICKYD_DRAIN_TIMEOUT", "5".to_string()),
    ];
    let mut apps = Vec::new();
    let mut sidecars = Vec::new();
    for (i, name) in names.iter().enumerate() {
        // The app on an address of its own: its port never collides with the
        // sidecar's port picked in advance.
        let app = App::start(name, &format!("127.0.115.{}", 101 + base + i)).await;
        sidecars.push(Stickyd::start(name, addrs[i], app.addr, &env).await);
        apps.push(app);
    }
    for s in &sidecars {
        wait_for_view(s, &names).await;
    }
    let lb = RandomLb::start(addrs.clone()).await;
    let url = format!("http://{}/", lb.addr);

    // (session, phase, pod) for every request; failures with their phase.
    let phase = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let log: Arc<Mutex<Vec<(usize, usize, String)>>> = Arc::default();
    let failures: Arc<Mutex<Vec<String>>> = Arc::default();
    let workers: Vec<_> = (0..SESSIONS)
        .map(|i| {
            let (phase, stop, log, failures, url) =
                (phase.clone(), stop.clone(), log.clone(), failures.clone(), url.clone());
            tokio::spawn(async move {
                let mut s = Session::default();
                for _ in 0..5000 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let p = phase.load(Ordering::Relaxed);
                    match s.get(&url).await {
                        Ok(r) if r.status == 200 => {
                            log.lock().unwrap().push((i, p, r.pod().to_string()));
                        }
                        Ok(r) => failures
                            .lock()
                            .unwrap()
                            .push(format!("phase {p}: {} {}", r.status, r.body)),
                        Err(e) => failures.lock().unwrap().push(format!("phase {p}: {e}")),
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
        })
        .collect();
    // Every session has its pod before the first restart.
    eventually(Duration::from_secs(10), "every session started", || {
        let started: std::collections::HashSet<usize> = log.lock().unwrap().iter().map(|e| e.0).collect();
        std::future::ready((started.len() >= SESSIONS, started.len()))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut drain_times = Vec::new();
    let mut old_logs = Vec::new();
    for i in 0..3 {
        phase.store(i + 1, Ordering::Relaxed);
        // Out of the load balancer first, as endpoints leave a Service.
        lb.set_backends(
            addrs
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, a)| *a)
                .collect(),
        );
        let staying: Vec<(&str, SocketAddr)> = list.iter().copied().filter(|(n, _)| *n != names[i]).collect();
        if !keep_in_view {
            write_peers(&peers_file, &staying);
            let staying_names: Vec<&str> = staying.iter().map(|(n, _)| *n).collect();
            for (j, s) in sidecars.iter().enumerate() {
                if j != i {
                    wait_for_view(s, &staying_names).await;
                }
            }
        }
        let t = Instant::now();
        sidecars[i].signal("TERM");
        let status = wait_exit(&mut sidecars[i], Duration::from_secs(15)).await;
        assert!(status.success(), "{}: {status:?}", names[i]);
        drain_times.push(t.elapsed());
        // The replacement: same name, same address.
        let fresh = Stickyd::start(names[i], addrs[i], apps[i].addr, &env).await;
        write_peers(&peers_file, &list);
        for s in sidecars.iter().chain([&fresh]) {
            if s.child.id() != sidecars[i].child.id() {
                wait_for_view(s, &names).await;
            }
        }
        wait_ready(&fresh, 200).await;
        old_logs.push(sidecars[i].log.clone());
        sidecars[i] = fresh;
        lb.set_backends(addrs.clone());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    phase.store(4, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        tokio::time::timeout(Duration::from_secs(30), w).await.unwrap().unwrap();
    }

    let failures = failures.lock().unwrap().clone();
    let log = log.lock().unwrap().clone();
    eprintln!(
        "rolling restart: {} requests, {} failed, drains took {drain_times:?}",
        log.len(),
        failures.len()
    );
    if !failures.is_empty() {
        let logs = old_logs.iter().chain(sidecars.iter().map(|s| &s.log));
        for l in logs {
            let text = std::fs::read_to_string(l).unwrap_or_default();
            for line in text.lines().filter(|l| {
                l.contains("WARN")
                    || l.contains("ERROR")
                    || l.contains("stopped accepting")
                    || l.contains("SIGTERM")
                    || l.contains("all connections")
            }) {
                eprintln!("{}: {line}", l.display());
            }
        }
    }
    assert!(log.len() > 300, "too few requests to mean anything: {}", log.len());
    // A session pinned to a pod that stays during a phase never moves in it.
    for s in 0..SESSIONS {
        let mine: Vec<&(usize, usize, String)> = log.iter().filter(|e| e.0 == s).collect();
        for p in 1..=3 {
            let restarting = names[p - 1];
            let Some(before) = mine.iter().rev().find(|e| e.1 < p).map(|e| e.2.clone()) else {
                continue;
            };
            if before == restarting {
                continue;
            }
            for e in mine.iter().filter(|e| e.1 == p) {
                assert_eq!(e.2, before, "session {s} moved while {restarting} restarted");
            }
        }
    }
    let per_phase: Vec<usize> = (0..=4).map(|p| log.iter().filter(|e| e.1 == p).count()).collect();
    assert!(per_phase[1..=3].iter().all(|n| *n > 20), "{per_phase:?}");
    failures
}

/// On SIGTERM, while the drain lasts, keep-alive clients are told to go:
/// an HTTP/1.1 connection opened before gets `Connection: close` on its
/// next response and is closed. An HTTP/2 connection gets GOAWAY. Both
/// happen while the drain still serves (a fresh connection is still
/// answered, with `Connection: close`), and the process then exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_tells_keep_alive_clients_to_go() {
    let app = App::start("pod-0", "127.0.115.21").await;
    let listen = addr_on("127.0.115.21");
    let mut s = Stickyd::start(
        "pod-0",
        listen,
        app.addr,
        &[
            ("STICKYD_ENDPOINTS", format!("static:pod-0={listen}")),
            ("STICKYD_DRAIN_SECONDS", "5".into()),
        ],
    )
    .await;
    // HTTP/1.1 keep-alive, opened before the SIGTERM.
    let mut h1 = TcpStream::connect(listen).await.unwrap();
    h1.write_all(b"GET /before HTTP/1.1\r\nHost: t\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), h1.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // HTTP/2 (h2c prior knowledge), opened before the SIGTERM.
    let io = hyper_util::rt::TokioIo::new(TcpStream::connect(listen).await.unwrap());
    let (mut h2, conn) = hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
        .await
        .unwrap();
    let h2_conn = tokio::spawn(conn);
    let r = h2
        .send_request(
            http::Request::get(format!("http://{listen}/before2"))
                .body(empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    s.signal("TERM");
    // HTTP/1.1: the next response says close, and the server closes.
    h1.write_all(b"GET /during HTTP/1.1\r\nHost: t\r\n\r\n").await.unwrap();
    let mut got = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(2), h1.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!("the HTTP/1.1 connection stayed open: {}", String::from_utf8_lossy(&got)),
        }
    }
    let text = String::from_utf8_lossy(&got).to_ascii_lowercase();
    assert!(
        text.starts_with("http/1.1 200") && text.contains("connection: close"),
        "{text}"
    );
    // HTTP/2: GOAWAY.
    eventually(Duration::from_secs(10), "GOAWAY", || {
        std::future::ready((h2.is_closed() || h2_conn.is_finished(), ()))
    })
    .await;
    // Still draining: a fresh connection is served, and told to go.
    assert!(
        s.child.try_wait().unwrap().is_none(),
        "exited before the clients were told"
    );
    let (status, text) = fresh_get(listen, "/still").await.unwrap();
    assert_eq!(status, 200, "{text}");
    assert!(text.to_ascii_lowercase().contains("connection: close"), "{text}");
    let st = wait_exit(&mut s, Duration::from_secs(10)).await;
    assert!(st.success(), "{st:?}");
}

/// The same restart with the restarting pod kept in its peers' views (as a
/// terminating endpoint is): its pinned sessions are forwarded to it while
/// it drains and until it stops accepting, and none of those requests may
/// fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_with_the_pod_still_in_view_loses_no_request() {
    for _ in 0..3 {
        let failures = rolling_restart(true).await;
        assert!(failures.is_empty(), "{} failed requests: {failures:?}", failures.len());
    }
}
