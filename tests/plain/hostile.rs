//! Hostile input: raw bytes over TCP, never a well-behaved client. Each case
//! gets its documented status, the process keeps serving after it, and the
//! recording app never sees a smuggled request.
//!
//! Addresses: 127.0.100.x and 127.0.101.x.

use crate::common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::common::*;
use std::sync::Arc;
use stickyd::affinity::{Codec, Keys, Lifetimes, SessionId, Sid};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;

const KEY: &str = "hostile-test-key-0123456789abcdef";

/// Writes `bytes` on a fresh connection and reads until the server closes it,
/// or nothing more arrives for 700 ms, or 8 s pass. Never hangs.
async fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = tokio::time::timeout(Duration::from_secs(3), TcpStream::connect(addr))
        .await
        .expect("connect in time")
        .expect("connect");
    // The server may answer and close before it has read everything.
    let _ = s.write_all(bytes).await;
    read_all(&mut s).await
}

async fn read_all(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    let deadline = Instant::now() + Duration::from_secs(8);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match tokio::time::timeout(left.min(Duration::from_millis(700)), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The status codes of every response in `text`, in order.
fn statuses(text: &str) -> Vec<u16> {
    text.match_indices("HTTP/1.")
        .filter_map(|(i, _)| text.get(i + 9..i + 12))
        .filter_map(|s| s.parse().ok())
        .collect()
}

struct Target {
    app: App,
    sidecar: Stickyd,
}

impl Target {
    /// One pod (`pod-0`) whose view also lists `pod-1` (a real second pod
    /// on `ip2`), signed cookies when `signed`.
    async fn start(ip: &str, ip2: &str, signed: bool) -> (Target, Target) {
        let listen0 = addr_on(ip);
        let listen1 = addr_on(ip2);
        let peers = format!("static:pod-0={listen0},pod-1={listen1}");
        let mut env = vec![("STICKYD_ENDPOINTS", peers)];
        if signed {
            env.push(("STICKYD_COOKIE_SECRET", KEY.to_string()));
        }
        let app0 = App::start("pod-0", ip).await;
        let app1 = App::start("pod-1", ip2).await;
        let s0 = Stickyd::start("pod-0", listen0, app0.addr, &env).await;
        let s1 = Stickyd::start("pod-1", listen1, app1.addr, &env).await;
        (Target { app: app0, sidecar: s0 }, Target { app: app1, sidecar: s1 })
    }

    /// A plain request still gets 200 from this pod.
    async fn still_serving(&self, after: &str) {
        let r = raw(
            self.sidecar.listen,
            b"GET /alive HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(statuses(&r), vec![200], "not serving after {after}: {r:?}");
        assert!(r.contains("pod=pod-0"), "{r}");
    }
}

/// Every smuggling attempt below carries a second request for this path in
/// its body; the app must never see it.
const SMUGGLED: &str = "/smuggled";

/// Framing attacks: each one is refused with 400 (hyper's parser), the
/// connection is closed, and no part of it reaches the app.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn framing_attacks_get_400_and_nothing_is_smuggled() {
    let (t, peer) = Target::start("127.0.100.1", "127.0.100.2", false).await;
    let smuggled = format!("GET {SMUGGLED} HTTP/1.1\r\nHost: t\r\n\r\n");
    let cases: Vec<(&str, String)> = vec![
        (
            "conflicting Content-Length",
            format!("POST /a HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nContent-Length: 40\r\n\r\n{smuggled}"),
        ),
        (
            "Content-Length list",
            format!("POST /a HTTP/1.1\r\nHost: t\r\nContent-Length: 0, 40\r\n\r\n{smuggled}"),
        ),
        (
            "signed Content-Length",
            format!("POST /a HTTP/1.1\r\nHost: t\r\nContent-Length: +0\r\n\r\n{smuggled}"),
        ),
        (
            "Content-Length not a number",
            format!("POST /a HTTP/1.1\r\nHost: t\r\nContent-Length: 0x10\r\n\r\n{smuggled}"),
        ),
        (
            "Transfer-Encoding not ending in chunked",
            format!("POST /a HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n{smuggled}"),
        ),
        (
            "Transfer-Encoding unknown",
            format!("POST /a HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n{smuggled}"),
        ),
        (
            "Transfer-Encoding in HTTP/1.0",
            format!("POST /a HTTP/1.0\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"),
        ),
        (
            "space before the colon",
            format!("POST /a HTTP/1.1\r\nHost: t\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n{smuggled}"),
        ),
        (
            "obs-fold",
            format!("GET /a HTTP/1.1\r\nHost: t\r\nX-Folded: a\r\n b\r\n\r\n{smuggled}"),
        ),
        (
            "obs-fold hiding Transfer-Encoding",
            format!("POST /a HTTP/1.1\r\nHost: t\r\nX-A: a\r\n Transfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n{smuggled}"),
        ),
        (
            "NUL in a header value",
            format!("GET /a HTTP/1.1\r\nHost: t\r\nX-Nul: a\0b\r\n\r\n{smuggled}"),
        ),
        (
            "bare CR in a header value",
            format!("GET /a HTTP/1.1\r\nHost: t\r\nX-Cr: a\rContent-Length: 40\r\n\r\n{smuggled}"),
        ),
        (
            "bare CR as the line end",
            format!("GET /a HTTP/1.1\rHost: t\r\r{smuggled}"),
        ),
        (
            "NUL in the request line",
            format!("GET /a\0b HTTP/1.1\r\nHost: t\r\n\r\n{smuggled}"),
        ),
        (
            "space in the target",
            format!("GET /a b HTTP/1.1\r\nHost: t\r\n\r\n{smuggled}"),
        ),
        (
            "unknown HTTP version",
            format!("GET /a HTTP/1.7\r\nHost: t\r\n\r\n{smuggled}"),
        ),
    ];
    for (name, bytes) in &cases {
        let got = raw(t.sidecar.listen, bytes.as_bytes()).await;
        assert_eq!(statuses(&got), vec![400], "{name}: {got:?}");
        t.still_serving(name).await;
    }
    // Nothing but the liveness probes reached the app.
    let seen = t.app.seen();
    assert!(seen.iter().all(|s| s.path == "/alive"), "{:?}", paths(&seen));
    assert_eq!(seen.len(), cases.len());
    assert!(peer.app.seen().is_empty());
}

/// Content-Length and Transfer-Encoding together: hyper reads the body by
/// Transfer-Encoding alone, drops Content-Length and closes the connection
/// after the response (RFC 9112 §6.1), so the bytes after the chunked body
/// are never read as a request. (stickyd does not answer 400 here; see
/// SECURITY.md.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cl_and_te_together_read_by_te_alone_and_the_connection_closes() {
    let (t, peer) = Target::start("127.0.100.61", "127.0.100.62", false).await;
    let smuggled = format!("GET {SMUGGLED} HTTP/1.1\r\nHost: t\r\n\r\n");
    let cases = [
        (
            "CL+TE",
            format!(
                "POST /clte HTTP/1.1\r\nHost: t\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n{smuggled}"
            ),
        ),
        (
            "TE+CL",
            format!(
                "POST /clte HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\n3\r\nabc\r\n0\r\n\r\n{smuggled}"
            ),
        ),
        (
            "CL+TE, CL shorter than the chunks",
            format!(
                "POST /clte HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n{smuggled}"
            ),
        ),
    ];
    for (name, req) in &cases {
        let got = raw(t.sidecar.listen, req.as_bytes()).await;
        assert_eq!(statuses(&got), vec![200], "{name}: {got:?}");
        assert!(
            got.to_ascii_lowercase().contains("connection: close"),
            "{name}: {got:?}"
        );
        assert!(got.contains("bytes=3"), "{name}: the body is the chunks: {got:?}");
        t.still_serving(name).await;
    }
    let seen = t.app.seen();
    assert!(
        seen.iter().all(|s| s.path == "/clte" || s.path == "/alive"),
        "{:?}",
        paths(&seen)
    );
    assert_eq!(seen.len(), 2 * cases.len());
    for s in seen.iter().filter(|s| s.path == "/clte") {
        assert_eq!(s.body_bytes, 3);
        assert!(!s.headers.contains_key("content-length"), "{:?}", s.headers);
    }
    assert!(peer.app.seen().is_empty());
}

/// Chunked bodies whose framing breaks after the head was accepted: the
/// request may reach the app (its head was valid), but its body never
/// completes, the connection is closed, and the bytes after it are never
/// read as a request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_chunk_sizes_close_the_connection_and_smuggle_nothing() {
    let (t, peer) = Target::start("127.0.100.11", "127.0.100.12", false).await;
    let smuggled = format!("GET {SMUGGLED} HTTP/1.1\r\nHost: t\r\n\r\n");
    let cases = [
        ("chunk size not hex", format!("zz\r\nabc\r\n0\r\n\r\n{smuggled}")),
        ("negative chunk size", format!("-1\r\nabc\r\n0\r\n\r\n{smuggled}")),
        (
            "chunk size overflow",
            format!("fffffffffffffffffff\r\nabc\r\n0\r\n\r\n{smuggled}"),
        ),
        ("chunk size with a space", format!("1 1\r\na\r\n0\r\n\r\n{smuggled}")),
        (
            "chunk data longer than its size",
            format!("3\r\nabcdef\r\n0\r\n\r\n{smuggled}"),
        ),
        ("chunk without CRLF", format!("3\nabc\n0\n\n{smuggled}")),
    ];
    for (name, body) in &cases {
        let req = format!("POST /chunked HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n{body}");
        let got = raw(t.sidecar.listen, req.as_bytes()).await;
        let st = statuses(&got);
        // The head was fine, so the request may have gone out; its body
        // fails, so the answer is an error of stickyd's or no answer at all.
        assert!(
            st.is_empty() || st.iter().all(|s| *s == 400 || *s == 502),
            "{name}: {got:?}"
        );
        assert!(!got.contains(SMUGGLED), "{name}: {got:?}");
        t.still_serving(name).await;
    }
    let seen = t.app.seen();
    assert!(seen.iter().all(|s| s.path != SMUGGLED), "{:?}", paths(&seen));
    // A well-formed chunked request still works, and only the bytes of its
    // chunks reach the app.
    let got = raw(
        t.sidecar.listen,
        b"POST /ok HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(statuses(&got), vec![200], "{got}");
    assert!(got.contains("bytes=5"), "{got}");
    assert!(peer.app.seen().is_empty());
}

/// A chunked body the client framed wrongly is the client's fault: 400,
/// counted as a bad request (`kind="body"`), never a 502 of the upstream's;
/// when the break comes with the head, the app never sees the request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_body_framed_wrongly_gets_400_not_502() {
    let (t, _peer) = Target::start("127.0.100.71", "127.0.100.72", false).await;
    for (name, body) in [
        ("chunk size not hex", "zz\r\nabc\r\n0\r\n\r\n"),
        ("chunk size overflow", "fffffffffffffffffff\r\nabc\r\n0\r\n\r\n"),
    ] {
        let req = format!("POST /framed HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n{body}");
        let got = raw(t.sidecar.listen, req.as_bytes()).await;
        assert_eq!(statuses(&got), vec![400], "{name}: {got:?}");
        assert!(got.contains("chunked framing is invalid"), "{name}: {got:?}");
    }
    // The break after a first good chunk that went on to the app: 400 too.
    let mut s = TcpStream::connect(t.sidecar.listen).await.unwrap();
    s.write_all(b"POST /late HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
        .await
        .unwrap();
    // The break comes once the request, and its first chunk, went on to the app.
    eventually(Duration::from_secs(10), "/late reached the app", || async {
        let started = t.app.started();
        (started.iter().any(|p| p == "/late"), started)
    })
    .await;
    s.write_all(b"-5\r\nxxxxx\r\n0\r\n\r\n").await.unwrap();
    let got = read_all(&mut s).await;
    assert_eq!(statuses(&got), vec![400], "{got:?}");
    assert!(
        t.app.seen().iter().all(|s| s.path != "/framed"),
        "{:?}",
        paths(&t.app.seen())
    );
    let m = t.sidecar.metrics().await;
    assert!(m.contains("stickyd_bad_requests_total{kind=\"body\"} 3"), "{m}");
    assert!(!m.contains("kind=\"app_io\""), "{m}");
    t.still_serving("after bodies framed wrongly").await;
}

/// A valid request whose body holds a second request: exactly one request
/// reaches the app, with exactly Content-Length bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_in_a_body_stays_a_body() {
    let (t, _peer) = Target::start("127.0.100.21", "127.0.100.22", false).await;
    let smuggled = format!("GET {SMUGGLED} HTTP/1.1\r\nHost: t\r\n\r\n");
    let req = format!(
        "POST /carrier HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{smuggled}",
        smuggled.len()
    );
    let got = raw(t.sidecar.listen, req.as_bytes()).await;
    assert_eq!(statuses(&got), vec![200], "{got}");
    let seen = t.app.seen();
    assert_eq!(paths(&seen), vec!["/carrier"]);
    assert_eq!(seen[0].body_bytes, smuggled.len() as u64);
    // Chunked, the same.
    let req = format!(
        "POST /carrier2 HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{smuggled}\r\n0\r\n\r\n",
        smuggled.len()
    );
    let got = raw(t.sidecar.listen, req.as_bytes()).await;
    assert_eq!(statuses(&got), vec![200], "{got}");
    let seen = t.app.seen();
    assert_eq!(paths(&seen), vec!["/carrier", "/carrier2"]);
    assert_eq!(seen[1].body_bytes, smuggled.len() as u64);
    // A repeated, identical Content-Length is one Content-Length (RFC 9110
    // §8.6); the bytes after it are the next request on the connection.
    let got = raw(
        t.sidecar.listen,
        b"POST /dup HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabcGET /after HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(statuses(&got), vec![200, 200], "{got}");
    let seen = t.app.seen();
    assert_eq!(paths(&seen), vec!["/carrier", "/carrier2", "/dup", "/after"]);
    assert_eq!(seen[2].body_bytes, 3);
    // Two pipelined requests are two requests, in order, no more.
    let got = raw(
        t.sidecar.listen,
        b"GET /p1 HTTP/1.1\r\nHost: t\r\n\r\nGET /p2 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(statuses(&got), vec![200, 200], "{got}");
    assert_eq!(
        paths(&t.app.seen()),
        vec!["/carrier", "/carrier2", "/dup", "/after", "/p1", "/p2"]
    );
}

/// Oversized request lines and heads get 431 (STICKYD_MAX_HEADER_BYTES is
/// the bound on the whole head, request line included).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_request_lines_and_heads_get_431() {
    let (t, _peer) = Target::start("127.0.100.31", "127.0.100.32", false).await;
    let long_path = format!("/{}", "a".repeat(70 * 1024));
    let cases = [
        (
            "request line of 70 KiB",
            format!("GET {long_path} HTTP/1.1\r\nHost: t\r\n\r\n"),
        ),
        (
            "one header of 70 KiB",
            format!("GET / HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n", "b".repeat(70 * 1024)),
        ),
        (
            "a cookie of 70 KiB",
            format!(
                "GET / HTTP/1.1\r\nHost: t\r\nCookie: stickyd={}\r\n\r\n",
                "c".repeat(70 * 1024)
            ),
        ),
        (
            "200 header fields",
            format!(
                "GET / HTTP/1.1\r\nHost: t\r\n{}\r\n",
                (0..200).map(|i| format!("X-H{i}: v\r\n")).collect::<String>()
            ),
        ),
    ];
    for (name, req) in &cases {
        let got = raw(t.sidecar.listen, req.as_bytes()).await;
        assert_eq!(statuses(&got), vec![431], "{name}: {}", &got[..got.len().min(300)]);
        t.still_serving(name).await;
    }
    // A request line just under the limit is served.
    let path = format!("/{}", "a".repeat(8 * 1024));
    let got = raw(
        t.sidecar.listen,
        format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(statuses(&got), vec![200]);
    assert!(t.app.seen().iter().all(|s| s.path == "/alive" || s.path == path));
}

/// stickyd is not a forward proxy: absolute-form targets naming any host
/// (another host, the app itself, a peer) get 400; CONNECT gets 405; an
/// authority-form target gets 400. Nothing is dialled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_proxy_requests_are_refused() {
    let (t, peer) = Target::start("127.0.100.41", "127.0.100.42", false).await;
    let app = t.app.addr;
    let other = peer.sidecar.listen;
    let cases: Vec<(String, String, u16)> = vec![
        (
            "absolute-form, another host".into(),
            "GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n".into(),
            400,
        ),
        (
            "absolute-form, the app's address".into(),
            format!("GET http://{app}/direct HTTP/1.1\r\nHost: {app}\r\n\r\n"),
            400,
        ),
        (
            "absolute-form, a peer's address".into(),
            format!("GET http://{other}/direct HTTP/1.1\r\nHost: {other}\r\n\r\n"),
            400,
        ),
        (
            "absolute-form with an innocent Host".into(),
            format!("GET http://{app}/direct HTTP/1.1\r\nHost: t\r\n\r\n"),
            400,
        ),
        (
            "absolute-form https".into(),
            "GET https://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n".into(),
            400,
        ),
        (
            "CONNECT to another host".into(),
            "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n".into(),
            405,
        ),
        (
            "CONNECT to the app".into(),
            format!("CONNECT {app} HTTP/1.1\r\nHost: {app}\r\n\r\n"),
            405,
        ),
        (
            "authority-form with GET".into(),
            format!("GET {app} HTTP/1.1\r\nHost: {app}\r\n\r\n"),
            400,
        ),
    ];
    for (name, req, want) in &cases {
        let got = raw(t.sidecar.listen, req.as_bytes()).await;
        assert_eq!(statuses(&got).first(), Some(want), "{name}: {got:?}");
        t.still_serving(name).await;
    }
    assert!(
        t.app.seen().iter().all(|s| s.path == "/alive"),
        "{:?}",
        paths(&t.app.seen())
    );
    assert!(peer.app.seen().is_empty(), "{:?}", paths(&peer.app.seen()));
    let m = t.sidecar.metrics().await;
    assert!(m.contains("kind=\"connect\""), "{m}");
    assert!(m.contains("kind=\"absolute_form\""), "{m}");
}

/// `x-stickyd-hop` and `x-stickyd-session` from a client: the session
/// header is replaced, a hop marker only makes the request be served here
/// (repinning the client's own session), and neither leaks back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_stickyd_headers() {
    let (t, peer) = Target::start("127.0.100.51", "127.0.100.52", false).await;
    let to_peer = format!("stickyd={}", SessionId::for_pod("pod-1").encode());
    // Forged session header, no cookie: a new session, the app sees `new`.
    let got = raw(
        t.sidecar.listen,
        b"GET /s HTTP/1.1\r\nHost: t\r\nX-Stickyd-Session: pinned\r\nx-stickyd-session: evil\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(statuses(&got), vec![200], "{got}");
    assert!(got.contains("session=new"), "{got}");
    let lower = got.to_ascii_lowercase();
    assert!(!lower.contains("x-stickyd-session:"), "{got}");
    assert!(!lower.contains("x-stickyd-hop:"), "{got}");
    let seen = t.app.seen();
    let values: Vec<_> = seen[0].headers.get_all("x-stickyd-session").iter().collect();
    assert_eq!(values, vec!["new"]);
    // Without a hop marker, a cookie for pod-1 is forwarded there.
    let got = raw(
        t.sidecar.listen,
        format!("GET /f HTTP/1.1\r\nHost: t\r\nCookie: {to_peer}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(got.contains("pod=pod-1 session=pinned"), "{got}");
    // With a forged hop marker: served here, repinned, never forwarded.
    let before = peer.app.seen().len();
    for hop in ["pod-1", "evil", ""] {
        let got = raw(
            t.sidecar.listen,
            format!(
                "GET /h HTTP/1.1\r\nHost: t\r\nCookie: {to_peer}\r\nX-Stickyd-Hop: {hop}\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await;
        assert_eq!(statuses(&got), vec![200], "{got}");
        assert!(got.contains("pod=pod-0 session=repinned"), "hop {hop:?}: {got}");
        let lower = got.to_ascii_lowercase();
        assert!(!lower.contains("x-stickyd-hop:"), "{got}");
        // The response pins the client's own session here: the only effect.
        assert!(lower.contains("set-cookie: stickyd="), "{got}");
    }
    assert_eq!(peer.app.seen().len(), before, "a forged hop marker was forwarded");
    // The app never sees a client's hop marker.
    assert!(t.app.seen().iter().all(|s| !s.headers.contains_key("x-stickyd-hop")));
    t.still_serving("forged headers").await;
}

/// Cookies that are garbage, truncated, oversized, forged, name a
/// non-member or an IP: each is no cookie (a new session here, row 2) or a
/// repin (a non-member, row 7); none is ever dialled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_cookies_unsigned() {
    let (t, peer) = Target::start("127.0.101.1", "127.0.101.2", false).await;
    let member = SessionId::for_pod("pod-1").encode();
    let ghost = SessionId::for_pod("ghost").encode();
    let cases: Vec<(&str, String, &str)> = vec![
        ("garbage", "stickyd=%%%garbage%%%".into(), "new"),
        ("empty", "stickyd=".into(), "new"),
        ("truncated", format!("stickyd={}", &member[..11]), "new"),
        ("one too long", format!("stickyd={member}A"), "new"),
        ("oversized", format!("stickyd={}", "A".repeat(4000)), "new"),
        ("an IP", "stickyd=127.0.101.2".into(), "new"),
        ("an IP and port", format!("stickyd={}", peer.sidecar.listen), "new"),
        ("a URL", format!("stickyd=http://{}/", peer.sidecar.listen), "new"),
        ("a pod name", "stickyd=pod-1".into(), "new"),
        ("non-ASCII", "stickyd=\u{00e9}\u{00e9}\u{00e9}\u{00e9}".into(), "new"),
        ("a non-member", format!("stickyd={ghost}"), "repinned"),
        ("quoted non-member", format!("stickyd=\"{ghost}\""), "repinned"),
    ];
    for (name, cookie, want) in &cases {
        let req = format!("GET /c HTTP/1.1\r\nHost: t\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n");
        let got = raw(t.sidecar.listen, req.as_bytes()).await;
        assert_eq!(statuses(&got), vec![200], "{name}: {got}");
        assert!(got.contains(&format!("pod=pod-0 session={want}")), "{name}: {got}");
        // A fresh pin for this pod replaces it.
        let pin = format!("set-cookie: stickyd={}", SessionId::for_pod("pod-0").encode());
        assert!(
            got.to_ascii_lowercase().contains(&pin.to_ascii_lowercase()),
            "{name}: {got}"
        );
    }
    assert!(peer.app.seen().is_empty(), "{:?}", paths(&peer.app.seen()));
    // Many cookies, the valid one among garbage, still routes.
    let got = raw(
        t.sidecar.listen,
        format!(
            "GET /c HTTP/1.1\r\nHost: t\r\nCookie: a=1; stickyd=junk; stickyd={member}\r\nCookie: stickyd=zzz\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    assert!(got.contains("pod=pod-1 session=pinned"), "{got}");
    t.still_serving("cookies").await;
}

/// With a key set: unsigned values, values signed with another key, and
/// every mutation of a valid value are no cookie; a validly signed cookie
/// naming a non-member repins; a valid one routes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_cookies_signed() {
    let (t, peer) = Target::start("127.0.101.11", "127.0.101.12", true).await;
    let now = stickyd::affinity::unix_now();
    let ours = Codec::new(Keys::parse(KEY).unwrap(), Lifetimes::default());
    let theirs = Codec::new(
        Keys::parse("another-key-of-32-bytes-0123456789").unwrap(),
        Lifetimes::default(),
    );
    let pod1 = SessionId::for_pod("pod-1");
    let sid = Sid::random();
    let valid = ours.encode(pod1, sid, now, now);
    let mut cases: Vec<(String, String, &str)> = vec![
        ("unsigned member".into(), pod1.encode(), "new"),
        (
            "signed with another key".into(),
            theirs.encode(pod1, sid, now, now),
            "new",
        ),
        ("truncated".into(), valid[..valid.len() - 1].to_string(), "new"),
        (
            "MAC removed".into(),
            valid.rsplit_once('.').unwrap().0.to_string(),
            "new",
        ),
        (
            "created in the far future".into(),
            ours.encode(pod1, sid, now + 86_400, now + 86_400),
            "new",
        ),
        (
            "signed non-member".into(),
            ours.encode(SessionId::for_pod("ghost"), sid, now, now),
            "repinned",
        ),
    ];
    // Another pod's id spliced onto a valid MAC.
    let (_, rest) = valid.split_at(12);
    cases.push((
        "id swapped".into(),
        format!("{}{rest}", SessionId::for_pod("pod-0").encode()),
        "new",
    ));
    // The creation time moved forward under the same MAC.
    let parts: Vec<&str> = valid.split('.').collect();
    cases.push((
        "time changed".into(),
        format!("{}.{}.{}.{}.{}", parts[0], parts[1], "zz", parts[3], parts[4]),
        "new",
    ));
    // Another session's id under the same MAC.
    cases.push((
        "session id changed".into(),
        format!(
            "{}.{}.{}.{}.{}",
            parts[0],
            Sid::random().encode(),
            parts[2],
            parts[3],
            parts[4]
        ),
        "new",
    ));
    for (name, value, want) in &cases {
        let req = format!("GET /c HTTP/1.1\r\nHost: t\r\nCookie: stickyd={value}\r\nConnection: close\r\n\r\n");
        let got = raw(t.sidecar.listen, req.as_bytes()).await;
        assert_eq!(statuses(&got), vec![200], "{name}: {got}");
        assert!(got.contains(&format!("pod=pod-0 session={want}")), "{name}: {got}");
    }
    assert!(peer.app.seen().is_empty(), "a forged cookie reached pod-1");
    // The valid one routes to pod-1.
    let got = raw(
        t.sidecar.listen,
        format!("GET /c HTTP/1.1\r\nHost: t\r\nCookie: stickyd={valid}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(got.contains("pod=pod-1 session=pinned"), "{got}");
    t.still_serving("signed cookies").await;
}

fn paths(seen: &[common::Seen]) -> Vec<String> {
    seen.iter().map(|s| s.path.clone()).collect()
}

/// What the raw app got of each request: `("head", path)` as its head
/// comes, then its path and the bytes of its body as they came (a chunked
/// body through its final CRLF, trailers and all).
type Got = tokio::sync::mpsc::UnboundedReceiver<(String, String)>;

/// An app of raw bytes, for what a well-behaved app never sends. By path:
/// `/interim` answers a 103 that carries stickyd's fields and hop-by-hop
/// ones beside a Link, then 200 `ok`; `/trailers` a chunked `ok` whose
/// trailers carry stickyd's fields beside X-Sum; `/list` and `/twice` `ok`
/// with Content-Length `2, 2`, or the field twice; anything else 200 `ok`.
/// `/trailers-later` sends the trailers of `/trailers` only once `go` is
/// notified. It reports every request's head and body.
async fn raw_app(ip: &str) -> (RawApp, Got, Arc<Notify>) {
    let (tx, got) = tokio::sync::mpsc::unbounded_channel();
    let go = Arc::new(Notify::new());
    let app_go = go.clone();
    let app = RawApp::start(ip, move |mut s| {
        let (tx, go) = (tx.clone(), app_go.clone());
        async move {
            let mut buf = Vec::new();
            while let Some(head) = read_head(&mut s, &mut buf).await {
                let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
                let _ = tx.send(("head".into(), path.clone()));
                let len = content_length(&head);
                let chunked = head.contains("transfer-encoding: chunked");
                // A chunked body (the tests' own: one chunk, a last chunk,
                // trailers) ends with an empty line after its last chunk.
                let end = |b: &[u8]| {
                    let text = String::from_utf8_lossy(b);
                    text.find("0\r\n")
                        .and_then(|at| text[at..].find("\r\n\r\n").map(|e| at + e + 4))
                };
                let body_len = loop {
                    match if chunked { end(&buf) } else { Some(len) } {
                        Some(n) if buf.len() >= n => break n,
                        _ => {}
                    }
                    if !matches!(read_more(&mut s, &mut buf).await, Some(1..)) {
                        return;
                    }
                };
                let body: Vec<u8> = buf.drain(..body_len).collect();
                let _ = tx.send((path.clone(), String::from_utf8_lossy(&body).into_owned()));
                const TRAILERS: &str = "0\r\nX-Stickyd-Hop: leak\r\nx-stickyd-sessions: 9\r\nX-Sum: 3\r\n\
                                        X-Stickyd-Session: leak\r\n\r\n";
                if path == "/trailers-later" {
                    let head = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n";
                    if s.write_all(head.as_bytes()).await.is_err() {
                        return;
                    }
                    go.notified().await;
                    if s.write_all(TRAILERS.as_bytes()).await.is_err() {
                        return;
                    }
                    continue;
                }
                let trailers = format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n{TRAILERS}");
                let answer = match path.as_str() {
                    "/interim" => {
                        "HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\nX-Stickyd-Hop: leak\r\n\
                         x-stickyd-sessions: 9\r\nx-stickyd-session: leak\r\nConnection: x-private\r\nX-Private: 1\r\n\
                         Keep-Alive: timeout=5\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
                    }
                    "/trailers" => &trailers,
                    "/list" if head.starts_with("head ") => "HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\n",
                    "/list" => "HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nok",
                    "/twice" => "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok",
                    _ => "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
                };
                if s.write_all(answer.as_bytes()).await.is_err() {
                    return;
                }
            }
        }
    })
    .await;
    (app, got, go)
}

/// Two pods, each a sidecar over a [`raw_app`]: a request with the cookie
/// of `pod-1` sent to `pod-0` goes through both sidecars.
struct RawPods {
    sidecars: [Stickyd; 2],
    got: [Got; 2],
    go: [Arc<Notify>; 2],
    _apps: [RawApp; 2],
}

impl RawPods {
    async fn start(ips: [&str; 2]) -> RawPods {
        let listen = ips.map(addr_on);
        let env = [(
            "STICKYD_ENDPOINTS",
            format!("static:pod-0={},pod-1={}", listen[0], listen[1]),
        )];
        let (app0, got0, go0) = raw_app(ips[0]).await;
        let (app1, got1, go1) = raw_app(ips[1]).await;
        let s0 = Stickyd::start("pod-0", listen[0], app0.addr, &env).await;
        let s1 = Stickyd::start("pod-1", listen[1], app1.addr, &env).await;
        RawPods {
            sidecars: [s0, s1],
            got: [got0, got1],
            go: [go0, go1],
            _apps: [app0, app1],
        }
    }

    /// The entry sidecar's address, and the extra head line that sends a
    /// request on to the other pod's (`via_peer`).
    fn entry(&self, via_peer: bool) -> (SocketAddr, String) {
        let cookie = if via_peer {
            format!("Cookie: stickyd={}\r\n", SessionId::for_pod("pod-1").encode())
        } else {
            String::new()
        };
        (self.sidecars[0].listen, cookie)
    }

    /// What the app of the pod that serves the request reports next.
    async fn next(&mut self, via_peer: bool) -> (String, String) {
        let got = &mut self.got[usize::from(via_peer)];
        tokio::time::timeout(Duration::from_secs(10), got.recv())
            .await
            .expect("the app got the request")
            .expect("the app runs")
    }

    /// The path and body of the next request the app of the pod that
    /// serves it got whole.
    async fn got(&mut self, via_peer: bool) -> (String, String) {
        loop {
            let (what, body) = self.next(via_peer).await;
            if what != "head" {
                return (what, body);
            }
        }
    }
}

/// The head of each response in `text`, lower-cased.
fn heads(text: &str) -> Vec<String> {
    text.match_indices("HTTP/1.")
        .map(|(i, _)| {
            let rest = &text[i..];
            rest[..rest.find("\r\n\r\n").unwrap_or(rest.len())].to_ascii_lowercase()
        })
        .collect()
}

/// An interim response (103 Early Hints) loses what a final one loses:
/// stickyd's own fields (`x-stickyd-hop`, `-session`, `-sessions`) and the
/// hop-by-hop ones (Keep-Alive, Connection and what it names); its Link
/// goes on. Here and through a peer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interim_responses_lose_hop_by_hop_and_stickyd_fields_as_final_ones_do() {
    let mut pods = RawPods::start(["127.0.101.21", "127.0.101.22"]).await;
    for via_peer in [false, true] {
        let (addr, cookie) = pods.entry(via_peer);
        let req = format!("GET /interim HTTP/1.1\r\nHost: t\r\n{cookie}Connection: close\r\n\r\n");
        let got = raw(addr, req.as_bytes()).await;
        assert_eq!(statuses(&got), vec![103, 200], "via peer {via_peer}: {got:?}");
        let interim = &heads(&got)[0];
        assert!(interim.contains("\r\nlink: </style.css>; rel=preload"), "{got:?}");
        for leak in ["x-stickyd", "x-private", "keep-alive", "connection:"] {
            assert!(!interim.contains(leak), "via peer {via_peer}: {leak} in {interim:?}");
        }
        assert!(got.ends_with("\r\n\r\nok"), "{got:?}");
        assert_eq!(pods.got(via_peer).await.0, "/interim");
    }
}

/// stickyd's own fields never pass in trailers, nor hop-by-hop ones: a
/// chunked request's trailers reach the app without them (its chunks as
/// they came), and a chunked response's reach the client without them;
/// over HTTP/1.1, here and through a peer, and over HTTP/2 (hyper's path).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stickyd_fields_never_pass_in_trailers_either_way() {
    let mut pods = RawPods::start(["127.0.101.31", "127.0.101.32"]).await;
    // The trailers come with the head, or in a read of their own (the head
    // and the first chunk have reached the app).
    for (via_peer, later) in [(false, false), (true, false), (false, true), (true, true)] {
        let (addr, cookie) = pods.entry(via_peer);
        let head = format!(
            "POST /echo HTTP/1.1\r\nHost: t\r\n{cookie}Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
             3;ext=1\r\nabc\r\n"
        );
        let trailers = "0\r\nX-Stickyd-Session: forged\r\nx-stickyd-hop: forged\r\nX-Sum: 3\r\n\
                        X-STICKYD-SESSIONS: 1\r\nTE: trailers\r\n\r\n";
        let mut s = TcpStream::connect(addr).await.unwrap();
        if later {
            s.write_all(head.as_bytes()).await.unwrap();
            assert_eq!(pods.next(via_peer).await, ("head".into(), "/echo".into()));
            s.write_all(trailers.as_bytes()).await.unwrap();
        } else {
            s.write_all(format!("{head}{trailers}").as_bytes()).await.unwrap();
        }
        let got = read_all(&mut s).await;
        assert_eq!(statuses(&got), vec![200], "{got:?}");
        let (path, body) = pods.got(via_peer).await;
        assert_eq!(
            (path.as_str(), body.as_str()),
            ("/echo", "3;ext=1\r\nabc\r\n0\r\nX-Sum: 3\r\n\r\n"),
            "via peer {via_peer}, later {later}"
        );
        // The response's trailers: sent with it, or once its first chunk
        // has reached the client.
        let path = if later { "/trailers-later" } else { "/trailers" };
        let mut s = TcpStream::connect(addr).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: t\r\n{cookie}Connection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut got = String::new();
        if later {
            let mut b = [0u8; 1024];
            while !got.ends_with("2\r\nok\r\n") {
                let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut b))
                    .await
                    .expect("the first chunk in time")
                    .unwrap();
                assert!(n > 0, "{got:?}");
                got.push_str(&String::from_utf8_lossy(&b[..n]));
            }
            pods.go[usize::from(via_peer)].notify_one();
        }
        got.push_str(&read_all(&mut s).await);
        assert_eq!(statuses(&got), vec![200], "{got:?}");
        assert!(
            got.ends_with("\r\n\r\n2\r\nok\r\n0\r\nX-Sum: 3\r\n\r\n"),
            "via peer {via_peer}, later {later}: {got:?}"
        );
        assert_eq!(pods.got(via_peer).await.0, path);
    }
    // HTTP/2: the request's trailers, declared so that they go on to an
    // HTTP/1.1 app at all, and the response's.
    let mut h2 = h2c(pods.sidecars[0].listen).await;
    let (tx, body) = fed_body();
    let req = http::Request::post("/echo")
        .header("host", "t")
        .header("trailer", "x-stickyd-hop, x-stickyd-session, x-sum")
        .body(body)
        .unwrap();
    tx.send(http_body::Frame::data(bytes::Bytes::from_static(b"abc")))
        .unwrap();
    let mut trailers = http::HeaderMap::new();
    trailers.insert("x-stickyd-hop", "forged".parse().unwrap());
    trailers.insert("x-stickyd-session", "forged".parse().unwrap());
    trailers.insert("x-sum", "3".parse().unwrap());
    tx.send(http_body::Frame::trailers(trailers)).unwrap();
    drop(tx);
    let resp = h2.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let (_, body) = pods.got(false).await;
    assert!(body.ends_with("0\r\nx-sum: 3\r\n\r\n"), "{body:?}");
    assert!(!body.contains("stickyd"), "{body:?}");
    let req = http::Request::get("/trailers")
        .header("host", "t")
        .body(empty())
        .unwrap();
    let resp = h2.send_request(req).await.unwrap();
    let all = http_body_util::BodyExt::collect(resp.into_body()).await.unwrap();
    let trailers = all.trailers().cloned().expect("the response's trailers");
    assert_eq!(all.to_bytes(), "ok");
    let names: Vec<&str> = trailers.keys().map(|k| k.as_str()).collect();
    assert_eq!(names, ["x-sum"], "{trailers:?}");
}

/// A response whose Content-Length is a list of equal values (`2, 2`), or
/// the field twice, goes on with one `content-length: 2` (to a HEAD as
/// well); here, through a peer, and to an HTTP/2 client, which would take
/// the list for a malformed response.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_valued_content_length_goes_on_as_one_value() {
    let mut pods = RawPods::start(["127.0.101.41", "127.0.101.42"]).await;
    for via_peer in [false, true] {
        let (addr, cookie) = pods.entry(via_peer);
        for (method, path, body) in [("GET", "/list", "ok"), ("GET", "/twice", "ok"), ("HEAD", "/list", "")] {
            let req = format!("{method} {path} HTTP/1.1\r\nHost: t\r\n{cookie}Connection: close\r\n\r\n");
            let got = raw(addr, req.as_bytes()).await;
            let head = &heads(&got)[0];
            let lengths: Vec<&str> = head.lines().filter(|l| l.starts_with("content-length:")).collect();
            assert_eq!(
                lengths,
                ["content-length: 2"],
                "{method} {path} via peer {via_peer}: {got:?}"
            );
            assert!(got.ends_with(&format!("\r\n\r\n{body}")), "{got:?}");
            assert_eq!(pods.got(via_peer).await.0, path);
        }
    }
    let mut h2 = h2c(pods.sidecars[0].listen).await;
    for path in ["/list", "/twice"] {
        let req = http::Request::get(path).header("host", "t").body(empty()).unwrap();
        let resp = h2.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let lengths: Vec<_> = resp.headers().get_all("content-length").iter().cloned().collect();
        assert_eq!(lengths, ["2"], "{path}");
        let body = http_body_util::BodyExt::collect(resp.into_body()).await.unwrap();
        assert_eq!(body.to_bytes(), "ok", "{path}");
    }
}
