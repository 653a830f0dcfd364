//! The one place where failures become HTTP statuses and JSON error bodies (§11).

use axum::http::StatusCode;
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
