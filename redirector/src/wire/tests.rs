//! Round trips of every message kind, each refusal of [`decode`], and property tests:
//! valid messages survive encode/decode and the codec (fed in arbitrary pieces); arbitrary
//! bytes never panic.

use super::*;
use proptest::prelude::*;

fn call(op: CallOp, offset: u64, len: u64, payload: &[u8]) -> Call {
    Call {
        id: 7,
        session: 3,
        op,
        offset,
        len,
        writer: Some(Writer {
            vhd: 11,
            node: 2,
            generation: 5,
        }),
        payload: Bytes::copy_from_slice(payload),
    }
}

fn write(len: usize) -> Call {
    call(CallOp::Write, 4096, len as u64, &vec![0xa5; len])
}

fn failure(refusal: Refusal, detail: &str) -> Failure {
    Failure {
        refusal,
        errno: 5,
        detail: detail.to_owned(),
    }
}

/// A frame body made by hand: header length, header, payload.
fn frame(header: &pb::Header, payload: &[u8]) -> Bytes {
    let mut b = BytesMut::new();
    b.put_u16(header.encoded_len() as u16);
    header.encode(&mut b).unwrap();
    b.extend_from_slice(payload);
    b.freeze()
}

fn call_header(op: u32, offset: u64, len: u64) -> pb::Header {
    pb::Header {
        body: Some(pb::Body::Call(pb::Call {
            id: 1,
            session: 1,
            op,
            offset,
            len,
            writer: None,
        })),
    }
}

fn failure_header(refusal: u32, detail: String) -> pb::Header {
    pb::Header {
        body: Some(pb::Body::Reply(pb::Reply {
            id: 1,
            failure: Some(pb::Failure {
                refusal,
                errno: 5,
                detail,
            }),
        })),
    }
}

/// Whether an error is the one a case expects.
type Expect = fn(&WireError) -> bool;

fn round_trip(msg: Msg) {
    let body = encode(&msg).unwrap();
    assert_eq!(decode(body.clone()).unwrap(), msg);

    // The parts are the codec's length prefix and the same body, split before the payload.
    let (head, payload) = encode_parts(&msg).unwrap();
    let prefix = u32::from_be_bytes(head[..4].try_into().unwrap()) as usize;
    assert_eq!(prefix, body.len());
    let mut joined = head[4..].to_vec();
    joined.extend_from_slice(payload.as_deref().unwrap_or_default());
    assert_eq!(joined, body);

    let mut codec = MsgCodec::new();
    let mut buf = BytesMut::new();
    codec.encode(msg.clone(), &mut buf).unwrap();
    let mut parts = head.clone();
    parts.extend_from_slice(payload.as_deref().unwrap_or_default());
    assert_eq!(buf, parts);
    assert_eq!(codec.decode(&mut buf).unwrap(), Some(msg));
    assert!(buf.is_empty());
}

#[test]
fn every_kind_round_trips() {
    let msgs = [
        Msg::Open {
            version: VERSION,
            source: 2,
            session: 9,
        },
        Msg::Open {
            version: 0,
            source: 0,
            session: 0,
        },
        Msg::Opened {
            session: 9,
            ttl_ms: 2000,
            io_timeout_ms: 950,
        },
        Msg::OpenRefused {
            detail: "version 2 not supported".into(),
        },
        Msg::OpenRefused {
            detail: String::new(),
        },
        Msg::Call(write(1)),
        Msg::Call(write(4096)),
        Msg::Call(call(CallOp::Read, 0, 1, b"")),
        Msg::Call(call(CallOp::Read, u64::MAX - 512, 512, b"")),
        Msg::Call(call(CallOp::WriteZeroes, 1 << 40, MAX_CALL as u64, b"")),
        Msg::Call(call(CallOp::Flush, 0, 0, b"")),
        Msg::Call(Call {
            writer: None,
            ..call(CallOp::Flush, 0, 0, b"")
        }),
        Msg::Reply(Reply {
            id: 7,
            result: Ok(Bytes::from_static(b"read data")),
        }),
        Msg::Reply(Reply {
            id: 8,
            result: Ok(Bytes::new()),
        }),
        Msg::Reply(Reply {
            id: 9,
            result: Err(failure(Refusal::Stale, "generation 4, table has 5")),
        }),
        Msg::Ping { session: 9 },
        Msg::Pong { session: 9 },
        Msg::CloseSession { id: 1, session: 8 },
        Msg::Closed { id: 1, session: 8 },
    ];
    for msg in msgs {
        round_trip(msg);
    }
    for refusal in [
        Refusal::Path,
        Refusal::Media,
        Refusal::Fenced,
        Refusal::Stale,
        Refusal::NotYet,
        Refusal::SessionClosed,
        Refusal::BadRequest,
    ] {
        round_trip(Msg::Reply(Reply {
            id: u64::MAX,
            result: Err(Failure {
                errno: -1,
                ..failure(refusal, "x")
            }),
        }));
    }
}

#[test]
fn largest_call_and_reply_round_trip() {
    round_trip(Msg::Call(write(MAX_CALL)));
    round_trip(Msg::Reply(Reply {
        id: 1,
        result: Ok(Bytes::from(vec![1; MAX_CALL])),
    }));
    round_trip(Msg::OpenRefused {
        detail: "d".repeat(MAX_DETAIL),
    });
}

#[test]
fn decoded_payload_is_a_slice_of_the_frame() {
    let body = encode(&Msg::Call(write(4096))).unwrap();
    let Msg::Call(c) = decode(body.clone()).unwrap() else {
        panic!("not a call");
    };
    let range = body.as_ptr_range();
    assert!(range.contains(&c.payload.as_ptr()));
    assert_eq!(c.payload.as_ptr_range().end, range.end);
}

#[test]
fn encode_parts_does_not_copy_the_payload() {
    let msg = Msg::Call(write(4096));
    let Msg::Call(c) = &msg else { unreachable!() };
    let (_, payload) = encode_parts(&msg).unwrap();
    assert_eq!(payload.unwrap().as_ptr(), c.payload.as_ptr());
    let (_, none) = encode_parts(&Msg::Ping { session: 1 }).unwrap();
    assert!(none.is_none());
}

#[test]
fn long_details_are_truncated_at_a_char_boundary() {
    // 'é' is two bytes: 4097 of them cut at an odd byte count must step back one byte.
    let long = "é".repeat(MAX_DETAIL);
    let msg = Msg::Reply(Reply {
        id: 1,
        result: Err(failure(Refusal::Media, &format!("x{long}"))),
    });
    let Msg::Reply(Reply { result: Err(f), .. }) = decode(encode(&msg).unwrap()).unwrap() else {
        panic!("not a failed reply");
    };
    assert_eq!(f.detail.len(), MAX_DETAIL - 1);
    assert!(f.detail.starts_with("xé"));

    let msg = Msg::OpenRefused {
        detail: "z".repeat(MAX_DETAIL + 10),
    };
    let again = decode(encode(&msg).unwrap()).unwrap();
    assert_eq!(
        again,
        Msg::OpenRefused {
            detail: "z".repeat(MAX_DETAIL)
        }
    );
}

#[test]
fn encode_refuses_invalid_messages() {
    let cases: [(Call, Expect); 8] = [
        (write(0), |e| {
            matches!(e, WireError::EmptyCall(CallOp::Write))
        }),
        (write(MAX_CALL + 1), |e| {
            matches!(
                e,
                WireError::CallTooLarge {
                    op: CallOp::Write,
                    ..
                }
            )
        }),
        (call(CallOp::Write, 0, 10, b"short"), |e| {
            matches!(
                e,
                WireError::PayloadMismatch {
                    len: 10,
                    payload: 5
                }
            )
        }),
        (call(CallOp::Read, 0, 0, b""), |e| {
            matches!(e, WireError::EmptyCall(CallOp::Read))
        }),
        (call(CallOp::Read, 0, 4, b"data"), |e| {
            matches!(e, WireError::UnexpectedPayload { len: 4, .. })
        }),
        (call(CallOp::WriteZeroes, u64::MAX, 1, b""), |e| {
            matches!(e, WireError::RangeOverflow { .. })
        }),
        (call(CallOp::Flush, 512, 0, b""), |e| {
            matches!(
                e,
                WireError::FlushRange {
                    offset: 512,
                    len: 0
                }
            )
        }),
        (call(CallOp::Flush, 0, 0, b"x"), |e| {
            matches!(e, WireError::UnexpectedPayload { len: 1, .. })
        }),
    ];
    for (c, expected) in cases {
        let msg = Msg::Call(c);
        let err = encode(&msg).unwrap_err();
        assert!(expected(&err), "{msg:?}: {err}");
        assert!(encode_parts(&msg).is_err());
        let mut buf = BytesMut::new();
        assert!(MsgCodec::new().encode(msg, &mut buf).is_err());
        assert!(buf.is_empty(), "no partial frame left behind");
    }
    let big = Msg::Reply(Reply {
        id: 1,
        result: Ok(Bytes::from(vec![0; MAX_CALL + 1])),
    });
    assert!(matches!(encode(&big), Err(WireError::ReplyTooLarge { .. })));
}

#[test]
fn decode_refuses_malformed_frames() {
    let check = |frame: Bytes, expected: Expect| {
        let err = decode(frame.clone()).unwrap_err();
        assert!(expected(&err), "{frame:?}: {err}");
        assert!(!err.to_string().is_empty());
    };
    check(Bytes::new(), |e| matches!(e, WireError::ShortFrame(0)));
    check(Bytes::from_static(&[0]), |e| {
        matches!(e, WireError::ShortFrame(1))
    });
    check(Bytes::from_static(&[0, 5, 1, 2]), |e| {
        matches!(
            e,
            WireError::TruncatedHeader {
                header: 5,
                available: 2
            }
        )
    });
    check(Bytes::from(vec![0; MAX_FRAME + 1]), |e| {
        matches!(e, WireError::FrameTooLarge { .. })
    });
    // A field with wire type 7 does not exist.
    check(Bytes::from_static(&[0, 1, 0x0f]), |e| {
        matches!(e, WireError::Prost(_))
    });
    // Empty header, and a header with only a field this version does not know.
    check(Bytes::from_static(&[0, 0]), |e| {
        matches!(e, WireError::UnknownKind)
    });
    check(Bytes::from_static(&[0, 2, 0x50, 0x01]), |e| {
        matches!(e, WireError::UnknownKind)
    });

    check(frame(&call_header(0, 0, 1), b""), |e| {
        matches!(e, WireError::MissingField("call op"))
    });
    check(frame(&call_header(9, 0, 1), b""), |e| {
        matches!(e, WireError::UnknownOp(9))
    });
    check(frame(&call_header(1, 0, 0), b""), |e| {
        matches!(e, WireError::EmptyCall(CallOp::Read))
    });
    check(frame(&call_header(3, 0, MAX_CALL as u64 + 1), b""), |e| {
        matches!(e, WireError::CallTooLarge { .. })
    });
    check(frame(&call_header(1, u64::MAX, 2), b""), |e| {
        matches!(e, WireError::RangeOverflow { .. })
    });
    check(frame(&call_header(1, 0, 4), b"abcd"), |e| {
        matches!(e, WireError::UnexpectedPayload { len: 4, .. })
    });
    check(frame(&call_header(2, 0, 4), b"abc"), |e| {
        matches!(e, WireError::PayloadMismatch { len: 4, payload: 3 })
    });
    check(frame(&call_header(2, 0, 4), b"abcde"), |e| {
        matches!(e, WireError::PayloadMismatch { len: 4, payload: 5 })
    });
    check(frame(&call_header(4, 0, 1), b""), |e| {
        matches!(e, WireError::FlushRange { .. })
    });
    check(frame(&call_header(4, 1, 0), b""), |e| {
        matches!(e, WireError::FlushRange { .. })
    });

    check(frame(&failure_header(0, String::new()), b""), |e| {
        matches!(e, WireError::MissingField("refusal"))
    });
    check(frame(&failure_header(42, String::new()), b""), |e| {
        matches!(e, WireError::UnknownRefusal(42))
    });
    check(
        frame(&failure_header(1, "d".repeat(MAX_DETAIL + 1)), b""),
        |e| matches!(e, WireError::DetailTooLong { .. }),
    );
    check(frame(&failure_header(1, String::new()), b"data"), |e| {
        matches!(e, WireError::UnexpectedPayload { .. })
    });
    let refused = pb::Header {
        body: Some(pb::Body::OpenRefused(pb::OpenRefused {
            detail: "d".repeat(MAX_DETAIL + 1),
        })),
    };
    check(frame(&refused, b""), |e| {
        matches!(e, WireError::DetailTooLong { .. })
    });
    let ok_reply = pb::Header {
        body: Some(pb::Body::Reply(pb::Reply {
            id: 1,
            failure: None,
        })),
    };
    check(frame(&ok_reply, &vec![0; MAX_CALL + 1]), |e| {
        matches!(e, WireError::ReplyTooLarge { .. })
    });
    // Every kind without a payload refuses one.
    for msg in [
        Msg::Open {
            version: 1,
            source: 1,
            session: 1,
        },
        Msg::Opened {
            session: 1,
            ttl_ms: 1,
            io_timeout_ms: 1,
        },
        Msg::OpenRefused { detail: "x".into() },
        Msg::Ping { session: 1 },
        Msg::Pong { session: 1 },
        Msg::CloseSession { id: 1, session: 1 },
        Msg::Closed { id: 1, session: 1 },
    ] {
        let mut body = BytesMut::from(&encode(&msg).unwrap()[..]);
        body.put_u8(0);
        check(body.freeze(), |e| {
            matches!(e, WireError::UnexpectedPayload { len: 1, .. })
        });
    }
}

#[test]
fn codec_names_oversized_frames() {
    let mut codec = MsgCodec::new();
    let mut stream = BytesMut::new();
    codec.encode(Msg::Ping { session: 1 }, &mut stream).unwrap();
    stream.put_u32(MAX_FRAME as u32 + 1);
    // The first frame's prefix arrives alone: the codec is mid-frame when the rest comes.
    let mut buf = stream.split_to(4);
    assert_eq!(codec.decode(&mut buf).unwrap(), None);
    buf.extend_from_slice(&stream);
    assert_eq!(
        codec.decode(&mut buf).unwrap(),
        Some(Msg::Ping { session: 1 })
    );
    let err = codec.decode(&mut buf).unwrap_err();
    assert!(
        matches!(err, WireError::FrameTooLarge { len, max: MAX_FRAME } if len == MAX_FRAME + 1),
        "{err}"
    );
}

#[test]
fn codec_waits_for_a_whole_frame() {
    let mut codec = MsgCodec::default();
    let mut all = BytesMut::new();
    codec.encode(Msg::Call(write(100)), &mut all).unwrap();
    let mut buf = BytesMut::new();
    for byte in &all[..all.len() - 1] {
        buf.put_u8(*byte);
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
    }
    buf.put_u8(all[all.len() - 1]);
    assert_eq!(codec.decode(&mut buf).unwrap(), Some(Msg::Call(write(100))));
}

fn arb_detail() -> impl Strategy<Value = String> {
    prop_oneof![".{0,40}", "[a-z]{4090,4096}"]
}

fn arb_payload(max: usize) -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 0..=max).prop_map(Bytes::from)
}

fn arb_refusal() -> impl Strategy<Value = Refusal> {
    prop::sample::select(vec![
        Refusal::Path,
        Refusal::Media,
        Refusal::Fenced,
        Refusal::Stale,
        Refusal::NotYet,
        Refusal::SessionClosed,
        Refusal::BadRequest,
    ])
}

fn arb_call() -> impl Strategy<Value = Call> {
    let writer = prop::option::of((any::<u64>(), any::<u64>(), any::<u64>()).prop_map(
        |(vhd, node, generation)| Writer {
            vhd,
            node,
            generation,
        },
    ));
    let shape = prop_oneof![
        (
            prop::sample::select(vec![CallOp::Read, CallOp::WriteZeroes]),
            1..=MAX_CALL as u64
        )
            .prop_map(|(op, len)| (op, len, Bytes::new())),
        prop::collection::vec(any::<u8>(), 1..2048).prop_map(|p| (
            CallOp::Write,
            p.len() as u64,
            Bytes::from(p)
        )),
        Just((CallOp::Flush, 0, Bytes::new())),
    ];
    (any::<u64>(), any::<u64>(), any::<u64>(), writer, shape).prop_map(
        |(id, session, offset, writer, (op, len, payload))| {
            let offset = match op {
                CallOp::Flush => 0,
                _ => offset.min(u64::MAX - len),
            };
            Call {
                id,
                session,
                op,
                offset,
                len,
                writer,
                payload,
            }
        },
    )
}

fn arb_msg() -> impl Strategy<Value = Msg> {
    let failure =
        (arb_refusal(), any::<i32>(), arb_detail()).prop_map(|(refusal, errno, detail)| Failure {
            refusal,
            errno,
            detail,
        });
    let result = prop_oneof![arb_payload(2048).prop_map(Ok), failure.prop_map(Err),];
    prop_oneof![
        (any::<u32>(), any::<u64>(), any::<u64>()).prop_map(|(version, source, session)| {
            Msg::Open {
                version,
                source,
                session,
            }
        }),
        (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(session, ttl_ms, io_timeout_ms)| {
            Msg::Opened {
                session,
                ttl_ms,
                io_timeout_ms,
            }
        }),
        arb_detail().prop_map(|detail| Msg::OpenRefused { detail }),
        arb_call().prop_map(Msg::Call),
        (any::<u64>(), result).prop_map(|(id, result)| Msg::Reply(Reply { id, result })),
        any::<u64>().prop_map(|session| Msg::Ping { session }),
        any::<u64>().prop_map(|session| Msg::Pong { session }),
        (any::<u64>(), any::<u64>()).prop_map(|(id, session)| Msg::CloseSession { id, session }),
        (any::<u64>(), any::<u64>()).prop_map(|(id, session)| Msg::Closed { id, session }),
    ]
}

proptest! {
    #[test]
    fn valid_messages_round_trip(msg in arb_msg()) {
        round_trip(msg);
    }

    /// A stream of frames read back through the codec, the bytes arriving in pieces cut
    /// at arbitrary points.
    #[test]
    fn codec_reassembles_split_streams(
        msgs in prop::collection::vec(arb_msg(), 1..8),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
    ) {
        let mut codec = MsgCodec::new();
        let mut stream = BytesMut::new();
        for m in &msgs {
            codec.encode(m.clone(), &mut stream).unwrap();
        }
        let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
        cuts.push(stream.len());
        cuts.sort_unstable();

        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        let mut from = 0;
        for to in cuts {
            buf.extend_from_slice(&stream[from..to]);
            from = to;
            while let Some(m) = codec.decode(&mut buf).unwrap() {
                got.push(m);
            }
        }
        prop_assert_eq!(codec.decode_eof(&mut buf).unwrap(), None);
        prop_assert_eq!(got, msgs);
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..512)) {
        let frame = Bytes::from(data);
        if let Ok(msg) = decode(frame.clone()) {
            // Whatever decodes re-encodes to a frame that decodes equal.
            prop_assert_eq!(decode(encode(&msg).unwrap()).unwrap(), msg);
        }
        let mut buf = BytesMut::from(&frame[..]);
        let mut codec = MsgCodec::new();
        while let Ok(Some(_)) = codec.decode(&mut buf) {}
    }

    /// Valid frames with bytes overwritten at arbitrary places.
    #[test]
    fn corrupted_frames_never_panic(
        msg in arb_msg(),
        hits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
    ) {
        let mut body = BytesMut::from(&encode(&msg).unwrap()[..]);
        for (at, byte) in hits {
            let i = at.index(body.len());
            body[i] = byte;
        }
        if let Ok(msg) = decode(body.freeze()) {
            prop_assert_eq!(decode(encode(&msg).unwrap()).unwrap(), msg);
        }
    }

    /// Arbitrary header bytes behind a correct header length, with a short payload:
    /// reaches the protobuf and field checks far more often than raw bytes do.
    #[test]
    fn arbitrary_headers_never_panic(
        header in prop::collection::vec(any::<u8>(), 0..64),
        payload in prop::collection::vec(any::<u8>(), 0..8),
    ) {
        let mut b = BytesMut::new();
        b.put_u16(header.len() as u16);
        b.extend_from_slice(&header);
        b.extend_from_slice(&payload);
        if let Ok(msg) = decode(b.freeze()) {
            prop_assert_eq!(decode(encode(&msg).unwrap()).unwrap(), msg);
        }
    }
}

#[test]
fn a_reply_head_and_its_bytes_are_the_reply_frame() {
    for (id, len) in [(1u64, 0usize), (7, 1), (u64::MAX, 4096), (3, MAX_CALL)] {
        let data = Bytes::from((0..len).map(|i| (i % 251) as u8).collect::<Vec<_>>());
        let msg = Msg::Reply(Reply {
            id,
            result: Ok(data.clone()),
        });
        let (want_head, _) = encode_parts(&msg).unwrap();
        let head = encode_reply_head(id, len).unwrap();
        assert_eq!(head, want_head, "id {id} len {len}");
        let mut frame = BytesMut::from(&head[..]);
        frame.extend_from_slice(&data);
        let got = MsgCodec::new().decode(&mut frame).unwrap().unwrap();
        assert_eq!(got, msg);
    }
    assert!(encode_reply_head(1, MAX_CALL + 1).is_err());
}
