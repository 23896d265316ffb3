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
