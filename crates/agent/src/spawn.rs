//! Starting a process into a new session: pipes (non-TTY) or a PTY (TTY), output pumped into
//! the session's ring, input from the session's channel, exit recorded.

use std::os::fd::{AsRawFd, OwnedFd};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sprites_api::exec::{self as frames, ExecRequest, STREAM_STDERR, STREAM_STDOUT};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::exec::{command, spawn_failure};
use crate::session::{Input, Registry, Session, OUT};

/// How long to keep reading output after the process exited (background children may hold
/// the pipes open forever).
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(200);
/// Non-TTY default of `max_run_after_disconnect`.
const NON_TTY_MAX_RUN: Duration = Duration::from_secs(10);

/// Starts `req` as a new session with one reader already attached at offset 0 (so nothing
/// the process writes before its client is ready can be lost); returns the reader's id.
/// A command that cannot start still makes a session, which holds the error on stderr and the
/// exit code the docs give (127 not found, 126 not executable).
pub fn start(reg: &Arc<Registry>, req: &ExecRequest) -> (Arc<Session>, u64) {
    let n = reg.next_id();
    let argv = req.argv();
    let workdir = req
        .dir
        .clone()
        .unwrap_or_else(|| sprites_api::exec::DEFAULT_DIR.into());
    let size = (req.cols.unwrap_or(80), req.rows.unwrap_or(24));
    // 0 means forever; TTY sessions default to forever, the rest to 10 s.
    let max_run = match req.max_run_after_disconnect {
        Some(d) if d.is_zero() => None,
        Some(d) => Some(d),
        None if req.tty => None,
        None => Some(NON_TTY_MAX_RUN),
    };
    let (input_tx, input_rx) = mpsc::channel::<Input>(32);
    let mut cmd = command(req);
    let result = if req.tty {
        spawn_tty(&mut cmd, size)
    } else {
        spawn_pipes(&mut cmd, req.stdin)
    };
    let command_line = argv.join(" ");
    match result {
        Ok((child, io)) => {
            let pgid = child.id().map(|p| p as i32).unwrap_or(0);
            let pty = match &io {
                Io::Pty(master) => master.get_ref().try_clone().ok().map(Arc::new),
                Io::Pipes => None,
            };
            let s = Arc::new(Session::new(
                n.to_string(),
                command_line,
                workdir,
                req.tty,
                pgid,
                size,
                max_run,
                pty,
                input_tx,
            ));
            reg.insert(n, s.clone());
            let reader = s.attach(0);
            tokio::spawn(run(s.clone(), child, io, input_rx));
            (s, reader)
        }
        Err(e) => {
            let (code, msg) = spawn_failure(req, &e);
            let s = Arc::new(Session::new(
                n.to_string(),
                command_line,
                workdir,
                req.tty,
                0,
                size,
                max_run,
                None,
                input_tx,
            ));
            let reader = s.attach(0);
            s.push(if req.tty { OUT } else { STREAM_STDERR }, Bytes::from(msg));
            s.finish(code);
            reg.insert(n, s.clone());
            (s, reader)
        }
    }
}

enum Io {
    Pipes,
    Pty(Arc<AsyncFd<OwnedFd>>),
}

fn spawn_pipes(
    cmd: &mut tokio::process::Command,
    stdin: bool,
) -> std::io::Result<(tokio::process::Child, Io)> {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.stdin(if stdin { Stdio::piped() } else { Stdio::null() });
    Ok((cmd.spawn()?, Io::Pipes))
}

fn spawn_tty(
    cmd: &mut tokio::process::Command,
    (cols, rows): (u16, u16),
) -> std::io::Result<(tokio::process::Child, Io)> {
    let ws = nix::pty::Winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = nix::pty::openpty(Some(&ws), None).map_err(std::io::Error::from)?;
    let slave = pty.slave;
    cmd.stdin(Stdio::from(slave.try_clone()?))
        .stdout(Stdio::from(slave.try_clone()?))
        .stderr(Stdio::from(slave));
    let child = cmd.spawn()?;
    let master = pty.master;
    // SAFETY: fcntl on an fd we own.
    unsafe {
        let fl = libc::fcntl(master.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(master.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK);
    }
    // SAFETY: `master` is an open fd owned by the AsyncFd for its whole life.
    let afd = unsafe { AsyncFd::register(master) }.map_err(|e| e.into_parts().1)?;
    Ok((child, Io::Pty(Arc::new(afd))))
}

async fn run(
    s: Arc<Session>,
    mut child: tokio::process::Child,
    io: Io,
    mut input: mpsc::Receiver<Input>,
) {
    let mut readers = Vec::new();
    match &io {
        Io::Pipes => {
            if let Some(out) = child.stdout.take() {
                readers.push(tokio::spawn(pump(out, STREAM_STDOUT, s.clone())));
            }
            if let Some(err) = child.stderr.take() {
                readers.push(tokio::spawn(pump(err, STREAM_STDERR, s.clone())));
            }
            let mut stdin = child.stdin.take();
            tokio::spawn(async move {
                while let Some(msg) = input.recv().await {
                    match (msg, stdin.as_mut()) {
                        (Input::Data(d), Some(w)) => {
                            if w.write_all(&d).await.is_err() {
                                stdin = None;
                            }
                        }
                        (Input::Eof, _) => stdin = None,
                        (Input::Data(_), None) => {}
                    }
                }
            });
        }
        Io::Pty(master) => {
            readers.push(tokio::spawn(pump_pty(master.clone(), s.clone())));
            let master = master.clone();
            tokio::spawn(async move {
                while let Some(msg) = input.recv().await {
                    if let Input::Data(d) = msg {
                        if write_pty(&master, &d).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    }
    let status = child.wait().await;
    // Read what is left in the pipes. A background child may hold them open forever, so stop
    // once they have been quiet for a while; but never while a slow client holds the output
    // back, or output would be lost.
    let mut last_end = s.end_offset();
    let mut quiet_since = tokio::time::Instant::now();
    {
        let mut all = futures::future::join_all(readers.iter_mut());
        loop {
            tokio::select! {
                _ = &mut all => break,
                _ = tokio::time::sleep(Duration::from_millis(20)) => {
                    let end = s.end_offset();
                    if end != last_end || !s.has_room() {
                        last_end = end;
                        quiet_since = tokio::time::Instant::now();
                    } else if quiet_since.elapsed() >= DRAIN_AFTER_EXIT {
                        break;
                    }
                }
            }
        }
    }
    for task in readers {
        task.abort();
    }
    let code = match status {
        Ok(st) => {
            use std::os::unix::process::ExitStatusExt;
            frames::exit_byte(st.code(), st.signal())
        }
        Err(_) => 255,
    };
    s.finish(code);
}

async fn pump<R: tokio::io::AsyncRead + Unpin>(mut r: R, stream: u8, s: Arc<Session>) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        s.wait_room().await;
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => s.push(stream, Bytes::copy_from_slice(&buf[..n])),
        }
    }
}

async fn pump_pty(master: Arc<AsyncFd<OwnedFd>>, s: Arc<Session>) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let Ok(mut guard) = master.readable().await else {
            return;
        };
        let r = guard.try_io(|fd| {
            // SAFETY: reading into a buffer we own from an fd we own.
            let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(n as usize)
            }
        });
        match r {
            Ok(Ok(0)) => return,
            Ok(Ok(n)) => s.push(OUT, Bytes::copy_from_slice(&buf[..n])),
            // EIO: every slave end is closed, the session is over.
            Ok(Err(_)) => return,
            Err(_would_block) => continue,
        }
    }
}

async fn write_pty(master: &AsyncFd<OwnedFd>, mut data: &[u8]) -> std::io::Result<()> {
    while !data.is_empty() {
        let mut guard = master.writable().await?;
        match guard.try_io(|fd| {
            // SAFETY: writing a buffer we own to an fd we own.
            let n = unsafe { libc::write(fd.as_raw_fd(), data.as_ptr().cast(), data.len()) };
            if n < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(n as usize)
            }
        }) {
            Ok(Ok(n)) => data = &data[n..],
            Ok(Err(e)) => return Err(e),
            Err(_would_block) => continue,
        }
    }
    Ok(())
}
