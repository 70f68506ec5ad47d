//! Percent-decoding of URL path segments and query strings (the admin
//! API's `?since=...&key=...`, `/admin/sessions/{id}`).

/// `%XX` decoded; with `plus_is_space` (query strings), `+` is a space.
/// A bad escape or a result that is not UTF-8 is an error, not guessed at.
pub fn percent_decode(s: &str, plus_is_space: bool) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = |b: u8| (b as char).to_digit(16);
                let digits = bytes
                    .get(i + 1)
                    .copied()
                    .and_then(hex)
                    .zip(bytes.get(i + 2).copied().and_then(hex));
                let Some((hi, lo)) = digits else {
                    return Err(format!("{s:?}: a '%' not followed by two hex digits"));
                };
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| format!("{s:?}: not UTF-8 once decoded"))
}

/// `a=1&b=x%20y` as decoded pairs, in order; a name without `=` has an
/// empty value.
pub fn query_pairs(query: &str) -> Result<Vec<(String, String)>, String> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            Ok((percent_decode(k, true)?, percent_decode(v, true)?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn decodes_escapes_and_refuses_bad_ones() {
        assert_eq!(percent_decode("a%20b%2Fc+d", true).unwrap(), "a b/c d");
        assert_eq!(percent_decode("a+b", false).unwrap(), "a+b");
        assert_eq!(percent_decode("%E2%9C%93", false).unwrap(), "✓");
        for bad in ["%", "%2", "%zz", "%C3%28", "abc%"] {
            assert!(percent_decode(bad, false).is_err(), "{bad}");
        }
        assert_eq!(
            query_pairs("by=day&since=2026-12-01&key=ci%2D1&flag").unwrap(),
            vec![
                ("by".into(), "day".into()),
                ("since".into(), "2026-12-01".into()),
                ("key".into(), "ci-1".into()),
                ("flag".into(), String::new()),
            ]
        );
    }

    proptest! {
        #[test]
        fn any_text_encoded_decodes_to_itself(s in ".*") {
            let encoded: String = s
                .bytes()
                .map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") })
                .collect();
            prop_assert_eq!(percent_decode(&encoded, true).unwrap(), s);
        }

        #[test]
        fn garbage_never_panics(s in "[%+a-fA-F0-9=&\\x00-\\x7f]{0,40}") {
            let _ = query_pairs(&s);
        }
    }
}
