//! HTTP/1.1 client for the agent over one [`AgentStream`].
//!
//! The agent runs inside the sandbox, so whatever it answers is hostile input: a sprite's root
//! can own it (always in a microVM). Every answer the host reads whole goes through
//! [`read_bounded`] (at most [`MAX_ANSWER`] bytes, within [`ANSWER_TIMEOUT`]); heads are
//! bounded by hyper (about 400 KiB of buffered head, 100 headers) and, for requests without a
//! body, by [`HEAD_TIMEOUT`]. Streamed answers (exec output, file reads) are passed through
//! with backpressure, so they cost memory only per chunk in flight.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use sprites_agent_protocol::{Activity, AgentInfo, ACTIVITY_PATH, INFO_PATH, SHUTDOWN_PATH};

use crate::{AgentStream, BackendError};

/// Largest answer the host reads whole from an agent (JSON documents, error bodies).
pub const MAX_ANSWER: usize = 1 << 20;
/// How long reading such an answer may take.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an agent may take to answer the head of a request that has no body to upload.
/// (With a body, the answer may legitimately wait for the whole upload.)
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(30);

/// Reads a whole body from an agent: an error past `limit` bytes or `timeout`, never more
/// memory than `limit`.
pub async fn read_bounded<B>(
    body: B,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, BackendError>
where
    B: hyper::body::Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let collect = http_body_util::Limited::new(body, limit).collect();
    match tokio::time::timeout(timeout, collect).await {
        Ok(Ok(b)) => Ok(b.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(BackendError::Other(
            format!("the agent's answer is over {limit} bytes"),
        )),
        Ok(Err(e)) => Err(BackendError::Other(format!("agent body: {e}"))),
        Err(_) => Err(BackendError::Other(format!(
            "the agent's answer took over {} s",
            timeout.as_secs()
        ))),
    }
}

/// [`read_bounded`] with the defaults, for an error answer turned into a message: the
/// agent's JSON `message` if it sent one, else `fallback`. Never fails.
pub async fn error_message<B>(body: B, fallback: impl FnOnce() -> String) -> String
where
    B: hyper::body::Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    read_bounded(body, MAX_ANSWER, ANSWER_TIMEOUT)
        .await
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| Some(v.get("message")?.as_str()?.chars().take(1000).collect()))
        .unwrap_or_else(fallback)
}

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
    let bodyless = req.body().is_end_stream();
    let answer = sender.send_request(req);
    let answer = if bodyless {
        tokio::time::timeout(HEAD_TIMEOUT, answer)
            .await
            .map_err(|_| {
                BackendError::Other(format!(
                    "the agent did not answer within {} s",
                    HEAD_TIMEOUT.as_secs()
                ))
            })?
    } else {
        answer.await
    };
    answer.map_err(|e| BackendError::Other(format!("agent request: {e}")))
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
    let body = read_bounded(resp.into_body(), MAX_ANSWER, ANSWER_TIMEOUT).await?;
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A hostile agent on the other end of a real socket: answers any request with `head`
    /// and then `chunks` (forever when `None`); counts what it managed to send.
    fn fake_agent(head: &'static str, chunks: Option<usize>) -> (AgentStream, Arc<AtomicU64>) {
        let (ours, mut theirs) = tokio::net::UnixStream::pair().unwrap();
        let sent = Arc::new(AtomicU64::new(0));
        let counter = sent.clone();
        tokio::spawn(async move {
            let mut req = [0u8; 4096];
            let _ = theirs.read(&mut req).await;
            if theirs.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            let chunk = format!("10000\r\n{}\r\n", "x".repeat(0x10000));
            let mut n = 0;
            while chunks.is_none_or(|c| n < c) {
                if theirs.write_all(chunk.as_bytes()).await.is_err() {
                    return;
                }
                counter.fetch_add(0x10000, Ordering::SeqCst);
                n += 1;
            }
            let _ = theirs.write_all(b"0\r\n\r\n").await;
        });
        (Box::new(ours), sent)
    }

    const CHUNKED: &str =
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n";

    #[tokio::test]
    async fn an_endless_answer_costs_only_its_request() {
        let (stream, sent) = fake_agent(CHUNKED, None);
        let r = tokio::time::timeout(Duration::from_secs(20), info(stream))
            .await
            .expect("reading an endless answer must stop by itself");
        let e = r.expect_err("an endless answer is an error").to_string();
        assert!(e.contains("over"), "{e}");
        // What the fake agent got out is what the socket buffers hold past our limit, not
        // the whole stream: reading stopped.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let sent = sent.load(Ordering::SeqCst);
        assert!(sent < 16 * MAX_ANSWER as u64, "kept reading: {sent} bytes");
    }

    #[tokio::test]
    async fn a_large_error_body_becomes_a_short_message() {
        let (stream, _) = fake_agent(
            "HTTP/1.1 502 Bad Gateway\r\ntransfer-encoding: chunked\r\n\r\n",
            Some(64),
        );
        let req = http::Request::get("/x")
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        let resp = send(stream, req).await.unwrap();
        let msg = error_message(resp.into_body(), || "fallback".into()).await;
        assert_eq!(msg, "fallback");
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_agent_times_out() {
        let (ours, _theirs) = tokio::net::UnixStream::pair().unwrap();
        let e = info(Box::new(ours))
            .await
            .expect_err("no answer")
            .to_string();
        assert!(e.contains("did not answer"), "{e}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickling_answer_times_out() {
        let (ours, mut theirs) = tokio::net::UnixStream::pair().unwrap();
        tokio::spawn(async move {
            let mut req = [0u8; 4096];
            let _ = theirs.read(&mut req).await;
            let _ = theirs.write_all(CHUNKED.as_bytes()).await;
            loop {
                if theirs.write_all(b"1\r\nx\r\n").await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        let e = info(Box::new(ours))
            .await
            .expect_err("too slow")
            .to_string();
        assert!(e.contains("took over"), "{e}");
    }
}
