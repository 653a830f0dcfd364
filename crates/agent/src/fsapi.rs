//! The filesystem API (spec §9): read, write, list/stat, delete, rename, copy, chmod, chown.
//!
//! Every operation runs as the `sprite` user (or root with `asRoot=true`) with real permission
//! checks: it runs on a short-lived thread that switches only its own filesystem credentials
//! (`setfsuid`/`setfsgid`/`setgroups` as raw per-thread syscalls), so other threads of the agent
//! keep theirs. Files are opened under those credentials and then streamed, never buffered whole.

use std::io::Seek;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use axum::body::{Body, Bytes};
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
}

/// An error in the §9 shape.
struct FsError {
    code: &'static str,
    message: String,
    path: String,
}

impl FsError {
    fn io(e: &std::io::Error, path: &Path) -> Self {
        let code = match e.raw_os_error() {
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
            message: e.to_string(),
            path: path.display().to_string(),
        }
    }

    fn invalid(message: impl Into<String>, path: &str) -> Self {
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

type FsResult<T> = Result<T, FsError>;

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
/// `as_root`). The thread ends with `f`, so nothing else ever runs with them.
async fn as_user<T: Send + 'static>(as_root: bool, f: impl FnOnce() -> T + Send + 'static) -> T {
    let groups = sprite_groups();
    let (tx, rx) = tokio::sync::oneshot::channel();
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
        let _ = tx.send(f());
    });
    rx.await.expect("filesystem worker thread")
}

fn q<'a>(q: &'a [(String, String)], k: &str) -> Option<&'a str> {
    q.iter().find(|(qk, _)| qk == k).map(|(_, v)| v.as_str())
}

fn flag(v: Option<&str>) -> bool {
    matches!(v, Some("true" | "1" | ""))
}

/// `path` against `workingDir` (default `/`).
fn resolve(path: &str, working_dir: Option<&str>) -> FsResult<PathBuf> {
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
        let tmp = dir.join(format!(
            ".{}.sprite-write-{}",
            path.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            std::process::id()
        ));
        let (d, t) = (dir.clone(), tmp.clone());
        let file = as_user(as_root, move || -> FsResult<std::fs::File> {
            if mkdirs {
                std::fs::create_dir_all(&d).map_err(|e| FsError::io(&e, &d))?;
            }
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&t)
                .map_err(|e| FsError::io(&e, &t))
        })
        .await?;
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
