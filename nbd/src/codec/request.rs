//! Transmission requests: the 28-byte header (a WRITE's payload follows it on the
//! wire and is handled by the caller, which knows the length from the header).

use bytes::{BufMut, BytesMut};

use super::{CodecError, Parsed, Reader};
use crate::proto::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub flags: u16,
    pub cmd: u16,
    pub cookie: u64,
    pub offset: u64,
    pub len: u32,
}

impl Request {
    /// Bytes of payload that follow this header on the wire.
    pub fn payload_len(&self) -> u32 {
        if self.cmd == CMD_WRITE { self.len } else { 0 }
    }
}

/// Parses one request header. A wrong magic cannot be resynchronised: the caller
/// closes the connection.
pub fn parse_request_header(buf: &[u8]) -> Parsed<Request> {
    let mut r = Reader::new(buf);
    let (Some(magic), Some(flags), Some(cmd), Some(cookie), Some(offset), Some(len)) =
        (r.u32(), r.u16(), r.u16(), r.u64(), r.u64(), r.u32())
    else {
        return Ok(None);
    };
    if magic != REQUEST_MAGIC {
        return Err(CodecError::BadMagic {
            expected: u64::from(REQUEST_MAGIC),
            found: u64::from(magic),
        });
    }
    Ok(Some((
        Request {
            flags,
            cmd,
            cookie,
            offset,
            len,
        },
        REQUEST_HEADER_LEN,
    )))
}

pub fn encode_request(buf: &mut BytesMut, req: &Request) {
    buf.put_u32(REQUEST_MAGIC);
    buf.put_u16(req.flags);
    buf.put_u16(req.cmd);
    buf.put_u64(req.cookie);
    buf.put_u64(req.offset);
    buf.put_u32(req.len);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trip(flags: u16, cmd: u16, cookie: u64, offset: u64, len: u32) {
            let req = Request { flags, cmd, cookie, offset, len };
            let mut b = BytesMut::new();
            encode_request(&mut b, &req);
            prop_assert_eq!(parse_request_header(&b), Ok(Some((req, REQUEST_HEADER_LEN))));
            for cut in 0..REQUEST_HEADER_LEN {
                prop_assert_eq!(parse_request_header(&b[..cut]), Ok(None));
            }
        }

        #[test]
        fn any_bytes_parse_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = parse_request_header(&bytes);
        }
    }
}
