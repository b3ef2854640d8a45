//! Options (client to server during negotiation) and option replies (server to
//! client): headers, the payloads of the options this implementation understands, and
//! the reply payloads.

use bytes::{BufMut, BytesMut};

use super::{CodecError, Parsed, Reader, parse_string, truncate_message};
use crate::proto::*;

/// Header of an option: IHAVEOPT, option, payload length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionHeader {
    pub opt: u32,
    pub len: u32,
}

pub fn parse_option_header(buf: &[u8]) -> Parsed<OptionHeader> {
    let mut r = Reader::new(buf);
    let (Some(magic), Some(opt), Some(len)) = (r.u64(), r.u32(), r.u32()) else {
        return Ok(None);
    };
    if magic != IHAVEOPT {
        return Err(CodecError::BadMagic {
            expected: IHAVEOPT,
            found: magic,
        });
    }
    Ok(Some((OptionHeader { opt, len }, OPTION_HEADER_LEN)))
}

/// Client side: one whole option.
pub fn encode_option(buf: &mut BytesMut, opt: u32, payload: &[u8]) {
    buf.put_u64(IHAVEOPT);
    buf.put_u32(opt);
    buf.put_u32(payload.len() as u32);
    buf.put_slice(payload);
}

/// Payload of NBD_OPT_INFO / NBD_OPT_GO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfoRequest {
    pub name: String,
    pub requests: Vec<u16>,
}

pub fn parse_info_request(payload: &[u8]) -> Result<InfoRequest, CodecError> {
    let mut r = Reader::new(payload);
    let name_len = r.u32().ok_or(CodecError::Malformed("INFO/GO payload"))? as usize;
    let name = r
        .bytes(name_len)
        .ok_or(CodecError::Malformed("INFO/GO export name length"))?;
    let name = parse_string(name)?;
    let n = r
        .u16()
        .ok_or(CodecError::Malformed("INFO/GO request count"))? as usize;
    if n > MAX_INFO_REQUESTS {
        return Err(CodecError::TooLong {
            what: "information request list",
            len: n as u64,
            max: MAX_INFO_REQUESTS as u64,
        });
    }
    let mut requests = Vec::with_capacity(n);
    for _ in 0..n {
        requests.push(
            r.u16()
                .ok_or(CodecError::Malformed("INFO/GO request list"))?,
        );
    }
    if r.remaining() != 0 {
        return Err(CodecError::Malformed("INFO/GO trailing bytes"));
    }
    Ok(InfoRequest { name, requests })
}

pub fn encode_info_request(buf: &mut BytesMut, req: &InfoRequest) {
    buf.put_u32(req.name.len() as u32);
    buf.put_slice(req.name.as_bytes());
    buf.put_u16(req.requests.len() as u16);
    for r in &req.requests {
        buf.put_u16(*r);
    }
}

/// Payload of NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaContextRequest {
    pub export: String,
    pub queries: Vec<String>,
}

pub fn parse_meta_context_request(payload: &[u8]) -> Result<MetaContextRequest, CodecError> {
    let mut r = Reader::new(payload);
    let name_len = r
        .u32()
        .ok_or(CodecError::Malformed("meta context payload"))? as usize;
    let name = r
        .bytes(name_len)
        .ok_or(CodecError::Malformed("meta context export name length"))?;
    let export = parse_string(name)?;
    let n = r
        .u32()
        .ok_or(CodecError::Malformed("meta context query count"))?;
    if n > MAX_META_QUERIES {
        return Err(CodecError::TooLong {
            what: "meta context query list",
            len: u64::from(n),
            max: u64::from(MAX_META_QUERIES),
        });
    }
    let mut queries = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let len = r.u32().ok_or(CodecError::Malformed("meta context query"))? as usize;
        let q = r
            .bytes(len)
            .ok_or(CodecError::Malformed("meta context query length"))?;
        queries.push(parse_string(q)?);
    }
    if r.remaining() != 0 {
        return Err(CodecError::Malformed("meta context trailing bytes"));
    }
    Ok(MetaContextRequest { export, queries })
}

pub fn encode_meta_context_request(buf: &mut BytesMut, req: &MetaContextRequest) {
    buf.put_u32(req.export.len() as u32);
    buf.put_slice(req.export.as_bytes());
    buf.put_u32(req.queries.len() as u32);
    for q in &req.queries {
        buf.put_u32(q.len() as u32);
        buf.put_slice(q.as_bytes());
    }
}

/// Header of an option reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionReplyHeader {
    pub opt: u32,
    pub reply: u32,
    pub len: u32,
}

pub fn encode_option_reply(buf: &mut BytesMut, opt: u32, reply: u32, payload: &[u8]) {
    buf.put_u64(REPLY_MAGIC_OPT);
    buf.put_u32(opt);
    buf.put_u32(reply);
    buf.put_u32(payload.len() as u32);
    buf.put_slice(payload);
}

/// An error reply whose payload is a message for humans (cut to a sane length).
pub fn encode_option_error(buf: &mut BytesMut, opt: u32, reply: u32, msg: &str) {
    encode_option_reply(
        buf,
        opt,
        reply,
        truncate_message(msg, MAX_ERROR_MESSAGE).as_bytes(),
    );
}

pub fn encode_rep_server(buf: &mut BytesMut, opt: u32, name: &str, description: &str) {
    let mut p = BytesMut::with_capacity(4 + name.len() + description.len());
    p.put_u32(name.len() as u32);
    p.put_slice(name.as_bytes());
    p.put_slice(description.as_bytes());
    encode_option_reply(buf, opt, REP_SERVER, &p);
}

pub fn encode_info_export(buf: &mut BytesMut, opt: u32, size: u64, tflags: u16) {
    let mut p = [0u8; 12];
    p[0..2].copy_from_slice(&INFO_EXPORT.to_be_bytes());
    p[2..10].copy_from_slice(&size.to_be_bytes());
    p[10..12].copy_from_slice(&tflags.to_be_bytes());
    encode_option_reply(buf, opt, REP_INFO, &p);
}

pub fn encode_info_block_size(buf: &mut BytesMut, opt: u32, min: u32, pref: u32, max: u32) {
    let mut p = [0u8; 14];
    p[0..2].copy_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    p[2..6].copy_from_slice(&min.to_be_bytes());
    p[6..10].copy_from_slice(&pref.to_be_bytes());
    p[10..14].copy_from_slice(&max.to_be_bytes());
    encode_option_reply(buf, opt, REP_INFO, &p);
}

/// NBD_INFO_NAME or NBD_INFO_DESCRIPTION.
pub fn encode_info_string(buf: &mut BytesMut, opt: u32, info: u16, s: &str) {
    let mut p = BytesMut::with_capacity(2 + s.len());
    p.put_u16(info);
    p.put_slice(s.as_bytes());
    encode_option_reply(buf, opt, REP_INFO, &p);
}

pub fn encode_meta_context(buf: &mut BytesMut, opt: u32, id: u32, name: &str) {
    let mut p = BytesMut::with_capacity(4 + name.len());
    p.put_u32(id);
    p.put_slice(name.as_bytes());
    encode_option_reply(buf, opt, REP_META_CONTEXT, &p);
}

/// Client side: the header of an option reply; the payload length is bounded.
pub fn parse_option_reply_header(buf: &[u8]) -> Parsed<OptionReplyHeader> {
    let mut r = Reader::new(buf);
    let (Some(magic), Some(opt), Some(reply), Some(len)) = (r.u64(), r.u32(), r.u32(), r.u32())
    else {
        return Ok(None);
    };
    if magic != REPLY_MAGIC_OPT {
        return Err(CodecError::BadMagic {
            expected: REPLY_MAGIC_OPT,
            found: magic,
        });
    }
    if len > MAX_OPTION_REPLY_LEN {
        return Err(CodecError::TooLong {
            what: "option reply",
            len: u64::from(len),
            max: u64::from(MAX_OPTION_REPLY_LEN),
        });
    }
    Ok(Some((
        OptionReplyHeader { opt, reply, len },
        OPTION_REPLY_HEADER_LEN,
    )))
}

/// One NBD_REP_INFO payload as the client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Info {
    Export { size: u64, flags: u16 },
    Name(String),
    Description(String),
    BlockSize { min: u32, preferred: u32, max: u32 },
    Unknown(u16),
}

pub fn parse_info(payload: &[u8]) -> Result<Info, CodecError> {
    let mut r = Reader::new(payload);
    let ty = r.u16().ok_or(CodecError::Malformed("NBD_REP_INFO"))?;
    let info = match ty {
        INFO_EXPORT => {
            let (Some(size), Some(flags)) = (r.u64(), r.u16()) else {
                return Err(CodecError::Malformed("NBD_INFO_EXPORT"));
            };
            Info::Export { size, flags }
        }
        INFO_NAME => Info::Name(parse_string(r.rest())?),
        INFO_DESCRIPTION => Info::Description(parse_string(r.rest())?),
        INFO_BLOCK_SIZE => {
            let (Some(min), Some(preferred), Some(max)) = (r.u32(), r.u32(), r.u32()) else {
                return Err(CodecError::Malformed("NBD_INFO_BLOCK_SIZE"));
            };
            Info::BlockSize {
                min,
                preferred,
                max,
            }
        }
        other => {
            r.rest();
            Info::Unknown(other)
        }
    };
    if r.remaining() != 0 {
        return Err(CodecError::Malformed("NBD_REP_INFO trailing bytes"));
    }
    Ok(info)
}

/// NBD_REP_SERVER payload: (name, description).
pub fn parse_rep_server(payload: &[u8]) -> Result<(String, String), CodecError> {
    let mut r = Reader::new(payload);
    let len = r.u32().ok_or(CodecError::Malformed("NBD_REP_SERVER"))? as usize;
    let name = r
        .bytes(len)
        .ok_or(CodecError::Malformed("NBD_REP_SERVER name length"))?;
    let name = parse_string(name)?;
    let description = parse_string(r.rest())?;
    Ok((name, description))
}

/// NBD_REP_META_CONTEXT payload: (id, name).
pub fn parse_rep_meta_context(payload: &[u8]) -> Result<(u32, String), CodecError> {
    let mut r = Reader::new(payload);
    let id = r
        .u32()
        .ok_or(CodecError::Malformed("NBD_REP_META_CONTEXT"))?;
    Ok((id, parse_string(r.rest())?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn option_header_round_trip_and_incomplete() {
        let mut b = BytesMut::new();
        encode_option(&mut b, OPT_GO, b"xyz");
        for cut in 0..OPTION_HEADER_LEN {
            assert_eq!(parse_option_header(&b[..cut]), Ok(None));
        }
        assert_eq!(
            parse_option_header(&b),
            Ok(Some((
                OptionHeader {
                    opt: OPT_GO,
                    len: 3
                },
                16
            )))
        );
        b[3] = 0;
        assert!(matches!(
            parse_option_header(&b),
            Err(CodecError::BadMagic { .. })
        ));
    }

    #[test]
    fn info_request_round_trip() {
        let req = InfoRequest {
            name: "disk".into(),
            requests: vec![INFO_BLOCK_SIZE, INFO_NAME],
        };
        let mut b = BytesMut::new();
        encode_info_request(&mut b, &req);
        assert_eq!(parse_info_request(&b), Ok(req));
        // name length beyond the payload
        assert!(parse_info_request(&[0, 0, 0, 9, b'a', 0, 0]).is_err());
        // trailing garbage
        assert!(parse_info_request(&[0, 0, 0, 0, 0, 0, 1]).is_err());
        // count says 2, only one present
        assert!(parse_info_request(&[0, 0, 0, 0, 0, 2, 0, 3]).is_err());
    }

    #[test]
    fn meta_context_request_round_trip() {
        let req = MetaContextRequest {
            export: String::new(),
            queries: vec!["base:allocation".into(), "qemu:dirty-bitmap:x".into()],
        };
        let mut b = BytesMut::new();
        encode_meta_context_request(&mut b, &req);
        assert_eq!(parse_meta_context_request(&b), Ok(req));
        let mut big = BytesMut::new();
        big.put_u32(0);
        big.put_u32(MAX_META_QUERIES + 1);
        assert!(matches!(
            parse_meta_context_request(&big),
            Err(CodecError::TooLong { .. })
        ));
    }

    #[test]
    fn replies_round_trip() {
        let mut b = BytesMut::new();
        encode_info_export(&mut b, OPT_GO, 4096, 0x4d);
        let (h, n) = parse_option_reply_header(&b).unwrap().unwrap();
        assert_eq!((h.opt, h.reply, h.len), (OPT_GO, REP_INFO, 12));
        assert_eq!(
            parse_info(&b[n..]),
            Ok(Info::Export {
                size: 4096,
                flags: 0x4d
            })
        );
        let mut b = BytesMut::new();
        encode_rep_server(&mut b, OPT_LIST, "a", "desc");
        assert_eq!(parse_rep_server(&b[20..]), Ok(("a".into(), "desc".into())));
        let mut b = BytesMut::new();
        encode_meta_context(&mut b, OPT_SET_META_CONTEXT, 7, META_BASE_ALLOCATION);
        assert_eq!(
            parse_rep_meta_context(&b[20..]),
            Ok((7, META_BASE_ALLOCATION.into()))
        );
        let mut b = BytesMut::new();
        encode_info_block_size(&mut b, OPT_GO, 512, 4096, 1 << 25);
        assert_eq!(
            parse_info(&b[20..]),
            Ok(Info::BlockSize {
                min: 512,
                preferred: 4096,
                max: 1 << 25
            })
        );
    }
}
