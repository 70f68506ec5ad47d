//! Patching a few top-level members of a JSON object in place.
//!
//! The passthrough changes `model`, `max_tokens` and at most the thinking
//! budget of a body that is otherwise sent as the client wrote it. Rather
//! than deserialize and re-serialize the conversation, [`TopLevel::scan`]
//! finds where each top-level member's value lies (jumping over strings with
//! `memchr`, so a 76 KB body takes a few microseconds), and [`TopLevel::apply`]
//! copies the body once into a pre-sized buffer with the edits spliced in.
//! Every byte not edited, whitespace included, is the client's.
//!
//! The scan checks structure only (strings, brackets, separators): the
//! gateway has already parsed the body with serde before it gets here.
//! Malformed input is an error, never a panic.

use std::ops::Range;

/// The top-level members of a JSON object: key (the raw text between its
/// quotes) and value ranges, in order.
pub struct TopLevel<'a> {
    body: &'a [u8],
    members: Vec<Member>,
    /// Index of the object's closing `}`.
    close: usize,
}

struct Member {
    /// From the key's opening quote.
    start: usize,
    key: Range<usize>,
    value: Range<usize>,
}

/// A change to make: replace `value` of member `key`, add it if absent
/// (`Set`), or take the member out (`Remove`).
pub enum Edit<'k> {
    Set(&'k str, String),
    Remove(&'k str),
}

impl<'a> TopLevel<'a> {
    pub fn scan(body: &'a [u8]) -> Result<TopLevel<'a>, String> {
        let mut s = Scanner { b: body, pos: 0 };
        s.ws();
        s.expect(b'{')?;
        let mut members = Vec::with_capacity(16);
        s.ws();
        if s.peek() == Some(b'}') {
            let close = s.pos;
            return s.end(TopLevel {
                body,
                members,
                close,
            });
        }
        loop {
            s.ws();
            let start = s.pos;
            if s.peek() != Some(b'"') {
                return Err(s.unexpected("a member name"));
            }
            s.string()?;
            let key = start + 1..s.pos - 1;
            s.ws();
            s.expect(b':')?;
            s.ws();
            let value_start = s.pos;
            s.value()?;
            members.push(Member {
                start,
                key,
                value: value_start..s.pos,
            });
            s.ws();
            match s.peek() {
                Some(b',') => s.pos += 1,
                Some(b'}') => {
                    let close = s.pos;
                    return s.end(TopLevel {
                        body,
                        members,
                        close,
                    });
                }
                _ => return Err(s.unexpected("`,` or `}`")),
            }
        }
    }

    /// The raw JSON text of the first member named `key`.
    pub fn get(&self, key: &str) -> Option<&'a str> {
        let m = self.find(key)?;
        std::str::from_utf8(&self.body[m.value.clone()]).ok()
    }

    fn find(&self, key: &str) -> Option<&Member> {
        self.members.iter().find(|m| self.key_is(m, key))
    }

    fn key_is(&self, m: &Member, key: &str) -> bool {
        let raw = &self.body[m.key.clone()];
        if !raw.contains(&b'\\') {
            return raw == key.as_bytes();
        }
        // An escaped name (`"mod\u0065l"`) means what it decodes to.
        let quoted = &self.body[m.key.start - 1..m.key.end + 1];
        serde_json::from_slice::<String>(quoted).is_ok_and(|k| k == key)
    }

    /// The body with `edits` made, in one pre-sized buffer.
    pub fn apply(&self, edits: &[Edit]) -> Vec<u8> {
        // (range of the body replaced, replacement); added members go
        // before the closing brace.
        let mut splices: Vec<(Range<usize>, String)> = Vec::with_capacity(edits.len());
        let mut added: Vec<String> = Vec::new();
        let mut removed = 0;
        for edit in edits {
            match edit {
                Edit::Set(key, value) => match self.find(key) {
                    Some(m) => splices.push((m.value.clone(), value.clone())),
                    None => added.push(format!(
                        "{}:{value}",
                        serde_json::to_string(key).expect("a key serializes")
                    )),
                },
                Edit::Remove(key) => {
                    if let Some(i) = self.members.iter().position(|m| self.key_is(m, key)) {
                        splices.push((self.removal(i), String::new()));
                        removed += 1;
                    }
                }
            }
        }
        if !added.is_empty() {
            let mut members = added.join(",");
            if self.members.len() > removed {
                members.insert(0, ',');
            }
            splices.push((self.close..self.close, members));
        }
        splices.sort_by_key(|(r, _)| r.start);
        let grow: usize = splices.iter().map(|(_, s)| s.len()).sum();
        let mut out = Vec::with_capacity(self.body.len() + grow);
        let mut at = 0;
        for (range, with) in &splices {
            if range.start < at {
                continue; // overlapping edits of one member: the first wins
            }
            out.extend_from_slice(&self.body[at..range.start]);
            out.extend_from_slice(with.as_bytes());
            at = range.end;
        }
        out.extend_from_slice(&self.body[at..]);
        out
    }

    /// The bytes taking member `i` out: with the comma before it, or for
    /// the first member, up to the next one.
    fn removal(&self, i: usize) -> Range<usize> {
        let m = &self.members[i];
        match (i.checked_sub(1), self.members.get(i + 1)) {
            (Some(prev), _) => self.members[prev].value.end..m.value.end,
            (None, Some(next)) => m.start..next.start,
            (None, None) => m.start..self.close,
        }
    }
}

struct Scanner<'a> {
    b: &'a [u8],
    pos: usize,
}

impl Scanner<'_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.pos).copied()
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    fn expect(&mut self, c: u8) -> Result<(), String> {
        if self.peek() == Some(c) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.unexpected(&format!("`{}`", c as char)))
        }
    }

    fn unexpected(&self, wanted: &str) -> String {
        match self.peek() {
            Some(_) => format!("expected {wanted} at byte {}", self.pos),
            None => format!("expected {wanted}, found the end of the body"),
        }
    }

    /// Past the end of the object: only whitespace may follow.
    fn end<T>(&mut self, value: T) -> Result<T, String> {
        self.pos += 1;
        self.ws();
        match self.peek() {
            None => Ok(value),
            Some(_) => Err(format!(
                "trailing characters after the object at byte {}",
                self.pos
            )),
        }
    }

    /// At an opening quote: move past the closing one. Only quotes stop
    /// the search (Claude Code's text is full of `\n`): a quote preceded
    /// by an odd number of backslashes is escaped.
    fn string(&mut self) -> Result<(), String> {
        let open = self.pos;
        self.pos += 1;
        while let Some(i) = memchr::memchr(b'"', &self.b[self.pos..]) {
            let quote = self.pos + i;
            let backslashes = self.b[open + 1..quote]
                .iter()
                .rev()
                .take_while(|&&c| c == b'\\')
                .count();
            self.pos = quote + 1;
            if backslashes % 2 == 0 {
                return Ok(());
            }
        }
        self.pos = self.b.len();
        Err("unterminated string".into())
    }

    /// Move past one value.
    fn value(&mut self) -> Result<(), String> {
        match self.peek() {
            Some(b'"') => self.string(),
            Some(b'{' | b'[') => self.nested(),
            Some(_) => {
                let start = self.pos;
                while let Some(c) = self.peek() {
                    if matches!(c, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r') {
                        break;
                    }
                    self.pos += 1;
                }
                match &self.b[start..self.pos] {
                    [] => Err(self.unexpected("a value")),
                    [b'"' | b':' | b'{' | b'[', ..] => Err(self.unexpected("a value")),
                    _ => Ok(()),
                }
            }
            None => Err(self.unexpected("a value")),
        }
    }

    /// At `{` or `[`: move past its matching close, strings skipped whole.
    fn nested(&mut self) -> Result<(), String> {
        let mut open: Vec<u8> = Vec::with_capacity(8);
        // Jump from one byte that matters to the next.
        while let Some(i) = self.b[self.pos..]
            .iter()
            .position(|&c| STRUCTURAL[c as usize])
        {
            self.pos += i;
            let c = self.b[self.pos];
            match c {
                b'"' => {
                    self.string()?;
                    continue;
                }
                b'{' => open.push(b'}'),
                b'[' => open.push(b']'),
                _ => {
                    if open.pop() != Some(c) {
                        return Err(format!("mismatched `{}` at byte {}", c as char, self.pos));
                    }
                    if open.is_empty() {
                        self.pos += 1;
                        return Ok(());
                    }
                }
            }
            self.pos += 1;
        }
        self.pos = self.b.len();
        Err(self.unexpected("the end of an object or array"))
    }
}

/// The bytes that open or close a string, an object or an array.
static STRUCTURAL: [bool; 256] = {
    let mut t = [false; 256];
    t[b'"' as usize] = true;
    t[b'{' as usize] = true;
    t[b'}' as usize] = true;
    t[b'[' as usize] = true;
    t[b']' as usize] = true;
    t
};

#[cfg(test)]
mod tests {
    use super::*;

    fn patch(body: &str, edits: &[Edit]) -> String {
        let t = TopLevel::scan(body.as_bytes()).unwrap();
        String::from_utf8(t.apply(edits)).unwrap()
    }

    #[test]
    fn replaces_adds_and_removes_keeping_every_other_byte() {
        let body = r#"{ "model" : "a", "x":[1,{"model":"inner"}],"s":"q\"}\\", "n":5 }"#;
        assert_eq!(
            patch(body, &[Edit::Set("model", r#""b""#.into())]),
            r#"{ "model" : "b", "x":[1,{"model":"inner"}],"s":"q\"}\\", "n":5 }"#
        );
        assert_eq!(
            patch(body, &[Edit::Set("max_tokens", "9".into())]),
            r#"{ "model" : "a", "x":[1,{"model":"inner"}],"s":"q\"}\\", "n":5 ,"max_tokens":9}"#
        );
        assert_eq!(
            patch(body, &[Edit::Remove("x")]),
            r#"{ "model" : "a","s":"q\"}\\", "n":5 }"#
        );
        assert_eq!(
            patch(body, &[Edit::Remove("model")]),
            r#"{ "x":[1,{"model":"inner"}],"s":"q\"}\\", "n":5 }"#
        );
        assert_eq!(patch(r#"{"only":1}"#, &[Edit::Remove("only")]), "{}");
        assert_eq!(patch("{}", &[Edit::Set("k", "1".into())]), r#"{"k":1}"#);
    }

    #[test]
    fn an_escaped_member_name_is_matched_by_what_it_means() {
        let t = TopLevel::scan(br#"{"mod\u0065l":"a"}"#).unwrap();
        assert_eq!(t.get("model"), Some(r#""a""#));
    }

    #[test]
    fn malformed_bodies_are_errors() {
        for bad in [
            "",
            "[]",
            "{",
            r#"{"a"}"#,
            r#"{"a":}"#,
            r#"{"a":1,}"#,
            r#"{"a":"x}"#,
            r#"{"a":[1}"#,
            r#"{"a":{"b":1]}"#,
            r#"{"a":1} x"#,
            r#"{"a" 1}"#,
            r#"{"a":1 "b":2}"#,
            r#"{"a":"\"#,
        ] {
            assert!(TopLevel::scan(bad.as_bytes()).is_err(), "{bad}");
        }
    }
}
