//! The demo app: one "pod" of a stateful web app that keeps its sessions in
//! memory, so that a lost session is visible.
//!
//! It sets its own session cookie (`demo_session`) and counts the requests
//! of each session. A session that lands on another pod is unknown there: it
//! gets a new session whose counter starts again at 1. `GET /` with
//! `Accept: text/html` is a page that shows the pod (in its own colour) and
//! the counter, refreshed every second; every other request gets JSON:
//!
//! ```json
//! {"pod":"pod-1","count":3,"session":"…","stickyd_session":"pinned","method":"GET","path":"/api","bytes":0}
//! ```
//!
//! `/healthz` answers `ok`. Requests the browser makes by itself for the page
//! (`/favicon.ico`, icons, or any request whose `Sec-Fetch-Dest` is an
//! image, a style sheet, a script, …) get 204 and leave the session alone.
//! Request bodies are streamed and counted, never
//! held whole. An `Upgrade: echo` request switches to a raw echo of the
//! bytes it is sent, after a first line naming the pod.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::header::{HeaderValue, ACCEPT, CACHE_CONTROL, CONNECTION, CONTENT_TYPE, COOKIE, SET_COOKIE, UPGRADE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

/// The app's own session cookie.
pub const SESSION_COOKIE: &str = "demo_session";
/// Sessions kept in memory; past this the oldest are forgotten.
pub const MAX_SESSIONS: usize = 100_000;

const PAGE: &str = include_str!("page.html");

/// The JSON answer of the app.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Reply {
    pub pod: String,
    pub count: u64,
    pub session: String,
    pub stickyd_session: Option<String>,
    pub method: String,
    pub path: String,
    pub bytes: u64,
    pub colour: String,
}

/// Per-session request counters, bounded: the oldest session is forgotten
/// once there are `cap` of them.
#[derive(Debug)]
pub struct Sessions {
    counts: HashMap<String, u64>,
    order: VecDeque<String>,
    cap: usize,
}

impl Sessions {
    pub fn new(cap: usize) -> Sessions {
        Sessions {
            counts: HashMap::new(),
            order: VecDeque::new(),
            cap: cap.max(1),
        }
    }

    /// Counts one request of session `id`. An unknown or absent id starts a
    /// new session with a fresh id. Returns (id, count, is_new).
    pub fn hit(&mut self, id: Option<&str>) -> (String, u64, bool) {
        if let Some(id) = id {
            if let Some(n) = self.counts.get_mut(id) {
                *n += 1;
                return (id.to_string(), *n, false);
            }
        }
        while self.counts.len() >= self.cap {
            match self.order.pop_front() {
                Some(old) => {
                    self.counts.remove(&old);
                }
                None => break,
            }
        }
        let id = new_session_id();
        self.counts.insert(id.clone(), 1);
        self.order.push_back(id.clone());
        (id, 1, true)
    }

    pub fn len(&self) -> usize {
        self.counts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }
}

fn new_session_id() -> String {
    format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..))
}

/// A colour per pod: pods named `…-N` get hues a golden angle apart, so that
/// neighbours never look alike; other names hash to a hue.
pub fn pod_colour(pod: &str) -> String {
    let digits: String = pod
        .chars()
        .rev()
        .take_while(|c| c.is_ascii_digit())
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    let hue = match digits.parse::<u64>() {
        Ok(n) if !digits.is_empty() => (n * 1375 / 10 + 200) % 360,
        _ => {
            // FNV-1a.
            let mut h: u64 = 0xcbf29ce484222325;
            for b in pod.bytes() {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x100000001b3);
            }
            h % 360
        }
    };
    format!("hsl({hue}, 70%, 42%)")
}

fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// One app's state.
pub struct App {
    pub pod: String,
    colour: String,
    sessions: Mutex<Sessions>,
    requests: AtomicU64,
}

impl App {
    pub fn new(pod: String) -> App {
        App {
            colour: pod_colour(&pod),
            pod,
            sessions: Mutex::new(Sessions::new(MAX_SESSIONS)),
            requests: AtomicU64::new(0),
        }
    }

    /// Requests answered so far (health checks excluded).
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Sessions held in memory.
    pub fn sessions(&self) -> usize {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

type AppBody = Full<Bytes>;

fn text(status: StatusCode, s: impl Into<Bytes>) -> Response<AppBody> {
    let mut r = Response::new(Full::new(s.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

fn session_cookie(req: &Request<Incoming>) -> Option<String> {
    req.headers()
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(cookie::Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|c| c.name() == SESSION_COOKIE)
        .map(|c| c.value().to_string())
}

fn wants_html(req: &Request<Incoming>) -> bool {
    req.method() == Method::GET
        && req
            .headers()
            .get(ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.contains("text/html"))
}

/// Whether a request is one the browser makes by itself for the page (the
/// favicon, an icon, a style sheet, a script) rather than a call of the page:
/// such a request must not count as a request of the session, or the page's
/// next call would see the counter jump and report the session as lost.
pub fn is_asset(path: &str, fetch_dest: Option<&str>) -> bool {
    path == "/favicon.ico"
        || path.starts_with("/apple-touch-icon")
        || path == "/robots.txt"
        || path == "/manifest.json"
        || matches!(
            fetch_dest,
            Some("image" | "style" | "script" | "font" | "manifest" | "track" | "audio" | "video")
        )
}

fn is_echo_upgrade(req: &Request<Incoming>) -> bool {
    stickyd_sidecar::proxy::headers::is_upgrade(req.headers())
        && req
            .headers()
            .get(UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("echo"))
}

/// Answers one request.
pub async fn handle(app: Arc<App>, mut req: Request<Incoming>) -> Result<Response<AppBody>, Infallible> {
    if req.uri().path() == "/healthz" {
        return Ok(text(StatusCode::OK, "ok\n"));
    }
    let fetch_dest = req.headers().get("sec-fetch-dest").and_then(|v| v.to_str().ok());
    if is_asset(req.uri().path(), fetch_dest) {
        // No content, cached for a day: the page has no assets, and the
        // session is left as it was.
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::NO_CONTENT;
        r.headers_mut()
            .insert(CACHE_CONTROL, HeaderValue::from_static("public, max-age=86400"));
        return Ok(r);
    }
    if is_echo_upgrade(&req) {
        let on_upgrade = hyper::upgrade::on(&mut req);
        let pod = app.pod.clone();
        tokio::spawn(async move {
            let Ok(up) = on_upgrade.await else { return };
            let mut io = TokioIo::new(up);
            if io.write_all(format!("{pod}\n").as_bytes()).await.is_err() {
                return;
            }
            let (mut r, mut w) = tokio::io::split(io);
            let _ = tokio::io::copy(&mut r, &mut w).await;
        });
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        r.headers_mut().insert(CONNECTION, HeaderValue::from_static("upgrade"));
        r.headers_mut().insert(UPGRADE, HeaderValue::from_static("echo"));
        return Ok(r);
    }

    let html = wants_html(&req);
    let cookie = session_cookie(&req);
    let stickyd_session = req
        .headers()
        .get(stickyd_sidecar::proxy::headers::SESSION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let method = req.method().to_string();
    let path = req.uri().path().to_string();

    // Stream the body through, counting bytes.
    let mut body = req.into_body();
    let mut bytes = 0u64;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Some(d) = f.data_ref() {
                    bytes += d.len() as u64;
                }
            }
            Err(_) => return Ok(text(StatusCode::BAD_REQUEST, "demo app: the request body broke off\n")),
        }
    }

    let (session, count, is_new) = app
        .sessions
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .hit(cookie.as_deref());
    app.requests.fetch_add(1, Ordering::Relaxed);
    let reply = Reply {
        pod: app.pod.clone(),
        count,
        session: session.clone(),
        stickyd_session,
        method,
        path,
        bytes,
        colour: app.colour.clone(),
    };

    let mut resp = if html {
        let page = PAGE
            .replace("{{POD}}", &html_escape(&reply.pod))
            .replace("{{COLOUR}}", &reply.colour)
            .replace("{{COUNT}}", &reply.count.to_string());
        let mut r = Response::new(Full::new(Bytes::from(page)));
        r.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
        r
    } else {
        let mut json = serde_json::to_vec(&reply).unwrap_or_default();
        json.push(b'\n');
        let mut r = Response::new(Full::new(Bytes::from(json)));
        r.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        r
    };
    resp.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if is_new {
        if let Ok(v) = HeaderValue::from_str(&format!("{SESSION_COOKIE}={session}; Path=/; HttpOnly; SameSite=Lax")) {
            resp.headers_mut().append(SET_COOKIE, v);
        }
    }
    Ok(resp)
}

/// Serves the app on `listener` until `shutdown` completes, then lets
/// in-flight requests finish (at most 5 s).
pub async fn serve(listener: TcpListener, pod: String, shutdown: impl Future<Output = ()>) {
    serve_app(listener, Arc::new(App::new(pod)), shutdown).await
}

/// [`serve`] with a given [`App`], so that the caller can read its counters.
pub async fn serve_app(listener: TcpListener, app: Arc<App>, shutdown: impl Future<Output = ()>) {
    super::serve::serve(listener, "demo app", move |req| handle(app.clone(), req), shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_count_and_forget_the_oldest() {
        let mut s = Sessions::new(2);
        let (a, n, new) = s.hit(None);
        assert_eq!((n, new), (1, true));
        assert_eq!(s.hit(Some(&a)), (a.clone(), 2, false));
        assert_eq!(s.hit(Some(&a)).1, 3);
        // An unknown id is a new session with a new id.
        let (b, n, new) = s.hit(Some("not-a-session"));
        assert_ne!(b, "not-a-session");
        assert_eq!((n, new), (1, true));
        let (c, _, _) = s.hit(None);
        assert_eq!(s.len(), 2);
        // `a` was the oldest: forgotten.
        let (a2, n, new) = s.hit(Some(&a));
        assert_ne!(a2, a);
        assert_eq!((n, new), (1, true));
        assert_eq!(s.hit(Some(&c)).1, 2);
        assert_eq!(s.hit(Some(&b)).1, 1, "b was evicted when a2 came in");
    }

    #[test]
    fn colours_differ_between_neighbours() {
        let c: Vec<String> = (1..=6).map(|i| pod_colour(&format!("pod-{i}"))).collect();
        for i in 0..c.len() {
            for j in i + 1..c.len() {
                assert_ne!(c[i], c[j]);
            }
        }
        assert_eq!(pod_colour("web-7d9f"), pod_colour("web-7d9f"));
        assert!(pod_colour("web-abc").starts_with("hsl("));
    }

    #[test]
    fn browser_asset_requests_are_not_session_requests() {
        assert!(is_asset("/favicon.ico", None));
        assert!(is_asset("/apple-touch-icon-precomposed.png", None));
        assert!(is_asset("/logo.png", Some("image")));
        assert!(!is_asset("/api", Some("empty")), "the page's fetch");
        assert!(!is_asset("/", Some("document")));
        assert!(!is_asset("/favicon", None));
    }

    #[test]
    fn escapes_html() {
        assert_eq!(
            html_escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
