//! Pure encoding and decoding of every NBD message: no I/O, no allocation beyond the
//! values returned, no panics on any input. Parsers take the bytes received so far and
//! answer `Ok(None)` when more are needed, `Ok(Some((value, consumed)))` when a whole
//! message is there, or a [`CodecError`] when the bytes can never be valid.

pub mod handshake;
pub mod option;
pub mod reply;
pub mod request;

/// A message that can never become valid, however many bytes follow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("bad magic {found:#x}, expected {expected:#x}")]
    BadMagic { expected: u64, found: u64 },
    #[error("{what} length {len} exceeds the limit {max}")]
    TooLong {
        what: &'static str,
        len: u64,
        max: u64,
    },
    #[error("malformed {0}")]
    Malformed(&'static str),
    #[error("string is not valid UTF-8 or contains NUL")]
    BadString,
}

/// `Ok(None)`: incomplete; `Ok(Some((value, bytes consumed)))`: a whole message.
pub type Parsed<T> = Result<Option<(T, usize)>, CodecError>;

/// A bounds-checked big-endian reader over a byte slice; every getter returns `None`
/// when the slice is too short instead of panicking.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    pub fn position(&self) -> usize {
        self.pos
    }

    pub fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    pub fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let out = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(out)
    }

    pub fn u16(&mut self) -> Option<u16> {
        let b = self.bytes(2)?;
        Some(u16::from_be_bytes([b[0], b[1]]))
    }

    pub fn u32(&mut self) -> Option<u32> {
        let b = self.bytes(4)?;
        Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn u64(&mut self) -> Option<u64> {
        let b = self.bytes(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Some(u64::from_be_bytes(a))
    }

    pub fn rest(&mut self) -> &'a [u8] {
        let out = self.buf.get(self.pos..).unwrap_or(&[]);
        self.pos = self.buf.len();
        out
    }
}

/// Validates an NBD string: UTF-8, no NUL, at most [`crate::proto::MAX_STRING_LEN`].
pub fn parse_string(bytes: &[u8]) -> Result<String, CodecError> {
    if bytes.len() > crate::proto::MAX_STRING_LEN {
        return Err(CodecError::TooLong {
            what: "string",
            len: bytes.len() as u64,
            max: crate::proto::MAX_STRING_LEN as u64,
        });
    }
    let s = std::str::from_utf8(bytes).map_err(|_| CodecError::BadString)?;
    if s.contains('\0') {
        return Err(CodecError::BadString);
    }
    Ok(s.to_owned())
}

/// Cuts a message to at most `max` bytes on a UTF-8 boundary.
pub fn truncate_message(msg: &str, max: usize) -> &str {
    if msg.len() <= max {
        return msg;
    }
    let mut end = max;
    while end > 0 && !msg.is_char_boundary(end) {
        end -= 1;
    }
    &msg[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_never_reads_past_the_end() {
        let mut r = Reader::new(&[1, 2, 3]);
        assert_eq!(r.u16(), Some(0x0102));
        assert_eq!(r.u16(), None);
        assert_eq!(r.bytes(1), Some(&[3u8][..]));
        assert_eq!(r.u64(), None);
        assert_eq!(r.remaining(), 0);
    }

    #[test]
    fn strings_are_checked() {
        assert_eq!(parse_string(b"abc"), Ok("abc".to_owned()));
        assert_eq!(parse_string(b"a\0c"), Err(CodecError::BadString));
        assert_eq!(parse_string(&[0xff, 0xfe]), Err(CodecError::BadString));
        assert!(parse_string(&[b'x'; 4097]).is_err());
    }

    #[test]
    fn truncation_respects_char_boundaries() {
        assert_eq!(truncate_message("héllo", 2), "h");
        assert_eq!(truncate_message("abc", 10), "abc");
    }
}
