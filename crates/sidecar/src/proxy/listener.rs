//! The listener: accepts connections, serves HTTP/1.1 and h2c on each with
//! hyper-util's auto builder, and shuts down gracefully: the connections are
//! tasks of a `TaskTracker`, told to stop by cancellation tokens.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::Interest;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{handle, ConnInfo, Shared};
use crate::config::UpstreamProtocol;
use crate::limits::HYPER_CONNECTION_COST;

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
    // Windows, send buffers and streams as the memory budget allows.
    let h2 = cfg.limits.budget.h2();
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(cfg.max_header_bytes as u32)
        .max_concurrent_streams(h2.max_concurrent_streams)
        .initial_stream_window_size(h2.stream_window)
        .initial_connection_window_size(h2.connection_window)
        .max_send_buf_size(h2.send_buffer)
        .keep_alive_interval(Some(Duration::from_secs(30)));
    b
}

/// The stages of stopping, driven by [`crate::sidecar`]: each a token that
/// is cancelled once, in this order.
#[derive(Clone, Default)]
pub struct Phases {
    /// SIGTERM: keep serving; HTTP/1 responses carry `Connection: close`,
    /// HTTP/2 connections get GOAWAY now, so clients move on.
    pub stopping: CancellationToken,
    /// Stop accepting, finish in-flight requests.
    pub closing: CancellationToken,
}

/// How long connections accepted at the last moment get to have their first
/// request read before idle connections are closed, on both codecs.
pub(super) const SETTLE: Duration = Duration::from_millis(300);

/// Keeps a timer due within half the header read timeout at all times.
///
/// Tokio wakes its I/O driver (an eventfd write, then one more `epoll_wait`)
/// whenever a timer is registered that is due before the earliest one the
/// driver went to sleep with. hyper registers a new header-read timer for
/// every request on a keep-alive connection; while a request waits for its
/// response, the earliest timer is often the 60 s response timeout, so each
/// request would cost two extra system calls. With a timer always due sooner
/// than any header-read timer, registering one never wakes the driver.
/// Measured: 8 system calls per proxied request become 6.
async fn heartbeat(header_read_timeout: Duration) {
    let period = (header_read_timeout / 2).max(Duration::from_millis(100));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Serves connections from `listener` until `phases.closing`, then lets
/// in-flight requests finish within STICKYD_DRAIN_TIMEOUT.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, phases: Phases) {
    let builder = Arc::new(builder(&shared));
    let _heartbeat = AbortOnDrop(tokio::spawn(heartbeat(shared.cfg.header_read_timeout)));
    let limit = Arc::new(Semaphore::new(shared.cfg.max_connections));
    let connections = TaskTracker::new();
    let mut closing = false;
    loop {
        let accepted = if closing {
            // Serve what the kernel already accepted: dropping the listener
            // would reset those connections, requests and all.
            match listener.accept().now_or_never() {
                Some(a) => a,
                None => break,
            }
        } else {
            tokio::select! {
                biased;
                _ = phases.closing.cancelled() => {
                    closing = true;
                    continue;
                }
                a = listener.accept() => a,
            }
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
            shared.metrics.shed_connection.inc();
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        connections.spawn(connection(
            stream,
            remote,
            shared.clone(),
            builder.clone(),
            phases.clone(),
            permit,
        ));
    }
    drop(listener);
    connections.close();
    tracing::info!("stopped accepting; finishing in-flight requests");
    let timeout = shared.cfg.drain_timeout + SETTLE;
    tokio::select! {
        _ = connections.wait() => tracing::info!("all connections closed"),
        _ = tokio::time::sleep(timeout) => tracing::warn!(?timeout, "STICKYD_DRAIN_TIMEOUT reached; closing the remaining connections"),
    }
    shared.stopping.store(true, Ordering::Relaxed);
}

/// Does the connection start with the HTTP/2 preface (h2c with prior
/// knowledge: `PRI * HTTP/2.0`)? Looks without reading. None: it closed.
///
/// Waits by readiness, never by a timer: a connection that has sent fewer
/// than the four bytes that tell (`P` starts POST, PUT and PATCH too) costs
/// nothing until its next segment comes. Each look runs inside `try_io`, so
/// that "not enough yet" clears the readiness it was taken on (unless a
/// segment came meanwhile, which leaves it set) and the next wait lasts
/// until the socket has something new; the bytes stay in the socket for
/// whoever reads them.
async fn h2_preface(stream: &TcpStream) -> Option<bool> {
    let mut b = [0u8; 4];
    loop {
        let ready = stream.ready(Interest::READABLE).await.ok()?;
        let looked = stream.try_io(Interest::READABLE, || match stream.peek(&mut b).now_or_never() {
            Some(Ok(n)) if n > 0 && b[0] == b'P' && n < 4 => Err(io::ErrorKind::WouldBlock.into()),
            Some(r) => r,
            // Readiness without bytes (spurious): wait again.
            None => Err(io::ErrorKind::WouldBlock.into()),
        });
        match looked {
            Ok(0) => return None,
            Ok(n) => return Some(&b[..n] == b"PRI "),
            // The client stopped sending before it said enough.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && ready.is_read_closed() => return None,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return None,
        }
    }
}

/// Serves one client connection until it ends, shutting it down gracefully
/// as the phases say: HTTP/1.x on stickyd's own path ([`super::h1`]), HTTP/2
/// and anything for an h2c app with hyper-util's auto builder.
async fn connection(
    stream: TcpStream,
    remote: SocketAddr,
    shared: Arc<Shared>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    phases: Phases,
    permit: OwnedSemaphorePermit,
) {
    // Waits for the close, then the settle time: a connection accepted at
    // the last moment gets to have its first request read.
    let settled = {
        let closing = phases.closing.clone();
        async move {
            closing.cancelled().await;
            tokio::time::sleep(SETTLE).await;
        }
    };
    tokio::pin!(settled);
    // A connection must send its first bytes within the header timeout, or
    // silent connections would hold STICKYD_MAX_CONNECTIONS slots. Stopping,
    // a connection that has sent nothing yet is closed after the settle time.
    let h2 = tokio::select! {
        r = tokio::time::timeout(shared.cfg.header_read_timeout, h2_preface(&stream)) => match r {
            Ok(Some(h2)) => h2,
            _ => return,
        },
        _ = &mut settled => return,
    };
    if !h2 && shared.cfg.upstream_protocol == UpstreamProtocol::Http1 {
        shared.metrics.connections_open.inc();
        super::h1::serve(stream, remote, shared.clone(), phases).await;
        shared.metrics.connections_open.dec();
        drop(permit);
        return;
    }
    // A hyper connection holds buffers of its own (BENCHMARKS.md, "Where
    // the memory goes"): the buffer budget pays for them, or the connection
    // is shed.
    let Some(_lease) = shared.cfg.limits.buffers.try_take(HYPER_CONNECTION_COST) else {
        shared.metrics.shed_connection.inc();
        if h2 {
            refuse_h2(stream).await;
        }
        return;
    };
    // Boxed: only HTTP/2 connections pay for hyper's connection state.
    Box::pin(with_hyper(stream, remote, shared, builder, phases, settled)).await;
    drop(permit);
}

/// The server's connection preface (SETTINGS, none changed) and a GOAWAY
/// that processed no stream (last stream 0, NO_ERROR): an HTTP/2 client
/// sends its requests again on a new connection, which its load balancer
/// may give another pod.
fn h2_refusal() -> Vec<u8> {
    const DEBUG: &[u8] = b"stickyd: at the memory budget";
    let mut f = vec![0, 0, 0, 0x4, 0, 0, 0, 0, 0];
    let len = 8 + DEBUG.len() as u32;
    f.extend_from_slice(&len.to_be_bytes()[1..]);
    f.extend_from_slice(&[0x7, 0, 0, 0, 0, 0]);
    f.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0]);
    f.extend_from_slice(DEBUG);
    f
}

/// Refuses a new HTTP/2 connection at the budget: [`h2_refusal`], then the
/// end of the stream, and whatever the client still sends is read and
/// dropped until it closes (closing with unread bytes would reset the
/// connection, and the client might never read the GOAWAY). Within a second.
async fn refuse_h2(mut stream: TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(&h2_refusal()).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 256];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<_, io::Error>(())
    })
    .await;
}

/// Serves a connection with hyper-util's auto builder (HTTP/2, or anything
/// for an h2c app).
async fn with_hyper(
    stream: TcpStream,
    remote: SocketAddr,
    shared: Arc<Shared>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    phases: Phases,
    mut settled: Pin<&mut impl Future<Output = ()>>,
) {
    let metrics = shared.metrics.clone();
    metrics.connections_open.inc();
    let info = Arc::new(ConnInfo::new(remote));
    let svc_info = info.clone();
    // Boxed: each stream's task holds its exchange by pointer, and hyper
    // moves the task's future a few times on its way to the runtime.
    let service =
        service_fn(move |req: hyper::Request<Incoming>| Box::pin(handle(shared.clone(), svc_info.clone(), req)));
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let mut shut = false;
    let mut drain_seen = false;
    let result = loop {
        tokio::select! {
            r = conn.as_mut() => break r,
            // HTTP/2 gets GOAWAY as the drain starts; HTTP/1 is told per
            // response, and closed when stopping.
            _ = phases.stopping.cancelled(), if !drain_seen => {
                drain_seen = true;
                if info.is_h2() && !shut {
                    conn.as_mut().graceful_shutdown();
                    shut = true;
                }
            }
            _ = settled.as_mut(), if !shut => {
                conn.as_mut().graceful_shutdown();
                shut = true;
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, %remote, "connection ended with an error");
    }
    metrics.connections_open.dec();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every open connection holds its task's state, so that state must be
    /// small: the exchange of a request is boxed while it runs, and hyper's
    /// state is paid only by the connections hyper serves. Measured: 1,096
    /// bytes; an unboxed exchange takes it past 2 KiB.
    #[tokio::test]
    async fn a_connection_between_requests_holds_little() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = l.local_addr().unwrap();
        let s = TcpStream::connect(a).await.unwrap();
        let env = [("STICKYD_POD_NAME", "p"), ("STICKYD_ENDPOINTS", "static:p=127.0.0.1:1")];
        let cfg = crate::config::Config::from_env(&env).unwrap();
        let shared = Arc::new(Shared::new(cfg, Default::default(), Default::default()));
        let permit = Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap();
        let f = connection(
            s,
            a,
            shared.clone(),
            Arc::new(builder(&shared)),
            Phases::default(),
            permit,
        );
        let size = std::mem::size_of_val(&f);
        assert!(size <= 1536, "a connection's task state is {size} bytes");
    }

    /// Runs `check` until it ends or `within` passes, counting its polls.
    async fn polls_of<F: Future>(check: Pin<&mut F>, within: Duration) -> (Option<F::Output>, usize) {
        let mut check = check;
        let mut polls = 0;
        let counted = std::future::poll_fn(|cx| {
            polls += 1;
            check.as_mut().poll(cx)
        });
        let out = tokio::time::timeout(within, counted).await.ok();
        (out, polls)
    }

    /// A connection that has sent only `P` (POST? PRI?) costs no wakeups
    /// while it says nothing more: the check waits for the next segment
    /// by readiness. On tokio's paused clock a polling check would run a
    /// thousand times in the second; this one runs once or twice, then
    /// answers as soon as the rest comes. A `P` and then the end of the
    /// stream, or nothing at all, is no preface either, without spinning.
    #[tokio::test(start_paused = true)]
    async fn the_preface_check_waits_for_the_next_segment_without_polling() {
        use tokio::io::AsyncWriteExt;
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = l.local_addr().unwrap();
        for (rest, want) in [
            (&b"RI * HTTP/2.0\r\n"[..], Some(true)),
            (b"OST / HTTP/1.1\r\n", Some(false)),
        ] {
            let mut c = TcpStream::connect(a).await.unwrap();
            let (s, _) = l.accept().await.unwrap();
            c.write_all(b"P").await.unwrap();
            s.readable().await.unwrap();
            let mut check = std::pin::pin!(h2_preface(&s));
            let (out, polls) = polls_of(check.as_mut(), Duration::from_secs(1)).await;
            assert_eq!(out, None, "decided on one byte");
            assert!(polls <= 3, "{polls} polls in a second with one byte waiting");
            c.write_all(rest).await.unwrap();
            let (out, polls) = polls_of(check.as_mut(), Duration::from_secs(1)).await;
            assert_eq!(out, Some(want));
            assert!(polls <= 3, "{polls} polls once the rest came");
        }
        for sent in [&b"P"[..], b""] {
            let mut c = TcpStream::connect(a).await.unwrap();
            let (s, _) = l.accept().await.unwrap();
            c.write_all(sent).await.unwrap();
            c.shutdown().await.unwrap();
            let mut check = std::pin::pin!(h2_preface(&s));
            let (out, polls) = polls_of(check.as_mut(), Duration::from_secs(1)).await;
            assert_eq!(out, Some(None), "sent {sent:?} and closed");
            assert!(polls <= 3, "{polls} polls");
        }
    }
}
