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
