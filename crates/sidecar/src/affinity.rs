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
/// Each is held as HMAC's keyed state (the key's inner and outer blocks
/// hashed once, at parse), so a MAC costs only the message's blocks.
#[derive(Clone, Default)]
pub struct Keys(Vec<HmacSha256>);

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
        Ok(Keys(
            keys.iter()
                .map(|k| HmacSha256::new_from_slice(k).expect("HMAC takes any key length"))
                .collect(),
        ))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    fn mac(key: &HmacSha256, payload: &str) -> HmacSha256 {
        Keys::mac_bytes(key, payload.as_bytes())
    }

    fn mac_bytes(key: &HmacSha256, payload: &[u8]) -> HmacSha256 {
        let mut m = key.clone();
        m.update(payload);
        m
    }

    /// The first key's MAC of `payload`, truncated to 16 bytes, as 22
    /// base64url characters. None: no key.
    pub(crate) fn tag(&self, payload: &[u8]) -> Option<String> {
        let key = self.0.first()?;
        let tag = Keys::mac_bytes(key, payload).finalize().into_bytes();
        Some(URL_SAFE_NO_PAD.encode(&tag[..MAC_BYTES]))
    }

    /// Does `tag` (22 base64url characters) verify `payload` under any key?
    /// Constant time in the tag (hmac's `verify_truncated_left`, on subtle).
    pub(crate) fn verifies(&self, payload: &[u8], tag: &str) -> bool {
        let mut raw = [0u8; MAC_BYTES];
        if tag.len() != MAC_CHARS || !matches!(URL_SAFE_NO_PAD.decode_slice(tag, &mut raw), Ok(MAC_BYTES)) {
            return false;
        }
        self.0
            .iter()
            .any(|k| Keys::mac_bytes(k, payload).verify_truncated_left(&raw).is_ok())
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
    let name = name.as_bytes();
    first_valid(
        values
            .flat_map(cookie_pairs)
            .filter(|(n, _)| *n == name)
            .map(|(_, v)| unquote(v).0),
        codec,
        now,
    )
}

/// The token in the values of the affinity header: the first valid one
/// wins; one that cannot be decoded is `Invalid`, none `Absent`.
pub fn read_token_values<'a>(values: impl Iterator<Item = &'a [u8]>, codec: &Codec, now: u64) -> CookieState {
    first_valid(values.map(<[u8]>::trim_ascii), codec, now)
}

fn first_valid<'a>(values: impl Iterator<Item = &'a [u8]>, codec: &Codec, now: u64) -> CookieState {
    let mut state = CookieState::Absent;
    for v in values {
        let decoded = match std::str::from_utf8(v) {
            Ok(v) => codec.decode(v, now),
            Err(_) => CookieState::Invalid,
        };
        match decoded {
            valid @ CookieState::Valid(_) => return valid,
            _ => state = CookieState::Invalid,
        }
    }
    state
}

/// The `name=value` pairs of one `Cookie` field, trimmed, as bytes: no
/// UTF-8 validation of the whole (often long) header, and ASCII trimming,
/// which is what cookie syntax uses (RFC 6265 §5.4).
fn cookie_pairs(field: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    field.split(|&b| b == b';').filter_map(|pair| {
        let pair = pair.trim_ascii();
        let eq = pair.iter().position(|&b| b == b'=')?;
        Some((pair[..eq].trim_ascii(), pair[eq + 1..].trim_ascii()))
    })
}

/// A cookie value without its double quotes, and whether it had them.
fn unquote(v: &[u8]) -> (&[u8], bool) {
    match v {
        [b'"', inner @ .., b'"'] => (inner, true),
        _ => (v, false),
    }
}

/// Between the token and the app's own value in app-cookie mode.
pub const APP_DELIMITER: u8 = b'~';

/// Splits an app-cookie value (quotes off) into its token prefix and the
/// app's own value, when it begins with something shaped like a token (a
/// pod id first, then only the token's characters) and the delimiter: a
/// token that fails to verify is still taken off, so that the app gets its
/// own value back. Anything else is the app's value whole.
pub fn split_app_value(v: &[u8]) -> Option<(&[u8], &[u8])> {
    let at = v.iter().take(MAX_VALUE_LEN + 1).position(|&b| b == APP_DELIMITER)?;
    let token = &v[..at];
    let id = token.split(|&b| b == b'.').next().unwrap_or(token);
    let shaped = token.iter().all(|&b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && std::str::from_utf8(id).ok().and_then(SessionId::parse).is_some();
    shaped.then(|| (token, &v[at + 1..]))
}

/// What the app's carrier in a request says (its cookie in app-cookie
/// mode, its header in app-header mode).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppValue {
    /// The token's state: `Absent` without the carrier, `Invalid` when it
    /// has no valid prefix.
    pub state: CookieState,
    /// The app's own value, as the app set it (a cookie's quotes kept, the
    /// prefix off), of the value whose token decided (else of the first):
    /// what a re-issue carries.
    pub value: Option<Vec<u8>>,
}

/// Reads the app's cookie `name` in the request's `Cookie` fields.
pub fn read_app_cookie<'a>(values: impl Iterator<Item = &'a [u8]>, name: &str, codec: &Codec, now: u64) -> AppValue {
    let name = name.as_bytes();
    let pairs = values.flat_map(cookie_pairs).filter(|(n, _)| *n == name);
    read_prefixed(pairs.map(|(_, v)| unquote(v)), codec, now)
}

/// Reads the values of the app's session header (app-header mode): each one
/// trimmed, never unquoted (a header value is the app's whole).
pub fn read_app_header<'a>(values: impl Iterator<Item = &'a [u8]>, codec: &Codec, now: u64) -> AppValue {
    read_prefixed(values.map(|v| (v.trim_ascii(), false)), codec, now)
}

/// The first value whose prefix is a valid token decides; else the state
/// of the last, and the app's value of the first. `(inner, quoted)`: a
/// value without its quotes, and whether it had them.
fn read_prefixed<'a>(values: impl Iterator<Item = (&'a [u8], bool)>, codec: &Codec, now: u64) -> AppValue {
    let mut out = AppValue {
        state: CookieState::Absent,
        value: None,
    };
    for (inner, quoted) in values {
        let (state, value) = match split_app_value(inner) {
            Some((token, rest)) => (first_valid(std::iter::once(token), codec, now), requote(rest, quoted)),
            None => (CookieState::Invalid, requote(inner, quoted)),
        };
        if let CookieState::Valid(_) = state {
            return AppValue {
                state,
                value: Some(value),
            };
        }
        out.state = state;
        out.value.get_or_insert(value);
    }
    out
}

/// A value of the app's session header as the app gets it: the token prefix
/// taken off. None: no prefix to take off (the value goes as it came).
pub fn strip_app_header(v: &[u8]) -> Option<&[u8]> {
    split_app_value(v.trim_ascii()).map(|(_, rest)| rest)
}

/// The app's session header value with `token~` before it (a prefix already
/// there is replaced). None: the app sent it empty (nothing to name).
pub fn prefix_app_header(v: &[u8], token: &[u8]) -> Option<Vec<u8>> {
    let v = v.trim_ascii();
    let own = split_app_value(v).map_or(v, |(_, rest)| rest);
    if own.is_empty() {
        return None;
    }
    let mut out = Vec::with_capacity(token.len() + 1 + own.len());
    out.extend_from_slice(token);
    out.push(APP_DELIMITER);
    out.extend_from_slice(own);
    Some(out)
}

fn requote(v: &[u8], quoted: bool) -> Vec<u8> {
    if !quoted {
        return v.to_vec();
    }
    let mut out = Vec::with_capacity(v.len() + 2);
    out.push(b'"');
    out.extend_from_slice(v);
    out.push(b'"');
    out
}

/// A `Cookie` field for the app: every `name` pair's token prefix taken
/// off, everything else byte for byte as it came. None: nothing to take off.
pub fn strip_app_prefix(field: &[u8], name: &[u8]) -> Option<Vec<u8>> {
    let mut cuts: Vec<std::ops::Range<usize>> = Vec::new();
    let mut start = 0;
    for pair in field.split(|&b| b == b';') {
        let at = start;
        start += pair.len() + 1;
        let Some(eq) = pair.iter().position(|&b| b == b'=') else {
            continue;
        };
        if pair[..eq].trim_ascii() != name {
            continue;
        }
        let v = &pair[eq + 1..];
        let lead = v.len() - v.trim_ascii_start().len();
        let (inner, quoted) = unquote(v.trim_ascii());
        if let Some((token, _)) = split_app_value(inner) {
            let from = at + eq + 1 + lead + usize::from(quoted);
            cuts.push(from..from + token.len() + 1);
        }
    }
    if cuts.is_empty() {
        return None;
    }
    let mut out = Vec::with_capacity(field.len());
    let mut from = 0;
    for cut in cuts {
        out.extend_from_slice(&field[from..cut.start]);
        from = cut.end;
    }
    out.extend_from_slice(&field[from..]);
    Some(out)
}

/// The cookie a `Set-Cookie` field value sets, and the range of its value
/// (quotes off) in the field.
fn set_cookie_value(field: &[u8]) -> Option<(&[u8], std::ops::Range<usize>)> {
    let pair_end = field.iter().position(|&b| b == b';').unwrap_or(field.len());
    let pair = &field[..pair_end];
    let eq = pair.iter().position(|&b| b == b'=')?;
    let v = &pair[eq + 1..];
    let lead = v.len() - v.trim_ascii_start().len();
    let (inner, quoted) = unquote(v.trim_ascii());
    let from = eq + 1 + lead + usize::from(quoted);
    Some((pair[..eq].trim_ascii(), from..from + inner.len()))
}

/// Does this `Set-Cookie` field value set the cookie `name`?
pub fn sets_cookie(field: &[u8], name: &[u8]) -> bool {
    set_cookie_value(field).is_some_and(|(n, _)| n == name)
}

/// Does this `Set-Cookie` field value delete the cookie `name`: a
/// `Max-Age` of zero or less, or an `Expires` before `now` (Unix seconds)?
/// `Max-Age` wins over `Expires`, as in browsers (RFC 6265 §5.3).
pub fn deletes_cookie(field: &[u8], name: &[u8], now: u64) -> bool {
    let Ok(text) = std::str::from_utf8(field) else {
        return false;
    };
    let Ok(c) = cookie::Cookie::parse(text) else {
        return false;
    };
    if c.name().as_bytes() != name {
        return false;
    }
    if let Some(age) = c.max_age() {
        return age <= time::Duration::ZERO;
    }
    let now = i64::try_from(now).unwrap_or(i64::MAX);
    c.expires_datetime().is_some_and(|at| at.unix_timestamp() <= now)
}

/// The app's `Set-Cookie` of `name` with `token~` before its value, every
/// attribute as the app wrote it (a prefix already there is replaced).
/// None: it sets another cookie, or deletes this one (an empty value).
pub fn prefix_set_cookie(field: &[u8], name: &[u8], token: &[u8]) -> Option<Vec<u8>> {
    let (n, value) = set_cookie_value(field)?;
    if n != name || value.is_empty() {
        return None;
    }
    let own = match split_app_value(&field[value.clone()]) {
        Some((old, _)) => value.start + old.len() + 1,
        None => value.start,
    };
    let mut out = Vec::with_capacity(field.len() + token.len() + 1);
    out.extend_from_slice(&field[..value.start]);
    out.extend_from_slice(token);
    out.push(APP_DELIMITER);
    out.extend_from_slice(&field[own..]);
    Some(out)
}

/// The app's cookie re-issued by stickyd: `TOKEN~VALUE` with the app's
/// value from the request, and the attributes of STICKYD_COOKIE_*. None:
/// the value cannot be written back in a header.
pub fn reissue_app_cookie(cfg: &CookieConfig, token: &str, value: &[u8], https: bool) -> Option<HeaderValue> {
    let (inner, quoted) = unquote(value);
    let inner = std::str::from_utf8(inner).ok()?;
    let v = if quoted {
        format!("\"{token}~{inner}\"")
    } else {
        format!("{token}~{inner}")
    };
    cookie_header(cfg, v, https)
}

/// Builds the `Set-Cookie` header value for a session.
///
/// `https` says whether the client's request arrived over TLS (by
/// X-Forwarded-Proto), for `STICKYD_COOKIE_SECURE=auto`.
pub fn set_cookie(cfg: &CookieConfig, value: String, https: bool) -> HeaderValue {
    cookie_header(cfg, value, https).expect("cookie built from validated config is a valid header")
}

fn cookie_header(cfg: &CookieConfig, value: String, https: bool) -> Option<HeaderValue> {
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
    HeaderValue::from_str(&b.build().to_string()).ok()
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
        // The bound is inclusive: MIN_KEY_LEN bytes is a key, one fewer is not.
        assert!(Keys::parse(&"k".repeat(MIN_KEY_LEN)).is_ok());
        assert!(Keys::parse(&"k".repeat(MIN_KEY_LEN - 1)).is_err());
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
        // At most 12 digits (36^12 < 2^64): 12 parse, 13 do not.
        assert_eq!(parse_b36("100000000000"), Some(36u64.pow(11)));
        assert_eq!(parse_b36("1000000000000"), None);
    }

    fn token(pod: &str) -> String {
        Codec::unsigned().encode(SessionId::for_pod(pod), SID, 0, 0)
    }

    #[test]
    fn the_affinity_header_carries_the_same_value_as_the_cookie() {
        let c = Codec::new(keys(K1), Lifetimes::default());
        let id = SessionId::for_pod("p1");
        let v = c.encode(id, SID, 10, 10);
        let one = |vals: &[&str]| read_token_values(vals.iter().map(|v| v.as_bytes()), &c, 11);
        assert_eq!(one(&[]), CookieState::Absent);
        assert_eq!(one(&["garbage"]), CookieState::Invalid);
        assert!(matches!(one(&[&format!(" {v} ")]), CookieState::Valid(s) if s.id == id && s.sid == Some(SID)));
        assert!(matches!(one(&["garbage", &v]), CookieState::Valid(s) if s.id == id));
        // Unsigned while a key is set: no token.
        assert_eq!(one(&[&token("p1")]), CookieState::Invalid);
        assert_eq!(one(&["\u{e9}"]), CookieState::Invalid);
    }

    #[test]
    fn app_values_split_only_at_a_token_shaped_prefix() {
        let t = token("p1");
        let v = format!("{t}~abc~d");
        assert_eq!(split_app_value(v.as_bytes()), Some((t.as_bytes(), &b"abc~d"[..])));
        let signed = Codec::new(keys(K1), Lifetimes::default()).encode(SessionId::for_pod("p1"), SID, 1, 1);
        let v = format!("{signed}~x");
        assert_eq!(split_app_value(v.as_bytes()), Some((signed.as_bytes(), &b"x"[..])));
        // The id alone (the earlier form) is token-shaped too.
        let id = SessionId::for_pod("p1").encode();
        assert_eq!(
            split_app_value(format!("{id}~x").as_bytes()).map(|p| p.1),
            Some(&b"x"[..])
        );
        for own in [
            "abc".to_string(),
            "abc~def".to_string(),
            "short.x~v".to_string(),
            format!("{id}!~v"),
            id.clone(),
            format!("{}~v", "A".repeat(MAX_VALUE_LEN + 1)),
        ] {
            assert_eq!(split_app_value(own.as_bytes()), None, "{own}");
        }
        // Right up to the longest token.
        let long = format!("{id}.{}", "a".repeat(MAX_VALUE_LEN - ID_CHARS - 1));
        assert_eq!(long.len(), MAX_VALUE_LEN);
        assert!(split_app_value(format!("{long}~v").as_bytes()).is_some());
    }

    #[test]
    fn the_app_cookie_is_read_by_its_prefix() {
        let c = Codec::unsigned();
        let id = SessionId::for_pod("p1");
        let t = token("p1");
        let read = |field: &str| read_app_cookie(std::iter::once(field.as_bytes()), "JSESSIONID", &c, 0);
        assert_eq!(
            read("a=1"),
            AppValue {
                state: CookieState::Absent,
                value: None
            }
        );
        let r = read(&format!("a=1; JSESSIONID={t}~abc; b=2"));
        assert!(matches!(r.state, CookieState::Valid(s) if s.id == id));
        assert_eq!(r.value.as_deref(), Some(&b"abc"[..]));
        // Quotes stay the app's.
        let r = read(&format!("JSESSIONID=\"{t}~abc\""));
        assert!(matches!(r.state, CookieState::Valid(_)));
        assert_eq!(r.value.as_deref(), Some(&b"\"abc\""[..]));
        // No prefix: a new session; the value whole.
        let r = read("JSESSIONID=abc~def");
        assert_eq!(r.state, CookieState::Invalid);
        assert_eq!(r.value.as_deref(), Some(&b"abc~def"[..]));
        // A token-shaped prefix that fails to verify is taken off all the same.
        let signed = Codec::new(keys(K1), Lifetimes::default());
        let r = read_app_cookie(
            std::iter::once(format!("JSESSIONID={t}~abc").as_bytes()),
            "JSESSIONID",
            &signed,
            0,
        );
        assert_eq!(r.state, CookieState::Invalid);
        assert_eq!(r.value.as_deref(), Some(&b"abc"[..]));
        // The first valid one decides, with its own value.
        let r = read(&format!("JSESSIONID=old; JSESSIONID={t}~new"));
        assert!(matches!(r.state, CookieState::Valid(_)));
        assert_eq!(r.value.as_deref(), Some(&b"new"[..]));
        let r = read("JSESSIONID=first; JSESSIONID=second");
        assert_eq!(r.value.as_deref(), Some(&b"first"[..]));
        assert_eq!(
            read("jsessionid=abc").state,
            CookieState::Absent,
            "names are case-sensitive"
        );
    }

    #[test]
    fn the_app_gets_its_own_value_back_and_every_other_cookie_as_it_came() {
        let t = token("p1");
        let strip = |f: &str| strip_app_prefix(f.as_bytes(), b"sid").map(|v| String::from_utf8(v).unwrap());
        assert_eq!(strip("a=1; b=2"), None);
        assert_eq!(strip("sid=plain"), None);
        assert_eq!(
            strip(&format!("a=1;  sid={t}~v1 ;b=x~y")).as_deref(),
            Some("a=1;  sid=v1 ;b=x~y")
        );
        assert_eq!(strip(&format!("sid=\"{t}~v\"")).as_deref(), Some("sid=\"v\""));
        assert_eq!(
            strip(&format!("sid={t}~v; other={t}~w; sid= {t}~z")).as_deref(),
            Some(&*format!("sid=v; other={t}~w; sid= z"))
        );
        assert_eq!(strip(&format!("sid={t}~")).as_deref(), Some("sid="));
        assert_eq!(strip(&format!("nosign; sid={t}~v")).as_deref(), Some("nosign; sid=v"));
    }

    #[test]
    fn the_apps_set_cookie_gets_the_prefix_and_keeps_its_attributes() {
        let t = token("p1");
        let pre =
            |f: &str| prefix_set_cookie(f.as_bytes(), b"sid", t.as_bytes()).map(|v| String::from_utf8(v).unwrap());
        assert_eq!(
            pre("sid=abc; Max-Age=60; Secure; HttpOnly; Path=/app").as_deref(),
            Some(&*format!("sid={t}~abc; Max-Age=60; Secure; HttpOnly; Path=/app"))
        );
        assert_eq!(pre("sid = abc").as_deref(), Some(&*format!("sid = {t}~abc")));
        assert_eq!(
            pre("sid=\"abc\"; Path=/").as_deref(),
            Some(&*format!("sid=\"{t}~abc\"; Path=/"))
        );
        assert_eq!(pre("sid=abc").as_deref(), Some(&*format!("sid={t}~abc")));
        // A prefix already there is replaced, not doubled.
        let other = token("p2");
        assert_eq!(
            pre(&format!("sid={other}~abc")).as_deref(),
            Some(&*format!("sid={t}~abc"))
        );
        for untouched in ["other=abc", "sid=; Max-Age=0", "sid=\"\"", "sidx=abc", "noequals", ""] {
            assert_eq!(pre(untouched), None, "{untouched}");
        }
        assert!(sets_cookie(b"sid=abc; Path=/", b"sid"));
        assert!(sets_cookie(b"sid=", b"sid"));
        assert!(!sets_cookie(b"sidx=abc", b"sid"));
        assert!(!sets_cookie(b"garbage", b"sid"));
    }

    #[test]
    fn a_reissue_carries_the_old_value_and_the_configured_attributes() {
        let env = [
            ("STICKYD_POD_NAME", "p"),
            ("STICKYD_SERVICE", "s"),
            ("STICKYD_AFFINITY", "app-cookie"),
            ("STICKYD_APP_COOKIE", "sid"),
            ("STICKYD_COOKIE_PATH", "/app"),
        ];
        let cfg = crate::config::Config::from_env(&env).unwrap().cookie;
        let v = reissue_app_cookie(&cfg, "TOK", b"abc", false).unwrap();
        let s = v.to_str().unwrap();
        assert!(s.starts_with("sid=TOK~abc;"), "{s}");
        assert!(s.contains("Path=/app") && s.contains("HttpOnly"), "{s}");
        let v = reissue_app_cookie(&cfg, "TOK", b"\"abc\"", true).unwrap();
        let s = v.to_str().unwrap();
        assert!(s.starts_with("sid=\"TOK~abc\";"), "{s}");
        assert!(s.contains("Secure"), "{s}");
        assert_eq!(reissue_app_cookie(&cfg, "TOK", b"\xff", false), None);
        assert_eq!(reissue_app_cookie(&cfg, "TOK", b"a\x01b", false), None);
    }
}
