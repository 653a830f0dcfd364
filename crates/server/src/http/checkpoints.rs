//! `/v1/sprites/{name}/checkpoint[s]` (§6).

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use sprites_api::checkpoint::{Checkpoint, CreateCheckpointRequest};
use tokio::sync::mpsc;

use super::AppState;
use crate::error::ApiError;
use crate::store::Org;

/// A progress stream: one JSON line per event, flushed as it comes (exactly 200, §6.2).
pub(crate) fn ndjson<T: serde::Serialize + Send + 'static>(rx: mpsc::Receiver<T>) -> Response {
    let lines = futures::stream::unfold(rx, |mut rx| async move {
        let ev = rx.recv().await?;
        let mut line = serde_json::to_vec(&ev).expect("event serializes");
        line.push(b'\n');
        Some((Ok::<_, std::convert::Infallible>(Bytes::from(line)), rx))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(lines))
        .expect("static response parts")
}

/// `POST /checkpoint` with `{"comment"?}`; an empty body is `{}`.
pub async fn create(
    State(s): State<AppState>,
    Extension(org): Extension<Org>,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: CreateCheckpointRequest = match &body {
        Ok(b) if b.iter().all(u8::is_ascii_whitespace) => CreateCheckpointRequest::default(),
        _ => super::sprites::json_body(body)?,
    };
    let (tx, rx) = mpsc::channel(16);
    s.start_checkpoint(&org, &name, req.comment, tx).await?;
    Ok(ndjson(rx))
}

#[derive(serde::Deserialize)]
pub struct ListQuery {
    history: Option<String>,
    #[serde(rename = "includeAuto")]
    #[allow(dead_code)] // no automatic checkpoints are made, so there is nothing to filter
    include_auto: Option<String>,
}

pub async fn list(
    State(s): State<AppState>,
    Extension(org): Extension<Org>,
    Path(name): Path<String>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Vec<Checkpoint>>, ApiError> {
    let history = q.history.as_deref().filter(|h| !h.is_empty());
    Ok(Json(s.list_checkpoints(&org, &name, history).await?))
}

pub async fn get(
    State(s): State<AppState>,
    Extension(org): Extension<Org>,
    Path((name, id)): Path<(String, String)>,
) -> Result<Json<Checkpoint>, ApiError> {
    Ok(Json(s.get_checkpoint(&org, &name, &id).await?))
}

pub async fn restore(
    State(s): State<AppState>,
    Extension(org): Extension<Org>,
    Path((name, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let (tx, rx) = mpsc::channel(16);
    s.start_restore(&org, &name, &id, tx).await?;
    Ok(ndjson(rx))
}

pub async fn delete(
    State(s): State<AppState>,
    Extension(org): Extension<Org>,
    Path((name, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    s.delete_checkpoint(&org, &name, &id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
