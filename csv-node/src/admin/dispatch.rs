//! The one dispatch of admin requests: each request goes to the subsystem that owns it
//! (cluster membership and status: `cluster.rs`; ownership: `owner.rs`; the catalog's
//! records through the metadata client; the volume and VHDs: the data path and its
//! operations). Subsystem answers are mapped to wire responses here.

use csv_api::admin::{self as api, Request, Response};
use csv_api::error::ApiError;

use super::{Admin, cluster, owner, vm};
use crate::convert::{self, vhd_to_api};
use crate::meta::{Member, meta_err, unexpected};
use crate::state::types::{Command, Query, QueryReply, Reply};

fn vhd_reply(r: Reply) -> Result<Response, ApiError> {
    match r {
        Reply::Vhd(v) => Ok(Response::Vhd(vhd_to_api(&v))),
        _ => unexpected("a VHD command"),
    }
}

/// `node metrics`: the text the endpoint serves, when it is configured.
async fn metrics(a: &Admin) -> Result<Response, ApiError> {
    let Some(listen) = a.cfg.metrics.listen else {
        return Err(ApiError::new(
            csv_api::ErrorCode::InvalidState,
            format!(
                "metrics are off on node {}: set [metrics] listen in its configuration",
                a.meta.id()
            ),
        ));
    };
    let text = crate::metrics::http::scrape(&a.metrics)
        .await
        .map_err(|e| ApiError::new(csv_api::ErrorCode::Internal, format!("{e:#}")))?;
    // The reply must fit one admin frame (with room for its envelope).
    if text.len() > csv_api::admin::frame::MAX_FRAME_BYTES - 4096 {
        return Err(ApiError::new(
            csv_api::ErrorCode::TooLarge,
            format!(
                "{} bytes of metrics do not fit an admin frame: fetch http://{listen}/metrics",
                text.len()
            ),
        ));
    }
    Ok(Response::Metrics(api::MetricsReply {
        listen: listen.to_string(),
        text,
    }))
}

fn done(r: Result<(), impl Into<ApiError>>) -> Result<Response, ApiError> {
    r.map(|()| Response::Done(api::Empty {}))
        .map_err(Into::into)
}

/// Handles one admin request.
pub(super) async fn handle(a: &Admin, r: Request) -> Result<Response, ApiError> {
    match r {
        Request::ClusterInit(c) => {
            let id = a.meta.init_cluster(&c.name).await?;
            Ok(Response::ClusterInit(api::ClusterInitReply {
                cluster_id: id.to_string(),
                node_id: a.meta.id(),
            }))
        }
        Request::Status(_) => cluster::status(a).await.map(Response::Status),
        Request::Owner(o) => owner::handle(a, o).await,
        Request::NodeAdd(n) => cluster::node_add(a, n).await,
        Request::NodePromote(n) => cluster::node_promote(a, n.id).await,
        Request::NodeRemove(n) => cluster::node_remove(a, n.id).await,
        Request::LeaderTransfer(n) => {
            let m = a.meta.member().await?;
            m.meta.transfer_leader(n.id).await.map_err(meta_err)?;
            Ok(Response::Done(api::Empty {}))
        }
        Request::VolumeGet(_) => {
            let m = a.meta.member().await?;
            match m.query(Query::Volume).await? {
                QueryReply::Volume { volume } => Ok(Response::Volume(api::VolumeReply {
                    volume: volume.as_ref().map(convert::volume_to_api),
                })),
                _ => unexpected("volume query"),
            }
        }
        Request::VolumeSet(v) => {
            let m = a.meta.member().await?;
            let volume = convert::volume_from_api(&v)?;
            match m.propose(Command::SetVolume { volume }).await? {
                Reply::Volume(v) => Ok(Response::Volume(api::VolumeReply {
                    volume: Some(convert::volume_to_api(&v)),
                })),
                _ => unexpected("set volume"),
            }
        }
        Request::VhdCreate(c) => {
            let m = a.meta.member().await?;
            let cmd = Command::CreateVhd {
                name: c.name,
                kind: convert::kind_from_api(c.kind)?,
                virtual_size: c.virtual_size,
                parent: (c.parent != 0).then_some(csv_api::VhdId(c.parent)),
                length: c.length,
            };
            vhd_reply(m.propose(cmd).await?)
        }
        Request::VhdDelete(v) => {
            let m = a.meta.member().await?;
            let vhd = resolve(&m, &v).await?;
            vhd_reply(m.propose(Command::DeleteVhd { vhd }).await?)
        }
        Request::VhdGet(v) => {
            let m = a.meta.member().await?;
            let q = if v.id != 0 {
                Query::Vhd {
                    vhd: convert::vhd(v.id)?,
                }
            } else {
                Query::VhdByName { name: v.name }
            };
            match m.query(q).await? {
                QueryReply::Vhd(v) => Ok(Response::Vhd(vhd_to_api(&v))),
                _ => unexpected("VHD query"),
            }
        }
        Request::VhdList(l) => {
            let m = a.meta.member().await?;
            let limit = if l.limit == 0 { 100 } else { l.limit };
            match m
                .query(Query::VhdList {
                    after: l.after,
                    limit,
                })
                .await?
            {
                QueryReply::VhdPage {
                    vhds,
                    next_after,
                    total,
                } => Ok(Response::VhdList(api::VhdPage {
                    vhds: vhds.iter().map(vhd_to_api).collect(),
                    next_after,
                    total,
                })),
                _ => unexpected("VHD list"),
            }
        }
        Request::SpaceGet(_) => {
            let m = a.meta.member().await?;
            match m.query(Query::Space).await? {
                QueryReply::Space(s) => Ok(Response::Space(convert::space_to_api(&s))),
                _ => unexpected("space query"),
            }
        }
        Request::VolumeFormat(f) => Ok(a.data.volume_format(f).await?),
        Request::VolumeStatus(_) => Ok(Response::VolumeStatus(a.data.volume_status().await?)),
        Request::VolumeRecover(r) => Ok(a.data.volume_recover(r).await?),
        Request::VolumeRedirect(r) => Ok(Response::VolumeStatus(a.data.volume_redirect(r).await?)),
        Request::VolumeEvents(e) => Ok(Response::PathEvents(a.data.volume_events(e).await?)),
        Request::Attachments(_) => Ok(Response::Attachments(api::volume::Attachments {
            attachments: a.data.attachments_list(),
        })),
        Request::VhdNew(n) => Ok(Response::Vhd(vhd_to_api(&a.ops.vhd_new(n).await?))),
        Request::VhdAttach(x) => Ok(Response::Attachment(a.ops.attach_request(x).await?)),
        Request::VhdDetach(x) => done(a.ops.detach_request(x).await),
        Request::VhdImport(i) => Ok(Response::Vhd(vhd_to_api(&a.ops.vhd_import(i).await?))),
        Request::VhdExport(e) => done(a.ops.vhd_export(e).await),
        Request::VhdMaintain(x) => Ok(Response::Vhd(vhd_to_api(&a.ops.vhd_maintain(x).await?))),
        Request::VhdMerge(x) => Ok(Response::Vhd(vhd_to_api(&a.ops.vhd_merge(x).await?))),
        Request::Vm(v) => vm::handle(a, v).await,
        Request::NodeMetrics(_) => metrics(a).await,
        Request::OperationProgress(p) => Ok(Response::Progress(a.ops.progress.get(p.op_id)?)),
    }
}

async fn resolve(m: &Member, v: &api::VhdRef) -> Result<csv_api::VhdId, ApiError> {
    if v.id != 0 {
        return convert::vhd(v.id);
    }
    match m
        .query(Query::VhdByName {
            name: v.name.clone(),
        })
        .await?
    {
        QueryReply::Vhd(r) => Ok(r.id),
        _ => unexpected("VHD query"),
    }
}
