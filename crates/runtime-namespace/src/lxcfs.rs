//! What a sprite sees of its own machine: Debian's `lxcfs` renders `/proc/meminfo`,
//! `/proc/uptime`, `/proc/stat`, `/proc/loadavg` and friends for the cgroup and PID namespace
//! of whoever reads them, so `free`, `top` and `uptime` in a sprite show the sprite, not the
//! host. One lxcfs serves every sprite of the host; it runs in its own session, so it outlives
//! a server restart as sprites do, and each sprite's PID 1 binds its files over `/proc`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Where this project mounts its lxcfs when the host has none mounted.
pub const MOUNT_POINT: &str = "/run/sprites-lxcfs";
/// Where Debian's lxcfs service mounts it.
const SYSTEM_MOUNT_POINT: &str = "/var/lib/lxcfs";

/// Files of the lxcfs mount bound over the same paths in a sprite.
pub const FILES: &[&str] = &[
    "proc/cpuinfo",
    "proc/diskstats",
    "proc/loadavg",
    "proc/meminfo",
    "proc/stat",
    "proc/swaps",
    "proc/uptime",
    "sys/devices/system/cpu/online",
];

/// Whether a working lxcfs is mounted at `mnt` (a dead one answers ENOTCONN).
fn works(mnt: &Path) -> bool {
    std::fs::read(mnt.join("proc/meminfo")).is_ok_and(|m| !m.is_empty())
}

fn mounted(mnt: &Path) -> bool {
    let want = mnt.to_string_lossy();
    std::fs::read_to_string("/proc/self/mountinfo").is_ok_and(|m| {
        m.lines().any(|l| {
            let mut f = l.split(' ');
            f.nth(4) == Some(&*want) && l.contains(" - fuse.lxcfs ")
        })
    })
}

/// A working lxcfs mount: the host's own if it runs one, else ours, started (or restarted,
/// after a crash left its mount dead) here. The error says what is missing.
pub fn ensure() -> Result<PathBuf, String> {
    let system = Path::new(SYSTEM_MOUNT_POINT);
    if mounted(system) && works(system) {
        return Ok(system.to_path_buf());
    }
    // Servers starting together start one lxcfs.
    let lock = std::fs::File::create(format!("{MOUNT_POINT}.lock"))
        .map_err(|e| format!("{MOUNT_POINT}.lock: {e}"))?;
    let _guard = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| format!("locking {MOUNT_POINT}.lock: {e}"))?;
    let mnt = Path::new(MOUNT_POINT);
    if mounted(mnt) {
        if works(mnt) {
            return Ok(mnt.to_path_buf());
        }
        let _ = nix::mount::umount2(mnt, nix::mount::MntFlags::MNT_DETACH);
    }
    std::fs::create_dir_all(mnt).map_err(|e| format!("{MOUNT_POINT}: {e}"))?;
    let log = std::fs::File::create(format!("{MOUNT_POINT}.log"))
        .map_err(|e| format!("{MOUNT_POINT}.log: {e}"))?;
    let mut cmd = std::process::Command::new("lxcfs");
    cmd.args([
        "--foreground",
        "--enable-loadavg",
        "--disable-swap",
        "--enable-cfs",
    ])
    .arg(format!("--pidfile={MOUNT_POINT}.pid"))
    .arg(mnt)
    .stdin(std::process::Stdio::null())
    .stdout(std::process::Stdio::null())
    .stderr(log);
    // SAFETY: setsid is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("running lxcfs: {e} (apt-get install lxcfs)"))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !works(mnt) {
        if let Ok(Some(st)) = child.try_wait() {
            return Err(format!("lxcfs exited ({st}); see {MOUNT_POINT}.log"));
        }
        if Instant::now() > deadline {
            return Err(format!("lxcfs did not come up; see {MOUNT_POINT}.log"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // It runs on in its own session, past this server's life; nobody waits for it.
    drop(child);
    Ok(mnt.to_path_buf())
}
