//! A sprite's disk quota, kept by its launcher on the host side.
//!
//! A sprite's disk is a sparse 100 GB ext4 image on the host's filesystem, so its free space
//! is a promise the host may not be able to keep: a sprite could fill the host. The launcher
//! keeps a balloon file in the disk's root, outside the overlay the sprite sees (it cannot
//! reach, shrink or delete it), fallocated so that the sprite's free space is at most
//! - its quota (`storage_gb`) less what it uses, and
//! - the host's free space less a reserve for the host and the server's state.
//!
//! Fallocated blocks are unwritten extents: ext4 counts them as used, the sparse image on the
//! host never stores them. So the sprite runs out of space (ENOSPC, which programs handle)
//! before the host does, instead of its loop device failing writes (EIO, which ext4 answers
//! by going read-only). Many sprites share the headroom; the reserve absorbs what they write
//! together between two looks, which come faster as the headroom shrinks.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The balloon's name in the root of the sprite's disk (next to `upper/` and `work/`).
pub const BALLOON: &str = ".sprites-balloon";
/// Space the host always keeps: 5% of its filesystem, at least this.
const MIN_RESERVE: u64 = 2 << 30;
/// Free space a sprite always keeps, so it can boot and work a little on a full host.
const BOOT_ROOM: u64 = 32 << 20;
/// Changes smaller than this are left for later (no fallocate per written block).
const SLACK: u64 = 32 << 20;

/// Sizes of a filesystem, bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsSpace {
    /// Size.
    pub total: u64,
    /// Free for unprivileged writers.
    pub free: u64,
}

/// Statvfs of the filesystem holding `path`.
pub fn space(path: &Path) -> std::io::Result<FsSpace> {
    let s = nix::sys::statvfs::statvfs(path).map_err(std::io::Error::from)?;
    let frsize = s.fragment_size() as u64;
    Ok(FsSpace {
        total: (s.blocks() as u64).saturating_mul(frsize),
        free: (s.blocks_available() as u64).saturating_mul(frsize),
    })
}

/// What the host keeps free whatever sprites write.
pub fn reserve(host: FsSpace) -> u64 {
    (host.total / 20).max(MIN_RESERVE)
}

/// What the sprite has written that the host does not hold yet (in the page cache on its
/// way to the image): it will cost host space without the host's free space showing it.
/// `overhead` is how much more the image held than the sprite used when it was mounted.
pub fn pending(used: u64, image: u64, overhead: i64) -> u64 {
    let expected = used as i128 + overhead as i128;
    (expected - image as i128).clamp(0, u64::MAX as i128) as u64
}

/// The balloon size that leaves the sprite at most its quota and the host's headroom.
/// `disk` is the sprite's filesystem as it is with a balloon of `balloon` bytes; `pending`
/// bytes the sprite wrote are still to reach the host.
pub fn balloon_target(
    disk: FsSpace,
    balloon: u64,
    quota: Option<u64>,
    host: FsSpace,
    pending: u64,
) -> u64 {
    let free_without = disk.free.saturating_add(balloon);
    let used = disk.total.saturating_sub(free_without);
    let mut allowed = host
        .free
        .saturating_sub(reserve(host))
        .saturating_sub(pending);
    if let Some(q) = quota {
        allowed = allowed.min(q.saturating_sub(used));
    }
    // Room to boot and work in (overlay's work dir, logs), even on a full host: taken from
    // the reserve, which is there for this.
    free_without.saturating_sub(allowed.max(BOOT_ROOM))
}

/// Keeps the balloon of the disk image `image`, mounted (with `discard`, so that what the
/// sprite deletes goes back to the host) at `disk_mnt`.
pub struct DiskQuota {
    balloon: PathBuf,
    disk_mnt: PathBuf,
    image: PathBuf,
    quota: Option<u64>,
    /// Image bytes beyond the sprite's data (ext4's own blocks), measured at mount.
    overhead: i64,
}

impl DiskQuota {
    /// The quota of the disk mounted at `disk_mnt`; `quota` in bytes (`None`: the disk's size).
    /// Call right after mounting: it flushes the disk to learn the image's own overhead.
    pub fn new(disk_mnt: &Path, image: &Path, quota: Option<u64>) -> std::io::Result<Self> {
        let dir = std::fs::File::open(disk_mnt)?;
        nix::unistd::syncfs(dir.as_raw_fd()).map_err(std::io::Error::from)?;
        let balloon = disk_mnt.join(BALLOON);
        let disk = space(disk_mnt)?;
        let used = disk
            .total
            .saturating_sub(disk.free.saturating_add(allocated(&balloon)));
        Ok(Self {
            balloon,
            disk_mnt: disk_mnt.to_path_buf(),
            image: image.to_path_buf(),
            quota,
            overhead: allocated(image) as i64 - used as i64,
        })
    }

    /// Looks once and resizes the balloon if it is off by more than a little; returns when
    /// to look again (sooner when the host is close to its reserve).
    pub fn adjust(&self) -> std::io::Result<Duration> {
        let host = space(self.image.parent().unwrap_or(Path::new("/")))?;
        let disk = space(&self.disk_mnt)?;
        let current = allocated(&self.balloon);
        let used = disk.total.saturating_sub(disk.free.saturating_add(current));
        let pending = pending(used, allocated(&self.image), self.overhead);
        let target = balloon_target(disk, current, self.quota, host, pending);
        let headroom = host.free.saturating_sub(reserve(host));
        if target.abs_diff(current) > step(headroom, reserve(host)) || (target == 0 && current > 0)
        {
            self.resize(current, target)?;
        }
        Ok(if headroom < 8 << 30 {
            Duration::from_millis(100)
        } else {
            Duration::from_secs(1)
        })
    }

    fn resize(&self, current: u64, target: u64) -> std::io::Result<()> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.balloon)?;
        if target < current {
            return f.set_len(target);
        }
        // ext4 answers ENOSPC when the target no longer fits (the sprite filled its disk in
        // the meantime): take what there is, the next look settles it.
        let mut len = target;
        loop {
            match nix::fcntl::fallocate(
                f.as_raw_fd(),
                nix::fcntl::FallocateFlags::empty(),
                0,
                len as i64,
            ) {
                Ok(()) => return Ok(()),
                Err(nix::errno::Errno::ENOSPC) if len > SLACK => len -= len / 4,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Runs until `stop` is set, looking at the disk and the host as [`Self::adjust`] says.
    pub fn run(&self, stop: &std::sync::atomic::AtomicBool) {
        let mut warned = false;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let wait = match self.adjust() {
                Ok(d) => d,
                Err(e) => {
                    if !warned {
                        eprintln!("warning: disk quota: {e}");
                        warned = true;
                    }
                    Duration::from_secs(1)
                }
            };
            // Short sleeps, so a stop does not wait a whole tick.
            let mut left = wait;
            while !left.is_zero() && !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let step = left.min(Duration::from_millis(100));
                std::thread::sleep(step);
                left -= step;
            }
        }
    }
}

/// How far the balloon may be off before it is resized. Resizing changes ext4's metadata,
/// which the next checkpoint must store, so a roomy host resizes in coarse steps: at most a
/// sixteenth of the headroom and never more than half the reserve, which absorbs the error.
fn step(headroom: u64, reserve: u64) -> u64 {
    (headroom / 16).min(reserve / 2).max(SLACK)
}

/// Bytes a file occupies on its filesystem (0 if it does not exist).
fn allocated(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path)
        .map(|m| m.blocks() * 512)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: u64 = 1 << 30;

    fn fs(total: u64, free: u64) -> FsSpace {
        FsSpace { total, free }
    }

    #[test]
    fn the_sprite_sees_no_more_than_the_host_can_hold() {
        // The report: a 100 GB disk with 91 GiB free on a host with 71 GiB free.
        let host = fs(200 * G, 71 * G);
        let disk = fs(93 * G, 91 * G);
        let b = balloon_target(disk, 0, None, host, 0);
        let left = disk.free - b;
        assert_eq!(left, 71 * G - reserve(host));
        // With that balloon in place the answer stays the same.
        assert_eq!(balloon_target(fs(93 * G, left), b, None, host, 0), b);
        // A roomy host: no balloon.
        assert_eq!(balloon_target(disk, 0, None, fs(2000 * G, 1000 * G), 0), 0);
        // A full host: the sprite keeps only the room to boot in.
        assert_eq!(
            balloon_target(disk, 0, None, fs(200 * G, G), 0),
            91 * G - BOOT_ROOM
        );
    }

    #[test]
    fn the_quota_counts_what_the_sprite_uses() {
        let host = fs(2000 * G, 1000 * G);
        // 2 GiB used of a 10 GiB quota: 8 GiB left, whatever the balloon is now.
        let b = balloon_target(fs(93 * G, 91 * G), 0, Some(10 * G), host, 0);
        assert_eq!(91 * G - b, 8 * G);
        assert_eq!(
            balloon_target(fs(93 * G, 8 * G), b, Some(10 * G), host, 0),
            b
        );
        // Over quota (the quota was lowered): only the room to boot in.
        assert_eq!(
            balloon_target(fs(93 * G, 80 * G), 0, Some(G), host, 0),
            80 * G - BOOT_ROOM
        );
    }

    #[test]
    fn data_on_its_way_to_the_host_counts() {
        // The sprite wrote 3 GiB into the page cache; the host does not show it yet. Without
        // counting it the balloon would shrink and let the sprite take twice its headroom.
        let host = fs(200 * G, 30 * G);
        let before = balloon_target(fs(93 * G, 91 * G), 0, None, host, 0);
        assert_eq!(before, 71 * G);
        let p = pending(5 * G, 2 * G + 100, 100);
        assert_eq!(p, 3 * G);
        let after = balloon_target(fs(93 * G, 17 * G), before, None, host, p);
        assert_eq!(after, before, "the sprite's room shrank by what it wrote");
        // Written back (the image grew), nothing is pending.
        assert_eq!(pending(5 * G, 5 * G + 100, 100), 0);
        assert_eq!(pending(5 * G, 6 * G, 100), 0);
    }

    #[test]
    fn resizes_are_coarse_on_a_roomy_host_and_fine_near_the_reserve() {
        assert_eq!(step(60 * G, 12 * G), 60 * G / 16);
        assert_eq!(step(100 * G, 2 * G), G);
        assert_eq!(step(100 << 20, 2 * G), SLACK);
    }

    #[test]
    fn the_reserve_is_a_twentieth_and_at_least_2_gib() {
        assert_eq!(reserve(fs(1000 * G, 0)), 50 * G);
        assert_eq!(reserve(fs(10 * G, 0)), 2 * G);
    }
}
