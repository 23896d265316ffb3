//! The routing decision: one pure function over the cookie, the endpoint
//! view, this pod and the hop markers, and its second half for a request
//! whose first upstream failed before any byte of it was sent; around it,
//! which carrier's token decides ([`choose`]) and what a response served
//! here carries of the token ([`emit`]), by STICKYD_AFFINITY; and where a
//! new session goes by the load of this pod and of peers sampled for it
//! ([`Load`], STICKYD_NEW_SESSIONS). The README's routing table mirrors the
//! tests at the bottom of this file row for row (`tests/plain/docs.rs` checks the
//! numbers; docs/routing.md explains the rest).

use crate::affinity::{CookieState, SessionId};
use crate::config::{AffinityMode, OnMissing};
use crate::endpoints::{Peer, PeerState, View};

/// This pod, as the decision sees it.
#[derive(Clone, Copy, Debug)]
pub struct ThisPod<'a> {
    pub name: &'a str,
    pub id: SessionId,
    /// This pod is leaving and takes no new sessions: its endpoint drains
    /// in the view (`serving && terminating`), its session drain was asked
    /// for (`/drain`), or it is stopping (SIGTERM).
    pub leaving: bool,
}

/// What the app is told in `x-stickyd-session`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionMark {
    /// A new session, pinned to the pod that serves it.
    New,
    /// The session's pod serves it.
    Pinned,
    /// The session's pod is gone; it is pinned again to the pod that serves it.
    Repinned,
    /// The view is not synced yet: served here, the cookie left as it is.
    Unsynced,
}

impl SessionMark {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionMark::New => "new",
            SessionMark::Pinned => "pinned",
            SessionMark::Repinned => "repinned",
            SessionMark::Unsynced => "unsynced",
        }
    }
}

/// The decision for one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision<'v> {
    /// Serve with the app in this pod. `set_cookie`: issue a cookie naming
    /// this pod (a new or repinned session, or a refresh).
    Local { mark: SessionMark, set_cookie: bool },
    /// Forward to a peer's sidecar, with the hop marker.
    Forward { peer: &'v Peer, mark: SessionMark },
    /// Answer 503: the pinned pod is gone and STICKYD_ON_MISSING=reject.
    Reject,
}

/// How many sidecars a request passed before this one (its hop markers).
/// A request with any marker is served here (rows 10 and 11); only the app
/// fallback (row 16) sends one on, once more at most.
pub type Hops = u8;

/// A request that made this many hops is never sent on again.
pub const MAX_HOPS: Hops = 2;

/// Which upstream failed before any byte of the request reached it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failed {
    /// The peer the request was forwarded to (refused, timed out, or closed
    /// an idle connection as a safe request was written into it).
    Peer,
    /// The app in this pod refused the connection: it has exited, as in
    /// Kubernetes' termination order, before this sidecar's own SIGTERM.
    App,
}

/// The token that decides in `cookie,header` mode: the header's when it is
/// valid, else the cookie's; a carrier left out by the mode is `Absent`.
/// Neither valid: `Invalid` when either held something, so that the
/// request is a new session as with a bad cookie (row 2).
pub fn choose(header: CookieState, cookie: CookieState) -> CookieState {
    match (header, cookie) {
        (valid @ CookieState::Valid(_), _) | (_, valid @ CookieState::Valid(_)) => valid,
        (CookieState::Absent, CookieState::Absent) => CookieState::Absent,
        _ => CookieState::Invalid,
    }
}

/// What a response served here carries of the session token.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Emit {
    /// stickyd's Set-Cookie.
    pub cookie: bool,
    /// The affinity header (STICKYD_AFFINITY_HEADER).
    pub header: bool,
    /// App-cookie: the app's own Set-Cookie of its cookie gets the token
    /// prefixed to its value, its attributes kept.
    pub prefix: bool,
    /// App-cookie: stickyd re-issues the app's cookie, `TOKEN~VALUE` with the
    /// request's VALUE (the app did not set it on this response).
    pub reissue: bool,
}

impl Emit {
    /// The response carries a token: it must not be stored by shared caches.
    pub fn any(self) -> bool {
        self.cookie || self.header || self.prefix || self.reissue
    }
}

/// What a response served here carries, by the mode. `issue`: the decision
/// asks for a token (a new or repinned session, or a refresh: the
/// `set_cookie` of [`Decision::Local`]). `app_sets`: the app's response sets
/// its own carrier (its cookie, or its session header). `app_value`: the
/// request carried the app's value, so it is known. `kept`: the app kept the
/// session: it answered below 400 and did not end it ([`told`]).
pub fn emit(mode: AffinityMode, issue: bool, app_sets: bool, app_value: bool, kept: bool) -> Emit {
    if mode.app_carried() {
        return Emit {
            // Whatever the decision: a value the app sets here is this
            // pod's, and a value without the token would start a new session
            // wherever it lands next.
            prefix: app_sets,
            // stickyd cannot invent the app's value: only the request's own
            // is re-issued, only when the app does not set one, and never on
            // an answer that refused or ended the session (a 404 for a
            // session the app does not know must reach the client as the app
            // made it).
            reissue: issue && !app_sets && app_value && kept,
            ..Emit::default()
        };
    }
    Emit {
        cookie: issue && mode.cookie(),
        header: issue && mode.header(),
        ..Emit::default()
    }
}

/// What the app's answer says of the session it was a request of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Told {
    /// Nothing: the session goes on (it is counted active here).
    Kept,
    /// The app does not know the session (`app-header`: a 404, as MCP
    /// answers a session ID it does not hold). It is not counted here from
    /// this answer on: seen again if it was counted already, never added.
    Unknown,
    /// The app ended it: it leaves this pod's session table at once.
    Ended,
}

/// What the app's answer to a request of a session says of it ([`Told`]).
/// Only where the app names its sessions itself: in `app-header` mode a
/// DELETE answered 2xx or 404 ends it, as MCP's Streamable HTTP ends a
/// session, and any other 404 says the app does not know it; in
/// `app-cookie` mode the app deleting its cookie (`deletes`) ends it. In
/// stickyd's own modes the app never sees the token, so nothing it answers
/// names the session: it ends by going idle.
pub fn told(mode: AffinityMode, delete: bool, status: u16, deletes: bool) -> Told {
    match mode {
        AffinityMode::AppHeader if delete && ((200..300).contains(&status) || status == 404) => Told::Ended,
        AffinityMode::AppHeader if status == 404 => Told::Unknown,
        AffinityMode::AppCookie if deletes => Told::Ended,
        _ => Told::Kept,
    }
}

/// What placement knows of the load, for a new session with
/// STICKYD_NEW_SESSIONS=least-sessions: the active sessions of this pod
/// (always known), and of the peers sampled for this session (two random
/// ready peers, sampled by the caller), `None` where unknown: never learned,
/// or learned too long ago.
#[derive(Clone, Copy, Debug)]
pub struct Load<'a> {
    pub here: u64,
    pub sampled: &'a [(SessionId, Option<u64>)],
}

/// The sampled peer with the fewest active sessions, if it has fewer than
/// this pod: only peers ready in the view (never this pod, never a draining
/// one), only known counts; of equal counts the first sampled. A tie with
/// this pod stays here: a hop costs more than an even spread gains.
fn least_loaded<'v>(view: &'v View, me: &ThisPod<'_>, load: &Load<'_>) -> Option<&'v Peer> {
    let (peer, count) = load
        .sampled
        .iter()
        .filter_map(|(id, count)| Some((view.get(id)?, (*count)?)))
        .filter(|(p, _)| p.state == PeerState::Ready && p.id != me.id)
        .min_by_key(|(_, count)| *count)?;
    (count < load.here).then_some(peer)
}

/// Decides where a request goes. `pick` chooses among ready peers when this
/// pod drains and must hand a new session to another pod. `load`: with
/// STICKYD_NEW_SESSIONS=least-sessions, what is known of the load, for a
/// new session; `None` places every new session here.
pub fn decide<'v>(
    cookie: &CookieState,
    view: &'v View,
    me: &ThisPod<'_>,
    hops: Hops,
    on_missing: OnMissing,
    pick: usize,
    load: Option<&Load<'_>>,
) -> Decision<'v> {
    let hop = hops > 0;
    let session = match cookie {
        CookieState::Valid(s) => s,
        CookieState::Absent | CookieState::Invalid => {
            // A new session. A draining pod hands it to a ready peer, unless
            // the request already made its one hop.
            if me.leaving && !hop {
                if let Some(peer) = view.ready_peer_except(&me.id, pick) {
                    return Decision::Forward {
                        peer,
                        mark: SessionMark::New,
                    };
                }
            }
            // Least-sessions: to the least loaded of this pod and the
            // sampled peers. A forwarded request is never placed again.
            if !hop && !me.leaving {
                if let Some(peer) = load.and_then(|l| least_loaded(view, me, l)) {
                    return Decision::Forward {
                        peer,
                        mark: SessionMark::New,
                    };
                }
            }
            return Decision::Local {
                mark: SessionMark::New,
                set_cookie: true,
            };
        }
    };
    if session.id == me.id {
        return Decision::Local {
            mark: SessionMark::Pinned,
            set_cookie: session.needs_refresh,
        };
    }
    if !view.synced {
        // Never destroy a pin on a guess.
        return Decision::Local {
            mark: SessionMark::Unsynced,
            set_cookie: false,
        };
    }
    if hop {
        // The sender thought the pod was here: views disagree or an IP was
        // reused. Serve here, never forward again.
        return Decision::Local {
            mark: SessionMark::Repinned,
            set_cookie: true,
        };
    }
    if let Some(peer) = view.get(&session.id) {
        if peer.id != me.id {
            return Decision::Forward {
                peer,
                mark: SessionMark::Pinned,
            };
        }
    }
    missing(view, me, on_missing, pick)
}

/// The session's pod is gone (not in the view), or forwarding to it failed
/// before a byte was sent.
fn missing<'v>(view: &'v View, me: &ThisPod<'_>, on_missing: OnMissing, pick: usize) -> Decision<'v> {
    match on_missing {
        OnMissing::Reject => Decision::Reject,
        OnMissing::Repin => {
            if me.leaving {
                if let Some(peer) = view.ready_peer_except(&me.id, pick) {
                    return Decision::Forward {
                        peer,
                        mark: SessionMark::Repinned,
                    };
                }
            }
            Decision::Local {
                mark: SessionMark::Repinned,
                set_cookie: true,
            }
        }
    }
}

/// Where a request goes after its upstream failed before any byte of it was
/// sent, the request whole in hand. `mark` is what the first decision told.
/// None: no other place may take it; answer the failure (502).
///
/// * A peer failed (row 14): serve here, pinned here (a new session stays
///   new), or 503 with `reject`. Never on to yet another peer.
/// * The app in this pod refused (row 16): a ready peer takes it and repins
///   it (a new session stays new); or 503 with `reject` for a session pinned
///   here. At most [`MAX_HOPS`] hops in all.
pub fn after_failure<'v>(
    failed: Failed,
    mark: SessionMark,
    view: &'v View,
    me: &ThisPod<'_>,
    hops: Hops,
    on_missing: OnMissing,
    pick: usize,
) -> Option<Decision<'v>> {
    let new = mark == SessionMark::New;
    if on_missing == OnMissing::Reject && !new {
        return Some(Decision::Reject);
    }
    let mark = if new { SessionMark::New } else { SessionMark::Repinned };
    match failed {
        Failed::Peer => Some(Decision::Local { mark, set_cookie: true }),
        Failed::App => {
            if hops >= MAX_HOPS || !view.synced {
                return None;
            }
            let peer = view.ready_peer_except(&me.id, pick)?;
            Some(Decision::Forward { peer, mark })
        }
    }
}

#[cfg(test)]
mod tests {
    //! One test per row of the README's routing table, in the same order.
    use super::*;
    use crate::affinity::Session;
    use std::net::SocketAddr;

    /// The decision with STICKYD_NEW_SESSIONS=local (no load known).
    fn decide<'v>(
        cookie: &CookieState,
        view: &'v View,
        me: &ThisPod<'_>,
        hops: Hops,
        on_missing: OnMissing,
        pick: usize,
    ) -> Decision<'v> {
        super::decide(cookie, view, me, hops, on_missing, pick, None)
    }

    fn addr(n: u8) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, n], 8080))
    }

    fn view(synced: bool, me_state: Option<PeerState>) -> View {
        let mut peers = vec![
            Peer::new("pod-b", addr(2), PeerState::Ready),
            Peer::new("pod-c", addr(3), PeerState::Draining),
        ];
        if let Some(s) = me_state {
            peers.push(Peer::new("pod-a", addr(1), s));
        }
        View::new(if synced { peers } else { vec![] }, synced, 1)
    }

    fn me(leaving: bool) -> ThisPod<'static> {
        ThisPod {
            name: "pod-a",
            id: SessionId::for_pod("pod-a"),
            leaving,
        }
    }

    fn cookie(pod: &str) -> CookieState {
        CookieState::Valid(Session {
            id: SessionId::for_pod(pod),
            sid: None,
            created: 0,
            refreshed: 0,
            needs_refresh: false,
        })
    }

    const NEW: Decision<'static> = Decision::Local {
        mark: SessionMark::New,
        set_cookie: true,
    };
    const REPIN: Decision<'static> = Decision::Local {
        mark: SessionMark::Repinned,
        set_cookie: true,
    };
    const PINNED_HERE: Decision<'static> = Decision::Local {
        mark: SessionMark::Pinned,
        set_cookie: false,
    };

    fn forwarded_to(d: Decision<'_>) -> Option<(&str, SessionMark)> {
        match d {
            Decision::Forward { peer, mark } => Some((peer.name.as_str(), mark)),
            _ => None,
        }
    }

    fn cookie_of(c: CookieState) -> Option<String> {
        match c {
            CookieState::Valid(s) => Some(format!("{:?}", s.id)),
            _ => None,
        }
    }

    #[test]
    fn session_marks_are_what_the_app_is_told() {
        let marks = [
            SessionMark::New,
            SessionMark::Pinned,
            SessionMark::Repinned,
            SessionMark::Unsynced,
        ]
        .map(SessionMark::as_str);
        assert_eq!(marks, ["new", "pinned", "repinned", "unsynced"]);
    }

    #[test]
    fn row01_no_cookie_serves_locally_and_pins_here() {
        let v = view(true, Some(PeerState::Ready));
        assert_eq!(
            decide(&CookieState::Absent, &v, &me(false), 0, OnMissing::Repin, 0),
            NEW
        );
    }

    #[test]
    fn row02_invalid_cookie_is_no_cookie() {
        let v = view(true, Some(PeerState::Ready));
        assert_eq!(
            decide(&CookieState::Invalid, &v, &me(false), 0, OnMissing::Repin, 0),
            NEW
        );
        assert_eq!(
            decide(&CookieState::Invalid, &v, &me(false), 0, OnMissing::Reject, 0),
            NEW
        );
    }

    #[test]
    fn row03_cookie_names_this_pod() {
        let v = view(true, Some(PeerState::Ready));
        for hop in [0, 1] {
            assert_eq!(
                decide(&cookie("pod-a"), &v, &me(false), hop, OnMissing::Repin, 0),
                PINNED_HERE
            );
        }
        // Also while this pod drains, and before the first sync.
        assert_eq!(
            decide(&cookie("pod-a"), &v, &me(true), 0, OnMissing::Repin, 0),
            PINNED_HERE
        );
        let unsynced = view(false, None);
        assert_eq!(
            decide(&cookie("pod-a"), &unsynced, &me(false), 0, OnMissing::Repin, 0),
            PINNED_HERE
        );
    }

    #[test]
    fn row04_cookie_names_this_pod_past_half_its_idle_window_is_refreshed() {
        let v = view(true, Some(PeerState::Ready));
        let c = CookieState::Valid(Session {
            id: SessionId::for_pod("pod-a"),
            sid: None,
            created: 0,
            refreshed: 0,
            needs_refresh: true,
        });
        assert_eq!(
            decide(&c, &v, &me(false), 0, OnMissing::Repin, 0),
            Decision::Local {
                mark: SessionMark::Pinned,
                set_cookie: true
            }
        );
    }

    #[test]
    fn row05_cookie_names_a_ready_peer_forwards() {
        let v = view(true, Some(PeerState::Ready));
        let d = decide(&cookie("pod-b"), &v, &me(false), 0, OnMissing::Repin, 0);
        assert_eq!(forwarded_to(d), Some(("pod-b", SessionMark::Pinned)));
    }

    #[test]
    fn row06_cookie_names_a_draining_peer_still_forwards() {
        let v = view(true, Some(PeerState::Ready));
        let d = decide(&cookie("pod-c"), &v, &me(false), 0, OnMissing::Reject, 0);
        assert_eq!(forwarded_to(d), Some(("pod-c", SessionMark::Pinned)));
    }

    #[test]
    fn row07_cookie_names_a_pod_not_in_the_view_repins_here() {
        let v = view(true, Some(PeerState::Ready));
        assert_eq!(
            decide(&cookie("pod-gone"), &v, &me(false), 0, OnMissing::Repin, 0),
            REPIN
        );
    }

    #[test]
    fn row08_cookie_names_a_pod_not_in_the_view_with_reject_gives_503() {
        let v = view(true, Some(PeerState::Ready));
        assert_eq!(
            decide(&cookie("pod-gone"), &v, &me(false), 0, OnMissing::Reject, 0),
            Decision::Reject
        );
    }

    #[test]
    fn row09_unsynced_view_keeps_the_pin() {
        let v = view(false, None);
        for c in ["pod-b", "pod-gone"] {
            for hop in [0, 1] {
                assert_eq!(
                    decide(&cookie(c), &v, &me(false), hop, OnMissing::Reject, 0),
                    Decision::Local {
                        mark: SessionMark::Unsynced,
                        set_cookie: false
                    }
                );
            }
        }
        // No cookie is still a new session here.
        assert_eq!(
            decide(&CookieState::Absent, &v, &me(false), 0, OnMissing::Repin, 0),
            NEW
        );
    }

    #[test]
    fn row10_hop_marker_with_no_cookie_serves_locally() {
        let v = view(true, Some(PeerState::Draining));
        assert_eq!(decide(&CookieState::Absent, &v, &me(true), 1, OnMissing::Repin, 0), NEW);
    }

    #[test]
    fn row11_hop_marker_with_another_pods_cookie_repins_here_never_forwards() {
        let v = view(true, Some(PeerState::Ready));
        for c in ["pod-b", "pod-c", "pod-gone"] {
            for m in [OnMissing::Repin, OnMissing::Reject] {
                assert_eq!(decide(&cookie(c), &v, &me(false), 1, m, 0), REPIN, "{c}");
            }
        }
    }

    #[test]
    fn row12_draining_pod_hands_new_sessions_to_a_ready_peer() {
        let v = view(true, Some(PeerState::Draining));
        let d = decide(&CookieState::Absent, &v, &me(true), 0, OnMissing::Repin, 5);
        assert_eq!(forwarded_to(d), Some(("pod-b", SessionMark::New)));
        let d = decide(&cookie("pod-gone"), &v, &me(true), 0, OnMissing::Repin, 5);
        assert_eq!(forwarded_to(d), Some(("pod-b", SessionMark::Repinned)));
    }

    #[test]
    fn row13_draining_pod_with_no_ready_peer_serves_new_sessions_itself() {
        let v = View::new(vec![Peer::new("pod-a", addr(1), PeerState::Draining)], true, 1);
        assert_eq!(decide(&CookieState::Absent, &v, &me(true), 0, OnMissing::Repin, 0), NEW);
    }

    #[test]
    fn row14_peer_failure_before_a_byte_was_sent_repins_here_or_rejects() {
        let v = view(true, Some(PeerState::Ready));
        let after = |mark, m, me: &ThisPod<'_>| after_failure(Failed::Peer, mark, &v, me, 0, m, 0);
        assert_eq!(after(SessionMark::Pinned, OnMissing::Repin, &me(false)), Some(REPIN));
        assert_eq!(
            after(SessionMark::Pinned, OnMissing::Reject, &me(false)),
            Some(Decision::Reject)
        );
        // Served here even while this pod drains: never on to another peer.
        assert_eq!(after(SessionMark::Pinned, OnMissing::Repin, &me(true)), Some(REPIN));
        // A new session handed to a peer stays new, also with reject.
        assert_eq!(after(SessionMark::New, OnMissing::Repin, &me(true)), Some(NEW));
        assert_eq!(after(SessionMark::New, OnMissing::Reject, &me(true)), Some(NEW));
    }

    #[test]
    fn row16_app_refused_before_a_byte_was_sent_goes_to_a_ready_peer_which_repins_it() {
        let v = view(true, Some(PeerState::Draining));
        let after = |mark, hops, m| after_failure(Failed::App, mark, &v, &me(true), hops, m, 0);
        // A session pinned here, arriving from the ingress or from a peer.
        for hops in [0, 1] {
            let d = after(SessionMark::Pinned, hops, OnMissing::Repin);
            assert_eq!(
                d.and_then(forwarded_to),
                Some(("pod-b", SessionMark::Repinned)),
                "{hops}"
            );
        }
        // A new session stays new; a repinned one stays repinned.
        let d = after(SessionMark::New, 0, OnMissing::Repin);
        assert_eq!(d.and_then(forwarded_to), Some(("pod-b", SessionMark::New)));
        let d = after(SessionMark::Repinned, 1, OnMissing::Repin);
        assert_eq!(d.and_then(forwarded_to), Some(("pod-b", SessionMark::Repinned)));
        let d = after(SessionMark::Unsynced, 0, OnMissing::Repin);
        assert_eq!(d.and_then(forwarded_to), Some(("pod-b", SessionMark::Repinned)));
        // reject: a pinned session gets 503; a new one still goes on.
        assert_eq!(after(SessionMark::Pinned, 0, OnMissing::Reject), Some(Decision::Reject));
        let d = after(SessionMark::New, 0, OnMissing::Reject);
        assert_eq!(d.and_then(forwarded_to), Some(("pod-b", SessionMark::New)));
        // Two hops made: answer the failure.
        assert_eq!(after(SessionMark::Pinned, MAX_HOPS, OnMissing::Repin), None);
        // No ready peer (pod-c only drains), or a view not synced: answer the failure.
        let alone = View::new(
            vec![
                Peer::new("pod-a", addr(1), PeerState::Draining),
                Peer::new("pod-c", addr(3), PeerState::Draining),
            ],
            true,
            1,
        );
        assert_eq!(
            after_failure(
                Failed::App,
                SessionMark::Pinned,
                &alone,
                &me(true),
                0,
                OnMissing::Repin,
                0
            ),
            None
        );
        let unsynced = view(false, None);
        assert_eq!(
            after_failure(
                Failed::App,
                SessionMark::New,
                &unsynced,
                &me(false),
                0,
                OnMissing::Repin,
                0
            ),
            None
        );
        // The peer is chosen by `pick` among the ready ones, never this pod.
        let many = View::new(
            vec![
                Peer::new("pod-a", addr(1), PeerState::Ready),
                Peer::new("pod-b", addr(2), PeerState::Ready),
                Peer::new("pod-d", addr(4), PeerState::Ready),
            ],
            true,
            1,
        );
        let picked: Vec<_> = (0..4)
            .map(|pick| {
                after_failure(
                    Failed::App,
                    SessionMark::Pinned,
                    &many,
                    &me(false),
                    0,
                    OnMissing::Repin,
                    pick,
                )
                .and_then(forwarded_to)
                .map(|(p, _)| p.to_string())
            })
            .collect();
        assert_eq!(
            picked,
            ["pod-b", "pod-d", "pod-b", "pod-d"].map(|p| Some(p.to_string()))
        );
    }

    /// Every decision that asks for a token, and those that do not.
    const ISSUE: [bool; 2] = [true, false];
    const NOTHING: Emit = Emit {
        cookie: false,
        header: false,
        prefix: false,
        reissue: false,
    };
    const PREFIX: Emit = Emit {
        prefix: true,
        ..NOTHING
    };
    const REISSUE: Emit = Emit {
        reissue: true,
        ..NOTHING
    };

    #[test]
    fn row17_header_mode_routes_by_the_header_and_answers_in_it() {
        // The carrier reads the header only (a cookie is Absent to it): the
        // header's token decides as a cookie would, rows 1 to 16.
        let v = view(true, Some(PeerState::Ready));
        let d = decide(
            &choose(cookie("pod-b"), CookieState::Absent),
            &v,
            &me(false),
            0,
            OnMissing::Repin,
            0,
        );
        assert_eq!(forwarded_to(d), Some(("pod-b", SessionMark::Pinned)));
        assert_eq!(
            decide(
                &choose(CookieState::Absent, CookieState::Absent),
                &v,
                &me(false),
                0,
                OnMissing::Repin,
                0
            ),
            NEW
        );
        // Where a Set-Cookie would go, the header goes instead.
        for issue in ISSUE {
            assert_eq!(
                emit(AffinityMode::Header, issue, false, false, true),
                Emit {
                    header: issue,
                    ..NOTHING
                }
            );
            assert_eq!(
                emit(AffinityMode::Cookie, issue, true, true, true),
                Emit {
                    cookie: issue,
                    ..NOTHING
                }
            );
        }
        assert!(!emit(AffinityMode::Header, false, false, false, true).any());
        assert!(emit(AffinityMode::Header, true, false, false, true).any());
        assert!(emit(AffinityMode::Cookie, true, false, false, true).any());
    }

    #[test]
    fn row18_cookie_and_header_the_valid_header_first_then_the_cookie_both_emitted() {
        let (b, c) = (cookie("pod-b"), cookie("pod-c"));
        assert_eq!(cookie_of(choose(b, c)), cookie_of(b));
        assert_eq!(cookie_of(choose(CookieState::Invalid, c)), cookie_of(c));
        assert_eq!(cookie_of(choose(CookieState::Absent, c)), cookie_of(c));
        assert_eq!(cookie_of(choose(b, CookieState::Invalid)), cookie_of(b));
        assert_eq!(choose(CookieState::Absent, CookieState::Absent), CookieState::Absent);
        assert_eq!(choose(CookieState::Invalid, CookieState::Absent), CookieState::Invalid);
        assert_eq!(choose(CookieState::Absent, CookieState::Invalid), CookieState::Invalid);
        assert_eq!(choose(CookieState::Invalid, CookieState::Invalid), CookieState::Invalid);
        // Neither valid: a new session, as with a bad cookie (row 2).
        let v = view(true, Some(PeerState::Ready));
        let state = choose(CookieState::Invalid, CookieState::Absent);
        assert_eq!(decide(&state, &v, &me(false), 0, OnMissing::Reject, 0), NEW);
        for issue in ISSUE {
            assert_eq!(
                emit(AffinityMode::CookieAndHeader, issue, false, false, true),
                Emit {
                    cookie: issue,
                    header: issue,
                    ..NOTHING
                }
            );
        }
    }

    /// The decisions of the app-carried modes (rows 19 to 22, 28 to 31) are
    /// those of rows 1 to 16, by the prefix's token: the mode decides only
    /// what a response carries. No value, or none with a valid prefix: a
    /// new session here (even with reject, as a bad cookie: row 2), handed
    /// on while this pod is leaving (row 12).
    fn without_a_valid_prefix_a_new_session() {
        let v = view(true, Some(PeerState::Draining));
        for c in [CookieState::Absent, CookieState::Invalid] {
            assert_eq!(decide(&c, &v, &me(false), 0, OnMissing::Reject, 0), NEW);
            let d = decide(&c, &v, &me(true), 0, OnMissing::Repin, 0);
            assert_eq!(forwarded_to(d), Some(("pod-b", SessionMark::New)));
        }
    }

    /// A valid prefix routes by its token: to a ready or draining peer, or
    /// here (also while leaving); its pod gone: repinned, or 503 with reject.
    fn a_valid_prefix_routes_by_its_token() {
        let v = view(true, Some(PeerState::Ready));
        for peer in ["pod-b", "pod-c"] {
            let d = decide(&cookie(peer), &v, &me(false), 0, OnMissing::Repin, 0);
            assert_eq!(forwarded_to(d), Some((peer, SessionMark::Pinned)));
        }
        for leaving in [false, true] {
            let d = decide(&cookie("pod-a"), &v, &me(leaving), 0, OnMissing::Repin, 0);
            assert_eq!(d, PINNED_HERE);
        }
        let gone = cookie("pod-gone");
        assert_eq!(decide(&gone, &v, &me(false), 0, OnMissing::Repin, 0), REPIN);
        assert_eq!(decide(&gone, &v, &me(false), 0, OnMissing::Reject, 0), Decision::Reject);
    }

    #[test]
    fn row19_app_cookie_absent_is_a_new_session_and_no_cookie_is_added() {
        without_a_valid_prefix_a_new_session();
        // No value to re-issue: nothing, unless the app sets its cookie.
        assert_eq!(emit(AffinityMode::AppCookie, true, false, false, true), NOTHING);
        assert_eq!(emit(AffinityMode::AppCookie, true, true, false, true), PREFIX);
    }

    #[test]
    fn row20_app_cookie_with_a_valid_prefix_routes_by_it_and_prefixes_what_the_app_sets() {
        a_valid_prefix_routes_by_its_token();
        // Pinned here, no refresh due: the app setting a new value gets the
        // prefix all the same; not setting one, nothing.
        for app_value in [true, false] {
            assert_eq!(emit(AffinityMode::AppCookie, false, true, app_value, true), PREFIX);
            assert_eq!(emit(AffinityMode::AppCookie, false, false, app_value, true), NOTHING);
        }
        assert!(emit(AffinityMode::AppCookie, false, true, true, true).any());
    }

    #[test]
    fn row21_app_cookie_without_a_valid_prefix_is_a_new_session_here_its_value_reissued() {
        without_a_valid_prefix_a_new_session();
        assert_eq!(emit(AffinityMode::AppCookie, true, false, true, true), REISSUE);
        assert!(emit(AffinityMode::AppCookie, true, false, true, true).any());
    }

    #[test]
    fn row22_app_cookie_repin_or_refresh_reissues_the_old_value_unless_the_app_sets_one() {
        a_valid_prefix_routes_by_its_token();
        assert_eq!(emit(AffinityMode::AppCookie, true, false, true, true), REISSUE);
        // The app's own Set-Cookie wins: its value, its attributes, prefixed.
        assert_eq!(emit(AffinityMode::AppCookie, true, true, true, true), PREFIX);
        // The app answered 4xx or 5xx, or deleted its cookie: nothing re-issued.
        assert_eq!(emit(AffinityMode::AppCookie, true, false, true, false), NOTHING);
    }

    /// pod-a (this pod), pod-b and pod-d ready, pod-c draining.
    fn four() -> View {
        View::new(
            vec![
                Peer::new("pod-a", addr(1), PeerState::Ready),
                Peer::new("pod-b", addr(2), PeerState::Ready),
                Peer::new("pod-c", addr(3), PeerState::Draining),
                Peer::new("pod-d", addr(4), PeerState::Ready),
            ],
            true,
            1,
        )
    }

    fn id(pod: &str) -> SessionId {
        SessionId::for_pod(pod)
    }

    /// A new session's decision with least-sessions placement: `here`
    /// active sessions on this pod, the sampled peers' counts.
    fn placed<'v>(
        v: &'v View,
        c: &CookieState,
        me: &ThisPod<'_>,
        hops: Hops,
        here: u64,
        sampled: &[(&str, Option<u64>)],
    ) -> Decision<'v> {
        let sampled: Vec<(SessionId, Option<u64>)> = sampled.iter().map(|(p, n)| (id(p), *n)).collect();
        let load = Load {
            here,
            sampled: &sampled,
        };
        super::decide(c, v, me, hops, OnMissing::Repin, 0, Some(&load))
    }

    /// Where a new session goes: the peer it is handed to (as a new
    /// session), or "here" when it is served here as new.
    fn lands(c: CookieState, draining: bool, hops: Hops, here: u64, sampled: &[(&str, Option<u64>)]) -> String {
        let v = four();
        match placed(&v, &c, &me(draining), hops, here, sampled) {
            NEW => "here".to_string(),
            Decision::Forward {
                peer,
                mark: SessionMark::New,
            } => peer.name.clone(),
            other => panic!("not a new session: {other:?}"),
        }
    }

    const NEW_SESSIONS: [CookieState; 2] = [CookieState::Absent, CookieState::Invalid];

    #[test]
    fn row23_least_sessions_new_session_goes_to_the_sampled_peer_with_fewer() {
        for c in NEW_SESSIONS {
            assert_eq!(
                lands(c, false, 0, 300, &[("pod-b", Some(299)), ("pod-d", Some(0))]),
                "pod-d"
            );
            assert_eq!(
                lands(c, false, 0, 300, &[("pod-d", Some(5)), ("pod-b", Some(4))]),
                "pod-b"
            );
            // One fewer is enough; of two peers with the same count, the first sampled.
            assert_eq!(lands(c, false, 0, 1, &[("pod-b", Some(0))]), "pod-b");
            assert_eq!(
                lands(c, false, 0, 9, &[("pod-d", Some(3)), ("pod-b", Some(3))]),
                "pod-d"
            );
        }
        // Placement is for new sessions only: a pinned or repinned one is not moved.
        let v = four();
        let low = [("pod-b", Some(0))];
        assert_eq!(placed(&v, &cookie("pod-a"), &me(false), 0, 300, &low), PINNED_HERE);
        assert_eq!(placed(&v, &cookie("pod-gone"), &me(false), 0, 300, &low), REPIN);
        let d = placed(&v, &cookie("pod-d"), &me(false), 0, 300, &low);
        assert_eq!(forwarded_to(d), Some(("pod-d", SessionMark::Pinned)));
    }

    #[test]
    fn row24_least_sessions_this_pod_with_the_fewest_or_a_tie_serves_locally() {
        for c in NEW_SESSIONS {
            assert_eq!(lands(c, false, 0, 3, &[("pod-b", Some(3)), ("pod-d", Some(4))]), "here");
            assert_eq!(lands(c, false, 0, 0, &[("pod-b", Some(0)), ("pod-d", Some(0))]), "here");
            assert_eq!(lands(c, false, 0, 2, &[("pod-b", Some(7))]), "here");
            // A single ready pod: nobody sampled.
            assert_eq!(lands(c, false, 0, 1000, &[]), "here");
        }
    }

    #[test]
    fn row25_least_sessions_unknown_counts_are_no_candidates_none_known_serves_locally() {
        for c in NEW_SESSIONS {
            assert_eq!(lands(c, false, 0, 500, &[("pod-b", None), ("pod-d", None)]), "here");
            // The known one decides, even when the unknown one may have fewer.
            assert_eq!(
                lands(c, false, 0, 500, &[("pod-b", None), ("pod-d", Some(400))]),
                "pod-d"
            );
            assert_eq!(
                lands(c, false, 0, 300, &[("pod-b", None), ("pod-d", Some(301))]),
                "here"
            );
        }
        // Before the first sync the view has no peer: served here.
        let unsynced = view(false, None);
        let d = placed(
            &unsynced,
            &CookieState::Absent,
            &me(false),
            0,
            500,
            &[("pod-b", Some(0))],
        );
        assert_eq!(d, NEW);
    }

    #[test]
    fn row26_least_sessions_a_draining_peer_or_one_not_in_the_view_is_never_a_candidate() {
        for gone in ["pod-c", "pod-gone", "pod-a"] {
            assert_eq!(
                lands(CookieState::Absent, false, 0, 500, &[(gone, Some(0))]),
                "here",
                "{gone}"
            );
            let sampled = [(gone, Some(0)), ("pod-b", Some(10))];
            assert_eq!(lands(CookieState::Absent, false, 0, 500, &sampled), "pod-b", "{gone}");
        }
        // This pod draining: row 12 (the `pick`-th ready peer), whatever the counts.
        assert_eq!(lands(CookieState::Absent, true, 0, 0, &[("pod-d", Some(100))]), "pod-b");
    }

    #[test]
    fn row27_least_sessions_a_forwarded_request_is_never_placed_again() {
        let low = [("pod-b", Some(0)), ("pod-d", Some(0))];
        for hops in [1, MAX_HOPS] {
            for c in NEW_SESSIONS {
                assert_eq!(lands(c, false, hops, 300, &low), "here");
                assert_eq!(lands(c, true, hops, 300, &low), "here");
            }
        }
    }

    const APP_HEADER: AffinityMode = AffinityMode::AppHeader;

    #[test]
    fn row28_app_header_absent_is_a_new_session_and_what_the_app_names_gets_the_prefix() {
        without_a_valid_prefix_a_new_session();
        // MCP's initialize: no session header; the app names its session in
        // its answer, which goes out prefixed with the token of this pod.
        assert_eq!(emit(APP_HEADER, true, true, false, true), PREFIX);
        // The app names none: nothing to add (stickyd invents no value).
        assert_eq!(emit(APP_HEADER, true, false, false, true), NOTHING);
        assert_eq!(told(APP_HEADER, false, 200, false), Told::Kept);
    }

    #[test]
    fn row29_app_header_with_a_valid_prefix_routes_by_it_and_prefixes_what_the_app_sends() {
        a_valid_prefix_routes_by_its_token();
        for app_value in [true, false] {
            for kept in [true, false] {
                assert_eq!(emit(APP_HEADER, false, true, app_value, kept), PREFIX);
                assert_eq!(emit(APP_HEADER, false, false, app_value, kept), NOTHING);
            }
        }
    }

    #[test]
    fn row30_app_header_without_a_valid_prefix_is_a_new_session_its_value_reissued_while_kept() {
        without_a_valid_prefix_a_new_session();
        assert_eq!(emit(APP_HEADER, true, false, true, true), REISSUE);
        // The app refused the value (it does not know the session: 404):
        // nothing names a pod for it.
        assert_eq!(emit(APP_HEADER, true, false, true, false), NOTHING);
        assert_eq!(emit(APP_HEADER, true, true, true, false), PREFIX);
    }

    #[test]
    fn row31_app_header_repin_or_refresh_reissues_the_old_value_while_the_app_keeps_it() {
        a_valid_prefix_routes_by_its_token();
        assert_eq!(emit(APP_HEADER, true, false, true, true), REISSUE);
        assert_eq!(emit(APP_HEADER, true, true, true, true), PREFIX);
        // After a repin the app answers as for a session it does not know
        // (MCP: 404); the answer goes as it made it.
        assert_eq!(emit(APP_HEADER, true, false, true, false), NOTHING);
    }

    #[test]
    fn row32_a_session_the_app_ends_leaves_the_table_one_it_does_not_know_is_not_counted() {
        // app-header: a DELETE answered 2xx, or 404 (already gone at the app).
        for status in [200, 202, 204, 299, 404] {
            assert_eq!(told(APP_HEADER, true, status, false), Told::Ended, "{status}");
        }
        for status in [199, 300, 400, 403, 405, 500, 503] {
            assert_eq!(told(APP_HEADER, true, status, false), Told::Kept, "{status}");
        }
        // Any other 404: the app does not know the session.
        assert_eq!(told(APP_HEADER, false, 404, false), Told::Unknown);
        for status in [200, 204, 400, 410, 500] {
            assert_eq!(told(APP_HEADER, false, status, false), Told::Kept, "{status}");
        }
        // app-cookie: the app deletes its cookie, whatever the method; a 404 is a page.
        assert_eq!(told(AffinityMode::AppCookie, false, 200, true), Told::Ended);
        assert_eq!(told(AffinityMode::AppCookie, true, 500, true), Told::Ended);
        assert_eq!(told(AffinityMode::AppCookie, true, 204, false), Told::Kept);
        assert_eq!(told(AffinityMode::AppCookie, false, 404, false), Told::Kept);
        // stickyd's own token: the app never sees it, nothing it says ends a session.
        for mode in [
            AffinityMode::Cookie,
            AffinityMode::Header,
            AffinityMode::CookieAndHeader,
        ] {
            assert_eq!(told(mode, true, 204, true), Told::Kept);
            assert_eq!(told(mode, true, 404, false), Told::Kept);
            assert_eq!(told(mode, false, 404, false), Told::Kept);
        }
    }
}
