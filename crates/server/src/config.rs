//! Server settings, from flags and environment.

use std::net::SocketAddr;
use std::path::PathBuf;

/// File name of the SQLite database inside the data dir.
pub const DB_FILE: &str = "state.db";

/// Everything `spritesd serve` needs to know.
#[derive(Debug, Clone)]
pub struct Config {
    /// State, disks, runtime files.
    pub data_dir: PathBuf,
    /// Base image and disk template cache.
    pub image_dir: PathBuf,
    /// Address of the API.
    pub listen: SocketAddr,
    /// Base domain of sprite URLs.
    pub url_domain: String,
    /// `https` when the server serves TLS itself, else `http` (of the API and sprite URLs).
    pub scheme: &'static str,
    /// The agent binary copied into sprites.
    pub agent_bin: PathBuf,
    /// Default memory limit of a sprite, bytes.
    pub memory_limit: u64,
    /// Process limit of a sprite.
    pub pids_limit: u64,
    /// What one sprite may ask for.
    pub limits: crate::limits::Limits,
    /// Object store of checkpoint chunks and manifests: a folder or `s3://bucket/prefix`.
    pub object_store: String,
    /// Whether MCP clients' metadata documents may be fetched from private addresses and
    /// over plain HTTP (tests and closed networks).
    pub mcp_metadata_allow_private: bool,
    /// The server's idle times (warm after, cold after), which a sprite's own replace.
    pub idle: (std::time::Duration, std::time::Duration),
    /// Where sprites' disks live: the data dir, or its reflink pool.
    pub disks_root: PathBuf,
    /// More CLI builds to offer (`<dir>/<os>-<arch>/sprite`), beside this host's own.
    pub cli_dir: Option<PathBuf>,
    /// Where the web console is mounted (`/`, `/console`), if it is served.
    pub console_path: Option<String>,
}

impl Config {
    /// Directory of one sprite's durable files.
    pub fn sprite_dir(&self, id: &str) -> PathBuf {
        self.disks_root.join("sprites").join(id)
    }

    /// Per-sprite runtime files.
    pub fn run_root(&self) -> PathBuf {
        self.data_dir.join("run")
    }

    /// A short stable name of this data dir, so two servers on one host keep separate cgroups.
    pub fn instance(&self) -> String {
        let path = std::fs::canonicalize(&self.data_dir).unwrap_or_else(|_| self.data_dir.clone());
        // FNV-1a: stable across builds, unlike std's hasher.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in path.as_os_str().as_encoded_bytes() {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        format!("d{:08x}", h as u32)
    }
}
