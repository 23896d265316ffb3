//! The request context: what the phases after screening know of one request.

use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderValue, CONTENT_TYPE, HOST};
use http::{Request, Uri, Version};

use http::header::COOKIE;

use super::conn::ConnInfo;
use super::headers::{self, Found, HOP};
use super::idle::{self, Pace};
use super::token::Read;
use super::upstream::BodyLimit;
use super::Shared;
use crate::affinity::CookieState;
use crate::endpoints::View;
use crate::peer::Marked;
use crate::route::{Decision, Hops};

/// One request's context, built in the decide phase.
pub(super) struct Ctx<'a> {
    pub shared: &'a Shared,
    pub conn: &'a ConnInfo,
    /// The client's HTTP version: a fallback sends an HTTP/2 request on as
    /// HTTP/2 even after a try over HTTP/1.1.
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
    /// Unix seconds, for the cookie's times.
    pub now: u64,
    /// The view the decision was made on, held while a forward to one of its
    /// pods runs (one reference count).
    pub view: Arc<View>,
    /// Spreads picks of ready peers.
    pub pick: usize,
}

impl<'a> Ctx<'a> {
    /// Reads what the decision needs: the hop markers, the cookie, the view.
    pub fn new<B>(shared: &'a Shared, conn: &'a ConnInfo, req: &Request<B>, found: Found) -> Ctx<'a> {
        let now = shared.clock.unix_now();
        let marked = if found.hop() {
            shared.read_hops(req.headers().get_all(HOP).iter().map(HeaderValue::as_bytes), now)
        } else {
            Marked::default()
        };
        let read = {
            let h = req.headers();
            let codec = shared.codec.load();
            shared.carrier.read(
                h.get_all(COOKIE).iter().map(HeaderValue::as_bytes),
                h.get_all(shared.carrier.header()).iter().map(HeaderValue::as_bytes),
                &codec,
                now,
            )
        };
        let h1 = req.version() <= Version::HTTP_11;
        Ctx {
            shared,
            conn,
            version: req.version(),
            https: found.https(req.headers()),
            upgrade: h1 && found.is_upgrade(req.headers()),
            pace: idle::pace(req.headers().get(CONTENT_TYPE).map(HeaderValue::as_bytes)),
            hops: marked.hops,
            hop_verified: marked.verified,
            cookie: read.state,
            read,
            now,
            view: shared.store.load_full(),
            pick: shared.next_pick(),
        }
    }

    /// Before the first sync, a session pinned to another pod waits for the
    /// view ([`Shared::view_for`]).
    pub async fn wait_for_the_view(&mut self) {
        if !self.view.synced {
            self.view = self.shared.view_for(&self.cookie).await;
        }
    }

    /// Phase 2: the routing decision, on this context.
    pub fn decide(&self) -> Decision<'_> {
        self.shared.decide(&self.cookie, &self.view, self.hops, self.pick)
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

    /// The cookie names this pod.
    pub fn pinned_here(&self) -> bool {
        matches!(self.cookie, CookieState::Valid(s) if s.id == self.shared.me)
    }

    /// Prepares the request head for the next hop, whichever it is: client
    /// copies of stickyd's headers and hop-by-hop headers out, X-Forwarded-For
    /// in, a Host header for HTTP/2 requests (from their :authority).
    pub fn prepare<B>(&self, req: &mut Request<B>, found: Found) -> Option<()> {
        let headers = req.headers_mut();
        headers::strip_own_found(headers, found);
        headers::strip_found(headers, found, self.upgrade);
        headers::append_forwarded_for_found(headers, found, &self.conn.forwarded_for);
        if !req.headers().contains_key(HOST) {
            if let Some(a) = req.uri().authority() {
                let v = HeaderValue::from_str(a.as_str()).ok()?;
                req.headers_mut().insert(HOST, v);
            }
        }
        Some(())
    }
}

/// Points the request at the next hop: origin-form for a connection of our
/// own, absolute-form naming `authority` for a pool (which picks the
/// connection by it and sends origin-form). The original Host is kept.
pub(super) fn set_target<B>(req: &mut Request<B>, authority: Option<http::uri::Authority>, to_h2: bool) -> Option<()> {
    let mut parts = std::mem::take(req.uri_mut()).into_parts();
    parts.scheme = authority.as_ref().map(|_| http::uri::Scheme::HTTP);
    parts.authority = authority;
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    *req.uri_mut() = Uri::from_parts(parts).ok()?;
    if to_h2 {
        // HTTP/2 carries the authority itself; a Host header beside it is
        // allowed but must match, so leave it.
        *req.version_mut() = Version::HTTP_2;
    } else if req.version() == Version::HTTP_2 {
        *req.version_mut() = Version::HTTP_11;
    }
    Some(())
}
