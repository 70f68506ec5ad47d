//! Long text into JSON, escaped eight bytes at a time.
//!
//! A Claude Code request carries kilobytes of prose (the system prompt,
//! file contents in tool results) that a translating provider writes back
//! out as JSON strings. serde_json escapes a string byte by byte through a
//! lookup table, which was 7-8% of a 22.5 KB request's CPU under load.
//! Text has few bytes that need escaping (a newline every line or so), so
//! this scans a 64-bit word at a time for them and copies the runs between.
//! The output is byte for byte what serde_json writes (a property test
//! checks it).

use serde::ser::SerializeStruct;
use serde::Serializer;
use std::cell::RefCell;

/// Appends `s` as a JSON string literal, quotes included.
pub fn write_json_string(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    let mut run_start = 0;
    let mut i = 0;
    while i < bytes.len() {
        // Skip whole words with nothing to escape.
        while i + 8 <= bytes.len() && !needs_escape(word_at(bytes, i)) {
            i += 8;
        }
        let end = (i + 8).min(bytes.len());
        while i < end {
            let b = bytes[i];
            if let Some(escape) = escape_of(b) {
                out.extend_from_slice(&bytes[run_start..i]);
                match escape {
                    Escape::Short(c) => out.extend_from_slice(&[b'\\', c]),
                    Escape::Unicode => {
                        const HEX: &[u8; 16] = b"0123456789abcdef";
                        out.extend_from_slice(&[
                            b'\\',
                            b'u',
                            b'0',
                            b'0',
                            HEX[(b >> 4) as usize],
                            HEX[(b & 0xf) as usize],
                        ]);
                    }
                }
                run_start = i + 1;
            }
            i += 1;
        }
    }
    out.extend_from_slice(&bytes[run_start..]);
    out.push(b'"');
}

fn word_at(bytes: &[u8], i: usize) -> u64 {
    u64::from_le_bytes(bytes[i..i + 8].try_into().expect("eight bytes"))
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// Whether any byte of `w` is a control character, `"` or `\`. Exact for
/// the question "any?" (the classic has-zero-byte trick; bytes of 0x80 and
/// above are masked out by `!w`).
fn needs_escape(w: u64) -> bool {
    let below_space = w.wrapping_sub(ONES * 0x20) & !w & HIGHS;
    let quote = w ^ (ONES * b'"' as u64);
    let backslash = w ^ (ONES * b'\\' as u64);
    let zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGHS;
    below_space | zero(quote) | zero(backslash) != 0
}

enum Escape {
    Short(u8),
    Unicode,
}

/// serde_json's escapes: the short forms it uses, `\u00XX` for the other
/// control characters, nothing else (not `/`, not DEL, not non-ASCII).
fn escape_of(b: u8) -> Option<Escape> {
    Some(match b {
        b'"' => Escape::Short(b'"'),
        b'\\' => Escape::Short(b'\\'),
        b'\n' => Escape::Short(b'n'),
        b'\r' => Escape::Short(b'r'),
        b'\t' => Escape::Short(b't'),
        0x08 => Escape::Short(b'b'),
        0x0c => Escape::Short(b'f'),
        0x00..=0x1f => Escape::Unicode,
        _ => return None,
    })
}

/// Strings shorter than this go through serde_json's own escaping: the
/// hand-off below costs more than it saves on a name or an id.
const LONG_TEXT: usize = 64;

thread_local! {
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// `#[serde(serialize_with = "...")]` for long text fields: escaped here,
/// then handed to serde_json as already-encoded JSON (its `RawValue`
/// channel), so it is copied once instead of escaped byte by byte.
pub fn serialize_text<S: Serializer, T: AsRef<str> + ?Sized>(
    text: &T,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    let text = text.as_ref();
    if text.len() < LONG_TEXT {
        return serializer.serialize_str(text);
    }
    SCRATCH.with_borrow_mut(|scratch| {
        scratch.clear();
        write_json_string(scratch, text);
        let json = std::str::from_utf8(scratch).expect("escaping keeps UTF-8");
        // serde_json writes a struct of this name and field verbatim: it is
        // how `RawValue` serializes (serde_json's `raw::TOKEN`); a unit test
        // fails if the name ever changes.
        const RAW_VALUE_TOKEN: &str = "$serde_json::private::RawValue";
        let mut raw = serializer.serialize_struct(RAW_VALUE_TOKEN, 1)?;
        raw.serialize_field(RAW_VALUE_TOKEN, json)?;
        raw.end()
    })
}

/// `serialize_text` for an optional field.
pub fn serialize_opt_text<S: Serializer, T: AsRef<str>>(
    text: &Option<T>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match text {
        Some(t) => serialize_text(t, serializer),
        None => serializer.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Serialize;

    fn escaped(s: &str) -> String {
        let mut out = Vec::new();
        write_json_string(&mut out, s);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn matches_serde_json_on_every_kind_of_byte() {
        let all_ascii: String = (0u8..128).map(char::from).collect();
        for s in [
            "",
            "plain",
            "exactly8",
            "a \"quoted\" \\ path\n",
            "tab\tcr\rff\u{c}bs\u{8}nul\0unit\u{1f}del\u{7f}",
            "naïve 日本語 🎉 and \n at the end\n",
            &all_ascii,
            &all_ascii.repeat(3)[5..],
        ] {
            assert_eq!(escaped(s), serde_json::to_string(s).unwrap(), "{s:?}");
        }
    }

    #[derive(Serialize)]
    struct Holder<'a> {
        #[serde(serialize_with = "serialize_text")]
        text: &'a str,
        #[serde(serialize_with = "serialize_opt_text")]
        more: Option<String>,
    }

    /// Guards the `RawValue` token: with another name serde_json would
    /// write `{"$serde_json::private::RawValue": ...}` instead of the string.
    #[test]
    fn long_text_serializes_as_the_plain_string_into_bytes_and_values() {
        let long = "line one \"quoted\"\n".repeat(10);
        let h = Holder {
            text: &long,
            more: Some(long.clone()),
        };
        #[derive(Serialize)]
        struct Plain<'a> {
            text: &'a str,
            more: Option<&'a str>,
        }
        let plain = Plain {
            text: &long,
            more: Some(&long),
        };
        assert_eq!(
            serde_json::to_string(&h).unwrap(),
            serde_json::to_string(&plain).unwrap()
        );
        assert_eq!(
            serde_json::to_value(&h).unwrap(),
            serde_json::json!({"text": long, "more": long})
        );
        let short = Holder {
            text: "hi",
            more: None,
        };
        assert_eq!(
            serde_json::to_string(&short).unwrap(),
            r#"{"text":"hi","more":null}"#
        );
    }
}
