//! Server-sent events: an incremental parser for upstream streams and the
//! writer for the events Lynkr sends.

use super::anthropic::{MessageResponse, ResponseBlock};
use bytes::{BufMut, BytesMut};

/// One parsed event: the `event:` name (if any) and its joined `data:` lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub event: Option<String>,
    pub data: String,
}

/// Incremental SSE parser: feed it bytes as they arrive, get whole events out.
/// Handles `\n`, `\r\n` and `\r` line ends, comments, and events split at any
/// byte boundary (including inside a UTF-8 sequence).
///
/// Linear in the input however it is chunked: each byte is scanned once
/// (the scan resumes where the last one stopped), lines are read in place,
/// and consumed bytes are dropped in bulk.
#[derive(Debug, Default)]
pub struct SseParser {
    buf: Vec<u8>,
    /// Bytes of `buf` already consumed (complete lines).
    pos: usize,
    /// Bytes of `buf` already scanned for a line end.
    scanned: usize,
    event: Option<String>,
    data: String,
    has_data: bool,
    /// Bytes looked at by the line search, for the linearity test.
    #[cfg(test)]
    examined: usize,
}

/// A single SSE event larger than this is a protocol error.
pub const MAX_EVENT_BYTES: usize = 16 * 1024 * 1024;

#[derive(Debug, PartialEq, Eq)]
pub struct SseTooLarge;

impl SseParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Parse `chunk`, appending complete events to `out`.
    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<SseEvent>) -> Result<(), SseTooLarge> {
        self.buf.extend_from_slice(chunk);
        // The lines are read from `buf` in place; it is put back below.
        let buf = std::mem::take(&mut self.buf);
        let mut i = self.scanned;
        while let Some(off) = buf[i..].iter().position(|&b| b == b'\n' || b == b'\r') {
            #[cfg(test)]
            {
                self.examined += off + 1;
            }
            let end = i + off;
            let mut next = end + 1;
            // A `\r\n` pair is one line end; a lone `\r` at the buffer's end
            // may be followed by `\n` in the next chunk, so wait for it.
            if buf[end] == b'\r' {
                match buf.get(end + 1) {
                    None => break,
                    Some(b'\n') => next += 1,
                    Some(_) => {}
                }
            }
            self.line(&buf[self.pos..end], out);
            self.pos = next;
            i = next;
        }
        #[cfg(test)]
        {
            self.examined += buf.len().saturating_sub(i);
        }
        self.buf = buf;
        // Everything up to a pending `\r` (or the end) has been scanned.
        self.scanned = self.buf.len().max(self.pos);
        if self.buf.last() == Some(&b'\r') && self.scanned > self.pos {
            self.scanned -= 1;
        }
        // Drop consumed bytes once they are most of the buffer.
        if self.pos > 0 && self.pos * 2 >= self.buf.len() {
            self.buf.drain(..self.pos);
            self.scanned -= self.pos;
            self.pos = 0;
        }
        if self.buf.len() - self.pos + self.data.len() > MAX_EVENT_BYTES {
            return Err(SseTooLarge);
        }
        Ok(())
    }

    /// True when bytes of an unfinished event are still buffered.
    pub fn has_partial(&self) -> bool {
        !self.buf[self.pos..].iter().all(|b| b.is_ascii_whitespace()) || self.has_data
    }

    fn line(&mut self, line: &[u8], out: &mut Vec<SseEvent>) {
        if line.is_empty() {
            if self.has_data {
                out.push(SseEvent {
                    event: self.event.take(),
                    data: std::mem::take(&mut self.data),
                });
                self.has_data = false;
            } else {
                self.event = None;
            }
            return;
        }
        if line[0] == b':' {
            return;
        }
        let (field, value) = match line.iter().position(|&c| c == b':') {
            Some(p) => {
                let v = &line[p + 1..];
                (&line[..p], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(&String::from_utf8_lossy(value));
                self.has_data = true;
            }
            b"event" => self.event = Some(String::from_utf8_lossy(value).into_owned()),
            _ => {}
        }
    }
}

/// Append `event: NAME\ndata: JSON\n\n` to `out`.
pub fn write_event(out: &mut BytesMut, name: &str, data: &serde_json::Value) {
    out.put_slice(b"event: ");
    out.put_slice(name.as_bytes());
    out.put_slice(b"\ndata: ");
    serde_json::to_writer((&mut *out).writer(), data).expect("serializing a Value cannot fail");
    out.put_slice(b"\n\n");
}

/// A whole message as the event sequence a streaming client expects
/// (used when an upstream answered a streaming request with plain JSON).
pub fn message_events(msg: &MessageResponse) -> BytesMut {
    use super::events::*;
    let mut out = BytesMut::new();
    let mut ev = EventWriter::new(msg.model.clone());
    ev.start(|| msg.id.clone());
    for (i, block) in msg.content.iter().enumerate() {
        let input_json;
        let (kind, empty, delta) = match block {
            ResponseBlock::Text { text } => (BlockKind::Text, empty_text(), text_delta(text)),
            ResponseBlock::Thinking { thinking, .. } => (
                BlockKind::Thinking,
                empty_thinking(),
                thinking_delta(thinking),
            ),
            ResponseBlock::ToolUse { id, name, input } => (
                BlockKind::ToolUse,
                empty_tool_use(id, name),
                input_json_delta({
                    input_json = input.to_string();
                    &input_json
                }),
            ),
        };
        ev.open(BlockKey::new(kind, i as u64), || empty, &mut out);
        ev.delta(delta, &mut out);
        if let ResponseBlock::Thinking { signature, .. } = block {
            ev.signature(signature, &mut out);
        }
        ev.close(&mut out);
    }
    ev.finish(
        msg.stop_reason
            .unwrap_or(super::anthropic::StopReason::EndTurn),
        &msg.usage,
        &mut out,
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(chunks: &[&[u8]]) -> Vec<SseEvent> {
        let mut p = SseParser::new();
        let mut out = Vec::new();
        for c in chunks {
            p.feed(c, &mut out).unwrap();
        }
        out
    }

    #[test]
    fn parses_events_split_at_every_byte() {
        let stream =
            b"data: {\"a\":1}\n\nevent: x\ndata: two\ndata: lines\n\n: comment\n\ndata: [DONE]\n\n";
        let whole = parse_all(&[stream]);
        assert_eq!(whole.len(), 3);
        assert_eq!(whole[1].event.as_deref(), Some("x"));
        assert_eq!(whole[1].data, "two\nlines");
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(parse_all(&bytes), whole);
    }

    #[test]
    fn handles_crlf_and_split_crlf() {
        let out = parse_all(&[b"data: a\r", b"\n\r\ndata: b\r\n\r\n"]);
        let data: Vec<_> = out.iter().map(|e| e.data.as_str()).collect();
        assert_eq!(data, ["a", "b"]);
    }

    #[test]
    fn reports_partial_event_and_bounds_memory() {
        let mut p = SseParser::new();
        let mut out = Vec::new();
        p.feed(b"data: {\"unfinished", &mut out).unwrap();
        assert!(out.is_empty());
        assert!(p.has_partial());
        let big = vec![b'x'; MAX_EVENT_BYTES + 1];
        assert_eq!(p.feed(&big, &mut out), Err(SseTooLarge));
    }

    /// Regression: the pending partial line was scanned again from its start
    /// on every read, so a 16 MiB event in small chunks cost O(n^2).
    #[test]
    fn a_large_event_in_tiny_chunks_is_scanned_once() {
        let event = format!("data: {}\n\n", "x".repeat(256 * 1024));
        let mut p = SseParser::new();
        let mut out = Vec::new();
        for b in event.as_bytes().chunks(1) {
            p.feed(b, &mut out).unwrap();
        }
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].data.len(), 256 * 1024);
        assert!(
            p.examined <= 2 * event.len(),
            "{} bytes examined for {} of input",
            p.examined,
            event.len()
        );
    }

    #[test]
    fn writes_event_frames() {
        let mut b = BytesMut::new();
        write_event(&mut b, "ping", &serde_json::json!({"type": "ping"}));
        assert_eq!(&b[..], b"event: ping\ndata: {\"type\":\"ping\"}\n\n");
    }
}
