//! HTTP/1.1 client for the agent over one [`AgentStream`].

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use sprites_agent_protocol::{Activity, AgentInfo, ACTIVITY_PATH, INFO_PATH, SHUTDOWN_PATH};

use crate::{AgentStream, BackendError};

/// Sends one request over a fresh stream and returns the response. The connection task
/// supports upgrades, so a `101` response can be turned into a raw stream by the caller.
pub async fn send<B>(
    stream: AgentStream,
    req: http::Request<B>,
) -> Result<http::Response<Incoming>, BackendError>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| BackendError::Other(format!("agent handshake: {e}")))?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!("agent connection ended: {e}");
        }
    });
    sender
        .send_request(req)
        .await
        .map_err(|e| BackendError::Other(format!("agent request: {e}")))
}

async fn simple(
    stream: AgentStream,
    method: http::Method,
    path: &str,
) -> Result<(http::StatusCode, Bytes), BackendError> {
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, "sprite")
        .body(Full::new(Bytes::new()))
        .map_err(|e| BackendError::Other(e.to_string()))?;
    let resp = send(stream, req).await?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| BackendError::Other(format!("agent body: {e}")))?
        .to_bytes();
    Ok((status, body))
}

/// Asks the agent who it is. Used as the readiness probe.
pub async fn info(stream: AgentStream) -> Result<AgentInfo, BackendError> {
    let (status, body) = simple(stream, http::Method::GET, INFO_PATH).await?;
    if !status.is_success() {
        return Err(BackendError::Other(format!("agent info answered {status}")));
    }
    serde_json::from_slice(&body).map_err(|e| BackendError::Other(format!("agent info: {e}")))
}

/// Asks the agent whether anything is going on inside.
pub async fn activity(stream: AgentStream) -> Result<Activity, BackendError> {
    let (status, body) = simple(stream, http::Method::GET, ACTIVITY_PATH).await?;
    if !status.is_success() {
        return Err(BackendError::Other(format!(
            "agent activity answered {status}"
        )));
    }
    serde_json::from_slice(&body).map_err(|e| BackendError::Other(format!("agent activity: {e}")))
}

/// Hands the agent a policy document to keep as a read-only copy inside the sprite.
pub async fn put_policy(
    stream: AgentStream,
    kind: &str,
    doc: &serde_json::Value,
) -> Result<(), BackendError> {
    let req = http::Request::builder()
        .method(http::Method::PUT)
        .uri(format!("{}/{kind}", sprites_agent_protocol::POLICY_PATH))
        .header(http::header::HOST, "sprite")
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(doc.to_string())))
        .map_err(|e| BackendError::Other(e.to_string()))?;
    let resp = send(stream, req).await?;
    if resp.status().is_success() {
        Ok(())
    } else {
        Err(BackendError::Other(format!(
            "agent policy answered {}",
            resp.status()
        )))
    }
}

/// Asks the agent to freeze (`true`) or thaw the filesystem of the sprite's disk.
pub async fn fsfreeze(stream: AgentStream, freeze: bool) -> Result<(), BackendError> {
    let path = format!(
        "{}?freeze={}",
        sprites_agent_protocol::FSFREEZE_PATH,
        u8::from(freeze)
    );
    let (status, body) = simple(stream, http::Method::POST, &path).await?;
    if status.is_success() {
        Ok(())
    } else {
        Err(BackendError::Other(format!(
            "agent fsfreeze answered {status}: {}",
            String::from_utf8_lossy(&body)
        )))
    }
}

/// Asks the agent to end every process, flush the disk and exit.
pub async fn shutdown(stream: AgentStream) -> Result<(), BackendError> {
    let (status, _) = simple(stream, http::Method::POST, SHUTDOWN_PATH).await?;
    if status.is_success() {
        Ok(())
    } else {
        Err(BackendError::Other(format!(
            "agent shutdown answered {status}"
        )))
    }
}
