//! Kubernetes' termination order on real processes (loopback): the
//! session-aware drain (`/drain`), the app exiting before its sidecar (row
//! 16), and the admin listener answering fresh connections throughout.
//!
//! Time here is the processes' own: the tests assert orders and lower
//! bounds (the drain did not answer while sessions were active; it waited
//! at least that long), never that something happened within a window.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::common::*;
use stickyd::affinity::{Codec, SessionId, Sid};

/// `n` pods on 127.0.`net`.1.., each an app behind its sidecar, all in each
/// other's (static) view. Apps that can be killed as a process would be.
async fn pods(net: u8, n: usize, extra: &[(&str, String)]) -> Vec<(KillableApp, Stickyd)> {
    let (pods, view) = static_pods(net, n);
    let mut out = Vec::new();
    for (name, ip, listen) in &pods {
        let app = KillableApp::start(name, ip);
        let mut env = vec![
            ("STICKYD_ENDPOINTS", view.clone()),
            ("STICKYD_DRAIN_TOKEN", DRAIN_TOKEN.to_string()),
        ];
        env.extend(extra.iter().cloned());
        let s = Stickyd::start(name, *listen, app.addr, &env).await;
        out.push((app, s));
    }
    out
}

/// The drain token of every pod here: the preStop's, as the kubelet sends it.
const DRAIN_TOKEN: &str = "drain-test-token-0123456789";
const AUTHORIZATION: (&str, &str) = ("authorization", "Bearer drain-test-token-0123456789");

/// A current cookie value naming `pod`, for session `n`.
fn cookie(pod: &str, n: u8) -> String {
    let value = Codec::unsigned().encode(SessionId::for_pod(pod), Sid::from_bytes([n; 6]), 0, 0);
    format!("stickyd={value}")
}

fn names(set_cookie: Option<String>, pod: &str) -> bool {
    set_cookie.is_some_and(|c| c.split('.').next() == Some(SessionId::for_pod(pod).encode().as_str()))
}

async fn drain_call(admin: SocketAddr, query: &str) -> tokio::task::JoinHandle<(u16, serde_json::Value)> {
    let path = format!("/drain{query}");
    tokio::spawn(async move {
        let (status, text) = fresh_get_with(None, admin, &path, &[AUTHORIZATION])
            .await
            .expect("the drain call answers");
        let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
        (
            status,
            serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body)),
        )
    })
}

/// Row 12 and 3 under `/drain`: new sessions go to the ready peer, sessions
/// pinned here stay, the pod stays ready, and the call answers only once no
/// request of a pinned session arrived for `idle` (how long it waits is
/// `drain`'s unit tests', on tokio's paused clock; here the pinned session's
/// requests come far more often than the idle window).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_hands_new_sessions_to_peers_serves_pinned_ones_and_answers_when_idle() {
    let p = pods(130, 2, &[]).await;
    let (a, b) = (&p[0].1, &p[1].1);
    let here = cookie("pod-0", 1);
    let url = format!("http://{}/x", a.listen);
    assert_eq!(
        get(&url, &[("cookie", &here)]).await.unwrap().field("session"),
        "pinned"
    );

    let call = drain_call(a.admin, "?idle=5s&max=60s").await;
    // The drain has begun once the metric says so.
    eventually(Duration::from_secs(5), "stickyd_draining 1", || async {
        let m = a.metrics().await;
        (sample(&m, "stickyd_draining") == Some(1.0), m)
    })
    .await;

    // A new session arriving here is served, and pinned, by the ready peer.
    let r = get(&url, &[]).await.unwrap();
    assert_eq!((r.pod(), r.field("session")), ("pod-1", "new"), "{r:?}");
    assert!(names(r.sticky_cookie(), "pod-1"), "{r:?}");
    assert_eq!(r.headers.get("connection").map(|v| v.to_str().unwrap()), Some("close"));
    // The pinned session keeps its pod, for as long as it is active.
    for _ in 0..8 {
        let r = get(&url, &[("cookie", &here)]).await.unwrap();
        assert_eq!((r.pod(), r.field("session")), ("pod-0", "pinned"), "{r:?}");
        assert!(r.sticky_cookie().is_none(), "{r:?}");
        let (ready, _) = fresh_get(a.admin, "/readyz").await.unwrap();
        assert_eq!(ready, 200, "the draining pod stays ready");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        !call.is_finished(),
        "the drain answered while a pinned session was active"
    );
    let m = a.metrics().await;
    assert_eq!(sample(&m, "stickyd_sessions_active"), Some(1.0), "{m}");
    // The peer is not draining.
    assert_eq!(sample(&b.metrics().await, "stickyd_draining"), Some(0.0));

    let (status, outcome) = tokio::time::timeout(Duration::from_secs(30), call)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status, 200, "{outcome}");
    assert_eq!(outcome["reason"], "idle", "{outcome}");
    assert_eq!(outcome["sessions_served"], 1, "{outcome}");
    assert!(outcome["waited_seconds"].as_f64().unwrap() > 0.0, "{outcome}");
    // A second call answers at once, with the same outcome.
    let (status, again) = drain_call(a.admin, "").await.await.unwrap();
    assert_eq!((status, &again), (200, &outcome));
    // Still ready: the kubelet stops the app now, and the sidecar after it.
    assert_eq!(fresh_get(a.admin, "/readyz").await.unwrap().0, 200);
}

/// A session still active at `max` does not hold the drain: it answers
/// `max`, and the session is served here until the app goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_answers_at_max_while_a_session_stays_active() {
    let p = pods(131, 2, &[]).await;
    let a = &p[0].1;
    let here = cookie("pod-0", 2);
    let url = format!("http://{}/x", a.listen);
    let call = drain_call(a.admin, "?idle=30s&max=1500ms").await;
    let mut served = 0;
    while !call.is_finished() {
        let r = get(&url, &[("cookie", &here)]).await.unwrap();
        assert_eq!((r.pod(), r.field("session")), ("pod-0", "pinned"), "{r:?}");
        served += 1;
        assert!(served < 200, "the drain never answered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, outcome) = call.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(outcome["reason"], "max", "{outcome}");
    assert_eq!(outcome["sessions_served"], 1, "{outcome}");
    assert!(outcome["waited_seconds"].as_f64().unwrap() >= 1.5, "{outcome}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_drain_calls_are_refused_and_start_nothing() {
    let p = pods(132, 1, &[]).await;
    let a = &p[0].1;
    for (q, word) in [("?idle=soon", "idle"), ("?max=0", "max"), ("?until=later", "until")] {
        let (status, text) = fresh_get_with(None, a.admin, &format!("/drain{q}"), &[AUTHORIZATION])
            .await
            .unwrap();
        assert_eq!(status, 400, "{q}: {text}");
        assert!(text.contains(word), "{q}: {text}");
    }
    assert_eq!(sample(&a.metrics().await, "stickyd_draining"), Some(0.0));
    // Still taking new sessions.
    let r = get(&format!("http://{}/x", a.listen), &[]).await.unwrap();
    assert_eq!((r.pod(), r.field("session")), ("pod-0", "new"));
}

/// Row 16: the app in this pod has exited (Kubernetes stops it before the
/// sidecar), so its connection is refused before any byte is sent. The
/// request goes to a ready peer, body and all, which repins it and tells
/// its app; from then on the session lives there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_refused_goes_to_a_ready_peer_which_repins_the_session() {
    let mut p = pods(133, 3, &[]).await;
    let here = cookie("pod-0", 3);
    let url = format!("http://{}/up", p[0].1.listen);
    assert_eq!(get(&url, &[("cookie", &here)]).await.unwrap().pod(), "pod-0");
    p[0].0.kill();

    let body = "x".repeat(100_000);
    let r = request("POST", &url, &[("cookie", &here)], full(body.clone()))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_ne!(r.pod(), "pod-0");
    assert_eq!(r.field("session"), "repinned", "the app is told: {r:?}");
    assert_eq!(r.field("bytes"), body.len().to_string(), "the body arrived whole");
    let to = r.pod().to_string();
    assert!(names(r.sticky_cookie(), &to), "the new cookie names {to}: {r:?}");
    let m = p[0].1.metrics().await;
    assert!(m.contains("kind=\"app_connect\""), "{m}");

    // The repinned session stays where it went, through any pod.
    let moved = format!("stickyd={}", r.sticky_cookie().unwrap());
    for (_, s) in &p {
        let r = get(&format!("http://{}/again", s.listen), &[("cookie", &moved)])
            .await
            .unwrap();
        assert_eq!((r.status, r.pod()), (200, to.as_str()), "{r:?}");
        assert!(r.sticky_cookie().is_none(), "{r:?}");
    }

    // A session of pod-0 that arrives at a peer first: the peer forwards it
    // to pod-0 (still in its view), whose app refuses; a ready peer serves it.
    let other = cookie("pod-0", 4);
    let r = get(&format!("http://{}/via-peer", p[1].1.listen), &[("cookie", &other)])
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_ne!(r.pod(), "pod-0");
    assert_eq!(r.field("session"), "repinned", "{r:?}");
    assert!(names(r.sticky_cookie(), r.pod()), "{r:?}");

    // A new session arriving at pod-0 goes on too, and stays new.
    let r = get(&format!("http://{}/new", p[0].1.listen), &[]).await.unwrap();
    assert_eq!((r.status, r.field("session")), (200, "new"), "{r:?}");
    assert_ne!(r.pod(), "pod-0");
}

/// With STICKYD_ON_MISSING=reject, a session whose app is gone gets 503 (as
/// when its pod is gone); a new session still goes to a ready peer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_refused_with_reject_is_503_for_a_pinned_session() {
    let mut p = pods(134, 2, &[("STICKYD_ON_MISSING", "reject".into())]).await;
    p[0].0.kill();
    let url = format!("http://{}/x", p[0].1.listen);
    let r = get(&url, &[("cookie", &cookie("pod-0", 5))]).await.unwrap();
    assert_eq!(r.status, 503, "{r:?}");
    assert!(r.body.contains("STICKYD_ON_MISSING=reject"), "{r:?}");
    let r = get(&url, &[]).await.unwrap();
    assert_eq!((r.status, r.pod(), r.field("session")), (200, "pod-1", "new"), "{r:?}");
}

/// After SIGTERM, `/healthz`, `/readyz` and `/metrics` answer fresh
/// connections until the process exits: probes and scrapes see the drain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_answers_fresh_connections_until_the_process_exits() {
    let mut p = pods(135, 1, &[("STICKYD_DRAIN_SECONDS", "2".into())]).await;
    let (_, s) = &mut p[0];
    s.signal("TERM");
    let mut answered = [0usize; 3];
    let deadline = Instant::now() + Duration::from_secs(30);
    'probing: loop {
        for (i, path) in ["/healthz", "/readyz", "/metrics"].into_iter().enumerate() {
            match fresh_get(s.admin, path).await {
                Ok((status, text)) => {
                    let want = if path == "/readyz" { 503 } else { 200 };
                    assert_eq!(status, want, "{path}: {text}");
                    if path == "/metrics" {
                        assert!(text.contains("stickyd_draining 1"), "{text}");
                    }
                    answered[i] += 1;
                }
                Err(e) => {
                    // Refused only once the process is on its way out.
                    let what = format!("exit after {path} was refused ({e})");
                    eventually(Duration::from_secs(10), &what, || {
                        std::future::ready((s.child.try_wait().unwrap().is_some(), ()))
                    })
                    .await;
                    break 'probing;
                }
            }
        }
        if s.child.try_wait().unwrap().is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "stickyd did not exit (a hang guard)");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(s.child.wait().unwrap().code(), Some(0));
    // Every endpoint answered in the drain.
    assert!(answered.iter().all(|&n| n >= 1), "{answered:?}");
}
