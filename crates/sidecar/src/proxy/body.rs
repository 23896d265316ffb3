//! Body types of the data path.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use tokio::sync::oneshot;

/// What the proxy answers with: a streamed upstream body or a small body of
/// its own (errors, the 503 of `reject`).
pub type ResponseBody = Either<Incoming, Full<Bytes>>;

/// A short text body.
pub fn text(s: &'static str) -> ResponseBody {
    Either::Right(Full::new(Bytes::from_static(s.as_bytes())))
}

/// A request body that hands itself back if it is dropped before the first
/// poll, so that a request whose forwarding failed to connect can still be
/// served locally, body and all. Once polled, it is never given back: a
/// request whose bytes went out is never replayed.
pub struct Reclaimable {
    inner: Option<Incoming>,
    back: Option<oneshot::Sender<Incoming>>,
}

impl Reclaimable {
    pub fn new(body: Incoming) -> (Reclaimable, oneshot::Receiver<Incoming>) {
        let (tx, rx) = oneshot::channel();
        (
            Reclaimable {
                inner: Some(body),
                back: Some(tx),
            },
            rx,
        )
    }

    /// The body, if it was never polled (and so is whole).
    pub fn into_inner(mut self) -> Option<Incoming> {
        self.back.take()?;
        self.inner.take()
    }

    fn inner(self: Pin<&mut Self>) -> Option<Pin<&mut Incoming>> {
        let this = self.get_mut();
        // Polled: the body now belongs to the peer connection for good.
        this.back = None;
        this.inner.as_mut().map(Pin::new)
    }
}

impl Drop for Reclaimable {
    fn drop(&mut self) {
        if let (Some(back), Some(body)) = (self.back.take(), self.inner.take()) {
            let _ = back.send(body);
        }
    }
}

impl Body for Reclaimable {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.inner() {
            Some(b) => b.poll_frame(cx),
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
