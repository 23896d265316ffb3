//! The trust boundaries of a sidecar, on real processes with fresh
//! connections: who may drain a pod, who may read its sessions and its view,
//! what a forged hop marker gets, the admin port's connection cap, and the
//! warning of an unsigned sidecar.
//!
//! Every pod has an address of its own (`127.0.N.x`), as pods do; a caller
//! from another address is another pod, and one bound to the pod's own
//! address is the pod itself. Addresses: 127.0.190.x to 127.0.197.x.

use std::net::IpAddr;
use std::time::Duration;

use crate::common::*;
use stickyd::affinity::{Codec, Keys, Lifetimes, SessionId, Sid};
use stickyd::peer::{self, Purpose};

const KEY: &str = "trust-test-key-0123456789abcdef";
const OTHER_KEY: &str = "another-key-0123456789abcdefghij";
const TOKEN: &str = "drain-token-0123456789abcdef";

/// `n` pods on 127.0.`net`.1.., each an app behind its sidecar, all in each
/// other's (static) view.
async fn pods(net: u8, n: usize, extra: &[(&str, String)]) -> Vec<(App, Stickyd)> {
    let (pods, view) = static_pods(net, n);
    let mut out = Vec::new();
    for (name, ip, listen) in &pods {
        let app = App::start(name, ip).await;
        let mut env = vec![("STICKYD_ENDPOINTS", view.clone())];
        env.extend(extra.iter().cloned());
        let s = Stickyd::start(name, *listen, app.addr, &env).await;
        out.push((app, s));
    }
    out
}

fn keyed() -> Vec<(&'static str, String)> {
    vec![
        ("STICKYD_COOKIE_SECRET", KEY.to_string()),
        ("STICKYD_DRAIN_TOKEN", TOKEN.to_string()),
    ]
}

fn unix_now() -> u64 {
    stickyd::affinity::unix_now()
}

/// Another pod's address: not in any view of this file.
fn elsewhere() -> Option<IpAddr> {
    Some("127.0.197.200".parse().unwrap())
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

async fn drain_from(
    from: Option<IpAddr>,
    s: &Stickyd,
    query: &str,
    auth: Option<&str>,
) -> tokio::task::JoinHandle<(u16, serde_json::Value)> {
    let admin = s.admin;
    let path = format!("/drain{query}");
    let auth = auth.map(bearer);
    tokio::spawn(async move {
        let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
        let (status, text) = fresh_get_with(from, admin, &path, &headers).await.expect("an answer");
        let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
        (
            status,
            serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body)),
        )
    })
}

/// A new session's first request to `s`: where it was served.
async fn new_session_at(s: &Stickyd) -> (String, String) {
    let r = get(&format!("http://{}/x", s.listen), &[]).await.unwrap();
    (r.pod().to_string(), r.field("session").to_string())
}

/// `/drain` from another pod gets 403 and changes nothing, whatever it asks
/// for and whatever token it guesses; the kubelet's preStop (the token)
/// drains; the pod itself needs no token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_from_another_pod_gets_403_and_leaves_the_pod_undrained() {
    let p = pods(190, 2, &keyed()).await;
    let a = &p[0].1;
    for (query, auth) in [
        ("?idle=1e10&max=1e10", None),
        ("?idle=0&max=0.001", None),
        ("", Some("drain-token-0123456789abcdeX")),
        ("", Some("drain-token-0123456789abcde")),
        ("", Some("")),
    ] {
        let (status, body) = drain_from(elsewhere(), a, query, auth).await.await.unwrap();
        assert_eq!(status, 403, "{query} {auth:?}: {body}");
        assert!(body.to_string().contains("STICKYD_DRAIN_TOKEN"), "{body}");
    }
    // Basic, or the token in another header, is no bearer token.
    let (status, _) = fresh_get_with(
        elsewhere(),
        a.admin,
        "/drain",
        &[("authorization", &format!("Basic {TOKEN}")), ("x-drain-token", TOKEN)],
    )
    .await
    .unwrap();
    assert_eq!(status, 403);
    let m = a.metrics().await;
    assert_eq!(
        sample_or_zero(&m, "stickyd_admin_refused_total{endpoint=\"drain\"}"),
        6.0,
        "{m}"
    );
    assert_eq!(sample_or_zero(&m, "stickyd_draining"), 0.0);
    assert_eq!(
        new_session_at(a).await,
        ("pod-0".into(), "new".into()),
        "still takes new sessions"
    );

    // The kubelet's preStop: from the node, with the token.
    let call = drain_from(elsewhere(), a, "?idle=200ms&max=30s", Some(TOKEN)).await;
    let m = eventually(Duration::from_secs(5), "the drain started", || async {
        let m = a.metrics().await;
        (sample_or_zero(&m, "stickyd_draining") == 1.0, m)
    })
    .await;
    assert_eq!(
        sample_or_zero(&m, "stickyd_admin_refused_total{endpoint=\"drain\"}"),
        6.0
    );
    assert_eq!(
        new_session_at(a).await,
        ("pod-1".into(), "new".into()),
        "a new session goes to the peer"
    );
    let (status, outcome) = call.await.unwrap();
    assert_eq!(status, 200, "{outcome}");
    assert_eq!(outcome["reason"], "idle", "{outcome}");

    // The pod itself: from its own address, no token needed.
    let b = &p[1].1;
    let (status, outcome) = drain_from(Some(b.admin.ip()), b, "?idle=0&max=5s", None)
        .await
        .await
        .unwrap();
    assert_eq!((status, outcome["reason"].as_str()), (200, Some("idle")), "{outcome}");
}

/// Without a drain token configured only the pod itself may drain it, and
/// the sidecar says so at startup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_only_the_pod_itself_drains_and_the_sidecar_says_so() {
    let p = pods(191, 1, &[]).await;
    let a = &p[0].1;
    let (status, body) = drain_from(elsewhere(), a, "", Some(TOKEN)).await.await.unwrap();
    assert_eq!(status, 403, "{body}");
    assert_eq!(sample_or_zero(&a.metrics().await, "stickyd_draining"), 0.0);
    let (status, outcome) = drain_from(Some(a.admin.ip()), a, "?idle=0&max=5s", None)
        .await
        .await
        .unwrap();
    assert_eq!(status, 200, "{outcome}");
    let log = a.log_text();
    assert!(log.contains("STICKYD_DRAIN_TOKEN is not set"), "{log}");
    assert!(log.contains("running unsigned"), "{log}");
}

/// A signed sidecar with a token does not warn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_sidecar_with_a_token_starts_without_a_warning() {
    let p = pods(196, 1, &keyed()).await;
    let log = p[0].1.log_text();
    assert!(!log.contains("running unsigned"), "{log}");
    assert!(!log.contains("STICKYD_DRAIN_TOKEN is not set"), "{log}");
    assert!(
        !log.contains(KEY) && !log.contains(TOKEN),
        "no secret in the log: {log}"
    );
}

/// A drain in progress can be neither shortened nor extended by a second
/// caller, and no caller may ask for more than STICKYD_DRAIN_MAX.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_is_bounded_and_a_second_caller_neither_shortens_nor_extends_it() {
    let mut env = keyed();
    env.push(("STICKYD_DRAIN_MAX", "1500ms".into()));
    let p = pods(192, 2, &env).await;
    let a = &p[0].1;
    // A pinned session stays active, so the drain runs to its max.
    let signed = Codec::new(Keys::parse(KEY).unwrap(), Lifetimes::default());
    let here_signed = signed.encode(
        SessionId::for_pod("pod-0"),
        Sid::from_bytes([7; 6]),
        unix_now(),
        unix_now(),
    );
    let first = drain_from(elsewhere(), a, "?idle=1e10&max=1e10", Some(TOKEN)).await;
    eventually(Duration::from_secs(5), "the drain started", || async {
        (sample_or_zero(&a.metrics().await, "stickyd_draining") == 1.0, ())
    })
    .await;
    let short = drain_from(elsewhere(), a, "?idle=0&max=0.001", Some(TOKEN)).await;
    let long = drain_from(elsewhere(), a, "?idle=1h&max=1h", Some(TOKEN)).await;
    let url = format!("http://{}/x", a.listen);
    let cookie = format!("stickyd={here_signed}");
    while !first.is_finished() {
        let r = get(&url, &[("cookie", &cookie)]).await.unwrap();
        assert_eq!((r.pod(), r.field("session")), ("pod-0", "pinned"), "{r:?}");
        // The session's requests are the premise (they keep the drain busy
        // to its max), paced as a browser's.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (s1, o1) = first.await.unwrap();
    let (s2, o2) = short.await.unwrap();
    let (s3, o3) = long.await.unwrap();
    assert_eq!((s1, s2, s3), (200, 200, 200));
    assert_eq!(o1["reason"], "max", "{o1}");
    assert_eq!(
        (o1["idle_seconds"].as_f64(), o1["max_seconds"].as_f64()),
        (Some(1.5), Some(1.5)),
        "{o1}"
    );
    // The second caller's answer is the first drain's: it ran to the
    // bound, not to the 1 ms the second asked for.
    assert!(o1["waited_seconds"].as_f64().unwrap() >= 1.5, "{o1}");
    assert_eq!(o1, o2, "the second caller joined the first drain");
    assert_eq!(o1, o3, "the third caller joined the first drain");
    assert!(o1["waited_seconds"].as_f64().unwrap() < 60.0, "{o1}");
}

/// `/sessions` and `/endpoints` answer the pod itself and verified peers
/// only; probes and metrics answer anyone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_and_endpoints_answer_only_the_pod_itself_and_verified_peers() {
    let p = pods(193, 2, &keyed()).await;
    let a = &p[0].1;
    let now = unix_now();
    let keys = Keys::parse(KEY).unwrap();
    let other = Keys::parse(OTHER_KEY).unwrap();
    let proof = |keys: &Keys, purpose, to: &str, t| peer::sign(keys, purpose, "pod-1", to, t);
    let refused = [
        None,
        Some("pod-1".to_string()),
        Some(proof(&other, Purpose::Sessions, "pod-0", now)),
        Some(proof(&keys, Purpose::Sessions, "pod-2", now)),
        Some(proof(&keys, Purpose::Sessions, "pod-0", now - 3600)),
        Some(proof(&keys, Purpose::Hop, "pod-0", now)),
    ];
    let peer_addr = Some(p[1].1.admin.ip());
    for path in ["/sessions", "/endpoints"] {
        for from in [elsewhere(), peer_addr] {
            for proof in &refused {
                let headers: Vec<(&str, &str)> = proof.iter().map(|p| ("x-stickyd-peer", p.as_str())).collect();
                let (status, text) = fresh_get_with(from, a.admin, path, &headers).await.unwrap();
                assert_eq!(status, 403, "{path} from {from:?} with {proof:?}: {text}");
                assert!(!text.contains("pod-1"), "{text}");
            }
        }
        let good = proof(&keys, Purpose::Sessions, "pod-0", now);
        let (status, text) = fresh_get_with(elsewhere(), a.admin, path, &[("x-stickyd-peer", &good)])
            .await
            .unwrap();
        assert_eq!(status, 200, "{path} with a peer's proof: {text}");
        let (status, text) = fresh_get_with(Some(a.admin.ip()), a.admin, path, &[]).await.unwrap();
        assert_eq!(status, 200, "{path} from the pod itself: {text}");
    }
    let m = a.metrics().await;
    assert_eq!(
        sample_or_zero(&m, "stickyd_admin_refused_total{endpoint=\"sessions\"}"),
        12.0,
        "{m}"
    );
    assert_eq!(
        sample_or_zero(&m, "stickyd_admin_refused_total{endpoint=\"endpoints\"}"),
        12.0,
        "{m}"
    );
    for path in ["/healthz", "/readyz", "/metrics"] {
        let (status, _) = fresh_get_with(elsewhere(), a.admin, path, &[]).await.unwrap();
        assert_eq!(status, 200, "{path}");
    }
}

/// Without keys a peer is known by its address: a pod of the view gets an
/// answer, any other address 403.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_keys_sessions_answer_the_addresses_of_the_view() {
    let p = pods(194, 2, &[]).await;
    let a = &p[0].1;
    let (status, _) = fresh_get_with(Some(p[1].1.listen.ip()), a.admin, "/sessions", &[])
        .await
        .unwrap();
    assert_eq!(status, 200, "from pod-1's address");
    let (status, _) = fresh_get_with(elsewhere(), a.admin, "/sessions", &[]).await.unwrap();
    assert_eq!(status, 403, "from an address not in the view");
    let (status, _) = fresh_get_with(elsewhere(), a.admin, "/endpoints", &[]).await.unwrap();
    assert_eq!(status, 403);
}

/// A forged hop marker learns nothing and pins nothing: no session count
/// comes back, a new session is not pinned to a draining pod, and a session
/// named elsewhere is forwarded as if no marker were there. A marker a peer
/// signed still does all three.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_hop_marker_learns_nothing_and_pins_nothing() {
    let mut env = keyed();
    env.push(("STICKYD_NEW_SESSIONS", "least-sessions".into()));
    let p = pods(195, 2, &env).await;
    let a = &p[0].1;
    let keys = Keys::parse(KEY).unwrap();
    let now = unix_now();
    let forged = [
        "pod-1".to_string(),
        peer::sign(&Keys::parse(OTHER_KEY).unwrap(), Purpose::Hop, "pod-1", "pod-0", now),
        peer::sign(&keys, Purpose::Hop, "pod-1", "pod-9", now),
        peer::sign(&keys, Purpose::Sessions, "pod-1", "pod-0", now),
        peer::sign(&keys, Purpose::Hop, "pod-1", "pod-0", now - 3600),
    ];
    let signed = Codec::new(keys.clone(), Lifetimes::default());
    let at_pod_1 = format!(
        "stickyd={}",
        signed.encode(SessionId::for_pod("pod-1"), Sid::from_bytes([1; 6]), now, now)
    );
    for proto in [Proto::H1, Proto::H2c] {
        for marker in &forged {
            let hop = ("x-stickyd-hop", marker.clone());
            // No count comes back.
            let r = fresh(a.listen, proto, "/x", std::slice::from_ref(&hop)).await;
            assert_eq!(r.status, 200);
            assert!(
                r.headers.get("x-stickyd-sessions").is_none(),
                "{proto:?} {marker}: {r:?}"
            );
            // A session pinned to pod-1 is forwarded there, as with no marker
            // (a marker would have repinned it here, row 11).
            let r = fresh(a.listen, proto, "/x", &[hop, ("cookie", at_pod_1.clone())]).await;
            assert_eq!(
                (r.pod(), r.field("session")),
                ("pod-1", "pinned"),
                "{proto:?} {marker}: {r:?}"
            );
        }
    }
    let m = a.metrics().await;
    let refused: f64 = ["unsigned", "mac", "other_pod", "stale"]
        .iter()
        .map(|r| sample_or_zero(&m, &format!("stickyd_hop_refused_total{{reason=\"{r}\"}}")))
        .sum();
    assert_eq!(refused, 20.0, "{m}");

    // pod-0 drains: a forged marker does not pin a new session to it.
    let drain = drain_from(elsewhere(), a, "?idle=30s&max=30s", Some(TOKEN)).await;
    eventually(Duration::from_secs(5), "the drain started", || async {
        (sample_or_zero(&a.metrics().await, "stickyd_draining") == 1.0, ())
    })
    .await;
    let real = peer::sign(&keys, Purpose::Hop, "pod-1", "pod-0", now);
    for proto in [Proto::H1, Proto::H2c] {
        for marker in &forged {
            let r = fresh(a.listen, proto, "/x", &[("x-stickyd-hop", marker.clone())]).await;
            assert_eq!(
                (r.pod(), r.field("session")),
                ("pod-1", "new"),
                "{proto:?} {marker}: {r:?}"
            );
        }
        // A peer's own marker: served here even while draining, with the count.
        let r = fresh(a.listen, proto, "/x", &[("x-stickyd-hop", real.clone())]).await;
        assert_eq!((r.pod(), r.field("session")), ("pod-0", "new"), "{proto:?}: {r:?}");
        assert!(r.headers.get("x-stickyd-sessions").is_some(), "{proto:?}: {r:?}");
    }
    drain.abort();
}

/// The admin listener serves at most 64 connections at once: the next one
/// gets 503 at once and is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_port_caps_its_connections() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let p = pods(197, 1, &keyed()).await;
    let a = &p[0].1;
    // 64 connections, each with half a head: held until their head timeout.
    let mut held = Vec::new();
    for _ in 0..64 {
        let mut c = tokio::net::TcpStream::connect(a.admin).await.unwrap();
        c.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
        held.push(c);
    }
    // Each was accepted (the listener takes them in order); the 65th is one
    // too many.
    let mut extra = tokio::net::TcpStream::connect(a.admin).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), extra.read_to_end(&mut answer))
        .await
        .expect("the extra connection is answered at once")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("retry-after: 1"), "{answer}");
    // The test client's own idle keep-alive connection (from the start-up
    // probe) may hold a place too: then the last of the 64 got the 503 as
    // well, before the extra one (the listener answers in accept order).
    let mut refused = 1;
    for c in &held {
        let mut buf = [0u8; 64];
        if let Ok(n) = c.try_read(&mut buf) {
            assert!(
                buf[..n].starts_with(b"HTTP/1.1 503"),
                "{:?}",
                String::from_utf8_lossy(&buf[..n])
            );
            refused += 1;
        }
    }
    assert!(refused <= 2, "{refused} connections refused of 65");
    drop(held);
    let m = eventually(Duration::from_secs(5), "the cap counted", || async {
        let m = get(&format!("http://{}/metrics", a.admin), &[])
            .await
            .map(|r| r.body)
            .unwrap_or_default();
        (
            sample_or_zero(&m, "stickyd_admin_refused_total{endpoint=\"connection\"}") >= 1.0,
            m,
        )
    })
    .await;
    assert_eq!(
        sample_or_zero(&m, "stickyd_admin_refused_total{endpoint=\"connection\"}"),
        refused as f64,
        "{m}"
    );
}
