//! Checkpoints (§6): the checkpoint object and the NDJSON progress stream of create/restore.

use serde::{Deserialize, Serialize};

/// Id of the pseudo-entry that stands for the live state in a list.
pub const CURRENT_ID: &str = "Current";

/// A checkpoint as listed and fetched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// `v0`, `v1`, ... (or [`CURRENT_ID`]).
    pub id: String,
    /// RFC 3339.
    pub create_time: String,
    /// Free text given at creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// Earlier versions this one descends from, newest first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<Vec<String>>,
    /// Made automatically rather than on request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_auto: Option<bool>,
    /// The checkpoint the disk came from when this one was taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_id: Option<String>,
    /// `""` when sound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<String>,
}

/// Body of `POST /checkpoint`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateCheckpointRequest {
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

/// One line of a create or restore progress stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamEvent {
    /// `info`, `error` or `complete`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Message of `info` and `complete` lines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    /// Message of `error` lines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
}

impl StreamEvent {
    fn new(kind: &str, data: Option<String>, error: Option<String>, time: String) -> Self {
        Self {
            kind: kind.into(),
            data,
            error,
            time: Some(time),
        }
    }

    /// An `info` line.
    pub fn info(msg: impl Into<String>, time: String) -> Self {
        Self::new("info", Some(msg.into()), None, time)
    }

    /// The final `complete` line.
    pub fn complete(msg: impl Into<String>, time: String) -> Self {
        Self::new("complete", Some(msg.into()), None, time)
    }

    /// The final `error` line.
    pub fn error(msg: impl Into<String>, time: String) -> Self {
        Self::new("error", None, Some(msg.into()), time)
    }
}

/// Whether `id` has the form of a user-visible version (`v` and digits).
pub fn is_version_id(id: &str) -> bool {
    id.strip_prefix('v')
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        let e = StreamEvent::info("Creating checkpoint v3...", "t".into());
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"type":"info","data":"Creating checkpoint v3...","time":"t"}"#
        );
        let e = StreamEvent::error("boom", "t".into());
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"type":"error","error":"boom","time":"t"}"#
        );
        let c: Checkpoint =
            serde_json::from_str(r#"{"id":"v1","create_time":"2026-01-01T00:00:00Z"}"#).unwrap();
        assert_eq!(c.comment, None);
        assert!(is_version_id("v12") && !is_version_id("v") && !is_version_id("Current"));
    }
}
