//! `csvadm vhd ...`: VHD images on the cluster volume, through the addressed node: create,
//! list, info, delete, attach and detach (the export is served by the node that attaches:
//! the addressed one, or the one `--node` names, asked through the cluster's log),
//! import and export of local files (paths on the node's host), expand, compact and merge
//! (long operations draw a progress bar on a terminal: `remote_progress.rs`).

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand, ValueEnum};
use csv_api::admin::volume::{
    Attachment, VhdAttach, VhdDetach, VhdExport, VhdImport, VhdMaintain, VhdMerge, VhdNew,
};
use csv_api::admin::{Request, Response, Vhd, VhdKind, VhdList, VhdRef, VhdState};
use serde_json::json;

use crate::cluster::{EXIT_REFUSED, Failure, connect, failure};
use crate::remote_progress::{call_with_progress, new_op_id};
use crate::size::parse_size;
use crate::volume::unexpected;

/// `csvadm vhd`.
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

/// The `--json` form of a VHD record.
pub fn vhd_json(v: &Vhd, names: &dyn Fn(u64) -> Option<String>) -> serde_json::Value {
    json!({
        "id": v.id,
        "name": v.name,
        "type": kind_name(v.kind),
        "virtual_size": v.virtual_size,
        "parent": if v.parent == 0 { serde_json::Value::Null } else { json!(names(v.parent).unwrap_or_else(|| v.parent.to_string())) },
        "length": v.length,
        "extents": v.runs.iter().map(|r| r.count).sum::<u64>(),
        "runs": v.runs.iter().map(|r| json!([r.start, r.count])).collect::<Vec<_>>(),
        "state": state_name(v.state),
    })
}

/// The `--json` form of an attachment.
pub fn attachment_json(a: &Attachment) -> serde_json::Value {
    json!({
        "name": a.name, "vhd": a.vhd, "node": a.node, "read_only": a.read_only,
        "generation": a.generation, "socket": a.socket, "uri": a.uri,
        "tcp": if a.tcp.is_empty() { serde_json::Value::Null } else { json!(a.tcp) },
        "error": if a.error.is_empty() { serde_json::Value::Null } else { json!(a.error) },
    })
}

fn local_path(p: &Path) -> Result<String, Failure> {
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|e| Failure {
                code: 1,
                message: format!("current directory: {e}"),
            })?
            .join(p)
    };
    Ok(abs.display().to_string())
}

/// Runs `csvadm vhd ...`.
pub fn run(socket: &Path, args: VhdArgs, json_top: bool) -> Result<(), Failure> {
    let json_out = args.json || json_top;
    let mut c = connect(socket)?;
    let no_names = |_: u64| None;
    let print_vhd = |v: &Vhd| {
        if json_out {
            println!("{}", vhd_json(v, &no_names));
        } else {
            println!(
                "{} (id {}): {} {} bytes, {} extents, file length {}, {}",
                v.name,
                v.id,
                kind_name(v.kind),
                v.virtual_size,
                v.runs.iter().map(|r| r.count).sum::<u64>(),
                v.length,
                state_name(v.state)
            );
        }
    };
    match args.command {
        VhdCommand::Create {
            name,
            size,
            kind,
            parent,
        } => {
            let r = c
                .call(Request::VhdNew(VhdNew {
                    name,
                    kind: match kind {
                        TypeArg::Fixed => VhdKind::Fixed,
                        TypeArg::Dynamic => VhdKind::Dynamic,
                    } as i32,
                    size: size.unwrap_or(0),
                    parent: parent.unwrap_or_default(),
                }))
                .map_err(failure)?;
            match r {
                Response::Vhd(v) => print_vhd(&v),
                other => return Err(unexpected(&other)),
            }
        }
        VhdCommand::List => {
            let mut all = Vec::new();
            let mut after = 0;
            loop {
                match c
                    .call(Request::VhdList(VhdList { after, limit: 1000 }))
                    .map_err(failure)?
                {
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
            let by_id: std::collections::BTreeMap<u64, String> =
                all.iter().map(|v| (v.id, v.name.clone())).collect();
            let names = |id: u64| by_id.get(&id).cloned();
            if json_out {
                let list: Vec<_> = all.iter().map(|v| vhd_json(v, &names)).collect();
                println!("{}", serde_json::Value::Array(list));
            } else {
                println!(
                    "{:<6} {:<24} {:<13} {:>16} {:>8} {:<8} PARENT",
                    "ID", "NAME", "TYPE", "SIZE", "EXTENTS", "STATE"
                );
                for v in &all {
                    println!(
                        "{:<6} {:<24} {:<13} {:>16} {:>8} {:<8} {}",
                        v.id,
                        v.name,
                        kind_name(v.kind),
                        v.virtual_size,
                        v.runs.iter().map(|r| r.count).sum::<u64>(),
                        state_name(v.state),
                        names(v.parent).unwrap_or_default()
                    );
                }
            }
        }
        VhdCommand::Info { name } => {
            match c
                .call(Request::VhdGet(VhdRef { id: 0, name }))
                .map_err(failure)?
            {
                Response::Vhd(v) => print_vhd(&v),
                other => return Err(unexpected(&other)),
            }
        }
        VhdCommand::Delete { name } => {
            match c
                .call(Request::VhdDelete(VhdRef { id: 0, name }))
                .map_err(failure)?
            {
                Response::Vhd(v) => {
                    if json_out {
                        println!("{}", vhd_json(&v, &no_names));
                    } else {
                        println!("deleted {}", v.name);
                    }
                }
                other => return Err(unexpected(&other)),
            }
        }
        VhdCommand::Attach {
            name,
            node,
            read_only,
        } => {
            match c
                .call(Request::VhdAttach(VhdAttach {
                    name,
                    node: node.unwrap_or(0),
                    read_only,
                }))
                .map_err(failure)?
            {
                Response::Attachment(a) => {
                    if json_out {
                        println!("{}", attachment_json(&a));
                    } else {
                        println!(
                            "{} attached on node {} ({}); connect with: {}",
                            a.name,
                            a.node,
                            if a.read_only {
                                "read-only"
                            } else {
                                "read-write"
                            },
                            a.uri
                        );
                    }
                }
                other => return Err(unexpected(&other)),
            }
        }
        VhdCommand::Detach { name, node } => {
            match c
                .call(Request::VhdDetach(VhdDetach {
                    name: name.clone(),
                    node: node.unwrap_or(0),
                }))
                .map_err(failure)?
            {
                Response::Done(_) => {
                    if json_out {
                        println!("{}", json!({"detached": name}));
                    } else {
                        println!("{name} detached");
                    }
                }
                other => return Err(unexpected(&other)),
            }
        }
        VhdCommand::Import { file, name } => {
            let path = local_path(&file)?;
            let op_id = new_op_id();
            match call_with_progress(
                socket,
                &mut c,
                &format!("import {name}"),
                op_id,
                Request::VhdImport(VhdImport { path, name, op_id }),
            )? {
                Response::Vhd(v) => print_vhd(&v),
                other => return Err(unexpected(&other)),
            }
        }
        VhdCommand::Expand { name, size } => {
            match c
                .call(Request::VhdMaintain(VhdMaintain {
                    name,
                    size,
                    op_id: 0,
                }))
                .map_err(failure)?
            {
                Response::Vhd(v) => print_vhd(&v),
                other => return Err(unexpected(&other)),
            }
        }
        VhdCommand::Compact { name } => {
            let op_id = new_op_id();
            match call_with_progress(
                socket,
                &mut c,
                &format!("compact {name}"),
                op_id,
                Request::VhdMaintain(VhdMaintain {
                    name: name.clone(),
                    size: 0,
                    op_id,
                }),
            )? {
                Response::Vhd(v) => print_vhd(&v),
                other => return Err(unexpected(&other)),
            }
        }
        VhdCommand::Export { name, file } => {
            let path = local_path(&file)?;
            let op_id = new_op_id();
            match call_with_progress(
                socket,
                &mut c,
                &format!("export {name}"),
                op_id,
                Request::VhdExport(VhdExport {
                    name: name.clone(),
                    path: path.clone(),
                    op_id,
                }),
            )? {
                Response::Done(_) => {
                    if json_out {
                        println!("{}", json!({"exported": name, "file": path}));
                    } else {
                        println!("{name} written to {path}");
                    }
                }
                other => return Err(unexpected(&other)),
            }
        }
        VhdCommand::Merge { child } => {
            let op_id = new_op_id();
            match call_with_progress(
                socket,
                &mut c,
                &format!("merge {child}"),
                op_id,
                Request::VhdMerge(VhdMerge {
                    name: child.clone(),
                    op_id,
                }),
            )? {
                Response::Vhd(v) => {
                    if json_out {
                        println!(
                            "{}",
                            json!({"merged": child, "parent": vhd_json(&v, &no_names)})
                        );
                    } else {
                        println!("{child} merged into {}", v.name);
                        print_vhd(&v);
                    }
                }
                other => return Err(unexpected(&other)),
            }
        }
    }
    let _ = EXIT_REFUSED;
    Ok(())
}
