//! Forwarding per-sprite requests to the agent inside the sprite: the sprite is woken, the
//! `/v1/sprites/{name}` prefix is dropped, and the response streams back unchanged.
//! WebSocket upgrades are forwarded too: once both sides switched protocols, bytes are
//! relayed as they are, so frames reach clients exactly as the agent wrote them.

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderName, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use futures::StreamExt;
use hyper_util::rt::TokioIo;
use sprites_api::ErrorCode;

use super::AppState;
use crate::error::ApiError;
use crate::store::Org;

/// Request headers that never go into a sprite: credentials stay outside.
const DROPPED: &[HeaderName] = &[
    header::AUTHORIZATION,
    header::COOKIE,
    header::HOST,
    header::PROXY_AUTHORIZATION,
];

fn is_upgrade(req: &Request) -> bool {
    req.headers().get(header::UPGRADE).is_some()
}

/// Sends `req` to `agent_path` (with the original query) in sprite `name`.
pub async fn forward(
    state: &AppState,
    org: &Org,
    name: &str,
    agent_path: &str,
    mut req: Request,
) -> Result<Response, ApiError> {
    // The sprite stays awake until the response body or the upgraded connection ends.
    let (stream, hold) = state.connect(org, name).await?;
    let client_upgrade = is_upgrade(&req).then(|| hyper::upgrade::on(&mut req));
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
    let mut resp = sprites_runtime::agent::send(stream, out).await?;
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client_upgrade) = client_upgrade else {
            return Err(ApiError::internal(
                "agent switched protocols on a plain request",
            ));
        };
        let agent_upgrade = hyper::upgrade::on(&mut resp);
        let sprite = name.to_string();
        tokio::spawn(async move {
            let _hold = hold;
            match tokio::try_join!(client_upgrade, agent_upgrade) {
                Ok((c, a)) => {
                    let (mut c, mut a) = (TokioIo::new(c), TokioIo::new(a));
                    if let Err(e) = tokio::io::copy_bidirectional_with_sizes(
                        &mut c,
                        &mut a,
                        256 << 10,
                        256 << 10,
                    )
                    .await
                    {
                        tracing::debug!(%sprite, "upgraded connection ended: {e}");
                    }
                }
                Err(e) => tracing::warn!(%sprite, "upgrade failed: {e}"),
            }
        });
        let (parts, _) = resp.into_parts();
        return Ok(Response::from_parts(parts, Body::empty()));
    }
    let (parts, body) = resp.into_parts();
    let body = Body::new(body).into_data_stream().map(move |chunk| {
        let _ = &hold;
        chunk
    });
    Ok(Response::from_parts(parts, Body::from_stream(body)))
}

pub async fn exec_post(
    State(s): State<AppState>,
    Extension(org): Extension<Org>,
    Path(name): Path<String>,
    mut req: Request,
) -> Result<Response, ApiError> {
    use sprites_agent_protocol::{FRAMING_HEADER, FRAMING_LENGTH_PREFIXED};
    let ours = req
        .headers()
        .get(FRAMING_HEADER)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case(FRAMING_LENGTH_PREFIXED));
    if ours {
        return forward(&s, &org, &name, "/exec", req).await;
    }
    // The official form is made here from the agent's length-prefixed frames.
    let paced = !super::official::reads_bytes(req.headers());
    req.headers_mut().insert(
        FRAMING_HEADER,
        http::HeaderValue::from_static(FRAMING_LENGTH_PREFIXED),
    );
    let resp = forward(&s, &org, &name, "/exec", req).await?;
    if resp.status() != http::StatusCode::OK {
        return Ok(resp);
    }
    Ok(super::official::reframe(resp, paced))
}

/// `GET /exec`: session list, or a WebSocket exec (or legacy `?id=` attach).
pub async fn exec_get(
    State(s): State<AppState>,
    Extension(org): Extension<Org>,
    Path(name): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    forward(&s, &org, &name, "/exec", req).await
}

/// `HEAD /exec`: answered here (Go probes `Sprite-Version` before attaching); no wake needed.
pub async fn exec_head(
    State(s): State<AppState>,
    Extension(org): Extension<Org>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    s.find(&org, &name).await?;
    Ok(StatusCode::OK.into_response())
}

/// `GET /exec/{id}`: attach.
pub async fn exec_attach(
    State(s): State<AppState>,
    Extension(org): Extension<Org>,
    Path((name, id)): Path<(String, String)>,
    req: Request,
) -> Result<Response, ApiError> {
    forward(
        &s,
        &org,
        &name,
        &format!("/exec/{}", encode_segment(&id)),
        req,
    )
    .await
}

/// `POST /exec/{id}/kill`.
pub async fn exec_kill(
    State(s): State<AppState>,
    Extension(org): Extension<Org>,
    Path((name, id)): Path<(String, String)>,
    req: Request,
) -> Result<Response, ApiError> {
    forward(
        &s,
        &org,
        &name,
        &format!("/exec/{}/kill", encode_segment(&id)),
        req,
    )
    .await
}

/// Forwards `/v1/sprites/{name}/<area>[/<rest>]` to the agent's `/<area>[/<rest>]`.
async fn forward_area(
    s: &AppState,
    org: &Org,
    params: &[(String, String)],
    area: &str,
    req: Request,
) -> Result<Response, ApiError> {
    let name = params
        .iter()
        .find(|(k, _)| k == "name")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let rest = params
        .iter()
        .find(|(k, _)| k == "rest")
        .map(|(_, v)| v.as_str());
    let path = match rest {
        Some(r) => format!(
            "/{area}/{}",
            r.split('/')
                .map(encode_segment)
                .collect::<Vec<_>>()
                .join("/")
        ),
        None => format!("/{area}"),
    };
    forward(s, org, &name, &path, req).await
}

/// `/services` and everything under it.
pub async fn services(
    State(s): State<AppState>,
    Extension(org): Extension<Org>,
    Path(params): Path<Vec<(String, String)>>,
    req: Request,
) -> Result<Response, ApiError> {
    forward_area(&s, &org, &params, "services", req).await
}

/// `/fs/...` (filesystem API, including the `watch` WebSocket).
pub async fn fs(
    State(s): State<AppState>,
    Extension(org): Extension<Org>,
    Path(params): Path<Vec<(String, String)>>,
    req: Request,
) -> Result<Response, ApiError> {
    forward_area(&s, &org, &params, "fs", req).await
}

/// `GET /ports/watch`: port notifications (spec §9.1).
pub async fn ports_watch(
    State(s): State<AppState>,
    Extension(org): Extension<Org>,
    Path(name): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    forward(&s, &org, &name, "/ports/watch", req).await
}

/// Percent-encodes a path segment taken from the client before it goes into the agent's URI.
fn encode_segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
