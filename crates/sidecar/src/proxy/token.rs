//! Where the session token travels, by STICKYD_AFFINITY: read from a
//! request (stickyd's cookie, the affinity header, or the prefix of the
//! app's own cookie) and written to a response served here (stickyd's
//! Set-Cookie, the affinity header, the app's own Set-Cookie prefixed, or
//! the app's cookie re-issued). Both data paths, hyper's and the HTTP/1.1
//! path's, ask this room, so that the mode is decided in one place; what a
//! response carries is [`route::emit`], a row of the routing table.
//!
//! A forwarded request goes to the peer as it came: the sidecar that
//! serves it reads the token itself, and it alone takes the app-cookie
//! prefix off, just before the app.

use http::header::{HeaderMap, HeaderName, HeaderValue, COOKIE, SET_COOKIE};

use super::headers;
use crate::affinity::{self, Codec, CookieState};
use crate::config::{AffinityMode, Config, CookieConfig};
use crate::route::{self, Emit};

/// The token's carriers, as configured.
pub struct Carrier {
    mode: AffinityMode,
    header: HeaderName,
    /// The cookie that carries the token: stickyd's, or the app's.
    cookie: String,
}

/// What a request carries of the token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Read {
    pub state: CookieState,
    /// App-cookie mode: the app's own value of its cookie (what a re-issue
    /// carries); None without the cookie, and in the other modes.
    pub app_value: Option<Vec<u8>>,
}

impl Carrier {
    pub fn new(cfg: &Config) -> Carrier {
        Carrier {
            mode: cfg.affinity,
            header: cfg.affinity_header.clone(),
            cookie: cfg.cookie.name.clone(),
        }
    }

    pub fn mode(&self) -> AffinityMode {
        self.mode
    }

    /// The affinity header's name (read and written in header modes only).
    pub fn header(&self) -> &HeaderName {
        &self.header
    }

    /// The app's cookie, in app-cookie mode.
    pub fn app_cookie(&self) -> Option<&[u8]> {
        (self.mode == AffinityMode::AppCookie).then_some(self.cookie.as_bytes())
    }

    /// Reads the token from the values of the request's `Cookie` fields and
    /// of its affinity header fields; a carrier the mode leaves out is not
    /// read at all.
    pub fn read<'a>(
        &self,
        cookies: impl Iterator<Item = &'a [u8]>,
        header: impl Iterator<Item = &'a [u8]>,
        codec: &Codec,
        now: u64,
    ) -> Read {
        if self.mode == AffinityMode::AppCookie {
            let app = affinity::read_app_cookie(cookies, &self.cookie, codec, now);
            return Read {
                state: app.state,
                app_value: app.value,
            };
        }
        let header = if self.mode.header() {
            affinity::read_token_values(header, codec, now)
        } else {
            CookieState::Absent
        };
        let cookie = if self.mode.cookie() {
            affinity::read_cookie_values(cookies, &self.cookie, codec, now)
        } else {
            CookieState::Absent
        };
        Read {
            state: route::choose(header, cookie),
            app_value: None,
        }
    }

    /// What a response served here carries: `issue` is the decision's
    /// `set_cookie`, `app_sets` whether the app's response sets its cookie.
    pub fn emit(&self, issue: bool, app_sets: bool, read: &Read) -> Emit {
        route::emit(self.mode, issue, app_sets, read.app_value.is_some())
    }

    /// Does one of these `Set-Cookie` values set the app's cookie?
    pub fn app_sets<'a>(&self, mut set_cookies: impl Iterator<Item = &'a [u8]>) -> bool {
        self.app_cookie()
            .is_some_and(|name| set_cookies.any(|v| affinity::sets_cookie(v, name)))
    }

    /// The fields stickyd adds to a response served here, after the app's
    /// own: its Set-Cookie, the affinity header, or the app's cookie
    /// re-issued (skipped when its value cannot be written back).
    pub fn added(
        &self,
        emit: Emit,
        cfg: &CookieConfig,
        token: &str,
        read: &Read,
        https: bool,
    ) -> Vec<(HeaderName, HeaderValue)> {
        let mut out = Vec::with_capacity(2);
        if emit.cookie {
            out.push((SET_COOKIE, affinity::set_cookie(cfg, token.to_string(), https)));
        }
        if emit.header {
            let v = HeaderValue::from_str(token).expect("a token is base64url and dots");
            out.push((self.header.clone(), v));
        }
        if emit.reissue {
            let reissued = read
                .app_value
                .as_deref()
                .and_then(|v| affinity::reissue_app_cookie(cfg, token, v, https));
            match reissued {
                Some(v) => out.push((SET_COOKIE, v)),
                None => tracing::debug!("the app's cookie value cannot be written back; not re-issued"),
            }
        }
        out
    }

    /// Hyper's path: the request for the app in this pod, the app's cookie's
    /// prefix taken off. Returns the `Cookie` fields as they came, to be put
    /// back if the request goes to a peer instead; None: nothing changed.
    pub fn for_app(&self, headers: &mut HeaderMap) -> Option<Vec<HeaderValue>> {
        let name = self.app_cookie()?;
        let stripped: Vec<Option<Vec<u8>>> = headers
            .get_all(COOKIE)
            .iter()
            .map(|v| affinity::strip_app_prefix(v.as_bytes(), name))
            .collect();
        if stripped.iter().all(Option::is_none) {
            return None;
        }
        let originals: Vec<HeaderValue> = headers.get_all(COOKIE).iter().cloned().collect();
        let edited = originals.iter().zip(stripped).map(|(orig, s)| match s {
            // Less of a valid value is still one.
            Some(s) => HeaderValue::from_bytes(&s).unwrap_or_else(|_| orig.clone()),
            None => orig.clone(),
        });
        replace_all(headers, COOKIE, edited.collect());
        Some(originals)
    }

    /// Puts back the `Cookie` fields [`Carrier::for_app`] changed.
    pub fn restore(headers: &mut HeaderMap, originals: Option<Vec<HeaderValue>>) {
        if let Some(o) = originals {
            replace_all(headers, COOKIE, o);
        }
    }

    /// Hyper's path: the head of a response served here. `token` makes the
    /// token naming this pod, called only when the response carries one.
    pub fn respond(
        &self,
        headers: &mut HeaderMap,
        issue: bool,
        read: &Read,
        cfg: &CookieConfig,
        https: bool,
        token: impl FnOnce() -> String,
    ) {
        if self.mode.header() {
            // The header is stickyd's: the app's copy never reaches a client.
            headers.remove(&self.header);
        }
        let app_sets = self.app_sets(headers.get_all(SET_COOKIE).iter().map(HeaderValue::as_bytes));
        let emit = self.emit(issue, app_sets, read);
        if !emit.any() {
            return;
        }
        let token = token();
        if let (true, Some(name)) = (emit.prefix, self.app_cookie()) {
            let edited: Vec<HeaderValue> = headers
                .get_all(SET_COOKIE)
                .iter()
                .map(|v| {
                    affinity::prefix_set_cookie(v.as_bytes(), name, token.as_bytes())
                        .and_then(|p| HeaderValue::from_bytes(&p).ok())
                        .unwrap_or_else(|| v.clone())
                })
                .collect();
            replace_all(headers, SET_COOKIE, edited);
        }
        for (name, value) in self.added(emit, cfg, &token, read, https) {
            headers.append(name, value);
        }
        headers::mark_private(headers);
    }
}

/// Replaces every field `name` by `values`, in their order.
fn replace_all(headers: &mut HeaderMap, name: HeaderName, values: Vec<HeaderValue>) {
    headers.remove(&name);
    for v in values {
        headers.append(name.clone(), v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::affinity::{SessionId, Sid};

    fn config(pairs: &[(&str, &str)]) -> Config {
        let mut m: std::collections::BTreeMap<String, String> = [("STICKYD_POD_NAME", "p"), ("STICKYD_SERVICE", "s")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        for (k, v) in pairs {
            m.insert(k.to_string(), v.to_string());
        }
        Config::from_env(&m).unwrap()
    }

    fn token(pod: &str) -> String {
        Codec::unsigned().encode(SessionId::for_pod(pod), Sid::from_bytes([1; 6]), 0, 0)
    }

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        h
    }

    fn read(c: &Carrier, h: &HeaderMap) -> Read {
        c.read(
            h.get_all(COOKIE).iter().map(HeaderValue::as_bytes),
            h.get_all(c.header()).iter().map(HeaderValue::as_bytes),
            &Codec::unsigned(),
            0,
        )
    }

    fn valid_for(r: &Read, pod: &str) -> bool {
        matches!(r.state, CookieState::Valid(s) if s.id == SessionId::for_pod(pod))
    }

    #[test]
    fn each_mode_reads_its_own_carriers() {
        let (a, b) = (token("a"), token("b"));
        let h = map(&[("cookie", &format!("stickyd={a}")), ("x-stickyd-affinity", &b)]);
        let cookie = Carrier::new(&config(&[]));
        assert!(valid_for(&read(&cookie, &h), "a"));
        let header = Carrier::new(&config(&[("STICKYD_AFFINITY", "header")]));
        assert!(valid_for(&read(&header, &h), "b"));
        let both = Carrier::new(&config(&[("STICKYD_AFFINITY", "cookie,header")]));
        assert!(valid_for(&read(&both, &h), "b"));
        let only_cookie = map(&[("cookie", &format!("stickyd={a}"))]);
        assert!(valid_for(&read(&both, &only_cookie), "a"));
        assert_eq!(read(&header, &only_cookie).state, CookieState::Absent);
        let app = Carrier::new(&config(&[
            ("STICKYD_AFFINITY", "app-cookie"),
            ("STICKYD_APP_COOKIE", "sid"),
        ]));
        let h = map(&[("cookie", &format!("stickyd={a}; sid={b}~v"))]);
        let r = read(&app, &h);
        assert!(valid_for(&r, "b"));
        assert_eq!(r.app_value.as_deref(), Some(&b"v"[..]));
        assert_eq!(app.app_cookie(), Some(&b"sid"[..]));
        assert_eq!(cookie.app_cookie(), None);
        assert_eq!(app.mode(), AffinityMode::AppCookie);
    }

    #[test]
    fn header_mode_answers_in_the_header_with_the_cookies_value() {
        let cfg = config(&[("STICKYD_AFFINITY", "header")]);
        let c = Carrier::new(&cfg);
        let none = read(&c, &HeaderMap::new());
        let mut h = map(&[("x-stickyd-affinity", "from-the-app"), ("set-cookie", "app=1")]);
        c.respond(&mut h, true, &none, &cfg.cookie, false, || "TOKEN".into());
        assert_eq!(h.get_all("x-stickyd-affinity").iter().collect::<Vec<_>>(), ["TOKEN"]);
        assert_eq!(h.get_all("set-cookie").iter().collect::<Vec<_>>(), ["app=1"]);
        assert_eq!(h["cache-control"], "private");
        // No token asked: the app's copy still goes, nothing is added.
        let mut h = map(&[("x-stickyd-affinity", "from-the-app")]);
        c.respond(&mut h, false, &none, &cfg.cookie, false, || unreachable!());
        assert!(h.is_empty(), "{h:?}");
        // Both: the same value in each.
        let cfg = config(&[("STICKYD_AFFINITY", "cookie,header")]);
        let c = Carrier::new(&cfg);
        let mut h = HeaderMap::new();
        c.respond(&mut h, true, &none, &cfg.cookie, false, || "TOKEN".into());
        assert_eq!(h["x-stickyd-affinity"], "TOKEN");
        assert!(h["set-cookie"].to_str().unwrap().starts_with("stickyd=TOKEN;"));
        // Cookie mode leaves an app's header of that name alone.
        let cfg = config(&[]);
        let c = Carrier::new(&cfg);
        let mut h = map(&[("x-stickyd-affinity", "the-apps")]);
        c.respond(&mut h, false, &none, &cfg.cookie, false, || unreachable!());
        assert_eq!(h["x-stickyd-affinity"], "the-apps");
    }

    #[test]
    fn app_cookie_prefixes_what_the_app_sets_and_reissues_what_it_does_not() {
        let cfg = config(&[("STICKYD_AFFINITY", "app-cookie"), ("STICKYD_APP_COOKIE", "sid")]);
        let c = Carrier::new(&cfg);
        let t = token("b");
        let r = read(&c, &map(&[("cookie", &format!("a=1; sid={t}~old"))]));
        // The app sets its cookie: prefixed in place, order and attributes kept.
        let mut h = map(&[
            ("set-cookie", "a=2"),
            ("set-cookie", "sid=new; Max-Age=60; Secure; HttpOnly"),
            ("set-cookie", "z=3"),
        ]);
        c.respond(&mut h, false, &r, &cfg.cookie, false, || "TOK".into());
        let all: Vec<_> = h.get_all("set-cookie").iter().map(|v| v.to_str().unwrap()).collect();
        assert_eq!(all, ["a=2", "sid=TOK~new; Max-Age=60; Secure; HttpOnly", "z=3"]);
        assert_eq!(h["cache-control"], "private");
        // It does not, and a token is due: the old value re-issued.
        let mut h = HeaderMap::new();
        c.respond(&mut h, true, &r, &cfg.cookie, false, || "TOK".into());
        assert!(h["set-cookie"].to_str().unwrap().starts_with("sid=TOK~old;"), "{h:?}");
        // Nothing due and nothing set: untouched.
        let mut h = map(&[("set-cookie", "a=2")]);
        c.respond(&mut h, false, &r, &cfg.cookie, false, || unreachable!());
        assert_eq!(h.len(), 1);
        // The request's prefix goes before the app, and comes back for a peer.
        let mut req = map(&[("cookie", &format!("a=1; sid={t}~old")), ("cookie", "b=2")]);
        let orig = c.for_app(&mut req);
        let all: Vec<_> = req.get_all("cookie").iter().map(|v| v.to_str().unwrap()).collect();
        assert_eq!(all, ["a=1; sid=old", "b=2"]);
        Carrier::restore(&mut req, orig);
        let all: Vec<_> = req
            .get_all("cookie")
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect();
        assert_eq!(all, [format!("a=1; sid={t}~old"), "b=2".to_string()]);
        let mut plain = map(&[("cookie", "sid=own")]);
        assert_eq!(c.for_app(&mut plain), None);
        assert_eq!(Carrier::new(&config(&[])).for_app(&mut req), None);
        assert!(c.app_sets([&b"sid=x"[..]].into_iter()));
        assert!(!c.app_sets([&b"a=x"[..]].into_iter()));
        assert!(!Carrier::new(&config(&[])).app_sets([&b"stickyd=x"[..]].into_iter()));
    }
}
