//! What a microVM sprite boots (RFC 0001): Debian's cloud kernel, an initramfs that loads the
//! virtio modules and overlays the sprite's disk on the base image, and the base image as a
//! read-only ext4 disk. Built once from Debian's packages and cached beside the base image.
//!
//! The initramfs finds the base image, the sprite's disk and checkpoint disks by their virtio
//! serials (`base`, `disk`, `ck-<id>`) and hands over to `/.sprite/bin/sprite-agent` as PID 1 when the agent was appended to it (a
//! second cpio archive, which Linux unpacks over the first).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{io_err, run, Result, StorageError};

/// Debian package of the guest kernel (a metapackage naming the current version).
pub const KERNEL_PACKAGE: &str = "linux-image-cloud-amd64";

/// Kernel modules the initramfs loads, in dependency order: the cloud kernel builds every
/// virtio driver as a module (ext4, serial and ACPI are built in).
pub const MODULES: &[&str] = &[
    "drivers/virtio/virtio_ring.ko",
    "drivers/virtio/virtio.ko",
    "drivers/virtio/virtio_mmio.ko",
    "drivers/block/virtio_blk.ko",
    "drivers/char/virtio_console.ko",
    "net/core/failover.ko",
    "drivers/net/net_failover.ko",
    "drivers/net/virtio_net.ko",
    "net/vmw_vsock/vsock.ko",
    "net/vmw_vsock/vmw_vsock_virtio_transport_common.ko",
    "net/vmw_vsock/vmw_vsock_virtio_transport.ko",
    "fs/overlayfs/overlay.ko",
];

/// Bumped when the recipe changes, so old caches are rebuilt.
pub const GUEST_RECIPE: u32 = 5;

const INIT: &str = r#"#!/bin/busybox sh
# sprite-init: PID 1 of the initramfs. Loads the virtio drivers, overlays the sprite's disk
# on the read-only base image, and hands over to the agent.
bb=/bin/busybox
$bb mount -t proc proc /proc
$bb mount -t devtmpfs dev /dev
$bb mkdir -p /sys
$bb mount -t sysfs sysfs /sys
for m in $(cat /modules.order); do $bb insmod "/modules/$m" || echo "sprite-init: insmod $m failed"; done
[ -f /sprite.conf ] && . /sprite.conf
# Disks are found by their virtio serial (base, disk, ck-<checkpoint>): virtio-mmio
# enumeration order is not the command line's, and checkpoint disks carry the sprite disk's
# label.
find_disks() {
    base=; disk=; cks=; count=0
    for b in /sys/block/vd*; do
        [ -e "$b/serial" ] || continue
        s=$($bb cat "$b/serial"); d=/dev/${b##*/}; count=$((count+1))
        case "$s" in
            base) base=$d ;;
            disk) disk=$d ;;
            ck-*) cks="$cks ${s#ck-}=$d" ;;
        esac
    done
    [ -n "$base" ] && [ -n "$disk" ] && [ $count -ge ${SPRITE_DISKS:-2} ]
}
n=0
while ! find_disks && [ $n -lt 500 ]; do $bb usleep 10000; n=$((n+1)); done
$bb mkdir -p /lower /disk /newroot
$bb mount -t ext4 -o ro,noload "$base" /lower || { echo "sprite-init: no base image"; $bb poweroff -f; }
$bb mount -t ext4 -o noatime "$disk" /disk || { echo "sprite-init: no sprite disk"; $bb poweroff -f; }
$bb mkdir -p /disk/upper /disk/work
$bb mount -t overlay overlay -o lowerdir=/lower,upperdir=/disk/upper,workdir=/disk/work /newroot
# Recent checkpoints, read-only, as /.sprite/checkpoints/<id> (their upper layer over the base).
views=/newroot/.sprite/checkpoints
$bb mkdir -p $views
$bb mount -t tmpfs -o mode=0755,size=64k tmpfs $views
for kv in $cks; do
    id=${kv%%=*}; dev=${kv#*=}
    $bb mkdir -p "/ck/$id" "$views/$id"
    $bb mount -t ext4 -o ro,noload "$dev" "/ck/$id" \
        && $bb mount -t overlay overlay -o "ro,lowerdir=/ck/$id/upper:/lower" "$views/$id"
done
echo "sprite-init: root ready, Debian $($bb cat /newroot/etc/debian_version)"
if [ -x /agent/sprite-agent ]; then
    [ -n "$SPRITE_HOSTNAME" ] && $bb hostname "$SPRITE_HOSTNAME"
    $bb ip link set lo up
    if [ -n "$SPRITE_NET" ]; then
        $bb ip link set eth0 up
        $bb ip addr add 10.0.0.1/24 dev eth0
        $bb ip route add default via 10.0.0.2
    fi
    r=/newroot
    $bb mkdir -p $r/.sprite/bin $r/.sprite/disk $r/proc $r/sys $r/dev $r/tmp
    $bb cp /agent/sprite-agent $r/.sprite/bin/sprite-agent
    $bb ln -sf sprite-agent $r/.sprite/bin/sprite-env
    $bb mount --move /disk $r/.sprite/disk
    $bb chmod 700 $r/.sprite/disk
    $bb mount --move /dev $r/dev
    $bb mkdir -p $r/dev/pts $r/dev/shm
    $bb mount -t devpts -o newinstance,ptmxmode=0666,mode=0620,gid=5 devpts $r/dev/pts
    $bb ln -sf pts/ptmx $r/dev/ptmx 2>/dev/null || { $bb rm -f $r/dev/ptmx; $bb ln -s pts/ptmx $r/dev/ptmx; }
    $bb mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs $r/dev/shm
    $bb mount -t sysfs -o ro,nosuid,nodev,noexec sysfs $r/sys
    $bb umount /proc /sys
    $bb mount -t proc -o nosuid,nodev,noexec proc $r/proc
    exec $bb switch_root $r /.sprite/bin/sprite-agent init
fi
echo "sprite-init: no agent in the initramfs; powering off"
$bb sync
$bb poweroff -f
"#;

/// The cached guest files under `<image-dir>/microvm`.
#[derive(Debug, Clone)]
pub struct GuestArtifacts {
    dir: PathBuf,
}

impl GuestArtifacts {
    /// The artifacts kept under `image_dir`.
    pub fn new(image_dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: image_dir.into().join("microvm"),
        }
    }

    /// The guest kernel (bzImage).
    pub fn kernel(&self) -> PathBuf {
        self.dir.join("vmlinuz")
    }

    /// The initramfs without the agent.
    pub fn initramfs(&self) -> PathBuf {
        self.dir.join("initramfs.cpio.gz")
    }

    /// The disk of the base whose tree is `rootfs` (`bases/<id>/rootfs`): an ext4 image
    /// beside it, attached read-only. Made by [`GuestArtifacts::ensure_base_disk`].
    pub fn base_disk(rootfs: &Path) -> PathBuf {
        rootfs.with_file_name("base.ext4")
    }

    /// Makes the disk of the base at `rootfs` unless it exists (under a lock, so sprites
    /// starting together make it once). Tens of seconds for a full image, once per base.
    pub fn ensure_base_disk(rootfs: &Path) -> Result<PathBuf> {
        let disk = Self::base_disk(rootfs);
        if disk.exists() {
            return Ok(disk);
        }
        let lock = std::fs::File::create(rootfs.with_file_name("base.ext4.lock"))
            .map_err(io_err("creating base disk lock"))?;
        let _guard = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| io_err("locking base disk")(e.into()))?;
        if disk.exists() {
            return Ok(disk);
        }
        // Sized to its contents plus room for ext4's own data.
        let tmp = rootfs.with_file_name(format!("base.ext4.tmp-{}", std::process::id()));
        let used = crate::image::tree_bytes(rootfs)?;
        let size = (used + used / 4 + (256 << 20)).next_multiple_of(1 << 20);
        let f = std::fs::File::create(&tmp).map_err(io_err("creating base disk"))?;
        f.set_len(size).map_err(io_err("sizing base disk"))?;
        drop(f);
        let r = run(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-m", "0", "-L", "sprite-base", "-d"])
            .arg(rootfs)
            .arg(&tmp));
        if let Err(e) = r {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        std::fs::rename(&tmp, &disk).map_err(io_err("installing base disk"))?;
        Ok(disk)
    }

    fn stamp(&self) -> PathBuf {
        self.dir.join("guest.json")
    }

    /// Whether a complete kernel and initramfs of the current recipe exist.
    pub fn is_ready(&self) -> bool {
        std::fs::read_to_string(self.stamp())
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .is_some_and(|v| v["recipe"] == GUEST_RECIPE)
            && self.kernel().exists()
            && self.initramfs().exists()
    }

    /// Builds the kernel and initramfs from Debian's packages (through the host's apt).
    pub fn build(&self) -> Result<()> {
        std::fs::create_dir_all(&self.dir).map_err(io_err("creating microvm directory"))?;
        let work = self.dir.join(format!("build-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work).map_err(io_err("creating build directory"))?;
        let r = self.build_in(&work);
        let _ = std::fs::remove_dir_all(&work);
        r
    }

    fn build_in(&self, work: &Path) -> Result<()> {
        // The metapackage names the versioned kernel package; download both plus busybox.
        let version = kernel_package_version()?;
        run(Command::new("apt-get").current_dir(work).args([
            "download",
            "-q",
            &version,
            "busybox-static",
        ]))?;
        let debs: Vec<PathBuf> = std::fs::read_dir(work)
            .map_err(io_err("listing downloads"))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "deb"))
            .collect();
        let x = work.join("x");
        for deb in &debs {
            run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&x))?;
        }
        let boot = x.join("boot");
        let kernel = std::fs::read_dir(&boot)
            .map_err(io_err("reading the kernel package"))?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
            })
            .ok_or_else(|| StorageError::Config(format!("{version} has no vmlinuz")))?;
        let release = kernel
            .file_name()
            .map(|n| {
                n.to_string_lossy()
                    .trim_start_matches("vmlinuz-")
                    .to_string()
            })
            .unwrap_or_default();
        let mods = x.join("lib/modules").join(&release).join("kernel");

        // The initramfs tree.
        let root = work.join("initramfs");
        for d in ["bin", "modules", "proc", "dev", "agent"] {
            std::fs::create_dir_all(root.join(d)).map_err(io_err("creating initramfs tree"))?;
        }
        std::fs::copy(x.join("bin/busybox"), root.join("bin/busybox"))
            .map_err(io_err("copying busybox"))?;
        let mut order = String::new();
        for m in MODULES {
            let name = Path::new(m).file_name().expect("module has a name");
            std::fs::copy(mods.join(m), root.join("modules").join(name))
                .map_err(io_err(format!("copying module {m}")))?;
            order.push_str(&name.to_string_lossy());
            order.push('\n');
        }
        std::fs::write(root.join("modules.order"), order).map_err(io_err("writing modules"))?;
        write_executable(&root.join("init"), INIT)?;
        let cpio = work.join("initramfs.cpio.gz");
        cpio_gz(&root, &cpio)?;

        for (from, to) in [(kernel, self.kernel()), (cpio, self.initramfs())] {
            std::fs::rename(&from, &to).map_err(io_err(format!("installing {}", to.display())))?;
        }
        let stamp = serde_json::json!({
            "recipe": GUEST_RECIPE,
            "kernel": release,
        });
        std::fs::write(self.stamp(), stamp.to_string()).map_err(io_err("writing guest.json"))?;
        Ok(())
    }

    /// The initramfs with `agent` appended as `/agent/sprite-agent`, written to `dest`.
    pub fn initramfs_with_agent(&self, agent: &Path, dest: &Path) -> Result<()> {
        let work = dest.with_extension("agent-tree");
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(work.join("agent")).map_err(io_err("creating agent tree"))?;
        std::fs::copy(agent, work.join("agent/sprite-agent")).map_err(io_err("copying agent"))?;
        let extra = dest.with_extension("agent.cpio.gz");
        cpio_gz(&work, &extra)?;
        let mut out = std::fs::read(self.initramfs()).map_err(io_err("reading initramfs"))?;
        out.extend(std::fs::read(&extra).map_err(io_err("reading agent archive"))?);
        std::fs::write(dest, out).map_err(io_err("writing initramfs"))?;
        let _ = std::fs::remove_file(&extra);
        let _ = std::fs::remove_dir_all(&work);
        Ok(())
    }
}

fn kernel_package_version() -> Result<String> {
    if let Ok(v) = apt_kernel_dependency() {
        return Ok(v);
    }
    // Fresh machines (and containers) often have no package lists yet.
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    apt_kernel_dependency()
}

fn apt_kernel_dependency() -> Result<String> {
    let out = Command::new("apt-cache")
        .args(["depends", KERNEL_PACKAGE])
        .output()
        .map_err(io_err("running apt-cache"))?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.trim().strip_prefix("Depends: "))
        .filter(|p| p.starts_with("linux-image-"))
        .map(str::to_string)
        .ok_or_else(|| {
            StorageError::Config(format!(
                "apt knows no {KERNEL_PACKAGE} (run apt-get update)"
            ))
        })
}

fn write_executable(path: &Path, text: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).map_err(io_err(format!("writing {}", path.display())))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).map_err(io_err("chmod"))
}

/// A gzip'd newc cpio archive of `dir`, made by Debian's cpio and gzip.
pub fn cpio_gz(dir: &Path, dest: &Path) -> Result<()> {
    let out = std::fs::File::create(dest).map_err(io_err("creating archive"))?;
    run(Command::new("sh")
        .current_dir(dir)
        .arg("-c")
        .arg("find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0 | gzip -1")
        .stdout(out))
}
