//! `stickyd demo`, run as the real binary on its own 127.0.x.y addresses:
//! the stickiness it prints with and without sidecars, requests of our own
//! through its load balancer, churn through the control endpoints, the
//! app-only mode, and argument errors.

use crate::common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use stickyd::demo::app::Reply;
use stickyd::demo::load::Jar;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A running `stickyd demo`, killed when dropped.
struct Demo {
    child: Child,
    lines: mpsc::Receiver<String>,
    out: Vec<String>,
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Demo {
    fn start(args: &[&str], env: &[(&str, &str)]) -> Demo {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_stickyd"));
        cmd.arg("demo")
            .args(args)
            .env_remove("STICKYD_POD_NAME")
            .env("STICKYD_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn stickyd demo");
        let stdout = child.stdout.take().unwrap();
        let lines = common::line_channel(stdout);
        Demo {
            child,
            lines,
            out: Vec::new(),
        }
    }

    /// Waits (at most `within`) for a line containing `needle`.
    fn wait_line(&mut self, needle: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.out.push(l.clone());
                    if l.contains(needle) {
                        return l;
                    }
                }
                Err(_) => panic!(
                    "no line with {needle:?} within {within:?}; output so far:\n{}",
                    self.out.join("\n")
                ),
            }
        }
    }

    /// The load balancer's address, from the startup lines.
    fn lb(&mut self) -> SocketAddr {
        let l = self.wait_line("load balancer http://", Duration::from_secs(15));
        let addr = l.split("http://").nth(1).unwrap().split('/').next().unwrap();
        addr.parse().unwrap()
    }

    /// Waits for the process to exit by itself; returns its status and the
    /// `result:` line as key → value.
    fn finish(&mut self, within: Duration) -> (ExitStatus, BTreeMap<String, String>) {
        let line = self.wait_line("result: ", within);
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(Instant::now() < deadline, "the demo did not exit after its result line");
            std::thread::sleep(Duration::from_millis(50));
        };
        let kv = line
            .trim_start_matches("result: ")
            .split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        (status, kv)
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }
}

fn pct(kv: &BTreeMap<String, String>, key: &str) -> f64 {
    kv[key].trim_end_matches('%').parse().unwrap()
}

fn num(kv: &BTreeMap<String, String>, key: &str) -> u64 {
    kv[key].parse().unwrap()
}

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

struct Answer {
    status: u16,
    headers: http::HeaderMap,
    body: Bytes,
}

async fn send(c: &HttpClient, method: &str, url: &str, jar: Option<&mut Jar>, body: Bytes) -> Answer {
    let mut b = http::Request::builder()
        .method(method)
        .uri(url)
        .header("accept", "application/json");
    if let Some(h) = jar.as_ref().and_then(|j| j.header()) {
        b = b.header("cookie", h);
    }
    let resp = tokio::time::timeout(Duration::from_secs(10), c.request(b.body(Full::new(body)).unwrap()))
        .await
        .expect("request timed out")
        .expect("request failed");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    if let Some(j) = jar {
        j.store(&headers);
    }
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Answer { status, headers, body }
}

/// One session of `n` requests; returns its replies.
async fn session_requests(c: &HttpClient, url: &str, jar: &mut Jar, n: usize) -> Vec<Reply> {
    let mut out = Vec::new();
    for _ in 0..n {
        let a = send(c, "GET", url, Some(jar), Bytes::new()).await;
        assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
        out.push(serde_json::from_slice(&a.body).unwrap());
    }
    out
}

async fn pods_json(c: &HttpClient, lb: SocketAddr) -> serde_json::Value {
    let a = send(c, "GET", &format!("http://{lb}/_demo/pods"), None, Bytes::new()).await;
    assert_eq!(a.status, 200);
    serde_json::from_slice(&a.body).unwrap()
}

/// An `Upgrade: echo` connection through the load balancer with `cookie`;
/// returns the pod that answered and the echo of `msg`.
async fn echo_upgrade(lb: SocketAddr, cookie: &str, msg: &str) -> (String, String) {
    let mut s = tokio::net::TcpStream::connect(lb).await.unwrap();
    let head =
        format!("GET /echo HTTP/1.1\r\nHost: demo\r\nConnection: upgrade\r\nUpgrade: echo\r\nCookie: {cookie}\r\n\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(10);
    // Read the 101 head and the pod line.
    let pod = loop {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some((head, rest)) = text.split_once("\r\n\r\n") {
            assert!(head.starts_with("HTTP/1.1 101"), "{head}");
            if let Some((pod, _)) = rest.split_once('\n') {
                break pod.to_string();
            }
        }
        assert!(Instant::now() < deadline);
    };
    s.write_all(msg.as_bytes()).await.unwrap();
    let mut echo = vec![0u8; msg.len()];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut echo))
        .await
        .unwrap()
        .unwrap();
    (pod, String::from_utf8(echo).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_sidecars_every_session_stays_on_its_pod() {
    let mut d = Demo::start(
        &[
            "--duration",
            "8",
            "--listen",
            "127.0.41.1:0",
            "--base-ip",
            "127.0.41.10",
            "--port",
            "0",
            "--app-port",
            "0",
            "--admin-port",
            "0",
            "--sessions",
            "20",
            "--requests",
            "10",
            "--think-ms",
            "50",
        ],
        &[],
    );
    let lb = d.lb();
    let c = client();
    let url = format!("http://{lb}/api");

    // Sessions of our own, beside the built-in client: one pod each, and the
    // app's counter counting 1..=10.
    let mut first_pods = std::collections::BTreeSet::new();
    for _ in 0..6 {
        let mut jar = Jar::default();
        let r = session_requests(&c, &url, &mut jar, 10).await;
        assert!(r.iter().all(|x| x.pod == r[0].pod), "{r:?}");
        assert_eq!(
            r.iter().map(|x| x.count).collect::<Vec<_>>(),
            (1..=10).collect::<Vec<_>>()
        );
        assert_eq!(r[0].stickyd_session.as_deref(), Some("new"));
        assert!(r[1..].iter().all(|x| x.stickyd_session.as_deref() == Some("pinned")));
        first_pods.insert(r[0].pod.clone());

        // A streamed upload in the same session lands on the same pod.
        let body = Bytes::from(vec![b'x'; 1 << 20]);
        let a = send(&c, "POST", &format!("http://{lb}/upload"), Some(&mut jar), body).await;
        assert_eq!(a.status, 200);
        let up: Reply = serde_json::from_slice(&a.body).unwrap();
        assert_eq!(
            (up.pod.as_str(), up.bytes, up.count, up.method.as_str()),
            (r[0].pod.as_str(), 1 << 20, 11, "POST")
        );

        // So does an upgraded connection, on the forwarded path as well.
        let cookie = jar.header().unwrap();
        let (pod, echo) = echo_upgrade(lb, cookie.to_str().unwrap(), "ping\n").await;
        assert_eq!((pod.as_str(), echo.as_str()), (r[0].pod.as_str(), "ping\n"));
    }
    // The load balancer really is random: new sessions start on more than one pod.
    for _ in 0..20 {
        let mut jar = Jar::default();
        first_pods.insert(session_requests(&c, &url, &mut jar, 1).await[0].pod.clone());
    }
    assert!(first_pods.len() > 1, "{first_pods:?}");

    // The page for browsers.
    let a = c
        .request(
            http::Request::get(format!("http://{lb}/"))
                .header("accept", "text/html")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(a.headers()["content-type"], "text/html; charset=utf-8");
    let page = a.into_body().collect().await.unwrap().to_bytes();
    let page = String::from_utf8_lossy(&page);
    assert!(
        page.contains("request <b id=\"n\">1</b>") && page.contains("pod-"),
        "{page}"
    );

    let (status, kv) = d.finish(Duration::from_secs(30));
    assert!(status.success(), "{status:?}");
    assert_eq!(kv["stickiness"], "100.0%", "{kv:?}");
    assert_eq!(kv["sessions_kept"], "100.0%", "{kv:?}");
    assert_eq!(num(&kv, "errors"), 0);
    assert_eq!(num(&kv, "repins"), 0);
    assert!(num(&kv, "sessions") >= 10, "{kv:?}");
    assert!(num(&kv, "followups") >= 100, "{kv:?}");
    assert!(
        d.out.iter().any(|l| l.contains("stickiness 100.0%")),
        "a live line: {:?}",
        d.out
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_sidecars_sessions_are_lost() {
    let mut d = Demo::start(
        &[
            "--no-sidecar",
            "--duration",
            "6",
            "--listen",
            "127.0.42.1:0",
            "--base-ip",
            "127.0.42.10",
            "--app-port",
            "0",
            "--sessions",
            "20",
            "--requests",
            "10",
            "--think-ms",
            "50",
        ],
        &[],
    );
    let lb = d.lb();
    let c = client();
    // A session of our own moves between pods and its counter restarts.
    let mut jar = Jar::default();
    let r = session_requests(&c, &format!("http://{lb}/api"), &mut jar, 20).await;
    assert!(
        r.iter().any(|x| x.pod != r[0].pod),
        "20 random picks over 3 pods: {r:?}"
    );
    assert!(r.iter().filter(|x| x.count == 1).count() > 1);
    assert!(r.iter().all(|x| x.stickyd_session.is_none()));

    let (status, kv) = d.finish(Duration::from_secs(30));
    assert!(status.success());
    let s = pct(&kv, "stickiness");
    // About 1/3 with 3 pods.
    assert!((15.0..=55.0).contains(&s), "{kv:?}");
    assert!(pct(&kv, "sessions_kept") < 10.0, "{kv:?}");
    assert!(num(&kv, "followups") >= 100, "{kv:?}");
    assert_eq!(num(&kv, "errors"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_moves_only_the_killed_pods_sessions_once_and_ctrl_c_exits_0() {
    let mut d = Demo::start(
        &[
            "--no-load",
            "--duration",
            "60",
            "--listen",
            "127.0.43.1:0",
            "--base-ip",
            "127.0.43.10",
            "--port",
            "0",
            "--app-port",
            "0",
            "--admin-port",
            "0",
        ],
        &[],
    );
    let lb = d.lb();
    let c = client();
    let url = format!("http://{lb}/api");
    let mut sessions: Vec<(Jar, Vec<Reply>)> = Vec::new();
    for _ in 0..24 {
        let mut jar = Jar::default();
        let r = session_requests(&c, &url, &mut jar, 3).await;
        sessions.push((jar, r));
    }
    let victim = sessions[0].1[0].pod.clone();

    let a = send(
        &c,
        "POST",
        &format!("http://{lb}/_demo/kill?pod={victim}"),
        None,
        Bytes::new(),
    )
    .await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    let a = send(&c, "POST", &format!("http://{lb}/_demo/add"), None, Bytes::new()).await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    let added: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
    assert_eq!(added["added"], "pod-4");
    let pods = pods_json(&c, lb).await;
    let names: Vec<&str> = pods["pods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 3);
    assert!(!names.contains(&victim.as_str()) && names.contains(&"pod-4"), "{pods}");
    assert_eq!(pods["killed"][0], victim.as_str());
    // A bad control request is refused, and the demo keeps serving.
    let a = send(
        &c,
        "POST",
        &format!("http://{lb}/_demo/kill?pod=nope"),
        None,
        Bytes::new(),
    )
    .await;
    assert_eq!(a.status, 409);

    let mut repinned = 0;
    for (jar, before) in &mut sessions {
        let pod0 = before[0].pod.clone();
        let after = session_requests(&c, &url, jar, 4).await;
        if pod0 == victim {
            // Repinned exactly once, onto a live pod, with a new session there.
            repinned += 1;
            assert_eq!(after[0].stickyd_session.as_deref(), Some("repinned"), "{after:?}");
            assert_ne!(after[0].pod, victim);
            assert!(after.iter().all(|x| x.pod == after[0].pod), "{after:?}");
            assert_eq!(after.iter().map(|x| x.count).collect::<Vec<_>>(), [1, 2, 3, 4]);
        } else {
            // Never moved: same pod, counter continues.
            assert!(after.iter().all(|x| x.pod == pod0), "{pod0}: {after:?}");
            assert_eq!(after.iter().map(|x| x.count).collect::<Vec<_>>(), [4, 5, 6, 7]);
            assert!(after.iter().all(|x| x.stickyd_session.as_deref() == Some("pinned")));
        }
    }
    assert!(repinned >= 1);
    // New sessions reach the added pod too.
    let mut on_new = 0;
    for _ in 0..30 {
        let mut jar = Jar::default();
        let r = session_requests(&c, &url, &mut jar, 2).await;
        assert_eq!(r[0].pod, r[1].pod);
        on_new += usize::from(r[0].pod == "pod-4");
    }
    assert!(on_new > 0, "30 new sessions, none on pod-4");

    d.signal("INT");
    let (status, kv) = d.finish(Duration::from_secs(20));
    assert!(status.success(), "Ctrl-C exits 0: {status:?}");
    assert_eq!(num(&kv, "errors"), 0, "{kv:?}");
    assert!(num(&kv, "requests") >= 24 * 7, "{kv:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_only_serves_the_demo_app() {
    let mut d = Demo::start(
        &["--app-only", "--listen", "127.0.44.1:0", "--duration", "20"],
        &[("STICKYD_POD_NAME", "web-7d9f")],
    );
    let l = d.wait_line("listening on http://", Duration::from_secs(15));
    let addr: SocketAddr = l
        .split("http://")
        .nth(1)
        .unwrap()
        .trim_end_matches('/')
        .parse()
        .unwrap();
    let c = client();
    let mut jar = Jar::default();
    let r = session_requests(&c, &format!("http://{addr}/anything"), &mut jar, 3).await;
    assert!(r.iter().all(|x| x.pod == "web-7d9f" && x.stickyd_session.is_none()));
    assert_eq!(r.iter().map(|x| x.count).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(r[2].path, "/anything");
    // What a browser asks for by itself leaves the session's counter alone.
    let a = send(
        &c,
        "GET",
        &format!("http://{addr}/favicon.ico"),
        Some(&mut jar),
        Bytes::new(),
    )
    .await;
    assert_eq!(a.status, 204);
    assert!(a.headers.get("set-cookie").is_none());
    let r = session_requests(&c, &format!("http://{addr}/api"), &mut jar, 1).await;
    assert_eq!(r[0].count, 4, "the favicon did not count as a session request");
    let a = send(&c, "GET", &format!("http://{addr}/healthz"), None, Bytes::new()).await;
    assert_eq!((a.status, &a.body[..]), (200, &b"ok\n"[..]));
    assert!(a.headers.get("set-cookie").is_none());
    d.signal("TERM");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = d.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "SIGTERM did not stop the app");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success());
}

#[test]
fn refuses_non_loopback_and_bad_arguments() {
    for (args, needle) in [
        (&["--listen", "10.1.2.3:8000"][..], "loopback"),
        (&["--base-ip", "192.168.1.10"][..], "loopback"),
        (&["--pods", "0"][..], "--pods"),
        (&["--requests", "1"][..], "--requests"),
        (
            &[
                "--base-ip",
                "127.255.255.253",
                "--listen",
                "127.0.45.1:0",
                "--no-sidecar",
            ][..],
            "outside",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_stickyd"))
            .arg("demo")
            .args(args)
            .args(["--duration", "1"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}
