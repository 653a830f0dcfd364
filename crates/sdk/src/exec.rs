//! Running commands: [`Command::output`] over HTTP (one request), [`Command::spawn`] over a
//! WebSocket with streaming stdin/stdout/stderr, TTY, resize and signals, and sessions
//! (list, attach, kill).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::PollSender;

use crate::client::{sprite_path, SpriteHandle};
use crate::error::{Error, Result};
use crate::frames::{Decoder, Frame};

/// Output of a finished command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// Exit code (128+N for signal N).
    pub code: i32,
    /// Everything written to stdout.
    pub stdout: Vec<u8>,
    /// Everything written to stderr.
    pub stderr: Vec<u8>,
}

impl Output {
    /// Whether the command exited with 0.
    pub fn success(&self) -> bool {
        self.code == 0
    }
}

/// A command to run in a sprite.
#[derive(Debug, Clone)]
pub struct Command {
    sprite: SpriteHandle,
    argv: Vec<String>,
    env: Vec<(String, String)>,
    dir: Option<String>,
    stdin: Option<Vec<u8>>,
    tty: Option<(u16, u16)>,
    max_run_after_disconnect: Option<String>,
}

impl Command {
    /// `program` with no arguments.
    pub fn new(sprite: SpriteHandle, program: &str) -> Self {
        Self {
            sprite,
            argv: vec![program.to_string()],
            env: Vec::new(),
            dir: None,
            stdin: None,
            tty: None,
            max_run_after_disconnect: None,
        }
    }

    /// Adds an argument.
    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.argv.push(a.into());
        self
    }

    /// Adds arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.argv.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets an environment variable.
    pub fn env(mut self, k: impl Into<String>, v: impl Into<String>) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    /// Sets the working directory.
    pub fn current_dir(mut self, dir: impl Into<String>) -> Self {
        self.dir = Some(dir.into());
        self
    }

    /// Bytes to feed on stdin (for [`Command::output`]).
    pub fn stdin_bytes(mut self, data: impl Into<Vec<u8>>) -> Self {
        self.stdin = Some(data.into());
        self
    }

    /// Runs under a PTY of `cols`×`rows` (for [`Command::spawn`]).
    pub fn tty(mut self, cols: u16, rows: u16) -> Self {
        self.tty = Some((cols, rows));
        self
    }

    /// How long the process may outlive its client (`"30s"`, `"0"` = forever).
    pub fn max_run_after_disconnect(mut self, d: impl Into<String>) -> Self {
        self.max_run_after_disconnect = Some(d.into());
        self
    }

    fn query(&self, stdin: bool) -> Vec<(String, String)> {
        let mut q: Vec<(String, String)> = self
            .argv
            .iter()
            .map(|a| ("cmd".to_string(), a.clone()))
            .collect();
        q.push(("path".into(), self.argv[0].clone()));
        for (k, v) in &self.env {
            q.push(("env".into(), format!("{k}={v}")));
        }
        if let Some(d) = &self.dir {
            q.push(("dir".into(), d.clone()));
        }
        if let Some((cols, rows)) = self.tty {
            q.push(("tty".into(), "true".into()));
            q.push(("cols".into(), cols.to_string()));
            q.push(("rows".into(), rows.to_string()));
        }
        if let Some(m) = &self.max_run_after_disconnect {
            q.push(("max_run_after_disconnect".into(), m.clone()));
        }
        q.push(("stdin".into(), stdin.to_string()));
        q
    }

    /// Runs the command to completion and collects its output (one HTTP request).
    pub async fn output(self) -> Result<Output> {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = self
            .run_streaming(|d| out.extend_from_slice(d), |d| err.extend_from_slice(d))
            .await?;
        Ok(Output {
            code,
            stdout: out,
            stderr: err,
        })
    }

    /// Runs the command over HTTP, handing output to the callbacks as it arrives; returns the
    /// exit code.
    pub async fn run_streaming(
        self,
        mut on_stdout: impl FnMut(&[u8]),
        mut on_stderr: impl FnMut(&[u8]),
    ) -> Result<i32> {
        if self.tty.is_some() {
            return Err(Error::InvalidInput(
                "TTY commands need spawn(), not output()".into(),
            ));
        }
        let client = &self.sprite.client;
        let mut req = client
            .request(
                reqwest::Method::POST,
                &sprite_path(&self.sprite.name, "/exec"),
            )
            .query(&self.query(self.stdin.is_some()))
            .header("sprite-exec-framing", "length-prefixed");
        if let Some(input) = &self.stdin {
            req = req
                .header("content-type", "application/octet-stream")
                .body(input.clone());
        }
        let resp = req.send().await.map_err(|e| client.connect_err(e))?;
        let status = resp.status().as_u16();
        if status != 200 {
            let body = resp.bytes().await?;
            return Err(Error::from_body(status, &body));
        }
        let mut body = resp.bytes_stream();
        let mut dec = Decoder::default();
        while let Some(chunk) = body.next().await {
            dec.push(&chunk?);
            while let Some(f) = dec.next_frame().map_err(Error::Protocol)? {
                match f {
                    Frame::Data(1, d) => on_stdout(&d),
                    Frame::Data(_, d) => on_stderr(&d),
                    Frame::Exit(code) => return Ok(i32::from(code)),
                }
            }
        }
        if dec.pending() > 0 {
            return Err(Error::Protocol(format!(
                "stream ended inside a frame ({} bytes left)",
                dec.pending()
            )));
        }
        Err(Error::Protocol(
            "connection closed before the exit status".into(),
        ))
    }

    /// Starts the command over a WebSocket and returns at once with its streams.
    pub async fn spawn(self) -> Result<Child> {
        let q = self.query(true);
        let query: String = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(q)
            .finish();
        let path = format!("{}?{query}", sprite_path(&self.sprite.name, "/exec"));
        Child::connect(&self.sprite, &path).await
    }
}

/// A running (or attached) exec session.
pub struct Child {
    /// Session id, usable with [`SpriteHandle::attach`] and [`SpriteHandle::kill_session`].
    pub session_id: String,
    /// Whether it runs under a PTY.
    pub tty: bool,
    /// The process's stdin (TTY: the terminal's input).
    pub stdin: Option<ChildStdin>,
    /// The process's stdout (TTY: the terminal's output).
    pub stdout: Option<ChildOutput>,
    /// The process's stderr (empty under a TTY).
    pub stderr: Option<ChildOutput>,
    control: mpsc::Sender<Outgoing>,
    exit: Option<oneshot::Receiver<Result<i32>>>,
}

impl std::fmt::Debug for Child {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Child")
            .field("session_id", &self.session_id)
            .field("tty", &self.tty)
            .finish_non_exhaustive()
    }
}

enum Outgoing {
    Stdin(Bytes),
    Eof,
    Text(String),
    Close,
}

impl Child {
    async fn connect(sprite: &SpriteHandle, path: &str) -> Result<Child> {
        let client = &sprite.client;
        let ws_url = format!("{}{path}", client.base.replacen("http", "ws", 1));
        let mut req = ws_url
            .into_client_request()
            .map_err(|e| Error::InvalidInput(e.to_string()))?;
        let auth = format!("Bearer {}", client.token)
            .parse()
            .map_err(|_| Error::InvalidInput("token is not a valid header".into()))?;
        req.headers_mut().insert("authorization", auth);
        let (ws, _) = match tokio_tungstenite::connect_async(req).await {
            Ok(x) => x,
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                let status = resp.status().as_u16();
                let body = resp.body().clone().unwrap_or_default();
                return Err(Error::from_body(status, &body));
            }
            Err(e) => return Err(Error::WebSocket(format!("{e} ({})", client.base))),
        };
        let (mut sink, mut stream) = ws.split();
        // session_info always comes first.
        let info: SessionInfoMsg = loop {
            match stream.next().await {
                Some(Ok(Message::Text(t))) => {
                    if let Ok(i) = serde_json::from_str::<SessionInfoMsg>(&t) {
                        if i.kind == "session_info" {
                            break i;
                        }
                    }
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(Error::WebSocket(e.to_string())),
                None => return Err(Error::Protocol("socket closed before session_info".into())),
            }
        };
        let (out_tx, out_rx) = mpsc::channel::<Bytes>(64);
        let (err_tx, err_rx) = mpsc::channel::<Bytes>(64);
        let (ctl_tx, mut ctl_rx) = mpsc::channel::<Outgoing>(64);
        let (exit_tx, exit_rx) = oneshot::channel::<Result<i32>>();
        let tty = info.tty;
        tokio::spawn(async move {
            let mut exit: Option<i32> = None;
            let mut ctl_open = true;
            let result = loop {
                tokio::select! {
                    msg = stream.next() => match msg {
                        Some(Ok(Message::Binary(b))) => {
                            if tty {
                                let _ = out_tx.send(b).await;
                            } else {
                                match b.first() {
                                    Some(1) => { let _ = out_tx.send(b.slice(1..)).await; }
                                    Some(2) => { let _ = err_tx.send(b.slice(1..)).await; }
                                    Some(3) => exit = b.get(1).map(|c| i32::from(*c)),
                                    _ => {}
                                }
                            }
                        }
                        Some(Ok(Message::Text(t))) => {
                            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&t) {
                                if v["type"] == "exit" {
                                    exit = v["exit_code"].as_i64().map(|c| c as i32);
                                }
                            }
                        }
                        Some(Ok(Message::Close(_))) | None => {
                            break exit.ok_or_else(|| Error::Protocol("connection closed before the exit status".into()));
                        }
                        Some(Ok(_)) => {}
                        Some(Err(e)) => break exit.ok_or_else(|| Error::WebSocket(e.to_string())),
                    },
                    out = ctl_rx.recv(), if ctl_open => match out {
                        Some(Outgoing::Stdin(d)) => {
                            let frame = if tty { d.to_vec() } else { let mut v = vec![0u8]; v.extend_from_slice(&d); v };
                            let _ = sink.send(Message::Binary(frame.into())).await;
                        }
                        Some(Outgoing::Eof) => { if !tty { let _ = sink.send(Message::Binary(vec![4u8].into())).await; } }
                        Some(Outgoing::Text(t)) => { let _ = sink.send(Message::Text(t.into())).await; }
                        Some(Outgoing::Close) => {
                            let _ = sink.close().await;
                            break Err(Error::Protocol("detached".into()));
                        }
                        None => ctl_open = false,
                    }
                }
            };
            drop(out_tx);
            drop(err_tx);
            let _ = exit_tx.send(result);
        });
        Ok(Child {
            session_id: info.session_id,
            tty,
            stdin: Some(ChildStdin {
                tx: PollSender::new(ctl_tx.clone()),
                eof_sent: false,
            }),
            stdout: Some(ChildOutput {
                rx: out_rx,
                pending: Bytes::new(),
            }),
            stderr: Some(ChildOutput {
                rx: err_rx,
                pending: Bytes::new(),
            }),
            control: ctl_tx,
            exit: Some(exit_rx),
        })
    }

    /// Waits for the process to end and returns its exit code (128+N for signal N).
    pub async fn wait(&mut self) -> Result<i32> {
        let rx = self
            .exit
            .take()
            .ok_or_else(|| Error::InvalidInput("wait() already called".into()))?;
        rx.await
            .map_err(|_| Error::Protocol("connection task ended".into()))?
    }

    /// Resizes the terminal.
    pub async fn resize(&self, cols: u16, rows: u16) -> Result<()> {
        self.text(serde_json::json!({"type": "resize", "cols": cols, "rows": rows}).to_string())
            .await
    }

    /// Sends a signal (`"INT"`, `"SIGTERM"`, ...) to the process group.
    pub async fn signal(&self, sig: &str) -> Result<()> {
        self.text(serde_json::json!({"type": "signal", "signal": sig}).to_string())
            .await
    }

    /// Kills the process group with SIGKILL.
    pub async fn kill(&self) -> Result<()> {
        self.signal("KILL").await
    }

    /// Leaves the session running and closes this connection (TTY sessions live on).
    pub async fn detach(self) -> Result<()> {
        self.control
            .send(Outgoing::Close)
            .await
            .map_err(|_| Error::Protocol("connection already closed".into()))
    }

    async fn text(&self, t: String) -> Result<()> {
        self.control
            .send(Outgoing::Text(t))
            .await
            .map_err(|_| Error::Protocol("connection closed".into()))
    }
}

/// Writes to the process's stdin; shutting it down sends EOF.
pub struct ChildStdin {
    tx: PollSender<Outgoing>,
    eof_sent: bool,
}

impl AsyncWrite for ChildStdin {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let me = &mut *self;
        match me.tx.poll_reserve(cx) {
            Poll::Ready(Ok(())) => {
                let n = buf.len().min(64 * 1024);
                me.tx
                    .send_item(Outgoing::Stdin(Bytes::copy_from_slice(&buf[..n])))
                    .map_err(|_| closed())?;
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(_)) => Poll::Ready(Err(closed())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let me = &mut *self;
        if me.eof_sent {
            return Poll::Ready(Ok(()));
        }
        match me.tx.poll_reserve(cx) {
            Poll::Ready(Ok(())) => {
                me.tx.send_item(Outgoing::Eof).map_err(|_| closed())?;
                me.eof_sent = true;
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(_)) => Poll::Ready(Ok(())),
            Poll::Pending => Poll::Pending,
        }
    }
}

fn closed() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::BrokenPipe, "exec connection closed")
}

/// The process's output: an [`AsyncRead`] and a `Stream` of chunks.
pub struct ChildOutput {
    rx: mpsc::Receiver<Bytes>,
    pending: Bytes,
}

impl ChildOutput {
    /// Next chunk of output, or `None` at the end.
    pub async fn next_chunk(&mut self) -> Option<Bytes> {
        if !self.pending.is_empty() {
            return Some(std::mem::take(&mut self.pending));
        }
        self.rx.recv().await
    }
}

impl AsyncRead for ChildOutput {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.pending.is_empty() {
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(b)) => self.pending = b,
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
        let n = self.pending.len().min(buf.remaining());
        buf.put_slice(&self.pending.split_to(n));
        Poll::Ready(Ok(()))
    }
}

impl futures::Stream for ChildOutput {
    type Item = Bytes;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        if !self.pending.is_empty() {
            return Poll::Ready(Some(std::mem::take(&mut self.pending)));
        }
        self.rx.poll_recv(cx)
    }
}

#[derive(Deserialize)]
struct SessionInfoMsg {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    session_id: String,
    #[serde(default)]
    tty: bool,
}

/// One exec session as listed by the server.
#[derive(Debug, Clone, Deserialize)]
pub struct SessionInfo {
    /// Session id.
    #[serde(deserialize_with = "string_or_number")]
    pub id: String,
    /// Command line.
    #[serde(default)]
    pub command: String,
    /// Working directory.
    #[serde(default)]
    pub workdir: String,
    /// Creation time (RFC 3339).
    #[serde(default)]
    pub created: String,
    /// TTY session.
    #[serde(default)]
    pub tty: bool,
    /// Input or output within the last seconds.
    #[serde(default)]
    pub is_active: bool,
    /// Whether the process has ended (our server reports it).
    #[serde(default)]
    pub exited: bool,
}

fn string_or_number<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<String, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    Ok(match v {
        serde_json::Value::String(s) => s,
        other => other.to_string(),
    })
}

/// One NDJSON event of a kill.
#[derive(Debug, Clone, Deserialize)]
pub struct KillEvent {
    /// `signal`, `timeout`, `killed`, `exited`, `complete`, `error`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Readable message.
    #[serde(default)]
    pub message: Option<String>,
    /// Exit code (on `complete`).
    #[serde(default)]
    pub exit_code: Option<i32>,
}

impl SpriteHandle {
    /// Exec sessions of the sprite.
    pub async fn sessions(&self) -> Result<Vec<SessionInfo>> {
        #[derive(Deserialize)]
        struct List {
            sessions: Vec<SessionInfo>,
        }
        let l: List = self
            .client
            .json(
                self.client
                    .request(reqwest::Method::GET, &sprite_path(&self.name, "/exec")),
                &[],
            )
            .await?;
        Ok(l.sessions)
    }

    /// Attaches to a session: its scrollback is replayed, then live output follows.
    pub async fn attach(&self, session_id: &str) -> Result<Child> {
        let id: String = url::form_urlencoded::byte_serialize(session_id.as_bytes()).collect();
        Child::connect(self, &sprite_path(&self.name, &format!("/exec/{id}"))).await
    }

    /// Signals a session's process group, escalating to SIGKILL after `timeout`
    /// (`"10s"`; `"0s"` = do not wait); returns the server's events.
    pub async fn kill_session(
        &self,
        session_id: &str,
        signal: &str,
        timeout: &str,
    ) -> Result<Vec<KillEvent>> {
        let id: String = url::form_urlencoded::byte_serialize(session_id.as_bytes()).collect();
        let req = self
            .client
            .request(
                reqwest::Method::POST,
                &sprite_path(&self.name, &format!("/exec/{id}/kill")),
            )
            .query(&[("signal", signal), ("timeout", timeout)]);
        let body = self.client.send(req, &[200]).await?;
        String::from_utf8_lossy(&body)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l).map_err(|e| Error::Protocol(format!("kill event: {e}")))
            })
            .collect()
    }
}
