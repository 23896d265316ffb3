//! The plans of an attempt, made once for both codecs: where it goes
//! ([`Dest`]), what the request carries on beyond what came ([`Outgoing`]),
//! and what the response carries back ([`ResponsePlan`]), with the
//! bookkeeping of an answered attempt. A codec only writes them in its own
//! form: header lines, or a `HeaderMap`.

use http::header::{HeaderMap, HeaderName, HeaderValue};

use super::facts::Facts;
use super::headers::{self, HOP, SESSION};
use super::token::{AppAnswer, AppField, Carrier, Read};
use super::upstream::Target;
use crate::config::CookieConfig;
use crate::endpoints::Peer;
use crate::route::{Decision, Emit, Failed, SessionMark, Told};

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

/// The outgoing plan: what a request carries to its destination beyond
/// what came (client copies of stickyd's fields and hop-by-hop fields never
/// go on).
pub(super) struct Outgoing<'a> {
    /// `x-stickyd-session` for the app: what happened to the session.
    pub session: Option<&'static str>,
    /// The hop marker for the peer, signed for it, and how many times it
    /// goes (one per hop made, this one included).
    pub hop: Option<(HeaderValue, usize)>,
    /// App-cookie and app-header modes, to the app in this pod: the app's
    /// carrier goes without stickyd's prefix (every other field as it
    /// came). None: every field as it came.
    pub app: Option<AppField<'a>>,
}

/// Request fields a plan changed, as they came: their name and values.
pub(super) type Originals = Option<(HeaderName, Vec<HeaderValue>)>;

impl<'a> Outgoing<'a> {
    /// The plan for sending the request of `f` to `dest`.
    pub fn to(f: &Facts<'a>, dest: Dest<'_>) -> Outgoing<'a> {
        match dest {
            Dest::Local { mark, .. } => Outgoing {
                session: Some(mark.as_str()),
                hop: None,
                app: f.shared.carrier.app_field(),
            },
            // A forwarded request goes to the peer as it came: that sidecar
            // reads the token itself.
            Dest::Peer { peer, .. } => Outgoing {
                session: None,
                hop: Some((f.shared.hop_marker(peer, f.now), usize::from(f.hops) + 1)),
                app: None,
            },
        }
    }

    /// Writes the plan into a prepared request's fields (hyper's codec).
    /// The fields of the app's carrier as they came are returned when they
    /// changed, to put back ([`Outgoing::undo`]) should the request go
    /// elsewhere.
    pub fn apply(&self, h: &mut HeaderMap) -> Originals {
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
        self.app.and_then(|app| without_prefix(h, app))
    }

    /// Puts back the fields that [`Outgoing::apply`] changed.
    pub fn undo(h: &mut HeaderMap, originals: Originals) {
        if let Some((name, values)) = originals {
            replace_all(h, name, values);
        }
    }
}

/// The request's fields of the app's carrier with stickyd's prefix taken
/// off; the fields as they came, when any changed.
fn without_prefix(h: &mut HeaderMap, app: AppField<'_>) -> Originals {
    let name = app.request_name();
    let stripped: Vec<Option<Vec<u8>>> = h.get_all(&name).iter().map(|v| app.strip(v.as_bytes())).collect();
    if stripped.iter().all(Option::is_none) {
        return None;
    }
    let originals: Vec<HeaderValue> = h.get_all(&name).iter().cloned().collect();
    let edited = originals.iter().zip(stripped).map(|(orig, s)| match s {
        // Less of a valid value is still one.
        Some(s) => HeaderValue::from_bytes(&s).unwrap_or_else(|_| orig.clone()),
        None => orig.clone(),
    });
    let edited = edited.collect();
    replace_all(h, name.clone(), edited);
    Some((name, originals))
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
#[derive(Default)]
pub(super) struct ResponsePlan<'a> {
    /// stickyd's fields, after the upstream's own: the token's Set-Cookie,
    /// the affinity header, or the app's cookie re-issued.
    pub added: Vec<(HeaderName, HeaderValue)>,
    /// The upstream's fields of this name are left out: the affinity
    /// header is stickyd's (header modes, served here).
    pub drop: Option<&'a HeaderName>,
    /// App-cookie and app-header modes: the app's fields that set its
    /// carrier get the token prefixed to its value.
    pub prefix: Option<(AppField<'a>, String)>,
    /// This pod's active sessions, for the peer that forwarded the request
    /// (`x-stickyd-sessions`, least-sessions placement).
    pub sessions: Option<u64>,
    /// A response served here holds its session active until it is done
    /// (dropped with its body, or with the spliced tunnel).
    pub hold: Option<crate::sessions::Hold>,
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
        if let Some((app, token)) = &self.prefix {
            let name = app.response_name();
            let edited: Vec<HeaderValue> = h
                .get_all(&name)
                .iter()
                .map(|v| {
                    app.prefix(v.as_bytes(), token.as_bytes())
                        .and_then(|p| HeaderValue::from_bytes(&p).ok())
                        .unwrap_or_else(|| v.clone())
                })
                .collect();
            replace_all(h, name, edited);
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
/// carriers: `issue` is the decision's `set_cookie`, `answer` what the app's
/// response says of the session ([`Carrier::answer`]), and `token` makes
/// the token naming this pod (called only when the response carries one).
pub(super) fn token_edits<'a>(
    carrier: &'a Carrier,
    cfg: &CookieConfig,
    read: &Read,
    https: bool,
    issue: bool,
    answer: &AppAnswer,
    token: impl FnOnce() -> String,
) -> ResponsePlan<'a> {
    let emit: Emit = carrier.emit(issue, read, answer);
    let token = emit.any().then(token);
    ResponsePlan {
        added: token
            .as_deref()
            .map(|t| carrier.added(emit, cfg, t, read, https))
            .unwrap_or_default(),
        drop: carrier.mode().header().then(|| carrier.header()),
        prefix: carrier.app_field().zip(token.filter(|_| emit.prefix)),
        sessions: None,
        hold: None,
    }
}

/// The head of an upstream's answer, as the response phase reads it.
pub(super) struct Answered<'s, I> {
    pub status: u16,
    /// The values of its `Set-Cookie` fields.
    pub set_cookies: I,
    /// It carries a non-empty value of the app's session header
    /// (app-header mode).
    pub app_header: bool,
    /// Its `x-stickyd-sessions` (a peer's count).
    pub peer_count: Option<&'s [u8]>,
}

/// The response phase of an answered attempt to `dest`, whose upstream
/// answered after `waited` seconds with the head `head`: its bookkeeping
/// (the counters, the session table, the peer's count) and the plan of what
/// the response carries. A response served here gets the token where the
/// mode carries it, and holds its session active while it streams (or ends
/// it, when the app's answer does); a peer's comes as that sidecar made it.
pub(super) fn respond<'a, 's, I>(f: &Facts<'a>, dest: Dest<'_>, waited: f64, head: Answered<'s, I>) -> ResponsePlan<'a>
where
    I: Iterator<Item = &'s [u8]>,
{
    let shared = f.shared;
    let carrier = &shared.carrier;
    match dest {
        Dest::Local { mark, set_cookie } => {
            shared.metrics.upstream_duration.observe(waited);
            shared.count_local(mark);
            let sid = shared.sid(&f.cookie, mark);
            let answer = carrier.answer(head.status, f.delete, head.set_cookies, head.app_header, f.now);
            // A session pinned here now (unsynced: pinned elsewhere, kept as
            // it is), ended by the app's answer, or one the app does not know
            // (counted no longer than it was).
            let now = tokio::time::Instant::now();
            let hold = match (mark, answer.told) {
                (SessionMark::Unsynced, _) => None,
                (_, Told::Ended) => {
                    shared.end_session(sid);
                    None
                }
                (_, Told::Unknown) => shared.sessions.hold_known(sid, now),
                (_, Told::Kept) => Some(shared.sessions.hold(sid, now)),
            };
            let token = || shared.token(&f.cookie, sid, f.now);
            let mut plan = token_edits(
                carrier,
                &shared.cfg.cookie,
                &f.read,
                f.https,
                set_cookie,
                &answer,
                token,
            );
            plan.sessions = shared.count_for_peer(f.hop_verified);
            plan.hold = hold;
            plan
        }
        Dest::Peer { peer, mark } => {
            shared.metrics.forward_duration.observe(waited);
            shared.count_forwarded(peer, f.view.generation, mark);
            shared.learn_count(peer, head.peer_count);
            ResponsePlan::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::affinity::{Codec, CookieState, SessionId, Sid};
    use crate::config::Config;
    use http::header::{COOKIE, SET_COOKIE};

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
        respond_with(c, cfg, h, 200, false, issue, r, token);
    }

    /// The same, for a response of `status` to a request (a DELETE when
    /// `delete`).
    #[allow(clippy::too_many_arguments)]
    fn respond_with(
        c: &Carrier,
        cfg: &Config,
        h: &mut HeaderMap,
        status: u16,
        delete: bool,
        issue: bool,
        r: &Read,
        token: impl FnOnce() -> String,
    ) -> AppAnswer {
        let set_cookies: Vec<Vec<u8>> = h.get_all(SET_COOKIE).iter().map(|v| v.as_bytes().to_vec()).collect();
        let app_header = h
            .get_all(c.header())
            .iter()
            .any(|v| !v.as_bytes().trim_ascii().is_empty());
        let answer = c.answer(status, delete, set_cookies.iter().map(Vec::as_slice), app_header, 1_000);
        let plan = token_edits(c, &cfg.cookie, r, false, issue, &answer, token);
        plan.apply(h);
        answer
    }

    /// Does the app's answer with these `Set-Cookie` values set its cookie?
    fn sets(c: &Carrier, set_cookies: &[&[u8]]) -> bool {
        c.answer(200, false, set_cookies.iter().copied(), false, 0).sets
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
        assert!(sets(&c, &[b"sid=x"]));
        assert!(!sets(&c, &[b"a=x"]));
        assert!(!sets(&Carrier::new(&config(&[])), &[b"stickyd=x"]));
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
            app: Some(AppField::Cookie(b"sid")),
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
            app: None,
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

    fn app_header() -> Config {
        config(&[
            ("STICKYD_AFFINITY", "app-header"),
            ("STICKYD_APP_HEADER", "Mcp-Session-Id"),
        ])
    }

    #[test]
    fn app_header_prefixes_what_the_app_sends_and_takes_it_off_for_the_app() {
        let cfg = app_header();
        let c = Carrier::new(&cfg);
        // initialize: no header in the request, the app names its session.
        let none = read(&c, &HeaderMap::new());
        assert_eq!(none.state, CookieState::Absent);
        let mut h = map(&[("mcp-session-id", "abc123"), ("content-type", "text/event-stream")]);
        respond(&c, &cfg, &mut h, true, &none, || "TOK".into());
        assert_eq!(h.get_all("mcp-session-id").iter().collect::<Vec<_>>(), ["TOK~abc123"]);
        assert_eq!(h["cache-control"], "private");
        assert!(h.get("set-cookie").is_none());
        // The next request echoes it: routed by the token, the app gets its own value.
        let t = token("b");
        let mut req = map(&[("mcp-session-id", &format!("{t}~abc123")), ("cookie", "x=1")]);
        let r = read(&c, &req);
        assert!(matches!(r.state, CookieState::Valid(s) if s.id == SessionId::for_pod("b")));
        assert_eq!(r.app_value.as_deref(), Some(&b"abc123"[..]));
        let to_app = Outgoing {
            session: Some("pinned"),
            hop: None,
            app: c.app_field(),
        };
        let orig = to_app.apply(&mut req);
        assert_eq!(req["mcp-session-id"], "abc123");
        assert_eq!(req["cookie"], "x=1");
        Outgoing::undo(&mut req, orig);
        assert_eq!(req["mcp-session-id"], format!("{t}~abc123").as_str());
        // A value the app sends again keeps one prefix, this pod's.
        let mut h = map(&[("mcp-session-id", &format!("{t}~abc123"))]);
        respond(&c, &cfg, &mut h, false, &r, || "NEW".into());
        assert_eq!(h["mcp-session-id"], "NEW~abc123");
        // Nothing sent and nothing due: nothing added.
        let mut h = HeaderMap::new();
        respond(&c, &cfg, &mut h, false, &r, || unreachable!());
        assert!(h.is_empty(), "{h:?}");
    }

    #[test]
    fn app_header_reissues_the_old_value_only_while_the_app_keeps_the_session() {
        let cfg = app_header();
        let c = Carrier::new(&cfg);
        let r = read(&c, &map(&[("mcp-session-id", "no-prefix-value")]));
        assert_eq!(r.state, CookieState::Invalid);
        assert_eq!(r.app_value.as_deref(), Some(&b"no-prefix-value"[..]));
        // A token is due (a new session here, a repin, a refresh) and the
        // app answers 200 without its header: the request's value re-issued.
        let mut h = HeaderMap::new();
        let a = respond_with(&c, &cfg, &mut h, 200, false, true, &r, || "TOK".into());
        assert_eq!(
            a,
            AppAnswer {
                status: 200,
                sets: false,
                told: Told::Kept
            }
        );
        assert_eq!(h["mcp-session-id"], "TOK~no-prefix-value");
        // The app does not know the session (404): its answer goes as it
        // made it, nothing names a pod for it.
        for status in [400, 404, 500] {
            let mut h = HeaderMap::new();
            respond_with(&c, &cfg, &mut h, status, false, true, &r, || unreachable!());
            assert!(h.is_empty(), "{status}: {h:?}");
        }
        // A DELETE the app answers 2xx or 404 ends the session: nothing re-issued.
        for status in [200, 202, 204, 404] {
            let mut h = HeaderMap::new();
            let a = respond_with(&c, &cfg, &mut h, status, true, true, &r, || unreachable!());
            assert_eq!(a.told, Told::Ended, "{status}");
            assert!(h.is_empty(), "{status}: {h:?}");
        }
        for status in [405, 500, 302] {
            let mut h = HeaderMap::new();
            let a = respond_with(&c, &cfg, &mut h, status, true, false, &r, || unreachable!());
            assert_eq!(a.told, Told::Kept, "{status}");
        }
    }

    #[test]
    fn app_cookie_deleted_by_the_app_ends_the_session() {
        let cfg = config(&[("STICKYD_AFFINITY", "app-cookie"), ("STICKYD_APP_COOKIE", "sid")]);
        let c = Carrier::new(&cfg);
        let ends = |fields: &[&str]| {
            let v: Vec<&[u8]> = fields.iter().map(|f| f.as_bytes()).collect();
            c.answer(200, false, v.iter().copied(), false, 1_000).told == Told::Ended
        };
        assert!(ends(&["sid=; Max-Age=0; Path=/"]));
        assert!(ends(&["a=1", "sid=gone; Max-Age=-1"]));
        assert!(ends(&["sid=; Expires=Thu, 01 Jan 1970 00:00:00 GMT"]));
        // Max-Age wins over Expires.
        assert!(!ends(&["sid=v; Max-Age=60; Expires=Thu, 01 Jan 1970 00:00:00 GMT"]));
        assert!(!ends(&["sid=v; Expires=Fri, 01 Jan 2100 00:00:00 GMT"]));
        assert!(!ends(&["sid=v"]));
        assert!(!ends(&["other=; Max-Age=0"]));
        // A DELETE is no end in app-cookie mode, nor in stickyd's own modes.
        assert_eq!(c.answer(204, true, std::iter::empty(), false, 0).told, Told::Kept);
        let own = Carrier::new(&config(&[]));
        let deleted = [&b"stickyd=; Max-Age=0"[..]];
        assert_eq!(own.answer(204, true, deleted.into_iter(), false, 0).told, Told::Kept);
    }
}
