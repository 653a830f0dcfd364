//! `/v1/oauth/…`: connections (connectors) and OAuth flows. Handlers translate; the work is
//! in [`crate::connectors`].

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::{Extension, Json};
use sprites_api::connector::{
    AccessPolicy, AuthorizedSprites, ConnectionEnvelope, ConnectionList, CreateApiKeyRequest,
    OAuthCallbackRequest, PatchConnectionRequest, ProvisionRequest, ReplacePolicyRequest,
};
use sprites_api::ErrorCode;

use super::{json_body, AppState};
use crate::error::ApiError;
use crate::store::Org;

#[derive(serde::Deserialize)]
pub struct ListQuery {
    provider: Option<String>,
}

pub async fn list(
    State(s): State<AppState>,
    Extension(org): Extension<Org>,
    Query(q): Query<ListQuery>,
) -> Result<Json<ConnectionList>, ApiError> {
    let connections = s.connectors.list(&org, q.provider.as_deref()).await?;
    Ok(Json(ConnectionList { connections }))
}

pub async fn get(
    State(s): State<AppState>,
    Extension(org): Extension<Org>,
    Path(id): Path<String>,
) -> Result<Json<ConnectionEnvelope>, ApiError> {
    let connection = s.connectors.get(&org, &id).await?;
    Ok(Json(ConnectionEnvelope { connection }))
}

pub async fn create_api_key(
    State(s): State<AppState>,
    Extension(org): Extension<Org>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: CreateApiKeyRequest = json_body(body)?;
    let connection = s.connectors.create_api_key(&org, req).await?;
    Ok((StatusCode::CREATED, Json(ConnectionEnvelope { connection })).into_response())
}

pub async fn provision(
    State(s): State<AppState>,
    Extension(org): Extension<Org>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: ProvisionRequest = json_body(body)?;
    let connection = s.connectors.provision(&org, req).await?;
    Ok((StatusCode::CREATED, Json(ConnectionEnvelope { connection })).into_response())
}

pub async fn replace(
    State(s): State<AppState>,
    Extension(org): Extension<Org>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<ConnectionEnvelope>, ApiError> {
    let req: ReplacePolicyRequest = json_body(body)?;
    let patch = PatchConnectionRequest {
        access_policy: Some(req.access_policy),
        ..Default::default()
    };
    let connection = s.connectors.update(&org, &id, patch).await?;
    Ok(Json(ConnectionEnvelope { connection }))
}

pub async fn patch(
    State(s): State<AppState>,
    Extension(org): Extension<Org>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<ConnectionEnvelope>, ApiError> {
    let req: PatchConnectionRequest = json_body(body)?;
    let connection = s.connectors.update(&org, &id, req).await?;
    Ok(Json(ConnectionEnvelope { connection }))
}

pub async fn delete(
    State(s): State<AppState>,
    Extension(org): Extension<Org>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    s.connectors.delete(&org, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn sprites(
    State(s): State<AppState>,
    Extension(org): Extension<Org>,
    Path(id): Path<String>,
) -> Result<Json<AuthorizedSprites>, ApiError> {
    let sprites = s.connectors.authorized_sprites(&org, &id).await?;
    Ok(Json(AuthorizedSprites { sprites }))
}

#[derive(serde::Deserialize)]
pub struct AuthorizeQuery {
    scopes: Option<String>,
    add_scopes: Option<String>,
    redirect_uri: Option<String>,
    /// A policy for the new connection, as JSON (the API form takes it at the callback too).
    access_policy: Option<String>,
}

pub async fn authorize(
    State(s): State<AppState>,
    Extension(org): Extension<Org>,
    Path(provider): Path<String>,
    Query(q): Query<AuthorizeQuery>,
) -> Result<Response, ApiError> {
    let policy: Option<AccessPolicy> = match &q.access_policy {
        Some(p) => Some(
            serde_json::from_str(p)
                .map_err(|e| ApiError::new(ErrorCode::BadRequest, format!("access_policy: {e}")))?,
        ),
        None => None,
    };
    let r = s
        .connectors
        .authorize(
            &org,
            &provider,
            q.scopes.as_deref(),
            q.add_scopes.as_deref(),
            q.redirect_uri.as_deref(),
            policy,
        )
        .await?;
    Ok(Json(r).into_response())
}

pub async fn callback_post(
    State(s): State<AppState>,
    Extension(org): Extension<Org>,
    Path(provider): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: OAuthCallbackRequest = json_body(body)?;
    let state = req.state.clone().ok_or_else(|| {
        ApiError::new(
            ErrorCode::BadRequest,
            "failed to exchange authorization code: no state",
        )
    })?;
    let (_, connection) = s
        .connectors
        .callback(
            Some(&org),
            &provider,
            req.code,
            &state,
            req.redirect_uri.as_deref(),
            req.access_policy,
        )
        .await?;
    Ok((StatusCode::CREATED, Json(ConnectionEnvelope { connection })).into_response())
}

#[derive(serde::Deserialize)]
pub struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
}

/// The provider's redirect back (a browser, no token): the state names the org.
pub async fn callback_get(
    State(s): State<AppState>,
    Path(provider): Path<String>,
    Query(q): Query<CallbackQuery>,
) -> Response {
    // With the console on, the person came from it: a way back.
    let back = s
        .cfg
        .console_path
        .as_ref()
        .map(|base| {
            format!(
                "<p><a href=\"{}/connectors\">Back to the connectors</a></p>",
                base.trim_end_matches('/')
            )
        })
        .unwrap_or_default();
    let page = |status: StatusCode, title: &str, text: &str| {
        let esc = |t: &str| {
            t.replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;")
                .replace('"', "&quot;")
        };
        (
            status,
            Html(format!(
                "<!doctype html><html lang=en><meta charset=utf-8><title>{t}</title><body style=\"font-family:sans-serif;max-width:40em;margin:3em auto\"><h1>{t}</h1><p>{x}</p>{back}</body></html>",
                t = esc(title),
                x = esc(text)
            )),
        )
            .into_response()
    };
    if let Some(e) = q.error {
        return page(
            StatusCode::BAD_REQUEST,
            "Not connected",
            &format!("The provider said: {e}"),
        );
    }
    let (Some(code), Some(state)) = (q.code, q.state) else {
        return page(
            StatusCode::BAD_REQUEST,
            "Not connected",
            "failed to exchange authorization code: the provider sent no code or state",
        );
    };
    match s.connectors.callback(None, &provider, code.into(), &state, None, None).await {
        Ok((_, c)) => page(
            StatusCode::OK,
            "Connected",
            &format!("Connection {} to {} is ready. Give sprites access with its access policy; you can close this window.", c.id, c.provider),
        ),
        Err(e) => page(StatusCode::BAD_REQUEST, "Not connected", &e.message),
    }
}
