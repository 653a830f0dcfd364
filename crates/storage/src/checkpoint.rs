//! Content-addressed checkpoints of sprite disks in an object store.
//!
//! A disk is cut into fixed-size chunks; each chunk that is not all zeros is hashed (BLAKE3)
//! and stored once under `chunks/<hash>`. A checkpoint is a manifest (`manifests/...`) listing
//! the hash of every non-zero chunk, so it costs the chunks that changed since any earlier
//! checkpoint, and holes cost nothing. Only allocated regions of the sparse disk file are read
//! (`SEEK_DATA`), so an almost empty 100 GB disk is scanned in milliseconds.
//!
//! Crash safety: chunks are made durable before the manifest that names them, and the manifest
//! before the caller records the checkpoint, so a crash leaves at worst unreferenced objects,
//! which [`ChunkStore::prune`] removes. Creations and deletions are serialized by one lock per
//! store, which is what makes reference counting in memory exact.

use std::collections::{HashMap, HashSet};
use std::num::NonZeroU64;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, PutPayload};
use tokio::sync::{Mutex, OwnedMutexGuard};

use crate::tracking::Changes;
use crate::{io_err, Result, StorageError};

/// Bytes per chunk. Small enough that a scattered 10 MiB change touches few chunks, large
/// enough that a full disk is a manageable number of objects.
pub const CHUNK_SIZE: u64 = 1 << 20;

/// Chunks read and hashed at once.
const READ_PARALLEL: usize = 4;
/// Object store requests in flight.
const IO_PARALLEL: usize = 16;

/// A chunk's BLAKE3 hash.
pub type Hash = [u8; 32];

fn hex(h: &Hash) -> String {
    h.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Hash> {
    if s.len() != 64 {
        return None;
    }
    let mut h = [0u8; 32];
    for (i, b) in h.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(h)
}

fn chunk_key(h: &Hash) -> ObjPath {
    let x = hex(h);
    ObjPath::from(format!("chunks/{}/{x}", &x[..2]))
}

fn store_err(what: &str) -> impl FnOnce(object_store::Error) -> StorageError + '_ {
    move |e| StorageError::Config(format!("object store: {what}: {e}"))
}

/// What a checkpoint is made of: the disk's size and the hash of each non-zero chunk.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Manifest {
    /// Format version of this document.
    pub format: u32,
    /// Size of the disk in bytes.
    pub size: u64,
    /// Chunk size in bytes.
    pub chunk_size: u64,
    /// `(chunk index, hex hash)` of every chunk that is not all zeros, in index order.
    pub chunks: Vec<(u64, String)>,
}

impl Manifest {
    fn hashes(&self) -> impl Iterator<Item = Hash> + '_ {
        self.chunks.iter().filter_map(|(_, h)| unhex(h))
    }
}

/// Figures of one operation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Bytes read from the disk (snapshot) or written to it (restore).
    pub bytes_scanned: u64,
    /// Non-zero chunks in the result.
    pub chunks: u64,
    /// Chunks that had to be uploaded (snapshot) or were fetched (restore).
    pub chunks_transferred: u64,
    /// Bytes uploaded or fetched.
    pub bytes_transferred: u64,
}

#[derive(Default)]
struct Index {
    loaded: bool,
    /// Chunks known to exist in the store.
    present: HashSet<Hash>,
    /// References from committed manifests.
    refs: HashMap<Hash, u32>,
    /// Manifest key → its chunk hashes.
    manifests: HashMap<String, Vec<Hash>>,
}

/// A chunk store over any object store (a local folder by default, S3-compatible by URL).
pub struct ChunkStore {
    store: Arc<dyn ObjectStore>,
    /// Root folder when the store is local: flushed with `syncfs` before manifests are written.
    local_root: Option<PathBuf>,
    reflinks: Reflinks,
    index: Arc<Mutex<Index>>,
    description: String,
}

/// Shares blocks between chunk files and disks instead of copying bytes, when the store is a
/// local folder on a filesystem with reflinks and the disk is on the same one. Any failure
/// falls back to copying; "not supported" turns sharing off for the store.
#[derive(Clone)]
struct Reflinks {
    root: Option<PathBuf>,
    works: Arc<AtomicBool>,
}

impl Reflinks {
    fn chunk_path(&self, h: &Hash) -> Option<PathBuf> {
        let root = self.root.as_ref()?;
        self.works
            .load(Ordering::Relaxed)
            .then(|| root.join(chunk_key(h).as_ref()))
    }

    fn failed(&self, e: &std::io::Error) {
        if crate::tracking::no_reflinks(e) {
            self.works.store(false, Ordering::Relaxed);
        }
    }

    /// Makes the chunk file of `h` from `len` bytes at `off` of `src`; false if it could not.
    fn store_chunk(&self, src: &std::fs::File, off: u64, len: u64, h: &Hash) -> bool {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let (Some(dest), Some(len)) = (self.chunk_path(h), NonZeroU64::new(len)) else {
            return false;
        };
        // `#` marks a staging file, as the local object store's own writes do.
        let tmp = PathBuf::from(format!(
            "{}#clone-{}-{}",
            dest.display(),
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let r = (|| {
            std::fs::create_dir_all(dest.parent().expect("chunk paths have a folder"))?;
            let f = std::fs::File::create(&tmp)?;
            reflink_copy::ReflinkBlockBuilder::new(src, &f, len)
                .from_offset(off)
                .reflink_block()?;
            std::fs::rename(&tmp, &dest)
        })();
        if let Err(e) = r {
            let _ = std::fs::remove_file(&tmp);
            self.failed(&e);
            return false;
        }
        true
    }

    /// Puts the blocks of chunk `h` (`len` bytes) into `dst` at `off`; false if it could not.
    fn load_chunk(&self, h: &Hash, len: u64, dst: &std::fs::File, off: u64) -> bool {
        let (Some(path), Some(len)) = (self.chunk_path(h), NonZeroU64::new(len)) else {
            return false;
        };
        let r = std::fs::File::open(path).and_then(|src| {
            reflink_copy::ReflinkBlockBuilder::new(&src, dst, len)
                .to_offset(off)
                .reflink_block()
        });
        if let Err(e) = r {
            self.failed(&e);
            return false;
        }
        true
    }
}

impl std::fmt::Debug for ChunkStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkStore")
            .field("store", &self.description)
            .finish()
    }
}

impl ChunkStore {
    /// Opens a store by URL: a plain path or `file:///path` is a local folder; `s3://bucket/prefix`
    /// is an S3-compatible store configured from the usual `AWS_*` environment variables
    /// (`AWS_ENDPOINT`, `AWS_ALLOW_HTTP`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
    /// `AWS_REGION`).
    pub fn open(location: &str) -> Result<Self> {
        if let Some(rest) = location.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            let s3 = object_store::aws::AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .build()
                .map_err(store_err("configuring S3"))?;
            let store: Arc<dyn ObjectStore> = if prefix.trim_matches('/').is_empty() {
                Arc::new(s3)
            } else {
                Arc::new(object_store::prefix::PrefixStore::new(
                    s3,
                    prefix.trim_matches('/'),
                ))
            };
            return Ok(Self::with_store(store, None, location.to_string()));
        }
        let path = PathBuf::from(location.strip_prefix("file://").unwrap_or(location));
        std::fs::create_dir_all(&path)
            .map_err(io_err(format!("creating object store {}", path.display())))?;
        let path = std::fs::canonicalize(&path).map_err(io_err("resolving object store"))?;
        let local = object_store::local::LocalFileSystem::new_with_prefix(&path)
            .map_err(store_err("opening local folder"))?;
        Ok(Self::with_store(
            Arc::new(local),
            Some(path.clone()),
            path.display().to_string(),
        ))
    }

    fn with_store(
        store: Arc<dyn ObjectStore>,
        local_root: Option<PathBuf>,
        description: String,
    ) -> Self {
        Self {
            store,
            reflinks: Reflinks {
                root: local_root.clone(),
                works: Arc::new(AtomicBool::new(true)),
            },
            local_root,
            index: Default::default(),
            description,
        }
    }

    /// Whether the store is a local folder (writes to it cost disk time, not network time).
    pub fn is_local(&self) -> bool {
        self.local_root.is_some()
    }

    /// Where the store is, for logs.
    pub fn description(&self) -> &str {
        &self.description
    }

    /// Loads what exists (chunks and manifests) once per process.
    async fn load(&self, idx: &mut Index) -> Result<()> {
        if idx.loaded {
            return Ok(());
        }
        let chunks: Vec<_> = self
            .store
            .list(Some(&ObjPath::from("chunks")))
            .try_collect()
            .await
            .map_err(store_err("listing chunks"))?;
        idx.present = chunks
            .iter()
            .filter_map(|m| m.location.filename().and_then(unhex))
            .collect();
        let manifests: Vec<_> = self
            .store
            .list(Some(&ObjPath::from("manifests")))
            .try_collect()
            .await
            .map_err(store_err("listing manifests"))?;
        for m in manifests {
            let key = m.location.to_string();
            let manifest = self.read_manifest(&key).await?;
            let hashes: Vec<Hash> = manifest.hashes().collect();
            for h in &hashes {
                *idx.refs.entry(*h).or_default() += 1;
            }
            idx.manifests.insert(key, hashes);
        }
        idx.loaded = true;
        Ok(())
    }

    /// Reads a manifest.
    pub async fn read_manifest(&self, key: &str) -> Result<Manifest> {
        let bytes = self
            .store
            .get(&ObjPath::from(key))
            .await
            .map_err(store_err("reading manifest"))?
            .bytes()
            .await
            .map_err(store_err("reading manifest"))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| StorageError::Config(format!("manifest {key} is damaged: {e}")))
    }

    /// Makes everything written so far durable.
    async fn flush(&self) -> Result<()> {
        let Some(root) = self.local_root.clone() else {
            return Ok(()); // a remote store acknowledges a PUT once it is durable
        };
        tokio::task::spawn_blocking(move || {
            let f = std::fs::File::open(&root).map_err(io_err("opening object store"))?;
            nix::unistd::syncfs(std::os::fd::AsRawFd::as_raw_fd(&f))
                .map_err(|e| io_err("syncing object store")(e.into()))
        })
        .await
        .map_err(|e| StorageError::Config(e.to_string()))?
    }

    /// Which chunks of a disk of `size` must be read, and which are known without reading.
    /// With a usable `since` (its base manifest exists and matches the disk's size): the
    /// changed chunks, and the base's `(index, hash)` of every other non-zero chunk. Otherwise
    /// every allocated chunk, and nothing known.
    async fn chunks_to_read(
        &self,
        file: &Arc<std::fs::File>,
        size: u64,
        since: Option<&Changes>,
    ) -> Result<(Vec<u64>, Vec<(u64, String)>)> {
        if let Some(ch) = since {
            match self.read_manifest(&ch.base).await {
                Ok(m) if m.size == size && m.chunk_size == CHUNK_SIZE => {
                    let changed: HashSet<u64> = ch.chunks.iter().copied().collect();
                    let known = m
                        .chunks
                        .into_iter()
                        .filter(|(i, _)| !changed.contains(i))
                        .collect();
                    return Ok((ch.chunks.clone(), known));
                }
                Ok(_) => {}
                Err(e) => tracing::debug!("no tracked base, reading the whole disk: {e}"),
            }
        }
        let file = file.clone();
        let all = tokio::task::spawn_blocking(move || data_chunks(&file, size))
            .await
            .map_err(|e| StorageError::Config(e.to_string()))??;
        Ok((all, Vec::new()))
    }

    /// Reads the disk at `disk` and uploads the chunks the store does not have yet. The disk
    /// must not change until this returns (the caller freezes it, or passes a clone);
    /// committing the result, which may take longer, needs no freeze.
    ///
    /// With `since`, only the chunks it names are read; the others are taken from its base
    /// manifest, which must describe the rest of the disk exactly (see [`crate::tracking`]).
    pub async fn snapshot(
        &self,
        disk: &Path,
        since: Option<&Changes>,
    ) -> Result<PendingCheckpoint<'_>> {
        let guard = self.index.clone().lock_owned().await;
        let mut guard = guard;
        self.load(&mut guard).await?;
        let started = Instant::now();
        let file = std::fs::File::open(disk)
            .map_err(io_err(format!("opening disk {}", disk.display())))?;
        let size = file.metadata().map_err(io_err("reading disk size"))?.len();
        let file = Arc::new(file);
        let (mut indices, unchanged) = self.chunks_to_read(&file, size, since).await?;
        let mut chunks = Vec::new();
        for (i, h) in unchanged {
            match unhex(&h) {
                Some(hash) if guard.present.contains(&hash) => chunks.push((i, h)),
                _ => indices.push(i),
            }
        }
        indices.sort_unstable();
        let mut stats = Stats::default();
        let mut seen_new = HashSet::new();
        let mut uploads = futures::stream::FuturesUnordered::new();
        let mut hashed = futures::stream::iter(indices)
            .map(|i| {
                let file = file.clone();
                tokio::task::spawn_blocking(move || read_chunk(&file, i, size))
            })
            .buffered(READ_PARALLEL);
        while let Some(r) = hashed.next().await {
            let (i, len, chunk) = r.map_err(|e| StorageError::Config(e.to_string()))??;
            stats.bytes_scanned += len;
            let Some((h, data)) = chunk else {
                continue; // all zeros: a hole
            };
            chunks.push((i, hex(&h)));
            if !guard.present.contains(&h) && seen_new.insert(h) {
                stats.chunks_transferred += 1;
                stats.bytes_transferred += data.len() as u64;
                let store = self.store.clone();
                let (reflinks, src) = (self.reflinks.clone(), file.clone());
                uploads.push(async move {
                    let len = data.len() as u64;
                    let shared = tokio::task::spawn_blocking(move || {
                        reflinks.store_chunk(&src, i * CHUNK_SIZE, len, &h)
                    })
                    .await
                    .unwrap_or(false);
                    if !shared {
                        store.put(&chunk_key(&h), PutPayload::from(data)).await?;
                    }
                    Ok::<_, object_store::Error>(h)
                });
                while uploads.len() >= IO_PARALLEL {
                    let h = uploads
                        .next()
                        .await
                        .expect("not empty")
                        .map_err(store_err("uploading chunk"))?;
                    guard.present.insert(h);
                }
            }
        }
        while let Some(r) = uploads.next().await {
            guard
                .present
                .insert(r.map_err(store_err("uploading chunk"))?);
        }
        chunks.sort_unstable_by_key(|(i, _)| *i);
        stats.chunks = chunks.len() as u64;
        tracing::debug!(?stats, elapsed = ?started.elapsed(), "disk snapshot read");
        Ok(PendingCheckpoint {
            store: self,
            guard,
            manifest: Manifest {
                format: 1,
                size,
                chunk_size: CHUNK_SIZE,
                chunks,
            },
            stats,
        })
    }

    /// Writes the disk of `manifest` to `dest` (created or truncated; sparse where the disk
    /// is empty) and syncs it. Callers write to a temporary name and rename.
    pub async fn materialize(&self, manifest: &Manifest, dest: &Path) -> Result<Stats> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(dest)
            .map_err(io_err(format!("creating {}", dest.display())))?;
        file.set_len(manifest.size)
            .map_err(io_err("sizing restored disk"))?;
        let file = Arc::new(file);
        let mut stats = Stats::default();
        let chunk_size = manifest.chunk_size;
        let mut writes = futures::stream::iter(manifest.chunks.iter().cloned())
            .map(|(i, h)| {
                let store = self.store.clone();
                let file = file.clone();
                write_chunk(
                    store,
                    self.reflinks.clone(),
                    file,
                    h,
                    i * chunk_size,
                    "manifest",
                )
            })
            .buffer_unordered(IO_PARALLEL);
        while let Some(n) = writes.next().await {
            let n = n?;
            stats.chunks += 1;
            stats.chunks_transferred += 1;
            stats.bytes_transferred += n;
            stats.bytes_scanned += n;
        }
        drop(writes);
        let f = file.clone();
        tokio::task::spawn_blocking(move || f.sync_all().map_err(io_err("syncing restored disk")))
            .await
            .map_err(|e| StorageError::Config(e.to_string()))??;
        Ok(stats)
    }

    /// Turns the disk at `disk` into the disk of `manifest`, in place, writing only the chunks
    /// that differ. The plan (which chunk becomes what) is committed to a journal beside the
    /// disk before the disk is touched, so a crash in the middle is finished by
    /// [`ChunkStore::finish_restore`] at the next start: the disk ends up old (no journal yet)
    /// or new (journal replayed), never a mix. The disk must not be in use.
    ///
    /// With `since` (the disk's changes against its tracked reference), only the chunks it
    /// names are read; the rest of the disk is known from its base manifest.
    pub async fn restore_in_place(
        &self,
        manifest: &Manifest,
        disk: &Path,
        since: Option<&Changes>,
    ) -> Result<Stats> {
        if manifest.chunk_size != CHUNK_SIZE {
            return Err(StorageError::Config(format!(
                "manifest chunk size {} is not {CHUNK_SIZE}",
                manifest.chunk_size
            )));
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(disk)
            .map_err(io_err(format!("opening disk {}", disk.display())))?;
        let size = file.metadata().map_err(io_err("reading disk size"))?.len();
        let file = Arc::new(file);
        let mut want: HashMap<u64, String> = manifest.chunks.iter().cloned().collect();
        let mut entries: Vec<(u64, Option<String>)> = Vec::new();
        let (current, unchanged) = self.chunks_to_read(&file, size, since).await?;
        // Unchanged chunks hold what the base says; compare hashes without reading.
        for (i, have) in unchanged {
            let target = want.remove(&i);
            if target.as_ref() != Some(&have) {
                entries.push((i, target));
            }
        }
        let mut stats = Stats::default();
        let mut hashed = futures::stream::iter(current)
            .map(|i| {
                let file = file.clone();
                tokio::task::spawn_blocking(move || read_chunk(&file, i, size))
            })
            .buffered(READ_PARALLEL);
        while let Some(r) = hashed.next().await {
            let (i, len, chunk) = r.map_err(|e| StorageError::Config(e.to_string()))??;
            stats.bytes_scanned += len;
            let have = chunk.map(|(h, _)| hex(&h));
            let target = want.remove(&i);
            if have != target {
                entries.push((i, target));
            }
        }
        // Chunks the target has where the current disk is a hole. (With a base, an unchanged
        // chunk it lacks is a hole too.)
        entries.extend(want.into_iter().map(|(i, h)| (i, Some(h))));
        entries.sort();
        let plan = RestorePlan {
            size: manifest.size,
            chunk_size: manifest.chunk_size,
            entries,
        };
        let journal = journal_path(disk);
        let tmp = journal.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec(&plan).expect("plan serializes"))
            .map_err(io_err("writing restore journal"))?;
        std::fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(io_err("syncing restore journal"))?;
        std::fs::rename(&tmp, &journal).map_err(io_err("committing restore journal"))?;
        sync_dir(disk)?;
        drop(hashed);
        drop(file);
        let applied = self.finish_restore(disk).await?.unwrap_or_default();
        stats.chunks = manifest.chunks.len() as u64;
        stats.chunks_transferred = applied.chunks_transferred;
        stats.bytes_transferred = applied.bytes_transferred;
        Ok(stats)
    }

    /// Applies a committed restore journal beside `disk`, if there is one, and removes it.
    /// Idempotent: replaying a journal that was partly or wholly applied gives the same disk.
    pub async fn finish_restore(&self, disk: &Path) -> Result<Option<Stats>> {
        let journal = journal_path(disk);
        let bytes = match std::fs::read(&journal) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("reading restore journal")(e)),
        };
        let plan: RestorePlan = serde_json::from_slice(&bytes)
            .map_err(|e| StorageError::Config(format!("restore journal is damaged: {e}")))?;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(disk)
            .map_err(io_err(format!("opening disk {}", disk.display())))?;
        if file.metadata().map_err(io_err("reading disk size"))?.len() != plan.size {
            file.set_len(plan.size).map_err(io_err("sizing disk"))?;
        }
        let file = Arc::new(file);
        let mut stats = Stats::default();
        let (size, chunk_size) = (plan.size, plan.chunk_size);
        let mut writes = futures::stream::iter(plan.entries)
            .map(|(i, h)| {
                let store = self.store.clone();
                let reflinks = self.reflinks.clone();
                let file = file.clone();
                async move {
                    let off = i * chunk_size;
                    let Some(h) = h else {
                        let len = chunk_size.min(size.saturating_sub(off));
                        tokio::task::spawn_blocking(move || punch_hole(&file, off, len))
                            .await
                            .map_err(|e| StorageError::Config(e.to_string()))??;
                        return Ok::<u64, StorageError>(0);
                    };
                    write_chunk(store, reflinks, file, h, off, "journal").await
                }
            })
            .buffer_unordered(IO_PARALLEL);
        while let Some(n) = writes.next().await {
            let n = n?;
            if n > 0 {
                stats.chunks_transferred += 1;
                stats.bytes_transferred += n;
            }
        }
        drop(writes);
        let f = file.clone();
        tokio::task::spawn_blocking(move || f.sync_all().map_err(io_err("syncing restored disk")))
            .await
            .map_err(|e| StorageError::Config(e.to_string()))??;
        std::fs::remove_file(&journal).map_err(io_err("removing restore journal"))?;
        sync_dir(disk)?;
        Ok(Some(stats))
    }

    /// Deletes a manifest and every chunk no other manifest uses. Returns the chunks freed.
    pub async fn remove(&self, key: &str) -> Result<u64> {
        let mut idx = self.index.lock().await;
        self.load(&mut idx).await?;
        let freed = self.remove_locked(&mut idx, key).await?;
        Ok(freed)
    }

    async fn remove_locked(&self, idx: &mut Index, key: &str) -> Result<u64> {
        // The manifest goes first: a crash after it leaves only unreferenced chunks.
        match self.store.delete(&ObjPath::from(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(store_err("deleting manifest")(e)),
        }
        let Some(hashes) = idx.manifests.remove(key) else {
            return Ok(0);
        };
        let mut dead = Vec::new();
        for h in hashes {
            if let Some(n) = idx.refs.get_mut(&h) {
                *n -= 1;
                if *n == 0 {
                    idx.refs.remove(&h);
                    dead.push(h);
                }
            }
        }
        self.delete_chunks(idx, dead).await
    }

    async fn delete_chunks(&self, idx: &mut Index, dead: Vec<Hash>) -> Result<u64> {
        let n = dead.len() as u64;
        let mut deletes = futures::stream::iter(dead)
            .map(|h| {
                let store = self.store.clone();
                async move {
                    match store.delete(&chunk_key(&h)).await {
                        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(h),
                        Err(e) => Err(e),
                    }
                }
            })
            .buffer_unordered(IO_PARALLEL);
        while let Some(r) = deletes.next().await {
            idx.present.remove(&r.map_err(store_err("deleting chunk"))?);
        }
        Ok(n)
    }

    /// Removes manifests for which `keep` is false (left by a crash between writing a manifest
    /// and recording it) and every chunk no manifest references.
    pub async fn prune(&self, keep: impl Fn(&str) -> bool) -> Result<(usize, u64)> {
        let mut idx = self.index.lock().await;
        self.load(&mut idx).await?;
        let orphans: Vec<String> = idx.manifests.keys().filter(|k| !keep(k)).cloned().collect();
        let mut freed = 0;
        for k in &orphans {
            freed += self.remove_locked(&mut idx, k).await?;
        }
        let unreferenced: Vec<Hash> = idx
            .present
            .iter()
            .filter(|h| !idx.refs.contains_key(*h))
            .copied()
            .collect();
        freed += self.delete_chunks(&mut idx, unreferenced).await?;
        Ok((orphans.len(), freed))
    }

    /// Keeps the checkpoint at `from` alive under `to` as well (a template): the manifest is
    /// written again under `to` and its chunks get one more reference, so deleting `from`
    /// (or its sprite) frees none of them.
    pub async fn pin(&self, from: &str, to: &str) -> Result<Manifest> {
        let mut idx = self.index.lock().await;
        self.load(&mut idx).await?;
        let manifest = self.read_manifest(from).await?;
        let body = serde_json::to_vec(&manifest).expect("manifest serializes");
        self.store
            .put(&ObjPath::from(to), PutPayload::from(Bytes::from(body)))
            .await
            .map_err(store_err("writing manifest"))?;
        self.flush().await?;
        let hashes: Vec<Hash> = manifest.hashes().collect();
        for h in &hashes {
            *idx.refs.entry(*h).or_default() += 1;
        }
        if let Some(old) = idx.manifests.insert(to.to_string(), hashes) {
            for h in old {
                if let Some(n) = idx.refs.get_mut(&h) {
                    *n -= 1;
                }
            }
        }
        Ok(manifest)
    }

    /// Chunks in the store and total references, for tests and metrics.
    pub async fn counts(&self) -> Result<(usize, usize)> {
        let mut idx = self.index.lock().await;
        self.load(&mut idx).await?;
        Ok((idx.present.len(), idx.refs.len()))
    }
}

/// A snapshot whose chunks are uploaded but whose manifest is not written yet. Holds the
/// store's lock, so no deletion can remove a chunk it relies on.
pub struct PendingCheckpoint<'a> {
    store: &'a ChunkStore,
    guard: OwnedMutexGuard<Index>,
    /// The manifest to be written.
    pub manifest: Manifest,
    /// What the snapshot read and uploaded.
    pub stats: Stats,
}

impl PendingCheckpoint<'_> {
    /// Makes the chunks durable, then writes the manifest under `key` and makes it durable.
    pub async fn commit(mut self, key: &str) -> Result<Manifest> {
        self.store.flush().await?;
        let body = serde_json::to_vec(&self.manifest).expect("manifest serializes");
        self.store
            .store
            .put(&ObjPath::from(key), PutPayload::from(Bytes::from(body)))
            .await
            .map_err(store_err("writing manifest"))?;
        self.store.flush().await?;
        let hashes: Vec<Hash> = self.manifest.hashes().collect();
        for h in &hashes {
            *self.guard.refs.entry(*h).or_default() += 1;
        }
        if let Some(old) = self.guard.manifests.insert(key.to_string(), hashes) {
            for h in old {
                if let Some(n) = self.guard.refs.get_mut(&h) {
                    *n -= 1;
                }
            }
        }
        Ok(self.manifest)
    }
}

/// Fetches chunk `h` (named in a `source`: manifest or journal), checks its hash, and writes
/// it at `off`. Returns its length.
async fn write_chunk(
    store: Arc<dyn ObjectStore>,
    reflinks: Reflinks,
    file: Arc<std::fs::File>,
    h: String,
    off: u64,
    source: &str,
) -> Result<u64> {
    let hash =
        unhex(&h).ok_or_else(|| StorageError::Config(format!("{source} has a bad hash {h:?}")))?;
    let data = store
        .get(&chunk_key(&hash))
        .await
        .map_err(store_err("fetching chunk"))?
        .bytes()
        .await
        .map_err(store_err("fetching chunk"))?;
    let n = data.len() as u64;
    tokio::task::spawn_blocking(move || {
        if *blake3::hash(&data).as_bytes() != hash {
            return Err(StorageError::Config(format!(
                "chunk {h} in the object store is damaged"
            )));
        }
        if reflinks.load_chunk(&hash, n, &file, off) {
            return Ok(());
        }
        file.write_all_at(&data, off)
            .map_err(io_err("writing restored disk"))
    })
    .await
    .map_err(|e| StorageError::Config(e.to_string()))??;
    Ok(n)
}

/// What a restore will write: for each chunk that differs, its new hash or `None` for zeros.
#[derive(serde::Serialize, serde::Deserialize)]
struct RestorePlan {
    size: u64,
    chunk_size: u64,
    entries: Vec<(u64, Option<String>)>,
}

/// The restore journal of a disk.
pub fn journal_path(disk: &Path) -> PathBuf {
    let mut p = disk.as_os_str().to_owned();
    p.push(".restore-journal");
    PathBuf::from(p)
}

fn sync_dir(file_in_it: &Path) -> Result<()> {
    if let Some(dir) = file_in_it.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err("syncing directory"))?;
    }
    Ok(())
}

fn punch_hole(file: &std::fs::File, off: u64, len: u64) -> Result<()> {
    use nix::fcntl::{fallocate, FallocateFlags};
    use std::os::fd::AsRawFd;
    fallocate(
        file.as_raw_fd(),
        FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
        off as i64,
        len as i64,
    )
    .map_err(|e| io_err("punching a hole in the disk")(e.into()))
}

/// Indices of the chunks that hold allocated data, found with `SEEK_DATA`/`SEEK_HOLE`.
fn data_chunks(file: &std::fs::File, size: u64) -> Result<Vec<u64>> {
    use nix::unistd::{lseek, Whence};
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    let mut out: Vec<u64> = Vec::new();
    let mut pos: i64 = 0;
    let end = size as i64;
    while pos < end {
        let data = match lseek(fd, pos, Whence::SeekData) {
            Ok(d) => d,
            Err(nix::errno::Errno::ENXIO) => break,
            Err(e) => return Err(io_err("finding data in disk")(e.into())),
        };
        let hole = match lseek(fd, data, Whence::SeekHole) {
            Ok(h) => h,
            Err(e) => return Err(io_err("finding holes in disk")(e.into())),
        };
        let first = data as u64 / CHUNK_SIZE;
        let last = (hole as u64).div_ceil(CHUNK_SIZE);
        for i in first..last {
            if out.last() != Some(&i) {
                out.push(i);
            }
        }
        pos = hole;
    }
    Ok(out)
}

fn is_zero(b: &[u8]) -> bool {
    // OR-folding a block vectorizes; stopping at the first non-zero block keeps data cheap.
    b.chunks(4096)
        .all(|c| c.iter().fold(0u8, |a, &x| a | x) == 0)
}

/// Reads and hashes one chunk (on a blocking thread, so chunks hash in parallel); `None` for
/// a chunk of zeros.
#[allow(clippy::type_complexity)]
fn read_chunk(
    file: &std::fs::File,
    i: u64,
    size: u64,
) -> Result<(u64, u64, Option<(Hash, Bytes)>)> {
    let off = i * CHUNK_SIZE;
    let len = CHUNK_SIZE.min(size - off) as usize;
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, off)
        .map_err(io_err("reading disk"))?;
    if is_zero(&buf) {
        return Ok((i, len as u64, None));
    }
    let h = *blake3::hash(&buf).as_bytes();
    Ok((i, len as u64, Some((h, Bytes::from(buf)))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write_at(path: &Path, off: u64, data: &[u8]) {
        let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        f.write_all_at(data, off).unwrap();
    }

    fn read_at(path: &Path, off: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        std::fs::File::open(path)
            .unwrap()
            .read_exact_at(&mut buf, off)
            .unwrap();
        buf
    }

    #[tokio::test]
    async fn snapshot_dedupes_restores_and_frees() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path().join("store").to_str().unwrap()).unwrap();
        let disk = dir.path().join("disk");
        let mut f = std::fs::File::create(&disk).unwrap();
        f.set_len(10 << 30).unwrap(); // 10 GiB sparse
        f.flush().unwrap();
        let pattern: Vec<u8> = (0..3 * CHUNK_SIZE as usize)
            .map(|i| (i % 251) as u8)
            .collect();
        write_at(&disk, 5 * CHUNK_SIZE, &pattern);
        write_at(&disk, (9 << 30) + 17, b"tail");

        let p = store.snapshot(&disk, None).await.unwrap();
        assert_eq!(p.stats.chunks, 4);
        assert_eq!(p.stats.chunks_transferred, 4);
        // Only allocated regions are read: 4 chunks' worth, not 10 GiB.
        assert!(p.stats.bytes_scanned <= 8 * CHUNK_SIZE, "{:?}", p.stats);
        let m1 = p.commit("manifests/s/v0.json").await.unwrap();

        // One changed byte costs one chunk.
        write_at(&disk, 6 * CHUNK_SIZE + 3, b"X");
        let p = store.snapshot(&disk, None).await.unwrap();
        assert_eq!(p.stats.chunks_transferred, 1);
        let m2 = p.commit("manifests/s/v1.json").await.unwrap();
        assert_eq!(store.counts().await.unwrap().0, 5);

        let out = dir.path().join("restored");
        store.materialize(&m1, &out).await.unwrap();
        assert_eq!(std::fs::metadata(&out).unwrap().len(), 10 << 30);
        assert_eq!(read_at(&out, 5 * CHUNK_SIZE, pattern.len()), pattern);
        assert_eq!(read_at(&out, (9 << 30) + 17, 4), b"tail");
        assert_eq!(read_at(&out, 0, 4096), vec![0u8; 4096]);
        // Restored disks stay sparse.
        assert!(crate::disk::allocated_bytes(&out).unwrap() < 16 * CHUNK_SIZE);

        // Deleting v0 frees only the chunk v1 does not share; v1 still restores.
        assert_eq!(store.remove("manifests/s/v0.json").await.unwrap(), 1);
        store.materialize(&m2, &out).await.unwrap();
        assert_eq!(read_at(&out, 6 * CHUNK_SIZE + 3, 1), b"X");

        // A fresh process sees the same store; orphans are pruned.
        let again = ChunkStore::open(dir.path().join("store").to_str().unwrap()).unwrap();
        assert_eq!(again.counts().await.unwrap().0, 4);
        let (orphans, freed) = again.prune(|_| false).await.unwrap();
        assert_eq!((orphans, freed), (1, 4));
        assert_eq!(again.counts().await.unwrap(), (0, 0));
    }

    #[tokio::test]
    async fn restore_in_place_writes_only_differences_and_replays() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path().join("store").to_str().unwrap()).unwrap();
        let disk = dir.path().join("disk");
        std::fs::File::create(&disk)
            .unwrap()
            .set_len(64 * CHUNK_SIZE)
            .unwrap();
        write_at(&disk, 0, &vec![1u8; 4 * CHUNK_SIZE as usize]);
        let m = store
            .snapshot(&disk, None)
            .await
            .unwrap()
            .commit("manifests/s/v0.json")
            .await
            .unwrap();
        // Change one chunk, wipe one to zeros, add data in a hole.
        write_at(&disk, CHUNK_SIZE + 5, b"changed");
        write_at(&disk, 2 * CHUNK_SIZE, &vec![0u8; CHUNK_SIZE as usize]);
        write_at(&disk, 40 * CHUNK_SIZE, b"new data in a hole");
        let st = store.restore_in_place(&m, &disk, None).await.unwrap();
        assert_eq!(st.chunks_transferred, 2, "{st:?}"); // chunks 1 and 2 rewritten
        assert_eq!(
            read_at(&disk, 0, 4 * CHUNK_SIZE as usize),
            vec![1u8; 4 * CHUNK_SIZE as usize]
        );
        assert_eq!(read_at(&disk, 40 * CHUNK_SIZE, 18), vec![0u8; 18]);
        assert!(!journal_path(&disk).exists());

        // A journal committed before a crash is replayed to the same result, even twice.
        write_at(&disk, 3 * CHUNK_SIZE, b"crash");
        let plan = RestorePlan {
            size: 64 * CHUNK_SIZE,
            chunk_size: CHUNK_SIZE,
            entries: vec![(3, Some(m.chunks[3].1.clone())), (50, None)],
        };
        std::fs::write(journal_path(&disk), serde_json::to_vec(&plan).unwrap()).unwrap();
        assert!(store.finish_restore(&disk).await.unwrap().is_some());
        assert!(store.finish_restore(&disk).await.unwrap().is_none());
        assert_eq!(read_at(&disk, 3 * CHUNK_SIZE, 5), vec![1u8; 5]);
    }

    #[tokio::test]
    async fn damaged_chunk_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("store");
        let store = ChunkStore::open(root.to_str().unwrap()).unwrap();
        let disk = dir.path().join("disk");
        std::fs::write(&disk, vec![7u8; CHUNK_SIZE as usize]).unwrap();
        let m = store
            .snapshot(&disk, None)
            .await
            .unwrap()
            .commit("manifests/s/v0.json")
            .await
            .unwrap();
        let key = chunk_key(&unhex(&m.chunks[0].1).unwrap());
        std::fs::write(root.join(key.to_string()), b"garbage").unwrap();
        let err = store
            .materialize(&m, &dir.path().join("out"))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("damaged"), "{err}");
    }
}
