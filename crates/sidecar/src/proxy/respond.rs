//! Phase 4, respond: what goes back to the client. Upstream responses lose
//! their hop-by-hop and stickyd's own headers (an upgrade is joined to the
//! client's connection); stickyd's own answers are short texts, and every
//! upstream failure becomes its status here, in one place.

use http::header::{HeaderValue, CACHE_CONTROL, CONNECTION, CONTENT_TYPE};
use http::{Response, StatusCode, Version};
use http_body::Body;
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use super::body::{self, Relayed, ResponseBody, Watch};
use super::context::Ctx;
use super::headers;
use super::idle;
use super::upstream::UpstreamError;
use super::Shared;

/// A response of stickyd's own, with a short explanation.
pub(super) fn own_response(status: StatusCode, msg: &'static str) -> Response<ResponseBody> {
    let mut r = Response::new(body::text(msg));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// The answer to an upstream failure that no other place could take.
pub(super) fn upstream_failed(error: &UpstreamError) -> Response<ResponseBody> {
    own_response(error.status(), error.message())
}

/// The request target could not be rewritten for the next hop.
pub(super) fn invalid_target(shared: &Shared) -> Response<ResponseBody> {
    shared.metrics.bad_request("target");
    own_response(StatusCode::BAD_REQUEST, "stickyd: the request target is invalid\n")
}

/// The client's request body stalled (STICKYD_BODY_READ_TIMEOUT) before a
/// response: 408, and an HTTP/1.1 connection closes after it (an HTTP/2
/// stream ends with it).
pub(super) fn stalled(ctx: &Ctx<'_>) -> Response<ResponseBody> {
    let mut r = own_response(StatusCode::REQUEST_TIMEOUT, idle::STALLED);
    if ctx.version <= Version::HTTP_11 {
        r.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
    }
    r
}

/// An upstream's response, for the client: joined with the client's
/// upgraded connection on a 101, hop-by-hop and stickyd's headers out, its
/// body relayed under STICKYD_BODY_READ_TIMEOUT unless it is a stream.
pub(super) fn from_upstream(
    ctx: &Ctx<'_>,
    mut resp: Response<Incoming>,
    client_upgrade: Option<OnUpgrade>,
) -> Response<ResponseBody> {
    let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    if switching {
        splice_upgrade(client_upgrade, &mut resp);
    }
    let pace = idle::pace(resp.headers().get(CONTENT_TYPE).map(HeaderValue::as_bytes));
    let watch = ctx
        .body_limit(Some((resp.status().as_u16(), pace)))
        .filter(|_| !resp.body().is_end_stream())
        .map(|limit| Watch::response(limit, ctx.shared.metrics.clone()));
    headers::finish_response(resp.headers_mut(), switching);
    resp.map(|b| http_body_util::Either::Left(Relayed::new(b, watch)))
}

/// Joins the client's upgraded connection with the upstream's once both
/// sides have switched protocols.
fn splice_upgrade(client: Option<OnUpgrade>, resp: &mut Response<Incoming>) {
    let Some(client) = client else {
        return;
    };
    let upstream = hyper::upgrade::on(resp);
    tokio::spawn(async move {
        let (client, upstream) = match tokio::join!(client, upstream) {
            (Ok(c), Ok(u)) => (c, u),
            (c, u) => {
                tracing::debug!(client_ok = c.is_ok(), upstream_ok = u.is_ok(), "upgrade failed");
                return;
            }
        };
        let mut client = TokioIo::new(client);
        let mut upstream = TokioIo::new(upstream);
        if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
            tracing::debug!(error = %e, "upgraded connection closed");
        }
    });
}
