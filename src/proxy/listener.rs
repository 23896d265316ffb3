//! The listener: accepts connections, serves HTTP/1.1 and h2c on each with
//! hyper-util's auto builder, and shuts down gracefully.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use super::{handle, ConnInfo, Shared};

fn builder(shared: &Shared) -> auto::Builder<TokioExecutor> {
    let cfg = &shared.cfg;
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        // Slowloris: the whole request head must arrive in this time.
        .header_read_timeout(cfg.header_read_timeout)
        // A head larger than this gets 431.
        .max_buf_size(cfg.max_header_bytes)
        .max_headers(cfg.max_headers)
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(cfg.max_header_bytes as u32)
        .max_concurrent_streams(256)
        .keep_alive_interval(Some(Duration::from_secs(30)));
    b
}

/// Phases of the listener's shutdown, driven by [`crate::sidecar`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Serving,
    /// Stop accepting, finish in-flight requests.
    Closing,
}

/// Serves connections from `listener` until `phase` turns to `Closing`,
/// then lets in-flight requests finish within `drain_timeout`.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, mut phase: watch::Receiver<Phase>) {
    let builder = Arc::new(builder(&shared));
    let graceful = GracefulShutdown::new();
    let limit = Arc::new(Semaphore::new(shared.cfg.max_connections));
    loop {
        let accepted = tokio::select! {
            biased;
            _ = phase.changed() => break,
            a = listener.accept() => a,
        };
        let (stream, remote) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            // Past STICKYD_MAX_CONNECTIONS: close at once (a reset for the
            // client, which its load balancer retries elsewhere).
            shared.metrics.connections_refused.inc();
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let info = Arc::new(ConnInfo::new(remote));
        let svc_shared = shared.clone();
        let service = service_fn(move |req: hyper::Request<Incoming>| {
            let s = svc_shared.clone();
            let info = info.clone();
            async move { Ok::<_, Infallible>(handle(s, info, req).await) }
        });
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let metrics = shared.metrics.clone();
        tokio::spawn(async move {
            metrics.connections_open.inc();
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(error = %e, %remote, "connection ended with an error");
            }
            metrics.connections_open.dec();
            drop(permit);
        });
    }
    drop(listener);
    let open = graceful.count();
    tracing::info!(open, "stopped accepting; finishing in-flight requests");
    let timeout = shared.cfg.drain_timeout;
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("all connections closed"),
        _ = tokio::time::sleep(timeout) => tracing::warn!(?timeout, "STICKYD_DRAIN_TIMEOUT reached; closing the remaining connections"),
    }
    shared.draining.store(true, Ordering::Relaxed);
}
