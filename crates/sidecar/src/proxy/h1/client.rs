//! HTTP/1.1 to an upstream for hyper's codec (HTTP/2 clients' streams to an
//! HTTP/1.1 app or peer), on stickyd's own reads and writes: the request
//! goes out from the stream's task, its response head is read there with
//! the parser of the HTTP/1.1 path, and its body ([`UpstreamBody`]) is read
//! from the connection as the client takes it. No connection task, no
//! channel between tasks, and an idle connection holds no buffer: a pooled
//! connection costs its socket and a few words.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue, CONTENT_LENGTH, TRAILER};
use http::HeaderMap;
use http::{Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::io::AsyncWriteExt;

use super::body::{Piece, Remaining};
use super::io::{poll_read_with, read_into};
use super::parse::{self, BodyKind};
use super::upstream::Upstream;
use super::{COPY, READ};
use crate::proxy::body::{Reclaimable, RelayError};
use crate::proxy::pool::Turn;

/// The largest response head read (HAProxy's `tune.bufsize`); a larger one
/// is a failure of the upstream (502), as nginx and HAProxy answer it.
pub const MAX_RESPONSE_HEAD: usize = 16 << 10;

/// The most header fields of a response head.
const MAX_FIELDS: usize = 256;

/// How an exchange failed.
pub enum Failed {
    /// Nothing was written (the connection was found closed): the request
    /// comes back whole.
    Unsent(Box<Request<Reclaimable>>, io::Error),
    /// Written, and the connection closed or reset before any byte of the
    /// response.
    Closed(io::Error),
    /// Anything else once the request was written (a malformed response,
    /// the request body failing).
    Io(io::Error),
}

/// The request head as HTTP/1.1 bytes (origin-form target), and whether its
/// body goes chunked (a body of unknown length: HTTP/2 has no chunks).
fn request_head(req: &Request<Reclaimable>) -> (Vec<u8>, bool) {
    let chunked = !req.body().is_end_stream() && !req.headers().contains_key(CONTENT_LENGTH);
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(req.method().as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in req.headers() {
        parse::push_field(&mut out, name.as_str().as_bytes(), value.as_bytes());
    }
    if chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    out.extend_from_slice(b"\r\n");
    (out, chunked)
}

/// How the request body goes: chunked (with the trailer fields the request
/// declared in its `Trailer` field, as hyper sends them) or as it is, up to
/// its Content-Length.
enum Framing {
    Chunked { declared: Vec<HeaderName> },
    Length(u64),
}

impl Framing {
    fn of(req: &Request<Reclaimable>, chunked: bool) -> Framing {
        if chunked {
            let declared = req
                .headers()
                .get_all(TRAILER)
                .iter()
                .flat_map(|v| parse::tokens(v.as_bytes()))
                .filter_map(|t| HeaderName::from_bytes(t).ok())
                .collect();
            return Framing::Chunked { declared };
        }
        let length = req
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| std::str::from_utf8(v.as_bytes()).ok()?.trim().parse().ok());
        Framing::Length(length.unwrap_or(0))
    }
}

/// Writes the request body as it comes, chunked or as it is; a body with a
/// length ends with its last byte, whether or not its stream has ended yet
/// (an HTTP/2 client may end it later).
async fn write_body(up: &mut Upstream, body: &mut Reclaimable, framing: Framing) -> io::Result<()> {
    let mut left = match framing {
        Framing::Length(n) => Some(n),
        Framing::Chunked { .. } => None,
    };
    let mut trailers = None;
    while left != Some(0) {
        let Some(frame) = body.frame().await else {
            break;
        };
        let frame = frame.map_err(|e| io::Error::other(format!("the request body failed: {e}")))?;
        let data = match frame.into_data() {
            Ok(d) => d,
            Err(frame) => {
                trailers = frame.into_trailers().ok();
                continue;
            }
        };
        if data.is_empty() {
            continue;
        }
        match &mut left {
            Some(n) => {
                let len = data.len() as u64;
                if len > *n {
                    return Err(io::Error::other("the request body is longer than its Content-Length"));
                }
                *n -= len;
                up.stream.write_all(&data).await?;
            }
            None => {
                let size = format!("{:x}\r\n", data.len());
                up.stream.write_all(size.as_bytes()).await?;
                up.stream.write_all(&data).await?;
                up.stream.write_all(b"\r\n").await?;
            }
        }
    }
    match (framing, left) {
        (Framing::Length(_), Some(0)) => Ok(()),
        (Framing::Length(_), _) => Err(io::Error::other("the request body is shorter than its Content-Length")),
        (Framing::Chunked { declared }, _) => {
            let mut end = b"0\r\n".to_vec();
            for (name, value) in trailers.iter().flatten() {
                if declared.contains(name) {
                    parse::push_field(&mut end, name.as_str().as_bytes(), value.as_bytes());
                }
            }
            end.extend_from_slice(b"\r\n");
            up.stream.write_all(&end).await
        }
    }
}

/// Sends `req` over `up` and reads the final response head (interim 1xx
/// responses are skipped). The response's body reads the rest from `up`
/// ([`UpstreamBody`]).
pub async fn exchange(mut up: Upstream, req: Request<Reclaimable>) -> Result<Response<UpstreamBody>, Failed> {
    let (head, chunked) = request_head(&req);
    if let Err(e) = up.stream.write_all(&head).await {
        // A kept connection the other side had closed: nothing reached it.
        return Err(Failed::Unsent(Box::new(req), e));
    }
    drop(head);
    let head_request = req.method() == http::Method::HEAD;
    let framing = Framing::of(&req, chunked);
    let mut body = req.into_body();
    if let Err(e) = write_body(&mut up, &mut body, framing).await {
        return Err(Failed::Io(e));
    }
    drop(body);
    let mut buf = Vec::new();
    let mut any = false;
    let head = loop {
        // What came after an interim response may hold the next head.
        let parsed = if buf.is_empty() {
            Ok(None)
        } else {
            parse::response(&buf, MAX_FIELDS, head_request)
        };
        match parsed {
            Ok(Some(h)) if h.len > MAX_RESPONSE_HEAD => return Err(too_large()),
            Ok(Some(h)) if (100..200).contains(&h.status) && h.status != 101 => {
                buf.drain(..h.len);
                continue;
            }
            Ok(Some(h)) => break h,
            // Unfinished at the limit: the head is larger.
            Ok(None) if buf.len() >= MAX_RESPONSE_HEAD => return Err(too_large()),
            Ok(None) => {}
            Err(e) => {
                return Err(Failed::Io(io::Error::other(format!(
                    "a malformed response head: {e:?}"
                ))))
            }
        }
        match read_into(&mut up.stream, &mut buf, READ).await {
            Ok(0) | Err(_) if !any => {
                let e = io::Error::new(io::ErrorKind::ConnectionReset, "closed before any byte of the response");
                return Err(Failed::Closed(e));
            }
            Ok(0) => return Err(Failed::Io(io::Error::other("closed inside the response head"))),
            Err(e) => return Err(Failed::Io(e)),
            Ok(_) => any = true,
        }
    };
    if head.status == 101 {
        // Upgrades go over hyper's client, never here.
        return Err(Failed::Io(io::Error::other("101 without an upgrade asked")));
    }
    let Ok(status) = StatusCode::from_u16(head.status) else {
        return Err(Failed::Io(io::Error::other("a bad status")));
    };
    let mut resp = Response::new(());
    *resp.status_mut() = status;
    *resp.version_mut() = if head.minor == 0 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let h = resp.headers_mut();
    h.reserve(head.fields.len());
    for f in &head.fields {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(f.name(&buf)),
            HeaderValue::from_bytes(f.value(&buf)),
        ) else {
            continue;
        };
        h.append(name, value);
    }
    let keep_alive = head.keep_alive && !matches!(head.body, BodyKind::Close);
    let early = buf.split_off(head.len);
    let remaining = Remaining::of(head.body);
    let body = UpstreamBody {
        up: Some(up),
        remaining,
        early,
        keep_alive,
        turn: None,
        trailers: Vec::new(),
    };
    Ok(resp.map(|()| body))
}

fn too_large() -> Failed {
    Failed::Io(io::Error::other("a response head larger than 16 KiB"))
}

/// A response body read from the upstream connection as the client takes
/// it, its framing removed (HTTP/2 frames its own). When it ends, the
/// connection goes back to the pool with the turn (if the upstream keeps
/// it open); dropped before its end, the connection closes.
pub struct UpstreamBody {
    up: Option<Upstream>,
    remaining: Remaining,
    /// Bytes read past the head, not yet passed on.
    early: Vec<u8>,
    keep_alive: bool,
    turn: Option<Turn>,
    /// A chunked body's trailer section as it came, until its end.
    trailers: Vec<u8>,
}

impl UpstreamBody {
    /// Holds `turn` until the body ends, and gives the connection back with
    /// it then.
    pub fn holding(mut self, turn: Turn) -> UpstreamBody {
        self.turn = Some(turn);
        self
    }

    /// The body has ended: the connection goes back, if it may.
    fn finish(&mut self) {
        let (Some(up), Some(turn)) = (self.up.take(), self.turn.take()) else {
            return;
        };
        if self.keep_alive && self.early.is_empty() {
            drop(turn.checkin(up));
        }
    }

    /// The payload of `data` as far as the body goes; what follows its end
    /// is left in `rest` (an upstream that sent more than its response
    /// does not keep its connection).
    fn payload(
        remaining: &mut Remaining,
        data: &[u8],
        rest: &mut usize,
        trailers: &mut Vec<u8>,
    ) -> Result<Bytes, RelayError> {
        let bad = |e| RelayError::Upstream(format!("a malformed chunked body: {e:?}"));
        match remaining {
            Remaining::Chunked(c) => {
                let mut out = BytesMut::new();
                let mut at = 0;
                while at < data.len() && !c.done() {
                    at += match c.step(&data[at..]).map_err(bad)? {
                        Piece::Data(n) => {
                            out.extend_from_slice(&data[at..at + n]);
                            n
                        }
                        Piece::Trailers(n) => {
                            trailers.extend_from_slice(&data[at..at + n]);
                            n
                        }
                        Piece::Framing(n) => n,
                    };
                }
                *rest = data.len() - at;
                Ok(out.freeze())
            }
            _ => {
                let n = remaining.take(data).map_err(bad)?;
                *rest = data.len() - n;
                Ok(Bytes::copy_from_slice(&data[..n]))
            }
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = RelayError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, RelayError>>> {
        let this = self.get_mut();
        loop {
            if this.remaining.done() {
                this.finish();
                if let Some(t) = this.take_trailers() {
                    return Poll::Ready(Some(Ok(Frame::trailers(t))));
                }
                return Poll::Ready(None);
            }
            if !this.early.is_empty() {
                let mut rest = 0;
                let early = std::mem::take(&mut this.early);
                let data = match Self::payload(&mut this.remaining, &early, &mut rest, &mut this.trailers) {
                    Ok(d) => d,
                    Err(e) => return this.fail(e),
                };
                if rest > 0 {
                    this.early = early[early.len() - rest..].to_vec();
                }
                if !data.is_empty() {
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                continue;
            }
            let Some(up) = this.up.as_mut() else {
                return Poll::Ready(None);
            };
            let (remaining, trailers) = (&mut this.remaining, &mut this.trailers);
            let mut rest = 0;
            let read = poll_read_with(cx, &mut up.stream, COPY, &mut |bytes: &[u8]| {
                if bytes.is_empty() {
                    return Ok(None);
                }
                let data = Self::payload(remaining, bytes, &mut rest, trailers)?;
                Ok(Some((data, bytes[bytes.len() - rest..].to_vec())))
            });
            match read {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return this.fail(RelayError::Upstream(e.to_string())),
                Poll::Ready(Ok(Err(e))) => return this.fail(e),
                Poll::Ready(Ok(Ok(None))) => {
                    // The upstream closed: the end of a body read to the
                    // close, else a body cut short.
                    if matches!(this.remaining, Remaining::Close) {
                        this.remaining = Remaining::None;
                        this.keep_alive = false;
                        continue;
                    }
                    return this.fail(RelayError::Upstream("the upstream closed inside the body".into()));
                }
                Poll::Ready(Ok(Ok(Some((data, after))))) => {
                    this.early = after;
                    if !data.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.remaining.done() && self.trailers.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        match self.remaining {
            Remaining::None => SizeHint::with_exact(0),
            Remaining::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // hyper drops a body whose end it saw (`is_end_stream`) without
        // asking for the end: the connection goes back all the same.
        if self.remaining.done() {
            self.finish();
        }
    }
}

impl UpstreamBody {
    /// The trailer fields of a chunked body that had any.
    fn take_trailers(&mut self) -> Option<HeaderMap> {
        if self.trailers.is_empty() {
            return None;
        }
        let section = std::mem::take(&mut self.trailers);
        let mut fields = [httparse::EMPTY_HEADER; 64];
        let Ok(httparse::Status::Complete((_, fields))) = httparse::parse_headers(&section, &mut fields) else {
            return None;
        };
        let mut map = HeaderMap::new();
        for f in fields.iter() {
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(f.name.as_bytes()),
                HeaderValue::from_bytes(f.value),
            ) {
                map.append(n, v);
            }
        }
        (!map.is_empty()).then_some(map)
    }

    fn fail(&mut self, e: RelayError) -> Poll<Option<Result<Frame<Bytes>, RelayError>>> {
        // The connection closes; the turn goes back.
        self.up = None;
        self.turn = None;
        self.remaining = Remaining::None;
        Poll::Ready(Some(Err(e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::pool::BoundedPool;
    use crate::proxy::Connector;
    use hyper::body::Incoming;
    use hyper_util::rt::TokioIo;
    use std::time::Duration;
    use tokio::io::AsyncReadExt;
    use tokio::net::{TcpListener, TcpStream};

    /// A request as hyper's server reads it from `raw` (its body an
    /// `Incoming`, as the codec hands it over), and the client's side of
    /// that connection, to send more of the body on.
    async fn incoming(raw: &[u8]) -> (Request<Incoming>, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (server, _) = l.accept().await.unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let tx = std::sync::Mutex::new(Some(tx));
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                if let Some(tx) = tx.lock().unwrap().take() {
                    let _ = tx.send(req);
                }
                std::future::pending::<Result<Response<http_body_util::Empty<Bytes>>, std::convert::Infallible>>()
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(server), svc)
                .await;
        });
        client.write_all(raw).await.unwrap();
        (rx.await.unwrap(), client)
    }

    /// `req` as the HTTP/2 codec passes it on: its body reclaimable.
    fn reclaimable(req: Request<Incoming>) -> Request<Reclaimable> {
        let (parts, body) = req.into_parts();
        Request::from_parts(parts, Reclaimable::new(body, None).0)
    }

    /// A connection to a listener of the test's own: the stickyd side and
    /// the app's.
    async fn upstream() -> (Upstream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up = Upstream::dial(&Connector::Tcp, l.local_addr().unwrap(), Duration::from_secs(1), false)
            .await
            .unwrap();
        let (app, _) = l.accept().await.unwrap();
        (up, app)
    }

    /// What the app reads until `end`.
    async fn read_until(s: &mut TcpStream, end: &[u8]) -> Vec<u8> {
        read_while(s, |got| !got.windows(end.len()).any(|w| w == end)).await
    }

    /// What the app reads while `more` says so.
    async fn read_while(s: &mut TcpStream, more: impl Fn(&[u8]) -> bool) -> Vec<u8> {
        let mut got = Vec::new();
        let mut b = [0u8; 4096];
        while more(&got) {
            let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b))
                .await
                .expect("in time")
                .unwrap();
            assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&b[..n]);
        }
        got
    }

    /// A body of unknown length goes chunked, with the trailer fields the
    /// request declared and no other; a body with a length goes as it is
    /// and ends with its last byte.
    #[tokio::test]
    async fn request_bodies_are_framed_for_http1() {
        let (req, _client) = incoming(
            b"POST /up?x=1 HTTP/1.1\r\nhost: t\r\ntrailer: x-sum\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nx-sum: 3\r\nx-other: 1\r\n\r\n",
        )
        .await;
        let mut req = reclaimable(req);
        req.headers_mut().remove("transfer-encoding");
        let (up, mut app) = upstream().await;
        let sent = tokio::spawn(exchange(up, req));
        let got = read_while(&mut app, |got| !got.ends_with(b"0\r\nx-sum: 3\r\n\r\n")).await;
        let text = String::from_utf8_lossy(&got);
        assert!(
            text.starts_with(
                "POST /up?x=1 HTTP/1.1\r\nhost: t\r\ntrailer: x-sum\r\ntransfer-encoding: chunked\r\n\r\n"
            ),
            "{text}"
        );
        assert!(text.ends_with("\r\n\r\n3\r\nabc\r\n0\r\nx-sum: 3\r\n\r\n"), "{text}");
        app.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").await.unwrap();
        assert_eq!(sent.await.unwrap().ok().unwrap().status(), 204);

        // A length: the bytes as they are, and the request is done at its
        // last byte although its stream stays open.
        let (req, mut client) = incoming(b"POST /len HTTP/1.1\r\nhost: t\r\ncontent-length: 6\r\n\r\nabc").await;
        let (up, mut app) = upstream().await;
        let sent = tokio::spawn(exchange(up, reclaimable(req)));
        let got = read_until(&mut app, b"abc").await;
        assert_eq!(
            &got[..],
            b"POST /len HTTP/1.1\r\nhost: t\r\ncontent-length: 6\r\n\r\nabc"
        );
        client.write_all(b"def").await.unwrap();
        read_until(&mut app, b"def").await;
        app.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            .await
            .unwrap();
        let resp = sent.await.unwrap().ok().unwrap();
        assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "ok");
    }

    /// A chunked response loses its framing (HTTP/2 frames its own) and
    /// keeps its trailers; interim responses are skipped; once the body
    /// ends, the connection goes back to the pool with the turn.
    #[tokio::test]
    async fn responses_are_read_to_their_end_and_the_connection_goes_back() {
        let (req, _client) = incoming(b"GET /c HTTP/1.1\r\nhost: t\r\n\r\n").await;
        let (up, mut app) = upstream().await;
        let addr = app.local_addr().unwrap();
        let pool = BoundedPool::new(1, Duration::from_millis(100), Duration::from_secs(60));
        let (turn, none) = pool.checkout(addr).await.unwrap();
        assert!(none.is_none());
        let sent = tokio::spawn(exchange(up, reclaimable(req)));
        read_until(&mut app, b"\r\n\r\n").await;
        app.write_all(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nx-a: 1\r\n\r\n3\r\nabc\r\n",
        )
        .await
        .unwrap();
        let resp = sent.await.unwrap().ok().unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-a"], "1");
        let mut body = resp.into_body().holding(turn);
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "abc");
        // The turn is held while the body runs.
        assert!(pool.checkout(addr).await.is_none());
        app.write_all(b"2\r\nde\r\n0\r\nx-sum: 5\r\n\r\n").await.unwrap();
        assert_eq!(body.frame().await.unwrap().unwrap().into_data().unwrap(), "de");
        let trailers = body.frame().await.unwrap().unwrap().into_trailers().unwrap();
        assert_eq!(trailers["x-sum"], "5");
        assert!(body.frame().await.is_none());
        let (_turn, back) = pool.checkout(addr).await.unwrap();
        assert!(back.is_some(), "the connection did not go back");
    }

    /// A body cut short fails, and its connection is not reused; one that
    /// runs to the close ends there.
    #[tokio::test]
    async fn a_body_cut_short_fails_and_one_to_the_close_ends() {
        for (answer, whole) in [
            (&b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc"[..], false),
            (b"HTTP/1.1 200 OK\r\n\r\nabc", true),
        ] {
            let (req, _client) = incoming(b"GET / HTTP/1.1\r\nhost: t\r\n\r\n").await;
            let (up, mut app) = upstream().await;
            let sent = tokio::spawn(exchange(up, reclaimable(req)));
            read_until(&mut app, b"\r\n\r\n").await;
            app.write_all(answer).await.unwrap();
            drop(app);
            let body = sent.await.unwrap().ok().unwrap().into_body();
            let got = body.collect().await;
            assert_eq!(got.is_ok(), whole, "{:?}", String::from_utf8_lossy(answer));
            if whole {
                assert_eq!(got.unwrap().to_bytes(), "abc");
            }
        }
    }

    /// Closed before any byte of the response: Closed (the replay rule may
    /// send a safe request elsewhere); a garbled head: Io.
    #[tokio::test]
    async fn failures_say_how_far_the_exchange_went() {
        let (req, _client) = incoming(b"GET / HTTP/1.1\r\nhost: t\r\n\r\n").await;
        let (up, mut app) = upstream().await;
        let sent = tokio::spawn(exchange(up, reclaimable(req)));
        read_until(&mut app, b"\r\n\r\n").await;
        drop(app);
        assert!(matches!(sent.await.unwrap(), Err(Failed::Closed(_))));

        let (req, _client) = incoming(b"GET / HTTP/1.1\r\nhost: t\r\n\r\n").await;
        let (up, mut app) = upstream().await;
        let sent = tokio::spawn(exchange(up, reclaimable(req)));
        read_until(&mut app, b"\r\n\r\n").await;
        app.write_all(b"NOT HTTP\r\n\r\n").await.unwrap();
        assert!(matches!(sent.await.unwrap(), Err(Failed::Io(_))));
    }

    /// A response head past 16 KiB, or one cut short by the close, is a
    /// failure of the upstream after the request went (Io), not a close
    /// before any byte (Closed, which a safe request may be replayed on).
    #[tokio::test]
    async fn oversized_and_cut_heads_fail_as_io() {
        let big = format!("HTTP/1.1 200 OK\r\nx-big: {}\r\n", "a".repeat(MAX_RESPONSE_HEAD));
        let small = "HTTP/1.1 200 OK\r\nx-a: 1\r\n".to_string();
        let mut open = Vec::new();
        for (answer, close) in [(big, false), (small, true)] {
            let (req, _client) = incoming(b"GET / HTTP/1.1\r\nhost: t\r\n\r\n").await;
            let (up, mut app) = upstream().await;
            let sent = tokio::spawn(exchange(up, reclaimable(req)));
            read_until(&mut app, b"\r\n\r\n").await;
            app.write_all(answer.as_bytes()).await.unwrap();
            if close {
                drop(app);
            } else {
                // Held open: the head's size alone ends the wait.
                open.push(app);
            }
            let got = tokio::time::timeout(Duration::from_secs(5), sent)
                .await
                .expect("no answer")
                .unwrap();
            assert!(
                matches!(got, Err(Failed::Io(_))),
                "{} bytes, closed {close}",
                answer.len()
            );
        }
    }

    /// A head of 16 KiB is read; one byte more is a failure, whether it
    /// arrives whole or in pieces.
    #[tokio::test]
    async fn the_head_limit_is_exact() {
        for (len, ok) in [(MAX_RESPONSE_HEAD, true), (MAX_RESPONSE_HEAD + 1, false)] {
            let (req, _client) = incoming(b"GET / HTTP/1.1\r\nhost: t\r\n\r\n").await;
            let (up, mut app) = upstream().await;
            let sent = tokio::spawn(exchange(up, reclaimable(req)));
            read_until(&mut app, b"\r\n\r\n").await;
            let start = "HTTP/1.1 200 OK\r\ncontent-length: 0\r\nx-big: ";
            let head = format!("{start}{}\r\n\r\n", "a".repeat(len - start.len() - 4));
            assert_eq!(head.len(), len);
            app.write_all(head.as_bytes()).await.unwrap();
            let got = tokio::time::timeout(Duration::from_secs(5), sent)
                .await
                .expect("an answer")
                .unwrap();
            assert_eq!(got.is_ok(), ok, "a head of {len} bytes");
            assert!(ok || matches!(got, Err(Failed::Io(_))));
        }
    }

    /// The head limit counts every byte of the head, however it arrives:
    /// 100 bytes first, then the rest, so that no read ends at exactly 16 KiB
    /// and the whole head (50 bytes past the limit) comes in one read.
    #[tokio::test]
    async fn a_head_past_the_limit_fails_whatever_its_pieces() {
        let (req, _client) = incoming(b"GET / HTTP/1.1\r\nhost: t\r\n\r\n").await;
        let (up, mut app) = upstream().await;
        let sent = tokio::spawn(exchange(up, reclaimable(req)));
        read_until(&mut app, b"\r\n\r\n").await;
        let start = "HTTP/1.1 200 OK\r\ncontent-length: 0\r\nx-big: ";
        let head = format!(
            "{start}{}\r\n\r\n",
            "a".repeat(MAX_RESPONSE_HEAD + 50 - start.len() - 4)
        );
        app.write_all(&head.as_bytes()[..100]).await.unwrap();
        // The first read takes the 100 bytes alone (it waits for them).
        tokio::time::sleep(Duration::from_millis(50)).await;
        app.write_all(&head.as_bytes()[100..]).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), sent)
            .await
            .expect("the head's size ends the wait")
            .unwrap();
        assert!(matches!(got, Err(Failed::Io(_))));
    }

    /// A response that says `Connection: close` (or an HTTP/1.0 one) does
    /// not give its connection back; a keep-alive one does.
    #[tokio::test]
    async fn a_connection_the_app_closes_after_the_response_is_not_reused() {
        for (answer, reused) in [
            (
                &b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"[..],
                false,
            ),
            (b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok", false),
            (b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", true),
        ] {
            let (req, _client) = incoming(b"GET / HTTP/1.1\r\nhost: t\r\n\r\n").await;
            let (up, mut app) = upstream().await;
            let addr = app.local_addr().unwrap();
            let pool = BoundedPool::new(1, Duration::from_millis(100), Duration::from_secs(60));
            let (turn, _) = pool.checkout(addr).await.unwrap();
            let sent = tokio::spawn(exchange(up, reclaimable(req)));
            read_until(&mut app, b"\r\n\r\n").await;
            app.write_all(answer).await.unwrap();
            let resp = sent.await.unwrap().ok().unwrap();
            let minor = if answer.starts_with(b"HTTP/1.0") {
                Version::HTTP_10
            } else {
                Version::HTTP_11
            };
            assert_eq!(resp.version(), minor);
            let body = resp.into_body().holding(turn);
            assert_eq!(body.collect().await.unwrap().to_bytes(), "ok");
            let (_turn, back) = pool.checkout(addr).await.unwrap();
            assert_eq!(back.is_some(), reused, "{:?}", String::from_utf8_lossy(answer));
        }
    }
}
