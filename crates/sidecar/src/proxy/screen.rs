//! Phase 1, screen: refuse what a sidecar must never do, before routing.

use http::StatusCode;

use super::facts::{HeadView, TargetForm};

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
/// are not a path (OPTIONS `*` aside), and heads larger than
/// `max_header_bytes`.
pub(super) fn screen(head: &impl HeadView, max_header_bytes: usize) -> Option<Refusal> {
    if head.method() == b"CONNECT" {
        return Some(Refusal::Connect);
    }
    match head.target() {
        TargetForm::Origin => {}
        TargetForm::Asterisk if head.method() == b"OPTIONS" => {}
        TargetForm::Asterisk | TargetForm::Invalid => return Some(Refusal::Target),
        TargetForm::Absolute => return Some(Refusal::AbsoluteForm),
    }
    // The HTTP/1.1 codec refuses an oversized head as it reads it, and
    // hyper's buffer limit catches most; this catches the rest, whatever
    // the read sizes were.
    (head.head_bytes() > max_header_bytes).then_some(Refusal::HeaderTooLarge)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A head for the screen alone.
    struct Head(&'static str, TargetForm, usize);

    impl HeadView for Head {
        fn method(&self) -> &[u8] {
            self.0.as_bytes()
        }
        fn version(&self) -> http::Version {
            http::Version::HTTP_11
        }
        fn target(&self) -> TargetForm {
            self.1
        }
        fn values<'v>(&'v self, _: &'v str) -> impl Iterator<Item = &'v [u8]> + 'v {
            std::iter::empty()
        }
        fn has_body(&self) -> bool {
            false
        }
        fn upgrade(&self) -> bool {
            false
        }
        fn head_bytes(&self) -> usize {
            self.2
        }
    }

    #[test]
    fn refusals() {
        use TargetForm::*;
        assert_eq!(screen(&Head("GET", Origin, 10), 8192), None);
        assert_eq!(screen(&Head("OPTIONS", Asterisk, 10), 8192), None);
        assert_eq!(screen(&Head("CONNECT", Origin, 10), 8192), Some(Refusal::Connect));
        assert_eq!(screen(&Head("CONNECT", Absolute, 10), 8192), Some(Refusal::Connect));
        assert_eq!(screen(&Head("GET", Absolute, 10), 8192), Some(Refusal::AbsoluteForm));
        assert_eq!(screen(&Head("GET", Asterisk, 10), 8192), Some(Refusal::Target));
        assert_eq!(screen(&Head("OPTIONS", Invalid, 10), 8192), Some(Refusal::Target));
        assert_eq!(screen(&Head("GET", Origin, 101), 100), Some(Refusal::HeaderTooLarge));
        assert_eq!(screen(&Head("GET", Origin, 100), 100), None);
    }
}
