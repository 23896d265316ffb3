//! Body types of the data path: both bodies of an exchange relayed under
//! STICKYD_BODY_READ_TIMEOUT ([`super::idle`]) with their trailers
//! filtered, the request's also handed back whole should its forward fail
//! to connect.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use tokio::sync::oneshot;
use tokio::time::Sleep;

use super::h1::client::UpstreamBody;
use super::headers;
use crate::metrics::Metrics;

/// What the proxy answers with: an upstream's body, relayed, or a small body
/// of its own (errors, the 503 of `reject`).
pub type ResponseBody = Either<Relayed<Source>, Full<Bytes>>;

/// An upstream's response body: read by hyper's client (HTTP/2, upgrades,
/// a peer's bound connection), or by stickyd's HTTP/1.1 client
/// ([`UpstreamBody`]).
pub enum Source {
    Hyper(Incoming),
    H1(UpstreamBody),
}

impl Body for Source {
    type Data = Bytes;
    type Error = RelayError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, RelayError>>> {
        match self.get_mut() {
            Source::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(RelayError::from),
            Source::H1(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Source::Hyper(b) => b.is_end_stream(),
            Source::H1(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Source::Hyper(b) => b.size_hint(),
            Source::H1(b) => b.size_hint(),
        }
    }
}

/// A short text body.
pub fn text(s: &'static str) -> ResponseBody {
    Either::Right(Full::new(Bytes::from_static(s.as_bytes())))
}

/// No body.
pub fn empty() -> ResponseBody {
    Either::Right(Full::new(Bytes::new()))
}

/// Why a relayed body failed.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// Its sender's side failed.
    #[error(transparent)]
    Body(#[from] hyper::Error),
    /// No byte of it came for STICKYD_BODY_READ_TIMEOUT.
    #[error("no byte of the body for STICKYD_BODY_READ_TIMEOUT")]
    Stalled,
    /// An upstream's HTTP/1.1 connection failed inside the body, or framed
    /// it wrong.
    #[error("{0}")]
    Upstream(String),
}

/// STICKYD_BODY_READ_TIMEOUT over one body: how long it may wait for its
/// sender, where it is counted when it stalls, and (a request's) the flag
/// that tells the exchange why its upstream failed.
pub struct Watch {
    limit: Duration,
    metrics: Arc<Metrics>,
    direction: &'static str,
    stalled: Option<Arc<AtomicBool>>,
}

impl Watch {
    /// A request body's watch, and the flag it sets when the body stalls.
    pub fn request(limit: Duration, metrics: Arc<Metrics>) -> (Watch, Arc<AtomicBool>) {
        let stalled = Arc::new(AtomicBool::new(false));
        let watch = Watch {
            limit,
            metrics,
            direction: "request",
            stalled: Some(stalled.clone()),
        };
        (watch, stalled)
    }

    /// A response body's watch.
    pub fn response(limit: Duration, metrics: Arc<Metrics>) -> Watch {
        Watch {
            limit,
            metrics,
            direction: "response",
            stalled: None,
        }
    }
}

/// One body's idle deadline. The timer is made when the body first waits
/// for its sender (a body that never waits holds none) and moved on by
/// every frame; only the time the body waits counts, not the time the
/// receiving side takes to ask for more.
struct Idle {
    /// None: no limit (a stream, or after it fired).
    watch: Option<Watch>,
    timer: Option<Pin<Box<Sleep>>>,
    /// A frame came since the timer was set.
    moved: bool,
}

impl Idle {
    fn new(watch: Option<Watch>) -> Idle {
        Idle {
            watch,
            timer: None,
            moved: false,
        }
    }

    /// The next frame of `body`, its trailers without the fields that never
    /// go on as they came; an error once it has waited for the whole limit.
    fn poll_frame<B>(
        &mut self,
        body: Pin<&mut B>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, RelayError>>>
    where
        B: Body<Data = Bytes> + ?Sized,
        RelayError: From<B::Error>,
    {
        match body.poll_frame(cx) {
            Poll::Ready(Some(Ok(mut frame))) => {
                self.moved = true;
                if let Some(trailers) = frame.trailers_mut() {
                    headers::strip_trailers(trailers);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(end) => Poll::Ready(end.map(|r| r.map_err(RelayError::from))),
            Poll::Pending => self.poll_stalled(cx),
        }
    }

    /// The body waits for its sender.
    fn poll_stalled(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, RelayError>>> {
        let Some(watch) = &self.watch else {
            return Poll::Pending;
        };
        let timer = match &mut self.timer {
            Some(t) => {
                if self.moved {
                    t.as_mut().reset(tokio::time::Instant::now() + watch.limit);
                }
                t
            }
            None => self.timer.insert(Box::pin(tokio::time::sleep(watch.limit))),
        };
        self.moved = false;
        ready!(timer.as_mut().poll(cx));
        watch.metrics.body_timeout(watch.direction);
        if let Some(flag) = &watch.stalled {
            flag.store(true, Ordering::Release);
        }
        self.watch = None;
        self.timer = None;
        Poll::Ready(Some(Err(RelayError::Stalled)))
    }
}

/// An upstream's response body on its way to the client, or a request
/// body on its way upstream ([`Idle`]).
pub struct Relayed<B = Incoming> {
    inner: B,
    idle: Idle,
    /// A response body served here holds its session active until it is
    /// done with ([`crate::sessions::Hold`]).
    _hold: Option<crate::sessions::Hold>,
}

impl<B> Relayed<B> {
    pub fn new(inner: B, watch: Option<Watch>) -> Relayed<B> {
        Relayed {
            inner,
            idle: Idle::new(watch),
            _hold: None,
        }
    }

    /// The body holds `hold` until it is dropped.
    pub fn holding(mut self, hold: Option<crate::sessions::Hold>) -> Relayed<B> {
        self._hold = hold;
        self
    }
}

impl<B> Body for Relayed<B>
where
    B: Body<Data = Bytes> + Unpin,
    RelayError: From<B::Error>,
{
    type Data = Bytes;
    type Error = RelayError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, RelayError>>> {
        let this = self.get_mut();
        this.idle.poll_frame(Pin::new(&mut this.inner), cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A request body on its way upstream ([`Relayed`]), which hands itself
/// back if it is dropped before the first poll, so that a request whose
/// forwarding failed to connect can still be served locally, body and all.
/// Once polled, it is never given back: a request whose bytes went out is
/// never replayed.
pub struct Reclaimable {
    inner: Option<Relayed>,
    back: Option<oneshot::Sender<Incoming>>,
}

impl Reclaimable {
    pub fn new(body: Incoming, watch: Option<Watch>) -> (Reclaimable, oneshot::Receiver<Incoming>) {
        let (tx, rx) = oneshot::channel();
        (
            Reclaimable {
                inner: Some(Relayed::new(body, watch)),
                back: Some(tx),
            },
            rx,
        )
    }

    /// The body, if it was never polled (and so is whole).
    pub fn into_inner(mut self) -> Option<Incoming> {
        self.back.take()?;
        self.inner.take().map(|r| r.inner)
    }
}

impl Drop for Reclaimable {
    fn drop(&mut self) {
        if let (Some(back), Some(body)) = (self.back.take(), self.inner.take()) {
            let _ = back.send(body.inner);
        }
    }
}

impl Body for Reclaimable {
    type Data = Bytes;
    type Error = RelayError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, RelayError>>> {
        let this = self.get_mut();
        // Polled: the body now belongs to the upstream connection for good.
        this.back = None;
        match this.inner.as_mut() {
            Some(b) => Pin::new(b).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.as_ref().map(|b| b.size_hint()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::DirectionLabels;
    use futures_util::FutureExt;
    use http::HeaderMap;
    use http_body_util::StreamBody;
    use tokio::sync::mpsc;
    use tokio::time::advance;

    type Sent = Result<Frame<Bytes>, hyper::Error>;

    /// A body fed by hand, watched by `idle`: `next()` polls it once.
    struct Fed {
        tx: mpsc::UnboundedSender<Sent>,
        body: Pin<Box<dyn Body<Data = Bytes, Error = hyper::Error> + Send>>,
        idle: Idle,
    }

    impl Fed {
        fn new(watch: Option<Watch>) -> Fed {
            let (tx, mut rx) = mpsc::unbounded_channel::<Sent>();
            let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
            Fed {
                tx,
                body: Box::pin(StreamBody::new(stream)),
                idle: Idle::new(watch),
            }
        }

        fn next(&mut self) -> Option<Option<Result<Frame<Bytes>, RelayError>>> {
            let (idle, body) = (&mut self.idle, &mut self.body);
            std::future::poll_fn(|cx| idle.poll_frame(body.as_mut(), cx)).now_or_never()
        }
    }

    fn stalls(m: &Metrics, direction: &'static str) -> u64 {
        m.body_timeouts.get_or_create(&DirectionLabels { direction }).get()
    }

    /// On tokio's paused clock: frames 900 ms apart, for longer than the
    /// 1 s limit, are never cut; trailers lose stickyd's own fields; then
    /// a body that waits for its sender fails when the second ends, not a
    /// millisecond before, counted and flagged. Unwatched, it never does.
    #[tokio::test(start_paused = true)]
    async fn a_body_fails_once_it_waited_the_whole_limit_and_not_while_it_moves() {
        let metrics = Arc::new(Metrics::default());
        let (watch, stalled) = Watch::request(Duration::from_secs(1), metrics.clone());
        let mut fed = Fed::new(Some(watch));
        assert!(fed.next().is_none());
        for i in 0..4u8 {
            advance(Duration::from_millis(900)).await;
            assert!(fed.next().is_none(), "cut after {i} frames");
            fed.tx.send(Ok(Frame::data(Bytes::from(vec![i])))).unwrap();
            let frame = fed.next().expect("a frame").expect("not the end").expect("no error");
            assert_eq!(frame.into_data().unwrap(), Bytes::from(vec![i]));
            assert!(fed.next().is_none());
        }
        let mut trailers = HeaderMap::new();
        trailers.insert("x-stickyd-hop", "forged".parse().unwrap());
        trailers.insert("x-stickyd-session", "forged".parse().unwrap());
        trailers.insert("x-sum", "1".parse().unwrap());
        fed.tx.send(Ok(Frame::trailers(trailers))).unwrap();
        let frame = fed.next().unwrap().unwrap().unwrap();
        let got = frame.into_trailers().unwrap();
        assert_eq!(got.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["x-sum"]);
        assert!(fed.next().is_none());
        advance(Duration::from_millis(999)).await;
        assert!(fed.next().is_none(), "cut before the limit");
        assert!(!stalled.load(Ordering::Acquire));
        advance(Duration::from_millis(1)).await;
        assert!(matches!(fed.next(), Some(Some(Err(RelayError::Stalled)))));
        assert!(stalled.load(Ordering::Acquire));
        assert_eq!((stalls(&metrics, "request"), stalls(&metrics, "response")), (1, 0));

        // A response's watch counts as one; unwatched, a body waits on.
        let mut fed = Fed::new(Some(Watch::response(Duration::from_secs(1), metrics.clone())));
        let mut free = Fed::new(None);
        assert!(fed.next().is_none() && free.next().is_none());
        advance(Duration::from_secs(1)).await;
        assert!(matches!(fed.next(), Some(Some(Err(RelayError::Stalled)))));
        assert_eq!(stalls(&metrics, "response"), 1);
        advance(Duration::from_secs(3600)).await;
        assert!(free.next().is_none());
        free.tx.send(Ok(Frame::data(Bytes::from_static(b"late")))).unwrap();
        assert!(matches!(free.next(), Some(Some(Ok(_)))));
        // Its sender gone, the body ends.
        free.tx = mpsc::unbounded_channel().0;
        assert!(matches!(free.next(), Some(None)));
    }
}
