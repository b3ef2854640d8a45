//! The protobuf header of a frame and its per-kind bodies (prost, written by hand, no
//! .proto). These types only fix the tags; the public face of the format is
//! [`crate::wire::Msg`]. Op and refusal codes are plain integers starting at 1, so an absent
//! field (0) is told apart from a real value and an unknown one gets a precise error.

/// The frame header: exactly one kind.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Header {
    #[prost(oneof = "Body", tags = "1, 2, 3, 4, 5, 6, 7, 8, 9")]
    pub body: Option<Body>,
}

/// One per [`crate::wire::Msg`] variant.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Body {
    #[prost(message, tag = "1")]
    Open(Open),
    #[prost(message, tag = "2")]
    Opened(Opened),
    #[prost(message, tag = "3")]
    OpenRefused(OpenRefused),
    #[prost(message, tag = "4")]
    Call(Call),
    #[prost(message, tag = "5")]
    Reply(Reply),
    #[prost(message, tag = "6")]
    Ping(Session),
    #[prost(message, tag = "7")]
    Pong(Session),
    #[prost(message, tag = "8")]
    CloseSession(Close),
    #[prost(message, tag = "9")]
    Closed(Close),
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Open {
    #[prost(uint32, tag = "1")]
    pub version: u32,
    #[prost(uint64, tag = "2")]
    pub source: u64,
    #[prost(uint64, tag = "3")]
    pub session: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Opened {
    #[prost(uint64, tag = "1")]
    pub session: u64,
    #[prost(uint64, tag = "2")]
    pub ttl_ms: u64,
    #[prost(uint64, tag = "3")]
    pub io_timeout_ms: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct OpenRefused {
    #[prost(string, tag = "1")]
    pub detail: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Call {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(uint64, tag = "2")]
    pub session: u64,
    #[prost(uint32, tag = "3")]
    pub op: u32,
    #[prost(uint64, tag = "4")]
    pub offset: u64,
    #[prost(uint64, tag = "5")]
    pub len: u64,
    #[prost(message, optional, tag = "6")]
    pub writer: Option<Writer>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Writer {
    #[prost(uint64, tag = "1")]
    pub vhd: u64,
    #[prost(uint64, tag = "2")]
    pub node: u64,
    #[prost(uint64, tag = "3")]
    pub generation: u64,
}

/// A reply: success unless `failure` is present (a read's data is the frame payload).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Reply {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(message, optional, tag = "2")]
    pub failure: Option<Failure>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Failure {
    #[prost(uint32, tag = "1")]
    pub refusal: u32,
    #[prost(int32, tag = "2")]
    pub errno: i32,
    #[prost(string, tag = "3")]
    pub detail: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Session {
    #[prost(uint64, tag = "1")]
    pub session: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Close {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(uint64, tag = "2")]
    pub session: u64,
}
