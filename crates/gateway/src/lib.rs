//! The Connectors gateway: a sprite calls `$SPRITES_GATEWAY_URL/v1/gateway/<provider>/…`
//! and the gateway forwards the call to the provider with the org's credential attached,
//! which the sprite never sees.
//!
//! Caller identity is the listener a call arrives on: one per sprite, bound inside the
//! sprite's router namespace (which only that sprite's interface reaches), so nothing the
//! guest writes (headers, addresses) names the caller. The host that embeds the gateway
//! (`spritesd`) keeps connections and sprites ([`GatewayHost`]); this crate owns the provider
//! table, access policies, the sealing of credentials, OAuth, and forwarding.

pub mod bounded;
pub mod forward;
pub mod oauth;
pub mod policy;
pub mod providers;
pub mod vault;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::{Json, Router};
use futures::StreamExt;
use secrecy::{ExposeSecret, SecretString};
use sprites_api::connector::{AccessPolicy, AvailableProvider, GatewayConnection, GatewayList};
use sprites_api::{ErrorBody, ErrorCode};
use zeroize::Zeroizing;

use crate::forward::{Call, Counters, Forwarder};
use crate::providers::{Kind, Placement, ProviderTable};
use crate::vault::{Binding, Sealed, Vault};

/// The name a sprite's resolver answers with [`GATEWAY_ADDR`].
pub const GATEWAY_HOST: &str = "gateway.sprites.internal";
/// `SPRITES_GATEWAY_URL` inside every sprite.
pub const GATEWAY_URL: &str = "http://gateway.sprites.internal";
/// The port of the per-sprite listener (on the router address, 10.0.0.2).
pub const GATEWAY_PORT: u16 = 80;
/// Connections one sprite may hold open to the gateway; more wait in the backlog.
const MAX_CONNECTIONS: usize = 64;
/// How long a request's head may take to arrive.
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// An OAuth access token this close to expiry is refreshed before use.
const REFRESH_AHEAD_MS: i64 = 60_000;

/// The sprite behind a gateway listener, read at every call.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Sprite id.
    pub sprite_id: String,
    /// Its org.
    pub org_id: String,
    /// Its name.
    pub name: String,
    /// Its labels.
    pub labels: Vec<String>,
}

/// A connection as stored (the credential sealed).
#[derive(Debug, Clone)]
pub struct StoredConnection {
    /// `conn_…`.
    pub id: String,
    /// Org id.
    pub org_id: String,
    /// Provider name.
    pub provider: String,
    /// `oauth`, `api_key` or `provisioned`.
    pub connection_type: String,
    /// Who may use it.
    pub policy: AccessPolicy,
    /// `custom_api`: base URL.
    pub base_url: Option<String>,
    /// `custom_api`: placement.
    pub placement: Option<Placement>,
    /// The sealed credential (none for provisioned ones).
    pub sealed: Option<Sealed>,
    /// Granted scopes.
    pub scopes: Option<String>,
    /// OAuth access token expiry, ms since the epoch.
    pub token_expires_at_ms: Option<i64>,
}

/// One call, for usage figures: no body, no header, no secret.
#[derive(Debug, Clone)]
pub struct UsageEvent {
    /// Org id.
    pub org_id: String,
    /// Connection used, when one was chosen.
    pub connection_id: Option<String>,
    /// Calling sprite.
    pub sprite_id: String,
    /// Method.
    pub method: String,
    /// Normalized path (or the raw one, cut, when it did not normalize).
    pub path: String,
    /// Status the caller got.
    pub status: u16,
    /// Request and response body bytes.
    pub bytes: u64,
    /// Duration until the response body ended.
    pub millis: u64,
}

/// What the gateway needs from the server that embeds it.
#[async_trait::async_trait]
pub trait GatewayHost: Send + Sync + 'static {
    /// The sprite `sprite_id` if it exists.
    async fn caller(&self, sprite_id: &str) -> Option<Caller>;
    /// Every connection of `org_id`.
    async fn connections(&self, org_id: &str) -> Vec<StoredConnection>;
    /// Replaces a connection's sealed credential after an OAuth refresh.
    async fn store_refreshed(
        &self,
        connection_id: &str,
        sealed: Sealed,
        expires_at_ms: Option<i64>,
        scopes: Option<String>,
    ) -> Result<(), String>;
    /// Records a call.
    fn record(&self, usage: UsageEvent);
    /// Base URL of the server's API as people reach it (for setup and scope links).
    fn public_url(&self) -> String;
}

/// A credential as sealed: an API key, or OAuth tokens.
pub struct Secret {
    /// API key or access token.
    pub token: SecretString,
    /// OAuth refresh token.
    pub refresh_token: Option<SecretString>,
}

impl Secret {
    /// The sealed form's plaintext (JSON).
    pub fn to_plain(&self) -> Zeroizing<Vec<u8>> {
        let mut m = serde_json::Map::new();
        m.insert("token".into(), self.token.expose_secret().into());
        if let Some(r) = &self.refresh_token {
            m.insert("refresh_token".into(), r.expose_secret().into());
        }
        Zeroizing::new(serde_json::to_vec(&m).unwrap_or_default())
    }

    fn from_plain(b: &[u8]) -> Option<Secret> {
        let v: serde_json::Value = serde_json::from_slice(b).ok()?;
        let s = |k: &str| {
            v.get(k)
                .and_then(|x| x.as_str())
                .map(|x| SecretString::from(x.to_string()))
        };
        Some(Secret {
            token: s("token")?,
            refresh_token: s("refresh_token"),
        })
    }
}

/// The gateway of one server.
pub struct Gateway {
    host: Arc<dyn GatewayHost>,
    /// Sealing keys.
    pub vault: Arc<Vault>,
    /// Providers, with the operator's settings.
    pub providers: Arc<ProviderTable>,
    /// Upstream client.
    pub forwarder: Forwarder,
    refreshing: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

fn error(code: ErrorCode, message: impl Into<String>) -> Response {
    let status = http::StatusCode::from_u16(code.status())
        .unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    (status, Json(ErrorBody::new(code, message))).into_response()
}

/// The message of a call no policy grants to this sprite.
pub const DENIED_SPRITE: &str = "connection denies all sprites by default";
/// The message of a call to a path the policy does not allow.
pub const DENIED_ENDPOINT: &str = "endpoint not allowed";

#[derive(Clone)]
struct Listener {
    gw: Arc<Gateway>,
    sprite_id: String,
}

impl Gateway {
    /// A gateway over `host`'s connections.
    pub fn new(
        host: Arc<dyn GatewayHost>,
        vault: Arc<Vault>,
        providers: Arc<ProviderTable>,
        allow_private: bool,
    ) -> Arc<Self> {
        Arc::new(Gateway {
            host,
            vault,
            providers,
            forwarder: Forwarder::new(allow_private),
            refreshing: Default::default(),
        })
    }

    /// The gateway base URL of a connection as a sprite reaches it.
    pub fn base_url_of(provider: &str, connection_id: &str) -> String {
        format!("{GATEWAY_URL}/v1/gateway/{provider}/{connection_id}")
    }

    /// A call to copy, for the API and the list.
    pub fn usage_snippet(provider: &str, connection_id: &str) -> String {
        let path = match provider {
            "github" => "/user",
            "openrouter" | "openai" => "/v1/models",
            "anthropic" => "/v1/models",
            "slack" | "slack_bot" => "/auth.test",
            _ => "/",
        };
        format!("curl \"$SPRITES_GATEWAY_URL/v1/gateway/{provider}/{connection_id}{path}\"")
    }

    /// Serves the gateway for sprite `sprite_id` on `listener` (bound where only that
    /// sprite reaches it) until the task is aborted.
    pub async fn serve(self: Arc<Self>, sprite_id: String, listener: tokio::net::TcpListener) {
        let app = Router::new()
            .route("/v1/gateway/list", get(list))
            .route("/v1/gateway/{provider}", any(call_root))
            .route("/v1/gateway/{provider}/{*rest}", any(call))
            .fallback(|| async {
                error(
                    ErrorCode::NotFound,
                    "no such route: calls go to /v1/gateway/<provider>/…",
                )
            })
            .with_state(Listener {
                gw: self.clone(),
                sprite_id,
            });
        // Frames of an event stream are small writes; Nagle would hold each one back.
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            let _ = tcp.set_nodelay(true);
        });
        bounded::serve(listener, app, MAX_CONNECTIONS, HEAD_TIMEOUT).await;
    }

    fn refresh_lock(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.refreshing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(id.to_string())
            .or_default()
            .clone()
    }

    /// Opens `c`'s credential; an OAuth one expiring soon (or `force`d, after an upstream
    /// 401) is refreshed first, once at a time per connection.
    pub async fn credential(
        &self,
        c: &StoredConnection,
        force: bool,
    ) -> Result<SecretString, String> {
        let provider = self
            .providers
            .get(&c.provider)
            .ok_or_else(|| format!("unknown provider {}", c.provider))?;
        if c.connection_type == "provisioned" {
            return provider.managed.clone().ok_or_else(|| {
                format!(
                    "the operator no longer offers a managed {} credential",
                    c.provider
                )
            });
        }
        let open = |s: &Sealed| -> Result<Secret, String> {
            let b = Binding {
                org: &c.org_id,
                connection: &c.id,
                provider: &c.provider,
            };
            let plain = self.vault.open_sealed(&b, s).map_err(|e| e.to_string())?;
            Secret::from_plain(&plain)
                .ok_or_else(|| "the stored credential is unreadable".to_string())
        };
        let sealed = c
            .sealed
            .as_ref()
            .ok_or("the connection has no credential")?;
        let secret = open(sealed)?;
        let now = now_ms();
        let expiring = c
            .token_expires_at_ms
            .is_some_and(|t| t - REFRESH_AHEAD_MS <= now);
        if provider.kind != Kind::OAuth || !(force || expiring) {
            return Ok(secret.token);
        }
        let lock = self.refresh_lock(&c.id);
        let _g = lock.lock().await;
        // Someone else may have refreshed while this call waited: read the row again.
        let fresh = self
            .host
            .connections(&c.org_id)
            .await
            .into_iter()
            .find(|x| x.id == c.id)
            .ok_or("the connection was deleted")?;
        if fresh.sealed.as_ref() != Some(sealed) {
            let s = fresh
                .sealed
                .as_ref()
                .ok_or("the connection has no credential")?;
            return open(s).map(|s| s.token);
        }
        let Some(refresh) = secret.refresh_token.as_ref() else {
            return Ok(secret.token);
        };
        let redirect = format!(
            "{}/v1/oauth/{}/callback",
            self.host.public_url(),
            c.provider
        );
        let g = oauth::refresh(provider, refresh, &redirect).await?;
        let next = Secret {
            token: g.access_token.clone(),
            refresh_token: g.refresh_token.or(secret.refresh_token),
        };
        let b = Binding {
            org: &c.org_id,
            connection: &c.id,
            provider: &c.provider,
        };
        let sealed = self
            .vault
            .seal(&b, &next.to_plain())
            .map_err(|e| e.to_string())?;
        self.host
            .store_refreshed(
                &c.id,
                sealed,
                g.expires_at_ms,
                g.scopes.or(c.scopes.clone()),
            )
            .await?;
        tracing::info!(connection = %c.id, "refreshed the OAuth access token");
        Ok(g.access_token)
    }

    /// Base URL and placement of `c`.
    fn target(&self, c: &StoredConnection) -> Option<(String, Placement)> {
        let p = self.providers.get(&c.provider)?;
        match p.kind {
            Kind::Custom => Some((c.base_url.clone()?, c.placement.clone()?)),
            _ => Some((p.base_url.clone(), p.auth.clone())),
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as i64
}

async fn list(State(l): State<Listener>) -> Response {
    let Some(caller) = l.gw.host.caller(&l.sprite_id).await else {
        return error(ErrorCode::Unauthorized, "this sprite no longer exists");
    };
    let conns = l.gw.host.connections(&caller.org_id).await;
    let public = l.gw.host.public_url();
    let mut out = GatewayList {
        connections: Vec::new(),
        available: Vec::new(),
    };
    for c in &conns {
        if !policy::grants(&c.policy, &caller.name, &caller.labels) {
            continue;
        }
        let Some(p) = l.gw.providers.get(&c.provider) else {
            continue;
        };
        out.connections.push(GatewayConnection {
            id: c.id.clone(),
            provider: c.provider.clone(),
            display_name: p.display_name.clone(),
            description: p.description.clone(),
            gateway_base_url: Gateway::base_url_of(&c.provider, &c.id),
            scopes: c.scopes.clone(),
            usage_snippet: Gateway::usage_snippet(&c.provider, &c.id),
            request_scopes_url: (p.kind == Kind::OAuth)
                .then(|| format!("{public}/v1/oauth/{}/authorize?add_scopes=", c.provider)),
        });
    }
    for p in l.gw.providers.all() {
        if conns.iter().any(|c| c.provider == p.name) {
            continue;
        }
        out.available.push(AvailableProvider {
            provider: p.name.clone(),
            display_name: p.display_name.clone(),
            description: p.description.clone(),
            setup_url: match p.kind {
                Kind::OAuth => format!("{public}/v1/oauth/{}/authorize", p.name),
                _ => format!("{public}/v1/oauth/connections/api_key"),
            },
        });
    }
    Json(out).into_response()
}

async fn call_root(
    State(l): State<Listener>,
    Path(provider): Path<String>,
    req: Request,
) -> Response {
    forward_call(l, provider, String::new(), req).await
}

async fn call(
    State(l): State<Listener>,
    Path((provider, rest)): Path<(String, String)>,
    req: Request,
) -> Response {
    // The raw path, not axum's decoded capture: normalization decodes exactly once.
    let raw = req.uri().path().to_string();
    let prefix = format!("/v1/gateway/{provider}");
    let rest_raw = raw
        .strip_prefix(&prefix)
        .map(str::to_string)
        .unwrap_or_else(|| format!("/{rest}"));
    forward_call(l, provider, rest_raw, req).await
}

async fn forward_call(l: Listener, provider: String, rest: String, req: Request) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let Some(caller) = l.gw.host.caller(&l.sprite_id).await else {
        return error(
            ErrorCode::Unauthorized,
            "calls must come from a running sprite",
        );
    };
    let mut usage = UsageEvent {
        org_id: caller.org_id.clone(),
        connection_id: None,
        sprite_id: caller.sprite_id.clone(),
        method: method.to_string(),
        path: rest.chars().take(512).collect(),
        status: 0,
        bytes: 0,
        millis: 0,
    };
    let host = l.gw.host.clone();
    let refuse = |usage: &mut UsageEvent, code: ErrorCode, msg: String| {
        usage.status = code.status();
        usage.millis = started.elapsed().as_millis() as u64;
        host.record(usage.clone());
        error(code, msg)
    };
    let Some(p) = l.gw.providers.get(&provider) else {
        return error(
            ErrorCode::NotFound,
            format!("unknown provider {provider:?}"),
        );
    };
    let conns: Vec<StoredConnection> =
        l.gw.host
            .connections(&caller.org_id)
            .await
            .into_iter()
            .filter(|c| c.provider == provider)
            .collect();
    // `/<connection id>/<path>`, or `/<path>` when the caller has one eligible connection.
    let rest_trim = rest.trim_start_matches('/');
    let (first, after) = match rest_trim.split_once('/') {
        Some((a, b)) => (a, format!("/{b}")),
        None => (rest_trim, String::new()),
    };
    let (conn, path) = match conns.iter().find(|c| c.id == first) {
        Some(c) => (c.clone(), after),
        None => {
            let eligible: Vec<&StoredConnection> = conns
                .iter()
                .filter(|c| policy::grants(&c.policy, &caller.name, &caller.labels))
                .collect();
            match eligible.as_slice() {
                [one] => ((*one).clone(), rest.clone()),
                [] if conns.is_empty() => {
                    return refuse(
                        &mut usage,
                        ErrorCode::NotFound,
                        format!(
                            "this org has no {} connection; set one up at {}",
                            p.display_name,
                            match p.kind {
                                Kind::OAuth => format!(
                                    "{}/v1/oauth/{provider}/authorize",
                                    l.gw.host.public_url()
                                ),
                                _ => format!(
                                    "{}/v1/oauth/connections/api_key",
                                    l.gw.host.public_url()
                                ),
                            }
                        ),
                    )
                }
                [] => {
                    // Counted against the connection when the org has only the one.
                    if let [only] = conns.as_slice() {
                        usage.connection_id = Some(only.id.clone());
                    }
                    return refuse(&mut usage, ErrorCode::Forbidden, DENIED_SPRITE.into());
                }
                many => {
                    let ids: Vec<&str> = many.iter().map(|c| c.id.as_str()).collect();
                    return refuse(
                        &mut usage,
                        ErrorCode::Conflict,
                        format!("several {provider} connections are open to this sprite; name one: /v1/gateway/{provider}/<id>/… with id one of {}", ids.join(", ")),
                    );
                }
            }
        }
    };
    usage.connection_id = Some(conn.id.clone());
    let norm = match policy::normalize(&path) {
        Ok(n) => n,
        Err(e) => return refuse(&mut usage, ErrorCode::BadRequest, e),
    };
    usage.path = norm.decoded.chars().take(512).collect();
    match policy::check(&conn.policy, &caller.name, &caller.labels, &norm.decoded) {
        Ok(()) => {}
        Err(policy::Denied::Sprite) => {
            return refuse(&mut usage, ErrorCode::Forbidden, DENIED_SPRITE.into())
        }
        Err(policy::Denied::Endpoint) => {
            return refuse(&mut usage, ErrorCode::Forbidden, DENIED_ENDPOINT.into())
        }
    }
    let Some((base_url, placement)) = l.gw.target(&conn) else {
        return refuse(
            &mut usage,
            ErrorCode::Internal,
            "the connection has no target".into(),
        );
    };
    let token = match l.gw.credential(&conn, false).await {
        Ok(t) => t,
        Err(e) => {
            return refuse(
                &mut usage,
                ErrorCode::BadGateway,
                format!("the connection's credential could not be used: {e}"),
            )
        }
    };
    let (parts, body) = req.into_parts();
    let query = parts.uri.query().map(str::to_string);
    let counters = Arc::new(Counters::default());
    let retryable = p.kind == Kind::OAuth
        && !parts.headers.contains_key(http::header::CONTENT_LENGTH)
        && !parts.headers.contains_key(http::header::TRANSFER_ENCODING);
    let mk = |token: SecretString, body: Body| Call {
        method: parts.method.clone(),
        base_url: base_url.clone(),
        path: norm.encoded.clone(),
        query: query.clone(),
        headers: parts.headers.clone(),
        body: body.into_data_stream(),
        credential: (placement.clone(), token),
    };
    let mut resp = l.gw.forwarder.send(mk(token, body), counters.clone()).await;
    if retryable && matches!(&resp, Ok(r) if r.status() == 401) {
        // A token revoked or expired early: refresh once and try again (no body to replay).
        if let Ok(t) = l.gw.credential(&conn, true).await {
            resp =
                l.gw.forwarder
                    .send(mk(t, Body::empty()), counters.clone())
                    .await;
        }
    }
    let resp = match resp {
        Ok(r) => r,
        Err(e @ forward::ForwardError::Address(_)) => {
            return refuse(&mut usage, ErrorCode::Forbidden, e.to_string())
        }
        Err(forward::ForwardError::Bad(m)) => return refuse(&mut usage, ErrorCode::BadRequest, m),
        Err(e) => return refuse(&mut usage, ErrorCode::BadGateway, e.to_string()),
    };
    let status = resp.status();
    let headers = Forwarder::response_headers(resp.headers());
    usage.status = status.as_u16();
    let guard = UsageGuard {
        host: l.gw.host.clone(),
        usage: Some(usage),
        counters: counters.clone(),
        started,
    };
    let stream = resp.bytes_stream().map(move |chunk| {
        let _keep = &guard;
        if let Ok(b) = &chunk {
            guard
                .counters
                .received
                .fetch_add(b.len() as u64, Ordering::Relaxed);
        }
        chunk
    });
    let mut out = Response::new(Body::from_stream(stream));
    *out.status_mut() = status;
    *out.headers_mut() = headers;
    out
}

/// Records a call's usage when its response body is done (or dropped by the caller).
struct UsageGuard {
    host: Arc<dyn GatewayHost>,
    usage: Option<UsageEvent>,
    counters: Arc<Counters>,
    started: Instant,
}

impl Drop for UsageGuard {
    fn drop(&mut self) {
        if let Some(mut u) = self.usage.take() {
            u.bytes = self.counters.sent.load(Ordering::Relaxed)
                + self.counters.received.load(Ordering::Relaxed);
            u.millis = self.started.elapsed().as_millis() as u64;
            self.host.record(u);
        }
    }
}
