//! VHD files of the catalog opened on the LUN: the node's extent reservation as the
//! [`ExtentSource`] of growing files (ReserveExtents in batches, at the node's epoch, so
//! growth costs no coordinator round trip per block), the catalog as their
//! [`ExtentMapSink`] (`SetExtents` at the writer's generation, idempotent; freed extents
//! only once this node's writes are past their bound; answered once a LUN checkpoint
//! covers it: docs/design/042 §2, §4, §6), and `open_image`, which opens a VHD (and its
//! parent chain, read-only under read holds) over `volume::ExtentFile`s.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use csv_api::{Epoch, ErrorCode, Generation, NodeId, VhdId};
use tokio::runtime::Handle;
use vhd::chain::{ChildRef, FnResolver, ParentCandidate, ParentHints};
use volume::{
    ExtentFile, ExtentMap, ExtentMapSink, ExtentRun, ExtentSource, Grant, Layout, LunPath,
    MapUpdate, ReadAccess, SinkError, SourceError, WriteAccess,
};

use super::error::DataError;
use crate::error::Coded as _;
use crate::lease::Leases;
use crate::meta::{EventHub, Member, unexpected};
use crate::state::types::{Command, Query, QueryReply, Reply, Run, VhdRecord};
use crate::sync::lock;

/// Extents reserved at once when the node's reservation runs low.
pub(crate) const RESERVE_BATCH: u64 = 16;
/// Deepest differencing chain opened (as the vhd crate).
const MAX_DEPTH: usize = vhd::MAX_CHAIN_DEPTH;
/// Longest a flush waits for a LUN checkpoint that covers its map change (the
/// coordinator writes one per burst of changes; a coordinator failover takes ~1-3 s).
pub(crate) const CHECKPOINT_WAIT: Duration = Duration::from_secs(10);
/// Longest pause between two looks at the recorded checkpoint (a wake-up comes with
/// every applied catalog change; this only bounds a missed one).
const CHECKPOINT_POLL: Duration = Duration::from_millis(100);

/// Runs `fut` on the runtime from synchronous code (an image's I/O thread, always a
/// blocking-pool thread: docs/design/042 §10) and waits for it.
pub(crate) fn run_sync<T: Send + 'static>(
    handle: &Handle,
    fut: impl std::future::Future<Output = T> + Send + 'static,
) -> Option<T> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    handle.spawn(async move {
        let _ = tx.send(fut.await);
    });
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(|| rx.recv().ok())
        }
        _ => rx.recv().ok(),
    }
}

fn to_run(r: &ExtentRun) -> Run {
    Run {
        start: r.start,
        count: r.count,
    }
}

/// The node's extent reservation, shared by every file it grows. It belongs to the
/// node's epoch (docs/design/042 §3): when the fence guard's epoch differs from the one
/// the list was loaded at, the list is dropped and loaded again (empty at a new epoch:
/// the state machine returned the old one to the pool when the epoch ended).
pub(crate) struct NodeReservation {
    member: Member,
    node: NodeId,
    handle: Handle,
    leases: Arc<Leases>,
    /// Reserved runs not handed to a file, and the epoch they belong to.
    free: Mutex<Option<(Epoch, Vec<Run>)>>,
}

impl NodeReservation {
    pub(crate) fn new(
        member: Member,
        node: NodeId,
        handle: Handle,
        leases: Arc<Leases>,
    ) -> NodeReservation {
        NodeReservation {
            member,
            node,
            handle,
            leases,
            free: Mutex::new(None),
        }
    }

    fn load(&self) -> Result<Vec<Run>, SourceError> {
        let m = self.member.clone();
        let node = self.node;
        let r = run_sync(&self.handle, async move { m.query(Query::Space).await })
            .ok_or_else(|| SourceError::Other("runtime stopped".into()))?;
        match r {
            Ok(QueryReply::Space(s)) => Ok(s
                .reservations
                .into_iter()
                .filter(|(n, _)| *n == node)
                .flat_map(|(_, r)| r)
                .collect()),
            Ok(_) => Err(SourceError::Other("unexpected space reply".into())),
            Err(e) => Err(SourceError::Other(format!("read reservation: {e}"))),
        }
    }

    fn reserve(&self, epoch: Epoch, count: u64) -> Result<Vec<Run>, SourceError> {
        let m = self.member.clone();
        let node = self.node;
        let r = run_sync(&self.handle, async move {
            m.propose(Command::ReserveExtents { node, epoch, count })
                .await
        })
        .ok_or_else(|| SourceError::Other("runtime stopped".into()))?;
        match r {
            Ok(Reply::Runs { runs }) => Ok(runs),
            Ok(_) => Err(SourceError::Other("unexpected reserve reply".into())),
            Err(e) if e.code() == ErrorCode::NoSpace => Err(SourceError::Exhausted {
                wanted: count,
                available: 0,
            }),
            Err(e) => Err(SourceError::Other(format!("reserve extents: {e}"))),
        }
    }
}

impl std::fmt::Debug for NodeReservation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NodeReservation({})", self.node)
    }
}

impl std::fmt::Debug for CatalogSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CatalogSink({} by {})", self.vhd, self.node)
    }
}

impl ExtentSource for NodeReservation {
    fn take(&self, count: u64, after: Option<u64>) -> Result<Vec<Grant>, SourceError> {
        let epoch = self.leases.guard().epoch().ok_or_else(|| {
            SourceError::Other("this node is not registered with the lock manager".into())
        })?;
        let mut g = lock(&self.free);
        if g.as_ref().is_none_or(|(e, _)| *e != epoch) {
            if g.is_some() {
                tracing::info!(%epoch, "epoch changed: the old extent reservation is dropped");
            }
            *g = Some((epoch, self.load()?));
        }
        let Some((_, free)) = g.as_mut() else {
            return Err(SourceError::Other("reservation not loaded".into()));
        };
        let have: u64 = free.iter().map(|r| r.count).sum();
        if have < count {
            let want = (count - have).max(RESERVE_BATCH);
            let more = match self.reserve(epoch, want) {
                Ok(r) => r,
                // A full volume may still hold exactly what is missing.
                Err(SourceError::Exhausted { .. }) if want > count - have => {
                    self.reserve(epoch, count - have)?
                }
                Err(e) => return Err(e),
            };
            free.extend(more);
        }
        // Continue the file's last run when the reservation can.
        if let Some(a) = after
            && let Some(i) = free.iter().position(|r| r.start == a + 1)
        {
            let i_run = free.remove(i);
            free.insert(0, i_run);
        }
        let mut out = Vec::new();
        let mut left = count;
        while left > 0 {
            let Some(r) = free.first_mut() else {
                return Err(SourceError::Exhausted {
                    wanted: count,
                    available: count - left,
                });
            };
            let n = r.count.min(left);
            out.push(Grant {
                run: ExtentRun::new(r.start, n),
                // Reserved extents may hold a deleted VHD's bytes.
                clean: false,
            });
            r.start += n;
            r.count -= n;
            if r.count == 0 {
                free.remove(0);
            }
            left -= n;
        }
        Ok(out)
    }

    fn put_back(&self, grants: &[Grant]) {
        let epoch = self.leases.guard().epoch();
        if let Some((e, free)) = lock(&self.free).as_mut()
            && Some(*e) == epoch
        {
            free.extend(grants.iter().map(|g| to_run(&g.run)));
        }
    }
}

/// Commits a writable file's map to the catalog: `SetExtents` at the hold's generation.
pub(crate) struct CatalogSink {
    member: Member,
    handle: Handle,
    vhd: VhdId,
    node: NodeId,
    generation: Generation,
    lun: Arc<dyn LunPath>,
    /// Bound of the wait for this node's in-doubt writes before extents are freed.
    quiet_limit: Duration,
    /// Woken by applied catalog changes and recorded checkpoints.
    events: Arc<EventHub>,
}

impl CatalogSink {
    pub(crate) fn new(
        member: Member,
        rec: &VhdRecord,
        node: NodeId,
        generation: Generation,
        lun: Arc<dyn LunPath>,
        quiet_limit: Duration,
        events: Arc<EventHub>,
    ) -> CatalogSink {
        CatalogSink {
            member,
            handle: Handle::current(),
            vhd: rec.id,
            node,
            generation,
            lun,
            quiet_limit,
            events,
        }
    }

    /// Waits until this replica recorded a checkpoint covering `index`.
    fn wait_checkpoint(&self, index: u64) -> Result<(), SinkError> {
        let m = self.member.clone();
        let events = self.events.clone();
        let r = run_sync(&self.handle, async move {
            wait_checkpoint(&m, events.catalog_changed(), index, CHECKPOINT_WAIT).await
        })
        .ok_or_else(|| SinkError("runtime stopped".into()))?;
        r.map_err(|e| SinkError(e.to_string()))
    }
}

/// Waits (bounded) until this node's replica records a LUN checkpoint covering catalog
/// changes up to `index` (docs/design/042 §6).
pub(crate) async fn wait_checkpoint(
    m: &Member,
    woken: &tokio::sync::Notify,
    index: u64,
    limit: Duration,
) -> Result<(), DataError> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let notified = woken.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if let QueryReply::Checkpoint(c) = m.query_local(Query::Checkpoint).await?
            && c.checkpoint_index >= index
        {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(DataError::CheckpointTimeout { index, limit });
        }
        let _ = tokio::time::timeout(CHECKPOINT_POLL, notified).await;
    }
}

impl ExtentMapSink for CatalogSink {
    fn commit(&self, update: &MapUpdate) -> Result<(), SinkError> {
        // Freed extents go back to the pool with this command: no write of this node may
        // still land on them (042 §4).
        if !update.released.is_empty() {
            let start = Instant::now();
            if !volume::wait_quiet(&*self.lun, self.quiet_limit) {
                return Err(SinkError(format!(
                    "writes of this node are still in doubt after {:?}: the extents are not freed yet",
                    start.elapsed()
                )));
            }
        }
        let m = self.member.clone();
        let cmd = Command::SetExtents {
            vhd: self.vhd,
            node: self.node,
            generation: self.generation,
            runs: update.runs.iter().map(to_run).collect(),
            length: update.len,
        };
        let r = run_sync(&self.handle, async move { m.propose(cmd).await })
            .ok_or_else(|| SinkError("runtime stopped".into()))?;
        let index = match r {
            Ok(Reply::Extents { index, .. }) => index,
            Ok(_) => return Err(SinkError("unexpected reply".into())),
            Err(e) => return Err(SinkError(e.to_string())),
        };
        // Fail point: the commit applied but its answer is lost (a timeout, a leader
        // change): the outcome is unknown to this node.
        if volume::failpoint::value("catalog.commit.lost_reply").is_some() {
            return Err(SinkError("fail point: the commit's answer was lost".into()));
        }
        self.wait_checkpoint(index)
    }
}

fn bad_map(rec: &VhdRecord, e: impl std::fmt::Display) -> DataError {
    DataError::storage(format!("VHD {} ({}): extent map", rec.name, rec.id), e)
}

/// Opens a VHD's extent file (blocking). Without write access, `read` (a read hold's
/// fence) guards its reads.
pub(crate) fn open_file(
    lun: &Arc<dyn LunPath>,
    layout: &Layout,
    rec: &VhdRecord,
    access: Option<WriteAccess>,
    read: Option<ReadAccess>,
) -> Result<ExtentFile, DataError> {
    let runs: Vec<ExtentRun> = rec
        .runs
        .iter()
        .map(|r| ExtentRun::new(r.start, r.count))
        .collect();
    let map = ExtentMap::from_runs(&runs).map_err(|e| bad_map(rec, e))?;
    let f = ExtentFile::open(lun.clone(), *layout, &rec.name, map, rec.length, access)
        .map_err(|e| bad_map(rec, e))?;
    Ok(match read {
        Some(r) => f.with_read_access(r),
        None => f,
    })
}

/// The parent chain of `rec` from the catalog: parent first.
pub(crate) async fn ancestors(m: &Member, rec: &VhdRecord) -> Result<Vec<VhdRecord>, DataError> {
    let mut out: Vec<VhdRecord> = Vec::new();
    let mut next = rec.parent;
    while let Some(p) = next {
        if out.len() >= MAX_DEPTH {
            return Err(DataError::InvalidState(format!(
                "VHD {} has a parent chain deeper than {MAX_DEPTH}",
                rec.name
            )));
        }
        match m.query(Query::Vhd { vhd: p }).await? {
            QueryReply::Vhd(v) => {
                next = v.parent;
                out.push(v);
            }
            _ => return unexpected("a VHD query"),
        }
    }
    Ok(out)
}

/// Opens the image of `rec` over `file` (blocking); parents are the catalog's `chain`
/// (parent first), opened read-only from the LUN, each guarded by the read access of
/// the same position in `parent_access` (the read holds on them), if given.
pub(crate) fn open_image(
    lun: &Arc<dyn LunPath>,
    layout: &Layout,
    file: Arc<ExtentFile>,
    rec: &VhdRecord,
    chain: &[VhdRecord],
    parent_access: &[ReadAccess],
    read_only: bool,
) -> Result<vhd::Image, DataError> {
    let mut parents = Vec::new();
    for (i, p) in chain.iter().enumerate() {
        let f = open_file(lun, layout, p, None, parent_access.get(i).cloned())?;
        parents.push((p.name.clone(), Arc::new(f)));
    }
    let resolver =
        FnResolver(
            move |child: ChildRef<'_>, _: &ParentHints| match parents.get(child.depth) {
                Some((name, f)) => (
                    vec![ParentCandidate {
                        storage: f.clone() as Arc<dyn vhd::Storage>,
                        identity: format!("lun:{name}"),
                        path: None,
                    }],
                    vec![format!("catalog parent {name}")],
                ),
                None => (Vec::new(), vec!["(the catalog records no parent)".into()]),
            },
        );
    vhd::Image::open_storage(file, read_only, &format!("lun:{}", rec.name), &resolver)
        .map_err(|e| DataError::storage(format!("open VHD {} on the LUN", rec.name), e))
}
