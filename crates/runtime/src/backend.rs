//! The contract between the runtime and one kind of sprite.

use std::path::PathBuf;

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncWrite};

/// Which kind of sprite a backend runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// Linux namespaces, cgroups and seccomp on the host kernel.
    Namespace,
    /// A microVM with its own kernel.
    MicroVm,
}

impl BackendKind {
    /// Short name.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Namespace => "namespace",
            BackendKind::MicroVm => "microvm",
        }
    }
}

/// Everything a backend needs to boot one sprite. Built by the server from its records.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SpriteSpec {
    /// Stable id (`sprite-<uuid>`); names a sprite's files and host resources.
    pub id: String,
    /// Host name inside the sprite (the sprite's name).
    pub hostname: String,
    /// The sprite's writable disk image.
    pub disk: PathBuf,
    /// First host uid of the sprite's private uid/gid range (65536 ids).
    pub uid_base: u32,
    /// Memory limit in bytes.
    pub memory_limit: u64,
    /// Most processes the sprite may have.
    pub pids_limit: u64,
    /// CPUs' worth of time the sprite may use (`None`: no cap).
    #[serde(default)]
    pub cpu_limit: Option<u32>,
    /// Most bytes the sprite may store on its disk (`None`: the disk's size). The host's
    /// free space bounds it too.
    #[serde(default)]
    pub disk_limit: Option<u64>,
    /// Environment every command in the sprite starts with (set at creation).
    #[serde(default)]
    pub env: std::collections::BTreeMap<String, String>,
    /// Host directory shown in the sprite at `/.sprite/host`: the server's per-sprite socket
    /// for calls from inside (checkpoints). A directory, not the socket itself, so a restarted
    /// server's new socket is seen by a sprite that kept running.
    #[serde(default)]
    pub host_dir: Option<PathBuf>,
    /// Root of the base image the sprite's disk is layered over (`None`: the backend's
    /// default). Never changes under a sprite that runs: an overlay's lower layer must not.
    #[serde(default)]
    pub base: Option<PathBuf>,
}

impl SpriteSpec {
    /// Directory of the checkpoint disks (`<id>.ext4`, written by the server) the sprite shows
    /// read-only at `/.sprite/checkpoints/<id>`.
    pub fn checkpoint_images_dir(&self) -> PathBuf {
        self.disk.with_file_name("checkpoints")
    }
}

/// A byte stream to the agent inside a running sprite.
pub trait AgentIo: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> AgentIo for T {}

/// Boxed [`AgentIo`].
pub type AgentStream = Box<dyn AgentIo>;

/// Errors a backend reports.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The sprite could not be booted.
    #[error("starting sprite {id}: {reason}")]
    Start {
        /// Sprite id.
        id: String,
        /// Why.
        reason: String,
    },
    /// The sprite is not running, so its agent cannot be reached.
    #[error("sprite {0} is not running")]
    NotRunning(String),
    /// The backend cannot do this (yet).
    #[error("the {backend} backend does not support {op}")]
    Unsupported {
        /// Backend name.
        backend: &'static str,
        /// Operation.
        op: &'static str,
    },
    /// Anything else.
    #[error("{0}")]
    Other(String),
    /// I/O with the host.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// One kind of sprite. Implementations keep no lifecycle policy: [`crate::Runtime`] decides
/// when to start, stop or pause, the backend only knows how.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// Which kind this is.
    fn kind(&self) -> BackendKind;

    /// Boots the sprite. Returns once its agent accepts connections.
    async fn start(&self, spec: &SpriteSpec) -> Result<(), BackendError>;

    /// Whether the sprite's processes exist (running or paused), as seen on the host now.
    /// This must work for sprites started by an earlier server process.
    async fn is_running(&self, spec: &SpriteSpec) -> bool;

    /// Whether the sprite's processes are frozen. Must work across server restarts too.
    async fn is_paused(&self, _spec: &SpriteSpec) -> bool {
        false
    }

    /// Opens a new byte stream to the agent.
    async fn connect(&self, spec: &SpriteSpec) -> Result<AgentStream, BackendError>;

    /// A TCP connection to `port` on the sprite's own loopback, made from the host, for the
    /// TCP proxy: one relay fewer than going through the agent. `None` where the backend
    /// cannot (a microVM's loopback is in the guest kernel); callers then use the agent.
    async fn dial_loopback(
        &self,
        _spec: &SpriteSpec,
        _port: u16,
    ) -> Option<Result<tokio::net::TcpStream, BackendError>> {
        None
    }

    /// Stops the sprite: processes end, the disk is flushed and released.
    async fn stop(&self, spec: &SpriteSpec) -> Result<(), BackendError>;

    /// Freezes every process of the sprite, keeping memory.
    async fn pause(&self, _spec: &SpriteSpec) -> Result<(), BackendError> {
        Err(BackendError::Unsupported {
            backend: self.kind().as_str(),
            op: "pause",
        })
    }

    /// Thaws a paused sprite.
    async fn resume(&self, _spec: &SpriteSpec) -> Result<(), BackendError> {
        Err(BackendError::Unsupported {
            backend: self.kind().as_str(),
            op: "resume",
        })
    }

    /// Makes the sprite's disk consistent and keeps it from changing (a filesystem freeze,
    /// with whatever pausing the backend needs for it) until [`Backend::thaw_disk`], which
    /// returns the sprite to the state it was in. Called on a running or paused sprite.
    async fn freeze_disk(&self, _spec: &SpriteSpec) -> Result<(), BackendError> {
        Err(BackendError::Unsupported {
            backend: self.kind().as_str(),
            op: "freezing the disk",
        })
    }

    /// Undoes [`Backend::freeze_disk`]; harmless on a disk that is not frozen.
    async fn thaw_disk(&self, _spec: &SpriteSpec) -> Result<(), BackendError> {
        Ok(())
    }

    /// Makes a running sprite's `/.sprite/checkpoints` match the checkpoint images beside its
    /// disk (a booting sprite picks them up by itself).
    async fn refresh_checkpoint_views(&self, _spec: &SpriteSpec) -> Result<(), BackendError> {
        Ok(())
    }

    /// Applies changed limits (memory) to a live sprite.
    async fn update_limits(&self, _spec: &SpriteSpec) -> Result<(), BackendError> {
        Err(BackendError::Unsupported {
            backend: self.kind().as_str(),
            op: "changing limits of a live sprite",
        })
    }

    /// Removes every host resource of a stopped sprite except its disk.
    async fn cleanup(&self, spec: &SpriteSpec) -> Result<(), BackendError>;
}
