//! The filesystem API (spec §9) and our tar extension: reading and writing files (whole or
//! streamed), stat, and moving directory trees as tar streams (`/fs/tar`), with helpers that
//! build or extract the archive locally as it streams.
//!
//! Relative remote paths resolve against [`SPRITE_HOME`]. Everything runs as the `sprite` user
//! in the sprite, so its permissions apply.

use std::io::Write;
use std::path::{Component, Path, PathBuf};

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use serde::Deserialize;
use tokio::io::AsyncRead;
use tokio::sync::mpsc;

use crate::client::{sprite_path, SpriteHandle};
use crate::error::{Error, Result};

/// The sprite user's home: the working directory of relative remote paths.
pub const SPRITE_HOME: &str = "/home/sprite";

/// A stream of bytes from the sprite (a file or a tar archive).
pub type ByteStream = BoxStream<'static, Result<Bytes>>;

/// What an upload of a tar stream extracted.
#[derive(Debug, Clone, Deserialize)]
pub struct TarSummary {
    /// The directory extracted into.
    pub path: String,
    /// Entries other than directories.
    pub files: u64,
    /// Bytes of regular files.
    pub bytes: u64,
}

/// One file's metadata, as `/fs/list` reports it.
#[derive(Debug, Clone, Deserialize)]
pub struct FileInfo {
    /// Last path component.
    pub name: String,
    /// Absolute path.
    pub path: String,
    /// `file`, `directory` or `symlink`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Size in bytes.
    pub size: u64,
    /// Octal mode such as `0644`.
    pub mode: String,
    /// RFC 3339 modification time.
    #[serde(rename = "modTime")]
    pub mod_time: String,
    /// Whether this is a directory.
    #[serde(rename = "isDir")]
    pub is_dir: bool,
}

#[derive(Deserialize)]
struct ListResponse {
    entries: Vec<FileInfo>,
}

/// The §9 error body `{"error","code","path"}`.
#[derive(Deserialize)]
struct FsErrorBody {
    error: String,
    code: String,
    #[serde(default)]
    path: String,
}

/// Turns a filesystem error body (which `Error::from_body` keeps as raw text) into a readable
/// message with its errno code.
fn fs_err(e: Error) -> Error {
    match e {
        Error::Api {
            status,
            code: None,
            message,
        } => match serde_json::from_str::<FsErrorBody>(&message) {
            Ok(b) => Error::Api {
                status,
                code: Some(b.code),
                message: if b.path.is_empty() {
                    b.error
                } else {
                    format!("{}: {}", b.path, b.error)
                },
            },
            Err(_) => Error::Api {
                status,
                code: None,
                message,
            },
        },
        e => e,
    }
}

/// `path` made absolute against [`SPRITE_HOME`], with `.` and `..` folded away.
fn absolute(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    let joined = if path.starts_with('/') {
        PathBuf::from(path)
    } else {
        Path::new(SPRITE_HOME).join(path)
    };
    for c in joined.components() {
        match c {
            Component::Normal(p) => parts.push(p.to_str().unwrap_or_default()),
            Component::ParentDir => {
                parts.pop();
            }
            _ => {}
        }
    }
    format!("/{}", parts.join("/"))
}

/// `name` as a glob pattern matching only itself.
fn glob_escape(name: &str) -> String {
    name.chars()
        .map(|c| match c {
            '*' | '?' | '[' | ']' => format!("[{c}]"),
            c => c.to_string(),
        })
        .collect()
}

/// A `Write` feeding a request body chunk by chunk. A failure is sent down the channel, which
/// aborts the request instead of ending it like a short archive.
struct BodyWriter {
    tx: mpsc::Sender<std::io::Result<Bytes>>,
    buf: Vec<u8>,
}

const CHUNK: usize = 256 * 1024;

impl Write for BodyWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the upload ended"))
    }
}

impl SpriteHandle {
    fn fs_request(&self, method: reqwest::Method, op: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, &sprite_path(&self.name, &format!("/fs/{op}")))
            .query(&[("workingDir", SPRITE_HOME)])
    }

    /// A whole file.
    pub async fn read_file(&self, path: &str) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        let mut s = self.read_stream(path).await?;
        while let Some(chunk) = s.next().await {
            out.extend_from_slice(&chunk?);
        }
        Ok(out)
    }

    /// A file as a stream of chunks.
    pub async fn read_stream(&self, path: &str) -> Result<ByteStream> {
        let req = self
            .fs_request(reqwest::Method::GET, "read")
            .query(&[("path", path)]);
        let resp = self.client.send_stream(req, &[200]).await.map_err(fs_err)?;
        Ok(resp.bytes_stream().map(|r| r.map_err(Error::from)).boxed())
    }

    /// Writes a whole file (parent directories are created), with `mode` (default `0644`).
    pub async fn write_file(
        &self,
        path: &str,
        bytes: impl Into<Bytes>,
        mode: Option<u32>,
    ) -> Result<()> {
        let req = self.write_request(path, mode).body(bytes.into());
        self.client
            .send(req, &[200, 201])
            .await
            .map(|_| ())
            .map_err(fs_err)
    }

    /// Writes a file from a reader, streamed (parent directories are created).
    pub async fn write_stream(
        &self,
        path: &str,
        body: impl AsyncRead + Send + 'static,
        mode: Option<u32>,
    ) -> Result<()> {
        let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(body));
        let req = self.write_request(path, mode).body(body);
        self.client
            .send_stream(req, &[200, 201])
            .await
            .map(|_| ())
            .map_err(fs_err)
    }

    fn write_request(&self, path: &str, mode: Option<u32>) -> reqwest::RequestBuilder {
        self.fs_request(reqwest::Method::PUT, "write")
            .query(&[
                ("path", path.to_string()),
                ("mkdirParents", "true".into()),
                ("mode", format!("{:04o}", mode.unwrap_or(0o644) & 0o7777)),
            ])
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
    }

    /// Metadata of `path` (not following a final symlink), or `None` if it does not exist.
    pub async fn stat(&self, path: &str) -> Result<Option<FileInfo>> {
        let abs = absolute(path);
        let list = |p: String, pattern: Option<String>| async move {
            let mut req = self
                .fs_request(reqwest::Method::GET, "list")
                .query(&[("path", p)]);
            if let Some(pat) = pattern {
                req = req.query(&[("pattern", pat)]);
            }
            self.client
                .json::<ListResponse>(req, &[200])
                .await
                .map_err(fs_err)
        };
        let own = match list(abs.clone(), None).await {
            Ok(l) => l,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e),
        };
        // Listing a file gives the file itself; listing a directory gives its children.
        if let [only] = own.entries.as_slice() {
            if only.path == abs {
                return Ok(own.entries.into_iter().next());
            }
        }
        let dir_entry = match abs.rsplit_once('/') {
            Some((parent, name)) if !name.is_empty() => {
                let parent = if parent.is_empty() { "/" } else { parent };
                list(parent.to_string(), Some(glob_escape(name)))
                    .await
                    .ok()
                    .and_then(|l| l.entries.into_iter().find(|e| e.path == abs))
            }
            _ => None,
        };
        Ok(Some(dir_entry.unwrap_or_else(|| FileInfo {
            name: abs.rsplit('/').next().unwrap_or("/").to_string(),
            path: abs.clone(),
            kind: "directory".into(),
            size: 0,
            mode: String::new(),
            mod_time: String::new(),
            is_dir: true,
        })))
    }

    /// Extracts a tar stream under `dest_dir` (created if missing) in the sprite.
    pub async fn upload_tar(
        &self,
        dest_dir: &str,
        body: impl AsyncRead + Send + 'static,
    ) -> Result<TarSummary> {
        let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(body));
        self.upload_tar_body(dest_dir, body).await
    }

    async fn upload_tar_body(&self, dest_dir: &str, body: reqwest::Body) -> Result<TarSummary> {
        let req = self
            .fs_request(reqwest::Method::PUT, "tar")
            .query(&[("path", dest_dir)])
            .header(reqwest::header::CONTENT_TYPE, "application/x-tar")
            .body(body);
        let resp = self.client.send_stream(req, &[200]).await.map_err(fs_err)?;
        let body = resp.bytes().await?;
        serde_json::from_slice(&body)
            .map_err(|e| Error::Protocol(format!("unexpected tar upload response: {e}")))
    }

    /// A directory of the sprite (or one file) as a tar stream; names are relative to it.
    pub async fn download_tar(&self, path: &str) -> Result<ByteStream> {
        let req = self
            .fs_request(reqwest::Method::GET, "tar")
            .query(&[("path", path)]);
        let resp = self.client.send_stream(req, &[200]).await.map_err(fs_err)?;
        Ok(resp.bytes_stream().map(|r| r.map_err(Error::from)).boxed())
    }

    /// Copies the contents of local directory `local_dir` into `remote_dir` (created if
    /// missing), packing the tar archive as it uploads. Symlinks are copied as symlinks.
    pub async fn upload_dir(
        &self,
        local_dir: impl AsRef<Path>,
        remote_dir: &str,
    ) -> Result<TarSummary> {
        let local = local_dir.as_ref().to_path_buf();
        if !local.is_dir() {
            return Err(Error::InvalidInput(format!(
                "{} is not a directory",
                local.display()
            )));
        }
        let (tx, mut rx) = mpsc::channel::<std::io::Result<Bytes>>(4);
        let packer = tokio::task::spawn_blocking(move || {
            let mut b = tar::Builder::new(BodyWriter {
                tx: tx.clone(),
                buf: Vec::with_capacity(CHUNK),
            });
            b.follow_symlinks(false);
            let done = b
                .append_dir_all("", &local)
                .and_then(|_| b.into_inner())
                .and_then(|mut w| w.flush())
                .map_err(|e| format!("packing {}: {e}", local.display()));
            if let Err(msg) = &done {
                let _ = tx.blocking_send(Err(std::io::Error::other(msg.clone())));
            }
            done
        });
        let body = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
        let uploaded = self
            .upload_tar_body(remote_dir, reqwest::Body::wrap_stream(body))
            .await;
        // A packing failure explains a failed upload better than the aborted request does.
        match packer.await {
            Ok(Err(msg)) => Err(Error::InvalidInput(msg)),
            Err(e) => Err(Error::InvalidInput(format!("packing failed: {e}"))),
            Ok(Ok(())) => uploaded,
        }
    }

    /// Copies remote directory `remote_path` (its contents) into `local_dir` (created if
    /// missing), extracting as it downloads. A remote file lands as `local_dir/<name>`.
    pub async fn download_dir(&self, remote_path: &str, local_dir: impl AsRef<Path>) -> Result<()> {
        let stream = self.download_tar(remote_path).await?;
        let reader =
            tokio_util::io::StreamReader::new(stream.map(|r| r.map_err(std::io::Error::other)));
        let local = local_dir.as_ref().to_path_buf();
        tokio::task::spawn_blocking(move || {
            let mut archive = tar::Archive::new(tokio_util::io::SyncIoBridge::new(reader));
            // `unpack` keeps every entry inside `local` (no absolute names, no `..`, no writing
            // through symlinks that lead out).
            archive.unpack(&local).map_err(|e| {
                Error::InvalidInput(format!("extracting into {}: {e}", local.display()))
            })
        })
        .await
        .map_err(|e| Error::InvalidInput(format!("extracting failed: {e}")))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_patterns() {
        assert_eq!(absolute("a/b"), "/home/sprite/a/b");
        assert_eq!(absolute("/etc/../tmp/./x/"), "/tmp/x");
        assert_eq!(absolute("/"), "/");
        assert_eq!(glob_escape("a*b[1].txt"), "a[*]b[[]1[]].txt");
    }

    #[test]
    fn filesystem_errors_read_well() {
        let e = fs_err(Error::from_body(
            403,
            br#"{"error":"Permission denied (os error 13)","code":"EACCES","path":"/etc/x"}"#,
        ));
        match e {
            Error::Api {
                status,
                code,
                message,
            } => {
                assert_eq!(status, 403);
                assert_eq!(code.as_deref(), Some("EACCES"));
                assert_eq!(message, "/etc/x: Permission denied (os error 13)");
            }
            other => panic!("{other:?}"),
        }
    }
}
