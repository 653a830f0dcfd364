//! Decoding of the length-prefixed exec frames our server sends on request
//! (`sprite-exec-framing: length-prefixed`): `[stream u8][len u32 BE][data]`. Unlike the
//! official paced form, this survives any re-chunking by the network.

use bytes::{Buf, BytesMut};

/// One decoded frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// Output on a stream (1 stdout, 2 stderr).
    Data(u8, Vec<u8>),
    /// Exit byte.
    Exit(u8),
}

/// Incremental decoder: feed bytes in any chunking, take whole frames out.
pub struct Decoder {
    buf: BytesMut,
    max: usize,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder {
            buf: BytesMut::new(),
            max: usize::MAX,
        }
    }
}

impl Decoder {
    /// A decoder that refuses a frame longer than `max` bytes (from a peer that is not
    /// trusted to be sane, so nothing waits to buffer a length it merely claims).
    pub fn with_limit(max: usize) -> Self {
        Decoder {
            buf: BytesMut::new(),
            max,
        }
    }

    /// Adds received bytes.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Next complete frame, if any.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, String> {
        if self.buf.len() < 5 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        if len > self.max {
            return Err(format!("an exec frame of {len} bytes is over {}", self.max));
        }
        if self.buf.len() < 5 + len {
            return Ok(None);
        }
        let stream = self.buf[0];
        self.buf.advance(5);
        let data = self.buf.split_to(len).to_vec();
        match stream {
            1 | 2 => Ok(Some(Frame::Data(stream, data))),
            3 if data.len() == 1 => Ok(Some(Frame::Exit(data[0]))),
            other => Err(format!("unexpected exec frame {other} of {len} bytes")),
        }
    }

    /// Bytes received but not yet part of a whole frame.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_chunking() {
        let mut wire = vec![1, 0, 0, 0, 3, b'a', b'b', b'c', 2, 0, 0, 0, 1, b'e'];
        wire.extend_from_slice(&[3, 0, 0, 0, 1, 7]);
        for split in 1..wire.len() {
            let mut d = Decoder::default();
            let mut got = Vec::new();
            for part in wire.chunks(split) {
                d.push(part);
                while let Some(f) = d.next_frame().unwrap() {
                    got.push(f);
                }
            }
            assert_eq!(
                got,
                vec![
                    Frame::Data(1, b"abc".to_vec()),
                    Frame::Data(2, b"e".to_vec()),
                    Frame::Exit(7)
                ]
            );
            assert_eq!(d.pending(), 0);
        }
        let mut d = Decoder::default();
        d.push(&[9, 0, 0, 0, 0]);
        assert!(d.next_frame().is_err());
        let mut d = Decoder::with_limit(4);
        d.push(&[1, 0xff, 0xff, 0xff, 0xff]);
        assert!(
            d.next_frame().is_err(),
            "a claimed 4 GiB frame is refused at once"
        );
    }
}
