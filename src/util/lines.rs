//! Incremental reader of newline-delimited records (Ollama's NDJSON).
//!
//! Linear however the input is chunked: the search for a newline resumes
//! where it stopped, lines are handed out in place, and consumed bytes are
//! dropped in bulk.

#[derive(Debug, Default)]
pub struct LineReader {
    buf: Vec<u8>,
    /// Bytes of `buf` already handed out.
    pos: usize,
    /// Bytes of `buf` known to hold no newline after `pos`.
    scanned: usize,
    /// Bytes looked at by the newline search, for the linearity test.
    #[cfg(test)]
    examined: usize,
}

impl LineReader {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, bytes: &[u8]) {
        if self.pos > 0 && self.pos * 2 >= self.buf.len() {
            self.buf.drain(..self.pos);
            self.scanned -= self.pos;
            self.pos = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete line, without its `\n` (a `\r` before it stays).
    pub fn next_line(&mut self) -> Option<&[u8]> {
        let from = self.scanned.max(self.pos);
        let found = self.buf[from..].iter().position(|&b| b == b'\n');
        #[cfg(test)]
        {
            self.examined += found.map_or(self.buf.len() - from, |off| off + 1);
        }
        match found {
            Some(off) => {
                let (start, end) = (self.pos, from + off);
                self.pos = end + 1;
                self.scanned = self.pos;
                Some(&self.buf[start..end])
            }
            None => {
                self.scanned = self.buf.len();
                None
            }
        }
    }

    /// Bytes of an unfinished last line.
    pub fn pending(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    /// Take the unfinished last line (at the end of the input).
    pub fn take_pending(&mut self) -> Vec<u8> {
        let rest = self.buf[self.pos..].to_vec();
        self.buf.clear();
        self.pos = 0;
        self.scanned = 0;
        rest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: Ollama's reader searched the pending line from its start
    /// on every read (and copied each line): O(n^2) in small chunks.
    #[test]
    fn a_long_line_in_tiny_chunks_is_scanned_once() {
        let line = format!("{}\n", "y".repeat(256 * 1024));
        let mut r = LineReader::new();
        let mut n = 0;
        for b in line.as_bytes().chunks(1) {
            r.push(b);
            while r.next_line().is_some() {
                n += 1;
            }
        }
        assert_eq!(n, 1);
        assert!(r.examined <= 2 * line.len(), "{} examined", r.examined);
    }

    #[test]
    fn lines_across_chunks() {
        let mut r = LineReader::new();
        let mut lines = Vec::new();
        for piece in [&b"ab"[..], b"c\nd", b"\n\nef"] {
            r.push(piece);
            while let Some(l) = r.next_line() {
                lines.push(String::from_utf8(l.to_vec()).unwrap());
            }
        }
        assert_eq!(lines, ["abc", "d", ""]);
        assert_eq!(r.pending(), b"ef");
        assert_eq!(r.take_pending(), b"ef");
        assert!(r.pending().is_empty());
    }
}
