//! Sprite operations that span the store, the disks and the runtime. HTTP handlers translate
//! requests into these calls and results back into responses; nothing else mutates sprites.

use std::sync::Arc;

use sprites_api::{self as api, ErrorCode};
use sprites_runtime::{AgentStream, Hold, Runtime, SpriteSpec, State};
use sprites_storage::disk::DiskFactory;

use crate::config::Config;
use crate::error::ApiError;
use crate::store::{self, now_ms, Org, SpriteRecord, Store};

/// First host uid handed to sprites; far above the ranges distributions give to users and
/// rootless containers (`/etc/subuid` starts at 100000).
pub const UID_BASE: u32 = 1_000_000_000;
/// Ids per sprite.
pub const UID_RANGE: u32 = 65_536;

/// The sprite service.
pub struct Sprites {
    /// Settings.
    pub cfg: Config,
    /// State store.
    pub store: Store,
    /// Lifecycle of running sprites.
    pub runtime: Arc<Runtime>,
    /// Sprite networking, when enabled.
    pub network: Option<Arc<sprites_network::Network>>,
    disks: DiskFactory,
    /// Base image versions.
    pub images: sprites_storage::image::Images,
    /// Held to read (create, upgrade) from choosing a base until the record names it, and
    /// to write while unused bases are removed.
    base_gate: tokio::sync::RwLock<()>,
    /// The port the API really listens on (known once bound), for sprite URLs.
    pub port: std::sync::atomic::AtomicU16,
    /// Scheme and port of sprite URLs as people reach them, from `--public-url` (a reverse
    /// proxy's); unset: this listener's.
    pub url_origin: std::sync::OnceLock<(String, u16)>,
    /// Memory limits set through the resources policy, by sprite id (MiB).
    memory_overrides: std::sync::Mutex<std::collections::HashMap<String, u64>>,
    /// Checkpoint chunks and manifests.
    pub chunks: Arc<sprites_storage::checkpoint::ChunkStore>,
    /// Serializes checkpoint operations per sprite.
    pub(crate) checkpoint_locks:
        std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Serializes writing checkpoint views (one disk-sized write at a time).
    pub(crate) views_lock: tokio::sync::Mutex<()>,
    /// Latest view-sync request per sprite (debounce).
    pub(crate) views_pending: std::sync::Mutex<std::collections::HashMap<String, u64>>,
    /// Connectors and the gateway sprites call.
    pub connectors: Arc<crate::connectors::Connectors>,
    /// The MCP server and its OAuth server.
    pub mcp: Arc<sprites_mcp::Mcp>,
    /// The CLI builds `install.sh` and `sprite upgrade` download.
    pub cli: crate::http::cli::CliBuilds,
    /// The REST API as MCP tools call it (its router is set once built).
    pub in_process: Arc<crate::mcp::InProcess>,
    /// Prometheus metrics (`/metrics` on `--metrics-listen`).
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Inside-API servers, by sprite id.
    pub(crate) host_apis:
        std::sync::Mutex<std::collections::HashMap<String, tokio::task::AbortHandle>>,
}

/// Policy kinds stored per sprite.
pub const POLICY_KINDS: &[&str] = &["network", "privileges", "resources"];

impl Sprites {
    /// A service over the given parts.
    pub fn new(
        cfg: Config,
        store: Store,
        runtime: Arc<Runtime>,
        network: Option<Arc<sprites_network::Network>>,
        connectors: Arc<crate::connectors::Connectors>,
    ) -> Result<Self, sprites_storage::StorageError> {
        let in_process = crate::mcp::InProcess::new(store.clone());
        let mcp = sprites_mcp::Mcp::new(
            in_process.clone(),
            Arc::new(crate::mcp::Rows {
                store: store.clone(),
                secure: cfg.scheme == "https",
            }),
            format!("{}://{}", cfg.scheme, cfg.listen),
            cfg.mcp_metadata_allow_private,
        );
        let disks = DiskFactory::new(&cfg.image_dir);
        let images = sprites_storage::image::Images::new(&cfg.image_dir);
        let port = std::sync::atomic::AtomicU16::new(cfg.listen.port());
        let chunks = Arc::new(sprites_storage::checkpoint::ChunkStore::open(
            &cfg.object_store,
        )?);
        Ok(Self {
            cli: crate::http::cli::CliBuilds::new(cfg.cli_dir.clone()),
            cfg,
            store,
            runtime,
            network,
            disks,
            images,
            base_gate: Default::default(),
            port,
            url_origin: std::sync::OnceLock::new(),
            memory_overrides: Default::default(),
            chunks,
            checkpoint_locks: Default::default(),
            connectors,
            mcp,
            in_process,
            host_apis: Default::default(),
            metrics: Default::default(),
            views_lock: Default::default(),
            views_pending: Default::default(),
        })
    }

    /// What the runtime needs to run `rec`.
    pub fn spec(&self, rec: &SpriteRecord) -> SpriteSpec {
        let config: api::SpriteConfig = serde_json::from_str(&rec.config).unwrap_or_default();
        // The resources policy wins over the size asked for at creation. Both were
        // range-checked when they came in; the clamp keeps records from before that safe.
        let policy_mb = self
            .memory_overrides
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&rec.id)
            .copied();
        let memory_limit = policy_mb
            .or(config.ram_mb)
            .map(|mb| mb.clamp(crate::limits::MIN_MEMORY_MB, self.cfg.limits.max_memory_mb) << 20)
            .unwrap_or(self.cfg.memory_limit);
        SpriteSpec {
            id: rec.id.clone(),
            hostname: rec.name.clone(),
            disk: self.cfg.sprite_dir(&rec.id).join("disk.ext4"),
            uid_base: UID_BASE + rec.uid_slot * UID_RANGE,
            memory_limit,
            pids_limit: self.cfg.pids_limit,
            disk_limit: config.storage_gb.map(|gb| gb.saturating_mul(1_000_000_000)),
            cpu_limit: config.cpus,
            env: {
                let mut env: std::collections::BTreeMap<String, String> =
                    serde_json::from_str(&rec.environment).unwrap_or_default();
                // Where connectors are called from inside (answered by the sprite's resolver).
                if self.network.is_some() {
                    env.insert(
                        "SPRITES_GATEWAY_URL".into(),
                        sprites_gateway::GATEWAY_URL.into(),
                    );
                }
                env
            },
            host_dir: Some(crate::hostapi::host_dir(&self.cfg.data_dir, &rec.id)),
            base: rec
                .base_image
                .as_deref()
                .and_then(|id| self.images.rootfs_of(id)),
        }
    }

    /// The public URL of a sprite: `<name>-<org id>`, as Sprites does. Org ids are generated
    /// and have no dash, so the label splits at its last dash into exactly one sprite
    /// (slugs are chosen by users and may contain dashes: `<name>-<slug>` can collide).
    pub fn url(&self, org: &Org, name: &str) -> String {
        let listen = self.port.load(std::sync::atomic::Ordering::Relaxed);
        let (scheme, port) = match self.url_origin.get() {
            Some((s, p)) => (s.as_str(), *p),
            None => (self.cfg.scheme, listen),
        };
        let label = format!("{name}-{}.{}", org.id, self.cfg.url_domain);
        match (scheme, port) {
            ("https", 443) | ("http", 80) => format!("{scheme}://{label}"),
            _ => format!("{scheme}://{label}:{port}"),
        }
    }

    /// Public JSON of a record.
    pub async fn to_api(&self, org: &Org, rec: &SpriteRecord) -> api::Sprite {
        let status = match self.runtime.state(&self.spec(rec)).await {
            State::Running => api::SpriteStatus::Running,
            State::Warm => api::SpriteStatus::Warm,
            State::Cold => api::SpriteStatus::Cold,
        };
        let fmt = |t: Option<i64>| t.map(api::timefmt::format_millis);
        api::Sprite {
            id: rec.id.clone(),
            name: rec.name.clone(),
            organization: org.slug.clone(),
            org_slug: org.slug.clone(),
            status,
            url: self.url(org, &rec.name),
            url_settings: api::UrlSettings {
                auth: Some(rec.url_auth.clone()),
                private_access: rec.private_access.clone(),
            },
            created_at: api::timefmt::format_millis(rec.created_at),
            updated_at: api::timefmt::format_millis(rec.updated_at),
            labels: serde_json::from_str(&rec.labels).unwrap_or_default(),
            last_running_at: fmt(rec.last_running_at),
            last_warming_at: fmt(rec.last_warming_at),
            last_started_at: fmt(rec.last_started_at),
            last_active_at: fmt(rec.last_active_at),
            config: serde_json::from_str(&rec.config).unwrap_or_default(),
            environment: serde_json::from_str(&rec.environment).unwrap_or_default(),
            bucket_name: None,
            primary_region: Some("local".into()),
            version: Some(api::SPRITE_VERSION.into()),
            environment_version: Some(env!("CARGO_PKG_VERSION").into()),
            base_image: rec.base_image.clone(),
            idle: self.idle_of(&rec.id).await,
        }
    }

    async fn idle_of(&self, id: &str) -> Option<api::IdleSettings> {
        let id = id.to_string();
        let body = self
            .store
            .with(move |c| store::policy(c, &id, "idle"))
            .await
            .ok()
            .flatten()?;
        serde_json::from_str(&body).ok()
    }

    /// Stores and applies a sprite's own idle times (`None`: the server's again). Each is
    /// between 1 s and 7 days; a missing one keeps the server's.
    async fn set_idle(
        &self,
        rec: &SpriteRecord,
        idle: Option<api::IdleSettings>,
    ) -> Result<(), ApiError> {
        let parse = |v: &Option<String>,
                     what: &str|
         -> Result<Option<std::time::Duration>, ApiError> {
            let Some(v) = v else { return Ok(None) };
            let d = api::exec::parse_duration(v)
                .map_err(|m| ApiError::new(ErrorCode::BadRequest, format!("idle.{what}: {m}")))?;
            if d < std::time::Duration::from_secs(1)
                || d > std::time::Duration::from_secs(7 * 86_400)
            {
                return Err(ApiError::new(
                    ErrorCode::BadRequest,
                    format!("idle.{what} must be between 1s and 7d"),
                ));
            }
            Ok(Some(d))
        };
        let body = match &idle {
            Some(i) => {
                parse(&i.warm_after, "warm_after")?;
                parse(&i.cold_after, "cold_after")?;
                Some(serde_json::to_string(i).map_err(ApiError::internal)?)
            }
            None => None,
        };
        let id = rec.id.clone();
        self.store
            .with(move |c| store::set_policy(c, &id, "idle", body.as_deref()))
            .await?;
        self.apply_idle(&rec.id, idle.as_ref());
        Ok(())
    }

    /// Hands a sprite's idle times to the runtime.
    pub(crate) fn apply_idle(&self, id: &str, idle: Option<&api::IdleSettings>) {
        let d = |v: &Option<String>, dflt: std::time::Duration| {
            v.as_deref()
                .and_then(|v| api::exec::parse_duration(v).ok())
                .unwrap_or(dflt)
        };
        let times = idle.map(|i| {
            (
                d(&i.warm_after, self.cfg.idle.0),
                d(&i.cold_after, self.cfg.idle.1),
            )
        });
        self.runtime.set_idle(id, times);
    }

    /// The record of `name` in `org`, or 404.
    pub async fn find(&self, org: &Org, name: &str) -> Result<SpriteRecord, ApiError> {
        let (org_id, n) = (org.id.clone(), name.to_string());
        self.store
            .with(move |c| store::sprite_by_name(c, &org_id, &n))
            .await?
            .ok_or_else(|| ApiError::sprite_not_found(name))
    }

    /// Creates and boots a sprite.
    pub async fn create(
        self: &Arc<Self>,
        org: &Org,
        req: api::CreateSpriteRequest,
    ) -> Result<api::Sprite, ApiError> {
        api::names::validate_sprite_name(&req.name)
            .map_err(|m| ApiError::new(ErrorCode::InvalidName, m))?;
        if let Some(c) = &req.config {
            self.cfg
                .limits
                .check_config(c)
                .map_err(|m| ApiError::new(ErrorCode::BadRequest, m))?;
        }
        let auth = match req.url_settings.as_ref().and_then(|u| u.auth.as_deref()) {
            None | Some("sprite") | Some("default") => "sprite",
            Some("public") => "public",
            Some(other) => {
                return Err(ApiError::new(
                    ErrorCode::BadRequest,
                    format!("url_settings.auth must be \"sprite\" or \"public\", not {other:?}"),
                ))
            }
        };
        // A disk from another sprite or a template: resolved before the record exists, so a
        // bad source leaves nothing behind.
        let source = match &req.source {
            Some(src) => Some(self.resolve_source(org, src).await?),
            None => None,
        };
        let id = format!("sprite-{}", uuid::Uuid::new_v4());
        if let Some(r) = &source {
            let written = self.materialize_disk(&id, r).await;
            self.drop_temporary(org, r).await;
            if let Err(e) = written {
                let _ = std::fs::remove_dir_all(self.cfg.sprite_dir(&id));
                return Err(e);
            }
        }
        let _gate = self.base_gate.read().await;
        let base = match source.as_ref().and_then(|r| r.base_image.clone()) {
            Some(b) => b,
            None => self.claim_current_base()?,
        };
        let now = now_ms();
        let rec = SpriteRecord {
            id: id.clone(),
            org_id: org.id.clone(),
            name: req.name.clone(),
            uid_slot: 0,
            url_auth: auth.to_string(),
            private_access: req
                .url_settings
                .as_ref()
                .and_then(|u| u.private_access.clone()),
            labels: serde_json::to_string(&req.labels.unwrap_or_default())
                .map_err(ApiError::internal)?,
            config: serde_json::to_string(&req.config.unwrap_or_default())
                .map_err(ApiError::internal)?,
            environment: serde_json::to_string(&req.environment.unwrap_or_default())
                .map_err(ApiError::internal)?,
            created_at: now,
            updated_at: now,
            last_running_at: None,
            last_warming_at: None,
            last_started_at: None,
            last_active_at: None,
            base_image: Some(base),
        };
        let inserted = self.store.with(move |c| store::insert_sprite(c, rec)).await;
        drop(_gate);
        let mut rec = match inserted {
            Ok(r) => r,
            Err(e) => {
                if source.is_some() {
                    let _ = std::fs::remove_dir_all(self.cfg.sprite_dir(&id));
                }
                return Err(e.into());
            }
        };
        if let Err(e) = self.serve_host_api(&rec) {
            let id = rec.id.clone();
            let _ = self.store.with(move |c| store::delete_sprite(c, &id)).await;
            return Err(ApiError::internal(e));
        }
        if let Err(e) = self.boot(&rec).await {
            // Leave nothing behind: the name stays free for a retry.
            let _ = self.runtime.destroy(&self.spec(&rec)).await;
            let id = rec.id.clone();
            let _ = self.store.with(move |c| store::delete_sprite(c, &id)).await;
            let _ = std::fs::remove_dir_all(self.cfg.sprite_dir(&rec.id));
            return Err(e);
        }
        let now = now_ms();
        rec.last_started_at = Some(now);
        rec.last_running_at = Some(now);
        let saved = rec.clone();
        self.store
            .with(move |c| store::update_sprite(c, &saved))
            .await?;
        Ok(self.to_api(org, &rec).await)
    }

    /// Makes sure the disk exists (a crash may have come between record and disk) and boots.
    async fn boot(&self, rec: &SpriteRecord) -> Result<(), ApiError> {
        let spec = self.spec(rec);
        if !spec.disk.exists() {
            let disks = self.disks.clone();
            let disk = spec.disk.clone();
            tokio::task::spawn_blocking(move || disks.create(&disk))
                .await
                .map_err(ApiError::internal)?
                .map_err(ApiError::internal)?;
        }
        self.runtime.ensure_running(&spec).await?;
        Ok(())
    }

    /// Opens a stream to the agent of `name`, waking the sprite, and holds it awake until the
    /// returned [`Hold`] drops.
    pub async fn connect(&self, org: &Org, name: &str) -> Result<(AgentStream, Hold), ApiError> {
        let (spec, hold) = self.wake(org, name).await?;
        Ok((self.runtime.connect(&spec).await?, hold))
    }

    /// Boots the sprite if it is cold and keeps it awake while the [`Hold`] lives. (A warm
    /// sprite is resumed by whatever reaches it next.)
    pub async fn wake(&self, org: &Org, name: &str) -> Result<(SpriteSpec, Hold), ApiError> {
        let rec = self.find(org, name).await?;
        let spec = self.spec(&rec);
        let hold = self.runtime.hold(&spec);
        if self.runtime.state(&spec).await == State::Cold {
            self.boot(&rec).await?;
        }
        Ok((spec, hold))
    }

    /// A policy document of `kind` (stored, or the default).
    pub async fn get_policy(
        &self,
        org: &Org,
        name: &str,
        kind: &str,
    ) -> Result<serde_json::Value, ApiError> {
        let rec = self.find(org, name).await?;
        let (id, k) = (rec.id.clone(), kind.to_string());
        let stored = self.store.with(move |c| store::policy(c, &id, &k)).await?;
        if let Some(body) = stored {
            return serde_json::from_str(&body).map_err(ApiError::internal);
        }
        Ok(match kind {
            "network" => serde_json::json!({ "rules": [] }),
            "privileges" => {
                serde_json::json!({ "profile": "", "devices": [], "noNewPrivileges": false })
            }
            _ => {
                let mb = self.spec(&rec).memory_limit >> 20;
                serde_json::json!({ "memory": { "limit_mb": mb, "autoscale": false } })
            }
        })
    }

    /// Validates, stores and applies a policy document; `None` reverts to the default.
    pub async fn set_policy(
        &self,
        org: &Org,
        name: &str,
        kind: &str,
        body: Option<serde_json::Value>,
    ) -> Result<(), ApiError> {
        let rec = self.find(org, name).await?;
        let bad = |m: String| ApiError::new(ErrorCode::BadRequest, m);
        match (kind, &body) {
            ("network", Some(b)) => {
                let p: sprites_network::Policy = serde_json::from_value(b.clone())
                    .map_err(|e| bad(format!("invalid policy: {e}")))?;
                p.compile()
                    .map_err(|e| bad(format!("invalid policy: {e}")))?;
            }
            ("resources", Some(b)) if b.get("memory").is_some() => {
                let mb = b["memory"]["limit_mb"]
                    .as_u64()
                    .ok_or_else(|| bad("memory.limit_mb must be a number of MiB".into()))?;
                self.cfg
                    .limits
                    .check_memory_mb("memory.limit_mb", mb)
                    .map_err(bad)?;
            }
            ("privileges", Some(b)) if !b.is_object() => {
                return Err(bad("privileges policy must be an object".into()))
            }
            _ => {}
        }
        let (id, k) = (rec.id.clone(), kind.to_string());
        let text = body.as_ref().map(|b| b.to_string());
        self.store
            .with(move |c| store::set_policy(c, &id, &k, text.as_deref()))
            .await?;
        self.apply_policy(&rec.id, kind, body.as_ref());
        if kind == "network" {
            // The read-only copy inside the sprite, when it runs.
            let spec = self.spec(&rec);
            if self.runtime.state(&spec).await == State::Running {
                let doc = body
                    .clone()
                    .unwrap_or_else(|| serde_json::json!({ "rules": [] }));
                if let Ok(s) = self.runtime.connect(&spec).await {
                    let _ = sprites_runtime::agent::put_policy(s, "network", &doc).await;
                }
            }
        }
        if kind == "resources" {
            let spec = self.spec(&rec);
            if self.runtime.state(&spec).await != State::Cold {
                self.runtime.backend().update_limits(&spec).await?;
            }
        }
        Ok(())
    }

    /// Puts a stored policy into effect in this process.
    fn apply_policy(&self, id: &str, kind: &str, body: Option<&serde_json::Value>) {
        match kind {
            "network" => {
                if let Some(net) = &self.network {
                    let p = body
                        .and_then(|b| serde_json::from_value(b.clone()).ok())
                        .unwrap_or_default();
                    if let Err(e) = net.set_policy(id, p) {
                        tracing::warn!(%id, "applying network policy: {e}");
                    }
                }
            }
            "resources" => {
                let mut m = self
                    .memory_overrides
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                match body.and_then(|b| b["memory"]["limit_mb"].as_u64()) {
                    Some(mb) => m.insert(id.to_string(), mb),
                    None => m.remove(id),
                };
            }
            _ => {}
        }
    }

    /// Loads every stored policy (at startup, before sprites are adopted).
    pub async fn load_policies(&self) -> Result<(), ApiError> {
        for kind in POLICY_KINDS {
            let k = kind.to_string();
            let all = self.store.with(move |c| store::policies(c, &k)).await?;
            for (id, body) in all {
                let v: Option<serde_json::Value> = serde_json::from_str(&body).ok();
                self.apply_policy(&id, kind, v.as_ref());
            }
        }
        for (id, body) in self.store.with(|c| store::policies(c, "idle")).await? {
            let i: Option<api::IdleSettings> = serde_json::from_str(&body).ok();
            self.apply_idle(&id, i.as_ref());
        }
        Ok(())
    }

    /// Registers every sprite with the runtime (adopting the ones still running) and records
    /// lifecycle transitions in the store as they happen.
    pub async fn adopt_and_track(self: &std::sync::Arc<Self>) -> Result<(), ApiError> {
        let mut events = self.runtime.subscribe();
        let recs = self.store.with(|c| store::all_sprites(c)).await?;
        for rec in &recs {
            let st = self.runtime.state(&self.spec(rec)).await;
            tracing::debug!(id = %rec.id, state = ?st, "adopted");
        }
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                let t = match events.recv().await {
                    Ok(t) => t,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(_) => return,
                };
                let now = now_ms();
                let (running, warm) = (t.state == State::Running, t.state == State::Warm);
                let id = t.id;
                let res = me
                    .store
                    .with(move |c| store::record_transition(c, &id, running, warm, now))
                    .await;
                if let Err(e) = res {
                    tracing::warn!("recording transition: {e}");
                }
            }
        });
        Ok(())
    }

    /// Lists a page of sprites.
    pub async fn list(
        &self,
        org: &Org,
        prefix: String,
        after: Option<String>,
        limit: usize,
    ) -> Result<(Vec<api::Sprite>, bool), ApiError> {
        let org_id = org.id.clone();
        let mut recs = self
            .store
            .with(move |c| store::list_sprites(c, &org_id, &prefix, after.as_deref(), limit + 1))
            .await?;
        let more = recs.len() > limit;
        recs.truncate(limit);
        let mut out = Vec::with_capacity(recs.len());
        for r in &recs {
            out.push(self.to_api(org, r).await);
        }
        Ok((out, more))
    }

    /// Counts of an org's sprites by status.
    pub async fn counts(&self, org: &Org) -> Result<(u64, u64, u64), ApiError> {
        let org_id = org.id.clone();
        let recs = self
            .store
            .with(move |c| store::list_sprites(c, &org_id, "", None, usize::MAX >> 1))
            .await?;
        let (mut r, mut w, mut c) = (0, 0, 0);
        for rec in &recs {
            match self.runtime.state(&self.spec(rec)).await {
                State::Running => r += 1,
                State::Warm => w += 1,
                State::Cold => c += 1,
            }
        }
        Ok((r, w, c))
    }

    /// Applies a partial update.
    pub async fn update(
        &self,
        org: &Org,
        name: &str,
        req: api::UpdateSpriteRequest,
    ) -> Result<api::Sprite, ApiError> {
        let mut rec = self.find(org, name).await?;
        if let Some(u) = req.url_settings {
            if let Some(a) = u.auth {
                rec.url_auth = match a.as_str() {
                    "sprite" | "default" => "sprite".into(),
                    "public" => "public".into(),
                    other => {
                        return Err(ApiError::new(
                            ErrorCode::BadRequest,
                            format!(
                                "url_settings.auth must be \"sprite\" or \"public\", not {other:?}"
                            ),
                        ))
                    }
                };
            }
            if u.private_access.is_some() {
                rec.private_access = u.private_access;
            }
        }
        if req.clear_labels == Some(true) {
            rec.labels = "[]".into();
        }
        if let Some(l) = req.labels {
            rec.labels = serde_json::to_string(&l).map_err(ApiError::internal)?;
        }
        if let Some(idle) = req.idle {
            self.set_idle(&rec, idle).await?;
        }
        rec.updated_at = now_ms();
        let saved = rec.clone();
        self.store
            .with(move |c| store::update_sprite(c, &saved))
            .await?;
        Ok(self.to_api(org, &rec).await)
    }

    /// This server's tag in base images' claims: a hash of its data directory.
    fn image_owner(&self) -> String {
        use sha2::Digest;
        let h = sha2::Sha256::digest(self.cfg.data_dir.to_string_lossy().as_bytes());
        h.iter().take(8).map(|b| format!("{b:02x}")).collect()
    }

    /// The base new sprites get now, claimed for this server (under the base gate, which
    /// keeps [`Sprites::collect_bases`] from removing it before the sprite is recorded).
    fn claim_current_base(&self) -> Result<String, ApiError> {
        let id = self.current_base()?;
        self.images
            .claim(&id, &self.image_owner())
            .map_err(ApiError::internal)?;
        Ok(id)
    }

    /// The id of the base image new sprites are made on.
    pub fn current_base(&self) -> Result<String, ApiError> {
        self.images
            .current()
            .map(|b| b.id().to_string())
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::Unavailable,
                    "no base image is built (spritesd image build makes one)",
                )
            })
    }

    /// Moves a sprite to the current base image, keeping its disk (what it changed stays on
    /// top of the new base). A running sprite is stopped for the move and booted again.
    pub async fn upgrade(&self, org: &Org, name: &str) -> Result<api::UpgradeResult, ApiError> {
        let mut rec = self.find(org, name).await?;
        let _gate = self.base_gate.read().await;
        let to = self.claim_current_base()?;
        let from = rec.base_image.clone();
        if from.as_deref() == Some(to.as_str()) {
            return Ok(api::UpgradeResult {
                name: rec.name,
                status: "current".into(),
                upgraded: false,
                from,
                to,
            });
        }
        let spec = self.spec(&rec);
        rec.base_image = Some(to.clone());
        let next = self.spec(&rec);
        let (id, base) = (rec.id.clone(), to.clone());
        let store = self.store.clone();
        self.runtime
            .while_stopped(&spec, &next, || async move {
                store
                    .with(move |c| store::set_sprite_base(c, &id, &base))
                    .await
            })
            .await??;
        tracing::info!(sprite = %rec.id, from = ?from, to = %to, "upgraded to a new base image");
        Ok(api::UpgradeResult {
            name: rec.name,
            status: "upgraded".into(),
            upgraded: true,
            from,
            to,
        })
    }

    /// Gives sprites from before image versions the current base, and removes base images
    /// no sprite or checkpoint uses any more (the current one and each profile's latest
    /// stay).
    pub async fn collect_bases(&self) -> Result<Vec<String>, ApiError> {
        if let Some(cur) = self.images.current() {
            let id = cur.id().to_string();
            let n = self
                .store
                .with(move |c| store::adopt_unversioned(c, &id))
                .await?;
            if n > 0 {
                tracing::info!(
                    sprites = n,
                    base = cur.id(),
                    "sprites from before image versions keep the base they were made on"
                );
            }
        }
        let in_use = self.store.with(|c| store::bases_in_use(c)).await?;
        let images = self.images.clone();
        let owner = self.image_owner();
        let _gate = self.base_gate.write().await;
        let removed = tokio::task::spawn_blocking(move || images.remove_unused(&owner, &in_use))
            .await
            .map_err(ApiError::internal)?
            .map_err(ApiError::internal)?;
        for id in &removed {
            tracing::info!(base = %id, "removed a base image nothing uses");
        }
        Ok(removed)
    }

    /// Stops the sprite's processes and boots it again; the disk is kept.
    pub async fn restart(&self, org: &Org, name: &str) -> Result<SpriteRecord, ApiError> {
        let mut rec = self.find(org, name).await?;
        self.runtime.stop(&self.spec(&rec)).await?;
        self.boot(&rec).await?;
        let now = now_ms();
        rec.last_started_at = Some(now);
        rec.last_running_at = Some(now);
        let saved = rec.clone();
        self.store
            .with(move |c| store::update_sprite(c, &saved))
            .await?;
        Ok(rec)
    }

    /// Stops a sprite and removes everything it owns.
    pub async fn delete(&self, org: &Org, name: &str) -> Result<(), ApiError> {
        let rec = self.find(org, name).await?;
        self.runtime.destroy(&self.spec(&rec)).await?;
        self.delete_all_checkpoints(&rec).await?;
        self.stop_host_api(&rec.id);
        let id = rec.id.clone();
        self.store
            .with(move |c| store::delete_sprite(c, &id))
            .await?;
        let dir = self.cfg.sprite_dir(&rec.id);
        tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir))
            .await
            .map_err(ApiError::internal)?
            .or_else(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    Ok(())
                } else {
                    Err(e)
                }
            })
            .map_err(ApiError::internal)?;
        Ok(())
    }

    /// Serves the inside API of every sprite (at startup).
    pub async fn serve_host_apis(self: &Arc<Self>) {
        let recs = match self.store.with(|c| store::all_sprites(c)).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("listing sprites: {e}");
                return;
            }
        };
        for rec in recs {
            if let Err(e) = self.serve_host_api(&rec) {
                tracing::warn!(id = %rec.id, "inside API not served: {e}");
            }
        }
    }

    /// Removes disk directories whose record is gone (a crash between the two deletions).
    pub fn collect_garbage(&self) -> Result<(), ApiError> {
        let known: std::collections::HashSet<String> = self
            .store
            .blocking(|c| store::all_sprites(c))?
            .into_iter()
            .map(|r| r.id)
            .collect();
        if let Ok(dir) = std::fs::read_dir(self.cfg.data_dir.join("host")) {
            for e in dir.flatten() {
                let id = format!("sprite-{}", e.file_name().to_string_lossy());
                if !known.contains(&id) {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let Ok(dir) = std::fs::read_dir(self.cfg.disks_root.join("sprites")) else {
            return Ok(());
        };
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("sprite-") && !known.contains(&name) {
                tracing::info!(id = %name, "removing files of a deleted sprite");
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        Ok(())
    }
}
