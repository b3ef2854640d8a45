//! Admin framing: a 4-byte big-endian length, then that many bytes of one prost message.
//! Readers refuse a length above [`MAX_FRAME_BYTES`] before allocating. Blocking
//! functions serve the client; the `tokio` feature adds the async pair for servers.

use std::io::{Read, Write};

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

fn check_len(len: usize) -> Result<[u8; 4], FrameError> {
    if len > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge {
            len,
            max: MAX_FRAME_BYTES,
        });
    }
    Ok((len as u32).to_be_bytes())
}

/// Reads one frame; `Ok(None)` at a clean end of stream between frames.
pub fn read_frame<R: Read>(r: &mut R) -> Result<Option<Vec<u8>>, FrameError> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(FrameError::Truncated),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let len = u32::from_be_bytes(len) as usize;
    check_len(len)?;
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            FrameError::Truncated
        } else {
            FrameError::Io(e)
        }
    })?;
    Ok(Some(buf))
}

/// Writes one frame and flushes.
pub fn write_frame<W: Write>(w: &mut W, payload: &[u8]) -> Result<(), FrameError> {
    let len = check_len(payload.len())?;
    let mut buf = Vec::with_capacity(4 + payload.len());
    buf.extend_from_slice(&len);
    buf.extend_from_slice(payload);
    w.write_all(&buf)?;
    w.flush()?;
    Ok(())
}

/// Async framing for servers.
#[cfg(feature = "tokio")]
pub mod nonblocking {
    use super::{FrameError, check_len};
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

    /// Reads one frame; `Ok(None)` at a clean end of stream between frames.
    pub async fn read_frame<R: AsyncRead + Unpin>(
        r: &mut R,
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
        check_len(len)?;
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

    /// Writes one frame and flushes.
    pub async fn write_frame<W: AsyncWrite + Unpin>(
        w: &mut W,
        payload: &[u8],
    ) -> Result<(), FrameError> {
        let len = check_len(payload.len())?;
        w.write_all(&len).await?;
        w.write_all(payload).await?;
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

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut r = bytes.as_slice();
            while let Ok(Some(_)) = read_frame(&mut r) {}
        }
    }
}
