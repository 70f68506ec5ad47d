//! The access log: one line per request, target `lynkr::access`.
//!
//! In JSON mode (the production format) the line is written directly, in
//! the same shape `tracing-subscriber`'s JSON formatter gives it. Going
//! through the formatter cost about 7% of the gateway's CPU per request
//! (it builds a JSON map of every field); writing the line is a few
//! hundred nanoseconds. The level filter still decides whether the line is
//! written. Text mode (a terminal) goes through `tracing` as before.

use std::cell::RefCell;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Set by `logging::init` when log lines are JSON.
static DIRECT_JSON: AtomicBool = AtomicBool::new(false);

pub fn write_json_directly(on: bool) {
    DIRECT_JSON.store(on, Ordering::Relaxed);
}

/// What the access log says about one request.
#[derive(Debug, Clone, Default)]
pub struct AccessRecord<'a> {
    pub request_id: &'a str,
    pub session_id: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub model: &'a str,
    pub route: &'a str,
    pub provider: &'a str,
    pub upstream_model: &'a str,
    pub attempts: u32,
    pub endpoint: &'a str,
    pub stream: bool,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub first_byte_ms: Option<u64>,
    pub duration_ms: u64,
    pub cost: f64,
    pub error: &'a str,
}

thread_local! {
    static LINE: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(1024));
}

impl AccessRecord<'_> {
    /// Write the line, if `lynkr::access` is enabled at info.
    pub fn emit(&self) {
        if !tracing::enabled!(target: "lynkr::access", tracing::Level::INFO) {
            return;
        }
        if !DIRECT_JSON.load(Ordering::Relaxed) {
            self.emit_through_tracing();
            return;
        }
        LINE.with_borrow_mut(|line| {
            line.clear();
            self.write_json(SystemTime::now(), line);
            // One write of a whole line: lines from threads never interleave.
            let _ = std::io::stderr().write_all(line);
        });
    }

    pub fn emit_through_tracing(&self) {
        tracing::info!(
            target: "lynkr::access",
            request_id = self.request_id,
            session_id = self.session_id,
            method = self.method,
            path = self.path,
            status = self.status,
            model = self.model,
            route = self.route,
            provider = self.provider,
            upstream_model = self.upstream_model,
            attempts = self.attempts,
            endpoint = self.endpoint,
            stream = self.stream,
            input_tokens = self.input_tokens,
            output_tokens = self.output_tokens,
            first_byte_ms = self.first_byte_ms,
            duration_ms = self.duration_ms,
            cost = self.cost,
            error = self.error,
            "request"
        );
    }

    /// The JSON line, newline included, as `tracing-subscriber` writes it
    /// with `flatten_event(true)`.
    pub fn write_json(&self, at: SystemTime, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"timestamp\":\"");
        rfc3339_micros(at, out);
        out.extend_from_slice(b"\",\"level\":\"INFO\",\"message\":\"request\"");
        let s = |out: &mut Vec<u8>, name: &str, value: &str| {
            let _ = write!(out, ",\"{name}\":");
            let _ = serde_json::to_writer(&mut *out, value);
        };
        let n = |out: &mut Vec<u8>, name: &str, value: u64| {
            let _ = write!(out, ",\"{name}\":{value}");
        };
        s(out, "request_id", self.request_id);
        s(out, "session_id", self.session_id);
        s(out, "method", self.method);
        s(out, "path", self.path);
        n(out, "status", self.status.into());
        s(out, "model", self.model);
        s(out, "route", self.route);
        s(out, "provider", self.provider);
        s(out, "upstream_model", self.upstream_model);
        n(out, "attempts", self.attempts.into());
        s(out, "endpoint", self.endpoint);
        let _ = write!(out, ",\"stream\":{}", self.stream);
        n(out, "input_tokens", self.input_tokens);
        n(out, "output_tokens", self.output_tokens);
        if let Some(ms) = self.first_byte_ms {
            n(out, "first_byte_ms", ms);
        }
        n(out, "duration_ms", self.duration_ms);
        out.extend_from_slice(b",\"cost\":");
        let _ = serde_json::to_writer(&mut *out, &self.cost);
        s(out, "error", self.error);
        out.extend_from_slice(b",\"target\":\"lynkr::access\"}\n");
    }
}

/// `2026-12-02T08:03:49.550600Z`: UTC, microseconds, as tracing writes it.
fn rfc3339_micros(at: SystemTime, out: &mut Vec<u8>) {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        since.subsec_micros()
    );
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    fn at(secs: u64, micros: u32) -> String {
        let mut out = Vec::new();
        rfc3339_micros(UNIX_EPOCH + Duration::new(secs, micros * 1000), &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn timestamps_are_utc_with_microseconds() {
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(at(951_782_400, 7), "2000-02-29T00:00:00.000007Z");
        assert_eq!(at(1_796_199_829, 550_600), "2026-12-02T08:23:49.550600Z");
        assert_eq!(at(4_107_542_399, 999_999), "2100-02-28T23:59:59.999999Z");
        assert_eq!(at(4_107_542_400, 0), "2100-03-01T00:00:00.000000Z");
    }

    /// What tracing-subscriber's JSON formatter writes for the record.
    fn through_tracing(record: &AccessRecord) -> String {
        #[derive(Clone)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf(Arc::new(Mutex::new(Vec::new())));
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || record.emit_through_tracing());
        let line = buf.0.lock().unwrap().clone();
        String::from_utf8(line).unwrap()
    }

    /// The object's keys in the order the text has them.
    fn key_order(text: &str, v: &Value) -> Vec<String> {
        let mut keys: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        keys.sort_by_key(|k| text.find(&format!("\"{k}\":")).unwrap());
        keys
    }

    /// The direct line says exactly what the tracing formatter says, field
    /// for field and in the same order (the timestamp aside).
    #[test]
    fn the_direct_line_matches_the_tracing_formatter() {
        let full = AccessRecord {
            request_id: "req_1",
            session_id: "sess \"quoted\" \\ \n line",
            method: "POST",
            path: "/v1/messages",
            status: 200,
            model: "claude-opus-4-8",
            route: "default/mock/gpt",
            provider: "mock",
            upstream_model: "gpt-ünïcode",
            attempts: 2,
            endpoint: "http://127.0.0.1:1/v1",
            stream: true,
            input_tokens: 12,
            output_tokens: 34,
            first_byte_ms: Some(5),
            duration_ms: 17,
            cost: 0.00123,
            error: "upstream said \u{1}",
        };
        let whole = AccessRecord {
            cost: 0.0,
            first_byte_ms: None,
            ..full.clone()
        };
        for record in [full, whole, AccessRecord::default()] {
            let expected_text = through_tracing(&record);
            let mut got_text = Vec::new();
            record.write_json(SystemTime::now(), &mut got_text);
            let got_text = String::from_utf8(got_text).unwrap();
            assert!(got_text.ends_with("}\n") && got_text.matches('\n').count() == 1);
            let mut expected: Value = serde_json::from_str(&expected_text).unwrap();
            let mut got: Value = serde_json::from_str(&got_text).unwrap();
            assert_eq!(
                key_order(&got_text, &got),
                key_order(&expected_text, &expected)
            );
            for v in [&mut expected, &mut got] {
                v.as_object_mut().unwrap().remove("timestamp");
            }
            assert_eq!(got, expected, "{got_text}");
        }
    }
}
