//! Forwarding per-sprite requests to the agent inside the sprite: the sprite is woken, the
//! `/v1/sprites/{name}` prefix is dropped, and the response streams back unchanged.

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderName};
use axum::response::Response;
use axum::Extension;
use sprites_api::ErrorCode;

use super::AppState;
use crate::error::ApiError;
use crate::store::Org;

/// Request headers that never go into a sprite: credentials stay outside, hop-by-hop headers
/// belong to one connection.
const DROPPED: &[HeaderName] = &[
    header::AUTHORIZATION,
    header::COOKIE,
    header::HOST,
    header::PROXY_AUTHORIZATION,
];

/// Sends `req` to `agent_path` (with the original query) in sprite `name`.
pub async fn forward(
    state: &AppState,
    org: &Org,
    name: &str,
    agent_path: &str,
    req: Request,
) -> Result<Response, ApiError> {
    let stream = state.connect(org, name).await?;
    let (parts, body) = req.into_parts();
    let uri = match parts.uri.query() {
        Some(q) => format!("{agent_path}?{q}"),
        None => agent_path.to_string(),
    };
    let mut builder = http::Request::builder()
        .method(parts.method)
        .uri(uri)
        .header(header::HOST, "sprite");
    for (k, v) in &parts.headers {
        if !DROPPED.contains(k) {
            builder = builder.header(k, v);
        }
    }
    let out = builder
        .body(body)
        .map_err(|e| ApiError::new(ErrorCode::BadRequest, e.to_string()))?;
    let resp = sprites_runtime::agent::send(stream, out).await?;
    Ok(resp.map(Body::new))
}

pub async fn exec_post(
    State(s): State<AppState>,
    Extension(org): Extension<Org>,
    Path(name): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    forward(&s, &org, &name, "/exec", req).await
}
