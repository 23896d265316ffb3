//! Message bodies on the HTTP/1.1 path: framing, and the chunked coding
//! checked as it streams.
//!
//! A chunked body is passed on as it came, chunk sizes, extensions and
//! trailers included, while a small state machine follows its framing: it
//! knows where the body ends (so that the next request on the connection is
//! never read from inside it) and refuses what hyper refuses (sizes that are
//! not hex or overflow, white space inside a size, a bare LF, data longer
//! than its size). For an HTTP/1.0 client it also tells the payload apart
//! from the framing, to send the body decoded.

/// Longest chunk extension (per chunk) and trailer section accepted.
const MAX_EXTENSION: usize = 4096;
const MAX_TRAILERS: usize = 16 * 1024;

/// What a chunked body's framing breaks on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkError {
    Size,
    Overflow,
    LineEnd,
    Extension,
    Trailers,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Reading the hex digits of a size (`digits` so far).
    Size {
        digits: u8,
    },
    /// White space after the size, before `;` or CR.
    SizeSpace,
    /// A chunk extension, up to CR.
    Extension {
        len: usize,
    },
    /// The LF after the size line's CR.
    SizeLf,
    /// Chunk data: this many bytes left.
    Data {
        left: u64,
    },
    /// The CR after a chunk's data.
    DataCr,
    /// The LF after it.
    DataLf,
    /// After the last chunk: at the start of a trailer line (or the end).
    TrailerStart,
    /// Inside a trailer field line.
    Trailer,
    /// The LF ending a trailer line.
    TrailerLf,
    /// The LF of the final empty line.
    EndLf,
    Done,
}

/// One piece of a chunked body, as [`Chunked::step`] finds them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Piece {
    /// This many bytes of framing (sizes, CRLFs, extensions, trailers).
    Framing(usize),
    /// This many bytes of payload.
    Data(usize),
}

/// Follows a chunked body's framing.
#[derive(Clone, Debug)]
pub struct Chunked {
    state: State,
    size: u64,
    trailers: usize,
}

impl Default for Chunked {
    fn default() -> Self {
        Chunked {
            state: State::Size { digits: 0 },
            size: 0,
            trailers: 0,
        }
    }
}

fn hex(b: u8) -> Option<u64> {
    match b {
        b'0'..=b'9' => Some(u64::from(b - b'0')),
        b'a'..=b'f' => Some(u64::from(b - b'a' + 10)),
        b'A'..=b'F' => Some(u64::from(b - b'A' + 10)),
        _ => None,
    }
}

impl Chunked {
    /// The body's last byte has been seen.
    pub fn done(&self) -> bool {
        self.state == State::Done
    }

    /// The next piece of `data` (which must not be empty, and must not go
    /// past the body's end: [`Chunked::done`] says when it is reached).
    pub fn step(&mut self, data: &[u8]) -> Result<Piece, ChunkError> {
        if let State::Data { left } = self.state {
            let n = left.min(data.len() as u64) as usize;
            let left = left - n as u64;
            self.state = if left == 0 { State::DataCr } else { State::Data { left } };
            return Ok(Piece::Data(n));
        }
        let mut i = 0;
        while i < data.len() && !matches!(self.state, State::Data { .. } | State::Done) {
            self.byte(data[i])?;
            i += 1;
        }
        Ok(Piece::Framing(i))
    }

    fn byte(&mut self, b: u8) -> Result<(), ChunkError> {
        self.state = match self.state {
            State::Size { digits } => match (hex(b), b) {
                (Some(d), _) => {
                    if digits >= 16 {
                        return Err(ChunkError::Overflow);
                    }
                    self.size = self.size.checked_mul(16).ok_or(ChunkError::Overflow)? | d;
                    State::Size { digits: digits + 1 }
                }
                (None, b'\r') if digits > 0 => State::SizeLf,
                (None, b' ' | b'\t') if digits > 0 => State::SizeSpace,
                (None, b';') if digits > 0 => State::Extension { len: 0 },
                _ => return Err(ChunkError::Size),
            },
            State::SizeSpace => match b {
                b' ' | b'\t' => State::SizeSpace,
                b';' => State::Extension { len: 0 },
                b'\r' => State::SizeLf,
                _ => return Err(ChunkError::Size),
            },
            State::Extension { len } => match b {
                b'\r' => State::SizeLf,
                b'\n' => return Err(ChunkError::LineEnd),
                _ if len >= MAX_EXTENSION => return Err(ChunkError::Extension),
                _ => State::Extension { len: len + 1 },
            },
            State::SizeLf => {
                if b != b'\n' {
                    return Err(ChunkError::LineEnd);
                }
                let size = std::mem::take(&mut self.size);
                if size == 0 {
                    State::TrailerStart
                } else {
                    State::Data { left: size }
                }
            }
            State::DataCr => {
                if b != b'\r' {
                    return Err(ChunkError::LineEnd);
                }
                State::DataLf
            }
            State::DataLf => {
                if b != b'\n' {
                    return Err(ChunkError::LineEnd);
                }
                State::Size { digits: 0 }
            }
            State::TrailerStart => match b {
                b'\r' => State::EndLf,
                b'\n' => return Err(ChunkError::LineEnd),
                _ => self.trailer_byte()?,
            },
            State::Trailer => match b {
                b'\r' => State::TrailerLf,
                b'\n' => return Err(ChunkError::LineEnd),
                _ => self.trailer_byte()?,
            },
            State::TrailerLf => {
                if b != b'\n' {
                    return Err(ChunkError::LineEnd);
                }
                State::TrailerStart
            }
            State::EndLf => {
                if b != b'\n' {
                    return Err(ChunkError::LineEnd);
                }
                State::Done
            }
            State::Data { .. } | State::Done => unreachable!("step handles data and the end"),
        };
        Ok(())
    }

    fn trailer_byte(&mut self) -> Result<State, ChunkError> {
        self.trailers += 1;
        if self.trailers > MAX_TRAILERS {
            return Err(ChunkError::Trailers);
        }
        Ok(State::Trailer)
    }

    /// How many bytes of `data` belong to the body (all of them unless it
    /// ends inside), following the framing.
    pub fn scan(&mut self, data: &[u8]) -> Result<usize, ChunkError> {
        let mut at = 0;
        while at < data.len() && !self.done() {
            match self.step(&data[at..])? {
                Piece::Framing(n) | Piece::Data(n) => at += n,
            }
        }
        Ok(at)
    }
}

/// The body's length still to come, as the copy loop tracks it.
#[derive(Clone, Debug)]
pub enum Remaining {
    /// Nothing (more).
    None,
    /// This many bytes.
    Length(u64),
    /// A chunked body, its framing followed.
    Chunked(Chunked),
    /// Until the sender closes.
    Close,
}

impl Remaining {
    pub fn of(kind: super::parse::BodyKind) -> Remaining {
        use super::parse::BodyKind;
        match kind {
            BodyKind::None => Remaining::None,
            BodyKind::Length(n) => Remaining::Length(n),
            BodyKind::Chunked => Remaining::Chunked(Chunked::default()),
            BodyKind::Close => Remaining::Close,
        }
    }

    pub fn done(&self) -> bool {
        match self {
            Remaining::None => true,
            Remaining::Length(n) => *n == 0,
            Remaining::Chunked(c) => c.done(),
            Remaining::Close => false,
        }
    }

    /// Takes what of `data` belongs to the body; returns how much.
    pub fn take(&mut self, data: &[u8]) -> Result<usize, ChunkError> {
        match self {
            Remaining::None => Ok(0),
            Remaining::Length(n) => {
                let k = (*n).min(data.len() as u64);
                *n -= k;
                Ok(k as usize)
            }
            Remaining::Chunked(c) => c.scan(data),
            Remaining::Close => Ok(data.len()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn whole(body: &[u8]) -> Result<usize, ChunkError> {
        let mut c = Chunked::default();
        let n = c.scan(body)?;
        assert!(c.done(), "not done after {n} of {}", body.len());
        Ok(n)
    }

    #[test]
    fn valid_bodies_end_where_they_end() {
        let b = b"3\r\nabc\r\n2;ext=1;q=\"x\"\r\nde\r\n0\r\n\r\nGET /next";
        assert_eq!(whole(b), Ok(b.len() - 9));
        let b = b"A \t;e\r\n0123456789\r\n0\r\nX-Sum: 1\r\nY: 2\r\n\r\n";
        assert_eq!(whole(b), Ok(b.len()));
        assert_eq!(whole(b"0\r\n\r\n"), Ok(5));
        assert_eq!(whole(b"000000000000000F\r\n0123456789abcde\r\n0\r\n\r\n"), Ok(40));
    }

    #[test]
    fn broken_framing_is_refused() {
        for (body, e) in [
            (&b"zz\r\nabc\r\n0\r\n\r\n"[..], ChunkError::Size),
            (b"-1\r\nabc\r\n", ChunkError::Size),
            (b"\r\n", ChunkError::Size),
            (b"fffffffffffffffffff\r\nabc", ChunkError::Overflow),
            (b"1 1\r\na\r\n", ChunkError::Size),
            (b"3\r\nabcdef\r\n", ChunkError::LineEnd),
            (b"3\nabc\n0\n\n", ChunkError::Size),
            (b"3\r\nabc\n", ChunkError::LineEnd),
            (b"0\r\nX: 1\n\r\n", ChunkError::LineEnd),
            (b"0\r\n\n", ChunkError::LineEnd),
            (b"1;e\n", ChunkError::LineEnd),
        ] {
            let mut c = Chunked::default();
            assert_eq!(c.scan(body), Err(e), "{:?}", String::from_utf8_lossy(body));
        }
        let mut c = Chunked::default();
        let long = format!("1;{}\r\n", "e".repeat(MAX_EXTENSION + 1));
        assert_eq!(c.scan(long.as_bytes()), Err(ChunkError::Extension));
        let mut c = Chunked::default();
        let trailers = format!("0\r\nX: {}\r\n\r\n", "t".repeat(MAX_TRAILERS));
        assert_eq!(c.scan(trailers.as_bytes()), Err(ChunkError::Trailers));
    }

    #[test]
    fn pieces_tell_payload_from_framing() {
        let b = b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        let mut c = Chunked::default();
        let mut at = 0;
        let mut payload = Vec::new();
        while !c.done() {
            match c.step(&b[at..]).unwrap() {
                Piece::Data(n) => {
                    payload.extend_from_slice(&b[at..at + n]);
                    at += n;
                }
                Piece::Framing(n) => at += n,
            }
        }
        assert_eq!(payload, b"abcde");
        assert_eq!(at, b.len());
    }

    #[test]
    fn lengths() {
        let mut r = Remaining::Length(5);
        assert_eq!(r.take(b"abc"), Ok(3));
        assert!(!r.done());
        assert_eq!(r.take(b"defgh"), Ok(2));
        assert!(r.done());
        assert_eq!(Remaining::None.take(b"x"), Ok(0));
        assert_eq!(Remaining::Close.take(b"xyz"), Ok(3));
    }

    fn encode(chunks: &[Vec<u8>], trailer: bool) -> Vec<u8> {
        let mut out = Vec::new();
        for c in chunks.iter().filter(|c| !c.is_empty()) {
            out.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
            out.extend_from_slice(c);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"0\r\n");
        if trailer {
            out.extend_from_slice(b"X-T: v\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out
    }

    proptest! {
        /// However the bytes arrive, a well-formed body is accepted whole,
        /// ends exactly at its end, and its payload is what was sent.
        #[test]
        fn any_split_finds_the_same_end(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..8), trailer: bool, cuts in proptest::collection::vec(1usize..64, 1..40)) {
            let mut body = encode(&chunks, trailer);
            let len = body.len();
            body.extend_from_slice(b"GET /next HTTP/1.1\r\n\r\n");
            let mut c = Chunked::default();
            let (mut at, mut payload) = (0, Vec::new());
            let mut cuts = cuts.into_iter().cycle();
            while !c.done() {
                let end = (at + cuts.next().unwrap()).min(body.len());
                let mut part = at;
                while part < end && !c.done() {
                    match c.step(&body[part..end]).unwrap() {
                        Piece::Data(n) => { payload.extend_from_slice(&body[part..part + n]); part += n; }
                        Piece::Framing(n) => part += n,
                    }
                }
                at = part;
            }
            prop_assert_eq!(at, len);
            prop_assert_eq!(payload, chunks.concat());
        }

        /// Random bytes never make the state machine panic or read past an
        /// end it has reached.
        #[test]
        fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut c = Chunked::default();
            if let Ok(n) = c.scan(&data) {
                prop_assert!(n <= data.len());
            }
        }
    }
}
