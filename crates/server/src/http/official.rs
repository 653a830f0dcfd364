//! The official HTTP exec form (protocol spec §3.5): `[stream][data]` frames without a
//! length, one per HTTP chunk, which fetch-based clients (`@fly/sprites`' `execFileHTTP`)
//! read one frame per read. spritesd always asks the agent for length-prefixed frames and
//! makes the official form here, so frame boundaries survive every hop (a relay re-chunks
//! bodies: a frame split or merged on the way arrives as garbage at such a client); it paces
//! frames for clients that need it and sends them as they come to clients that read bytes.

use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use sprites_api::exec::{self as frames, STREAM_EXIT};
use sprites_api::frames::{Decoder, Frame};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Largest data part of one paced frame; the JS client wants frames well below 16 KiB.
const PACED_FRAME_MAX: usize = 12 * 1024;
/// Gap between paced frames so that each arrives in its own read on the client.
const PACE: Duration = Duration::from_millis(12);
/// How long output of one stream is gathered into one paced frame.
const GATHER: Duration = Duration::from_millis(8);
/// Largest length-prefixed frame taken from an agent (its reads are far smaller); a longer
/// claim ends the answer instead of buffering it.
const AGENT_FRAME_MAX: usize = 4 << 20;

/// HTTP clients that can only read the official form's body as bytes (command-line tools
/// that write it out, for a script that takes the exit code from its last two bytes), never
/// one frame per read: they need no pacing, so their frames go out as soon as output exists.
/// Libraries are not on the list even when most of their users read bytes (`httpx` can
/// iterate chunks, and a test here does), so everything else, fetch-based readers above all
/// (`@fly/sprites`, browsers, Deno, Bun), and clients that say nothing, is paced.
const BYTE_READERS: &[&str] = &["curl/", "wget/", "httpie/"];

/// Whether the request's `User-Agent` is one of [`BYTE_READERS`].
pub fn reads_bytes(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(str::to_ascii_lowercase)
        .is_some_and(|ua| BYTE_READERS.iter().any(|p| ua.starts_with(p)))
}

enum Event {
    Output(u8, Bytes),
    Exit(u8),
}

/// Turns an agent's length-prefixed answer into the official form.
pub fn reframe(resp: Response, paced: bool) -> Response {
    let (parts, body) = resp.into_parts();
    let (ev_tx, ev_rx) = mpsc::channel::<Event>(16);
    let (out_tx, out_rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    tokio::spawn(decode(body, ev_tx));
    if paced {
        tokio::spawn(write_paced(ev_rx, out_tx));
    } else {
        tokio::spawn(write_unpaced(ev_rx, out_tx));
    }
    let stream =
        futures::stream::unfold(
            out_rx,
            |mut rx| async move { rx.recv().await.map(|x| (x, rx)) },
        );
    Response::from_parts(parts, Body::from_stream(stream))
}

/// Reads the agent's frames (bounded); ends at the exit frame, a bad frame or the body's end.
async fn decode(body: Body, tx: mpsc::Sender<Event>) {
    let mut body = body.into_data_stream();
    let mut d = Decoder::with_limit(AGENT_FRAME_MAX);
    while let Some(Ok(chunk)) = body.next().await {
        d.push(&chunk);
        loop {
            let ev = match d.next_frame() {
                Ok(Some(Frame::Data(s, data))) => Event::Output(s, Bytes::from(data)),
                Ok(Some(Frame::Exit(c))) => {
                    let _ = tx.send(Event::Exit(c)).await;
                    return;
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!("exec answer from an agent: {e}");
                    return;
                }
            };
            if tx.send(ev).await.is_err() {
                return;
            }
        }
    }
}

async fn write_unpaced(
    mut rx: mpsc::Receiver<Event>,
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
) {
    while let Some(ev) = rx.recv().await {
        let (frame, last) = match ev {
            Event::Output(s, d) => (frames::encode(s, &d), false),
            Event::Exit(c) => (vec![STREAM_EXIT, c], true),
        };
        if tx.send(Ok(Bytes::from(frame))).await.is_err() || last {
            return;
        }
    }
}

/// One frame per HTTP chunk, frames spaced by [`PACE`], output of one stream gathered for
/// [`GATHER`] so a chatty process does not make thousands of frames.
async fn write_paced(
    mut rx: mpsc::Receiver<Event>,
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
) {
    let mut last: Option<Instant> = None;
    let mut carry: Option<Event> = None;
    loop {
        let ev = match carry.take() {
            Some(e) => e,
            None => match rx.recv().await {
                Some(e) => e,
                None => return,
            },
        };
        let (stream, mut data) = match ev {
            Event::Exit(code) => {
                pace(last, PACE * 2).await;
                let _ = tx.send(Ok(Bytes::from(vec![STREAM_EXIT, code]))).await;
                return;
            }
            Event::Output(stream, data) => {
                let mut buf = BytesMut::from(&data[..]);
                let until = Instant::now() + GATHER;
                while buf.len() < PACED_FRAME_MAX {
                    match tokio::time::timeout_at(until, rx.recv()).await {
                        Ok(Some(Event::Output(s, d))) if s == stream => buf.extend_from_slice(&d),
                        Ok(Some(other)) => {
                            carry = Some(other);
                            break;
                        }
                        Ok(None) | Err(_) => break,
                    }
                }
                (stream, buf.freeze())
            }
        };
        while !data.is_empty() {
            let part = data.split_to(data.len().min(PACED_FRAME_MAX));
            pace(last, PACE).await;
            if tx
                .send(Ok(Bytes::from(frames::encode(stream, &part))))
                .await
                .is_err()
            {
                return;
            }
            last = Some(Instant::now());
        }
    }
}

async fn pace(last: Option<Instant>, gap: Duration) {
    if let Some(t) = last {
        tokio::time::sleep_until(t + gap).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_readers_by_user_agent() {
        let mut h = http::HeaderMap::new();
        assert!(!reads_bytes(&h), "no User-Agent: paced");
        for (ua, want) in [
            ("curl/8.5.0", true),
            ("Wget/1.21.3", true),
            ("python-httpx/0.27.0", false),
            ("Go-http-client/1.1", false),
            ("node", false),
            ("Mozilla/5.0 (X11; Linux x86_64)", false),
            ("Deno/2.0", false),
        ] {
            h.insert(http::header::USER_AGENT, ua.parse().unwrap());
            assert_eq!(reads_bytes(&h), want, "{ua}");
        }
    }

    #[tokio::test]
    async fn frames_come_out_whole_whatever_the_agent_chunking() {
        // The agent's answer cut into 1-byte pieces: the official frames are still whole.
        let mut wire = Vec::new();
        for (s, d) in [(1u8, &b"hello "[..]), (1, b"world"), (2, b"oops")] {
            wire.push(s);
            wire.extend_from_slice(&(d.len() as u32).to_be_bytes());
            wire.extend_from_slice(d);
        }
        wire.extend_from_slice(&[3, 0, 0, 0, 1, 7]);
        for paced in [false, true] {
            let pieces: Vec<Result<Bytes, std::io::Error>> =
                wire.iter().map(|b| Ok(Bytes::from(vec![*b]))).collect();
            let body = Body::from_stream(futures::stream::iter(pieces));
            let resp = reframe(Response::new(body), paced);
            let chunks: Vec<Bytes> = resp
                .into_body()
                .into_data_stream()
                .map(|c| c.unwrap())
                .collect()
                .await;
            let want: Vec<&[u8]> = if paced {
                vec![b"\x01hello world", b"\x02oops", b"\x03\x07"]
            } else {
                vec![b"\x01hello ", b"\x01world", b"\x02oops", b"\x03\x07"]
            };
            assert_eq!(chunks.iter().map(|c| &c[..]).collect::<Vec<_>>(), want);
        }
    }

    #[tokio::test]
    async fn a_huge_claimed_frame_ends_the_answer() {
        let body = Body::from(vec![1u8, 0xff, 0xff, 0xff, 0xff, b'x']);
        let chunks: Vec<_> = reframe(Response::new(body), false)
            .into_body()
            .into_data_stream()
            .collect()
            .await;
        assert!(chunks.is_empty(), "nothing buffered, nothing sent");
    }
}
