//! WebSocket exec and attach (§3.1, §3.2), session list (§3.3) and kill (§3.4).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Path, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use serde_json::json;
use sprites_api::exec::{
    ControlMessage, ExecRequest, KillRequest, STREAM_EXIT, STREAM_STDIN, STREAM_STDIN_EOF,
};
use sprites_api::{ErrorCode, CAPABILITIES_HEADER};
use tokio::sync::mpsc;

use crate::server::error;
use crate::session::{Input, Registry, Session};

/// Silence after which a keepalive text message is sent (the JS client gives up at 45 s).
const KEEPALIVE: Duration = Duration::from_secs(30);
/// Largest binary frame sent to a client.
const WS_FRAME_MAX: usize = 32 * 1024;

fn is_upgrade(req: &Request) -> bool {
    req.headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// `GET /exec`: a WebSocket exec (or legacy `?id=` attach) when upgrading, else the list.
pub async fn get_exec(
    State(reg): State<Arc<Registry>>,
    Query(q): Query<Vec<(String, String)>>,
    req: Request,
) -> Response {
    if !is_upgrade(&req) {
        let sessions: Vec<serde_json::Value> = reg.all().iter().map(|s| s.summary()).collect();
        let count = sessions.len();
        return Json(json!({ "sessions": sessions, "count": count })).into_response();
    }
    let parsed = match ExecRequest::from_pairs(q.iter().map(|(k, v)| (k.as_str(), v.as_str()))) {
        Ok(r) => r,
        Err(e) => return error(ErrorCode::BadRequest, e),
    };
    upgrade(reg, parsed, req).await
}

/// `GET /exec/{id}`: attach.
pub async fn attach(
    State(reg): State<Arc<Registry>>,
    Path(id): Path<String>,
    Query(q): Query<Vec<(String, String)>>,
    req: Request,
) -> Response {
    if !is_upgrade(&req) {
        return scrollback(&reg, &id, &q);
    }
    let mut parsed = match ExecRequest::from_pairs(q.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    {
        Ok(r) => r,
        Err(e) => return error(ErrorCode::BadRequest, e),
    };
    parsed.id = Some(id);
    upgrade(reg, parsed, req).await
}

/// Most bytes of output one scrollback read returns.
const SCROLLBACK_MAX: usize = 256 * 1024;

/// `GET /exec/{id}` without an upgrade: the session's kept output from `offset` (at most
/// [`SCROLLBACK_MAX`] bytes), where the next read starts, and whether it exited.
fn scrollback(reg: &Arc<Registry>, id: &str, q: &[(String, String)]) -> Response {
    let Some(s) = reg.get(id) else {
        return error(ErrorCode::NotFound, format!("session {id:?} not found"));
    };
    let from: u64 = q
        .iter()
        .find(|(k, _)| k == "offset")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let start = s.start_offset();
    let (chunks, _, exit) = s.read_from(from.max(start));
    let mut taken = 0usize;
    let mut next = from.max(start);
    let mut out = Vec::new();
    for c in chunks {
        let room = SCROLLBACK_MAX - taken;
        if room == 0 {
            break;
        }
        let data = &c.data[..c.data.len().min(room)];
        taken += data.len();
        next = c.offset + data.len() as u64;
        out.push(json!({"stream": c.stream, "data": String::from_utf8_lossy(data)}));
    }
    let end = s.end_offset();
    Json(json!({
        "id": id,
        "offset": from.max(start),
        "next_offset": next,
        "end_offset": end,
        "more": next < end,
        "dropped": from < start,
        "exited": exit.is_some(),
        "exit_code": exit,
        "output": out,
    }))
    .into_response()
}

async fn upgrade(reg: Arc<Registry>, parsed: ExecRequest, req: Request) -> Response {
    let (mut parts, _) = req.into_parts();
    let ws = match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
        Ok(w) => w,
        Err(e) => return error(ErrorCode::BadRequest, format!("WebSocket upgrade: {e}")),
    };
    // A new session gets its reader before the process can write; an attach registers one
    // at the requested offset (or the oldest output still kept).
    let (session, reader, owner) = match &parsed.id {
        Some(id) => match reg.get(id) {
            Some(s) => {
                let start = match parsed.output_offset {
                    Some(off) => off.max(s.start_offset()),
                    None => s.start_offset(),
                };
                let r = s.attach(start);
                (s, r, false)
            }
            None => return error(ErrorCode::NotFound, "exec session not found"),
        },
        None => {
            let (s, r) = crate::spawn::start(&reg, &parsed);
            (s, r, true)
        }
    };
    let start = session.reader_cursor(reader);
    let stdin = parsed.stdin || parsed.id.is_some();
    let failed = session.clone();
    let mut resp = ws
        .max_message_size(16 << 20)
        .on_failed_upgrade(move |_| failed.detach(reader))
        .on_upgrade(move |socket| client(socket, session, reader, start, owner, stdin));
    resp.headers_mut()
        .insert(CAPABILITIES_HEADER, HeaderValue::from_static("signal"));
    resp
}

/// Serves one WebSocket client of a session until the process ends or the client leaves.
async fn client(
    socket: WebSocket,
    s: Arc<Session>,
    reader: u64,
    mut cursor: u64,
    owner: bool,
    stdin: bool,
) {
    let (mut tx, mut rx) = socket.split();
    let (cols, rows) = s.size();
    let info = json!({
        "type": "session_info",
        "session_id": s.id,
        "command": s.command,
        "created": s.created_ms / 1000,
        "cols": cols,
        "rows": rows,
        "is_owner": owner,
        "tty": s.tty,
    });
    if tx
        .send(Message::Text(info.to_string().into()))
        .await
        .is_err()
    {
        s.detach(reader);
        return;
    }
    let mut changes = s.watch();
    let mut notices = s.notices();
    let mut last_sent = tokio::time::Instant::now();
    let mut client_gone = false;
    loop {
        let (chunks, next, exit) = s.read_from(cursor);
        for c in chunks {
            for part in c.data.chunks(WS_FRAME_MAX) {
                let frame = if s.tty {
                    Bytes::copy_from_slice(part)
                } else {
                    let mut v = Vec::with_capacity(part.len() + 1);
                    v.push(c.stream);
                    v.extend_from_slice(part);
                    Bytes::from(v)
                };
                if tx.send(Message::Binary(frame)).await.is_err() {
                    client_gone = true;
                    break;
                }
            }
            if client_gone {
                break;
            }
            last_sent = tokio::time::Instant::now();
        }
        if client_gone {
            break;
        }
        cursor = next;
        s.advance(reader, cursor);
        if let Some(code) = exit {
            if s.read_from(cursor).0.is_empty() {
                let exit_msg = if s.tty {
                    Message::Text(
                        json!({"type": "exit", "exit_code": code, "code": code})
                            .to_string()
                            .into(),
                    )
                } else {
                    Message::Binary(Bytes::copy_from_slice(&[STREAM_EXIT, code]))
                };
                let _ = tx.send(exit_msg).await;
                let _ = tx
                    .send(Message::Close(Some(CloseFrame {
                        code: 1000,
                        reason: "".into(),
                    })))
                    .await;
                // Give the client a moment to close its side, then drop the socket.
                let _ = tokio::time::timeout(Duration::from_secs(2), async {
                    while rx.next().await.is_some() {}
                })
                .await;
                break;
            }
            continue;
        }
        tokio::select! {
            r = changes.changed() => if r.is_err() { break },
            msg = rx.next() => match msg {
                Some(Ok(m)) => {
                    if !handle_client_message(&s, m, stdin).await {
                        break;
                    }
                }
                _ => break,
            },
            n = notices.recv() => {
                if let Ok(text) = n {
                    if tx.send(Message::Text(text.into())).await.is_err() {
                        break;
                    }
                    last_sent = tokio::time::Instant::now();
                }
            }
            _ = tokio::time::sleep_until(last_sent + KEEPALIVE) => {
                if tx.send(Message::Text(json!({"type": "keepalive"}).to_string().into())).await.is_err() {
                    break;
                }
                last_sent = tokio::time::Instant::now();
            }
        }
    }
    // Complete the closing handshake (answering the client's close, if it sent one) so the
    // client sees a clean close, not a dropped connection.
    let _ = tx.close().await;
    s.detach(reader);
}

/// Applies one client message; `false` when the client closed.
async fn handle_client_message(s: &Session, m: Message, stdin: bool) -> bool {
    match m {
        Message::Binary(b) => {
            s.touch();
            if s.tty {
                let _ = s.input.send(Input::Data(b)).await;
            } else if b.as_ref() == [STREAM_STDIN_EOF] {
                let _ = s.input.send(Input::Eof).await;
            } else if b.first() == Some(&b'{') {
                // The JS control dialect sends resize/signal JSON as binary frames.
                control(s, &b).await;
            } else if stdin {
                let data = if b.first() == Some(&STREAM_STDIN) {
                    b.slice(1..)
                } else {
                    b
                };
                if !data.is_empty() {
                    let _ = s.input.send(Input::Data(data)).await;
                }
            }
            true
        }
        Message::Text(t) => {
            control(s, t.as_bytes()).await;
            true
        }
        Message::Close(_) => false,
        Message::Ping(_) | Message::Pong(_) => true,
    }
}

async fn control(s: &Session, raw: &[u8]) {
    match ControlMessage::parse(raw) {
        Some(ControlMessage::Resize { cols, rows }) => s.resize(cols, rows),
        Some(ControlMessage::Signal(sig)) => {
            s.signal(sig);
        }
        Some(ControlMessage::StdinEof) => {
            let _ = s.input.send(Input::Eof).await;
        }
        None => {}
    }
}

/// `POST /exec/{id}/kill`: signal the process group, wait, escalate; NDJSON events.
pub async fn kill(
    State(reg): State<Arc<Registry>>,
    Path(id): Path<String>,
    Query(q): Query<Vec<(String, String)>>,
    body: Bytes,
) -> Response {
    let Some(s) = reg.get(&id) else {
        return error(ErrorCode::NotFound, "exec session not found");
    };
    if s.exit().is_some() {
        return error(ErrorCode::Gone, "exec session already exited");
    }
    let KillRequest {
        signal: sig,
        timeout,
    } = match KillRequest::parse(q.iter().map(|(k, v)| (k.as_str(), v.as_str())), &body) {
        Ok(k) => k,
        Err(e) => return error(ErrorCode::BadRequest, e),
    };
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(8);
    tokio::spawn(async move {
        let send = |v: serde_json::Value| {
            let tx = tx.clone();
            async move {
                let mut line = v.to_string().into_bytes();
                line.push(b'\n');
                let _ = tx.send(Ok(Bytes::from(line))).await;
            }
        };
        let name = sprites_api::signal::signal_name(sig).unwrap_or_else(|| sig.to_string());
        s.signal(sig);
        send(json!({"type": "signal", "message": format!("Signaling {name} to process group {}", s.pgid), "signal": name, "pid": s.pgid})).await;
        if timeout.is_zero() {
            send(json!({"type": "complete", "exit_code": s.exit()})).await;
            return;
        }
        let mut code = wait_exit(&s, timeout).await;
        if code.is_none() {
            send(json!({"type": "timeout", "message": format!("Process did not exit within {timeout:?}; sending SIGKILL")})).await;
            s.signal(libc::SIGKILL);
            send(json!({"type": "killed", "message": "Sent SIGKILL"})).await;
            code = wait_exit(&s, Duration::from_secs(10)).await;
        }
        match code {
            Some(c) => {
                send(json!({"type": "exited", "message": "Process exited"})).await;
                send(json!({"type": "complete", "exit_code": c})).await;
            }
            None => {
                send(json!({"type": "error", "message": "process did not exit after SIGKILL"}))
                    .await
            }
        }
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(crate::exec::tokio_stream_from(rx)))
        .unwrap_or_default()
}

async fn wait_exit(s: &Session, limit: Duration) -> Option<u8> {
    let mut w = s.watch();
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(c) = s.exit() {
            return Some(c);
        }
        if tokio::time::timeout_at(deadline, w.changed())
            .await
            .is_err()
        {
            return s.exit();
        }
    }
}
