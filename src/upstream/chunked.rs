//! Decoding of an HTTP/1.1 `Transfer-Encoding: chunked` body, fed in
//! whatever pieces the socket returns.
//!
//! Every chunk available is decoded at once, so one socket read becomes one
//! piece of body (and one write to the client), however many chunks the
//! upstream framed it in.

use bytes::{Buf, BytesMut};

/// Largest chunk size accepted (a size line past this is an attack or a
/// broken upstream, not a model's answer).
const MAX_CHUNK: u64 = 1 << 40;
/// Longest chunk-extension or trailer line accepted.
const MAX_LINE: usize = 8 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Hex digits of a chunk size; `digits` read so far.
    Size {
        value: u64,
        digits: u8,
    },
    /// After the size: extensions up to the end of the line.
    Extension {
        size: u64,
        len: usize,
    },
    /// The line feed ending a size line.
    SizeLf {
        size: u64,
    },
    Data {
        left: u64,
    },
    /// The CRLF ending a chunk's data.
    DataCr,
    DataLf,
    /// A trailer line (`len` bytes so far), or the empty line ending the body.
    Trailer {
        len: usize,
    },
    TrailerLf {
        empty: bool,
    },
    Done,
}

/// Decoder state of one chunked body.
#[derive(Debug)]
pub struct ChunkedDecoder {
    state: State,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        ChunkedDecoder {
            state: State::Size {
                value: 0,
                digits: 0,
            },
        }
    }
}

impl ChunkedDecoder {
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decode what `input` holds, consuming it, and append the data to
    /// `out`. Bytes after the end of the body are left in `input`.
    pub fn decode(&mut self, input: &mut BytesMut, out: &mut BytesMut) -> Result<(), String> {
        while !input.is_empty() && self.state != State::Done {
            if let State::Data { left } = self.state {
                let take = left.min(input.len() as u64) as usize;
                out.extend_from_slice(&input[..take]);
                input.advance(take);
                let left = left - take as u64;
                self.state = if left == 0 {
                    State::DataCr
                } else {
                    State::Data { left }
                };
                continue;
            }
            let byte = input[0];
            input.advance(1);
            self.state = step(self.state, byte)?;
        }
        Ok(())
    }
}

/// One byte of framing (everything but chunk data).
fn step(state: State, b: u8) -> Result<State, String> {
    Ok(match state {
        State::Size { value, digits } => match b {
            b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                let value = value * 16 + (b as char).to_digit(16).unwrap_or(0) as u64;
                if value > MAX_CHUNK {
                    return Err("chunk size too large".into());
                }
                State::Size {
                    value,
                    digits: digits.saturating_add(1),
                }
            }
            _ if digits == 0 => return Err(bad("chunk size", b)),
            b';' | b' ' | b'\t' => State::Extension {
                size: value,
                len: 0,
            },
            b'\r' => State::SizeLf { size: value },
            b'\n' => after_size(value),
            _ => return Err(bad("chunk size", b)),
        },
        State::Extension { size, len } => match b {
            b'\r' => State::SizeLf { size },
            b'\n' => after_size(size),
            _ if len >= MAX_LINE => return Err("chunk extension too long".into()),
            _ => State::Extension { size, len: len + 1 },
        },
        State::SizeLf { size } => match b {
            b'\n' => after_size(size),
            _ => return Err(bad("chunk size line", b)),
        },
        State::DataCr => match b {
            b'\r' => State::DataLf,
            b'\n' => first_size(),
            _ => return Err(bad("end of chunk", b)),
        },
        State::DataLf => match b {
            b'\n' => first_size(),
            _ => return Err(bad("end of chunk", b)),
        },
        State::Trailer { len } => match b {
            b'\r' => State::TrailerLf { empty: len == 0 },
            b'\n' if len == 0 => State::Done,
            b'\n' => State::Trailer { len: 0 },
            _ if len >= MAX_LINE => return Err("chunked trailer too long".into()),
            _ => State::Trailer { len: len + 1 },
        },
        State::TrailerLf { empty } => match b {
            b'\n' if empty => State::Done,
            b'\n' => State::Trailer { len: 0 },
            _ => return Err(bad("chunked trailer", b)),
        },
        State::Data { .. } | State::Done => state,
    })
}

fn first_size() -> State {
    State::Size {
        value: 0,
        digits: 0,
    }
}

/// A size line ended: its data, or the trailer after the last (0) chunk.
fn after_size(size: u64) -> State {
    if size == 0 {
        State::Trailer { len: 0 }
    } else {
        State::Data { left: size }
    }
}

fn bad(what: &str, b: u8) -> String {
    format!("malformed chunked body: unexpected byte {b:#04x} in {what}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(pieces: &[&[u8]]) -> Result<(Vec<u8>, bool, Vec<u8>), String> {
        let mut d = ChunkedDecoder::default();
        let mut input = BytesMut::new();
        let mut out = BytesMut::new();
        for p in pieces {
            input.extend_from_slice(p);
            d.decode(&mut input, &mut out)?;
        }
        Ok((out.to_vec(), d.is_done(), input.to_vec()))
    }

    #[test]
    fn chunks_extensions_and_trailers_decode() {
        let body = b"5;name=value\r\nhello\r\n7\r\n, world\r\n0\r\nx-trailer: 1\r\n\r\nNEXT";
        let (data, done, rest) = decode_all(&[body]).unwrap();
        assert_eq!(data, b"hello, world");
        assert!(done);
        assert_eq!(
            rest, b"NEXT",
            "bytes after the body stay for the next response"
        );
    }

    #[test]
    fn byte_by_byte_is_the_same_as_at_once() {
        let body: &[u8] = b"1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\n\r\n";
        let pieces: Vec<&[u8]> = body.chunks(1).collect();
        let (data, done, _) = decode_all(&pieces).unwrap();
        assert_eq!(data, b"abcdefghijklmnopqrstuvwxyz");
        assert!(done);
    }

    #[test]
    fn an_unfinished_body_is_not_done() {
        let (data, done, _) = decode_all(&[b"5\r\nhel"]).unwrap();
        assert_eq!((data.as_slice(), done), (&b"hel"[..], false));
        let (_, done, _) = decode_all(&[b"0\r\n"]).unwrap();
        assert!(!done, "the empty line after the last chunk is still due");
    }

    #[test]
    fn attacks_are_refused() {
        for (body, why) in [
            (&b"zz\r\n"[..], "not hex"),
            (b"\r\n", "no size"),
            (b"fffffffffffffffffff\r\n", "size overflows"),
            (b"3\r\nabcX", "data longer than its size"),
            (b"3\rX", "CR without LF"),
            (b"-1\r\n", "negative size"),
        ] {
            assert!(decode_all(&[body]).is_err(), "{why}: {body:?}");
        }
        let long_extension = [b"1;".to_vec(), vec![b'x'; MAX_LINE + 1]].concat();
        assert!(decode_all(&[&long_extension]).is_err());
    }
}
