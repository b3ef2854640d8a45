//! `csvadm volume ...`: format the cluster volume on the shared LUN (through the addressed
//! node, which writes the superblock and records the volume), recover it from a metadata
//! checkpoint, and show its status (exit codes in `client.rs`).

use std::fmt;
use std::path::Path;

use clap::{Args, Subcommand};
use csv_api::admin::volume::{
    VolumeEvents, VolumeFormat, VolumeRecover, VolumeRedirect, VolumeStatus,
};
use csv_api::admin::{Empty, Request, Response};
use serde::Serialize;

use crate::attachment::AttachmentView;
use crate::client::{Failure, connect, unexpected};
use crate::output::{Output, print};
use crate::path::{PathEventsView, PathView};
use crate::size::parse_size;

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
    /// Redirected access by hand (maintenance): `on` sends the node's LUN I/O through a
    /// peer until `off`, when it fails back to direct I/O once its path is healthy.
    Redirect {
        /// The node (default: the addressed node).
        #[arg(long)]
        node: Option<u64>,
        #[arg(value_enum)]
        state: OnOff,
    },
    /// Path-state changes of every node, with their reasons, oldest first.
    Events {
        /// Only changes after this sequence number.
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// At most this many (up to 1000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
}

/// `on` or `off`.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum OnOff {
    On,
    Off,
}

/// Runs `csvadm volume ...`; `json` is the top-level `--json`.
pub fn run(socket: &Path, args: VolumeArgs, json: bool) -> Result<(), Failure> {
    let out = Output::json_if(args.json || json);
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
        VolumeCommand::Redirect { node, state } => Request::VolumeRedirect(VolumeRedirect {
            node: node.unwrap_or(0),
            on: matches!(state, OnOff::On),
        }),
        VolumeCommand::Events { after, limit } => {
            Request::VolumeEvents(VolumeEvents { after, limit })
        }
    };
    match c.call(req)? {
        Response::VolumeStatus(s) => print(&VolumeStatusView::from(&s), out)?,
        Response::PathEvents(e) => print(&PathEventsView::from(&e), out)?,
        other => return Err(unexpected(&other)),
    }
    Ok(())
}

/// `volume format|status|recover`: the volume as the asked node sees it.
#[derive(Debug, Serialize)]
pub struct VolumeStatusView {
    /// The asked node.
    pub node_id: u64,
    /// The volume's state on that node (`ready`, `unformatted`, ...).
    pub state: String,
    /// What the node says about that state.
    pub message: String,
    /// The node's LUN.
    pub lun: String,
    /// UUID of the superblock found on the node's LUN.
    pub superblock_uuid: String,
    /// The cluster's volume record.
    pub volume: Option<VolumeView>,
    pub space: Option<SpaceView>,
    /// The newest metadata checkpoint on the LUN.
    pub checkpoint: Option<CheckpointView>,
    /// VHDs attached on the asked node.
    pub attachments: Vec<AttachmentView>,
    /// Every node's LUN path: `direct`, `redirected`, `paused`, ... with the reason.
    pub paths: Vec<PathView>,
    /// Bytes the asked node moved through peers since it started.
    pub redirected_bytes: u64,
}

/// The cluster's volume record.
#[derive(Debug, Serialize)]
pub struct VolumeView {
    pub id: String,
    pub lun: String,
    pub label: String,
    pub size: u64,
    pub extent_size: u64,
    pub extent_count: u64,
    /// Byte offset of the first extent on the LUN.
    pub data_offset: u64,
}

/// Extent allocation on the volume.
#[derive(Debug, Serialize)]
pub struct SpaceView {
    pub extent_count: u64,
    pub free_extents: u64,
    pub mapped_extents: u64,
    pub largest_free_run: u64,
    /// Extents reserved by each node.
    pub reserved: Vec<ReservedView>,
}

/// One node's reserved extents.
#[derive(Debug, Serialize)]
pub struct ReservedView {
    pub node: u64,
    pub extents: u64,
}

/// A metadata checkpoint.
#[derive(Debug, Serialize)]
pub struct CheckpointView {
    pub sequence: u64,
    pub raft_index: u64,
}

impl From<&VolumeStatus> for VolumeStatusView {
    fn from(s: &VolumeStatus) -> VolumeStatusView {
        VolumeStatusView {
            node_id: s.node_id,
            state: s.state.clone(),
            message: s.message.clone(),
            lun: s.lun.clone(),
            superblock_uuid: s.superblock_uuid.clone(),
            volume: s.volume.as_ref().map(|v| VolumeView {
                id: v.volume_id.clone(),
                lun: v.lun.clone(),
                label: v.description.clone(),
                size: v.size,
                extent_size: v.extent_size,
                extent_count: v.extent_count,
                data_offset: v.data_offset,
            }),
            space: s.space.as_ref().map(|p| SpaceView {
                extent_count: p.extent_count,
                free_extents: p.free_extents,
                mapped_extents: p.mapped_extents,
                largest_free_run: p.largest_free_run,
                reserved: p
                    .reservations
                    .iter()
                    .map(|r| ReservedView {
                        node: r.node,
                        extents: r.extents,
                    })
                    .collect(),
            }),
            checkpoint: (s.checkpoint_sequence != 0).then_some(CheckpointView {
                sequence: s.checkpoint_sequence,
                raft_index: s.checkpoint_index,
            }),
            attachments: s.attachments.iter().map(AttachmentView::from).collect(),
            paths: s.paths.iter().map(PathView::from).collect(),
            redirected_bytes: s.redirected_bytes,
        }
    }
}

impl fmt::Display for VolumeStatusView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut lines = vec![format!("node {}: volume {}", self.node_id, self.state)];
        if !self.message.is_empty() {
            lines.push(format!("  {}", self.message));
        }
        if !self.lun.is_empty() {
            lines.push(format!("  LUN: {}", self.lun));
        }
        if let Some(v) = &self.volume {
            lines.push(format!(
                "  volume {} ({}): {} bytes, {} extents of {} bytes",
                v.id, v.label, v.size, v.extent_count, v.extent_size
            ));
        }
        if let Some(p) = &self.space {
            lines.push(format!(
                "  free {} of {} extents, mapped {}, largest free run {}",
                p.free_extents, p.extent_count, p.mapped_extents, p.largest_free_run
            ));
        }
        if let Some(c) = &self.checkpoint {
            lines.push(format!(
                "  metadata checkpoint {} (raft index {})",
                c.sequence, c.raft_index
            ));
        }
        if !self.paths.is_empty() {
            lines.push(format!(
                "  {:<6} {:<12} {:<22} {:<6} {:<24} {:>6}",
                "NODE", "PATH", "REASON", "PEER", "SINCE", "LOAD"
            ));
            for p in &self.paths {
                lines.push(format!("  {p}"));
            }
        }
        for a in &self.attachments {
            lines.push(match &a.error {
                None => format!("  attached here: {} ({}) {}", a.name, a.access(), a.uri),
                Some(e) => format!(
                    "  held here, NOT exported: {} ({}): {e}",
                    a.name,
                    a.access()
                ),
            });
        }
        f.write_str(&lines.join("\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::to_json;

    #[test]
    fn empty_status() {
        let v = VolumeStatusView::from(&VolumeStatus {
            node_id: 2,
            state: "unformatted".into(),
            ..Default::default()
        });
        assert_eq!(v.to_string(), "node 2: volume unformatted");
        assert_eq!(
            to_json(&v, false).expect("json"),
            r#"{"attachments":[],"checkpoint":null,"lun":"","message":"","node_id":2,"paths":[],"redirected_bytes":0,"space":null,"state":"unformatted","superblock_uuid":"","volume":null}"#
        );
    }

    #[test]
    fn checkpoint_and_space() {
        let v = VolumeStatusView::from(&VolumeStatus {
            node_id: 1,
            state: "ready".into(),
            lun: "/dev/sdb".into(),
            space: Some(csv_api::admin::Space {
                extent_count: 10,
                free_extents: 4,
                mapped_extents: 6,
                largest_free_run: 3,
                reservations: vec![csv_api::admin::Reservation {
                    node: 2,
                    extents: 1,
                    runs: vec![],
                }],
                ..Default::default()
            }),
            checkpoint_sequence: 5,
            checkpoint_index: 40,
            ..Default::default()
        });
        assert_eq!(
            v.to_string(),
            "node 1: volume ready\n  LUN: /dev/sdb\n  \
             free 4 of 10 extents, mapped 6, largest free run 3\n  \
             metadata checkpoint 5 (raft index 40)"
        );
        let j: serde_json::Value =
            serde_json::from_str(&to_json(&v, false).expect("json")).expect("parse");
        assert_eq!(j["checkpoint"]["raft_index"], 40);
        assert_eq!(j["space"]["reserved"][0]["extents"], 1);
    }
}
