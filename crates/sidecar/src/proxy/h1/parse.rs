//! HTTP/1.x message heads: parsed with httparse into byte ranges of the
//! connection's buffer, with the framing rules of RFC 9112 §6 applied as
//! hyper applies them (the hostile-input suite and a differential fuzz
//! target hold the two to the same answers), and written out again for the
//! next hop in one pass.

use crate::names;
use crate::proxy::token::AppField;
use std::mem::MaybeUninit;
use std::ops::Range;

/// Why a head is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadError {
    /// Not HTTP/1.x syntax (bad token, bare CR, NUL, obs-fold, version).
    Malformed,
    /// The head is larger than the limit.
    TooLarge,
    /// More header fields than the limit.
    TooManyHeaders,
    /// Content-Length that is not one decimal number, or several that differ.
    ContentLength,
    /// Transfer-Encoding in HTTP/1.0, or one that does not end in chunked.
    TransferEncoding,
}

/// How a message's body is framed (RFC 9112 §6.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyKind {
    /// No body.
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Until the connection closes (responses only).
    Close,
}

/// One header field: byte ranges of its name and value in the buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field {
    name: (u32, u32),
    value: (u32, u32),
}

/// A parsed request head. Ranges index the buffer it was parsed from.
#[derive(Debug, PartialEq, Eq)]
pub struct RequestHead {
    /// Bytes of the head, the final CRLF included.
    pub len: usize,
    method: (u32, u32),
    target: (u32, u32),
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor: u8,
    pub fields: Vec<Field>,
    pub body: BodyKind,
    /// The connection stays open after this exchange, as far as the client
    /// is concerned (HTTP/1.1 without `close`, HTTP/1.0 with `keep-alive`;
    /// never after a request framed by both Content-Length and chunked).
    pub keep_alive: bool,
    /// An HTTP/1.1 upgrade (WebSocket): `Upgrade` present and `Connection`
    /// listing `upgrade`.
    pub upgrade: bool,
    pub expect_continue: bool,
}

/// A parsed response head.
#[derive(Debug, PartialEq, Eq)]
pub struct ResponseHead {
    pub len: usize,
    pub status: u16,
    reason: (u32, u32),
    pub minor: u8,
    pub fields: Vec<Field>,
    pub body: BodyKind,
    /// The length its Content-Length fields announce, one value however
    /// they spell it (`2, 2`, or the field twice).
    pub content_length: Option<u64>,
    /// The upstream keeps the connection open after this response.
    pub keep_alive: bool,
}

/// The header fields httparse found, as ranges of `buf`.
fn fields(buf: &[u8], headers: &[httparse::Header<'_>]) -> Vec<Field> {
    headers
        .iter()
        .map(|h| Field {
            name: range(buf, h.name.as_bytes()),
            value: range(buf, h.value),
        })
        .collect()
}

fn range(buf: &[u8], part: &[u8]) -> (u32, u32) {
    // Both point into the same buffer; the offset is plain arithmetic on
    // their addresses.
    let start = part.as_ptr() as usize - buf.as_ptr() as usize;
    (start as u32, (start + part.len()) as u32)
}

fn at(buf: &[u8], r: (u32, u32)) -> &[u8] {
    &buf[r.0 as usize..r.1 as usize]
}

impl Field {
    pub fn name<'b>(&self, buf: &'b [u8]) -> &'b [u8] {
        at(buf, self.name)
    }
    pub fn value<'b>(&self, buf: &'b [u8]) -> &'b [u8] {
        at(buf, self.value)
    }
    /// The whole `name: value` line's ranges, to copy it as it came.
    fn line(&self) -> Range<usize> {
        self.name.0 as usize..self.value.1 as usize
    }
}

impl RequestHead {
    pub fn method<'b>(&self, buf: &'b [u8]) -> &'b [u8] {
        at(buf, self.method)
    }
    pub fn target<'b>(&self, buf: &'b [u8]) -> &'b [u8] {
        at(buf, self.target)
    }
    /// The values of every field named `name` (lowercase).
    pub fn values<'b>(&'b self, buf: &'b [u8], name: &'b [u8]) -> impl Iterator<Item = &'b [u8]> + 'b {
        values(&self.fields, buf, name)
    }
}

impl ResponseHead {
    pub fn reason<'b>(&self, buf: &'b [u8]) -> &'b [u8] {
        at(buf, self.reason)
    }
    /// The values of every field named `name` (lowercase).
    pub fn values<'b>(&'b self, buf: &'b [u8], name: &'b [u8]) -> impl Iterator<Item = &'b [u8]> + 'b {
        values(&self.fields, buf, name)
    }
}

fn values<'b>(fields: &'b [Field], buf: &'b [u8], name: &'b [u8]) -> impl Iterator<Item = &'b [u8]> + 'b {
    fields
        .iter()
        .filter(move |f| f.name(buf).eq_ignore_ascii_case(name))
        .map(move |f| f.value(buf))
}

/// Header arrays up to this size live on the stack.
const STACK_HEADERS: usize = 128;

/// Room for `max` header fields: on the stack up to [`STACK_HEADERS`].
macro_rules! headers {
    ($name:ident, $max:expr) => {
        let mut stack = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; STACK_HEADERS];
        let mut heap: Vec<MaybeUninit<httparse::Header<'_>>> = Vec::new();
        let $name = if $max <= STACK_HEADERS {
            &mut stack[..$max]
        } else {
            heap.resize_with($max, MaybeUninit::uninit);
            &mut heap[..]
        };
    };
}

fn map_error(e: httparse::Error) -> HeadError {
    match e {
        httparse::Error::TooManyHeaders => HeadError::TooManyHeaders,
        _ => HeadError::Malformed,
    }
}

/// A Content-Length value: decimal digits only, no sign, no list, no
/// overflow (as hyper reads a request's).
fn digits(v: &[u8]) -> Option<u64> {
    if v.is_empty() {
        return None;
    }
    v.iter().try_fold(0u64, |n, &b| {
        if b.is_ascii_digit() {
            n.checked_mul(10)?.checked_add(u64::from(b - b'0'))
        } else {
            None
        }
    })
}

/// Adds a response's Content-Length field to the length found so far: a
/// list of equal values is one value, as is the field repeated (RFC 9110
/// §8.6); values that differ, or one that is not a number, are an error.
pub fn add_length(length: &mut Option<u64>, value: &[u8]) -> Result<(), HeadError> {
    for v in value.split(|&b| b == b',') {
        let n = digits(v.trim_ascii()).ok_or(HeadError::ContentLength)?;
        if length.is_some_and(|prev| prev != n) {
            return Err(HeadError::ContentLength);
        }
        *length = Some(n);
    }
    Ok(())
}

/// Visible ASCII and tabs only (what `HeaderValue::to_str` takes): a value
/// with other bytes names no token, as in hyper.
fn textual(v: &[u8]) -> bool {
    v.iter().all(|&b| b == b'\t' || (0x20..0x7f).contains(&b))
}

/// The comma-separated tokens of a field value, trimmed.
pub fn tokens(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    let v = if textual(v) { v } else { &[] };
    v.split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

fn has_token(v: &[u8], token: &[u8]) -> bool {
    tokens(v).any(|t| t.eq_ignore_ascii_case(token))
}

/// Is `chunked` the final transfer coding of this value?
fn ends_chunked(v: &[u8]) -> bool {
    textual(v)
        && v.rsplit(|&b| b == b',')
            .next()
            .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

/// Parses a request head from the start of `buf`. `Ok(None)`: incomplete.
/// The size limit is the caller's (it knows how much it has read).
pub fn request(buf: &[u8], max_headers: usize) -> Result<Option<RequestHead>, HeadError> {
    {
        headers!(headers, max_headers);
        let mut req = httparse::Request::new(&mut []);
        let len = match req.parse_with_uninit_headers(buf, headers) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => return Err(map_error(e)),
        };
        let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
            return Err(HeadError::Malformed);
        };
        let http11 = minor == 1;
        let fields = fields(buf, req.headers);
        let mut head = RequestHead {
            len,
            method: range(buf, method.as_bytes()),
            target: range(buf, target.as_bytes()),
            minor,
            fields,
            body: BodyKind::None,
            keep_alive: http11,
            upgrade: false,
            expect_continue: false,
        };
        let (mut cl, mut te, mut te_chunked, mut close) = (None::<u64>, false, false, false);
        let mut cl_after_te = false;
        let (mut upgrade_field, mut connection_upgrade) = (false, false);
        for f in &head.fields {
            let (name, value) = (f.name(buf), f.value(buf));
            if name.eq_ignore_ascii_case(b"transfer-encoding") {
                if !http11 {
                    return Err(HeadError::TransferEncoding);
                }
                te = true;
                // The last Transfer-Encoding field decides, as in hyper.
                te_chunked = ends_chunked(value);
            } else if name.eq_ignore_ascii_case(b"content-length") {
                // After a Transfer-Encoding, a Content-Length is not read at
                // all: the body is chunked, and the connection closes after it.
                if te {
                    cl_after_te = true;
                    continue;
                }
                let n = digits(value).ok_or(HeadError::ContentLength)?;
                if cl.is_some_and(|prev| prev != n) {
                    return Err(HeadError::ContentLength);
                }
                cl = Some(n);
            } else if name.eq_ignore_ascii_case(b"connection") {
                if has_token(value, b"close") {
                    close = true;
                } else if !http11 && has_token(value, b"keep-alive") {
                    head.keep_alive = true;
                }
                connection_upgrade |= has_token(value, b"upgrade");
            } else if name.eq_ignore_ascii_case(b"expect") {
                head.expect_continue = value.eq_ignore_ascii_case(b"100-continue");
            } else if name.eq_ignore_ascii_case(b"upgrade") {
                upgrade_field = true;
            }
        }
        if te && !te_chunked {
            return Err(HeadError::TransferEncoding);
        }
        head.body = if te {
            BodyKind::Chunked
        } else {
            match cl {
                Some(0) | None => BodyKind::None,
                Some(n) => BodyKind::Length(n),
            }
        };
        // Both framings: read by Transfer-Encoding alone, then close, so
        // that nothing after the body is read as a request (RFC 9112 §6.1).
        if close || (te && (cl.is_some() || cl_after_te)) {
            head.keep_alive = false;
        }
        head.upgrade = http11 && upgrade_field && connection_upgrade;
        Ok(Some(head))
    }
}

/// Parses a response head to a request with `method`. `Ok(None)`: incomplete.
pub fn response(buf: &[u8], max_headers: usize, head_request: bool) -> Result<Option<ResponseHead>, HeadError> {
    {
        headers!(headers, max_headers);
        let mut res = httparse::Response::new(&mut []);
        let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut res, buf, headers) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => return Err(map_error(e)),
        };
        let (Some(status), Some(minor)) = (res.code, res.version) else {
            return Err(HeadError::Malformed);
        };
        let reason = res.reason.unwrap_or("");
        let fields = fields(buf, res.headers);
        let reason_range = if reason.is_empty() {
            (len as u32, len as u32)
        } else {
            range(buf, reason.as_bytes())
        };
        let mut head = ResponseHead {
            len,
            status,
            reason: reason_range,
            minor,
            fields,
            body: BodyKind::None,
            content_length: None,
            keep_alive: minor == 1,
        };
        let (mut cl, mut te, mut te_chunked) = (None::<u64>, false, false);
        for f in &head.fields {
            let (name, value) = (f.name(buf), f.value(buf));
            if name.eq_ignore_ascii_case(b"transfer-encoding") {
                te = true;
                te_chunked = ends_chunked(value);
            } else if name.eq_ignore_ascii_case(b"content-length") {
                add_length(&mut cl, value)?;
            } else if name.eq_ignore_ascii_case(b"connection") {
                if has_token(value, b"close") {
                    head.keep_alive = false;
                } else if minor == 0 && has_token(value, b"keep-alive") {
                    head.keep_alive = true;
                }
            }
        }
        head.body = if head_request || (100..200).contains(&status) || status == 204 || status == 304 {
            BodyKind::None
        } else if te {
            if te_chunked {
                BodyKind::Chunked
            } else {
                BodyKind::Close
            }
        } else {
            match cl {
                Some(0) => BodyKind::None,
                Some(n) => BodyKind::Length(n),
                None => BodyKind::Close,
            }
        };
        if head.body == BodyKind::Close || (te && cl.is_some()) {
            head.keep_alive = false;
        }
        head.content_length = cl;
        Ok(Some(head))
    }
}

/// Hop-by-hop fields (RFC 9110 §7.6.1), the framing, X-Forwarded-For and
/// stickyd's own fields: never copied to the next hop as they came, in a
/// head or in trailers.
const HOP_BY_HOP: [&[u8]; 12] = [
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"te",
    b"transfer-encoding",
    b"upgrade",
    b"content-length",
    names::OWN[0].as_bytes(),
    names::OWN[1].as_bytes(),
    names::OWN[2].as_bytes(),
    names::OWN[3].as_bytes(),
    b"x-forwarded-for",
];

/// The length of the longest name in [`HOP_BY_HOP`]: a longer name is none
/// of them.
pub const LONGEST_HOP_BY_HOP: usize = {
    let mut longest = 0;
    let mut i = 0;
    while i < HOP_BY_HOP.len() {
        if HOP_BY_HOP[i].len() > longest {
            longest = HOP_BY_HOP[i].len();
        }
        i += 1;
    }
    longest
};

/// Is `name` one of [`HOP_BY_HOP`] (any case)?
pub fn hop_by_hop(name: &[u8]) -> bool {
    HOP_BY_HOP.iter().any(|n| n.eq_ignore_ascii_case(name))
}

/// Fields that `Connection` names (other than the usual options), dropped
/// with it. stickyd's own are never dropped this way.
fn connection_named<'b>(buf: &'b [u8], fields: &'b [Field]) -> Vec<&'b [u8]> {
    fields
        .iter()
        .filter(|f| f.name(buf).eq_ignore_ascii_case(b"connection"))
        .flat_map(|f| tokens(f.value(buf)))
        .filter(|t| {
            ![&b"keep-alive"[..], b"close", b"upgrade", b"te"]
                .iter()
                .any(|k| t.eq_ignore_ascii_case(k))
        })
        .collect()
}

fn named(list: &[&[u8]], name: &[u8]) -> bool {
    list.iter().any(|n| n.eq_ignore_ascii_case(name))
}

/// Writes a field.
pub fn push_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

fn push_content_length(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(b"content-length: ");
    push_u64(out, n);
    out.extend_from_slice(b"\r\n");
}

/// Writes the request head for the next hop into `out`: the request line
/// in HTTP/1.1, every end-to-end field as it came, the framing again
/// (`content-length`, or `transfer-encoding: chunked`), `te: trailers` and
/// the upgrade fields where they apply, and X-Forwarded-For with the
/// client's entry appended (several lines folded into one). Fields named
/// `held` are left out: the caller writes them for its destination. The
/// caller adds its own fields and the final CRLF.
pub fn write_request(buf: &[u8], head: &RequestHead, client: &[u8], held: Option<&[u8]>, out: &mut Vec<u8>) {
    out.extend_from_slice(head.method(buf));
    out.push(b' ');
    // A fragment is no part of a request target (RFC 9112 §3.2): it stays
    // behind, as hyper leaves it.
    let target = head.target(buf);
    let end = target.iter().position(|&b| b == b'#').unwrap_or(target.len());
    out.extend_from_slice(&target[..end]);
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let drop = connection_named(buf, &head.fields);
    let mut xff: Option<Vec<u8>> = None;
    let mut trailers = false;
    for f in &head.fields {
        let name = f.name(buf);
        if !hop_by_hop(name) {
            let keep = drop.is_empty() || !named(&drop, name);
            if keep && held.is_none_or(|h| !name.eq_ignore_ascii_case(h)) {
                out.extend_from_slice(&buf[f.line()]);
                out.extend_from_slice(b"\r\n");
            }
            continue;
        }
        if name.eq_ignore_ascii_case(b"x-forwarded-for") {
            let v = f.value(buf).trim_ascii();
            if !v.is_empty() {
                let x = xff.get_or_insert_with(|| Vec::with_capacity(64));
                if !x.is_empty() {
                    x.extend_from_slice(b", ");
                }
                x.extend_from_slice(v);
            }
        } else if name.eq_ignore_ascii_case(b"te") {
            trailers |= has_token(f.value(buf), b"trailers");
        } else if name.eq_ignore_ascii_case(b"upgrade") && head.upgrade {
            out.extend_from_slice(&buf[f.line()]);
            out.extend_from_slice(b"\r\n");
        }
    }
    match head.body {
        BodyKind::Length(n) => push_content_length(out, n),
        BodyKind::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        BodyKind::None | BodyKind::Close => {}
    }
    if trailers {
        out.extend_from_slice(b"te: trailers\r\n");
    }
    if head.upgrade {
        out.extend_from_slice(b"connection: upgrade\r\n");
    }
    out.extend_from_slice(b"x-forwarded-for: ");
    if let Some(x) = xff {
        out.extend_from_slice(&x);
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(client);
    out.extend_from_slice(b"\r\n");
}

/// What the response head for the client gets beside the upstream's own.
#[derive(Default)]
pub struct ResponseEdits<'a> {
    /// stickyd's fields (the token's Set-Cookie or header), added after the
    /// app's own.
    pub add: &'a [(&'a [u8], &'a [u8])],
    /// The upstream's fields of this name are left out (the affinity
    /// header, which is stickyd's).
    pub drop: Option<&'a [u8]>,
    /// App-cookie and app-header modes: the app's fields that set its
    /// carrier get this token prefixed to its value.
    pub prefix: Option<(AppField<'a>, &'a [u8])>,
    /// Tell the client this connection closes after the response.
    pub close: bool,
    /// The client speaks HTTP/1.0: a chunked body goes out decoded and the
    /// connection closes after it.
    pub client_http10: bool,
    /// This pod's active sessions, for the peer that forwarded the request
    /// (`x-stickyd-sessions`, least-sessions placement).
    pub sessions: Option<u64>,
}

/// Writes the response head for the client: the status line in the
/// client's version, every end-to-end field as it came, the framing, and
/// the edits. A response that carries a token is marked private (`public`
/// and `s-maxage` out, as HAProxy's `nocache`). On a 101 the upgrade fields
/// stay.
pub fn write_response(buf: &[u8], head: &ResponseHead, edits: &ResponseEdits<'_>, out: &mut Vec<u8>) {
    let token = !edits.add.is_empty() || edits.prefix.is_some();
    out.extend_from_slice(if edits.client_http10 {
        b"HTTP/1.0 "
    } else {
        b"HTTP/1.1 "
    });
    push_u64(out, u64::from(head.status));
    out.push(b' ');
    out.extend_from_slice(head.reason(buf));
    out.extend_from_slice(b"\r\n");
    let switching = head.status == 101;
    let drop = connection_named(buf, &head.fields);
    let mut cache: Option<Vec<u8>> = None;
    for f in &head.fields {
        let name = f.name(buf);
        if token && name.eq_ignore_ascii_case(b"cache-control") {
            let c = cache.get_or_insert_with(Vec::new);
            if !c.is_empty() {
                c.extend_from_slice(b", ");
            }
            c.extend_from_slice(f.value(buf));
            continue;
        }
        if !hop_by_hop(name) {
            if edits.drop.is_some_and(|d| name.eq_ignore_ascii_case(d)) || !drop.is_empty() && named(&drop, name) {
                continue;
            }
            let prefixed = match edits.prefix {
                Some((app, token)) if name.eq_ignore_ascii_case(app.response_field()) => {
                    app.prefix(f.value(buf), token)
                }
                _ => None,
            };
            match prefixed {
                Some(v) => push_field(out, name, &v),
                None => {
                    out.extend_from_slice(&buf[f.line()]);
                    out.extend_from_slice(b"\r\n");
                }
            }
        } else if switching && name.eq_ignore_ascii_case(b"upgrade") {
            out.extend_from_slice(&buf[f.line()]);
            out.extend_from_slice(b"\r\n");
        }
    }
    match head.body {
        BodyKind::Chunked if !edits.client_http10 => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        BodyKind::Chunked | BodyKind::Close => {}
        // A HEAD response or a 304 keeps the length it announces, as one
        // value; a 1xx or a 204 has none (RFC 9110 §8.6).
        BodyKind::Length(_) | BodyKind::None => {
            if let Some(n) = head.content_length.filter(|_| head.status >= 200 && head.status != 204) {
                push_content_length(out, n);
            }
        }
    }
    if token {
        push_field(out, b"cache-control", &private(cache.as_deref()));
    }
    for (name, value) in edits.add {
        push_field(out, name, value);
    }
    if let Some(n) = edits.sessions {
        out.extend_from_slice(names::SESSIONS.as_bytes());
        out.extend_from_slice(b": ");
        push_u64(out, n);
        out.extend_from_slice(b"\r\n");
    }
    if switching {
        out.extend_from_slice(b"connection: upgrade\r\n");
    } else if edits.close {
        out.extend_from_slice(b"connection: close\r\n");
    } else if edits.client_http10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Cache-Control for a response that carries the session cookie: `private`
/// added, `public` and `s-maxage` removed; `private` or `no-store` already
/// there: as it is.
fn private(existing: Option<&[u8]>) -> Vec<u8> {
    let Some(v) = existing else {
        return b"private".to_vec();
    };
    let directives: Vec<&[u8]> = tokens(v).collect();
    if directives
        .iter()
        .any(|d| d.eq_ignore_ascii_case(b"private") || d.eq_ignore_ascii_case(b"no-store"))
    {
        return v.to_vec();
    }
    let mut out = Vec::with_capacity(v.len() + 9);
    for d in directives {
        let lower = d.to_ascii_lowercase();
        if lower == b"public" || lower.starts_with(b"s-maxage") {
            continue;
        }
        out.extend_from_slice(d);
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(b"private");
    out
}

/// Did the request arrive over https, by X-Forwarded-Proto (the first
/// value, set by the outermost proxy)?
pub fn forwarded_https(buf: &[u8], head: &RequestHead) -> bool {
    head.values(buf, b"x-forwarded-proto")
        .next()
        .and_then(|v| v.split(|&b| b == b',').next())
        .is_some_and(|v| v.trim_ascii().eq_ignore_ascii_case(b"https"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(s: &str) -> Result<Option<RequestHead>, HeadError> {
        request(s.as_bytes(), 100)
    }

    fn ok(s: &str) -> RequestHead {
        req(s).unwrap().unwrap()
    }

    #[test]
    fn a_plain_request() {
        let s = "GET /a?b=1 HTTP/1.1\r\nHost: t\r\nCookie: a=1\r\n\r\nrest";
        let h = ok(s);
        let b = s.as_bytes();
        assert_eq!(h.len, s.len() - 4);
        assert_eq!(h.method(b), b"GET");
        assert_eq!(h.target(b), b"/a?b=1");
        assert_eq!(h.minor, 1);
        assert_eq!(h.body, BodyKind::None);
        assert!(h.keep_alive && !h.upgrade && !h.expect_continue);
        assert_eq!(h.values(b, b"cookie").collect::<Vec<_>>(), [b"a=1"]);
        assert_eq!(req("GET / HTTP/1.1\r\nHost: t\r\n"), Ok(None));
        assert_eq!(req("GE"), Ok(None));
    }

    #[test]
    fn framing_follows_rfc_9112_as_hyper_does() {
        let h = ok("POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n");
        assert_eq!(h.body, BodyKind::Length(5));
        assert_eq!(ok("POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n").body, BodyKind::None);
        let h = ok("POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n");
        assert_eq!(h.body, BodyKind::Chunked);
        assert!(h.keep_alive);
        // Both: by Transfer-Encoding alone, and the connection closes.
        let h = ok("POST / HTTP/1.1\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!((h.body, h.keep_alive), (BodyKind::Chunked, false));
        let h = ok("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\n");
        assert_eq!((h.body, h.keep_alive), (BodyKind::Chunked, false));
        // After Transfer-Encoding, a Content-Length is not even read.
        let h = ok("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: x\r\n\r\n");
        assert_eq!((h.body, h.keep_alive), (BodyKind::Chunked, false));
        assert_eq!(
            req("POST / HTTP/1.1\r\nContent-Length: x\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Err(HeadError::ContentLength)
        );
        for (bad, e) in [
            ("Content-Length: 0\r\nContent-Length: 40", HeadError::ContentLength),
            ("Content-Length: 0, 40", HeadError::ContentLength),
            ("Content-Length: 3, 3", HeadError::ContentLength),
            ("Content-Length: +0", HeadError::ContentLength),
            ("Content-Length: 0x10", HeadError::ContentLength),
            ("Content-Length: ", HeadError::ContentLength),
            ("Content-Length: 99999999999999999999999", HeadError::ContentLength),
            ("Transfer-Encoding: chunked, identity", HeadError::TransferEncoding),
            ("Transfer-Encoding: xchunked", HeadError::TransferEncoding),
            (
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: gzip",
                HeadError::TransferEncoding,
            ),
            ("Transfer-Encoding : chunked", HeadError::Malformed),
            ("X-A: a\r\n Transfer-Encoding: chunked", HeadError::Malformed),
            ("X-Nul: a\0b", HeadError::Malformed),
            ("X-Cr: a\rb", HeadError::Malformed),
        ] {
            assert_eq!(
                req(&format!("POST / HTTP/1.1\r\nHost: t\r\n{bad}\r\n\r\n")),
                Err(e),
                "{bad:?}"
            );
        }
        assert_eq!(
            req("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Err(HeadError::TransferEncoding)
        );
        for bad in [
            "GET /a\0b HTTP/1.1\r\n\r\n",
            "GET /a b HTTP/1.1\r\n\r\n",
            "GET /a HTTP/1.7\r\n\r\n",
            "GET /a HTTP/1.1\rHost: t\r\r\n",
            "\0GET / HTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(req(bad), Err(HeadError::Malformed), "{bad:?}");
        }
        let many: String = (0..101).map(|i| format!("X-{i}: v\r\n")).collect();
        assert_eq!(
            req(&format!("GET / HTTP/1.1\r\n{many}\r\n")),
            Err(HeadError::TooManyHeaders)
        );
    }

    #[test]
    fn connection_options() {
        assert!(!ok("GET / HTTP/1.1\r\nConnection: close\r\n\r\n").keep_alive);
        assert!(!ok("GET / HTTP/1.1\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n").keep_alive);
        assert!(!ok("GET / HTTP/1.0\r\n\r\n").keep_alive);
        assert!(ok("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").keep_alive);
        let up = ok("GET / HTTP/1.1\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n");
        assert!(up.upgrade);
        assert!(!ok("GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n").upgrade);
        assert!(!ok("GET / HTTP/1.0\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n").upgrade);
        assert!(ok("POST / HTTP/1.1\r\nExpect: 100-Continue\r\n\r\n").expect_continue);
    }

    fn written(s: &str, client: &str) -> String {
        let h = ok(s);
        let mut out = Vec::new();
        write_request(s.as_bytes(), &h, client.as_bytes(), None, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn the_next_hop_gets_end_to_end_fields_and_the_framing_again() {
        let w = written(
            "POST /p HTTP/1.1\r\nHost: shop\r\nConnection: keep-alive, X-Secret\r\nX-Secret: s\r\nKeep-Alive: 5\r\n\
             TE: trailers, deflate\r\nX-Stickyd-Hop: forged\r\nx-stickyd-session: forged\r\nX-Forwarded-For: 203.0.113.9\r\n\
             x-forwarded-for:  198.51.100.1 \r\nProxy-Connection: x\r\nContent-Length: 3\r\nCookie: a=1\r\n\r\nabc",
            "127.0.0.1",
        );
        assert_eq!(
            w,
            "POST /p HTTP/1.1\r\nHost: shop\r\nCookie: a=1\r\ncontent-length: 3\r\nte: trailers\r\n\
             x-forwarded-for: 203.0.113.9, 198.51.100.1, 127.0.0.1\r\n"
        );
        let w = written(
            "POST /c HTTP/1.0\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n",
            "10.1.2.3",
        );
        assert_eq!(w, "POST /c HTTP/1.1\r\nx-forwarded-for: 10.1.2.3\r\n");
        let w = written(
            "PUT /u HTTP/1.1\r\nTransfer-Encoding: gzip,chunked\r\nContent-Length: 9\r\n\r\n",
            "::1",
        );
        assert_eq!(
            w,
            "PUT /u HTTP/1.1\r\ntransfer-encoding: chunked\r\nx-forwarded-for: ::1\r\n"
        );
        let w = written(
            "GET /ws HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: k\r\n\r\n",
            "127.0.0.1",
        );
        assert_eq!(
            w,
            "GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nSec-WebSocket-Key: k\r\nconnection: upgrade\r\n\
             x-forwarded-for: 127.0.0.1\r\n"
        );
        // Without an upgrade, Upgrade goes.
        let w = written("GET / HTTP/1.1\r\nUpgrade: h2c\r\n\r\n", "127.0.0.1");
        assert_eq!(w, "GET / HTTP/1.1\r\nx-forwarded-for: 127.0.0.1\r\n");
    }

    fn res(s: &str, head_request: bool) -> ResponseHead {
        response(s.as_bytes(), 100, head_request).unwrap().unwrap()
    }

    #[test]
    fn response_framing() {
        assert_eq!(
            res("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", false).body,
            BodyKind::Length(3)
        );
        assert_eq!(
            res("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", true).body,
            BodyKind::None
        );
        assert_eq!(res("HTTP/1.1 204 No Content\r\n\r\n", false).body, BodyKind::None);
        assert_eq!(
            res("HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n", false).body,
            BodyKind::None
        );
        assert_eq!(res("HTTP/1.1 100 Continue\r\n\r\n", false).body, BodyKind::None);
        let h = res("HTTP/1.1 200 OK\r\n\r\n", false);
        assert_eq!((h.body, h.keep_alive), (BodyKind::Close, false));
        let h = res(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
            false,
        );
        assert_eq!((h.body, h.keep_alive), (BodyKind::Chunked, false));
        let h = res("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", false);
        assert_eq!(h.body, BodyKind::Close);
        assert_eq!(
            res("HTTP/1.1 200 OK\r\nContent-Length: 4, 4\r\n\r\n", false).body,
            BodyKind::Length(4)
        );
        assert!(response(b"HTTP/1.1 200 OK\r\nContent-Length: 4, 5\r\n\r\n", 100, false).is_err());
        assert!(
            !res(
                "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n",
                false
            )
            .keep_alive
        );
        assert!(!res("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", false).keep_alive);
        assert!(
            res(
                "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\n",
                false
            )
            .keep_alive
        );
        assert_eq!(response(b"HTTP/1.1 200 OK\r\n", 100, false), Ok(None));
        assert!(response(b"HTTP/1.1 2000 OK\r\n\r\n", 100, false).is_err());
    }

    fn rewritten(s: &str, edits: ResponseEdits<'_>) -> String {
        let h = res(s, false);
        let mut out = Vec::new();
        write_response(s.as_bytes(), &h, &edits, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn the_client_gets_end_to_end_fields_the_cookie_and_the_framing() {
        let r = rewritten(
            "HTTP/1.1 200 Fine\r\nContent-Type: text/plain\r\nConnection: X-Internal\r\nX-Internal: 1\r\n\
             x-stickyd-hop: leak\r\nSet-Cookie: app=1\r\nCache-Control: public, max-age=60, s-maxage=600\r\n\
             Content-Length: 2\r\nKeep-Alive: timeout=5\r\n\r\nok",
            ResponseEdits {
                add: &[(b"set-cookie", b"stickyd=v; Path=/")],
                ..Default::default()
            },
        );
        assert_eq!(
            r,
            "HTTP/1.1 200 Fine\r\nContent-Type: text/plain\r\nSet-Cookie: app=1\r\ncontent-length: 2\r\n\
             cache-control: max-age=60, private\r\nset-cookie: stickyd=v; Path=/\r\n\r\n"
        );
        let r = rewritten(
            "HTTP/1.1 200 OK\r\nCache-Control: no-store\r\nTransfer-Encoding: chunked\r\n\r\n",
            ResponseEdits {
                add: &[(b"set-cookie", b"s=1")],
                close: true,
                ..Default::default()
            },
        );
        assert_eq!(
            r,
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncache-control: no-store\r\nset-cookie: s=1\r\n\
             connection: close\r\n\r\n"
        );
        let r = rewritten(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            ResponseEdits {
                client_http10: true,
                close: true,
                ..Default::default()
            },
        );
        assert_eq!(r, "HTTP/1.0 200 OK\r\nconnection: close\r\n\r\n");
        let r = rewritten(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: a\r\n\r\n",
            ResponseEdits::default(),
        );
        assert_eq!(
            r,
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: a\r\nconnection: upgrade\r\n\r\n"
        );
        // No reason phrase.
        let r = rewritten("HTTP/1.1 404 \r\nContent-Length: 0\r\n\r\n", ResponseEdits::default());
        assert_eq!(r, "HTTP/1.1 404 \r\ncontent-length: 0\r\n\r\n");
    }

    #[test]
    fn one_content_length_goes_on_however_it_came_and_none_on_a_1xx_or_204() {
        for s in [
            "HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\ncontent-length: 2\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 2 ,2,  2\r\nContent-Length: 2\r\n\r\n",
        ] {
            assert_eq!(
                rewritten(s, ResponseEdits::default()),
                "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n",
                "{s:?}"
            );
        }
        // A HEAD response keeps the length it announces, as one value.
        let s = "HTTP/1.1 200 OK\r\nContent-Length: 7, 7\r\n\r\n";
        let h = response(s.as_bytes(), 100, true).unwrap().unwrap();
        assert_eq!((h.body, h.content_length), (BodyKind::None, Some(7)));
        let mut out = Vec::new();
        write_response(s.as_bytes(), &h, &ResponseEdits::default(), &mut out);
        assert_eq!(out, b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\n");
        // An interim response loses what a final one loses, and any length.
        let r = rewritten(
            "HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\nX-Stickyd-Hop: leak\r\n\
             x-stickyd-sessions: 9\r\nx-stickyd-session: leak\r\nConnection: x-private\r\nX-Private: 1\r\n\
             Keep-Alive: 5\r\nContent-Length: 0\r\n\r\n",
            ResponseEdits::default(),
        );
        assert_eq!(r, "HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n");
        let r = rewritten(
            "HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n",
            ResponseEdits::default(),
        );
        assert_eq!(r, "HTTP/1.1 204 No Content\r\n\r\n");
        let r = rewritten(
            "HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n",
            ResponseEdits::default(),
        );
        assert_eq!(r, "HTTP/1.1 304 Not Modified\r\ncontent-length: 5\r\n\r\n");
    }

    #[test]
    fn the_session_count_for_a_peer_replaces_any_copy_and_marks_nothing_private() {
        let r = rewritten(
            "HTTP/1.1 200 OK\r\nX-Stickyd-Sessions: 1\r\nx-stickyd-sessions: 2\r\nContent-Length: 0\r\n\r\n",
            ResponseEdits {
                sessions: Some(300),
                ..Default::default()
            },
        );
        assert_eq!(
            r,
            "HTTP/1.1 200 OK\r\ncontent-length: 0\r\nx-stickyd-sessions: 300\r\n\r\n"
        );
        // Not for a peer: a copy (the app's, or a peer's on its way to the client) never passes.
        let r = rewritten(
            "HTTP/1.1 200 OK\r\nx-stickyd-sessions: 2\r\nContent-Length: 0\r\n\r\n",
            ResponseEdits::default(),
        );
        assert_eq!(r, "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
    }

    #[test]
    fn held_fields_are_left_to_the_caller() {
        let s = "GET / HTTP/1.1\r\nCookie: a=1\r\nHost: h\r\ncookie: b=2\r\n\r\n";
        let h = ok(s);
        let mut out = Vec::new();
        write_request(s.as_bytes(), &h, b"::1", Some(b"cookie"), &mut out);
        assert_eq!(out, b"GET / HTTP/1.1\r\nHost: h\r\nx-forwarded-for: ::1\r\n");
        assert_eq!(h.values(s.as_bytes(), b"cookie").count(), 2);
    }

    #[test]
    fn the_token_edits_of_a_response_served_here() {
        let t = crate::affinity::Codec::unsigned().encode(
            crate::affinity::SessionId::for_pod("p"),
            crate::affinity::Sid::from_bytes([1; 6]),
            0,
            0,
        );
        let s = "HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nX-Pin: the-apps\r\nset-cookie: sid=v; Max-Age=9; HttpOnly\r\n\
                 Content-Length: 0\r\n\r\n";
        let r = rewritten(
            s,
            ResponseEdits {
                add: &[(b"x-pin", t.as_bytes())],
                drop: Some(b"x-pin"),
                prefix: Some((AppField::Cookie(b"sid"), t.as_bytes())),
                ..Default::default()
            },
        );
        assert_eq!(
            r,
            format!(
                "HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nset-cookie: sid={t}~v; Max-Age=9; HttpOnly\r\ncontent-length: 0\r\n\
                 cache-control: private\r\nx-pin: {t}\r\n\r\n"
            )
        );
        // The prefix alone marks the response private too; nothing asked, nothing changed.
        let r = rewritten(
            "HTTP/1.1 200 OK\r\nSet-Cookie: other=1\r\nContent-Length: 0\r\n\r\n",
            ResponseEdits {
                prefix: Some((AppField::Cookie(b"sid"), t.as_bytes())),
                ..Default::default()
            },
        );
        assert_eq!(
            r,
            "HTTP/1.1 200 OK\r\nSet-Cookie: other=1\r\ncontent-length: 0\r\ncache-control: private\r\n\r\n"
        );
        let r = rewritten(
            "HTTP/1.1 200 OK\r\nX-Pin: kept\r\nContent-Length: 0\r\n\r\n",
            ResponseEdits::default(),
        );
        assert_eq!(r, "HTTP/1.1 200 OK\r\nX-Pin: kept\r\ncontent-length: 0\r\n\r\n");
        let h = res(s, false);
        assert_eq!(h.values(s.as_bytes(), b"set-cookie").count(), 2);
    }

    #[test]
    fn cache_control_for_a_cookie() {
        assert_eq!(private(None), b"private");
        assert_eq!(private(Some(b"Private")), b"Private");
        assert_eq!(private(Some(b"no-store")), b"no-store");
        assert_eq!(private(Some(b"public")), b"private");
        assert_eq!(private(Some(b"max-age=5, S-MaxAge=9")), b"max-age=5, private");
    }

    #[test]
    fn https_by_the_outermost_proxy() {
        let s = "GET / HTTP/1.1\r\nX-Forwarded-Proto: HTTPS, http\r\n\r\n";
        assert!(forwarded_https(s.as_bytes(), &ok(s)));
        let s = "GET / HTTP/1.1\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Proto: https\r\n\r\n";
        assert!(!forwarded_https(s.as_bytes(), &ok(s)));
    }
}
