//! Connectors (`/v1/oauth/connections`): the org's credentials that sprites use through the
//! gateway. Keys go in requests only; nothing comes back holding one.

use reqwest::Method;
use sprites_api::connector::{
    AccessPolicy, AuthorizeResponse, AuthorizedSprite, AuthorizedSprites, Connection,
    ConnectionEnvelope, ConnectionList, CreateApiKeyRequest, OAuthCallbackRequest,
    PatchConnectionRequest, ProvisionRequest, ReplacePolicyRequest,
};

use crate::client::Client;
use crate::error::Result;

fn conn_path(id: &str, rest: &str) -> String {
    let escaped: String = url::form_urlencoded::byte_serialize(id.as_bytes()).collect();
    format!("/v1/oauth/connections/{escaped}{rest}")
}

impl Client {
    /// The org's connections, of `provider` when given.
    pub async fn list_connections(&self, provider: Option<&str>) -> Result<Vec<Connection>> {
        let mut req = self.request(Method::GET, "/v1/oauth/connections");
        if let Some(p) = provider {
            req = req.query(&[("provider", p)]);
        }
        let l: ConnectionList = self.json(req, &[200]).await?;
        Ok(l.connections)
    }

    /// One connection.
    pub async fn get_connection(&self, id: &str) -> Result<Connection> {
        let e: ConnectionEnvelope = self
            .json(self.request(Method::GET, &conn_path(id, "")), &[200])
            .await?;
        Ok(e.connection)
    }

    /// Stores an API key (or a custom API) as a connection.
    pub async fn create_api_key_connection(&self, req: &CreateApiKeyRequest) -> Result<Connection> {
        let r = self
            .request(Method::POST, "/v1/oauth/connections/api_key")
            .json(req);
        let e: ConnectionEnvelope = self.json(r, &[201]).await?;
        Ok(e.connection)
    }

    /// Enables the server's managed credential of a provider for the org.
    pub async fn provision_connection(&self, req: &ProvisionRequest) -> Result<Connection> {
        let r = self
            .request(Method::POST, "/v1/oauth/connections/provision")
            .json(req);
        let e: ConnectionEnvelope = self.json(r, &[201]).await?;
        Ok(e.connection)
    }

    /// Replaces a connection's access policy, whole.
    pub async fn replace_connection_policy(
        &self,
        id: &str,
        policy: &AccessPolicy,
    ) -> Result<Connection> {
        let body = ReplacePolicyRequest {
            access_policy: policy.clone(),
        };
        let r = self.request(Method::PUT, &conn_path(id, "")).json(&body);
        let e: ConnectionEnvelope = self.json(r, &[200]).await?;
        Ok(e.connection)
    }

    /// Changes the fields given (policy, a rotated key, the display name).
    pub async fn patch_connection(
        &self,
        id: &str,
        req: &PatchConnectionRequest,
    ) -> Result<Connection> {
        let r = self.request(Method::PATCH, &conn_path(id, "")).json(req);
        let e: ConnectionEnvelope = self.json(r, &[200]).await?;
        Ok(e.connection)
    }

    /// Deletes a connection; its credential is destroyed at once.
    pub async fn delete_connection(&self, id: &str) -> Result<()> {
        self.send(self.request(Method::DELETE, &conn_path(id, "")), &[204])
            .await?;
        Ok(())
    }

    /// The sprites a connection's policy grants now.
    pub async fn connection_sprites(&self, id: &str) -> Result<Vec<AuthorizedSprite>> {
        let l: AuthorizedSprites = self
            .json(
                self.request(Method::GET, &conn_path(id, "/sprites")),
                &[200],
            )
            .await?;
        Ok(l.sprites)
    }

    /// Starts an OAuth flow: the URL to open in a browser, and its state.
    pub async fn authorize_connection(
        &self,
        provider: &str,
        scopes: &[String],
    ) -> Result<AuthorizeResponse> {
        let escaped: String = url::form_urlencoded::byte_serialize(provider.as_bytes()).collect();
        let mut r = self.request(Method::GET, &format!("/v1/oauth/{escaped}/authorize"));
        if !scopes.is_empty() {
            r = r.query(&[("scopes", scopes.join(","))]);
        }
        self.json(r, &[200]).await
    }

    /// Finishes an OAuth flow with the provider's code.
    pub async fn complete_connection(
        &self,
        provider: &str,
        req: &OAuthCallbackRequest,
    ) -> Result<Connection> {
        let escaped: String = url::form_urlencoded::byte_serialize(provider.as_bytes()).collect();
        let r = self
            .request(Method::POST, &format!("/v1/oauth/{escaped}/callback"))
            .json(req);
        let e: ConnectionEnvelope = self.json(r, &[201]).await?;
        Ok(e.connection)
    }
}

impl Client {
    /// The org's MCP grants.
    pub async fn mcp_grants(&self) -> Result<Vec<sprites_api::mcp::McpGrant>> {
        let l: sprites_api::mcp::McpGrantList = self
            .json(self.request(Method::GET, "/v1/mcp/grants"), &[200])
            .await?;
        Ok(l.grants)
    }

    /// A grant and its `/mcp` token for a client without OAuth (the token is shown once).
    pub async fn create_mcp_grant(
        &self,
        req: &sprites_api::mcp::CreateMcpGrantRequest,
    ) -> Result<sprites_api::mcp::CreatedMcpGrant> {
        self.json(
            self.request(Method::POST, "/v1/mcp/grants").json(req),
            &[201],
        )
        .await
    }

    /// Revokes a grant: its tokens stop working at once.
    pub async fn revoke_mcp_grant(&self, id: &str) -> Result<()> {
        let escaped: String = url::form_urlencoded::byte_serialize(id.as_bytes()).collect();
        self.send(
            self.request(Method::DELETE, &format!("/v1/mcp/grants/{escaped}")),
            &[204],
        )
        .await?;
        Ok(())
    }
}
