//! Phase 3, forward: the request goes to the sidecar of the pod its session
//! names (or of a ready peer that takes it), with the hop marker.

use std::time::Instant;

use http::{Request, Response, Version};
use hyper::body::Incoming;

use super::body::ResponseBody;
use super::context::{set_target, Ctx};
use super::fallback;
use super::headers::{HOP, SESSION};
use super::respond::{from_upstream, invalid_target, stalled, upstream_failed};
use super::shared::authority;
use super::upstream::{Kind, Outbound, Target, Via};
use crate::endpoints::{EndpointStore, Peer};
use crate::route::{Failed, SessionMark};

/// Forwards a prepared request to `peer`: an HTTP/1.1 request over this
/// client connection's own connection to it when one is bound or a place is
/// free, anything else through the shared pool. A request that never reached
/// the peer goes to the one fallback path when `may_fall_back`.
pub(super) async fn forward(
    ctx: &Ctx<'_>,
    mut req: Request<Incoming>,
    peer: &Peer,
    mark: SessionMark,
    may_fall_back: bool,
) -> Response<ResponseBody> {
    let shared = ctx.shared;
    let to_h2 = ctx.version == Version::HTTP_2;
    let binding = if to_h2 || ctx.upgrade {
        None
    } else {
        ctx.conn.take_peer(&shared.bound_peers, shared.peer_idle, peer.addr)
    };
    let authority = binding.is_none().then(|| authority(peer.addr));
    if set_target(&mut req, authority, to_h2).is_none() {
        return invalid_target(shared);
    }
    let h = req.headers_mut();
    h.remove(SESSION);
    // One marker per hop made, this one included, each signed for this peer.
    let marker = shared.hop_marker(peer, ctx.now);
    for _ in 0..ctx.hops {
        h.append(HOP, marker.clone());
    }
    h.append(HOP, marker);
    let via = match binding {
        Some(b) => Via::BoundPeer(peer.addr, b),
        None if to_h2 => Via::Pool(&shared.pools.peers_h2),
        None => Via::Pool(&shared.pools.peers_h1),
    };
    let started = Instant::now();
    let sent = Outbound {
        target: Target::Peer,
        via,
        conn: ctx.conn,
        app: shared.cfg.upstream,
        connector: &shared.connector,
        connect_timeout: shared.cfg.connect_timeout,
        response_timeout: shared.cfg.response_timeout,
        body: ctx.request_body(),
    }
    .run(req, left_the_view(&shared.store, peer))
    .await;
    shared.metrics.forward_duration.observe(started.elapsed().as_secs_f64());
    match sent {
        Ok((resp, client_upgrade)) => {
            shared.count_forwarded(peer, ctx.view.generation, mark);
            shared.learn_count(peer, resp.headers().get(crate::placement::HEADER).map(|v| v.as_bytes()));
            from_upstream(ctx, resp, client_upgrade)
        }
        Err(f) if f.stalled => stalled(ctx),
        Err(f) => {
            shared.metrics.upstream_error(f.error.metric_label());
            match f.request {
                Some(req) if may_fall_back => {
                    tracing::info!(peer = %peer.name, addr = %peer.addr, error = %f.error, "peer unreachable; serving locally");
                    fallback::after(ctx, Failed::Peer, &f.error, req, mark).await
                }
                _ => {
                    if f.error.kind != Kind::Timeout {
                        tracing::warn!(peer = %peer.name, error = %f.error, "forwarding to the peer failed after the request was sent");
                    }
                    upstream_failed(&f.error)
                }
            }
        }
    }
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
