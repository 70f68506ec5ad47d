//! HTTP/1.1 framing of one upstream exchange: the request head, written
//! with the body in one go; the response head, parsed in place; and how the
//! response body ends.

use super::chunked::ChunkedDecoder;
use super::Outgoing;
use bytes::{Bytes, BytesMut};
use std::io::Write;
use std::ops::Range;

/// Most response headers accepted.
const MAX_HEADERS: usize = 96;
/// Longest response head accepted.
pub const MAX_HEAD: usize = 64 * 1024;

/// The request line and headers of `out`, ending in the empty line.
/// Header names and values are checked: a value with a line break (from a
/// key or a configured header) would otherwise inject headers.
pub fn request_head(out: &Outgoing<'_>) -> Result<Vec<u8>, String> {
    let ep = out.endpoint;
    let extra: usize = out
        .headers
        .iter()
        .map(|(n, v)| n.len() + v.len() + 4)
        .sum::<usize>()
        + out
            .extra_headers
            .iter()
            .map(|(n, v)| n.len() + v.len() + 4)
            .sum::<usize>();
    let mut h = Vec::with_capacity(256 + ep.path.len() + ep.host.len() + extra);
    if ep.path.is_empty() || ep.path.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(format!("invalid request path {:?}", ep.path));
    }
    h.extend_from_slice(b"POST ");
    h.extend_from_slice(ep.path.as_bytes());
    h.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    check_value("host", &ep.host)?;
    h.extend_from_slice(ep.host.as_bytes());
    if !ep.has_default_port() {
        let _ = write!(h, ":{}", ep.port);
    }
    let _ = write!(
        h,
        "\r\ncontent-type: application/json\r\ncontent-length: {}\r\naccept: {}\r\nuser-agent: lynkr/{}\r\n",
        out.body.len(),
        if out.stream {
            "text/event-stream"
        } else {
            "application/json"
        },
        env!("CARGO_PKG_VERSION"),
    );
    header(&mut h, "x-request-id", out.request_id)?;
    for (name, value) in out.headers {
        header(&mut h, name, value)?;
    }
    for (name, value) in out.extra_headers {
        header(&mut h, name, value)?;
    }
    h.extend_from_slice(b"\r\n");
    Ok(h)
}

fn header(h: &mut Vec<u8>, name: &str, value: &str) -> Result<(), String> {
    if name.is_empty() || !name.bytes().all(is_token_byte) {
        return Err(format!("invalid header name {name:?}"));
    }
    check_value(name, value)?;
    h.extend_from_slice(name.as_bytes());
    h.extend_from_slice(b": ");
    h.extend_from_slice(value.as_bytes());
    h.extend_from_slice(b"\r\n");
    Ok(())
}

/// Field values may hold visible characters, spaces and tabs; never CR,
/// LF, NUL or other controls. The value itself is not quoted in the error:
/// it may be a key.
fn check_value(name: &str, value: &str) -> Result<(), String> {
    if value.bytes().any(|b| (b < b' ' && b != b'\t') || b == 0x7f) {
        return Err(format!("header {name} holds a control character"));
    }
    Ok(())
}

/// RFC 9110 `tchar`.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A parsed response head. The header bytes are kept as they arrived and
/// looked up by position, without a copy per header.
#[derive(Debug)]
pub struct ResponseHead {
    pub status: u16,
    raw: Bytes,
    headers: Vec<(Range<usize>, Range<usize>)>,
    /// The connection may carry another request after this response.
    pub keep_alive: bool,
}

impl ResponseHead {
    /// The first header called `name` (ASCII case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| self.raw[n.clone()].eq_ignore_ascii_case(name.as_bytes()))
            .and_then(|(_, v)| std::str::from_utf8(&self.raw[v.clone()]).ok())
    }

    fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| self.raw[n.clone()].eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| &self.raw[v.clone()])
    }

    /// 1xx answers other than 101 come before the real one and are skipped.
    pub fn is_interim(&self) -> bool {
        (100..200).contains(&self.status) && self.status != 101
    }

    /// How the body that follows this head ends (RFC 9112 section 6.3).
    pub fn body(&mut self) -> Result<Body, String> {
        if self.status == 204 || self.status == 304 || (100..200).contains(&self.status) {
            return Ok(Body::Length(0));
        }
        let chunked_last = self
            .all("transfer-encoding")
            .flat_map(|v| v.split(|b| *b == b','))
            .map(|t| t.trim_ascii())
            .filter(|t| !t.is_empty())
            .last()
            .map(|t| t.eq_ignore_ascii_case(b"chunked"));
        let has_length = self.all("content-length").next().is_some();
        match chunked_last {
            Some(true) => {
                // Both framings at once is how requests get smuggled: the
                // body is read as chunked, the connection not reused.
                if has_length {
                    self.keep_alive = false;
                }
                Ok(Body::Chunked(ChunkedDecoder::default()))
            }
            Some(false) => {
                self.keep_alive = false;
                Ok(Body::UntilClose)
            }
            None if has_length => {
                let mut length = None;
                for v in self.all("content-length") {
                    for part in v.split(|b| *b == b',') {
                        let part = part.trim_ascii();
                        let n = std::str::from_utf8(part)
                            .ok()
                            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                            .and_then(|s| s.parse::<u64>().ok())
                            .ok_or("invalid content-length")?;
                        if length.is_some_and(|l| l != n) {
                            return Err("conflicting content-length headers".into());
                        }
                        length = Some(n);
                    }
                }
                Ok(Body::Length(length.unwrap_or(0)))
            }
            None => {
                self.keep_alive = false;
                Ok(Body::UntilClose)
            }
        }
    }
}

/// Parse a response head at the start of `buf`. `Ok(None)`: more bytes
/// are needed. The head is split off `buf`; what follows stays.
pub fn parse_response_head(buf: &mut BytesMut) -> Result<Option<ResponseHead>, String> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut slots);
    let len = match res.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
            return Err(format!("response head longer than {MAX_HEAD} bytes"))
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("malformed response head: {e}")),
    };
    let base = buf.as_ptr() as usize;
    let offset = |s: &[u8]| {
        let start = s.as_ptr() as usize - base;
        start..start + s.len()
    };
    let headers: Vec<_> = res
        .headers
        .iter()
        .map(|h| (offset(h.name.as_bytes()), offset(h.value)))
        .collect();
    let status = res.code.unwrap_or(0);
    let http11 = res.version == Some(1);
    let mut head = ResponseHead {
        status,
        raw: Bytes::new(),
        headers,
        keep_alive: false,
    };
    head.raw = buf.split_to(len).freeze();
    let close = head
        .all("connection")
        .flat_map(|v| v.split(|b| *b == b','))
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"));
    head.keep_alive = http11 && !close;
    Ok(Some(head))
}

/// How much of the response body is still to come.
#[derive(Debug)]
pub enum Body {
    /// `Content-Length`: this many bytes left.
    Length(u64),
    Chunked(ChunkedDecoder),
    /// Neither: the body ends when the upstream closes the connection.
    UntilClose,
    /// An until-close body whose end has been read.
    Closed,
}

impl Body {
    pub fn is_done(&self) -> bool {
        match self {
            Body::Length(left) => *left == 0,
            Body::Chunked(d) => d.is_done(),
            Body::UntilClose => false,
            Body::Closed => true,
        }
    }

    /// The body bytes `buf` holds, taken out of it (framing removed);
    /// `None` when it holds none.
    pub fn take(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, String> {
        if buf.is_empty() {
            return Ok(None);
        }
        let data = match self {
            Body::Length(left) => {
                let n = (*left).min(buf.len() as u64) as usize;
                *left -= n as u64;
                buf.split_to(n).freeze()
            }
            Body::Chunked(decoder) => {
                let mut out = BytesMut::with_capacity(buf.len());
                decoder.decode(buf, &mut out)?;
                out.freeze()
            }
            Body::UntilClose => buf.split().freeze(),
            Body::Closed => Bytes::new(),
        };
        Ok((!data.is_empty()).then_some(data))
    }

    /// The upstream closed the connection: the end of an until-close
    /// body, an error for any other.
    pub fn at_eof(&mut self) -> Result<(), String> {
        match self {
            Body::UntilClose => {
                *self = Body::Closed;
                Ok(())
            }
            _ if self.is_done() => Ok(()),
            _ => Err("the upstream closed the connection before the body ended".into()),
        }
    }

    /// A good size for the next socket read.
    pub fn read_hint(&self) -> usize {
        match self {
            Body::Length(left) => (*left as usize).clamp(4096, 256 * 1024),
            _ => 16 * 1024,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> (ResponseHead, BytesMut) {
        let mut buf = BytesMut::from(text.as_bytes());
        let head = parse_response_head(&mut buf).unwrap().unwrap();
        (head, buf)
    }

    #[test]
    fn a_head_is_parsed_and_split_off() {
        let (h, rest) =
            head("HTTP/1.1 429 Too Many\r\nRetry-After: 7\r\nContent-Length: 2\r\n\r\n{}");
        assert_eq!(h.status, 429);
        assert_eq!(h.header("retry-after"), Some("7"));
        assert!(h.keep_alive);
        assert_eq!(&rest[..], b"{}");
        let text = b"HTTP/1.1 200 OK\r\nContent-";
        let mut partial = BytesMut::from(&text[..]);
        assert!(parse_response_head(&mut partial).unwrap().is_none());
        assert_eq!(&partial[..], text, "nothing consumed while partial");
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let framing = |text: &str| {
            let (mut h, _) = head(text);
            let body = h.body();
            (body.map(|b| format!("{b:?}")), h.keep_alive)
        };
        let (b, keep) = framing("HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n");
        assert_eq!((b.unwrap(), keep), ("Length(12)".into(), true));
        let (b, keep) = framing("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n");
        assert!(b.unwrap().starts_with("Chunked") && keep);
        let (b, keep) = framing("HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!((b.unwrap(), keep), ("UntilClose".into(), false));
        let (b, keep) =
            framing("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n");
        assert_eq!((b.unwrap(), keep), ("Length(1)".into(), false));
        let (b, keep) = framing("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n");
        assert_eq!((b.unwrap(), keep), ("Length(1)".into(), false));
        let (b, _) = framing("HTTP/1.1 204 No Content\r\n\r\n");
        assert_eq!(b.unwrap(), "Length(0)");
    }

    #[test]
    fn smuggling_shapes_are_refused_or_not_reused() {
        let framing = |text: &str| {
            let (mut h, _) = head(text);
            (h.body().map(|_| ()), h.keep_alive)
        };
        // Both framings: chunked wins, the connection is not reused.
        let (b, keep) =
            framing("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert!(b.is_ok() && !keep);
        for bad in [
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 0x10\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\n",
        ] {
            assert!(framing(bad).0.is_err(), "{bad:?}");
        }
        // A bare LF inside a header value is not a header boundary.
        let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\nX: a\rInjected: 1\r\n\r\n"[..]);
        assert!(parse_response_head(&mut buf).is_err());
    }

    #[test]
    fn an_endless_head_is_refused() {
        let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\n"[..]);
        buf.extend(std::iter::repeat_n(b'x', MAX_HEAD + 1));
        // httparse reports a partial token; past MAX_HEAD it is an error.
        assert!(parse_response_head(&mut buf).is_err());
    }

    fn outgoing<'a>(
        ep: &'a super::super::Endpoint,
        headers: &'a [(&'static str, String)],
        extra: &'a [(String, String)],
    ) -> Outgoing<'a> {
        Outgoing {
            endpoint: ep,
            ca: None,
            headers,
            extra_headers: extra,
            body: Bytes::from_static(b"{}"),
            stream: true,
            request_id: "req_1",
        }
    }

    #[test]
    fn the_request_head_carries_every_header() {
        let ep = super::super::Endpoint {
            tls: false,
            host: "example.com".into(),
            port: 8080,
            path: "/v1/chat/completions?x=1".into(),
        };
        let headers = [("authorization", "Bearer k".to_string())];
        let extra = [("x-team".to_string(), "a b".to_string())];
        let head =
            String::from_utf8(request_head(&outgoing(&ep, &headers, &extra)).unwrap()).unwrap();
        assert_eq!(
            head,
            format!(
                "POST /v1/chat/completions?x=1 HTTP/1.1\r\nhost: example.com:8080\r\ncontent-type: application/json\r\ncontent-length: 2\r\naccept: text/event-stream\r\nuser-agent: lynkr/{}\r\nx-request-id: req_1\r\nauthorization: Bearer k\r\nx-team: a b\r\n\r\n",
                env!("CARGO_PKG_VERSION")
            )
        );
    }

    #[test]
    fn header_injection_is_refused() {
        let ep = super::super::Endpoint {
            tls: true,
            host: "example.com".into(),
            port: 443,
            path: "/v1".into(),
        };
        let attacks: [(&'static str, &str); 4] = [
            ("authorization", "Bearer k\r\nx-evil: 1"),
            ("authorization", "Bearer k\nx-evil: 1"),
            ("authorization", "Bearer k\0"),
            ("bad name", "v"),
        ];
        for (name, value) in attacks {
            let headers = [(name, value.to_string())];
            let err = request_head(&outgoing(&ep, &headers, &[])).unwrap_err();
            assert!(
                !err.contains("Bearer"),
                "the value stays out of the error: {err}"
            );
        }
        let extra = [("x-a\r\nx-evil".to_string(), "1".to_string())];
        assert!(request_head(&outgoing(&ep, &[], &extra)).is_err());
        let path = super::super::Endpoint {
            path: "/v1 HTTP/1.1\r\nx-evil: 1".into(),
            ..ep
        };
        assert!(request_head(&outgoing(&path, &[], &[])).is_err());
    }
}
