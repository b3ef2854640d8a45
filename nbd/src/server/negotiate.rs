//! Option haggling as a pure state machine: [`Negotiator::handle_option`] takes one
//! option (its payload already read and bounded by the caller) and appends the replies
//! to an output buffer, returning what the connection must do next. No I/O here; the
//! connection shell (`server::handle`) reads and writes.

use std::sync::Arc;

use bytes::BytesMut;
use tokio_util::task::task_tracker::TaskTrackerToken;

pub use super::config::TlsPolicy;
use super::export::{Export, ExportRegistry};
use crate::codec::option::*;
use crate::codec::{CodecError, handshake, parse_string};
use crate::proto::*;

/// Everything transmission needs from a successful negotiation.
#[derive(Debug)]
pub struct Session {
    pub export: Arc<Export>,
    pub structured: bool,
    /// `base:allocation` was selected for this export.
    pub base_allocation: bool,
    pub tflags: u16,
    /// Keeps the export's removal waiting until this connection ends.
    pub user: TaskTrackerToken,
}

/// What the connection does after an option.
#[derive(Debug)]
pub enum Step {
    Continue,
    /// Send the buffered replies, then close (ABORT, or a fatal condition).
    Close(&'static str),
    /// Send the ACK, then run the TLS handshake and continue negotiating.
    StartTls,
    /// Send the replies, then enter transmission.
    Transmit(Box<Session>),
}

#[derive(Debug)]
struct MetaSelection {
    export: String,
    base_allocation: bool,
}

/// Negotiation state of one connection.
#[derive(Debug)]
pub struct Negotiator {
    tls: TlsPolicy,
    tls_active: bool,
    client_flags: u32,
    structured: bool,
    meta: Option<MetaSelection>,
    options_seen: u32,
}

/// Handshake flags this server offers.
pub const SERVER_HANDSHAKE_FLAGS: u16 = FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES;

impl Negotiator {
    pub fn new(tls: TlsPolicy) -> Self {
        Negotiator {
            tls,
            tls_active: false,
            client_flags: 0,
            structured: false,
            meta: None,
            options_seen: 0,
        }
    }

    pub fn greeting(out: &mut BytesMut) {
        handshake::encode_greeting(out, SERVER_HANDSHAKE_FLAGS);
    }

    /// Checks the 4-byte client flags.
    pub fn client_flags(&mut self, bytes: &[u8]) -> Result<(), CodecError> {
        match handshake::parse_client_flags(bytes, SERVER_HANDSHAKE_FLAGS)? {
            Some((flags, _)) => {
                self.client_flags = flags;
                Ok(())
            }
            None => Err(CodecError::Malformed("short client flags")),
        }
    }

    pub fn tls_active(&self) -> bool {
        self.tls_active
    }

    /// Called once the TLS handshake after STARTTLS succeeded: per the spec, state
    /// negotiated in clear text is forgotten.
    pub fn tls_started(&mut self) {
        self.tls_active = true;
        self.structured = false;
        self.meta = None;
    }

    fn no_zeroes(&self) -> bool {
        self.client_flags & FLAG_C_NO_ZEROES != 0
    }

    /// An option whose payload exceeded [`MAX_OPTION_LEN`] (and was drained).
    pub fn oversized_option(&mut self, opt: u32, out: &mut BytesMut) -> Step {
        if opt == OPT_EXPORT_NAME {
            return Step::Close("oversized NBD_OPT_EXPORT_NAME");
        }
        encode_option_error(out, opt, REP_ERR_TOO_BIG, "option payload too large");
        self.count()
    }

    fn count(&mut self) -> Step {
        self.options_seen += 1;
        if self.options_seen >= MAX_OPTIONS_PER_CONNECTION {
            return Step::Close("too many options");
        }
        Step::Continue
    }

    /// Handles one option. `shutting_down` makes everything but ABORT fail with
    /// ERR_SHUTDOWN.
    pub fn handle_option(
        &mut self,
        opt: u32,
        payload: &[u8],
        exports: &ExportRegistry,
        shutting_down: bool,
        out: &mut BytesMut,
    ) -> Step {
        if opt == OPT_ABORT {
            encode_option_reply(out, opt, REP_ACK, &[]);
            return Step::Close("client sent NBD_OPT_ABORT");
        }
        if shutting_down {
            if opt == OPT_EXPORT_NAME {
                return Step::Close("shutting down");
            }
            encode_option_error(out, opt, REP_ERR_SHUTDOWN, "server is shutting down");
            return self.count();
        }
        if self.tls == TlsPolicy::Required && !self.tls_active && opt != OPT_STARTTLS {
            if opt == OPT_EXPORT_NAME {
                return Step::Close("NBD_OPT_EXPORT_NAME before required TLS");
            }
            encode_option_error(out, opt, REP_ERR_TLS_REQD, "TLS is required");
            return self.count();
        }
        match opt {
            OPT_EXPORT_NAME => self.export_name(payload, exports, out),
            OPT_LIST => {
                if !payload.is_empty() {
                    encode_option_error(out, opt, REP_ERR_INVALID, "LIST takes no data");
                } else {
                    for e in exports.list() {
                        encode_rep_server(out, opt, e.name(), e.description());
                    }
                    encode_option_reply(out, opt, REP_ACK, &[]);
                }
                self.count()
            }
            OPT_STARTTLS => {
                if !payload.is_empty() {
                    encode_option_error(out, opt, REP_ERR_INVALID, "STARTTLS takes no data");
                } else if self.tls == TlsPolicy::Off {
                    encode_option_error(out, opt, REP_ERR_UNSUP, "TLS is not configured");
                } else if self.tls_active {
                    encode_option_error(out, opt, REP_ERR_INVALID, "TLS is already active");
                } else {
                    encode_option_reply(out, opt, REP_ACK, &[]);
                    self.options_seen += 1;
                    return Step::StartTls;
                }
                self.count()
            }
            OPT_INFO | OPT_GO => self.info_or_go(opt, payload, exports, out),
            OPT_STRUCTURED_REPLY => {
                if payload.is_empty() {
                    self.structured = true;
                    encode_option_reply(out, opt, REP_ACK, &[]);
                } else {
                    encode_option_error(out, opt, REP_ERR_INVALID, "takes no data");
                }
                self.count()
            }
            OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => {
                self.meta_context(opt, payload, exports, out);
                self.count()
            }
            _ => {
                encode_option_error(out, opt, REP_ERR_UNSUP, "option not supported");
                self.count()
            }
        }
    }

    fn export_name(
        &mut self,
        payload: &[u8],
        exports: &ExportRegistry,
        out: &mut BytesMut,
    ) -> Step {
        let Ok(name) = parse_string(payload) else {
            return Step::Close("bad export name");
        };
        let Some(export) = exports.get(&name) else {
            return Step::Close("unknown export");
        };
        let Some(user) = export.attach() else {
            return Step::Close("export removed");
        };
        let tflags = export.transmission_flags(self.structured);
        handshake::encode_export_name_reply(out, export.size(), tflags, self.no_zeroes());
        Step::Transmit(Box::new(self.session(export, tflags, user)))
    }

    fn session(&self, export: Arc<Export>, tflags: u16, user: TaskTrackerToken) -> Session {
        let base_allocation = self.structured
            && self
                .meta
                .as_ref()
                .is_some_and(|m| m.base_allocation && m.export == export.name());
        Session {
            export,
            structured: self.structured,
            base_allocation,
            tflags,
            user,
        }
    }

    fn info_or_go(
        &mut self,
        opt: u32,
        payload: &[u8],
        exports: &ExportRegistry,
        out: &mut BytesMut,
    ) -> Step {
        let req = match parse_info_request(payload) {
            Ok(r) => r,
            Err(e) => {
                encode_option_error(out, opt, REP_ERR_INVALID, &e.to_string());
                return self.count();
            }
        };
        let Some(export) = exports.get(&req.name) else {
            encode_option_error(out, opt, REP_ERR_UNKNOWN, "no such export");
            return self.count();
        };
        let user = if opt == OPT_GO {
            match export.attach() {
                Some(u) => Some(u),
                None => {
                    encode_option_error(out, opt, REP_ERR_UNKNOWN, "export was removed");
                    return self.count();
                }
            }
        } else {
            None
        };
        let tflags = export.transmission_flags(self.structured);
        encode_info_export(out, opt, export.size(), tflags);
        // Sent whether asked or not: qemu does the same, and clients that did not ask
        // ignore it; our limits are the spec's defaults for clients that ignore it.
        encode_info_block_size(
            out,
            opt,
            export.min_block(),
            BLOCK_SIZE_PREFERRED.max(export.min_block()),
            BLOCK_SIZE_MAX,
        );
        for (i, info) in req.requests.iter().enumerate() {
            if req.requests[..i].contains(info) {
                continue;
            }
            match *info {
                INFO_NAME => encode_info_string(out, opt, INFO_NAME, export.name()),
                INFO_DESCRIPTION if !export.description().is_empty() => {
                    encode_info_string(out, opt, INFO_DESCRIPTION, export.description())
                }
                _ => {}
            }
        }
        encode_option_reply(out, opt, REP_ACK, &[]);
        match user {
            Some(user) => Step::Transmit(Box::new(self.session(export, tflags, user))),
            None => self.count(),
        }
    }

    fn meta_context(
        &mut self,
        opt: u32,
        payload: &[u8],
        exports: &ExportRegistry,
        out: &mut BytesMut,
    ) {
        let set = opt == OPT_SET_META_CONTEXT;
        if set {
            // SET replaces the selection even when it fails.
            self.meta = None;
        }
        if !self.structured {
            encode_option_error(out, opt, REP_ERR_INVALID, "structured replies first");
            return;
        }
        let req = match parse_meta_context_request(payload) {
            Ok(r) => r,
            Err(e @ CodecError::TooLong { .. }) => {
                encode_option_error(out, opt, REP_ERR_TOO_BIG, &e.to_string());
                return;
            }
            Err(e) => {
                encode_option_error(out, opt, REP_ERR_INVALID, &e.to_string());
                return;
            }
        };
        if exports.get(&req.export).is_none() {
            encode_option_error(out, opt, REP_ERR_UNKNOWN, "no such export");
            return;
        }
        let base_allocation = if set {
            req.queries.iter().any(|q| q == META_BASE_ALLOCATION)
        } else {
            // LIST: no query lists everything; "base:" is the namespace wildcard.
            req.queries.is_empty()
                || req
                    .queries
                    .iter()
                    .any(|q| q == META_BASE_ALLOCATION || q == "base:")
        };
        if base_allocation {
            let id = if set { META_BASE_ALLOCATION_ID } else { 0 };
            encode_meta_context(out, opt, id, META_BASE_ALLOCATION);
        }
        encode_option_reply(out, opt, REP_ACK, &[]);
        if set {
            self.meta = Some(MetaSelection {
                export: req.export,
                base_allocation,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::option::{Info, parse_info, parse_option_reply_header};
    use crate::mem::MemDevice;
    use crate::server::export::ExportOptions;

    fn registry() -> ExportRegistry {
        let r = ExportRegistry::default();
        r.add(
            "",
            Arc::new(MemDevice::new(1 << 20)),
            ExportOptions::default(),
        )
        .expect("add");
        r.add(
            "ro",
            Arc::new(MemDevice::new(4096)),
            ExportOptions {
                read_only: true,
                description: "read only".into(),
                observer: None,
            },
        )
        .expect("add");
        r
    }

    /// Splits option replies into (reply type, payload).
    fn replies(mut b: &[u8]) -> Vec<(u32, Vec<u8>)> {
        let mut out = Vec::new();
        while let Some((h, n)) = parse_option_reply_header(b).expect("reply") {
            let end = n + h.len as usize;
            out.push((h.reply, b[n..end].to_vec()));
            b = &b[end..];
        }
        assert!(b.is_empty());
        out
    }

    fn go_payload(name: &str, infos: &[u16]) -> Vec<u8> {
        let mut b = BytesMut::new();
        encode_info_request(
            &mut b,
            &InfoRequest {
                name: name.into(),
                requests: infos.to_vec(),
            },
        );
        b.to_vec()
    }

    fn meta_payload(export: &str, queries: &[&str]) -> Vec<u8> {
        let mut b = BytesMut::new();
        encode_meta_context_request(
            &mut b,
            &MetaContextRequest {
                export: export.into(),
                queries: queries.iter().map(|q| q.to_string()).collect(),
            },
        );
        b.to_vec()
    }

    #[test]
    fn qemu_sequence_negotiates_structured_replies_and_base_allocation() {
        let reg = registry();
        let mut n = Negotiator::new(TlsPolicy::Off);
        n.client_flags(&[0, 0, 0, 3]).expect("flags");
        let mut out = BytesMut::new();
        assert!(matches!(
            n.handle_option(OPT_STRUCTURED_REPLY, &[], &reg, false, &mut out),
            Step::Continue
        ));
        let p = meta_payload("", &[META_BASE_ALLOCATION]);
        n.handle_option(OPT_SET_META_CONTEXT, &p, &reg, false, &mut out);
        let p = go_payload("", &[INFO_BLOCK_SIZE]);
        let Step::Transmit(s) = n.handle_option(OPT_GO, &p, &reg, false, &mut out) else {
            panic!("GO did not enter transmission")
        };
        assert!(s.structured && s.base_allocation);
        assert_ne!(s.tflags & TFLAG_SEND_DF, 0);
        assert_ne!(s.tflags & TFLAG_CAN_MULTI_CONN, 0);
        let r = replies(&out);
        let types: Vec<u32> = r.iter().map(|x| x.0).collect();
        assert_eq!(
            types,
            [
                REP_ACK,
                REP_META_CONTEXT,
                REP_ACK,
                REP_INFO,
                REP_INFO,
                REP_ACK
            ]
        );
        assert_eq!(
            parse_info(&r[4].1),
            Ok(Info::BlockSize {
                min: 512,
                preferred: 4096,
                max: 32 << 20
            })
        );
    }

    #[test]
    fn errors_and_policies() {
        let reg = registry();
        let mut n = Negotiator::new(TlsPolicy::Off);
        let mut out = BytesMut::new();
        n.handle_option(OPT_GO, &go_payload("nope", &[]), &reg, false, &mut out);
        n.handle_option(OPT_GO, &[1, 2, 3], &reg, false, &mut out);
        n.handle_option(0x1234, b"whatever", &reg, false, &mut out);
        n.handle_option(OPT_LIST, b"x", &reg, false, &mut out);
        n.handle_option(OPT_STARTTLS, &[], &reg, false, &mut out);
        n.handle_option(
            OPT_SET_META_CONTEXT,
            &meta_payload("", &[]),
            &reg,
            false,
            &mut out,
        );
        n.handle_option(OPT_EXTENDED_HEADERS, &[], &reg, false, &mut out);
        let types: Vec<u32> = replies(&out).iter().map(|x| x.0).collect();
        assert_eq!(
            types,
            [
                REP_ERR_UNKNOWN,
                REP_ERR_INVALID,
                REP_ERR_UNSUP,
                REP_ERR_INVALID,
                REP_ERR_UNSUP,
                REP_ERR_INVALID,
                REP_ERR_UNSUP
            ]
        );
        let mut out = BytesMut::new();
        assert!(matches!(
            n.handle_option(OPT_EXPORT_NAME, b"nope", &reg, false, &mut out),
            Step::Close(_)
        ));
        assert!(matches!(
            n.handle_option(OPT_INFO, &go_payload("", &[]), &reg, true, &mut out),
            Step::Continue
        ));
        assert_eq!(replies(&out)[0].0, REP_ERR_SHUTDOWN);
    }

    #[test]
    fn forced_tls_refuses_until_starttls() {
        let reg = registry();
        let mut n = Negotiator::new(TlsPolicy::Required);
        let mut out = BytesMut::new();
        n.handle_option(OPT_LIST, &[], &reg, false, &mut out);
        assert_eq!(replies(&out)[0].0, REP_ERR_TLS_REQD);
        assert!(matches!(
            n.handle_option(OPT_EXPORT_NAME, &[], &reg, false, &mut out),
            Step::Close(_)
        ));
        let mut out = BytesMut::new();
        n.handle_option(OPT_STRUCTURED_REPLY, &[], &reg, false, &mut out);
        assert!(matches!(
            n.handle_option(OPT_STARTTLS, &[], &reg, false, &mut out),
            Step::StartTls
        ));
        n.tls_started();
        let mut out = BytesMut::new();
        let Step::Transmit(s) =
            n.handle_option(OPT_GO, &go_payload("ro", &[]), &reg, false, &mut out)
        else {
            panic!("GO failed after TLS")
        };
        // structured replies negotiated before STARTTLS are forgotten
        assert!(!s.structured);
        assert_ne!(s.tflags & TFLAG_READ_ONLY, 0);
        assert_eq!(s.tflags & TFLAG_SEND_TRIM, 0);
        let mut out = BytesMut::new();
        n.handle_option(OPT_STARTTLS, &[], &reg, false, &mut out);
        assert_eq!(replies(&out)[0].0, REP_ERR_INVALID);
    }

    #[test]
    fn list_and_meta_listing() {
        let reg = registry();
        let mut n = Negotiator::new(TlsPolicy::Off);
        let mut out = BytesMut::new();
        n.handle_option(OPT_LIST, &[], &reg, false, &mut out);
        let r = replies(&out);
        assert_eq!(r.len(), 3);
        assert_eq!(
            parse_rep_server(&r[1].1),
            Ok(("ro".to_owned(), "read only".to_owned()))
        );
        let mut out = BytesMut::new();
        n.handle_option(OPT_STRUCTURED_REPLY, &[], &reg, false, &mut out);
        n.handle_option(
            OPT_LIST_META_CONTEXT,
            &meta_payload("", &[]),
            &reg,
            false,
            &mut out,
        );
        n.handle_option(
            OPT_LIST_META_CONTEXT,
            &meta_payload("", &["x-foo:bar"]),
            &reg,
            false,
            &mut out,
        );
        let types: Vec<u32> = replies(&out).iter().map(|x| x.0).collect();
        assert_eq!(types, [REP_ACK, REP_META_CONTEXT, REP_ACK, REP_ACK]);
    }

    #[test]
    fn removed_export_cannot_be_entered() {
        let reg = registry();
        let export = reg.get("").expect("export");
        let removal = reg.remove("").expect("remove");
        assert!(export.attach().is_none());
        drop(removal);
        let mut n = Negotiator::new(TlsPolicy::Off);
        let mut out = BytesMut::new();
        n.handle_option(OPT_GO, &go_payload("", &[]), &reg, false, &mut out);
        assert_eq!(replies(&out)[0].0, REP_ERR_UNKNOWN);
    }

    #[test]
    fn option_count_is_bounded() {
        let reg = registry();
        let mut n = Negotiator::new(TlsPolicy::Off);
        let mut out = BytesMut::new();
        let mut closed = false;
        for _ in 0..MAX_OPTIONS_PER_CONNECTION + 1 {
            if let Step::Close(_) = n.handle_option(OPT_LIST, &[], &reg, false, &mut out) {
                closed = true;
                break;
            }
        }
        assert!(closed);
    }
}
