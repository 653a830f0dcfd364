//! The API a sprite calls from inside: one Unix socket per sprite in a host directory that the
//! backend shows at `/.sprite/host` (the agent forwards `/.sprite/api.sock` checkpoint calls to
//! it). The socket a sprite reaches is its own, so it needs no token: it can only list, create
//! and restore that sprite's checkpoints.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path as UrlPath, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use sprites_api::checkpoint::CreateCheckpointRequest;
use sprites_api::ErrorCode;

use crate::error::ApiError;
use crate::service::Sprites;
use crate::store::{self, SpriteRecord};

/// Name of the socket inside the host directory.
pub const SOCKET: &str = "api.sock";
/// Connections one sprite may hold open to its inside API at once; more wait in the
/// kernel's backlog, so a sprite cannot spend the server's file descriptors.
const MAX_CONNECTIONS: usize = 8;
/// How long a request's head may take to arrive.
const HEAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Clone)]
struct HostState {
    svc: Arc<Sprites>,
    sprite_id: String,
}

impl HostState {
    async fn record(&self) -> Result<SpriteRecord, ApiError> {
        let id = self.sprite_id.clone();
        self.svc
            .store
            .with(move |c| store::sprite_by_id(c, &id))
            .await?
            .ok_or_else(|| ApiError::new(ErrorCode::NotFound, "this sprite no longer exists"))
    }
}

/// Host directory of a sprite's inside API.
pub fn host_dir(data_dir: &Path, sprite_id: &str) -> PathBuf {
    data_dir
        .join("host")
        .join(sprite_id.strip_prefix("sprite-").unwrap_or(sprite_id))
}

impl Sprites {
    /// Serves the inside API of `rec` (idempotent). The directory must exist before the sprite
    /// boots; the socket may be replaced at any time.
    pub fn serve_host_api(self: &Arc<Self>, rec: &SpriteRecord) -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let mut running = self.host_apis.lock().unwrap_or_else(|e| e.into_inner());
        if running.contains_key(&rec.id) {
            return Ok(());
        }
        let dir = host_dir(&self.cfg.data_dir, &rec.id);
        std::fs::create_dir_all(&dir)?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
        let sock = dir.join(SOCKET);
        let _ = std::fs::remove_file(&sock);
        let listener = tokio::net::UnixListener::bind(&sock)?;
        // Only the sprite's root (and so its agent) may connect.
        let root = self.spec(rec).uid_base;
        std::os::unix::fs::chown(&sock, Some(root), Some(root))?;
        std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600))?;
        let state = HostState {
            svc: self.clone(),
            sprite_id: rec.id.clone(),
        };
        let app = Router::new()
            .route("/v1/checkpoints", get(list))
            .route("/v1/checkpoint", post(create))
            .route("/v1/checkpoints/{id}", get(get_one))
            .route("/v1/checkpoints/{id}/restore", post(restore))
            .fallback(|| async { ApiError::new(ErrorCode::NotFound, "no such route") })
            .with_state(state);
        // The sprite is hostile: few connections, quick heads (bodies are bounded by axum's
        // 2 MB default).
        let task = tokio::spawn(sprites_gateway::bounded::serve(
            listener,
            app,
            MAX_CONNECTIONS,
            HEAD_TIMEOUT,
        ));
        running.insert(rec.id.clone(), task.abort_handle());
        Ok(())
    }

    /// Stops serving a deleted sprite's inside API and removes its directory.
    pub fn stop_host_api(&self, sprite_id: &str) {
        if let Some(h) = self
            .host_apis
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(sprite_id)
        {
            h.abort();
        }
        let _ = std::fs::remove_dir_all(host_dir(&self.cfg.data_dir, sprite_id));
    }
}

#[derive(serde::Deserialize)]
struct ListQuery {
    history: Option<String>,
}

async fn list(
    State(h): State<HostState>,
    Query(q): Query<ListQuery>,
) -> Result<Response, ApiError> {
    let rec = h.record().await?;
    let history = q.history.as_deref().filter(|s| !s.is_empty());
    Ok(Json(h.svc.list_checkpoints_of(&rec, history).await?).into_response())
}

async fn get_one(
    State(h): State<HostState>,
    UrlPath(id): UrlPath<String>,
) -> Result<Response, ApiError> {
    let rec = h.record().await?;
    Ok(Json(h.svc.get_checkpoint_of(&rec, &id).await?).into_response())
}

async fn create(
    State(h): State<HostState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: CreateCheckpointRequest = match &body {
        Ok(b) if b.iter().all(u8::is_ascii_whitespace) => CreateCheckpointRequest::default(),
        _ => crate::http::json_body(body)?,
    };
    let rec = h.record().await?;
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    h.svc.start_checkpoint_of(rec, req.comment, tx);
    Ok(crate::http::ndjson(rx))
}

async fn restore(
    State(h): State<HostState>,
    UrlPath(id): UrlPath<String>,
) -> Result<Response, ApiError> {
    let rec = h.record().await?;
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    h.svc.start_restore_of(rec, &id, tx).await?;
    Ok(crate::http::ndjson(rx))
}
