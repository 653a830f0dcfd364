//! Each sprite's writable disk: an ext4 filesystem in a sparse file.
//!
//! A template filesystem is made once with mkfs and copied sparsely for each new sprite, which
//! takes milliseconds instead of the hundreds mkfs needs for 100 GB. Only written blocks take
//! host space.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{io_err, run, Result};

/// Virtual size of a sprite disk.
pub const DISK_SIZE_BYTES: u64 = 100 * 1000 * 1000 * 1000;

/// Makes per-sprite disks from a cached template.
#[derive(Debug, Clone)]
pub struct DiskFactory {
    template: PathBuf,
}

impl DiskFactory {
    /// A factory that keeps its template in `image_dir`.
    pub fn new(image_dir: &Path) -> Self {
        Self {
            template: image_dir.join(format!("empty-{}G.ext4", DISK_SIZE_BYTES / 1_000_000_000)),
        }
    }

    /// Makes the template if it does not exist yet.
    pub fn ensure_template(&self) -> Result<()> {
        if self.template.exists() {
            return Ok(());
        }
        if let Some(p) = self.template.parent() {
            std::fs::create_dir_all(p).map_err(io_err("creating image directory"))?;
        }
        let tmp = self
            .template
            .with_extension(format!("tmp-{}", std::process::id()));
        let f = std::fs::File::create(&tmp).map_err(io_err("creating disk template"))?;
        f.set_len(DISK_SIZE_BYTES)
            .map_err(io_err("sizing disk template"))?;
        drop(f);
        run(Command::new("mkfs.ext4")
            .args([
                "-q",
                "-F",
                "-m",
                "0",
                "-E",
                "lazy_itable_init=1,lazy_journal_init=1",
            ])
            .args(["-L", "sprite"])
            .arg(&tmp))?;
        std::fs::rename(&tmp, &self.template).map_err(io_err("installing disk template"))?;
        Ok(())
    }

    /// Creates a new disk at `dest` (which must not exist).
    pub fn create(&self, dest: &Path) -> Result<()> {
        self.ensure_template()?;
        if let Some(p) = dest.parent() {
            std::fs::create_dir_all(p).map_err(io_err("creating sprite directory"))?;
        }
        let tmp = dest.with_extension("tmp");
        run(Command::new("cp")
            .arg("--sparse=always")
            .arg(&self.template)
            .arg(&tmp))?;
        std::fs::rename(&tmp, dest).map_err(io_err("installing sprite disk"))?;
        Ok(())
    }
}

/// Bytes a (sparse) file really occupies on the host.
pub fn allocated_bytes(path: &Path) -> Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).map_err(io_err(format!("stat {}", path.display())))?;
    Ok(m.blocks() * 512)
}
