//! Storage for sprites: the read-only base image, each sprite's writable disk, and
//! content-addressed checkpoints of those disks in an object store.
//!
//! Architecture invariant: this crate handles bytes and files. It runs external tools that
//! produce files (debootstrap, mkfs) but never runs a sprite or talks HTTP.

pub mod checkpoint;
pub mod disk;
pub mod guest;
pub mod image;
pub mod mirror;
pub mod pool;
pub mod tracking;

/// Errors of storage operations.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// A file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// An external tool failed.
    #[error("{tool} failed: {detail}")]
    Tool {
        /// Tool name.
        tool: String,
        /// Its exit status and the tail of its output.
        detail: String,
    },
    /// Missing configuration, such as no Debian mirror.
    #[error("{0}")]
    Config(String),
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, StorageError>;

pub(crate) fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> StorageError {
    let what = what.into();
    move |source| StorageError::Io { what, source }
}

/// Runs a command, returning an error with the tail of its output when it fails.
pub(crate) fn run(cmd: &mut std::process::Command) -> Result<()> {
    let tool = cmd.get_program().to_string_lossy().into_owned();
    let out = cmd.output().map_err(io_err(format!("running {tool}")))?;
    if out.status.success() {
        return Ok(());
    }
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    let tail: Vec<&str> = text.lines().rev().take(15).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    Err(StorageError::Tool {
        tool,
        detail: format!("{}\n{}", out.status, tail.join("\n")),
    })
}
