//! Whole-proxy tests: real `stickyd` processes and apps on 127.0.0.x behind
//! a random load balancer.

use crate::common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::common::*;
use futures_util::{SinkExt, StreamExt};
use http::Request;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;

struct Cluster {
    pods: Vec<Pod>,
    peers_file: PathBuf,
    lb: RandomLb,
    extra: Vec<(&'static str, String)>,
    net: u8,
}

impl Cluster {
    /// `n` pods on 127.0.`net`.1.., each a sidecar in front of its app, and
    /// a random LB over the sidecars. Peers come from a watched file.
    async fn start(net: u8, n: usize, extra: &[(&'static str, String)]) -> Cluster {
        let peers_file = temp_path("peers");
        let mut c = Cluster {
            pods: Vec::new(),
            peers_file,
            lb: RandomLb::start(vec![]).await,
            extra: extra.to_vec(),
            net,
        };
        let addrs: Vec<(String, SocketAddr)> = (0..n).map(|i| c.next_addr(i)).collect();
        c.write_file(&addrs);
        for (name, addr) in addrs {
            c.start_pod(&name, addr).await;
        }
        c.lb.set_backends(c.pods.iter().map(|p| p.sidecar.listen).collect());
        c
    }

    fn next_addr(&self, i: usize) -> (String, SocketAddr) {
        (format!("pod-{i}"), addr_on(&format!("127.0.{}.{}", self.net, i + 1)))
    }

    fn write_file(&self, peers: &[(String, SocketAddr)]) {
        let list: Vec<(&str, SocketAddr)> = peers.iter().map(|(n, a)| (n.as_str(), *a)).collect();
        write_peers(&self.peers_file, &list);
    }

    async fn start_pod(&mut self, name: &str, addr: SocketAddr) {
        // The app on an address of its own, so its port never collides with
        // the sidecar's port picked in advance.
        let std::net::IpAddr::V4(ip) = addr.ip() else {
            unreachable!()
        };
        let [a, b, c, d] = ip.octets();
        let app = App::start(name, &format!("{a}.{b}.{c}.{}", d + 100)).await;
        let mut env = self.extra.clone();
        env.push(("STICKYD_ENDPOINTS", format!("file:{}", self.peers_file.display())));
        let sidecar = Stickyd::start(name, addr, app.addr, &env).await;
        self.pods.push(Pod {
            name: name.to_string(),
            app,
            sidecar,
        });
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.lb.addr)
    }

    fn pod(&self, name: &str) -> &Pod {
        self.pods.iter().find(|p| p.name == name).unwrap()
    }

    fn current_peers(&self) -> Vec<(String, SocketAddr)> {
        self.pods.iter().map(|p| (p.name.clone(), p.sidecar.listen)).collect()
    }

    async fn wait_views(&self) {
        let names: Vec<String> = self.pods.iter().map(|p| p.name.clone()).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        for p in &self.pods {
            wait_for_view(&p.sidecar, &names).await;
        }
    }
}

/// Runs `n` sessions of `reqs` requests each, `conc` at a time.
async fn run_sessions(url: &str, sessions: Vec<Session>, reqs: usize, conc: usize) -> Vec<Session> {
    futures_util::stream::iter(sessions.into_iter().map(|mut s| {
        let url = url.to_string();
        async move {
            for _ in 0..reqs {
                let r = s.get(&url).await.expect("request");
                assert_eq!(r.status, 200, "{r:?}");
            }
            s
        }
    }))
    .buffer_unordered(conc)
    .collect()
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_sessions_stay_on_their_pod() {
    let c = Cluster::start(11, 3, &[]).await;
    let sessions = run_sessions(&c.url("/"), vec![Session::default(); 300], 20, 32).await;
    let moved: Vec<_> = sessions.iter().filter(|s| s.moves() > 0).collect();
    assert!(
        moved.is_empty(),
        "{} of 300 sessions moved: {:?}",
        moved.len(),
        moved[0].pods
    );
    // Every session got a cookie and the sessions spread over all pods.
    assert!(sessions.iter().all(|s| s.cookie.is_some()));
    let t = tally(&sessions);
    assert_eq!(t.len(), 3, "{t:?}");
    // The LB really spread requests at random: most were forwarded.
    let forwarded: u64 = {
        let mut n = 0;
        for p in &c.pods {
            let m = p.sidecar.metrics().await;
            n += m
                .lines()
                .filter(|l| l.starts_with("stickyd_requests_total{decision=\"forwarded\""))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
                .sum::<u64>();
        }
        n
    };
    assert!(forwarded > 2000, "forwarded {forwarded} of 6000");
    // The app is told about the session, and never sees the hop marker.
    for p in &c.pods {
        for s in p.app.seen() {
            assert!(s.headers.get("x-stickyd-hop").is_none());
            let v = s
                .headers
                .get("x-stickyd-session")
                .unwrap()
                .to_str()
                .unwrap()
                .to_string();
            assert!(v == "new" || v == "pinned", "{v}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_sidecars_sessions_are_lost() {
    // The story's failure, for contrast: the LB straight to the apps.
    let apps = [
        App::start("pod-0", "127.0.12.1").await,
        App::start("pod-1", "127.0.12.2").await,
        App::start("pod-2", "127.0.12.3").await,
    ];
    let lb = RandomLb::start(apps.iter().map(|a| a.addr).collect()).await;
    let url = format!("http://{}/", lb.addr);
    let sessions = run_sessions(&url, vec![Session::default(); 100], 5, 16).await;
    let kept = sessions.iter().filter(|s| s.moves() == 0).count();
    // (1/3)^4 ≈ 1% of 5-request sessions stay by chance.
    assert!(kept < 20, "{kept} of 100 stayed without stickyd");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_peer_sessions_repin_exactly_once() {
    let mut c = Cluster::start(13, 3, &[]).await;
    let sessions = run_sessions(&c.url("/"), vec![Session::default(); 90], 5, 16).await;
    let victim = "pod-2";
    assert!(tally(&sessions).get(victim).copied().unwrap_or(0) > 0);
    // The pod dies: the LB stops sending to it and the peers' view drops it.
    let idx = c.pods.iter().position(|p| p.name == victim).unwrap();
    let dead = c.pods.remove(idx);
    drop(dead);
    c.lb.set_backends(c.pods.iter().map(|p| p.sidecar.listen).collect());
    c.write_file(&c.current_peers());
    c.wait_views().await;
    let before: Vec<String> = sessions.iter().map(|s| s.pods.last().unwrap().clone()).collect();
    let after = run_sessions(&c.url("/"), sessions, 10, 16).await;
    // Order is not kept by buffer_unordered: check each session by its own history.
    for s in &after {
        let first_after_kill = s.pods[5].clone();
        let was = s.pods[4].clone();
        if was == victim {
            assert_eq!(
                s.moves(),
                1,
                "a session of the dead pod repins exactly once: {:?}",
                s.pods
            );
            assert_ne!(first_after_kill, victim);
        } else {
            assert_eq!(s.moves(), 0, "a session elsewhere never moves: {:?}", s.pods);
        }
    }
    assert_eq!(before.len(), after.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_peer_repins_on_connect_failure() {
    // The view still lists the dead pod (the source has not caught up): the
    // connect is refused before any byte is sent, so the request, body and
    // all, is served locally and the session repinned.
    let mut c = Cluster::start(14, 2, &[]).await;
    let pinned_to_1 = {
        loop {
            let mut s = Session::default();
            s.get(&c.url("/")).await.unwrap();
            if s.pods[0] == "pod-1" {
                break s;
            }
        }
    };
    let dead = c.pods.remove(1);
    drop(dead);
    let survivor = &c.pods[0];
    let cookie = format!("stickyd={}", pinned_to_1.cookie.unwrap());
    let url = format!("http://{}/upload", survivor.sidecar.listen);
    let r = request(
        "POST",
        &url,
        &[("cookie", &cookie), ("content-type", "text/plain")],
        full(vec![b'x'; 100_000]),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.pod(), "pod-0");
    assert_eq!(r.field("session"), "repinned");
    assert_eq!(r.field("bytes"), "100000", "the body survived the failed connect");
    assert!(r.sticky_cookie().is_some());
}

/// One keep-alive client connection (an ingress's) carrying sessions of both
/// pods: the sidecar keeps one connection to the app and one to the peer for
/// it, reused request after request, and the apps get origin-form targets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_connection_reuses_one_app_and_one_peer_connection() {
    let c = Cluster::start(26, 2, &[]).await;
    let entry = c.pod("pod-0").sidecar.listen;
    let stream = tokio::net::TcpStream::connect(entry).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let here = format!("stickyd={}", stickyd::affinity::SessionId::for_pod("pod-0").encode());
    let there = format!("stickyd={}", stickyd::affinity::SessionId::for_pod("pod-1").encode());
    for i in 0..40 {
        let (cookie, pod) = if i % 2 == 0 {
            (&here, "pod-0")
        } else {
            (&there, "pod-1")
        };
        send.ready().await.unwrap();
        let req = Request::get(format!("/item?n={i}"))
            .header("host", "shop.example")
            .header("cookie", cookie.as_str())
            .header("x-forwarded-for", "203.0.113.9")
            .body(empty())
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let body = String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
        assert!(body.starts_with(&format!("pod={pod} session=pinned")), "{i}: {body}");
    }
    for pod in ["pod-0", "pod-1"] {
        let seen = c.pod(pod).app.seen();
        assert_eq!(seen.len(), 20, "{pod}");
        let remotes: HashSet<SocketAddr> = seen.iter().map(|s| s.remote).collect();
        assert_eq!(
            remotes.len(),
            1,
            "{pod}'s app saw its 20 requests on one connection: {remotes:?}"
        );
        for (k, s) in seen.iter().enumerate() {
            assert!(
                s.target.starts_with("/item?n="),
                "{pod}: origin-form target, got {}",
                s.target
            );
            assert_eq!(s.headers["host"], "shop.example");
            assert!(s.headers.get("x-stickyd-hop").is_none());
            let xff = s.headers["x-forwarded-for"].to_str().unwrap();
            let hops = if pod == "pod-0" { 2 } else { 3 };
            assert_eq!(xff.split(", ").count(), hops, "{pod} request {k}: {xff}");
            assert!(xff.starts_with("203.0.113.9, 127.0.0.1"), "{xff}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_up_moves_no_session() {
    let mut c = Cluster::start(15, 2, &[]).await;
    let sessions = run_sessions(&c.url("/"), vec![Session::default(); 60], 5, 16).await;
    // A new pod joins: views first, then the LB.
    let (name, addr) = c.next_addr(2);
    let mut peers = c.current_peers();
    peers.push((name.clone(), addr));
    c.write_file(&peers);
    c.start_pod(&name, addr).await;
    c.wait_views().await;
    c.lb.set_backends(c.pods.iter().map(|p| p.sidecar.listen).collect());
    let after = run_sessions(&c.url("/"), sessions, 15, 16).await;
    for s in &after {
        assert_eq!(s.moves(), 0, "{:?}", s.pods);
    }
    // The new pod took requests (forwarding them) and new sessions.
    let new_sessions = run_sessions(&c.url("/"), vec![Session::default(); 60], 3, 16).await;
    assert!(tally(&new_sessions).contains_key("pod-2"));
    assert!(!c.pod("pod-2").app.seen().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_on_the_forwarded_path_stays_pinned() {
    let c = Cluster::start(16, 2, &[]).await;
    let target = c.pod("pod-1");
    let cookie = format!("stickyd={}", stickyd::affinity::SessionId::for_pod("pod-1").encode());
    // Connect to pod-0's sidecar: it must forward the upgrade to pod-1.
    let url = format!("ws://{}/ws", c.pod("pod-0").sidecar.listen);
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url).unwrap();
    req.headers_mut().insert("cookie", cookie.parse().unwrap());
    let (mut ws, resp) = tokio::time::timeout(Duration::from_secs(10), tokio_tungstenite::connect_async(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), 101);
    for i in 0..20 {
        ws.send(tokio_tungstenite::tungstenite::Message::text(format!("m{i}")))
            .await
            .unwrap();
        let reply = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(reply.into_text().unwrap().as_str(), format!("pod-1:m{i}"));
    }
    ws.close(None).await.unwrap();
    assert!(target.app.seen().iter().any(|s| s.path == "/ws"));
    assert!(c.pod("pod-0").app.seen().iter().all(|s| s.path != "/ws"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_on_the_local_path() {
    let c = Cluster::start(17, 1, &[]).await;
    let url = format!("ws://{}/ws", c.pods[0].sidecar.listen);
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    ws.send(tokio_tungstenite::tungstenite::Message::text("hi"))
        .await
        .unwrap();
    let reply = ws.next().await.unwrap().unwrap();
    assert_eq!(reply.into_text().unwrap().as_str(), "pod-0:hi");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_of_100_mb_through_the_forwarded_path_with_bounded_memory() {
    let c = Cluster::start(18, 2, &[]).await;
    let cookie = format!("stickyd={}", stickyd::affinity::SessionId::for_pod("pod-1").encode());
    let url = format!("http://{}/upload", c.pod("pod-0").sidecar.listen);
    const TOTAL: u64 = 100 * 1024 * 1024;
    // A streamed body of 100 MiB in 64 KiB chunks, never held whole.
    let chunk = bytes::Bytes::from(vec![b'z'; 64 * 1024]);
    let stream = futures_util::stream::iter(
        (0..TOTAL / chunk.len() as u64).map(move |_| Ok::<_, hyper::Error>(http_body::Frame::data(chunk.clone()))),
    );
    let body = http_body_util::BodyExt::boxed(http_body_util::StreamBody::new(stream));
    let r = request("POST", &url, &[("cookie", &cookie)], body).await.unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.pod(), "pod-1");
    assert_eq!(r.field("bytes"), TOTAL.to_string());
    for p in &c.pods {
        let kib = p.sidecar.peak_rss_kib();
        assert!(kib < 48 * 1024, "{} peak RSS {kib} KiB for a 100 MiB upload", p.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_get_their_status_and_the_process_keeps_serving() {
    let c = Cluster::start(19, 2, &[]).await;
    let s = &c.pods[0].sidecar;
    let base = format!("http://{}", s.listen);
    // Garbage, truncated, oversized and forged cookies are no cookie: a new session.
    let valid = stickyd::affinity::SessionId::for_pod("pod-1").encode();
    for cookie in [
        "stickyd=garbage".to_string(),
        format!("stickyd={}", &valid[..6]),
        format!("stickyd={}", "A".repeat(4000)),
        "stickyd=127.0.0.1:8080".to_string(),
    ] {
        let r = get(&format!("{base}/"), &[("cookie", &cookie)]).await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.pod(), "pod-0");
        assert_eq!(r.field("session"), "new");
        assert!(r.sticky_cookie().is_some());
    }
    // A forged x-stickyd-session is replaced; stickyd's headers never reach the client.
    let r = get(&format!("{base}/"), &[("x-stickyd-session", "pinned")])
        .await
        .unwrap();
    assert_eq!(r.field("session"), "new");
    assert!(r.headers.get("x-stickyd-session").is_none());
    assert!(r.headers.get("x-stickyd-hop").is_none());
    // A forged hop marker: served here, never forwarded, repinned.
    let cookie = format!("stickyd={valid}");
    let r = get(&format!("{base}/"), &[("cookie", &cookie), ("x-stickyd-hop", "evil")])
        .await
        .unwrap();
    assert_eq!(r.pod(), "pod-0");
    assert_eq!(r.field("session"), "repinned");
    // Oversized headers: 431.
    let big = "b".repeat(70 * 1024);
    let r = get(&format!("{base}/"), &[("x-big", &big)]).await;
    match r {
        Ok(r) => assert_eq!(r.status, 431),
        Err(e) => panic!("expected 431, got {e}"),
    }
    // Absolute-form target naming another host, and CONNECT: raw bytes.
    for (raw, want) in [
        (
            "GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n",
            "HTTP/1.1 400",
        ),
        (
            "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
            "HTTP/1.1 405",
        ),
    ] {
        let got = raw_exchange(s.listen, raw).await;
        assert!(got.starts_with(want), "{raw:?} → {got:?}");
    }
    assert!(c
        .pods
        .iter()
        .all(|p| p.app.seen().iter().all(|s| s.path != "example.com")));
    // Still serving.
    let r = get(&format!("{base}/"), &[]).await.unwrap();
    assert_eq!(r.status, 200);
}

async fn raw_exchange(addr: SocketAddr, raw: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(raw.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_cookie_is_added_beside_the_apps_and_marks_the_response_private() {
    let c = Cluster::start(20, 1, &[("STICKYD_COOKIE_MAX_AGE", "3600".into())]).await;
    let r = get(&format!("http://{}/cacheable", c.pods[0].sidecar.listen), &[])
        .await
        .unwrap();
    let cookies: Vec<&str> = r
        .headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(cookies.len(), 2, "{cookies:?}");
    assert!(cookies.contains(&"app=1; Path=/"));
    let ours = cookies.iter().find(|c| c.starts_with("stickyd=")).unwrap();
    for attr in ["HttpOnly", "SameSite=Lax", "Path=/", "Max-Age=3600", "Expires="] {
        assert!(ours.contains(attr), "{ours}");
    }
    assert!(!ours.contains("Secure"));
    assert_eq!(r.headers.get("cache-control").unwrap(), "max-age=60, private");
    // Behind https (X-Forwarded-Proto), auto mode adds Secure.
    let r = get(
        &format!("http://{}/", c.pods[0].sidecar.listen),
        &[("x-forwarded-proto", "https")],
    )
    .await
    .unwrap();
    assert!(r.headers.get("set-cookie").is_some());
    let ours = r.sticky_cookie_header();
    assert!(ours.contains("Secure"), "{ours}");
    // A pinned request gets no Set-Cookie of ours.
    let cookie = format!("stickyd={}", r.sticky_cookie().unwrap());
    let r = get(&format!("http://{}/", c.pods[0].sidecar.listen), &[("cookie", &cookie)])
        .await
        .unwrap();
    assert!(r.sticky_cookie().is_none());
    assert_eq!(r.field("session"), "pinned");
    // X-Forwarded-For is appended.
    let seen = c.pods[0].app.seen();
    let xff = seen.last().unwrap().headers.get("x-forwarded-for").unwrap();
    assert_eq!(xff, "127.0.0.1");
}

trait StickyHeader {
    fn sticky_cookie_header(&self) -> String;
}

impl StickyHeader for Resp {
    fn sticky_cookie_header(&self) -> String {
        self.headers
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|v| v.starts_with("stickyd="))
            .unwrap_or("")
            .to_string()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_mode_answers_503_for_a_gone_pod() {
    let c = Cluster::start(21, 1, &[("STICKYD_ON_MISSING", "reject".into())]).await;
    let gone = format!("stickyd={}", stickyd::affinity::SessionId::for_pod("pod-9").encode());
    let r = get(&format!("http://{}/", c.pods[0].sidecar.listen), &[("cookie", &gone)])
        .await
        .unwrap();
    assert_eq!(r.status, 503);
    assert!(r.body.contains("STICKYD_ON_MISSING=reject"));
    assert!(
        c.pods[0].app.seen().is_empty(),
        "a rejected request never reaches the app"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_after_the_request_was_sent_is_502_and_never_replayed() {
    // A "peer" that reads the request, then drops the connection.
    let peer = tokio::net::TcpListener::bind("127.0.22.9:0").await.unwrap();
    let peer_addr = peer.local_addr().unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let acc2 = accepted.clone();
    tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        loop {
            let (mut s, _) = peer.accept().await.unwrap();
            acc2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            drop(s);
        }
    });
    let app = App::start("pod-0", "127.0.22.1").await;
    let listen: SocketAddr = addr_on("127.0.22.1");
    let s = Stickyd::start(
        "pod-0",
        listen,
        app.addr,
        &[("STICKYD_ENDPOINTS", format!("static:pod-0={listen},pod-9={peer_addr}"))],
    )
    .await;
    let cookie = format!("stickyd={}", stickyd::affinity::SessionId::for_pod("pod-9").encode());
    let r = request(
        "POST",
        &format!("http://{listen}/"),
        &[("cookie", &cookie)],
        full("once"),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 502, "{r:?}");
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1, "never replayed");
    assert!(app.seen().is_empty(), "not replayed locally either");
    // A safe request without a body that got no response byte (the
    // keep-alive close race) is served here instead, as browsers retry it.
    let r = get(&format!("http://{listen}/"), &[("cookie", &cookie)]).await.unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.pod(), "pod-0");
    assert_eq!(r.field("session"), "repinned");
    assert_eq!(
        accepted.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "sent to the peer once"
    );
    assert_eq!(app.seen().len(), 1);
    drop(s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_down_gives_502_and_readyz_fails() {
    let app = App::start("pod-0", "127.0.23.1").await;
    let listen: SocketAddr = addr_on("127.0.23.1");
    let s = Stickyd::start(
        "pod-0",
        listen,
        app.addr,
        &[("STICKYD_ENDPOINTS", format!("static:pod-0={listen}"))],
    )
    .await;
    let ready = get(&format!("http://{}/readyz", s.admin), &[]).await.unwrap();
    assert_eq!(ready.status, 200, "{ready:?}");
    app.stop_and_wait().await;
    let r = get(&format!("http://{listen}/"), &[]).await.unwrap();
    assert_eq!(r.status, 502);
    assert!(r.body.contains("could not reach the app"), "{}", r.body);
    let ready = get(&format!("http://{}/readyz", s.admin), &[]).await.unwrap();
    assert_eq!(ready.status, 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_inbound_is_served() {
    let c = Cluster::start(24, 2, &[]).await;
    let client: hyper_util::client::legacy::Client<_, common::Body> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build_http();
    let cookie = format!("stickyd={}", stickyd::affinity::SessionId::for_pod("pod-1").encode());
    let req = http::Request::get(format!("http://{}/h2", c.pod("pod-0").sidecar.listen))
        .header("cookie", cookie)
        .body(empty())
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert!(String::from_utf8_lossy(&body).starts_with("pod=pod-1 session=pinned"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_then_exits_zero() {
    let mut c = Cluster::start(25, 1, &[("STICKYD_DRAIN_SECONDS", "1".into())]).await;
    let s = &mut c.pods[0].sidecar;
    s.signal("TERM");
    // The signal has arrived once /readyz says the sidecar is stopping.
    let admin = s.admin;
    eventually(Duration::from_secs(10), "/readyz 503 after SIGTERM", || async move {
        let ready = get(&format!("http://{admin}/readyz"), &[]).await.unwrap();
        (ready.status == 503, ready)
    })
    .await;
    // Still serving during the drain, telling keep-alive clients to go.
    let r = get(&format!("http://{}/", s.listen), &[]).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.headers.get("connection").unwrap(), "close");
    let status = eventually(Duration::from_secs(10), "exit after the drain", || {
        std::future::ready(match s.child.try_wait().unwrap() {
            Some(st) => (true, Some(st)),
            None => (false, None),
        })
    })
    .await;
    assert!(status.unwrap().success(), "{status:?}");
}

#[test]
fn invalid_config_exits_2_naming_the_variable() {
    for (var, value, needle) in [
        ("STICKYD_COOKIE_PATH", "/mysite(/|$)(.*)", "never send the cookie back"),
        ("STICKYD_LISTEN", "8080", "STICKYD_LISTEN"),
        ("STICKYD_ON_MISSING", "retry", "repin"),
    ] {
        let out = std::process::Command::new(bin())
            .arg("run")
            .env_clear()
            .env("STICKYD_POD_NAME", "pod-0")
            .env("STICKYD_ENDPOINTS", "static:pod-0=127.0.0.1:1")
            .env(var, value)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{var}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(var) && err.contains(needle), "{err}");
    }
    // kubernetes without a service name.
    let out = std::process::Command::new(bin())
        .arg("run")
        .env_clear()
        .env("STICKYD_POD_NAME", "pod-0")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("STICKYD_SERVICE"));
}

/// An h2c app sees the client's Host as the request's `:authority`, and no
/// `Host` field beside it: an HTTP/2 server may refuse a request whose
/// `Host` names another authority than its `:authority` (nginx answers 400),
/// and the app's address is stickyd's business, not the app's. From an
/// HTTP/1.1 client and from an HTTP/2 one alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2c_app_sees_the_clients_host_as_the_authority() {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let s2 = seen.clone();
    let app = RawApp::start("127.0.24.1", move |stream| {
        let seen = s2.clone();
        async move {
            serve_hyper(stream, true, move |req| {
                let host = req.headers().get("host").map(|h| h.to_str().unwrap().to_string());
                let authority = req.uri().authority().map(|a| a.to_string());
                seen.lock().unwrap().push((authority, host));
                async { http::Response::new(full("ok")) }
            })
            .await;
        }
    })
    .await;
    let listen = addr_on("127.0.24.1");
    let s = Stickyd::start(
        "pod-0",
        listen,
        app.addr,
        &[
            ("STICKYD_ENDPOINTS", format!("static:pod-0={listen}")),
            ("STICKYD_UPSTREAM_PROTOCOL", "h2c".into()),
        ],
    )
    .await;
    // This request says `Host: probe`.
    let (status, _) = fresh_get_with(None, s.listen, "/h1", &[]).await.unwrap();
    assert_eq!(status, 200);
    let mut h2 = h2c(s.listen).await;
    let req = Request::get("http://shop.example:8080/h2").body(empty()).unwrap();
    assert_eq!(h2.send_request(req).await.unwrap().status(), 200);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec![
            (Some("probe".to_string()), None),
            (Some("shop.example:8080".to_string()), None)
        ]
    );
}

/// The Host that an attempt to an h2c app carried as its `:authority` goes
/// on as a field when the app refused the connection and a peer takes the
/// request: the peer's app sees the client's Host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_an_h2c_app_refused_reaches_the_peer_with_its_host() {
    let gone = {
        let l = std::net::TcpListener::bind("127.0.24.2:0").unwrap();
        l.local_addr().unwrap()
    };
    let app1 = App::start("pod-1", "127.0.24.3").await;
    let (a0, a1) = (addr_on("127.0.24.2"), addr_on("127.0.24.3"));
    let endpoints = format!("static:pod-0={a0},pod-1={a1}");
    let _s0 = Stickyd::start(
        "pod-0",
        a0,
        gone,
        &[
            ("STICKYD_ENDPOINTS", endpoints.clone()),
            ("STICKYD_UPSTREAM_PROTOCOL", "h2c".into()),
        ],
    )
    .await;
    let _s1 = Stickyd::start("pod-1", a1, app1.addr, &[("STICKYD_ENDPOINTS", endpoints)]).await;
    let cookie = format!("stickyd={}", cookie_for("pod-0"));
    // This request says `Host: probe`.
    let (status, body) = fresh_get_with(None, a0, "/replayed", &[("cookie", &cookie)])
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("pod=pod-1"), "{body}");
    let seen = app1.seen();
    let host = seen
        .iter()
        .find(|s| s.path == "/replayed")
        .map(|s| s.headers.get("host").cloned());
    assert_eq!(host, Some(Some(http::HeaderValue::from_static("probe"))));
}
