//! The JSON error body of §11: `{"error":"<code>","message":"<text>"}`.

use serde::{Deserialize, Serialize};

/// Stable machine-readable error codes. Clients match on these strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// 400: the request is malformed.
    BadRequest,
    /// 400: the sprite name breaks the naming rules.
    InvalidName,
    /// 401: missing or unknown token.
    Unauthorized,
    /// 403: the caller is known but not allowed (a connector's policy).
    Forbidden,
    /// 404: the named thing does not exist (or belongs to another org).
    NotFound,
    /// 405: method not allowed on this path.
    MethodNotAllowed,
    /// 409: the name is taken or the state forbids the operation.
    Conflict,
    /// 410: the thing existed but is gone (an exited session).
    Gone,
    /// 413: request body larger than the limit.
    PayloadTooLarge,
    /// 422: well-formed but refused (a connector's test request failed).
    Unprocessable,
    /// 500: a failure on our side.
    Internal,
    /// 502: an upstream (a connector's provider) failed.
    BadGateway,
    /// 503: the sprite could not be reached or started.
    Unavailable,
}

impl ErrorCode {
    /// The string sent in the `error` field.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::InvalidName => "invalid_name",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::Conflict => "conflict",
            ErrorCode::Gone => "gone",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::Unprocessable => "unprocessable_entity",
            ErrorCode::Internal => "internal_error",
            ErrorCode::BadGateway => "bad_gateway",
            ErrorCode::Unavailable => "unavailable",
        }
    }

    /// The code for an error status that carries none: its own where there is one, else
    /// `bad_request` for 4xx and `internal_error` for the rest.
    pub fn for_status(status: u16) -> Self {
        match status {
            401 => ErrorCode::Unauthorized,
            403 => ErrorCode::Forbidden,
            404 => ErrorCode::NotFound,
            405 => ErrorCode::MethodNotAllowed,
            409 => ErrorCode::Conflict,
            410 => ErrorCode::Gone,
            413 => ErrorCode::PayloadTooLarge,
            422 => ErrorCode::Unprocessable,
            502 => ErrorCode::BadGateway,
            503 => ErrorCode::Unavailable,
            400..=499 => ErrorCode::BadRequest,
            _ => ErrorCode::Internal,
        }
    }

    /// The HTTP status that goes with the code.
    pub fn status(self) -> u16 {
        match self {
            ErrorCode::BadRequest | ErrorCode::InvalidName => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::Conflict => 409,
            ErrorCode::Gone => 410,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::Unprocessable => 422,
            ErrorCode::Internal => 500,
            ErrorCode::BadGateway => 502,
            ErrorCode::Unavailable => 503,
        }
    }
}

/// Error body shared by every endpoint.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorBody {
    /// Machine code, see [`ErrorCode::as_str`].
    pub error: String,
    /// One readable sentence.
    pub message: String,
}

impl ErrorBody {
    /// Builds a body from a code and a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            error: code.as_str().to_string(),
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_for_statuses() {
        for code in [
            ErrorCode::BadRequest,
            ErrorCode::Unauthorized,
            ErrorCode::NotFound,
            ErrorCode::MethodNotAllowed,
            ErrorCode::Conflict,
            ErrorCode::Gone,
            ErrorCode::PayloadTooLarge,
            ErrorCode::Internal,
            ErrorCode::Unavailable,
            ErrorCode::Forbidden,
            ErrorCode::Unprocessable,
            ErrorCode::BadGateway,
        ] {
            assert_eq!(ErrorCode::for_status(code.status()), code);
        }
        assert_eq!(ErrorCode::for_status(415), ErrorCode::BadRequest);
        assert_eq!(ErrorCode::for_status(504), ErrorCode::Internal);
    }
}
