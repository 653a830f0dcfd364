//! CLI releases a server offers (`GET /v1/cli/latest`, `/v1/cli/{version}`): what
//! `install.sh` and `sprite upgrade` download, with the SHA-256 of each build.

use serde::{Deserialize, Serialize};

/// One version of the CLI and its builds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CliRelease {
    /// Version, as `sprite --version` prints it.
    pub version: String,
    /// `release` (a self-hosted server offers its own version only).
    pub channel: String,
    /// One per platform.
    pub builds: Vec<CliBuild>,
}

/// One platform's build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CliBuild {
    /// `linux`, `darwin`, ...: Rust's `std::env::consts::OS` (and `uname -s` lowercased).
    pub os: String,
    /// `x86_64`, `aarch64`: `std::env::consts::ARCH` (and `uname -m`).
    pub arch: String,
    /// Path of the binary on the server (`/v1/cli/{version}/{os}-{arch}/sprite`).
    pub url: String,
    /// Hex SHA-256 of the binary.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
}

impl CliRelease {
    /// The build for `os`/`arch`, if offered.
    pub fn build_for(&self, os: &str, arch: &str) -> Option<&CliBuild> {
        self.builds.iter().find(|b| b.os == os && b.arch == arch)
    }
}
