//! The Linux-namespace backend: each sprite is a tree of processes in its own user, mount,
//! PID, UTS, IPC, network and cgroup namespaces, under cgroup limits and a seccomp filter,
//! with `pivot_root` into an overlay of its own ext4 disk on the shared base image.
//!
//! Root in a sprite is a host uid from the sprite's private range (`uid_base..+65536`), never
//! host root. Works on any Linux host, KVM or not; see `runtime-microvm` for hardware
//! isolation.
//!
//! Architecture invariant: this crate boots and stops sprites; it makes no policy decisions
//! (when to start, stop or pause is [`sprites_runtime::Runtime`]'s call) and knows no HTTP.

pub mod cgroup;
pub mod disk_quota;
mod idmap;
pub mod launcher;
pub mod lxcfs;
mod seccomp;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use nix::sched::CloneFlags;
use sprites_runtime::{AgentStream, Backend, BackendError, BackendKind, SpriteSpec};

use crate::cgroup::Cgroup;
use crate::launcher::{LaunchConfig, RunPaths};

/// Configuration of the namespace backend.
#[derive(Clone)]
pub struct NamespaceConfig {
    /// Directory of per-sprite runtime files (sockets, pid files, mount points).
    pub run_root: PathBuf,
    /// Base image root filesystem.
    pub base_rootfs: PathBuf,
    /// The agent binary to run inside sprites.
    pub agent_bin: PathBuf,
    /// Program and leading arguments that run [`launcher::main`]; the config path is appended.
    pub launcher: Vec<OsString>,
    /// Distinguishes the cgroups of several servers on one host.
    pub cgroup_instance: String,
    /// Sprite networking (veth, NAT, DNS policy); `None` gives sprites loopback only.
    pub network: Option<std::sync::Arc<sprites_network::Network>>,
    /// Processes all sprites of this server may have together (the cgroup above them).
    pub pids_total: Option<u64>,
    /// A working lxcfs mount ([`lxcfs::ensure`]): sprites see their own memory, uptime and
    /// load in `/proc`. `None`: they see the host's.
    pub lxcfs: Option<PathBuf>,
}

/// The namespace backend.
pub struct NamespaceBackend {
    cfg: NamespaceConfig,
    /// Sprites this backend paused only to freeze their disk (thawing resumes them).
    paused_for_freeze: std::sync::Mutex<std::collections::HashSet<String>>,
}

const START_TIMEOUT: Duration = Duration::from_secs(30);
const AGENT_READY_TIMEOUT: Duration = Duration::from_secs(15);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

impl NamespaceBackend {
    /// A backend with `cfg`.
    pub fn new(cfg: NamespaceConfig) -> Self {
        if let Some(n) = cfg.pids_total {
            if let Err(e) = cgroup::limit_instance(&cfg.cgroup_instance, n) {
                tracing::warn!("limiting the processes of all sprites to {n}: {e}");
            }
        }
        Self {
            cfg,
            paused_for_freeze: Default::default(),
        }
    }

    /// Host-side runtime directory of a sprite. Kept short: Unix socket paths are limited.
    pub fn run_dir(&self, id: &str) -> PathBuf {
        self.cfg
            .run_root
            .join(id.strip_prefix("sprite-").unwrap_or(id))
    }

    fn cgroup(&self, id: &str) -> Cgroup {
        Cgroup::new(&self.cfg.cgroup_instance, id)
    }

    /// Pid of the sprite's live launcher, if any. Checks that the pid really is that launcher,
    /// so a stale pid file after a host reboot is not mistaken for a running sprite.
    pub fn launcher_pid(&self, id: &str) -> Option<i32> {
        let run_dir = self.run_dir(id);
        sprites_runtime::host::live_pid(
            &RunPaths::new(&run_dir).pid_file,
            &run_dir.join("launch.json"),
        )
    }

    /// Ends the sprite's processes: gently through the agent, else by cgroup.
    async fn stop_processes(&self, spec: &SpriteSpec) -> Result<(), BackendError> {
        if self.launcher_pid(&spec.id).is_none() {
            return Ok(());
        }
        let cg = self.cgroup(&spec.id);
        let _ = cg.set_frozen(false);
        // Ask the agent first: it ends processes gently and flushes the disk.
        if let Ok(s) = self.connect(spec).await {
            let _ =
                tokio::time::timeout(Duration::from_secs(5), sprites_runtime::agent::shutdown(s))
                    .await;
        }
        if self.wait_launcher_gone(&spec.id, STOP_TIMEOUT).await {
            return Ok(());
        }
        tracing::warn!(id = %spec.id, "agent did not stop the sprite; killing its cgroup");
        cg.kill_all()?;
        if self.wait_launcher_gone(&spec.id, STOP_TIMEOUT).await {
            return Ok(());
        }
        Err(BackendError::Other(format!(
            "sprite {} did not stop",
            spec.id
        )))
    }

    /// The sprite's disk mount, reached through the launcher's mount namespace (it is mounted
    /// nowhere else on the host).
    fn open_disk_mount(&self, id: &str) -> Result<std::fs::File, BackendError> {
        let pid = self
            .launcher_pid(id)
            .ok_or_else(|| BackendError::NotRunning(id.to_string()))?;
        let mnt = RunPaths::new(&self.run_dir(id)).disk_mnt;
        let path =
            Path::new(&format!("/proc/{pid}/root")).join(mnt.strip_prefix("/").unwrap_or(&mnt));
        Ok(std::fs::File::open(path)?)
    }

    async fn wait_launcher_gone(&self, id: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.launcher_pid(id).is_none() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.launcher_pid(id).is_none()
    }
}

nix::ioctl_readwrite!(fifreeze, b'X', 119, libc::c_int);
nix::ioctl_readwrite!(fithaw, b'X', 120, libc::c_int);

/// FIFREEZE/FITHAW: the filesystem is synced, its journal settled, and writers block.
fn fs_freeze(dir: &std::fs::File, freeze: bool) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let mut arg: libc::c_int = 0;
    // SAFETY: both ioctls take (and ignore) a pointer to an int, which outlives the call.
    let r = unsafe {
        if freeze {
            fifreeze(dir.as_raw_fd(), &mut arg)
        } else {
            fithaw(dir.as_raw_fd(), &mut arg)
        }
    };
    r.map(|_| ()).map_err(std::io::Error::from)
}

fn unix_socket_ok(path: &Path) -> Result<(), BackendError> {
    // sockaddr_un.sun_path is 108 bytes including the NUL.
    if path.as_os_str().len() >= 108 {
        return Err(BackendError::Other(format!(
            "agent socket path {} is too long for a Unix socket; use a shorter data dir",
            path.display()
        )));
    }
    Ok(())
}

#[async_trait]
impl Backend for NamespaceBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Namespace
    }

    async fn dial_loopback(
        &self,
        spec: &SpriteSpec,
        port: u16,
    ) -> Option<Result<tokio::net::TcpStream, BackendError>> {
        let raw = std::fs::read(self.run_dir(&spec.id).join("launch.json")).ok()?;
        let ns = serde_json::from_slice::<LaunchConfig>(&raw).ok()?.netns?;
        // A socket belongs to the network namespace it is made in, whichever thread uses it
        // later; namespaces are per thread, so a short-lived thread of its own makes it.
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let r = (|| {
                let f = std::fs::File::open(&ns)?;
                nix::sched::setns(std::os::fd::AsFd::as_fd(&f), CloneFlags::CLONE_NEWNET)?;
                // "localhost", as the agent would resolve it: IPv4 first, then IPv6.
                let s = std::net::TcpStream::connect((std::net::Ipv4Addr::LOCALHOST, port))
                    .or_else(|e| {
                        std::net::TcpStream::connect((std::net::Ipv6Addr::LOCALHOST, port))
                            .map_err(|_| e)
                    })?;
                s.set_nonblocking(true)?;
                Ok::<_, std::io::Error>(s)
            })();
            let _ = tx.send(r);
        });
        let r = match rx.await {
            Ok(r) => r.and_then(tokio::net::TcpStream::from_std),
            Err(_) => Err(std::io::Error::other("dial thread ended")),
        };
        Some(r.map_err(BackendError::from))
    }

    async fn start(&self, spec: &SpriteSpec) -> Result<(), BackendError> {
        let run_dir = self.run_dir(&spec.id);
        let paths = RunPaths::new(&run_dir);
        unix_socket_ok(&paths.socket)?;
        std::fs::create_dir_all(&run_dir)?;
        let netns = match &self.cfg.network {
            Some(net) => {
                let (net, id) = (net.clone(), spec.id.clone());
                let plan = tokio::task::spawn_blocking(move || net.up(&id))
                    .await
                    .map_err(|e| BackendError::Other(e.to_string()))?
                    .map_err(|e| BackendError::Start {
                        id: spec.id.clone(),
                        reason: e.to_string(),
                    })?;
                Some(PathBuf::from(plan.sprite_ns_path()))
            }
            None => None,
        };
        let cfg = LaunchConfig {
            spec: spec.clone(),
            run_dir: run_dir.clone(),
            base_rootfs: spec
                .base
                .clone()
                .unwrap_or_else(|| self.cfg.base_rootfs.clone()),
            agent_bin: self.cfg.agent_bin.clone(),
            cgroup_instance: self.cfg.cgroup_instance.clone(),
            netns,
            lxcfs: self.cfg.lxcfs.clone(),
        };
        let cfg_path = run_dir.join("launch.json");
        std::fs::write(
            &cfg_path,
            serde_json::to_vec_pretty(&cfg).map_err(|e| BackendError::Other(e.to_string()))?,
        )?;
        let (prog, args) = self
            .cfg
            .launcher
            .split_first()
            .ok_or_else(|| BackendError::Other("no launcher configured".into()))?;
        let mut cmd = tokio::process::Command::new(prog);
        cmd.args(args)
            .arg(&cfg_path)
            .stdin(std::process::Stdio::null());
        cmd.stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        let out = tokio::time::timeout(START_TIMEOUT, cmd.output())
            .await
            .map_err(|_| BackendError::Start {
                id: spec.id.clone(),
                reason: "launcher timed out".into(),
            })??;
        if !out.status.success() {
            let reason = String::from_utf8_lossy(&out.stderr).trim().to_string();
            return Err(BackendError::Start {
                id: spec.id.clone(),
                reason,
            });
        }
        let deadline = Instant::now() + AGENT_READY_TIMEOUT;
        loop {
            let last = match self.connect(spec).await {
                Ok(s) => match sprites_runtime::agent::info(s).await {
                    Ok(_) => return Ok(()),
                    Err(e) => e.to_string(),
                },
                Err(e) => e.to_string(),
            };
            if Instant::now() > deadline {
                let tail = sprites_runtime::host::file_tail(&paths.agent_log, 2000);
                return Err(BackendError::Start {
                    id: spec.id.clone(),
                    reason: format!("agent did not answer: {last}\n{tail}"),
                });
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    async fn is_running(&self, spec: &SpriteSpec) -> bool {
        let running = self.launcher_pid(&spec.id).is_some();
        if running {
            // A server that died in the middle of a checkpoint leaves the filesystem frozen.
            let _ = self.thaw_disk(spec).await;
            // A sprite adopted after a server restart needs its resolver served again.
            if let Some(net) = &self.cfg.network {
                let (net, id) = (net.clone(), spec.id.clone());
                if let Ok(Err(e)) = tokio::task::spawn_blocking(move || net.up(&id)).await {
                    tracing::warn!(id = %spec.id, "re-adopting network: {e}");
                }
            }
        }
        running
    }

    async fn is_paused(&self, spec: &SpriteSpec) -> bool {
        self.cgroup(&spec.id).is_frozen()
    }

    async fn connect(&self, spec: &SpriteSpec) -> Result<AgentStream, BackendError> {
        let path = RunPaths::new(&self.run_dir(&spec.id)).socket;
        match tokio::net::UnixStream::connect(&path).await {
            Ok(s) => Ok(Box::new(s)),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) =>
            {
                Err(BackendError::NotRunning(spec.id.clone()))
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn stop(&self, spec: &SpriteSpec) -> Result<(), BackendError> {
        let r = self.stop_processes(spec).await;
        if let Some(net) = &self.cfg.network {
            let (net, id) = (net.clone(), spec.id.clone());
            let _ = tokio::task::spawn_blocking(move || net.down(&id)).await;
        }
        r
    }

    async fn update_limits(&self, spec: &SpriteSpec) -> Result<(), BackendError> {
        Ok(self.cgroup(&spec.id).set_memory_limit(spec.memory_limit)?)
    }

    async fn pause(&self, spec: &SpriteSpec) -> Result<(), BackendError> {
        Ok(self.cgroup(&spec.id).set_frozen(true)?)
    }

    async fn resume(&self, spec: &SpriteSpec) -> Result<(), BackendError> {
        Ok(self.cgroup(&spec.id).set_frozen(false)?)
    }

    async fn freeze_disk(&self, spec: &SpriteSpec) -> Result<(), BackendError> {
        // Processes first (cgroup v1 cannot freeze a task blocked on a frozen filesystem),
        // then the filesystem.
        let cg = self.cgroup(&spec.id);
        if !cg.is_frozen() {
            cg.set_frozen(true)?;
            self.paused_for_freeze
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(spec.id.clone());
        }
        let frozen = match self.open_disk_mount(&spec.id) {
            Ok(fd) => tokio::task::spawn_blocking(move || fs_freeze(&fd, true))
                .await
                .map_err(|e| BackendError::Other(e.to_string()))
                .and_then(|r| r.map_err(BackendError::from)),
            Err(e) => Err(e),
        };
        if let Err(e) = frozen {
            let _ = self.thaw_disk(spec).await;
            return Err(e);
        }
        Ok(())
    }

    async fn thaw_disk(&self, spec: &SpriteSpec) -> Result<(), BackendError> {
        let r = match self.open_disk_mount(&spec.id) {
            Err(_) => Ok(()), // not running: nothing is frozen
            Ok(fd) => match fs_freeze(&fd, false) {
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(()), // was not frozen
                r => r.map_err(BackendError::from),
            },
        };
        let paused_here = self
            .paused_for_freeze
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&spec.id);
        if paused_here {
            self.cgroup(&spec.id).set_frozen(false)?;
        }
        r
    }

    async fn refresh_checkpoint_views(&self, spec: &SpriteSpec) -> Result<(), BackendError> {
        let Some(pid) = self.launcher_pid(&spec.id) else {
            return Ok(());
        };
        let paths = RunPaths::new(&self.run_dir(&spec.id));
        let script = launcher::checkpoint_views_script(&paths, &spec.checkpoint_images_dir());
        let out = tokio::process::Command::new("nsenter")
            .args(["-t", &pid.to_string(), "-m", "--", "sh", "-c", &script])
            .output()
            .await?;
        if !out.status.success() {
            return Err(BackendError::Other(format!(
                "updating checkpoint views: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(())
    }

    async fn cleanup(&self, spec: &SpriteSpec) -> Result<(), BackendError> {
        let _ = self.cgroup(&spec.id).remove();
        if let Some(net) = &self.cfg.network {
            let (net, id) = (net.clone(), spec.id.clone());
            let _ = tokio::task::spawn_blocking(move || net.down(&id)).await;
        }
        match std::fs::remove_dir_all(self.run_dir(&spec.id)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }
}
