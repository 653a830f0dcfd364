//! The state store: orgs, tokens and sprite records in SQLite (WAL, synchronous=FULL).
//!
//! What is persisted is *intent*: which sprites exist, their settings, and who may use them.
//! Whether a sprite runs is observed from the host at any time and never trusted from here,
//! so a server killed at any point restarts with every sprite and token intact and simply
//! re-observes what runs.

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{params, Connection, OptionalExtension};
use rusqlite_migration::{Migrations, M};

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed.
    #[error("state store: {0}")]
    Sql(#[from] rusqlite::Error),
    /// Schema migration failed.
    #[error("state store migration: {0}")]
    Migration(#[from] rusqlite_migration::Error),
    /// A unique name is taken.
    #[error("{0}")]
    Conflict(String),
    /// Capacity exhausted.
    #[error("{0}")]
    Full(String),
    /// The blocking task failed.
    #[error("state store task: {0}")]
    Join(String),
}

/// Result alias.
pub type Result<T> = std::result::Result<T, StoreError>;

fn migrations() -> Migrations<'static> {
    Migrations::new(vec![
        M::up(
            r#"
CREATE TABLE orgs (
    id TEXT PRIMARY KEY,
    slug TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL
);
CREATE TABLE tokens (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
    secret_hash BLOB NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    created_at INTEGER NOT NULL
);
CREATE TABLE sprites (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    uid_slot INTEGER NOT NULL UNIQUE,
    url_auth TEXT NOT NULL DEFAULT 'sprite',
    private_access TEXT,
    labels TEXT NOT NULL DEFAULT '[]',
    config TEXT NOT NULL DEFAULT '{}',
    environment TEXT NOT NULL DEFAULT '{}',
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    last_running_at INTEGER,
    last_warming_at INTEGER,
    last_started_at INTEGER,
    last_active_at INTEGER,
    UNIQUE (org_id, name)
);
"#,
        ),
        M::up(
            r#"
CREATE TABLE policies (
    sprite_id TEXT NOT NULL REFERENCES sprites(id) ON DELETE CASCADE,
    kind TEXT NOT NULL,
    body TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (sprite_id, kind)
);
"#,
        ),
        M::up(
            r#"
CREATE TABLE checkpoints (
    sprite_id TEXT NOT NULL REFERENCES sprites(id) ON DELETE CASCADE,
    id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    comment TEXT,
    created_at INTEGER NOT NULL,
    manifest TEXT NOT NULL,
    source_id TEXT,
    history TEXT NOT NULL DEFAULT '[]',
    bytes INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (sprite_id, id)
);
CREATE TABLE checkpoint_heads (
    sprite_id TEXT PRIMARY KEY REFERENCES sprites(id) ON DELETE CASCADE,
    next_seq INTEGER NOT NULL DEFAULT 0,
    head TEXT,
    restored_from TEXT
);
"#,
        ),
        // The base image version a sprite's disk, and a checkpoint's, is layered over.
        M::up(
            r#"
ALTER TABLE sprites ADD COLUMN base_image TEXT;
ALTER TABLE checkpoints ADD COLUMN base_image TEXT;
"#,
        ),
        // Connectors: credentials only ever sealed (key_id + secret), never in plaintext.
        M::up(
            r#"
CREATE TABLE connections (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
    provider TEXT NOT NULL,
    connection_type TEXT NOT NULL,
    account_id TEXT NOT NULL DEFAULT '',
    account_name TEXT,
    scopes TEXT,
    policy TEXT NOT NULL DEFAULT '{}',
    provider_info TEXT NOT NULL DEFAULT '{}',
    base_url TEXT,
    placement TEXT,
    key_id TEXT,
    secret BLOB,
    token_expires_at INTEGER,
    inserted_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX connections_org ON connections(org_id);
CREATE TABLE oauth_states (
    state TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
    provider TEXT NOT NULL,
    redirect_uri TEXT NOT NULL,
    scopes TEXT,
    add_to TEXT,
    key_id TEXT NOT NULL,
    verifier BLOB NOT NULL,
    policy TEXT,
    expires_at INTEGER NOT NULL
);
CREATE TABLE gateway_usage (
    at INTEGER NOT NULL,
    org_id TEXT NOT NULL,
    connection_id TEXT,
    sprite_id TEXT NOT NULL,
    method TEXT NOT NULL,
    path TEXT NOT NULL,
    status INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    millis INTEGER NOT NULL
);
CREATE INDEX gateway_usage_conn ON gateway_usage(connection_id, at);
"#,
        ),
        // The MCP server's OAuth: codes and tokens are stored as SHA-256 hashes only.
        M::up(
            r#"
CREATE TABLE mcp_clients (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    redirect_uris TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE mcp_grants (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
    client_id TEXT NOT NULL,
    client_name TEXT NOT NULL,
    mode TEXT NOT NULL,
    prefix TEXT,
    max_sprites INTEGER,
    created_at INTEGER NOT NULL,
    last_used_at INTEGER
);
CREATE INDEX mcp_grants_org ON mcp_grants(org_id);
CREATE TABLE mcp_codes (
    hash TEXT PRIMARY KEY,
    client_id TEXT NOT NULL,
    redirect_uri TEXT NOT NULL,
    challenge TEXT NOT NULL,
    grant_id TEXT NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE TABLE mcp_tokens (
    hash TEXT PRIMARY KEY,
    grant_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    used INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX mcp_tokens_grant ON mcp_tokens(grant_id);
"#,
        ),
        // Templates: a pinned copy of a checkpoint's manifest, alive after its sprite.
        M::up(
            r#"
CREATE TABLE templates (
    org_id TEXT NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    source_sprite TEXT NOT NULL,
    source_checkpoint TEXT NOT NULL,
    manifest TEXT NOT NULL,
    base_image TEXT,
    bytes INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (org_id, name)
);
"#,
        ),
        // Tokens made before minting existed were all full admin tokens.
        M::up("ALTER TABLE tokens ADD COLUMN admin INTEGER NOT NULL DEFAULT 1;"),
        // Console sign-ins: a session ends with its token (revoked: the row goes with it).
        M::up(
            r#"
CREATE TABLE console_sessions (
    hash TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
    token_id TEXT NOT NULL REFERENCES tokens(id) ON DELETE CASCADE,
    csrf TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX console_sessions_expiry ON console_sessions(expires_at);
"#,
        ),
    ])
}

/// An org.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Org {
    /// Short random id.
    pub id: String,
    /// Human slug.
    pub slug: String,
}

/// A stored token (hash only).
#[derive(Debug, Clone)]
pub struct TokenRecord {
    /// Owning org.
    pub org: Org,
    /// SHA-256 of the secret.
    pub secret_hash: Vec<u8>,
}

/// A sprite record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpriteRecord {
    /// `sprite-<uuid>`.
    pub id: String,
    /// Owning org.
    pub org_id: String,
    /// Name, unique in the org.
    pub name: String,
    /// Index of the sprite's host uid range.
    pub uid_slot: u32,
    /// `sprite` or `public`.
    pub url_auth: String,
    /// Optional private access setting.
    pub private_access: Option<String>,
    /// JSON array.
    pub labels: String,
    /// JSON object.
    pub config: String,
    /// JSON object.
    pub environment: String,
    /// Unix ms.
    pub created_at: i64,
    /// Unix ms.
    pub updated_at: i64,
    /// Unix ms.
    pub last_running_at: Option<i64>,
    /// Unix ms.
    pub last_warming_at: Option<i64>,
    /// Unix ms.
    pub last_started_at: Option<i64>,
    /// Unix ms.
    pub last_active_at: Option<i64>,
    /// Id of the base image its disk is layered over (`None`: from before image versions;
    /// given the current base at startup).
    pub base_image: Option<String>,
}

/// Most sprites a host can give distinct uid ranges to.
pub const MAX_SLOTS: u32 = 50_000;

/// Handle to the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
}

/// Current time in Unix milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

const SPRITE_COLS: &str = "id, org_id, name, uid_slot, url_auth, private_access, labels, config, environment, created_at, updated_at, last_running_at, last_warming_at, last_started_at, last_active_at, base_image";

fn sprite_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<SpriteRecord> {
    Ok(SpriteRecord {
        id: r.get(0)?,
        org_id: r.get(1)?,
        name: r.get(2)?,
        uid_slot: r.get(3)?,
        url_auth: r.get(4)?,
        private_access: r.get(5)?,
        labels: r.get(6)?,
        config: r.get(7)?,
        environment: r.get(8)?,
        created_at: r.get(9)?,
        updated_at: r.get(10)?,
        last_running_at: r.get(11)?,
        last_warming_at: r.get(12)?,
        last_started_at: r.get(13)?,
        last_active_at: r.get(14)?,
        base_image: r.get(15)?,
    })
}

impl Store {
    /// Opens (creating if needed) and migrates the database at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let mut conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        migrations().to_latest(&mut conn)?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Runs `f` with the connection on a blocking thread.
    pub async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut c = conn.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut c)
        })
        .await
        .map_err(|e| StoreError::Join(e.to_string()))?
    }

    /// Synchronous access, for CLI subcommands and startup.
    pub fn blocking<T>(&self, f: impl FnOnce(&mut Connection) -> Result<T>) -> Result<T> {
        let mut c = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut c)
    }
}

/// Number of orgs.
pub fn org_count(c: &Connection) -> Result<u64> {
    Ok(c.query_row("SELECT COUNT(*) FROM orgs", [], |r| r.get(0))?)
}

/// The org with `slug`, if any.
pub fn org_by_slug(c: &Connection, slug: &str) -> Result<Option<Org>> {
    org_where(c, "slug", slug)
}

/// The org with id `id`, if any.
pub fn org_by_id(c: &Connection, id: &str) -> Result<Option<Org>> {
    org_where(c, "id", id)
}

fn org_where(c: &Connection, column: &str, value: &str) -> Result<Option<Org>> {
    Ok(c.query_row(
        &format!("SELECT id, slug FROM orgs WHERE {column} = ?1"),
        [value],
        |r| {
            Ok(Org {
                id: r.get(0)?,
                slug: r.get(1)?,
            })
        },
    )
    .optional()?)
}

/// Inserts an org.
pub fn insert_org(c: &Connection, org: &Org) -> Result<()> {
    c.execute(
        "INSERT INTO orgs (id, slug, created_at) VALUES (?1, ?2, ?3)",
        params![org.id, org.slug, now_ms()],
    )?;
    Ok(())
}

/// Inserts a token hash.
pub fn insert_token(
    c: &Connection,
    id: &str,
    org_id: &str,
    hash: &[u8],
    description: &str,
) -> Result<()> {
    c.execute(
        "INSERT INTO tokens (id, org_id, secret_hash, description, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![id, org_id, hash, description, now_ms()],
    )?;
    Ok(())
}

/// A token as the org's token list shows it (never its secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    /// Token id (`tok…`).
    pub id: String,
    /// What it is for.
    pub description: String,
    /// Whether it may mint and revoke tokens.
    pub admin: bool,
    /// Unix ms.
    pub created_at: i64,
}

/// Inserts a minted token.
pub fn insert_minted_token(
    c: &Connection,
    id: &str,
    org_id: &str,
    hash: &[u8],
    description: &str,
    admin: bool,
) -> Result<()> {
    c.execute(
        "INSERT INTO tokens (id, org_id, secret_hash, description, created_at, admin) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![id, org_id, hash, description, now_ms(), admin],
    )?;
    Ok(())
}

/// The org's tokens, oldest first.
pub fn tokens_of(c: &Connection, org_id: &str) -> Result<Vec<TokenInfo>> {
    let mut st = c.prepare(
        "SELECT id, description, admin, created_at FROM tokens WHERE org_id = ?1 ORDER BY created_at, id",
    )?;
    let rows = st.query_map([org_id], |r| {
        Ok(TokenInfo {
            id: r.get(0)?,
            description: r.get(1)?,
            admin: r.get(2)?,
            created_at: r.get(3)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Revokes token `id` of the org, unless it is the org's last admin token. `Ok(false)` when
/// there is no such token.
pub fn revoke_token(c: &mut Connection, org_id: &str, id: &str) -> Result<bool> {
    let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let admin: Option<bool> = tx
        .query_row(
            "SELECT admin FROM tokens WHERE org_id = ?1 AND id = ?2",
            params![org_id, id],
            |r| r.get(0),
        )
        .optional()?;
    let Some(admin) = admin else {
        return Ok(false);
    };
    if admin {
        let admins: i64 = tx.query_row(
            "SELECT COUNT(*) FROM tokens WHERE org_id = ?1 AND admin = 1",
            [org_id],
            |r| r.get(0),
        )?;
        if admins <= 1 {
            return Err(StoreError::Conflict(
                "this is the org's last admin token; mint another admin token first".into(),
            ));
        }
    }
    tx.execute(
        "DELETE FROM tokens WHERE org_id = ?1 AND id = ?2",
        params![org_id, id],
    )?;
    tx.commit()?;
    Ok(true)
}

/// Whether token `id` is an admin token.
pub fn token_is_admin(c: &Connection, id: &str) -> Result<bool> {
    Ok(
        c.query_row("SELECT admin FROM tokens WHERE id = ?1", [id], |r| r.get(0))
            .optional()?
            .unwrap_or(false),
    )
}

/// Looks up a token by id.
pub fn token(c: &Connection, id: &str) -> Result<Option<TokenRecord>> {
    Ok(c
        .query_row(
            "SELECT t.secret_hash, o.id, o.slug FROM tokens t JOIN orgs o ON o.id = t.org_id WHERE t.id = ?1",
            [id],
            |r| {
                Ok(TokenRecord {
                    secret_hash: r.get(0)?,
                    org: Org { id: r.get(1)?, slug: r.get(2)? },
                })
            },
        )
        .optional()?)
}

/// Inserts a sprite, choosing the lowest free uid slot. `Conflict` if the name is taken.
pub fn insert_sprite(c: &mut Connection, mut rec: SpriteRecord) -> Result<SpriteRecord> {
    let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let taken: bool = tx.query_row(
        "SELECT EXISTS (SELECT 1 FROM sprites WHERE org_id = ?1 AND name = ?2)",
        params![rec.org_id, rec.name],
        |r| r.get(0),
    )?;
    if taken {
        return Err(StoreError::Conflict(format!(
            "sprite {:?} already exists",
            rec.name
        )));
    }
    let slot: u32 = tx.query_row(
        "SELECT CASE WHEN NOT EXISTS (SELECT 1 FROM sprites WHERE uid_slot = 0) THEN 0 ELSE
            (SELECT MIN(s.uid_slot + 1) FROM sprites s
             WHERE NOT EXISTS (SELECT 1 FROM sprites t WHERE t.uid_slot = s.uid_slot + 1)) END",
        [],
        |r| r.get(0),
    )?;
    if slot >= MAX_SLOTS {
        return Err(StoreError::Full(format!(
            "this host holds at most {MAX_SLOTS} sprites"
        )));
    }
    rec.uid_slot = slot;
    tx.execute(
        &format!("INSERT INTO sprites ({SPRITE_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)"),
        params![
            rec.id,
            rec.org_id,
            rec.name,
            rec.uid_slot,
            rec.url_auth,
            rec.private_access,
            rec.labels,
            rec.config,
            rec.environment,
            rec.created_at,
            rec.updated_at,
            rec.last_running_at,
            rec.last_warming_at,
            rec.last_started_at,
            rec.last_active_at,
            rec.base_image
        ],
    )?;
    tx.commit()?;
    Ok(rec)
}

/// The sprite `name` of org `org_id`.
pub fn sprite_by_name(c: &Connection, org_id: &str, name: &str) -> Result<Option<SpriteRecord>> {
    Ok(c.query_row(
        &format!("SELECT {SPRITE_COLS} FROM sprites WHERE org_id = ?1 AND name = ?2"),
        params![org_id, name],
        sprite_row,
    )
    .optional()?)
}

/// A sprite by id.
pub fn sprite_by_id(c: &Connection, id: &str) -> Result<Option<SpriteRecord>> {
    Ok(c.query_row(
        &format!("SELECT {SPRITE_COLS} FROM sprites WHERE id = ?1"),
        [id],
        sprite_row,
    )
    .optional()?)
}

/// Every sprite of every org (startup reconciliation).
pub fn all_sprites(c: &Connection) -> Result<Vec<SpriteRecord>> {
    let mut st = c.prepare(&format!("SELECT {SPRITE_COLS} FROM sprites"))?;
    let rows = st.query_map([], sprite_row)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// A page of an org's sprites whose name starts with `prefix` and sorts after `after`.
pub fn list_sprites(
    c: &Connection,
    org_id: &str,
    prefix: &str,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<SpriteRecord>> {
    let pattern = format!(
        "{}%",
        prefix
            .replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_")
    );
    let mut st = c.prepare(&format!(
        "SELECT {SPRITE_COLS} FROM sprites WHERE org_id = ?1 AND name LIKE ?2 ESCAPE '\\' AND name > ?3 ORDER BY name LIMIT ?4"
    ))?;
    let rows = st.query_map(
        params![
            org_id,
            pattern,
            after.unwrap_or(""),
            i64::try_from(limit).unwrap_or(i64::MAX)
        ],
        sprite_row,
    )?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Saves the mutable fields of a sprite.
pub fn update_sprite(c: &Connection, rec: &SpriteRecord) -> Result<()> {
    c.execute(
        "UPDATE sprites SET url_auth = ?2, private_access = ?3, labels = ?4, updated_at = ?5,
            last_running_at = ?6, last_warming_at = ?7, last_started_at = ?8, last_active_at = ?9
         WHERE id = ?1",
        params![
            rec.id,
            rec.url_auth,
            rec.private_access,
            rec.labels,
            rec.updated_at,
            rec.last_running_at,
            rec.last_warming_at,
            rec.last_started_at,
            rec.last_active_at
        ],
    )?;
    Ok(())
}

/// Stamps `last_running_at` / `last_warming_at` after a lifecycle transition.
pub fn record_transition(
    c: &Connection,
    id: &str,
    running: bool,
    warm: bool,
    now: i64,
) -> Result<()> {
    if running {
        c.execute(
            "UPDATE sprites SET last_running_at = ?2, last_started_at = COALESCE(last_started_at, ?2) WHERE id = ?1",
            params![id, now],
        )?;
    }
    if warm {
        c.execute(
            "UPDATE sprites SET last_warming_at = ?2 WHERE id = ?1",
            params![id, now],
        )?;
    }
    Ok(())
}

/// A stored policy document (`network`, `privileges`, `resources`).
pub fn policy(c: &Connection, sprite_id: &str, kind: &str) -> Result<Option<String>> {
    Ok(c.query_row(
        "SELECT body FROM policies WHERE sprite_id = ?1 AND kind = ?2",
        params![sprite_id, kind],
        |r| r.get(0),
    )
    .optional()?)
}

/// Stores (or, with `None`, removes) a policy document.
pub fn set_policy(c: &Connection, sprite_id: &str, kind: &str, body: Option<&str>) -> Result<()> {
    match body {
        Some(b) => c.execute(
            "INSERT INTO policies (sprite_id, kind, body, updated_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (sprite_id, kind) DO UPDATE SET body = excluded.body, updated_at = excluded.updated_at",
            params![sprite_id, kind, b, now_ms()],
        )?,
        None => c.execute("DELETE FROM policies WHERE sprite_id = ?1 AND kind = ?2", params![sprite_id, kind])?,
    };
    Ok(())
}

/// Every stored policy of a kind: (sprite id, body).
pub fn policies(c: &Connection, kind: &str) -> Result<Vec<(String, String)>> {
    let mut st = c.prepare("SELECT sprite_id, body FROM policies WHERE kind = ?1")?;
    let rows = st.query_map([kind], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// A checkpoint record; its disk is the manifest at `manifest` in the object store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointRecord {
    /// Owning sprite.
    pub sprite_id: String,
    /// `v<seq>`.
    pub id: String,
    /// Order of creation.
    pub seq: i64,
    /// Free text.
    pub comment: Option<String>,
    /// Unix ms.
    pub created_at: i64,
    /// Object key of the manifest.
    pub manifest: String,
    /// Checkpoint the disk descended from.
    pub source_id: Option<String>,
    /// JSON array of ancestors, newest first.
    pub history: String,
    /// Non-zero bytes of the disk.
    pub bytes: i64,
    /// The base image its disk was layered over.
    pub base_image: Option<String>,
}

/// Where a sprite's checkpoints stand.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckpointHead {
    /// Sequence number of the next checkpoint (versions are never reused).
    pub next_seq: i64,
    /// The checkpoint the live disk descends from.
    pub head: Option<String>,
    /// The checkpoint last restored.
    pub restored_from: Option<String>,
}

const CKPT_COLS: &str =
    "sprite_id, id, seq, comment, created_at, manifest, source_id, history, bytes, base_image";

fn checkpoint_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<CheckpointRecord> {
    Ok(CheckpointRecord {
        sprite_id: r.get(0)?,
        id: r.get(1)?,
        seq: r.get(2)?,
        comment: r.get(3)?,
        created_at: r.get(4)?,
        manifest: r.get(5)?,
        source_id: r.get(6)?,
        history: r.get(7)?,
        bytes: r.get(8)?,
        base_image: r.get(9)?,
    })
}

/// A sprite's checkpoints, newest first.
pub fn checkpoints(c: &Connection, sprite_id: &str) -> Result<Vec<CheckpointRecord>> {
    let mut st = c.prepare(&format!(
        "SELECT {CKPT_COLS} FROM checkpoints WHERE sprite_id = ?1 ORDER BY seq DESC"
    ))?;
    let rows = st.query_map([sprite_id], checkpoint_row)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// One checkpoint.
pub fn checkpoint(c: &Connection, sprite_id: &str, id: &str) -> Result<Option<CheckpointRecord>> {
    Ok(c.query_row(
        &format!("SELECT {CKPT_COLS} FROM checkpoints WHERE sprite_id = ?1 AND id = ?2"),
        params![sprite_id, id],
        checkpoint_row,
    )
    .optional()?)
}

/// Manifest keys of every checkpoint of every sprite.
pub fn all_manifests(c: &Connection) -> Result<Vec<String>> {
    let mut st =
        c.prepare("SELECT manifest FROM checkpoints UNION SELECT manifest FROM templates")?;
    let rows = st.query_map([], |r| r.get(0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Where a sprite's checkpoints stand.
pub fn checkpoint_head(c: &Connection, sprite_id: &str) -> Result<CheckpointHead> {
    Ok(c.query_row(
        "SELECT next_seq, head, restored_from FROM checkpoint_heads WHERE sprite_id = ?1",
        [sprite_id],
        |r| {
            Ok(CheckpointHead {
                next_seq: r.get(0)?,
                head: r.get(1)?,
                restored_from: r.get(2)?,
            })
        },
    )
    .optional()?
    .unwrap_or_default())
}

fn set_head(c: &Connection, sprite_id: &str, h: &CheckpointHead) -> Result<()> {
    c.execute(
        "INSERT INTO checkpoint_heads (sprite_id, next_seq, head, restored_from) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (sprite_id) DO UPDATE SET next_seq = excluded.next_seq, head = excluded.head,
         restored_from = excluded.restored_from",
        params![sprite_id, h.next_seq, h.head, h.restored_from],
    )?;
    Ok(())
}

/// Records a new checkpoint and makes it the head, in one transaction.
pub fn insert_checkpoint(c: &mut Connection, rec: &CheckpointRecord) -> Result<()> {
    let tx = c.transaction()?;
    let mut head = checkpoint_head(&tx, &rec.sprite_id)?;
    tx.execute(
        &format!(
            "INSERT INTO checkpoints ({CKPT_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
        ),
        params![
            rec.sprite_id,
            rec.id,
            rec.seq,
            rec.comment,
            rec.created_at,
            rec.manifest,
            rec.source_id,
            rec.history,
            rec.bytes,
            rec.base_image
        ],
    )?;
    head.next_seq = head.next_seq.max(rec.seq + 1);
    head.head = Some(rec.id.clone());
    set_head(&tx, &rec.sprite_id, &head)?;
    tx.commit()?;
    Ok(())
}

/// Records that the live disk now is checkpoint `id`.
pub fn mark_restored(c: &Connection, sprite_id: &str, id: &str) -> Result<()> {
    let mut head = checkpoint_head(c, sprite_id)?;
    head.head = Some(id.to_string());
    head.restored_from = Some(id.to_string());
    set_head(c, sprite_id, &head)
}

/// Forgets a checkpoint.
pub fn delete_checkpoint(c: &Connection, sprite_id: &str, id: &str) -> Result<()> {
    c.execute(
        "DELETE FROM checkpoints WHERE sprite_id = ?1 AND id = ?2",
        params![sprite_id, id],
    )?;
    Ok(())
}

/// Moves a sprite to base image `base` (an upgrade, or a restore of a checkpoint made on
/// another base).
pub fn set_sprite_base(c: &Connection, id: &str, base: &str) -> Result<()> {
    c.execute(
        "UPDATE sprites SET base_image = ?2, updated_at = ?3 WHERE id = ?1",
        params![id, base, now_ms()],
    )?;
    Ok(())
}

/// Gives sprites from before image versions the base `base` (what they were made on).
pub fn adopt_unversioned(c: &Connection, base: &str) -> Result<usize> {
    let n = c.execute(
        "UPDATE sprites SET base_image = ?1 WHERE base_image IS NULL",
        [base],
    )?;
    c.execute(
        "UPDATE checkpoints SET base_image = (SELECT s.base_image FROM sprites s WHERE s.id = checkpoints.sprite_id) WHERE base_image IS NULL",
        [],
    )?;
    Ok(n)
}

/// Every base image a sprite or a checkpoint is layered over.
pub fn bases_in_use(c: &Connection) -> Result<std::collections::HashSet<String>> {
    let mut st = c.prepare(
        "SELECT base_image FROM sprites WHERE base_image IS NOT NULL
         UNION SELECT base_image FROM checkpoints WHERE base_image IS NOT NULL
         UNION SELECT base_image FROM templates WHERE base_image IS NOT NULL",
    )?;
    let rows = st.query_map([], |r| r.get(0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Deletes a sprite record.
pub fn delete_sprite(c: &Connection, id: &str) -> Result<()> {
    c.execute("DELETE FROM sprites WHERE id = ?1", [id])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(name: &str) -> SpriteRecord {
        SpriteRecord {
            id: format!("sprite-{name}"),
            org_id: "o1".into(),
            name: name.into(),
            uid_slot: 0,
            url_auth: "sprite".into(),
            private_access: None,
            labels: "[]".into(),
            config: "{}".into(),
            environment: "{}".into(),
            created_at: 1,
            updated_at: 1,
            last_running_at: None,
            last_warming_at: None,
            last_started_at: None,
            last_active_at: None,
            base_image: Some("b1".into()),
        }
    }

    #[test]
    fn slots_and_names() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("db")).unwrap();
        s.blocking(|c| {
            insert_org(
                c,
                &Org {
                    id: "o1".into(),
                    slug: "personal".into(),
                },
            )?;
            let a = insert_sprite(c, rec("a"))?;
            let b = insert_sprite(c, rec("b"))?;
            let cc = insert_sprite(c, rec("c"))?;
            assert_eq!((a.uid_slot, b.uid_slot, cc.uid_slot), (0, 1, 2));
            assert!(matches!(
                insert_sprite(c, rec("a")),
                Err(StoreError::Conflict(_))
            ));
            delete_sprite(c, &b.id)?;
            assert_eq!(
                insert_sprite(c, rec("d"))?.uid_slot,
                1,
                "freed slot is reused"
            );
            delete_sprite(c, &a.id)?;
            assert_eq!(insert_sprite(c, rec("e"))?.uid_slot, 0);
            let page = list_sprites(c, "o1", "", None, 2)?;
            assert_eq!(
                page.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
                ["c", "d"]
            );
            let next = list_sprites(c, "o1", "", Some("d"), 2)?;
            assert_eq!(
                next.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
                ["e"]
            );
            assert_eq!(
                list_sprites(c, "o1", "_", None, 10)?.len(),
                0,
                "LIKE wildcards are escaped"
            );
            Ok(())
        })
        .unwrap();
        // Reopening keeps everything.
        drop(s);
        let s = Store::open(&dir.path().join("db")).unwrap();
        assert_eq!(s.blocking(|c| all_sprites(c)).unwrap().len(), 3);
    }
}

/// An org template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateRecord {
    /// Org.
    pub org_id: String,
    /// Name.
    pub name: String,
    /// Sprite it was made from.
    pub source_sprite: String,
    /// Checkpoint it was made from.
    pub source_checkpoint: String,
    /// Object key of its pinned manifest.
    pub manifest: String,
    /// Base image of its disk.
    pub base_image: Option<String>,
    /// Non-zero bytes.
    pub bytes: i64,
    /// Unix ms.
    pub created_at: i64,
}

fn template_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<TemplateRecord> {
    Ok(TemplateRecord {
        org_id: r.get(0)?,
        name: r.get(1)?,
        source_sprite: r.get(2)?,
        source_checkpoint: r.get(3)?,
        manifest: r.get(4)?,
        base_image: r.get(5)?,
        bytes: r.get(6)?,
        created_at: r.get(7)?,
    })
}

const TEMPLATE_COLS: &str =
    "org_id, name, source_sprite, source_checkpoint, manifest, base_image, bytes, created_at";

/// Saves a template; the one it replaces (its manifest key), if any.
pub fn put_template(c: &mut Connection, t: &TemplateRecord) -> Result<Option<String>> {
    let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let old: Option<String> = tx
        .query_row(
            "SELECT manifest FROM templates WHERE org_id = ?1 AND name = ?2",
            params![t.org_id, t.name],
            |r| r.get(0),
        )
        .optional()?;
    tx.execute(
        &format!("INSERT OR REPLACE INTO templates ({TEMPLATE_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"),
        params![t.org_id, t.name, t.source_sprite, t.source_checkpoint, t.manifest, t.base_image, t.bytes, t.created_at],
    )?;
    tx.commit()?;
    Ok(old)
}

/// One template.
pub fn template(c: &Connection, org_id: &str, name: &str) -> Result<Option<TemplateRecord>> {
    Ok(c.query_row(
        &format!("SELECT {TEMPLATE_COLS} FROM templates WHERE org_id = ?1 AND name = ?2"),
        params![org_id, name],
        template_row,
    )
    .optional()?)
}

/// The org's templates by name.
pub fn templates(c: &Connection, org_id: &str) -> Result<Vec<TemplateRecord>> {
    let mut st = c.prepare(&format!(
        "SELECT {TEMPLATE_COLS} FROM templates WHERE org_id = ?1 ORDER BY name"
    ))?;
    let rows = st.query_map([org_id], template_row)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Deletes a template; its manifest key, if there was one.
pub fn delete_template(c: &Connection, org_id: &str, name: &str) -> Result<Option<String>> {
    let m: Option<String> = c
        .query_row(
            "SELECT manifest FROM templates WHERE org_id = ?1 AND name = ?2",
            params![org_id, name],
            |r| r.get(0),
        )
        .optional()?;
    c.execute(
        "DELETE FROM templates WHERE org_id = ?1 AND name = ?2",
        params![org_id, name],
    )?;
    Ok(m)
}

/// A console session as stored (by the hash of its id).
#[derive(Debug, Clone)]
pub struct ConsoleSession {
    /// Its org.
    pub org: Org,
    /// The token it acts as.
    pub token_id: String,
    /// Its CSRF token.
    pub csrf: String,
    /// Unix ms it ends.
    pub expires_at: i64,
}

/// Stores a console session, dropping expired ones on the way.
pub fn put_console_session(c: &Connection, hash: &str, s: &ConsoleSession, now: i64) -> Result<()> {
    c.execute("DELETE FROM console_sessions WHERE expires_at < ?1", [now])?;
    c.execute(
        "INSERT INTO console_sessions (hash, org_id, token_id, csrf, created_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![hash, s.org.id, s.token_id, s.csrf, now, s.expires_at],
    )?;
    Ok(())
}

/// The live session stored under `hash` whose token still exists.
pub fn console_session(c: &Connection, hash: &str, now: i64) -> Result<Option<ConsoleSession>> {
    Ok(c.query_row(
        "SELECT o.id, o.slug, s.token_id, s.csrf, s.expires_at FROM console_sessions s \
             JOIN tokens t ON t.id = s.token_id AND t.org_id = s.org_id \
             JOIN orgs o ON o.id = s.org_id WHERE s.hash = ?1 AND s.expires_at > ?2",
        params![hash, now],
        |r| {
            Ok(ConsoleSession {
                org: Org {
                    id: r.get(0)?,
                    slug: r.get(1)?,
                },
                token_id: r.get(2)?,
                csrf: r.get(3)?,
                expires_at: r.get(4)?,
            })
        },
    )
    .optional()?)
}

/// Ends a console session.
pub fn delete_console_session(c: &Connection, hash: &str) -> Result<()> {
    c.execute("DELETE FROM console_sessions WHERE hash = ?1", [hash])?;
    Ok(())
}

/// How many sprites there are, in every org.
pub fn count_sprites(c: &mut Connection) -> Result<i64> {
    Ok(c.query_row("SELECT COUNT(*) FROM sprites", [], |r| r.get(0))?)
}
