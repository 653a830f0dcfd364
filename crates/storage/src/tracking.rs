//! Change tracking for checkpoints on filesystems with reflinks (XFS, btrfs).
//!
//! While the disk is still, it is cloned (`FICLONE`) to `<disk>.ckpt-snap`: a copy that costs
//! no data, flushed by the clone itself. The changed chunks are then read, from the still disk
//! (its pages are cached) or, for a remote store, from the clone with the sprite running again.
//! Once its manifest is committed the clone becomes `<disk>.ckpt-ref`, recorded in
//! `<disk>.ckpt-ref.json` with the manifest it holds. A restore, which leaves the stopped disk
//! exactly as a manifest says, makes a reference the same way.
//!
//! At the next checkpoint the new clone's extent map is compared with the reference's
//! (`FIEMAP`). A block the sprite wrote since has been copied on write to a new place, so only
//! chunks whose mapping differs need reading; the others keep their hash from the reference's
//! manifest. Equal physical addresses imply equal bytes because the reference is never
//! written and a shared block is never overwritten in place. Anything unclear (no reference,
//! an inode that is not the recorded one, a different size, an extent the filesystem cannot
//! place exactly) counts as changed, so the worst case is the full read this replaces.
//!
//! The reference keeps the blocks the sprite overwrote since the last checkpoint: the space
//! cost of tracking is what changed since then. Mapping costs time per extent (about 3.5 µs on
//! XFS), so a badly fragmented disk maps about as slowly as it reads.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use fiemap::FiemapExtentFlags as F;

use crate::{io_err, Result, StorageError};

fn with_suffix(disk: &Path, suffix: &str) -> PathBuf {
    let mut p = disk.as_os_str().to_owned();
    p.push(suffix);
    PathBuf::from(p)
}

#[derive(serde::Serialize, serde::Deserialize)]
struct RefRecord {
    manifest: String,
    dev: u64,
    ino: u64,
    size: u64,
}

/// A reflink clone of a disk, taken while the disk was still.
#[derive(Debug)]
pub struct Snap {
    disk: PathBuf,
    path: PathBuf,
    adopted: bool,
}

/// What changed since the reference: its manifest and the chunk indices that may differ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changes {
    /// Key of the manifest the reference holds.
    pub base: String,
    /// Sorted indices of the chunks whose blocks are not the reference's.
    pub chunks: Vec<u64>,
}

impl Snap {
    /// Clones `disk`; `None` when its filesystem has no reflinks. Call it while the disk is
    /// still: the clone is the snapshot.
    pub fn take(disk: &Path) -> Result<Option<Snap>> {
        let path = with_suffix(disk, ".ckpt-snap");
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("removing an old disk clone")(e)),
        }
        match reflink_copy::reflink(disk, &path) {
            Ok(()) => Ok(Some(Snap {
                disk: disk.to_path_buf(),
                path,
                adopted: false,
            })),
            Err(e) if no_reflinks(&e) => {
                let _ = std::fs::remove_file(&path);
                Ok(None)
            }
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                Err(io_err(format!("cloning disk {}", disk.display()))(e))
            }
        }
    }

    /// The clone, to be read in place of the disk.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Chunks that may differ from the reference, or `None` when there is no usable reference.
    pub fn changes(&self, chunk_size: u64) -> Result<Option<Changes>> {
        changes_against_ref(&self.disk, &self.path, chunk_size)
    }

    /// Makes this clone the reference for the next checkpoint, holding manifest `key`.
    pub fn adopt(mut self, key: &str) -> Result<()> {
        let ref_path = with_suffix(&self.disk, ".ckpt-ref");
        let rec_path = with_suffix(&self.disk, ".ckpt-ref.json");
        std::fs::rename(&self.path, &ref_path).map_err(io_err("keeping the disk clone"))?;
        self.adopted = true;
        let m = std::fs::metadata(&ref_path).map_err(io_err("reading the reference"))?;
        let rec = RefRecord {
            manifest: key.to_string(),
            dev: m.dev(),
            ino: m.ino(),
            size: m.len(),
        };
        // Written after the rename and naming the inode, so a crash between the two leaves a
        // record that does not match and is ignored.
        let tmp = with_suffix(&self.disk, ".ckpt-ref.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec(&rec).expect("serializes"))
            .and_then(|()| std::fs::rename(&tmp, &rec_path))
            .map_err(io_err("recording the reference"))
    }
}

impl Drop for Snap {
    fn drop(&mut self) {
        if !self.adopted {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Writes `dest` as a reflink clone of `disk`'s tracked reference when that reference holds
/// exactly manifest `key` (the disk as its latest checkpoint saw it): one clone instead of a
/// chunk at a time. False when there is no such reference (the caller materializes).
pub fn clone_reference(disk: &Path, key: &str, dest: &Path) -> Result<bool> {
    let ref_path = with_suffix(disk, ".ckpt-ref");
    let Ok(raw) = std::fs::read(with_suffix(disk, ".ckpt-ref.json")) else {
        return Ok(false);
    };
    let Ok(rec) = serde_json::from_slice::<RefRecord>(&raw) else {
        return Ok(false);
    };
    let Ok(m) = std::fs::metadata(&ref_path) else {
        return Ok(false);
    };
    if rec.manifest != key || rec.dev != m.dev() || rec.ino != m.ino() || rec.size != m.len() {
        return Ok(false);
    }
    let _ = std::fs::remove_file(dest);
    if reflink_copy::reflink(&ref_path, dest).is_err() {
        return Ok(false);
    }
    std::fs::File::open(dest)
        .and_then(|f| f.sync_all())
        .map_err(io_err("syncing the cloned disk"))?;
    Ok(true)
}

/// Whether files in `dir` can share blocks (the filesystem has reflinks), tried on a scratch
/// file.
pub fn supported(dir: &Path) -> bool {
    let a = dir.join(".reflink-probe");
    let b = dir.join(".reflink-probe.clone");
    let ok = std::fs::write(&a, [1u8; 4096]).is_ok() && reflink_copy::reflink(&a, &b).is_ok();
    let _ = std::fs::remove_file(&a);
    let _ = std::fs::remove_file(&b);
    ok
}

/// Chunks where `disk` itself (which must be still: its sprite stopped) differs from the
/// reference, as for a restore; `None` when there is no usable reference.
pub fn disk_changes(disk: &Path, chunk_size: u64) -> Result<Option<Changes>> {
    changes_against_ref(disk, disk, chunk_size)
}

fn changes_against_ref(disk: &Path, file: &Path, chunk_size: u64) -> Result<Option<Changes>> {
    let ref_path = with_suffix(disk, ".ckpt-ref");
    let Ok(raw) = std::fs::read(with_suffix(disk, ".ckpt-ref.json")) else {
        return Ok(None);
    };
    let Ok(rec) = serde_json::from_slice::<RefRecord>(&raw) else {
        return Ok(None);
    };
    let (Ok(reference), Ok(file)) = (std::fs::File::open(&ref_path), std::fs::File::open(file))
    else {
        return Ok(None);
    };
    let (rm, fm) = (
        reference
            .metadata()
            .map_err(io_err("reading the reference"))?,
        file.metadata().map_err(io_err("reading the disk"))?,
    );
    if rm.dev() != rec.dev || rm.ino() != rec.ino || rm.len() != rec.size || fm.len() != rec.size {
        return Ok(None);
    }
    // Flushed first, so blocks written but not yet placed get their final address.
    let a = extents(&file)?;
    let b = extents(&reference)?;
    Ok(Some(Changes {
        base: rec.manifest,
        chunks: differing_chunks(&a, &b, rec.size, chunk_size),
    }))
}

/// Whether an error says the filesystem (or the pair of files) cannot share blocks.
pub(crate) fn no_reflinks(e: &std::io::Error) -> bool {
    use nix::errno::Errno;
    matches!(
        e.raw_os_error().map(Errno::from_raw),
        Some(Errno::EOPNOTSUPP | Errno::EXDEV | Errno::EINVAL | Errno::ENOTTY | Errno::ENOSYS)
    )
}

/// A mapped range: logical start, length, physical start, and whether it is preallocated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Extent {
    logical: u64,
    len: u64,
    physical: u64,
    unwritten: bool,
    /// The filesystem cannot give an exact block address (inline, encoded, delayed...).
    inexact: bool,
}

fn extents(file: &std::fs::File) -> Result<Vec<Extent>> {
    let inexact = F::UNKNOWN
        | F::DELALLOC
        | F::ENCODED
        | F::DATA_ENCRYPTED
        | F::NOT_ALIGNED
        | F::DATA_INLINE
        | F::DATA_TAIL;
    let mut out: Vec<Extent> = fiemap::Fiemap::with_flags(file, fiemap::FiemapFlags::SYNC)
        .map(|e| {
            e.map(|e| Extent {
                logical: e.fe_logical,
                len: e.fe_length,
                physical: e.fe_physical,
                unwritten: e.fe_flags.contains(F::UNWRITTEN),
                inexact: e.fe_flags.intersects(inexact),
            })
        })
        .collect::<std::io::Result<_>>()
        .map_err(|e| StorageError::Io {
            what: "mapping disk extents".into(),
            source: e,
        })?;
    out.sort_by_key(|e| e.logical);
    Ok(out)
}

/// What `list` maps at `at`: `None` for a hole, else the extent and the offset into it.
fn lookup(list: &[Extent], at: u64) -> (Option<(Extent, u64)>, u64) {
    // First extent ending after `at`.
    let i = list.partition_point(|e| e.logical + e.len <= at);
    match list.get(i) {
        Some(e) if e.logical <= at => (Some((*e, at - e.logical)), e.logical + e.len),
        Some(e) => (None, e.logical),
        None => (None, u64::MAX),
    }
}

/// Sorted chunk indices over `[0, size)` where `a` and `b` do not map the same blocks.
fn differing_chunks(a: &[Extent], b: &[Extent], size: u64, chunk_size: u64) -> Vec<u64> {
    let mut out: Vec<u64> = Vec::new();
    let mut mark = |from: u64, to: u64| {
        let first = from / chunk_size;
        let last = to.div_ceil(chunk_size);
        for c in first..last {
            if out.last().is_none_or(|l| *l < c) {
                out.push(c);
            }
        }
    };
    let mut at = 0;
    while at < size {
        let (ma, end_a) = lookup(a, at);
        let (mb, end_b) = lookup(b, at);
        let next = end_a.min(end_b).min(size);
        let same = match (ma, mb) {
            (None, None) => true,
            (Some((ea, oa)), Some((eb, ob))) => {
                !ea.inexact
                    && !eb.inexact
                    && ea.unwritten == eb.unwritten
                    && ea.physical + oa == eb.physical + ob
            }
            _ => false,
        };
        if !same {
            mark(at, next);
        }
        at = next;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext(logical: u64, len: u64, physical: u64) -> Extent {
        Extent {
            logical,
            len,
            physical,
            unwritten: false,
            inexact: false,
        }
    }

    const M: u64 = 1 << 20;

    #[test]
    fn same_mapping_differently_split_is_unchanged() {
        let a = [ext(0, 4 * M, 100 * M)];
        let b = [ext(0, M, 100 * M), ext(M, 3 * M, 101 * M)];
        assert_eq!(differing_chunks(&a, &b, 4 * M, M), Vec::<u64>::new());
    }

    #[test]
    fn moved_blocks_holes_and_flags_are_changes() {
        // A 4 KiB block of chunk 1 moved, chunk 3 punched, chunk 5 newly written, chunk 6's
        // preallocation written, chunk 7 inexact on one side.
        let b = [
            ext(0, 5 * M, 100 * M),
            Extent {
                unwritten: true,
                ..ext(6 * M, M, 300 * M)
            },
            ext(7 * M, M, 400 * M),
        ];
        let a = [
            ext(0, M + 4096, 100 * M),
            ext(M + 4096, 4096, 200 * M),
            ext(M + 8192, 2 * M - 8192, 101 * M + 8192),
            ext(4 * M, M, 104 * M),
            ext(5 * M, M, 500 * M),
            ext(6 * M, M, 300 * M),
            Extent {
                inexact: true,
                ..ext(7 * M, M, 400 * M)
            },
        ];
        assert_eq!(differing_chunks(&a, &b, 8 * M, M), vec![1, 3, 5, 6, 7]);
    }

    #[test]
    fn ranges_beyond_either_list_compare_as_holes() {
        let a = [ext(0, M, 100 * M)];
        assert_eq!(differing_chunks(&a, &[], 2 * M, M), vec![0]);
        assert_eq!(differing_chunks(&[], &[], 2 * M, M), Vec::<u64>::new());
    }
}
