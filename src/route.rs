//! The routing decision: one pure function over the cookie, the endpoint
//! view, this pod and the hop marker. The README's routing table mirrors the
//! tests at the bottom of this file row for row.

use crate::affinity::{CookieState, SessionId};
use crate::config::OnMissing;
use crate::endpoints::{Peer, View};

/// This pod, as the decision sees it.
#[derive(Clone, Copy, Debug)]
pub struct ThisPod<'a> {
    pub name: &'a str,
    pub id: SessionId,
    /// This pod takes no new sessions: it is `serving && terminating` in the
    /// view, or it received SIGTERM.
    pub draining: bool,
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

/// Decides where a request goes. `pick` chooses among ready peers when this
/// pod drains and must hand a new session to another pod.
pub fn decide<'v>(
    cookie: &CookieState,
    view: &'v View,
    me: &ThisPod<'_>,
    hop: bool,
    on_missing: OnMissing,
    pick: usize,
) -> Decision<'v> {
    let session = match cookie {
        CookieState::Valid(s) => s,
        CookieState::Absent | CookieState::Invalid => {
            // A new session. A draining pod hands it to a ready peer, unless
            // the request already made its one hop.
            if me.draining && !hop {
                if let Some(peer) = view.ready_peer_except(&me.id, pick) {
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
            if me.draining {
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

/// Forwarding to the pinned peer failed before any request byte was sent
/// (refused, connect timeout): repin here, or reject. The request is served
/// locally, never sent on to yet another peer.
pub fn after_connect_failure(on_missing: OnMissing) -> Decision<'static> {
    match on_missing {
        OnMissing::Reject => Decision::Reject,
        OnMissing::Repin => Decision::Local {
            mark: SessionMark::Repinned,
            set_cookie: true,
        },
    }
}

#[cfg(test)]
mod tests {
    //! One test per row of the README's routing table, in the same order.
    use super::*;
    use crate::affinity::Session;
    use crate::endpoints::PeerState;
    use std::net::SocketAddr;

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

    fn me(draining: bool) -> ThisPod<'static> {
        ThisPod {
            name: "pod-a",
            id: SessionId::for_pod("pod-a"),
            draining,
        }
    }

    fn cookie(pod: &str) -> CookieState {
        CookieState::Valid(Session {
            id: SessionId::for_pod(pod),
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

    #[test]
    fn row01_no_cookie_serves_locally_and_pins_here() {
        let v = view(true, Some(PeerState::Ready));
        assert_eq!(
            decide(&CookieState::Absent, &v, &me(false), false, OnMissing::Repin, 0),
            NEW
        );
    }

    #[test]
    fn row02_invalid_cookie_is_no_cookie() {
        let v = view(true, Some(PeerState::Ready));
        assert_eq!(
            decide(&CookieState::Invalid, &v, &me(false), false, OnMissing::Repin, 0),
            NEW
        );
        assert_eq!(
            decide(&CookieState::Invalid, &v, &me(false), false, OnMissing::Reject, 0),
            NEW
        );
    }

    #[test]
    fn row03_cookie_names_this_pod() {
        let v = view(true, Some(PeerState::Ready));
        for hop in [false, true] {
            assert_eq!(
                decide(&cookie("pod-a"), &v, &me(false), hop, OnMissing::Repin, 0),
                PINNED_HERE
            );
        }
        // Also while this pod drains, and before the first sync.
        assert_eq!(
            decide(&cookie("pod-a"), &v, &me(true), false, OnMissing::Repin, 0),
            PINNED_HERE
        );
        let unsynced = view(false, None);
        assert_eq!(
            decide(&cookie("pod-a"), &unsynced, &me(false), false, OnMissing::Repin, 0),
            PINNED_HERE
        );
    }

    #[test]
    fn row04_cookie_names_this_pod_past_half_its_idle_window_is_refreshed() {
        let v = view(true, Some(PeerState::Ready));
        let c = CookieState::Valid(Session {
            id: SessionId::for_pod("pod-a"),
            created: 0,
            refreshed: 0,
            needs_refresh: true,
        });
        assert_eq!(
            decide(&c, &v, &me(false), false, OnMissing::Repin, 0),
            Decision::Local {
                mark: SessionMark::Pinned,
                set_cookie: true
            }
        );
    }

    #[test]
    fn row05_cookie_names_a_ready_peer_forwards() {
        let v = view(true, Some(PeerState::Ready));
        let d = decide(&cookie("pod-b"), &v, &me(false), false, OnMissing::Repin, 0);
        assert_eq!(forwarded_to(d), Some(("pod-b", SessionMark::Pinned)));
    }

    #[test]
    fn row06_cookie_names_a_draining_peer_still_forwards() {
        let v = view(true, Some(PeerState::Ready));
        let d = decide(&cookie("pod-c"), &v, &me(false), false, OnMissing::Reject, 0);
        assert_eq!(forwarded_to(d), Some(("pod-c", SessionMark::Pinned)));
    }

    #[test]
    fn row07_cookie_names_a_pod_not_in_the_view_repins_here() {
        let v = view(true, Some(PeerState::Ready));
        assert_eq!(
            decide(&cookie("pod-gone"), &v, &me(false), false, OnMissing::Repin, 0),
            REPIN
        );
    }

    #[test]
    fn row08_cookie_names_a_pod_not_in_the_view_with_reject_gives_503() {
        let v = view(true, Some(PeerState::Ready));
        assert_eq!(
            decide(&cookie("pod-gone"), &v, &me(false), false, OnMissing::Reject, 0),
            Decision::Reject
        );
    }

    #[test]
    fn row09_unsynced_view_keeps_the_pin() {
        let v = view(false, None);
        for c in ["pod-b", "pod-gone"] {
            for hop in [false, true] {
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
            decide(&CookieState::Absent, &v, &me(false), false, OnMissing::Repin, 0),
            NEW
        );
    }

    #[test]
    fn row10_hop_marker_with_no_cookie_serves_locally() {
        let v = view(true, Some(PeerState::Draining));
        assert_eq!(
            decide(&CookieState::Absent, &v, &me(true), true, OnMissing::Repin, 0),
            NEW
        );
    }

    #[test]
    fn row11_hop_marker_with_another_pods_cookie_repins_here_never_forwards() {
        let v = view(true, Some(PeerState::Ready));
        for c in ["pod-b", "pod-c", "pod-gone"] {
            for m in [OnMissing::Repin, OnMissing::Reject] {
                assert_eq!(decide(&cookie(c), &v, &me(false), true, m, 0), REPIN, "{c}");
            }
        }
    }

    #[test]
    fn row12_draining_pod_hands_new_sessions_to_a_ready_peer() {
        let v = view(true, Some(PeerState::Draining));
        let d = decide(&CookieState::Absent, &v, &me(true), false, OnMissing::Repin, 5);
        assert_eq!(forwarded_to(d), Some(("pod-b", SessionMark::New)));
        let d = decide(&cookie("pod-gone"), &v, &me(true), false, OnMissing::Repin, 5);
        assert_eq!(forwarded_to(d), Some(("pod-b", SessionMark::Repinned)));
    }

    #[test]
    fn row13_draining_pod_with_no_ready_peer_serves_new_sessions_itself() {
        let v = View::new(vec![Peer::new("pod-a", addr(1), PeerState::Draining)], true, 1);
        assert_eq!(
            decide(&CookieState::Absent, &v, &me(true), false, OnMissing::Repin, 0),
            NEW
        );
    }

    #[test]
    fn row14_connect_failure_repins_here_or_rejects() {
        assert_eq!(after_connect_failure(OnMissing::Repin), REPIN);
        assert_eq!(after_connect_failure(OnMissing::Reject), Decision::Reject);
    }
}
