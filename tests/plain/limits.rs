//! Bounded resources on real processes: STICKYD_MAX_CONNECTIONS, header
//! size and count limits, and 10,000 idle keep-alive connections within a
//! memory bound. (The header read timeout against slowloris and silent
//! connections is a duration: `timing.rs`, on tokio's paused clock.)
//!
//! Addresses: 127.0.120.x to 127.0.129.x.
//!
//! Shedding at the buffer budget (STICKYD_MEMORY_LIMIT) is here too.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::common::*;
use http::Request;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// `n` keep-alive connections to `addr`, each having had one request
/// (`{prefix}{i}`) answered 200, left open.
async fn served_connections(addr: SocketAddr, n: usize, prefix: &str) -> Vec<TcpStream> {
    let mut conns = Vec::new();
    for i in 0..n {
        let mut c = TcpStream::connect(addr).await.unwrap();
        assert_eq!(
            exchange(&mut c, &format!("{prefix}{i}"), Duration::from_secs(5)).await,
            Some(200)
        );
        conns.push(c);
    }
    conns
}

/// Sends one keep-alive GET on `s` and reads exactly its response (the
/// app's responses carry Content-Length). Returns the status, or None
/// when the connection ended or nothing came within `within`.
async fn exchange(s: &mut TcpStream, path: &str, within: Duration) -> Option<u16> {
    let req = format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    tokio::time::timeout(within, read_response(s)).await.ok()?
}

async fn read_response(s: &mut TcpStream) -> Option<u16> {
    let (head, _) = read_message(s).await?;
    head.get(9..12)?.parse().ok()
}

/// True when the server closed `s` (EOF or reset) within `within`,
/// draining anything it sent first.
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// STICKYD_MAX_CONNECTIONS=50: the 51st connection is closed unserved and
/// counted (at once: the header read timeout, which could close it too, is
/// far beyond the wait); the 50 before it keep working; once one closes, a
/// new one is accepted again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_closes_the_next_one_and_counts_it() {
    let (_app, s) = one_pod(
        "127.0.120.1",
        &[
            ("STICKYD_MAX_CONNECTIONS", "50".into()),
            ("STICKYD_HEADER_READ_TIMEOUT", "600".into()),
        ],
    )
    .await;
    let mut conns = served_connections(s.listen, 50, "/c").await;
    let mut extra = TcpStream::connect(s.listen).await.unwrap();
    let _ = extra.write_all(b"GET /extra HTTP/1.1\r\nHost: t\r\n\r\n").await;
    let mut got = Vec::new();
    let end = tokio::time::timeout(Duration::from_secs(30), extra.read_to_end(&mut got)).await;
    assert!(end.is_ok(), "the 51st stayed open");
    assert!(got.is_empty(), "the 51st was served: {}", String::from_utf8_lossy(&got));
    let m = s.metrics().await;
    assert_eq!(
        (sample_or_zero(&m, "stickyd_connections_refused_total") as u64),
        1,
        "{m}"
    );
    assert_eq!(
        (sample_or_zero(&m, "stickyd_shed_total{kind=\"connection\"}") as u64),
        1,
        "{m}"
    );
    assert_eq!((sample_or_zero(&m, "stickyd_connections_open") as u64), 50, "{m}");
    // The earlier ones keep working.
    for (i, c) in conns.iter_mut().enumerate() {
        assert_eq!(
            exchange(c, &format!("/again{i}"), Duration::from_secs(5)).await,
            Some(200)
        );
    }
    // One leaves: a new connection is served again (the permit comes back
    // when the server sees the close).
    drop(conns.pop());
    eventually(
        Duration::from_secs(5),
        "a connection served after one closed",
        || async {
            let mut c = TcpStream::connect(s.listen).await.unwrap();
            let st = exchange(&mut c, "/after", Duration::from_secs(2)).await;
            (st == Some(200), st)
        },
    )
    .await;
}

/// 431 for a head over STICKYD_MAX_HEADER_BYTES and for more than
/// STICKYD_MAX_HEADERS fields; heads within both limits are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_size_and_count_limits_give_431() {
    let (app, s) = one_pod(
        "127.0.122.1",
        &[
            ("STICKYD_MAX_HEADER_BYTES", "8192".into()),
            ("STICKYD_MAX_HEADERS", "20".into()),
        ],
    )
    .await;
    let head = |fields: usize, value_len: usize| {
        let mut h = String::from("GET /h HTTP/1.1\r\nHost: t\r\n");
        for i in 0..fields {
            h.push_str(&format!("X-F{i}: {}\r\n", "v".repeat(value_len)));
        }
        h.push_str("\r\n");
        h
    };
    for (name, req, want) in [
        ("6 KiB head", head(1, 6 * 1024), 200),
        ("10 KiB head", head(1, 10 * 1024), 431),
        ("10 KiB over many fields", head(10, 1024), 431),
        ("19 fields", head(18, 4), 200),
        ("21 fields", head(20, 4), 431),
        ("100 fields", head(99, 4), 431),
    ] {
        let mut c = TcpStream::connect(s.listen).await.unwrap();
        c.write_all(req.as_bytes()).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), read_response(&mut c))
            .await
            .expect("an answer in time");
        assert_eq!(got, Some(want), "{name}");
    }
    assert_eq!(app.seen().len(), 2);
    let r = get(&format!("http://{}/", s.listen), &[]).await.unwrap();
    assert_eq!(r.status, 200);
}

/// The soft limit on open files of this process.
fn nofile_limit() -> usize {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(1024)
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// 10,000 idle keep-alive connections (or as many as the open-file limit
/// allows), opened from several loopback source addresses, each having made
/// one request: the sidecar's memory stays within a bound, and every
/// connection is still usable afterwards.
///
/// The bound: the sidecar's baseline plus 4 KiB per connection (2.0
/// measured), plus 8 MiB of headroom. Between requests a connection holds
/// its task and its socket's registration, no buffer. At most 128 client
/// connections have an app connection bound to them (`proxy::MAX_BOUND`);
/// the rest share the pool. The bound fails on a head buffer of 4 KiB kept
/// by every idle connection, on app connections pinned by idle clients, or
/// on any per-connection queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_idle_keep_alive_connections_stay_within_a_memory_bound() {
    let limit = nofile_limit();
    // The sidecar inherits this limit: one descriptor per idle client
    // connection, plus at most 128 bound app connections and the pool; keep
    // 1,000 spare.
    let n = 10_000.min(limit.saturating_sub(1_000));
    assert!(n >= 1_000, "open-file limit too low to mean anything: {limit}");
    let (_app, s) = one_pod(
        "127.0.123.1",
        &[
            ("STICKYD_MAX_CONNECTIONS", (n + 100).to_string()),
            // The test's own pace must not trip the idle cut.
            ("STICKYD_HEADER_READ_TIMEOUT", "120".into()),
            // The recording app shares this busy test process: give its
            // accept loop time.
            ("STICKYD_CONNECT_TIMEOUT", "5".into()),
        ],
    )
    .await;
    let pid = s.child.id();
    // Warm up the app pool and allocator with a few requests.
    for _ in 0..20 {
        get(&format!("http://{}/", s.listen), &[]).await.unwrap();
    }
    let baseline = rss_kib(pid);
    let listen = s.listen;
    let started = Instant::now();
    let sources = [
        "127.0.124.1",
        "127.0.124.2",
        "127.0.124.3",
        "127.0.124.4",
        "127.0.124.5",
    ];
    let batch = 100;
    let opening = async {
        let mut conns: Vec<TcpStream> = Vec::with_capacity(n);
        while conns.len() < n {
            let take = batch.min(n - conns.len());
            let base = conns.len();
            let opened = futures_util::future::join_all((0..take).map(|k| {
                let src: SocketAddr = format!("{}:0", sources[(base + k) % sources.len()]).parse().unwrap();
                async move {
                    let sock = TcpSocket::new_v4().unwrap();
                    sock.bind(src).unwrap();
                    let mut c = tokio::time::timeout(Duration::from_secs(10), sock.connect(listen))
                        .await
                        .expect("connect in time")
                        .expect("connect");
                    let st = exchange(&mut c, "/idle", Duration::from_secs(20)).await;
                    assert_eq!(st, Some(200), "connection {}", base + k);
                    c
                }
            }))
            .await;
            conns.extend(opened);
        }
        conns
    };
    // A hang guard: the measure is memory, not time.
    let mut conns = tokio::time::timeout(Duration::from_secs(240), opening)
        .await
        .expect("opening the connections hung");
    let opened_in = started.elapsed();
    // Let the sidecar settle, then measure.
    eventually(Duration::from_secs(10), "every connection open", || async {
        let m = s.metrics().await;
        ((sample_or_zero(&m, "stickyd_connections_open") as u64) >= n as u64, m)
    })
    .await;
    let rss = rss_kib(pid);
    let peak = s.peak_rss_kib();
    let bound = baseline + 4 * n as u64 + 8 * 1024;
    eprintln!(
        "{n} idle connections (limit {limit}) opened in {opened_in:?}: RSS {baseline} KiB -> {rss} KiB (peak {peak} KiB), {:.1} KiB per connection, bound {bound} KiB",
        (rss.saturating_sub(baseline)) as f64 / n as f64
    );
    assert!(rss <= bound, "RSS {rss} KiB over the bound {bound} KiB");
    assert!(peak <= bound, "peak RSS {peak} KiB over the bound {bound} KiB");

    // Every connection is still usable.
    let mut failed = 0;
    for chunk in conns.chunks_mut(batch) {
        let results =
            futures_util::future::join_all(chunk.iter_mut().map(|c| exchange(c, "/again", Duration::from_secs(20))))
                .await;
        failed += results.iter().filter(|r| **r != Some(200)).count();
    }
    assert_eq!(failed, 0, "{failed} of {n} idle connections no longer usable");
    let m = s.metrics().await;
    assert_eq!(
        (sample_or_zero(&m, "stickyd_connections_refused_total") as u64),
        0,
        "{m}"
    );
}

/// Idle client keep-alive connections pin at most `MAX_BOUND` app
/// connections: 300 clients that each made one request, one after the
/// other, leave at most 128 app connections open (the rest went through the
/// shared pool, which reuses one connection for sequential requests).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_client_connections_do_not_pin_app_connections() {
    let (_app, s) = one_pod("127.0.126.11", &[]).await;
    let pid = s.child.id();
    let fds = || std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count();
    let before = fds();
    // Held open while the descriptors are counted.
    let _open = served_connections(s.listen, 300, "/p").await;
    eventually(Duration::from_secs(5), "descriptors for 300 idle clients", || {
        let extra = fds() - before;
        std::future::ready((extra <= 300 + stickyd::proxy::MAX_BOUND + 8, extra))
    })
    .await;
}

/// Per-pod metric series do not outlive the pod: after 30 pods came and
/// went (a few rollouts), `/metrics` keeps series for the pods in the view
/// only, so a long-lived sidecar's memory and scrape size stay bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_forget_pods_that_left_the_view() {
    let target = App::start("peer", "127.0.127.2").await;
    let app = App::start("pod-0", "127.0.127.1").await;
    let listen = addr_on("127.0.127.1");
    let file = temp_path("churn");
    write_peers(&file, &[("pod-0", listen)]);
    let s = Stickyd::start(
        "pod-0",
        listen,
        app.addr,
        &[("STICKYD_ENDPOINTS", format!("file:{}", file.display()))],
    )
    .await;
    for i in 0..30 {
        let name = format!("web-{i}");
        write_peers(&file, &[("pod-0", listen), (name.as_str(), target.addr)]);
        wait_for_view(&s, &["pod-0", &name]).await;
        let cookie = format!("stickyd={}", stickyd::affinity::SessionId::for_pod(&name).encode());
        let r = get(&format!("http://{listen}/"), &[("cookie", &cookie)]).await.unwrap();
        assert_eq!(r.pod(), "peer");
    }
    let m = s.metrics().await;
    let series = m
        .lines()
        .filter(|l| l.starts_with("stickyd_") && l.contains("target_pod=\"web-"))
        .count();
    assert!(series <= 2, "{series} series for pods that left the view");
}

/// One response on `s`, its head lower-cased and its body as text, within
/// `within`.
async fn response_text(s: &mut TcpStream, within: Duration) -> Option<(String, String)> {
    let (head, body) = tokio::time::timeout(within, read_message(s)).await.ok()??;
    Some((head, String::from_utf8_lossy(&body).into_owned()))
}

/// The buffer budget (STICKYD_MEMORY_LIMIT=15Mi, 80 % of it all taken by the 12 MiB base, leaves it its minimum, 64
/// KiB): a client holding a large head half-sent holds most of it; a second
/// large head does not fit and is answered 503 with Retry-After, counted in
/// stickyd_shed_total{kind="request"}; a body is still copied whole, in
/// smaller pieces; once the first head is served, the budget is free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_buffer_budget_a_large_head_is_shed_with_503_and_retry_after() {
    let (_app, s) = one_pod(
        "127.0.128.1",
        &[
            ("STICKYD_MEMORY_LIMIT", "15Mi".into()),
            ("STICKYD_MAX_CONNECTIONS", "100".into()),
        ],
    )
    .await;
    let m = s.metrics().await;
    assert_eq!(
        (sample_or_zero(&m, "stickyd_memory_limit_bytes") as u64),
        15 << 20,
        "{m}"
    );
    let big = |path: &str, pad: usize| format!("GET {path} HTTP/1.1\r\nHost: t\r\nx-pad: {}\r\n", "a".repeat(pad));

    // A: 40 KiB of a head, not yet ended: its buffer holds ~60 KiB of the
    // budget beyond the connection's own 4 KiB.
    let mut a = TcpStream::connect(s.listen).await.unwrap();
    a.write_all(big("/a", 40 << 10).as_bytes()).await.unwrap();
    eventually(Duration::from_secs(5), "A's head holding budget", || async {
        let m = s.metrics().await;
        ((sample_or_zero(&m, "stickyd_buffer_bytes") as u64) >= 48 << 10, m)
    })
    .await;

    // B: a 10 KiB head does not fit beside it.
    let mut b = TcpStream::connect(s.listen).await.unwrap();
    b.write_all(format!("{}\r\n", big("/b", 10 << 10)).as_bytes())
        .await
        .unwrap();
    let (head, body) = response_text(&mut b, Duration::from_secs(5))
        .await
        .expect("B got no answer");
    assert!(head.starts_with("http/1.1 503"), "{head}");
    assert!(head.contains("\r\nretry-after: 1"), "{head}");
    assert!(head.contains("\r\nconnection: close"), "{head}");
    assert!(body.contains("STICKYD_MEMORY_LIMIT"), "{body}");
    assert!(closed_within(&mut b, Duration::from_secs(30)).await, "B stayed open");

    // C: a small head fits in the connection's own share, and its 200 KiB
    // body goes through whole, in pieces the budget does not pay for.
    let mut c = TcpStream::connect(s.listen).await.unwrap();
    let body_len = 200 << 10;
    c.write_all(format!("POST /c HTTP/1.1\r\nHost: t\r\ncontent-length: {body_len}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    c.write_all(&vec![b'x'; body_len]).await.unwrap();
    let (head, body) = response_text(&mut c, Duration::from_secs(5))
        .await
        .expect("C got no answer");
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(body.contains(&format!("bytes={body_len}")), "{body}");

    // A ends its head and is served; its budget comes back.
    a.write_all(b"\r\n").await.unwrap();
    let (head, _) = response_text(&mut a, Duration::from_secs(5))
        .await
        .expect("A got no answer");
    assert!(head.starts_with("http/1.1 200"), "{head}");
    eventually(Duration::from_secs(5), "A's budget coming back", || async {
        let m = s.metrics().await;
        ((sample_or_zero(&m, "stickyd_buffer_bytes") as u64) == 0, m)
    })
    .await;
    let mut again = TcpStream::connect(s.listen).await.unwrap();
    again
        .write_all(format!("{}\r\n", big("/again", 10 << 10)).as_bytes())
        .await
        .unwrap();
    let (head, _) = response_text(&mut again, Duration::from_secs(5))
        .await
        .expect("no answer after A");
    assert!(head.starts_with("http/1.1 200"), "{head}");

    let m = s.metrics().await;
    assert_eq!(
        (sample_or_zero(&m, "stickyd_shed_total{kind=\"request\"}") as u64),
        1,
        "{m}"
    );
    assert_eq!(
        (sample_or_zero(&m, "stickyd_shed_total{kind=\"connection\"}") as u64),
        0,
        "{m}"
    );
}

/// A connection served by hyper (here h2c with prior knowledge) takes its
/// buffers from the budget for as long as it lives: with the minimum budget
/// (64 KiB) one fits, and it has nothing left for a stream (refused with
/// REFUSED_STREAM, counted in stickyd_shed_total{kind="stream"}); the next
/// connection gets GOAWAY and is closed, counted in
/// stickyd_shed_total{kind="connection"}.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_buffer_budget_a_second_http2_connection_is_shed() {
    let (_app, s) = one_pod(
        "127.0.128.2",
        &[
            ("STICKYD_MEMORY_LIMIT", "15Mi".into()),
            ("STICKYD_MAX_CONNECTIONS", "100".into()),
        ],
    )
    .await;
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";
    // The first connection takes the whole budget: its streams are refused
    // with REFUSED_STREAM (which clients retry), never answered 5xx.
    let mut first = h2c(s.listen).await;
    let req = Request::get(format!("http://{}/refused", s.listen))
        .body(empty())
        .unwrap();
    let err = first
        .send_request(req)
        .await
        .expect_err("a stream was served past the budget");
    assert!(
        format!("{err:?}").contains("REFUSED_STREAM"),
        "not refused with REFUSED_STREAM: {err:?}"
    );

    // A new connection gets the server's preface and a GOAWAY that
    // processed no stream (the client retries elsewhere), then the end.
    let mut second = TcpStream::connect(s.listen).await.unwrap();
    second.write_all(PREFACE).await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), second.read_to_end(&mut got))
        .await
        .expect("the second connection was neither refused nor closed")
        .unwrap();
    assert_eq!(&got[..9], &[0, 0, 0, 4, 0, 0, 0, 0, 0], "no SETTINGS first: {got:?}");
    let goaway = &got[9..];
    assert_eq!(goaway[3], 7, "not a GOAWAY: {got:?}");
    assert_eq!(
        &goaway[9..17],
        &[0, 0, 0, 0, 0, 0, 0, 0],
        "last stream 0, NO_ERROR: {got:?}"
    );
    let m = s.metrics().await;
    assert_eq!(
        sample_or_zero(&m, "stickyd_shed_total{kind=\"connection\"}") as u64,
        1,
        "{m}"
    );
    assert_eq!(
        sample_or_zero(&m, "stickyd_shed_total{kind=\"stream\"}") as u64,
        1,
        "{m}"
    );

    // The first one closes: its budget comes back, and h2c is served again.
    drop(first);
    eventually(Duration::from_secs(5), "h2c served after the first closed", || async {
        let mut c = TcpStream::connect(s.listen).await.unwrap();
        c.write_all(PREFACE).await.unwrap();
        let mut got = [0u8; 9];
        let r = tokio::time::timeout(Duration::from_secs(2), c.read_exact(&mut got)).await;
        // hyper's SETTINGS carry its limits; a refusal's carry none.
        let served = matches!(r, Ok(Ok(9))) && got[3] == 4 && got[..3] != [0, 0, 0];
        (served, format!("{r:?} {got:?}"))
    })
    .await;
}

/// HTTP/2 streams reach an HTTP/1.1 app through a bounded pool
/// (STICKYD_UPSTREAM_MAX_CONNECTIONS), as HAProxy's server `maxconn`: 40
/// streams at once over two connections, each held 20 ms by the app, are
/// all answered, and the app never has more than 2 connections open; the
/// rest waited in the queue. One connection per stream would have opened 40.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_streams_queue_for_a_bounded_pool_of_app_connections() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let open = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let (o, m) = (open.clone(), most.clone());
    let app = RawApp::start("127.0.128.3", move |stream| {
        let (open, most) = (o.clone(), m.clone());
        async move {
            let now = open.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(now, Ordering::SeqCst);
            serve_hyper(stream, false, |_req| async {
                tokio::time::sleep(Duration::from_millis(20)).await;
                http::Response::new(full("ok"))
            })
            .await;
            open.fetch_sub(1, Ordering::SeqCst);
        }
    })
    .await;
    let listen = addr_on("127.0.128.3");
    let s = Stickyd::start(
        "pod-0",
        listen,
        app.addr,
        &[
            ("STICKYD_ENDPOINTS", format!("static:pod-0={listen}")),
            ("STICKYD_UPSTREAM_MAX_CONNECTIONS", "2".into()),
        ],
    )
    .await;
    let cookie = format!("stickyd={}", cookie_for("pod-0"));
    let mut streams = Vec::new();
    for c in 0..2 {
        let sender = h2c(s.listen).await;
        for i in 0..20 {
            let mut sender = sender.clone();
            let req = Request::get(format!("http://{}/q{c}-{i}", s.listen))
                .header("cookie", &cookie)
                .body(empty())
                .unwrap();
            streams.push(tokio::spawn(async move {
                sender.send_request(req).await.map(|r| r.status())
            }));
        }
    }
    for st in streams {
        let status = tokio::time::timeout(Duration::from_secs(10), st)
            .await
            .expect("a stream waited past 10 s")
            .unwrap()
            .expect("a stream failed");
        assert_eq!(status, 200);
    }
    let most = most.load(Ordering::SeqCst);
    assert!((1..=2).contains(&most), "the app had {most} connections open at once");
}

/// A request that waits for a turn longer than STICKYD_QUEUE_TIMEOUT gets
/// 503 with Retry-After, counted in stickyd_shed_total{kind="queue"}; the
/// one holding the only connection is answered when the app answers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_queued_past_the_queue_timeout_is_shed_with_503() {
    use std::sync::Arc;
    let release = Arc::new(tokio::sync::Notify::new());
    let arrived = Arc::new(tokio::sync::Notify::new());
    let (r, a) = (release.clone(), arrived.clone());
    let app = RawApp::start("127.0.128.4", move |stream| {
        let (release, arrived) = (r.clone(), a.clone());
        async move {
            serve_hyper(stream, false, move |_req| {
                let (release, arrived) = (release.clone(), arrived.clone());
                async move {
                    arrived.notify_one();
                    release.notified().await;
                    http::Response::new(full("ok"))
                }
            })
            .await;
        }
    })
    .await;
    let listen = addr_on("127.0.128.4");
    let s = Stickyd::start(
        "pod-0",
        listen,
        app.addr,
        &[
            ("STICKYD_ENDPOINTS", format!("static:pod-0={listen}")),
            ("STICKYD_UPSTREAM_MAX_CONNECTIONS", "1".into()),
            ("STICKYD_QUEUE_TIMEOUT", "300ms".into()),
        ],
    )
    .await;
    let cookie = format!("stickyd={}", cookie_for("pod-0"));
    let sender = h2c(s.listen).await;
    let get = |path: &str| {
        let mut sender = sender.clone();
        let req = Request::get(format!("http://{}{path}", s.listen))
            .header("cookie", &cookie)
            .body(empty())
            .unwrap();
        async move { sender.send_request(req).await.unwrap() }
    };
    let held = tokio::spawn(get("/held"));
    // The first holds the only turn once the app has it.
    tokio::time::timeout(Duration::from_secs(5), arrived.notified())
        .await
        .expect("the first request never reached the app");
    let shed = get("/queued").await;
    assert_eq!(shed.status(), 503);
    assert_eq!(
        shed.headers().get("retry-after").map(|v| v.to_str().unwrap()),
        Some("1")
    );
    let m = s.metrics().await;
    assert_eq!(
        sample_or_zero(&m, "stickyd_shed_total{kind=\"queue\"}") as u64,
        1,
        "{m}"
    );
    release.notify_one();
    let held = tokio::time::timeout(Duration::from_secs(5), held)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(held.status(), 200);
}
