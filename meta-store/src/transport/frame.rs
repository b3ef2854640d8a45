//! Length-prefixed frames: a 4-byte big-endian length, then that many bytes. The reader
//! refuses a length above its limit before allocating anything. Generic over
//! `AsyncRead`/`AsyncWrite` so a TLS stream slots in unchanged.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

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

/// Reads one frame; `Ok(None)` when the stream ends cleanly between frames.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
) -> Result<Option<Vec<u8>>, FrameError> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let n = r.read(&mut len[got..]).await?;
        if n == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(FrameError::Truncated)
            };
        }
        got += n;
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            FrameError::Truncated
        } else {
            FrameError::Io(e)
        }
    })?;
    Ok(Some(buf))
}

/// Writes one frame (not flushed).
pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    payload: &[u8],
) -> Result<(), FrameError> {
    let len = u32::try_from(payload.len()).map_err(|_| FrameError::TooLarge {
        len: payload.len(),
        max: u32::MAX as usize,
    })?;
    w.write_all(&len.to_be_bytes()).await?;
    w.write_all(payload).await?;
    Ok(())
}

/// Splits complete frames off the front of a byte buffer (the synchronous form of
/// [`read_frame`], used by the fuzz target and property tests): returns the frames and
/// the number of bytes consumed, or the first error.
pub fn split_frames(buf: &[u8], max: usize) -> Result<(Vec<&[u8]>, usize), FrameError> {
    let mut out = Vec::new();
    let mut at = 0;
    while buf.len() - at >= 4 {
        let mut len = [0u8; 4];
        len.copy_from_slice(&buf[at..at + 4]);
        let len = u32::from_be_bytes(len) as usize;
        if len > max {
            return Err(FrameError::TooLarge { len, max });
        }
        if buf.len() - at - 4 < len {
            break;
        }
        out.push(&buf[at + 4..at + 4 + len]);
        at += 4 + len;
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
