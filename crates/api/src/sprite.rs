//! Sprite CRUD bodies (§2 of the protocol spec).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Lifecycle status as reported to clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SpriteStatus {
    /// Processes run.
    Running,
    /// Processes frozen, memory kept.
    Warm,
    /// Nothing runs; the disk is at rest.
    Cold,
}

impl SpriteStatus {
    /// Wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            SpriteStatus::Running => "running",
            SpriteStatus::Warm => "warm",
            SpriteStatus::Cold => "cold",
        }
    }
}

/// Who may reach the sprite URL.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UrlSettings {
    /// `"sprite"` (org token needed) or `"public"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<String>,
    /// `"admins"` or `"org_users"`; stored, not enforced beyond org membership.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_access: Option<String>,
}

/// Requested resources. Stored and reported; `ram_mb` also sets the memory limit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpriteConfig {
    /// Memory in MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ram_mb: Option<u64>,
    /// CPU count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<u32>,
    /// Region label (informational on a self-hosted server).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Disk size in GB (informational; disks are sparse).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_gb: Option<u64>,
}

/// The Sprite object (§2.1). Every timestamp is RFC 3339 or absent, never `""`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sprite {
    /// `sprite-<uuid>`.
    pub id: String,
    /// Unique within the org.
    pub name: String,
    /// Org slug.
    #[serde(default)]
    pub organization: String,
    /// Same as `organization`; some clients read this name.
    #[serde(default)]
    pub org_slug: String,
    /// Lifecycle status.
    pub status: SpriteStatus,
    /// The sprite's HTTP URL.
    #[serde(default)]
    pub url: String,
    /// URL auth settings.
    #[serde(default)]
    pub url_settings: UrlSettings,
    /// Creation time.
    pub created_at: String,
    /// Last change of the record.
    pub updated_at: String,
    /// Free-form labels.
    #[serde(default)]
    pub labels: Vec<String>,
    /// Last time the sprite was seen running.
    #[serde(default)]
    pub last_running_at: Option<String>,
    /// Last time the sprite went warm.
    #[serde(default)]
    pub last_warming_at: Option<String>,
    /// Last boot.
    #[serde(default)]
    pub last_started_at: Option<String>,
    /// Last request that touched the sprite.
    #[serde(default)]
    pub last_active_at: Option<String>,
    /// Requested resources.
    #[serde(default)]
    pub config: SpriteConfig,
    /// Environment given at creation.
    #[serde(default)]
    pub environment: BTreeMap<String, String>,
    /// Storage bucket (the local object store on a single host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket_name: Option<String>,
    /// Region the sprite lives in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_region: Option<String>,
    /// Server version that runs the sprite.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Environment (agent) version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment_version: Option<String>,
    /// The sprite's own idle times, when it has them (else the server's apply).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle: Option<IdleSettings>,
    /// Id of the base image the sprite's disk is layered over (see `…/upgrade`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_image: Option<String>,
}

/// Answer of `POST /v1/sprites/{name}/upgrade` (200; the official clients take any 2xx).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpgradeResult {
    /// The sprite.
    pub name: String,
    /// `upgraded`, or `current` when it already was on the current base.
    pub status: String,
    /// Whether it moved (false: it was on the current base already).
    pub upgraded: bool,
    /// The base it was on.
    #[serde(default)]
    pub from: Option<String>,
    /// The base it is on now.
    pub to: String,
}

/// `POST /v1/sprites` body. Unknown fields are ignored.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CreateSpriteRequest {
    /// Required name.
    pub name: String,
    /// Optional resources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<SpriteConfig>,
    /// Optional environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<BTreeMap<String, String>>,
    /// Optional URL settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_settings: Option<UrlSettings>,
    /// Optional labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Vec<String>>,
    /// Wait for capacity instead of failing (accepted; a single host never queues).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_for_capacity: Option<bool>,
    /// Start from another sprite's disk (a checkpoint of it, or it as it is now) or from an
    /// org template, instead of an empty one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SpriteSource>,
}

/// Where a new sprite's disk comes from: `{"sprite":"a","checkpoint":"v3"}` (checkpoint
/// optional: a consistent snapshot taken now) or `{"template":"python-ml"}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpriteSource {
    /// A sprite of the org.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sprite: Option<String>,
    /// One of its checkpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<String>,
    /// An org template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
}

/// A named checkpoint of the org new sprites can start from; it outlives its source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Template {
    /// Name, unique in the org.
    pub name: String,
    /// The sprite it was made from (it may be gone since).
    pub source_sprite: String,
    /// The checkpoint it was made from.
    pub source_checkpoint: String,
    /// Disk bytes in use.
    #[serde(default)]
    pub size_bytes: u64,
    /// When it was made.
    pub created_at: String,
}

/// `GET /v1/templates`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateList {
    /// The org's templates.
    pub templates: Vec<Template>,
}

/// `PUT /v1/templates/{name}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutTemplateRequest {
    /// The sprite.
    pub sprite: String,
    /// Its checkpoint (default: a snapshot taken now).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<String>,
}

/// `POST /v1/sprites/{name}/sleep`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SleepRequest {
    /// `warm` (frozen, memory kept; the default) or `cold` (stopped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Sleep even while requests or tasks keep it busy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub force: Option<bool>,
}

/// `PUT /v1/sprites/{name}` body: a partial update.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct UpdateSpriteRequest {
    /// New URL settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_settings: Option<UrlSettings>,
    /// New labels (replace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Vec<String>>,
    /// Go's way of saying `labels: []`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clear_labels: Option<bool>,
    /// The sprite's own idle times; `null` goes back to the server's.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub idle: Option<Option<IdleSettings>>,
}

/// When an idle sprite goes warm (frozen) and then cold (stopped), e.g. `"30s"`, `"1h"`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdleSettings {
    /// Idle time before it is frozen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warm_after: Option<String>,
    /// Time frozen before it is stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cold_after: Option<String>,
}

/// A field that is present (even as `null`) is `Some`; an absent one stays `None`.
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Some(Option::deserialize(d)?))
}

/// Per-org counters, sent both top-level and nested (JS reads one, Go the other).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrgSummary {
    /// Org slug.
    pub name: String,
    /// Sprites running.
    pub running: u64,
    /// Sprites warm.
    pub warm: u64,
    /// Sprites cold.
    pub cold: u64,
    /// Most sprites allowed to run at once.
    pub running_limit: u64,
    /// Most sprites allowed warm at once.
    pub warm_limit: u64,
}

/// One line of `GET /v1/sprites` with `Accept: application/x-ndjson` (the JS SDK's
/// `watchSprites`, `sprite list -w`): first a line per sprite, then one per state change, and
/// a `"type":"heartbeat"` line (no name) every [`WATCH_HEARTBEAT_SECS`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchEvent {
    /// `heartbeat`, or absent for a sprite's line.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The sprite.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Its state now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<SpriteStatus>,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_running_at: Option<String>,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_warming_at: Option<String>,
    /// When the line was written, RFC 3339.
    pub timestamp: String,
    /// The org's counters at that time.
    pub org: OrgSummary,
}

/// Seconds between heartbeats of a sprite watch (the JS SDK gives up after 45 s of silence).
pub const WATCH_HEARTBEAT_SECS: u64 = 15;

/// `GET /v1/sprites` response.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ListSpritesResponse {
    /// One page of sprites, by name.
    pub sprites: Vec<Sprite>,
    /// More pages follow.
    pub has_more: bool,
    /// Opaque token for the next page.
    pub next_continuation_token: Option<String>,
    /// Counters, top level (JS, Python).
    #[serde(flatten)]
    pub counters: OrgSummary,
    /// Counters, nested (Go).
    pub org: OrgSummary,
}

/// Default and largest page size of `GET /v1/sprites`; larger requests are clamped.
pub const MAX_LIST_RESULTS: usize = 50;

/// An org token as listed (never its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrgToken {
    /// Token id (`tok…`).
    pub id: String,
    /// What it is for.
    #[serde(default)]
    pub description: String,
    /// Whether it may mint and revoke tokens.
    #[serde(default)]
    pub admin: bool,
    /// When it was made.
    #[serde(default)]
    pub created_at: String,
}

/// `GET /v1/organizations/{org}/tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrgTokenList {
    /// The org's tokens.
    pub tokens: Vec<OrgToken>,
}

/// `POST /v1/organizations/{org}/tokens`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MintTokenRequest {
    /// What it is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Whether it may mint and revoke tokens itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<bool>,
}

/// The minted token: shown in this answer only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MintedToken {
    /// The token.
    pub token: String,
    /// Its id.
    pub id: String,
    /// What it is for.
    #[serde(default)]
    pub description: String,
    /// Whether it is an admin token.
    #[serde(default)]
    pub admin: bool,
}
