//! The facts of one request: what every phase after screening knows of it,
//! read from its head once, by one constructor for both codecs. A codec
//! shows its head through [`HeadView`]; the HTTP/1.1 codec's is a view of
//! its own buffer, hyper's a view of its `Request`.

use std::sync::Arc;
use std::time::Duration;

use http::Version;

use super::idle::{self, Pace};
use super::token::Read;
use super::upstream::BodyLimit;
use super::Shared;
use crate::affinity::CookieState;
use crate::drain::Pinned;
use crate::endpoints::View;
use crate::peer::Marked;
use crate::route::{Decision, Hops, SessionMark};

/// How a request names what it asks for (its request target).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum TargetForm {
    /// A path (`/a?b`): what a sidecar serves.
    Origin,
    /// `*` (OPTIONS only).
    Asterisk,
    /// An HTTP/1 absolute-form (`http://other/`) or authority-form
    /// (`other:443`) target: a forward proxy's.
    Absolute,
    /// Not a target at all.
    Invalid,
}

/// A request head, as the phases read it, whichever codec parsed it.
pub(super) trait HeadView {
    fn method(&self) -> &[u8];
    fn version(&self) -> Version;
    fn target(&self) -> TargetForm;
    /// The values of every field named `name` (lowercase), in order.
    fn values<'v>(&'v self, name: &'v str) -> impl Iterator<Item = &'v [u8]> + 'v;
    /// A body follows the head.
    fn has_body(&self) -> bool;
    /// An HTTP/1.1 upgrade request (WebSocket).
    fn upgrade(&self) -> bool;
    /// The head's size as the screen counts it (target and fields).
    fn head_bytes(&self) -> usize;
}

/// Did the client's request arrive over https, by X-Forwarded-Proto (the
/// first value, set by the outermost proxy)?
pub(super) fn forwarded_https<'v>(mut values: impl Iterator<Item = &'v [u8]>) -> bool {
    values
        .next()
        .and_then(|v| v.split(|&b| b == b',').next())
        .is_some_and(|v| v.trim_ascii().eq_ignore_ascii_case(b"https"))
}

/// What the phases after screening know of one request.
pub(super) struct Facts<'a> {
    pub shared: &'a Shared,
    /// The client's HTTP version: a request goes on in it (HTTP/2 to a peer
    /// over HTTP/2, also after a fallback).
    pub version: Version,
    /// The client's request arrived over https (X-Forwarded-Proto).
    pub https: bool,
    /// An HTTP/1.1 upgrade request (WebSocket).
    pub upgrade: bool,
    /// What the request's Content-Type says of its bodies' pace.
    pub pace: Pace,
    /// The hop markers it arrived with (with keys, those that verified).
    pub hops: Hops,
    /// A hop marker verified: a peer forwarded the request.
    pub hop_verified: bool,
    /// The request's token, from wherever the mode carries it.
    pub cookie: CookieState,
    /// What the request carried of the token, for the response.
    pub read: Read,
    /// Unix seconds, for the token's times and the hop markers.
    pub now: u64,
    /// The view the decision was made on, held while a forward to one of
    /// its pods runs (one reference count).
    pub view: Arc<View>,
    /// Spreads picks of ready peers.
    pub pick: usize,
    /// A GET, HEAD or OPTIONS without a body: replayed once when its
    /// connection closed before any byte of the answer (RFC 9110 §9.2.2).
    pub safe: bool,
    /// A DELETE: answered 2xx or 404, it may end its session
    /// ([`route::told`](crate::route::told)).
    pub delete: bool,
}

impl<'a> Facts<'a> {
    /// Reads what the decision needs from `head`: the hop markers, the
    /// token, the view.
    pub fn new(shared: &'a Shared, head: &impl HeadView) -> Facts<'a> {
        let now = shared.clock.unix_now();
        let marked = {
            let mut markers = head.values(crate::names::HOP).peekable();
            if markers.peek().is_some() {
                shared.read_hops(markers, now)
            } else {
                Marked::default()
            }
        };
        let read = {
            let codec = shared.codec.load();
            let carrier = &shared.carrier;
            carrier.read(
                head.values("cookie"),
                head.values(carrier.header().as_str()),
                &codec,
                now,
            )
        };
        let method = head.method();
        Facts {
            shared,
            version: head.version(),
            https: forwarded_https(head.values("x-forwarded-proto")),
            upgrade: head.upgrade(),
            pace: idle::pace(head.values("content-type").next()),
            hops: marked.hops,
            hop_verified: marked.verified,
            cookie: read.state,
            read,
            now,
            view: shared.store.load_full(),
            pick: shared.next_pick(),
            safe: matches!(method, b"GET" | b"HEAD" | b"OPTIONS") && !head.has_body(),
            delete: method == b"DELETE",
        }
    }

    /// Before the first sync, a session pinned to another pod waits for the
    /// view ([`Shared::view_for`]).
    pub async fn wait_for_the_view(&mut self) {
        if !self.view.synced {
            self.view = self.shared.view_for(&self.cookie).await;
        }
    }

    /// The routing decision, on these facts.
    pub fn decide(&self) -> Decision<'_> {
        self.shared.decide(&self.cookie, &self.view, self.hops, self.pick)
    }

    /// A gRPC exchange (its caller reads `grpc-status`).
    pub fn grpc(&self) -> bool {
        self.pace == Pace::Grpc
    }

    /// STICKYD_BODY_READ_TIMEOUT for a body of this exchange: the
    /// request's (`response` None) or the response's (its status and
    /// pace). None: a stream, exempt.
    pub fn body_limit(&self, response: Option<(u16, Pace)>) -> Option<Duration> {
        (!idle::exempt(self.pace, response)).then_some(self.shared.cfg.body_read_timeout)
    }

    /// The request body's limit, for its way upstream.
    pub fn request_body(&self) -> Option<BodyLimit<'a>> {
        self.body_limit(None).map(|limit| BodyLimit {
            limit,
            metrics: &self.shared.metrics,
        })
    }

    /// While a session drain runs, a request of a session pinned here holds
    /// it: the guard, for a request served here with `mark`.
    pub fn holds_the_drain(&self, mark: SessionMark) -> Option<Pinned<'a>> {
        let shared = self.shared;
        let here = matches!(self.cookie, CookieState::Valid(s) if s.id == shared.me);
        (mark == SessionMark::Pinned && here)
            .then(|| shared.drain.pinned_request())
            .flatten()
    }

    /// This pod is stopping, or its session drain runs and the request did
    /// not come from a peer: the client is told to take its next requests
    /// elsewhere (`Connection: close`; the ingress's connections go to
    /// other pods, while peers keep forwarding the sessions pinned here on
    /// theirs).
    pub fn client_goes_elsewhere(&self) -> bool {
        client_goes_elsewhere(self.shared, self.hops)
    }
}

/// [`Facts::client_goes_elsewhere`], for a request with `hops` markers
/// (0 for one refused before its facts were read).
pub(super) fn client_goes_elsewhere(shared: &Shared, hops: Hops) -> bool {
    shared.stopping() || (hops == 0 && shared.drain.requested())
}
