//! Sprites made from other sprites' disks: forks (`source: {sprite, checkpoint?}`) and org
//! templates (`source: {template}`, `/v1/templates`). A checkpoint's manifest is
//! materialized as the new sprite's disk (reflink clones of the chunks where the store is
//! local on a reflink filesystem, so a fork costs no space until either side writes). A fork
//! of a sprite as it is now takes a checkpoint for the purpose, the way every checkpoint is
//! taken (the disk held still), and deletes it once the new disk is written.

use std::sync::Arc;

use sprites_api::{self as api, ErrorCode};

use crate::error::ApiError;
use crate::service::Sprites;
use crate::store::{self, now_ms, Org, TemplateRecord};

/// A source resolved to a manifest.
pub(crate) struct Resolved {
    /// Object key of the manifest.
    pub manifest: String,
    /// Base image the disk belongs over.
    pub base_image: Option<String>,
    /// Source sprite name and checkpoint id (for templates' records).
    pub sprite: String,
    /// Checkpoint id.
    pub checkpoint: String,
    /// Non-zero bytes.
    pub bytes: i64,
    /// A checkpoint made only for this (deleted after use).
    pub temporary: Option<(String, String)>,
    /// The source sprite (id) and disk, whose tracked reference may be this very checkpoint.
    pub source_disk: Option<(String, std::path::PathBuf)>,
}

impl Sprites {
    /// The manifest `src` names in `org`.
    pub(crate) async fn resolve_source(
        self: &Arc<Self>,
        org: &Org,
        src: &api::SpriteSource,
    ) -> Result<Resolved, ApiError> {
        match (&src.template, &src.sprite) {
            (Some(_), Some(_)) => Err(ApiError::new(
                ErrorCode::BadRequest,
                "source takes a template or a sprite, not both",
            )),
            (Some(t), None) => {
                let t = self.template_record(org, t).await?;
                Ok(Resolved {
                    manifest: t.manifest,
                    base_image: t.base_image,
                    sprite: t.source_sprite,
                    checkpoint: t.source_checkpoint,
                    bytes: t.bytes,
                    temporary: None,
                    source_disk: None,
                })
            }
            (None, Some(name)) => {
                let rec = self.find(org, name).await?;
                let (id, temporary) = match &src.checkpoint {
                    Some(id) => (id.clone(), None),
                    None => {
                        // A consistent snapshot of the sprite as it is, running or not.
                        let (tx, mut rx) = tokio::sync::mpsc::channel(64);
                        tokio::spawn(async move { while rx.recv().await.is_some() {} });
                        let id = self
                            .create_checkpoint(
                                &rec,
                                Some(format!("snapshot for a fork of {name}")),
                                &tx,
                            )
                            .await?;
                        (id.clone(), Some((name.clone(), id)))
                    }
                };
                let (sid, cid) = (rec.id.clone(), id.clone());
                let ck = self
                    .store
                    .with(move |c| store::checkpoint(c, &sid, &cid))
                    .await?
                    .ok_or_else(|| {
                        ApiError::new(
                            ErrorCode::NotFound,
                            format!("checkpoint {id:?} of sprite {name:?} not found"),
                        )
                    })?;
                Ok(Resolved {
                    source_disk: Some((rec.id.clone(), self.spec(&rec).disk)),
                    manifest: ck.manifest,
                    base_image: ck.base_image.or(rec.base_image),
                    sprite: name.clone(),
                    checkpoint: ck.id,
                    bytes: ck.bytes,
                    temporary,
                })
            }
            (None, None) => Err(ApiError::new(
                ErrorCode::BadRequest,
                "source needs a sprite (and optionally a checkpoint) or a template",
            )),
        }
    }

    /// Deletes the checkpoint a fork of a live sprite made, once its disk is written.
    pub(crate) async fn drop_temporary(self: &Arc<Self>, org: &Org, r: &Resolved) {
        if let Some((name, id)) = &r.temporary {
            if let Err(e) = self.delete_checkpoint(org, name, id).await {
                tracing::warn!(sprite = %name, checkpoint = %id, "removing a fork's snapshot: {}", e.message);
            }
        }
    }

    /// Writes the disk of `r` as the disk of sprite `id` (to a temporary name, then renamed).
    /// Done before the sprite's record exists: a crash leaves only a directory without a
    /// record, which the next start removes, never a sprite with half a disk.
    pub(crate) async fn materialize_disk(&self, id: &str, r: &Resolved) -> Result<(), ApiError> {
        let manifest = self
            .chunks
            .read_manifest(&r.manifest)
            .await
            .map_err(|e| ApiError::internal(format!("reading the source's disk: {e}")))?;
        let disk = self.cfg.sprite_dir(id).join("disk.ext4");
        let dir = disk
            .parent()
            .map(std::path::Path::to_path_buf)
            .unwrap_or_default();
        std::fs::create_dir_all(&dir).map_err(ApiError::internal)?;
        let tmp = disk.with_extension("ext4.fork");
        // The source's latest checkpoint is also its tracked reference: one reflink clone.
        let cloned = match &r.source_disk {
            Some((id, src)) => {
                // A checkpoint of the source replaces its reference: not while we clone it.
                let lock = self.checkpoint_lock(id);
                let _g = lock.lock().await;
                let (src, key, t) = (src.clone(), r.manifest.clone(), tmp.clone());
                tokio::task::spawn_blocking(move || {
                    sprites_storage::tracking::clone_reference(&src, &key, &t)
                })
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or(false)
            }
            None => false,
        };
        if !cloned {
            self.chunks
                .materialize(&manifest, &tmp)
                .await
                .map_err(|e| ApiError::internal(format!("writing the new disk: {e}")))?;
        }
        std::fs::rename(&tmp, &disk).map_err(ApiError::internal)?;
        Ok(())
    }

    async fn template_record(&self, org: &Org, name: &str) -> Result<TemplateRecord, ApiError> {
        let (o, n) = (org.id.clone(), name.to_string());
        self.store
            .with(move |c| store::template(c, &o, &n))
            .await?
            .ok_or_else(|| {
                ApiError::new(ErrorCode::NotFound, format!("template {name:?} not found"))
            })
    }

    fn template_api(t: &TemplateRecord) -> api::Template {
        api::Template {
            name: t.name.clone(),
            source_sprite: t.source_sprite.clone(),
            source_checkpoint: t.source_checkpoint.clone(),
            size_bytes: t.bytes.max(0) as u64,
            created_at: api::timefmt::format_millis(t.created_at),
        }
    }

    /// `PUT /v1/templates/{name}`: names a checkpoint (or a snapshot taken now) for the org.
    pub async fn put_template(
        self: &Arc<Self>,
        org: &Org,
        name: &str,
        req: api::PutTemplateRequest,
    ) -> Result<api::Template, ApiError> {
        api::names::validate_sprite_name(name).map_err(|m| {
            ApiError::new(
                ErrorCode::InvalidName,
                m.replace("sprite name", "template name"),
            )
        })?;
        let src = api::SpriteSource {
            sprite: Some(req.sprite),
            checkpoint: req.checkpoint,
            template: None,
        };
        let r = self.resolve_source(org, &src).await?;
        // A copy of the manifest of its own: the source's checkpoints and the sprite itself
        // can go, the template's chunks stay.
        let key = format!(
            "manifests/templates/{}/{name}-{}.json",
            org.id,
            uuid::Uuid::new_v4().simple()
        );
        let pinned = self.chunks.pin(&r.manifest, &key).await;
        self.drop_temporary(org, &r).await;
        pinned.map_err(|e| ApiError::internal(format!("keeping the template's disk: {e}")))?;
        let t = TemplateRecord {
            org_id: org.id.clone(),
            name: name.to_string(),
            source_sprite: r.sprite.clone(),
            source_checkpoint: if r.temporary.is_some() {
                "now".into()
            } else {
                r.checkpoint.clone()
            },
            manifest: key.clone(),
            base_image: r.base_image.clone(),
            bytes: r.bytes,
            created_at: now_ms(),
        };
        let saved = t.clone();
        let old = match self
            .store
            .with(move |c| store::put_template(c, &saved))
            .await
        {
            Ok(old) => old,
            Err(e) => {
                let _ = self.chunks.remove(&key).await;
                return Err(e.into());
            }
        };
        if let Some(old) = old {
            if let Err(e) = self.chunks.remove(&old).await {
                tracing::warn!(
                    template = name,
                    "removing the replaced template's disk: {e}"
                );
            }
        }
        Ok(Self::template_api(&t))
    }

    /// The org's templates.
    pub async fn list_templates(&self, org: &Org) -> Result<Vec<api::Template>, ApiError> {
        let o = org.id.clone();
        let rows = self.store.with(move |c| store::templates(c, &o)).await?;
        Ok(rows.iter().map(Self::template_api).collect())
    }

    /// One template.
    pub async fn get_template(&self, org: &Org, name: &str) -> Result<api::Template, ApiError> {
        Ok(Self::template_api(&self.template_record(org, name).await?))
    }

    /// Deletes a template and the chunks only it kept.
    pub async fn delete_template(&self, org: &Org, name: &str) -> Result<(), ApiError> {
        let (o, n) = (org.id.clone(), name.to_string());
        let key = self
            .store
            .with(move |c| store::delete_template(c, &o, &n))
            .await?
            .ok_or_else(|| {
                ApiError::new(ErrorCode::NotFound, format!("template {name:?} not found"))
            })?;
        if let Err(e) = self.chunks.remove(&key).await {
            tracing::warn!(template = name, "removing a template's disk: {e}");
        }
        Ok(())
    }

    /// `POST /v1/sprites/{name}/sleep`.
    pub async fn sleep(
        &self,
        org: &Org,
        name: &str,
        req: api::SleepRequest,
    ) -> Result<api::Sprite, ApiError> {
        let cold = match req.state.as_deref() {
            None | Some("warm") => false,
            Some("cold") => true,
            Some(other) => {
                return Err(ApiError::new(
                    ErrorCode::BadRequest,
                    format!("state must be warm or cold, not {other:?}"),
                ))
            }
        };
        let rec = self.find(org, name).await?;
        let spec = self.spec(&rec);
        match self.runtime.sleep(&spec, cold, req.force.unwrap_or(false)).await? {
            Some(_) => Ok(self.to_api(org, &rec).await),
            None => Err(ApiError::new(
                ErrorCode::Conflict,
                format!("sprite {name:?} is busy (a request, task or attached session keeps it awake); pass force to sleep anyway"),
            )),
        }
    }
}
