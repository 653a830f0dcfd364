//! The MCP server's side in spritesd: its OAuth rows in SQLite ([`sprites_mcp::AuthStore`]),
//! the in-process sprites API its tools call ([`sprites_mcp::SpriteApi`]: the same router,
//! handlers and service as every REST client), and the org's grants under `/v1/mcp/grants`.

use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use bytes::Bytes;
use futures::StreamExt;
use rusqlite::{params, OptionalExtension};
use serde_json::{json, Value};
use sprites_api::ErrorCode;
use sprites_mcp::{AuthStore, BodyStream, ClientRow, CodeRow, GrantRow, SpriteApi, TokenRow};
use tower::ServiceExt;

use crate::error::ApiError;
use crate::store::{self, now_ms, Org, Store};

/// The REST API called in-process; the router is set once it is built.
pub struct InProcess {
    store: Store,
    /// The server's whole router.
    pub router: OnceLock<axum::Router>,
}

impl InProcess {
    /// An in-process caller over `store`'s orgs.
    pub fn new(store: Store) -> Arc<Self> {
        Arc::new(InProcess {
            store,
            router: OnceLock::new(),
        })
    }
}

#[async_trait::async_trait]
impl SpriteApi for InProcess {
    async fn call(
        &self,
        org_id: &str,
        req: http::Request<Bytes>,
    ) -> Result<(u16, BodyStream), String> {
        let router = self.router.get().cloned().ok_or("the server is starting")?;
        let id = org_id.to_string();
        let org = self
            .store
            .with(move |c| store::org_by_id(c, &id))
            .await
            .map_err(|e| e.to_string())?
            .ok_or("the org no longer exists")?;
        let (parts, body) = req.into_parts();
        let mut req = http::Request::from_parts(parts, Body::from(body));
        // The org, as the token check would have found it (an external request cannot carry
        // an extension).
        req.extensions_mut().insert(org);
        let resp = router.oneshot(req).await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let stream = resp
            .into_body()
            .into_data_stream()
            .map(|c| c.map_err(|e| e.to_string()))
            .boxed();
        Ok((status, stream))
    }
}

/// OAuth rows in the state store.
pub struct Rows {
    /// The store.
    pub store: Store,
    /// The server speaks TLS (the console's cookie has its `__Host-` name).
    pub secure: bool,
}

fn grant_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<GrantRow> {
    Ok(GrantRow {
        id: r.get(0)?,
        org_id: r.get(1)?,
        client_id: r.get(2)?,
        client_name: r.get(3)?,
        mode: r.get(4)?,
        prefix: r.get(5)?,
        max_sprites: r.get(6)?,
        created_at: r.get(7)?,
        last_used_at: r.get(8)?,
    })
}

const TOKEN_SELECT: &str =
    "SELECT grant_id, kind, expires_at, used FROM mcp_tokens WHERE hash = ?1";

fn token_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<TokenRow> {
    Ok(TokenRow {
        grant_id: r.get(0)?,
        kind: r.get(1)?,
        expires_at: r.get(2)?,
        used: r.get(3)?,
    })
}

const GRANT_COLS: &str =
    "id, org_id, client_id, client_name, mode, prefix, max_sprites, created_at, last_used_at";

impl Rows {
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut rusqlite::Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, String> {
        self.store
            .with(move |c| f(c).map_err(store::StoreError::from))
            .await
            .map_err(|e| e.to_string())
    }
}

#[async_trait::async_trait]
impl AuthStore for Rows {
    async fn org_of_browser(&self, headers: &http::HeaderMap) -> Option<(String, String)> {
        let hash = sprites_console::session_hash(headers, self.secure)?;
        self.store
            .with(move |c| store::console_session(c, &hash, now_ms()))
            .await
            .ok()
            .flatten()
            .map(|s| (s.org.id, s.org.slug))
    }

    async fn org_of_token(&self, token: &str) -> Option<String> {
        crate::auth::verify(&self.store, token)
            .await
            .ok()
            .flatten()
            .map(|o| o.id)
    }

    async fn put_client(&self, c: &ClientRow) -> Result<(), String> {
        let c = c.clone();
        self.run(move |db| {
            db.execute(
                "INSERT INTO mcp_clients (id, name, redirect_uris, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![c.id, c.name, serde_json::to_string(&c.redirect_uris).unwrap_or_default(), c.created_at],
            )
            .map(|_| ())
        })
        .await
    }

    async fn client(&self, id: &str) -> Option<ClientRow> {
        let id = id.to_string();
        self.run(move |db| {
            db.query_row(
                "SELECT id, name, redirect_uris, created_at FROM mcp_clients WHERE id = ?1",
                [id],
                |r| {
                    let uris: String = r.get(2)?;
                    Ok(ClientRow {
                        id: r.get(0)?,
                        name: r.get(1)?,
                        redirect_uris: serde_json::from_str(&uris).unwrap_or_default(),
                        created_at: r.get(3)?,
                    })
                },
            )
            .optional()
        })
        .await
        .ok()
        .flatten()
    }

    async fn put_grant(&self, g: &GrantRow) -> Result<(), String> {
        let g = g.clone();
        self.run(move |db| {
            db.execute(
                &format!("INSERT INTO mcp_grants ({GRANT_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"),
                params![g.id, g.org_id, g.client_id, g.client_name, g.mode, g.prefix, g.max_sprites, g.created_at, g.last_used_at],
            )
            .map(|_| ())
        })
        .await
    }

    async fn grant(&self, id: &str) -> Option<GrantRow> {
        let id = id.to_string();
        self.run(move |db| {
            db.query_row(
                &format!("SELECT {GRANT_COLS} FROM mcp_grants WHERE id = ?1"),
                [id],
                grant_row,
            )
            .optional()
        })
        .await
        .ok()
        .flatten()
    }

    async fn grants(&self, org_id: &str) -> Vec<GrantRow> {
        let org = org_id.to_string();
        self.run(move |db| {
            let mut st = db.prepare(&format!(
                "SELECT {GRANT_COLS} FROM mcp_grants WHERE org_id = ?1 ORDER BY created_at"
            ))?;
            let rows = st.query_map([org], grant_row)?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
        })
        .await
        .unwrap_or_default()
    }

    async fn revoke_grant(&self, org_id: Option<&str>, id: &str) -> bool {
        let (org, id) = (org_id.map(str::to_string), id.to_string());
        self.run(move |db| {
            let tx = db.transaction()?;
            let n = match &org {
                Some(o) => tx.execute(
                    "DELETE FROM mcp_grants WHERE id = ?1 AND org_id = ?2",
                    params![id, o],
                )?,
                None => tx.execute("DELETE FROM mcp_grants WHERE id = ?1", [&id])?,
            };
            if n > 0 {
                tx.execute("DELETE FROM mcp_tokens WHERE grant_id = ?1", [&id])?;
                tx.execute("DELETE FROM mcp_codes WHERE grant_id = ?1", [&id])?;
            }
            tx.commit()?;
            Ok(n > 0)
        })
        .await
        .unwrap_or(false)
    }

    async fn touch_grant(&self, id: &str) {
        let id = id.to_string();
        let _ = self
            .run(move |db| {
                db.execute(
                    "UPDATE mcp_grants SET last_used_at = ?2 WHERE id = ?1",
                    params![id, now_ms()],
                )
                .map(|_| ())
            })
            .await;
    }

    async fn put_code(&self, hash: &str, c: &CodeRow) -> Result<(), String> {
        let (h, c) = (hash.to_string(), c.clone());
        self.run(move |db| {
            db.execute("DELETE FROM mcp_codes WHERE expires_at < ?1", [now_ms()])?;
            db.execute(
                "INSERT INTO mcp_codes (hash, client_id, redirect_uri, challenge, grant_id, expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![h, c.client_id, c.redirect_uri, c.challenge, c.grant_id, c.expires_at],
            )
            .map(|_| ())
        })
        .await
    }

    async fn take_code(&self, hash: &str) -> Option<CodeRow> {
        let h = hash.to_string();
        self.run(move |db| {
            let tx = db.transaction()?;
            let c = tx
                .query_row(
                    "SELECT client_id, redirect_uri, challenge, grant_id, expires_at FROM mcp_codes WHERE hash = ?1",
                    [&h],
                    |r| {
                        Ok(CodeRow {
                            client_id: r.get(0)?,
                            redirect_uri: r.get(1)?,
                            challenge: r.get(2)?,
                            grant_id: r.get(3)?,
                            expires_at: r.get(4)?,
                        })
                    },
                )
                .optional()?;
            tx.execute("DELETE FROM mcp_codes WHERE hash = ?1", [&h])?;
            tx.commit()?;
            Ok(c)
        })
        .await
        .ok()
        .flatten()
    }

    async fn put_token(&self, hash: &str, t: &TokenRow) -> Result<(), String> {
        let (h, t) = (hash.to_string(), t.clone());
        self.run(move |db| {
            db.execute("DELETE FROM mcp_tokens WHERE expires_at < ?1", [now_ms()])?;
            db.execute(
                "INSERT INTO mcp_tokens (hash, grant_id, kind, expires_at, used) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![h, t.grant_id, t.kind, t.expires_at, t.used],
            )
            .map(|_| ())
        })
        .await
    }

    async fn token(&self, hash: &str) -> Option<TokenRow> {
        let h = hash.to_string();
        self.run(move |db| db.query_row(TOKEN_SELECT, [h], token_row).optional())
            .await
            .ok()
            .flatten()
    }

    async fn use_refresh(&self, hash: &str) -> Option<TokenRow> {
        let h = hash.to_string();
        self.run(move |db| {
            let tx = db.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let t = tx.query_row(TOKEN_SELECT, [&h], token_row).optional()?;
            tx.execute("UPDATE mcp_tokens SET used = 1 WHERE hash = ?1", [&h])?;
            tx.commit()?;
            Ok(t)
        })
        .await
        .ok()
        .flatten()
    }

    async fn delete_token(&self, hash: &str) {
        let h = hash.to_string();
        let _ = self
            .run(move |db| {
                db.execute("DELETE FROM mcp_tokens WHERE hash = ?1", [h])
                    .map(|_| ())
            })
            .await;
    }
}

fn grant_json(g: &GrantRow) -> Value {
    json!({
        "id": g.id,
        "client_id": g.client_id,
        "client_name": g.client_name,
        "mode": g.mode,
        "prefix": g.prefix,
        "max_sprites": g.max_sprites,
        "created_at": sprites_api::timefmt::format_millis(g.created_at),
        "last_used_at": g.last_used_at.map(sprites_api::timefmt::format_millis),
    })
}

/// `GET /v1/mcp/grants`.
pub async fn list_grants(
    State(s): State<crate::http::AppState>,
    Extension(org): Extension<Org>,
) -> Json<Value> {
    let g = s.mcp.grants(&org.id).await;
    Json(json!({"grants": g.iter().map(grant_json).collect::<Vec<_>>()}))
}

#[derive(serde::Deserialize)]
pub struct NewGrant {
    #[serde(default)]
    mode: Option<String>,
    #[serde(default)]
    prefix: Option<String>,
    #[serde(default)]
    max_sprites: Option<u32>,
}

/// `POST /v1/mcp/grants`: a grant and its token for a client that cannot do OAuth (the token
/// is shown in this answer only).
pub async fn create_grant(
    State(s): State<crate::http::AppState>,
    Extension(org): Extension<Org>,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    let req: NewGrant = crate::http::json_body(body)?;
    let restriction = match req.mode.as_deref().unwrap_or("restricted") {
        "full" => None,
        "restricted" => {
            let prefix = req.prefix.unwrap_or_else(|| "mcp-".into());
            let max = req.max_sprites.unwrap_or(5);
            if prefix.is_empty()
                || sprites_api::names::validate_sprite_name(&format!("{prefix}x")).is_err()
            {
                return Err(ApiError::new(
                    ErrorCode::BadRequest,
                    "prefix must be the start of a valid sprite name",
                ));
            }
            if !(1..=1000).contains(&max) {
                return Err(ApiError::new(
                    ErrorCode::BadRequest,
                    "max_sprites must be between 1 and 1000",
                ));
            }
            Some(sprites_mcp::Restriction {
                prefix,
                max_sprites: max,
            })
        }
        other => {
            return Err(ApiError::new(
                ErrorCode::BadRequest,
                format!("mode must be restricted or full, not {other:?}"),
            ))
        }
    };
    let (g, token) = s
        .mcp
        .direct_grant(&org.id, restriction)
        .await
        .map_err(ApiError::internal)?;
    let mut v = grant_json(&g);
    v["access_token"] = Value::String(token);
    v["mcp_url"] = Value::String(s.mcp.resource());
    Ok((StatusCode::CREATED, Json(v)).into_response())
}

/// `DELETE /v1/mcp/grants/{id}`.
pub async fn revoke_grant(
    State(s): State<crate::http::AppState>,
    Extension(org): Extension<Org>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    if s.mcp.revoke(&org.id, &id).await {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::new(
            ErrorCode::NotFound,
            format!("grant {id:?} not found"),
        ))
    }
}
