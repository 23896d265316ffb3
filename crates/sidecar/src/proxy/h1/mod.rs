//! The HTTP/1.1 path: a client connection served end to end on one task,
//! with heads parsed by httparse into the connection's own buffer and
//! bodies streamed, never held whole.
//!
//! Why not hyper here: a hyper connection holds an 8 KiB write buffer from
//! its first byte and grows its read buffer to 16 KiB, a client connection
//! to the app holds as much again, and each runs as a task of its own (see
//! BENCHMARKS.md, "Where the memory goes"). Here a connection between
//! requests holds its socket and a few words; a request in flight holds the
//! bytes of its head, at their size, and the upstream connection, which is a
//! plain socket too. Reads go through one scratch buffer per thread
//! ([`io`]), so no connection holds room for bytes that have not come; a
//! body passes through it and only what the receiving side does not take at
//! once is copied. HTTP/2 (h2c, gRPC) and an app spoken to over h2c stay on
//! hyper (`super::handle`).
//!
//! The phases are those of every request ([`super`]): screen, decide, serve
//! locally or forward, and respond, with the one fallback path
//! ([`route::after_failure`]) and the one upstream error type
//! ([`UpstreamError`]).

pub mod body;
pub mod client;
pub mod io;
pub mod parse;
pub mod upstream;

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::Version;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Sleep;

use self::body::{ChunkError, Piece, Relay, Remaining};
use self::parse::{BodyKind, HeadError, RequestHead, ResponseEdits, ResponseHead};
use self::upstream::Upstream;
use super::conn::{Place, MAX_BOUND, MAX_BOUND_PEERS, MAX_PEERS_PER_CONN};
use super::facts::{Facts, HeadView, TargetForm};
use super::headers::{HOP, SESSION};
use super::idle::{self, Pace};
use super::listener::{Phases, SETTLE};
use super::pipeline::{self, Codec, Failure};
use super::plan::{self, Answered, Dest, Outgoing};
use super::respond::Synthetic;
use super::screen::Refusal;
use super::token::AppField;
use super::upstream::{replay, Kind, Target, Unanswered, UpstreamError};
use super::Shared;
use crate::limits::{Lease, CONNECTION_COST};

/// A head read takes at most this much at once; a request head longer than
/// this is paid for by the buffer budget, up to STICKYD_MAX_HEADER_BYTES.
pub const READ: usize = 4096;
/// Bodies are copied in pieces of at most this size, when the buffer budget
/// has room; else in pieces of [`READ`] bytes.
pub(crate) const COPY: usize = 16 * 1024;
// A connection's cost, as the memory budget counts it, covers a request head
// and a response head of READ bytes each; more comes from the buffer budget.
const _: () = assert!(2 * READ as u64 <= CONNECTION_COST);
const _: () = assert!(COPY <= io::SCRATCH);
/// The longest response head taken from an upstream.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// Serves one HTTP/1.x client connection until it ends.
pub async fn serve(stream: TcpStream, remote: SocketAddr, shared: Arc<Shared>, phases: Phases) {
    let forwarded_for = super::headers::forwarded_for_value(remote.ip());
    let mut c = Conn {
        shared: &shared,
        phases: &phases,
        client: stream,
        forwarded_for: forwarded_for.as_bytes(),
        buf: Vec::new(),
        timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
        app: None,
        peers: Vec::new(),
        held: None,
        settle_at: None,
        head_lease: None,
    };
    c.run().await;
    // The upstream connections it kept serve the next client connections.
    let pool = &shared.idle;
    for (u, _place) in c.app.take().into_iter().chain(c.peers.drain(..)) {
        pool.put(u);
    }
}

/// How an attempt that got a response ended.
enum Served {
    /// The response went out whole; the client connection may go on.
    KeepAlive,
    /// The response went out (or the client went away); close.
    Close,
}

struct Conn<'a> {
    shared: &'a Shared,
    phases: &'a Phases,
    client: TcpStream,
    forwarded_for: &'a [u8],
    /// Bytes read from the client and not yet used: the head being read, or
    /// what came after the last one (a body's start, a pipelined request).
    buf: Vec<u8>,
    /// One timer for every wait of this connection, reset each time.
    timer: Pin<Box<Sleep>>,
    /// The upstream connections this client connection keeps between its
    /// requests, each holding a place of the binding budget
    /// ([`MAX_BOUND`], [`MAX_BOUND_PEERS`]).
    app: Option<(Upstream, Place)>,
    peers: Vec<(Upstream, Place)>,
    /// The place of the kept connection the request in flight uses.
    held: Option<Place>,
    /// Stopping: idle after this instant, the connection closes.
    settle_at: Option<tokio::time::Instant>,
    /// What the head buffer holds beyond [`READ`] bytes, from the buffer
    /// budget.
    head_lease: Option<Lease>,
}

/// Why no request head came.
enum NoHead {
    /// The client sent something that is not a request head we take.
    Bad(HeadError),
    /// A larger head than [`READ`] bytes did not fit in the buffer budget.
    Shed,
}

impl From<HeadError> for NoHead {
    fn from(e: HeadError) -> NoHead {
        NoHead::Bad(e)
    }
}

/// Writes `a` then `b` with as few system calls as the socket allows.
async fn write_two(s: &mut TcpStream, mut a: &[u8], mut b: &[u8]) -> std::io::Result<()> {
    while !a.is_empty() {
        let n = if b.is_empty() {
            s.write(a).await?
        } else {
            s.write_vectored(&[std::io::IoSlice::new(a), std::io::IoSlice::new(b)])
                .await?
        };
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        if n >= a.len() {
            b = &b[n - a.len()..];
            a = &[];
        } else {
            a = &a[n..];
        }
    }
    if !b.is_empty() {
        s.write_all(b).await?;
    }
    Ok(())
}

/// Writes what goes on for a piece of a body ([`Relay`]) to `to`, as far
/// as it takes it now; what it does not take is returned, copied, as
/// [`io::write_or_keep`] does.
fn relay_or_keep(to: &TcpStream, r: &Relay<'_>) -> std::io::Result<Vec<u8>> {
    let mut kept = io::write_or_keep(to, r.now)?;
    if !r.trailers.is_empty() {
        if kept.is_empty() {
            kept = io::write_or_keep(to, &r.trailers)?;
        } else {
            kept.extend_from_slice(&r.trailers);
        }
    }
    Ok(kept)
}

/// The part of a body that came in `data`, with its head, for the next
/// hop: a trailer section that ended in it is appended to `head`,
/// rewritten, after the bytes before it. Returns how many bytes of `data`
/// belong to the body, and how many of them go on as they came after
/// `head`.
fn with_head(body: &mut Remaining, data: &[u8], head: &mut Vec<u8>) -> Result<(usize, usize), ChunkError> {
    let r = body.relay(data)?;
    if r.trailers.is_empty() {
        return Ok((r.taken, r.now.len()));
    }
    head.extend_from_slice(r.now);
    head.extend_from_slice(&r.trailers);
    Ok((r.taken, 0))
}

/// One read of a body, `read`, within `idle` (STICKYD_BODY_READ_TIMEOUT)
/// on the connection's one timer, armed anew for each read; without a
/// limit (a stream), the timer is not waited on. None: no byte came in
/// time.
async fn within_idle<F: std::future::Future>(
    timer: &mut Pin<Box<Sleep>>,
    idle: Option<Duration>,
    read: F,
) -> Option<F::Output> {
    if let Some(limit) = idle {
        timer.as_mut().reset(tokio::time::Instant::now() + limit);
    }
    tokio::select! {
        biased;
        out = read => Some(out),
        () = timer, if idle.is_some() => None,
    }
}

fn refusal_of(e: HeadError) -> Refusal {
    match e {
        HeadError::TooLarge => Refusal::HeaderTooLarge,
        HeadError::TooManyHeaders => Refusal::TooManyHeaders,
        HeadError::ContentLength | HeadError::TransferEncoding => Refusal::Framing,
        HeadError::Malformed => Refusal::Malformed,
    }
}

/// Does `target` parse as a URI, as hyper requires of every request
/// target? (httparse passes a few characters that the URI grammar does not.)
pub fn target_is_valid(target: &[u8]) -> bool {
    http::Uri::try_from(target).is_ok()
}

/// The request head, as the phases read it: a view of the connection's
/// buffer.
pub(super) struct View<'b> {
    head: &'b RequestHead,
    buf: &'b [u8],
}

impl HeadView for View<'_> {
    fn method(&self) -> &[u8] {
        self.head.method(self.buf)
    }

    fn version(&self) -> Version {
        if self.head.minor == 0 {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        }
    }

    fn target(&self) -> TargetForm {
        let target = self.head.target(self.buf);
        match target.first() {
            Some(b'/') if target_is_valid(target) => TargetForm::Origin,
            Some(b'/') => TargetForm::Invalid,
            _ if target == b"*" => TargetForm::Asterisk,
            // Absolute-form (`http://host/`) or authority-form (`host:443`).
            _ => TargetForm::Absolute,
        }
    }

    fn values<'v>(&'v self, name: &'v str) -> impl Iterator<Item = &'v [u8]> + 'v {
        self.head.values(self.buf, name.as_bytes())
    }

    fn has_body(&self) -> bool {
        self.head.body != BodyKind::None
    }

    fn upgrade(&self) -> bool {
        self.head.upgrade
    }

    fn head_bytes(&self) -> usize {
        // Checked against STICKYD_MAX_HEADER_BYTES as it was read.
        self.head.len
    }
}

/// One request on this codec: the connection, and the head it read.
struct Exchange<'c, 'a> {
    conn: &'c mut Conn<'a>,
    head: &'c RequestHead,
}

impl Codec for Exchange<'_, '_> {
    type Done = Served;
    type Head<'h>
        = View<'h>
    where
        Self: 'h;

    fn head(&self) -> View<'_> {
        View {
            head: self.head,
            buf: &self.conn.buf,
        }
    }

    async fn attempt(&mut self, f: &Facts<'_>, dest: Dest<'_>, out: &Outgoing<'_>) -> Result<Served, Failure<Served>> {
        self.conn.attempt(self.head, f, dest, out).await
    }

    /// The connection stays only when no unread body is left behind.
    async fn answer(&mut self, f: Option<&Facts<'_>>, s: Synthetic) -> Served {
        let (conn, head) = (&mut *self.conn, self.head);
        let grpc = match f {
            Some(f) => f.grpc(),
            None => idle::pace(head.values(&conn.buf, b"content-type").next()) == Pace::Grpc,
        };
        let close = s.close || !head.keep_alive || head.body != BodyKind::None || conn.shared.stopping();
        if conn.client.write_all(&s.h1(grpc, close)).await.is_err() || close {
            return Served::Close;
        }
        conn.buf.drain(..head.len);
        Served::KeepAlive
    }
}

impl Conn<'_> {
    async fn run(&mut self) {
        loop {
            let head = match self.read_head().await {
                Ok(Some(h)) => h,
                Ok(None) => return,
                Err(NoHead::Shed) => {
                    self.shed().await;
                    return;
                }
                Err(NoHead::Bad(e)) => {
                    let refused = refusal_of(e);
                    self.shared.metrics.bad_request(refused.metric_label());
                    let _ = self
                        .client
                        .write_all(&Synthetic::refused(refused).h1(false, true))
                        .await;
                    return;
                }
            };
            // Boxed: a connection between requests holds only the small
            // state of waiting for a head, not that of an exchange. Every
            // busy connection holds one exchange: 2,008 bytes in a release
            // build, inside jemalloc's 2 KiB class (`cargo +nightly rustc -p
            // stickyd-sidecar --lib --release -- -Zprint-type-sizes`); rare
            // steps with large state are boxed on their own.
            match Box::pin(pipeline::process(
                self.shared,
                &mut Exchange {
                    conn: self,
                    head: &head,
                },
            ))
            .await
            {
                Served::KeepAlive => {}
                Served::Close => return,
            }
            if self.shared.stopping() {
                return;
            }
        }
    }

    /// Waits for the next request head and reads it whole. None: the
    /// connection ends (closed, idle for STICKYD_HEADER_READ_TIMEOUT, or
    /// stopping with nothing in it).
    async fn read_head(&mut self) -> Result<Option<RequestHead>, NoHead> {
        let cfg = &self.shared.cfg;
        let deadline = tokio::time::Instant::now() + cfg.header_read_timeout;
        self.timer.as_mut().reset(deadline);
        loop {
            if !self.buf.is_empty() {
                match parse::request(&self.buf, cfg.max_headers) {
                    Ok(Some(h)) if h.len > cfg.max_header_bytes => return Err(HeadError::TooLarge.into()),
                    Ok(Some(h)) => return Ok(Some(h)),
                    Ok(None) if self.buf.len() >= cfg.max_header_bytes => return Err(HeadError::TooLarge.into()),
                    Ok(None) => {}
                    Err(e) => return Err(e.into()),
                }
            } else if self.buf.capacity() > 0 {
                // Idle between requests: hold no buffer.
                self.buf = Vec::new();
                self.head_lease = None;
            }
            let want = if self.buf.is_empty() {
                READ
            } else {
                (self.buf.len() * 2).min(cfg.max_header_bytes + 1) - self.buf.len()
            };
            // Past READ bytes, the buffer budget pays for the head.
            let beyond = (self.buf.len() + want).saturating_sub(READ);
            if beyond > 0 && !self.lease_head(beyond) {
                return Err(NoHead::Shed);
            }
            let idle = self.buf.is_empty();
            if let Some(at) = self.settle_at.filter(|_| idle) {
                // Stopping: an idle connection closes once the settle time
                // has passed.
                if tokio::time::Instant::now() >= at {
                    return Ok(None);
                }
                self.timer.as_mut().reset(at.min(deadline));
            }
            let closing = &self.phases.closing;
            tokio::select! {
                biased;
                r = io::read_into(&mut self.client, &mut self.buf, want) => match r {
                    Ok(0) | Err(_) => return Ok(None),
                    Ok(_) => {}
                },
                () = &mut self.timer => {
                    if tokio::time::Instant::now() >= deadline || self.settle_at.is_some() && self.buf.is_empty() {
                        return Ok(None);
                    }
                    // The settle time was for an idle connection that has
                    // since begun a request: back to the head's deadline.
                    self.timer.as_mut().reset(deadline);
                }
                () = closing.cancelled(), if idle && self.settle_at.is_none() => {
                    self.settle_at = Some(tokio::time::Instant::now() + SETTLE);
                }
            }
        }
    }

    /// Makes the head buffer's lease hold `bytes`. False: the buffer budget
    /// has no room for them.
    fn lease_head(&mut self, bytes: usize) -> bool {
        match &mut self.head_lease {
            Some(l) if l.bytes() >= bytes => true,
            Some(l) => {
                let more = bytes - l.bytes();
                l.try_grow(more)
            }
            None => {
                self.head_lease = self.shared.cfg.limits.buffers.try_take(bytes);
                self.head_lease.is_some()
            }
        }
    }

    /// At the buffer budget: 503 with Retry-After, and the connection closes
    /// (what was read of the request is not kept).
    async fn shed(&mut self) {
        self.shared.metrics.shed_request.inc();
        let _ = self.client.write_all(&Synthetic::shed().h1(false, true)).await;
    }

    /// Takes a connection to `addr`: this client connection's own, or one
    /// from the shared pool, or a new one.
    async fn upstream(&mut self, to: Target, addr: SocketAddr) -> std::io::Result<Upstream> {
        let shared = self.shared;
        self.held = None;
        let idle = match to {
            Target::App => shared.cfg.pool_idle_timeout,
            Target::Peer => shared.peer_idle,
        };
        let kept = match to {
            Target::App => self.app.take(),
            Target::Peer => self
                .peers
                .iter()
                .position(|(u, _)| u.addr == addr)
                .map(|i| self.peers.swap_remove(i)),
        };
        if let Some((mut u, place)) = kept {
            if u.usable(idle) {
                u.fresh = false;
                // The place stays taken while the request runs.
                self.held = Some(place);
                return Ok(u);
            }
        }
        if let Some(u) = shared.idle.take(addr, idle) {
            return Ok(u);
        }
        self.dial(to, addr).await
    }

    /// A new connection to `addr`; the app once more after a refusal.
    /// Boxed: a rare step whose state would otherwise size every request's
    /// future, which each busy connection holds
    /// (`tests/load/bench/memory.sh`).
    async fn dial(&self, to: Target, addr: SocketAddr) -> std::io::Result<Upstream> {
        let shared = self.shared;
        let again = to == Target::App;
        Box::pin(Upstream::dial(
            &shared.connector,
            addr,
            shared.cfg.connect_timeout,
            again,
        ))
        .await
    }

    /// Keeps `u` for this client connection's next request, if the binding
    /// budget has room; else the shared pool gets it.
    fn keep_upstream(&mut self, to: Target, mut u: Upstream) {
        u.used = tokio::time::Instant::now();
        let shared = self.shared;
        let held = self.held.take();
        let place = match to {
            Target::App => held.or_else(|| Place::take(&shared.bound_apps, MAX_BOUND)),
            Target::Peer => {
                if self.peers.len() >= MAX_PEERS_PER_CONN {
                    if let Some(oldest) = (0..self.peers.len()).min_by_key(|&i| self.peers[i].0.used) {
                        let (old, _place) = self.peers.swap_remove(oldest);
                        shared.idle.put(old);
                    }
                }
                held.or_else(|| Place::take(&shared.bound_peers, MAX_BOUND_PEERS))
            }
        };
        match (to, place) {
            (Target::App, Some(place)) => self.app = Some((u, place)),
            (Target::Peer, Some(place)) => self.peers.push((u, place)),
            (_, None) => shared.idle.put(u),
        }
    }

    /// One attempt: the request to `dest` with the outgoing plan `plan`,
    /// and its response to the client. Err: nothing was written to the
    /// client yet.
    async fn attempt(
        &mut self,
        head: &RequestHead,
        f: &Facts<'_>,
        dest: Dest<'_>,
        plan: &Outgoing<'_>,
    ) -> Result<Served, Failure<Served>> {
        let shared = self.shared;
        // The head as it goes on, built for each attempt (a retry rebuilds
        // it) and dropped once sent: a request waiting for its response
        // holds only the client's bytes.
        let mut out = Vec::with_capacity(head.len + 256);
        parse::write_request(
            &self.buf,
            head,
            self.forwarded_for,
            plan.app.map(|app| app.request_field()),
            &mut out,
        );
        if let Some(session) = plan.session {
            parse::push_field(&mut out, SESSION.as_str().as_bytes(), session.as_bytes());
        }
        if let Some(app) = plan.app {
            let name = app.request_field();
            for v in head.values(&self.buf, name) {
                let stripped = app.strip(v);
                parse::push_field(&mut out, name, stripped.as_deref().unwrap_or(v));
            }
        }
        if let Some((marker, n)) = &plan.hop {
            for _ in 0..*n {
                parse::push_field(&mut out, HOP.as_str().as_bytes(), marker.as_bytes());
            }
        }
        out.extend_from_slice(b"\r\n");
        let (target, addr) = match dest {
            Dest::Local { .. } => (Target::App, shared.cfg.upstream),
            Dest::Peer { peer, .. } => (Target::Peer, peer.addr),
        };
        let fail = |kind, replayable, detail: &dyn std::fmt::Display| {
            Failure::Upstream(UpstreamError::new(target, kind, replayable, detail))
        };
        // Nothing reached the upstream: the request is whole in hand.
        let unsent = |detail: &dyn std::fmt::Display| {
            let (kind, replayable) = replay(target, Unanswered::Unsent, f.safe, true);
            fail(kind, replayable, detail)
        };

        // The request: head, then body. What of the body came with the head
        // is checked before anything goes out.
        let request_idle = f.body_limit(None);
        let mut body = Remaining::of(head.body);
        let (in_buf, as_it_came) = match with_head(&mut body, &self.buf[head.len..], &mut out) {
            Ok(n) => n,
            Err(e) => return Err(self.client_body_error(e)),
        };
        let as_it_came = head.len..head.len + as_it_came;
        let started = Instant::now();
        let mut up = match self.upstream(target, addr).await {
            Ok(u) => u,
            Err(e) => return Err(unsent(&e)),
        };
        let upgrade = head.upgrade;
        let wait_continue = head.expect_continue && !body.done();
        let first = head.len + in_buf;
        if let Err(e) = write_two(&mut up.stream, &out, &self.buf[as_it_came.clone()]).await {
            // A kept connection the other side had closed: nothing reached
            // it (a request written into a dead socket gets RST, not an
            // answer). Once more on a fresh one.
            if up.fresh {
                return Err(unsent(&e));
            }
            up = match self.dial(target, addr).await {
                Ok(u) => u,
                Err(e) => return Err(unsent(&e)),
            };
            if let Err(e) = write_two(&mut up.stream, &out, &self.buf[as_it_came.clone()]).await {
                return Err(unsent(&e));
            }
        }
        drop(out);
        let mut sent_body_from_socket = false;
        if !body.done() && !wait_continue {
            sent_body_from_socket = true;
            if let Err(e) = self.copy_request_body(&mut up, &mut body, request_idle).await {
                return Err(e.into_failure(self, target));
            }
        }

        // The response head, within STICKYD_RESPONSE_TIMEOUT.
        let deadline = tokio::time::Instant::now() + shared.cfg.response_timeout;
        let mut ubuf: Vec<u8> = Vec::new();
        let res = loop {
            let got = self
                .read_response_head(&mut up, &mut ubuf, deadline, dest, head, wait_continue && !body.done())
                .await;
            let r = match got {
                Ok(ResponseRead::Head(r)) => r,
                Ok(ResponseRead::ClientBodyFirst) => {
                    // The client sends its body without waiting for 100.
                    sent_body_from_socket = true;
                    if let Err(e) = self.copy_request_body(&mut up, &mut body, request_idle).await {
                        return Err(e.into_failure(self, target));
                    }
                    continue;
                }
                Err(ReadError::Timeout) => return Err(fail(Kind::Timeout, false, &"no response headers in time")),
                Err(ReadError::Gone) => {
                    let (kind, replayable) = replay(target, Unanswered::Gone, f.safe, !sent_body_from_socket);
                    return Err(fail(kind, replayable, &"it left the endpoint view before answering"));
                }
                Err(ReadError::Closed(e)) => {
                    // Nothing came back: the keep-alive race, or a peer that
                    // stopped.
                    let (kind, replayable) = replay(target, Unanswered::Closed, f.safe, !sent_body_from_socket);
                    return Err(fail(kind, replayable, &e));
                }
                Err(ReadError::Bad(e)) => return Err(fail(Kind::Io, false, &e)),
            };
            if (100..200).contains(&r.status) && r.status != 101 {
                // Interim responses (100, 103) go to the client with their
                // fields filtered as a final head's are: hop-by-hop fields
                // and stickyd's own out.
                if head.minor == 1 {
                    let mut interim = Vec::with_capacity(r.len);
                    parse::write_response(&ubuf, &r, &ResponseEdits::default(), &mut interim);
                    if self.client.write_all(&interim).await.is_err() {
                        return Ok(Served::Close);
                    }
                }
                ubuf.drain(..r.len);
                if r.status == 100 && !body.done() {
                    sent_body_from_socket = true;
                    if let Err(e) = self.copy_request_body(&mut up, &mut body, request_idle).await {
                        return Err(e.into_failure(self, target));
                    }
                }
                continue;
            }
            break r;
        };
        // The response plan, and the attempt's bookkeeping.
        let app_header = f.shared.carrier.app_field().and_then(|app| match app {
            AppField::Header(name) => Some(name.as_str().as_bytes()),
            AppField::Cookie(_) => None,
        });
        let mut plan = plan::respond(
            f,
            dest,
            started.elapsed().as_secs_f64(),
            Answered {
                status: res.status,
                set_cookies: res.values(&ubuf, b"set-cookie"),
                app_header: app_header.is_some_and(|n| res.values(&ubuf, n).any(|v| !v.trim_ascii().is_empty())),
                peer_count: res.values(&ubuf, crate::placement::HEADER.as_str().as_bytes()).next(),
            },
        );
        // The session stays active until the response is done with.
        let _hold = plan.hold.take();
        let added: Vec<(&[u8], &[u8])> = plan
            .added
            .iter()
            .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes()))
            .collect();
        let response_pace = idle::pace(res.values(&ubuf, b"content-type").next());
        let response_idle = f.body_limit(Some((res.status, response_pace)));
        let switching = res.status == 101 && upgrade;
        let client_http10 = head.minor == 0;
        let request_done = body.done();
        let stopping = f.client_goes_elsewhere();
        let close = !switching
            && (!head.keep_alive
                || stopping
                || !request_done
                || res.body == BodyKind::Close
                || (client_http10 && res.body == BodyKind::Chunked));
        let edits = ResponseEdits {
            add: &added,
            drop: plan.drop.map(|n| n.as_str().as_bytes()),
            prefix: plan.prefix.as_ref().map(|(app, token)| (*app, token.as_bytes())),
            close,
            client_http10,
            sessions: plan.sessions,
        };
        let extra: usize = added.iter().map(|(n, v)| n.len() + v.len() + 16).sum();
        let mut out = Vec::with_capacity(res.len + extra + 64);
        parse::write_response(&ubuf, &res, &edits, &mut out);
        ubuf.drain(..res.len);

        if switching {
            return Ok(self.splice(up, &out, ubuf, head.len + in_buf).await);
        }
        // The body: what came with the head, then the rest.
        let mut rbody = Remaining::of(res.body);
        let decode = client_http10 && res.body == BodyKind::Chunked;
        let (taken, as_it_came) = if decode {
            (0, 0)
        } else {
            match with_head(&mut rbody, &ubuf, &mut out) {
                Ok(n) => n,
                Err(_) => {
                    let _ = self.client.write_all(&out).await;
                    return Ok(Served::Close);
                }
            }
        };
        if write_two(&mut self.client, &out, &ubuf[..as_it_came]).await.is_err() {
            return Ok(Served::Close);
        }
        drop(out);
        ubuf.drain(..taken);
        let streamed = if decode {
            self.copy_decoded(&mut up, ubuf, response_idle).await
        } else {
            drop(ubuf);
            self.copy_response_body(&mut up, &mut rbody, response_idle).await
        };
        // The request is done with: what follows it in the buffer is the
        // next request.
        self.buf.drain(..first.min(self.buf.len()));
        if !request_done && !sent_body_from_socket {
            // A body the client never sent (the upstream answered first).
            return Ok(Served::Close);
        }
        if streamed && res.keep_alive && rbody.done() {
            self.keep_upstream(target, up);
        }
        Ok(if close || !streamed {
            Served::Close
        } else {
            Served::KeepAlive
        })
    }

    /// A client whose chunked body is malformed gets 400 (its fault, not the
    /// upstream's); the upstream connection, which has part of it, is
    /// dropped with the attempt.
    fn client_body_error(&self, e: ChunkError) -> Failure<Served> {
        self.shared.metrics.bad_request(Refusal::Body.metric_label());
        tracing::debug!(error = ?e, "malformed chunked request body");
        Failure::Answer(Synthetic::refused(Refusal::Body))
    }

    /// How much a body copy reads at once: [`COPY`] bytes while the buffer
    /// budget has room (held by the lease returned), else [`READ`] bytes,
    /// the connection's own share. A body is never refused for want of
    /// memory, only copied in smaller pieces. The bytes pass through the
    /// thread's scratch buffer ([`io`]); the connection holds only what the
    /// receiving side did not take at once.
    fn copy_size(&self) -> (usize, Option<Lease>) {
        let lease = self.shared.cfg.limits.buffers.try_take(COPY);
        (if lease.is_some() { COPY } else { READ }, lease)
    }

    /// Copies the rest of the request body from the client to `up`; it
    /// stalls when no byte comes for `idle`.
    async fn copy_request_body(
        &mut self,
        up: &mut Upstream,
        body: &mut Remaining,
        idle: Option<Duration>,
    ) -> Result<(), BodyError> {
        // What of the body was in the buffer went with the head.
        let (size, _lease) = self.copy_size();
        while !body.done() {
            let buf = &mut self.buf;
            let read = io::read_with(&mut self.client, size, |bytes| {
                if bytes.is_empty() {
                    return Err(BodyError::ClientGone);
                }
                let r = body.relay(bytes).map_err(BodyError::Framing)?;
                // Pipelined bytes after the body: the next request's.
                buf.extend_from_slice(&bytes[r.taken..]);
                relay_or_keep(&up.stream, &r).map_err(|e| BodyError::Upstream(e.to_string()))
            });
            let Some(step) = within_idle(&mut self.timer, idle, read).await else {
                self.shared.metrics.body_timeout("request");
                return Err(BodyError::Stalled);
            };
            let kept = step.map_err(|_| BodyError::ClientGone)??;
            if !kept.is_empty() {
                up.stream
                    .write_all(&kept)
                    .await
                    .map_err(|e| BodyError::Upstream(e.to_string()))?;
            }
        }
        Ok(())
    }

    /// Copies the rest of a response body from `up` to the client. False:
    /// the copy broke off (either side went away, the upstream's framing
    /// broke, or no byte came for `idle`); the client connection must
    /// close.
    async fn copy_response_body(&mut self, up: &mut Upstream, body: &mut Remaining, idle: Option<Duration>) -> bool {
        if body.done() {
            return true;
        }
        let (size, _lease) = self.copy_size();
        while !body.done() {
            let client = &self.client;
            let read = io::read_with(&mut up.stream, size, |bytes| {
                if bytes.is_empty() {
                    return Err(matches!(body, Remaining::Close));
                }
                let r = body.relay(bytes).map_err(|_| false)?;
                relay_or_keep(client, &r).map_err(|_| false)
            });
            let Some(step) = within_idle(&mut self.timer, idle, read).await else {
                self.shared.metrics.body_timeout("response");
                return false;
            };
            let kept = match step {
                Ok(Ok(kept)) => kept,
                Ok(Err(ended_well)) => return ended_well,
                Err(_) => return false,
            };
            if !kept.is_empty() && self.client.write_all(&kept).await.is_err() {
                return false;
            }
        }
        true
    }

    /// A chunked response for an HTTP/1.0 client: the payload alone, then
    /// the connection closes (also when no byte comes for `idle`).
    async fn copy_decoded(&mut self, up: &mut Upstream, mut pending: Vec<u8>, idle: Option<Duration>) -> bool {
        let mut chunked = body::Chunked::default();
        let (size, _lease) = self.copy_size();
        let mut piece = vec![0; size];
        loop {
            let mut at = 0;
            while at < pending.len() && !chunked.done() {
                match chunked.step(&pending[at..]) {
                    Ok(Piece::Data(n)) => {
                        if self.client.write_all(&pending[at..at + n]).await.is_err() {
                            return false;
                        }
                        at += n;
                    }
                    Ok(Piece::Framing(n) | Piece::Trailers(n)) => at += n,
                    Err(_) => return false,
                }
            }
            if chunked.done() {
                return false;
            }
            let Some(read) = within_idle(&mut self.timer, idle, up.stream.read(&mut piece)).await else {
                self.shared.metrics.body_timeout("response");
                return false;
            };
            let n = match read {
                Ok(0) | Err(_) => return false,
                Ok(n) => n,
            };
            pending.clear();
            pending.extend_from_slice(&piece[..n]);
        }
    }

    /// Reads a response head from `up` into `ubuf`. While `client_may_send`,
    /// a client that starts its body before a 100 (Expect: 100-continue)
    /// ends the wait.
    async fn read_response_head(
        &mut self,
        up: &mut Upstream,
        ubuf: &mut Vec<u8>,
        deadline: tokio::time::Instant,
        dest: Dest<'_>,
        head: &RequestHead,
        client_may_send: bool,
    ) -> Result<ResponseRead, ReadError> {
        let head_request = head.method(&self.buf) == b"HEAD";
        self.timer.as_mut().reset(deadline);
        let store = &self.shared.store;
        let gone = async {
            match dest {
                Dest::Peer { peer, .. } => super::h2::left_the_view(store, peer).await,
                Dest::Local { .. } => std::future::pending().await,
            }
        };
        tokio::pin!(gone);
        loop {
            if !ubuf.is_empty() {
                match parse::response(ubuf, self.shared.cfg.max_headers, head_request) {
                    Ok(Some(r)) => return Ok(ResponseRead::Head(r)),
                    Ok(None) if ubuf.len() >= MAX_RESPONSE_HEAD => {
                        return Err(ReadError::Bad("response head too large".into()))
                    }
                    Ok(None) => {}
                    Err(e) => return Err(ReadError::Bad(format!("malformed response head: {e:?}"))),
                }
            }
            let client = &self.client;
            tokio::select! {
                biased;
                r = io::read_into(&mut up.stream, ubuf, READ) => match r {
                    Ok(0) if ubuf.is_empty() => return Err(ReadError::Closed("closed before any byte of a response".into())),
                    Ok(0) => return Err(ReadError::Bad("closed inside the response head".into())),
                    Err(e) if ubuf.is_empty() => return Err(ReadError::Closed(e.to_string())),
                    Err(e) => return Err(ReadError::Bad(e.to_string())),
                    Ok(_) => {}
                },
                () = &mut self.timer => return Err(ReadError::Timeout),
                () = &mut gone => return Err(ReadError::Gone),
                r = client.readable(), if client_may_send => {
                    if r.is_ok() {
                        return Ok(ResponseRead::ClientBodyFirst);
                    }
                }
            }
        }
    }

    /// After a 101: the client and the upstream are joined, byte for byte,
    /// until either side ends.
    async fn splice(&mut self, mut up: Upstream, out: &[u8], early: Vec<u8>, used: usize) -> Served {
        if write_two(&mut self.client, out, &early).await.is_err() {
            return Served::Close;
        }
        let pending: Vec<u8> = self.buf.drain(..).skip(used).collect();
        if !pending.is_empty() && up.stream.write_all(&pending).await.is_err() {
            return Served::Close;
        }
        drop(early);
        self.buf = Vec::new();
        let room = io::Room {
            budget: &self.shared.cfg.limits.buffers,
            max: COPY,
            small: READ,
        };
        if let Err(e) = io::splice(&mut self.client, &mut up.stream, room).await {
            tracing::debug!(error = %e, "upgraded connection closed");
        }
        Served::Close
    }
}

enum ResponseRead {
    Head(ResponseHead),
    /// The client began its body before the upstream answered.
    ClientBodyFirst,
}

enum ReadError {
    Timeout,
    /// The peer left the endpoint view.
    Gone,
    /// The connection closed or reset before any byte of a response.
    Closed(String),
    /// A broken or oversized response head.
    Bad(String),
}

/// How copying a request body broke off.
enum BodyError {
    /// The client's chunked framing is malformed: its fault, 400.
    Framing(ChunkError),
    /// No byte of it came for STICKYD_BODY_READ_TIMEOUT: its fault too,
    /// 408 (no byte of a response has gone to the client yet on this
    /// path: the body goes on before the response is read).
    Stalled,
    /// The client went away mid-body.
    ClientGone,
    /// The upstream stopped taking it.
    Upstream(String),
}

impl BodyError {
    fn into_failure(self, c: &Conn<'_>, target: Target) -> Failure<Served> {
        match self {
            BodyError::Framing(e) => c.client_body_error(e),
            BodyError::Stalled => Failure::Answer(Synthetic::stalled()),
            BodyError::ClientGone => Failure::Done(Served::Close),
            BodyError::Upstream(e) => Failure::Upstream(UpstreamError::new(target, Kind::Io, false, e)),
        }
    }
}
