//! Message bodies on the HTTP/1.1 path: framing, and the chunked coding
//! checked as it streams.
//!
//! A chunked body is passed on as it came, chunk sizes and extensions
//! included, while a small state machine follows its framing: it knows
//! where the body ends (so that the next request on the connection is never
//! read from inside it) and refuses what hyper refuses (sizes that are not
//! hex or overflow, white space inside a size, a bare LF, data longer than
//! its size, a trailer field that is not `token: value`). Its trailer
//! section alone is rewritten as it passes ([`Remaining::relay`]): the
//! fields a proxy never passes on are left out, stickyd's own among them.
//! For an HTTP/1.0 client it also tells the payload apart from the framing,
//! to send the body decoded.

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
    /// Inside a trailer field's name.
    TrailerName,
    /// Inside a trailer field's value.
    TrailerValue,
    /// The LF ending a trailer line.
    TrailerLf,
    /// The LF of the final empty line.
    EndLf,
    Done,
}

/// One piece of a chunked body, as [`Chunked::step`] finds them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Piece {
    /// This many bytes of framing (sizes, CRLFs, extensions; the final
    /// CRLF of a body without trailers).
    Framing(usize),
    /// This many bytes of payload.
    Data(usize),
    /// This many bytes of the trailer section: from its first field to the
    /// body's end.
    Trailers(usize),
}

/// Follows a chunked body's framing.
#[derive(Clone, Debug)]
pub struct Chunked {
    state: State,
    size: u64,
    trailers: usize,
    filter: TrailerFilter,
}

impl Default for Chunked {
    fn default() -> Self {
        Chunked {
            state: State::Size { digits: 0 },
            size: 0,
            trailers: 0,
            filter: TrailerFilter::default(),
        }
    }
}

/// A byte of a field name (RFC 9110 §5.6.2 `tchar`).
fn tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A byte of a field value as httparse takes it: tab, visible ASCII,
/// space, and bytes past ASCII.
fn value_byte(b: u8) -> bool {
    b == b'\t' || (b >= 0x20 && b != 0x7f)
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
        // The trailer section is a piece of its own, from its first field.
        let mut trailers = self.trailers > 0;
        let mut i = 0;
        while i < data.len() && !matches!(self.state, State::Data { .. } | State::Done) {
            if !trailers && self.state == State::TrailerStart && data[i] != b'\r' {
                if i > 0 {
                    break;
                }
                trailers = true;
            }
            self.byte(data[i])?;
            i += 1;
        }
        Ok(if trailers {
            Piece::Trailers(i)
        } else {
            Piece::Framing(i)
        })
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
                _ if tchar(b) => self.trailer_byte(State::TrailerName)?,
                _ => return Err(ChunkError::Trailers),
            },
            State::TrailerName => match b {
                b':' => self.trailer_byte(State::TrailerValue)?,
                _ if tchar(b) => self.trailer_byte(State::TrailerName)?,
                _ => return Err(ChunkError::Trailers),
            },
            State::TrailerValue => match b {
                b'\r' => State::TrailerLf,
                b'\n' => return Err(ChunkError::LineEnd),
                _ if value_byte(b) => self.trailer_byte(State::TrailerValue)?,
                _ => return Err(ChunkError::Trailers),
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

    fn trailer_byte(&mut self, next: State) -> Result<State, ChunkError> {
        self.trailers += 1;
        if self.trailers > MAX_TRAILERS {
            return Err(ChunkError::Trailers);
        }
        Ok(next)
    }

    /// How many bytes of `data` belong to the body (all of them unless it
    /// ends inside), following the framing.
    pub fn scan(&mut self, data: &[u8]) -> Result<usize, ChunkError> {
        let mut at = 0;
        while at < data.len() && !self.done() {
            match self.step(&data[at..])? {
                Piece::Framing(n) | Piece::Data(n) | Piece::Trailers(n) => at += n,
            }
        }
        Ok(at)
    }
}

/// The longest field name a trailer filter leaves out.
const DROPPED_NAME: usize = super::parse::LONGEST_HOP_BY_HOP;

/// Rewrites a trailer section as it passes, leaving out the fields that
/// never go on as they came ([`super::parse::hop_by_hop`]: hop-by-hop
/// fields, the framing, X-Forwarded-For, stickyd's own). It holds at most
/// the start of one field name: whether a field goes on is known at its
/// colon, or as soon as its name is longer than any left out. It takes the
/// bytes [`Chunked`] has checked: lines of `token:value` ending in CRLF,
/// then CRLF.
#[derive(Clone, Debug, Default)]
struct TrailerFilter {
    name: [u8; DROPPED_NAME],
    len: u8,
    line: Line,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Line {
    /// At the start of a line: a field's, or the final CRLF.
    #[default]
    Start,
    /// Inside a name, held until it is known.
    Name,
    /// The rest of the line goes on.
    Keep,
    /// The rest of the line is left out.
    Drop,
}

impl TrailerFilter {
    /// Appends to `out` what of `bytes` goes on.
    fn feed(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        let mut at = 0;
        while at < bytes.len() {
            let b = bytes[at];
            match self.line {
                Line::Start => {
                    if b == b'\r' {
                        // The final CRLF.
                        out.push(b);
                        self.line = Line::Keep;
                    } else {
                        self.name[0] = b;
                        self.len = 1;
                        self.line = Line::Name;
                    }
                }
                Line::Name => {
                    let len = usize::from(self.len);
                    if b == b':' && super::parse::hop_by_hop(&self.name[..len]) {
                        self.line = Line::Drop;
                    } else if b == b':' || len == DROPPED_NAME {
                        out.extend_from_slice(&self.name[..len]);
                        out.push(b);
                        self.line = Line::Keep;
                    } else {
                        self.name[len] = b;
                        self.len += 1;
                    }
                }
                Line::Keep | Line::Drop => {
                    // The rest of the line, its LF included.
                    let end = bytes[at..].iter().position(|&c| c == b'\n').map(|i| at + i + 1);
                    let until = end.unwrap_or(bytes.len());
                    if self.line == Line::Keep {
                        out.extend_from_slice(&bytes[at..until]);
                    }
                    if end.is_some() {
                        self.line = Line::Start;
                    }
                    at = until;
                    continue;
                }
            }
            at += 1;
        }
    }
}

/// What of a read goes on to the next hop ([`Remaining::relay`]).
pub struct Relay<'d> {
    /// How many bytes of the read belong to the body (what follows is the
    /// next message's).
    pub taken: usize,
    /// The body's bytes that go on as they came: all of them, up to a
    /// trailer section.
    pub now: &'d [u8],
    /// What goes on after them: the read's part of a trailer section,
    /// rewritten (empty, and unallocated, without one).
    pub trailers: Vec<u8>,
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

    /// Takes what of `data` belongs to the body, as [`Remaining::take`],
    /// and says what goes on for it: the bytes as they came, except a
    /// chunked body's trailer section, which goes on rewritten.
    pub fn relay<'d>(&mut self, data: &'d [u8]) -> Result<Relay<'d>, ChunkError> {
        let Remaining::Chunked(c) = self else {
            let taken = self.take(data)?;
            return Ok(Relay {
                taken,
                now: &data[..taken],
                trailers: Vec::new(),
            });
        };
        let (mut at, mut section) = (0, None);
        let mut trailers = Vec::new();
        while at < data.len() && !c.done() {
            at += match c.step(&data[at..])? {
                Piece::Framing(n) | Piece::Data(n) => n,
                Piece::Trailers(n) => {
                    section.get_or_insert(at);
                    c.filter.feed(&data[at..at + n], &mut trailers);
                    n
                }
            };
        }
        Ok(Relay {
            taken: at,
            now: &data[..section.unwrap_or(at)],
            trailers,
        })
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
            // White space or an extension needs a size before it.
            (b" \r\n\r\n", ChunkError::Size),
            (b";e\r\n\r\n", ChunkError::Size),
        ] {
            let mut c = Chunked::default();
            assert_eq!(c.scan(body), Err(e), "{:?}", String::from_utf8_lossy(body));
        }
        let mut c = Chunked::default();
        let long = format!("1;{}\r\n", "e".repeat(MAX_EXTENSION + 1));
        assert_eq!(c.scan(long.as_bytes()), Err(ChunkError::Extension));
        // The trailer section's fields take MAX_TRAILERS bytes at most.
        let most = format!("0\r\nX:{}\r\n\r\n", "t".repeat(MAX_TRAILERS - 2));
        assert_eq!(whole(most.as_bytes()), Ok(most.len()));
        let mut c = Chunked::default();
        let trailers = format!("0\r\nX:{}\r\n\r\n", "t".repeat(MAX_TRAILERS - 1));
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
                Piece::Framing(n) | Piece::Trailers(n) => at += n,
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

    /// Relays `body` through a [`Remaining::Chunked`] in reads cut at
    /// `cuts`: what goes on, and where the body ended.
    fn relayed(body: &[u8], cuts: &[usize]) -> Result<(Vec<u8>, usize), ChunkError> {
        let mut r = Remaining::of(super::super::parse::BodyKind::Chunked);
        let (mut at, mut out) = (0, Vec::new());
        let mut cuts = cuts.iter().cycle();
        while !r.done() && at < body.len() {
            let end = (at + cuts.next().copied().unwrap_or(body.len())).min(body.len());
            let got = r.relay(&body[at..end])?;
            assert!(got.taken <= end - at && got.now.len() <= got.taken);
            out.extend_from_slice(got.now);
            out.extend_from_slice(&got.trailers);
            at += got.taken;
        }
        Ok((out, at))
    }

    #[test]
    fn trailer_sections_lose_what_never_goes_on_and_chunks_pass_as_they_came() {
        let body = "4;ext=1\r\nwxyz\r\n0\r\nX-Sum: 1\r\nX-Stickyd-Hop: forged\r\nx-stickyd-session:pinned\r\n\
                    X-STICKYD-SESSIONS: 9\r\nConnection: close\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\
                    X-Forwarded-For: 10.0.0.1\r\nX-Stickyd-Sessionsx: long\r\nx-stickyd: short\r\ngrpc-status: 0\r\n\r\nNEXT";
        let want = "4;ext=1\r\nwxyz\r\n0\r\nX-Sum: 1\r\nX-Stickyd-Sessionsx: long\r\nx-stickyd: short\r\ngrpc-status: 0\r\n\r\n";
        for cuts in [vec![usize::MAX], vec![1], vec![2, 3], vec![17, 5, 1]] {
            let (out, end) = relayed(body.as_bytes(), &cuts).unwrap();
            assert_eq!(String::from_utf8_lossy(&out), want, "cuts {cuts:?}");
            assert_eq!(end, body.len() - 4, "cuts {cuts:?}");
        }
        // No trailers: the bytes as they came, nothing held or allocated.
        let plain = b"3\r\nabc\r\n0\r\n\r\n";
        let mut r = Remaining::of(super::super::parse::BodyKind::Chunked);
        let got = r.relay(plain).unwrap();
        assert_eq!(
            (got.taken, got.now, got.trailers.capacity()),
            (plain.len(), &plain[..], 0)
        );
        // Every trailer left out: the section is its final CRLF.
        let (out, _) = relayed(b"0\r\nx-stickyd-hop: a\r\nTE: trailers\r\n\r\n", &[4]).unwrap();
        assert_eq!(out, b"0\r\n\r\n");
        // Other framings pass as they came.
        let mut r = Remaining::Length(3);
        let got = r.relay(b"abcdef").unwrap();
        assert_eq!((got.taken, got.now, got.trailers.is_empty()), (3, &b"abc"[..], true));
    }

    #[test]
    fn trailer_fields_are_token_colon_value_as_hyper_reads_them() {
        for bad in [
            &b"0\r\nX-Stickyd-Hop : forged\r\n\r\n"[..],
            b"0\r\n X-A: folded\r\n\r\n",
            b"0\r\nX-A: 1\r\n\tfolded\r\n\r\n",
            b"0\r\nX\0A: 1\r\n\r\n",
            b"0\r\nX-A: a\0b\r\n\r\n",
            b"0\r\nX-A: a\x7fb\r\n\r\n",
            b"0\r\n: empty\r\n\r\n",
            b"0\r\nno-colon\r\n\r\n",
        ] {
            let mut c = Chunked::default();
            assert_eq!(
                c.scan(bad),
                Err(ChunkError::Trailers),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let mut c = Chunked::default();
        assert_eq!(c.scan(b"0\r\nX-A: a\rb\r\n\r\n"), Err(ChunkError::LineEnd));
        let fine = b"0\r\nX-A:\r\nX-B: \t v\xe9 \r\n!#$%&'*+-.^_`|~09az: x\r\n\r\n";
        assert_eq!(whole(fine), Ok(fine.len()));
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
                        Piece::Framing(n) | Piece::Trailers(n) => part += n,
                    }
                }
                at = part;
            }
            prop_assert_eq!(at, len);
            prop_assert_eq!(payload, chunks.concat());
        }

        /// However a body with trailers is cut into reads, what goes on is
        /// its chunks as they came and its trailers without the fields
        /// left out, and it ends where it ends.
        #[test]
        fn any_split_relays_the_same_bytes(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..100), 0..5),
            fields in proptest::collection::vec((0usize..8, any::<bool>(), "[ -~]{0,12}"), 0..6),
            cuts in proptest::collection::vec(1usize..20, 1..30),
        ) {
            const NAMES: [&str; 8] = [
                "x-stickyd-hop", "x-stickyd-session", "x-stickyd-sessions", "te",
                "x-sum", "grpc-status", "x-stickyd-sessions-more", "x-stickyd",
            ];
            let mut body = encode(&chunks, false);
            body.truncate(body.len() - 2);
            let mut want = body.clone();
            for (i, upper, value) in &fields {
                let name = if *upper { NAMES[*i].to_ascii_uppercase() } else { NAMES[*i].to_string() };
                let line = format!("{name}:{value}\r\n");
                body.extend_from_slice(line.as_bytes());
                if *i >= 4 {
                    want.extend_from_slice(line.as_bytes());
                }
            }
            body.extend_from_slice(b"\r\n");
            want.extend_from_slice(b"\r\n");
            let len = body.len();
            body.extend_from_slice(b"GET /next HTTP/1.1\r\n\r\n");
            let (out, end) = relayed(&body, &cuts).unwrap();
            prop_assert_eq!(end, len);
            prop_assert_eq!(String::from_utf8_lossy(&out), String::from_utf8_lossy(&want));
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
