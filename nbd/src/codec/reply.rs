//! Transmission replies: simple replies and structured reply chunks (encode for the
//! server, parse for the client).

use bytes::{BufMut, BytesMut};

use super::{CodecError, Parsed, Reader, truncate_message};
use crate::proto::*;

pub fn encode_simple_reply(buf: &mut BytesMut, error: u32, cookie: u64) {
    buf.put_u32(SIMPLE_REPLY_MAGIC);
    buf.put_u32(error);
    buf.put_u64(cookie);
}

pub fn encode_chunk_header(buf: &mut BytesMut, flags: u16, ty: u16, cookie: u64, len: u32) {
    buf.put_u32(STRUCTURED_REPLY_MAGIC);
    buf.put_u16(flags);
    buf.put_u16(ty);
    buf.put_u64(cookie);
    buf.put_u32(len);
}

/// Header (and offset) of an OFFSET_DATA chunk; the `data_len` bytes follow.
pub fn encode_offset_data_header(
    buf: &mut BytesMut,
    flags: u16,
    cookie: u64,
    offset: u64,
    data_len: u32,
) {
    encode_chunk_header(
        buf,
        flags,
        REPLY_TYPE_OFFSET_DATA,
        cookie,
        data_len.saturating_add(8),
    );
    buf.put_u64(offset);
}

pub fn encode_offset_hole(buf: &mut BytesMut, flags: u16, cookie: u64, offset: u64, len: u32) {
    encode_chunk_header(buf, flags, REPLY_TYPE_OFFSET_HOLE, cookie, 12);
    buf.put_u64(offset);
    buf.put_u32(len);
}

/// A BLOCK_STATUS chunk: context id then (length, flags) descriptors.
pub fn encode_block_status(
    buf: &mut BytesMut,
    flags: u16,
    cookie: u64,
    context: u32,
    extents: &[(u32, u32)],
) {
    let len = 4 + 8 * extents.len();
    encode_chunk_header(buf, flags, REPLY_TYPE_BLOCK_STATUS, cookie, len as u32);
    buf.put_u32(context);
    for (l, f) in extents {
        buf.put_u32(*l);
        buf.put_u32(*f);
    }
}

/// An ERROR chunk with a human-readable message.
pub fn encode_error_chunk(buf: &mut BytesMut, flags: u16, cookie: u64, error: u32, msg: &str) {
    let msg = truncate_message(msg, MAX_ERROR_MESSAGE);
    encode_chunk_header(buf, flags, REPLY_TYPE_ERROR, cookie, 6 + msg.len() as u32);
    buf.put_u32(error);
    buf.put_u16(msg.len() as u16);
    buf.put_slice(msg.as_bytes());
}

pub fn encode_none_chunk(buf: &mut BytesMut, cookie: u64) {
    encode_chunk_header(buf, REPLY_FLAG_DONE, REPLY_TYPE_NONE, cookie, 0);
}

/// The header of any reply, as the client reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyHeader {
    Simple {
        error: u32,
        cookie: u64,
    },
    Chunk {
        flags: u16,
        ty: u16,
        cookie: u64,
        len: u32,
    },
}

impl ReplyHeader {
    pub fn cookie(&self) -> u64 {
        match self {
            ReplyHeader::Simple { cookie, .. } | ReplyHeader::Chunk { cookie, .. } => *cookie,
        }
    }
}

/// Parses a simple reply header (16 bytes) or a chunk header (20 bytes); chunk
/// payloads are bounded by [`MAX_CHUNK_LEN`].
pub fn parse_reply_header(buf: &[u8]) -> Parsed<ReplyHeader> {
    let mut r = Reader::new(buf);
    let Some(magic) = r.u32() else {
        return Ok(None);
    };
    match magic {
        SIMPLE_REPLY_MAGIC => {
            let (Some(error), Some(cookie)) = (r.u32(), r.u64()) else {
                return Ok(None);
            };
            Ok(Some((
                ReplyHeader::Simple { error, cookie },
                SIMPLE_REPLY_HEADER_LEN,
            )))
        }
        STRUCTURED_REPLY_MAGIC => {
            let (Some(flags), Some(ty), Some(cookie), Some(len)) =
                (r.u16(), r.u16(), r.u64(), r.u32())
            else {
                return Ok(None);
            };
            if len > MAX_CHUNK_LEN {
                return Err(CodecError::TooLong {
                    what: "reply chunk",
                    len: u64::from(len),
                    max: u64::from(MAX_CHUNK_LEN),
                });
            }
            Ok(Some((
                ReplyHeader::Chunk {
                    flags,
                    ty,
                    cookie,
                    len,
                },
                STRUCTURED_REPLY_HEADER_LEN,
            )))
        }
        other => Err(CodecError::BadMagic {
            expected: u64::from(SIMPLE_REPLY_MAGIC),
            found: u64::from(other),
        }),
    }
}

/// The payload of a structured chunk, as the client interprets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chunk<'a> {
    None,
    /// Offset of the data and the data.
    OffsetData(u64, &'a [u8]),
    OffsetHole {
        offset: u64,
        len: u32,
    },
    BlockStatus {
        context: u32,
        extents: Vec<(u32, u32)>,
    },
    Error {
        error: u32,
        message: String,
        offset: Option<u64>,
    },
}

pub fn parse_chunk(ty: u16, payload: &[u8]) -> Result<Chunk<'_>, CodecError> {
    let mut r = Reader::new(payload);
    let chunk = match ty {
        REPLY_TYPE_NONE => Chunk::None,
        REPLY_TYPE_OFFSET_DATA => {
            let off = r.u64().ok_or(CodecError::Malformed("OFFSET_DATA"))?;
            let data = r.rest();
            if data.is_empty() {
                return Err(CodecError::Malformed("empty OFFSET_DATA"));
            }
            Chunk::OffsetData(off, data)
        }
        REPLY_TYPE_OFFSET_HOLE => {
            let (Some(offset), Some(len)) = (r.u64(), r.u32()) else {
                return Err(CodecError::Malformed("OFFSET_HOLE"));
            };
            if len == 0 {
                return Err(CodecError::Malformed("empty OFFSET_HOLE"));
            }
            Chunk::OffsetHole { offset, len }
        }
        REPLY_TYPE_BLOCK_STATUS => {
            let context = r.u32().ok_or(CodecError::Malformed("BLOCK_STATUS"))?;
            if r.remaining() == 0 || !r.remaining().is_multiple_of(8) {
                return Err(CodecError::Malformed("BLOCK_STATUS descriptors"));
            }
            let mut extents = Vec::with_capacity(r.remaining() / 8);
            while let (Some(l), Some(f)) = (r.u32(), r.u32()) {
                if l == 0 {
                    return Err(CodecError::Malformed("zero-length extent"));
                }
                extents.push((l, f));
            }
            Chunk::BlockStatus { context, extents }
        }
        t if t & (1 << 15) != 0 => {
            let (Some(error), Some(mlen)) = (r.u32(), r.u16()) else {
                return Err(CodecError::Malformed("error chunk"));
            };
            let msg = r
                .bytes(usize::from(mlen))
                .ok_or(CodecError::Malformed("error chunk message length"))?;
            let message = String::from_utf8_lossy(msg).into_owned();
            let offset = if t == REPLY_TYPE_ERROR_OFFSET {
                Some(r.u64().ok_or(CodecError::Malformed("ERROR_OFFSET"))?)
            } else {
                r.rest();
                None
            };
            Chunk::Error {
                error,
                message,
                offset,
            }
        }
        _ => return Err(CodecError::Malformed("unknown chunk type")),
    };
    if r.remaining() != 0 {
        return Err(CodecError::Malformed("chunk trailing bytes"));
    }
    Ok(chunk)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(b: &[u8]) -> (ReplyHeader, usize) {
        parse_reply_header(b).unwrap().unwrap()
    }

    #[test]
    fn simple_reply_round_trip() {
        let mut b = BytesMut::new();
        encode_simple_reply(&mut b, errno::EINVAL, 42);
        assert_eq!(
            header(&b),
            (
                ReplyHeader::Simple {
                    error: 22,
                    cookie: 42
                },
                16
            )
        );
        assert_eq!(parse_reply_header(&b[..15]), Ok(None));
    }

    #[test]
    fn chunks_round_trip() {
        let mut b = BytesMut::new();
        encode_offset_data_header(&mut b, 0, 7, 4096, 3);
        b.put_slice(b"abc");
        let (h, n) = header(&b);
        let ReplyHeader::Chunk { ty, len, .. } = h else {
            panic!("not a chunk")
        };
        assert_eq!(len, 11);
        assert_eq!(
            parse_chunk(ty, &b[n..]),
            Ok(Chunk::OffsetData(4096, &b"abc"[..]))
        );

        let mut b = BytesMut::new();
        encode_offset_hole(&mut b, REPLY_FLAG_DONE, 7, 0, 512);
        let (h, n) = header(&b);
        let ReplyHeader::Chunk { ty, flags, .. } = h else {
            panic!("not a chunk")
        };
        assert_eq!(flags, REPLY_FLAG_DONE);
        assert_eq!(
            parse_chunk(ty, &b[n..]),
            Ok(Chunk::OffsetHole {
                offset: 0,
                len: 512
            })
        );

        let mut b = BytesMut::new();
        encode_block_status(&mut b, REPLY_FLAG_DONE, 1, 1, &[(4096, 0), (512, 3)]);
        let (h, n) = header(&b);
        let ReplyHeader::Chunk { ty, .. } = h else {
            panic!("not a chunk")
        };
        assert_eq!(
            parse_chunk(ty, &b[n..]),
            Ok(Chunk::BlockStatus {
                context: 1,
                extents: vec![(4096, 0), (512, 3)]
            })
        );

        let mut b = BytesMut::new();
        encode_error_chunk(&mut b, REPLY_FLAG_DONE, 1, errno::EIO, "disk on fire");
        let (h, n) = header(&b);
        let ReplyHeader::Chunk { ty, .. } = h else {
            panic!("not a chunk")
        };
        assert_eq!(
            parse_chunk(ty, &b[n..]),
            Ok(Chunk::Error {
                error: 5,
                message: "disk on fire".into(),
                offset: None
            })
        );
    }

    #[test]
    fn bad_magic_and_huge_chunks_are_rejected() {
        assert!(parse_reply_header(&[0xde, 0xad, 0xbe, 0xef]).is_err());
        let mut b = BytesMut::new();
        encode_chunk_header(&mut b, 0, 1, 1, MAX_CHUNK_LEN + 1);
        assert!(parse_reply_header(&b).is_err());
    }
}
