//! `GET /v1/sprites/{name}/proxy` (spec §5): the TCP proxy.
//!
//! spritesd speaks the protocol to clients itself (the WebSocket with its `{"host","port"}`
//! handshake, and our own SDK's raw `Upgrade: tcp` with `?host=&port=`) and reaches the target
//! in one of two ways: a namespace sprite's `localhost` is dialed from the host inside the
//! sprite's network namespace ([`Runtime::dial_loopback`]); anything else (names, which the
//! sprite's resolver and egress policy govern; microVMs) goes through the agent's raw dial.
//! Either way the bytes cross one relay fewer than a relay in both spritesd and the agent.
//!
//! [`Runtime::dial_loopback`]: sprites_runtime::Runtime::dial_loopback

use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Path, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use serde_json::json;
use sprites_agent_protocol::proxy_target;
use sprites_api::ErrorCode;
use sprites_runtime::{Hold, SpriteSpec};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::forward::forward;
use super::AppState;
use crate::error::ApiError;
use crate::store::Org;

/// Relay buffer, each way.
const BUF: usize = 256 << 10;

/// A connection to the proxy's target.
pub(super) trait Target: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Target for T {}

fn is_loopback_name(host: &str) -> bool {
    matches!(host, "" | "localhost")
}

pub async fn proxy(
    State(s): State<AppState>,
    Extension(org): Extension<Org>,
    Path(name): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let raw = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("tcp"));
    if raw {
        return raw_proxy(s, org, name, req).await;
    }
    let (mut parts, _) = req.into_parts();
    let ws = WebSocketUpgrade::from_request_parts(&mut parts, &())
        .await
        .map_err(|e| {
            ApiError::new(
                ErrorCode::BadRequest,
                format!("expected a WebSocket or an Upgrade: tcp request: {e}"),
            )
        })?;
    // Woken before switching protocols, so a missing sprite is a plain 404.
    let (spec, hold) = s.wake(&org, &name).await?;
    Ok(ws
        .max_message_size(16 << 20)
        .on_upgrade(move |socket| relay_ws(s, spec, hold, socket)))
}

/// Our SDK's flavour: no framing. Loopback targets are dialed here; the rest is the agent's.
async fn raw_proxy(
    s: AppState,
    org: Org,
    name: String,
    mut req: Request,
) -> Result<Response, ApiError> {
    let q: Vec<(String, String)> = axum::extract::Query::try_from_uri(req.uri())
        .map(|q| q.0)
        .unwrap_or_default();
    let get = |k: &str| q.iter().find(|(qk, _)| qk == k).map(|(_, v)| v.as_str());
    let port = get("port").and_then(|p| p.parse::<u16>().ok());
    if let (Some(port), true) = (port, is_loopback_name(get("host").unwrap_or(""))) {
        let (spec, hold) = s.wake(&org, &name).await?;
        if let Some(dialed) = s.runtime.dial_loopback(&spec, port).await {
            let mut tcp = dialed.map_err(|e| {
                ApiError::new(
                    ErrorCode::Unavailable,
                    format!("cannot reach localhost:{port}: {e}"),
                )
            })?;
            let on_upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let _hold = hold;
                if let Ok(up) = on_upgrade.await {
                    let mut up = TokioIo::new(up);
                    let _ =
                        tokio::io::copy_bidirectional_with_sizes(&mut up, &mut tcp, BUF, BUF).await;
                }
            });
            return Ok((
                StatusCode::SWITCHING_PROTOCOLS,
                [(header::CONNECTION, "upgrade"), (header::UPGRADE, "tcp")],
            )
                .into_response());
        }
    }
    forward(&s, &org, &name, "/proxy", req).await
}

/// Opens the target: directly where the backend can, else through the agent's raw dial.
/// Errors are the message for the client.
pub(super) async fn open(
    s: &AppState,
    spec: &SpriteSpec,
    host: &str,
    port: u16,
) -> Result<Box<dyn Target>, String> {
    if is_loopback_name(host) {
        if let Some(dialed) = s.runtime.dial_loopback(spec, port).await {
            let tcp = dialed.map_err(|e| e.to_string())?;
            return Ok(Box::new(tcp));
        }
    }
    let stream = s.runtime.connect(spec).await.map_err(|e| e.to_string())?;
    let query = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("host", host)
        .append_pair("port", &port.to_string())
        .finish();
    let req = http::Request::builder()
        .method("GET")
        .uri(format!("/proxy?{query}"))
        .header(header::HOST, "sprite")
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "tcp")
        .body(http_body_util::Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let mut resp = sprites_runtime::agent::send(stream, req)
        .await
        .map_err(|e| e.to_string())?;
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        let msg = sprites_runtime::agent::error_message(resp.into_body(), || {
            "the sprite refused the connection".into()
        })
        .await;
        // The agent says "cannot reach host:port: why"; the client already knows the target.
        let prefix = format!("cannot reach {}: ", proxy_target(host, port));
        return Err(msg.strip_prefix(&prefix).unwrap_or(&msg).to_string());
    }
    let up = hyper::upgrade::on(&mut resp)
        .await
        .map_err(|e| e.to_string())?;
    Ok(Box::new(TokioIo::new(up)))
}

async fn close(socket: &mut WebSocket, code: u16, reason: &str) {
    let _ = socket
        .send(Message::Close(Some(CloseFrame {
            code,
            reason: reason.into(),
        })))
        .await;
}

/// The WebSocket flavour: `{"host","port"}`, a JSON status, then binary messages both ways.
async fn relay_ws(s: AppState, spec: SpriteSpec, _hold: Hold, mut socket: WebSocket) {
    let init = match tokio::time::timeout(Duration::from_secs(10), socket.recv()).await {
        Ok(Some(Ok(Message::Text(t)))) => t,
        _ => return close(&mut socket, 1003, "Expected JSON initialization message").await,
    };
    let v: serde_json::Value = match serde_json::from_str(&init) {
        Ok(v) => v,
        Err(e) => return close(&mut socket, 1003, &format!("Invalid JSON: {e}")).await,
    };
    let host = v["host"]
        .as_str()
        .filter(|h| !h.is_empty())
        .unwrap_or("localhost")
        .to_string();
    let port = v["port"]
        .as_u64()
        .or_else(|| v["port"].as_str().and_then(|p| p.parse().ok()));
    let Some(port) = port.and_then(|p| u16::try_from(p).ok()).filter(|p| *p > 0) else {
        let msg = json!({"status": "error", "error": "invalid port number"});
        let _ = socket.send(Message::Text(msg.to_string().into())).await;
        return close(&mut socket, 1003, "Invalid port number").await;
    };
    let target = proxy_target(&host, port);
    let conn = match open(&s, &spec, &host, port).await {
        Ok(c) => c,
        Err(e) => {
            let msg = json!({"status": "error", "target": target, "error": e});
            let _ = socket.send(Message::Text(msg.to_string().into())).await;
            return close(
                &mut socket,
                1011,
                &format!("Failed to connect to target: {e}"),
            )
            .await;
        }
    };
    let connected = json!({"status": "connected", "target": target});
    if socket
        .send(Message::Text(connected.to_string().into()))
        .await
        .is_err()
    {
        return;
    }
    let (mut rd, mut wr) = tokio::io::split(conn);
    let (mut tx, mut rx) = socket.split();
    let up = async {
        while let Some(Ok(m)) = rx.next().await {
            match m {
                Message::Binary(b) if wr.write_all(&b).await.is_err() => break,
                Message::Close(_) => break,
                _ => {}
            }
        }
        let _ = wr.shutdown().await;
    };
    let down = async {
        let mut buf = vec![0u8; BUF];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let m = Message::Binary(Bytes::copy_from_slice(&buf[..n]));
                    if tx.send(m).await.is_err() {
                        return;
                    }
                }
            }
        }
        let _ = tx
            .send(Message::Close(Some(CloseFrame {
                code: 1000,
                reason: "".into(),
            })))
            .await;
    };
    // Either side ending ends the relay.
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
}
