//! The demo's synthetic client: browser-like sessions, each with its own
//! cookie jar, through the load balancer, measuring stickiness.
//!
//! A session makes `requests` requests to `/api`, `think` apart, then a new
//! session starts with an empty jar. Two numbers come out:
//!
//! - **stickiness**: of the requests that carried a session (all but the
//!   first of each session), the share that reached the pod that started
//!   it. With a random load balancer over N pods and nothing else, about
//!   1/N.
//! - **sessions kept**: the share of whole sessions that stayed on one pod
//!   with the app's counter going 1, 2, …, `requests`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, ACCEPT, COOKIE, SET_COOKIE};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::sync::watch;

use super::app::Reply;

/// What the synthetic client does.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// The URL every request goes to, e.g. `http://127.0.0.1:8000/api`.
    pub url: String,
    /// Concurrent sessions.
    pub sessions: usize,
    /// Requests per session.
    pub requests: usize,
    /// Pause between two requests of a session.
    pub think: Duration,
}

/// Running totals, updated by every session.
#[derive(Debug, Default)]
pub struct LoadStats {
    sessions: AtomicU64,
    kept: AtomicU64,
    followups: AtomicU64,
    on_pod: AtomicU64,
    requests: AtomicU64,
    errors: AtomicU64,
    repins: AtomicU64,
    moves: AtomicU64,
}

/// A copy of [`LoadStats`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Finished sessions.
    pub sessions: u64,
    /// Finished sessions that stayed on one pod with an unbroken counter.
    pub kept: u64,
    /// Answered requests that carried a session (not a session's first).
    pub followups: u64,
    /// Of those, the ones answered by the session's first pod.
    pub on_pod: u64,
    pub requests: u64,
    /// Failed requests (transport errors and non-200 answers).
    pub errors: u64,
    /// Requests that stickyd repinned to another pod.
    pub repins: u64,
    /// Requests answered by another pod than the previous one.
    pub moves: u64,
}

fn pct(n: u64, d: u64) -> Option<f64> {
    (d > 0).then(|| 100.0 * n as f64 / d as f64)
}

impl Snapshot {
    /// Percent of session-carrying requests that reached their session's pod.
    pub fn stickiness(&self) -> Option<f64> {
        pct(self.on_pod, self.followups)
    }

    /// Percent of finished sessions that stayed whole on one pod.
    pub fn kept_pct(&self) -> Option<f64> {
        pct(self.kept, self.sessions)
    }
}

impl LoadStats {
    pub fn snapshot(&self) -> Snapshot {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Snapshot {
            sessions: l(&self.sessions),
            kept: l(&self.kept),
            followups: l(&self.followups),
            on_pod: l(&self.on_pod),
            requests: l(&self.requests),
            errors: l(&self.errors),
            repins: l(&self.repins),
            moves: l(&self.moves),
        }
    }
}

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

/// A cookie jar for one host: name → value.
#[derive(Debug, Default)]
pub struct Jar(BTreeMap<String, String>);

impl Jar {
    /// Takes in the response's Set-Cookie headers.
    pub fn store(&mut self, headers: &http::HeaderMap) {
        for v in headers.get_all(SET_COOKIE).iter().filter_map(|v| v.to_str().ok()) {
            let Ok(c) = cookie::Cookie::parse(v) else { continue };
            let expired = c.max_age().is_some_and(|a| a.is_zero() || a.is_negative());
            if expired || c.value().is_empty() {
                self.0.remove(c.name());
            } else {
                self.0.insert(c.name().to_string(), c.value().to_string());
            }
        }
    }

    /// The Cookie header to send, if any.
    pub fn header(&self) -> Option<HeaderValue> {
        if self.0.is_empty() {
            return None;
        }
        let s: Vec<String> = self.0.iter().map(|(k, v)| format!("{k}={v}")).collect();
        HeaderValue::from_str(&s.join("; ")).ok()
    }
}

async fn one_request(client: &HttpClient, url: &str, jar: &mut Jar) -> Result<Reply, String> {
    let mut b = Request::get(url).header(ACCEPT, "application/json");
    if let Some(c) = jar.header() {
        b = b.header(COOKIE, c);
    }
    let req = b.body(Empty::new()).map_err(|e| e.to_string())?;
    let fut = async {
        let resp = client.request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        jar.store(resp.headers());
        let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
        if status != StatusCode::OK {
            return Err(format!("{status}: {}", String::from_utf8_lossy(&body).trim()));
        }
        serde_json::from_slice::<Reply>(&body).map_err(|e| e.to_string())
    };
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .map_err(|_| "timeout".to_string())?
}

/// Runs one session; false if it was cut short by `stop`.
async fn session(client: &HttpClient, spec: &LoadSpec, stats: &LoadStats, stop: &mut watch::Receiver<bool>) -> bool {
    let mut jar = Jar::default();
    let mut first: Option<String> = None;
    let mut prev: Option<String> = None;
    let mut kept = true;
    for i in 1..=spec.requests as u64 {
        if i > 1 {
            tokio::select! {
                _ = stop.changed() => return false,
                _ = tokio::time::sleep(spec.think) => {}
            }
        }
        if *stop.borrow() {
            return false;
        }
        let r = tokio::select! {
            _ = stop.changed() => return false,
            r = one_request(client, &spec.url, &mut jar) => r,
        };
        stats.requests.fetch_add(1, Ordering::Relaxed);
        let reply = match r {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "demo client: request failed");
                stats.errors.fetch_add(1, Ordering::Relaxed);
                kept = false;
                continue;
            }
        };
        if reply.stickyd_session.as_deref() == Some("repinned") {
            stats.repins.fetch_add(1, Ordering::Relaxed);
        }
        if prev.as_ref().is_some_and(|p| *p != reply.pod) {
            stats.moves.fetch_add(1, Ordering::Relaxed);
        }
        match &first {
            None => first = Some(reply.pod.clone()),
            Some(f) => {
                stats.followups.fetch_add(1, Ordering::Relaxed);
                if *f == reply.pod {
                    stats.on_pod.fetch_add(1, Ordering::Relaxed);
                } else {
                    kept = false;
                }
            }
        }
        if reply.count != i {
            kept = false;
        }
        prev = Some(reply.pod);
    }
    stats.sessions.fetch_add(1, Ordering::Relaxed);
    if kept {
        stats.kept.fetch_add(1, Ordering::Relaxed);
    }
    true
}

/// Runs `spec.sessions` session loops until `stop` turns true.
pub async fn run(spec: LoadSpec, stats: Arc<LoadStats>, stop: watch::Receiver<bool>) {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(2)));
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector);
    let spec = Arc::new(spec);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..spec.sessions.max(1) {
        let client = client.clone();
        let spec = spec.clone();
        let stats = stats.clone();
        let mut stop = stop.clone();
        tasks.spawn(async move {
            // Spread the starts over one think time.
            let jitter = spec.think.mul_f64(fastrand::f64());
            tokio::select! {
                _ = stop.changed() => return,
                _ = tokio::time::sleep(jitter) => {}
            }
            while !*stop.borrow() {
                if !session(&client, &spec, &stats, &mut stop).await {
                    break;
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jar_keeps_replaces_and_expires() {
        let mut jar = Jar::default();
        assert!(jar.header().is_none());
        let mut h = http::HeaderMap::new();
        h.append(SET_COOKIE, HeaderValue::from_static("stickyd=abc; Path=/; HttpOnly"));
        h.append(SET_COOKIE, HeaderValue::from_static("demo_session=1; Path=/"));
        jar.store(&h);
        assert_eq!(jar.header().unwrap(), "demo_session=1; stickyd=abc");
        let mut h = http::HeaderMap::new();
        h.append(SET_COOKIE, HeaderValue::from_static("stickyd=def; Path=/"));
        h.append(SET_COOKIE, HeaderValue::from_static("demo_session=; Max-Age=0"));
        jar.store(&h);
        assert_eq!(jar.header().unwrap(), "stickyd=def");
    }

    #[test]
    fn percentages() {
        let s = Snapshot {
            followups: 300,
            on_pod: 100,
            sessions: 4,
            kept: 1,
            ..Snapshot::default()
        };
        assert!((s.stickiness().unwrap() - 33.333).abs() < 0.01);
        assert_eq!(s.kept_pct(), Some(25.0));
        assert_eq!(Snapshot::default().stickiness(), None);
    }
}
