//! Phase 1, screen: refuse what a sidecar must never do, before routing.

use http::{Method, Request, Response, StatusCode, Version};

use super::body::ResponseBody;
use super::respond::own_response;

/// Why a request is refused before routing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Refusal {
    /// CONNECT: this is not a forward proxy.
    Connect,
    /// An HTTP/1 absolute-form target (`GET http://other/`).
    AbsoluteForm,
    /// A target that is not a path (OPTIONS * aside).
    Target,
    /// A head larger than STICKYD_MAX_HEADER_BYTES.
    HeaderTooLarge,
    /// More header fields than STICKYD_MAX_HEADERS.
    TooManyHeaders,
    /// Not HTTP/1.x syntax.
    Malformed,
    /// A Content-Length or Transfer-Encoding that cannot frame the body.
    Framing,
    /// A chunked request body whose framing breaks (the client's fault).
    Body,
}

impl Refusal {
    /// The `kind` label of `stickyd_bad_requests_total`.
    pub fn metric_label(self) -> &'static str {
        match self {
            Refusal::Connect => "connect",
            Refusal::AbsoluteForm => "absolute_form",
            Refusal::Target => "target",
            Refusal::HeaderTooLarge => "header_too_large",
            Refusal::TooManyHeaders => "too_many_headers",
            Refusal::Malformed => "malformed",
            Refusal::Framing => "framing",
            Refusal::Body => "body",
        }
    }

    pub fn response(self) -> Response<ResponseBody> {
        let (status, msg) = self.status_and_message();
        own_response(status, msg)
    }

    /// The status of stickyd's answer, and its body.
    pub fn status_and_message(self) -> (StatusCode, &'static str) {
        match self {
            Refusal::Connect => (
                StatusCode::METHOD_NOT_ALLOWED,
                "stickyd: CONNECT is not allowed; this is not a forward proxy\n",
            ),
            Refusal::AbsoluteForm => (
                StatusCode::BAD_REQUEST,
                "stickyd: absolute-form request targets are not accepted; this is not a forward proxy\n",
            ),
            Refusal::Target => (StatusCode::BAD_REQUEST, "stickyd: the request target must be a path\n"),
            Refusal::HeaderTooLarge => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "stickyd: request header fields too large (STICKYD_MAX_HEADER_BYTES)\n",
            ),
            Refusal::TooManyHeaders => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "stickyd: too many request header fields (STICKYD_MAX_HEADERS)\n",
            ),
            Refusal::Malformed => (StatusCode::BAD_REQUEST, "stickyd: malformed request head\n"),
            Refusal::Framing => (
                StatusCode::BAD_REQUEST,
                "stickyd: the request's Content-Length or Transfer-Encoding cannot frame its body\n",
            ),
            Refusal::Body => (
                StatusCode::BAD_REQUEST,
                "stickyd: the request body's chunked framing is invalid\n",
            ),
        }
    }
}

/// Refuses CONNECT, absolute-form targets naming another host, targets that
/// are not a path, and heads larger than `max_header_bytes`.
pub(super) fn screen<B>(req: &Request<B>, max_header_bytes: usize) -> Option<Refusal> {
    if req.method() == Method::CONNECT {
        return Some(Refusal::Connect);
    }
    if req.version() <= Version::HTTP_11 && req.uri().authority().is_some() {
        return Some(Refusal::AbsoluteForm);
    }
    if req
        .uri()
        .path_and_query()
        .is_none_or(|pq| !pq.as_str().starts_with('/'))
        && req.method() != Method::OPTIONS
    {
        return Some(Refusal::Target);
    }
    // The listener's buffer limit catches most oversized heads; this catches
    // the rest, whatever the read sizes were.
    let head_bytes: usize = req
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum::<usize>()
        + req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    (head_bytes > max_header_bytes).then_some(Refusal::HeaderTooLarge)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: Method, target: &str) -> Request<()> {
        Request::builder().method(method).uri(target).body(()).unwrap()
    }

    #[test]
    fn refusals() {
        assert_eq!(screen(&req(Method::GET, "/a?b"), 8192), None);
        assert_eq!(screen(&req(Method::OPTIONS, "*"), 8192), None);
        assert_eq!(screen(&req(Method::CONNECT, "/"), 8192), Some(Refusal::Connect));
        assert_eq!(
            screen(&req(Method::GET, "http://other/x"), 8192),
            Some(Refusal::AbsoluteForm)
        );
        assert_eq!(screen(&req(Method::GET, "*"), 8192), Some(Refusal::Target));
        let big = Request::get("/").header("x", "v".repeat(100)).body(()).unwrap();
        assert_eq!(screen(&big, 100), Some(Refusal::HeaderTooLarge));
        assert_eq!(screen(&big, 200), None);
        assert_eq!(Refusal::Connect.response().status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(
            Refusal::HeaderTooLarge.response().status(),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        );
    }
}
