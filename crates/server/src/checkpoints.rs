//! Checkpoints (§6): consistent snapshots of a sprite's disk in the chunk store, restore, and
//! the progress streams the clients read. The disk work is `sprites_storage::checkpoint`'s;
//! this module decides when a sprite is frozen or stopped and what is recorded where.

use std::sync::Arc;
use std::time::Instant;

use sprites_api::checkpoint::{self as ck, Checkpoint, StreamEvent};
use sprites_api::{timefmt, ErrorCode};
use sprites_storage::checkpoint::{PendingCheckpoint, CHUNK_SIZE};
use sprites_storage::tracking::{disk_changes, Changes, Snap};
use sprites_storage::StorageError;
use tokio::sync::mpsc;

use crate::error::ApiError;
use crate::service::Sprites;
use crate::store::{self, now_ms, CheckpointRecord, Org, SpriteRecord};

/// Sink of progress lines; a client that went away does not stop the operation.
pub type Progress = mpsc::Sender<StreamEvent>;

fn now() -> String {
    timefmt::format_millis(now_ms())
}

async fn say(tx: &Progress, msg: impl Into<String>) {
    let _ = tx.send(StreamEvent::info(msg, now())).await;
}

/// What was done while the disk was still.
enum Taken<'a> {
    /// It was read: the snapshot is ready to commit, with the clone that tracks changes.
    Read(PendingCheckpoint<'a>, Option<Snap>),
    /// It was cloned: the clone is read now.
    Clone(Snap, Option<Changes>),
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1 << 20) as f64)
}

fn to_api(r: &CheckpointRecord) -> Checkpoint {
    Checkpoint {
        id: r.id.clone(),
        create_time: timefmt::format_millis(r.created_at),
        comment: Some(r.comment.clone().unwrap_or_default()),
        history: serde_json::from_str(&r.history).ok(),
        is_auto: Some(false),
        source_id: r.source_id.clone(),
        health: Some(String::new()),
    }
}

/// Checkpoints a sprite shows at `/.sprite/checkpoints/<id>` (the newest ones).
pub const VIEWS_KEPT: usize = 5;

/// Quiet time after a sprite's last checkpoint change before its views are written.
pub const VIEWS_QUIET: std::time::Duration = std::time::Duration::from_secs(2);

fn storage_err(e: sprites_storage::StorageError) -> ApiError {
    ApiError::internal(e)
}

impl Sprites {
    pub(crate) fn checkpoint_lock(&self, sprite_id: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.checkpoint_locks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(sprite_id.to_string())
            .or_default()
            .clone()
    }

    async fn checkpoint_record(
        &self,
        rec: &SpriteRecord,
        id: &str,
    ) -> Result<CheckpointRecord, ApiError> {
        let (sid, cid) = (rec.id.clone(), id.to_string());
        self.store
            .with(move |c| store::checkpoint(c, &sid, &cid))
            .await?
            .ok_or_else(|| {
                ApiError::new(ErrorCode::NotFound, format!("checkpoint {id:?} not found"))
            })
    }

    /// The sprite's checkpoints, newest first, after the `Current` pseudo-entry.
    pub async fn list_checkpoints(
        &self,
        org: &Org,
        name: &str,
        history: Option<&str>,
    ) -> Result<Vec<Checkpoint>, ApiError> {
        let rec = self.find(org, name).await?;
        self.list_checkpoints_of(&rec, history).await
    }

    /// [`Sprites::list_checkpoints`] of a record.
    pub async fn list_checkpoints_of(
        &self,
        rec: &SpriteRecord,
        history: Option<&str>,
    ) -> Result<Vec<Checkpoint>, ApiError> {
        let sid = rec.id.clone();
        let (rows, head) = self
            .store
            .with(move |c| {
                Ok((
                    store::checkpoints(c, &sid)?,
                    store::checkpoint_head(c, &sid)?,
                ))
            })
            .await?;
        let mut out = Vec::with_capacity(rows.len() + 1);
        if history.is_none() {
            out.push(Checkpoint {
                id: ck::CURRENT_ID.into(),
                create_time: now(),
                comment: Some(String::new()),
                history: None,
                is_auto: Some(false),
                source_id: head.head.clone(),
                health: Some(String::new()),
            });
        }
        for r in &rows {
            let c = to_api(r);
            // `history=vN`: the checkpoints that descend from vN (JSON, which every client
            // parses, rather than the text lines of the hosted service).
            if let Some(h) = history {
                if !c
                    .history
                    .as_ref()
                    .is_some_and(|hs| hs.iter().any(|x| x == h))
                {
                    continue;
                }
            }
            out.push(c);
        }
        Ok(out)
    }

    /// One checkpoint (or the `Current` pseudo-entry).
    pub async fn get_checkpoint(
        &self,
        org: &Org,
        name: &str,
        id: &str,
    ) -> Result<Checkpoint, ApiError> {
        let rec = self.find(org, name).await?;
        self.get_checkpoint_of(&rec, id).await
    }

    /// [`Sprites::get_checkpoint`] of a record.
    pub async fn get_checkpoint_of(
        &self,
        rec: &SpriteRecord,
        id: &str,
    ) -> Result<Checkpoint, ApiError> {
        if id == ck::CURRENT_ID {
            let list = self.list_checkpoints_of(rec, None).await?;
            return Ok(list.into_iter().next().expect("Current is always listed"));
        }
        Ok(to_api(&self.checkpoint_record(rec, id).await?))
    }

    /// Checks what can be checked before a progress stream starts (so a missing sprite is a
    /// plain 404), then runs the checkpoint in its own task.
    pub async fn start_checkpoint(
        self: &Arc<Self>,
        org: &Org,
        name: &str,
        comment: Option<String>,
        tx: Progress,
    ) -> Result<(), ApiError> {
        let rec = self.find(org, name).await?;
        self.start_checkpoint_of(rec, comment, tx);
        Ok(())
    }

    /// [`Sprites::start_checkpoint`] of a record.
    pub fn start_checkpoint_of(
        self: &Arc<Self>,
        rec: SpriteRecord,
        comment: Option<String>,
        tx: Progress,
    ) {
        let svc = self.clone();
        tokio::spawn(async move {
            let line = match svc.create_checkpoint(&rec, comment, &tx).await {
                Ok(id) => {
                    svc.spawn_sync_views(&rec);
                    StreamEvent::complete(format!("Checkpoint {id} created successfully"), now())
                }
                Err(e) => {
                    StreamEvent::error(format!("Failed to create checkpoint: {}", e.message), now())
                }
            };
            let _ = tx.send(line).await;
        });
    }

    /// Takes a checkpoint: the disk is held still only while it is read; uploading new chunks
    /// and writing the manifest happen after the sprite runs again.
    pub async fn create_checkpoint(
        &self,
        rec: &SpriteRecord,
        comment: Option<String>,
        tx: &Progress,
    ) -> Result<String, ApiError> {
        let lock = self.checkpoint_lock(&rec.id);
        let _g = lock.lock().await;
        let sid = rec.id.clone();
        let head = self
            .store
            .with(move |c| store::checkpoint_head(c, &sid))
            .await?;
        let seq = head.next_seq;
        let id = format!("v{seq}");
        say(tx, format!("Creating checkpoint {id}...")).await;
        let spec = self.spec(rec);
        let started = Instant::now();
        let local = self.chunks.is_local();
        let taken = self
            .runtime
            .with_disk_still(&spec, || async {
                let disk = spec.disk.clone();
                let sprite = spec.id.clone();
                // Tracking is an optimization: when it fails (a full filesystem cannot clone),
                // the whole disk is read instead.
                let tracked = tokio::task::spawn_blocking(move || {
                    let r = Snap::take(&disk).and_then(|snap| match snap {
                        Some(snap) => snap.changes(CHUNK_SIZE).map(|c| Some((snap, c))),
                        None => Ok(None),
                    });
                    r.unwrap_or_else(|e| {
                        tracing::warn!(%sprite, "no change tracking for this checkpoint: {e}");
                        None
                    })
                })
                .await
                .map_err(|e| StorageError::Config(e.to_string()))?;
                match tracked {
                    // A local store: the changed chunks are read now, from the disk whose pages
                    // are likely cached (the clone's are not), and stored by sharing blocks.
                    Some((snap, changes)) if local => self
                        .chunks
                        .snapshot(&spec.disk, changes.as_ref())
                        .await
                        .map(|p| Taken::Read(p, Some(snap))),
                    // A remote store: uploads happen from the clone, with the sprite running.
                    Some((snap, changes)) => Ok(Taken::Clone(snap, changes)),
                    None => self
                        .chunks
                        .snapshot(&spec.disk, None)
                        .await
                        .map(|p| Taken::Read(p, None)),
                }
            })
            .await?
            .map_err(storage_err)?;
        let still_ms = started.elapsed().as_millis();
        // Where the reading happened, for the figures line.
        let (pending, snap, read_when) = match taken {
            Taken::Read(pending, snap) => (pending, snap, "while still".to_string()),
            Taken::Clone(snap, changes) => {
                let reading = Instant::now();
                let pending = self
                    .chunks
                    .snapshot(snap.path(), changes.as_ref())
                    .await
                    .map_err(storage_err)?;
                let ms = reading.elapsed().as_millis();
                (pending, Some(snap), format!("from a clone in {ms} ms"))
            }
        };
        let stats = pending.stats;
        let key = format!("manifests/{}/{id}.json", rec.id);
        let committing = Instant::now();
        let manifest = pending.commit(&key).await.map_err(storage_err)?;
        let commit_ms = committing.elapsed().as_millis();
        let mut history: Vec<String> = Vec::new();
        if let Some(h) = &head.head {
            history.push(h.clone());
            let (sid, h) = (rec.id.clone(), h.clone());
            if let Some(parent) = self
                .store
                .with(move |c| store::checkpoint(c, &sid, &h))
                .await?
            {
                let older: Vec<String> = serde_json::from_str(&parent.history).unwrap_or_default();
                history.extend(older.into_iter().take(50));
            }
        }
        let row = CheckpointRecord {
            sprite_id: rec.id.clone(),
            id: id.clone(),
            seq,
            comment: comment.filter(|c| !c.is_empty()),
            created_at: now_ms(),
            manifest: key.clone(),
            source_id: head.head.clone(),
            history: serde_json::to_string(&history).map_err(ApiError::internal)?,
            bytes: (manifest.chunks.len() as u64 * manifest.chunk_size) as i64,
            base_image: rec.base_image.clone(),
        };
        if let Err(e) = self
            .store
            .with(move |c| store::insert_checkpoint(c, &row))
            .await
        {
            let _ = self.chunks.remove(&key).await;
            return Err(e.into());
        }
        if let Some(snap) = snap {
            if let Err(e) = snap.adopt(&key) {
                tracing::warn!(sprite = %rec.id, "change tracking lost, the next checkpoint reads the whole disk: {e}");
            }
        }
        say(
            tx,
            format!(
                "Checkpoint {id}: read {} {read_when} ({} chunks), stored {} new, disk still for {still_ms} ms, committed in {commit_ms} ms, {} ms in all",
                mib(stats.bytes_scanned),
                stats.chunks,
                mib(stats.bytes_transferred),
                started.elapsed().as_millis()
            ),
        )
        .await;
        Ok(id)
    }

    /// Checks that the checkpoint exists, then restores it in its own task.
    pub async fn start_restore(
        self: &Arc<Self>,
        org: &Org,
        name: &str,
        id: &str,
        tx: Progress,
    ) -> Result<(), ApiError> {
        let rec = self.find(org, name).await?;
        self.start_restore_of(rec, id, tx).await
    }

    /// [`Sprites::start_restore`] of a record.
    pub async fn start_restore_of(
        self: &Arc<Self>,
        rec: SpriteRecord,
        id: &str,
        tx: Progress,
    ) -> Result<(), ApiError> {
        let ckpt = self.checkpoint_record(&rec, id).await?;
        let svc = self.clone();
        tokio::spawn(async move {
            let line = match svc.restore_checkpoint(&rec, &ckpt, &tx).await {
                Ok(()) => {
                    StreamEvent::complete(format!("Restore from {} complete", ckpt.id), now())
                }
                Err(e) => StreamEvent::error(
                    format!("Failed to restore {}: {}", ckpt.id, e.message),
                    now(),
                ),
            };
            let _ = tx.send(line).await;
        });
        Ok(())
    }

    /// Turns the sprite's disk into the checkpoint's while the sprite is stopped, rewriting only
    /// the chunks that differ. The plan is journaled before the disk is touched, so a crash in
    /// the middle is completed at the next start ([`Sprites::finish_interrupted_restores`]):
    /// the sprite boots with the old disk or the new one, never a mix.
    pub async fn restore_checkpoint(
        &self,
        rec: &SpriteRecord,
        ckpt: &CheckpointRecord,
        tx: &Progress,
    ) -> Result<(), ApiError> {
        let lock = self.checkpoint_lock(&rec.id);
        let _g = lock.lock().await;
        let started = Instant::now();
        let manifest = self
            .chunks
            .read_manifest(&ckpt.manifest)
            .await
            .map_err(storage_err)?;
        let spec = self.spec(rec);
        // The disk comes back over the base it was made on, even if the sprite was upgraded
        // since (its upper layer belongs with that base).
        let mut back = rec.clone();
        if ckpt.base_image.is_some() {
            back.base_image = ckpt.base_image.clone();
        }
        let next = self.spec(&back);
        say(tx, "Stopping process for restore...").await;
        let restored = self
            .runtime
            .with_disk_replaced_as(&spec, &next, || async {
                say(tx, "Process stopped successfully").await;
                say(tx, format!("Restoring from checkpoint {}...", ckpt.id)).await;
                let disk = spec.disk.clone();
                // Tracking only narrows what is read; without it the whole disk is compared.
                let since = tokio::task::spawn_blocking(move || disk_changes(&disk, CHUNK_SIZE))
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .flatten();
                let r = self
                    .chunks
                    .restore_in_place(&manifest, &spec.disk, since.as_ref())
                    .await;
                if r.is_ok() {
                    // The stopped disk now holds exactly this manifest: the reference for the
                    // next checkpoint, so it reads what changed after the restore only.
                    let (disk, key) = (spec.disk.clone(), ckpt.manifest.clone());
                    let adopted = tokio::task::spawn_blocking(move || {
                        Snap::take(&disk)?.map(|s| s.adopt(&key)).transpose()
                    })
                    .await;
                    if let Ok(Err(e)) = adopted {
                        tracing::warn!(sprite = %rec.id, "change tracking lost: {e}");
                    }
                }
                if let Ok(st) = &r {
                    say(
                        tx,
                        format!(
                            "Disk of {}: compared {}, rewrote {} in {} chunks ({} ms)",
                            ckpt.id,
                            mib(st.bytes_scanned),
                            mib(st.bytes_transferred),
                            st.chunks_transferred,
                            started.elapsed().as_millis()
                        ),
                    )
                    .await;
                }
                if r.is_ok() && back.base_image != rec.base_image {
                    if let Some(base) = back.base_image.clone() {
                        let id = rec.id.clone();
                        let set = self
                            .store
                            .with(move |c| store::set_sprite_base(c, &id, &base))
                            .await;
                        if let Err(e) = set {
                            tracing::error!(sprite = %rec.id, "recording the restored base image: {e}");
                        }
                    }
                }
                say(tx, "Starting process after restore...").await;
                r
            })
            .await?;
        restored.map_err(storage_err)?;
        let (sid, cid) = (rec.id.clone(), ckpt.id.clone());
        self.store
            .with(move |c| store::mark_restored(c, &sid, &cid))
            .await?;
        say(
            tx,
            format!(
                "Restore from {} complete in {} ms",
                ckpt.id,
                started.elapsed().as_millis()
            ),
        )
        .await;
        Ok(())
    }

    /// Completes restores a crash interrupted (a committed journal beside a disk). Runs at
    /// startup, before any sprite can boot.
    pub async fn finish_interrupted_restores(&self) {
        let recs = match self.store.with(|c| store::all_sprites(c)).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("listing sprites for restore recovery: {e}");
                return;
            }
        };
        for rec in recs {
            let spec = self.spec(&rec);
            if !sprites_storage::checkpoint::journal_path(&spec.disk).exists() {
                continue;
            }
            if self.runtime.state(&spec).await != sprites_runtime::State::Cold {
                tracing::error!(id = %rec.id, "a restore journal exists but the sprite runs; leaving it");
                continue;
            }
            match self.chunks.finish_restore(&spec.disk).await {
                Ok(_) => tracing::info!(id = %rec.id, "finished a restore interrupted by a crash"),
                Err(e) => tracing::error!(id = %rec.id, "finishing an interrupted restore: {e}"),
            }
        }
    }

    /// Deletes a checkpoint and frees the chunks no other checkpoint uses.
    pub async fn delete_checkpoint(
        self: &Arc<Self>,
        org: &Org,
        name: &str,
        id: &str,
    ) -> Result<(), ApiError> {
        let rec = self.find(org, name).await?;
        if id == ck::CURRENT_ID {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                "the Current state is not a checkpoint and cannot be deleted",
            ));
        }
        let lock = self.checkpoint_lock(&rec.id);
        let _g = lock.lock().await;
        let ckpt = self.checkpoint_record(&rec, id).await?;
        let sid = rec.id.clone();
        let head = self
            .store
            .with(move |c| store::checkpoint_head(c, &sid))
            .await?;
        if head.restored_from.as_deref() == Some(id) {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!(
                    "checkpoint {id} is the active checkpoint (the sprite was restored from it)"
                ),
            ));
        }
        // The record goes first: a crash after it leaves an orphan manifest, which startup
        // pruning removes, never a record without its data.
        let (sid, cid) = (rec.id.clone(), id.to_string());
        self.store
            .with(move |c| store::delete_checkpoint(c, &sid, &cid))
            .await?;
        self.chunks
            .remove(&ckpt.manifest)
            .await
            .map_err(storage_err)?;
        self.spawn_sync_views(&rec);
        Ok(())
    }

    /// Removes every checkpoint of a sprite that is being deleted.
    pub async fn delete_all_checkpoints(&self, rec: &SpriteRecord) -> Result<(), ApiError> {
        let sid = rec.id.clone();
        let rows = self
            .store
            .with(move |c| store::checkpoints(c, &sid))
            .await?;
        for r in rows {
            let (sid, cid) = (r.sprite_id.clone(), r.id.clone());
            self.store
                .with(move |c| store::delete_checkpoint(c, &sid, &cid))
                .await?;
            self.chunks.remove(&r.manifest).await.map_err(storage_err)?;
        }
        Ok(())
    }

    /// Writes the disks of the newest checkpoints beside the sprite's disk (and removes older
    /// ones), then has the backend show them in a running sprite. Runs in the background after
    /// a checkpoint is made or deleted: it costs a write of each new checkpoint's data.
    pub async fn sync_checkpoint_views(&self, rec: &SpriteRecord) -> Result<(), ApiError> {
        let _g = self.views_lock.lock().await;
        let sid = rec.id.clone();
        let rows = self
            .store
            .with(move |c| store::checkpoints(c, &sid))
            .await?;
        let spec = self.spec(rec);
        let dir = spec.checkpoint_images_dir();
        std::fs::create_dir_all(&dir).map_err(ApiError::internal)?;
        let kept: Vec<&CheckpointRecord> = rows.iter().take(VIEWS_KEPT).collect();
        for r in &kept {
            let img = dir.join(format!("{}.ext4", r.id));
            if img.exists() {
                continue;
            }
            let manifest = self
                .chunks
                .read_manifest(&r.manifest)
                .await
                .map_err(storage_err)?;
            let tmp = dir.join(format!(".{}.tmp", r.id));
            if let Err(e) = self.chunks.materialize(&manifest, &tmp).await {
                let _ = std::fs::remove_file(&tmp);
                return Err(storage_err(e));
            }
            std::fs::rename(&tmp, &img).map_err(ApiError::internal)?;
        }
        for e in std::fs::read_dir(&dir)
            .map_err(ApiError::internal)?
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            let keep = kept.iter().any(|r| name == format!("{}.ext4", r.id));
            if !keep && !name.starts_with('.') {
                let _ = std::fs::remove_file(e.path());
            }
        }
        if self.runtime.state(&spec).await != sprites_runtime::State::Cold {
            self.runtime
                .backend()
                .refresh_checkpoint_views(&spec)
                .await?;
        }
        Ok(())
    }

    /// [`Sprites::sync_checkpoint_views`] in the background.
    /// Waits for [`VIEWS_QUIET`] without checkpoint activity on the sprite first, so a burst of
    /// checkpoints writes the views once, and the writing does not compete with the
    /// checkpoints themselves for the disk.
    pub fn spawn_sync_views(self: &Arc<Self>, rec: &SpriteRecord) {
        let generation = {
            let mut g = self.views_pending.lock().unwrap_or_else(|e| e.into_inner());
            let n = g.entry(rec.id.clone()).or_insert(0);
            *n += 1;
            *n
        };
        let (svc, rec) = (self.clone(), rec.clone());
        tokio::spawn(async move {
            tokio::time::sleep(VIEWS_QUIET).await;
            let latest = svc
                .views_pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&rec.id)
                .copied();
            if latest != Some(generation) {
                return; // a later checkpoint will sync
            }
            if let Err(e) = svc.sync_checkpoint_views(&rec).await {
                tracing::warn!(id = %rec.id, "checkpoint views: {}", e.message);
            }
        });
    }

    /// Drops manifests no record names and chunks no manifest names (a crash mid-checkpoint).
    pub async fn prune_checkpoints(&self) {
        let keys = match self.store.with(|c| store::all_manifests(c)).await {
            Ok(k) => k.into_iter().collect::<std::collections::HashSet<_>>(),
            Err(e) => {
                tracing::warn!("checkpoint pruning skipped: {e}");
                return;
            }
        };
        match self.chunks.prune(|k| keys.contains(k)).await {
            Ok((0, 0)) => {}
            Ok((manifests, chunks)) => {
                tracing::info!(
                    manifests,
                    chunks,
                    "removed checkpoint objects left by a crash"
                )
            }
            Err(e) => tracing::warn!(store = %self.chunks.description(), "checkpoint pruning: {e}"),
        }
    }
}
