//! The memory limit on the real binary: STICKYD_MEMORY_LIMIT sets the
//! default connection limit, the startup log says which limit is in use and
//! where it came from, `/metrics` reports it, an explicit
//! STICKYD_MAX_CONNECTIONS that does not fit is warned about, and a bad value
//! exits 2.
//!
//! Addresses: 127.0.141.x.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::*;
use http_body_util::BodyExt;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use stickyd::limits::{Budget, Bytes, Host, LimitSource, COSTS};
use tokio::net::TcpStream;

/// The log lines (STICKYD_LOG_FORMAT=json) whose message is `message`.
fn log_events(s: &Stickyd, message: &str) -> Vec<serde_json::Value> {
    s.log_text()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["message"].as_str() == Some(message))
        .collect()
}

/// A client connection to `addr` that had one GET answered 200, kept open;
/// `None` when the sidecar closed it instead.
async fn served_connection(addr: SocketAddr) -> Option<SendRequest<Body>> {
    let io = TokioIo::new(TcpStream::connect(addr).await.ok()?);
    let (mut send, conn) = hyper::client::conn::http1::handshake(io).await.ok()?;
    tokio::spawn(conn);
    let req = http::Request::get("/l").header("host", "t").body(empty()).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(5), send.send_request(req))
        .await
        .ok()?
        .ok()?;
    let ok = resp.status() == 200;
    resp.into_body().collect().await.ok()?;
    ok.then_some(send)
}

async fn start(ip: &str, extra: &[(&str, String)]) -> (App, Stickyd) {
    let mut env = vec![("STICKYD_LOG_FORMAT", "json".to_string())];
    env.extend(extra.iter().cloned());
    one_pod(ip, &env).await
}

/// STICKYD_MEMORY_LIMIT of the smallest limit that fits 40 connections: the
/// 41st is closed at once, the log and `/metrics` tell the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_limit_sets_the_connection_limit() {
    const N: usize = 40;
    let limit = Budget::limit_needed(N, COSTS);
    assert_eq!(Budget::for_limit(Some(limit), None).max_connections, N);
    let (_app, s) = start("127.0.141.1", &[("STICKYD_MEMORY_LIMIT", limit.to_string())]).await;

    let events = log_events(&s, "memory limit");
    assert_eq!(events.len(), 1, "{}", s.log_text());
    let e = &events[0];
    assert_eq!(e["level"], "INFO", "{e}");
    assert_eq!(e["source"], "STICKYD_MEMORY_LIMIT", "{e}");
    assert_eq!(e["memory_limit_bytes"], limit, "{e}");
    assert_eq!(e["memory_limit"], Bytes(limit).to_string(), "{e}");
    assert_eq!(e["max_connections"], N, "{e}");
    assert_eq!(e["max_connections_from"], "memory limit", "{e}");
    let budget = Budget::for_limit(Some(limit), None);
    assert_eq!(e["buffer_budget_bytes"], budget.buffer_bytes.unwrap(), "{e}");

    let mut conns = Vec::new();
    for i in 1..=N {
        conns.push(
            served_connection(s.listen)
                .await
                .unwrap_or_else(|| panic!("connection {i} refused")),
        );
    }
    assert!(
        served_connection(s.listen).await.is_none(),
        "connection {} was served",
        N + 1
    );

    let m = s.metrics().await;
    assert_eq!(
        sample(&m, "stickyd_memory_limit_bytes").map(|v| v as u64),
        Some(limit),
        "{m}"
    );
    assert_eq!(
        sample(&m, "stickyd_connections_refused_total").map(|v| v as u64),
        Some(1),
        "{m}"
    );
    assert_eq!(sample(&m, "stickyd_buffer_bytes").map(|v| v as u64), Some(0), "{m}");
    // The connection past the limit is shed load too.
    assert_eq!(
        sample(&m, "stickyd_shed_total{kind=\"connection\"}").map(|v| v as u64),
        Some(1),
        "{m}"
    );
    assert_eq!(
        sample(&m, "stickyd_shed_total{kind=\"request\"}").map(|v| v as u64),
        Some(0),
        "{m}"
    );
}

/// Without STICKYD_MEMORY_LIMIT the limit is the cgroup's, as this test
/// process reads it (the sidecar runs in the same cgroup), or none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_variable_the_cgroup_limit_is_used() {
    let host = Host::detect();
    let (_app, s) = start("127.0.141.2", &[]).await;
    let events = log_events(&s, "memory limit");
    assert_eq!(events.len(), 1, "{}", s.log_text());
    let e = &events[0];
    let limit = host.memory.as_ref().map(|m| m.bytes);
    let source = match &host.memory {
        None => LimitSource::None,
        Some(m) if m.version == stickyd::limits::CgroupVersion::V1 => LimitSource::CgroupV1,
        Some(_) => LimitSource::CgroupV2,
    };
    assert_eq!(e["source"], source.as_str(), "{e}");
    assert_eq!(e["memory_limit_bytes"], limit.unwrap_or(0), "{e}");
    let budget = Budget::for_limit(limit, None);
    assert_eq!(e["max_connections"], budget.max_connections, "{e}");
    let m = s.metrics().await;
    assert_eq!(
        sample(&m, "stickyd_memory_limit_bytes").map(|v| v as u64),
        Some(limit.unwrap_or(0)),
        "{m}"
    );
}

/// An explicit STICKYD_MAX_CONNECTIONS wins over the derived default, with
/// a warning at startup when it does not fit in the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_explicit_connection_limit_that_does_not_fit_is_warned_about() {
    let (_app, s) = start(
        "127.0.141.3",
        &[
            ("STICKYD_MEMORY_LIMIT", "64Mi".into()),
            ("STICKYD_MAX_CONNECTIONS", "100000".into()),
        ],
    )
    .await;
    let info = log_events(&s, "memory limit");
    assert_eq!(info.len(), 1, "{}", s.log_text());
    assert_eq!(info[0]["max_connections"], 100_000);
    assert_eq!(info[0]["max_connections_from"], "STICKYD_MAX_CONNECTIONS");
    // Logged before the listeners start, so already there.
    let warnings = fit_warnings(&s);
    assert_eq!(warnings.len(), 1, "{}", s.log_text());
    let warning = &warnings[0];
    let msg = warning["message"].as_str().unwrap();
    assert!(msg.contains("STICKYD_MAX_CONNECTIONS=100000"), "{msg}");
    assert!(msg.contains("64 MiB (STICKYD_MEMORY_LIMIT)"), "{msg}");

    // Within the limit: no warning.
    let (_app2, s2) = start(
        "127.0.141.4",
        &[
            ("STICKYD_MEMORY_LIMIT", "64Mi".into()),
            ("STICKYD_MAX_CONNECTIONS", "100".into()),
        ],
    )
    .await;
    assert_eq!(log_events(&s2, "memory limit").len(), 1, "{}", s2.log_text());
    assert!(fit_warnings(&s2).is_empty(), "{}", s2.log_text());
}

/// The startup warnings about a connection limit that does not fit.
fn fit_warnings(s: &Stickyd) -> Vec<serde_json::Value> {
    s.log_text()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["level"] == "WARN" && v["message"].as_str().is_some_and(|m| m.contains("does not fit")))
        .collect()
}

/// A bad STICKYD_MEMORY_LIMIT exits 2 with a message naming the variable.
#[test]
fn a_bad_memory_limit_exits_2() {
    let listen: SocketAddr = addr_on("127.0.141.5");
    for bad in ["128m", "lots", "128", "1.5.2Gi", "128 Mi"] {
        let out = Command::new(bin())
            .arg("run")
            .env_clear()
            .env("STICKYD_POD_NAME", "pod-0")
            .env("STICKYD_LISTEN", listen.to_string())
            .env("STICKYD_ADMIN_LISTEN", "127.0.141.5:0")
            .env("STICKYD_ENDPOINTS", format!("static:pod-0={listen}"))
            .env("STICKYD_MEMORY_LIMIT", bad)
            .stdout(Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad}: {err}");
        assert!(err.contains("STICKYD_MEMORY_LIMIT"), "{bad}: {err}");
    }
}
