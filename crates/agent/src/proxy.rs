//! TCP inside the sprite: the raw `/proxy` dial behind spritesd's TCP proxy (spec §5) and the
//! host-only raw dial the sprite URL uses.

use std::time::Duration;

use axum::extract::{Query, Request};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use sprites_agent_protocol::proxy_target;
use sprites_api::ErrorCode;
use tokio::net::TcpStream;

use crate::server::error;

const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// `GET /proxy?host=&port=` with `Upgrade: tcp`: connects to the target inside the sprite
/// (names resolved by the sprite's resolver, so its egress policy applies), then relays raw
/// bytes. spritesd speaks the client-facing protocol (§5) and uses this for what it cannot
/// dial itself.
pub async fn proxy(Query(q): Query<Vec<(String, String)>>, req: Request) -> Response {
    let raw = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("tcp"));
    if !raw {
        return error(ErrorCode::BadRequest, "expected an Upgrade: tcp request");
    }
    raw_proxy(q, req).await
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
                    format!("cannot reach {}: {e}", proxy_target(&host, port)),
                )
            }
            Err(_) => {
                return error(
                    ErrorCode::Unavailable,
                    format!("cannot reach {}: timed out", proxy_target(&host, port)),
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
