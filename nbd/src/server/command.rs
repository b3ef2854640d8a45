//! Turns a request header into a [`Command`] the connection may execute, or into the
//! NBD error the spec asks for (unknown command or flag, command not advertised,
//! read-only export, out of range, unaligned, oversized). Pure.

use crate::codec::request::Request;
use crate::device::ZeroFlags;
use crate::error::Errno;
use crate::proto::*;

/// What validation needs to know about the connection and its export.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub size: u64,
    pub min_block: u32,
    pub tflags: u16,
    pub structured: bool,
    pub base_allocation: bool,
}

impl Limits {
    fn has(&self, flag: u16) -> bool {
        self.tflags & flag != 0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Read {
        offset: u64,
        len: u32,
        df: bool,
    },
    Write {
        offset: u64,
        len: u32,
        fua: bool,
    },
    Disc,
    Flush,
    Trim {
        offset: u64,
        len: u32,
        fua: bool,
    },
    Cache {
        offset: u64,
        len: u32,
    },
    WriteZeroes {
        offset: u64,
        len: u32,
        flags: ZeroFlags,
    },
    BlockStatus {
        offset: u64,
        len: u32,
        req_one: bool,
    },
}

/// A refused request: the value to send and a message for structured error chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reject {
    pub errno: Errno,
    pub msg: &'static str,
}

fn reject(errno: Errno, msg: &'static str) -> Reject {
    Reject { errno, msg }
}

/// Flags each command accepts (FUA is accepted on every command when advertised).
fn allowed_flags(cmd: u16, l: &Limits) -> u16 {
    let fua = if l.has(TFLAG_SEND_FUA) {
        CMD_FLAG_FUA
    } else {
        0
    };
    match cmd {
        CMD_READ => fua | if l.has(TFLAG_SEND_DF) { CMD_FLAG_DF } else { 0 },
        CMD_WRITE_ZEROES => {
            fua | CMD_FLAG_NO_HOLE
                | if l.has(TFLAG_SEND_FAST_ZERO) {
                    CMD_FLAG_FAST_ZERO
                } else {
                    0
                }
        }
        CMD_BLOCK_STATUS => fua | CMD_FLAG_REQ_ONE,
        _ => fua,
    }
}

/// Validates a request against the negotiated session.
pub fn validate(req: &Request, l: &Limits) -> Result<Command, Reject> {
    let (offset, len) = (req.offset, req.len);
    if req.cmd == CMD_DISC {
        return Ok(Command::Disc);
    }
    if !matches!(
        req.cmd,
        CMD_READ
            | CMD_WRITE
            | CMD_FLUSH
            | CMD_TRIM
            | CMD_CACHE
            | CMD_WRITE_ZEROES
            | CMD_BLOCK_STATUS
    ) {
        return Err(reject(Errno::Inval, "unknown command"));
    }
    if req.flags & !allowed_flags(req.cmd, l) != 0 {
        return Err(reject(Errno::Inval, "unknown or unsupported command flag"));
    }
    let fua = req.flags & CMD_FLAG_FUA != 0;
    let writes = matches!(req.cmd, CMD_WRITE | CMD_TRIM | CMD_WRITE_ZEROES);
    if writes && l.has(TFLAG_READ_ONLY) {
        return Err(reject(Errno::Perm, "export is read-only"));
    }
    let advertised = match req.cmd {
        CMD_FLUSH => l.has(TFLAG_SEND_FLUSH),
        CMD_TRIM => l.has(TFLAG_SEND_TRIM),
        CMD_CACHE => l.has(TFLAG_SEND_CACHE),
        CMD_WRITE_ZEROES => l.has(TFLAG_SEND_WRITE_ZEROES),
        CMD_BLOCK_STATUS => l.structured && l.base_allocation,
        _ => true,
    };
    if !advertised {
        return Err(reject(Errno::Inval, "command not negotiated"));
    }
    if req.cmd == CMD_FLUSH {
        if offset != 0 || len != 0 {
            return Err(reject(Errno::Inval, "FLUSH offset and length must be 0"));
        }
        return Ok(Command::Flush);
    }
    if matches!(req.cmd, CMD_READ | CMD_WRITE) && len > MAX_PAYLOAD {
        return Err(reject(
            Errno::Inval,
            "request longer than the maximum block size",
        ));
    }
    let in_range = offset
        .checked_add(u64::from(len))
        .is_some_and(|end| end <= l.size);
    if !in_range {
        return Err(if matches!(req.cmd, CMD_WRITE | CMD_WRITE_ZEROES) {
            reject(Errno::NoSpc, "write beyond the end of the export")
        } else {
            reject(Errno::Inval, "request beyond the end of the export")
        });
    }
    let m = u64::from(l.min_block.max(1));
    let aligned = offset.is_multiple_of(m) && u64::from(len).is_multiple_of(m);
    if !aligned && matches!(req.cmd, CMD_READ | CMD_WRITE | CMD_TRIM | CMD_WRITE_ZEROES) {
        return Err(reject(
            Errno::Inval,
            "request not aligned to the minimum block size",
        ));
    }
    Ok(match req.cmd {
        CMD_READ => Command::Read {
            offset,
            len,
            df: req.flags & CMD_FLAG_DF != 0,
        },
        CMD_WRITE => Command::Write { offset, len, fua },
        CMD_TRIM => Command::Trim { offset, len, fua },
        CMD_CACHE => Command::Cache { offset, len },
        CMD_WRITE_ZEROES => Command::WriteZeroes {
            offset,
            len,
            flags: ZeroFlags {
                no_hole: req.flags & CMD_FLAG_NO_HOLE != 0,
                fast: req.flags & CMD_FLAG_FAST_ZERO != 0,
                fua,
            },
        },
        _ => {
            if len == 0 {
                return Err(reject(Errno::Inval, "BLOCK_STATUS of zero length"));
            }
            Command::BlockStatus {
                offset,
                len,
                req_one: req.flags & CMD_FLAG_REQ_ONE != 0,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: u16 = TFLAG_HAS_FLAGS
        | TFLAG_SEND_FLUSH
        | TFLAG_SEND_FUA
        | TFLAG_SEND_TRIM
        | TFLAG_SEND_WRITE_ZEROES
        | TFLAG_SEND_FAST_ZERO
        | TFLAG_SEND_DF
        | TFLAG_SEND_CACHE;

    fn limits(tflags: u16) -> Limits {
        Limits {
            size: 1 << 20,
            min_block: 512,
            tflags,
            structured: true,
            base_allocation: true,
        }
    }

    fn req(cmd: u16, flags: u16, offset: u64, len: u32) -> Request {
        Request {
            flags,
            cmd,
            cookie: 1,
            offset,
            len,
        }
    }

    fn errno(r: Result<Command, Reject>) -> Option<Errno> {
        r.err().map(|e| e.errno)
    }

    #[test]
    fn table() {
        let l = limits(ALL);
        let ro = limits(ALL | TFLAG_READ_ONLY);
        let bare = limits(TFLAG_HAS_FLAGS);
        let cases: &[(Request, &Limits, Option<Errno>)] = &[
            (req(CMD_READ, 0, 0, 4096), &l, None),
            (req(CMD_READ, CMD_FLAG_DF | CMD_FLAG_FUA, 0, 512), &l, None),
            (
                req(CMD_READ, CMD_FLAG_DF, 0, 512),
                &bare,
                Some(Errno::Inval),
            ),
            (req(CMD_READ, 1 << 9, 0, 512), &l, Some(Errno::Inval)),
            (req(CMD_READ, 0, 100, 512), &l, Some(Errno::Inval)),
            (req(CMD_READ, 0, 0, 100), &l, Some(Errno::Inval)),
            (req(CMD_READ, 0, 1 << 20, 512), &l, Some(Errno::Inval)),
            (req(CMD_READ, 0, u64::MAX - 10, 512), &l, Some(Errno::Inval)),
            (
                req(CMD_READ, 0, 0, MAX_PAYLOAD + 512),
                &l,
                Some(Errno::Inval),
            ),
            (req(CMD_WRITE, 0, 1 << 20, 512), &l, Some(Errno::NoSpc)),
            (req(CMD_WRITE, 0, 0, 512), &ro, Some(Errno::Perm)),
            (req(CMD_TRIM, 0, 0, 512), &ro, Some(Errno::Perm)),
            (req(CMD_TRIM, 0, 0, 512), &bare, Some(Errno::Inval)),
            (req(CMD_TRIM, 0, 1 << 20, 512), &l, Some(Errno::Inval)),
            (
                req(
                    CMD_WRITE_ZEROES,
                    CMD_FLAG_NO_HOLE | CMD_FLAG_FAST_ZERO,
                    0,
                    4096,
                ),
                &l,
                None,
            ),
            (
                req(CMD_WRITE_ZEROES, CMD_FLAG_REQ_ONE, 0, 4096),
                &l,
                Some(Errno::Inval),
            ),
            (
                req(CMD_WRITE_ZEROES, 0, 1 << 20, 512),
                &l,
                Some(Errno::NoSpc),
            ),
            (req(CMD_FLUSH, 0, 0, 0), &l, None),
            (req(CMD_FLUSH, 0, 512, 0), &l, Some(Errno::Inval)),
            (req(CMD_FLUSH, 0, 0, 0), &bare, Some(Errno::Inval)),
            (
                req(CMD_BLOCK_STATUS, CMD_FLAG_REQ_ONE, 0, 1 << 20),
                &l,
                None,
            ),
            (req(CMD_BLOCK_STATUS, 0, 0, 0), &l, Some(Errno::Inval)),
            (req(CMD_CACHE, 0, 1, 7), &l, None),
            (req(CMD_CACHE, 0, 0, 512), &bare, Some(Errno::Inval)),
            (req(99, 0, 0, 0), &l, Some(Errno::Inval)),
            (req(CMD_DISC, 0xffff, 5, 5), &l, None),
        ];
        for (i, (r, lim, want)) in cases.iter().enumerate() {
            assert_eq!(errno(validate(r, lim)), *want, "case {i}: {r:?}");
        }
        let mut no_meta = limits(ALL);
        no_meta.base_allocation = false;
        assert_eq!(
            errno(validate(&req(CMD_BLOCK_STATUS, 0, 0, 512), &no_meta)),
            Some(Errno::Inval)
        );
    }
}
