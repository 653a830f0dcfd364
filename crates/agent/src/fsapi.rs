//! The filesystem API (spec §9): read, write, list/stat, delete, rename, copy, chmod, chown,
//! and the `watch` WebSocket (inotify); the tar endpoints live in `fstar.rs`.
//!
//! Every operation runs as the `sprite` user (or root with `asRoot=true`) with real permission
//! checks: it runs on a thread of its own that switches only its own filesystem credentials
//! (`setfsuid`/`setfsgid`/`setgroups` as raw per-thread syscalls), so other threads of the agent
//! keep theirs. Files are opened under those credentials and then streamed, never buffered whole.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::io::Seek;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, Request};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use futures::StreamExt;
use serde_json::{json, Value};
use sprites_agent_protocol::{SPRITE_GID, SPRITE_UID};

/// The routes, stateless.
pub fn router() -> Router {
    Router::new()
        .route("/fs/read", get(read))
        .route("/fs/write", put(write))
        .route("/fs/list", get(list))
        .route("/fs/delete", delete(remove))
        .route("/fs/rename", post(rename))
        .route("/fs/copy", post(copy))
        .route("/fs/chmod", post(chmod))
        .route("/fs/chown", post(chown))
        .route("/fs/watch", get(watch))
        .route(
            "/fs/tar",
            get(crate::fstar::download).put(crate::fstar::upload),
        )
}

/// An error in the §9 shape.
pub(crate) struct FsError {
    pub(crate) code: &'static str,
    pub(crate) message: String,
    pub(crate) path: String,
}

impl FsError {
    /// Maps an I/O error to its errno code. Wrapped errors (the tar crate wraps the OS error
    /// in its own) are searched for the OS error, and their messages are kept.
    pub(crate) fn io(e: &std::io::Error, path: &Path) -> Self {
        let mut errno = e.raw_os_error();
        let mut message = e.to_string();
        let mut cause = std::error::Error::source(e);
        while let Some(c) = cause {
            if let Some(io) = c.downcast_ref::<std::io::Error>() {
                errno = errno.or(io.raw_os_error());
            }
            let text = c.to_string();
            if !message.contains(&text) {
                message = format!("{message}: {text}");
            }
            cause = c.source();
        }
        let errno = errno.or(match e.kind() {
            std::io::ErrorKind::NotFound => Some(libc::ENOENT),
            std::io::ErrorKind::PermissionDenied => Some(libc::EACCES),
            std::io::ErrorKind::AlreadyExists => Some(libc::EEXIST),
            _ => None,
        });
        let code = match errno {
            Some(libc::ENOENT) => "ENOENT",
            Some(libc::EEXIST) => "EEXIST",
            Some(libc::ENOTDIR) => "ENOTDIR",
            Some(libc::EISDIR) => "EISDIR",
            Some(libc::EACCES) => "EACCES",
            Some(libc::EPERM) => "EPERM",
            Some(libc::ENOTEMPTY) => "ENOTEMPTY",
            Some(libc::EINVAL) => "EINVAL",
            _ => "EIO",
        };
        FsError {
            code,
            message,
            path: path.display().to_string(),
        }
    }

    pub(crate) fn invalid(message: impl Into<String>, path: &str) -> Self {
        FsError {
            code: "EINVAL",
            message: message.into(),
            path: path.to_string(),
        }
    }
}

impl IntoResponse for FsError {
    fn into_response(self) -> Response {
        let status = match self.code {
            "ENOENT" => StatusCode::NOT_FOUND,
            "EEXIST" | "ENOTEMPTY" => StatusCode::CONFLICT,
            "EACCES" | "EPERM" => StatusCode::FORBIDDEN,
            "EIO" => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        };
        (
            status,
            Json(json!({ "error": self.message, "code": self.code, "path": self.path })),
        )
            .into_response()
    }
}

pub(crate) type FsResult<T> = Result<T, FsError>;

/// Supplementary groups of the sprite user (read before switching credentials).
fn sprite_groups() -> Vec<libc::gid_t> {
    let text = std::fs::read_to_string("/etc/group").unwrap_or_default();
    let mut gids = vec![SPRITE_GID];
    for line in text.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() == 4 && f[3].split(',').any(|m| m == "sprite") {
            if let Ok(g) = f[2].parse() {
                gids.push(g);
            }
        }
    }
    gids
}

/// Runs `f` on a fresh thread whose filesystem credentials are the sprite user's (unless
/// `as_root`). The thread ends with `f`, so nothing else ever runs with them; `f` may run as
/// long as it likes (the watcher and the tar streams do).
pub(crate) fn spawn_as_user(as_root: bool, f: impl FnOnce() + Send + 'static) {
    let groups = sprite_groups();
    std::thread::spawn(move || {
        if !as_root {
            // SAFETY: raw per-thread credential syscalls with valid arguments; unlike the libc
            // wrappers they change this thread only.
            unsafe {
                libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr());
                libc::syscall(libc::SYS_setfsgid, SPRITE_GID);
                libc::syscall(libc::SYS_setfsuid, SPRITE_UID);
            }
        }
        f()
    });
}

/// [`spawn_as_user`], awaiting `f`'s result.
pub(crate) async fn as_user<T: Send + 'static>(
    as_root: bool,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = tokio::sync::oneshot::channel();
    spawn_as_user(as_root, move || {
        let _ = tx.send(f());
    });
    rx.await.expect("filesystem worker thread")
}

pub(crate) fn q<'a>(q: &'a [(String, String)], k: &str) -> Option<&'a str> {
    q.iter().find(|(qk, _)| qk == k).map(|(_, v)| v.as_str())
}

pub(crate) fn flag(v: Option<&str>) -> bool {
    matches!(v, Some("true" | "1" | ""))
}

/// `path` against `workingDir` (default `/`).
pub(crate) fn resolve(path: &str, working_dir: Option<&str>) -> FsResult<PathBuf> {
    if path.is_empty() || path.contains('\0') || working_dir.is_some_and(|w| w.contains('\0')) {
        return Err(FsError::invalid(
            "path must be non-empty and contain no NUL byte",
            path,
        ));
    }
    let base = Path::new(working_dir.filter(|w| !w.is_empty()).unwrap_or("/"));
    Ok(if Path::new(path).is_absolute() {
        PathBuf::from(path)
    } else {
        base.join(path)
    })
}

fn parse_mode(m: &str, path: &str) -> FsResult<u32> {
    u32::from_str_radix(m.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| {
            FsError::invalid(format!("mode must be octal like \"0644\", got {m:?}"), path)
        })
}

fn mode_str(mode: u32) -> String {
    format!("{:04o}", mode & 0o7777)
}

fn entry(path: &Path, meta: &std::fs::Metadata) -> Value {
    let kind = if meta.file_type().is_symlink() {
        "symlink"
    } else if meta.is_dir() {
        "directory"
    } else {
        "file"
    };
    let modified = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    json!({
        "name": path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "/".into()),
        "path": path.display().to_string(),
        "type": kind,
        "size": meta.len(),
        "mode": mode_str(meta.mode()),
        "modTime": sprites_api::timefmt::format_millis(modified),
        "isDir": meta.is_dir(),
    })
}

/// `GET /fs/read?path&workingDir[&start&end]`.
async fn read(Query(qs): Query<Vec<(String, String)>>) -> Response {
    let run = async {
        let path = resolve(q(&qs, "path").unwrap_or(""), q(&qs, "workingDir"))?;
        let as_root = flag(q(&qs, "asRoot"));
        let start: u64 = q(&qs, "start").and_then(|v| v.parse().ok()).unwrap_or(0);
        let end: Option<u64> = q(&qs, "end").and_then(|v| v.parse().ok());
        let p = path.clone();
        let (file, len) = as_user(as_root, move || -> FsResult<(std::fs::File, u64)> {
            let mut f = std::fs::File::open(&p).map_err(|e| FsError::io(&e, &p))?;
            let meta = f.metadata().map_err(|e| FsError::io(&e, &p))?;
            if meta.is_dir() {
                return Err(FsError {
                    code: "EISDIR",
                    message: "is a directory".into(),
                    path: p.display().to_string(),
                });
            }
            f.seek(std::io::SeekFrom::Start(start))
                .map_err(|e| FsError::io(&e, &p))?;
            Ok((f, meta.len()))
        })
        .await?;
        let stop = end.map(|e| e.min(len)).unwrap_or(len);
        let ranged = start > 0 || end.is_some();
        let mut remaining = stop.saturating_sub(start);
        let file = tokio::fs::File::from_std(file);
        let stream = futures::stream::unfold((file, remaining), |(mut f, left)| async move {
            if left == 0 {
                return None;
            }
            use tokio::io::AsyncReadExt;
            let mut buf = vec![0u8; (256 * 1024).min(left as usize)];
            match f.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((
                        Ok::<_, std::io::Error>(Bytes::from(buf)),
                        (f, left - n as u64),
                    ))
                }
                Err(e) => Some((Err(e), (f, 0))),
            }
        });
        remaining = remaining.min(len);
        let mut r = Response::new(Body::from_stream(stream));
        *r.status_mut() = if ranged {
            StatusCode::PARTIAL_CONTENT
        } else {
            StatusCode::OK
        };
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            "application/octet-stream".parse().expect("static header"),
        );
        r.headers_mut().insert(
            header::CONTENT_LENGTH,
            remaining.to_string().parse().expect("number header"),
        );
        Ok::<_, FsError>(r)
    };
    run.await.unwrap_or_else(|e| e.into_response())
}

/// How long the rest of a failed upload is still read (see [`drain`]), as a web server's
/// lingering close does.
const DRAIN_TIME: Duration = Duration::from_secs(30);

/// Reads what is left of a failed upload (for up to [`DRAIN_TIME`]) before the error is
/// answered: closing with unread data resets the connection, and spritesd's forwarder, still
/// sending the body, would then report a broken body instead of relaying the answer.
async fn drain(body: Body) {
    let mut body = body.into_data_stream();
    let _ = tokio::time::timeout(DRAIN_TIME, async {
        while let Some(Ok(_)) = body.next().await {}
    })
    .await;
}

/// [`drain`] for a body already turned into a blocking reader.
pub(crate) fn drain_sync<R: std::io::Read>(reader: &mut R) {
    let deadline = Instant::now() + DRAIN_TIME;
    let mut buf = vec![0u8; 64 << 10];
    while Instant::now() < deadline {
        match reader.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// Marks the temporary file of a write (`.NAME.sprite-write-PID-N-NANOS`), which the watcher
/// hides.
const WRITE_TEMP_MARK: &str = ".sprite-write-";

/// Whether `name` is the temporary file of a write in progress.
fn is_write_temp(name: &OsStr) -> bool {
    let name = name.to_string_lossy();
    name.starts_with('.')
        && name.rsplit_once(WRITE_TEMP_MARK).is_some_and(|(_, id)| {
            !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit() || b == b'-')
        })
}

/// `PUT /fs/write?path&workingDir&mode&mkdirParents|mkdir&asRoot`, body = the bytes.
async fn write(Query(qs): Query<Vec<(String, String)>>, req: Request) -> Response {
    let run = async {
        let path = resolve(q(&qs, "path").unwrap_or(""), q(&qs, "workingDir"))?;
        let as_root = flag(q(&qs, "asRoot"));
        let mode = parse_mode(
            q(&qs, "mode").unwrap_or("0644"),
            &path.display().to_string(),
        )?;
        let mkdirs = flag(q(&qs, "mkdirParents")) || flag(q(&qs, "mkdir"));
        let dir = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("/"));
        // Unique per write, so concurrent writes to one path never share a temporary file.
        static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let tmp = dir.join(format!(
            ".{}{WRITE_TEMP_MARK}{}-{}-{}",
            path.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            std::process::id(),
            WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            // A temporary file left by a crash of an earlier boot (same pid) never collides.
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0)
        ));
        let (d, t) = (dir.clone(), tmp.clone());
        let opened = as_user(as_root, move || -> FsResult<std::fs::File> {
            if mkdirs {
                std::fs::create_dir_all(&d).map_err(|e| FsError::io(&e, &d))?;
            }
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&t)
                .map_err(|e| FsError::io(&e, &t))
        })
        .await;
        let file = match opened {
            Ok(f) => f,
            Err(e) => {
                drain(req.into_body()).await;
                return Err(e);
            }
        };
        // Stream the body into the temporary file; readers never see a half-written file.
        let mut file = tokio::fs::File::from_std(file);
        let mut body = req.into_body().into_data_stream();
        let mut size = 0u64;
        while let Some(chunk) = body.next().await {
            use tokio::io::AsyncWriteExt;
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(FsError {
                        code: "EIO",
                        message: format!("reading the upload: {e}"),
                        path: path.display().to_string(),
                    });
                }
            };
            if let Err(e) = file.write_all(&chunk).await {
                let _ = std::fs::remove_file(&tmp);
                return Err(FsError::io(&e, &path));
            }
            size += chunk.len() as u64;
        }
        let file = file.into_std().await;
        let (p, t) = (path.clone(), tmp.clone());
        as_user(as_root, move || -> FsResult<()> {
            let done = file
                .sync_all()
                .and_then(|_| file.set_permissions(std::fs::Permissions::from_mode(mode)))
                .and_then(|_| std::fs::rename(&t, &p));
            if let Err(e) = done {
                let _ = std::fs::remove_file(&t);
                return Err(FsError::io(&e, &p));
            }
            Ok(())
        })
        .await?;
        Ok::<_, FsError>(
            Json(
                json!({ "path": path.display().to_string(), "size": size, "mode": mode_str(mode) }),
            )
            .into_response(),
        )
    };
    run.await.unwrap_or_else(|e| e.into_response())
}

/// `GET /fs/list?path&workingDir[&recursive][&pattern]`: a directory's entries, or exactly the
/// file itself when `path` is a file (clients stat this way).
async fn list(Query(qs): Query<Vec<(String, String)>>) -> Response {
    let run = async {
        let path = resolve(q(&qs, "path").unwrap_or("."), q(&qs, "workingDir"))?;
        let recursive = flag(q(&qs, "recursive"));
        let pattern = match q(&qs, "pattern").filter(|p| !p.is_empty()) {
            Some(p) => Some(
                glob::Pattern::new(p)
                    .map_err(|e| FsError::invalid(format!("invalid pattern: {e}"), p))?,
            ),
            None => None,
        };
        let as_root = flag(q(&qs, "asRoot"));
        let p = path.clone();
        let entries = as_user(as_root, move || -> FsResult<Vec<Value>> {
            let meta = std::fs::symlink_metadata(&p).map_err(|e| FsError::io(&e, &p))?;
            if !meta.is_dir() {
                return Ok(vec![entry(&p, &meta)]);
            }
            let mut out = Vec::new();
            let mut stack = vec![p.clone()];
            while let Some(dir) = stack.pop() {
                let rd = std::fs::read_dir(&dir).map_err(|e| FsError::io(&e, &dir))?;
                let mut names: Vec<_> = rd.flatten().collect();
                names.sort_by_key(|e| e.file_name());
                for e in names {
                    let Ok(m) = e.path().symlink_metadata() else {
                        continue;
                    };
                    let name = e.file_name().to_string_lossy().into_owned();
                    if pattern.as_ref().is_none_or(|pat| pat.matches(&name)) {
                        out.push(entry(&e.path(), &m));
                    }
                    if recursive && m.is_dir() {
                        stack.push(e.path());
                    }
                }
            }
            Ok(out)
        })
        .await?;
        let count = entries.len();
        Ok::<_, FsError>(
            Json(json!({ "path": path.display().to_string(), "entries": entries, "count": count }))
                .into_response(),
        )
    };
    run.await.unwrap_or_else(|e| e.into_response())
}

/// `DELETE /fs/delete?path&workingDir[&recursive][&asRoot]`.
async fn remove(Query(qs): Query<Vec<(String, String)>>) -> Response {
    let run = async {
        let path = resolve(q(&qs, "path").unwrap_or(""), q(&qs, "workingDir"))?;
        let recursive = flag(q(&qs, "recursive"));
        let p = path.clone();
        let deleted = as_user(flag(q(&qs, "asRoot")), move || -> FsResult<Vec<String>> {
            let meta = std::fs::symlink_metadata(&p).map_err(|e| FsError::io(&e, &p))?;
            if meta.is_dir() {
                if recursive {
                    std::fs::remove_dir_all(&p).map_err(|e| FsError::io(&e, &p))?;
                } else {
                    std::fs::remove_dir(&p).map_err(|e| FsError::io(&e, &p))?;
                }
            } else {
                std::fs::remove_file(&p).map_err(|e| FsError::io(&e, &p))?;
            }
            Ok(vec![p.display().to_string()])
        })
        .await?;
        let count = deleted.len();
        Ok::<_, FsError>(Json(json!({ "deleted": deleted, "count": count })).into_response())
    };
    run.await.unwrap_or_else(|e| e.into_response())
}

fn body_json(body: &Bytes) -> FsResult<Value> {
    serde_json::from_slice(body)
        .map_err(|e| FsError::invalid(format!("invalid JSON body: {e}"), ""))
}

fn field<'a>(v: &'a Value, k: &str) -> Option<&'a str> {
    v[k].as_str()
}

/// `POST /fs/rename {"source","dest","workingDir","asRoot"}`.
async fn rename(body: Bytes) -> Response {
    let run = async {
        let v = body_json(&body)?;
        let wd = field(&v, "workingDir");
        let src = resolve(field(&v, "source").unwrap_or(""), wd)?;
        let dst = resolve(field(&v, "dest").unwrap_or(""), wd)?;
        let (s, d) = (src.clone(), dst.clone());
        as_user(v["asRoot"].as_bool().unwrap_or(false), move || {
            std::fs::rename(&s, &d).map_err(|e| FsError::io(&e, &s))
        })
        .await?;
        Ok::<_, FsError>(
            Json(json!({ "source": src.display().to_string(), "dest": dst.display().to_string() }))
                .into_response(),
        )
    };
    run.await.unwrap_or_else(|e| e.into_response())
}

/// Copies `src` to `dst` (directories with `recursive`), listing what was copied.
fn copy_tree(
    src: &Path,
    dst: &Path,
    recursive: bool,
    preserve: bool,
    out: &mut Vec<Value>,
    total: &mut u64,
) -> FsResult<()> {
    let meta = std::fs::symlink_metadata(src).map_err(|e| FsError::io(&e, src))?;
    if meta.is_dir() {
        if !recursive {
            return Err(FsError {
                code: "EISDIR",
                message: "is a directory (use recursive)".into(),
                path: src.display().to_string(),
            });
        }
        std::fs::create_dir_all(dst).map_err(|e| FsError::io(&e, dst))?;
        for e in std::fs::read_dir(src)
            .map_err(|e| FsError::io(&e, src))?
            .flatten()
        {
            copy_tree(
                &e.path(),
                &dst.join(e.file_name()),
                true,
                preserve,
                out,
                total,
            )?;
        }
    } else if meta.file_type().is_symlink() {
        let target = std::fs::read_link(src).map_err(|e| FsError::io(&e, src))?;
        std::os::unix::fs::symlink(target, dst).map_err(|e| FsError::io(&e, dst))?;
    } else {
        *total += std::fs::copy(src, dst).map_err(|e| FsError::io(&e, dst))?;
    }
    if preserve && !meta.file_type().is_symlink() {
        let _ = std::fs::set_permissions(dst, std::fs::Permissions::from_mode(meta.mode()));
        let _ = std::os::unix::fs::lchown(dst, Some(meta.uid()), Some(meta.gid()));
    }
    out.push(json!({ "source": src.display().to_string(), "dest": dst.display().to_string() }));
    Ok(())
}

/// `POST /fs/copy {"source","dest","workingDir","recursive","preserveAttrs","asRoot"}`.
async fn copy(body: Bytes) -> Response {
    let run = async {
        let v = body_json(&body)?;
        let wd = field(&v, "workingDir");
        let src = resolve(field(&v, "source").unwrap_or(""), wd)?;
        let dst = resolve(field(&v, "dest").unwrap_or(""), wd)?;
        let recursive = v["recursive"].as_bool().unwrap_or(false);
        let preserve = v["preserveAttrs"].as_bool().unwrap_or(false);
        let (copied, total) = as_user(v["asRoot"].as_bool().unwrap_or(false), move || {
            let (mut out, mut total) = (Vec::new(), 0u64);
            copy_tree(&src, &dst, recursive, preserve, &mut out, &mut total).map(|_| (out, total))
        })
        .await?;
        let count = copied.len();
        Ok::<_, FsError>(
            Json(json!({ "copied": copied, "count": count, "totalBytes": total })).into_response(),
        )
    };
    run.await.unwrap_or_else(|e| e.into_response())
}

/// Applies `f` to `path` and, with `recursive`, everything below it.
fn walk(path: &Path, recursive: bool, f: &mut dyn FnMut(&Path) -> FsResult<()>) -> FsResult<()> {
    f(path)?;
    if recursive
        && std::fs::symlink_metadata(path)
            .map(|m| m.is_dir())
            .unwrap_or(false)
    {
        for e in std::fs::read_dir(path)
            .map_err(|e| FsError::io(&e, path))?
            .flatten()
        {
            walk(&e.path(), true, f)?;
        }
    }
    Ok(())
}

/// `POST /fs/chmod {"path","workingDir","mode","recursive","asRoot"}`.
async fn chmod(body: Bytes) -> Response {
    let run = async {
        let v = body_json(&body)?;
        let path = resolve(field(&v, "path").unwrap_or(""), field(&v, "workingDir"))?;
        let mode = parse_mode(field(&v, "mode").unwrap_or(""), &path.display().to_string())?;
        let recursive = v["recursive"].as_bool().unwrap_or(false);
        let affected = as_user(v["asRoot"].as_bool().unwrap_or(false), move || {
            let mut out = Vec::new();
            walk(&path, recursive, &mut |p| {
                std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
                    .map_err(|e| FsError::io(&e, p))?;
                out.push(json!({ "path": p.display().to_string(), "mode": mode_str(mode) }));
                Ok(())
            })
            .map(|_| out)
        })
        .await?;
        let count = affected.len();
        Ok::<_, FsError>(Json(json!({ "affected": affected, "count": count })).into_response())
    };
    run.await.unwrap_or_else(|e| e.into_response())
}

/// A uid or gid given as a number or a name (looked up in /etc/passwd or /etc/group).
fn id_of(v: &Value, file: &str) -> FsResult<Option<u32>> {
    match v {
        Value::Null => Ok(None),
        Value::Number(n) => n
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| FsError::invalid("invalid id", "")),
        Value::String(s) => {
            if let Ok(n) = s.parse() {
                return Ok(Some(n));
            }
            let text = std::fs::read_to_string(file).unwrap_or_default();
            text.lines()
                .map(|l| l.split(':').collect::<Vec<_>>())
                .find(|f| f.len() > 2 && f[0] == s)
                .and_then(|f| f[2].parse().ok())
                .map(Some)
                .ok_or_else(|| FsError::invalid(format!("unknown name {s:?}"), ""))
        }
        _ => Err(FsError::invalid("uid and gid are numbers or names", "")),
    }
}

/// `POST /fs/chown {"path","workingDir","uid","gid","recursive","asRoot"}`.
async fn chown(body: Bytes) -> Response {
    let run = async {
        let v = body_json(&body)?;
        let path = resolve(field(&v, "path").unwrap_or(""), field(&v, "workingDir"))?;
        let uid = id_of(&v["uid"], "/etc/passwd")?;
        let gid = id_of(&v["gid"], "/etc/group")?;
        let recursive = v["recursive"].as_bool().unwrap_or(false);
        let affected = as_user(v["asRoot"].as_bool().unwrap_or(false), move || {
            let mut out = Vec::new();
            walk(&path, recursive, &mut |p| {
                std::os::unix::fs::lchown(p, uid, gid).map_err(|e| FsError::io(&e, p))?;
                let m = std::fs::symlink_metadata(p).map_err(|e| FsError::io(&e, p))?;
                out.push(
                    json!({ "path": p.display().to_string(), "uid": m.uid(), "gid": m.gid() }),
                );
                Ok(())
            })
            .map(|_| out)
        })
        .await?;
        let count = affected.len();
        Ok::<_, FsError>(Json(json!({ "affected": affected, "count": count })).into_response())
    };
    run.await.unwrap_or_else(|e| e.into_response())
}

/// The first frame of a `/fs/watch` client.
#[derive(serde::Deserialize)]
struct Subscribe {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    paths: Vec<String>,
    #[serde(default)]
    recursive: bool,
    #[serde(rename = "workingDir")]
    working_dir: Option<String>,
}

fn error_frame(message: impl Into<String>, path: Option<&Path>) -> Value {
    let mut v = json!({ "type": "error", "message": message.into() });
    if let Some(p) = path {
        v["path"] = json!(p.display().to_string());
    }
    v
}

/// `GET /fs/watch` (WebSocket): the client subscribes with its first text frame, then gets
/// one `event` frame per change until it closes the socket.
async fn watch(ws: WebSocketUpgrade) -> Response {
    ws.on_upgrade(watch_client)
}

async fn send_json(socket: &mut WebSocket, v: &Value) -> bool {
    socket
        .send(Message::Text(v.to_string().into()))
        .await
        .is_ok()
}

async fn watch_client(mut socket: WebSocket) {
    let first = loop {
        match socket.recv().await {
            Some(Ok(Message::Text(t))) => break serde_json::from_str::<Subscribe>(&t),
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
            Some(Ok(_)) => continue,
        }
    };
    let sub = match first {
        Ok(s) if s.kind == "subscribe" && !s.paths.is_empty() => s,
        Ok(_) => {
            let msg = "the first frame must be {\"type\":\"subscribe\",\"paths\":[...]}";
            send_json(&mut socket, &error_frame(msg, None)).await;
            let _ = socket.send(Message::Close(None)).await;
            return;
        }
        Err(e) => {
            let msg = format!("invalid subscribe frame: {e}");
            send_json(&mut socket, &error_frame(msg, None)).await;
            let _ = socket.send(Message::Close(None)).await;
            return;
        }
    };
    let mut roots = Vec::new();
    for p in &sub.paths {
        match resolve(p, sub.working_dir.as_deref()) {
            Ok(path) => roots.push(path),
            Err(e) => {
                if !send_json(&mut socket, &error_frame(e.message, None)).await {
                    return;
                }
            }
        }
    }
    let (stop_rx, stop_tx) = match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
        Ok(p) => p,
        Err(e) => {
            send_json(&mut socket, &error_frame(format!("watch: {e}"), None)).await;
            return;
        }
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Value>(256);
    let recursive = sub.recursive;
    // Watches are added as the sprite user, so inotify's own read-permission check applies.
    spawn_as_user(false, move || Watcher::run(roots, recursive, stop_rx, tx));
    loop {
        tokio::select! {
            v = rx.recv() => match v {
                Some(v) => if !send_json(&mut socket, &v).await { break },
                // Nothing could be watched: the error frames went out, the socket ends.
                None => {
                    let _ = socket.send(Message::Close(None)).await;
                    break;
                }
            },
            m = socket.recv() => match m {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
        }
    }
    // Closing our end of the pipe wakes the watcher thread, which then closes its inotify fd.
    drop(stop_tx);
}

/// What one inotify watch stands for.
struct Watched {
    dir: PathBuf,
    /// For a watched file: the names in `dir` that were asked for (files are watched through
    /// their directory so that replacing them, as `/fs/write` does, is seen). `None`: all.
    only: Option<BTreeSet<OsString>>,
    /// A subscribed path itself (its own removal is reported).
    root: bool,
}

/// One subscription's inotify instance, on its own thread under the sprite user's credentials.
struct Watcher {
    ino: nix::sys::inotify::Inotify,
    watches: HashMap<nix::sys::inotify::WatchDescriptor, Watched>,
    recursive: bool,
    tx: tokio::sync::mpsc::Sender<Value>,
    /// Cookies of renames away from a write's temporary file: their arrival is the write.
    temp_moves: HashSet<u32>,
}

fn watch_mask() -> nix::sys::inotify::AddWatchFlags {
    use nix::sys::inotify::AddWatchFlags as F;
    F::IN_CREATE
        | F::IN_MODIFY
        | F::IN_ATTRIB
        | F::IN_DELETE
        | F::IN_DELETE_SELF
        | F::IN_MOVED_FROM
        | F::IN_MOVED_TO
        | F::IN_MOVE_SELF
}

impl Watcher {
    fn run(
        roots: Vec<PathBuf>,
        recursive: bool,
        stop: OwnedFd,
        tx: tokio::sync::mpsc::Sender<Value>,
    ) {
        use nix::sys::inotify::{InitFlags, Inotify};
        let ino = match Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC) {
            Ok(i) => i,
            Err(e) => {
                let _ = tx.blocking_send(error_frame(format!("inotify: {e}"), None));
                return;
            }
        };
        let mut w = Watcher {
            ino,
            watches: HashMap::new(),
            recursive,
            tx,
            temp_moves: HashSet::new(),
        };
        let mut subscribed = Vec::new();
        for root in roots {
            match w.add_root(&root) {
                Ok(()) => subscribed.push(root.display().to_string()),
                Err(e) => {
                    let frame = error_frame(format!("{}: {e}", root.display()), Some(&root));
                    if w.tx.blocking_send(frame).is_err() {
                        return;
                    }
                }
            }
        }
        if subscribed.is_empty() {
            return;
        }
        let frame = json!({ "type": "subscribed", "paths": subscribed });
        if w.tx.blocking_send(frame).is_err() {
            return;
        }
        w.serve(stop);
    }

    /// Watches a subscribed path: a directory (and with `recursive` all below it), or a file.
    fn add_root(&mut self, root: &Path) -> std::io::Result<()> {
        let meta = std::fs::metadata(root)?;
        if meta.is_dir() {
            self.add_dir(root, true)?;
            if self.recursive {
                self.add_below(root, false);
            }
            return Ok(());
        }
        // Readable to the sprite user, like any watched path.
        std::fs::File::open(root)?;
        let (Some(dir), Some(name)) = (root.parent(), root.file_name()) else {
            return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
        };
        let wd = self
            .ino
            .add_watch(dir, watch_mask())
            .map_err(std::io::Error::from)?;
        let w = self.watches.entry(wd).or_insert_with(|| Watched {
            dir: dir.to_path_buf(),
            only: Some(BTreeSet::new()),
            root: false,
        });
        if let Some(only) = &mut w.only {
            only.insert(name.to_os_string());
        }
        Ok(())
    }

    fn add_dir(&mut self, dir: &Path, root: bool) -> std::io::Result<()> {
        let wd = self
            .ino
            .add_watch(
                dir,
                watch_mask() | nix::sys::inotify::AddWatchFlags::IN_ONLYDIR,
            )
            .map_err(std::io::Error::from)?;
        let w = self.watches.entry(wd).or_insert_with(|| Watched {
            dir: dir.to_path_buf(),
            only: None,
            root,
        });
        w.only = None;
        w.root |= root;
        Ok(())
    }

    /// Watches every directory below `dir` (not following symlinks). With `announce`, what is
    /// found is reported as created: it appeared before its directory's watch was in place.
    fn add_below(&mut self, dir: &Path, announce: bool) -> bool {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return true;
        };
        for e in rd.flatten() {
            let path = e.path();
            let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
            if announce && !self.emit(&path, "create", is_dir) {
                return false;
            }
            // Unreadable subdirectories are skipped, like `find` would.
            if is_dir && self.add_dir(&path, false).is_ok() && !self.add_below(&path, announce) {
                return false;
            }
        }
        true
    }

    /// Sends one event frame; false once the client is gone.
    fn emit(&self, path: &Path, event: &str, is_dir: bool) -> bool {
        let meta = std::fs::symlink_metadata(path).ok();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        let frame = json!({
            "type": "event",
            "path": path.display().to_string(),
            "event": event,
            "timestamp": sprites_api::timefmt::format_millis(now),
            "size": meta.as_ref().map(|m| m.len()).unwrap_or(0),
            "isDir": is_dir || meta.is_some_and(|m| m.is_dir()),
        });
        self.tx.blocking_send(frame).is_ok()
    }

    /// Reads events until `stop` hangs up (the socket closed) or the client is gone.
    fn serve(mut self, stop: OwnedFd) {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        loop {
            let (stopped, readable) = {
                let mut fds = [
                    PollFd::new(stop.as_fd(), PollFlags::POLLIN),
                    PollFd::new(self.ino.as_fd(), PollFlags::POLLIN),
                ];
                match poll(&mut fds, PollTimeout::NONE) {
                    Ok(_) => {}
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(_) => return,
                }
                let ready = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
                (ready(&fds[0]), ready(&fds[1]))
            };
            if stopped {
                return;
            }
            if !readable {
                continue;
            }
            let events = match self.ino.read_events() {
                Ok(ev) => ev,
                Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => continue,
                Err(_) => return,
            };
            if !self.handle(events) {
                return;
            }
        }
    }

    /// Turns one batch of inotify events into frames; false once the client is gone.
    fn handle(&mut self, events: Vec<nix::sys::inotify::InotifyEvent>) -> bool {
        use nix::sys::inotify::AddWatchFlags as F;
        // A large write is many IN_MODIFYs in a row: one frame per batch is enough.
        let mut last_write: Option<PathBuf> = None;
        for ev in events {
            if ev.mask.contains(F::IN_Q_OVERFLOW) {
                let msg = "too many changes at once: some events were lost";
                if self.tx.blocking_send(error_frame(msg, None)).is_err() {
                    return false;
                }
                continue;
            }
            if ev.mask.contains(F::IN_IGNORED) {
                self.watches.remove(&ev.wd);
                continue;
            }
            let Some(w) = self.watches.get(&ev.wd) else {
                continue;
            };
            let is_dir = ev.mask.contains(F::IN_ISDIR);
            let root = w.root;
            let path = match &ev.name {
                Some(name) => {
                    // Before the name filter: a watched file's temp file is not one of the
                    // watched names, but its rename is what completes a write of one.
                    if is_write_temp(name) {
                        if ev.mask.contains(F::IN_MOVED_FROM) {
                            if self.temp_moves.len() > 64 {
                                self.temp_moves.clear();
                            }
                            self.temp_moves.insert(ev.cookie);
                        }
                        continue;
                    }
                    if w.only.as_ref().is_some_and(|only| !only.contains(name)) {
                        continue;
                    }
                    w.dir.join(name)
                }
                None => w.dir.clone(),
            };
            if ev.mask.contains(F::IN_MODIFY) && last_write.as_ref() == Some(&path) {
                continue;
            }
            let sent = if ev.mask.contains(F::IN_CREATE) {
                let ok = self.emit(&path, "create", is_dir);
                if ok && is_dir && self.recursive && self.add_dir(&path, false).is_ok() {
                    // Whatever was made inside before the watch existed is reported now.
                    self.add_below(&path, true)
                } else {
                    ok
                }
            } else if ev.mask.contains(F::IN_MOVED_TO) {
                // The rename that completes a `/fs/write`: the target was created and written.
                if self.temp_moves.remove(&ev.cookie) {
                    self.emit(&path, "create", false) && self.emit(&path, "write", false)
                } else {
                    if is_dir && self.recursive && self.add_dir(&path, false).is_ok() {
                        self.add_below(&path, false);
                    }
                    self.emit(&path, "create", is_dir)
                }
            } else if ev.mask.contains(F::IN_MODIFY) {
                last_write = Some(path.clone());
                self.emit(&path, "write", is_dir)
            } else if ev.mask.contains(F::IN_ATTRIB) {
                self.emit(&path, "chmod", is_dir)
            } else if ev.mask.contains(F::IN_DELETE) {
                self.emit(&path, "remove", is_dir)
            } else if ev.mask.contains(F::IN_MOVED_FROM) {
                self.emit(&path, "rename", is_dir)
            } else if ev.mask.contains(F::IN_DELETE_SELF) {
                // Directories below a root are reported by their parent's watch already.
                !root || self.emit(&path, "remove", true)
            } else if ev.mask.contains(F::IN_MOVE_SELF) {
                !root || self.emit(&path, "rename", true)
            } else {
                true
            };
            if !sent {
                return false;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::is_write_temp;
    use std::ffi::OsStr;

    #[test]
    fn write_temp_names() {
        assert!(is_write_temp(OsStr::new(".a.txt.sprite-write-42")));
        assert!(!is_write_temp(OsStr::new("a.txt.sprite-write-42")));
        assert!(!is_write_temp(OsStr::new(".a.txt.sprite-write-")));
        assert!(!is_write_temp(OsStr::new(".sprite-write-notes")));
    }
}
