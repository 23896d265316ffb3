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

use http::header::{HeaderName, HeaderValue, SET_COOKIE};

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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::affinity::{SessionId, Sid};
    use http::header::{HeaderMap, COOKIE};

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
}
