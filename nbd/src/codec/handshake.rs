//! The fixed-newstyle greeting, the client flags, and the reply that ends negotiation
//! after NBD_OPT_EXPORT_NAME.

use bytes::{BufMut, BytesMut};

use super::{CodecError, Parsed, Reader};
use crate::proto::*;

/// Server greeting: NBDMAGIC, IHAVEOPT, handshake flags.
pub fn encode_greeting(buf: &mut BytesMut, flags: u16) {
    buf.put_u64(NBDMAGIC);
    buf.put_u64(IHAVEOPT);
    buf.put_u16(flags);
}

/// Client side: the server's handshake flags. Oldstyle servers are refused.
pub fn parse_greeting(buf: &[u8]) -> Parsed<u16> {
    let mut r = Reader::new(buf);
    let (Some(magic), Some(opt), Some(flags)) = (r.u64(), r.u64(), r.u16()) else {
        return Ok(None);
    };
    if magic != NBDMAGIC {
        return Err(CodecError::BadMagic {
            expected: NBDMAGIC,
            found: magic,
        });
    }
    if opt != IHAVEOPT {
        return Err(CodecError::BadMagic {
            expected: IHAVEOPT,
            found: opt,
        });
    }
    Ok(Some((flags, GREETING_LEN)))
}

pub fn encode_client_flags(buf: &mut BytesMut, flags: u32) {
    buf.put_u32(flags);
}

/// Server side: the client flags, rejected when they hold a bit we do not know or
/// did not offer (the spec's MUST).
pub fn parse_client_flags(buf: &[u8], offered: u16) -> Parsed<u32> {
    let mut r = Reader::new(buf);
    let Some(flags) = r.u32() else {
        return Ok(None);
    };
    let mut allowed = CLIENT_FLAGS_KNOWN;
    if offered & FLAG_NO_ZEROES == 0 {
        allowed &= !FLAG_C_NO_ZEROES;
    }
    if offered & FLAG_FIXED_NEWSTYLE == 0 {
        allowed &= !FLAG_C_FIXED_NEWSTYLE;
    }
    if flags & !allowed != 0 {
        return Err(CodecError::Malformed("client flags"));
    }
    Ok(Some((flags, 4)))
}

/// The reply to NBD_OPT_EXPORT_NAME: size, transmission flags, and 124 zero bytes
/// unless the client negotiated NO_ZEROES.
pub fn encode_export_name_reply(buf: &mut BytesMut, size: u64, tflags: u16, no_zeroes: bool) {
    buf.put_u64(size);
    buf.put_u16(tflags);
    if !no_zeroes {
        buf.put_bytes(0, EXPORT_NAME_ZEROES);
    }
}

/// Client side of [`encode_export_name_reply`]: (size, transmission flags).
pub fn parse_export_name_reply(buf: &[u8], no_zeroes: bool) -> Parsed<(u64, u16)> {
    let need = 10 + if no_zeroes { 0 } else { EXPORT_NAME_ZEROES };
    let mut r = Reader::new(buf);
    let (Some(size), Some(flags)) = (r.u64(), r.u16()) else {
        return Ok(None);
    };
    if buf.len() < need {
        return Ok(None);
    }
    Ok(Some(((size, flags), need)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greeting_round_trip() {
        let mut b = BytesMut::new();
        encode_greeting(&mut b, FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
        assert_eq!(b.len(), GREETING_LEN);
        for cut in 0..b.len() {
            assert_eq!(parse_greeting(&b[..cut]), Ok(None));
        }
        assert_eq!(parse_greeting(&b), Ok(Some((3, GREETING_LEN))));
        b[0] ^= 1;
        assert!(parse_greeting(&b).is_err());
    }

    #[test]
    fn client_flags_must_match_the_offer() {
        let offered = FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES;
        assert_eq!(parse_client_flags(&[0, 0, 0, 3], offered), Ok(Some((3, 4))));
        assert!(parse_client_flags(&[0, 0, 0, 4], offered).is_err());
        assert!(parse_client_flags(&[0, 0, 0, 2], FLAG_FIXED_NEWSTYLE).is_err());
        assert_eq!(parse_client_flags(&[0, 0], offered), Ok(None));
    }

    #[test]
    fn export_name_reply_round_trip() {
        for nz in [false, true] {
            let mut b = BytesMut::new();
            encode_export_name_reply(&mut b, 1 << 30, 0x1234, nz);
            assert_eq!(parse_export_name_reply(&b[..b.len() - 1], nz), Ok(None));
            assert_eq!(
                parse_export_name_reply(&b, nz),
                Ok(Some(((1 << 30, 0x1234), b.len())))
            );
        }
    }
}
