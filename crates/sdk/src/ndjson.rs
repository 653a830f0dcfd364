//! NDJSON response bodies read a line at a time as they arrive (checkpoint progress, the
//! sprite watch).

use bytes::{Buf, BytesMut};
use futures::StreamExt;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

/// Lines of an NDJSON body, each parsed as a `T`.
pub struct NdjsonStream<T> {
    body: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buf: BytesMut,
    done: bool,
    _line: std::marker::PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned> NdjsonStream<T> {
    pub(crate) fn new(resp: reqwest::Response) -> Self {
        Self {
            body: resp.bytes_stream().boxed(),
            buf: BytesMut::new(),
            done: false,
            _line: std::marker::PhantomData,
        }
    }

    /// The next line, or `None` once the stream ended.
    pub async fn next(&mut self) -> Result<Option<T>> {
        let parse = |line: &[u8]| {
            serde_json::from_slice(line)
                .map_err(|e| Error::Protocol(format!("bad NDJSON line: {e}")))
        };
        loop {
            if let Some(nl) = self.buf.iter().position(|&b| b == b'\n') {
                let line = self.buf.split_to(nl + 1);
                let line = &line[..nl];
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return parse(line).map(Some);
            }
            if self.done {
                if self.buf.has_remaining() {
                    let rest = self.buf.split();
                    if !rest.iter().all(u8::is_ascii_whitespace) {
                        return parse(&rest).map(Some);
                    }
                }
                return Ok(None);
            }
            match self.body.next().await {
                Some(chunk) => self.buf.extend_from_slice(&chunk?),
                None => self.done = true,
            }
        }
    }
}
