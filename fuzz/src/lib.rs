//! The bodies of the fuzz targets, shared by the libFuzzer binaries
//! (`fuzz_targets/`) and by `replay_corpus`, which runs every input of the
//! committed corpus through them on a stable toolchain.

use std::collections::BTreeMap;
use std::time::Duration;

use http::header::{HeaderMap, HeaderValue, COOKIE};
use stickyd::affinity::{read_cookie, Codec, CookieState, Keys, Lifetimes, SessionId, Sid};
use stickyd::config::{parse_duration, parse_peer_list, Config};

const KEY_A: &str = "fuzz-key-a-0123456789abcdef0123";
const KEY_B: &str = "fuzz-key-b-0123456789abcdef0123";

/// A fixed "now" inside the lifetimes' windows for most generated values.
const NOW: u64 = 1_800_000_000;

fn signed(keys: &str, lifetimes: Lifetimes) -> Codec {
    Codec::new(Keys::parse(keys).expect("fixed keys are valid"), lifetimes)
}

/// Cookie decoding: `Codec::decode` without and with keys (and lifetimes),
/// and `read_cookie` on the bytes as a Cookie header. Never panics; a value
/// accepted under a key is exactly what the codec would have signed.
pub fn cookie_decode(data: &[u8]) {
    let now = match data.first() {
        Some(b) => NOW.wrapping_add((*b as u64) << 20),
        None => NOW,
    };
    let text = String::from_utf8_lossy(data);
    let codecs = [
        Codec::unsigned(),
        signed(KEY_A, Lifetimes::default()),
        signed(&format!("{KEY_B},{KEY_A}"), Lifetimes::default()),
        signed(
            KEY_A,
            Lifetimes {
                max_lifetime: Some(Duration::from_secs(3600)),
                idle_timeout: Some(Duration::from_secs(600)),
            },
        ),
    ];
    for (i, c) in codecs.iter().enumerate() {
        for n in [now, NOW, 0, u64::MAX - 300, u64::MAX] {
            let state = c.decode(&text, n);
            if let CookieState::Valid(s) = state {
                if i > 0 {
                    // Signed: only the codec's own spelling verifies. The
                    // codec with KEY_B first signs with KEY_B, so check with
                    // a codec whose first key is KEY_A when that verified.
                    let again = signed(KEY_A, Lifetimes::default()).spelling(&s);
                    let again_b = signed(KEY_B, Lifetimes::default()).spelling(&s);
                    assert!(
                        again == text || again_b == text,
                        "accepted a value the codec did not produce: {text:?}"
                    );
                } else {
                    assert!(text.len() >= 12);
                }
            }
        }
    }
    if let Ok(v) = HeaderValue::from_bytes(data) {
        let mut h = HeaderMap::new();
        h.append(COOKIE, v);
        for name in ["stickyd", "__Host-s", ""] {
            for c in &codecs {
                let _ = read_cookie(&h, name, c, now);
            }
        }
    }
    // A fresh value for a pod named by the input always round-trips.
    let id = SessionId::for_pod(&text);
    let c = &codecs[1];
    let sid = Sid::from_bytes(*b"fuzzed");
    let v = c.encode(id, sid, NOW, NOW);
    assert!(matches!(c.decode(&v, NOW), CookieState::Valid(s) if s.id == id && s.sid == Some(sid)));
}

/// Every variable `Config::from_env` reads.
pub const VARS: &[&str] = &[
    "STICKYD_ADMIN_LISTEN",
    "STICKYD_CONNECT_TIMEOUT",
    "STICKYD_COOKIE_DOMAIN",
    "STICKYD_COOKIE_HTTPONLY",
    "STICKYD_COOKIE_MAX_AGE",
    "STICKYD_COOKIE_NAME",
    "STICKYD_COOKIE_PARTITIONED",
    "STICKYD_COOKIE_PATH",
    "STICKYD_COOKIE_SAMESITE",
    "STICKYD_COOKIE_SECRET",
    "STICKYD_COOKIE_SECRET_FILE",
    "STICKYD_COOKIE_SECURE",
    "STICKYD_DRAIN_SECONDS",
    "STICKYD_DRAIN_TIMEOUT",
    "STICKYD_ENDPOINTS",
    "STICKYD_HEADER_READ_TIMEOUT",
    "STICKYD_LISTEN",
    "STICKYD_LOG",
    "STICKYD_LOG_FORMAT",
    "STICKYD_MAX_CONNECTIONS",
    "STICKYD_MAX_HEADERS",
    "STICKYD_MAX_HEADER_BYTES",
    "STICKYD_MEMORY_LIMIT",
    "STICKYD_NAMESPACE",
    "STICKYD_ON_MISSING",
    "STICKYD_POD_NAME",
    "STICKYD_POOL_IDLE_TIMEOUT",
    "STICKYD_PORT_NAME",
    "STICKYD_RESPONSE_TIMEOUT",
    "STICKYD_SERVICE",
    "STICKYD_SESSION_ACTIVE_WINDOW",
    "STICKYD_SESSION_IDLE_TIMEOUT",
    "STICKYD_SESSION_MAX_LIFETIME",
    "STICKYD_SYNC_TIMEOUT",
    "STICKYD_UPSTREAM",
    "STICKYD_UPSTREAM_PROTOCOL",
    "STICKYD_WORKER_THREADS",
    "STICKYD_UPSTREAM_MAX_CONNECTIONS",
    "STICKYD_QUEUE_TIMEOUT",
];

/// Reads the input as lines of `KEY=VALUE`. A KEY that is a number picks a
/// variable from [`VARS`] (so the fuzzer reaches every one cheaply); any
/// other KEY is used as it is. Secret files are never read: a
/// STICKYD_COOKIE_SECRET_FILE is dropped (it would read arbitrary paths).
pub fn env_of(data: &[u8]) -> BTreeMap<String, String> {
    let text = String::from_utf8_lossy(data);
    let mut env = BTreeMap::new();
    for line in text.split('\n') {
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let key = match k.trim().parse::<usize>() {
            Ok(i) => VARS[i % VARS.len()].to_string(),
            Err(_) => k.to_string(),
        };
        if key == "STICKYD_COOKIE_SECRET_FILE" {
            continue;
        }
        let value = v.to_string();
        if key == "STICKYD_ENDPOINTS" && value.trim_start().starts_with("file:") {
            continue;
        }
        env.insert(key, value);
    }
    env
}

/// Config parsing: arbitrary key/value maps through `Config::from_env`, and
/// every value through the small parsers. Never panics.
pub fn config_parse(data: &[u8]) {
    let env = env_of(data);
    let _ = Config::from_env(&env);
    // The same map with the required variables filled in reaches further.
    let mut full = env.clone();
    full.entry("STICKYD_POD_NAME".into()).or_insert_with(|| "pod-0".into());
    full.entry("STICKYD_SERVICE".into()).or_insert_with(|| "svc".into());
    if let Ok(cfg) = Config::from_env(&full) {
        // A parsed cookie config always builds a valid Set-Cookie header.
        let _ = stickyd::affinity::set_cookie(&cfg.cookie, "v".into(), true);
        let _ = stickyd::affinity::set_cookie(&cfg.cookie, "v".into(), false);
    }
    for v in env.values() {
        let _ = parse_duration(v);
        let _ = parse_peer_list(v);
        let _ = Keys::parse(v);
    }
}

/// What hyper's HTTP/1.1 server made of a request head.
#[derive(Debug)]
struct HyperSaw {
    method: String,
    target: String,
    http11: bool,
    fields: Vec<(String, Vec<u8>)>,
    /// The body's length when it is framed by Content-Length; None for a
    /// chunked body; Some(0) for none.
    length: Option<u64>,
}

/// Runs hyper's server over `data` (then end of input): the request it
/// handed to its service, if any.
fn hyper_parse(data: &[u8]) -> Option<HyperSaw> {
    use http_body::Body as _;
    use std::sync::{Arc, Mutex};
    use tokio::io::AsyncWriteExt;
    let rt = tokio::runtime::Builder::new_current_thread().build().ok()?;
    rt.block_on(async {
        let (mut client, server) = tokio::io::duplex(data.len() + 64 * 1024);
        client.write_all(data).await.ok()?;
        client.shutdown().await.ok()?;
        let saw: Arc<Mutex<Option<HyperSaw>>> = Arc::default();
        let seen = saw.clone();
        let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
            let hint = req.body().size_hint();
            let saw = HyperSaw {
                method: req.method().to_string(),
                target: req.uri().to_string(),
                http11: req.version() == http::Version::HTTP_11,
                fields: req
                    .headers()
                    .iter()
                    .map(|(k, v)| (k.as_str().to_string(), v.as_bytes().to_vec()))
                    .collect(),
                length: hint.exact(),
            };
            let mut slot = seen.lock().unwrap();
            if slot.is_none() {
                *slot = Some(saw);
            }
            async { Ok::<_, std::convert::Infallible>(http::Response::new(String::new())) }
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .max_buf_size(64 * 1024)
            .serve_connection(hyper_util::rt::TokioIo::new(server), svc)
            .await;
        let got = saw.lock().unwrap().take();
        got
    })
}

/// The HTTP/1.1 request head parser of the data path against hyper's
/// server on the same bytes: both accept a head or both refuse it, and when
/// both accept, they read the same method, target, version, fields and body
/// framing. (The data path then checks the target form; hyper's URI type is
/// stricter about a few characters that httparse passes, which the data
/// path refuses in its screen instead.)
pub fn h1_request(data: &[u8]) {
    use stickyd::proxy::h1::parse::{request, BodyKind};
    if data.len() > 60 * 1024 {
        return;
    }
    // Where the data path finds the head's end, hyper gets exactly that
    // head; otherwise it gets all of the input.
    let ours = request(data, 100);
    let head_bytes = match &ours {
        Ok(Some(h)) => &data[..h.len],
        _ => data,
    };
    let theirs = hyper_parse(head_bytes);
    match (&ours, &theirs) {
        (Ok(Some(h)), Some(t)) => {
            assert_eq!(String::from_utf8_lossy(h.method(head_bytes)), t.method);
            assert_eq!(h.minor == 1, t.http11);
            // Origin-form targets go on as hyper reads them (a fragment
            // left behind); other forms are refused by the screen on both
            // paths.
            let target = String::from_utf8_lossy(h.target(head_bytes));
            let target = target.split('#').next().unwrap_or("");
            if target.starts_with('/') {
                assert_eq!(t.target, target, "target");
            }
            // hyper keeps one Content-Length of equal ones, and none beside
            // Transfer-Encoding.
            let ours_fields: Vec<(String, Vec<u8>)> = h
                .fields
                .iter()
                .map(|f| {
                    (
                        String::from_utf8_lossy(f.name(head_bytes)).to_ascii_lowercase(),
                        f.value(head_bytes).to_vec(),
                    )
                })
                .filter(|(n, _)| n != "content-length")
                .collect();
            let theirs_fields: Vec<(String, Vec<u8>)> = t
                .fields
                .iter()
                .filter(|(n, _)| n != "content-length")
                .cloned()
                .collect();
            let mut a = ours_fields.clone();
            let mut b = theirs_fields.clone();
            a.sort();
            b.sort();
            assert_eq!(a, b, "fields");
            match h.body {
                BodyKind::None => assert_eq!(t.length, Some(0), "no body"),
                BodyKind::Length(n) => assert_eq!(t.length, Some(n), "length"),
                BodyKind::Chunked => assert_eq!(t.length, None, "chunked"),
                BodyKind::Close => panic!("a request is never close-delimited"),
            }
        }
        (Ok(Some(h)), None) => {
            // hyper refuses a few targets its URI type does not take; the
            // data path's screen refuses every target hyper's URI refuses.
            let target = h.target(head_bytes);
            assert!(
                !stickyd::proxy::h1::target_is_valid(target),
                "accepted by the data path, refused by hyper: {:?}",
                String::from_utf8_lossy(head_bytes)
            );
        }
        (Err(_) | Ok(None), Some(t)) => {
            panic!(
                "refused by the data path ({ours:?}), accepted by hyper as {t:?}: {:?}",
                String::from_utf8_lossy(head_bytes)
            );
        }
        (Err(_) | Ok(None), None) => {}
    }
}
