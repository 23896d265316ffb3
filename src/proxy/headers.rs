//! Header rewriting: hop-by-hop headers (RFC 9110 §7.6.1), X-Forwarded-*,
//! stickyd's own headers, and cache marking of responses that set the cookie.

use std::net::IpAddr;

use http::header::{HeaderMap, HeaderName, HeaderValue, CACHE_CONTROL, CONNECTION, TE, TRANSFER_ENCODING, UPGRADE};

/// The hop marker: set by the sidecar that forwards a request to a peer.
pub const HOP: HeaderName = HeaderName::from_static("x-stickyd-hop");
/// Tells the app what happened to the session: new, pinned, repinned, unsynced.
pub const SESSION: HeaderName = HeaderName::from_static("x-stickyd-session");
/// Names the pod that served the response (for operators; on the admin side
/// only, never sent to the client).
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Is this an HTTP/1.1 upgrade request (e.g. WebSocket)?
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(UPGRADE)
        && headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Removes hop-by-hop headers: `Connection` and every header it names,
/// `Keep-Alive`, `Proxy-Connection`, `Transfer-Encoding`, `Upgrade` (unless
/// `keep_upgrade`, where `Connection: upgrade` is put back), and `TE` except
/// `trailers` (needed by gRPC).
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    if headers.contains_key(CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .collect();
        for name in named {
            if keep_upgrade && name == UPGRADE {
                continue;
            }
            if name == TE || name == HOP || name == SESSION {
                // A client cannot use Connection to strip what we rely on.
                continue;
            }
            headers.remove(&name);
        }
        headers.remove(CONNECTION);
    }
    headers.remove(KEEP_ALIVE);
    headers.remove(PROXY_CONNECTION);
    headers.remove(TRANSFER_ENCODING);
    if let Some(te) = headers.get(TE) {
        let trailers = te
            .to_str()
            .map(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("trailers")))
            .unwrap_or(false);
        headers.remove(TE);
        if trailers {
            headers.insert(TE, HeaderValue::from_static("trailers"));
        }
    }
    if keep_upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(UPGRADE);
    }
}

/// Appends the client's address to X-Forwarded-For.
pub fn append_forwarded_for(headers: &mut HeaderMap, client: IpAddr) {
    let ip = client.to_canonical().to_string();
    let value = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prev) if !prev.trim().is_empty() => format!("{prev}, {ip}"),
        _ => ip,
    };
    // Several X-Forwarded-For lines are folded into one.
    headers.remove(&X_FORWARDED_FOR);
    if let Ok(v) = HeaderValue::from_str(&value) {
        headers.insert(X_FORWARDED_FOR, v);
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

/// Removes stickyd's own headers from a response before it leaves to the client.
pub fn strip_own(headers: &mut HeaderMap) {
    headers.remove(HOP);
    headers.remove(SESSION);
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
        append_forwarded_for(&mut h, "10.0.0.1".parse().unwrap());
        append_forwarded_for(&mut h, "::ffff:10.0.0.2".parse().unwrap());
        assert_eq!(h.get("x-forwarded-for").unwrap(), "10.0.0.1, 10.0.0.2");
        assert!(forwarded_https(&map(&[("x-forwarded-proto", "https")])));
        assert!(!forwarded_https(&map(&[("x-forwarded-proto", "http, https")])));
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
