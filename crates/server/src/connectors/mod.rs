//! Connectors: the org's credentials for providers, used from sprites through the gateway
//! ([`sprites_gateway`]). This is the service layer the REST API (and later MCP and the
//! console) call; it owns the rows, the gateway owns what happens on a call.

pub mod store;

use std::sync::{Arc, Mutex};

use rand::distributions::Alphanumeric;
use rand::Rng;
use secrecy::{ExposeSecret, SecretString};
use sprites_api::connector::{
    self as wire, AccessPolicy, AuthorizeResponse, AuthorizedSprite, Connection, Usage, UsageWindow,
};
use sprites_api::ErrorCode;
use sprites_gateway::providers::{Kind, Placement, ProviderTable};
use sprites_gateway::vault::{Binding, Vault};
use sprites_gateway::{Gateway, GatewayHost, Secret, StoredConnection, UsageEvent};

use self::store::{ConnectionRow, FlowRow};
use crate::error::ApiError;
use crate::store::{self as db, now_ms, Org, Store};

/// How long an OAuth flow may take from authorize to callback.
const FLOW_TTL_MS: i64 = 10 * 60 * 1000;
/// How often gateway usage is written to the store.
const USAGE_FLUSH: std::time::Duration = std::time::Duration::from_secs(1);
/// Most usage events kept in memory between flushes (a flood drops the excess).
const USAGE_BUFFER_MAX: usize = 100_000;

/// The connectors of a server.
pub struct Connectors {
    store: Store,
    /// Sealing keys.
    pub vault: Arc<Vault>,
    /// Providers.
    pub providers: Arc<ProviderTable>,
    /// The gateway sprites call.
    pub gateway: Arc<Gateway>,
    host: Arc<Host>,
}

/// What the gateway reads and writes through.
struct Host {
    store: Store,
    usage: Mutex<Vec<UsageEvent>>,
    public_url: Mutex<String>,
}

#[async_trait::async_trait]
impl GatewayHost for Host {
    async fn caller(&self, sprite_id: &str) -> Option<sprites_gateway::Caller> {
        let id = sprite_id.to_string();
        let rec = self
            .store
            .with(move |c| db::sprite_by_id(c, &id))
            .await
            .ok()??;
        Some(sprites_gateway::Caller {
            sprite_id: rec.id,
            org_id: rec.org_id,
            name: rec.name,
            labels: serde_json::from_str(&rec.labels).unwrap_or_default(),
        })
    }

    async fn connections(&self, org_id: &str) -> Vec<StoredConnection> {
        let org = org_id.to_string();
        match self.store.with(move |c| store::of_org(c, &org)).await {
            Ok(rows) => rows.into_iter().map(|r| r.conn).collect(),
            Err(e) => {
                tracing::warn!("gateway: reading connections: {e}");
                Vec::new()
            }
        }
    }

    async fn store_refreshed(
        &self,
        connection_id: &str,
        sealed: sprites_gateway::vault::Sealed,
        expires_at_ms: Option<i64>,
        scopes: Option<String>,
    ) -> Result<(), String> {
        let id = connection_id.to_string();
        self.store
            .with(move |c| {
                store::set_secret(c, &id, &sealed, expires_at_ms, scopes.as_deref(), now_ms())
            })
            .await
            .map_err(|e| e.to_string())?
            .then_some(())
            .ok_or_else(|| "the connection was deleted".to_string())
    }

    fn record(&self, usage: UsageEvent) {
        let mut u = self.usage.lock().unwrap_or_else(|e| e.into_inner());
        if u.len() < USAGE_BUFFER_MAX {
            u.push(usage);
        }
    }

    fn public_url(&self) -> String {
        self.public_url
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Host {
    async fn flush(&self) {
        let events = std::mem::take(&mut *self.usage.lock().unwrap_or_else(|e| e.into_inner()));
        if events.is_empty() {
            return;
        }
        if let Err(e) = self
            .store
            .with(move |c| store::record_usage(c, &events, now_ms()))
            .await
        {
            tracing::warn!("recording gateway usage: {e}");
        }
    }
}

fn new_id(prefix: &str) -> String {
    let s: String = rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(16)
        .map(|b| (b as char).to_ascii_lowercase())
        .collect();
    format!("{prefix}{s}")
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::BadRequest, msg)
}

fn not_found(id: &str) -> ApiError {
    ApiError::new(ErrorCode::NotFound, format!("connection {id:?} not found"))
}

/// An API key as stored: 1 to 16384 bytes, no control characters (it goes into headers).
fn check_key(k: &SecretString) -> Result<(), ApiError> {
    let k = k.expose_secret();
    if k.trim().is_empty() || k.len() > 16 * 1024 {
        return Err(bad("api_key must be between 1 and 16384 bytes"));
    }
    if k.bytes().any(|b| b < 0x20 || b == 0x7f) {
        return Err(bad("api_key holds a control character"));
    }
    Ok(())
}

fn check_policy(p: &AccessPolicy) -> Result<(), ApiError> {
    sprites_gateway::policy::validate(p).map_err(bad)
}

impl Connectors {
    /// Connectors over `store`, with sealing keys of `data_dir` (or `env_key`).
    pub fn new(
        store: Store,
        vault: Arc<Vault>,
        providers: ProviderTable,
        allow_private: bool,
        public_url: String,
    ) -> Arc<Self> {
        let host = Arc::new(Host {
            store: store.clone(),
            usage: Mutex::new(Vec::new()),
            public_url: Mutex::new(public_url),
        });
        let providers = Arc::new(providers);
        let gateway = Gateway::new(
            host.clone(),
            vault.clone(),
            providers.clone(),
            allow_private,
        );
        Arc::new(Connectors {
            store,
            vault,
            providers,
            gateway,
            host,
        })
    }

    /// Sets the public URL once the listener's port is known.
    pub fn set_public_url(&self, url: String) {
        *self
            .host
            .public_url
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = url;
    }

    /// Writes buffered usage every second, until the process ends.
    pub fn spawn_usage_writer(self: &Arc<Self>) {
        let host = self.host.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(USAGE_FLUSH).await;
                host.flush().await;
            }
        });
    }

    fn provider(&self, name: &str) -> Result<&sprites_gateway::providers::Provider, ApiError> {
        self.providers
            .get(name)
            .ok_or_else(|| bad(format!("unknown provider {name:?}")))
    }

    fn binding<'a>(org: &'a str, id: &'a str, provider: &'a str) -> Binding<'a> {
        Binding {
            org,
            connection: id,
            provider,
        }
    }

    async fn usage_of(&self, id: &str) -> Result<Usage, ApiError> {
        let id = id.to_string();
        let now = now_ms();
        let day = 86_400_000;
        let w = |t: (u64, u64, u64)| UsageWindow {
            requests: t.0,
            errors: t.1,
            bytes: t.2,
        };
        Ok(self
            .store
            .with(move |c| {
                Ok(Usage {
                    last_24h: w(store::usage_since(c, &id, now - day)?),
                    last_7d: w(store::usage_since(c, &id, now - 7 * day)?),
                    last_30d: w(store::usage_since(c, &id, now - 30 * day)?),
                })
            })
            .await?)
    }

    async fn to_api(&self, r: &ConnectionRow) -> Result<Connection, ApiError> {
        let c = &r.conn;
        Ok(Connection {
            id: c.id.clone(),
            provider: c.provider.clone(),
            provider_account_id: r.account_id.clone(),
            provider_account_name: r.account_name.clone(),
            scopes: c.scopes.clone(),
            connection_type: c.connection_type.clone(),
            access_policy: c.policy.clone(),
            provider_info: serde_json::from_str(&r.provider_info)
                .unwrap_or_else(|_| serde_json::json!({})),
            user_id: None,
            token_expires_at: c
                .token_expires_at_ms
                .map(sprites_api::timefmt::format_millis),
            inserted_at: sprites_api::timefmt::format_millis(r.inserted_at),
            updated_at: sprites_api::timefmt::format_millis(r.updated_at),
            usage_snippet: Gateway::usage_snippet(&c.provider, &c.id),
            gateway_base_url: Gateway::base_url_of(&c.provider, &c.id),
            usage: self.usage_of(&c.id).await?,
        })
    }

    async fn row(&self, org: &Org, id: &str) -> Result<ConnectionRow, ApiError> {
        let (o, i) = (org.id.clone(), id.to_string());
        self.store
            .with(move |c| store::get(c, &o, &i))
            .await?
            .ok_or_else(|| not_found(id))
    }

    /// The org's connections, of `provider` when given.
    pub async fn list(
        &self,
        org: &Org,
        provider: Option<&str>,
    ) -> Result<Vec<Connection>, ApiError> {
        self.host.flush().await;
        let o = org.id.clone();
        let rows = self.store.with(move |c| store::of_org(c, &o)).await?;
        let mut out = Vec::new();
        for r in rows
            .iter()
            .filter(|r| provider.is_none_or(|p| r.conn.provider == p))
        {
            out.push(self.to_api(r).await?);
        }
        Ok(out)
    }

    /// One connection.
    pub async fn get(&self, org: &Org, id: &str) -> Result<Connection, ApiError> {
        self.host.flush().await;
        let r = self.row(org, id).await?;
        self.to_api(&r).await
    }

    /// Seals `secret` for the new row and inserts it, both under the store's write lock,
    /// after re-reading the key file: a key rotation running in another process then never
    /// misses a row sealed under a key it is retiring.
    async fn insert_sealed(
        &self,
        mut row: ConnectionRow,
        secret: Option<Secret>,
    ) -> Result<ConnectionRow, ApiError> {
        let vault = self.vault.clone();
        let plain = secret.map(|s| s.to_plain());
        let r = self
            .store
            .with(move |c| {
                let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                if let Some(p) = &plain {
                    let b = Self::binding(&row.conn.org_id, &row.conn.id, &row.conn.provider);
                    row.conn.sealed = Some(vault.seal(&b, p).map_err(|e| {
                        db::StoreError::Conflict(format!("sealing the credential: {e}"))
                    })?);
                }
                store::insert(&tx, &row)?;
                tx.commit()?;
                Ok(row)
            })
            .await?;
        Ok(r)
    }

    /// `POST /v1/oauth/connections/api_key`.
    pub async fn create_api_key(
        &self,
        org: &Org,
        req: wire::CreateApiKeyRequest,
    ) -> Result<Connection, ApiError> {
        let p = self.provider(&req.provider)?;
        check_key(&req.api_key)?;
        if p.kind == Kind::OAuth {
            return Err(bad(format!(
                "{} connects with OAuth: GET /v1/oauth/{}/authorize",
                p.display_name, p.name
            )));
        }
        let policy = req.access_policy.clone().unwrap_or_default();
        check_policy(&policy)?;
        let (base_url, placement, info, account) = if p.kind == Kind::Custom {
            let name = req
                .name
                .clone()
                .filter(|n| !n.trim().is_empty() && n.len() <= 200)
                .ok_or_else(|| bad("custom_api needs a name"))?;
            let base = req
                .base_url
                .clone()
                .ok_or_else(|| bad("custom_api needs base_url"))?;
            let u = url::Url::parse(&base).map_err(|e| bad(format!("base_url: {e}")))?;
            if !matches!(u.scheme(), "http" | "https")
                || u.host().is_none()
                || !u.username().is_empty()
                || u.password().is_some()
                || u.query().is_some()
            {
                return Err(bad(
                    "base_url must be an http(s) URL with a host and no credentials or query",
                ));
            }
            let base = base.trim_end_matches('/').to_string();
            let placement =
                Placement::from_custom(&req.auth.clone().unwrap_or_default()).map_err(bad)?;
            let info = serde_json::json!({
                "name": name,
                "base_url": base,
                "auth": {"in": placement.placement, "name": placement.name, "format": placement.format},
            });
            (Some(base), Some(placement), info, name)
        } else {
            (
                None,
                None,
                serde_json::json!({}),
                req.name.clone().unwrap_or_else(|| p.name.clone()),
            )
        };
        if let Some(t) = &req.test_request {
            let (b, pl) = match (&base_url, &placement) {
                (Some(b), Some(pl)) => (b.clone(), pl.clone()),
                _ => (p.base_url.clone(), p.auth.clone()),
            };
            let status = self
                .gateway
                .forwarder
                .probe(&b, &t.method, &t.path, (pl, req.api_key.clone()))
                .await
                .map_err(|e| {
                    ApiError::new(
                        ErrorCode::Unprocessable,
                        format!("test request failed: {e}"),
                    )
                })?;
            if status != t.expect_status {
                return Err(ApiError::new(
                    ErrorCode::Unprocessable,
                    format!(
                        "test request {} {} answered {status}, expected {}; nothing was saved",
                        t.method, t.path, t.expect_status
                    ),
                ));
            }
        }
        let now = now_ms();
        let row = ConnectionRow {
            conn: StoredConnection {
                id: new_id("conn_"),
                org_id: org.id.clone(),
                provider: p.name.clone(),
                connection_type: "api_key".into(),
                policy,
                base_url,
                placement,
                sealed: None,
                scopes: None,
                token_expires_at_ms: None,
            },
            account_id: account.clone(),
            account_name: Some(account),
            provider_info: info.to_string(),
            inserted_at: now,
            updated_at: now,
        };
        let secret = Secret {
            token: req.api_key,
            refresh_token: None,
        };
        let row = self.insert_sealed(row, Some(secret)).await?;
        tracing::info!(org = %org.slug, connection = %row.conn.id, provider = %row.conn.provider, "connection created");
        self.to_api(&row).await
    }

    /// `POST /v1/oauth/connections/provision`.
    pub async fn provision(
        &self,
        org: &Org,
        req: wire::ProvisionRequest,
    ) -> Result<Connection, ApiError> {
        let p = self.provider(&req.provider)?;
        if p.managed.is_none() {
            return Err(bad(format!(
                "this server offers no managed {} connection",
                p.name
            )));
        }
        let policy = req.access_policy.unwrap_or_default();
        check_policy(&policy)?;
        let now = now_ms();
        let row = ConnectionRow {
            conn: StoredConnection {
                id: new_id("conn_"),
                org_id: org.id.clone(),
                provider: p.name.clone(),
                connection_type: "provisioned".into(),
                policy,
                base_url: None,
                placement: None,
                sealed: None,
                scopes: None,
                token_expires_at_ms: None,
            },
            account_id: p.name.clone(),
            account_name: Some(format!("{} (managed)", p.display_name)),
            provider_info: serde_json::json!({"managed": true}).to_string(),
            inserted_at: now,
            updated_at: now,
        };
        let row = self.insert_sealed(row, None).await?;
        self.to_api(&row).await
    }

    /// `PUT` (the policy, whole) and `PATCH` (what is given).
    pub async fn update(
        &self,
        org: &Org,
        id: &str,
        req: wire::PatchConnectionRequest,
    ) -> Result<Connection, ApiError> {
        if let Some(p) = &req.access_policy {
            check_policy(p)?;
        }
        if let Some(k) = &req.api_key {
            check_key(k)?;
        }
        let current = self.row(org, id).await?;
        if req.api_key.is_some() && current.conn.connection_type != "api_key" {
            return Err(bad("only api_key connections take a new api_key"));
        }
        let vault = self.vault.clone();
        let (o, i) = (org.id.clone(), id.to_string());
        let row = self
            .store
            .with(move |c| {
                let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                let Some(mut row) = store::get(&tx, &o, &i)? else {
                    return Ok(None);
                };
                if let Some(p) = req.access_policy {
                    row.conn.policy = p;
                }
                if let Some(n) = req.provider_account_name {
                    row.account_name = Some(n);
                }
                if let Some(k) = req.api_key {
                    let b = Self::binding(&row.conn.org_id, &row.conn.id, &row.conn.provider);
                    let plain = Secret {
                        token: k,
                        refresh_token: None,
                    }
                    .to_plain();
                    row.conn.sealed = Some(vault.seal(&b, &plain).map_err(|e| {
                        db::StoreError::Conflict(format!("sealing the credential: {e}"))
                    })?);
                }
                row.updated_at = now_ms();
                store::update(&tx, &row)?;
                tx.commit()?;
                Ok(Some(row))
            })
            .await?
            .ok_or_else(|| not_found(id))?;
        self.to_api(&row).await
    }

    /// `DELETE`: the row and its sealed credential go at once.
    pub async fn delete(&self, org: &Org, id: &str) -> Result<(), ApiError> {
        let (o, i) = (org.id.clone(), id.to_string());
        if !self.store.with(move |c| store::delete(c, &o, &i)).await? {
            return Err(not_found(id));
        }
        tracing::info!(org = %org.slug, connection = id, "connection deleted");
        Ok(())
    }

    /// The sprites the connection's policy grants now.
    pub async fn authorized_sprites(
        &self,
        org: &Org,
        id: &str,
    ) -> Result<Vec<AuthorizedSprite>, ApiError> {
        let row = self.row(org, id).await?;
        let o = org.id.clone();
        let sprites = self
            .store
            .with(move |c| db::list_sprites(c, &o, "", None, usize::MAX))
            .await?;
        Ok(sprites
            .into_iter()
            .filter_map(|s| {
                let labels: Vec<String> = serde_json::from_str(&s.labels).unwrap_or_default();
                sprites_gateway::policy::grants(&row.conn.policy, &s.name, &labels).then_some(
                    AuthorizedSprite {
                        id: s.id,
                        name: s.name,
                        labels,
                    },
                )
            })
            .collect())
    }

    fn redirect_uri(&self, provider: &str) -> String {
        format!("{}/v1/oauth/{provider}/callback", self.host.public_url())
    }

    /// `GET /v1/oauth/{provider}/authorize`.
    pub async fn authorize(
        &self,
        org: &Org,
        provider: &str,
        scopes: Option<&str>,
        add_scopes: Option<&str>,
        redirect_uri: Option<&str>,
        policy: Option<AccessPolicy>,
    ) -> Result<AuthorizeResponse, ApiError> {
        let p = self
            .providers
            .get(provider)
            .filter(|p| p.kind == Kind::OAuth)
            .ok_or_else(|| bad(format!("{provider:?} is not an OAuth provider")))?;
        let split = |s: Option<&str>| -> Vec<String> {
            s.unwrap_or_default()
                .split(',')
                .map(|x| x.trim().to_string())
                .filter(|x| !x.is_empty())
                .collect()
        };
        let mut want = split(scopes);
        // Adding scopes to the org's grant: the flow asks for what it has plus the new ones,
        // and replaces that connection's tokens when it completes.
        let mut add_to = None;
        let extra = split(add_scopes);
        if !extra.is_empty() {
            let o = org.id.clone();
            let pn = provider.to_string();
            let rows = self.store.with(move |c| store::of_org(c, &o)).await?;
            if let Some(r) = rows
                .into_iter()
                .find(|r| r.conn.provider == pn && r.conn.connection_type == "oauth")
            {
                want.extend(split(r.conn.scopes.as_deref()));
                add_to = Some(r.conn.id);
            }
            if want.is_empty() {
                want = split(p.oauth.as_ref().map(|o| o.default_scopes.as_str()));
            }
            want.extend(extra);
            want.sort();
            want.dedup();
        }
        let redirect = redirect_uri
            .map(str::to_string)
            .unwrap_or_else(|| self.redirect_uri(provider));
        url::Url::parse(&redirect).map_err(|e| bad(format!("redirect_uri: {e}")))?;
        if let Some(p) = &policy {
            check_policy(p)?;
        }
        let started = sprites_gateway::oauth::start(p, &want, &redirect).map_err(bad)?;
        let b = Self::binding(&org.id, &started.state, provider);
        let verifier = self
            .vault
            .seal(&b, started.verifier.expose_secret().as_bytes())
            .map_err(ApiError::internal)?;
        let flow = FlowRow {
            state: started.state.clone(),
            org_id: org.id.clone(),
            provider: provider.to_string(),
            redirect_uri: redirect,
            scopes: (!want.is_empty()).then(|| want.join(",")),
            add_to,
            verifier,
            policy: policy.map(|p| serde_json::to_string(&p).unwrap_or_default()),
            expires_at: now_ms() + FLOW_TTL_MS,
        };
        self.store
            .with(move |c| store::insert_flow(c, &flow, now_ms()))
            .await?;
        Ok(AuthorizeResponse {
            authorize_url: started.url,
            state: started.state,
        })
    }

    /// Finishes a flow: `org` is the token's org for the API form, `None` for the browser's
    /// redirect (the state names the org). Returns the new or updated connection.
    pub async fn callback(
        &self,
        org: Option<&Org>,
        provider: &str,
        code: SecretString,
        state: &str,
        redirect_uri: Option<&str>,
        policy: Option<AccessPolicy>,
    ) -> Result<(Org, Connection), ApiError> {
        let failed = || {
            ApiError::new(
                ErrorCode::BadRequest,
                "failed to exchange authorization code",
            )
        };
        let s = state.to_string();
        let flow = self
            .store
            .with(move |c| store::take_flow(c, &s, now_ms()))
            .await?
            .ok_or_else(failed)?;
        if flow.provider != provider || org.is_some_and(|o| o.id != flow.org_id) {
            return Err(failed());
        }
        if redirect_uri.is_some_and(|r| r != flow.redirect_uri) {
            return Err(bad("failed to exchange authorization code: redirect_uri differs from the authorize call's"));
        }
        let fo = flow.org_id.clone();
        let org = self
            .store
            .with(move |c| db::org_by_id(c, &fo))
            .await?
            .ok_or_else(failed)?;
        let p = self.providers.get(provider).ok_or_else(failed)?;
        let b = Self::binding(&org.id, &flow.state, provider);
        let verifier = self
            .vault
            .open_sealed(&b, &flow.verifier)
            .map_err(|_| failed())?;
        let verifier = SecretString::from(String::from_utf8_lossy(&verifier).into_owned());
        let grant = sprites_gateway::oauth::exchange(
            p,
            &code,
            &verifier,
            &flow.redirect_uri,
            flow.scopes.as_deref(),
        )
        .await
        .map_err(|e| {
            ApiError::new(
                ErrorCode::BadRequest,
                format!("failed to exchange authorization code: {e}"),
            )
        })?;
        let secret = Secret {
            token: grant.access_token,
            refresh_token: grant.refresh_token,
        };
        let now = now_ms();
        if let Some(id) = &flow.add_to {
            // More scopes for an existing grant: new tokens, same connection and policy.
            let vault = self.vault.clone();
            let (o, i, prov) = (org.id.clone(), id.clone(), provider.to_string());
            let (exp, scopes) = (grant.expires_at_ms, grant.scopes.clone());
            let plain = secret.to_plain();
            let row = self
                .store
                .with(move |c| {
                    let tx =
                        c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                    let Some(mut row) = store::get(&tx, &o, &i)? else {
                        return Ok(None);
                    };
                    let sealed =
                        vault
                            .seal(&Self::binding(&o, &i, &prov), &plain)
                            .map_err(|e| {
                                db::StoreError::Conflict(format!("sealing the credential: {e}"))
                            })?;
                    row.conn.sealed = Some(sealed);
                    row.conn.token_expires_at_ms = exp;
                    row.conn.scopes = scopes.or(row.conn.scopes);
                    row.updated_at = now;
                    store::update(&tx, &row)?;
                    tx.commit()?;
                    Ok(Some(row))
                })
                .await?;
            if let Some(row) = row {
                let c = self.to_api(&row).await?;
                return Ok((org, c));
            }
        }
        let policy = policy
            .or_else(|| {
                flow.policy
                    .as_deref()
                    .and_then(|p| serde_json::from_str(p).ok())
            })
            .unwrap_or_default();
        check_policy(&policy)?;
        let row = ConnectionRow {
            conn: StoredConnection {
                id: new_id("conn_"),
                org_id: org.id.clone(),
                provider: provider.to_string(),
                connection_type: "oauth".into(),
                policy,
                base_url: None,
                placement: None,
                sealed: None,
                scopes: grant.scopes,
                token_expires_at_ms: grant.expires_at_ms,
            },
            account_id: provider.to_string(),
            account_name: Some(p.display_name.clone()),
            provider_info: "{}".into(),
            inserted_at: now,
            updated_at: now,
        };
        let row = self.insert_sealed(row, Some(secret)).await?;
        tracing::info!(org = %org.slug, connection = %row.conn.id, provider, "OAuth connection created");
        let c = self.to_api(&row).await?;
        Ok((org, c))
    }
}

/// `spritesd secrets rotate-key`: a new key seals from now on (a running server picks it up
/// from the key file), every sealed value is re-encrypted under it, then the old keys go,
/// checked and done under the store's write lock so no value sealed meanwhile is left
/// under a retired key.
pub fn rotate_key(store: &Store, vault: &Vault) -> anyhow::Result<usize> {
    let new = vault.begin_rotation()?;
    let mut total = 0;
    loop {
        let done = store.blocking(|c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let rows = store::sealed_not_under(&tx, &new)?;
            if rows.is_empty() {
                vault
                    .finish_rotation()
                    .map_err(|e| db::StoreError::Conflict(e.to_string()))?;
                tx.commit()?;
                return Ok(None);
            }
            let n = rows.len();
            for (table, key, org, provider, sealed) in rows {
                let b = Binding {
                    org: &org,
                    connection: &key,
                    provider: &provider,
                };
                let plain = vault
                    .open_sealed(&b, &sealed)
                    .map_err(|e| db::StoreError::Conflict(e.to_string()))?;
                let s = vault
                    .seal(&b, &plain)
                    .map_err(|e| db::StoreError::Conflict(e.to_string()))?;
                store::reseal(&tx, &table, &key, &s)?;
            }
            tx.commit()?;
            Ok(Some(n))
        })?;
        match done {
            Some(n) => total += n,
            None => return Ok(total),
        }
    }
}
