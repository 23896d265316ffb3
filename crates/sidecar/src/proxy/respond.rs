//! What goes back to the client: every answer stickyd makes itself, in one
//! place ([`Synthetic`], for both codecs: a short text, or for a gRPC caller
//! its `grpc-status`), and on hyper's codec an upstream's response as the
//! client gets it (hop-by-hop and stickyd's own fields out, an upgrade
//! joined to the client's connection, the body under its idle limit).

use http::header::{HeaderName, HeaderValue, CACHE_CONTROL, CONNECTION, CONTENT_TYPE, RETRY_AFTER};
use http::{Response, StatusCode};
use http_body::Body;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use super::body::{self, Relayed, ResponseBody, Source, Watch};
use super::facts::Facts;
use super::headers;
use super::idle;
use super::screen::Refusal;
use super::upstream::{Kind, UpstreamError};
use crate::route::Failed;
use crate::sessions::Hold;

/// A gRPC status code ([gRPC's status codes](https://grpc.github.io/grpc/core/md_doc_statuscodes.html)),
/// for the callers that read `grpc-status` rather than the HTTP status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrpcCode {
    /// 4: the deadline passed (an upstream or a body took too long).
    DeadlineExceeded = 4,
    /// 8: a resource ran out (the memory budget: shed).
    ResourceExhausted = 8,
    /// 12: not something this server does (CONNECT).
    Unimplemented = 12,
    /// 13: the request itself is broken.
    Internal = 13,
    /// 14: the pod that should answer is gone or refused: try again.
    Unavailable = 14,
}

/// Every answer stickyd makes itself, in one place (as linkerd's
/// `errors/respond.rs`): a status, a short text naming the cause, for a
/// gRPC caller the gRPC status, and whether the client connection must
/// close after it (HTTP/1.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Synthetic {
    pub status: StatusCode,
    pub message: &'static str,
    pub grpc: GrpcCode,
    /// `Retry-After` in seconds (shed at the memory budget).
    pub retry_after: Option<u32>,
    /// The client connection closes after it: part of the request may be
    /// unread or already sent on.
    pub close: bool,
}

/// The message of a shed request.
const SHED: &str = "stickyd: this pod is at its memory budget (STICKYD_MEMORY_LIMIT); retry shortly\n";

impl Synthetic {
    const fn new(status: StatusCode, message: &'static str, grpc: GrpcCode) -> Synthetic {
        Synthetic {
            status,
            message,
            grpc,
            retry_after: None,
            close: false,
        }
    }

    /// A request refused before routing.
    pub fn refused(r: Refusal) -> Synthetic {
        let (status, message) = r.status_and_message();
        let grpc = match r {
            Refusal::Connect => GrpcCode::Unimplemented,
            Refusal::HeaderTooLarge | Refusal::TooManyHeaders => GrpcCode::ResourceExhausted,
            Refusal::AbsoluteForm | Refusal::Target | Refusal::Malformed | Refusal::Framing | Refusal::Body => {
                GrpcCode::Internal
            }
        };
        Synthetic {
            // What follows a broken head or body cannot be read as a request.
            close: matches!(r, Refusal::Malformed | Refusal::Framing | Refusal::Body),
            ..Synthetic::new(status, message, grpc)
        }
    }

    /// An upstream failure that no other place could take. The request may
    /// have been partly sent: the connection never goes on.
    pub fn upstream(e: &UpstreamError) -> Synthetic {
        let grpc = match e.kind {
            Kind::Timeout => GrpcCode::DeadlineExceeded,
            Kind::Queue => GrpcCode::ResourceExhausted,
            Kind::Connect | Kind::Closed | Kind::Gone | Kind::Io => GrpcCode::Unavailable,
        };
        Synthetic {
            close: true,
            ..Synthetic::new(e.status(), e.message(), grpc)
        }
    }

    /// STICKYD_ON_MISSING=reject: the pod the session is pinned to is gone
    /// (`failed`: it, or its app, failed on the way).
    pub fn rejected(failed: Option<Failed>) -> Synthetic {
        let message = match failed {
            None => "stickyd: the pod this session is pinned to is gone (STICKYD_ON_MISSING=reject)\n",
            Some(Failed::Peer) => {
                "stickyd: the pod this session is pinned to is unreachable (STICKYD_ON_MISSING=reject)\n"
            }
            Some(Failed::App) => {
                "stickyd: the app of the pod this session is pinned to is gone (STICKYD_ON_MISSING=reject)\n"
            }
        };
        Synthetic::new(StatusCode::SERVICE_UNAVAILABLE, message, GrpcCode::Unavailable)
    }

    /// At the memory budget: 503 with Retry-After.
    pub fn shed() -> Synthetic {
        Synthetic {
            retry_after: Some(1),
            close: true,
            ..Synthetic::new(StatusCode::SERVICE_UNAVAILABLE, SHED, GrpcCode::ResourceExhausted)
        }
    }

    /// The client's request body stalled (STICKYD_BODY_READ_TIMEOUT) before
    /// a response: 408, and an HTTP/1.1 connection closes after it.
    pub fn stalled() -> Synthetic {
        Synthetic {
            close: true,
            ..Synthetic::new(StatusCode::REQUEST_TIMEOUT, idle::STALLED, GrpcCode::DeadlineExceeded)
        }
    }

    /// The request target could not be rewritten for the next hop.
    pub fn invalid_target() -> Synthetic {
        Synthetic::new(
            StatusCode::BAD_REQUEST,
            "stickyd: the request target is invalid\n",
            GrpcCode::Internal,
        )
    }

    /// `grpc-message`: the message without its line end, percent-encoded as
    /// gRPC asks (every byte outside printable ASCII, and `%`).
    fn grpc_message(&self) -> String {
        let mut out = String::with_capacity(self.message.len());
        for b in self.message.trim_end().bytes() {
            if (0x20..0x7f).contains(&b) && b != b'%' {
                out.push(b as char);
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
        out
    }

    /// The answer as a response for hyper's path. A gRPC caller gets it as
    /// gRPC's trailers-only response: HTTP 200, `grpc-status` and
    /// `grpc-message`, no body.
    pub fn response(&self, grpc: bool, http1: bool) -> Response<ResponseBody> {
        let mut r = if grpc {
            let mut r = Response::new(body::empty());
            let h = r.headers_mut();
            h.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
            h.insert(GRPC_STATUS, HeaderValue::from(self.grpc as u16));
            if let Ok(m) = HeaderValue::from_str(&self.grpc_message()) {
                h.insert(GRPC_MESSAGE, m);
            }
            r
        } else {
            let mut r = Response::new(body::text(self.message));
            *r.status_mut() = self.status;
            r.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
            r
        };
        let h = r.headers_mut();
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(s) = self.retry_after {
            h.insert(RETRY_AFTER, HeaderValue::from(s));
        }
        if self.close && http1 {
            h.insert(CONNECTION, HeaderValue::from_static("close"));
        }
        r
    }

    /// The answer as an HTTP/1.1 message, for the HTTP/1.1 path; `close`
    /// adds `connection: close`. A gRPC caller (gRPC-Web over HTTP/1.1) gets
    /// HTTP 200 with `grpc-status` and `grpc-message`.
    pub fn h1(&self, grpc: bool, close: bool) -> Vec<u8> {
        let (status, content_type, body) = if grpc {
            (StatusCode::OK, "application/grpc", "")
        } else {
            (self.status, "text/plain; charset=utf-8", self.message)
        };
        let mut out = Vec::with_capacity(192 + body.len());
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(status.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
        out.extend_from_slice(b"\r\ncontent-type: ");
        out.extend_from_slice(content_type.as_bytes());
        out.extend_from_slice(b"\r\ncache-control: no-store\r\ncontent-length: ");
        out.extend_from_slice(body.len().to_string().as_bytes());
        if grpc {
            out.extend_from_slice(b"\r\ngrpc-status: ");
            out.extend_from_slice((self.grpc as u8).to_string().as_bytes());
            out.extend_from_slice(b"\r\ngrpc-message: ");
            out.extend_from_slice(self.grpc_message().as_bytes());
        }
        if let Some(s) = self.retry_after {
            out.extend_from_slice(b"\r\nretry-after: ");
            out.extend_from_slice(s.to_string().as_bytes());
        }
        if close {
            out.extend_from_slice(b"\r\nconnection: close");
        }
        out.extend_from_slice(b"\r\n\r\n");
        out.extend_from_slice(body.as_bytes());
        out
    }
}

const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");

/// An upstream's response, for the client: joined with the client's
/// upgraded connection on a 101, hop-by-hop and stickyd's headers out, its
/// body relayed under STICKYD_BODY_READ_TIMEOUT unless it is a stream.
pub(super) fn from_upstream(
    f: &Facts<'_>,
    mut resp: Response<Source>,
    client_upgrade: Option<OnUpgrade>,
    mut hold: Option<Hold>,
) -> Response<ResponseBody> {
    let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    if switching {
        splice_upgrade(client_upgrade, &mut resp, hold.take());
    }
    let pace = idle::pace(resp.headers().get(CONTENT_TYPE).map(HeaderValue::as_bytes));
    let watch = f
        .body_limit(Some((resp.status().as_u16(), pace)))
        .filter(|_| !resp.body().is_end_stream())
        .map(|limit| Watch::response(limit, f.shared.metrics.clone()));
    headers::finish_response(resp.headers_mut(), switching);
    resp.map(|b| http_body_util::Either::Left(Relayed::new(b, watch).holding(hold)))
}

/// Joins the client's upgraded connection with the upstream's once both
/// sides have switched protocols; the tunnel holds its session active.
fn splice_upgrade(client: Option<OnUpgrade>, resp: &mut Response<Source>, hold: Option<Hold>) {
    let Some(client) = client else {
        return;
    };
    let upstream = hyper::upgrade::on(resp);
    tokio::spawn(async move {
        let _hold = hold;
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
