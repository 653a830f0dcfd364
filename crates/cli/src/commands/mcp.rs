//! `sprite mcp`: the server's MCP endpoint, how to add it to clients, tokens for clients
//! without OAuth, and the org's grants.

use anyhow::Result;
use sprites_api::mcp::CreateMcpGrantRequest;

use crate::context::{friendly, Ctx};
use crate::{GrantsCmd, McpCmd};

/// `sprite mcp …`.
pub async fn mcp(ctx: &Ctx, cmd: Option<McpCmd>) -> Result<i32> {
    let url = format!("{}/mcp", ctx.url.trim_end_matches('/'));
    match cmd {
        None => {
            println!("MCP endpoint: {url}");
            println!();
            println!("Add it to a client; it signs in through your browser (OAuth) and asks for a");
            println!("restricted grant (sprites named mcp-*, at most 5) or full access:");
            println!("  Claude Code:  claude mcp add --transport http sprites {url}");
            println!("  Cursor:       {{\"mcpServers\": {{\"sprites\": {{\"url\": \"{url}\"}}}}}}  (~/.cursor/mcp.json)");
            println!("  Codex:        codex mcp add sprites --url {url}");
            println!("Clients without OAuth: `sprite mcp token` makes a bearer token for them.");
        }
        Some(McpCmd::Token {
            full, prefix, max, ..
        }) => {
            let req = CreateMcpGrantRequest {
                mode: Some(if full { "full" } else { "restricted" }.into()),
                prefix: (!full).then_some(prefix),
                max_sprites: (!full).then_some(max),
            };
            let g = ctx
                .client()?
                .create_mcp_grant(&req)
                .await
                .map_err(friendly)?;
            eprintln!(
                "Grant {} ({}). The token is shown this once; send it as `Authorization: Bearer …` to {}:",
                g.grant.id,
                describe(&g.grant),
                g.mcp_url
            );
            println!("{}", g.access_token);
        }
        Some(McpCmd::Grants {
            cmd: Some(GrantsCmd::Revoke { id }),
        }) => {
            ctx.client()?
                .revoke_mcp_grant(&id)
                .await
                .map_err(friendly)?;
            println!("Revoked {id}; its tokens no longer work");
        }
        Some(McpCmd::Grants { cmd: None }) => {
            let grants = ctx.client()?.mcp_grants().await.map_err(friendly)?;
            if grants.is_empty() {
                println!("No MCP grants.");
            } else {
                println!("{:<20} {:<28} {:<34} LAST USED", "ID", "CLIENT", "ACCESS");
                for g in grants {
                    println!(
                        "{:<20} {:<28} {:<34} {}",
                        g.id,
                        g.client_name,
                        describe(&g),
                        g.last_used_at.as_deref().unwrap_or("never")
                    );
                }
            }
        }
    }
    Ok(0)
}

fn describe(g: &sprites_api::mcp::McpGrant) -> String {
    match g.mode.as_str() {
        "full" => "full access".into(),
        _ => format!(
            "{}* sprites, at most {}",
            g.prefix.as_deref().unwrap_or(""),
            g.max_sprites.unwrap_or(0)
        ),
    }
}
