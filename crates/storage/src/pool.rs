//! A reflink-capable storage pool for a data dir whose filesystem has no reflinks (ext4): a
//! file-backed XFS volume inside the data dir (`pool.xfs`, sparse, mounted at `pool/` at
//! each start), the way LXD makes a loop-backed pool. Sprite disks and local checkpoint
//! chunks live there, so a checkpoint or fork costs what changed instead of the whole disk.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{io_err, Result, StorageError};

/// The pool file of a data dir.
pub fn file(data_dir: &Path) -> PathBuf {
    data_dir.join("pool.xfs")
}

/// Where the pool is mounted.
pub fn mount_point(data_dir: &Path) -> PathBuf {
    data_dir.join("pool")
}

/// Whether a pool was made for this data dir (then it holds the data and is always used).
pub fn exists(data_dir: &Path) -> bool {
    file(data_dir).exists()
}

/// A sensible size: half of the free space, between 10 GiB and 1 TiB (the file is sparse,
/// so this is a ceiling, not a cost).
pub fn default_size(data_dir: &Path) -> u64 {
    let free = nix::sys::statvfs::statvfs(data_dir)
        .map(|s| s.blocks_available() * s.fragment_size())
        .unwrap_or(0);
    (free / 2).clamp(10 << 30, 1 << 40)
}

fn mounted_at(dir: &Path) -> bool {
    let Ok(canon) = std::fs::canonicalize(dir) else {
        return false;
    };
    let want = canon.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(want.as_str()))
}

fn run(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd.output().map_err(io_err(format!("running {what}")))?;
    if !out.status.success() {
        return Err(StorageError::Config(format!(
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Makes the pool if it does not exist (`size` bytes) and mounts it if it is not mounted;
/// returns where it is mounted. Idempotent, and safe after a crash (a half-made pool file
/// is made again; a pool left mounted is reused).
pub fn ensure(data_dir: &Path, size: u64) -> Result<PathBuf> {
    let f = file(data_dir);
    let mnt = mount_point(data_dir);
    std::fs::create_dir_all(&mnt).map_err(io_err("creating the pool's mount point"))?;
    if mounted_at(&mnt) {
        return Ok(mnt);
    }
    if !f.exists() {
        // Made under a temporary name: a crash never leaves a file that looks like a pool.
        let tmp = data_dir.join("pool.xfs.tmp");
        let _ = std::fs::remove_file(&tmp);
        std::fs::File::create(&tmp)
            .and_then(|h| h.set_len(size))
            .map_err(io_err("creating the pool file"))?;
        run(
            Command::new("mkfs.xfs")
                .args(["-q", "-f", "-m", "reflink=1"])
                .arg(&tmp),
            "mkfs.xfs (install xfsprogs, or run with --storage-pool none)",
        )?;
        std::fs::rename(&tmp, &f).map_err(io_err("installing the pool file"))?;
    }
    run(
        Command::new("mount")
            .args(["-o", "loop,discard"])
            .arg(&f)
            .arg(&mnt),
        "mounting the storage pool",
    )?;
    Ok(mnt)
}

/// Moves `name` (a directory of the data dir) into the pool, copying (the pool is another
/// filesystem) to a temporary name first: a crash leaves the old copy whole, and the pool's
/// copy counts only once renamed into place.
pub fn move_in(data_dir: &Path, pool: &Path, name: &str) -> Result<()> {
    let src = data_dir.join(name);
    let dst = pool.join(name);
    let tmp = pool.join(format!("{name}.moving"));
    if dst.exists() {
        // Moved by an earlier start that stopped before removing the old copy.
        if src.exists() {
            std::fs::remove_dir_all(&src).map_err(io_err("removing the moved directory"))?;
        }
        return Ok(());
    }
    if !src.exists() {
        return Ok(());
    }
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io_err("removing a half-moved directory"))?;
    }
    run(
        Command::new("cp")
            .args(["-a", "--sparse=always"])
            .arg(&src)
            .arg(&tmp),
        "copying into the storage pool",
    )?;
    std::fs::rename(&tmp, &dst).map_err(io_err("renaming into the pool"))?;
    std::fs::remove_dir_all(&src).map_err(io_err("removing the moved directory"))?;
    Ok(())
}
