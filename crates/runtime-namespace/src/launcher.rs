//! The launcher: the host-side process that builds one sprite and then supervises it.
//!
//! It runs as host root, single-threaded (it forks), started by the server as
//! `<launcher> <run-dir>/launch.json`:
//!
//! ```text
//! L0  reads the config, forks L1, waits for "ok"/an error on a pipe, exits: the server
//!     learns the outcome from L0's exit status and stderr.
//! L1  (setsid) private mount namespace; loop-mounts the sprite's ext4 disk; forks C;
//!     writes C's uid/gid maps (sprite 0..65536 → host uid_base..); mounts the base image
//!     idmapped to C's user namespace; overlays the disk on it; fills /dev and /.sprite/bin;
//!     puts C in the sprite's cgroup; says "go"; then relays the agent's log and waits.
//! C   new user namespace → (after go) new mount, pid, uts, ipc, net, cgroup namespaces;
//!     forks P and waits for it.
//! P   PID 1 of the sprite: mounts /proc, /sys, /dev/pts; pivot_root; seccomp; execs the
//!     agent with its listening socket on fd 3.
//! ```
//!
//! The mount namespaces hold every mount, so when the sprite's last process and L1 are gone,
//! the mounts, the loop device and the disk are released without leaving anything behind.
//! The agent socket is a host path outside the sprite's root: nothing inside can reach it.

use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};
use serde::{Deserialize, Serialize};
use sprites_runtime::SpriteSpec;

use crate::cgroup::Cgroup;

/// Everything the launcher needs, written by the backend as `launch.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LaunchConfig {
    /// The sprite.
    pub spec: SpriteSpec,
    /// Host-only directory of the sprite's runtime files (socket, pid file, mount points).
    pub run_dir: PathBuf,
    /// Base image root.
    pub base_rootfs: PathBuf,
    /// Agent binary on the host.
    pub agent_bin: PathBuf,
    /// Server instance, for cgroup paths.
    pub cgroup_instance: String,
    /// Network namespace to join (made by the network crate); `None` = loopback only.
    #[serde(default)]
    pub netns: Option<PathBuf>,
    /// lxcfs mount whose files PID 1 binds over `/proc` (see [`crate::lxcfs`]).
    #[serde(default)]
    pub lxcfs: Option<PathBuf>,
}

/// Size of the uid/gid range of each sprite.
pub const ID_RANGE: u32 = 65536;
/// Longest agent log kept on the host before it is started over.
const LOG_CAP: u64 = 8 << 20;

type Res<T> = Result<T, String>;

fn ctx<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// Entry point. Never returns.
pub fn main(config_path: &Path) -> ! {
    let cfg: LaunchConfig = match std::fs::read(config_path)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("reading {}: {e}", config_path.display());
            std::process::exit(1)
        }
    };
    let (ready_r, ready_w) = match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("pipe: {e}");
            std::process::exit(1)
        }
    };
    // SAFETY: the launcher is single-threaded at this point.
    match unsafe { fork() } {
        Ok(ForkResult::Parent { .. }) => {
            drop(ready_w);
            // "ok\n" means ready; anything else, up to EOF, is the reason it failed.
            let mut r = File::from(ready_r);
            let mut buf = Vec::new();
            let mut byte = [0u8; 1];
            while let Ok(1) = r.read(&mut byte) {
                buf.push(byte[0]);
                if buf == b"ok\n" {
                    std::process::exit(0)
                }
            }
            let msg = String::from_utf8_lossy(&buf).trim().to_string();
            let msg = if msg.is_empty() {
                "launcher died during setup".into()
            } else {
                msg
            };
            eprintln!("{msg}");
            std::process::exit(1)
        }
        Ok(ForkResult::Child) => {
            drop(ready_r);
            let mut ready = Some(File::from(ready_w));
            let code = match supervise(&cfg, &mut ready) {
                Ok(()) => 0,
                Err(e) => {
                    if let Some(r) = ready.as_mut() {
                        let _ = r.write_all(e.as_bytes());
                    }
                    eprintln!("launcher: {e}");
                    1
                }
            };
            std::process::exit(code)
        }
        Err(e) => {
            eprintln!("fork: {e}");
            std::process::exit(1)
        }
    }
}

/// Runtime paths of one sprite.
pub struct RunPaths {
    /// Agent socket.
    pub socket: PathBuf,
    /// L1's pid.
    pub pid_file: PathBuf,
    /// Mount point of the disk.
    pub disk_mnt: PathBuf,
    /// Mount point of the idmapped base.
    pub lower: PathBuf,
    /// Mount point of the sprite's root.
    pub root: PathBuf,
    /// Launcher log.
    pub launcher_log: PathBuf,
    /// Agent log.
    pub agent_log: PathBuf,
}

impl RunPaths {
    /// Paths under `run_dir`.
    pub fn new(run_dir: &Path) -> Self {
        Self {
            socket: run_dir.join("agent.sock"),
            pid_file: run_dir.join("launcher.pid"),
            disk_mnt: run_dir.join("mnt/disk"),
            lower: run_dir.join("mnt/lower"),
            root: run_dir.join("mnt/root"),
            launcher_log: run_dir.join("launcher.log"),
            agent_log: run_dir.join("agent.log"),
        }
    }
}

fn pipe() -> Res<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(ctx("pipe"))
}

fn supervise(cfg: &LaunchConfig, ready: &mut Option<File>) -> Res<()> {
    nix::unistd::setsid().map_err(ctx("setsid"))?;
    let paths = RunPaths::new(&cfg.run_dir);
    // Keep our stdio away from the server's pipes: L0's stderr must reach EOF when L0 exits.
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&paths.launcher_log)
        .map_err(ctx("opening launcher log"))?;
    let devnull = File::open("/dev/null").map_err(ctx("opening /dev/null"))?;
    nix::unistd::dup2(devnull.as_raw_fd(), 0).map_err(ctx("dup2"))?;
    nix::unistd::dup2(log.as_raw_fd(), 1).map_err(ctx("dup2"))?;
    nix::unistd::dup2(log.as_raw_fd(), 2).map_err(ctx("dup2"))?;
    // The server stops sprites through the agent or the cgroup, never by signalling us.
    // SAFETY: installing SIG_IGN has no handler code to run.
    unsafe {
        for s in [
            nix::sys::signal::SIGTERM,
            nix::sys::signal::SIGINT,
            nix::sys::signal::SIGHUP,
        ] {
            let _ = nix::sys::signal::signal(s, nix::sys::signal::SigHandler::SigIgn);
        }
    }
    std::fs::write(&paths.pid_file, std::process::id().to_string())
        .map_err(ctx("writing pid file"))?;

    for d in [&paths.disk_mnt, &paths.lower, &paths.root] {
        std::fs::create_dir_all(d).map_err(ctx("creating mount points"))?;
    }
    unshare(CloneFlags::CLONE_NEWNS).map_err(ctx("unshare mount namespace"))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(ctx("making mounts private"))?;
    let status = Command::new("mount")
        // discard: what the sprite deletes goes back to the host (the image stays sparse).
        .args(["-t", "ext4", "-o", "loop,noatime,discard"])
        .arg(&cfg.spec.disk)
        .arg(&paths.disk_mnt)
        .status()
        .map_err(ctx("running mount"))?;
    if !status.success() {
        return Err(format!(
            "mounting disk {} failed ({status})",
            cfg.spec.disk.display()
        ));
    }
    let base = cfg.spec.uid_base;
    let upper = paths.disk_mnt.join("upper");
    let work = paths.disk_mnt.join("work");
    if !upper.exists() {
        std::fs::create_dir(&upper).map_err(ctx("creating upper dir"))?;
        std::os::unix::fs::chown(&upper, Some(base), Some(base)).map_err(ctx("chown upper"))?;
        std::fs::set_permissions(&upper, std::fs::Permissions::from_mode(0o755))
            .map_err(ctx("chmod upper"))?;
    }
    std::fs::create_dir_all(&work).map_err(ctx("creating work dir"))?;
    // Before the sprite's first program: it never sees more space than it may use.
    let quota =
        crate::disk_quota::DiskQuota::new(&paths.disk_mnt, &cfg.spec.disk, cfg.spec.disk_limit)
            .map_err(ctx("measuring the disk for its quota"))?;
    quota.adjust().map_err(ctx("sizing the disk quota"))?;

    let cgroup = Cgroup::new(&cfg.cgroup_instance, &cfg.spec.id);
    cgroup
        .create(
            cfg.spec.memory_limit,
            cfg.spec.pids_limit,
            cfg.spec.cpu_limit,
        )
        .map_err(ctx("creating cgroup"))?;

    let _ = std::fs::remove_file(&paths.socket);
    let listener = std::os::unix::net::UnixListener::bind(&paths.socket)
        .map_err(ctx("binding agent socket"))?;
    std::fs::set_permissions(&paths.socket, std::fs::Permissions::from_mode(0o600))
        .map_err(ctx("chmod agent socket"))?;
    let listen_fd: OwnedFd = listener.into();
    let devnull_fd: OwnedFd = devnull.into();

    // The OOM killer should pick the sprite's programs, not its launcher or agent (which
    // inherit this); the agent puts the programs it starts back to 0.
    // Best effort: lowering it needs CAP_SYS_RESOURCE, which some hosts withhold.
    if let Err(e) = std::fs::write("/proc/self/oom_score_adj", "-900") {
        eprintln!("warning: cannot protect the agent from the OOM killer: {e}");
    }
    let (log_r, log_w) = pipe()?;
    let (c2l_r, c2l_w) = pipe()?;
    let (l2c_r, l2c_w) = pipe()?;
    let (err_r, err_w) = pipe()?;

    // SAFETY: single-threaded; the child only calls async-signal-safe code or execs.
    let child = match unsafe { fork() }.map_err(ctx("fork"))? {
        ForkResult::Child => {
            drop((c2l_r, l2c_w, err_r, log_r));
            let fds = ChildFds {
                listen: listen_fd.as_raw_fd(),
                log: log_w.as_raw_fd(),
                devnull: devnull_fd.as_raw_fd(),
                err: err_w.as_raw_fd(),
            };
            let code = child_main(cfg, &paths, c2l_w, l2c_r, &fds);
            std::process::exit(code)
        }
        ForkResult::Parent { child } => child,
    };
    drop((c2l_w, l2c_r, err_w, log_w, listen_fd));

    let setup = (|| -> Res<()> {
        let mut b = [0u8; 1];
        File::from(c2l_r)
            .read_exact(&mut b)
            .map_err(ctx("waiting for user namespace"))?;
        let map = format!("0 {base} {ID_RANGE}\n");
        std::fs::write(format!("/proc/{child}/uid_map"), &map).map_err(ctx("writing uid_map"))?;
        std::fs::write(format!("/proc/{child}/gid_map"), &map).map_err(ctx("writing gid_map"))?;
        let userns: OwnedFd = File::open(format!("/proc/{child}/ns/user"))
            .map_err(ctx("opening user namespace"))?
            .into();
        cgroup.add(child.as_raw()).map_err(ctx("joining cgroup"))?;

        crate::idmap::mount_idmapped(&cfg.base_rootfs, &paths.lower, &userns)
            .map_err(ctx("idmapped mount of the base image (needs Linux >= 5.19 and a filesystem that supports idmapped mounts)"))?;
        let opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            paths.lower.display(),
            upper.display(),
            work.display()
        );
        mount(
            Some("overlay"),
            &paths.root,
            Some("overlay"),
            MsFlags::empty(),
            Some(opts.as_str()),
        )
        .map_err(ctx("mounting overlay root"))?;
        prepare_root(
            &paths.root,
            &cfg.agent_bin,
            base,
            cfg.spec.host_dir.as_deref(),
        )?;
        // Shared, so views mounted later from this namespace reach the sprite's (a slave).
        let views = paths.root.join(CHECKPOINT_VIEWS);
        std::fs::create_dir_all(&views).map_err(ctx("creating /.sprite/checkpoints"))?;
        mount(
            Some("tmpfs"),
            &views,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some("mode=0755,size=64k"),
        )
        .map_err(ctx("mounting /.sprite/checkpoints"))?;
        mount(
            None::<&str>,
            &views,
            None::<&str>,
            MsFlags::MS_SHARED,
            None::<&str>,
        )
        .map_err(ctx("sharing /.sprite/checkpoints"))?;
        let script = checkpoint_views_script(&paths, &cfg.spec.checkpoint_images_dir());
        match Command::new("sh").arg("-c").arg(&script).output() {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "warning: checkpoint views: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            Err(e) => eprintln!("warning: checkpoint views: {e}"),
        }
        Ok(())
    })();
    if let Err(e) = setup {
        let _ = nix::sys::signal::kill(child, nix::sys::signal::SIGKILL);
        let _ = waitpid(child, None);
        teardown(&paths, &cgroup);
        return Err(e);
    }
    File::from(l2c_w)
        .write_all(b"g")
        .map_err(ctx("releasing child"))?;
    let mut err = String::new();
    let _ = File::from(err_r).read_to_string(&mut err);
    if !err.is_empty() {
        let _ = waitpid(child, None);
        teardown(&paths, &cgroup);
        return Err(err);
    }
    if let Some(mut r) = ready.take() {
        r.write_all(b"ok\n").map_err(ctx("reporting readiness"))?;
    }
    // Only now, with the sprite's processes forked: a thread started earlier could hold a
    // lock (stderr, say) at the moment of a fork, and the child would wait on it for ever.
    let quota_stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let quota_thread = {
        let stop = quota_stop.clone();
        std::thread::spawn(move || quota.run(&stop))
    };
    relay_log(log_r, &paths.agent_log);
    let status = waitpid(child, None);
    eprintln!("sprite {} ended: {status:?}", cfg.spec.id);
    let _ = cgroup.kill_all();
    quota_stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = quota_thread.join();
    teardown(&paths, &cgroup);
    Ok(())
}

/// Copies the agent's output to its log file, starting over past [`LOG_CAP`], until every
/// writer is gone (the sprite ended).
fn relay_log(log_r: OwnedFd, path: &Path) {
    let mut src = File::from(log_r);
    let Ok(mut out) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    else {
        let _ = std::io::copy(&mut src, &mut std::io::sink());
        return;
    };
    let mut buf = vec![0u8; 16 << 10];
    loop {
        match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if out.metadata().map(|m| m.len()).unwrap_or(0) > LOG_CAP {
                    let _ = out.set_len(0);
                    let _ = out.rewind();
                }
                let _ = out.write_all(&buf[..n]);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
}

fn teardown(paths: &RunPaths, cgroup: &Cgroup) {
    for m in [&paths.root, &paths.lower] {
        let _ = umount2(m.as_path(), MntFlags::MNT_DETACH);
    }
    if umount2(paths.disk_mnt.as_path(), MntFlags::empty()).is_err() {
        let _ = umount2(paths.disk_mnt.as_path(), MntFlags::MNT_DETACH);
    }
    let _ = cgroup.remove();
    let _ = std::fs::remove_file(&paths.socket);
    let _ = std::fs::remove_file(&paths.pid_file);
}

/// Where the sprite sees its recent checkpoints, relative to its root.
pub const CHECKPOINT_VIEWS: &str = ".sprite/checkpoints";

/// A script, run in the launcher's mount namespace, that makes `/.sprite/checkpoints/<id>`
/// match the images present: each view is the image's upper layer over the base image, read
/// only; views whose image is gone are detached.
pub fn checkpoint_views_script(paths: &RunPaths, images: &Path) -> String {
    let q = |p: &Path| format!("'{}'", p.display().to_string().replace('\'', "'\\''"));
    format!(
        r#"
views={views}; mnt={mnt}; images={images}; lower={lower}
mkdir -p "$mnt"
for d in "$views"/*; do
    [ -d "$d" ] || continue
    id=${{d##*/}}
    [ -e "$images/$id.ext4" ] && continue
    umount -l "$views/$id" 2>/dev/null; umount -l "$mnt/$id" 2>/dev/null
    rmdir "$views/$id" "$mnt/$id" 2>/dev/null
done
for img in "$images"/*.ext4; do
    [ -e "$img" ] || continue
    id=${{img##*/}}; id=${{id%.ext4}}
    mountpoint -q "$views/$id" && continue
    mkdir -p "$mnt/$id" "$views/$id"
    mountpoint -q "$mnt/$id" || mount -t ext4 -o ro,loop,noload,noatime "$img" "$mnt/$id" || continue
    mount -t overlay overlay -o "ro,lowerdir=$mnt/$id/upper:$lower" "$views/$id" || umount -l "$mnt/$id"
done
exit 0
"#,
        views = q(&paths.root.join(CHECKPOINT_VIEWS)),
        mnt = q(&paths.disk_mnt.with_file_name("ck")),
        images = q(images),
        lower = q(&paths.lower),
    )
}

/// Fills the sprite's root before it starts: a minimal /dev and the agent binary.
fn prepare_root(root: &Path, agent_bin: &Path, base: u32, host_dir: Option<&Path>) -> Res<()> {
    let dev = root.join("dev");
    std::fs::create_dir_all(&dev).map_err(ctx("creating /dev"))?;
    let tmpfs_opts = format!("mode=0755,size=1m,uid={base},gid={base}");
    mount(
        Some("tmpfs"),
        &dev,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some(tmpfs_opts.as_str()),
    )
    .map_err(ctx("mounting /dev"))?;
    // Only harmless character devices; no disks, no /dev/kvm, no /dev/mem.
    for name in ["null", "zero", "full", "random", "urandom", "tty"] {
        let target = dev.join(name);
        File::create(&target).map_err(ctx("creating device node"))?;
        mount(
            Some(Path::new("/dev").join(name).as_path()),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(ctx("binding device"))?;
    }
    for d in ["pts", "shm"] {
        std::fs::create_dir(dev.join(d)).map_err(ctx("creating /dev dir"))?;
    }
    let shm_opts = format!("mode=1777,size=64m,uid={base},gid={base}");
    mount(
        Some("shm"),
        &dev.join("shm"),
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(shm_opts.as_str()),
    )
    .map_err(ctx("mounting /dev/shm"))?;
    for (link, target) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        std::os::unix::fs::symlink(target, dev.join(link)).map_err(ctx("creating /dev link"))?;
    }
    let bin = root.join(".sprite/bin");
    std::fs::create_dir_all(&bin).map_err(ctx("creating /.sprite/bin"))?;
    let bin_opts = format!("mode=0755,size=1m,uid={base},gid={base}");
    mount(
        Some("tmpfs"),
        &bin,
        Some("tmpfs"),
        MsFlags::MS_NOSUID,
        Some(bin_opts.as_str()),
    )
    .map_err(ctx("mounting /.sprite/bin"))?;
    // The agent, and the same binary as `sprite-env` (it looks at its name).
    for name in ["sprite-agent", "sprite-env"] {
        let target = bin.join(name);
        File::create(&target).map_err(ctx("creating agent file"))?;
        mount(
            Some(agent_bin),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(ctx("binding agent"))?;
        mount(
            None::<&str>,
            &target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .map_err(ctx("making agent read-only"))?;
    }
    if let Some(dir) = host_dir {
        let target = root.join(".sprite/host");
        std::fs::create_dir_all(&target).map_err(ctx("creating /.sprite/host"))?;
        mount(
            Some(dir),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(ctx("binding /.sprite/host"))?;
        mount(
            None::<&str>,
            &target,
            None::<&str>,
            MsFlags::MS_BIND
                | MsFlags::MS_REMOUNT
                | MsFlags::MS_NOSUID
                | MsFlags::MS_NODEV
                | MsFlags::MS_NOEXEC,
            None::<&str>,
        )
        .map_err(ctx("securing /.sprite/host"))?;
    }
    Ok(())
}

/// File descriptors the child carries into the sprite.
struct ChildFds {
    listen: RawFd,
    log: RawFd,
    devnull: RawFd,
    err: RawFd,
}

/// C: enters the user namespace, waits for L1, makes the other namespaces, runs P.
/// Lets the sprite's processes run on `n` of the host's CPUs (chosen by its id, so sprites
/// spread over them), so `nproc` and thread pools sized from the affinity mask see the CPUs
/// the sprite has. The CFS quota is what enforces the share; a process that widens its
/// mask again gains no time.
fn narrow_cpus(id: &str, n: u32) {
    use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
    let pid = nix::unistd::Pid::from_raw(0);
    let Ok(have) = sched_getaffinity(pid) else {
        return;
    };
    let cpus: Vec<usize> = (0..CpuSet::count())
        .filter(|&c| have.is_set(c).unwrap_or(false))
        .collect();
    let n = n as usize;
    if n == 0 || n >= cpus.len() {
        return;
    }
    let start = id
        .bytes()
        .fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize))
        % cpus.len();
    let mut set = CpuSet::new();
    for i in 0..n {
        let _ = set.set(cpus[(start + i) % cpus.len()]);
    }
    let _ = sched_setaffinity(pid, &set);
}

fn child_main(
    cfg: &LaunchConfig,
    paths: &RunPaths,
    c2l_w: OwnedFd,
    l2c_r: OwnedFd,
    fds: &ChildFds,
) -> i32 {
    let fail = |msg: String| -> i32 {
        let _ = nix::unistd::write(borrowed(fds.err), msg.as_bytes());
        1
    };
    // Joining a network namespace needs host privileges: do it before leaving them.
    if let Some(ns) = &cfg.netns {
        let joined = File::open(ns).map_err(|e| e.to_string()).and_then(|f| {
            nix::sched::setns(std::os::fd::AsFd::as_fd(&f), CloneFlags::CLONE_NEWNET)
                .map_err(|e| e.to_string())
        });
        if let Err(e) = joined {
            return fail(format!("joining network namespace {}: {e}", ns.display()));
        }
    }
    if let Some(n) = cfg.spec.cpu_limit {
        narrow_cpus(&cfg.spec.id, n);
    }
    if let Err(e) = unshare(CloneFlags::CLONE_NEWUSER) {
        return fail(format!("unshare user namespace: {e}"));
    }
    if File::from(c2l_w).write_all(b"u").is_err() {
        return 1;
    }
    let mut b = [0u8; 1];
    if File::from(l2c_r).read_exact(&mut b).is_err() {
        return 1; // L1 gave up; it reports why.
    }
    let setup = (|| -> Res<()> {
        // Still host uid 0 here (owner of the private data dir), so the path to the root can
        // be walked; as the sprite's root it could not. Everything after uses relative paths.
        nix::unistd::chdir(paths.root.as_path()).map_err(ctx("chdir into root"))?;
        nix::unistd::setgroups(&[]).map_err(ctx("setgroups"))?;
        let root_gid = nix::unistd::Gid::from_raw(0);
        let root_uid = nix::unistd::Uid::from_raw(0);
        nix::unistd::setresgid(root_gid, root_gid, root_gid).map_err(ctx("setresgid"))?;
        nix::unistd::setresuid(root_uid, root_uid, root_uid).map_err(ctx("setresuid"))?;
        let mut flags = CloneFlags::CLONE_NEWNS
            | CloneFlags::CLONE_NEWPID
            | CloneFlags::CLONE_NEWUTS
            | CloneFlags::CLONE_NEWIPC
            | CloneFlags::CLONE_NEWCGROUP;
        if cfg.netns.is_none() {
            flags |= CloneFlags::CLONE_NEWNET;
        }
        unshare(flags).map_err(ctx("unshare namespaces"))?;
        nix::unistd::sethostname(&cfg.spec.hostname).map_err(ctx("sethostname"))?;
        Ok(())
    })();
    if let Err(e) = setup {
        return fail(e);
    }
    let prog = match crate::seccomp::program() {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    let env_json = serde_json::to_string(&cfg.spec.env).unwrap_or_else(|_| "{}".into());
    let mut extra_env = match CString::new(format!(
        "{}={env_json}",
        sprites_agent_protocol::SPRITE_ENV_VAR
    )) {
        Ok(c) => vec![c],
        Err(_) => return fail("sprite environment contains a NUL byte".into()),
    };
    if cfg.netns.is_some() {
        // Tells the agent where the sprite's resolver is.
        extra_env.push(
            CString::new(format!("{}=10.0.0.2", sprites_agent_protocol::DNS_ENV_VAR))
                .unwrap_or_default(),
        );
    }
    // SAFETY: single-threaded.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            let e = pid1_main(fds, &prog, &extra_env, cfg.lxcfs.as_deref());
            fail(e)
        }
        Ok(ForkResult::Parent { child }) => {
            for fd in [fds.err, fds.log, fds.listen, fds.devnull] {
                let _ = nix::unistd::close(fd);
            }
            wait_exit_code(child)
        }
        Err(e) => fail(format!("fork pid 1: {e}")),
    }
}

fn wait_exit_code(pid: Pid) -> i32 {
    loop {
        match waitpid(pid, None) {
            Ok(WaitStatus::Exited(_, c)) => return c,
            Ok(WaitStatus::Signaled(_, s, _)) => return 128 + s as i32,
            Err(nix::errno::Errno::EINTR) | Ok(_) => continue,
            Err(_) => return 1,
        }
    }
}

fn borrowed(fd: RawFd) -> std::os::fd::BorrowedFd<'static> {
    // SAFETY: used only for fds this process keeps open until it execs or exits.
    unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }
}

/// P: becomes the sprite's PID 1. Returns only on failure, with the reason.
fn pid1_main(
    fds: &ChildFds,
    prog: &seccompiler::BpfProgram,
    extra_env: &[CString],
    lxcfs: Option<&Path>,
) -> String {
    match pid1_setup(fds, prog, extra_env, lxcfs) {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

fn pid1_setup(
    fds: &ChildFds,
    prog: &seccompiler::BpfProgram,
    extra_env: &[CString],
    lxcfs: Option<&Path>,
) -> Res<std::convert::Infallible> {
    // The working directory is the sprite's root (see child_main). Mounts copied from the
    // launcher's namespace are locked and pivot_root refuses a locked new root, so the root
    // is bind-mounted onto itself here, inside our own namespace, and entered again.
    nix::unistd::chdir("..").map_err(ctx("chdir .."))?;
    mount(
        Some("root"),
        "root",
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(ctx("binding root"))?;
    nix::unistd::chdir("root").map_err(ctx("chdir root"))?;
    let nosx = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(Some("proc"), "proc", Some("proc"), nosx, None::<&str>).map_err(ctx("mounting /proc"))?;
    if let Err(e) = mount(
        Some("sysfs"),
        "sys",
        Some("sysfs"),
        nosx | MsFlags::MS_RDONLY,
        None::<&str>,
    ) {
        // Not fatal: few programs need /sys, and some hosts refuse it inside a user namespace.
        eprintln!("warning: mounting /sys: {e}");
    }
    // The sprite's own memory, uptime, load and CPUs, rendered by lxcfs for whoever reads.
    if let Some(lx) = lxcfs {
        for f in crate::lxcfs::FILES {
            let (src, dst) = (lx.join(f), Path::new(f));
            if !dst.exists() {
                continue;
            }
            if let Err(e) = mount(
                Some(&src),
                dst,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            ) {
                eprintln!("warning: binding lxcfs {f}: {e}");
            }
        }
    }
    mount(
        Some("devpts"),
        "dev/pts",
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
    )
    .map_err(ctx("mounting /dev/pts"))?;
    nix::unistd::pivot_root(".", ".").map_err(ctx("pivot_root"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(ctx("detaching old root"))?;
    nix::unistd::chdir("/").map_err(ctx("chdir /"))?;

    let listen = sprites_agent_protocol::LISTEN_FD;
    nix::unistd::dup2(fds.listen, listen).map_err(ctx("dup2 listen fd"))?;
    nix::fcntl::fcntl(
        listen,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
    )
    .map_err(ctx("clearing cloexec"))?;
    nix::unistd::dup2(fds.devnull, 0).map_err(ctx("dup2 stdin"))?;
    nix::unistd::dup2(fds.log, 1).map_err(ctx("dup2 stdout"))?;
    nix::unistd::dup2(fds.log, 2).map_err(ctx("dup2 stderr"))?;
    // Everything else closes on exec; the error pipe stays usable until then.
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets flags.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            listen + 1,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if rc != 0 {
        return Err(format!("close_range: {}", std::io::Error::last_os_error()));
    }
    // The launcher ignores these; ignored dispositions survive exec, so restore them or
    // every program in the sprite would ignore Ctrl-C and `kill`.
    for sig in [
        nix::sys::signal::SIGTERM,
        nix::sys::signal::SIGINT,
        nix::sys::signal::SIGHUP,
    ] {
        // SAFETY: SIG_DFL has no handler code.
        unsafe { nix::sys::signal::signal(sig, nix::sys::signal::SigHandler::SigDfl) }
            .map_err(ctx("resetting signals"))?;
    }
    crate::seccomp::install(prog).map_err(ctx("installing seccomp filter"))?;
    let path = CString::new("/.sprite/bin/sprite-agent").map_err(ctx("agent path"))?;
    let args = [path.clone(), CString::new("init").map_err(ctx("arg"))?];
    let mut env = vec![
        CString::new("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
            .map_err(ctx("env"))?,
        CString::new("HOME=/root").map_err(ctx("env"))?,
        CString::new("LANG=C.UTF-8").map_err(ctx("env"))?,
    ];
    env.extend(extra_env.iter().cloned());
    nix::unistd::execve(&path, &args, &env).map_err(ctx("exec agent"))
}
