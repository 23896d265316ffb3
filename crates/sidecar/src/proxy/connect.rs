//! How upstream connections are opened: over TCP, or, where a test puts
//! one in, by a function of its own that returns the stream (one that
//! never completes stands for a black-holed peer; one that reports each
//! dial tells a test on tokio's paused clock when a connect timer started).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;

/// The pause before dialling the app once more after it refused a
/// connection. HAProxy waits min(`timeout connect`, 1 s); the app in this
/// pod answers a dial at once, and a request that waits longer for it only
/// delays its fallback to a peer.
pub const REDIAL: Duration = Duration::from_millis(100);

/// A dial of a test's own.
pub type Dial = dyn Fn(SocketAddr) -> Pin<Box<dyn Future<Output = io::Result<TcpStream>> + Send>> + Send + Sync;

/// Opens the data path's own upstream connections (the shared hyper pools
/// for HTTP/2 dial over TCP regardless).
#[derive(Clone, Default)]
pub enum Connector {
    #[default]
    Tcp,
    With(Arc<Dial>),
}

impl Connector {
    /// A connector that opens every connection with `dial`.
    pub fn with<F, Fut>(dial: F) -> Connector
    where
        F: Fn(SocketAddr) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = io::Result<TcpStream>> + Send + 'static,
    {
        Connector::With(Arc::new(move |addr| Box::pin(dial(addr))))
    }

    /// As [`Connector::connect`], and once more [`REDIAL`] after a refusal
    /// when `again`: an app that refused a connection may be re-binding its
    /// listener (HAProxy's `retries`, with its turn-around pause).
    pub async fn connect_again(&self, addr: SocketAddr, timeout: Duration, again: bool) -> io::Result<TcpStream> {
        match self.connect(addr, timeout).await {
            Err(e) if again && e.kind() == io::ErrorKind::ConnectionRefused => {
                tokio::time::sleep(REDIAL.min(timeout)).await;
                self.connect(addr, timeout).await
            }
            r => r,
        }
    }

    /// A connection to `addr`, within `timeout` (STICKYD_CONNECT_TIMEOUT).
    pub async fn connect(&self, addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
        let connecting = async {
            match self {
                Connector::Tcp => TcpStream::connect(addr).await,
                Connector::With(dial) => dial(addr).await,
            }
        };
        let stream = tokio::time::timeout(timeout, connecting)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timeout"))??;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A connector whose first `refusals` dials are refused, then connects
    /// to `addr`; and how many dials it saw.
    fn refusing(refusals: usize, kind: io::ErrorKind) -> (Connector, Arc<AtomicUsize>) {
        let dials = Arc::new(AtomicUsize::new(0));
        let d = dials.clone();
        let c = Connector::with(move |addr| {
            let n = d.fetch_add(1, Ordering::SeqCst);
            async move {
                if n < refusals {
                    return Err(io::Error::from(kind));
                }
                TcpStream::connect(addr).await
            }
        });
        (c, dials)
    }

    /// The app refusing a connection is dialled once more after REDIAL,
    /// never twice more; other failures, and peers, are not dialled again.
    #[tokio::test]
    async fn a_refused_app_is_dialled_once_more_after_a_pause() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let t = Duration::from_secs(1);
        let (c, dials) = refusing(1, io::ErrorKind::ConnectionRefused);
        let started = tokio::time::Instant::now();
        assert!(c.connect_again(addr, t, true).await.is_ok());
        assert_eq!(dials.load(Ordering::SeqCst), 2);
        assert!(started.elapsed() >= REDIAL, "no pause before the second dial");

        let (c, dials) = refusing(2, io::ErrorKind::ConnectionRefused);
        assert!(c.connect_again(addr, t, true).await.is_err());
        assert_eq!(dials.load(Ordering::SeqCst), 2, "dialled more than once more");

        let (c, dials) = refusing(1, io::ErrorKind::ConnectionRefused);
        assert!(c.connect_again(addr, t, false).await.is_err());
        assert_eq!(dials.load(Ordering::SeqCst), 1, "a peer dialled again");

        let (c, dials) = refusing(1, io::ErrorKind::ConnectionReset);
        assert!(c.connect_again(addr, t, true).await.is_err());
        assert_eq!(
            dials.load(Ordering::SeqCst),
            1,
            "dialled again after a failure other than a refusal"
        );
    }
}
