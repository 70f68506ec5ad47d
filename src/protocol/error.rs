//! Errors toward clients, in Anthropic's shape:
//! `{"type":"error","error":{"type":"...","message":"..."}}` with the matching status.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    InvalidRequestError,
    AuthenticationError,
    /// A budget is exhausted (Anthropic's 402 `billing_error`).
    BillingError,
    PermissionError,
    NotFoundError,
    RequestTooLarge,
    RateLimitError,
    ApiError,
    OverloadedError,
}

impl ErrorKind {
    pub fn status(self) -> u16 {
        match self {
            ErrorKind::InvalidRequestError => 400,
            ErrorKind::AuthenticationError => 401,
            ErrorKind::BillingError => 402,
            ErrorKind::PermissionError => 403,
            ErrorKind::NotFoundError => 404,
            ErrorKind::RequestTooLarge => 413,
            ErrorKind::RateLimitError => 429,
            ErrorKind::ApiError => 500,
            ErrorKind::OverloadedError => 529,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidRequestError => "invalid_request_error",
            ErrorKind::AuthenticationError => "authentication_error",
            ErrorKind::BillingError => "billing_error",
            ErrorKind::PermissionError => "permission_error",
            ErrorKind::NotFoundError => "not_found_error",
            ErrorKind::RequestTooLarge => "request_too_large",
            ErrorKind::RateLimitError => "rate_limit_error",
            ErrorKind::ApiError => "api_error",
            ErrorKind::OverloadedError => "overloaded_error",
        }
    }
}

/// Who an error came from. Retries, fallback and circuit breakers decide on
/// this, never on the status the client will see (a provider's 503 reaches
/// the client as 529, its 422 as 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Lynkr itself: the client's request, a limit, a configuration.
    Gateway,
    /// The exchange with the provider failed: connect, timeout, a broken or
    /// malformed response. Always worth another try elsewhere.
    Transport,
    /// The provider answered with this status, over HTTP or inside a stream
    /// before its first byte reached the client (an OpenAI `error` chunk, a
    /// Bedrock exception, an Anthropic `event: error`).
    Provider(u16),
}

/// An error answered to the client. `status` usually follows `kind`, but an
/// upstream 502/503/504 keeps its own status so clients see what happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub kind: ErrorKind,
    pub status: u16,
    pub message: String,
    /// Seconds, passed on as `Retry-After`.
    pub retry_after: Option<u64>,
    pub origin: Origin,
}

impl ApiError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ApiError {
            kind,
            status: kind.status(),
            message: message.into(),
            retry_after: None,
            origin: Origin::Gateway,
        }
    }

    /// The provider's answer could not be used (malformed, truncated,
    /// oversized): a 502 that is worth trying elsewhere.
    pub fn bad_upstream(message: impl Into<String>) -> Self {
        let mut e = Self::api(message).with_status(502);
        e.origin = Origin::Transport;
        e
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidRequestError, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFoundError, message)
    }

    pub fn api(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::ApiError, message)
    }

    pub fn with_status(mut self, status: u16) -> Self {
        self.status = status;
        self
    }

    /// The error for an upstream HTTP failure: the kind follows the upstream
    /// status, and the upstream's own message is kept word for word, because
    /// Claude Code decides whether to retry by that wording.
    pub fn from_upstream_status(status: u16, message: String) -> Self {
        let kind = match status {
            400 | 422 => ErrorKind::InvalidRequestError,
            401 => ErrorKind::AuthenticationError,
            402 => ErrorKind::BillingError,
            403 => ErrorKind::PermissionError,
            404 => ErrorKind::NotFoundError,
            413 => ErrorKind::RequestTooLarge,
            429 => ErrorKind::RateLimitError,
            503 | 529 => ErrorKind::OverloadedError,
            500..=599 => ErrorKind::ApiError,
            _ => ErrorKind::InvalidRequestError,
        };
        let client_status = match status {
            422 => 400,
            503 | 529 => 529,
            s @ 500..=599 => s,
            s if kind == ErrorKind::InvalidRequestError && s != 400 => 400,
            s => s,
        };
        ApiError {
            kind,
            status: client_status,
            message,
            retry_after: None,
            origin: Origin::Provider(status),
        }
    }

    /// The error an Anthropic-shaped error type stands for, as if the
    /// provider had answered with its HTTP status (`overloaded_error` is
    /// 529, `rate_limit_error` 429, ...): for `event: error` in a stream.
    pub fn from_upstream_type(error_type: &str, message: String) -> Self {
        let status = match error_type {
            "invalid_request_error" => 400,
            "authentication_error" => 401,
            "billing_error" => 402,
            "permission_error" => 403,
            "not_found_error" => 404,
            "request_too_large" => 413,
            "rate_limit_error" => 429,
            "overloaded_error" => 529,
            "timeout_error" => 504,
            _ => 500,
        };
        Self::from_upstream_status(status, message)
    }

    /// The JSON body of an error response.
    pub fn body(&self) -> String {
        serde_json::json!({
            "type": "error",
            "error": {"type": self.kind.as_str(), "message": self.message},
        })
        .to_string()
    }

    /// The same error as an SSE `event: error`, for failures after the stream began.
    pub fn sse_event(&self) -> String {
        format!("event: error\ndata: {}\n\n", self.body())
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status,
            self.kind.as_str(),
            self.message
        )
    }
}

/// The message text of an upstream error body: `{"error":{"message"}}`
/// (OpenAI, Anthropic), a bare `{"error":"..."}` (Ollama) or
/// `{"message":"..."}` (Bedrock), `{"detail":"..."}`, or the raw text.
pub fn upstream_error_message(body: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
        let candidates = [
            v.pointer("/error/message"),
            v.get("error"),
            v.get("message"),
            v.get("detail"),
        ];
        for c in candidates.into_iter().flatten() {
            if let Some(s) = c.as_str() {
                return s.to_string();
            }
        }
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        "upstream returned an error without a body".into()
    } else {
        text.chars().take(4096).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_statuses_map_to_anthropic_kinds() {
        let cases = [
            (400, ErrorKind::InvalidRequestError, 400),
            (401, ErrorKind::AuthenticationError, 401),
            (403, ErrorKind::PermissionError, 403),
            (404, ErrorKind::NotFoundError, 404),
            (422, ErrorKind::InvalidRequestError, 400),
            (429, ErrorKind::RateLimitError, 429),
            (500, ErrorKind::ApiError, 500),
            (502, ErrorKind::ApiError, 502),
            (503, ErrorKind::OverloadedError, 529),
        ];
        for (upstream, kind, status) in cases {
            let e = ApiError::from_upstream_status(upstream, "m".into());
            assert_eq!((e.kind, e.status), (kind, status), "upstream {upstream}");
        }
    }

    #[test]
    fn body_is_anthropic_shaped_and_escapes_text() {
        let e = ApiError::invalid("bad \"quote\"");
        let v: serde_json::Value = serde_json::from_str(&e.body()).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["message"], "bad \"quote\"");
        assert!(e.sse_event().starts_with("event: error\ndata: {"));
    }
}
