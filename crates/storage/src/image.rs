//! The read-only base image every sprite's disk is layered over.
//!
//! Built once with debootstrap from the host's own Debian mirror and release, then kept under
//! `<image-dir>/base/rootfs` next to a `base/image.json` that marks it complete. A build goes
//! to a temporary directory and is renamed into place, so an interrupted build never leaves a
//! half image that looks whole.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::{io_err, mirror::Mirror, run, Result};

/// Packages a developer expects in a sprite.
pub const PACKAGES: &[&str] = &[
    "bash",
    "coreutils",
    "sudo",
    "procps",
    "iproute2",
    "curl",
    "ca-certificates",
    "git",
    "python3",
    "python3-pip",
    "python3-venv",
    "nodejs",
    "npm",
    "build-essential",
    "less",
    "nano",
    "locales",
    "redis-server",
];

/// Bumped when the recipe changes, so old caches are rebuilt.
pub const RECIPE_VERSION: u32 = 2;

/// Metadata written next to a complete image.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ImageInfo {
    /// Recipe version that built it.
    pub recipe: u32,
    /// Debian release.
    pub suite: String,
    /// Mirror it came from.
    pub mirror: String,
    /// Build time, Unix seconds.
    pub built_at: u64,
}

/// Locations of the base image inside an image directory.
#[derive(Debug, Clone)]
pub struct BaseImage {
    dir: PathBuf,
}

impl BaseImage {
    /// The image kept under `image_dir`.
    pub fn new(image_dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: image_dir.into().join("base"),
        }
    }

    /// The root filesystem tree.
    pub fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs")
    }

    fn info_path(&self) -> PathBuf {
        self.dir.join("image.json")
    }

    /// The metadata of a complete image of the current recipe, if there is one.
    pub fn info(&self) -> Option<ImageInfo> {
        let text = std::fs::read_to_string(self.info_path()).ok()?;
        let info: ImageInfo = serde_json::from_str(&text).ok()?;
        (info.recipe == RECIPE_VERSION && self.rootfs().join("bin/sh").exists()).then_some(info)
    }

    /// Whether a complete, current image exists.
    pub fn is_ready(&self) -> bool {
        self.info().is_some()
    }

    /// Builds the image from `mirror`, replacing any previous one. Takes about a minute.
    pub fn build(&self, mirror: &Mirror) -> Result<ImageInfo> {
        std::fs::create_dir_all(&self.dir).map_err(io_err("creating image directory"))?;
        let tmp = self
            .dir
            .join(format!("rootfs.build-{}", std::process::id()));
        remove_tree(&tmp)?;
        tracing::info!(mirror = %mirror.uri, suite = %mirror.suite, "debootstrap base image");
        run(Command::new("debootstrap")
            .args(["--variant=minbase", "--merged-usr", &mirror.suite])
            .arg(&tmp)
            .arg(&mirror.uri))?;
        customize(&tmp, mirror)?;
        let old = self.dir.join(format!("rootfs.old-{}", std::process::id()));
        let _ = std::fs::remove_file(self.info_path());
        if self.rootfs().exists() {
            std::fs::rename(self.rootfs(), &old).map_err(io_err("moving old image aside"))?;
        }
        std::fs::rename(&tmp, self.rootfs()).map_err(io_err("installing new image"))?;
        remove_tree(&old)?;
        let info = ImageInfo {
            recipe: RECIPE_VERSION,
            suite: mirror.suite.clone(),
            mirror: mirror.uri.clone(),
            built_at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        };
        let tmp_info = self.dir.join("image.json.tmp");
        std::fs::write(
            &tmp_info,
            serde_json::to_vec_pretty(&info).unwrap_or_default(),
        )
        .map_err(io_err("writing image.json"))?;
        std::fs::rename(&tmp_info, self.info_path()).map_err(io_err("writing image.json"))?;
        Ok(info)
    }
}

fn remove_tree(p: &Path) -> Result<()> {
    match std::fs::remove_dir_all(p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(io_err(format!("removing {}", p.display()))(e))
        }
        _ => Ok(()),
    }
}

/// Installs the packages and the `sprite` user inside a fresh debootstrap tree.
fn customize(root: &Path, mirror: &Mirror) -> Result<()> {
    let w = |rel: &str, text: &str| {
        let p = root.join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).map_err(io_err(format!("creating {rel}")))?;
        }
        std::fs::write(&p, text).map_err(io_err(format!("writing {rel}")))
    };
    let s = &mirror.suite;
    let u = &mirror.uri;
    w(
        "etc/apt/sources.list",
        &format!("deb {u} {s} main\ndeb {u} {s}-updates main\n"),
    )?;
    // Name resolution during the build uses the host's resolver configuration.
    if let Ok(resolv) = std::fs::read_to_string("/etc/resolv.conf") {
        w("etc/resolv.conf", &resolv)?;
    }
    // Keep the image small: no docs or man pages.
    w(
        "etc/dpkg/dpkg.cfg.d/01-sprites-nodoc",
        "path-exclude /usr/share/doc/*\npath-include /usr/share/doc/*/copyright\npath-exclude /usr/share/man/*\npath-exclude /usr/share/info/*\n",
    )?;
    let script = format!(
        r#"set -e
export DEBIAN_FRONTEND=noninteractive LC_ALL=C
apt-get update -q
apt-get install -y -q --no-install-recommends {pkgs}
sed -i 's/^# *en_US.UTF-8/en_US.UTF-8/' /etc/locale.gen && locale-gen >/dev/null
useradd --create-home --uid 1000 --user-group --shell /bin/bash --groups sudo sprite
echo 'sprite ALL=(ALL) NOPASSWD:ALL' > /etc/sudoers.d/sprite
chmod 0440 /etc/sudoers.d/sprite
apt-get clean
rm -rf /var/lib/apt/lists/*
"#,
        pkgs = PACKAGES.join(" ")
    );
    run(Command::new("chroot")
        .arg(root)
        .args(["/bin/sh", "-c", &script]))?;
    w("etc/hostname", "sprite\n")?;
    w(
        "etc/hosts",
        "127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n",
    )?;
    // The sprite's own resolver arrives with networking; until then none is configured.
    w("etc/resolv.conf", "")?;
    w("etc/profile.d/sprite.sh", "export LANG=${LANG:-C.UTF-8}\n")?;
    std::fs::create_dir_all(root.join(".sprite")).map_err(io_err("creating /.sprite"))?;
    Ok(())
}
