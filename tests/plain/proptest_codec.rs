//! Property tests of the cookie codec: it round-trips, never panics on any
//! input, and never accepts a value it did not sign.

use std::time::Duration;

use http::header::{HeaderMap, HeaderValue, COOKIE};
use proptest::prelude::*;
use stickyd::affinity::{read_cookie, Codec, CookieState, Keys, Lifetimes, SessionId, Sid};

/// 1 to 3 keys of 16 to 48 characters, as STICKYD_COOKIE_SECRET takes them.
fn keys() -> impl Strategy<Value = String> {
    prop::collection::vec("[A-Za-z0-9_+/=-]{16,48}", 1..=3).prop_map(|ks| ks.join(","))
}

fn codec(keys: &str, lifetimes: Lifetimes) -> Codec {
    Codec::new(Keys::parse(keys).expect("generated keys are valid"), lifetimes)
}

/// Plausible Unix times: 2001 to 2286.
/// A session id derived from a number, so that each case has its own.
fn sid(n: u64) -> Sid {
    Sid::from_bytes(
        n.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_le_bytes()[..6]
            .try_into()
            .unwrap(),
    )
}

fn time() -> impl Strategy<Value = u64> {
    1_000_000_000u64..10_000_000_000u64
}

/// One way to change a string.
#[derive(Debug, Clone)]
enum Mutation {
    Replace(usize, char),
    Delete(usize),
    Insert(usize, char),
    Truncate(usize),
    Swap(usize, usize),
    Append(String),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let ch = prop_oneof![
        // The cookie's own alphabet, where a change is hardest to notice.
        prop::sample::select(
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_."
                .chars()
                .collect::<Vec<_>>()
        ),
        any::<char>(),
    ];
    prop_oneof![
        (any::<usize>(), ch.clone()).prop_map(|(i, c)| Mutation::Replace(i, c)),
        any::<usize>().prop_map(Mutation::Delete),
        (any::<usize>(), ch).prop_map(|(i, c)| Mutation::Insert(i, c)),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), any::<usize>()).prop_map(|(i, j)| Mutation::Swap(i, j)),
        "[A-Za-z0-9._=-]{1,8}".prop_map(Mutation::Append),
    ]
}

fn apply(v: &str, m: &Mutation) -> String {
    let mut c: Vec<char> = v.chars().collect();
    let n = c.len().max(1);
    match m {
        Mutation::Replace(i, ch) => {
            if !c.is_empty() {
                c[i % n] = *ch;
            }
        }
        Mutation::Delete(i) => {
            if !c.is_empty() {
                c.remove(i % n);
            }
        }
        Mutation::Insert(i, ch) => c.insert(i % (c.len() + 1), *ch),
        Mutation::Truncate(i) => c.truncate(i % n),
        Mutation::Swap(i, j) => {
            if !c.is_empty() {
                c.swap(i % n, j % n);
            }
        }
        Mutation::Append(s) => c.extend(s.chars()),
    }
    c.into_iter().collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Signed: decode(encode(id, created, now)) names the same pod with the
    /// same times, under every key set whose first key signed it.
    #[test]
    fn signed_round_trip(pod in "[a-z0-9-]{1,63}", keys in keys(), created in time(), age in 0u64..1_000_000) {
        let c = codec(&keys, Lifetimes::default());
        let id = SessionId::for_pod(&pod);
        let now = created + age;
        let v = c.encode(id, sid(created), created, now);
        prop_assert!(v.len() <= stickyd::affinity::MAX_VALUE_LEN);
        prop_assert!(v.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)), "{}", v);
        match c.decode(&v, now) {
            CookieState::Valid(s) => {
                prop_assert_eq!(s.id, id);
                prop_assert_eq!(s.sid, Some(sid(created)));
                prop_assert_eq!(s.created, created);
                prop_assert_eq!(s.refreshed, now);
                prop_assert!(!s.needs_refresh);
            }
            other => prop_assert!(false, "{v} decoded as {other:?}"),
        }
        // Another pod's name never decodes to this id.
        let other = SessionId::for_pod(&format!("{pod}x"));
        prop_assert_ne!(other, id);
    }

    /// Unsigned: the ids alone round-trip.
    #[test]
    fn unsigned_round_trip(pod in ".{0,80}") {
        let c = Codec::unsigned();
        let id = SessionId::for_pod(&pod);
        let v = c.encode(id, sid(0), 0, 0);
        prop_assert_eq!(v.len(), 21);
        prop_assert!(matches!(c.decode(&v, 0), CookieState::Valid(s) if s.id == id && s.sid == Some(sid(0))));
    }

    /// Lifetimes: valid strictly inside both windows, invalid from their
    /// ends on; refresh wanted from half the idle window on.
    #[test]
    fn lifetimes_hold(keys in keys(), created in time(), idle in 2u64..100_000, max_extra in 0u64..100_000, since_refresh in 0u64..300_000, refreshed_after in 0u64..100_000) {
        let max = idle + max_extra;
        let c = codec(&keys, Lifetimes {
            max_lifetime: Some(Duration::from_secs(max)),
            idle_timeout: Some(Duration::from_secs(idle)),
        });
        let id = SessionId::for_pod("p");
        let refreshed = created + refreshed_after;
        let v = c.encode(id, sid(created), created, refreshed);
        let now = refreshed + since_refresh;
        let age = now - created;
        let state = c.decode(&v, now);
        if since_refresh >= idle || age >= max {
            prop_assert_eq!(state, CookieState::Invalid);
        } else {
            match state {
                CookieState::Valid(s) => prop_assert_eq!(s.needs_refresh, since_refresh >= idle / 2),
                other => prop_assert!(false, "{other:?}"),
            }
        }
    }

    /// Any string, any time, with or without keys: an answer, never a panic.
    #[test]
    fn decode_never_panics(s in ".{0,200}", now in any::<u64>(), keys in keys()) {
        let _ = Codec::unsigned().decode(&s, now);
        let _ = codec(&keys, Lifetimes {
            max_lifetime: Some(Duration::from_secs(1)),
            idle_timeout: Some(Duration::from_secs(1)),
        }).decode(&s, now);
        let _ = codec(&keys, Lifetimes::default()).decode(&s, now);
    }

    /// Arbitrary bytes, as a Cookie header (when the bytes are a valid
    /// header value) and as a value: never a panic.
    #[test]
    fn read_cookie_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..300), name in "[A-Za-z0-9_-]{1,12}", keys in keys(), now in any::<u64>()) {
        let signed = codec(&keys, Lifetimes::default());
        if let Ok(v) = HeaderValue::from_bytes(&bytes) {
            let mut h = HeaderMap::new();
            h.append(COOKIE, v.clone());
            h.append(COOKIE, v);
            let _ = read_cookie(&h, &name, &Codec::unsigned(), now);
            let _ = read_cookie(&h, &name, &signed, now);
        }
        let s = String::from_utf8_lossy(&bytes);
        let _ = signed.decode(&s, now);
    }

    /// The affinity cookie among arbitrary other cookies is found.
    #[test]
    fn read_cookie_finds_it_among_others(others in prop::collection::vec(("[a-z]{1,8}", "[A-Za-z0-9]{0,16}"), 0..6), at in any::<usize>(), keys in keys(), now in time()) {
        let c = codec(&keys, Lifetimes::default());
        let id = SessionId::for_pod("pod-7");
        let v = c.encode(id, sid(now), now, now);
        let mut pairs: Vec<String> = others.iter().filter(|(k, _)| k != "stickyd").map(|(k, v)| format!("{k}={v}")).collect();
        let i = at % (pairs.len() + 1);
        pairs.insert(i, format!("stickyd={v}"));
        let mut h = HeaderMap::new();
        h.append(COOKIE, HeaderValue::from_str(&pairs.join("; ")).unwrap());
        prop_assert!(matches!(read_cookie(&h, "stickyd", &c, now), CookieState::Valid(s) if s.id == id));
    }

    /// Every mutation of a signed value is refused, unless it gave the very
    /// same string back: there is exactly one accepted spelling per session.
    #[test]
    fn mutated_values_are_refused(keys in keys(), created in time(), age in 0u64..10_000, muts in prop::collection::vec(mutation(), 1..4)) {
        let c = codec(&keys, Lifetimes::default());
        let id = SessionId::for_pod("pod-1");
        let now = created + age;
        let v = c.encode(id, sid(created), created, now);
        let mut t = v.clone();
        for m in &muts {
            t = apply(&t, m);
        }
        if t != v {
            prop_assert_eq!(c.decode(&t, now), CookieState::Invalid, "{} accepted", t);
        }
    }

    /// Other spellings of a valid value (leading zeros in the times, case
    /// changes, base64 padding, the unsigned id alone, the MAC alone) are
    /// refused: there is one accepted spelling per session.
    #[test]
    fn other_spellings_are_refused(keys in keys(), created in time(), age in 0u64..10_000) {
        let c = codec(&keys, Lifetimes::default());
        let now = created + age;
        let v = c.encode(SessionId::for_pod("pod-1"), sid(created), created, now);
        let p: Vec<&str> = v.split('.').collect();
        prop_assert_eq!(p.len(), 5);
        let variants = [
            format!("{}.{}.0{}.{}.{}", p[0], p[1], p[2], p[3], p[4]),
            format!("{}.{}.{}.0{}.{}", p[0], p[1], p[2], p[3], p[4]),
            format!("{}.{}.{}.{}.{}", p[0], p[1], p[2].to_uppercase(), p[3], p[4]),
            format!("{}.{}.{}.{}.{}==", p[0], p[1], p[2], p[3], p[4]),
            format!("{}.{}.{}.{}.{}", p[0].to_lowercase(), p[1], p[2], p[3], p[4]),
            format!("{}.{}.{}.{}.{}", p[0], p[1].to_lowercase(), p[2], p[3], p[4]),
            format!("{}.{}.{}.{}.{}", p[0], p[1], p[2], p[3], p[4].to_uppercase()),
            format!("{}.{}.{}.{}", p[0], p[2], p[3], p[4]),
            format!("{v}."),
            format!(".{v}"),
            format!("{v} "),
            p[0].to_string(),
            format!("{}.{}", p[0], p[1]),
            p[4].to_string(),
        ];
        for t in variants.iter().filter(|t| **t != v) {
            prop_assert_eq!(c.decode(t, now), CookieState::Invalid, "{} accepted", t);
        }
    }

    /// Random strings never pass a key set: not even well-formed ones.
    #[test]
    fn random_values_are_refused(keys in keys(), s in "[A-Za-z0-9_-]{12}\\.[0-9a-z]{1,8}\\.[0-9a-z]{1,8}\\.[A-Za-z0-9_-]{22}", s2 in "[A-Za-z0-9_-]{12}\\.[A-Za-z0-9_-]{8}\\.[0-9a-z]{1,8}\\.[0-9a-z]{1,8}\\.[A-Za-z0-9_-]{22}", junk in ".{0,128}", now in time()) {
        let c = codec(&keys, Lifetimes::default());
        prop_assert_eq!(c.decode(&s, now), CookieState::Invalid);
        prop_assert_eq!(c.decode(&s2, now), CookieState::Invalid);
        prop_assert_eq!(c.decode(&junk, now), CookieState::Invalid);
    }

    /// Signed with keys the verifier does not hold, or not signed at all:
    /// refused.
    #[test]
    fn other_keys_and_unsigned_values_are_refused(a in "[A-Za-z0-9]{16,40}", b in "[A-Za-z0-9]{16,40}", pod in "[a-z0-9-]{1,30}", now in time()) {
        prop_assume!(a != b);
        let signer = codec(&a, Lifetimes::default());
        let verifier = codec(&b, Lifetimes::default());
        let id = SessionId::for_pod(&pod);
        prop_assert_eq!(verifier.decode(&signer.encode(id, sid(now), now, now), now), CookieState::Invalid);
        prop_assert_eq!(verifier.decode(&id.encode(), now), CookieState::Invalid);
        // Rotation: with both keys, in either order, it verifies.
        let both = codec(&format!("{b},{a}"), Lifetimes::default());
        prop_assert!(matches!(both.decode(&signer.encode(id, sid(now), now, now), now), CookieState::Valid(_)));
    }
}
