//! Admin framing: a 4-byte big-endian length, then that many bytes of one prost message
//! ([`codec`], a `LengthDelimitedCodec`). Readers refuse a length above
//! [`MAX_FRAME_BYTES`] before allocating. Blocking functions serve the client; the
//! `tokio` feature adds the async pair for servers.

use std::io::{Read, Write};

use bytes::BytesMut;
use tokio_util::codec::{Decoder, Encoder, LengthDelimitedCodec};

/// Largest admin frame (requests and responses; list pages are bounded to fit).
pub const MAX_FRAME_BYTES: usize = 4 << 20;

/// Framing errors.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The announced length exceeds the limit.
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame")]
    Truncated,
    /// I/O failure.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// Bytes of the length field.
const HEAD: usize = 4;

/// The admin wire format as a codec: a 4-byte big-endian length, then that many bytes;
/// lengths above [`MAX_FRAME_BYTES`] are refused both ways.
pub fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .big_endian()
        .length_field_offset(0)
        .length_field_length(HEAD)
        .length_adjustment(0)
        .max_frame_length(MAX_FRAME_BYTES)
        .new_codec()
}

/// What the codec makes of a received length field.
enum Started {
    /// The frame is empty: nothing follows.
    Empty,
    /// The zeroed buffer the payload is read into; [`finish_frame`] cuts the frame.
    Payload(BytesMut),
}

/// Checks a received length field with `codec`, refusing a length above the limit
/// before anything is allocated.
fn start_frame(codec: &mut LengthDelimitedCodec, head: [u8; HEAD]) -> Result<Started, FrameError> {
    let len = u32::from_be_bytes(head) as usize;
    let mut buf = BytesMut::from(&head[..]);
    match codec.decode(&mut buf) {
        Ok(Some(_)) => Ok(Started::Empty),
        // The codec took the length field and waits for the payload.
        Ok(None) => {
            buf.resize(len, 0);
            Ok(Started::Payload(buf))
        }
        Err(_) => Err(FrameError::TooLarge {
            len,
            max: MAX_FRAME_BYTES,
        }),
    }
}

/// The frame the codec cuts from a payload buffer the reader filled.
fn finish_frame(
    codec: &mut LengthDelimitedCodec,
    mut buf: BytesMut,
) -> Result<Vec<u8>, FrameError> {
    match codec.decode(&mut buf) {
        Ok(Some(frame)) => Ok(frame.into()),
        Ok(None) | Err(_) => Err(FrameError::Truncated),
    }
}

/// One frame (length field and payload) encoded by the codec.
fn encode_frame(payload: &[u8]) -> Result<BytesMut, FrameError> {
    let mut buf = BytesMut::with_capacity(HEAD + payload.len());
    codec()
        .encode(payload, &mut buf)
        .map_err(|_| FrameError::TooLarge {
            len: payload.len(),
            max: MAX_FRAME_BYTES,
        })?;
    Ok(buf)
}

fn truncated(e: std::io::Error) -> FrameError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        FrameError::Truncated
    } else {
        FrameError::Io(e)
    }
}

/// Reads one frame; `Ok(None)` at a clean end of stream between frames. Reads exactly
/// the frame's bytes, so the next call starts at the next frame.
pub fn read_frame<R: Read>(r: &mut R) -> Result<Option<Vec<u8>>, FrameError> {
    let mut head = [0u8; HEAD];
    let mut got = 0;
    while got < HEAD {
        match r.read(&mut head[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(FrameError::Truncated),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let mut codec = codec();
    match start_frame(&mut codec, head)? {
        Started::Empty => Ok(Some(Vec::new())),
        Started::Payload(mut buf) => {
            r.read_exact(&mut buf).map_err(truncated)?;
            finish_frame(&mut codec, buf).map(Some)
        }
    }
}

/// Writes one frame and flushes.
pub fn write_frame<W: Write>(w: &mut W, payload: &[u8]) -> Result<(), FrameError> {
    let buf = encode_frame(payload)?;
    w.write_all(&buf)?;
    w.flush()?;
    Ok(())
}

/// Async framing for servers.
#[cfg(feature = "tokio")]
pub mod nonblocking {
    use super::{
        FrameError, HEAD, Started, codec, encode_frame, finish_frame, start_frame, truncated,
    };
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

    /// Reads one frame; `Ok(None)` at a clean end of stream between frames. Reads
    /// exactly the frame's bytes, so the next call starts at the next frame.
    pub async fn read_frame<R: AsyncRead + Unpin>(
        r: &mut R,
    ) -> Result<Option<Vec<u8>>, FrameError> {
        let mut head = [0u8; HEAD];
        let mut got = 0;
        while got < HEAD {
            let n = r.read(&mut head[got..]).await?;
            if n == 0 {
                return if got == 0 {
                    Ok(None)
                } else {
                    Err(FrameError::Truncated)
                };
            }
            got += n;
        }
        let mut codec = codec();
        match start_frame(&mut codec, head)? {
            Started::Empty => Ok(Some(Vec::new())),
            Started::Payload(mut buf) => {
                r.read_exact(&mut buf).await.map_err(truncated)?;
                finish_frame(&mut codec, buf).map(Some)
            }
        }
    }

    /// Writes one frame and flushes.
    pub async fn write_frame<W: AsyncWrite + Unpin>(
        w: &mut W,
        payload: &[u8],
    ) -> Result<(), FrameError> {
        let buf = encode_frame(payload)?;
        w.write_all(&buf).await?;
        w.flush().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip_and_limits() {
        let mut buf = Vec::new();
        write_frame(&mut buf, b"hello").expect("write");
        write_frame(&mut buf, b"").expect("write");
        let mut r = buf.as_slice();
        assert_eq!(read_frame(&mut r).expect("read"), Some(b"hello".to_vec()));
        assert_eq!(read_frame(&mut r).expect("read"), Some(Vec::new()));
        assert_eq!(read_frame(&mut r).expect("eof"), None);
        let mut big = ((MAX_FRAME_BYTES + 1) as u32).to_be_bytes().to_vec();
        big.extend_from_slice(&[0; 8]);
        assert!(matches!(
            read_frame(&mut big.as_slice()),
            Err(FrameError::TooLarge { .. })
        ));
        assert!(matches!(
            read_frame(&mut &[0u8, 0, 0, 9, 1][..]),
            Err(FrameError::Truncated)
        ));
        assert!(matches!(
            read_frame(&mut &[0u8, 0][..]),
            Err(FrameError::Truncated)
        ));
        assert!(write_frame(&mut Vec::new(), &vec![0; MAX_FRAME_BYTES + 1]).is_err());
    }

    #[test]
    fn wire_format_is_a_big_endian_u32_length_then_the_payload() {
        let mut buf = Vec::new();
        write_frame(&mut buf, b"abc").expect("write");
        assert_eq!(buf, [0, 0, 0, 3, b'a', b'b', b'c']);
        let mut r = &[0u8, 0, 1, 0][..];
        assert!(matches!(read_frame(&mut r), Err(FrameError::Truncated)));
        let mut at_limit = (MAX_FRAME_BYTES as u32).to_be_bytes().to_vec();
        at_limit.resize(4 + MAX_FRAME_BYTES, 7);
        let got = read_frame(&mut at_limit.as_slice()).expect("read");
        assert_eq!(got.map(|f| f.len()), Some(MAX_FRAME_BYTES));
    }

    #[cfg(feature = "tokio")]
    #[test]
    fn async_pair_matches_the_blocking_one() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let mut buf = Vec::new();
            nonblocking::write_frame(&mut buf, b"hello")
                .await
                .expect("write");
            nonblocking::write_frame(&mut buf, b"")
                .await
                .expect("write");
            let mut blocking = Vec::new();
            write_frame(&mut blocking, b"hello").expect("write");
            write_frame(&mut blocking, b"").expect("write");
            assert_eq!(buf, blocking);
            let mut r = buf.as_slice();
            let first = nonblocking::read_frame(&mut r).await.expect("read");
            assert_eq!(first, Some(b"hello".to_vec()));
            let second = nonblocking::read_frame(&mut r).await.expect("read");
            assert_eq!(second, Some(Vec::new()));
            assert_eq!(nonblocking::read_frame(&mut r).await.expect("eof"), None);
            let mut big = ((MAX_FRAME_BYTES + 1) as u32).to_be_bytes().to_vec();
            big.extend_from_slice(&[0; 8]);
            assert!(matches!(
                nonblocking::read_frame(&mut big.as_slice()).await,
                Err(FrameError::TooLarge { .. })
            ));
            assert!(matches!(
                nonblocking::read_frame(&mut &[0u8, 0, 0, 9, 1][..]).await,
                Err(FrameError::Truncated)
            ));
        });
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut r = bytes.as_slice();
            while let Ok(Some(_)) = read_frame(&mut r) {}
        }
    }
}
