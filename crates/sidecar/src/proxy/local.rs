//! Phase 3, serve locally: the app in this pod answers, and the response
//! gets the session's cookie when the decision says so.

use std::time::Instant;

use http::header::HeaderValue;
use http::{Request, Response, Version};
use hyper::body::Incoming;

use super::body::ResponseBody;
use super::context::{set_target, Ctx};
use super::fallback;
use super::headers::{HOP, SESSION};
use super::respond::{from_upstream, invalid_target, stalled, upstream_failed};
use super::token::Carrier;
use super::upstream::{Kind, Outbound, Target, Via};
use crate::config::UpstreamProtocol;
use crate::route::{Failed, SessionMark};

/// Sends a prepared request to the app in this pod and answers with its
/// response, adding the session cookie when asked. A refused connection
/// goes to the one fallback path when `may_fall_back`.
pub(super) async fn serve(
    ctx: &Ctx<'_>,
    mut req: Request<Incoming>,
    mark: SessionMark,
    set_cookie: bool,
    may_fall_back: bool,
) -> Response<ResponseBody> {
    let shared = ctx.shared;
    let to_h2 = shared.cfg.upstream_protocol == UpstreamProtocol::H2c;
    // HTTP/1.1 requests (upgrades aside) use the app connection bound to this
    // client connection; HTTP/2 streams and upgrades use the pool.
    let bound = !to_h2 && !ctx.upgrade && req.version() <= Version::HTTP_11 && ctx.conn.bind_app(&shared.bound_apps);
    let authority = (!bound).then(|| shared.app_authority.clone());
    if set_target(&mut req, authority, to_h2).is_none() {
        return invalid_target(shared);
    }
    let h = req.headers_mut();
    h.remove(HOP);
    h.insert(SESSION, HeaderValue::from_static(mark.as_str()));
    // The app gets its own cookie back as it set it.
    let as_they_came = shared.carrier.for_app(h);

    // While a drain runs, a request of a session pinned here holds it.
    let _pinned = (mark == SessionMark::Pinned && ctx.pinned_here())
        .then(|| shared.drain.pinned_request())
        .flatten();
    let started = Instant::now();
    let sent = Outbound {
        target: Target::App,
        via: if bound {
            Via::BoundApp
        } else {
            Via::Pool(&shared.pools.app)
        },
        conn: ctx.conn,
        app: shared.cfg.upstream,
        connector: &shared.connector,
        connect_timeout: shared.cfg.connect_timeout,
        response_timeout: shared.cfg.response_timeout,
        body: ctx.request_body(),
    }
    .run(req, std::future::pending())
    .await;
    shared
        .metrics
        .upstream_duration
        .observe(started.elapsed().as_secs_f64());
    let (resp, client_upgrade) = match sent {
        Ok(r) => r,
        Err(f) if f.stalled => return stalled(ctx),
        Err(f) => {
            shared.metrics.upstream_error(f.error.metric_label());
            match f.request {
                Some(mut req) if may_fall_back && f.error.kind == Kind::Connect => {
                    Carrier::restore(req.headers_mut(), as_they_came);
                    tracing::warn!(error = %f.error, "the app in this pod refused the connection; a ready peer takes the request");
                    return fallback::after(ctx, Failed::App, &f.error, req, mark).await;
                }
                _ => {
                    shared.count_local(mark);
                    tracing::warn!(error = %f.error, "the app in this pod failed");
                    return upstream_failed(&f.error);
                }
            }
        }
    };
    shared.count_local(mark);
    let sid = shared.sid(&ctx.cookie, mark);
    if mark != SessionMark::Unsynced {
        // A session pinned here now (unsynced: pinned elsewhere, kept as it is).
        shared.sessions.note(sid, tokio::time::Instant::now());
    }
    let mut resp = from_upstream(ctx, resp, client_upgrade);
    if let Some(n) = shared.count_for_peer(ctx.hop_verified) {
        resp.headers_mut()
            .insert(crate::placement::HEADER, HeaderValue::from(n));
    }
    shared.carrier.respond(
        resp.headers_mut(),
        set_cookie,
        &ctx.read,
        &shared.cfg.cookie,
        ctx.https,
        || shared.token(&ctx.cookie, sid, ctx.now),
    );
    resp
}
