//! Keeping provider keys out of what clients and logs see. A provider that
//! refuses a key often quotes it back in its error (OpenAI quotes it
//! partly masked: `sk-proj-****...abcd`); every upstream error message is
//! passed through [`Redactor::redact`] before it is logged or returned.

use std::borrow::Cow;

/// Shortest secret considered (shorter values are not keys).
const MIN_SECRET: usize = 8;
/// A token sharing this many consecutive characters with a key is taken
/// for (a piece of) the key.
const WINDOW: usize = 8;
/// A masked token (`*` in it) starting with this much of a key is its echo.
const MASKED_PREFIX: usize = 3;

pub const REDACTED: &str = "[redacted]";

#[derive(Debug, Default, Clone)]
pub struct Redactor {
    secrets: Vec<String>,
}

impl Redactor {
    pub fn new(secrets: impl IntoIterator<Item = String>) -> Self {
        let mut secrets: Vec<String> = secrets
            .into_iter()
            .filter(|s| s.len() >= MIN_SECRET)
            .collect();
        secrets.sort();
        secrets.dedup();
        Redactor { secrets }
    }

    /// `text` with every token that holds a key, a piece of one, or a
    /// masked echo of one replaced by `[redacted]`.
    pub fn redact<'a>(&self, text: &'a str) -> Cow<'a, str> {
        if self.secrets.is_empty() || !text.split(is_separator).any(|t| self.is_secret(t)) {
            return Cow::Borrowed(text);
        }
        let mut out = String::with_capacity(text.len());
        let mut token_start = 0;
        for (i, c) in text
            .char_indices()
            .chain(std::iter::once((text.len(), ' ')))
        {
            if i == text.len() || is_separator(c) {
                let token = &text[token_start..i];
                out.push_str(if self.is_secret(token) {
                    REDACTED
                } else {
                    token
                });
                if i < text.len() {
                    out.push(c);
                }
                token_start = i + c.len_utf8();
            }
        }
        Cow::Owned(out)
    }

    fn is_secret(&self, token: &str) -> bool {
        if token.len() < MASKED_PREFIX {
            return false;
        }
        self.secrets.iter().any(|s| {
            s.as_bytes()
                .windows(WINDOW)
                .any(|w| token.as_bytes().windows(WINDOW).any(|t| t == w))
                || masked_echo(token, s)
        })
    }
}

/// `sk-proj-****abcd`: the key's start, stars, and its end (or nothing).
fn masked_echo(token: &str, secret: &str) -> bool {
    let (Some(first), Some(last)) = (token.find('*'), token.rfind('*')) else {
        return false;
    };
    let prefix = &token[..first];
    let suffix = token[last + 1..].trim_end_matches(|c: char| !c.is_ascii_alphanumeric());
    prefix.len() >= MASKED_PREFIX
        && secret.starts_with(prefix)
        && (suffix.is_empty() || secret.ends_with(suffix))
}

fn is_separator(c: char) -> bool {
    c.is_whitespace() || matches!(c, '"' | '\'' | ',' | ';' | '`' | '(' | ')' | '<' | '>')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r() -> Redactor {
        Redactor::new(["sk-test-1234567890abcdef".to_string(), "short".to_string()])
    }

    #[test]
    fn keys_and_their_echoes_are_redacted() {
        let r = r();
        // Quoted whole, inside JSON, and partly masked as OpenAI does.
        for (text, want) in [
            (
                "Incorrect API key provided: sk-test-1234567890abcdef.",
                "Incorrect API key provided: [redacted]",
            ),
            (
                r#"{"key":"sk-test-1234567890abcdef"}"#,
                "{\"key\":\"[redacted]\"}",
            ),
            (
                "Incorrect API key provided: sk-test-************cdef.",
                "Incorrect API key provided: [redacted]",
            ),
            ("key 567890abcdef is wrong", "key [redacted] is wrong"),
        ] {
            assert_eq!(r.redact(text), want, "{text}");
        }
    }

    #[test]
    fn other_text_is_untouched() {
        let r = r();
        for text in [
            "rate limit exceeded, retry in 20s",
            "model gpt-4o not found",
            "short is not a key",
            "sk-other-*****",
        ] {
            assert!(matches!(r.redact(text), Cow::Borrowed(_)), "{text}");
        }
        assert_eq!(
            Redactor::default().redact("sk-test-1234567890abcdef"),
            "sk-test-1234567890abcdef"
        );
    }
}
