//! CLI downloads: `GET /install.sh`, `GET /v1/cli/latest`, `/v1/cli/{version}` and
//! `/v1/cli/{version}/{os}-{arch}/sprite`. A self-hosted server offers the `sprite` builds of
//! its own version: the binary beside `spritesd` for this host's platform, plus any
//! `<dir>/<os>-<arch>/sprite` under `--cli-dir`. Public, like the official install script:
//! the builds are no secret, and a newcomer has no token yet.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::Json;
use sha2::Digest;
use sprites_api::cli::{CliBuild, CliRelease};
use sprites_api::ErrorCode;

use super::AppState;
use crate::error::ApiError;

/// This server's version, which is the CLI version it offers.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The builds on offer, with their checksums (computed once per file version).
pub struct CliBuilds {
    extra_dir: Option<PathBuf>,
    sums: Mutex<HashMap<PathBuf, (std::time::SystemTime, u64, String)>>,
}

impl CliBuilds {
    pub fn new(extra_dir: Option<PathBuf>) -> Self {
        Self {
            extra_dir,
            sums: Mutex::default(),
        }
    }

    /// `(os, arch) -> binary`: this host's own build first.
    fn files(&self) -> Vec<((String, String), PathBuf)> {
        let mut out = Vec::new();
        let host = (
            std::env::consts::OS.to_string(),
            std::env::consts::ARCH.to_string(),
        );
        if let Some(own) = std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(|d| d.join("sprite")))
            .filter(|p| p.is_file())
        {
            out.push((host.clone(), own));
        }
        if let Some(dir) = &self.extra_dir {
            for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let Some((os, arch)) = name.split_once('-') else {
                    continue;
                };
                let bin = e.path().join("sprite");
                let key = (os.to_string(), arch.to_string());
                if bin.is_file() && !out.iter().any(|(k, _)| *k == key) {
                    out.push((key, bin));
                }
            }
        }
        out
    }

    /// SHA-256 and size of `path`, cached while its mtime and size stay.
    fn sum(&self, path: &std::path::Path) -> std::io::Result<(String, u64)> {
        let meta = std::fs::metadata(path)?;
        let (mtime, len) = (meta.modified()?, meta.len());
        if let Some((t, l, s)) = self
            .sums
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(path)
        {
            if *t == mtime && *l == len {
                return Ok((s.clone(), len));
            }
        }
        let mut f = std::fs::File::open(path)?;
        let mut h = sha2::Sha256::new();
        std::io::copy(&mut f, &mut h)?;
        let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        self.sums
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(path.to_path_buf(), (mtime, len, hex.clone()));
        Ok((hex, len))
    }

    fn release(&self) -> Result<CliRelease, ApiError> {
        let mut builds = Vec::new();
        for ((os, arch), path) in self.files() {
            let (sha256, size) = self.sum(&path).map_err(ApiError::internal)?;
            builds.push(CliBuild {
                url: format!("/v1/cli/{VERSION}/{os}-{arch}/sprite"),
                os,
                arch,
                sha256,
                size,
            });
        }
        Ok(CliRelease {
            version: VERSION.to_string(),
            channel: "release".into(),
            builds,
        })
    }
}

fn only_release(channel: Option<&str>) -> Result<(), ApiError> {
    match channel {
        None | Some("") | Some("release") => Ok(()),
        Some(c) => Err(ApiError::new(
            ErrorCode::NotFound,
            format!("this server offers the release channel only, not {c:?}"),
        )),
    }
}

fn this_version(v: &str) -> Result<(), ApiError> {
    let v = v.trim_start_matches('v');
    if v == VERSION || v == "latest" {
        return Ok(());
    }
    Err(ApiError::new(
        ErrorCode::NotFound,
        format!("this server offers CLI version {VERSION} only, not {v:?}"),
    ))
}

/// `GET /v1/cli/latest[?channel=]`.
pub async fn latest(
    State(s): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<CliRelease>, ApiError> {
    only_release(q.get("channel").map(String::as_str))?;
    Ok(Json(s.cli.release()?))
}

/// `GET /v1/cli/{version}`.
pub async fn version(
    State(s): State<AppState>,
    Path(v): Path<String>,
) -> Result<Json<CliRelease>, ApiError> {
    this_version(&v)?;
    Ok(Json(s.cli.release()?))
}

/// `GET /v1/cli/{version}/{platform}/sprite`: the binary, streamed.
pub async fn download(
    State(s): State<AppState>,
    Path((v, platform)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    this_version(&v)?;
    let Some((_, path)) = s
        .cli
        .files()
        .into_iter()
        .find(|((os, arch), _)| format!("{os}-{arch}") == platform)
    else {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            format!("no CLI build for {platform:?} on this server"),
        ));
    };
    let (sum, len) = s.cli.sum(&path).map_err(ApiError::internal)?;
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(ApiError::internal)?;
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(file));
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, len.to_string()),
            (header::HeaderName::from_static("x-checksum-sha256"), sum),
        ],
        body,
    )
        .into_response())
}

/// `GET /install.sh`: installs the CLI from this server into `~/.local/bin`.
pub async fn install_sh(State(s): State<AppState>, headers: HeaderMap) -> Response {
    // The address the user reached us at, so `curl <that>/install.sh | sh` downloads from it.
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            h.chars()
                .all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c))
        })
        .unwrap_or("127.0.0.1:7780");
    let proto = headers
        .get("x-forwarded-proto")
        .and_then(|h| h.to_str().ok())
        .filter(|p| *p == "https" || *p == "http")
        .unwrap_or(s.cfg.scheme);
    let script = INSTALL_SH.replace("@SERVER@", &format!("{proto}://{host}"));
    (
        [(header::CONTENT_TYPE, "text/x-shellscript; charset=utf-8")],
        script,
    )
        .into_response()
}

const INSTALL_SH: &str = r#"#!/bin/sh
# Installs the `sprite` CLI from a self-hosted Sprites server:
#   curl -fsSL @SERVER@/install.sh | sh
# SPRITES_SERVER picks another server, SPRITE_INSTALL_DIR another directory (~/.local/bin).
set -eu
server="${SPRITES_SERVER:-@SERVER@}"
dir="${SPRITE_INSTALL_DIR:-$HOME/.local/bin}"
os="$(uname -s | tr '[:upper:]' '[:lower:]')"
arch="$(uname -m)"
case "$arch" in amd64) arch=x86_64 ;; arm64) arch=aarch64 ;; esac
fail() { echo "install.sh: $*" >&2; exit 1; }
command -v curl >/dev/null 2>&1 || fail "needs curl"
if command -v sha256sum >/dev/null 2>&1; then sum() { sha256sum "$1" | cut -d' ' -f1; }
elif command -v shasum >/dev/null 2>&1; then sum() { shasum -a 256 "$1" | cut -d' ' -f1; }
else fail "needs sha256sum or shasum"; fi
release="$(curl -fsSL "$server/v1/cli/latest")" || fail "cannot reach $server"
# One build per line: find ours without needing jq.
line="$(printf '%s' "$release" | tr '{' '\n' | grep "\"os\":\"$os\"" | grep "\"arch\":\"$arch\"" || true)"
[ -n "$line" ] || fail "$server offers no sprite build for $os-$arch"
url="$(printf '%s' "$line" | sed 's/.*"url":"\([^"]*\)".*/\1/')"
want="$(printf '%s' "$line" | sed 's/.*"sha256":"\([0-9a-f]*\)".*/\1/')"
version="$(printf '%s' "$release" | sed 's/.*"version":"\([^"]*\)".*/\1/')"
mkdir -p "$dir"
tmp="$(mktemp "$dir/.sprite.XXXXXX")"
trap 'rm -f "$tmp"' EXIT
curl -fsSL "$server$url" -o "$tmp" || fail "download of $server$url failed"
got="$(sum "$tmp")"
[ "$got" = "$want" ] || fail "checksum mismatch for $url (got $got, want $want)"
chmod 755 "$tmp"
mv -f "$tmp" "$dir/sprite"
trap - EXIT
echo "installed sprite $version to $dir/sprite"
case ":$PATH:" in
  *":$dir:"*) ;;
  *) echo "add it to your PATH: export PATH=\"$dir:\$PATH\" (in ~/.profile or your shell's rc file)" ;;
esac
echo "then: sprite login $server"
"#;
