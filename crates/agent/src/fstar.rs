//! Bulk transfer as tar streams (our extension of the filesystem API):
//! `GET /fs/tar?path&workingDir[&asRoot]` streams a directory (or one file) as a tar archive,
//! `PUT /fs/tar?path&workingDir[&asRoot]` extracts a tar body under a directory.
//!
//! Both run under the same per-thread credentials as the other filesystem operations
//! (`fsapi::spawn_as_user`) and stream: the archive is never held whole in memory. Extraction
//! never writes outside its directory: absolute names, `..`, links pointing outside and device
//! nodes are refused, and the tar crate's `unpack_in` refuses to write through symlinks that
//! lead out.

use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

use axum::body::{Body, Bytes};
use axum::extract::{Query, Request};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::StreamExt;
use serde_json::json;
use tokio::sync::mpsc;

use crate::fsapi::{as_user, flag, q, resolve, spawn_as_user, FsError, FsResult};

/// Size of the chunks the archive is sent in.
const CHUNK: usize = 256 * 1024;

/// A `Write` feeding the response body. A channel rather than a pipe, so that a failure in the
/// middle of an archive aborts the response instead of ending it like a short archive.
struct BodyWriter {
    tx: mpsc::Sender<std::io::Result<Bytes>>,
    buf: Vec<u8>,
}

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
        self.tx.blocking_send(Ok(chunk)).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client went away")
        })
    }
}

/// `GET /fs/tar?path&workingDir[&asRoot]`: the directory's contents (names relative to it), or
/// the single file under its own name.
pub async fn download(Query(qs): Query<Vec<(String, String)>>) -> Response {
    let run = async {
        let path = resolve(q(&qs, "path").unwrap_or(""), q(&qs, "workingDir"))?;
        let as_root = flag(q(&qs, "asRoot"));
        let (tx, rx) = mpsc::channel::<std::io::Result<Bytes>>(4);
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<FsResult<()>>();
        let p = path.clone();
        spawn_as_user(as_root, move || {
            // Failures known before the first byte become a status and a JSON error.
            let checked = std::fs::metadata(&p).and_then(|m| {
                if m.is_dir() {
                    std::fs::read_dir(&p).map(|_| true)
                } else {
                    std::fs::File::open(&p).map(|_| false)
                }
            });
            let is_dir = match checked {
                Ok(d) => d,
                Err(e) => {
                    let _ = ready_tx.send(Err(FsError::io(&e, &p)));
                    return;
                }
            };
            let _ = ready_tx.send(Ok(()));
            let mut b = tar::Builder::new(BodyWriter {
                tx: tx.clone(),
                buf: Vec::with_capacity(CHUNK),
            });
            b.follow_symlinks(false);
            let built = if is_dir {
                b.append_dir_all("", &p)
            } else {
                let name = p.file_name().map(PathBuf::from).unwrap_or_default();
                b.append_path_with_name(&p, name)
            };
            let done = built
                .and_then(|_| b.into_inner())
                .and_then(|mut w| w.flush());
            if let Err(e) = done {
                tracing::debug!("tar of {}: {e}", p.display());
                let _ = tx.blocking_send(Err(e));
            }
        });
        ready_rx
            .await
            .unwrap_or_else(|_| Err(FsError::invalid("tar worker ended", "")))?;
        let body = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|chunk| (chunk, rx))
        });
        let mut r = Response::new(Body::from_stream(body));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            "application/x-tar".parse().expect("static header"),
        );
        Ok::<_, FsError>(r)
    };
    run.await.unwrap_or_else(|e| e.into_response())
}

/// `PUT /fs/tar?path&workingDir[&asRoot]`, body = a tar stream: extracted under `path`
/// (created if missing), owned by the writing user. Answers `{"path","files","bytes"}`.
pub async fn upload(Query(qs): Query<Vec<(String, String)>>, req: Request) -> Response {
    let run = async {
        let dir = resolve(q(&qs, "path").unwrap_or(""), q(&qs, "workingDir"))?;
        let as_root = flag(q(&qs, "asRoot"));
        let body = req
            .into_body()
            .into_data_stream()
            .map(|r| r.map_err(std::io::Error::other));
        // The extracting thread reads the request body as it arrives.
        let reader = tokio_util::io::SyncIoBridge::new_with_handle(
            tokio_util::io::StreamReader::new(body),
            tokio::runtime::Handle::current(),
        );
        let d = dir.clone();
        let (files, bytes) = as_user(as_root, move || {
            let mut reader = reader;
            let done = extract(&mut reader, &d);
            // After a failure, and after the end-of-archive marker (tar writers pad past it),
            // the rest of the body is read so that the answer reaches the client intact.
            crate::fsapi::drain_sync(&mut reader);
            done
        })
        .await?;
        Ok::<_, FsError>(
            (
                StatusCode::OK,
                Json(json!({ "path": dir.display().to_string(), "files": files, "bytes": bytes })),
            )
                .into_response(),
        )
    };
    run.await.unwrap_or_else(|e| e.into_response())
}

/// Extracts `reader` under `dir`; returns (entries other than directories, bytes of files).
fn extract(reader: impl Read, dir: &Path) -> FsResult<(u64, u64)> {
    std::fs::create_dir_all(dir).map_err(|e| FsError::io(&e, dir))?;
    let root = dir.canonicalize().map_err(|e| FsError::io(&e, dir))?;
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(false);
    archive.set_preserve_ownerships(false);
    archive.set_overwrite(true);
    let bad = |e: std::io::Error| FsError {
        code: "EINVAL",
        message: format!("reading the archive: {e}"),
        path: dir.display().to_string(),
    };
    let (mut files, mut bytes) = (0u64, 0u64);
    // Directories get their modes last, deepest first, so a read-only directory does not stop
    // its own contents from being written (as `tar::Archive::unpack` does).
    let mut dirs = Vec::new();
    for entry in archive.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let name = entry.path().map_err(bad)?.into_owned();
        let dest: PathBuf = root.join(
            name.components()
                .filter(|c| matches!(c, Component::Normal(_)))
                .collect::<PathBuf>(),
        );
        let refuse = |why: &str| FsError {
            code: "EINVAL",
            message: format!("archive entry {:?} {why}", name.display().to_string()),
            path: dest.display().to_string(),
        };
        if depth_inside(Path::new(""), &name).is_none() {
            return Err(refuse("is not a relative path inside the target directory"));
        }
        use tar::EntryType as T;
        let kind = entry.header().entry_type();
        match kind {
            T::Directory => {
                dirs.push(entry);
                continue;
            }
            T::Regular | T::Continuous | T::GNUSparse => {
                files += 1;
                bytes += entry.size();
            }
            T::Symlink | T::Link => {
                let target = entry
                    .link_name()
                    .map_err(bad)?
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                // Symlinks are relative to their own directory, hard links to the archive's root.
                let base = if kind == T::Symlink {
                    name.parent().unwrap_or(Path::new(""))
                } else {
                    Path::new("")
                };
                let target = match target.strip_prefix(&root) {
                    Ok(inside) if target.is_absolute() => inside.to_path_buf(),
                    _ => target,
                };
                if target.as_os_str().is_empty() || depth_inside(base, &target).is_none() {
                    return Err(refuse("links to outside the target directory"));
                }
                files += 1;
            }
            T::XGlobalHeader => continue,
            _ => return Err(refuse("is a device, FIFO or other special file")),
        }
        if leads_out(&root, &dest) {
            return Err(refuse("would be written through a symlink leading outside"));
        }
        match entry.unpack_in(&root) {
            Ok(true) => {}
            Ok(false) => return Err(refuse("would be written outside the target directory")),
            Err(e) => return Err(FsError::io(&e, &dest)),
        }
    }
    dirs.sort_by(|a, b| b.path_bytes().cmp(&a.path_bytes()));
    for mut d in dirs {
        let dest = root.join(d.path().map_err(bad)?.as_ref());
        d.unpack_in(&root).map_err(|e| FsError::io(&e, &dest))?;
    }
    Ok((files, bytes))
}

/// Whether the deepest existing directory on the way to `dest` resolves outside `root`
/// (canonical), through a symlink already on disk. `unpack_in` refuses these as well; checking
/// first gives the client a clear error.
fn leads_out(root: &Path, dest: &Path) -> bool {
    let mut dir = dest.parent();
    while let Some(d) = dir {
        if d.symlink_metadata().is_ok() {
            return d.canonicalize().map_or(true, |c| !c.starts_with(root));
        }
        dir = d.parent();
    }
    true
}

/// How deep `base/rel` lies below the root, judged by its components alone; `None` when it
/// is absolute or climbs out with `..`.
fn depth_inside(base: &Path, rel: &Path) -> Option<usize> {
    let mut depth = 0usize;
    for c in base.components().chain(rel.components()) {
        match c {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => depth = depth.checked_sub(1)?,
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(depth)
}

#[cfg(test)]
mod tests {
    use super::depth_inside;
    use std::path::Path;

    #[test]
    fn inside_or_not() {
        let p = Path::new;
        assert_eq!(depth_inside(p(""), p("a/b")), Some(2));
        assert_eq!(depth_inside(p("a/b"), p("../c")), Some(2));
        assert_eq!(depth_inside(p(""), p("./a")), Some(1));
        assert_eq!(depth_inside(p("a"), p("../../etc")), None);
        assert_eq!(depth_inside(p(""), p("../x")), None);
        assert_eq!(depth_inside(p(""), p("/etc/passwd")), None);
        assert_eq!(depth_inside(p("a"), p("b/../../..")), None);
    }

    /// One raw tar entry, written byte by byte so names may hold anything a hostile client
    /// sends (`..`, absolute paths, links out), which `tar::Builder` would refuse to write.
    fn raw_entry(out: &mut Vec<u8>, kind: u8, name: &str, link: &str, data: &[u8]) {
        let mut h = tar::Header::new_gnu();
        let (n, l) = (name.len().min(99), link.len().min(99));
        h.as_old_mut().name[..n].copy_from_slice(&name.as_bytes()[..n]);
        h.as_old_mut().linkname[..l].copy_from_slice(&link.as_bytes()[..l]);
        let kind = match kind % 4 {
            0 => tar::EntryType::Regular,
            1 => tar::EntryType::Directory,
            2 => tar::EntryType::Symlink,
            _ => tar::EntryType::Link,
        };
        h.set_entry_type(kind);
        let size = if kind == tar::EntryType::Regular {
            data.len()
        } else {
            0
        };
        h.set_size(size as u64);
        h.set_mode(0o755);
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(&data[..size]);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }

    fn component() -> impl proptest::strategy::Strategy<Value = String> {
        proptest::sample::select(vec!["a", "b", "..", ".", "", "outside", "/", "x y"])
            .prop_map(str::to_string)
    }

    fn hostile_path() -> impl proptest::strategy::Strategy<Value = String> {
        proptest::collection::vec(component(), 1..5).prop_map(|c| c.join("/"))
    }

    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Whatever the archive, nothing is written outside the target directory, and
        /// extracting never panics.
        #[test]
        fn archives_stay_inside(
            entries in proptest::collection::vec(
                (any::<u8>(), hostile_path(), hostile_path(), proptest::collection::vec(any::<u8>(), 0..64)),
                0..8,
            ),
            garbage in proptest::collection::vec(any::<u8>(), 0..600),
            truncate in any::<bool>(),
        ) {
            let tmp = tempfile::tempdir().unwrap();
            let outside = tmp.path().join("outside");
            std::fs::create_dir(&outside).unwrap();
            let target = tmp.path().join("in");
            let mut tar = Vec::new();
            for (kind, name, link, data) in &entries {
                raw_entry(&mut tar, *kind, name, link, data);
            }
            if truncate {
                tar.extend_from_slice(&garbage);
            } else {
                tar.extend_from_slice(&[0u8; 1024]);
            }
            let _ = super::extract(&tar[..], &target);
            let above: Vec<_> = std::fs::read_dir(tmp.path())
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            prop_assert!(above.iter().all(|n| n == "in" || n == "outside"), "{above:?}");
            prop_assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
        }
    }
}
