//! STICKYD_BODY_READ_TIMEOUT: the longest a request or response body may go
//! without a byte, on both paths ([`super::h1`] and hyper's, [`super::body`]).
//! Streams are exempt: Server-Sent Events, gRPC and upgraded connections
//! may be silent for as long as they like. Which bodies those are is
//! decided here, once for both paths, from the heads alone.

/// What a `Content-Type` says of a body's pace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pace {
    /// Anything else: bytes come while there are bytes to send.
    Bounded,
    /// gRPC (`application/grpc`, `application/grpc+proto`,
    /// `application/grpc-web`, ...): a stream either way.
    Grpc,
    /// `text/event-stream`: Server-Sent Events, a stream as a response.
    EventStream,
}

/// The pace of a body whose head has this `Content-Type` (the first one,
/// if several). Media types are compared without case and parameters.
pub fn pace(content_type: Option<&[u8]>) -> Pace {
    let Some(v) = content_type else {
        return Pace::Bounded;
    };
    let essence = v.split(|&b| b == b';').next().unwrap_or_default().trim_ascii();
    const GRPC: &[u8] = b"application/grpc";
    if essence.eq_ignore_ascii_case(b"text/event-stream") {
        Pace::EventStream
    } else if essence.len() >= GRPC.len()
        && essence[..GRPC.len()].eq_ignore_ascii_case(GRPC)
        && matches!(essence.get(GRPC.len()), None | Some(b'+' | b'-'))
    {
        Pace::Grpc
    } else {
        Pace::Bounded
    }
}

/// Is a body of an exchange exempt from STICKYD_BODY_READ_TIMEOUT? The
/// request's pace, and for a response body its status and pace (None for
/// the request body). Exempt: every body of a gRPC exchange (a request or
/// a response of gRPC), a response of Server-Sent Events, and an upgraded
/// connection (101).
pub fn exempt(request: Pace, response: Option<(u16, Pace)>) -> bool {
    request == Pace::Grpc || response.is_some_and(|(status, pace)| status == 101 || pace != Pace::Bounded)
}

/// The body of the 408 a client gets when its request body stalled.
pub const STALLED: &str = "stickyd: the request body stalled (STICKYD_BODY_READ_TIMEOUT)\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_content_type_tells_the_pace() {
        for (ct, want) in [
            (None, Pace::Bounded),
            (Some(&b"text/plain"[..]), Pace::Bounded),
            (Some(b""), Pace::Bounded),
            (Some(b"text/event-stream"), Pace::EventStream),
            (Some(b" Text/Event-Stream ; charset=utf-8"), Pace::EventStream),
            (Some(b"text/event-streams"), Pace::Bounded),
            (Some(b"text/event"), Pace::Bounded),
            (Some(b"application/grpc"), Pace::Grpc),
            (Some(b"application/GRPC+proto"), Pace::Grpc),
            (Some(b"application/grpc-web-text"), Pace::Grpc),
            (Some(b"application/grpc;charset=x"), Pace::Grpc),
            (Some(b"application/grpcx"), Pace::Bounded),
            (Some(b"application/grp"), Pace::Bounded),
            (Some(b"application/json"), Pace::Bounded),
            (Some(b"x; application/grpc"), Pace::Bounded),
        ] {
            assert_eq!(pace(ct), want, "{:?}", ct.map(String::from_utf8_lossy));
        }
    }

    #[test]
    fn streams_are_exempt_and_nothing_else() {
        use Pace::*;
        // Request bodies: only a gRPC request's.
        assert!(exempt(Grpc, None));
        assert!(!exempt(Bounded, None));
        // An event stream is a response's pace, not a request's.
        assert!(!exempt(EventStream, None));
        assert!(!exempt(EventStream, Some((200, Bounded))));
        // Response bodies.
        assert!(!exempt(Bounded, Some((200, Bounded))));
        assert!(exempt(Bounded, Some((200, EventStream))));
        assert!(exempt(Bounded, Some((200, Grpc))));
        assert!(exempt(Grpc, Some((200, Bounded))));
        assert!(exempt(Bounded, Some((101, Bounded))));
        assert!(!exempt(Bounded, Some((100, Bounded))));
        assert!(!exempt(Bounded, Some((102, Bounded))));
        assert!(!exempt(Bounded, Some((404, Bounded))));
    }
}
