//! The reply queue of one connection: small replies are copied into one staging
//! buffer, large read payloads are queued as they are (no copy), and everything is
//! written with vectored writes, as much per syscall as the socket takes.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::AsyncWrite;

/// Payloads up to this size are copied into the staging buffer; larger ones are
/// queued by reference.
const COPY_MAX: usize = 16 * 1024;
/// Most buffers handed to one vectored write.
const MAX_IOVECS: usize = 64;

#[derive(Debug, Default)]
pub struct OutQueue {
    segs: VecDeque<Bytes>,
    segs_len: usize,
    staging: BytesMut,
}

impl OutQueue {
    pub fn new() -> Self {
        OutQueue {
            segs: VecDeque::new(),
            segs_len: 0,
            staging: BytesMut::with_capacity(64 * 1024),
        }
    }

    /// Where headers and small replies are encoded.
    pub fn staging(&mut self) -> &mut BytesMut {
        &mut self.staging
    }

    pub fn push_data(&mut self, data: Bytes) {
        if data.len() <= COPY_MAX {
            self.staging.put_slice(&data);
        } else {
            self.seal();
            self.segs_len += data.len();
            self.segs.push_back(data);
        }
    }

    /// Moves the staging bytes behind the queued segments.
    fn seal(&mut self) {
        if !self.staging.is_empty() {
            let b = self.staging.split().freeze();
            self.segs_len += b.len();
            self.segs.push_back(b);
        }
    }

    pub fn len(&self) -> usize {
        self.segs_len + self.staging.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes until the queue is empty (`Ready(Ok(true))` if anything was written,
    /// `Ready(Ok(false))` if it was already empty) or the socket is full (`Pending`,
    /// with whatever was written removed from the queue).
    pub fn poll_write<W: AsyncWrite + Unpin + ?Sized>(
        &mut self,
        w: &mut W,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<bool>> {
        let mut wrote = false;
        loop {
            self.seal();
            if self.segs.is_empty() {
                return Poll::Ready(Ok(wrote));
            }
            let mut iov = [IoSlice::new(&[]); MAX_IOVECS];
            let mut n_iov = 0;
            for (slot, seg) in iov.iter_mut().zip(self.segs.iter()) {
                *slot = IoSlice::new(seg);
                n_iov += 1;
            }
            let res = Pin::new(&mut *w).poll_write_vectored(cx, &iov[..n_iov]);
            match res {
                Poll::Pending => {
                    return if wrote {
                        Poll::Ready(Ok(true))
                    } else {
                        Poll::Pending
                    };
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(mut n)) => {
                    wrote = true;
                    self.segs_len -= n;
                    while n > 0 {
                        let Some(front) = self.segs.front_mut() else {
                            break;
                        };
                        if front.len() <= n {
                            n -= front.len();
                            self.segs.pop_front();
                        } else {
                            front.advance(n);
                            n = 0;
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn order_is_kept_across_small_and_large_pieces() {
        let mut q = OutQueue::new();
        q.staging().put_slice(b"head");
        q.push_data(Bytes::from(vec![1u8; 100_000]));
        q.staging().put_slice(b"tail");
        q.push_data(Bytes::from_static(b"small"));
        assert_eq!(q.len(), 4 + 100_000 + 4 + 5);
        let mut sink: Vec<u8> = Vec::new();
        std::future::poll_fn(|cx| q.poll_write(&mut sink, cx))
            .await
            .expect("write");
        assert!(q.is_empty());
        assert_eq!(&sink[..4], b"head");
        assert_eq!(&sink[100_004..], b"tailsmall");
    }
}
