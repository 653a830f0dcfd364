//! Connections, OAuth flow states and gateway usage in SQLite. Credentials are stored only
//! sealed ([`sprites_gateway::vault`]); this module never sees a plaintext one.

use rusqlite::{params, Connection, OptionalExtension};
use sprites_api::connector::AccessPolicy;
use sprites_gateway::providers::Placement;
use sprites_gateway::vault::Sealed;
use sprites_gateway::StoredConnection;

use crate::store::Result;

/// A connection row.
#[derive(Debug, Clone)]
pub struct ConnectionRow {
    /// The part the gateway uses.
    pub conn: StoredConnection,
    /// Account id at the provider (or the connection's name).
    pub account_id: String,
    /// Account display name.
    pub account_name: Option<String>,
    /// JSON object.
    pub provider_info: String,
    /// Unix ms.
    pub inserted_at: i64,
    /// Unix ms.
    pub updated_at: i64,
}

const COLS: &str = "id, org_id, provider, connection_type, account_id, account_name, scopes, policy, provider_info, base_url, placement, key_id, secret, token_expires_at, inserted_at, updated_at";

fn placement_json(p: &Placement) -> String {
    serde_json::json!({"in": p.placement, "name": p.name, "format": p.format}).to_string()
}

fn placement_of(s: &str) -> Option<Placement> {
    let v: serde_json::Value = serde_json::from_str(s).ok()?;
    Some(Placement {
        placement: serde_json::from_value(v.get("in")?.clone()).ok()?,
        name: v.get("name")?.as_str()?.to_string(),
        format: v.get("format")?.as_str()?.to_string(),
    })
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ConnectionRow> {
    let policy: String = r.get(7)?;
    let placement: Option<String> = r.get(10)?;
    let key_id: Option<String> = r.get(11)?;
    let secret: Option<Vec<u8>> = r.get(12)?;
    Ok(ConnectionRow {
        conn: StoredConnection {
            id: r.get(0)?,
            org_id: r.get(1)?,
            provider: r.get(2)?,
            connection_type: r.get(3)?,
            scopes: r.get(6)?,
            policy: serde_json::from_str::<AccessPolicy>(&policy).unwrap_or_default(),
            base_url: r.get(9)?,
            placement: placement.as_deref().and_then(placement_of),
            sealed: match (key_id, secret) {
                (Some(key_id), Some(blob)) => Some(Sealed { key_id, blob }),
                _ => None,
            },
            token_expires_at_ms: r.get(13)?,
        },
        account_id: r.get(4)?,
        account_name: r.get(5)?,
        provider_info: r.get(8)?,
        inserted_at: r.get(14)?,
        updated_at: r.get(15)?,
    })
}

/// Inserts a connection.
pub fn insert(c: &Connection, r: &ConnectionRow) -> Result<()> {
    let s = &r.conn;
    c.execute(
        &format!("INSERT INTO connections ({COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)"),
        params![
            s.id,
            s.org_id,
            s.provider,
            s.connection_type,
            r.account_id,
            r.account_name,
            s.scopes,
            serde_json::to_string(&s.policy).unwrap_or_else(|_| "{}".into()),
            r.provider_info,
            s.base_url,
            s.placement.as_ref().map(placement_json),
            s.sealed.as_ref().map(|x| x.key_id.clone()),
            s.sealed.as_ref().map(|x| x.blob.clone()),
            s.token_expires_at_ms,
            r.inserted_at,
            r.updated_at
        ],
    )?;
    Ok(())
}

/// The org's connections, oldest first.
pub fn of_org(c: &Connection, org_id: &str) -> Result<Vec<ConnectionRow>> {
    let mut st = c.prepare_cached(&format!(
        "SELECT {COLS} FROM connections WHERE org_id = ?1 ORDER BY inserted_at, id"
    ))?;
    let rows = st.query_map([org_id], row)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// One connection of the org.
pub fn get(c: &Connection, org_id: &str, id: &str) -> Result<Option<ConnectionRow>> {
    Ok(c.query_row(
        &format!("SELECT {COLS} FROM connections WHERE org_id = ?1 AND id = ?2"),
        params![org_id, id],
        row,
    )
    .optional()?)
}

/// Saves policy, names, scopes and the sealed credential of `r`.
pub fn update(c: &Connection, r: &ConnectionRow) -> Result<bool> {
    let s = &r.conn;
    let n = c.execute(
        "UPDATE connections SET policy = ?3, account_name = ?4, scopes = ?5, key_id = ?6, secret = ?7,
            token_expires_at = ?8, updated_at = ?9 WHERE org_id = ?1 AND id = ?2",
        params![
            s.org_id,
            s.id,
            serde_json::to_string(&s.policy).unwrap_or_else(|_| "{}".into()),
            r.account_name,
            s.scopes,
            s.sealed.as_ref().map(|x| x.key_id.clone()),
            s.sealed.as_ref().map(|x| x.blob.clone()),
            s.token_expires_at_ms,
            r.updated_at
        ],
    )?;
    Ok(n > 0)
}

/// Replaces the sealed credential of connection `id` (after a refresh).
pub fn set_secret(
    c: &Connection,
    id: &str,
    sealed: &Sealed,
    expires_at: Option<i64>,
    scopes: Option<&str>,
    now: i64,
) -> Result<bool> {
    let n = c.execute(
        "UPDATE connections SET key_id = ?2, secret = ?3, token_expires_at = ?4, scopes = COALESCE(?5, scopes), updated_at = ?6 WHERE id = ?1",
        params![id, sealed.key_id, sealed.blob, expires_at, scopes, now],
    )?;
    Ok(n > 0)
}

/// Deletes connection `id`; false when there was none.
pub fn delete(c: &Connection, org_id: &str, id: &str) -> Result<bool> {
    let n = c.execute(
        "DELETE FROM connections WHERE org_id = ?1 AND id = ?2",
        params![org_id, id],
    )?;
    Ok(n > 0)
}

/// A sealed value found for re-sealing: table, row key (connection id or flow state), org,
/// provider, the value.
pub type SealedRow = (String, String, String, String, Sealed);

/// Every sealed value (connections' credentials and flows' verifiers) not under `key_id`.
pub fn sealed_not_under(c: &Connection, key_id: &str) -> Result<Vec<SealedRow>> {
    let mut out = Vec::new();
    let mut st = c.prepare(
        "SELECT 'connections', id, org_id, provider, key_id, secret FROM connections WHERE key_id IS NOT NULL AND key_id != ?1
         UNION ALL SELECT 'oauth_states', state, org_id, provider, key_id, verifier FROM oauth_states WHERE key_id != ?1",
    )?;
    let rows = st.query_map([key_id], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
            Sealed {
                key_id: r.get(4)?,
                blob: r.get(5)?,
            },
        ))
    })?;
    for r in rows {
        out.push(r?);
    }
    Ok(out)
}

/// Rewrites one sealed value found by [`sealed_not_under`].
pub fn reseal(c: &Connection, table: &str, key: &str, s: &Sealed) -> Result<()> {
    match table {
        "connections" => c.execute(
            "UPDATE connections SET key_id = ?2, secret = ?3 WHERE id = ?1",
            params![key, s.key_id, s.blob],
        )?,
        _ => c.execute(
            "UPDATE oauth_states SET key_id = ?2, verifier = ?3 WHERE state = ?1",
            params![key, s.key_id, s.blob],
        )?,
    };
    Ok(())
}

/// A started OAuth flow.
#[derive(Debug, Clone)]
pub struct FlowRow {
    /// Single-use state.
    pub state: String,
    /// Org that started it.
    pub org_id: String,
    /// Provider.
    pub provider: String,
    /// Redirect URI given to the provider.
    pub redirect_uri: String,
    /// Scopes asked for.
    pub scopes: Option<String>,
    /// Connection whose grant gains scopes (`add_scopes`), if any.
    pub add_to: Option<String>,
    /// The sealed PKCE verifier.
    pub verifier: Sealed,
    /// Policy of the connection to make.
    pub policy: Option<String>,
    /// Unix ms.
    pub expires_at: i64,
}

/// Stores a flow; flows past their expiry go at the same time.
pub fn insert_flow(c: &Connection, f: &FlowRow, now: i64) -> Result<()> {
    c.execute("DELETE FROM oauth_states WHERE expires_at < ?1", [now])?;
    c.execute(
        "INSERT INTO oauth_states (state, org_id, provider, redirect_uri, scopes, add_to, key_id, verifier, policy, expires_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        params![
            f.state,
            f.org_id,
            f.provider,
            f.redirect_uri,
            f.scopes,
            f.add_to,
            f.verifier.key_id,
            f.verifier.blob,
            f.policy,
            f.expires_at
        ],
    )?;
    Ok(())
}

/// Takes (reads and deletes) the flow `state` if it has not expired: a state is used once.
pub fn take_flow(c: &Connection, state: &str, now: i64) -> Result<Option<FlowRow>> {
    let f = c
        .query_row(
            "SELECT state, org_id, provider, redirect_uri, scopes, add_to, key_id, verifier, policy, expires_at FROM oauth_states WHERE state = ?1",
            [state],
            |r| {
                Ok(FlowRow {
                    state: r.get(0)?,
                    org_id: r.get(1)?,
                    provider: r.get(2)?,
                    redirect_uri: r.get(3)?,
                    scopes: r.get(4)?,
                    add_to: r.get(5)?,
                    verifier: Sealed {
                        key_id: r.get(6)?,
                        blob: r.get(7)?,
                    },
                    policy: r.get(8)?,
                    expires_at: r.get(9)?,
                })
            },
        )
        .optional()?;
    c.execute("DELETE FROM oauth_states WHERE state = ?1", [state])?;
    Ok(f.filter(|f| f.expires_at >= now))
}

/// Appends usage events in one transaction and drops those older than 30 days.
pub fn record_usage(
    c: &mut Connection,
    events: &[sprites_gateway::UsageEvent],
    now: i64,
) -> Result<()> {
    let tx = c.transaction()?;
    {
        let mut st = tx.prepare_cached(
            "INSERT INTO gateway_usage (at, org_id, connection_id, sprite_id, method, path, status, bytes, millis)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )?;
        for e in events {
            st.execute(params![
                now,
                e.org_id,
                e.connection_id,
                e.sprite_id,
                e.method,
                e.path,
                e.status,
                i64::try_from(e.bytes).unwrap_or(i64::MAX),
                i64::try_from(e.millis).unwrap_or(i64::MAX)
            ])?;
        }
    }
    tx.execute(
        "DELETE FROM gateway_usage WHERE at < ?1",
        [now - 30 * 86_400_000],
    )?;
    tx.commit()?;
    Ok(())
}

/// Requests, errors and bytes of connection `id` since `since` (Unix ms).
pub fn usage_since(c: &Connection, id: &str, since: i64) -> Result<(u64, u64, u64)> {
    Ok(c.query_row(
        "SELECT COUNT(*), COALESCE(SUM(status >= 400), 0), COALESCE(SUM(bytes), 0) FROM gateway_usage WHERE connection_id = ?1 AND at >= ?2",
        params![id, since],
        |r| {
            Ok((
                r.get::<_, i64>(0)? as u64,
                r.get::<_, i64>(1)? as u64,
                r.get::<_, i64>(2)? as u64,
            ))
        },
    )?)
}
