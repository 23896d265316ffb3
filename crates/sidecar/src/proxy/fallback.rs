//! The one fallback path: a request whose upstream failed before any byte
//! of it arrived (a refused peer, a peer that closed an idle connection on a
//! safe request, the app in this pod refusing the connection) is whole in
//! hand, and [`route::after_failure`] says where it goes instead.

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;

use super::body::ResponseBody;
use super::context::Ctx;
use super::respond::{own_response, upstream_failed};
use super::upstream::UpstreamError;
use super::{forward, local};
use crate::route::{self, Decision, Failed, SessionMark};

/// Sends the request where the second half of the decision says, once: a
/// failure there is answered, never retried again.
pub(super) async fn after(
    ctx: &Ctx<'_>,
    failed: Failed,
    error: &UpstreamError,
    req: Request<Incoming>,
    mark: SessionMark,
) -> Response<ResponseBody> {
    let shared = ctx.shared;
    let me = shared.this_pod(&ctx.view);
    let second = route::after_failure(failed, mark, &ctx.view, &me, ctx.hops, shared.cfg.on_missing, ctx.pick);
    match second {
        Some(Decision::Local { mark, set_cookie }) => Box::pin(local::serve(ctx, req, mark, set_cookie, false)).await,
        Some(Decision::Forward { peer, mark }) => Box::pin(forward::forward(ctx, req, peer, mark, false)).await,
        Some(Decision::Reject) => {
            shared.count("rejected", None, "");
            own_response(
                StatusCode::SERVICE_UNAVAILABLE,
                match failed {
                    Failed::Peer => {
                        "stickyd: the pod this session is pinned to is unreachable (STICKYD_ON_MISSING=reject)\n"
                    }
                    Failed::App => {
                        "stickyd: the app of the pod this session is pinned to is gone (STICKYD_ON_MISSING=reject)\n"
                    }
                },
            )
        }
        None => upstream_failed(error),
    }
}
