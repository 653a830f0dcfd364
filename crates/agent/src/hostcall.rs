//! Calls from inside the sprite that only the host can answer (checkpoints): `/.sprite/api.sock`
//! requests forwarded, bodies streamed both ways, to the server's socket for this sprite at
//! `/.sprite/host/api.sock` (in a VM guest: vsock port 1025 on the host).

use axum::body::Body;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use sprites_api::ErrorCode;

use crate::server::error;

/// The server's socket for this sprite, as the backend shows it.
pub const HOST_SOCKET: &str = "/.sprite/host/api.sock";

/// A stream to the host's API: a Unix socket the backend shows in the sprite, or in a VM guest
/// a vsock connection to the host.
async fn connect_host() -> std::io::Result<Box<dyn HostIo>> {
    if std::env::var_os(sprites_agent_protocol::VM_ENV_VAR).is_some() {
        let addr = tokio_vsock::VsockAddr::new(
            tokio_vsock::VMADDR_CID_HOST,
            sprites_agent_protocol::HOST_API_VSOCK_PORT,
        );
        return Ok(Box::new(tokio_vsock::VsockStream::connect(addr).await?));
    }
    Ok(Box::new(
        tokio::net::UnixStream::connect(HOST_SOCKET).await?,
    ))
}

trait HostIo: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> HostIo for T {}

/// Forwards the request unchanged (path and query included) and relays the response.
pub async fn forward(req: Request) -> Response {
    let stream = match connect_host().await {
        Ok(s) => s,
        Err(e) => {
            return error(
                ErrorCode::Unavailable,
                format!("the host API is not reachable: {e}"),
            )
        }
    };
    let (mut sender, conn) = match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
    {
        Ok(x) => x,
        Err(e) => return error(ErrorCode::Unavailable, format!("host API: {e}")),
    };
    tokio::spawn(conn);
    let (parts, body) = req.into_parts();
    let mut out = hyper::Request::builder()
        .method(parts.method)
        .uri(
            parts
                .uri
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/"),
        )
        .header("host", "host");
    if let Some(ct) = parts.headers.get(axum::http::header::CONTENT_TYPE) {
        out = out.header(axum::http::header::CONTENT_TYPE, ct);
    }
    let out = match out.body(body) {
        Ok(r) => r,
        Err(e) => return error(ErrorCode::BadRequest, e.to_string()),
    };
    match sender.send_request(out).await {
        Ok(resp) => {
            let (parts, body) = resp.into_parts();
            Response::from_parts(parts, Body::new(body)).into_response()
        }
        Err(e) => error(ErrorCode::Unavailable, format!("host API: {e}")),
    }
}
