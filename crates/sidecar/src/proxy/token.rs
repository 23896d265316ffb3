//! Where the session token travels, by STICKYD_AFFINITY: read from a
//! request (stickyd's cookie, the affinity header, or the prefix of the
//! app's own cookie or session header) and written to a response served
//! here (stickyd's Set-Cookie, the affinity header, the app's own
//! Set-Cookie or session header prefixed, or the app's value re-issued). Both data paths, hyper's and the HTTP/1.1
//! path's, ask this room, so that the mode is decided in one place; what a
//! response carries is [`route::emit`], a row of the routing table.
//!
//! A forwarded request goes to the peer as it came: the sidecar that
//! serves it reads the token itself, and it alone takes the prefix off the
//! app's value, just before the app.

use http::header::{HeaderName, HeaderValue, SET_COOKIE};

use crate::affinity::{self, Codec, CookieState};
use crate::config::{AffinityMode, Config, CookieConfig};
use crate::route::{self, Emit, Told};

/// The token's carriers, as configured.
pub struct Carrier {
    mode: AffinityMode,
    /// The affinity header, or (app-header) the app's session header.
    header: HeaderName,
    /// The cookie that carries the token: stickyd's, or the app's.
    cookie: String,
}

/// What the app's response says of the session ([`Carrier::answer`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppAnswer {
    pub status: u16,
    /// It sets the app's carrier (app modes).
    pub sets: bool,
    /// What it says of the session ([`route::told`]).
    pub told: Told,
}

/// What a request carries of the token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Read {
    pub state: CookieState,
    /// App-cookie and app-header modes: the app's own value (what a
    /// re-issue carries); None without it, and in the other modes.
    pub app_value: Option<Vec<u8>>,
}

/// The app's own carrier of the token, in the modes that prefix the app's
/// value (`TOKEN~VALUE`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppField<'a> {
    /// The app's cookie, by name: in `Cookie` request fields, set by
    /// `Set-Cookie` response fields.
    Cookie(&'a [u8]),
    /// The app's session header, the same name both ways.
    Header(&'a HeaderName),
}

impl<'a> AppField<'a> {
    /// The request fields that carry it (lowercase).
    pub fn request_field(self) -> &'a [u8] {
        match self {
            AppField::Cookie(_) => b"cookie",
            AppField::Header(n) => n.as_str().as_bytes(),
        }
    }

    /// The response fields the app sets it with (lowercase).
    pub fn response_field(self) -> &'a [u8] {
        match self {
            AppField::Cookie(_) => b"set-cookie",
            AppField::Header(n) => n.as_str().as_bytes(),
        }
    }

    /// The name of the request fields that carry it.
    pub fn request_name(self) -> HeaderName {
        match self {
            AppField::Cookie(_) => http::header::COOKIE,
            AppField::Header(n) => n.clone(),
        }
    }

    /// The name of the response fields the app sets it with.
    pub fn response_name(self) -> HeaderName {
        match self {
            AppField::Cookie(_) => SET_COOKIE,
            AppField::Header(n) => n.clone(),
        }
    }

    /// A request field's value as the app gets it: stickyd's prefix taken
    /// off. None: nothing to take off.
    pub fn strip(self, v: &[u8]) -> Option<Vec<u8>> {
        match self {
            AppField::Cookie(name) => affinity::strip_app_prefix(v, name),
            AppField::Header(_) => affinity::strip_app_header(v).map(<[u8]>::to_vec),
        }
    }

    /// A response field's value with `token` prefixed to the app's value.
    /// None: it goes as it came (another cookie, or nothing to name).
    pub fn prefix(self, v: &[u8], token: &[u8]) -> Option<Vec<u8>> {
        match self {
            AppField::Cookie(name) => affinity::prefix_set_cookie(v, name, token),
            AppField::Header(_) => affinity::prefix_app_header(v, token),
        }
    }
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

    /// The app's own carrier, in app-cookie and app-header modes.
    pub fn app_field(&self) -> Option<AppField<'_>> {
        match self.mode {
            AffinityMode::AppCookie => Some(AppField::Cookie(self.cookie.as_bytes())),
            AffinityMode::AppHeader => Some(AppField::Header(&self.header)),
            _ => None,
        }
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
        let (state, app_value) = match self.mode {
            AffinityMode::AppCookie => {
                let app = affinity::read_app_cookie(cookies, &self.cookie, codec, now);
                (app.state, app.value)
            }
            AffinityMode::AppHeader => {
                let app = affinity::read_app_header(header, codec, now);
                (app.state, app.value)
            }
            mode => {
                let header = if mode.header() {
                    affinity::read_token_values(header, codec, now)
                } else {
                    CookieState::Absent
                };
                let cookie = if mode.cookie() {
                    affinity::read_cookie_values(cookies, &self.cookie, codec, now)
                } else {
                    CookieState::Absent
                };
                (route::choose(header, cookie), None)
            }
        };
        Read { state, app_value }
    }

    /// What a response served here carries: `issue` is the decision's
    /// `set_cookie`; the app's answer as [`Carrier::answer`] read it.
    pub fn emit(&self, issue: bool, read: &Read, answer: &AppAnswer) -> Emit {
        let kept = answer.status < 400 && answer.told == Told::Kept;
        route::emit(self.mode, issue, answer.sets, read.app_value.is_some(), kept)
    }

    /// What the app's response says of the session: its status, whether it
    /// sets the app's carrier (its cookie among `set_cookies`, or
    /// `app_header`: a non-empty value of its session header), and what it
    /// says of the session ([`route::told`]; `delete`: the request was a
    /// DELETE; `now`: Unix seconds, for a cookie's Expires).
    pub fn answer<'a>(
        &self,
        status: u16,
        delete: bool,
        set_cookies: impl Iterator<Item = &'a [u8]>,
        app_header: bool,
        now: u64,
    ) -> AppAnswer {
        let (sets, deletes) = match self.mode {
            AffinityMode::AppCookie => {
                let name = self.cookie.as_bytes();
                set_cookies
                    .filter(|v| affinity::sets_cookie(v, name))
                    .fold((false, false), |(_, deletes), v| {
                        (true, deletes || affinity::deletes_cookie(v, name, now))
                    })
            }
            AffinityMode::AppHeader => (app_header, false),
            _ => (false, false),
        };
        AppAnswer {
            status,
            sets,
            told: route::told(self.mode, delete, status, deletes),
        }
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
            let reissued = match (self.app_field(), read.app_value.as_deref()) {
                (Some(AppField::Cookie(_)), Some(v)) => {
                    affinity::reissue_app_cookie(cfg, token, v, https).map(|v| (SET_COOKIE, v))
                }
                (Some(AppField::Header(name)), Some(v)) => affinity::prefix_app_header(v, token.as_bytes())
                    .and_then(|v| HeaderValue::from_bytes(&v).ok())
                    .map(|v| (name.clone(), v)),
                _ => None,
            };
            match reissued {
                Some(field) => out.push(field),
                None => tracing::debug!("the app's value cannot be written back; not re-issued"),
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
        assert_eq!(app.app_field(), Some(AppField::Cookie(b"sid")));
        assert_eq!(cookie.app_field(), None);
        assert_eq!(app.mode(), AffinityMode::AppCookie);
    }

    #[test]
    fn the_apps_carrier_names_its_fields_both_ways() {
        let name = HeaderName::from_static("mcp-session-id");
        let header = AppField::Header(&name);
        assert_eq!(header.request_field(), b"mcp-session-id");
        assert_eq!(header.response_field(), b"mcp-session-id");
        assert_eq!(header.request_name(), name);
        assert_eq!(header.response_name(), name);
        let cookie = AppField::Cookie(b"sid");
        assert_eq!(cookie.request_field(), b"cookie");
        assert_eq!(cookie.response_field(), b"set-cookie");
        assert_eq!(cookie.request_name(), http::header::COOKIE);
        assert_eq!(cookie.response_name(), SET_COOKIE);
        // The prefix off for the app, on for the client.
        let t = token("b");
        assert_eq!(header.strip(format!(" {t}~v1 ").as_bytes()), Some(b"v1".to_vec()));
        assert_eq!(header.strip(b"v1"), None);
        assert_eq!(header.prefix(b"v1", b"TOK"), Some(b"TOK~v1".to_vec()));
        assert_eq!(
            header.prefix(format!("{t}~v1").as_bytes(), b"TOK"),
            Some(b"TOK~v1".to_vec())
        );
        assert_eq!(header.prefix(b" ", b"TOK"), None);
        assert_eq!(
            cookie.strip(format!("a=1; sid={t}~v1").as_bytes()),
            Some(b"a=1; sid=v1".to_vec())
        );
        assert_eq!(
            cookie.prefix(b"sid=v1; Path=/", b"TOK"),
            Some(b"sid=TOK~v1; Path=/".to_vec())
        );
        assert_eq!(cookie.prefix(b"other=v1", b"TOK"), None);
    }
}
