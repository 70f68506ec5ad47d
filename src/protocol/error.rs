//! Errors toward clients, in Anthropic's shape:
//! `{"type":"error","error":{"type":"...","message":"..."}}` with the matching status.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    InvalidRequestError,
    AuthenticationError,
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
            ErrorKind::PermissionError => "permission_error",
            ErrorKind::NotFoundError => "not_found_error",
            ErrorKind::RequestTooLarge => "request_too_large",
            ErrorKind::RateLimitError => "rate_limit_error",
            ErrorKind::ApiError => "api_error",
            ErrorKind::OverloadedError => "overloaded_error",
        }
    }
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
}

impl ApiError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ApiError {
            kind,
            status: kind.status(),
            message: message.into(),
            retry_after: None,
        }
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
            403 => ErrorKind::PermissionError,
            404 => ErrorKind::NotFoundError,
            413 => ErrorKind::RequestTooLarge,
            429 => ErrorKind::RateLimitError,
            503 | 529 => ErrorKind::OverloadedError,
            500..=599 => ErrorKind::ApiError,
            _ => ErrorKind::InvalidRequestError,
        };
        let status = match status {
            422 => 400,
            503 | 529 => 529,
            s @ 500..=599 => s,
            s if kind == ErrorKind::InvalidRequestError && s != 400 => 400,
            s => s,
        };
        ApiError {
            kind,
            status,
            message,
            retry_after: None,
        }
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
