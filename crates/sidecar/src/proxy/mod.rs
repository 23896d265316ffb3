//! The data path: every request's life, in named phases, each a room of its
//! own.
//!
//! 1. **screen** ([`screen`]): refuse what a sidecar must never do (CONNECT,
//!    absolute-form targets naming another host, oversized heads).
//! 2. **decide** ([`context`]): read the cookie and the hop markers, load the
//!    endpoint view (lock-free) and call [`route::decide`].
//! 3. **serve locally** ([`local`]) with the app in this pod, or **forward**
//!    ([`forward`]) to a peer's sidecar, over [`upstream`] connections. A
//!    request whose upstream failed before any byte of it arrived takes the
//!    one [`fallback`] path ([`route::after_failure`]).
//! 4. **respond** ([`respond`]): the session token beside the app's own
//!    cookies (where it travels is [`token`]'s, by STICKYD_AFFINITY),
//!    stickyd's headers out, every upstream error mapped to its status.

pub mod body;
mod clock;
mod conn;
mod connect;
mod context;
mod fallback;
mod forward;
pub mod h1;
pub mod headers;
mod idle;
pub mod listener;
mod local;
mod respond;
mod screen;
mod shared;
mod token;
pub mod upstream;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderValue, CONNECTION};
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;

pub use clock::Clock;
pub use conn::{ConnInfo, MAX_BOUND, MAX_BOUND_PEERS, MAX_PEERS_PER_CONN};
pub use connect::{Connector, Dial};
pub use shared::Shared;

use body::ResponseBody;
use context::Ctx;
use headers::Found;
use respond::own_response;
use route::Decision;

use crate::affinity::CookieState;
use crate::route;

/// Handles one request.
pub async fn handle(shared: Arc<Shared>, conn: Arc<ConnInfo>, req: Request<Incoming>) -> Response<ResponseBody> {
    let stopping = shared.draining.load(Ordering::Relaxed);
    let h1 = req.version() <= Version::HTTP_11;
    if !h1 {
        conn.mark_h2();
    }
    let (mut resp, hops) = pipeline(&shared, &conn, req).await;
    // Tell keep-alive clients to move on while this pod drains: all of them
    // on SIGTERM; during a session drain, those that did not come from a
    // peer (the ingress's connections go to other pods, while peers keep
    // forwarding the sessions pinned here on theirs).
    let drain = stopping || (hops == 0 && shared.drain.requested());
    if drain && h1 && resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        resp.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// The phases; also returns the hop markers the request arrived with.
async fn pipeline(shared: &Shared, conn: &ConnInfo, mut req: Request<Incoming>) -> (Response<ResponseBody>, u8) {
    // Phase 1: screen.
    if let Some(refused) = screen::screen(&req, shared.cfg.max_header_bytes) {
        shared.metrics.bad_request(refused.metric_label());
        return (refused.response(), 0);
    }

    // Phase 2: decide.
    let found = Found::scan(req.headers());
    let mut ctx = Ctx::new(shared, conn, &req, found);
    ctx.wait_for_the_view().await;
    let decision = ctx.decide();
    tracing::debug!(
        method = %req.method(),
        path = req.uri().path(),
        cookie = cookie_label(&ctx.cookie),
        hops = ctx.hops,
        decision = ?decision,
        "route"
    );
    if ctx.prepare(&mut req, found).is_none() {
        return (respond::invalid_target(shared), ctx.hops);
    }

    // Phase 3: serve locally or forward; phase 4 inside each.
    let resp = match decision {
        Decision::Reject => {
            shared.count("rejected", None, "");
            own_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "stickyd: the pod this session is pinned to is gone (STICKYD_ON_MISSING=reject)\n",
            )
        }
        Decision::Local { mark, set_cookie } => local::serve(&ctx, req, mark, set_cookie, true).await,
        Decision::Forward { peer, mark } => forward::forward(&ctx, req, peer, mark, true).await,
    };
    (resp, ctx.hops)
}

fn cookie_label(c: &CookieState) -> &'static str {
    match c {
        CookieState::Absent => "absent",
        CookieState::Invalid => "invalid",
        CookieState::Valid(_) => "valid",
    }
}

/// Does the app accept a TCP connection within `timeout`?
pub async fn app_reachable(addr: SocketAddr, timeout: Duration) -> bool {
    matches!(
        tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await,
        Ok(Ok(_))
    )
}
