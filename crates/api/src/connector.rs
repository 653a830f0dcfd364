//! Connectors (`/v1/oauth/connections`) and the gateway's list (`/v1/gateway/list`).
//!
//! A secret (API key, access or refresh token) appears only in requests that store one, as a
//! [`SecretString`] that never prints; no response type has a field that could carry one.

use secrecy::SecretString;
use serde::{Deserialize, Serialize};

/// Which sprites may use a connection and which provider paths they may reach. Empty denies
/// every sprite.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessPolicy {
    /// Every sprite of the org (overrides `name_prefix` and `sprite_labels`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_all: Option<bool>,
    /// The sprite's name must start with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name_prefix: Option<String>,
    /// The sprite must carry all of these labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sprite_labels: Option<Vec<String>>,
    /// Exact paths or trailing-`*` prefixes; when non-empty a path must match one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_endpoints: Option<Vec<String>>,
    /// Checked first: a path matching one is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocked_endpoints: Option<Vec<String>>,
}

/// Requests, errors and bytes through the gateway in one window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageWindow {
    /// Calls.
    pub requests: u64,
    /// Calls refused by the gateway or answered with a status of 400 or more.
    pub errors: u64,
    /// Request and response body bytes.
    pub bytes: u64,
}

/// Usage over the last 24 hours, 7 days and 30 days.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Last 24 hours.
    #[serde(rename = "24h")]
    pub last_24h: UsageWindow,
    /// Last 7 days.
    #[serde(rename = "7d")]
    pub last_7d: UsageWindow,
    /// Last 30 days.
    #[serde(rename = "30d")]
    pub last_30d: UsageWindow,
}

/// A connector as the API shows it. It never holds the credential.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Connection {
    /// `conn_<random>`.
    pub id: String,
    /// Provider name (`openrouter`, `github`, `custom_api`, …).
    pub provider: String,
    /// The account at the provider (a team id, a login), or the connection's name.
    #[serde(default)]
    pub provider_account_id: String,
    /// Display name of that account.
    #[serde(default)]
    pub provider_account_name: Option<String>,
    /// Granted scopes, comma-separated.
    #[serde(default)]
    pub scopes: Option<String>,
    /// `oauth`, `api_key` or `provisioned`.
    pub connection_type: String,
    /// Who may use it.
    #[serde(default)]
    pub access_policy: AccessPolicy,
    /// Free-form facts about the provider side (a custom API's base URL and auth placement).
    #[serde(default)]
    pub provider_info: serde_json::Value,
    /// The user who made it (tokens here belong to orgs, so none).
    #[serde(default)]
    pub user_id: Option<String>,
    /// When the access token expires (OAuth).
    #[serde(default)]
    pub token_expires_at: Option<String>,
    /// Creation time.
    pub inserted_at: String,
    /// Last change.
    pub updated_at: String,
    /// A call through the gateway, to copy.
    #[serde(default)]
    pub usage_snippet: String,
    /// `…/v1/gateway/<provider>/<id>` as a sprite reaches it.
    #[serde(default)]
    pub gateway_base_url: String,
    /// Calls through the gateway.
    #[serde(default)]
    pub usage: Usage,
}

/// `{"connections":[…]}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnectionList {
    /// The org's connections.
    pub connections: Vec<Connection>,
}

/// `{"connection":{…}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnectionEnvelope {
    /// The connection.
    pub connection: Connection,
}

/// Where a custom API's token goes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthIn {
    /// A request header (`name`, value `format`).
    #[default]
    Header,
    /// A query parameter `name`.
    Query,
    /// The first path segment.
    Path,
}

/// How a custom API takes its token.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomAuth {
    /// Header (default), query or path.
    #[serde(default, rename = "in")]
    pub placement: AuthIn,
    /// Header or query parameter name (default `Authorization`, or `api_key` for a query).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The value, with `{token}` where the token goes (default `Bearer {token}` for the
    /// `Authorization` header, else `{token}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
}

/// A request sent to the provider before a connection is saved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestRequest {
    /// HTTP method (default GET).
    #[serde(default = "get_method")]
    pub method: String,
    /// Path under the base URL.
    pub path: String,
    /// Status that means the credential works (default 200).
    #[serde(default = "ok_status")]
    pub expect_status: u16,
}

fn get_method() -> String {
    "GET".into()
}

fn ok_status() -> u16 {
    200
}

/// `POST /v1/oauth/connections/api_key`.
#[derive(Debug, Deserialize, Serialize)]
pub struct CreateApiKeyRequest {
    /// Provider name.
    pub provider: String,
    /// The key: stored encrypted, never shown again.
    #[serde(serialize_with = "expose")]
    pub api_key: SecretString,
    /// A name for the connection (`custom_api`: required).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `custom_api`: where the API lives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    /// `custom_api`: where the key goes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<CustomAuth>,
    /// Sent before saving; a failure refuses the connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_request: Option<TestRequest>,
    /// Who may use it (default: nobody yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_policy: Option<AccessPolicy>,
}

/// Serializes a secret for a request body (clients send keys; nothing sends them back).
fn expose<S: serde::Serializer>(s: &SecretString, ser: S) -> Result<S::Ok, S::Error> {
    use secrecy::ExposeSecret;
    ser.serialize_str(s.expose_secret())
}

fn expose_opt<S: serde::Serializer>(s: &Option<SecretString>, ser: S) -> Result<S::Ok, S::Error> {
    use secrecy::ExposeSecret;
    match s {
        Some(s) => ser.serialize_some(s.expose_secret()),
        None => ser.serialize_none(),
    }
}

/// `POST /v1/oauth/connections/provision`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct ProvisionRequest {
    /// A provider the operator manages a credential for.
    pub provider: String,
    /// Who may use it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_policy: Option<AccessPolicy>,
}

/// `PUT /v1/oauth/connections/{id}`: replaces the policy.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct ReplacePolicyRequest {
    /// The new policy, whole.
    #[serde(default)]
    pub access_policy: AccessPolicy,
}

/// `PATCH /v1/oauth/connections/{id}`: only the fields given change.
#[derive(Debug, Default, Deserialize, Serialize)]
pub struct PatchConnectionRequest {
    /// A new policy, whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_policy: Option<AccessPolicy>,
    /// A rotated key (API-key and custom connections).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "expose_opt"
    )]
    pub api_key: Option<SecretString>,
    /// A new display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_account_name: Option<String>,
}

/// `POST /v1/oauth/{provider}/callback`.
#[derive(Debug, Deserialize, Serialize)]
pub struct OAuthCallbackRequest {
    /// The provider's authorization code.
    #[serde(serialize_with = "expose")]
    pub code: SecretString,
    /// The `state` of the authorize call.
    #[serde(default)]
    pub state: Option<String>,
    /// Must equal the one given to authorize, when one was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect_uri: Option<String>,
    /// Who may use the new connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_policy: Option<AccessPolicy>,
}

/// `GET /v1/oauth/{provider}/authorize` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorizeResponse {
    /// Where to send the user's browser.
    pub authorize_url: String,
    /// The flow's single-use state.
    pub state: String,
}

/// A sprite a connection's policy grants now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorizedSprite {
    /// Sprite id.
    pub id: String,
    /// Sprite name.
    pub name: String,
    /// Its labels.
    pub labels: Vec<String>,
}

/// `GET /v1/oauth/connections/{id}/sprites`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorizedSprites {
    /// The sprites.
    pub sprites: Vec<AuthorizedSprite>,
}

/// A connection the calling sprite may use (`/v1/gateway/list`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayConnection {
    /// Connection id.
    pub id: String,
    /// Provider name.
    pub provider: String,
    /// Provider's display name.
    pub display_name: String,
    /// What it is.
    pub description: String,
    /// Base of calls, as this sprite reaches it.
    pub gateway_base_url: String,
    /// Granted scopes.
    pub scopes: Option<String>,
    /// A call to copy.
    pub usage_snippet: String,
    /// Where a user adds scopes (OAuth), if anywhere.
    pub request_scopes_url: Option<String>,
}

/// A provider the org has not connected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AvailableProvider {
    /// Provider name.
    pub provider: String,
    /// Display name.
    pub display_name: String,
    /// What it is.
    pub description: String,
    /// Where a user sets it up.
    pub setup_url: String,
}

/// `GET /v1/gateway/list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayList {
    /// Connections this sprite may use.
    pub connections: Vec<GatewayConnection>,
    /// Providers not connected yet.
    pub available: Vec<AvailableProvider>,
}
