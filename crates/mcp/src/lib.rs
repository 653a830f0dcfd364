//! The remote MCP server: `/mcp` (Streamable HTTP on the official `rmcp` SDK, both the
//! 2026-07-28 stateless and the 2025-11-25 session revisions) and the OAuth 2.1
//! authorization server MCP clients sign in with (`/.well-known/*`, `/oauth/*`).
//!
//! Tools call the sprites REST API in-process ([`SpriteApi`]): every operation goes through
//! the same handlers and service layer as the official SDKs, so MCP adds no second
//! implementation of anything. A grant may be restricted (a name prefix and a cap on the
//! number of sprites); this crate enforces it in every tool.

pub mod oauth;
pub mod tools;

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

/// What a request to `/mcp` may do.
#[derive(Debug, Clone)]
pub struct Access {
    /// The org.
    pub org_id: String,
    /// The grant, for OAuth tokens (org tokens have none).
    pub grant_id: Option<String>,
    /// Restricted grants: only sprites under this prefix, at most this many.
    pub restriction: Option<Restriction>,
}

/// A restricted grant's bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restriction {
    /// Sprite names must start with this.
    pub prefix: String,
    /// Most sprites under the prefix.
    pub max_sprites: u32,
}

/// A response body as it arrives.
pub type BodyStream = futures::stream::BoxStream<'static, Result<Bytes, String>>;

/// The sprites API, called in-process as the org (the host routes it through its own REST
/// handlers).
#[async_trait]
pub trait SpriteApi: Send + Sync + 'static {
    /// Sends `req` (a path under `/v1`) as `org_id`: the status and the body as it streams.
    async fn call(
        &self,
        org_id: &str,
        req: http::Request<Bytes>,
    ) -> Result<(u16, BodyStream), String>;
}

/// A registered OAuth client.
#[derive(Debug, Clone)]
pub struct ClientRow {
    /// `client_id`.
    pub id: String,
    /// Shown on the consent page.
    pub name: String,
    /// Allowed redirect URIs.
    pub redirect_uris: Vec<String>,
    /// Unix ms.
    pub created_at: i64,
}

/// A person's approval of a client for an org.
#[derive(Debug, Clone)]
pub struct GrantRow {
    /// `mcpg_…`.
    pub id: String,
    /// Org.
    pub org_id: String,
    /// Client.
    pub client_id: String,
    /// Client's name when approved.
    pub client_name: String,
    /// `restricted` or `full`.
    pub mode: String,
    /// Restricted: name prefix.
    pub prefix: Option<String>,
    /// Restricted: most sprites.
    pub max_sprites: Option<u32>,
    /// Unix ms.
    pub created_at: i64,
    /// Unix ms.
    pub last_used_at: Option<i64>,
}

impl GrantRow {
    /// The grant's bounds, if restricted.
    pub fn restriction(&self) -> Option<Restriction> {
        (self.mode == "restricted").then(|| Restriction {
            prefix: self.prefix.clone().unwrap_or_default(),
            max_sprites: self.max_sprites.unwrap_or(0),
        })
    }
}

/// An issued authorization code (stored by hash).
#[derive(Debug, Clone)]
pub struct CodeRow {
    /// Client it was issued to.
    pub client_id: String,
    /// Redirect URI it was sent to.
    pub redirect_uri: String,
    /// PKCE S256 challenge.
    pub challenge: String,
    /// The grant it belongs to.
    pub grant_id: String,
    /// Unix ms.
    pub expires_at: i64,
}

/// An issued token (stored by hash).
#[derive(Debug, Clone)]
pub struct TokenRow {
    /// Grant.
    pub grant_id: String,
    /// `access` or `refresh`.
    pub kind: String,
    /// Unix ms.
    pub expires_at: i64,
    /// Refresh tokens: already exchanged once.
    pub used: bool,
}

/// Where clients, grants, codes and tokens live.
#[async_trait]
pub trait AuthStore: Send + Sync + 'static {
    /// The org (id) of an org API token, if valid.
    async fn org_of_token(&self, token: &str) -> Option<String>;
    /// Stores a client.
    async fn put_client(&self, c: &ClientRow) -> Result<(), String>;
    /// A client.
    async fn client(&self, id: &str) -> Option<ClientRow>;
    /// Stores a grant.
    async fn put_grant(&self, g: &GrantRow) -> Result<(), String>;
    /// A grant that is not revoked.
    async fn grant(&self, id: &str) -> Option<GrantRow>;
    /// The org's grants.
    async fn grants(&self, org_id: &str) -> Vec<GrantRow>;
    /// Revokes a grant with every code and token of it (of `org_id` when given).
    async fn revoke_grant(&self, org_id: Option<&str>, id: &str) -> bool;
    /// Stamps a grant's last use.
    async fn touch_grant(&self, id: &str);
    /// Stores a code.
    async fn put_code(&self, hash: &str, c: &CodeRow) -> Result<(), String>;
    /// Takes a code (single use).
    async fn take_code(&self, hash: &str) -> Option<CodeRow>;
    /// Stores a token.
    async fn put_token(&self, hash: &str, t: &TokenRow) -> Result<(), String>;
    /// A token.
    async fn token(&self, hash: &str) -> Option<TokenRow>;
    /// Marks a refresh token used; its row as it was before.
    async fn use_refresh(&self, hash: &str) -> Option<TokenRow>;
    /// Deletes a token.
    async fn delete_token(&self, hash: &str);
    /// The org (id, slug) of a browser signed in to the console, from its request's
    /// headers (the session cookie), so a signed-in person goes straight to consent.
    async fn org_of_browser(&self, _headers: &http::HeaderMap) -> Option<(String, String)> {
        None
    }
}

/// The MCP server of a `spritesd`.
pub struct Mcp {
    api: Arc<dyn SpriteApi>,
    auth: Arc<dyn AuthStore>,
    public_url: std::sync::RwLock<String>,
    /// Signs the consent form (CSRF); new at each start, so old forms expire with it.
    form_key: [u8; 32],
    /// Fetches client ID metadata documents.
    pub(crate) fetcher: reqwest::Client,
    /// Whether metadata documents may be on private addresses and plain HTTP (tests).
    pub(crate) allow_private_metadata: bool,
    /// Metadata documents already fetched: (when, client).
    pub(crate) documents:
        std::sync::Mutex<std::collections::HashMap<String, (std::time::Instant, ClientRow)>>,
}

impl Mcp {
    /// An MCP server over `api` and `auth`, reached at `public_url` (no trailing slash).
    pub fn new(
        api: Arc<dyn SpriteApi>,
        auth: Arc<dyn AuthStore>,
        public_url: String,
        allow_private_metadata: bool,
    ) -> Arc<Self> {
        let mut form_key = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut form_key);
        Arc::new(Mcp {
            api,
            auth,
            public_url: std::sync::RwLock::new(public_url),
            form_key,
            fetcher: sprites_gateway::forward::outside_client(
                allow_private_metadata,
                std::time::Duration::from_secs(5),
            ),
            allow_private_metadata,
            documents: Default::default(),
        })
    }

    /// Sets the public URL once the listener's port is known.
    pub fn set_public_url(&self, url: String) {
        *self.public_url.write().unwrap_or_else(|e| e.into_inner()) = url;
    }

    /// The issuer: the server's public URL.
    pub fn issuer(&self) -> String {
        self.public_url
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The MCP resource: `<issuer>/mcp`.
    pub fn resource(&self) -> String {
        format!("{}/mcp", self.issuer())
    }

    /// The routes: `/mcp`, `/.well-known/oauth-*`, `/oauth/*`, and `/v1/mcp/grants` (which
    /// the host mounts behind its org-token check).
    pub fn router<S: Clone + Send + Sync + 'static>(self: &Arc<Self>) -> axum::Router<S> {
        oauth::router(self.clone()).merge(tools::router(self.clone()))
    }
}

/// Current time in Unix ms.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// SHA-256 of `s`, hex: how codes and tokens are stored.
pub(crate) fn hash(s: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A random URL-safe string with `prefix`.
pub(crate) fn random(prefix: &str, bytes: usize) -> String {
    use base64::Engine;
    let mut b = vec![0u8; bytes];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut b);
    format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
    )
}
