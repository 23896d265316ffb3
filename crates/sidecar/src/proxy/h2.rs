//! Hyper's codec: HTTP/2 clients (h2c, gRPC, HTTP/2 ingresses), and every
//! client when the app in this pod speaks h2c. Hyper reads and writes the
//! heads and moves the bodies; this codec shows the phases the request
//! ([`HeadView`]), sends one attempt over [`upstream`](super::upstream) and
//! turns the plans into header edits. The phases themselves are
//! [`pipeline`](super::pipeline)'s.

use std::sync::Arc;
use std::time::Instant;

use http::header::{HeaderValue, CONNECTION, CONTENT_TYPE, HOST, SET_COOKIE};
use http::{Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;

use super::body::ResponseBody;
use super::conn::ConnInfo;
use super::facts::{self, Facts, HeadView, TargetForm};
use super::headers::{self, Found};
use super::idle::{self, Pace};
use super::pipeline::{self, Codec, Failure};
use super::plan::{self, Answered, Dest, Outgoing};
use super::respond::{from_upstream, Synthetic};
use super::shared::authority;
use super::token::AppField;
use super::upstream::{Answer, Kind, Outbound, Via};
use super::Shared;
use crate::config::UpstreamProtocol;
use crate::endpoints::{EndpointStore, Peer};
use crate::limits::HYPER_STREAM_COST;
use crate::route::Hops;

/// Handles one request that hyper read. Err: an HTTP/2 stream refused at
/// the memory budget (RST_STREAM REFUSED_STREAM: nothing of it was
/// processed, and clients retry it, gRPC's transparently).
pub async fn handle(
    shared: Arc<Shared>,
    conn: Arc<ConnInfo>,
    req: Request<Incoming>,
) -> Result<Response<ResponseBody>, h2::Error> {
    let http1 = req.version() <= Version::HTTP_11;
    if !http1 {
        conn.mark_h2();
    }
    let grpc = idle::pace(req.headers().get(CONTENT_TYPE).map(HeaderValue::as_bytes)) == Pace::Grpc;
    // Each request hyper holds may queue a send buffer of response body:
    // the buffer budget pays for it, or the request is shed.
    let Some(_lease) = shared.cfg.limits.buffers.try_take(HYPER_STREAM_COST) else {
        if !http1 {
            shared.metrics.shed_stream.inc();
            return Err(h2::Error::from(h2::Reason::REFUSED_STREAM));
        }
        shared.metrics.shed_request.inc();
        let mut resp = Synthetic::shed().response(grpc, http1);
        resp.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
        return Ok(resp);
    };
    let mut exchange = Exchange {
        shared: &shared,
        conn: &conn,
        found: Found::scan(req.headers()),
        req: Some(req),
        grpc,
        http1,
        prepared: false,
        cookies: None,
        hops: 0,
    };
    Ok(pipeline::process(&shared, &mut exchange).await)
}

/// One request in hyper's hands.
struct Exchange<'c> {
    shared: &'c Shared,
    conn: &'c ConnInfo,
    /// The request; away while an attempt has it, back after a failure
    /// that left it whole.
    req: Option<Request<Incoming>>,
    /// Which of the fields the proxy rewrites it holds.
    found: Found,
    grpc: bool,
    http1: bool,
    /// Client copies of stickyd's fields and hop-by-hop fields are out,
    /// X-Forwarded-For and Host in (once, before the first attempt).
    prepared: bool,
    /// The fields of the app's carrier as they came, while the request
    /// carries them edited for the app.
    cookies: plan::Originals,
    /// The hop markers of the request, once its facts were read.
    hops: Hops,
}

/// The request, as the phases read it.
struct View<'r, B = Incoming> {
    req: &'r Request<B>,
    found: Found,
}

impl<B: http_body::Body> HeadView for View<'_, B> {
    fn method(&self) -> &[u8] {
        self.req.method().as_str().as_bytes()
    }

    fn version(&self) -> Version {
        self.req.version()
    }

    fn target(&self) -> TargetForm {
        let uri = self.req.uri();
        if self.req.version() <= Version::HTTP_11 && uri.authority().is_some() {
            return TargetForm::Absolute;
        }
        match uri.path_and_query().map(|pq| pq.as_str()) {
            Some(p) if p.starts_with('/') => TargetForm::Origin,
            Some("*") => TargetForm::Asterisk,
            _ => TargetForm::Invalid,
        }
    }

    fn values<'v>(&'v self, name: &'v str) -> impl Iterator<Item = &'v [u8]> + 'v {
        self.req.headers().get_all(name).iter().map(HeaderValue::as_bytes)
    }

    fn has_body(&self) -> bool {
        !http_body::Body::is_end_stream(self.req.body())
    }

    fn upgrade(&self) -> bool {
        self.req.version() <= Version::HTTP_11 && self.found.is_upgrade(self.req.headers())
    }

    fn head_bytes(&self) -> usize {
        self.req
            .headers()
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 4)
            .sum::<usize>()
            + self.req.uri().path_and_query().map_or(0, |p| p.as_str().len())
    }
}

impl Codec for Exchange<'_> {
    type Done = Response<ResponseBody>;
    type Head<'h>
        = View<'h>
    where
        Self: 'h;

    fn head(&self) -> View<'_> {
        View {
            req: self.req.as_ref().expect("the request is in hand between attempts"),
            found: self.found,
        }
    }

    async fn attempt(
        &mut self,
        f: &Facts<'_>,
        dest: Dest<'_>,
        out: &Outgoing<'_>,
    ) -> Result<Self::Done, Failure<Self::Done>> {
        let shared = f.shared;
        self.hops = f.hops;
        let Some(mut req) = self.req.take() else {
            // The loop asks again only after a failure that gave it back.
            return Err(Failure::Answer(Synthetic::invalid_target()));
        };
        if !self.prepared {
            prepare(&mut req, self.found, f.upgrade, &self.conn.forwarded_for);
            self.prepared = true;
        }
        if host_from_authority(&mut req).is_none() {
            shared.metrics.bad_request("target");
            return Err(Failure::Answer(Synthetic::invalid_target()));
        }
        Outgoing::undo(req.headers_mut(), self.cookies.take());
        // HTTP/1.1 requests to a peer (upgrades aside) use a connection of
        // this client connection's own; the rest goes through the shared
        // pools: HTTP/2 through hyper's (which picks the connection by the
        // absolute-form target), HTTP/1.1 through the bounded ones.
        let (to_h2, binding) = match dest {
            Dest::Local { .. } => (shared.cfg.upstream_protocol == UpstreamProtocol::H2c, None),
            Dest::Peer { peer, .. } => {
                let to_h2 = f.version == Version::HTTP_2;
                let binding = if to_h2 || f.upgrade {
                    None
                } else {
                    self.conn.take_peer(&shared.bound_peers, shared.peer_idle, peer.addr)
                };
                (to_h2, binding)
            }
        };
        let authority = match dest {
            // The app sees the client's Host as the :authority, and no Host
            // field beside it (its pool dials the app whatever this says).
            Dest::Local { .. } if to_h2 => Some(
                req.headers_mut()
                    .remove(HOST)
                    .and_then(|h| http::uri::Authority::try_from(h.as_bytes()).ok())
                    .unwrap_or_else(|| shared.app_authority.clone()),
            ),
            Dest::Peer { peer, .. } if to_h2 => Some(authority(peer.addr)),
            _ => None,
        };
        if set_target(&mut req, authority, to_h2).is_none() {
            shared.metrics.bad_request("target");
            return Err(Failure::Answer(Synthetic::invalid_target()));
        }
        self.cookies = out.apply(req.headers_mut());
        let via = match (dest, binding) {
            (Dest::Local { .. }, _) if to_h2 => Via::Pool(&shared.pools.app_h2),
            (Dest::Local { .. }, _) => Via::Bounded(&shared.pools.h1, shared.cfg.upstream),
            (Dest::Peer { peer, .. }, Some(b)) => Via::BoundPeer(peer.addr, b),
            (Dest::Peer { .. }, None) if to_h2 => Via::Pool(&shared.pools.peers_h2),
            // An upgrade takes its connection for good: a new one, over
            // hyper's client, which hands it over.
            (Dest::Peer { peer, .. }, None) if f.upgrade => Via::Upgrade(peer.addr),
            (Dest::Peer { peer, .. }, None) => Via::Bounded(&shared.pools.h1_peers, peer.addr),
        };
        let started = Instant::now();
        let outbound = Outbound {
            target: dest.target(),
            via,
            conn: self.conn,
            connector: &shared.connector,
            connect_timeout: shared.cfg.connect_timeout,
            response_timeout: shared.cfg.response_timeout,
            body: f.request_body(),
        };
        let sent = match dest {
            Dest::Local { .. } => outbound.run(req, std::future::pending()).await,
            Dest::Peer { peer, .. } => outbound.run(req, left_the_view(&shared.store, peer)).await,
        };
        match sent {
            Ok(Answer { resp, upgrade }) => {
                let h = resp.headers();
                let app_header = match shared.carrier.app_field() {
                    Some(AppField::Header(name)) => {
                        h.get_all(name).iter().any(|v| !v.as_bytes().trim_ascii().is_empty())
                    }
                    _ => false,
                };
                let mut plan = plan::respond(
                    f,
                    dest,
                    started.elapsed().as_secs_f64(),
                    Answered {
                        status: resp.status().as_u16(),
                        set_cookies: h.get_all(SET_COOKIE).iter().map(HeaderValue::as_bytes),
                        app_header,
                        peer_count: h.get(crate::placement::HEADER).map(HeaderValue::as_bytes),
                    },
                );
                let hold = plan.hold.take();
                let mut resp = from_upstream(f, resp, upgrade, hold);
                plan.apply(resp.headers_mut());
                Ok(self.finish(resp))
            }
            Err(failure) if failure.stalled => Err(Failure::Answer(Synthetic::stalled())),
            Err(failure) if failure.error.kind == Kind::Queue => {
                shared.metrics.shed_queue.inc();
                tracing::debug!(error = %failure.error, "shed in the upstream queue");
                Err(Failure::Answer(Synthetic::shed()))
            }
            Err(failure) => {
                self.req = failure.request;
                Err(Failure::Upstream(failure.error))
            }
        }
    }

    async fn answer(&mut self, f: Option<&Facts<'_>>, s: Synthetic) -> Self::Done {
        let grpc = f.map_or(self.grpc, Facts::grpc);
        let resp = s.response(grpc, self.http1);
        self.finish(resp)
    }
}

impl Exchange<'_> {
    /// The close rule for an HTTP/1.1 client: told to go elsewhere while
    /// this pod stops or drains ([`Facts::client_goes_elsewhere`]).
    fn finish(&self, mut resp: Response<ResponseBody>) -> Response<ResponseBody> {
        if self.http1
            && resp.status() != StatusCode::SWITCHING_PROTOCOLS
            && facts::client_goes_elsewhere(self.shared, self.hops)
        {
            resp.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

/// Prepares the request head for the next hop, whichever it is: client
/// copies of stickyd's fields and hop-by-hop fields out, X-Forwarded-For
/// in.
fn prepare<B>(req: &mut Request<B>, found: Found, upgrade: bool, forwarded_for: &HeaderValue) {
    let h = req.headers_mut();
    headers::strip_own_found(h, found);
    headers::strip_found(h, found, upgrade);
    headers::append_forwarded_for_found(h, found, forwarded_for);
}

/// A Host field from the request's authority when it has none: an HTTP/2
/// request's `:authority`, or the client's Host that an attempt to an h2c
/// app moved there and that the next hop must get back as a field.
fn host_from_authority<B>(req: &mut Request<B>) -> Option<()> {
    if !req.headers().contains_key(HOST) {
        if let Some(a) = req.uri().authority() {
            let v = HeaderValue::from_str(a.as_str()).ok()?;
            req.headers_mut().insert(HOST, v);
        }
    }
    Some(())
}

/// Points the request at the next hop: origin-form for a connection of our
/// own, absolute-form naming `authority` for a pool (which picks the
/// connection by it and sends origin-form). The original Host is kept.
fn set_target<B>(req: &mut Request<B>, authority: Option<http::uri::Authority>, to_h2: bool) -> Option<()> {
    let mut parts = std::mem::take(req.uri_mut()).into_parts();
    parts.scheme = authority.as_ref().map(|_| http::uri::Scheme::HTTP);
    parts.authority = authority;
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    *req.uri_mut() = Uri::from_parts(parts).ok()?;
    if to_h2 {
        // HTTP/2 carries the authority itself; a Host field beside it is
        // allowed but must match, so leave it.
        *req.version_mut() = Version::HTTP_2;
    } else if req.version() == Version::HTTP_2 {
        *req.version_mut() = Version::HTTP_11;
    }
    Some(())
}

/// Ends when `peer` is no longer in the (synced) endpoint view: a pod that
/// died dark answers nothing, and its requests need not wait out
/// STICKYD_RESPONSE_TIMEOUT once the control plane has noticed.
pub(super) async fn left_the_view(store: &EndpointStore, peer: &Peer) {
    let mut changes = store.changes();
    while changes.changed().await.is_ok() {
        let v = store.load();
        if v.synced && v.get(&peer.id).is_none_or(|p| p.addr != peer.addr) {
            return;
        }
    }
    std::future::pending().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::Empty;

    fn view(version: Version, uri: &str) -> TargetForm {
        let req = Request::builder()
            .version(version)
            .uri(uri)
            .body(Empty::<Bytes>::new())
            .unwrap();
        View {
            req: &req,
            found: Found::default(),
        }
        .target()
    }

    #[test]
    fn targets_as_the_screen_reads_them() {
        assert_eq!(view(Version::HTTP_11, "/a?b"), TargetForm::Origin);
        assert_eq!(view(Version::HTTP_11, "http://other/x"), TargetForm::Absolute);
        assert_eq!(view(Version::HTTP_11, "other:443"), TargetForm::Absolute);
        // HTTP/2 always carries the authority (:authority).
        assert_eq!(view(Version::HTTP_2, "http://svc/x"), TargetForm::Origin);
        assert_eq!(view(Version::HTTP_11, "*"), TargetForm::Asterisk);
    }
}
