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
use std::task::Poll;

use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::TcpStream;

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
pub async fn read_with<R>(from: &mut TcpStream, max: usize, mut f: impl FnMut(&[u8]) -> R) -> io::Result<R> {
    std::future::poll_fn(|cx| {
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
    })
    .await
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
    let mut at = 0;
    while at < bytes.len() {
        match to.try_write(&bytes[at..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => at += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    Ok(bytes[at..].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

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
}
