//! A blocking admin client: one Unix-socket connection, one request at a time. Used by
//! `csvadm`, the process tests and the benchmark (one client per thread).

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use prost::Message as _;

use super::PROTOCOL_VERSION;
use super::envelope::*;
use super::frame::{FrameError, read_frame, write_frame};
use super::messages::*;
use super::owner::*;
use crate::error::{ApiError, ErrorCode};

/// Default bound on one request: membership changes wait for a learner to catch up by
/// snapshot and for joint consensus, which can take tens of seconds on a slow disk.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

/// Errors of the client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket could not be reached.
    #[error("cannot connect to {path}: {source}")]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Sending or receiving failed (includes a timeout).
    #[error("admin connection: {0}")]
    Frame(#[from] FrameError),
    /// The daemon closed the connection without answering.
    #[error("the daemon closed the connection without answering")]
    Closed,
    /// The answer could not be decoded or does not fit the request.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The daemon refused the request.
    #[error(transparent)]
    Api(#[from] ApiError),
}

impl ClientError {
    /// The stable code when the daemon refused the request.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Api(e) => Some(e.code()),
            _ => None,
        }
    }
}

/// A connection to a node's admin socket.
#[derive(Debug)]
pub struct Client {
    stream: UnixStream,
    path: PathBuf,
}

macro_rules! expect {
    ($resp:expr, $variant:ident) => {
        match $resp {
            Response::$variant(v) => Ok(v),
            other => Err(ClientError::Protocol(format!(
                "expected {} answer, got {:?}",
                stringify!($variant),
                other
            ))),
        }
    };
}

impl Client {
    /// Connects to the socket at `path` with [`DEFAULT_TIMEOUT`] per request.
    pub fn connect(path: impl AsRef<Path>) -> Result<Client, ClientError> {
        let path = path.as_ref().to_path_buf();
        let stream = UnixStream::connect(&path).map_err(|source| ClientError::Connect {
            path: path.clone(),
            source,
        })?;
        let c = Client { stream, path };
        c.set_timeout(DEFAULT_TIMEOUT)?;
        Ok(c)
    }

    /// Bounds each later request (write and answer) by `t`.
    pub fn set_timeout(&self, t: Duration) -> Result<(), ClientError> {
        let io = |source| ClientError::Connect {
            path: self.path.clone(),
            source,
        };
        self.stream.set_read_timeout(Some(t)).map_err(io)?;
        self.stream.set_write_timeout(Some(t)).map_err(io)?;
        Ok(())
    }

    /// Sends `request` and returns the answer; an error answer becomes
    /// [`ClientError::Api`].
    pub fn call(&mut self, request: Request) -> Result<Response, ClientError> {
        let req = AdminRequest {
            version: PROTOCOL_VERSION,
            request: Some(request),
        };
        write_frame(&mut self.stream, &req.encode_to_vec())?;
        let frame = read_frame(&mut self.stream)?.ok_or(ClientError::Closed)?;
        let resp = AdminResponse::decode(frame.as_slice())
            .map_err(|e| ClientError::Protocol(format!("undecodable response: {e}")))?;
        if resp.version != PROTOCOL_VERSION {
            return Err(ClientError::Protocol(format!(
                "response of protocol version {}",
                resp.version
            )));
        }
        match resp.response {
            Some(Response::Error(e)) => Err(ClientError::Api(ApiError {
                code: e.code,
                message: e.message,
            })),
            Some(r) => Ok(r),
            None => Err(ClientError::Protocol("empty response".into())),
        }
    }

    /// Creates a cluster with this node as its only voter.
    pub fn cluster_init(&mut self, name: &str) -> Result<ClusterInitReply, ClientError> {
        expect!(
            self.call(Request::ClusterInit(ClusterInit { name: name.into() }))?,
            ClusterInit
        )
    }

    /// The node's view of the cluster.
    pub fn status(&mut self) -> Result<Status, ClientError> {
        expect!(self.call(Request::Status(StatusRequest {}))?, Status)
    }

    /// Adds node `id` at `address` (promoted to voter unless `learner`).
    pub fn node_add(
        &mut self,
        id: u64,
        address: &str,
        learner: bool,
    ) -> Result<Membership, ClientError> {
        expect!(
            self.call(Request::NodeAdd(NodeAdd {
                id,
                address: address.into(),
                learner,
            }))?,
            Membership
        )
    }

    /// Promotes learner `id`.
    pub fn node_promote(&mut self, id: u64) -> Result<Membership, ClientError> {
        expect!(self.call(Request::NodePromote(NodeRef { id }))?, Membership)
    }

    /// Removes node `id` for good.
    pub fn node_remove(&mut self, id: u64) -> Result<Membership, ClientError> {
        expect!(self.call(Request::NodeRemove(NodeRef { id }))?, Membership)
    }

    /// Moves the coordinator role to voter `to`.
    pub fn leader_transfer(&mut self, to: u64) -> Result<(), ClientError> {
        expect!(
            self.call(Request::LeaderTransfer(NodeRef { id: to }))?,
            Done
        )
        .map(|_| ())
    }

    /// The volume record, if set.
    pub fn volume_get(&mut self) -> Result<Option<Volume>, ClientError> {
        expect!(self.call(Request::VolumeGet(Empty {}))?, Volume).map(|v| v.volume)
    }

    /// Creates or grows the volume record.
    pub fn volume_set(&mut self, v: Volume) -> Result<Option<Volume>, ClientError> {
        expect!(self.call(Request::VolumeSet(v))?, Volume).map(|v| v.volume)
    }

    /// Creates a VHD record.
    pub fn vhd_create(&mut self, c: VhdCreate) -> Result<Vhd, ClientError> {
        expect!(self.call(Request::VhdCreate(c))?, Vhd)
    }

    /// Deletes VHD `id`.
    pub fn vhd_delete(&mut self, id: u64) -> Result<Vhd, ClientError> {
        expect!(
            self.call(Request::VhdDelete(VhdRef {
                id,
                name: String::new()
            }))?,
            Vhd
        )
    }

    /// VHD by id.
    pub fn vhd_get(&mut self, id: u64) -> Result<Vhd, ClientError> {
        expect!(
            self.call(Request::VhdGet(VhdRef {
                id,
                name: String::new()
            }))?,
            Vhd
        )
    }

    /// VHD by name.
    pub fn vhd_get_by_name(&mut self, name: &str) -> Result<Vhd, ClientError> {
        expect!(
            self.call(Request::VhdGet(VhdRef {
                id: 0,
                name: name.into()
            }))?,
            Vhd
        )
    }

    /// A page of VHDs after id `after`.
    pub fn vhd_list(&mut self, after: u64, limit: u32) -> Result<VhdPage, ClientError> {
        expect!(
            self.call(Request::VhdList(VhdList { after, limit }))?,
            VhdList
        )
    }

    /// Every VHD, page by page.
    pub fn vhd_list_all(&mut self) -> Result<Vec<Vhd>, ClientError> {
        let mut out = Vec::new();
        let mut after = 0;
        loop {
            let page = self.vhd_list(after, 1000)?;
            out.extend(page.vhds);
            if page.next_after == 0 {
                return Ok(out);
            }
            after = page.next_after;
        }
    }

    /// Free space and reservations.
    pub fn space(&mut self) -> Result<Space, ClientError> {
        expect!(self.call(Request::SpaceGet(Empty {}))?, Space)
    }

    /// The node's metrics as OpenMetrics text, and its endpoint's address.
    pub fn metrics(&mut self) -> Result<MetricsReply, ClientError> {
        expect!(self.call(Request::NodeMetrics(Empty {}))?, Metrics)
    }
}

/// VM calls (the [`vm`](super::vm) messages).
impl Client {
    /// Runs one VM operation.
    pub fn vm(&mut self, op: super::vm::VmOp) -> Result<super::vm::VmAnswer, ClientError> {
        match self.call(Request::Vm(super::vm::VmRequest { op: Some(op) }))? {
            Response::Vm(super::vm::VmReply { answer: Some(a) }) => Ok(a),
            other => Err(ClientError::Protocol(format!(
                "expected a VM answer, got {other:?}"
            ))),
        }
    }

    /// A VM operation answered by one VM record.
    pub fn vm_info(&mut self, op: super::vm::VmOp) -> Result<super::vm::VmInfo, ClientError> {
        match self.vm(op)? {
            super::vm::VmAnswer::Vm(v) => Ok(*v),
            other => Err(ClientError::Protocol(format!(
                "expected a VM record, got {other:?}"
            ))),
        }
    }
}

/// Ownership and liveness calls (the [`owner`](super::owner) messages).
impl Client {
    fn owner_call(&mut self, op: OwnerOp) -> Result<OwnerAnswer, ClientError> {
        match self.call(Request::Owner(OwnerRequest { op: Some(op) }))? {
            Response::Owner(OwnerReply { answer: Some(a) }) => Ok(a),
            other => Err(ClientError::Protocol(format!(
                "expected an owner answer, got {other:?}"
            ))),
        }
    }

    fn owner_info(&mut self, op: OwnerOp) -> Result<OwnerInfo, ClientError> {
        match self.owner_call(op)? {
            OwnerAnswer::Owner(o) => Ok(o),
            other => Err(ClientError::Protocol(format!(
                "expected an owner record, got {other:?}"
            ))),
        }
    }

    /// Every ownership record.
    pub fn owner_list(&mut self) -> Result<Vec<OwnerInfo>, ClientError> {
        match self.owner_call(OwnerOp::List(Empty {}))? {
            OwnerAnswer::Owners(l) => Ok(l.owners),
            other => Err(ClientError::Protocol(format!(
                "expected owners, got {other:?}"
            ))),
        }
    }

    /// One VHD's owner with the asked node's local fence.
    pub fn owner_show(&mut self, vhd: VhdRef) -> Result<OwnerInfo, ClientError> {
        self.owner_info(OwnerOp::Show(vhd))
    }

    /// Takes a hold on the asked node (`mode`: write, read, read_deny_write).
    pub fn owner_acquire(&mut self, vhd: VhdRef, mode: &str) -> Result<HoldInfo, ClientError> {
        match self.owner_call(OwnerOp::Acquire(OwnerAcquire {
            vhd: Some(vhd),
            mode: mode.to_string(),
        }))? {
            OwnerAnswer::Hold(h) => Ok(h),
            other => Err(ClientError::Protocol(format!(
                "expected a hold, got {other:?}"
            ))),
        }
    }

    /// Drops the asked node's hold.
    pub fn owner_release(&mut self, vhd: VhdRef) -> Result<OwnerInfo, ClientError> {
        self.owner_info(OwnerOp::Release(vhd))
    }

    /// Hands the VHD's write hold to node `to`.
    pub fn owner_move(&mut self, vhd: VhdRef, to: u64) -> Result<OwnerInfo, ClientError> {
        self.owner_info(OwnerOp::Move(OwnerMove { vhd: Some(vhd), to }))
    }

    /// Liveness of every node and the asked node's fence.
    pub fn node_liveness(&mut self) -> Result<LivenessInfo, ClientError> {
        match self.owner_call(OwnerOp::Liveness(Empty {}))? {
            OwnerAnswer::Liveness(l) => Ok(l),
            other => Err(ClientError::Protocol(format!(
                "expected liveness, got {other:?}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn client_round_trip_against_a_scripted_server() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a.sock");
        let l = UnixListener::bind(&path).expect("bind");
        let server = std::thread::spawn(move || {
            let (mut s, _) = l.accept().expect("accept");
            // status -> answer; then an error; then a wrong version; then close.
            let answers = [
                AdminResponse {
                    version: PROTOCOL_VERSION,
                    response: Some(Response::Status(Status {
                        node_id: 4,
                        ..Default::default()
                    })),
                },
                AdminResponse {
                    version: PROTOCOL_VERSION,
                    response: Some(Response::Error(ErrorReply {
                        code: ErrorCode::NotFound as u32,
                        name: "not_found".into(),
                        message: "vhd 9".into(),
                    })),
                },
                AdminResponse {
                    version: 99,
                    response: None,
                },
            ];
            for a in answers {
                let req = read_frame(&mut s).expect("read").expect("frame");
                let req = AdminRequest::decode(req.as_slice()).expect("decode");
                assert_eq!(req.version, PROTOCOL_VERSION);
                write_frame(&mut s, &a.encode_to_vec()).expect("write");
            }
        });
        let mut c = Client::connect(&path).expect("connect");
        assert_eq!(c.status().expect("status").node_id, 4);
        let e = c.vhd_get(9).expect_err("refused");
        assert_eq!(e.code(), Some(ErrorCode::NotFound));
        assert!(matches!(c.status(), Err(ClientError::Protocol(_))));
        server.join().expect("server");
        assert!(c.status().is_err());
        assert!(matches!(
            Client::connect(dir.path().join("none.sock")),
            Err(ClientError::Connect { .. })
        ));
    }
}
