//! Errors of the client.

/// Result alias.
pub type Result<T> = std::result::Result<T, Error>;

/// What can go wrong talking to a Sprites server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server answered with an error status.
    #[error("{message} ({status})")]
    Api {
        /// HTTP status.
        status: u16,
        /// Machine code from the JSON error body, if any.
        code: Option<String>,
        /// Readable message (the raw body when it was not JSON).
        message: String,
    },
    /// The server could not be reached or the connection broke.
    #[error("cannot reach {url}: {source}")]
    Connect {
        /// Base URL.
        url: String,
        /// Cause.
        #[source]
        source: reqwest::Error,
    },
    /// HTTP transport failure after connecting.
    #[error(transparent)]
    Http(#[from] reqwest::Error),
    /// WebSocket failure.
    #[error("websocket: {0}")]
    WebSocket(String),
    /// The server spoke the protocol wrongly.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// Bad arguments given to the client.
    #[error("{0}")]
    InvalidInput(String),
}

impl Error {
    /// Whether this is a 404.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::Api { status: 404, .. })
    }

    /// HTTP status, for API errors.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Builds an API error from a status and a body (JSON `{"error","message"}` or text).
    pub fn from_body(status: u16, body: &[u8]) -> Self {
        match serde_json::from_slice::<sprites_api::ErrorBody>(body) {
            Ok(b) => Error::Api {
                status,
                code: Some(b.error),
                message: b.message,
            },
            Err(_) => {
                let text = String::from_utf8_lossy(body).trim().to_string();
                let message = if text.is_empty() {
                    format!("request failed with status {status}")
                } else {
                    text
                };
                Error::Api {
                    status,
                    code: None,
                    message,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies() {
        let e = Error::from_body(
            404,
            br#"{"error":"not_found","message":"sprite \"x\" not found"}"#,
        );
        assert!(e.is_not_found());
        assert_eq!(e.to_string(), "sprite \"x\" not found (404)");
        let e = Error::from_body(503, b"Process not ready");
        assert_eq!(e.to_string(), "Process not ready (503)");
        let e = Error::from_body(500, b"");
        assert_eq!(e.status(), Some(500));
    }
}
