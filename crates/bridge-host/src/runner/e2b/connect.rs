//! The Connect protocol's envelope framing, as envd's streaming RPCs use it: each message
//! is `[flags u8][length u32 big-endian][payload]`; the last one has the end-stream flag
//! and carries `{}` or `{"error": {...}}`.

use serde::Deserialize;

/// Flag of a compressed message (we never ask for compression, so we refuse it).
pub(crate) const FLAG_COMPRESSED: u8 = 0x01;
/// Flag of the end-of-stream message.
pub(crate) const FLAG_END_STREAM: u8 = 0x02;
/// Bytes of an envelope's header.
const HEADER: usize = 5;
/// Largest message accepted from envd: its output events carry chunks of tens of KiB, so
/// anything bigger is a broken or hostile peer, and this bounds what the host buffers.
pub(crate) const MAX_MESSAGE: usize = 4 * 1024 * 1024;

/// One message, framed.
pub(crate) fn encode(flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.push(flags);
    // A message over 4 GiB cannot be framed; ours are a few hundred bytes.
    out.extend_from_slice(
        &u32::try_from(payload.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    out.extend_from_slice(payload);
    out
}

/// What the framing holds next.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Frame {
    /// A message of the stream.
    Message(Vec<u8>),
    /// The end of the stream: `Ok` if it ended cleanly, else the error it carried.
    End(Result<(), ConnectError>),
}

/// An error as Connect carries it (`{"code": "...", "message": "..."}`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ConnectError {
    /// Connect's error code (`not_found`, `deadline_exceeded`, `unauthenticated`, ...).
    #[serde(default)]
    pub code: String,
    /// The server's message.
    #[serde(default)]
    pub message: String,
}

/// Why a stream's framing could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    /// A message longer than any envd sends (the limit bounds what the host buffers).
    #[error("a message of {0} bytes is over the limit")]
    TooLong(usize),
    /// A compressed message, which we never asked for.
    #[error("a compressed message, which was not asked for")]
    Compressed,
    /// An end-of-stream message that is not Connect's JSON.
    #[error("an end-of-stream message that is not JSON")]
    BadEnd,
}

/// Splits a byte stream into frames, however the bytes arrive.
#[derive(Debug, Default)]
pub(crate) struct Decoder {
    buf: Vec<u8>,
}

impl Decoder {
    /// Adds bytes that arrived.
    pub(crate) fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole frame, if one has arrived.
    pub(crate) fn next_frame(&mut self) -> Result<Option<Frame>, FramingError> {
        let Some(header) = self.buf.get(..HEADER) else {
            return Ok(None);
        };
        let flags = header[0];
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        if len > MAX_MESSAGE {
            return Err(FramingError::TooLong(len));
        }
        if flags & FLAG_COMPRESSED != 0 {
            return Err(FramingError::Compressed);
        }
        if self.buf.len() < HEADER + len {
            return Ok(None);
        }
        let payload: Vec<u8> = self.buf.drain(..HEADER + len).skip(HEADER).collect();
        if flags & FLAG_END_STREAM != 0 {
            return end_frame(&payload).map(|end| Some(Frame::End(end)));
        }
        Ok(Some(Frame::Message(payload)))
    }

    /// Bytes received but not yet a whole frame (a stream that ends with some is cut).
    pub(crate) fn pending(&self) -> usize {
        self.buf.len()
    }
}

/// The end-of-stream message: `{}` or `{"error": {...}, "metadata": {...}}`.
fn end_frame(payload: &[u8]) -> Result<Result<(), ConnectError>, FramingError> {
    #[derive(Deserialize)]
    struct End {
        error: Option<ConnectError>,
    }
    let end: End = serde_json::from_slice(payload).map_err(|_| FramingError::BadEnd)?;
    Ok(end.error.map_or(Ok(()), Err))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn frames_survive_any_split_of_the_bytes() {
        let mut bytes = encode(0, br#"{"a":1}"#);
        bytes.extend(encode(FLAG_END_STREAM, b"{}"));
        for cut in 0..bytes.len() {
            let mut d = Decoder::default();
            let mut frames = Vec::new();
            for part in [&bytes[..cut], &bytes[cut..]] {
                d.push(part);
                while let Some(f) = d.next_frame().unwrap() {
                    frames.push(f);
                }
            }
            assert_eq!(
                frames,
                vec![Frame::Message(br#"{"a":1}"#.to_vec()), Frame::End(Ok(()))]
            );
            assert_eq!(d.pending(), 0);
        }
    }

    #[test]
    fn an_end_with_an_error_carries_it() {
        let mut d = Decoder::default();
        d.push(&encode(
            FLAG_END_STREAM,
            br#"{"error":{"code":"deadline_exceeded","message":"late"}}"#,
        ));
        let Some(Frame::End(Err(e))) = d.next_frame().unwrap() else {
            panic!("no error end");
        };
        assert_eq!(e.code, "deadline_exceeded");
    }

    #[test]
    fn oversize_compressed_and_garbled_frames_are_refused() {
        let mut d = Decoder::default();
        d.push(&[0, 0xff, 0xff, 0xff, 0xff]);
        assert!(matches!(d.next_frame(), Err(FramingError::TooLong(_))));
        let mut d = Decoder::default();
        d.push(&encode(FLAG_COMPRESSED, b"x"));
        assert_eq!(d.next_frame(), Err(FramingError::Compressed));
        let mut d = Decoder::default();
        d.push(&encode(FLAG_END_STREAM, b"not json"));
        assert_eq!(d.next_frame(), Err(FramingError::BadEnd));
    }
}
