//! `csvadm volume ...`: format the cluster volume on the shared LUN (through the addressed
//! node, which writes the superblock and records the volume) and show its status.

use std::path::Path;

use clap::{Args, Subcommand};
use csv_api::admin::volume::{VolumeFormat, VolumeRecover, VolumeStatus};
use csv_api::admin::{Empty, Request, Response};
use serde_json::json;

use crate::cluster::{EXIT_REFUSED, Failure, connect, failure};
use crate::size::parse_size;

/// `csvadm volume`.
#[derive(Args, Debug)]
pub struct VolumeArgs {
    /// Print JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: VolumeCommand,
}

#[derive(Subcommand, Debug)]
enum VolumeCommand {
    /// Write the volume superblock on the LUN of the addressed node and record the volume
    /// in the cluster (once per cluster).
    Format {
        /// Extent size (power of two, 1M to 4G; default 64M).
        #[arg(long, value_parser = parse_size)]
        extent_size: Option<u64>,
        /// Label stored in the superblock.
        #[arg(long, default_value = "")]
        label: String,
        /// Overwrite a LUN that holds another volume's superblock.
        #[arg(long)]
        force: bool,
    },
    /// The volume record, this node's LUN and superblock check, space, attachments here.
    Status,
    /// Rebuild this new, empty cluster's volume and VHD catalog from the newest metadata
    /// checkpoint on the LUN.
    Recover {
        /// LUN to read (path or NBD URI on the node's host; default: the node's [volume]).
        #[arg(long)]
        lun: Option<String>,
    },
}

pub(crate) fn unexpected(r: &Response) -> Failure {
    Failure {
        code: EXIT_REFUSED,
        message: format!("unexpected answer {r:?}"),
    }
}

/// The `--json` form of a volume status.
pub fn status_json(s: &VolumeStatus) -> serde_json::Value {
    json!({
        "node_id": s.node_id,
        "state": s.state,
        "message": s.message,
        "lun": s.lun,
        "superblock_uuid": s.superblock_uuid,
        "volume": s.volume.as_ref().map(|v| json!({
            "id": v.volume_id, "lun": v.lun, "label": v.description, "size": v.size,
            "extent_size": v.extent_size, "extent_count": v.extent_count,
            "data_offset": v.data_offset,
        })),
        "space": s.space.as_ref().map(|p| json!({
            "extent_count": p.extent_count, "free_extents": p.free_extents,
            "mapped_extents": p.mapped_extents, "largest_free_run": p.largest_free_run,
            "reserved": p.reservations.iter().map(|r| json!({"node": r.node, "extents": r.extents})).collect::<Vec<_>>(),
        })),
        "checkpoint": if s.checkpoint_sequence == 0 { serde_json::Value::Null } else {
            json!({"sequence": s.checkpoint_sequence, "raft_index": s.checkpoint_index})
        },
        "attachments": s.attachments.iter().map(crate::vhd::attachment_json).collect::<Vec<_>>(),
    })
}

fn print_status(s: &VolumeStatus, json_out: bool) {
    if json_out {
        println!("{}", status_json(s));
        return;
    }
    println!("node {}: volume {}", s.node_id, s.state);
    if !s.message.is_empty() {
        println!("  {}", s.message);
    }
    if !s.lun.is_empty() {
        println!("  LUN: {}", s.lun);
    }
    if let Some(v) = &s.volume {
        println!(
            "  volume {} ({}): {} bytes, {} extents of {} bytes",
            v.volume_id, v.description, v.size, v.extent_count, v.extent_size
        );
    }
    if let Some(p) = &s.space {
        println!(
            "  free {} of {} extents, mapped {}, largest free run {}",
            p.free_extents, p.extent_count, p.mapped_extents, p.largest_free_run
        );
    }
    if s.checkpoint_sequence != 0 {
        println!(
            "  metadata checkpoint {} (raft index {})",
            s.checkpoint_sequence, s.checkpoint_index
        );
    }
    for a in &s.attachments {
        if a.error.is_empty() {
            println!(
                "  attached here: {} ({}) {}",
                a.name,
                if a.read_only { "ro" } else { "rw" },
                a.uri
            );
        } else {
            println!(
                "  held here, NOT exported: {} ({}): {}",
                a.name,
                if a.read_only { "ro" } else { "rw" },
                a.error
            );
        }
    }
}

/// Runs `csvadm volume ...`.
pub fn run(socket: &Path, args: VolumeArgs, json_top: bool) -> Result<(), Failure> {
    let json_out = args.json || json_top;
    let mut c = connect(socket)?;
    let req = match args.command {
        VolumeCommand::Format {
            extent_size,
            label,
            force,
        } => Request::VolumeFormat(VolumeFormat {
            extent_size: extent_size.unwrap_or(0),
            label,
            force,
        }),
        VolumeCommand::Status => Request::VolumeStatus(Empty {}),
        VolumeCommand::Recover { lun } => Request::VolumeRecover(VolumeRecover {
            lun: lun.unwrap_or_default(),
        }),
    };
    match c.call(req).map_err(failure)? {
        Response::VolumeStatus(s) => print_status(&s, json_out),
        other => return Err(unexpected(&other)),
    }
    Ok(())
}
