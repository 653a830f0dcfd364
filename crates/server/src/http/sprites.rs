//! `/v1/sprites` CRUD (§2).

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use base64::Engine;
use serde::de::DeserializeOwned;
use sprites_api::{self as api, ErrorCode};

use super::{AppState, JSON_BODY_LIMIT};
use crate::error::ApiError;
use crate::store::Org;

/// Reads a JSON body with a size limit and turns every failure into a JSON error.
pub(crate) fn json_body<T: DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let bytes = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!("request body is larger than {JSON_BODY_LIMIT} bytes"),
            )
        } else {
            ApiError::new(ErrorCode::BadRequest, format!("reading request body: {e}"))
        }
    })?;
    if bytes.len() > JSON_BODY_LIMIT {
        return Err(ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("request body is larger than {JSON_BODY_LIMIT} bytes"),
        ));
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::new(ErrorCode::BadRequest, format!("invalid JSON body: {e}")))
}

pub async fn create(
    State(s): State<AppState>,
    Extension(org): Extension<Org>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: api::CreateSpriteRequest = json_body(body)?;
    let sprite = s.create(&org, req).await?;
    Ok((StatusCode::CREATED, Json(sprite)).into_response())
}

pub async fn get(
    State(s): State<AppState>,
    Extension(org): Extension<Org>,
    Path(name): Path<String>,
) -> Result<Json<api::Sprite>, ApiError> {
    let rec = s.find(&org, &name).await?;
    Ok(Json(s.to_api(&org, &rec).await))
}

pub async fn update(
    State(s): State<AppState>,
    Extension(org): Extension<Org>,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<api::Sprite>, ApiError> {
    let req: api::UpdateSpriteRequest = json_body(body)?;
    Ok(Json(s.update(&org, &name, req).await?))
}

pub async fn delete(
    State(s): State<AppState>,
    Extension(org): Extension<Org>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    s.delete(&org, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/sprites/{name}/restart`: stop every process and boot again. The disk stays.
pub async fn restart(
    State(s): State<AppState>,
    Extension(org): Extension<Org>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let rec = s.restart(&org, &name).await?;
    Ok(Json(serde_json::json!({
        "sprite_name": rec.name,
        "machine_id": rec.id,
        "message": "sprite restarted",
    })))
}

/// `POST /v1/sprites/{name}/upgrade`: moves the sprite to the current base image, keeping its
/// disk (a running sprite reboots for it). The agent is the server's own: every boot uses the
/// current one. An optional body (`{"version":…}`, the official clients') is ignored.
pub async fn upgrade(
    State(s): State<AppState>,
    Extension(org): Extension<Org>,
    Path(name): Path<String>,
) -> Result<Json<api::UpgradeResult>, ApiError> {
    Ok(Json(s.upgrade(&org, &name).await?))
}

fn policy_kind(kind: &str) -> Result<&str, ApiError> {
    crate::service::POLICY_KINDS
        .iter()
        .find(|k| **k == kind)
        .copied()
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::NotFound,
                format!("no policy called {kind:?} (network, privileges, resources)"),
            )
        })
}

/// `GET /v1/sprites/{name}/policy/{kind}`.
pub async fn get_policy(
    State(s): State<AppState>,
    Extension(org): Extension<Org>,
    Path((name, kind)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let kind = policy_kind(&kind)?;
    Ok(Json(s.get_policy(&org, &name, kind).await?))
}

/// `POST /v1/sprites/{name}/policy/{kind}`: 204 (every SDK requires exactly that for network).
pub async fn set_policy(
    State(s): State<AppState>,
    Extension(org): Extension<Org>,
    Path((name, kind)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Result<StatusCode, ApiError> {
    let kind = policy_kind(&kind)?;
    let v: serde_json::Value = json_body(body)?;
    s.set_policy(&org, &name, kind, Some(v)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /v1/sprites/{name}/policy/{kind}`: back to the default.
pub async fn delete_policy(
    State(s): State<AppState>,
    Extension(org): Extension<Org>,
    Path((name, kind)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let kind = policy_kind(&kind)?;
    s.set_policy(&org, &name, kind, None).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(serde::Deserialize, serde::Serialize)]
struct Continuation {
    last: String,
}

pub async fn list(
    State(s): State<AppState>,
    Extension(org): Extension<Org>,
    headers: axum::http::HeaderMap,
    Query(q): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let watch = headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/x-ndjson"));
    let mut prefix = String::new();
    let mut limit = api::MAX_LIST_RESULTS;
    let mut after = None;
    for (k, v) in q {
        match k.as_str() {
            "prefix" => prefix = v,
            "max_results" => {
                let n: i64 = v.parse().map_err(|_| {
                    ApiError::new(
                        ErrorCode::BadRequest,
                        format!("max_results must be a number, not {v:?}"),
                    )
                })?;
                // Clamp rather than reject: Go and Python send 100.
                limit = usize::try_from(n.clamp(1, api::MAX_LIST_RESULTS as i64)).unwrap_or(1);
            }
            "continuation_token" if !v.is_empty() => {
                let bad = || ApiError::new(ErrorCode::BadRequest, "invalid continuation_token");
                let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(v.as_bytes())
                    .map_err(|_| bad())?;
                let c: Continuation = serde_json::from_slice(&raw).map_err(|_| bad())?;
                after = Some(c.last);
            }
            _ => {}
        }
    }
    if watch {
        return Ok(watch_sprites(s, org, prefix, limit).await);
    }
    let (sprites, has_more) = s.list(&org, prefix, after, limit).await?;
    let next_continuation_token = match (has_more, sprites.last()) {
        (true, Some(last)) => {
            let c = serde_json::to_vec(&Continuation {
                last: last.name.clone(),
            })
            .map_err(ApiError::internal)?;
            Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(c))
        }
        _ => None,
    };
    let counters = org_summary(&s, &org).await?;
    Ok(Json(api::ListSpritesResponse {
        sprites,
        has_more,
        next_continuation_token,
        org: counters.clone(),
        counters,
    })
    .into_response())
}

async fn org_summary(s: &AppState, org: &Org) -> Result<api::OrgSummary, ApiError> {
    let (running, warm, cold) = s.counts(org).await?;
    Ok(api::OrgSummary {
        name: org.slug.clone(),
        running,
        warm,
        cold,
        running_limit: 1000,
        warm_limit: 10_000,
    })
}

/// The watch form of the list: a line per sprite now, then a line whenever one of them (or
/// one created later, matching `prefix`) changes state, and heartbeats. Ends when the client
/// goes away.
async fn watch_sprites(s: AppState, org: Org, prefix: String, limit: usize) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel::<api::WatchEvent>(64);
    // Subscribed before the snapshot is taken, so no change falls between the two.
    let mut events = s.runtime.subscribe();
    tokio::spawn(async move {
        let now = || api::timefmt::format_millis(crate::store::now_ms());
        let line = |sp: &api::Sprite, org: api::OrgSummary| api::WatchEvent {
            kind: None,
            name: Some(sp.name.clone()),
            status: Some(sp.status),
            last_running_at: sp.last_running_at.clone(),
            last_warming_at: sp.last_warming_at.clone(),
            timestamp: now(),
            org,
        };
        let Ok((sprites, _)) = s.list(&org, prefix.clone(), None, limit).await else {
            return;
        };
        let Ok(summary) = org_summary(&s, &org).await else {
            return;
        };
        for sp in &sprites {
            if tx.send(line(sp, summary.clone())).await.is_err() {
                return;
            }
        }
        let mut beat =
            tokio::time::interval(std::time::Duration::from_secs(api::WATCH_HEARTBEAT_SECS));
        beat.tick().await;
        loop {
            let ev = tokio::select! {
                ev = events.recv() => ev,
                _ = beat.tick() => {
                    let Ok(summary) = org_summary(&s, &org).await else { return };
                    let hb = api::WatchEvent {
                        kind: Some("heartbeat".into()),
                        name: None,
                        status: None,
                        last_running_at: None,
                        last_warming_at: None,
                        timestamp: now(),
                        org: summary,
                    };
                    if tx.send(hb).await.is_err() {
                        return;
                    }
                    continue;
                }
                _ = tx.closed() => return,
            };
            let id = match ev {
                Ok(t) => t.id,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(_) => return,
            };
            let rec = s
                .store
                .with(move |c| crate::store::sprite_by_id(c, &id))
                .await;
            let Ok(Some(rec)) = rec else { continue };
            if rec.org_id != org.id || !rec.name.starts_with(&prefix) {
                continue;
            }
            let sp = s.to_api(&org, &rec).await;
            let Ok(summary) = org_summary(&s, &org).await else {
                return;
            };
            if tx.send(line(&sp, summary)).await.is_err() {
                return;
            }
        }
    });
    super::ndjson(rx)
}

/// `GET /v1/templates`.
pub async fn list_templates(
    State(s): State<AppState>,
    Extension(org): Extension<Org>,
) -> Result<Json<api::TemplateList>, ApiError> {
    Ok(Json(api::TemplateList {
        templates: s.list_templates(&org).await?,
    }))
}

/// `GET /v1/templates/{name}`.
pub async fn get_template(
    State(s): State<AppState>,
    Extension(org): Extension<Org>,
    Path(name): Path<String>,
) -> Result<Json<api::Template>, ApiError> {
    Ok(Json(s.get_template(&org, &name).await?))
}

/// `PUT /v1/templates/{name}`.
pub async fn put_template(
    State(s): State<AppState>,
    Extension(org): Extension<Org>,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<api::Template>, ApiError> {
    let req: api::PutTemplateRequest = json_body(body)?;
    Ok(Json(s.put_template(&org, &name, req).await?))
}

/// `DELETE /v1/templates/{name}`.
pub async fn delete_template(
    State(s): State<AppState>,
    Extension(org): Extension<Org>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    s.delete_template(&org, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/sprites/{name}/sleep`.
pub async fn sleep(
    State(s): State<AppState>,
    Extension(org): Extension<Org>,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<api::Sprite>, ApiError> {
    let req: api::SleepRequest = match &body {
        Ok(b) if b.iter().all(u8::is_ascii_whitespace) => api::SleepRequest::default(),
        _ => json_body(body)?,
    };
    Ok(Json(s.sleep(&org, &name, req).await?))
}

/// `GET /v1/sprites/{name}/check` (the JS SDK's `checkSprite`): whether its agent answers.
/// A sleeping sprite is `hibernated` (and is not woken for this).
pub async fn check(
    State(s): State<AppState>,
    Extension(org): Extension<Org>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let started = std::time::Instant::now();
    let rec = s.find(&org, &name).await?;
    let spec = s.spec(&rec);
    let (status, reason) = match s.runtime.state(&spec).await {
        sprites_runtime::State::Warm | sprites_runtime::State::Cold => ("hibernated", None),
        sprites_runtime::State::Running => {
            let probe = async {
                let st = s.runtime.backend().connect(&spec).await?;
                sprites_runtime::agent::activity(st).await
            };
            match tokio::time::timeout(std::time::Duration::from_secs(5), probe).await {
                Ok(Ok(_)) => ("healthy", None),
                Ok(Err(e)) => ("unhealthy", Some(e.to_string())),
                Err(_) => (
                    "unhealthy",
                    Some("the agent did not answer in 5 s".to_string()),
                ),
            }
        }
    };
    Ok(Json(serde_json::json!({
        "sprite_name": rec.name,
        "sprite_id": rec.id,
        "status": status,
        "reason": reason,
        "checked_at": api::timefmt::format_millis(crate::store::now_ms()),
        "elapsed": started.elapsed().as_millis() as u64,
    })))
}
