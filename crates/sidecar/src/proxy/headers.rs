//! Header rewriting: hop-by-hop headers (RFC 9110 §7.6.1), X-Forwarded-*,
//! stickyd's own headers, and cache marking of responses that set the cookie.

use std::net::IpAddr;

use bytes::BytesMut;

use crate::names;

use http::header::{
    HeaderMap, HeaderName, HeaderValue, CACHE_CONTROL, CONNECTION, CONTENT_LENGTH, TE, TRANSFER_ENCODING, UPGRADE,
};

/// The hop marker ([`crate::peer`]).
pub use crate::peer::HOP;
/// Tells the app what happened to the session: new, pinned, repinned, unsynced.
pub const SESSION: HeaderName = HeaderName::from_static(names::SESSION);
/// Names the pod that served the response (for operators; on the admin side
/// only, never sent to the client).
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Which of the headers the proxy rewrites a head holds, found in one pass
/// over its names. Most heads hold few of them, so the lookups and removals
/// of the absent ones are skipped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Found(u16);

impl Found {
    const CONNECTION: u16 = 1;
    const KEEP_ALIVE: u16 = 1 << 1;
    const PROXY_CONNECTION: u16 = 1 << 2;
    const TRANSFER_ENCODING: u16 = 1 << 3;
    const TE: u16 = 1 << 4;
    const UPGRADE: u16 = 1 << 5;
    const HOP: u16 = 1 << 6;
    const SESSION: u16 = 1 << 7;
    const X_FORWARDED_FOR: u16 = 1 << 8;
    const X_FORWARDED_PROTO: u16 = 1 << 9;
    const SESSIONS: u16 = 1 << 10;
    const PEER: u16 = 1 << 11;

    /// One pass over the names of `headers`.
    pub fn scan(headers: &HeaderMap) -> Found {
        let mut found = 0;
        for name in headers.keys() {
            found |= match name.as_str() {
                "connection" => Self::CONNECTION,
                "keep-alive" => Self::KEEP_ALIVE,
                "proxy-connection" => Self::PROXY_CONNECTION,
                "transfer-encoding" => Self::TRANSFER_ENCODING,
                "te" => Self::TE,
                "upgrade" => Self::UPGRADE,
                names::HOP => Self::HOP,
                names::SESSION => Self::SESSION,
                "x-forwarded-for" => Self::X_FORWARDED_FOR,
                "x-forwarded-proto" => Self::X_FORWARDED_PROTO,
                names::SESSIONS => Self::SESSIONS,
                names::PEER => Self::PEER,
                _ => 0,
            };
        }
        Found(found)
    }

    fn has(self, bit: u16) -> bool {
        self.0 & bit != 0
    }

    /// The hop marker is present.
    pub fn hop(self) -> bool {
        self.has(Self::HOP)
    }

    /// An HTTP/1.1 upgrade request (e.g. WebSocket): `Upgrade` present and
    /// `Connection` listing `upgrade`.
    pub fn is_upgrade(self, headers: &HeaderMap) -> bool {
        self.has(Self::UPGRADE) && self.has(Self::CONNECTION) && connection_lists(headers, "upgrade")
    }

    /// Did the client's request arrive over https (see [`forwarded_https`])?
    pub fn https(self, headers: &HeaderMap) -> bool {
        self.has(Self::X_FORWARDED_PROTO) && forwarded_https(headers)
    }
}

fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

fn connection_lists(headers: &HeaderMap, token: &str) -> bool {
    connection_tokens(headers).any(|t| t.eq_ignore_ascii_case(token))
}

/// Is this an HTTP/1.1 upgrade request (e.g. WebSocket)?
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    Found::scan(headers).is_upgrade(headers)
}

/// Removes hop-by-hop headers: `Connection` and every header it names,
/// `Keep-Alive`, `Proxy-Connection`, `Transfer-Encoding`, `Upgrade` (unless
/// `keep_upgrade`, where `Connection: upgrade` is put back), and `TE` except
/// `trailers` (needed by gRPC).
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    strip_found(headers, Found::scan(headers), keep_upgrade);
}

/// [`strip_hop_by_hop`] for a head already scanned.
pub fn strip_found(headers: &mut HeaderMap, found: Found, keep_upgrade: bool) {
    if found.has(Found::CONNECTION) {
        // The usual options (keep-alive, close, upgrade) name headers that
        // are handled below or do not exist; only others need a lookup.
        let named: Vec<HeaderName> = connection_tokens(headers)
            .filter(|t| {
                !["keep-alive", "close", "upgrade", "te"]
                    .iter()
                    .any(|known| t.eq_ignore_ascii_case(known))
            })
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .collect();
        for name in named {
            if names::OWN.contains(&name.as_str()) {
                // A client cannot use Connection to strip what we rely on.
                continue;
            }
            headers.remove(&name);
        }
        headers.remove(CONNECTION);
    }
    if found.has(Found::KEEP_ALIVE) {
        headers.remove(KEEP_ALIVE);
    }
    if found.has(Found::PROXY_CONNECTION) {
        headers.remove(PROXY_CONNECTION);
    }
    if found.has(Found::TRANSFER_ENCODING) {
        headers.remove(TRANSFER_ENCODING);
    }
    if found.has(Found::TE) {
        let trailers = headers
            .get_all(TE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("trailers"));
        headers.remove(TE);
        if trailers {
            headers.insert(TE, HeaderValue::from_static("trailers"));
        }
    }
    if keep_upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    } else if found.has(Found::UPGRADE) {
        headers.remove(UPGRADE);
    }
}

/// The X-Forwarded-For entry for a client address (IPv4-mapped IPv6
/// addresses written as IPv4). Computed once per connection.
pub fn forwarded_for_value(client: IpAddr) -> HeaderValue {
    HeaderValue::from_str(&client.to_canonical().to_string()).expect("an IP address is a valid header value")
}

/// Appends the client's entry (from [`forwarded_for_value`]) to
/// X-Forwarded-For, in a head already scanned. Several X-Forwarded-For lines
/// are folded into one.
pub fn append_forwarded_for_found(headers: &mut HeaderMap, found: Found, client: &HeaderValue) {
    if !found.has(Found::X_FORWARDED_FOR) {
        headers.insert(X_FORWARDED_FOR, client.clone());
        return;
    }
    let mut value = BytesMut::with_capacity(64);
    for prev in headers.get_all(&X_FORWARDED_FOR) {
        let prev = prev.as_bytes().trim_ascii();
        if prev.is_empty() {
            continue;
        }
        if !value.is_empty() {
            value.extend_from_slice(b", ");
        }
        value.extend_from_slice(prev);
    }
    if !value.is_empty() {
        value.extend_from_slice(b", ");
    }
    value.extend_from_slice(client.as_bytes());
    // Both parts are valid header values, and so is their join.
    if let Ok(v) = HeaderValue::from_maybe_shared(value.freeze()) {
        headers.insert(X_FORWARDED_FOR, v);
    }
}

/// Removes client copies of stickyd's own headers from a scanned head.
pub fn strip_own_found(headers: &mut HeaderMap, found: Found) {
    if found.has(Found::HOP) {
        headers.remove(HOP);
    }
    if found.has(Found::SESSION) {
        headers.remove(SESSION);
    }
    if found.has(Found::SESSIONS) {
        headers.remove(crate::placement::HEADER);
    }
    if found.has(Found::PEER) {
        headers.remove(crate::peer::PEER);
    }
}

/// Did the client's request arrive over https, by X-Forwarded-Proto (the
/// first value, set by the outermost proxy)?
pub fn forwarded_https(headers: &HeaderMap) -> bool {
    headers
        .get(&X_FORWARDED_PROTO)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"))
}

/// Marks a response that carries stickyd's Set-Cookie so that shared caches
/// do not store it (as HAProxy's `nocache`): `public` and `s-maxage` go,
/// `private` is added.
pub fn mark_private(headers: &mut HeaderMap) {
    if !headers.contains_key(CACHE_CONTROL) {
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("private"));
        return;
    }
    let existing: Vec<String> = headers
        .get_all(CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|d| d.trim().to_string())
        .filter(|d| !d.is_empty())
        .collect();
    if existing
        .iter()
        .any(|d| d.eq_ignore_ascii_case("private") || d.eq_ignore_ascii_case("no-store"))
    {
        return;
    }
    let mut kept: Vec<String> = existing
        .into_iter()
        .filter(|d| {
            let l = d.to_ascii_lowercase();
            l != "public" && !l.starts_with("s-maxage")
        })
        .collect();
    kept.push("private".to_string());
    if let Ok(v) = HeaderValue::from_str(&kept.join(", ")) {
        headers.insert(CACHE_CONTROL, v);
    }
}

/// The response head for the client, in one pass: hop-by-hop headers and
/// stickyd's own headers out (`Upgrade` kept on a 101), and one
/// Content-Length.
pub fn finish_response(headers: &mut HeaderMap, switching: bool) {
    let found = Found::scan(headers);
    strip_own_found(headers, found);
    strip_found(headers, found, switching);
    one_content_length(headers);
}

/// Content-Length as one value: a list of equal values (`2, 2`) or the
/// field repeated is that value (RFC 9110 §8.6), as the HTTP/1.1 path
/// sends it; values that differ or do not parse say no length, and go.
fn one_content_length(headers: &mut HeaderMap) {
    let mut all = headers.get_all(CONTENT_LENGTH).iter();
    let Some(first) = all.next() else {
        return;
    };
    if all.next().is_none() && !first.as_bytes().contains(&b',') {
        return;
    }
    let mut length = None;
    let one = headers
        .get_all(CONTENT_LENGTH)
        .iter()
        .try_for_each(|v| super::h1::parse::add_length(&mut length, v.as_bytes()));
    match (one, length) {
        (Ok(()), Some(n)) => {
            headers.insert(CONTENT_LENGTH, HeaderValue::from(n));
        }
        _ => {
            headers.remove(CONTENT_LENGTH);
        }
    }
}

/// Takes out of a trailer section the fields that never go on as they came
/// (the same as the HTTP/1.1 path's, [`super::h1::parse::hop_by_hop`]):
/// stickyd's own, the hop-by-hop fields, the framing, X-Forwarded-For.
pub fn strip_trailers(trailers: &mut HeaderMap) {
    let dropped: Vec<HeaderName> = trailers
        .keys()
        .filter(|n| super::h1::parse::hop_by_hop(n.as_str().as_bytes()))
        .cloned()
        .collect();
    for name in dropped {
        trailers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn hop_by_hop_removed() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "gzip, trailers"),
            ("upgrade", "websocket"),
            ("x-app", "kept"),
        ]);
        strip_hop_by_hop(&mut h, false);
        assert!(h.get("x-secret").is_none());
        assert!(h.get("connection").is_none());
        assert!(h.get("keep-alive").is_none());
        assert!(h.get("proxy-connection").is_none());
        assert!(h.get("upgrade").is_none());
        assert_eq!(h.get("te").unwrap(), "trailers");
        assert_eq!(h.get("x-app").unwrap(), "kept");
    }

    #[test]
    fn upgrade_kept_when_asked() {
        let mut h = map(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        assert!(is_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h.get("upgrade").unwrap(), "websocket");
        assert_eq!(h.get("connection").unwrap(), "upgrade");
    }

    #[test]
    fn connection_cannot_strip_our_headers() {
        let mut h = map(&[("connection", "x-stickyd-hop"), ("x-stickyd-hop", "a")]);
        strip_hop_by_hop(&mut h, false);
        assert!(h.get("x-stickyd-hop").is_some());
    }

    #[test]
    fn forwarded_for() {
        let mut h = HeaderMap::new();
        for ip in ["10.0.0.1", "::ffff:10.0.0.2"] {
            let found = Found::scan(&h);
            append_forwarded_for_found(&mut h, found, &forwarded_for_value(ip.parse().unwrap()));
        }
        assert_eq!(h.get("x-forwarded-for").unwrap(), "10.0.0.1, 10.0.0.2");
        assert!(forwarded_https(&map(&[("x-forwarded-proto", "https")])));
        assert!(!forwarded_https(&map(&[("x-forwarded-proto", "http, https")])));
    }

    #[test]
    fn one_scan_finds_what_is_rewritten() {
        let h = map(&[
            ("Host", "a"),
            ("X-Stickyd-Hop", "pod-a"),
            ("x-forwarded-proto", "https"),
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
        ]);
        let found = Found::scan(&h);
        assert!(found.hop());
        assert!(found.https(&h));
        assert!(found.is_upgrade(&h));
        let plain = map(&[("host", "a"), ("cookie", "x=1")]);
        let found = Found::scan(&plain);
        assert_eq!(found, Found::default());
        assert!(!found.hop() && !found.https(&plain) && !found.is_upgrade(&plain));
        // Upgrade without Connection naming it is not an upgrade.
        assert!(!is_upgrade(&map(&[
            ("upgrade", "websocket"),
            ("connection", "keep-alive")
        ])));
    }

    #[test]
    fn forwarded_for_lines_are_folded() {
        let ip = forwarded_for_value("192.0.2.7".parse().unwrap());
        let mut h = map(&[
            ("x-forwarded-for", "10.0.0.1, 10.0.0.2"),
            ("x-forwarded-for", " 10.0.0.3 "),
            ("x-forwarded-for", ""),
        ]);
        let found = Found::scan(&h);
        append_forwarded_for_found(&mut h, found, &ip);
        let all: Vec<_> = h.get_all("x-forwarded-for").iter().collect();
        assert_eq!(all, ["10.0.0.1, 10.0.0.2, 10.0.0.3, 192.0.2.7"]);
        let mut h = HeaderMap::new();
        let found = Found::scan(&h);
        append_forwarded_for_found(&mut h, found, &ip);
        assert_eq!(h.get("x-forwarded-for").unwrap(), "192.0.2.7");
        let mut h = map(&[("x-forwarded-for", " ")]);
        let found = Found::scan(&h);
        append_forwarded_for_found(&mut h, found, &ip);
        assert_eq!(h.get("x-forwarded-for").unwrap(), "192.0.2.7");
        assert_eq!(forwarded_for_value("::ffff:10.1.2.3".parse().unwrap()), "10.1.2.3");
        assert_eq!(forwarded_for_value("::1".parse().unwrap()), "::1");
    }

    #[test]
    fn response_finished_in_one_pass() {
        let mut h = map(&[
            ("connection", "keep-alive, x-internal"),
            ("x-internal", "1"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("x-stickyd-hop", "pod-b"),
            ("x-stickyd-session", "new"),
            ("x-stickyd-sessions", "300"),
            ("set-cookie", "app=1"),
        ]);
        finish_response(&mut h, false);
        let names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["set-cookie"]);
        let mut h = map(&[
            ("connection", "upgrade"),
            ("upgrade", "websocket"),
            ("x-stickyd-session", "new"),
        ]);
        finish_response(&mut h, true);
        assert_eq!(h.get("upgrade").unwrap(), "websocket");
        assert_eq!(h.get("connection").unwrap(), "upgrade");
        assert!(h.get("x-stickyd-session").is_none());
    }

    #[test]
    fn one_content_length_and_trailers_without_what_never_goes_on() {
        for (values, want) in [
            (&["2, 2"][..], Some("2")),
            (&["2", "2"], Some("2")),
            (&["2 ,2", " 2"], Some("2")),
            (&["7"], Some("7")),
            (&["1, 2"], None),
            (&["1", "2"], None),
            (&["x, x"], None),
        ] {
            let mut h = map(&values.iter().map(|v| ("content-length", *v)).collect::<Vec<_>>());
            finish_response(&mut h, false);
            let got: Vec<_> = h
                .get_all("content-length")
                .iter()
                .map(|v| v.to_str().unwrap())
                .collect();
            assert_eq!(got, want.into_iter().collect::<Vec<_>>(), "{values:?}");
        }
        let mut t = map(&[
            ("x-stickyd-hop", "a"),
            ("x-stickyd-session", "b"),
            ("x-stickyd-sessions", "c"),
            ("te", "trailers"),
            ("content-length", "1"),
            ("x-forwarded-for", "10.0.0.1"),
            ("grpc-status", "0"),
            ("x-sum", "1"),
        ]);
        strip_trailers(&mut t);
        let mut names: Vec<_> = t.keys().map(|k| k.as_str()).collect();
        names.sort();
        assert_eq!(names, ["grpc-status", "x-sum"]);
    }

    #[test]
    fn cache_marking() {
        let mut h = map(&[("cache-control", "public, max-age=60, s-maxage=600")]);
        mark_private(&mut h);
        assert_eq!(h.get("cache-control").unwrap(), "max-age=60, private");
        let mut h = HeaderMap::new();
        mark_private(&mut h);
        assert_eq!(h.get("cache-control").unwrap(), "private");
        let mut h = map(&[("cache-control", "no-store")]);
        mark_private(&mut h);
        assert_eq!(h.get("cache-control").unwrap(), "no-store");
    }
}
