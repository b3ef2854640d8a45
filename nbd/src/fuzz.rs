//! Entry points for fuzzing: each takes arbitrary bytes and drives one parser (or the
//! negotiation state machine) the way the server or client would. They must never
//! panic. Used by the cargo-fuzz targets in `nbd/fuzz/` and by this crate's property
//! tests, so every run of the test suite exercises them on random input.

use std::sync::{Arc, OnceLock};

use bytes::BytesMut;

use crate::codec::option::{
    parse_info, parse_meta_context_request, parse_option_header, parse_option_reply_header,
    parse_rep_meta_context, parse_rep_server,
};
use crate::codec::reply::{ReplyHeader, parse_chunk, parse_reply_header};
use crate::codec::request::parse_request_header;
use crate::codec::{handshake, option::parse_info_request};
use crate::mem::MemDevice;
use crate::proto::*;
use crate::server::command::{Limits, validate};
use crate::server::export::{ExportOptions, ExportRegistry};
use crate::server::negotiate::{Negotiator, Step, TlsPolicy};

/// Server side of transmission: a stream of request headers (and WRITE payloads),
/// each validated against a few export shapes.
pub fn requests(data: &[u8]) {
    let shapes = [
        Limits {
            size: 1 << 20,
            min_block: 512,
            tflags: 0xffff,
            structured: true,
            base_allocation: true,
        },
        Limits {
            size: 12345,
            min_block: 1,
            tflags: TFLAG_HAS_FLAGS | TFLAG_READ_ONLY,
            structured: false,
            base_allocation: false,
        },
    ];
    let mut buf = data;
    while let Ok(Some((req, n))) = parse_request_header(buf) {
        for l in &shapes {
            let _ = validate(&req, l);
        }
        let skip = n.saturating_add(req.payload_len() as usize).min(buf.len());
        buf = &buf[skip..];
    }
}

fn registry() -> &'static ExportRegistry {
    static R: OnceLock<ExportRegistry> = OnceLock::new();
    R.get_or_init(|| {
        let r = ExportRegistry::default();
        for (name, ro) in [("", false), ("disk", true)] {
            let _ = r.add(
                name,
                Arc::new(MemDevice::new(1 << 16)),
                ExportOptions {
                    read_only: ro,
                    description: name.to_owned(),
                    observer: None,
                },
            );
        }
        r
    })
}

/// Server side of negotiation: client flags then options, fed to the negotiation state
/// machine until it closes or enters transmission. The first byte picks the TLS policy.
pub fn negotiation(data: &[u8]) {
    let Some((&sel, data)) = data.split_first() else {
        return;
    };
    let policy = match sel % 3 {
        0 => TlsPolicy::Off,
        1 => TlsPolicy::Optional,
        _ => TlsPolicy::Required,
    };
    let mut neg = Negotiator::new(policy);
    let Some(flags) = data.get(..4) else {
        return;
    };
    if neg.client_flags(flags).is_err() {
        return;
    }
    let mut buf = &data[4..];
    let mut out = BytesMut::new();
    while let Ok(Some((h, n))) = parse_option_header(buf) {
        buf = &buf[n..];
        out.clear();
        let step = if h.len > MAX_OPTION_LEN {
            let skip = (h.len as usize).min(buf.len());
            buf = &buf[skip..];
            neg.oversized_option(h.opt, &mut out)
        } else {
            let len = (h.len as usize).min(buf.len());
            let (payload, rest) = buf.split_at(len);
            buf = rest;
            neg.handle_option(h.opt, payload, registry(), sel & 0x80 != 0, &mut out)
        };
        match step {
            Step::Continue => {}
            Step::StartTls => neg.tls_started(),
            Step::Close(_) | Step::Transmit(_) => return,
        }
    }
}

/// Client side: option replies and their payloads, then transmission replies.
pub fn client_replies(data: &[u8]) {
    let _ = handshake::parse_greeting(data);
    let _ = handshake::parse_export_name_reply(data, data.first().is_some_and(|b| b & 1 == 1));
    let mut buf = data;
    while let Ok(Some((h, n))) = parse_option_reply_header(buf) {
        let end = n.saturating_add(h.len as usize).min(buf.len());
        let payload = &buf[n..end];
        let _ = parse_info(payload);
        let _ = parse_rep_server(payload);
        let _ = parse_rep_meta_context(payload);
        let _ = parse_info_request(payload);
        let _ = parse_meta_context_request(payload);
        buf = &buf[end..];
    }
    let mut buf = data;
    while let Ok(Some((h, n))) = parse_reply_header(buf) {
        let rest = &buf[n..];
        match h {
            ReplyHeader::Simple { .. } => buf = rest,
            ReplyHeader::Chunk { ty, len, .. } => {
                let len = (len as usize).min(rest.len());
                let _ = parse_chunk(ty, &rest[..len]);
                buf = &rest[len..];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::option::{InfoRequest, encode_info_request, encode_option};
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            requests(&data);
            negotiation(&data);
            client_replies(&data);
        }

        /// Well-formed option headers with random payloads reach the deeper parsers.
        #[test]
        fn random_options_never_panic(
            sel: u8,
            opts in proptest::collection::vec((1u32..12, proptest::collection::vec(any::<u8>(), 0..64)), 0..8)
        ) {
            let mut b = BytesMut::new();
            b.extend_from_slice(&[sel, 0, 0, 0, 3]);
            for (opt, payload) in &opts {
                encode_option(&mut b, *opt, payload);
            }
            negotiation(&b);
        }
    }

    #[test]
    fn a_valid_go_reaches_transmission() {
        let mut b = BytesMut::new();
        b.extend_from_slice(&[0, 0, 0, 0, 3]);
        let mut p = BytesMut::new();
        encode_info_request(
            &mut p,
            &InfoRequest {
                name: "disk".into(),
                requests: vec![INFO_BLOCK_SIZE],
            },
        );
        encode_option(&mut b, OPT_GO, &p);
        negotiation(&b);
    }
}
