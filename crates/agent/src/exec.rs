//! Exec: starting commands as the sprite user and streaming their output as exec frames.

use std::os::unix::process::CommandExt;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use bytes::{BufMut, Bytes, BytesMut};
use futures::StreamExt;
use sprites_agent_protocol::{
    FRAMING_HEADER, FRAMING_LENGTH_PREFIXED, SPRITE_GID, SPRITE_HOME, SPRITE_UID,
};
use sprites_api::exec::{self as frames, ExecRequest, STREAM_EXIT};
use sprites_api::ErrorCode;
use tokio::sync::mpsc;

use crate::session::{Input, Registry, Session};

use crate::server::error;

/// Something the process did.
#[derive(Debug)]
pub enum Event {
    /// Output on stdout (1) or stderr (2).
    Output(u8, Bytes),
    /// The process ended with this exit byte.
    Exit(u8),
}

/// The default environment of commands, before the request's own variables.
pub fn default_env(tty: bool) -> Vec<(String, String)> {
    // The user's own tool directories first (pip --user, cargo install, go install), as a
    // developer's login shell has them, then the system's; Go's toolchain lives in
    // /usr/local/go where the image has one.
    let path = format!(
        "{h}/.local/bin:{h}/.cargo/bin:{h}/go/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/usr/local/go/bin",
        h = SPRITE_HOME
    );
    let mut env: Vec<(String, String)> = [
        ("PATH", path.as_str()),
        ("HOME", SPRITE_HOME),
        ("USER", "sprite"),
        ("LOGNAME", "sprite"),
        ("SHELL", "/bin/bash"),
        ("LANG", "C.UTF-8"),
        // Node.js ignores the system trust store, which holds the CAs the image took from
        // the host (a TLS-inspecting proxy's); npm and the agents' CLIs are Node.js.
        ("NODE_EXTRA_CA_CERTS", "/etc/ssl/certs/ca-certificates.crt"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    if tty {
        env.push(("TERM".into(), "xterm-256color".into()));
    }
    env.extend(sprite_env().iter().map(|(k, v)| (k.clone(), v.clone())));
    env
}

/// The sprite's own environment, given at creation (see `SPRITE_ENV_VAR`).
fn sprite_env() -> &'static std::collections::BTreeMap<String, String> {
    static ENV: std::sync::OnceLock<std::collections::BTreeMap<String, String>> =
        std::sync::OnceLock::new();
    ENV.get_or_init(|| {
        std::env::var(sprites_agent_protocol::SPRITE_ENV_VAR)
            .ok()
            .and_then(|j| serde_json::from_str(&j).ok())
            .unwrap_or_default()
    })
}

/// Supplementary groups of the sprite user, read from `/etc/group` before forking.
fn sprite_groups() -> Vec<nix::unistd::Gid> {
    let text = std::fs::read_to_string("/etc/group").unwrap_or_default();
    let mut gids = vec![nix::unistd::Gid::from_raw(SPRITE_GID)];
    for line in text.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() == 4 && f[3].split(',').any(|m| m == "sprite") {
            if let Ok(g) = f[2].parse() {
                gids.push(nix::unistd::Gid::from_raw(g));
            }
        }
    }
    gids
}

/// Builds the command for a request: the sprite user, its home, its environment, its own
/// session (so signals can reach the whole process group).
pub fn command(req: &ExecRequest) -> tokio::process::Command {
    let tty = req.tty;
    let argv = req.argv();
    let mut cmd = std::process::Command::new(req.program());
    cmd.arg0(&argv[0]).args(&argv[1..]);
    cmd.env_clear();
    for (k, v) in default_env(req.tty) {
        cmd.env(k, v);
    }
    for (k, v) in &req.env {
        cmd.env(k, v);
    }
    let dir = req.dir.as_deref().unwrap_or(SPRITE_HOME);
    cmd.current_dir(dir);
    // Joining the jail's mount namespace moves the working directory to its root; made here,
    // because nothing may allocate between fork and exec.
    let cwd = std::ffi::CString::new(dir).unwrap_or_default();
    let jail = crate::jail::fds();
    let groups = sprite_groups();
    // SAFETY: only async-signal-safe syscalls run between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // First, while still the agent's root: into the programs' namespaces, out of
            // reach of the agent's own (see jail.rs).
            if !jail.is_empty() {
                crate::jail::enter(&jail)?;
                if libc::chdir(cwd.as_ptr()) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            nix::unistd::setsid()?;
            // Undo the agent's OOM protection for user programs (raising is always allowed).
            // Raw libc calls: no allocation between fork and exec.
            let fd = libc::open(
                c"/proc/self/oom_score_adj".as_ptr(),
                libc::O_WRONLY | libc::O_CLOEXEC,
            );
            if fd >= 0 {
                libc::write(fd, b"0".as_ptr().cast(), 1);
                libc::close(fd);
            }
            if tty {
                // Make the PTY (already on fd 0) the controlling terminal of the new session.
                if libc::ioctl(0, libc::TIOCSCTTY, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            nix::unistd::setgroups(&groups)?;
            nix::unistd::setgid(nix::unistd::Gid::from_raw(SPRITE_GID))?;
            nix::unistd::setuid(nix::unistd::Uid::from_raw(SPRITE_UID))?;
            Ok(())
        });
    }
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.kill_on_drop(false);
    cmd
}

/// Exit byte and message for a command that could not start, following the docs' table:
/// 127 not found, 126 cannot execute.
pub fn spawn_failure(req: &ExecRequest, e: &std::io::Error) -> (u8, String) {
    let prog = req.program();
    match e.kind() {
        std::io::ErrorKind::NotFound => {
            if let Some(dir) = &req.dir {
                if !std::path::Path::new(dir).is_dir() {
                    return (
                        1,
                        format!("exec: working directory {dir}: no such directory\n"),
                    );
                }
            }
            (127, format!("exec: {prog}: command not found\n"))
        }
        std::io::ErrorKind::PermissionDenied => (126, format!("exec: {prog}: permission denied\n")),
        _ => (126, format!("exec: {prog}: {e}\n")),
    }
}

/// `POST /exec` (§3.5): non-TTY, stdin from the request body, framed output. The exec is a
/// session like any other; the HTTP client is one attached reader of it.
pub async fn http_exec(
    reg: &Arc<Registry>,
    query: Vec<(String, String)>,
    req: Request,
) -> Response {
    let parsed = match ExecRequest::from_pairs(query.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    {
        Ok(r) => r,
        Err(e) => return error(ErrorCode::BadRequest, e),
    };
    if parsed.tty || parsed.id.is_some() || !parsed.legacy_flags.is_empty() {
        return error(
            ErrorCode::BadRequest,
            "HTTP exec is non-TTY only: tty, id, detachable and cc need the WebSocket endpoint",
        );
    }
    let length_prefixed = req
        .headers()
        .get(FRAMING_HEADER)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case(FRAMING_LENGTH_PREFIXED));
    let (session, reader) = crate::spawn::start(reg, &parsed);
    if parsed.stdin {
        let input = session.input.clone();
        let mut body = req.into_body().into_data_stream();
        tokio::spawn(async move {
            while let Some(Ok(chunk)) = body.next().await {
                if input.send(Input::Data(chunk)).await.is_err() {
                    return;
                }
            }
            let _ = input.send(Input::Eof).await;
        });
    }
    let (events_tx, events_rx) = mpsc::channel::<Event>(16);
    tokio::spawn(feed(session, reader, events_tx));
    let (body_tx, body_rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    // spritesd always asks for length-prefixed frames and makes the official form itself
    // (paced where the client needs it), so that no hop's re-chunking can merge or split a
    // frame; a request without the header (the in-sprite API) gets official frames as they come.
    let frame = if length_prefixed {
        length_prefixed_frame
    } else {
        official_frame
    };
    tokio::spawn(write_unpaced(events_rx, body_tx, frame));
    let body = Body::from_stream(tokio_stream_from(body_rx));
    let mut resp = Response::new(body);
    *resp.status_mut() = StatusCode::OK;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

/// Turns a session's output into events for one reader, from the start of its output.
/// Ends the reader's attachment when the reader goes away.
async fn feed(session: Arc<Session>, reader: u64, tx: mpsc::Sender<Event>) {
    let mut changes = session.watch();
    let mut cursor = session.start_offset();
    loop {
        let (chunks, next, exit) = session.read_from(cursor);
        for c in chunks {
            if tx.send(Event::Output(c.stream, c.data)).await.is_err() {
                session.detach(reader);
                return;
            }
        }
        cursor = next;
        session.advance(reader, cursor);
        if let Some(code) = exit {
            if session.read_from(cursor).0.is_empty() {
                let _ = tx.send(Event::Exit(code)).await;
                session.detach(reader);
                return;
            }
            continue;
        }
        tokio::select! {
            r = changes.changed() => if r.is_err() { session.detach(reader); return },
            _ = tx.closed() => { session.detach(reader); return }
        }
    }
}

pub fn tokio_stream_from<T: Send + 'static>(
    mut rx: mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send + 'static {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// `[stream u8][len u32 BE][data]`.
fn length_prefixed_frame(stream: u8, data: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(data.len() + 5);
    b.put_u8(stream);
    b.put_u32(u32::try_from(data.len()).unwrap_or(u32::MAX));
    b.put_slice(data);
    b.freeze()
}

/// `[stream u8][data]`, the official form.
fn official_frame(stream: u8, data: &[u8]) -> Bytes {
    Bytes::from(frames::encode(stream, data))
}

/// Frames written as soon as their output exists, one HTTP chunk each.
async fn write_unpaced(
    mut rx: mpsc::Receiver<Event>,
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
    frame: fn(u8, &[u8]) -> Bytes,
) {
    while let Some(ev) = rx.recv().await {
        let (stream, data) = match &ev {
            Event::Output(s, d) => (*s, d.clone()),
            Event::Exit(c) => (STREAM_EXIT, Bytes::copy_from_slice(&[*c])),
        };
        if tx.send(Ok(frame(stream, &data))).await.is_err() {
            drain(rx).await;
            return;
        }
        if matches!(ev, Event::Exit(_)) {
            return;
        }
    }
}

async fn drain(mut rx: mpsc::Receiver<Event>) {
    rx.close();
    while rx.recv().await.is_some() {}
}
