//! The org's MCP grants (`/v1/mcp/grants`): which MCP clients may act for the org, and how.

use serde::{Deserialize, Serialize};

/// A grant: an MCP client's approval, restricted (a name prefix and a cap) or full.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct McpGrant {
    /// `mcpg_…`.
    pub id: String,
    /// The OAuth client (`direct` for tokens made with `POST /v1/mcp/grants`).
    pub client_id: String,
    /// The client's name.
    pub client_name: String,
    /// `restricted` or `full`.
    pub mode: String,
    /// Restricted: sprite names must start with this.
    #[serde(default)]
    pub prefix: Option<String>,
    /// Restricted: most sprites.
    #[serde(default)]
    pub max_sprites: Option<u32>,
    /// When it was approved.
    pub created_at: String,
    /// When a token of it was last used.
    #[serde(default)]
    pub last_used_at: Option<String>,
}

/// `GET /v1/mcp/grants`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct McpGrantList {
    /// The grants.
    pub grants: Vec<McpGrant>,
}

/// `POST /v1/mcp/grants`: a grant and token for a client without OAuth.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateMcpGrantRequest {
    /// `restricted` (default) or `full`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// Restricted: the prefix (default `mcp-`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Restricted: most sprites (default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_sprites: Option<u32>,
}

/// The answer to [`CreateMcpGrantRequest`]: the grant, its token (shown once) and the URL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedMcpGrant {
    /// The grant.
    #[serde(flatten)]
    pub grant: McpGrant,
    /// Bearer token for `/mcp`.
    pub access_token: String,
    /// The MCP endpoint.
    pub mcp_url: String,
}
