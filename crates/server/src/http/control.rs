//! `GET /v1/sprites/{name}/control` (spec §4): the multiplexed control connection, one op at
//! a time per WebSocket, in every dialect the official SDKs speak.
//!
//! spritesd ends the client's WebSocket itself, not the agent: between ops the socket is idle
//! here and holds nothing, so a pooled socket never keeps a sprite awake (the SDKs keep up to
//! 100 of them open). Each op wakes the sprite and holds it only while it runs:
//! - `exec`: a WebSocket to the agent's own `/exec` (§3.1), its messages relayed both ways
//!   (bounded in size: the agent is the sprite's), then `op.complete` with the exit code.
//! - `proxy`: the TCP proxy's target (§5), relayed as binary messages.
//! - `fs.*` (Go's `Fs*Control`): the agent's HTTP filesystem API, its answer as JSON.
//!
//! Replies use the dialect of the op's request: `control:`-prefixed for `op.start`, bare JSON
//! for Go's unprefixed envelopes.

use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Path, Request, State};
use axum::http::header;
use axum::response::Response;
use axum::Extension;
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use sprites_agent_protocol::proxy_target;
use sprites_api::exec::{ControlMessage, STREAM_EXIT, STREAM_STDIN, STREAM_STDIN_EOF};
use sprites_api::ErrorCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message as AgentMessage;
use tokio_tungstenite::WebSocketStream;

use super::AppState;
use crate::error::ApiError;
use crate::store::Org;

/// The envelope prefix of control messages (§4.2).
const PREFIX: &str = "control:";
/// Largest message taken from a client or from the agent.
const MESSAGE_MAX: usize = 16 << 20;
/// Largest file an `fs.read` op returns (one binary message).
const FS_READ_MAX: usize = 64 << 20;
/// Largest `fs.*` answer other than a read's bytes.
const FS_ANSWER_MAX: usize = 4 << 20;
/// Ping interval of an idle socket, so proxies and NATs keep it.
const IDLE_PING: Duration = Duration::from_secs(30);
/// How long an `fs.write` op waits for its data message.
const FS_DATA_TIMEOUT: Duration = Duration::from_secs(60);
/// Relay buffer of a proxy op.
const PROXY_BUF: usize = 256 << 10;

pub async fn control(
    State(s): State<AppState>,
    Extension(org): Extension<Org>,
    Path(name): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    // A missing sprite is a plain 404 (the SDKs then fall back); an existing one is not woken
    // until an op needs it.
    s.find(&org, &name).await?;
    let (mut parts, _) = req.into_parts();
    let ws = WebSocketUpgrade::from_request_parts(&mut parts, &())
        .await
        .map_err(|e| ApiError::new(ErrorCode::BadRequest, format!("WebSocket upgrade: {e}")))?;
    let go = parts
        .headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ua| ua.starts_with("sprites-go-sdk"));
    // `?op=exec&cmd=...`: an op started on connect.
    let auto = parts.uri.query().and_then(|q| {
        let pairs: Vec<(String, String)> = url::form_urlencoded::parse(q.as_bytes())
            .into_owned()
            .collect();
        let op = pairs.iter().find(|(k, _)| k == "op")?.1.clone();
        let args = pairs.into_iter().filter(|(k, _)| k != "op").collect();
        Some(Start {
            op,
            args: Args(args),
            bare: false,
        })
    });
    let conn = Conn { s, org, name, go };
    Ok(ws
        .max_message_size(MESSAGE_MAX)
        .on_upgrade(move |socket| conn.serve(socket, auto)))
}

/// One client's control socket.
struct Conn {
    s: AppState,
    org: Org,
    name: String,
    /// The Go SDK sends stdin as raw binary frames (no stream byte).
    go: bool,
}

/// An op's arguments: a JSON object (`control:` dialect) or a URL-encoded string (Go's fs
/// dialect; also the query of an op started on connect).
struct Args(Vec<(String, String)>);

impl Args {
    fn from_json(v: &Value) -> Self {
        let mut pairs = Vec::new();
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    match v {
                        Value::Array(items) => {
                            pairs.extend(items.iter().filter_map(scalar).map(|s| (k.clone(), s)))
                        }
                        other => pairs.extend(scalar(other).map(|s| (k.clone(), s))),
                    }
                }
            }
            Value::String(q) => {
                pairs = url::form_urlencoded::parse(q.as_bytes())
                    .into_owned()
                    .collect()
            }
            _ => {}
        }
        Args(pairs)
    }

    fn pairs(&self) -> &[(String, String)] {
        &self.0
    }

    fn get(&self, k: &str) -> Option<&str> {
        self.pairs()
            .iter()
            .find(|(pk, _)| pk == k)
            .map(|(_, v)| v.as_str())
    }

    fn flag(&self, k: &str) -> bool {
        matches!(self.get(k), Some("true" | "1"))
    }
}

/// A JSON scalar as the string an SDK would have put in a query (old servers ignored the
/// rest; we are lenient with bools and numbers).
fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A request to start an op.
struct Start {
    op: String,
    args: Args,
    /// Asked in Go's unprefixed dialect: answered unprefixed.
    bare: bool,
}

/// What a client message means outside an op's own protocol.
enum Envelope {
    Start(Start),
    Release,
    /// Some other envelope (`keepalive`, unknown types): ignored.
    Other,
}

/// Parses a text message as an envelope; `None` when it belongs to the running op.
fn envelope(text: &str) -> Option<Envelope> {
    let (json, bare) = match text.strip_prefix(PREFIX) {
        Some(rest) => (rest, false),
        None => (text, true),
    };
    let v: Value = serde_json::from_str(json).ok()?;
    let ty = v.get("type")?.as_str()?;
    Some(match ty {
        "op.start" => Envelope::Start(Start {
            op: v
                .get("op")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            args: Args::from_json(v.get("args").unwrap_or(&Value::Null)),
            bare,
        }),
        // Go's pooled proxy: `{"type":"start","operation":"proxy","params":{..}}`.
        "start" if bare => Envelope::Start(Start {
            op: v
                .get("operation")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            args: Args::from_json(v.get("params").unwrap_or(&Value::Null)),
            bare,
        }),
        "release" => Envelope::Release,
        // Resize, signal and the like are an op's own messages.
        "resize" | "signal" | "stdin_eof" | "exit" if bare => return None,
        _ => Envelope::Other,
    })
}

/// How an op ended.
enum Outcome {
    /// Finished; the socket is idle again.
    Done,
    /// The client closed or the socket broke.
    Closed,
}

fn text(s: String) -> Message {
    Message::Text(s.into())
}

/// A reply in the dialect of the op's request.
fn reply(bare: bool, v: Value) -> Message {
    if bare {
        text(v.to_string())
    } else {
        text(format!("{PREFIX}{v}"))
    }
}

fn op_error(bare: bool, op: &str, code: &str, msg: &str) -> Message {
    reply(
        bare,
        json!({
            "type": "op.error",
            "op": op,
            "args": {"error": msg, "code": code, "message": msg},
        }),
    )
}

impl Conn {
    async fn serve(self, mut ws: WebSocket, auto: Option<Start>) {
        self.serve_ops(&mut ws, auto).await;
        // Answer the client's close (tungstenite queued the reply) so it sees a clean end.
        let _ = tokio::time::timeout(Duration::from_secs(2), SinkExt::close(&mut ws)).await;
    }

    async fn serve_ops(&self, ws: &mut WebSocket, auto: Option<Start>) {
        if let Some(start) = auto {
            if let Outcome::Closed = self.run(ws, start).await {
                return;
            }
        }
        loop {
            let msg = match tokio::time::timeout(IDLE_PING, ws.recv()).await {
                Err(_) => {
                    if ws.send(Message::Ping(Bytes::new())).await.is_err() {
                        return;
                    }
                    continue;
                }
                Ok(Some(Ok(m))) => m,
                Ok(_) => return,
            };
            let start = match msg {
                Message::Text(t) => match envelope(t.as_str()) {
                    Some(Envelope::Start(s)) => s,
                    // Idle: a release is a no-op, anything else is ignored (§4.3 step 5).
                    _ => continue,
                },
                Message::Close(_) => return,
                _ => continue,
            };
            if let Outcome::Closed = self.run(ws, start).await {
                return;
            }
        }
    }

    async fn run(&self, ws: &mut WebSocket, start: Start) -> Outcome {
        let bare = start.bare;
        let result = match start.op.as_str() {
            "exec" => self.exec(ws, &start).await,
            "proxy" => self.proxy(ws, &start).await,
            op if op.starts_with("fs.") => self.fs(ws, &start).await,
            op => Err(("op.not_found", format!("unknown op {op:?}"))),
        };
        match result {
            Ok(o) => o,
            Err((code, msg)) => {
                if ws
                    .send(op_error(bare, &start.op, code, &msg))
                    .await
                    .is_err()
                {
                    return Outcome::Closed;
                }
                Outcome::Done
            }
        }
    }

    /// `exec`: the agent's WebSocket exec, relayed message by message.
    async fn exec(
        &self,
        ws: &mut WebSocket,
        start: &Start,
    ) -> Result<Outcome, (&'static str, String)> {
        let tty = start.args.flag("tty");
        let query = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(start.args.pairs())
            .finish();
        let (stream, _hold) = self
            .s
            .connect(&self.org, &self.name)
            .await
            .map_err(|e| ("op.failed", e.message.clone()))?;
        let req = http::Request::builder()
            .method("GET")
            .uri(format!("/exec?{query}"))
            .header(header::HOST, "sprite")
            .header(header::CONNECTION, "upgrade")
            .header(header::UPGRADE, "websocket")
            .header(header::SEC_WEBSOCKET_VERSION, "13")
            .header(
                header::SEC_WEBSOCKET_KEY,
                tokio_tungstenite::tungstenite::handshake::client::generate_key(),
            )
            .body(http_body_util::Empty::<Bytes>::new())
            .map_err(|e| ("op.failed", e.to_string()))?;
        let mut resp = sprites_runtime::agent::send(stream, req)
            .await
            .map_err(|e| ("op.failed", e.to_string()))?;
        if resp.status() != http::StatusCode::SWITCHING_PROTOCOLS {
            let status = resp.status();
            let msg = sprites_runtime::agent::error_message(resp.into_body(), || {
                format!("the sprite answered {status}")
            })
            .await;
            return Err(("op.failed", msg));
        }
        let up = hyper::upgrade::on(&mut resp)
            .await
            .map_err(|e| ("op.failed", e.to_string()))?;
        let cfg = WebSocketConfig::default()
            .max_message_size(Some(MESSAGE_MAX))
            .max_frame_size(Some(MESSAGE_MAX));
        let mut agent =
            WebSocketStream::from_raw_socket(TokioIo::new(up), Role::Client, Some(cfg)).await;

        let mut exit: Option<u8> = None;
        loop {
            tokio::select! {
                m = agent.next() => {
                    let m = match m {
                        Some(Ok(m)) => m,
                        // The agent closed (after the exit frame) or broke.
                        _ => break,
                    };
                    let out = match m {
                        AgentMessage::Binary(b) => {
                            if !tty && b.len() == 2 && b[0] == STREAM_EXIT {
                                exit = Some(b[1]);
                            }
                            Message::Binary(b)
                        }
                        AgentMessage::Text(t) => {
                            if tty && exit.is_none() {
                                exit = tty_exit(t.as_str());
                            }
                            text(t.as_str().to_string())
                        }
                        AgentMessage::Close(_) => break,
                        _ => continue,
                    };
                    if ws.send(out).await.is_err() {
                        return Ok(Outcome::Closed);
                    }
                }
                m = ws.recv() => {
                    let m = match m {
                        Some(Ok(m)) => m,
                        _ => return Ok(Outcome::Closed),
                    };
                    let to_agent = match m {
                        Message::Text(t) => match envelope(t.as_str()) {
                            Some(Envelope::Release) => {
                                let _ = agent.close(None).await;
                                return Ok(Outcome::Done);
                            }
                            Some(Envelope::Start(s)) => {
                                let busy = op_error(s.bare, &s.op, "op.busy", "an op is already running on this connection");
                                if ws.send(busy).await.is_err() {
                                    return Ok(Outcome::Closed);
                                }
                                continue;
                            }
                            Some(Envelope::Other) if t.as_str().starts_with(PREFIX) => continue,
                            _ => AgentMessage::Text(t.as_str().into()),
                        },
                        Message::Binary(b) => self.stdin_frame(b, tty),
                        Message::Close(_) => return Ok(Outcome::Closed),
                        _ => continue,
                    };
                    if agent.send(to_agent).await.is_err() {
                        break;
                    }
                }
            }
        }
        let code = exit.unwrap_or(0);
        let done = reply(
            start.bare,
            json!({"type": "op.complete", "op": "exec", "args": {"exitCode": code, "ok": exit.is_some()}}),
        );
        if ws.send(done).await.is_err() {
            return Ok(Outcome::Closed);
        }
        Ok(Outcome::Done)
    }

    /// A client's binary message during an exec, for the agent. The JS dialect sends resize
    /// and signal JSON as binary (also in TTY mode, where the agent would type it); Go sends
    /// stdin raw, which the agent would take apart by its first byte.
    fn stdin_frame(&self, b: Bytes, tty: bool) -> AgentMessage {
        if b.first() == Some(&b'{') && ControlMessage::parse(&b).is_some() {
            return AgentMessage::Text(String::from_utf8_lossy(&b).into_owned().into());
        }
        if self.go && !tty && b.as_ref() != [STREAM_STDIN_EOF] {
            let mut v = Vec::with_capacity(b.len() + 1);
            v.push(STREAM_STDIN);
            v.extend_from_slice(&b);
            return AgentMessage::Binary(v.into());
        }
        AgentMessage::Binary(b)
    }

    /// `proxy`: `{"status":"connected"}`, then bytes both ways until a release (socket idle
    /// again) or the target's end (the whole socket closes with 1000: Go's only EOF signal).
    async fn proxy(
        &self,
        ws: &mut WebSocket,
        start: &Start,
    ) -> Result<Outcome, (&'static str, String)> {
        let host = start
            .args
            .get("host")
            .filter(|h| !h.is_empty())
            .unwrap_or("localhost")
            .to_string();
        let port = start
            .args
            .get("port")
            .and_then(|p| p.parse::<u16>().ok())
            .filter(|p| *p > 0)
            .ok_or(("op.failed", "invalid port number".to_string()))?;
        let (spec, _hold) = self
            .s
            .wake(&self.org, &self.name)
            .await
            .map_err(|e| ("op.failed", e.message.clone()))?;
        let target = proxy_target(&host, port);
        let conn = match super::proxy::open(&self.s, &spec, &host, port).await {
            Ok(c) => c,
            Err(e) => {
                let msg = json!({"status": "error", "target": target, "error": e});
                let _ = ws.send(text(msg.to_string())).await;
                return Err(("op.failed", format!("cannot reach {target}: {e}")));
            }
        };
        let connected = json!({"status": "connected", "target": target});
        if ws.send(text(connected.to_string())).await.is_err() {
            return Ok(Outcome::Closed);
        }
        let (mut rd, mut wr) = tokio::io::split(conn);
        let mut buf = vec![0u8; PROXY_BUF];
        loop {
            tokio::select! {
                n = rd.read(&mut buf) => match n {
                    Ok(0) | Err(_) => {
                        let _ = ws.send(Message::Close(Some(CloseFrame { code: 1000, reason: "".into() }))).await;
                        return Ok(Outcome::Closed);
                    }
                    Ok(n) => {
                        if ws.send(Message::Binary(Bytes::copy_from_slice(&buf[..n]))).await.is_err() {
                            return Ok(Outcome::Closed);
                        }
                    }
                },
                m = ws.recv() => match m {
                    Some(Ok(Message::Binary(b))) => {
                        if wr.write_all(&b).await.is_err() {
                            let _ = ws.send(Message::Close(Some(CloseFrame { code: 1000, reason: "".into() }))).await;
                            return Ok(Outcome::Closed);
                        }
                    }
                    Some(Ok(Message::Text(t))) => {
                        if let Some(Envelope::Release) = envelope(t.as_str()) {
                            let _ = wr.shutdown().await;
                            return Ok(Outcome::Done);
                        }
                    }
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return Ok(Outcome::Closed),
                    Some(Ok(_)) => {}
                },
            }
        }
    }

    /// `fs.*` (§4.5): the agent's filesystem API, answered as one JSON message (a read's bytes
    /// follow as one binary message), then `op.complete`.
    async fn fs(
        &self,
        ws: &mut WebSocket,
        start: &Start,
    ) -> Result<Outcome, (&'static str, String)> {
        let op = start.op.strip_prefix("fs.").unwrap_or("");
        let a = &start.args;
        // Go's default working directory, unlike the HTTP API's.
        let working_dir = a.get("workingDir").unwrap_or("/home/sprite");
        let query = |keys: &[&str]| {
            url::form_urlencoded::Serializer::new(String::new())
                .extend_pairs(a.pairs().iter().filter(|(k, _)| keys.contains(&k.as_str())))
                .append_pair("workingDir", working_dir)
                .finish()
        };
        let body_json = |keys: &[&str]| {
            let mut m = serde_json::Map::new();
            m.insert("workingDir".into(), json!(working_dir));
            for (k, v) in a.pairs() {
                if !keys.contains(&k.as_str()) {
                    continue;
                }
                let val = match k.as_str() {
                    "recursive" | "preserveAttrs" | "asRoot" => json!(v == "true" || v == "1"),
                    "uid" | "gid" => v.parse::<u64>().map(|n| json!(n)).unwrap_or(json!(v)),
                    _ => json!(v),
                };
                m.insert(k.clone(), val);
            }
            Value::Object(m).to_string()
        };
        let (method, uri, body): (&str, String, Bytes) = match op {
            "read" => (
                "GET",
                format!("/fs/read?{}", query(&["path", "start", "end"])),
                Bytes::new(),
            ),
            "list" => (
                "GET",
                format!("/fs/list?{}", query(&["path", "recursive", "pattern"])),
                Bytes::new(),
            ),
            "delete" => (
                "DELETE",
                format!("/fs/delete?{}", query(&["path", "recursive", "asRoot"])),
                Bytes::new(),
            ),
            "write" => {
                // The data: the next binary message.
                let data = match tokio::time::timeout(FS_DATA_TIMEOUT, ws.recv()).await {
                    Ok(Some(Ok(Message::Binary(b)))) => b,
                    Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) => {
                        return Ok(Outcome::Closed)
                    }
                    Ok(Some(Ok(_))) => {
                        return Err((
                            "op.failed",
                            "fs.write expects its data as one binary message".into(),
                        ))
                    }
                    Err(_) => return Err(("op.failed", "fs.write: no data within 60 s".into())),
                };
                (
                    "PUT",
                    format!(
                        "/fs/write?{}",
                        query(&[
                            "path",
                            "workingDir",
                            "mode",
                            "mkdirParents",
                            "mkdir",
                            "asRoot"
                        ])
                    ),
                    data,
                )
            }
            "rename" => (
                "POST",
                "/fs/rename".into(),
                body_json(&["source", "dest", "asRoot"]).into(),
            ),
            "copy" => (
                "POST",
                "/fs/copy".into(),
                body_json(&["source", "dest", "recursive", "preserveAttrs", "asRoot"]).into(),
            ),
            "chmod" => (
                "POST",
                "/fs/chmod".into(),
                body_json(&["path", "mode", "recursive", "asRoot"]).into(),
            ),
            "chown" => (
                "POST",
                "/fs/chown".into(),
                body_json(&["path", "uid", "gid", "recursive", "asRoot"]).into(),
            ),
            other => return Err(("op.not_found", format!("unknown op \"fs.{other}\""))),
        };
        let (stream, _hold) = self
            .s
            .connect(&self.org, &self.name)
            .await
            .map_err(|e| ("op.failed", e.message.clone()))?;
        let content_type = if op == "write" {
            "application/octet-stream"
        } else {
            "application/json"
        };
        let req = http::Request::builder()
            .method(method)
            .uri(uri)
            .header(header::HOST, "sprite")
            .header(header::CONTENT_TYPE, content_type)
            .body(http_body_util::Full::new(body))
            .map_err(|e| ("op.failed", e.to_string()))?;
        let resp = sprites_runtime::agent::send(stream, req)
            .await
            .map_err(|e| ("op.failed", e.to_string()))?;
        let ok = resp.status().is_success();
        let limit = if op == "read" && ok {
            FS_READ_MAX
        } else {
            FS_ANSWER_MAX
        };
        let bytes = sprites_runtime::agent::read_bounded(
            resp.into_body(),
            limit,
            sprites_runtime::agent::ANSWER_TIMEOUT,
        )
        .await
        .map_err(|e| ("op.failed", e.to_string()))?;
        let path = a.get("path").unwrap_or("");
        let answer: Value = if op == "read" && ok {
            json!({"path": path, "size": bytes.len()})
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|_| json!({"error": "the sprite's answer is not JSON", "code": "EIO", "path": path}))
        };
        let failed = !ok || answer.get("error").is_some();
        if ws.send(text(answer.to_string())).await.is_err() {
            return Ok(Outcome::Closed);
        }
        if op == "read" && ok && ws.send(Message::Binary(bytes)).await.is_err() {
            return Ok(Outcome::Closed);
        }
        let end = if failed {
            let msg = answer
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("failed");
            op_error(start.bare, &start.op, "op.failed", msg)
        } else {
            reply(start.bare, json!({"type": "op.complete", "op": start.op}))
        };
        if ws.send(end).await.is_err() {
            return Ok(Outcome::Closed);
        }
        Ok(Outcome::Done)
    }
}

/// The exit code of a TTY session's `{"type":"exit","exit_code":N}` message.
fn tty_exit(t: &str) -> Option<u8> {
    let v: Value = serde_json::from_str(t).ok()?;
    if v.get("type")?.as_str()? != "exit" {
        return None;
    }
    let n = v.get("exit_code").or_else(|| v.get("code"))?.as_i64()?;
    Some(n.clamp(0, 255) as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_of_every_dialect() {
        let Some(Envelope::Start(s)) = envelope(
            r#"control:{"type":"op.start","op":"exec","args":{"cmd":["sh","-c","x"],"tty":true,"rows":24,"env":["A=1"]}}"#,
        ) else {
            panic!("prefixed op.start");
        };
        assert_eq!((s.op.as_str(), s.bare), ("exec", false));
        assert_eq!(
            s.args.pairs(),
            [
                ("cmd".to_string(), "sh".to_string()),
                ("cmd".into(), "-c".into()),
                ("cmd".into(), "x".into()),
                ("env".into(), "A=1".into()),
                ("rows".into(), "24".into()),
                ("tty".into(), "true".into()),
            ]
        );
        let Some(Envelope::Start(s)) = envelope(
            r#"{"type":"start","operation":"proxy","params":{"host":"localhost","port":5432,"keep_alive":true}}"#,
        ) else {
            panic!("Go proxy");
        };
        assert_eq!(
            (s.op.as_str(), s.bare, s.args.get("port")),
            ("proxy", true, Some("5432"))
        );
        let Some(Envelope::Start(s)) = envelope(
            r#"{"type":"op.start","op":"fs.read","args":"path=%2Ftmp%2Fx&workingDir=%2Fhome%2Fsprite"}"#,
        ) else {
            panic!("Go fs");
        };
        assert_eq!((s.bare, s.args.get("path")), (true, Some("/tmp/x")));
        assert!(matches!(
            envelope(r#"{"type":"release"}"#),
            Some(Envelope::Release)
        ));
        // An op's own messages and plain data are not envelopes.
        assert!(envelope(r#"{"type":"resize","cols":80,"rows":24}"#).is_none());
        assert!(envelope("ls -l\n").is_none());
        assert!(matches!(
            envelope(r#"control:{"type":"keepalive"}"#),
            Some(Envelope::Other)
        ));
    }

    #[test]
    fn tty_exit_codes() {
        assert_eq!(tty_exit(r#"{"type":"exit","exit_code":3}"#), Some(3));
        assert_eq!(tty_exit(r#"{"type":"exit","exit_code":300}"#), Some(255));
        assert_eq!(tty_exit(r#"{"type":"port_opened","port":1}"#), None);
    }
}
