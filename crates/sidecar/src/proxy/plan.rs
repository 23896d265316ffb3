//! The plans of an attempt, made once for both codecs: where it goes
//! ([`Dest`]), what the request carries on beyond what came ([`Outgoing`]),
//! and what the response carries back ([`ResponsePlan`]), with the
//! bookkeeping of an answered attempt. A codec only writes them in its own
//! form: header lines, or a `HeaderMap`.

use http::header::{HeaderMap, HeaderName, HeaderValue, SET_COOKIE};

use super::facts::Facts;
use super::headers::{self, HOP, SESSION};
use super::token::{Carrier, Read};
use super::upstream::Target;
use crate::affinity;
use crate::config::CookieConfig;
use crate::endpoints::Peer;
use crate::route::{Decision, Emit, Failed, SessionMark};

/// Where one attempt of a request goes.
#[derive(Clone, Copy, Debug)]
pub(super) enum Dest<'v> {
    /// The app in this pod; the response gets the token when `set_cookie`.
    Local { mark: SessionMark, set_cookie: bool },
    /// A peer's sidecar, which answers for its pod.
    Peer { peer: &'v Peer, mark: SessionMark },
}

impl<'v> Dest<'v> {
    /// The destination a decision names; None: it rejects the request.
    pub fn of(decision: Decision<'v>) -> Option<Dest<'v>> {
        match decision {
            Decision::Local { mark, set_cookie } => Some(Dest::Local { mark, set_cookie }),
            Decision::Forward { peer, mark } => Some(Dest::Peer { peer, mark }),
            Decision::Reject => None,
        }
    }

    pub fn target(self) -> Target {
        match self {
            Dest::Local { .. } => Target::App,
            Dest::Peer { .. } => Target::Peer,
        }
    }

    pub fn mark(self) -> SessionMark {
        match self {
            Dest::Local { mark, .. } | Dest::Peer { mark, .. } => mark,
        }
    }

    /// What failed, should this attempt fail.
    pub fn failed(self) -> Failed {
        match self {
            Dest::Local { .. } => Failed::App,
            Dest::Peer { .. } => Failed::Peer,
        }
    }
}

/// How the request's `Cookie` fields go on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Cookies<'a> {
    /// As they came.
    AsTheyCame,
    /// App-cookie mode, to the app in this pod: the app's cookie (this
    /// name) without stickyd's prefix, every other cookie as it came.
    WithoutPrefix(&'a [u8]),
}

/// The outgoing plan: what a request carries to its destination beyond
/// what came (client copies of stickyd's fields and hop-by-hop fields never
/// go on).
pub(super) struct Outgoing<'a> {
    /// `x-stickyd-session` for the app: what happened to the session.
    pub session: Option<&'static str>,
    /// The hop marker for the peer, signed for it, and how many times it
    /// goes (one per hop made, this one included).
    pub hop: Option<(HeaderValue, usize)>,
    pub cookies: Cookies<'a>,
}

impl<'a> Outgoing<'a> {
    /// The plan for sending the request of `f` to `dest`.
    pub fn to(f: &Facts<'a>, dest: Dest<'_>) -> Outgoing<'a> {
        let carrier = &f.shared.carrier;
        match dest {
            Dest::Local { mark, .. } => Outgoing {
                session: Some(mark.as_str()),
                hop: None,
                cookies: match carrier.app_cookie() {
                    Some(name) => Cookies::WithoutPrefix(name),
                    None => Cookies::AsTheyCame,
                },
            },
            // A forwarded request goes to the peer as it came: that sidecar
            // reads the token itself.
            Dest::Peer { peer, .. } => Outgoing {
                session: None,
                hop: Some((f.shared.hop_marker(peer, f.now), usize::from(f.hops) + 1)),
                cookies: Cookies::AsTheyCame,
            },
        }
    }

    /// Writes the plan into a prepared request's fields (hyper's codec).
    /// The `Cookie` fields as they came are returned when they changed, to
    /// put back ([`Outgoing::undo`]) should the request go elsewhere.
    pub fn apply(&self, h: &mut HeaderMap) -> Option<Vec<HeaderValue>> {
        h.remove(SESSION);
        h.remove(HOP);
        if let Some(s) = self.session {
            h.insert(SESSION, HeaderValue::from_static(s));
        }
        if let Some((marker, n)) = &self.hop {
            for _ in 0..*n {
                h.append(HOP, marker.clone());
            }
        }
        match self.cookies {
            Cookies::AsTheyCame => None,
            Cookies::WithoutPrefix(name) => without_prefix(h, name),
        }
    }

    /// Puts back the `Cookie` fields that [`Outgoing::apply`] changed.
    pub fn undo(h: &mut HeaderMap, originals: Option<Vec<HeaderValue>>) {
        if let Some(o) = originals {
            replace_all(h, http::header::COOKIE, o);
        }
    }
}

/// The request's `Cookie` fields with the app's cookie's prefix taken off;
/// the fields as they came, when any changed.
fn without_prefix(h: &mut HeaderMap, name: &[u8]) -> Option<Vec<HeaderValue>> {
    use http::header::COOKIE;
    let stripped: Vec<Option<Vec<u8>>> = h
        .get_all(COOKIE)
        .iter()
        .map(|v| affinity::strip_app_prefix(v.as_bytes(), name))
        .collect();
    if stripped.iter().all(Option::is_none) {
        return None;
    }
    let originals: Vec<HeaderValue> = h.get_all(COOKIE).iter().cloned().collect();
    let edited = originals.iter().zip(stripped).map(|(orig, s)| match s {
        // Less of a valid value is still one.
        Some(s) => HeaderValue::from_bytes(&s).unwrap_or_else(|_| orig.clone()),
        None => orig.clone(),
    });
    replace_all(h, COOKIE, edited.collect());
    Some(originals)
}

/// Replaces every field `name` by `values`, in their order.
pub(super) fn replace_all(h: &mut HeaderMap, name: HeaderName, values: Vec<HeaderValue>) {
    h.remove(&name);
    for v in values {
        h.append(name.clone(), v);
    }
}

/// The response plan: what a response carries back beyond the upstream's
/// own end-to-end fields (which lose stickyd's own and hop-by-hop ones).
#[derive(Debug, Default)]
pub(super) struct ResponsePlan<'a> {
    /// stickyd's fields, after the upstream's own: the token's Set-Cookie,
    /// the affinity header, or the app's cookie re-issued.
    pub added: Vec<(HeaderName, HeaderValue)>,
    /// The upstream's fields of this name are left out: the affinity
    /// header is stickyd's (header modes, served here).
    pub drop: Option<&'a HeaderName>,
    /// App-cookie mode: the app's Set-Cookie of this cookie gets the token
    /// prefixed to its value: `(cookie name, token)`.
    pub prefix: Option<(&'a [u8], String)>,
    /// This pod's active sessions, for the peer that forwarded the request
    /// (`x-stickyd-sessions`, least-sessions placement).
    pub sessions: Option<u64>,
}

impl ResponsePlan<'_> {
    /// The response carries a token: shared caches must not store it.
    pub fn carries_a_token(&self) -> bool {
        !self.added.is_empty() || self.prefix.is_some()
    }

    /// Writes the plan into a response head's fields (hyper's codec), after
    /// stickyd's own and hop-by-hop fields were taken out.
    pub fn apply(self, h: &mut HeaderMap) {
        if let Some(name) = self.drop {
            h.remove(name);
        }
        if let Some((name, token)) = &self.prefix {
            let edited: Vec<HeaderValue> = h
                .get_all(SET_COOKIE)
                .iter()
                .map(|v| {
                    affinity::prefix_set_cookie(v.as_bytes(), name, token.as_bytes())
                        .and_then(|p| HeaderValue::from_bytes(&p).ok())
                        .unwrap_or_else(|| v.clone())
                })
                .collect();
            replace_all(h, SET_COOKIE, edited);
        }
        let private = self.carries_a_token();
        for (name, value) in self.added {
            h.append(name, value);
        }
        if private {
            headers::mark_private(h);
        }
        if let Some(n) = self.sessions {
            h.insert(crate::placement::HEADER, HeaderValue::from(n));
        }
    }
}

/// What a response served here carries of the token, in the mode's
/// carriers: `issue` is the decision's `set_cookie`, `set_cookies` the
/// values of the app's own `Set-Cookie` fields, and `token` makes the token
/// naming this pod (called only when the response carries one).
pub(super) fn token_edits<'a, 's>(
    carrier: &'a Carrier,
    cfg: &CookieConfig,
    read: &Read,
    https: bool,
    issue: bool,
    set_cookies: impl Iterator<Item = &'s [u8]>,
    token: impl FnOnce() -> String,
) -> ResponsePlan<'a> {
    let app_sets = carrier.app_sets(set_cookies);
    let emit: Emit = carrier.emit(issue, app_sets, read);
    let token = emit.any().then(token);
    ResponsePlan {
        added: token
            .as_deref()
            .map(|t| carrier.added(emit, cfg, t, read, https))
            .unwrap_or_default(),
        drop: carrier.mode().header().then(|| carrier.header()),
        prefix: carrier.app_cookie().zip(token.filter(|_| emit.prefix)),
        sessions: None,
    }
}

/// The response phase of an answered attempt to `dest`, whose upstream
/// answered after `waited` seconds with a head whose `Set-Cookie` values
/// are `set_cookies` and whose `x-stickyd-sessions` is `peer_count`: its
/// bookkeeping (the counters, the session table, the peer's count) and the
/// plan of what the response carries. A response served here gets the
/// token where the mode carries it; a peer's comes as that sidecar made it.
pub(super) fn respond<'a, 's>(
    f: &Facts<'a>,
    dest: Dest<'_>,
    waited: f64,
    set_cookies: impl Iterator<Item = &'s [u8]>,
    peer_count: Option<&[u8]>,
) -> ResponsePlan<'a> {
    let shared = f.shared;
    let carrier = &shared.carrier;
    match dest {
        Dest::Local { mark, set_cookie } => {
            shared.metrics.upstream_duration.observe(waited);
            shared.count_local(mark);
            let sid = shared.sid(&f.cookie, mark);
            if mark != SessionMark::Unsynced {
                // A session pinned here now (unsynced: pinned elsewhere,
                // kept as it is).
                shared.sessions.note(sid, tokio::time::Instant::now());
            }
            let token = || shared.token(&f.cookie, sid, f.now);
            let mut plan = token_edits(
                carrier,
                &shared.cfg.cookie,
                &f.read,
                f.https,
                set_cookie,
                set_cookies,
                token,
            );
            plan.sessions = shared.count_for_peer(f.hop_verified);
            plan
        }
        Dest::Peer { peer, mark } => {
            shared.metrics.forward_duration.observe(waited);
            shared.count_forwarded(peer, f.view.generation, mark);
            shared.learn_count(peer, peer_count);
            ResponsePlan::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::affinity::{Codec, CookieState, SessionId, Sid};
    use crate::config::Config;
    use http::header::COOKIE;

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

    /// A response head served here, as hyper's codec finishes it.
    fn respond(c: &Carrier, cfg: &Config, h: &mut HeaderMap, issue: bool, r: &Read, token: impl FnOnce() -> String) {
        let set_cookies: Vec<Vec<u8>> = h.get_all(SET_COOKIE).iter().map(|v| v.as_bytes().to_vec()).collect();
        let plan = token_edits(
            c,
            &cfg.cookie,
            r,
            false,
            issue,
            set_cookies.iter().map(Vec::as_slice),
            token,
        );
        plan.apply(h);
    }

    #[test]
    fn header_mode_answers_in_the_header_with_the_cookies_value() {
        let cfg = config(&[("STICKYD_AFFINITY", "header")]);
        let c = Carrier::new(&cfg);
        let none = read(&c, &HeaderMap::new());
        let mut h = map(&[("x-stickyd-affinity", "from-the-app"), ("set-cookie", "app=1")]);
        respond(&c, &cfg, &mut h, true, &none, || "TOKEN".into());
        assert_eq!(h.get_all("x-stickyd-affinity").iter().collect::<Vec<_>>(), ["TOKEN"]);
        assert_eq!(h.get_all("set-cookie").iter().collect::<Vec<_>>(), ["app=1"]);
        assert_eq!(h["cache-control"], "private");
        // No token asked: the app's copy still goes, nothing is added.
        let mut h = map(&[("x-stickyd-affinity", "from-the-app")]);
        respond(&c, &cfg, &mut h, false, &none, || unreachable!());
        assert!(h.is_empty(), "{h:?}");
        // Both: the same value in each.
        let cfg = config(&[("STICKYD_AFFINITY", "cookie,header")]);
        let c = Carrier::new(&cfg);
        let mut h = HeaderMap::new();
        respond(&c, &cfg, &mut h, true, &none, || "TOKEN".into());
        assert_eq!(h["x-stickyd-affinity"], "TOKEN");
        assert!(h["set-cookie"].to_str().unwrap().starts_with("stickyd=TOKEN;"));
        // Cookie mode leaves an app's header of that name alone.
        let cfg = config(&[]);
        let c = Carrier::new(&cfg);
        let mut h = map(&[("x-stickyd-affinity", "the-apps")]);
        respond(&c, &cfg, &mut h, false, &none, || unreachable!());
        assert_eq!(h["x-stickyd-affinity"], "the-apps");
    }

    #[test]
    fn app_cookie_prefixes_what_the_app_sets_and_reissues_what_it_does_not() {
        let cfg = config(&[("STICKYD_AFFINITY", "app-cookie"), ("STICKYD_APP_COOKIE", "sid")]);
        let c = Carrier::new(&cfg);
        let t = token("b");
        let r = read(&c, &map(&[("cookie", &format!("a=1; sid={t}~old"))]));
        assert!(matches!(r.state, CookieState::Valid(_)));
        // The app sets its cookie: prefixed in place, order and attributes kept.
        let mut h = map(&[
            ("set-cookie", "a=2"),
            ("set-cookie", "sid=new; Max-Age=60; Secure; HttpOnly"),
            ("set-cookie", "z=3"),
        ]);
        respond(&c, &cfg, &mut h, false, &r, || "TOK".into());
        let all: Vec<_> = h.get_all("set-cookie").iter().map(|v| v.to_str().unwrap()).collect();
        assert_eq!(all, ["a=2", "sid=TOK~new; Max-Age=60; Secure; HttpOnly", "z=3"]);
        assert_eq!(h["cache-control"], "private");
        // It does not, and a token is due: the old value re-issued.
        let mut h = HeaderMap::new();
        respond(&c, &cfg, &mut h, true, &r, || "TOK".into());
        assert!(h["set-cookie"].to_str().unwrap().starts_with("sid=TOK~old;"), "{h:?}");
        // Nothing due and nothing set: untouched.
        let mut h = map(&[("set-cookie", "a=2")]);
        respond(&c, &cfg, &mut h, false, &r, || unreachable!());
        assert_eq!(h.len(), 1);
        assert!(c.app_sets([&b"sid=x"[..]].into_iter()));
        assert!(!c.app_sets([&b"a=x"[..]].into_iter()));
        assert!(!Carrier::new(&config(&[])).app_sets([&b"stickyd=x"[..]].into_iter()));
    }

    #[test]
    fn the_outgoing_plan_takes_the_prefix_off_for_the_app_and_puts_it_back() {
        let t = token("b");
        let mut req = map(&[
            ("cookie", &format!("a=1; sid={t}~old")),
            ("cookie", "b=2"),
            ("x-stickyd-hop", "forged"),
            ("x-stickyd-session", "forged"),
        ]);
        let to_app = Outgoing {
            session: Some("pinned"),
            hop: None,
            cookies: Cookies::WithoutPrefix(b"sid"),
        };
        let orig = to_app.apply(&mut req);
        let all: Vec<_> = req.get_all("cookie").iter().map(|v| v.to_str().unwrap()).collect();
        assert_eq!(all, ["a=1; sid=old", "b=2"]);
        assert_eq!(req["x-stickyd-session"], "pinned");
        assert!(req.get("x-stickyd-hop").is_none());
        // The app refused: the request goes to a peer as it came.
        Outgoing::undo(&mut req, orig);
        let to_peer = Outgoing {
            session: None,
            hop: Some((HeaderValue::from_static("marker"), 2)),
            cookies: Cookies::AsTheyCame,
        };
        assert_eq!(to_peer.apply(&mut req), None);
        let all: Vec<_> = req
            .get_all("cookie")
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect();
        assert_eq!(all, [format!("a=1; sid={t}~old"), "b=2".to_string()]);
        assert!(req.get("x-stickyd-session").is_none());
        assert_eq!(req.get_all("x-stickyd-hop").iter().count(), 2);
        // Nothing to take off: nothing changes.
        let mut plain = map(&[("cookie", "sid=own")]);
        assert_eq!(to_app.apply(&mut plain), None);
    }
}
