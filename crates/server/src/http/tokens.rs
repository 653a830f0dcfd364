//! `/v1/organizations/{org}/tokens`: an org's admin tokens mint, list and revoke its tokens
//! (the Go SDK's `CreateToken` path; our own tokens instead of Fly's macaroons).

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::{json, Value};
use sprites_api::ErrorCode;

use super::{json_body, AppState};
use crate::error::ApiError;
use crate::store::{self, Org};

/// The id of the token a request came with.
#[derive(Debug, Clone)]
pub struct TokenId(pub String);

#[derive(serde::Deserialize, Default)]
pub struct MintRequest {
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    admin: Option<bool>,
}

/// The org the path names must be the token's, and the token an admin one.
async fn admin_of(
    s: &AppState,
    org: &Org,
    tok: Option<&TokenId>,
    slug: &str,
) -> Result<(), ApiError> {
    if slug != org.slug && slug != org.id {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            format!("organization {slug:?} not found"),
        ));
    }
    let Some(TokenId(id)) = tok.cloned() else {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "only an org token may manage tokens",
        ));
    };
    if !s.store.with(move |c| store::token_is_admin(c, &id)).await? {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "only an admin token may manage tokens",
        ));
    }
    Ok(())
}

fn info(t: &store::TokenInfo) -> Value {
    json!({
        "id": t.id,
        "description": t.description,
        "admin": t.admin,
        "created_at": sprites_api::timefmt::format_millis(t.created_at),
    })
}

/// `GET /v1/organizations/{org}/tokens`.
pub async fn list(
    State(s): State<AppState>,
    Extension(org): Extension<Org>,
    tok: Option<Extension<TokenId>>,
    Path(slug): Path<String>,
) -> Result<Json<Value>, ApiError> {
    admin_of(&s, &org, tok.as_ref().map(|t| &t.0), &slug).await?;
    let o = org.id.clone();
    let all = s.store.with(move |c| store::tokens_of(c, &o)).await?;
    Ok(Json(
        json!({"tokens": all.iter().map(info).collect::<Vec<_>>()}),
    ))
}

/// `POST /v1/organizations/{org}/tokens`: `{"token": …}` (shown this once) and its id.
pub async fn create(
    State(s): State<AppState>,
    Extension(org): Extension<Org>,
    tok: Option<Extension<TokenId>>,
    Path(slug): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    admin_of(&s, &org, tok.as_ref().map(|t| &t.0), &slug).await?;
    let req: MintRequest = match &body {
        Ok(b) if b.iter().all(u8::is_ascii_whitespace) => MintRequest::default(),
        _ => json_body(body)?,
    };
    let description = req.description.unwrap_or_default();
    if description.len() > 200 || description.chars().any(char::is_control) {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            "description: at most 200 printable characters",
        ));
    }
    let admin = req.admin.unwrap_or(false);
    let o = org.clone();
    let d = description.clone();
    let (id, token) = s
        .store
        .with(move |c| crate::auth::mint_token(c, &o, &d, admin))
        .await?;
    tracing::info!(org = %org.slug, token = %id, admin, "token minted");
    Ok((
        StatusCode::CREATED,
        Json(json!({"token": token, "id": id, "description": description, "admin": admin})),
    )
        .into_response())
}

/// `DELETE /v1/organizations/{org}/tokens/{id}`.
pub async fn revoke(
    State(s): State<AppState>,
    Extension(org): Extension<Org>,
    tok: Option<Extension<TokenId>>,
    Path((slug, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    admin_of(&s, &org, tok.as_ref().map(|t| &t.0), &slug).await?;
    let (o, i) = (org.id.clone(), id.clone());
    if !s
        .store
        .with(move |c| store::revoke_token(c, &o, &i))
        .await?
    {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            format!("token {id:?} not found"),
        ));
    }
    tracing::info!(org = %org.slug, token = %id, "token revoked");
    Ok(StatusCode::NO_CONTENT)
}
