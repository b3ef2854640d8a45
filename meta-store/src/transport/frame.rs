//! Length-prefixed frames: a 4-byte big-endian length, then that many bytes ([`codec`], a
//! `LengthDelimitedCodec`). The reader refuses a length above its limit before
//! allocating anything. Generic over
//! `AsyncRead`/`AsyncWrite` so a TLS stream slots in unchanged.

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::codec::{Decoder, Encoder, LengthDelimitedCodec};

/// Frame errors.
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

/// The wire format as a codec: a 4-byte big-endian length, then that many bytes;
/// lengths above `max` are refused both ways (and above `u32::MAX` always).
pub fn codec(max: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .big_endian()
        .length_field_offset(0)
        .length_field_length(HEAD)
        .length_adjustment(0)
        .max_frame_length(max)
        .new_codec()
}

/// The length a frame header at the start of `b` announces (0 when `b` is shorter).
fn announced(b: &[u8]) -> usize {
    b.get(..HEAD)
        .and_then(|h| <[u8; HEAD]>::try_from(h).ok())
        .map_or(0, |h| u32::from_be_bytes(h) as usize)
}

/// Reads one frame; `Ok(None)` when the stream ends cleanly between frames. Reads
/// exactly the frame's bytes, so the next call starts at the next frame.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
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
    let len = announced(&head);
    let mut codec = codec(max);
    let mut buf = BytesMut::from(&head[..]);
    // The codec checks the length before anything is allocated for the payload.
    match codec.decode(&mut buf) {
        Ok(Some(empty)) => return Ok(Some(empty.into())),
        Ok(None) => {}
        Err(_) => return Err(FrameError::TooLarge { len, max }),
    }
    buf.resize(len, 0);
    r.read_exact(&mut buf).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            FrameError::Truncated
        } else {
            FrameError::Io(e)
        }
    })?;
    match codec.decode(&mut buf) {
        Ok(Some(frame)) => Ok(Some(frame.into())),
        Ok(None) | Err(_) => Err(FrameError::Truncated),
    }
}

/// Writes one frame (not flushed).
pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    payload: &[u8],
) -> Result<(), FrameError> {
    let mut buf = BytesMut::with_capacity(HEAD + payload.len());
    codec(usize::MAX)
        .encode(payload, &mut buf)
        .map_err(|_| FrameError::TooLarge {
            len: payload.len(),
            max: u32::MAX as usize,
        })?;
    w.write_all(&buf).await?;
    Ok(())
}

/// Splits complete frames off the front of a byte buffer (the synchronous form of
/// [`read_frame`], used by the fuzz target and property tests): returns the frames and
/// the number of bytes consumed, or the first error.
pub fn split_frames(buf: &[u8], max: usize) -> Result<(Vec<&[u8]>, usize), FrameError> {
    let mut codec = codec(max);
    let mut rest = BytesMut::from(buf);
    let mut out = Vec::new();
    let mut at = 0;
    loop {
        match codec.decode(&mut rest) {
            Ok(Some(frame)) => {
                let end = at + HEAD + frame.len();
                out.push(&buf[at + HEAD..end]);
                at = end;
            }
            Ok(None) => break,
            Err(_) => {
                return Err(FrameError::TooLarge {
                    len: announced(&buf[at..]),
                    max,
                });
            }
        }
    }
    Ok((out, at))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[tokio::test]
    async fn round_trip_and_limits() {
        let mut buf = Vec::new();
        write_frame(&mut buf, b"hello").await.expect("write");
        write_frame(&mut buf, b"").await.expect("write");
        let mut r = buf.as_slice();
        assert_eq!(
            read_frame(&mut r, 16).await.expect("read"),
            Some(b"hello".to_vec())
        );
        assert_eq!(
            read_frame(&mut r, 16).await.expect("read"),
            Some(Vec::new())
        );
        assert!(read_frame(&mut r, 16).await.expect("eof").is_none());

        let mut r = buf.as_slice();
        assert!(matches!(
            read_frame(&mut r, 4).await,
            Err(FrameError::TooLarge { len: 5, max: 4 })
        ));
        let mut r = &buf[..6];
        assert!(matches!(
            read_frame(&mut r, 16).await,
            Err(FrameError::Truncated)
        ));
        let mut r = &buf[..2];
        assert!(matches!(
            read_frame(&mut r, 16).await,
            Err(FrameError::Truncated)
        ));
        let huge = [0xffu8, 0xff, 0xff, 0xff];
        let mut r = &huge[..];
        assert!(matches!(
            read_frame(&mut r, 1 << 20).await,
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[tokio::test]
    async fn wire_format_is_a_big_endian_u32_length_then_the_payload() {
        let mut buf = Vec::new();
        write_frame(&mut buf, b"abc").await.expect("write");
        assert_eq!(buf, [0, 0, 0, 3, b'a', b'b', b'c']);
        let mut r = buf.as_slice();
        assert_eq!(
            read_frame(&mut r, 3).await.expect("at the limit"),
            Some(b"abc".to_vec())
        );
        let (frames, used) = split_frames(&buf, 3).expect("at the limit");
        assert_eq!((frames, used), (vec![&b"abc"[..]], 7));
        assert!(matches!(
            split_frames(&buf, 2),
            Err(FrameError::TooLarge { len: 3, max: 2 })
        ));
    }

    proptest! {
        #[test]
        fn split_matches_what_was_written(payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..8), cut in 0usize..600) {
            let mut buf = Vec::new();
            for p in &payloads {
                buf.extend_from_slice(&(p.len() as u32).to_be_bytes());
                buf.extend_from_slice(p);
            }
            let (frames, used) = split_frames(&buf, 64).expect("within limit");
            prop_assert_eq!(frames.len(), payloads.len());
            prop_assert_eq!(used, buf.len());
            let cut = cut.min(buf.len());
            let (frames, used) = split_frames(&buf[..cut], 64).expect("within limit");
            prop_assert!(used <= cut);
            for (f, p) in frames.iter().zip(&payloads) {
                prop_assert_eq!(*f, p.as_slice());
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            if let Ok((frames, used)) = split_frames(&bytes, 32) {
                prop_assert!(used <= bytes.len());
                prop_assert!(frames.iter().all(|f| f.len() <= 32));
            }
        }
    }
}
