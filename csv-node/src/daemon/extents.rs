//! VHD files of the catalog opened on the LUN: the node's extent reservation as the
//! [`ExtentSource`] of growing files (ReserveExtents in batches, so growth costs no
//! coordinator round trip per block), the catalog as their [`ExtentMapSink`]
//! (MapExtents / UnmapExtents proposals, fenced by the writer's generation), and
//! `open_image`, which opens a VHD (and its parent chain, read-only) over
//! `volume::ExtentFile`s.

use std::sync::{Arc, Mutex};

use csv_api::error::ApiError;
use csv_api::{ErrorCode, Generation, NodeId, VhdId};
use tokio::runtime::Handle;
use vhd::chain::{ChildRef, FnResolver, ParentCandidate, ParentHints};
use volume::{
    ExtentFile, ExtentMap, ExtentMapSink, ExtentRun, ExtentSource, Grant, Layout, LunPath,
    MapUpdate, SinkError, SourceError, WriteAccess,
};

use super::Member;
use super::handlers::{propose, query};
use super::volume::lock;
use crate::state::types::{Command, Query, QueryReply, Reply, Run, VhdRecord};

/// Extents reserved at once when the node's reservation runs low.
pub(crate) const RESERVE_BATCH: u64 = 16;
/// Deepest differencing chain opened (as the vhd crate).
const MAX_DEPTH: usize = vhd::MAX_CHAIN_DEPTH;

/// Runs `fut` on the runtime from synchronous code (an image's I/O thread), without
/// blocking a runtime worker.
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

/// The node's extent reservation, shared by every file it grows.
pub(crate) struct NodeReservation {
    member: Member,
    node: NodeId,
    handle: Handle,
    /// Reserved runs not handed to a file; `None` until loaded from the catalog.
    free: Mutex<Option<Vec<Run>>>,
}

impl NodeReservation {
    pub(crate) fn new(member: Member, node: NodeId, handle: Handle) -> NodeReservation {
        NodeReservation {
            member,
            node,
            handle,
            free: Mutex::new(None),
        }
    }

    fn load(&self) -> Result<Vec<Run>, SourceError> {
        let m = self.member.clone();
        let node = self.node;
        let r = run_sync(&self.handle, async move { query(&m, Query::Space).await })
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

    fn reserve(&self, count: u64) -> Result<Vec<Run>, SourceError> {
        let m = self.member.clone();
        let node = self.node;
        let r = run_sync(&self.handle, async move {
            propose(&m, Command::ReserveExtents { node, count }).await
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
        let mut g = lock(&self.free);
        if g.is_none() {
            *g = Some(self.load()?);
        }
        let free = g.as_mut().expect("loaded above");
        let have: u64 = free.iter().map(|r| r.count).sum();
        if have < count {
            let want = (count - have).max(RESERVE_BATCH);
            let more = match self.reserve(want) {
                Ok(r) => r,
                // A full volume may still hold exactly what is missing.
                Err(SourceError::Exhausted { .. }) if want > count - have => {
                    self.reserve(count - have)?
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
        if let Some(free) = lock(&self.free).as_mut() {
            free.extend(grants.iter().map(|g| to_run(&g.run)));
        }
    }
}

/// Commits a file's map to the catalog.
pub(crate) struct CatalogSink {
    member: Member,
    handle: Handle,
    vhd: VhdId,
    node: NodeId,
    generation: Option<Generation>,
    extent_size: u64,
    /// Runs and length as the catalog has them.
    committed: Mutex<(Vec<Run>, u64)>,
}

impl CatalogSink {
    pub(crate) fn new(
        member: Member,
        handle: Handle,
        rec: &VhdRecord,
        node: NodeId,
        generation: Option<Generation>,
        extent_size: u64,
    ) -> CatalogSink {
        CatalogSink {
            member,
            handle,
            vhd: rec.id,
            node,
            generation,
            extent_size,
            committed: Mutex::new((rec.runs.clone(), rec.length)),
        }
    }

    fn send(&self, cmd: Command) -> Result<VhdRecord, SinkError> {
        let m = self.member.clone();
        let r = run_sync(&self.handle, async move { propose(&m, cmd).await })
            .ok_or_else(|| SinkError("runtime stopped".into()))?;
        match r {
            Ok(Reply::Vhd(v)) => Ok(v),
            Ok(_) => Err(SinkError("unexpected reply".into())),
            Err(e) => Err(SinkError(e.to_string())),
        }
    }
}

/// Extent indexes of a run list, in file order.
fn extents(runs: &[Run]) -> impl Iterator<Item = u64> + '_ {
    runs.iter().flat_map(|r| r.start..r.start + r.count)
}

/// The runs of `runs` after its first `skip` extents.
fn tail(runs: &[Run], mut skip: u64) -> Vec<Run> {
    let mut out = Vec::new();
    for r in runs {
        if skip >= r.count {
            skip -= r.count;
            continue;
        }
        out.push(Run {
            start: r.start + skip,
            count: r.count - skip,
        });
        skip = 0;
    }
    out
}

impl ExtentMapSink for CatalogSink {
    fn commit(&self, update: &MapUpdate) -> Result<(), SinkError> {
        let mut c = lock(&self.committed);
        let new: Vec<Run> = update.runs.iter().map(to_run).collect();
        let old_n: u64 = c.0.iter().map(|r| r.count).sum();
        let new_n: u64 = new.iter().map(|r| r.count).sum();
        let common = extents(&c.0)
            .zip(extents(&new))
            .take_while(|(a, b)| a == b)
            .count() as u64;
        let mut len = c.1;
        if common < old_n {
            len = len.min(common * self.extent_size);
            let v = self.send(Command::UnmapExtents {
                vhd: self.vhd,
                keep_extents: common,
                length: len,
            })?;
            *c = (v.runs, v.length);
        }
        if new_n > common {
            let v = self.send(Command::MapExtents {
                vhd: self.vhd,
                node: self.node,
                runs: tail(&new, common),
                length: update.len.max(len),
                generation: self.generation,
            })?;
            *c = (v.runs, v.length);
        }
        if c.1 != update.len {
            let v = self.send(Command::UnmapExtents {
                vhd: self.vhd,
                keep_extents: new_n,
                length: update.len,
            })?;
            *c = (v.runs, v.length);
        }
        // Fail point: the commit applied but its answer is lost (a timeout, a leader
        // change): the outcome is unknown to this node.
        if volume::failpoint::value("catalog.commit.lost_reply").is_some() {
            return Err(SinkError("fail point: the commit's answer was lost".into()));
        }
        Ok(())
    }
}

fn bad_map(rec: &VhdRecord, e: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        ErrorCode::Storage,
        format!("VHD {} ({}): extent map: {e}", rec.name, rec.id),
    )
}

/// Opens a VHD's extent file (blocking).
pub(crate) fn open_file(
    lun: &Arc<dyn LunPath>,
    layout: &Layout,
    rec: &VhdRecord,
    access: Option<WriteAccess>,
) -> Result<ExtentFile, ApiError> {
    let runs: Vec<ExtentRun> = rec
        .runs
        .iter()
        .map(|r| ExtentRun::new(r.start, r.count))
        .collect();
    let map = ExtentMap::from_runs(&runs).map_err(|e| bad_map(rec, e))?;
    ExtentFile::open(lun.clone(), *layout, &rec.name, map, rec.length, access)
        .map_err(|e| bad_map(rec, e))
}

/// The parent chain of `rec` from the catalog: parent first.
pub(crate) async fn ancestors(m: &Member, rec: &VhdRecord) -> Result<Vec<VhdRecord>, ApiError> {
    let mut out: Vec<VhdRecord> = Vec::new();
    let mut next = rec.parent;
    while let Some(p) = next {
        if out.len() >= MAX_DEPTH {
            return Err(ApiError::new(
                ErrorCode::InvalidState,
                format!(
                    "VHD {} has a parent chain deeper than {MAX_DEPTH}",
                    rec.name
                ),
            ));
        }
        match query(m, Query::Vhd { vhd: p }).await? {
            QueryReply::Vhd(v) => {
                next = v.parent;
                out.push(v);
            }
            _ => return Err(ApiError::new(ErrorCode::Internal, "unexpected VHD reply")),
        }
    }
    Ok(out)
}

/// Opens the image of `rec` over `file` (blocking); parents are the catalog's `chain`
/// (parent first), opened read-only from the LUN.
pub(crate) fn open_image(
    lun: &Arc<dyn LunPath>,
    layout: &Layout,
    file: Arc<ExtentFile>,
    rec: &VhdRecord,
    chain: &[VhdRecord],
    read_only: bool,
) -> Result<vhd::Image, ApiError> {
    let mut parents = Vec::new();
    for p in chain {
        parents.push((p.name.clone(), Arc::new(open_file(lun, layout, p, None)?)));
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
    vhd::Image::open_storage(file, read_only, &format!("lun:{}", rec.name), &resolver).map_err(
        |e| {
            ApiError::new(
                ErrorCode::Storage,
                format!("open VHD {} on the LUN: {e}", rec.name),
            )
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_skips_whole_and_partial_runs() {
        let r = vec![
            Run {
                start: 10,
                count: 3,
            },
            Run {
                start: 20,
                count: 2,
            },
        ];
        assert_eq!(tail(&r, 0), r);
        assert_eq!(
            tail(&r, 2),
            vec![
                Run {
                    start: 12,
                    count: 1
                },
                Run {
                    start: 20,
                    count: 2
                }
            ]
        );
        assert_eq!(
            tail(&r, 3),
            vec![Run {
                start: 20,
                count: 2
            }]
        );
        assert_eq!(tail(&r, 5), Vec::<Run>::new());
        assert_eq!(extents(&r).collect::<Vec<_>>(), vec![10, 11, 12, 20, 21]);
    }
}
