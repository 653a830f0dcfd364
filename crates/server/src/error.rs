//! The one place where failures become HTTP statuses and JSON error bodies (§11).

use std::time::Duration;

use axum::body::HttpBody as _;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use sprites_api::{ErrorBody, ErrorCode};

/// An error on its way to the client.
#[derive(Debug)]
pub struct ApiError {
    /// Machine code and status.
    pub code: ErrorCode,
    /// Readable message.
    pub message: String,
}

impl ApiError {
    /// An error with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// 404 for a sprite, whether missing or another org's.
    pub fn sprite_not_found(name: &str) -> Self {
        Self::new(ErrorCode::NotFound, format!("sprite {name:?} not found"))
    }

    /// 500 that logs its cause.
    pub fn internal(e: impl std::fmt::Display) -> Self {
        tracing::error!("internal error: {e}");
        Self::new(ErrorCode::Internal, format!("internal error: {e}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(ErrorBody::new(self.code, self.message))).into_response()
    }
}

/// Longest text of a non-JSON error kept as its message.
const ERROR_TEXT_MAX: usize = 1024;

/// Gives every error response the JSON shape, keeping its status and headers: axum's own
/// answers (extractor rejections, the default 405) and an agent's plain-text errors are text.
pub async fn json_errors(resp: Response) -> Response {
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error())
        || is_json(resp.headers())
        || resp.extensions().get::<sprites_console::Page>().is_some()
    {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    // Only a short body, read briefly: it may come from a sprite's agent.
    let mut text = String::new();
    if body
        .size_hint()
        .upper()
        .is_some_and(|n| n <= ERROR_TEXT_MAX as u64)
    {
        let read = axum::body::to_bytes(body, ERROR_TEXT_MAX);
        if let Ok(Ok(b)) = tokio::time::timeout(Duration::from_secs(1), read).await {
            text = String::from_utf8_lossy(&b).trim().to_string();
        }
    }
    if text.is_empty() {
        text = status.canonical_reason().unwrap_or("error").to_lowercase();
    }
    let code = ErrorCode::for_status(status.as_u16());
    let mut out = (status, Json(ErrorBody::new(code, text))).into_response();
    for h in [
        header::CONTENT_TYPE,
        header::CONTENT_LENGTH,
        header::TRANSFER_ENCODING,
    ] {
        parts.headers.remove(h);
    }
    out.headers_mut().extend(parts.headers);
    out
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|m| m.trim().to_ascii_lowercase())
        .is_some_and(|m| m == "application/json" || m.ends_with("+json"))
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        match e {
            crate::store::StoreError::Conflict(m) => ApiError::new(ErrorCode::Conflict, m),
            crate::store::StoreError::Full(m) => ApiError::new(ErrorCode::Unavailable, m),
            other => ApiError::internal(other),
        }
    }
}

impl From<sprites_runtime::BackendError> for ApiError {
    fn from(e: sprites_runtime::BackendError) -> Self {
        tracing::warn!("runtime: {e}");
        ApiError::new(ErrorCode::Unavailable, e.to_string())
    }
}
