//! TCP inside the sprite: the `/proxy` WebSocket relay (spec §5) and the host-only raw dial
//! the sprite URL uses.

use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, Request};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use serde_json::json;
use sprites_api::ErrorCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::server::error;

const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// `host:port`, with IPv6 hosts in brackets.
fn join(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// `GET /proxy` (WebSocket): `{"host","port"}` first, then a raw relay. Our own SDK may ask
/// for `Upgrade: tcp` with `?host=&port=` instead: no framing at all, so much faster.
pub async fn proxy(Query(q): Query<Vec<(String, String)>>, req: Request) -> Response {
    let raw = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("tcp"));
    if raw {
        return raw_proxy(q, req).await;
    }
    let (mut parts, _) = req.into_parts();
    match <WebSocketUpgrade as axum::extract::FromRequestParts<()>>::from_request_parts(
        &mut parts,
        &(),
    )
    .await
    {
        Ok(ws) => ws.max_message_size(16 << 20).on_upgrade(relay_ws),
        Err(e) => error(
            ErrorCode::BadRequest,
            format!("expected a WebSocket or an Upgrade: tcp request: {e}"),
        ),
    }
}

async fn raw_proxy(q: Vec<(String, String)>, mut req: Request) -> Response {
    let get = |k: &str| q.iter().find(|(qk, _)| qk == k).map(|(_, v)| v.clone());
    let host = get("host")
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    let Some(port) = get("port")
        .and_then(|p| p.parse::<u16>().ok())
        .filter(|p| *p > 0)
    else {
        return error(ErrorCode::BadRequest, "invalid port number");
    };
    let tcp =
        match tokio::time::timeout(DIAL_TIMEOUT, TcpStream::connect((host.as_str(), port))).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                return error(
                    ErrorCode::Unavailable,
                    format!("cannot reach {}: {e}", join(&host, port)),
                )
            }
            Err(_) => {
                return error(
                    ErrorCode::Unavailable,
                    format!("cannot reach {}: timed out", join(&host, port)),
                )
            }
        };
    let _ = tcp.set_nodelay(true);
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        if let Ok(up) = on_upgrade.await {
            let mut up = hyper_util::rt::TokioIo::new(up);
            let mut tcp = tcp;
            let _ =
                tokio::io::copy_bidirectional_with_sizes(&mut up, &mut tcp, 256 << 10, 256 << 10)
                    .await;
        }
    });
    (
        StatusCode::SWITCHING_PROTOCOLS,
        [(header::CONNECTION, "upgrade"), (header::UPGRADE, "tcp")],
    )
        .into_response()
}

async fn close(socket: &mut WebSocket, code: u16, reason: &str) {
    let _ = socket
        .send(Message::Close(Some(CloseFrame {
            code,
            reason: reason.into(),
        })))
        .await;
}

async fn relay_ws(mut socket: WebSocket) {
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
        let _ = socket
            .send(Message::Text(
                json!({"status": "error", "error": "invalid port number"})
                    .to_string()
                    .into(),
            ))
            .await;
        return close(&mut socket, 1003, "Invalid port number").await;
    };
    let target = join(&host, port);
    let tcp = match tokio::time::timeout(DIAL_TIMEOUT, TcpStream::connect((host.as_str(), port)))
        .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            let msg = json!({"status": "error", "target": target, "error": e.to_string()});
            let _ = socket.send(Message::Text(msg.to_string().into())).await;
            return close(
                &mut socket,
                1011,
                &format!("Failed to connect to target: {e}"),
            )
            .await;
        }
        Err(_) => {
            let msg = json!({"status": "error", "target": target, "error": "connection timed out"});
            let _ = socket.send(Message::Text(msg.to_string().into())).await;
            return close(&mut socket, 1011, "Failed to connect to target: timed out").await;
        }
    };
    let _ = tcp.set_nodelay(true);
    if socket
        .send(Message::Text(
            json!({"status": "connected", "target": target})
                .to_string()
                .into(),
        ))
        .await
        .is_err()
    {
        return;
    }
    let (mut rd, mut wr) = tcp.into_split();
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
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx
                        .send(Message::Binary(Bytes::copy_from_slice(&buf[..n])))
                        .await
                        .is_err()
                    {
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

/// `GET /agent/v1/dial?port=N` (host only): upgrades to a raw byte stream connected to
/// `127.0.0.1:N` inside the sprite. `port=0` means the sprite URL's port: the `http_port`
/// service's (started if needed), else 8080.
pub async fn dial(
    axum::extract::State(services): axum::extract::State<std::sync::Arc<crate::services::Services>>,
    Query(q): Query<Vec<(String, String)>>,
    mut req: Request,
) -> Response {
    let port: u16 = match q.iter().find(|(k, _)| k == "port").map(|(_, v)| v.parse()) {
        Some(Ok(p)) => p,
        _ => return error(ErrorCode::BadRequest, "port is required"),
    };
    let port = if port == 0 {
        services.url_port().await
    } else {
        port
    };
    // Wait a little for a server that is still starting (a service just woken with the sprite).
    let deadline = tokio::time::Instant::now() + DIAL_TIMEOUT;
    let tcp = loop {
        match TcpStream::connect(("127.0.0.1", port)).await {
            Ok(s) => break s,
            Err(e) if tokio::time::Instant::now() > deadline => {
                return error(
                    ErrorCode::Unavailable,
                    format!("nothing listens on port {port} in the sprite: {e}"),
                )
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let _ = tcp.set_nodelay(true);
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        if let Ok(up) = on_upgrade.await {
            let mut up = hyper_util::rt::TokioIo::new(up);
            let mut tcp = tcp;
            let _ = tokio::io::copy_bidirectional(&mut up, &mut tcp).await;
        }
    });
    (
        StatusCode::SWITCHING_PROTOCOLS,
        [(header::CONNECTION, "upgrade"), (header::UPGRADE, "tcp")],
    )
        .into_response()
}
