//! The affinity cookie: its value (encoding and signing) and its attributes.
//!
//! The value is opaque. It names a pod by a short hash of the pod's *name*, so
//! it carries no IP or port and survives IP reuse:
//!
//! * unsigned: `ID.SID`: ID (12 characters, base64url of 9 bytes of SHA-256
//!   of the pod name) and SID, the session's own random id (8 characters,
//!   6 random bytes), which counts distinct sessions without naming anyone;
//! * signed: `ID.SID.CREATED.REFRESHED.MAC`, where the times are Unix seconds
//!   in base 36 and MAC is HMAC-SHA256 over everything before it, truncated
//!   to 16 bytes (22 characters). The first key signs; every key verifies.
//!
//! Values of the earlier forms (`ID`, `ID.CREATED.REFRESHED.MAC`) are still
//! accepted and keep their pin; a session pinned here that carries one is
//! issued a value with a SID on its next request.

use std::fmt;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use http::header::{HeaderMap, HeaderValue, COOKIE};
use sha2::{Digest, Sha256};

use crate::config::{CookieConfig, SameSite, SecureMode};

type HmacSha256 = Hmac<Sha256>;

const ID_BYTES: usize = 9;
const ID_CHARS: usize = 12;
const SID_BYTES: usize = 6;
const SID_CHARS: usize = 8;
const MAC_BYTES: usize = 16;
const MAC_CHARS: usize = 22;
/// Longest cookie value we try to decode; anything longer is invalid.
pub const MAX_VALUE_LEN: usize = 128;
/// Shortest accepted key, in bytes.
pub const MIN_KEY_LEN: usize = 16;

/// A session's pod identity: a hash of the pod name.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId([u8; ID_BYTES]);

#[cfg(test)]
thread_local! {
    /// How many pod names this thread has hashed, for tests that check that
    /// unchanged pods are not hashed again.
    pub(crate) static POD_HASHES: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

impl SessionId {
    pub fn for_pod(pod_name: &str) -> SessionId {
        #[cfg(test)]
        POD_HASHES.with(|n| n.set(n.get() + 1));
        let mut h = Sha256::new();
        h.update(b"stickyd/pod/");
        h.update(pod_name.as_bytes());
        let d = h.finalize();
        let mut id = [0u8; ID_BYTES];
        id.copy_from_slice(&d[..ID_BYTES]);
        SessionId(id)
    }

    fn parse(s: &str) -> Option<SessionId> {
        if s.len() != ID_CHARS {
            return None;
        }
        let mut id = [0u8; ID_BYTES];
        match URL_SAFE_NO_PAD.decode_slice(s, &mut id) {
            Ok(ID_BYTES) => Some(SessionId(id)),
            _ => None,
        }
    }

    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.0)
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({})", self.encode())
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.encode())
    }
}

/// A session's own random id, inside the cookie value: it tells sessions
/// apart (for `stickyd_sessions_active` and the drain), never a pod.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sid([u8; SID_BYTES]);

impl Sid {
    /// A fresh random id. Not a secret: it only tells sessions apart, and a
    /// signed value protects it like the rest.
    pub fn random() -> Sid {
        let n = fastrand::u64(..);
        let mut b = [0u8; SID_BYTES];
        b.copy_from_slice(&n.to_le_bytes()[..SID_BYTES]);
        Sid(b)
    }

    pub fn from_bytes(b: [u8; SID_BYTES]) -> Sid {
        Sid(b)
    }

    fn parse(s: &str) -> Option<Sid> {
        if s.len() != SID_CHARS {
            return None;
        }
        let mut b = [0u8; SID_BYTES];
        match URL_SAFE_NO_PAD.decode_slice(s, &mut b) {
            Ok(SID_BYTES) => Some(Sid(b)),
            _ => None,
        }
    }

    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.0)
    }

    /// The id as a number (its bytes are random: a ready-made hash).
    pub fn as_u64(&self) -> u64 {
        let mut w = [0u8; 8];
        w[..SID_BYTES].copy_from_slice(&self.0);
        u64::from_le_bytes(w)
    }
}

impl fmt::Debug for Sid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sid({})", self.encode())
    }
}

/// HMAC keys. The first signs; all verify. Empty: cookies are not signed.
#[derive(Clone, Default)]
pub struct Keys(Vec<Vec<u8>>);

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Keys({} redacted)", self.0.len())
    }
}

impl Keys {
    /// Parses a comma- (or newline-) separated list of keys. Each key must be
    /// at least 16 bytes.
    pub fn parse(text: &str) -> Result<Keys, String> {
        let keys: Vec<Vec<u8>> = text
            .split([',', '\n'])
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(|k| k.as_bytes().to_vec())
            .collect();
        if keys.is_empty() {
            return Err("no key found: give one or more comma-separated keys of at least 16 bytes".into());
        }
        if let Some(i) = keys.iter().position(|k| k.len() < MIN_KEY_LEN) {
            return Err(format!(
                "key #{} is {} bytes; each key must be at least {MIN_KEY_LEN} bytes (32 random bytes recommended: openssl rand -hex 32)",
                i + 1,
                keys[i].len()
            ));
        }
        Ok(Keys(keys))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    fn mac(key: &[u8], payload: &str) -> HmacSha256 {
        let mut m = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
        m.update(payload.as_bytes());
        m
    }
}

/// Session lifetimes, enforced on signed cookies only.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lifetimes {
    pub max_lifetime: Option<Duration>,
    pub idle_timeout: Option<Duration>,
}

/// What the request's affinity cookie says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CookieState {
    /// No cookie of that name.
    Absent,
    /// A cookie that cannot be decoded or verified, or whose session expired.
    Invalid,
    /// A valid cookie naming a pod.
    Valid(Session),
}

/// A decoded session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Session {
    pub id: SessionId,
    /// The session's own id; None in a value of an earlier form.
    pub sid: Option<Sid>,
    /// When the session was created (signed cookies), Unix seconds.
    pub created: u64,
    /// When the cookie was last (re)issued (signed cookies), Unix seconds.
    pub refreshed: u64,
    /// The cookie should be issued again: to keep the session from idling
    /// out, or to give a value of an earlier form its SID.
    pub needs_refresh: bool,
}

/// Encodes and verifies cookie values.
#[derive(Clone, Debug)]
pub struct Codec {
    pub keys: Keys,
    pub lifetimes: Lifetimes,
}

fn b36(mut n: u64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut buf = [0u8; 13];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = DIGITS[(n % 36) as usize];
        n /= 36;
        if n == 0 {
            break;
        }
    }
    String::from_utf8(buf[i..].to_vec()).expect("ascii")
}

fn parse_b36(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 12 {
        return None;
    }
    let mut n: u64 = 0;
    for c in s.bytes() {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'z' => c - b'a' + 10,
            _ => return None,
        };
        n = n.checked_mul(36)?.checked_add(d as u64)?;
    }
    Some(n)
}

impl Codec {
    pub fn new(keys: Keys, lifetimes: Lifetimes) -> Codec {
        Codec { keys, lifetimes }
    }

    pub fn unsigned() -> Codec {
        Codec::new(Keys::default(), Lifetimes::default())
    }

    /// Encodes a cookie value naming pod `id` for session `sid`. `created` is
    /// the session's creation time (kept on refresh), `now` the time of issue.
    pub fn encode(&self, id: SessionId, sid: Sid, created: u64, now: u64) -> String {
        let Some(key) = self.keys.0.first() else {
            return format!("{}.{}", id.encode(), sid.encode());
        };
        let payload = format!("{}.{}.{}.{}", id.encode(), sid.encode(), b36(created), b36(now));
        let tag = Keys::mac(key, &payload).finalize().into_bytes();
        let mut out = payload;
        out.push('.');
        out.push_str(&URL_SAFE_NO_PAD.encode(&tag[..MAC_BYTES]));
        out
    }

    /// The one spelling of a decoded session's value that this codec accepts
    /// (in the earlier form when the session has no SID): the fuzz target
    /// checks that nothing else verifies.
    pub fn spelling(&self, s: &Session) -> String {
        match (s.sid, self.keys.0.first()) {
            (Some(sid), _) => self.encode(s.id, sid, s.created, s.refreshed),
            (None, None) => s.id.encode(),
            (None, Some(key)) => {
                let payload = format!("{}.{}.{}", s.id.encode(), b36(s.created), b36(s.refreshed));
                let tag = Keys::mac(key, &payload).finalize().into_bytes();
                format!("{payload}.{}", URL_SAFE_NO_PAD.encode(&tag[..MAC_BYTES]))
            }
        }
    }

    /// Decodes a cookie value. Never panics; anything unexpected is `Invalid`.
    pub fn decode(&self, value: &str, now: u64) -> CookieState {
        if value.len() > MAX_VALUE_LEN || !value.is_ascii() {
            return CookieState::Invalid;
        }
        if self.keys.is_empty() {
            // Unsigned mode: the ids alone. A signed value is accepted for its
            // ids too, so that turning signing off does not move every session.
            let mut parts = value.split('.');
            let id = parts.next().and_then(SessionId::parse);
            let sid = parts.next().and_then(Sid::parse);
            return match id {
                Some(id) => CookieState::Valid(Session {
                    id,
                    sid,
                    created: 0,
                    refreshed: 0,
                    needs_refresh: sid.is_none(),
                }),
                None => CookieState::Invalid,
            };
        }
        let Some((payload, mac_b64)) = value.rsplit_once('.') else {
            return CookieState::Invalid;
        };
        if mac_b64.len() != MAC_CHARS {
            return CookieState::Invalid;
        }
        let mut tag = [0u8; MAC_BYTES];
        if !matches!(URL_SAFE_NO_PAD.decode_slice(mac_b64, &mut tag), Ok(MAC_BYTES)) {
            return CookieState::Invalid;
        }
        // Constant-time comparison (hmac's verify_truncated_left uses subtle).
        let verified = self
            .keys
            .0
            .iter()
            .any(|k| Keys::mac(k, payload).verify_truncated_left(&tag).is_ok());
        if !verified {
            return CookieState::Invalid;
        }
        let parts: Vec<&str> = payload.splitn(6, '.').collect();
        // `ID.SID.CREATED.REFRESHED`, or the earlier `ID.CREATED.REFRESHED`.
        let (id, sid, created, refreshed) = match parts[..] {
            [id, sid, c, r] => (id, Some(sid), c, r),
            [id, c, r] => (id, None, c, r),
            _ => return CookieState::Invalid,
        };
        let sid = match sid.map(Sid::parse) {
            Some(None) => return CookieState::Invalid,
            Some(s) => s,
            None => None,
        };
        let (Some(id), Some(created), Some(refreshed)) =
            (SessionId::parse(id), parse_b36(created), parse_b36(refreshed))
        else {
            return CookieState::Invalid;
        };
        if refreshed < created {
            return CookieState::Invalid;
        }
        // Allow a little clock skew between pods.
        const SKEW: u64 = 300;
        if created > now.saturating_add(SKEW) {
            return CookieState::Invalid;
        }
        if let Some(max) = self.lifetimes.max_lifetime {
            if now.saturating_sub(created) >= max.as_secs() {
                return CookieState::Invalid;
            }
        }
        let mut needs_refresh = sid.is_none();
        if let Some(idle) = self.lifetimes.idle_timeout {
            let idle_for = now.saturating_sub(refreshed);
            if idle_for >= idle.as_secs() {
                return CookieState::Invalid;
            }
            needs_refresh |= idle_for >= idle.as_secs() / 2;
        }
        CookieState::Valid(Session {
            id,
            sid,
            created,
            refreshed,
            needs_refresh,
        })
    }
}

/// Finds the affinity cookie in the request's `Cookie` headers and decodes it.
/// When several cookies carry the name, the first valid one wins.
pub fn read_cookie(headers: &HeaderMap, name: &str, codec: &Codec, now: u64) -> CookieState {
    read_cookie_values(
        headers.get_all(COOKIE).iter().map(HeaderValue::as_bytes),
        name,
        codec,
        now,
    )
}

/// [`read_cookie`] over the values of the `Cookie` fields, as bytes.
pub fn read_cookie_values<'a>(
    values: impl Iterator<Item = &'a [u8]>,
    name: &str,
    codec: &Codec,
    now: u64,
) -> CookieState {
    let mut state = CookieState::Absent;
    let name = name.as_bytes();
    // Bytes, not str: no UTF-8 validation of the whole (often long) header
    // and ASCII trimming, which is what cookie syntax uses (RFC 6265 §5.4).
    for h in values {
        for pair in h.split(|&b| b == b';') {
            let pair = pair.trim_ascii();
            let Some(eq) = pair.iter().position(|&b| b == b'=') else {
                continue;
            };
            if pair[..eq].trim_ascii() != name {
                continue;
            }
            let mut v = pair[eq + 1..].trim_ascii();
            if let [b'"', inner @ .., b'"'] = v {
                v = inner;
            }
            let decoded = match std::str::from_utf8(v) {
                Ok(v) => codec.decode(v, now),
                Err(_) => CookieState::Invalid,
            };
            match decoded {
                valid @ CookieState::Valid(_) => return valid,
                _ => state = CookieState::Invalid,
            }
        }
    }
    state
}

/// Builds the `Set-Cookie` header value for a session.
///
/// `https` says whether the client's request arrived over TLS (by
/// X-Forwarded-Proto), for `STICKYD_COOKIE_SECURE=auto`.
pub fn set_cookie(cfg: &CookieConfig, value: String, https: bool) -> HeaderValue {
    let secure = match cfg.secure {
        SecureMode::Always => true,
        SecureMode::Never => false,
        SecureMode::Auto => https,
    } || cfg.same_site == SameSite::None
        || crate::config::has_prefix(&cfg.name, "__Host-")
        || crate::config::has_prefix(&cfg.name, "__Secure-")
        || cfg.partitioned;
    let same_site = match cfg.same_site {
        SameSite::Strict => cookie::SameSite::Strict,
        SameSite::Lax => cookie::SameSite::Lax,
        SameSite::None => cookie::SameSite::None,
    };
    let mut b = cookie::Cookie::build((cfg.name.as_str(), value))
        .path(cfg.path.as_str())
        .http_only(cfg.http_only)
        .secure(secure)
        .same_site(same_site);
    if let Some(d) = &cfg.domain {
        b = b.domain(d.as_str());
    }
    if let Some(max_age) = cfg.max_age {
        let secs = max_age.as_secs().min(i64::MAX as u64) as i64;
        b = b.max_age(time::Duration::seconds(secs));
        b = b.expires(time::OffsetDateTime::now_utc() + time::Duration::seconds(secs));
    }
    if cfg.partitioned {
        b = b.partitioned(true);
    }
    HeaderValue::from_str(&b.build().to_string()).expect("cookie built from validated config is a valid header")
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(s: &str) -> Keys {
        Keys::parse(s).unwrap()
    }

    const K1: &str = "0123456789abcdef0123456789abcdef";
    const K2: &str = "fedcba9876543210fedcba9876543210";
    const SID: Sid = Sid([1, 2, 3, 4, 5, 6]);

    #[test]
    fn ids_are_short_opaque_and_stable() {
        let a = SessionId::for_pod("web-7d9f8-abcde");
        assert_eq!(a, SessionId::for_pod("web-7d9f8-abcde"));
        assert_ne!(a, SessionId::for_pod("web-7d9f8-abcdf"));
        let s = a.encode();
        assert_eq!(s.len(), ID_CHARS);
        assert!(!s.contains("web"));
        assert_eq!(SessionId::parse(&s), Some(a));
    }

    #[test]
    fn unsigned_round_trip() {
        let c = Codec::unsigned();
        let id = SessionId::for_pod("p1");
        let v = c.encode(id, SID, 0, 0);
        assert_eq!(v.len(), ID_CHARS + 1 + SID_CHARS, "{v}");
        assert!(
            matches!(c.decode(&v, 0), CookieState::Valid(s) if s.id == id && s.sid == Some(SID) && !s.needs_refresh)
        );
        for bad in [
            "",
            "x",
            "!!!!!!!!!!!!",
            "aaaaaaaaaaaaa",
            &"a".repeat(500),
            "ñañañañañaña",
        ] {
            assert_eq!(c.decode(bad, 0), CookieState::Invalid, "{bad}");
        }
    }

    #[test]
    fn signed_round_trip_and_tampering() {
        let c = Codec::new(keys(K1), Lifetimes::default());
        let id = SessionId::for_pod("p1");
        let v = c.encode(id, SID, 1_700_000_000, 1_700_000_000);
        assert!(v.len() < 64, "{v}");
        assert!(
            matches!(c.decode(&v, 1_700_000_001), CookieState::Valid(s) if s.id == id && s.sid == Some(SID) && s.created == 1_700_000_000 && !s.needs_refresh)
        );
        // Unsigned values are refused when a key is set.
        assert_eq!(c.decode(&id.encode(), 0), CookieState::Invalid);
        // Flip every character in turn: never valid.
        for i in 0..v.len() {
            let mut b = v.clone().into_bytes();
            b[i] = if b[i] == b'A' { b'B' } else { b'A' };
            let t = String::from_utf8(b).unwrap();
            if t != v {
                assert_eq!(c.decode(&t, 1_700_000_001), CookieState::Invalid, "{t}");
            }
        }
        // Another pod's id with the old MAC.
        let other = SessionId::for_pod("p2").encode();
        let forged = format!("{other}{}", &v[ID_CHARS..]);
        assert_eq!(c.decode(&forged, 1_700_000_001), CookieState::Invalid);
        // Truncated.
        assert_eq!(c.decode(&v[..v.len() - 1], 1_700_000_001), CookieState::Invalid);
        // Signed with another key.
        let c2 = Codec::new(keys(K2), Lifetimes::default());
        assert_eq!(c2.decode(&v, 1_700_000_001), CookieState::Invalid);
    }

    #[test]
    fn rotation_first_key_signs_all_verify() {
        let old = Codec::new(keys(K1), Lifetimes::default());
        let rotated = Codec::new(keys(&format!("{K2},{K1}")), Lifetimes::default());
        let id = SessionId::for_pod("p1");
        let old_value = old.encode(id, SID, 10, 10);
        assert!(matches!(rotated.decode(&old_value, 11), CookieState::Valid(_)));
        let new_value = rotated.encode(id, SID, 10, 10);
        assert_ne!(new_value, old_value);
        assert_eq!(old.decode(&new_value, 11), CookieState::Invalid);
        let only_new = Codec::new(keys(K2), Lifetimes::default());
        assert!(matches!(only_new.decode(&new_value, 11), CookieState::Valid(_)));
        assert_eq!(only_new.decode(&old_value, 11), CookieState::Invalid);
    }

    #[test]
    fn lifetimes() {
        let c = Codec::new(
            keys(K1),
            Lifetimes {
                max_lifetime: Some(Duration::from_secs(1000)),
                idle_timeout: Some(Duration::from_secs(100)),
            },
        );
        let id = SessionId::for_pod("p1");
        let v = c.encode(id, SID, 1000, 1000);
        assert!(matches!(c.decode(&v, 1010), CookieState::Valid(s) if !s.needs_refresh));
        assert!(matches!(c.decode(&v, 1060), CookieState::Valid(s) if s.needs_refresh));
        assert_eq!(c.decode(&v, 1100), CookieState::Invalid, "idle");
        let refreshed = c.encode(id, SID, 1000, 1990);
        assert!(matches!(c.decode(&refreshed, 1995), CookieState::Valid(s) if s.created == 1000));
        assert_eq!(c.decode(&refreshed, 2000), CookieState::Invalid, "absolute lifetime");
        // Never overflows, whatever the clock says.
        assert!(matches!(
            c.decode(&c.encode(id, SID, 1000, 1000), u64::MAX),
            CookieState::Invalid
        ));
        let future = c.encode(id, SID, 100_000, 100_000);
        assert_eq!(c.decode(&future, 1000), CookieState::Invalid, "issued in the future");
    }

    #[test]
    fn values_of_earlier_forms_keep_their_pin_and_get_a_sid() {
        let id = SessionId::for_pod("p1");
        // Unsigned `ID`: valid, no SID, to be issued again.
        let c = Codec::unsigned();
        assert!(
            matches!(c.decode(&id.encode(), 0), CookieState::Valid(s) if s.id == id && s.sid.is_none() && s.needs_refresh)
        );
        // Signed `ID.CREATED.REFRESHED.MAC`, as the earlier form signed it.
        let k = keys(K1);
        let payload = format!("{}.{}.{}", id.encode(), b36(1000), b36(1000));
        let tag = Keys::mac(&k.0[0], &payload).finalize().into_bytes();
        let old = format!("{payload}.{}", URL_SAFE_NO_PAD.encode(&tag[..MAC_BYTES]));
        let signed = Codec::new(k, Lifetimes::default());
        let CookieState::Valid(decoded) = signed.decode(&old, 1001) else {
            panic!("{old}")
        };
        assert_eq!(signed.spelling(&decoded), old);
        assert!(matches!(
            signed.decode(&old, 1001),
            CookieState::Valid(s) if s.id == id && s.sid.is_none() && s.created == 1000 && s.needs_refresh
        ));
        // Unsigned mode reads the ids of either signed form.
        assert!(matches!(c.decode(&old, 0), CookieState::Valid(s) if s.id == id && s.sid.is_none()));
        let new = signed.encode(id, SID, 1000, 1000);
        assert!(matches!(c.decode(&new, 0), CookieState::Valid(s) if s.id == id && s.sid == Some(SID)));
        // A value whose SID part is malformed is invalid, even with a good MAC.
        let payload = format!("{}.{}.{}.{}", id.encode(), "short", b36(1000), b36(1000));
        let k = keys(K1);
        let tag = Keys::mac(&k.0[0], &payload).finalize().into_bytes();
        let bad_sid = format!("{payload}.{}", URL_SAFE_NO_PAD.encode(&tag[..MAC_BYTES]));
        assert_eq!(signed.decode(&bad_sid, 1001), CookieState::Invalid);
        // Too many parts.
        let payload = format!("{}.{}.{}.{}.{}", id.encode(), SID.encode(), b36(1), b36(1), b36(1));
        let tag = Keys::mac(&k.0[0], &payload).finalize().into_bytes();
        let extra = format!("{payload}.{}", URL_SAFE_NO_PAD.encode(&tag[..MAC_BYTES]));
        assert_eq!(signed.decode(&extra, 1001), CookieState::Invalid);
    }

    #[test]
    fn sids_are_random_short_and_round_trip() {
        let a = Sid::random();
        let b = Sid::random();
        assert_ne!(a, b);
        assert_eq!(a.encode().len(), SID_CHARS);
        assert_eq!(Sid::parse(&a.encode()), Some(a));
        assert_eq!(Sid::parse("short"), None);
        assert_eq!(Sid::parse("!!!!!!!!"), None);
        assert_eq!(SID.as_u64(), u64::from_le_bytes([1, 2, 3, 4, 5, 6, 0, 0]));
        // The SID is covered by the MAC: another SID with the same tag fails.
        let c = Codec::new(keys(K1), Lifetimes::default());
        let id = SessionId::for_pod("p1");
        let v = c.encode(id, SID, 10, 10);
        let w = v.replacen(&SID.encode(), &a.encode(), 1);
        assert_eq!(c.decode(&w, 11), CookieState::Invalid);
    }

    #[test]
    fn key_rules() {
        assert!(Keys::parse("").is_err());
        assert!(Keys::parse("short").is_err());
        assert_eq!(Keys::parse(&format!("{K1}, {K2}\n")).unwrap().len(), 2);
        assert!(!format!("{:?}", keys(K1)).contains(K1));
    }

    #[test]
    fn cookie_header_parsing() {
        let c = Codec::unsigned();
        let id = SessionId::for_pod("p1");
        let mut h = HeaderMap::new();
        assert_eq!(read_cookie(&h, "stickyd", &c, 0), CookieState::Absent);
        h.append(COOKIE, HeaderValue::from_static("a=b; stickyd=garbage"));
        assert_eq!(read_cookie(&h, "stickyd", &c, 0), CookieState::Invalid);
        h.append(
            COOKIE,
            HeaderValue::from_str(&format!("x=1;stickyd={}", id.encode())).unwrap(),
        );
        assert!(matches!(read_cookie(&h, "stickyd", &c, 0), CookieState::Valid(s) if s.id == id));
        assert_eq!(read_cookie(&h, "other", &c, 0), CookieState::Absent);
    }

    #[test]
    fn attributes() {
        let env = [
            ("STICKYD_POD_NAME", "p"),
            ("STICKYD_SERVICE", "s"),
            ("STICKYD_COOKIE_MAX_AGE", "3600"),
        ];
        let mut cfg = crate::config::Config::from_env(&env).unwrap().cookie;
        let v = set_cookie(&cfg, "abc".into(), false);
        let s = v.to_str().unwrap();
        assert!(s.starts_with("stickyd=abc"), "{s}");
        assert!(s.contains("Path=/"), "{s}");
        assert!(s.contains("HttpOnly"), "{s}");
        assert!(s.contains("SameSite=Lax"), "{s}");
        assert!(s.contains("Max-Age=3600"), "{s}");
        assert!(s.contains("Expires="), "{s}");
        assert!(!s.contains("Secure"), "{s}");
        assert!(set_cookie(&cfg, "abc".into(), true)
            .to_str()
            .unwrap()
            .contains("Secure"));
        cfg.same_site = SameSite::None;
        let s = set_cookie(&cfg, "abc".into(), false).to_str().unwrap().to_string();
        assert!(s.contains("SameSite=None") && s.contains("Secure"), "{s}");
        cfg.domain = Some("example.com".into());
        cfg.partitioned = true;
        let s = set_cookie(&cfg, "abc".into(), false).to_str().unwrap().to_string();
        assert!(s.contains("Domain=example.com") && s.contains("Partitioned"), "{s}");
    }

    #[test]
    fn base36() {
        for n in [0u64, 1, 35, 36, 1_700_000_000, u32::MAX as u64] {
            assert_eq!(parse_b36(&b36(n)), Some(n));
        }
        assert_eq!(parse_b36("ZZ"), None);
        assert_eq!(parse_b36(""), None);
    }
}
