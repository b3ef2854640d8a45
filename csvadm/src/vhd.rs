//! `csvadm vhd ...`: VHD images on the cluster volume, through the addressed node: create,
//! list, info, delete, attach and detach (the export is served by the node that attaches:
//! the addressed one, or the one `--node` names, asked through the cluster's log),
//! import and export of local files (paths on the node's host), expand, compact and merge
//! (long operations draw a progress bar on a terminal: `remote_progress.rs`). Exit codes
//! in `client.rs`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand, ValueEnum};
use csv_api::admin::volume::{
    VhdAttach, VhdDetach, VhdExport, VhdImport, VhdMaintain, VhdMerge, VhdNew,
};
use csv_api::admin::{Client, Request, Response, Vhd, VhdKind, VhdList, VhdRef, VhdState};
use serde::Serialize;

use crate::attachment::AttachmentView;
use crate::client::{Failure, connect, unexpected};
use crate::output::{Output, print};
use crate::remote_progress::{call_with_progress, new_op_id};
use crate::size::parse_size;

#[derive(Args, Debug)]
pub struct VhdArgs {
    /// Print JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: VhdCommand,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum TypeArg {
    Fixed,
    Dynamic,
}

#[derive(Subcommand, Debug)]
enum VhdCommand {
    /// Create a VHD on the volume (a differencing child with --parent).
    Create {
        /// Name (also its NBD export name).
        name: String,
        /// Virtual size (e.g. 10G); not for a differencing child.
        #[arg(long, value_parser = parse_size, required_unless_present = "parent")]
        size: Option<u64>,
        /// Type.
        #[arg(long = "type", value_enum, default_value = "dynamic")]
        kind: TypeArg,
        /// Parent VHD: creates a differencing child.
        #[arg(long, conflicts_with = "size")]
        parent: Option<String>,
    },
    /// The catalog's VHDs.
    List,
    /// One VHD.
    Info {
        /// Name.
        name: String,
    },
    /// Delete a VHD (refused while attached anywhere or while it has children).
    Delete {
        /// Name.
        name: String,
    },
    /// Attach a VHD: the serving node (the addressed one, or --node) takes ownership and
    /// serves the VHD as NBD export NAME on its socket (the answer names that socket).
    Attach {
        /// Name.
        name: String,
        /// Node that serves it (default: the addressed node). Another node is asked
        /// through the cluster and answers within 30 s; a node that is down, expired or
        /// removed is reported as unavailable.
        #[arg(long)]
        node: Option<u64>,
        /// Shared read-only hold (no writer anywhere meanwhile) and a read-only export.
        #[arg(long)]
        read_only: bool,
    },
    /// Flush, remove the export, release ownership (on the addressed node, or --node).
    Detach {
        /// Name.
        name: String,
        /// Node that detaches it (default: the addressed node; when the VHD is attached
        /// elsewhere, the error names the node that holds it).
        #[arg(long)]
        node: Option<u64>,
    },
    /// Copy a local VHD file (fixed or dynamic, on the node's host) into a new VHD.
    Import {
        /// The file.
        file: PathBuf,
        /// New VHD name.
        name: String,
    },
    /// Grow a detached VHD's virtual size.
    Expand {
        /// Name.
        name: String,
        /// New virtual size.
        #[arg(long, value_parser = parse_size)]
        size: u64,
    },
    /// Reclaim zero blocks and leaked space of a detached dynamic or differencing VHD.
    Compact {
        /// Name.
        name: String,
    },
    /// Copy a VHD's exact bytes into a new local file (on the node's host).
    Export {
        /// Name.
        name: String,
        /// New file.
        file: PathBuf,
    },
    /// Merge a detached differencing child into its detached parent (which must have no
    /// other child), then delete the child.
    Merge {
        /// The child's name.
        child: String,
    },
}

/// Runs `csvadm vhd ...`; `json` is the top-level `--json`.
pub fn run(socket: &Path, args: VhdArgs, json: bool) -> Result<(), Failure> {
    let out = Output::json_if(args.json || json);
    let mut c = connect(socket)?;
    match args.command {
        VhdCommand::Create {
            name,
            size,
            kind,
            parent,
        } => {
            let kind = match kind {
                TypeArg::Fixed => VhdKind::Fixed,
                TypeArg::Dynamic => VhdKind::Dynamic,
            };
            let v = expect_vhd(c.call(Request::VhdNew(VhdNew {
                name,
                kind: kind as i32,
                size: size.unwrap_or(0),
                parent: parent.unwrap_or_default(),
            }))?)?;
            print(&VhdView::new(&v, &no_names), out)?;
        }
        VhdCommand::List => print(&list(&mut c)?, out)?,
        VhdCommand::Info { name } => {
            let v = expect_vhd(c.call(Request::VhdGet(VhdRef { id: 0, name }))?)?;
            let mut view = VhdView::new(&v, &no_names);
            view.attachment = attachment_path(&mut c, v.id)?;
            print(&view, out)?;
        }
        VhdCommand::Delete { name } => {
            let v = expect_vhd(c.call(Request::VhdDelete(VhdRef { id: 0, name }))?)?;
            let vhd = VhdView::new(&v, &no_names);
            print(&DeletedView { vhd }, out)?;
        }
        VhdCommand::Attach {
            name,
            node,
            read_only,
        } => {
            let request = Request::VhdAttach(VhdAttach {
                name,
                node: node.unwrap_or(0),
                read_only,
            });
            match c.call(request)? {
                Response::Attachment(a) => print(&AttachmentView::from(&a), out)?,
                other => return Err(unexpected(&other)),
            }
        }
        VhdCommand::Detach { name, node } => {
            let request = Request::VhdDetach(VhdDetach {
                name: name.clone(),
                node: node.unwrap_or(0),
            });
            match c.call(request)? {
                Response::Done(_) => print(&DetachedView { detached: name }, out)?,
                other => return Err(unexpected(&other)),
            }
        }
        VhdCommand::Import { file, name } => {
            let path = local_path(&file)?;
            let op_id = new_op_id();
            let what = format!("import {name}");
            let request = Request::VhdImport(VhdImport { path, name, op_id });
            let v = expect_vhd(call_with_progress(socket, &mut c, &what, op_id, request)?)?;
            print(&VhdView::new(&v, &no_names), out)?;
        }
        VhdCommand::Expand { name, size } => {
            let v = expect_vhd(c.call(Request::VhdMaintain(VhdMaintain {
                name,
                size,
                op_id: 0,
            }))?)?;
            print(&VhdView::new(&v, &no_names), out)?;
        }
        VhdCommand::Compact { name } => {
            let op_id = new_op_id();
            let what = format!("compact {name}");
            let request = Request::VhdMaintain(VhdMaintain {
                name,
                size: 0,
                op_id,
            });
            let v = expect_vhd(call_with_progress(socket, &mut c, &what, op_id, request)?)?;
            print(&VhdView::new(&v, &no_names), out)?;
        }
        VhdCommand::Export { name, file } => {
            let path = local_path(&file)?;
            let op_id = new_op_id();
            let what = format!("export {name}");
            let request = Request::VhdExport(VhdExport {
                name: name.clone(),
                path: path.clone(),
                op_id,
            });
            match call_with_progress(socket, &mut c, &what, op_id, request)? {
                Response::Done(_) => print(
                    &ExportedView {
                        exported: name,
                        file: path,
                    },
                    out,
                )?,
                other => return Err(unexpected(&other)),
            }
        }
        VhdCommand::Merge { child } => {
            let op_id = new_op_id();
            let what = format!("merge {child}");
            let request = Request::VhdMerge(VhdMerge {
                name: child.clone(),
                op_id,
            });
            let v = expect_vhd(call_with_progress(socket, &mut c, &what, op_id, request)?)?;
            let parent = VhdView::new(&v, &no_names);
            print(
                &MergedView {
                    merged: child,
                    parent,
                },
                out,
            )?;
        }
    }
    Ok(())
}

fn expect_vhd(r: Response) -> Result<Vhd, Failure> {
    match r {
        Response::Vhd(v) => Ok(v),
        other => Err(unexpected(&other)),
    }
}

/// Every VHD of the catalog, page by page.
fn list(c: &mut Client) -> Result<VhdListView, Failure> {
    let mut all = Vec::new();
    let mut after = 0;
    loop {
        match c.call(Request::VhdList(VhdList { after, limit: 1000 }))? {
            Response::VhdList(p) => {
                all.extend(p.vhds);
                if p.next_after == 0 {
                    break;
                }
                after = p.next_after;
            }
            other => return Err(unexpected(&other)),
        }
    }
    let by_id: BTreeMap<u64, String> = all.iter().map(|v| (v.id, v.name.clone())).collect();
    let names = |id: u64| by_id.get(&id).cloned();
    let rows = all
        .iter()
        .map(|v| VhdRow {
            vhd: VhdView::new(v, &names),
            listed_parent: names(v.parent).unwrap_or_default(),
        })
        .collect();
    Ok(VhdListView { rows })
}

/// No VHD names known: a parent shows as its id.
fn no_names(_: u64) -> Option<String> {
    None
}

/// `path` made absolute against the current directory (the node resolves it on its host).
fn local_path(p: &Path) -> Result<String, Failure> {
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|e| Failure::local(format!("current directory: {e}")))?
            .join(p)
    };
    Ok(abs.display().to_string())
}

fn kind_name(k: i32) -> &'static str {
    match VhdKind::try_from(k) {
        Ok(VhdKind::Fixed) => "fixed",
        Ok(VhdKind::Dynamic) => "dynamic",
        Ok(VhdKind::Differencing) => "differencing",
        _ => "unknown",
    }
}

fn state_name(s: i32) -> &'static str {
    match VhdState::try_from(s) {
        Ok(VhdState::Creating) => "creating",
        Ok(VhdState::Ready) => "ready",
        Ok(VhdState::Deleting) => "deleting",
        _ => "unknown",
    }
}

/// A VHD of the catalog: `vhd create|info|import|expand|compact`.
#[derive(Debug, Serialize)]
pub struct VhdView {
    pub id: u64,
    pub name: String,
    /// `fixed`, `dynamic` or `differencing`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub virtual_size: u64,
    /// The parent's name (its id when the name is not at hand); `None` without a parent.
    pub parent: Option<String>,
    /// Length of the VHD file on the volume.
    pub length: u64,
    /// Number of extents mapped.
    pub extents: u64,
    /// Mapped extent runs as `[start, count]`.
    pub runs: Vec<[u64; 2]>,
    /// `creating`, `ready` or `deleting`.
    pub state: &'static str,
    /// `vhd info`: the node writing the VHD and how it reaches the LUN now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attachment: Option<crate::path::PathView>,
}

/// The writer of VHD `id` and that node's LUN path state (`vhd info`), if it is held.
fn attachment_path(
    c: &mut csv_api::admin::Client,
    id: u64,
) -> Result<Option<crate::path::PathView>, Failure> {
    use csv_api::admin::owner::{OwnerAnswer, OwnerOp, OwnerRequest};
    let show = Request::Owner(OwnerRequest {
        op: Some(OwnerOp::Show(VhdRef {
            id,
            name: String::new(),
        })),
    });
    let owner = match c.call(show)? {
        Response::Owner(o) => match o.answer {
            Some(OwnerAnswer::Owner(i)) if i.owner != 0 => i.owner,
            _ => return Ok(None),
        },
        other => return Err(unexpected(&other)),
    };
    let st = match c.call(Request::VolumeStatus(csv_api::admin::Empty {}))? {
        Response::VolumeStatus(s) => s,
        other => return Err(unexpected(&other)),
    };
    Ok(Some(
        st.paths
            .iter()
            .find(|p| p.node == owner)
            .map(crate::path::PathView::from)
            .unwrap_or_else(|| {
                crate::path::PathView::from(&csv_api::admin::volume::NodePath {
                    node: owner,
                    ..Default::default()
                })
            }),
    ))
}

impl VhdView {
    /// The view of `v`; `names` gives a VHD's name from its id, when known.
    pub fn new(v: &Vhd, names: &dyn Fn(u64) -> Option<String>) -> VhdView {
        VhdView {
            id: v.id,
            name: v.name.clone(),
            kind: kind_name(v.kind),
            virtual_size: v.virtual_size,
            parent: (v.parent != 0)
                .then(|| names(v.parent).unwrap_or_else(|| v.parent.to_string())),
            length: v.length,
            extents: v.runs.iter().map(|r| r.count).sum(),
            runs: v.runs.iter().map(|r| [r.start, r.count]).collect(),
            state: state_name(v.state),
            attachment: None,
        }
    }
}

impl fmt::Display for VhdView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (id {}): {} {} bytes, {} extents, file length {}, {}",
            self.name, self.id, self.kind, self.virtual_size, self.extents, self.length, self.state
        )?;
        if let Some(a) = &self.attachment {
            let path = if a.path.is_empty() {
                "unknown"
            } else {
                &a.path
            };
            write!(
                f,
                "\n  written by node {}: LUN path {path} ({})",
                a.node, a.reason
            )?;
            if let Some(p) = a.peer {
                write!(f, " through node {p}")?;
            }
        }
        Ok(())
    }
}

/// `vhd list`: the catalog (a JSON array of [`VhdView`]).
#[derive(Debug, Serialize)]
#[serde(transparent)]
pub struct VhdListView {
    pub rows: Vec<VhdRow>,
}

/// A row of [`VhdListView`].
#[derive(Debug, Serialize)]
#[serde(transparent)]
pub struct VhdRow {
    pub vhd: VhdView,
    /// The parent's name when the parent is in the list, else empty (the PARENT column).
    #[serde(skip)]
    pub listed_parent: String,
}

impl fmt::Display for VhdListView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:<6} {:<24} {:<13} {:>16} {:>8} {:<8} PARENT",
            "ID", "NAME", "TYPE", "SIZE", "EXTENTS", "STATE"
        )?;
        for r in &self.rows {
            let v = &r.vhd;
            write!(
                f,
                "\n{:<6} {:<24} {:<13} {:>16} {:>8} {:<8} {}",
                v.id, v.name, v.kind, v.virtual_size, v.extents, v.state, r.listed_parent
            )?;
        }
        Ok(())
    }
}

/// `vhd delete`: the deleted VHD.
#[derive(Debug, Serialize)]
#[serde(transparent)]
pub struct DeletedView {
    pub vhd: VhdView,
}

impl fmt::Display for DeletedView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "deleted {}", self.vhd.name)
    }
}

/// `vhd detach`: the detached VHD.
#[derive(Debug, Serialize)]
pub struct DetachedView {
    /// The VHD's name.
    pub detached: String,
}

impl fmt::Display for DetachedView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} detached", self.detached)
    }
}

/// `vhd export`: the VHD and the file written.
#[derive(Debug, Serialize)]
pub struct ExportedView {
    /// The VHD's name.
    pub exported: String,
    /// The file written, on the node's host.
    pub file: String,
}

impl fmt::Display for ExportedView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} written to {}", self.exported, self.file)
    }
}

/// `vhd merge`: the merged child's name and the parent afterwards.
#[derive(Debug, Serialize)]
pub struct MergedView {
    pub merged: String,
    pub parent: VhdView,
}

impl fmt::Display for MergedView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} merged into {}\n{}",
            self.merged, self.parent.name, self.parent
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::to_json;
    use csv_api::admin::ExtentRun;

    fn vhd(id: u64, name: &str, parent: u64) -> Vhd {
        Vhd {
            id,
            name: name.into(),
            kind: VhdKind::Differencing as i32,
            virtual_size: 4096,
            parent,
            runs: vec![ExtentRun { start: 3, count: 2 }],
            length: 8192,
            state: VhdState::Ready as i32,
            created_index: 1,
        }
    }

    #[test]
    fn vhd_text_and_json() {
        let v = VhdView::new(&vhd(2, "c", 1), &no_names);
        assert_eq!(
            v.to_string(),
            "c (id 2): differencing 4096 bytes, 2 extents, file length 8192, ready"
        );
        assert_eq!(
            to_json(&v, false).expect("json"),
            r#"{"extents":2,"id":2,"length":8192,"name":"c","parent":"1","runs":[[3,2]],"state":"ready","type":"differencing","virtual_size":4096}"#
        );
        let deleted = DeletedView { vhd: v };
        assert_eq!(deleted.to_string(), "deleted c");
        assert!(
            to_json(&deleted, false)
                .expect("json")
                .starts_with(r#"{"extents":2,"#)
        );
    }

    #[test]
    fn list_shows_listed_parents_only() {
        let names = |id: u64| (id == 1).then(|| "p".to_string());
        let rows = [vhd(2, "c", 1), vhd(3, "d", 9)]
            .iter()
            .map(|v| VhdRow {
                vhd: VhdView::new(v, &names),
                listed_parent: names(v.parent).unwrap_or_default(),
            })
            .collect();
        let list = VhdListView { rows };
        let text = list.to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[1].ends_with("ready    p"));
        assert!(lines[2].ends_with("ready    "));
        let j: serde_json::Value =
            serde_json::from_str(&to_json(&list, false).expect("json")).expect("parse");
        assert_eq!(j[0]["parent"], "p");
        assert_eq!(j[1]["parent"], "9");
    }

    #[test]
    fn merged_and_exported() {
        let m = MergedView {
            merged: "c".into(),
            parent: VhdView::new(&vhd(1, "p", 0), &no_names),
        };
        assert_eq!(
            m.to_string(),
            "c merged into p\np (id 1): differencing 4096 bytes, 2 extents, file length 8192, ready"
        );
        let j: serde_json::Value =
            serde_json::from_str(&to_json(&m, false).expect("json")).expect("parse");
        assert_eq!(j["merged"], "c");
        assert!(j["parent"]["parent"].is_null());
        let e = ExportedView {
            exported: "a".into(),
            file: "/f".into(),
        };
        assert_eq!(e.to_string(), "a written to /f");
        assert_eq!(
            to_json(&e, false).expect("json"),
            r#"{"exported":"a","file":"/f"}"#
        );
    }
}
