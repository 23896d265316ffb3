//! Reads through one scratch buffer per worker thread, so that a connection
//! holds only the bytes it has not yet used, never a buffer sized for a
//! read that might come.
//!
//! A socket read needs room for whatever may arrive; the scratch buffer is
//! that room, shared by every connection of the thread. What a read brings
//! is used at once (parsed, or written on) and only what must wait is
//! copied into the connection's own buffer, at its exact size. Nothing
//! awaits while the scratch buffer is borrowed, so no two connections ever
//! share it at once.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;

use crate::limits::{BufferBudget, Lease};

/// The scratch buffer of each worker thread: the most one read takes.
pub const SCRATCH: usize = 64 * 1024;

thread_local! {
    static BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH].into_boxed_slice());
}

/// Reads at most `max` bytes of what `from` has into the scratch buffer and
/// hands them to `f` (an empty slice: the other side closed). Cancel-safe:
/// a read happens only within the poll that completes the future. (A
/// socket read through `poll_read`, not `try_read`: a short read tells the
/// runtime that the socket is drained, so that an idle connection shows as
/// readable only when something new arrives.)
pub async fn read_with<S: AsyncRead + Unpin, R>(
    from: &mut S,
    max: usize,
    mut f: impl FnMut(&[u8]) -> R,
) -> io::Result<R> {
    std::future::poll_fn(|cx| poll_read_with(cx, from, max, &mut f)).await
}

/// [`read_with`] as one poll.
pub(crate) fn poll_read_with<S: AsyncRead + Unpin, R>(
    cx: &mut Context<'_>,
    from: &mut S,
    max: usize,
    f: &mut impl FnMut(&[u8]) -> R,
) -> Poll<io::Result<R>> {
    BUF.with(|cell| {
        let mut scratch = cell.borrow_mut();
        let room = max.clamp(1, SCRATCH);
        let mut rb = ReadBuf::new(&mut scratch[..room]);
        match Pin::new(&mut *from).poll_read(cx, &mut rb) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(f(rb.filled()))),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    })
}

/// Appends what `from` has, at most `max` bytes, to `buf`; `buf` grows by
/// what came, not by `max`. Ok(0): the other side closed.
pub async fn read_into(from: &mut TcpStream, buf: &mut Vec<u8>, max: usize) -> io::Result<usize> {
    read_with(from, max, |bytes| {
        buf.extend_from_slice(bytes);
        bytes.len()
    })
    .await
}

/// Writes what `to` takes of `bytes` now, without waiting; what it does not
/// take is returned, copied, for the caller to write once `to` is writable.
/// Empty (no allocation) when all went.
pub fn write_or_keep(to: &TcpStream, bytes: &[u8]) -> io::Result<Vec<u8>> {
    keep_unwritten(|b| to.try_write(b), bytes)
}

/// [`write_or_keep`] through any non-blocking write (a socket, or one half
/// of one).
fn keep_unwritten(mut try_write: impl FnMut(&[u8]) -> io::Result<usize>, bytes: &[u8]) -> io::Result<Vec<u8>> {
    let mut at = 0;
    while at < bytes.len() {
        match try_write(&bytes[at..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => at += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    Ok(bytes[at..].to_vec())
}

/// One direction of a [`splice`]: what its writer has not yet taken, and
/// how far it has come.
#[derive(Default)]
struct Way {
    /// Bytes read and not yet written: empty (no allocation) unless the
    /// writing side is slower than the reading one.
    pending: Vec<u8>,
    /// The buffer budget's share for a read of more than the connection's
    /// own bytes, held while that read's bytes wait.
    lease: Option<Lease>,
    /// The reading side has ended.
    ended: bool,
    /// The writing side was shut down after the last byte.
    shut: bool,
}

impl Way {
    /// Moves what `from` has to `to` until either would wait; Ready once
    /// `from` has ended, every byte went and `to` was shut down (the
    /// half-close goes on). `from` is read only while nothing waits to be
    /// written: a slow side holds back its peer by TCP's own flow control.
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        from: &mut ReadHalf<'_>,
        to: &mut WriteHalf<'_>,
        room: &Room<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.pending.is_empty() {
                match Pin::new(&mut *to).poll_write(cx, &self.pending) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Poll::Ready(Ok(n)) if n == self.pending.len() => self.pending = Vec::new(),
                    Poll::Ready(Ok(n)) => drop(self.pending.drain(..n)),
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return Poll::Pending,
                }
            } else if self.ended {
                if !self.shut {
                    std::task::ready!(Pin::new(&mut *to).poll_shutdown(cx))?;
                    self.shut = true;
                }
                return Poll::Ready(Ok(()));
            } else {
                // A read of `max` bytes when the budget lends them, else of
                // the connection's own `small`.
                if self.lease.is_none() {
                    self.lease = room.budget.try_take(room.max);
                }
                let max = if self.lease.is_some() { room.max } else { room.small };
                let read = poll_read_with(cx, from, max, &mut |bytes: &[u8]| {
                    if bytes.is_empty() {
                        return Ok(None);
                    }
                    keep_unwritten(|w| to.try_write(w), bytes).map(Some)
                });
                let Poll::Ready(read) = read else {
                    // Nothing to read: an idle tunnel holds no lease.
                    self.lease = None;
                    return Poll::Pending;
                };
                match read?? {
                    None => self.ended = true,
                    Some(kept) => {
                        // Kept for later (rarely): the lease waits with them.
                        self.pending = kept;
                        if self.pending.is_empty() {
                            self.lease = None;
                        }
                    }
                }
            }
        }
    }
}

/// How much one read of a splice may take: `max` bytes when `budget` lends
/// them for as long as they wait, else `small` (what every connection's
/// cost already counts).
pub struct Room<'a> {
    pub budget: &'a Arc<BufferBudget>,
    pub max: usize,
    pub small: usize,
}

/// Joins two connections byte for byte until both directions have ended
/// (each end passed on as a half-close) or one fails: an upgraded
/// connection (WebSocket, CONNECT-style tunnels). Each read goes through
/// the scratch buffer ([`Room`]) and on to the other side at once; a joined
/// pair holds only the bytes a slow side has not yet taken, not a buffer per
/// direction ([`tokio::io::copy_bidirectional`] holds two of 8 KiB, while
/// idle too), and its state is a few words. Bytes past `small` that wait
/// are the buffer budget's, so that tunnels never hold more than it allows:
/// at the budget, they move `small` bytes at a time.
pub async fn splice(a: &mut TcpStream, b: &mut TcpStream, room: Room<'_>) -> io::Result<()> {
    let (mut a_read, mut a_write) = a.split();
    let (mut b_read, mut b_write) = b.split();
    let (mut ab, mut ba) = (Way::default(), Way::default());
    std::future::poll_fn(|cx| {
        let there = ab.poll(cx, &mut a_read, &mut b_write, &room)?;
        let back = ba.poll(cx, &mut b_read, &mut a_write, &room)?;
        if there.is_ready() && back.is_ready() {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    fn unbounded() -> Arc<BufferBudget> {
        Arc::new(BufferBudget::unbounded())
    }

    fn room(budget: &Arc<BufferBudget>) -> Room<'_> {
        Room {
            budget,
            max: 16 * 1024,
            small: 4096,
        }
    }

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (b, _) = l.accept().await.unwrap();
        (a, b)
    }

    #[tokio::test]
    async fn a_read_keeps_what_came_at_its_size() {
        let (mut a, mut b) = pair().await;
        a.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let mut buf = Vec::new();
        let mut n = 0;
        while n < 16 {
            n += read_into(&mut b, &mut buf, 4096).await.unwrap();
        }
        assert_eq!(buf, b"GET / HTTP/1.1\r\n");
        // Drained by a short read: the socket no longer shows as readable
        // (what tells an idle upstream connection from one that has spoken).
        use futures_util::FutureExt;
        assert!(b.ready(tokio::io::Interest::READABLE).now_or_never().is_none());
        // Sized by what came, not by the most a read may take.
        assert!(buf.capacity() < 64, "capacity {}", buf.capacity());
        // At most `max` bytes a read.
        a.write_all(&[7; 100]).await.unwrap();
        let mut small = Vec::new();
        let got = read_into(&mut b, &mut small, 10).await.unwrap();
        assert!((1..=10).contains(&got), "{got}");
        assert_eq!(small.len(), got);
        drop(a);
        let mut rest = 0;
        loop {
            let n = read_into(&mut b, &mut small, 4096).await.unwrap();
            if n == 0 {
                break;
            }
            rest += n;
        }
        assert_eq!(got + rest, 100, "every byte once, then the end");
    }

    #[tokio::test]
    async fn what_the_socket_does_not_take_is_kept() {
        let (a, mut b) = pair().await;
        // Small, all of it goes.
        assert!(write_or_keep(&a, b"hello").unwrap().is_empty());
        let mut got = [0; 5];
        b.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello");
        // More than the socket buffers hold while nobody reads: the rest is
        // kept, and sent later it completes the stream exactly.
        let big: Vec<u8> = (0..64 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
        let kept = write_or_keep(&a, &big).unwrap();
        assert!(!kept.is_empty() && kept.len() < big.len());
        assert_eq!(kept[..], big[big.len() - kept.len()..]);
        let reader = tokio::spawn(async move {
            let mut all = Vec::new();
            b.read_to_end(&mut all).await.unwrap();
            all
        });
        let mut a = a;
        a.write_all(&kept).await.unwrap();
        drop(a);
        assert!(reader.await.unwrap() == big);
    }

    /// A hang guard: a splice that failed to pass an end on would hang.
    async fn guard<F: std::future::Future>(f: F) -> F::Output {
        tokio::time::timeout(std::time::Duration::from_secs(20), f)
            .await
            .expect("not within 20 s")
    }

    /// A client, a spliced pair in the middle, an upstream: bytes both
    /// ways in order, each end passed on as a half-close, and the splice
    /// ends once both directions have.
    #[tokio::test]
    async fn a_splice_passes_bytes_and_half_closes_both_ways() {
        let (mut client, mut near) = pair().await;
        let (mut far, mut upstream) = pair().await;
        let joined = tokio::spawn(async move { splice(&mut near, &mut far, room(&unbounded())).await });
        client.write_all(b"hello").await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        guard(upstream.read_to_end(&mut got)).await.unwrap();
        assert_eq!(got, b"hello", "the client's bytes, then its end");
        // The other way still flows after the client's half-close.
        upstream.write_all(b"world").await.unwrap();
        drop(upstream);
        let mut back = Vec::new();
        guard(client.read_to_end(&mut back)).await.unwrap();
        assert_eq!(back, b"world");
        guard(joined).await.unwrap().unwrap();
    }

    /// A side that does not read holds the other back: the splice keeps at
    /// most one read of pending bytes, and once the slow side reads, every
    /// byte arrives, once, in order (both ways at once).
    #[tokio::test]
    async fn a_slow_side_gets_every_byte_in_order() {
        let (client, mut near) = pair().await;
        let (mut far, upstream) = pair().await;
        let joined = tokio::spawn(async move { splice(&mut near, &mut far, room(&unbounded())).await });
        let big: Vec<u8> = (0..8 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
        let up: Vec<u8> = (0..3 * 1024 * 1024u32).map(|i| (i % 241) as u8).collect();
        let (big2, up2) = (big.clone(), up.clone());
        let (mut client_read, mut client_write) = client.into_split();
        let (mut upstream_read, mut upstream_write) = upstream.into_split();
        let sender = tokio::spawn(async move {
            client_write.write_all(&big2).await.unwrap();
            client_write.shutdown().await.unwrap();
        });
        let answer = tokio::spawn(async move {
            upstream_write.write_all(&up2).await.unwrap();
            upstream_write.shutdown().await.unwrap();
        });
        // Nobody reads for a moment: the sender is held back, not buffered.
        tokio::task::yield_now().await;
        let mut got = Vec::new();
        guard(upstream_read.read_to_end(&mut got)).await.unwrap();
        let mut back = Vec::new();
        guard(client_read.read_to_end(&mut back)).await.unwrap();
        sender.await.unwrap();
        answer.await.unwrap();
        assert!(got == big, "client to upstream: {} of {} bytes", got.len(), big.len());
        assert!(back == up, "upstream to client: {} of {} bytes", back.len(), up.len());
        guard(joined).await.unwrap().unwrap();
    }

    /// A reset on one side ends the splice with the error, and closes the
    /// other side.
    #[tokio::test]
    async fn a_reset_ends_the_splice() {
        let (client, mut near) = pair().await;
        let (mut far, mut upstream) = pair().await;
        let joined = tokio::spawn(async move { splice(&mut near, &mut far, room(&unbounded())).await });
        client.set_zero_linger().unwrap();
        drop(client);
        let mut rest = Vec::new();
        let _ = guard(upstream.read_to_end(&mut rest)).await;
        assert!(rest.is_empty());
        assert!(guard(joined).await.unwrap().is_err(), "a reset is an error");
    }

    /// The bytes a slow side has not taken are the buffer budget's while
    /// they wait (one read's worth per direction), and go back once taken;
    /// with nothing left in the budget, every byte still passes, in reads
    /// of `small`, and none is leased.
    #[tokio::test]
    async fn waiting_bytes_are_leased_from_the_budget() {
        for capacity in [1 << 20, 0] {
            let budget = Arc::new(BufferBudget::new(capacity));
            let (client, mut near) = pair().await;
            let (mut far, upstream) = pair().await;
            let b = budget.clone();
            let joined = tokio::spawn(async move { splice(&mut near, &mut far, room(&b)).await });
            let big: Vec<u8> = (0..8 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
            let big2 = big.clone();
            let (_client_read, mut client_write) = client.into_split();
            let sender = tokio::spawn(async move {
                client_write.write_all(&big2).await.unwrap();
                client_write.shutdown().await.unwrap();
            });
            let (mut upstream_read, _upstream_write) = upstream.into_split();
            if capacity > 0 {
                // Nobody reads upstream: the socket buffers fill, and a read
                // of the splice waits, leased; the other way, idle, holds
                // nothing.
                guard(async {
                    while budget.used() == 0 {
                        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                    }
                })
                .await;
                assert_eq!(budget.used(), 16 * 1024);
            }
            let mut got = vec![0u8; big.len()];
            guard(upstream_read.read_exact(&mut got)).await.unwrap();
            assert!(got == big, "capacity {capacity}: the bytes differ");
            sender.await.unwrap();
            drop(upstream_read);
            drop(_upstream_write);
            drop(_client_read);
            let _ = guard(joined).await;
            assert_eq!(budget.used(), 0, "capacity {capacity}: a lease outlived its bytes");
        }
    }
}
