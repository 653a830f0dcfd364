//! The console's side in spritesd: its sessions in the state store and the in-process API it
//! calls ([`sprites_console::Backend`]), the same router and handlers as every REST client.

use std::sync::Arc;

use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use sprites_console::{Backend, Principal, ProviderInfo, SessionRow};
use tower::ServiceExt;

use crate::error::ApiError;
use crate::store::{self, Org, Store};

/// The console's backend.
pub struct ConsoleBackend {
    /// The store.
    pub store: Store,
    /// The REST API in-process.
    pub api: Arc<crate::mcp::InProcess>,
    /// Connector providers, for the add forms.
    pub connectors: Arc<crate::connectors::Connectors>,
}

#[async_trait::async_trait]
impl Backend for ConsoleBackend {
    async fn sign_in(&self, token: &str) -> Option<Principal> {
        let org = crate::auth::verify(&self.store, token)
            .await
            .ok()
            .flatten()?;
        let token_id = crate::auth::parse(token)?.token_id.to_string();
        Some(Principal {
            org_id: org.id,
            org_slug: org.slug,
            token_id,
        })
    }

    async fn put_session(&self, hash: &str, row: &SessionRow) -> Result<(), String> {
        let (hash, s) = (
            hash.to_string(),
            store::ConsoleSession {
                org: Org {
                    id: row.principal.org_id.clone(),
                    slug: row.principal.org_slug.clone(),
                },
                token_id: row.principal.token_id.clone(),
                csrf: row.csrf.clone(),
                expires_at: row.expires_at,
            },
        );
        self.store
            .with(move |c| store::put_console_session(c, &hash, &s, store::now_ms()))
            .await
            .map_err(|e| e.to_string())
    }

    async fn session(&self, hash: &str) -> Option<SessionRow> {
        let hash = hash.to_string();
        let s = self
            .store
            .with(move |c| store::console_session(c, &hash, store::now_ms()))
            .await
            .ok()
            .flatten()?;
        Some(SessionRow {
            principal: Principal {
                org_id: s.org.id,
                org_slug: s.org.slug,
                token_id: s.token_id,
            },
            csrf: s.csrf,
            expires_at: s.expires_at,
        })
    }

    async fn delete_session(&self, hash: &str) {
        let hash = hash.to_string();
        if let Err(e) = self
            .store
            .with(move |c| store::delete_console_session(c, &hash))
            .await
        {
            tracing::warn!("ending a console session: {e}");
        }
    }

    fn providers(&self) -> Vec<ProviderInfo> {
        use sprites_gateway::providers::Kind;
        self.connectors
            .providers
            .all()
            .map(|p| ProviderInfo {
                name: p.name.clone(),
                display_name: p.display_name.clone(),
                description: p.description.clone(),
                kind: match p.kind {
                    Kind::ApiKey => "api_key",
                    Kind::OAuth => "oauth",
                    Kind::Custom => "custom",
                },
                managed: p.managed.is_some(),
            })
            .collect()
    }

    async fn call(&self, who: &Principal, req: Request) -> Response {
        let Some(router) = self.api.router.get().cloned() else {
            return ApiError::new(
                sprites_api::ErrorCode::Unavailable,
                "the server is starting",
            )
            .into_response();
        };
        // A fresh request: the console's own routing left its path parameters in the
        // extensions. Only the connection's upgrade goes along (a WebSocket exec).
        let (mut parts, body) = req.into_parts();
        let upgrade = parts.extensions.remove::<hyper::upgrade::OnUpgrade>();
        let mut req = Request::new(body);
        *req.method_mut() = parts.method;
        *req.uri_mut() = parts.uri;
        *req.headers_mut() = parts.headers;
        if let Some(u) = upgrade {
            req.extensions_mut().insert(u);
        }
        // As the token check would have found them (an external request cannot carry an
        // extension): the org, and the token whose rights apply.
        req.extensions_mut().insert(Org {
            id: who.org_id.clone(),
            slug: who.org_slug.clone(),
        });
        req.extensions_mut()
            .insert(crate::http::tokens::TokenId(who.token_id.clone()));
        match router.oneshot(req).await {
            Ok(r) => r,
            Err(e) => match e {},
        }
    }
}
